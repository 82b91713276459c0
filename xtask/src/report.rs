//! Rendering the benchmark report: Markdown, a JSON sidecar and an SVG chart.
//!
//! Everything here is a pure function from a [`Report`] to a `String`, so the output is
//! deterministic and snapshot-tested. Running benchmarks and reading files happen elsewhere.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::criterion::{BenchResult, Throughput};
use crate::machine::Machine;
use crate::seed::{ClaimRow, SeedRow};

/// A seed row and, if it was measured in this run, its criterion result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// The seed table row.
    pub(crate) seed: SeedRow,
    /// The matching criterion result, or `None` if the row is missing.
    pub(crate) result: Option<BenchResult>,
}

impl Row {
    /// Squish median in µs, if measured.
    pub(crate) fn squish_us(&self) -> Option<f64> {
        self.result.as_ref().map(BenchResult::median_us)
    }

    /// Python µs on our machine / Squish µs: above 1 means Squish is faster.
    pub(crate) fn speedup_vs_python(&self) -> Option<f64> {
        ratio(self.seed.python_us_value(), self.squish_us())
    }

    /// Published seed µs / Squish µs.
    pub(crate) fn speedup_vs_published(&self) -> Option<f64> {
        ratio(self.seed.seed_us_value(), self.squish_us())
    }
}

fn ratio(reference: Option<f64>, ours: Option<f64>) -> Option<f64> {
    let (r, o) = (reference?, ours?);
    (o > 0.0).then_some(r / o).filter(|v| v.is_finite())
}

/// The outcome of running the claims program.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ClaimsOutcome {
    /// The program ran; its `claims` object (key → `{measured, details}`).
    Reported(Map<String, Value>),
    /// The program failed or printed something unusable; the reason.
    Failed(String),
}

/// The claims table: the seed's claims and what the claims program reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Claims {
    /// Rows of `benches/claims.tsv`.
    pub(crate) rows: Vec<ClaimRow>,
    /// What the claims program reported.
    pub(crate) outcome: ClaimsOutcome,
}

impl Claims {
    /// The reported `(measured, details)` for `key`, if any.
    fn reported(&self, key: &str) -> Option<(&str, &Value)> {
        let ClaimsOutcome::Reported(map) = &self.outcome else {
            return None;
        };
        let entry = map.get(key)?;
        Some((entry["measured"].as_str()?, &entry["details"]))
    }

    /// Keys the program reported that `claims.tsv` does not list.
    fn unlisted(&self) -> Vec<&str> {
        let ClaimsOutcome::Reported(map) = &self.outcome else {
            return Vec::new();
        };
        map.keys()
            .map(String::as_str)
            .filter(|k| !self.rows.iter().any(|r| r.key == *k))
            .collect()
    }
}

/// Parses the claims program's stdout: a JSON object `{"claims": {...}}`.
pub(crate) fn parse_claims_output(stdout: &str) -> ClaimsOutcome {
    match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(Value::Object(mut top)) => match top.remove("claims") {
            Some(Value::Object(map)) => ClaimsOutcome::Reported(map),
            _ => ClaimsOutcome::Failed("its output has no `claims` object".to_owned()),
        },
        Ok(_) => ClaimsOutcome::Failed("its output is not a JSON object".to_owned()),
        Err(e) => ClaimsOutcome::Failed(format!("its output is not JSON ({e})")),
    }
}

/// Everything the report shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Report {
    /// Machine, compiler, date, commit.
    pub(crate) machine: Machine,
    /// Whether criterion ran in quick mode.
    pub(crate) quick: bool,
    /// The benchmark filter, if one was given.
    pub(crate) filter: Option<String>,
    /// Seed rows, in seed-table order, joined to results.
    pub(crate) rows: Vec<Row>,
    /// Results that match no seed row, sorted by full id.
    pub(crate) other: Vec<BenchResult>,
    /// The claims table.
    pub(crate) claims: Claims,
    /// Problems with the run worth telling the reader (e.g. a failed `cargo bench`).
    pub(crate) notes: Vec<String>,
}

impl Report {
    /// Joins criterion results to seed rows: a result matches a row when its group equals the
    /// row's `group` and its id equals the row's `id`. Unmatched results go to `other`.
    pub(crate) fn join(
        seed: Vec<SeedRow>,
        results: Vec<BenchResult>,
    ) -> (Vec<Row>, Vec<BenchResult>) {
        let mut rows: Vec<Row> = seed
            .into_iter()
            .map(|seed| Row { seed, result: None })
            .collect();
        let mut other = Vec::new();
        for r in results {
            match rows
                .iter_mut()
                .find(|row| row.seed.group == r.group_id && row.seed.id == r.id)
            {
                Some(row) => row.result = Some(r),
                None => other.push(r),
            }
        }
        (rows, other)
    }

    /// Number of seed rows with a result.
    pub(crate) fn measured(&self) -> usize {
        self.rows.iter().filter(|r| r.result.is_some()).count()
    }
}

/// Escapes text for a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Formats a time in µs with three significant digits (whole µs from 100 µs up), e.g.
/// `3653`, `12.3`, `2.50`, `0.0705`, `0.000652`.
pub(crate) fn fmt_us(us: f64) -> String {
    if !(us.is_finite() && us > 0.0) {
        return format!("{us}");
    }
    // The decimal exponent after rounding to three significant digits (99.96 → 1.00e2).
    let sci = format!("{us:.2e}");
    let magnitude: i32 = sci
        .split_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let decimals = usize::try_from((2 - magnitude).clamp(0, 9)).unwrap_or(0);
    format!("{us:.decimals$}")
}

/// Formats a speed-up factor, e.g. `12.3×`, `0.45×`.
pub(crate) fn fmt_speedup(x: f64) -> String {
    match x {
        x if x >= 100.0 => format!("{x:.0}×"),
        x if x >= 1.0 => format!("{x:.1}×"),
        x => format!("{x:.2}×"),
    }
}

/// Formats `per_iter` units processed in `median_ns`, as a rate with a unit prefix.
fn fmt_rate(per_iter: u64, median_ns: f64, base: f64, units: [&str; 4]) -> String {
    #[allow(clippy::cast_precision_loss)] // throughput counts are far below 2^52
    let mut rate = per_iter as f64 / (median_ns * 1e-9);
    let mut unit = units[0];
    for u in &units[1..] {
        if rate < base {
            break;
        }
        rate /= base;
        unit = u;
    }
    let digits = if rate >= 100.0 {
        0
    } else if rate >= 10.0 {
        1
    } else {
        2
    };
    format!("{rate:.digits$} {unit}")
}

/// Human throughput of a result, e.g. `1.23 Gelem/s`, or an empty string.
pub(crate) fn fmt_throughput(r: &BenchResult) -> String {
    const ELEM: [&str; 4] = ["elem/s", "Kelem/s", "Melem/s", "Gelem/s"];
    const BIN: [&str; 4] = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    const DEC: [&str; 4] = ["B/s", "KB/s", "MB/s", "GB/s"];
    const BITS: [&str; 4] = ["bit/s", "Kbit/s", "Mbit/s", "Gbit/s"];
    let ns = r.median_ns;
    if ns <= 0.0 {
        return String::new();
    }
    match r.throughput {
        None => String::new(),
        Some(Throughput::Bits(n)) => fmt_rate(n, ns, 1000.0, BITS),
        Some(Throughput::Bytes(n)) => fmt_rate(n, ns, 1024.0, BIN),
        Some(Throughput::BytesDecimal(n)) => fmt_rate(n, ns, 1000.0, DEC),
        Some(Throughput::Elements(n)) => fmt_rate(n, ns, 1000.0, ELEM),
        Some(Throughput::ElementsAndBytes { elements, bytes }) => format!(
            "{}, {}",
            fmt_rate(elements, ns, 1000.0, ELEM),
            fmt_rate(bytes, ns, 1024.0, BIN)
        ),
    }
}

fn throughput_json(t: Option<Throughput>) -> Value {
    match t {
        None => Value::Null,
        Some(Throughput::Bits(n)) => json!({"kind": "bits", "per_iteration": n}),
        Some(Throughput::Bytes(n)) => json!({"kind": "bytes", "per_iteration": n}),
        Some(Throughput::BytesDecimal(n)) => json!({"kind": "bytes_decimal", "per_iteration": n}),
        Some(Throughput::Elements(n)) => json!({"kind": "elements", "per_iteration": n}),
        Some(Throughput::ElementsAndBytes { elements, bytes }) => {
            json!({"kind": "elements_and_bytes", "per_iteration": elements, "bytes_per_iteration": bytes})
        }
    }
}

const MISSING: &str = "**missing**";
const DASH: &str = "—";

/// Renders `docs/benchmarks.md`.
pub(crate) fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut s = String::new();
    let total = r.rows.len();
    let measured = r.measured();
    let _ = writeln!(s, "# Squish benchmarks\n");
    let _ = writeln!(
        s,
        "<!-- GENERATED by `cargo xtask bench`; do not edit by hand. -->\n"
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| Machine | {} ({} logical cores) |",
        cell(&m.cpu),
        m.logical_cores
    );
    let _ = writeln!(s, "| Compiler | `{}` |", cell(&m.rustc));
    let _ = writeln!(s, "| Date | {} |", m.date_utc);
    let _ = writeln!(s, "| Commit | `{}` |", cell(&m.commit));
    let mode = if r.quick {
        "quick (criterion `--quick --measurement-time 1`: no warm-up, at most 1 s per benchmark): indicative, noisier than a full run"
    } else {
        "full (criterion defaults)"
    };
    let _ = writeln!(s, "| Mode | {mode} |");
    if let Some(f) = &r.filter {
        let _ = writeln!(
            s,
            "| Filter | `{}` (benchmarks outside the filter were not run and show as missing) |",
            cell(f)
        );
    }
    let _ = writeln!(s);
    for note in &r.notes {
        let _ = writeln!(s, "> **Note:** {}\n", note.replace('\n', " "));
    }
    let _ = writeln!(s, "**{measured} of {total} rows measured.**\n");
    let _ = writeln!(
        s,
        "Squish µs is criterion's median time per call. Python µs is the seed's Python \
         implementation timed on our dev machine, the same kind of machine as these runs; \
         *speed-up vs Python* (Python µs ÷ Squish µs) is the target metric. *Speed-up vs \
         published* compares with the seed's published figure, measured on a different machine. \
         Above 1× Squish is faster.\n"
    );
    if measured > 0 {
        let _ = writeln!(
            s,
            "![Speed-up vs Python per row, log scale](benchmarks.svg)\n"
        );
    }
    let _ = writeln!(s, "## Seed operations\n");
    let _ = writeln!(
        s,
        "| Module | Operation | Seed µs (published) | Python µs | Squish µs | Speed-up vs Python | Speed-up vs published |"
    );
    let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|");
    for row in &r.rows {
        let squish = row.squish_us().map_or_else(|| MISSING.to_owned(), fmt_us);
        let vs_py = row
            .speedup_vs_python()
            .map_or_else(|| DASH.to_owned(), fmt_speedup);
        let vs_pub = row
            .speedup_vs_published()
            .map_or_else(|| DASH.to_owned(), fmt_speedup);
        let python = if row.seed.python_us.trim().is_empty() {
            DASH
        } else {
            row.seed.python_us.trim()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {squish} | {vs_py} | {vs_pub} |",
            cell(&row.seed.module),
            cell(&row.seed.operation),
            cell(row.seed.seed_us.trim()),
            cell(python),
        );
    }
    let _ = writeln!(s);
    if !r.other.is_empty() {
        let _ = writeln!(s, "## Other benchmarks\n");
        let _ = writeln!(s, "Criterion results that match no seed row.\n");
        let _ = writeln!(s, "| Group | Id | Median µs | Throughput |");
        let _ = writeln!(s, "|---|---|--:|--:|");
        for o in &r.other {
            let tp = fmt_throughput(o);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                cell(&o.group_id),
                cell(&o.id),
                fmt_us(o.median_us()),
                if tp.is_empty() { DASH.to_owned() } else { tp }
            );
        }
        let _ = writeln!(s);
    }
    claims_markdown(&mut s, &r.claims);
    s
}

fn claims_markdown(s: &mut String, c: &Claims) {
    let _ = writeln!(s, "## Claims\n");
    let reported = c
        .rows
        .iter()
        .filter(|row| c.reported(&row.key).is_some())
        .count();
    match &c.outcome {
        ClaimsOutcome::Failed(why) => {
            let _ = writeln!(
                s,
                "> **The claims program failed:** {}\n",
                why.replace('\n', " ")
            );
        }
        ClaimsOutcome::Reported(_) => {}
    }
    let _ = writeln!(
        s,
        "The seed's improvement claims, each measured with our implementation by \
         `cargo run --release -p benches --bin claims`. **{reported} of {} claims measured.**\n",
        c.rows.len()
    );
    let _ = writeln!(s, "| Technique | Seed claim | Module | Squish measured |");
    let _ = writeln!(s, "|---|---|---|---|");
    for row in &c.rows {
        let measured = c
            .reported(&row.key)
            .map_or_else(|| MISSING.to_owned(), |(m, _)| cell(m));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {measured} |",
            cell(&row.technique),
            cell(&row.seed_improvement),
            cell(&row.module)
        );
    }
    let unlisted = c.unlisted();
    if !unlisted.is_empty() {
        let _ = writeln!(
            s,
            "\nReported but not in `benches/claims.tsv`: {}.",
            unlisted
                .iter()
                .map(|k| format!("`{}`", cell(k)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// Renders `docs/benchmarks.json`: the same data as the Markdown, with every column.
pub(crate) fn json(r: &Report) -> String {
    let m = &r.machine;
    let rows: Vec<Value> = r
        .rows
        .iter()
        .map(|row| {
            let s = &row.seed;
            json!({
                "key": s.key,
                "module": s.module,
                "operation": s.operation,
                "notes": s.notes,
                "group": s.group,
                "id": s.id,
                "seed_us": s.seed_us_value(),
                "python_us": s.python_us_value(),
                "status": if row.result.is_some() { "measured" } else { "missing" },
                "squish_us": row.squish_us(),
                "squish_ci_us": row.result.as_ref().map(|b| [b.median_ci_ns.0 / 1e3, b.median_ci_ns.1 / 1e3]),
                "speedup_vs_python": row.speedup_vs_python(),
                "speedup_vs_published": row.speedup_vs_published(),
            })
        })
        .collect();
    let other: Vec<Value> = r
        .other
        .iter()
        .map(|o| {
            json!({
                "group": o.group_id,
                "id": o.id,
                "full_id": o.full_id,
                "median_us": o.median_us(),
                "median_ci_us": [o.median_ci_ns.0 / 1e3, o.median_ci_ns.1 / 1e3],
                "throughput": throughput_json(o.throughput),
            })
        })
        .collect();
    let claim_rows: Vec<Value> = r
        .claims
        .rows
        .iter()
        .map(|c| {
            let rep = r.claims.reported(&c.key);
            json!({
                "key": c.key,
                "technique": c.technique,
                "seed_improvement": c.seed_improvement,
                "module": c.module,
                "status": if rep.is_some() { "measured" } else { "missing" },
                "measured": rep.map(|(m, _)| m),
                "details": rep.map_or(Value::Null, |(_, d)| d.clone()),
            })
        })
        .collect();
    let (claims_status, claims_error) = match &r.claims.outcome {
        ClaimsOutcome::Reported(_) => ("ok", None),
        ClaimsOutcome::Failed(why) => ("failed", Some(why.as_str())),
    };
    let doc = json!({
        "schema_version": 1,
        "generated_by": "cargo xtask bench",
        "machine": {
            "cpu": m.cpu,
            "logical_cores": m.logical_cores,
            "rustc": m.rustc,
            "date_utc": m.date_utc,
            "commit": m.commit,
        },
        "run": { "quick": r.quick, "filter": r.filter, "notes": r.notes },
        "rows_measured": r.measured(),
        "rows_total": r.rows.len(),
        "rows": rows,
        "other": other,
        "claims": {
            "status": claims_status,
            "error": claims_error,
            "unlisted": r.claims.unlisted(),
            "rows": claim_rows,
        },
    });
    let mut out =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    out.push('\n');
    out
}

/// Escapes text for SVG/XML content and attributes.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Shortens `s` to at most `max` characters, ending with `…` if cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Label of a power of ten on the axis: `0.01×`, `0.1×`, `1×`, `10×`, ….
fn decade_label(k: i32) -> String {
    if k >= 0 {
        format!("1{}×", "0".repeat(usize::try_from(k).unwrap_or(0)))
    } else {
        format!("0.{}1×", "0".repeat(usize::try_from(-k - 1).unwrap_or(0)))
    }
}

/// Renders `docs/benchmarks.svg`: one horizontal bar per measured row, speed-up vs Python on a
/// log10 axis (gridlines at every power of ten from 0.1× to 1000×, wider if needed), bars
/// drawn from the 1× line (right and green: faster; left and red: slower).
pub(crate) fn svg(r: &Report) -> String {
    const WIDTH: f64 = 960.0;
    const X0: f64 = 400.0;
    const X1: f64 = 880.0;
    const TOP: f64 = 64.0;
    const ROW_H: f64 = 22.0;
    let bars: Vec<(String, f64)> = r
        .rows
        .iter()
        .filter_map(|row| {
            let v = row.speedup_vs_python()?;
            let label = format!("{} · {}", row.seed.module, row.seed.operation);
            Some((truncate(&label, 56), v))
        })
        .collect();
    #[allow(clippy::cast_possible_truncation)] // log10 of finite positive f64 fits in i32
    let (lo, hi) = bars.iter().fold((-1_i32, 3_i32), |(lo, hi), (_, v)| {
        (
            lo.min(v.log10().floor() as i32),
            hi.max(v.log10().ceil() as i32),
        )
    });
    let x = |v: f64| {
        let t = (v.log10() - f64::from(lo)) / f64::from(hi - lo);
        X0 + t.clamp(0.0, 1.0) * (X1 - X0)
    };
    #[allow(clippy::cast_precision_loss)] // a few dozen rows
    let n = bars.len().max(1) as f64;
    let axis_y = TOP + n * ROW_H + 4.0;
    let height = axis_y + 44.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{height:.0}" viewBox="0 0 {WIDTH:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="16" y="24" font-size="16" font-weight="bold">Squish speed-up vs the seed's Python (same machine), log scale</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="16" y="44" fill="#555555">{} of {} rows measured · {} · {} · {}</text>"##,
        r.measured(),
        r.rows.len(),
        xml(&r.machine.commit),
        xml(&r.machine.date_utc),
        xml(&r.machine.cpu)
    );
    for k in lo..=hi {
        let gx = x(10f64.powi(k));
        let (stroke, w) = if k == 0 {
            ("#333333", 1.5)
        } else {
            ("#dddddd", 1.0)
        };
        let _ = writeln!(
            s,
            r#"<line x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{axis_y:.1}" stroke="{stroke}" stroke-width="{w}"/>"#,
            TOP - 6.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            axis_y + 16.0,
            decade_label(k)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555555">speed-up vs Python (Python µs ÷ Squish µs); right of 1× is faster</text>"##,
        (X0 + X1) / 2.0,
        axis_y + 34.0
    );
    if bars.is_empty() {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555555">no rows measured yet</text>"##,
            (X0 + X1) / 2.0,
            TOP + ROW_H / 2.0 + 4.0
        );
    }
    let one = x(1.0);
    for (i, (label, v)) in bars.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let y = TOP + i as f64 * ROW_H;
        let xv = x(*v);
        let (left, right) = if xv >= one { (one, xv) } else { (xv, one) };
        let color = if *v >= 1.0 { "#2e7d32" } else { "#c62828" };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"#,
            X0 - 8.0,
            y + 15.0,
            xml(label)
        );
        let _ = writeln!(
            s,
            r#"<rect x="{left:.1}" y="{:.1}" width="{:.1}" height="14" fill="{color}"><title>{}: {}</title></rect>"#,
            y + 4.0,
            (right - left).max(1.0),
            xml(label),
            fmt_speedup(*v)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            right + 4.0,
            y + 15.0,
            fmt_speedup(*v)
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed_row(module: &str, op: &str, seed_us: &str, group: &str, id: &str, py: &str) -> SeedRow {
        SeedRow {
            key: format!("{}/{op}", module.to_lowercase()),
            module: module.to_owned(),
            operation: format!("{op}() {id}"),
            seed_us: seed_us.to_owned(),
            notes: "note".to_owned(),
            group: group.to_owned(),
            id: id.to_owned(),
            python_us: py.to_owned(),
        }
    }

    fn result(
        group: &str,
        id: &str,
        median_ns: f64,
        throughput: Option<Throughput>,
    ) -> BenchResult {
        BenchResult {
            group_id: group.to_owned(),
            id: id.to_owned(),
            full_id: format!("{group}/{id}"),
            median_ns,
            median_ci_ns: (median_ns * 0.98, median_ns * 1.02),
            throughput,
        }
    }

    fn claim(key: &str, technique: &str) -> ClaimRow {
        ClaimRow {
            key: key.to_owned(),
            technique: technique.to_owned(),
            seed_improvement: "2× reduction".to_owned(),
            module: "KVCompressor online | quant".to_owned(),
        }
    }

    fn fixture() -> Report {
        let seed = vec![
            seed_row(
                "TreeVerifier",
                "verify",
                "521.7",
                "TreeVerifier/verify",
                "branches=3,draft=4,vocab=4096",
                "356.067",
            ),
            seed_row(
                "KVCompressor",
                "compress",
                "317.6",
                "KvCompressor/compress",
                "heads=8,seq=128,head_dim=64",
                "643.198",
            ),
            seed_row(
                "SLAMonitor",
                "record",
                "0.26",
                "SlaMonitor/record",
                "latency=400ms",
                "0.170",
            ),
            seed_row(
                "TokenBudgetGate",
                "tick",
                "0.30",
                "TokenBudgetGate/tick",
                "hard",
                "0.235",
            ),
        ];
        let results = vec![
            result(
                "TreeVerifier/verify",
                "branches=3,draft=4,vocab=4096",
                12_345.0,
                None,
            ),
            result("SlaMonitor/record", "latency=400ms", 2_500.0, None),
            result("TokenBudgetGate/tick", "hard", 0.9, None),
            result(
                "Example/sum",
                "n=1024",
                70.5,
                Some(Throughput::Elements(1024)),
            ),
        ];
        let (rows, other) = Report::join(seed, results);
        let mut reported = Map::new();
        reported.insert(
            "kv_compress".to_owned(),
            json!({"measured": "2.1× smaller (INT8 + 30% pruned)", "details": {"ratio": 2.1}}),
        );
        reported.insert(
            "extra_claim".to_owned(),
            json!({"measured": "x", "details": null}),
        );
        Report {
            machine: Machine {
                cpu: "AMD EPYC 7B13".to_owned(),
                logical_cores: 2,
                rustc: "rustc 1.95.0 (59807616e 2026-04-14)".to_owned(),
                date_utc: "2026-11-26 07:30 UTC".to_owned(),
                commit: "254f073-dirty".to_owned(),
            },
            quick: true,
            filter: None,
            rows,
            other,
            claims: Claims {
                rows: vec![
                    claim("kv_compress", "KV cache memory (INT8+prune)"),
                    claim("dynamic_ntk", "Infinite context (NTK RoPE)"),
                ],
                outcome: ClaimsOutcome::Reported(reported),
            },
            notes: Vec::new(),
        }
    }

    #[test]
    fn join_matches_group_and_id() {
        let r = fixture();
        assert_eq!(r.measured(), 3);
        assert!(r.rows[1].result.is_none());
        assert_eq!(r.other.len(), 1);
        assert_eq!(r.other[0].group_id, "Example/sum");
    }

    #[test]
    fn speedups() {
        let r = fixture();
        let v = r.rows[0].speedup_vs_python().unwrap();
        assert!((v - 356.067 / 12.345).abs() < 1e-9);
        assert_eq!(r.rows[1].speedup_vs_python(), None);
    }

    #[test]
    fn markdown_snapshot() {
        insta::assert_snapshot!(markdown(&fixture()));
    }

    #[test]
    fn markdown_with_failed_claims_and_filter_snapshot() {
        let mut r = fixture();
        r.filter = Some("Tree".to_owned());
        r.quick = false;
        r.other.clear();
        r.notes.push(
            "`cargo bench` exited with exit status: 101; results may be incomplete.".to_owned(),
        );
        r.claims.outcome = ClaimsOutcome::Failed("exit status: 101".to_owned());
        insta::assert_snapshot!(markdown(&r));
    }

    #[test]
    fn json_snapshot() {
        insta::assert_snapshot!(json(&fixture()));
    }

    #[test]
    fn svg_snapshot() {
        insta::assert_snapshot!(svg(&fixture()));
    }

    #[test]
    fn svg_without_measured_rows_snapshot() {
        let mut r = fixture();
        for row in &mut r.rows {
            row.result = None;
        }
        insta::assert_snapshot!(svg(&r));
    }

    #[test]
    fn claims_output_parsing() {
        assert!(
            matches!(parse_claims_output(r#"{"claims": {}}"#), ClaimsOutcome::Reported(m) if m.is_empty())
        );
        assert!(matches!(
            parse_claims_output("oops"),
            ClaimsOutcome::Failed(_)
        ));
        assert!(matches!(
            parse_claims_output("[1]"),
            ClaimsOutcome::Failed(_)
        ));
        assert!(matches!(
            parse_claims_output(r#"{"x": 1}"#),
            ClaimsOutcome::Failed(_)
        ));
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_us(3653.2), "3653");
        assert_eq!(fmt_us(12.345), "12.3");
        assert_eq!(fmt_us(0.000_652_1), "0.000652");
        assert_eq!(fmt_us(0.0705), "0.0705");
        assert_eq!(fmt_us(2.5), "2.50");
        assert_eq!(fmt_us(99.96), "100");
        assert_eq!(fmt_us(0.099_96), "0.100");
        assert_eq!(fmt_speedup(0.456), "0.46×");
        assert_eq!(decade_label(-2), "0.01×");
        assert_eq!(decade_label(3), "1000×");
        assert_eq!(truncate("abcdef", 4), "abc…");
        let r = result("G/op", "x", 1000.0, Some(Throughput::Bytes(1 << 20)));
        assert_eq!(fmt_throughput(&r), "977 GiB/s");
    }
}
