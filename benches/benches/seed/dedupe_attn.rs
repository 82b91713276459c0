//! `AttentionDeduplicator`: a lookup that misses in a full 512-entry slot and a store that
//! evicts the oldest entry (FIFO), at head_dim 64.
//!
//! Setup: stored queries are standard normal (norm ≈ 8), the context has scale 1/8 and max key
//! norm 16 (so the default ε = 0.01 gives an acceptance radius of 0.005), and the looked-up
//! query is a fresh standard-normal vector. A miss costs one pass over the 512 stored norms plus
//! a full distance computation for the few entries whose norm is within the radius (the
//! reverse-triangle-inequality filter, see the module docs). Extra ids show the other regimes:
//! `miss,equal_norms` (every stored query has the looked-up query's norm, so the filter prunes
//! nothing and all 512 distances are computed: the worst case), `hit` (the query is 0.001 from
//! a stored one, nearest search scans everything) and `miss,cosine` (the seed's unbounded
//! cosine rule, which must take 512 dot products).
//!
//! Each iteration times one call; nothing allocates in the timed path.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use squish_attn::{AttentionDeduplicator, AttentionDeduplicatorConfig, AttnContext, ReuseRule};
use squish_testkit::data;

const D: usize = 64;
const CAP: usize = 512;

fn filled(
    cfg: AttentionDeduplicatorConfig,
    ctx: &AttnContext,
    qs: &[f32],
) -> AttentionDeduplicator {
    let mut dd = AttentionDeduplicator::new(cfg).expect("valid config");
    let o = vec![0.5f32; D];
    for q in qs.chunks_exact(D) {
        dd.store(0, 0, ctx, q, &o).expect("valid entry");
    }
    dd
}

/// Registers the `AttentionDeduplicator` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let ctx = AttnContext {
        version: 1,
        scale: 0.125,
        max_key_norm: 16.0,
        max_value_norm: 4.0,
    };
    let cfg = AttentionDeduplicatorConfig::default();
    let stored = data::normal_vec(&mut rng, CAP * D, 0.0, 1.0);
    let q = data::normal_vec(&mut rng, D, 0.0, 1.0);
    let mut out = vec![0.0f32; D];

    let (group, id) = benches::seed_row("dedupe_attn/lookup");
    let mut g = c.benchmark_group(group);
    let mut dd = filled(cfg.clone(), &ctx, &stored);
    g.bench_function(BenchmarkId::from_parameter(&id), |b| {
        b.iter(|| {
            dd.lookup(0, 0, &ctx, black_box(&q), &mut out)
                .expect("valid query")
        });
    });
    // Every stored query rescaled to ‖q‖: the norm filter passes all of them.
    let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut same_norm = stored.clone();
    for row in same_norm.chunks_exact_mut(D) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x *= qn / n);
    }
    let mut dd_eq = filled(cfg.clone(), &ctx, &same_norm);
    g.bench_function(
        BenchmarkId::from_parameter(format!("{id},equal_norms")),
        |b| {
            b.iter(|| {
                dd_eq
                    .lookup(0, 0, &ctx, black_box(&q), &mut out)
                    .expect("valid query")
            });
        },
    );
    let mut near = stored[100 * D..101 * D].to_vec();
    near[0] += 0.001;
    g.bench_function(
        BenchmarkId::from_parameter(format!("cache={CAP},head_dim={D},hit")),
        |b| {
            b.iter(|| {
                dd.lookup(0, 0, &ctx, black_box(&near), &mut out)
                    .expect("valid query")
            });
        },
    );
    let mut cos_cfg = cfg.clone();
    cos_cfg.rule = ReuseRule::CosineUnbounded { threshold: 0.95 };
    let mut dd_cos = filled(cos_cfg, &ctx, &stored);
    g.bench_function(BenchmarkId::from_parameter(format!("{id},cosine")), |b| {
        b.iter(|| {
            dd_cos
                .lookup(0, 0, &ctx, black_box(&q), &mut out)
                .expect("valid query")
        });
    });
    g.finish();

    let (group, id) = benches::seed_row("dedupe_attn/store");
    let mut g = c.benchmark_group(group);
    let o = data::normal_vec(&mut rng, D, 0.0, 1.0);
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            dd.store(0, 0, &ctx, black_box(&q), black_box(&o))
                .expect("valid entry");
        });
    });
    g.finish();
}
