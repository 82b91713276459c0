//! `MixedPrecisionKvCache`: tier assignment, and one token's store / load.
//!
//! - `assign_precisions` `heads=8` (the seed row): `PrecisionPlanner::assign_precisions_into`
//!   for 8 heads with seeded random sensitivities and ranges, an 8-bit average budget and
//!   groups of 32 (the exact optimum, not a heuristic); writes into a reused slice.
//! - `store` `head_dim=64,fp16` (the seed row): `append` of one token's key and value rows
//!   (64 values each) to an FP16 head. The head is cleared (capacity kept) every 4096 tokens
//!   so memory stays bounded; the clear is inside the timing, amortised over 4096 appends.
//!   Ids `head_dim=64,int8` / `int4` time the same for INT heads (grouped quantisation with
//!   groups of 32, through squish-core's `quantize_grouped_into`).
//! - `load` `head_dim=64,fp16` (the seed row): `read_token_into` of one token's key and value
//!   rows into reused buffers, cycling over 1024 stored tokens; ids `int8` / `int4` likewise.
//!
//! Every call is timed singly (criterion resolves it); nothing is batched.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use rand::RngExt;
use squish_kv::mixed_precision_kv_cache::{
    HeadStats, KvTier, MixedPrecisionKvCache, MixedPrecisionKvConfig, PrecisionPlanner,
    PrecisionPlannerConfig,
};
use squish_testkit::data;

const HEAD_DIM: usize = 64;
const TOKENS: usize = 1024;

/// Registers the `MixedPrecisionKvCache` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();

    let (group, id) = benches::seed_row("mixed_precision_kv/assign_precisions");
    let mut g = c.benchmark_group(group);
    let stats: Vec<HeadStats> = (0..8)
        .map(|_| {
            HeadStats::new(rng.random_range(0.0..1.0), rng.random_range(1.0..100.0))
                .expect("finite, non-negative")
        })
        .collect();
    let mut planner =
        PrecisionPlanner::new(PrecisionPlannerConfig::new(8.0, 32)).expect("valid config");
    let mut tiers = vec![KvTier::Int4; stats.len()];
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            planner
                .assign_precisions_into(black_box(&stats), &mut tiers)
                .expect("shapes match")
        });
    });
    g.finish();

    let kv = data::normal_vec(&mut rng, 2 * TOKENS * HEAD_DIM, 0.0, 1.0);
    let (ks, vs) = kv.split_at(TOKENS * HEAD_DIM);
    let tiers = [
        (KvTier::Fp16, "fp16"),
        (KvTier::Int8, "int8"),
        (KvTier::Int4, "int4"),
    ];
    let cache_of = |tier| {
        MixedPrecisionKvCache::new(MixedPrecisionKvConfig::new(HEAD_DIM, 32, vec![tier]))
            .expect("valid config")
    };

    let (group, seed_id) = benches::seed_row("mixed_precision_kv/store");
    let mut g = c.benchmark_group(group);
    for (tier, name) in tiers {
        let id = if tier == KvTier::Fp16 {
            seed_id.clone()
        } else {
            format!("head_dim={HEAD_DIM},{name}")
        };
        let mut cache = cache_of(tier);
        let mut t = 0usize;
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                if t == TOKENS * 4 {
                    cache.clear();
                    t = 0;
                }
                let row = t % TOKENS;
                t += 1;
                cache
                    .append(
                        0,
                        black_box(&ks[row * HEAD_DIM..][..HEAD_DIM]),
                        black_box(&vs[row * HEAD_DIM..][..HEAD_DIM]),
                    )
                    .expect("finite rows");
            });
        });
    }
    g.finish();

    let (group, seed_id) = benches::seed_row("mixed_precision_kv/load");
    let mut g = c.benchmark_group(group);
    for (tier, name) in tiers {
        let id = if tier == KvTier::Fp16 {
            seed_id.clone()
        } else {
            format!("head_dim={HEAD_DIM},{name}")
        };
        let mut cache = cache_of(tier);
        for (k, v) in ks.chunks_exact(HEAD_DIM).zip(vs.chunks_exact(HEAD_DIM)) {
            cache.append(0, k, v).expect("finite rows");
        }
        let (mut ko, mut vo) = (vec![0.0f32; HEAD_DIM], vec![0.0f32; HEAD_DIM]);
        let mut t = 0usize;
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                t = (t + 1) % TOKENS;
                cache
                    .read_token_into(0, black_box(t), &mut ko, &mut vo)
                    .expect("stored token");
                black_box((&ko, &vo));
            });
        });
    }
    g.finish();
}
