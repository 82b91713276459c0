//! `cargo xtask tidy`: repository rules that are cheap to check and easy to forget.
//!
//! Each check is a pure function over plain data (package facts, file texts, a dependency edge
//! list) returning one message per violation, so each is unit-tested on synthetic input; [`run`]
//! gathers the real data from `cargo metadata` and the file system.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::seed::Table;

/// What the publishability check needs to know about one package.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PackageFacts {
    /// Package name.
    pub(crate) name: String,
    /// Path of the package directory relative to the workspace root, with `/` separators.
    pub(crate) dir: String,
    /// Whether it can be published (`publish` is not `false`).
    pub(crate) publishable: bool,
    /// `description`, if set and non-empty.
    pub(crate) description: Option<String>,
    /// `license`, if set.
    pub(crate) license: Option<String>,
    /// Whether the manifest has `[lints] workspace = true`.
    pub(crate) workspace_lints: bool,
    /// Names of the files in the package directory.
    pub(crate) files: BTreeSet<String>,
}

/// Whether a manifest's text opts into the workspace lints (`[lints]` then `workspace = true`,
/// or a top-level `lints.workspace = true`).
pub(crate) fn has_workspace_lints(manifest: &str) -> bool {
    let mut in_lints = false;
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if line.starts_with('[') {
            in_lints = compact == "[lints]";
        } else if (in_lints && compact == "workspace=true") || compact == "lints.workspace=true" {
            return true;
        }
    }
    false
}

/// (a) Every publishable package has a README, a CHANGELOG, a description, a license, the
/// workspace lints, and the licence files its `license` names.
pub(crate) fn check_publishable(packages: &[PackageFacts]) -> Vec<String> {
    let mut out = Vec::new();
    for p in packages.iter().filter(|p| p.publishable) {
        let mut need = |ok: bool, what: &str| {
            if !ok {
                out.push(format!("{} ({}): {what}", p.name, p.dir));
            }
        };
        need(p.files.contains("README.md"), "missing README.md");
        need(p.files.contains("CHANGELOG.md"), "missing CHANGELOG.md");
        need(
            p.description.is_some(),
            "missing `description` in Cargo.toml",
        );
        need(p.license.is_some(), "missing `license` in Cargo.toml");
        need(
            p.workspace_lints,
            "missing `[lints] workspace = true` in Cargo.toml",
        );
        let license = p.license.as_deref().unwrap_or("");
        let mut named = false;
        for (id, file) in [("MIT", "LICENSE-MIT"), ("Apache-2.0", "LICENSE-APACHE")] {
            if license
                .split(|c: char| c.is_whitespace() || c == '/' || c == '(' || c == ')')
                .any(|t| t == id)
            {
                named = true;
                need(
                    p.files.contains(file),
                    &format!("missing {file} (license is `{license}`)"),
                );
            }
        }
        if !named && p.license.is_some() {
            need(
                p.files
                    .iter()
                    .any(|f| f.starts_with("LICENSE") || f.starts_with("LICENCE")),
                "missing a LICENSE file",
            );
        }
    }
    out
}

/// The tokens (b) looks for, assembled so that this file does not contain them literally.
fn unsafe_needles() -> [String; 4] {
    let u = ["un", "safe"].concat();
    [
        format!("{u} {{"),
        format!("{u} fn"),
        format!("{u} impl"),
        format!("allow({u}_code)"),
    ]
}

/// The one module allowed to use `unsafe` (runtime-dispatched SIMD): this file and its
/// submodule files under [`UNSAFE_ALLOWED_DIR`].
const UNSAFE_ALLOWED: &str = "crates/squish-core/src/simd.rs";

/// Directory of the submodules of [`UNSAFE_ALLOWED`] (`simd/*.rs`), part of the same module.
const UNSAFE_ALLOWED_DIR: &str = "crates/squish-core/src/simd/";

/// (b) No `unsafe` outside [`UNSAFE_ALLOWED`]. `files` are `(path relative to the root with `/`
/// separators, text)`.
pub(crate) fn check_no_unsafe(files: &[(String, String)]) -> Vec<String> {
    let needles = unsafe_needles();
    let mut out = Vec::new();
    for (path, text) in files {
        if path == UNSAFE_ALLOWED || path.starts_with(UNSAFE_ALLOWED_DIR) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            for n in &needles {
                if line.contains(n.as_str()) {
                    out.push(format!("{path}:{}: `{n}` outside {UNSAFE_ALLOWED}", i + 1));
                }
            }
        }
    }
    out
}

/// A dependency edge between workspace packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Edge {
    /// Depending package.
    pub(crate) from: String,
    /// Package depended on.
    pub(crate) to: String,
    /// `normal`, `dev` or `build`.
    pub(crate) kind: String,
}

/// The published name of `crates/squish-core` (crates.io has an unrelated `squish-core`).
pub(crate) const CORE: &str = "squish-llm-core";

/// Tooling packages: not libraries, never depended on.
const TOOLS: [&str; 2] = ["benches", "xtask"];
const TESTKIT: &str = "squish-testkit";

/// Internal normal (and build) dependencies each library crate may have.
fn allowed_deps(package: &str) -> Option<&'static [&'static str]> {
    Some(match package {
        CORE | TESTKIT => &[],
        "squish-kv" | "squish-attn" | "squish-spec" | "squish-observe" => &[CORE],
        "squish-pipeline" => &[CORE, "squish-spec", "squish-attn"],
        "squish-serving" => &[CORE, "squish-kv", "squish-observe"],
        _ => return None,
    })
}

/// (c) The crate graph follows the layering. `members` are all workspace package names;
/// `edges` are dependencies between them (any kind). Dev-dependencies are free between library
/// crates, except that nothing may depend on the tooling packages. `squish-testkit` may be a
/// dev-dependency only (the tooling packages, never published, may use it freely).
pub(crate) fn check_layering(members: &[String], edges: &[Edge]) -> Vec<String> {
    let mut out = Vec::new();
    for m in members {
        if !TOOLS.contains(&m.as_str()) && allowed_deps(m).is_none() {
            out.push(format!(
                "{m}: no layering rule for this crate; add it to xtask/src/tidy.rs (allowed_deps)"
            ));
        }
    }
    for e in edges {
        let what = format!("{} -> {} ({} dependency)", e.from, e.to, e.kind);
        if TOOLS.contains(&e.to.as_str()) {
            out.push(format!("{what}: nothing may depend on `{}`", e.to));
            continue;
        }
        if TOOLS.contains(&e.from.as_str()) || e.kind == "dev" {
            continue;
        }
        if e.to == TESTKIT {
            out.push(format!("{what}: `{TESTKIT}` may only be a dev-dependency"));
        } else if let Some(allowed) = allowed_deps(&e.from)
            && !allowed.contains(&e.to.as_str())
        {
            let list = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            out.push(format!(
                "{what}: breaks the layering; {} may depend on: {list}",
                e.from
            ));
        }
    }
    out
}

/// Whether `s` is `UpperCamelCase` (ASCII letters and digits, starting with a capital).
fn is_upper_camel(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Whether `s` is `snake_case` (lowercase ASCII, digits, `_`, starting with a letter).
fn is_snake(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Messages for duplicate values of `col` in `t`.
fn duplicates(name: &str, t: &Table, cols: &[usize], what: &str) -> Vec<String> {
    let mut seen: BTreeMap<Vec<&str>, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (line, f) in &t.rows {
        let k: Vec<&str> = cols.iter().map(|&c| f[c].as_str()).collect();
        if let Some(first) = seen.insert(k.clone(), *line) {
            out.push(format!(
                "{name}:{line}: duplicate {what} `{}` (first on line {first})",
                k.join("` `")
            ));
        }
    }
    out
}

/// (d) Seed table: keys unique, (group, id) unique, groups shaped `<RustType>/<operation>`, ids
/// non-empty.
pub(crate) fn check_seed_table(name: &str, text: &str) -> Vec<String> {
    let t = match Table::parse(name, text) {
        Ok(t) => t,
        Err(e) => return vec![e],
    };
    let (key, group, id) = match (
        t.column(name, "key"),
        t.column(name, "group"),
        t.column(name, "id"),
    ) {
        (Ok(k), Ok(g), Ok(i)) => (k, g, i),
        (k, g, i) => return [k.err(), g.err(), i.err()].into_iter().flatten().collect(),
    };
    let mut out = duplicates(name, &t, &[key], "key");
    out.extend(duplicates(name, &t, &[group, id], "(group, id)"));
    for (line, f) in &t.rows {
        let g = &f[group];
        let shaped = g
            .split_once('/')
            .is_some_and(|(ty, op)| is_upper_camel(ty) && is_snake(op));
        if !shaped {
            out.push(format!(
                "{name}:{line}: group `{g}` is not shaped `<RustType>/<operation>`"
            ));
        }
        if f[id].trim().is_empty() {
            out.push(format!("{name}:{line}: empty benchmark id"));
        }
    }
    out
}

/// (d) Claims table: keys unique.
pub(crate) fn check_claims_table(name: &str, text: &str) -> Vec<String> {
    match Table::parse(name, text).and_then(|t| Ok((t.column(name, "key")?, t))) {
        Ok((key, t)) => duplicates(name, &t, &[key], "key"),
        Err(e) => vec![e],
    }
}

/// (e) Folder name == package name under `crates/`, except `crates/squish-core` → [`CORE`].
/// `crates` are `(folder name, package name)`.
pub(crate) fn check_folder_names(crates: &[(String, String)]) -> Vec<String> {
    crates
        .iter()
        .filter(|(folder, package)| {
            let expected = if folder == "squish-core" {
                CORE
            } else {
                folder.as_str()
            };
            package != expected
        })
        .map(|(folder, package)| {
            format!(
                "crates/{folder}: package is named `{package}`; folder and package names must match"
            )
        })
        .collect()
}

/// All `.rs` files under `dir`, skipping `target` and hidden directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn relative(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Runs every check on the workspace at `root` using `metadata` (the output of
/// `cargo metadata --format-version 1 --no-deps`). Returns the violations.
///
/// # Errors
/// If a file the checks need cannot be read or `metadata` is malformed.
pub(crate) fn check_workspace(root: &Path, metadata: &Value) -> Result<Vec<String>, String> {
    let packages = metadata["packages"]
        .as_array()
        .ok_or("cargo metadata: no `packages` array")?;
    let members: Vec<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    let mut facts = Vec::new();
    let mut edges = Vec::new();
    let mut folders = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        let manifest = PathBuf::from(
            p["manifest_path"]
                .as_str()
                .ok_or("cargo metadata: no manifest_path")?,
        );
        let dir = manifest.parent().unwrap_or(root).to_path_buf();
        let text = std::fs::read_to_string(&manifest)
            .map_err(|e| format!("cannot read {}: {e}", manifest.display()))?;
        let files = std::fs::read_dir(&dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .flatten()
            .filter(|e| e.path().exists()) // follows symlinks: a dangling licence link is missing
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let rel = relative(root, &dir);
        if let Some(folder) = rel.strip_prefix("crates/")
            && !folder.contains('/')
        {
            folders.push((folder.to_owned(), name.clone()));
        }
        // `publish = false` shows as `"publish": []`; `null` means "any registry".
        let publishable = p["publish"].as_array().is_none_or(|a| !a.is_empty());
        let nonempty = |v: &Value| {
            v.as_str()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
        };
        facts.push(PackageFacts {
            name: name.clone(),
            dir: rel,
            publishable,
            description: nonempty(&p["description"]),
            license: nonempty(&p["license"]),
            workspace_lints: has_workspace_lints(&text),
            files,
        });
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let Some(to) = d["name"].as_str() else {
                continue;
            };
            if members.iter().any(|m| m == to) {
                edges.push(Edge {
                    from: name.clone(),
                    to: to.to_owned(),
                    kind: d["kind"].as_str().unwrap_or("normal").to_owned(),
                });
            }
        }
    }
    let mut out = check_publishable(&facts);
    let mut paths = Vec::new();
    for top in ["crates", "benches", "xtask"] {
        rust_files(&root.join(top), &mut paths);
    }
    paths.sort();
    let mut files = Vec::new();
    for p in paths {
        let text =
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        files.push((relative(root, &p), text));
    }
    out.extend(check_no_unsafe(&files));
    out.extend(check_layering(&members, &edges));
    for (file, check) in [
        (
            "benches/seed.tsv",
            check_seed_table as fn(&str, &str) -> Vec<String>,
        ),
        ("benches/claims.tsv", check_claims_table),
    ] {
        let text = crate::seed::read(&root.join(file))?;
        out.extend(check(file, &text));
    }
    out.extend(check_folder_names(&folders));
    Ok(out)
}

/// Runs `cargo metadata` for the workspace at `root` and all the checks.
///
/// # Errors
/// If `cargo metadata` fails or a needed file cannot be read.
pub(crate) fn run(root: &Path) -> Result<Vec<String>, String> {
    let metadata = crate::cargo_metadata(root)?;
    check_workspace(root, &metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, files: &[&str]) -> PackageFacts {
        PackageFacts {
            name: name.to_owned(),
            dir: format!("crates/{name}"),
            publishable: true,
            description: Some("d".to_owned()),
            license: Some("MIT OR Apache-2.0".to_owned()),
            workspace_lints: true,
            files: files.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    const ALL: [&str; 4] = ["README.md", "CHANGELOG.md", "LICENSE-MIT", "LICENSE-APACHE"];

    #[test]
    fn publishable_crates_need_their_files_and_fields() {
        assert!(check_publishable(&[pkg("a", &ALL)]).is_empty());
        let mut bad = pkg("b", &["README.md", "LICENSE-MIT"]);
        bad.description = None;
        bad.workspace_lints = false;
        let mut private = pkg("c", &[]);
        private.publishable = false;
        let v = check_publishable(&[bad, private]);
        assert_eq!(
            v,
            [
                "b (crates/b): missing CHANGELOG.md",
                "b (crates/b): missing `description` in Cargo.toml",
                "b (crates/b): missing `[lints] workspace = true` in Cargo.toml",
                "b (crates/b): missing LICENSE-APACHE (license is `MIT OR Apache-2.0`)",
            ]
        );
    }

    #[test]
    fn workspace_lints_detection() {
        assert!(has_workspace_lints(
            "[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n"
        ));
        assert!(has_workspace_lints("lints.workspace = true\n"));
        assert!(!has_workspace_lints(
            "[lints]\n# workspace = true\n[dependencies]\nworkspace = true\n"
        ));
        assert!(!has_workspace_lints("[package]\nname = \"x\"\n"));
    }

    #[test]
    fn unsafe_is_found_outside_the_simd_module_only() {
        let u = ["un", "safe"].concat();
        let files = vec![
            (
                "crates/squish-kv/src/lib.rs".to_owned(),
                format!("fn f() {{\n    {u} {{ g() }}\n}}\n"),
            ),
            (
                "xtask/src/x.rs".to_owned(),
                format!("#![allow({u}_code)]\npub {u} fn h() {{}}\n"),
            ),
            (UNSAFE_ALLOWED.to_owned(), format!("{u} fn ok() {{}}\n")),
            (
                format!("{UNSAFE_ALLOWED_DIR}rows.rs"),
                format!("{u} fn also_ok() {{}}\n"),
            ),
            (
                "crates/squish-core/src/simdx.rs".to_owned(),
                format!("{u} fn not_ok() {{}}\n"),
            ),
            (
                "benches/src/lib.rs".to_owned(),
                "// safe code, unsafety discussed\n".to_owned(),
            ),
        ];
        let v = check_no_unsafe(&files);
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v[0].starts_with("crates/squish-kv/src/lib.rs:2:"), "{v:?}");
        assert!(
            v[1].starts_with("xtask/src/x.rs:1:") && v[2].starts_with("xtask/src/x.rs:2:"),
            "{v:?}"
        );
        assert!(
            v[3].starts_with("crates/squish-core/src/simdx.rs:1:"),
            "{v:?}"
        );
    }

    fn edge(from: &str, to: &str, kind: &str) -> Edge {
        Edge {
            from: from.to_owned(),
            to: to.to_owned(),
            kind: kind.to_owned(),
        }
    }

    fn members() -> Vec<String> {
        [
            CORE,
            "squish-kv",
            "squish-attn",
            "squish-spec",
            "squish-pipeline",
            "squish-serving",
            "squish-observe",
            TESTKIT,
            "benches",
            "xtask",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    #[test]
    fn layering_accepts_the_intended_graph() {
        let edges = [
            edge("squish-kv", CORE, "normal"),
            edge("squish-pipeline", "squish-spec", "normal"),
            edge("squish-pipeline", "squish-attn", "normal"),
            edge("squish-serving", "squish-kv", "normal"),
            edge("squish-serving", "squish-observe", "normal"),
            edge(CORE, TESTKIT, "dev"),
            edge("squish-kv", "squish-serving", "dev"),
            edge("benches", TESTKIT, "normal"),
            edge("benches", "squish-serving", "normal"),
            edge("xtask", CORE, "normal"),
        ];
        assert_eq!(check_layering(&members(), &edges), Vec::<String>::new());
    }

    #[test]
    fn layering_rejects_violations() {
        let edges = [
            edge(CORE, "squish-kv", "normal"),
            edge("squish-kv", "squish-attn", "normal"),
            edge("squish-serving", "squish-spec", "build"),
            edge("squish-attn", TESTKIT, "normal"),
            edge(TESTKIT, CORE, "normal"),
            edge("squish-kv", "benches", "dev"),
            edge("squish-kv", "xtask", "normal"),
        ];
        let mut m = members();
        m.push("squish-new".to_owned());
        let v = check_layering(&m, &edges);
        assert_eq!(v.len(), 8, "{v:#?}");
        assert!(v[0].starts_with("squish-new: no layering rule"));
        assert_eq!(
            v[1],
            "squish-llm-core -> squish-kv (normal dependency): breaks the layering; squish-llm-core may depend on: none"
        );
        assert_eq!(
            v[2],
            "squish-kv -> squish-attn (normal dependency): breaks the layering; squish-kv may depend on: squish-llm-core"
        );
        assert!(v[3].starts_with("squish-serving -> squish-spec (build dependency): breaks"));
        assert_eq!(
            v[4],
            "squish-attn -> squish-testkit (normal dependency): `squish-testkit` may only be a dev-dependency"
        );
        assert!(v[5].starts_with("squish-testkit -> squish-llm-core (normal dependency): breaks"));
        assert!(v[6].ends_with("nothing may depend on `benches`"));
        assert!(v[7].ends_with("nothing may depend on `xtask`"));
    }

    const HEADER: &str = "# c\nkey\tmodule\tgroup\tid\n";

    #[test]
    fn seed_table_rules() {
        let good = format!("{HEADER}a/b\tA\tKvCodec/fit\tn=1\na/c\tA\tKvCodec/fit\tn=2\n");
        assert!(check_seed_table("s.tsv", &good).is_empty());
        let bad = format!(
            "{HEADER}a/b\tA\tKvCodec/fit\tn=1\na/b\tA\tKvCodec/fit\tn=1\nx\tA\tkv_codec/Fit\t\ny\tA\tKvCodec\tq\n"
        );
        let v = check_seed_table("s.tsv", &bad);
        assert_eq!(
            v,
            [
                "s.tsv:4: duplicate key `a/b` (first on line 3)",
                "s.tsv:4: duplicate (group, id) `KvCodec/fit` `n=1` (first on line 3)",
                "s.tsv:5: group `kv_codec/Fit` is not shaped `<RustType>/<operation>`",
                "s.tsv:5: empty benchmark id",
                "s.tsv:6: group `KvCodec` is not shaped `<RustType>/<operation>`",
            ]
        );
        assert_eq!(check_seed_table("s.tsv", "key\tgroup\n").len(), 1);
    }

    #[test]
    fn claims_keys_unique() {
        assert!(check_claims_table("c.tsv", "key\tx\na\t1\nb\t2\n").is_empty());
        assert_eq!(
            check_claims_table("c.tsv", "key\tx\na\t1\na\t2\n"),
            ["c.tsv:3: duplicate key `a` (first on line 2)"]
        );
    }

    #[test]
    fn folder_names() {
        let ok = [
            ("squish-core".to_owned(), CORE.to_owned()),
            ("squish-kv".to_owned(), "squish-kv".to_owned()),
        ];
        assert!(check_folder_names(&ok).is_empty());
        let bad = [
            ("squish-core".to_owned(), "squish-core".to_owned()),
            ("kv".to_owned(), "squish-kv".to_owned()),
        ];
        assert_eq!(check_folder_names(&bad).len(), 2);
    }

    /// The repository itself is tidy: `cargo test --workspace` enforces `cargo xtask tidy`.
    #[test]
    fn repository_is_tidy() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let violations = run(&root).unwrap();
        assert!(
            violations.is_empty(),
            "cargo xtask tidy:\n{}",
            violations.join("\n")
        );
    }
}
