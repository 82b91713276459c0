//! Shared pieces of the Squish benchmarks and the claims program.
//!
//! The seed table (`benches/seed.tsv`) is the single source of the benchmark names: a bench for
//! a seed row asks [`seed_row`] for its criterion group and id by the row's key, so the names in
//! the report can never drift from the table.

// The workspace README's example is compiled and run as a doctest of this crate.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use rand::SeedableRng;
use rand::rngs::StdRng;

/// The seed's latency table, as checked in.
pub const SEED_TSV: &str = include_str!("../seed.tsv");

/// The seed's improvement ("claims") table, as checked in.
pub const CLAIMS_TSV: &str = include_str!("../claims.tsv");

/// The fixed seed every benchmark input is generated from.
pub const INPUT_SEED: u64 = 0x5eed_2026;

/// One row of `seed.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct SeedRow {
    /// The seed's module/operation key, e.g. `tree_verifier/verify`.
    pub key: String,
    /// The seed's module name, e.g. `TreeVerifier`.
    pub module: String,
    /// The seed's operation text.
    pub operation: String,
    /// The seed's published latency in microseconds.
    pub seed_us: f64,
    /// The seed's note.
    pub notes: String,
    /// The criterion group, `<RustType>/<operation>`.
    pub group: String,
    /// The criterion benchmark id (the seed row's parameters).
    pub id: String,
    /// The seed's Python implementation on our dev machine kind, in microseconds.
    pub python_us: f64,
}

/// Data lines of a `#`-commented TSV with a header row: yields each row's fields.
fn tsv_rows(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .skip(1)
        .map(|l| l.split('\t').collect())
}

/// Parses `seed.tsv`.
///
/// # Panics
/// If a row does not have 8 fields or a latency is not a number (the file is checked in, and a
/// test parses it).
pub fn seed_rows() -> Vec<SeedRow> {
    tsv_rows(SEED_TSV)
        .map(|f| {
            assert_eq!(f.len(), 8, "seed.tsv row {f:?} must have 8 fields");
            let num = |s: &str| {
                s.parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad number {s:?}"))
            };
            SeedRow {
                key: f[0].into(),
                module: f[1].into(),
                operation: f[2].into(),
                seed_us: num(f[3]),
                notes: f[4].into(),
                group: f[5].into(),
                id: f[6].into(),
                python_us: num(f[7]),
            }
        })
        .collect()
}

/// The keys of `claims.tsv`, in table order.
pub fn claim_keys() -> Vec<String> {
    tsv_rows(CLAIMS_TSV).map(|f| f[0].to_string()).collect()
}

/// The criterion group and benchmark id of the seed row `key`.
///
/// # Panics
/// If `key` is not a row of `seed.tsv`: a bench for a row that does not exist is a bug.
pub fn seed_row(key: &str) -> (String, String) {
    let row = seed_rows()
        .into_iter()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("{key:?} is not a key of benches/seed.tsv"));
    (row.group, row.id)
}

/// A seeded RNG for benchmark inputs: the same inputs on every run.
pub fn input_rng() -> StdRng {
    StdRng::seed_from_u64(INPUT_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn seed_table_is_complete_and_unique() {
        let rows = seed_rows();
        assert_eq!(rows.len(), 54, "the seed publishes 54 latency rows");
        let keys: HashSet<_> = rows.iter().map(|r| &r.key).collect();
        assert_eq!(keys.len(), rows.len(), "seed keys must be unique");
        let ids: HashSet<_> = rows.iter().map(|r| (&r.group, &r.id)).collect();
        assert_eq!(ids.len(), rows.len(), "(group, id) pairs must be unique");
        for r in &rows {
            assert!(r.seed_us > 0.0 && r.python_us > 0.0, "{r:?}");
            let (ty, op) = r
                .group
                .split_once('/')
                .expect("group is <RustType>/<operation>");
            assert!(
                ty.chars().next().is_some_and(|c| c.is_ascii_uppercase()),
                "{ty}"
            );
            assert!(!op.is_empty() && !op.contains('/'), "{op}");
        }
    }

    #[test]
    fn seed_rows_match_the_python_reference_table() {
        // Every python_us figure must be the one in shared/reference/python-reference.tsv.
        let Some(shared) = squish_testkit::shared_dir() else {
            // CI lays shared/ beside the checkout and must check it; a developer without it
            // still gets the table-shape checks above.
            assert!(
                std::env::var_os("CI").is_none(),
                "shared/ not found beside the checkout"
            );
            eprintln!("shared/ not found: python-reference cross-check not run");
            return;
        };
        let text = std::fs::read_to_string(shared.join("reference/python-reference.tsv"))
            .expect("python-reference.tsv");
        let reference: Vec<(String, f64)> = tsv_rows(&text)
            .map(|f| (format!("{}/{}", f[0], f[1]), f[2].parse().expect("number")))
            .collect();
        assert_eq!(reference.len(), 54);
        let rows = seed_rows();
        for (key, us) in reference {
            let row = rows
                .iter()
                .find(|r| r.key == key)
                .unwrap_or_else(|| panic!("{key} missing"));
            assert!(
                (row.python_us - us).abs() < 1e-9,
                "{key}: {} vs {us}",
                row.python_us
            );
        }
    }

    #[test]
    fn claims_table_is_complete_and_unique() {
        let keys = claim_keys();
        assert_eq!(keys.len(), 27, "the seed claims 27 improvements");
        assert_eq!(keys.iter().collect::<HashSet<_>>().len(), keys.len());
    }

    #[test]
    fn seed_row_lookup() {
        assert_eq!(
            seed_row("tree_verifier/verify"),
            (
                "TreeVerifier/verify".to_string(),
                "branches=3,draft=4,vocab=4096".to_string()
            )
        );
        assert!(std::panic::catch_unwind(|| seed_row("nope")).is_err());
    }
}
