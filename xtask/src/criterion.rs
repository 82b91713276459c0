//! Reader for criterion's on-disk results (`target/criterion/**/new/{benchmark,estimates}.json`).
//!
//! Criterion's file layout is private to criterion, so everything that knows about it lives in
//! this one module. A benchmark is identified by the ids stored *inside* `benchmark.json`
//! (`group_id`, `function_id`, `value_str`), never by its directory name, which criterion
//! sanitises (`/` becomes `_`, long names are truncated).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

/// What a benchmark processes per iteration, as recorded by criterion's `Throughput`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Throughput {
    /// Bits per iteration.
    Bits(u64),
    /// Bytes per iteration, reported in binary multiples (KiB/s).
    Bytes(u64),
    /// Bytes per iteration, reported in decimal multiples (KB/s).
    BytesDecimal(u64),
    /// Elements per iteration.
    Elements(u64),
    /// Elements (primary) and bytes per iteration.
    ElementsAndBytes {
        /// Elements per iteration.
        elements: u64,
        /// Bytes per iteration.
        bytes: u64,
    },
}

/// One benchmark result read from criterion's output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BenchResult {
    /// The benchmark group (`BenchmarkGroup` name).
    pub(crate) group_id: String,
    /// The id within the group: `function_id`, `value_str`, or both joined by `/`.
    pub(crate) id: String,
    /// Criterion's full id, `group/function/value`.
    pub(crate) full_id: String,
    /// Median time per iteration in nanoseconds.
    pub(crate) median_ns: f64,
    /// Confidence interval of the median in nanoseconds, `(lower, upper)`.
    pub(crate) median_ci_ns: (f64, f64),
    /// Throughput per iteration, if the benchmark declared one.
    pub(crate) throughput: Option<Throughput>,
}

impl BenchResult {
    /// Median in microseconds.
    pub(crate) fn median_us(&self) -> f64 {
        self.median_ns / 1e3
    }
}

/// Parses one benchmark from the text of its `benchmark.json` and `estimates.json`.
pub(crate) fn parse_benchmark(
    benchmark_json: &str,
    estimates_json: &str,
) -> Result<BenchResult, String> {
    let b: Value =
        serde_json::from_str(benchmark_json).map_err(|e| format!("benchmark.json: {e}"))?;
    let e: Value =
        serde_json::from_str(estimates_json).map_err(|e| format!("estimates.json: {e}"))?;
    let group_id = b["group_id"]
        .as_str()
        .ok_or("benchmark.json: no string `group_id`")?
        .to_owned();
    let function_id = b["function_id"].as_str();
    let value_str = b["value_str"].as_str();
    let id = match (function_id, value_str) {
        (Some(f), Some(v)) => format!("{f}/{v}"),
        (Some(x), None) | (None, Some(x)) => x.to_owned(),
        (None, None) => String::new(),
    };
    let full_id = match b["full_id"].as_str() {
        Some(s) => s.to_owned(),
        None if id.is_empty() => group_id.clone(),
        None => format!("{group_id}/{id}"),
    };
    let median = &e["median"];
    let num = |v: &Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| format!("estimates.json: no number `median.{what}`"))
    };
    let median_ns = num(&median["point_estimate"], "point_estimate")?;
    let ci = &median["confidence_interval"];
    let median_ci_ns = (
        num(&ci["lower_bound"], "confidence_interval.lower_bound")?,
        num(&ci["upper_bound"], "confidence_interval.upper_bound")?,
    );
    Ok(BenchResult {
        group_id,
        id,
        full_id,
        median_ns,
        median_ci_ns,
        throughput: parse_throughput(&b["throughput"]),
    })
}

/// Criterion serialises `Option<Throughput>` with serde's default enum tagging:
/// `null`, `{"Bytes": 1024}` or `{"ElementsAndBytes": {"elements": 8, "bytes": 32}}`.
fn parse_throughput(v: &Value) -> Option<Throughput> {
    let obj = v.as_object()?;
    let (kind, n) = obj.iter().next()?;
    Some(match kind.as_str() {
        "Bits" => Throughput::Bits(n.as_u64()?),
        "Bytes" => Throughput::Bytes(n.as_u64()?),
        "BytesDecimal" => Throughput::BytesDecimal(n.as_u64()?),
        "Elements" => Throughput::Elements(n.as_u64()?),
        "ElementsAndBytes" => Throughput::ElementsAndBytes {
            elements: n["elements"].as_u64()?,
            bytes: n["bytes"].as_u64()?,
        },
        _ => return None,
    })
}

/// Finds every `new/benchmark.json` under `dir` (criterion's output directory), recursively.
///
/// A missing `dir` yields no files. Directories named `report` and baseline directories other
/// than `new` are not descended into for results.
pub(crate) fn find_benchmark_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                if entry.file_name() != "report" {
                    stack.push(path);
                }
            } else if entry.file_name() == "benchmark.json"
                && d.file_name().is_some_and(|n| n == "new")
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Reads every benchmark under criterion's output directory `dir`.
///
/// With `since`, only benchmarks whose `benchmark.json` was written at or after that time are
/// returned, so results left over from an earlier run never pass for new ones. Unreadable or
/// malformed results are returned as warnings, not errors. Results are sorted by full id.
pub(crate) fn read_results(
    dir: &Path,
    since: Option<SystemTime>,
) -> (Vec<BenchResult>, Vec<String>) {
    let mut results = Vec::new();
    let mut warnings = Vec::new();
    for bench_file in find_benchmark_files(dir) {
        if let Some(since) = since {
            let fresh = std::fs::metadata(&bench_file)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            if !fresh {
                continue;
            }
        }
        let est_file = bench_file.with_file_name("estimates.json");
        let parsed = std::fs::read_to_string(&bench_file)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                let e = std::fs::read_to_string(&est_file)
                    .map_err(|e| format!("{}: {e}", est_file.display()))?;
                parse_benchmark(&b, &e)
            });
        match parsed {
            Ok(r) => results.push(r),
            Err(e) => warnings.push(format!("skipping {}: {e}", bench_file.display())),
        }
    }
    results.sort_by(|a, b| a.full_id.cmp(&b.full_id));
    (results, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/criterion")
    }

    #[test]
    fn reads_the_fixture_by_ids_not_directory_names() {
        let (results, warnings) = read_results(&fixture(), None);
        assert!(warnings.is_empty(), "{warnings:?}");
        let ids: Vec<(&str, &str)> = results
            .iter()
            .map(|r| (r.group_id.as_str(), r.id.as_str()))
            .collect();
        assert_eq!(ids, [("Example/max", "n=1024"), ("Example/sum", "n=1024")]);
        let sum = &results[1];
        assert_eq!(sum.full_id, "Example/sum/n=1024");
        assert_eq!(sum.throughput, Some(Throughput::Elements(1024)));
        assert!(sum.median_ci_ns.0 <= sum.median_ns && sum.median_ns <= sum.median_ci_ns.1);
        assert!(sum.median_ns > 0.0);
        assert_eq!(results[0].throughput, None);
    }

    #[test]
    fn old_results_are_ignored_when_a_start_time_is_given() {
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        let (results, warnings) = read_results(&fixture(), Some(future));
        assert!(results.is_empty() && warnings.is_empty());
    }

    #[test]
    fn missing_directory_is_empty() {
        let (results, warnings) = read_results(&fixture().join("does-not-exist"), None);
        assert!(results.is_empty() && warnings.is_empty());
    }

    #[test]
    fn id_shapes_and_throughputs() {
        let est = r#"{"median":{"point_estimate":2000.0,"confidence_interval":{"lower_bound":1900.0,"upper_bound":2100.0}}}"#;
        let both = r#"{"group_id":"G/op","function_id":"f","value_str":"p","throughput":{"ElementsAndBytes":{"elements":8,"bytes":32}},"full_id":"G/op/f/p"}"#;
        let r = parse_benchmark(both, est).unwrap();
        assert_eq!(r.id, "f/p");
        assert_eq!(r.median_us(), 2.0);
        assert_eq!(
            r.throughput,
            Some(Throughput::ElementsAndBytes {
                elements: 8,
                bytes: 32
            })
        );
        let value_only = r#"{"group_id":"G/op","function_id":null,"value_str":"p","throughput":{"BytesDecimal":5}}"#;
        let r = parse_benchmark(value_only, est).unwrap();
        assert_eq!((r.id.as_str(), r.full_id.as_str()), ("p", "G/op/p"));
        assert_eq!(r.throughput, Some(Throughput::BytesDecimal(5)));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let est = r#"{"median":{"point_estimate":1.0,"confidence_interval":{"lower_bound":1.0,"upper_bound":1.0}}}"#;
        assert!(parse_benchmark("{", est).is_err());
        assert!(parse_benchmark(r#"{"function_id":"x"}"#, est).is_err());
        assert!(parse_benchmark(r#"{"group_id":"g"}"#, r#"{"median":{}}"#).is_err());
    }
}
