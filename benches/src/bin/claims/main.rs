//! The claims program: measures, with our implementation, what each improvement claimed by the
//! seed (`benches/claims.tsv`) is actually worth, and prints one JSON object on stdout:
//!
//! ```text
//! {"claims": {"<key>": {"measured": "<one-line summary>", "details": {...}}}}
//! ```
//!
//! `cargo xtask bench` runs it and renders the claims table; a claim this program does not
//! measure (its component has not landed) is shown as missing there. `--quick` asks each
//! measurement for a smaller (still honest) sample.

use serde_json::{Map, Value, json};

mod adaptive_quantizer;
mod mixed_precision_kv_cache;
mod model_pool;
mod request_cost_estimator;

/// Options every claim measurement receives.
#[derive(Debug, Clone, Copy)]
struct Opts {
    /// Smaller samples, for `cargo xtask bench --quick`.
    quick: bool,
}

/// One claim's measurement.
struct Measured {
    /// One-line human summary for the report.
    summary: String,
    /// Everything measured, for the JSON sidecar.
    details: Value,
}

/// A claim key of `claims.tsv` and the function that measures it.
type Claim = (&'static str, fn(Opts) -> Measured);

/// The claims measured so far. Each component adds a module beside this file and its row
/// here.
const CLAIMS: &[Claim] = &[
    ("model_pool", model_pool::measure),
    ("cost_estimator", request_cost_estimator::measure),
    ("mixed_precision_kv", mixed_precision_kv_cache::measure),
    ("adaptive_quantize", adaptive_quantizer::measure),
];

fn main() {
    let quick = std::env::args().skip(1).any(|a| a == "--quick");
    let known = benches::claim_keys();
    let mut out = Map::new();
    for &(key, measure) in CLAIMS {
        assert!(
            known.iter().any(|k| k == key),
            "{key} is not a key of benches/claims.tsv"
        );
        eprintln!("claims: measuring {key}");
        let m = measure(Opts { quick });
        out.insert(
            key.to_string(),
            json!({ "measured": m.summary, "details": m.details }),
        );
    }
    println!("{}", json!({ "claims": out }));
}
