//! The Squish benchmarks: one criterion group per row of the seed's latency table
//! (`benches/seed.tsv`, group `<RustType>/<operation>`, the row's parameters as id, names taken
//! from the table by [`benches::seed_row`]), plus benchmarks of the `squish_core` primitives the
//! components are built from (groups `core/<function>`, shown under "Other benchmarks" in the
//! report).
//!
//! Inputs are built outside the timed closures from [`benches::input_rng`]. Run everything with
//! `cargo xtask bench` (which also renders `docs/benchmarks.md`); `cargo test --all-targets`
//! runs each benchmark once in test mode.

use criterion::{criterion_group, criterion_main};

mod adaptive_quantizer;
mod budget_spec_decoder;
mod core;
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

criterion_group!(budget_spec_decoder, budget_spec_decoder::benches);
criterion_group!(core_primitives, core::benches);
criterion_group!(dedupe_attn, dedupe_attn::benches);
criterion_group!(dynamic_ntk_scaler, dynamic_ntk_scaler::benches);
criterion_group!(fault_handler, fault_handler::benches);
criterion_group!(flash_prefill, flash_prefill::benches);
criterion_group!(kv_codec, kv_codec::benches);
criterion_group!(kv_compress, kv_compress::benches);
criterion_group!(adaptive_quantizer, adaptive_quantizer::benches);
criterion_group!(mixed_precision_kv_cache, mixed_precision_kv_cache::benches);
criterion_group!(model_pool, model_pool::benches);
criterion_group!(quant_spec_decoder, quant_spec_decoder::benches);
criterion_group!(request_cost_estimator, request_cost_estimator::benches);
criterion_group!(retention_kernel, retention_kernel::benches);
criterion_group!(sparse_attn_index, sparse_attn_index::benches);
criterion_group!(token_budget_gate, token_budget_gate::benches);
criterion_group!(tree_verifier, tree_verifier::benches);
criterion_main!(
    budget_spec_decoder,
    core_primitives,
    dedupe_attn,
    dynamic_ntk_scaler,
    fault_handler,
    flash_prefill,
    kv_codec,
    kv_compress,
    adaptive_quantizer,
    mixed_precision_kv_cache,
    model_pool,
    quant_spec_decoder,
    request_cost_estimator,
    retention_kernel,
    sparse_attn_index,
    token_budget_gate,
    tree_verifier,
);
