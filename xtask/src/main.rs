//! Workspace automation for Squish, run as `cargo xtask <command>`.
//!
//! - `cargo xtask bench [--quick] [--filter S]`: runs the criterion benches and the claims
//!   program, then writes `docs/benchmarks.md`, `docs/benchmarks.json` and `docs/benchmarks.svg`.
//! - `cargo xtask tidy`: checks repository rules (publishable crates, no `unsafe`, layering,
//!   seed tables, folder names); also run by `cargo test`.

mod bench;
mod criterion;
mod machine;
mod report;
mod seed;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::Value;

const HELP: &str = "\
cargo xtask: Squish workspace automation

USAGE:
    cargo xtask bench [--quick] [--filter <S>]
    cargo xtask tidy
    cargo xtask help

COMMANDS:
    bench    Run the criterion benches (`cargo bench -p benches --bench seed`) and the claims
             program (`cargo run --release -p benches --bin claims`), then write
             docs/benchmarks.md, docs/benchmarks.json and docs/benchmarks.svg.
             --quick       short criterion settings (a few minutes for the whole suite)
             --filter <S>  only run benchmarks whose id matches <S> (criterion's filter)
    tidy     Check repository rules; prints one line per violation, exits non-zero if any.
";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cmd {
    /// `bench` with its options.
    Bench(bench::BenchArgs),
    /// `tidy`.
    Tidy,
    /// `help`, `--help`, `-h` or no arguments.
    Help,
}

/// Parses the arguments after the program name.
fn parse_args(args: &[String]) -> Result<Cmd, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Ok(Cmd::Help);
    };
    match cmd.as_str() {
        "help" | "--help" | "-h" => Ok(Cmd::Help),
        "tidy" => match rest.first() {
            None => Ok(Cmd::Tidy),
            Some(a) if a == "--help" || a == "-h" => Ok(Cmd::Help),
            Some(a) => Err(format!("tidy: unexpected argument `{a}`")),
        },
        "bench" => {
            let mut out = bench::BenchArgs::default();
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--quick" => out.quick = true,
                    "--filter" => {
                        let f = it.next().ok_or("bench: --filter needs a value")?;
                        out.filter = Some(f.clone());
                    }
                    "--help" | "-h" => return Ok(Cmd::Help),
                    s => match s.strip_prefix("--filter=") {
                        Some(f) => out.filter = Some(f.to_owned()),
                        None => return Err(format!("bench: unexpected argument `{s}`")),
                    },
                }
            }
            Ok(Cmd::Bench(out))
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

/// The workspace root (the parent of the `xtask` package).
fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// `cargo metadata --format-version 1 --no-deps` for the workspace at `root`.
pub(crate) fn cargo_metadata(root: &Path) -> Result<Value, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: bad JSON: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let root = workspace_root();
    match cmd {
        Cmd::Help => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Cmd::Bench(b) => match bench::run(&root, &b) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Tidy => match tidy::run(&root) {
            Ok(v) if v.is_empty() => {
                println!("tidy: all checks pass");
                ExitCode::SUCCESS
            }
            Ok(v) => {
                for line in &v {
                    println!("{line}");
                }
                eprintln!("tidy: {} violation(s)", v.len());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn parses_commands() {
        assert_eq!(parse_args(&[]), Ok(Cmd::Help));
        assert_eq!(parse_args(&args("tidy")), Ok(Cmd::Tidy));
        assert_eq!(
            parse_args(&args("bench --quick --filter Kv")),
            Ok(Cmd::Bench(bench::BenchArgs {
                quick: true,
                filter: Some("Kv".to_owned())
            }))
        );
        assert_eq!(
            parse_args(&args("bench --filter=Tree")),
            Ok(Cmd::Bench(bench::BenchArgs {
                quick: false,
                filter: Some("Tree".to_owned())
            }))
        );
        assert_eq!(parse_args(&args("bench --help")), Ok(Cmd::Help));
        assert!(parse_args(&args("bench --filter")).is_err());
        assert!(parse_args(&args("bench --slow")).is_err());
        assert!(parse_args(&args("frobnicate")).is_err());
        assert!(parse_args(&args("tidy extra")).is_err());
    }
}
