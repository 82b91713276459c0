//! The report header: which machine, compiler and commit produced the numbers, and when.

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where and when a benchmark run happened.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Machine {
    /// CPU model name from `/proc/cpuinfo`, or `unknown CPU`.
    pub(crate) cpu: String,
    /// Number of logical cores.
    pub(crate) logical_cores: usize,
    /// `rustc -V` output, e.g. `rustc 1.95.0 (59807616e 2026-04-14)`.
    pub(crate) rustc: String,
    /// Date and time of the run, UTC, `YYYY-MM-DD HH:MM UTC`.
    pub(crate) date_utc: String,
    /// `git rev-parse --short HEAD`, with `-dirty` if the work tree has changes.
    pub(crate) commit: String,
}

impl Machine {
    /// Collects the header for a run that started at `start`, in the repository at `root`.
    ///
    /// Never fails: anything that cannot be found is reported as `unknown`.
    pub(crate) fn detect(root: &Path, start: SystemTime) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let (cpu, cores) = parse_cpuinfo(&cpuinfo);
        let logical_cores = cores
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(0);
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
        let rustc = output(Command::new(rustc).arg("-V")).unwrap_or_else(|| "unknown".to_owned());
        let commit = match output(
            Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .current_dir(root),
        ) {
            Some(hash) => {
                let dirty = output(
                    Command::new("git")
                        .args(["status", "--porcelain"])
                        .current_dir(root),
                )
                .is_some_and(|s| !s.is_empty());
                if dirty { format!("{hash}-dirty") } else { hash }
            }
            None => "unknown".to_owned(),
        };
        let secs = start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self {
            cpu: cpu.unwrap_or_else(|| "unknown CPU".to_owned()),
            logical_cores,
            rustc,
            date_utc: format_utc(secs),
            commit,
        }
    }
}

/// Trimmed stdout of a successful command, or `None`.
fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The CPU model (first `model name`, or `Hardware`/`cpu model` on other architectures) and the
/// number of `processor` entries in the text of `/proc/cpuinfo`.
pub(crate) fn parse_cpuinfo(text: &str) -> (Option<String>, Option<usize>) {
    let mut model = None;
    let mut processors = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k == "processor" {
            processors += 1;
        } else if model.is_none()
            && matches!(k, "model name" | "Hardware" | "cpu model")
            && !v.is_empty()
        {
            model = Some(v.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    (model, (processors > 0).then_some(processors))
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DD HH:MM UTC` (proleptic Gregorian).
pub(crate) fn format_utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Howard Hinnant's `civil_from_days` for non-negative day counts since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_709_251_199), "2024-02-29 23:59 UTC");
        assert_eq!(format_utc(1_798_761_600 + 3_723), "2027-01-01 01:02 UTC");
    }

    #[test]
    fn cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: AMD  EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(
            parse_cpuinfo(text),
            (Some("AMD EPYC 7B13".to_owned()), Some(2))
        );
        assert_eq!(parse_cpuinfo(""), (None, None));
    }
}
