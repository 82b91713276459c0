//! `RequestCostEstimator/estimate` at the seed's configuration: a 512-token prompt and 128
//! new tokens (`prefill=512,decode=128`), priced with the KV term on.
//!
//! The price table is production-shaped: 4 models (one with SmolLM2-135M's KV profile, 23 040
//! bytes per token: 30 layers × 3 KV heads × 64 dims × K and V × 2 bytes), 1 000 tenants and
//! 100 per-tenant overrides. Each timed call prices one request for a tenant drawn (outside the
//! timed closure) from a seeded sequence of 1 024 tenants, a fifth of them with an override,
//! so the table lookups are not a single hot key. One call per iteration: criterion resolves it.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use rand::RngExt;
use squish_serving::cost_estimator::{
    EstimateRequest, MicroCredits, ModelId, ModelPricing, Prices, RequestCostEstimator,
    RequestCostEstimatorConfig, TenantId, TenantPrices,
};

/// Registers the seed row's benchmark.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let (group, id) = benches::seed_row("cost_estimator/estimate");
    let mc = MicroCredits::new;
    let mut cfg = RequestCostEstimatorConfig::default();
    for m in 0..4u32 {
        let p = Prices::new(
            mc(150_000 * u64::from(m + 1)),
            mc(75_000 * u64::from(m + 1)),
            mc(600_000 * u64::from(m + 1)),
            mc(50_000),
        );
        cfg.models
            .push(ModelPricing::new(ModelId(m), p).with_kv_profile(
                23_040,
                Duration::from_micros(120),
                Duration::from_millis(18),
            ));
    }
    cfg.tenants = (0..1000).map(TenantId).collect();
    cfg.tenant_prices = (0..100)
        .map(|t| {
            TenantPrices::new(
                ModelId(0),
                TenantId(t * 10),
                Prices::new(mc(120_000), mc(60_000), mc(480_000), mc(40_000)),
            )
        })
        .collect();
    let est = RequestCostEstimator::new(cfg).expect("valid config");
    let tenants: Vec<TenantId> = (0..1024)
        .map(|_| {
            if rng.random_bool(0.2) {
                TenantId(rng.random_range(0..100) * 10)
            } else {
                TenantId(rng.random_range(0..1000))
            }
        })
        .collect();
    let req = EstimateRequest::from_prompt(512, 0, 128).expect("valid request");

    let mut g = c.benchmark_group(group);
    let mut i = 0usize;
    g.bench_function(BenchmarkId::from_parameter(id), |bench| {
        bench.iter(|| {
            i = (i + 1) & 1023;
            est.estimate(
                black_box(ModelId(0)),
                black_box(tenants[i]),
                black_box(&req),
            )
        });
    });
    g.finish();
}
