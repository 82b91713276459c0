//! `cargo xtask bench`: run the criterion benches and the claims program, then write the report.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use crate::criterion;
use crate::machine::Machine;
use crate::report::{self, Claims, ClaimsOutcome, Report};
use crate::seed;

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct BenchArgs {
    /// Short criterion settings so the whole suite takes a few minutes.
    pub(crate) quick: bool,
    /// Criterion filter: only benchmarks whose id matches it run.
    pub(crate) filter: Option<String>,
}

/// Criterion arguments for a run with `args`.
pub(crate) fn criterion_args(args: &BenchArgs) -> Vec<String> {
    let mut v: Vec<String> = ["--color", "never", "--noplot"].map(str::to_owned).to_vec();
    if args.quick {
        // `--quick` doubles the iteration count until two timings agree within the significance
        // level (5 %), with no warm-up; `--measurement-time` caps each benchmark at 1 s
        // (criterion's default cap is 5 s). `--warm-up-time` has no effect in quick mode.
        v.extend(["--quick", "--measurement-time", "1"].map(str::to_owned));
    }
    if let Some(f) = &args.filter {
        v.push(f.clone());
    }
    v
}

/// Turns criterion's stdout into one progress line per finished benchmark.
///
/// Criterion prints `<id> time: [lo mid hi]` when the id is short, or the id on its own line
/// followed by an indented `time:` line when it is long; with a saved baseline it adds `change:`
/// lines whose `time:` values are percentages, which are skipped.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    total: Option<usize>,
    done: usize,
    last_id: Option<String>,
}

impl Progress {
    /// A tracker expecting `total` benchmarks, if known.
    pub(crate) fn new(total: Option<usize>) -> Self {
        Self {
            total,
            ..Self::default()
        }
    }

    /// Feeds one line of criterion's stdout; returns the progress line to print, if any.
    pub(crate) fn feed(&mut self, line: &str) -> Option<String> {
        let Some((before, after)) = line.split_once("time:") else {
            if !line.trim().is_empty() && !line.starts_with(char::is_whitespace) {
                self.last_id = Some(line.trim().to_owned());
            }
            return None;
        };
        let inner = after.trim().strip_prefix('[')?.split(']').next()?;
        let parts: Vec<&str> = inner.split_whitespace().collect();
        // `lo unit mid unit hi unit`; percentages (`change:`) have no separate unit.
        if parts.len() != 6 || parts.iter().any(|p| p.ends_with('%')) {
            return None;
        }
        let id = match before.trim() {
            "" => self.last_id.take()?,
            id => id.to_owned(),
        };
        self.done += 1;
        let total = self.total.map_or_else(|| "?".to_owned(), |t| t.to_string());
        Some(format!(
            "[{}/{total}] {id} ... {} {}",
            self.done, parts[2], parts[3]
        ))
    }
}

/// Counts the benchmarks criterion would run (lines `<id>: benchmark` of `--list`).
pub(crate) fn count_listed(list_output: &str) -> usize {
    list_output
        .lines()
        .filter(|l| l.ends_with(": benchmark"))
        .count()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Criterion's output directory: `$CRITERION_HOME`, else `<target dir>/criterion`.
fn criterion_dir(root: &Path) -> Result<PathBuf, String> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Ok(PathBuf::from(home));
    }
    let meta = crate::cargo_metadata(root)?;
    let target = meta["target_directory"]
        .as_str()
        .ok_or("cargo metadata: no `target_directory`")?;
    Ok(Path::new(target).join("criterion"))
}

/// Runs `cargo bench` on the seed benches with criterion `crit_args`, streaming progress.
/// Returns a note if the run failed.
fn run_benches(
    root: &Path,
    crit_args: &[String],
    total: Option<usize>,
) -> Result<Option<String>, String> {
    let mut child = Command::new(cargo())
        .current_dir(root)
        .args(["bench", "-p", "benches", "--bench", "seed", "--"])
        .args(crit_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    // Criterion's status lines (`Benchmarking …`) go to stderr: drop them, keep everything else
    // (cargo's compile output, warnings, panics).
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let forward = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.starts_with("Benchmarking ") {
                eprintln!("{line}");
            }
        }
    });
    let stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut progress = Progress::new(total);
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(p) = progress.feed(&line) {
            println!("{p}");
            let _ = std::io::stdout().flush();
        }
    }
    let status = child.wait().map_err(|e| format!("cargo bench: {e}"))?;
    let _ = forward.join();
    Ok((!status.success()).then(|| {
        format!("`cargo bench` failed ({status}); benchmarks after the failure are missing.")
    }))
}

/// Counts the benchmarks the run will execute, via criterion's `--list`; `None` if that fails.
fn list_benches(root: &Path, filter: Option<&str>) -> Option<usize> {
    let out = Command::new(cargo())
        .current_dir(root)
        .args(["bench", "-p", "benches", "--bench", "seed", "--", "--list"])
        .args(filter)
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| count_listed(&String::from_utf8_lossy(&out.stdout)))
}

/// Runs the claims program; never fails (a failure is recorded in the outcome).
fn run_claims(root: &Path, quick: bool) -> ClaimsOutcome {
    println!("running the claims program ...");
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root)
        .args(["run", "--release", "-p", "benches", "--bin", "claims"])
        .stderr(Stdio::inherit());
    if quick {
        cmd.args(["--", "--quick"]);
    }
    match cmd.output() {
        Err(e) => ClaimsOutcome::Failed(format!("could not start `cargo run`: {e}")),
        Ok(out) if !out.status.success() => ClaimsOutcome::Failed(format!(
            "`cargo run --release -p benches --bin claims` failed ({})",
            out.status
        )),
        Ok(out) => report::parse_claims_output(&String::from_utf8_lossy(&out.stdout)),
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `cargo xtask bench`: runs everything and writes `docs/benchmarks.{md,json,svg}` under `root`.
///
/// # Errors
/// If the seed tables cannot be read, cargo cannot be started, or the report cannot be written.
/// A failing benchmark or claims program is reported in the output, not returned as an error.
pub(crate) fn run(root: &Path, args: &BenchArgs) -> Result<(), String> {
    let seed_rows = seed::load_seed(&root.join("benches/seed.tsv"))?;
    let claim_rows = seed::load_claims(&root.join("benches/claims.tsv"))?;
    let crit_dir = criterion_dir(root)?;

    println!("building the benches and listing them ...");
    let total = list_benches(root, args.filter.as_deref());
    // Results are only taken from files written after this instant: older ones are stale.
    let start = SystemTime::now();
    let mut notes: Vec<String> = run_benches(root, &criterion_args(args), total)?
        .into_iter()
        .collect();
    let (results, warnings) = criterion::read_results(&crit_dir, Some(start));
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    notes.extend(warnings);

    let outcome = run_claims(root, args.quick);
    if let ClaimsOutcome::Failed(why) = &outcome {
        eprintln!("warning: the claims program failed: {why}");
    }

    let (rows, other) = Report::join(seed_rows, results);
    let report = Report {
        machine: Machine::detect(root, start),
        quick: args.quick,
        filter: args.filter.clone(),
        rows,
        other,
        claims: Claims {
            rows: claim_rows,
            outcome,
        },
        notes,
    };
    let docs = root.join("docs");
    std::fs::create_dir_all(&docs).map_err(|e| format!("cannot create {}: {e}", docs.display()))?;
    write(&docs.join("benchmarks.md"), &report::markdown(&report))?;
    write(&docs.join("benchmarks.json"), &report::json(&report))?;
    write(&docs.join("benchmarks.svg"), &report::svg(&report))?;
    println!(
        "wrote docs/benchmarks.md, .json, .svg: {} of {} rows measured, {} other benchmarks",
        report.measured(),
        report.rows.len(),
        report.other.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_from_criterion_output() {
        let out = "\
Example/sum/n=1024      time:   [1.0488 µs 1.0659 µs 1.0702 µs]
                        thrpt:  [956.81 Melem/s 960.65 Melem/s 976.33 Melem/s]
                 change:
                        time:   [-1.2% +0.5% +2.1%] (p = 0.51 > 0.05)
                        thrpt:  [-2.0% -0.5% +1.2%]
                        No change in performance detected.
Found 2 outliers among 100 measurements (2.00%)
  2 (2.00%) high mild

TreeVerifier/verify/branches=3,draft=4,vocab=4096
                        time:   [12.1 µs 12.3 µs 12.5 µs]
                        change: [-1.2% +0.5% +2.1%] (p = 0.51 > 0.05)
";
        let mut p = Progress::new(Some(17));
        let lines: Vec<String> = out.lines().filter_map(|l| p.feed(l)).collect();
        assert_eq!(
            lines,
            [
                "[1/17] Example/sum/n=1024 ... 1.0659 µs",
                "[2/17] TreeVerifier/verify/branches=3,draft=4,vocab=4096 ... 12.3 µs",
            ]
        );
        let mut p = Progress::new(None);
        assert_eq!(
            p.feed("A/b/c  time:   [1 ns 2 ns 3 ns]").unwrap(),
            "[1/?] A/b/c ... 2 ns"
        );
        assert_eq!(p.feed("garbage time: nothing"), None);
    }

    #[test]
    fn list_counting_and_args() {
        assert_eq!(
            count_listed("A/b/x: benchmark\nA/c/y: benchmark\n\nnoise\n"),
            2
        );
        let quick = BenchArgs {
            quick: true,
            filter: Some("Kv".to_owned()),
        };
        let a = criterion_args(&quick);
        assert!(a.contains(&"--quick".to_owned()));
        assert_eq!(a.last().map(String::as_str), Some("Kv"));
        assert!(!criterion_args(&BenchArgs::default()).contains(&"--quick".to_owned()));
    }
}
