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
mod budget_spec_decoder;
mod dedupe_attn;
mod dynamic_ntk_scaler;
mod fault_handler;
mod flash_prefill;
mod kv_codec;
mod kv_compress;
mod mixed_precision_kv_cache;
mod model_pool;
mod quant_spec_decoder;
mod request_cost_estimator;
mod retention_kernel;
mod sparse_attn_index;
mod token_budget_gate;
mod tree_verifier;

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
    ("retention_attn", retention_kernel::measure),
    ("dynamic_ntk", dynamic_ntk_scaler::measure),
    ("sparse_attn_index", sparse_attn_index::measure),
    ("dedupe_attn", dedupe_attn::measure),
    ("token_budget_gate", token_budget_gate::measure),
    ("fault_tolerance", fault_handler::measure),
    ("budget_spec", budget_spec_decoder::measure),
    ("flash_prefill", flash_prefill::measure),
    ("quant_spec_decode", quant_spec_decoder::measure),
    ("kv_compress", kv_compress::measure),
    ("codec_kv", kv_codec::measure),
    ("mixed_precision_kv", mixed_precision_kv_cache::measure),
    ("adaptive_quantize", adaptive_quantizer::measure),
];

/// Claims an issue asks for that the seed's table has no row for: reported under their own
/// keys (the report lists keys it does not know separately).
const EXTRA_CLAIMS: &[Claim] = &[("tree_verifier", tree_verifier::measure)];

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
    for &(key, measure) in EXTRA_CLAIMS {
        eprintln!("claims: measuring {key} (not in claims.tsv)");
        let m = measure(Opts { quick });
        out.insert(
            key.to_string(),
            json!({ "measured": m.summary, "details": m.details }),
        );
    }
    println!("{}", json!({ "claims": out }));
}
