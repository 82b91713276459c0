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

mod core;
mod dedupe_attn;
mod dynamic_ntk_scaler;
mod fault_handler;
mod kv_codec;
mod model_pool;
mod request_cost_estimator;
mod retention_kernel;
mod sparse_attn_index;
mod token_budget_gate;

criterion_group!(core_primitives, core::benches);
criterion_group!(dedupe_attn, dedupe_attn::benches);
criterion_group!(dynamic_ntk_scaler, dynamic_ntk_scaler::benches);
criterion_group!(model_pool, model_pool::benches);
criterion_group!(request_cost_estimator, request_cost_estimator::benches);
criterion_group!(retention_kernel, retention_kernel::benches);
criterion_group!(sparse_attn_index, sparse_attn_index::benches);
criterion_group!(fault_handler, fault_handler::benches);
criterion_group!(token_budget_gate, token_budget_gate::benches);
criterion_group!(kv_codec, kv_codec::benches);
criterion_main!(
    core_primitives,
    dedupe_attn,
    dynamic_ntk_scaler,
    model_pool,
    request_cost_estimator,
    retention_kernel,
    sparse_attn_index,
    fault_handler,
    token_budget_gate,
    kv_codec,
);
