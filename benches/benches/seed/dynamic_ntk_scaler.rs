//! `DynamicNtkScaler` at the seed's configuration (base 10 000, L₀ 4096, α 8, head_dim 128;
//! the seed's trigger 0.8 has no counterpart, see the type's docs). `get_freqs` writes the 64
//! inverse frequencies for a sequence length into a caller buffer: the seed's ids recompute them
//! (`seq=2048,unscaled`: below L₀; `seq=6000,scaled`: the NTK base), the `,cached` ids serve
//! them from the per-base cache. One call per iteration (criterion resolves it).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use squish_attn::{DynamicNtkConfig, DynamicNtkScaler};

/// Registers the DynamicNtkScaler benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rope = DynamicNtkScaler::new(DynamicNtkConfig::default()).expect("valid config");
    let mut out = vec![0.0f32; 64];
    let (group, unscaled_id) = benches::seed_row("dynamic_ntk/get_freqs_unscaled");
    let (group2, scaled_id) = benches::seed_row("dynamic_ntk/get_freqs_scaled");
    assert_eq!(group, group2, "both seed rows share one group");
    let mut g = c.benchmark_group(group);
    for (id, seq) in [(&unscaled_id, 2048usize), (&scaled_id, 6000)] {
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                rope.inv_freq_into(black_box(seq), &mut out)
                    .expect("64 slots")
            });
        });
    }
    for (id, seq) in [(&unscaled_id, 2048usize), (&scaled_id, 6000)] {
        rope.inv_freq_cached_into(seq, &mut out).expect("64 slots");
        g.bench_function(BenchmarkId::from_parameter(format!("{id},cached")), |b| {
            b.iter(|| {
                rope.inv_freq_cached_into(black_box(seq), &mut out)
                    .expect("64 slots")
            });
        });
    }
    g.finish();
}
