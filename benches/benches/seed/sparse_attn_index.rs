//! `SparseAttnIndex`: building the per-head key store (keys copied once, Quest page min/max
//! computed in the same pass) and querying it. The seed rows use the seed's shape (8 heads,
//! no GQA, head_dim 64, seq 256, standard-normal keys and queries); the query row runs exact
//! maximum-inner-product top-k, the mode equivalent to the seed's exhaustive cosine scan. Extra
//! ids: Quest page mode at seq 256, and exact vs page mode at seq 16384, where page selection
//! reads 16× fewer key vectors to choose.
//!
//! Each iteration times one call (the index and the `Selection` scratch are reused, so the
//! timed path does not allocate).
//!
//! Where the time goes (2-core AVX2 VM, quiet: criterion medians, and a standalone best-of-300
//! loop for the parts):
//!
//! | row | target | median | parts |
//! |---|---|---|---|
//! | `build` | ≤ 25.7 µs (5×) | 20.1 µs (6.4×) | one AVX2 pass per page copies the keys and folds min / max / finiteness (`ops::fold_min_max_copy`); bound by moving 512 KiB through L2/L3 |
//! | `query` | ≤ 11.2 µs (8×) | 11.2 µs (8.0×), at the target | 8 × `ops::dot_rows_into` over 256 × 64 keys: ~7 µs, bound by the L2→L1 / L3 bandwidth for 512 KiB of keys (5.9 µs even when one head's 64 KiB is re-read from L2); 8 × `ops::top_k_into` (k = 32 of 256: bisected threshold, then ~36 candidates sorted): ~2.5 µs |
//!
//! `query` has no margin: what is left is the key scan's bandwidth (exact `f32` keys) and the
//! selection's ~0.3 µs per head. A bounded heap, a sampled threshold and software prefetch of
//! the next head's keys were all measured slower (kept out).
//!
//! Since: the query rows are copied into scratch as slices (ndarray's element iterator did not
//! vectorise the copy, ~5 % of a query): best of batches 10.1–10.3 → 9.9 µs, and 10.2 µs
//! (8.8×) in the next full report. The parts are otherwise unchanged: dots ≈ 65 % (at the
//! L2 → L1 bandwidth: ≈ 27 B/cycle even when the keys fit L2), top-k ≈ 35 % (threshold and
//! packing ≈ 15 %, sorting the ~36 candidates ≈ 10 %).
//!
//! Since (build): the index keeps each head's keys in a 64-byte-aligned buffer
//! (`squish_core::aligned::AlignedVec`), and `fold_min_max_copy` loads each vector once (LLVM
//! had turned its load / store pairs into a copy and reloaded every vector for the min / max).
//! Best of batches, four alternating rounds: 21.3 → 19.6 µs; the criterion median of the next
//! full report was 19.5 µs (6.6×), where three earlier reports of the same row had read
//! 23.5–26.8 µs. Each change alone gained little (aligned keys with the old kernel 21.2 µs, the
//! new kernel into unaligned keys 21.3 µs). Aligned keys did not measurably change `query`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use ndarray::{Array2, Array3};
use squish_attn::{SelectMode, Selection, SparseAttnIndex, SparseAttnIndexConfig};
use squish_testkit::data;

const HEADS: usize = 8;
const HEAD_DIM: usize = 64;

fn keys(rng: &mut impl rand::Rng, seq: usize) -> Array3<f32> {
    Array3::from_shape_vec(
        (HEADS, seq, HEAD_DIM),
        data::normal_vec(rng, HEADS * seq * HEAD_DIM, 0.0, 1.0),
    )
    .expect("shape matches")
}

/// Registers the `SparseAttnIndex` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let cfg = SparseAttnIndexConfig::default();
    let k256 = keys(&mut rng, 256);
    let q = Array2::from_shape_vec(
        (HEADS, HEAD_DIM),
        data::normal_vec(&mut rng, HEADS * HEAD_DIM, 0.0, 1.0),
    )
    .expect("shape matches");

    let (group, id) = benches::seed_row("sparse_attn_index/build");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements((HEADS * 256) as u64));
    let mut index = SparseAttnIndex::new(cfg.clone()).expect("valid config");
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| index.build(black_box(&k256)).expect("valid keys"));
    });
    g.finish();

    let (group, id) = benches::seed_row("sparse_attn_index/query");
    let mut g = c.benchmark_group(group);
    let mut sel = Selection::new();
    index.build(&k256).expect("valid keys");
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            index
                .query_into(black_box(&q), 32, SelectMode::Exact, &mut sel)
                .expect("valid query");
        });
    });
    let pages = SelectMode::Pages { oversample: 1 };
    g.bench_function(
        BenchmarkId::from_parameter("top_k=32,heads=8,seq=256,pages"),
        |b| {
            b.iter(|| {
                index
                    .query_into(black_box(&q), 32, pages, &mut sel)
                    .expect("valid query");
            });
        },
    );
    let long = 16_384;
    let mut big = SparseAttnIndex::new(cfg).expect("valid config");
    big.build(&keys(&mut rng, long)).expect("valid keys");
    let budget = long / 16;
    for (name, mode) in [("exact", SelectMode::Exact), ("pages", pages)] {
        g.bench_function(
            BenchmarkId::from_parameter(format!("top_k={budget},heads=8,seq={long},{name}")),
            |b| {
                b.iter(|| {
                    big.query_into(black_box(&q), budget, mode, &mut sel)
                        .expect("valid query");
                });
            },
        );
    }
    g.finish();
}
