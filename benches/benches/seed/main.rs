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
mod core;
mod mixed_precision_kv_cache;
mod model_pool;
mod request_cost_estimator;

criterion_group!(core_primitives, core::benches);
criterion_group!(mixed_precision_kv_cache, mixed_precision_kv_cache::benches);
criterion_group!(adaptive_quantizer, adaptive_quantizer::benches);
criterion_group!(model_pool, model_pool::benches);
criterion_group!(request_cost_estimator, request_cost_estimator::benches);
criterion_main!(
    core_primitives,
    model_pool,
    request_cost_estimator,
    mixed_precision_kv_cache,
    adaptive_quantizer,
);
