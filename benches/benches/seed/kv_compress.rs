//! `KvCompressor/compress` and `KvCompressor/decompress` on the seed's shape: 8 heads x 128
//! tokens x 64 channels, keys and values (65 536 values each).
//!
//! - `compress` `heads=8,seq=128,head_dim=64` (the seed row): 8-bit keys per channel (groups of
//!   32 tokens) and values per token (groups of 32 channels), residual window 0 so the whole
//!   prefill is quantised (with KIVI's R = 128 nothing would be), no eviction; one
//!   `compress_into` per iteration into a reused `CompressedKv`.
//! - `compress` `heads=8,seq=128,head_dim=64,evict=10%`: the same with key-norm eviction to 115
//!   tokens per head (selection, gather, then 96 tokens quantised and 19 held in f32).
//! - `decompress` `heads=8,seq=128,head_dim=64`: the seed row's compressed cache reconstructed
//!   into reused key and value buffers (131 072 values).
//! - `append_evict` `streaming_llm,heads=8,window=128` (no seed row): one decode step of a
//!   StreamingLLM window on that cache, `append` of one token per head then `evict` back to
//!   128 tokens (4 sinks): the eviction compacts each head's buffers in place.
//!
//! `Throughput::Elements` counts keys plus values.
//!
//! | row | seed (Python) | target | SSE2 kernel | exact AVX2 kernels | reciprocal encoder |
//! |---|---:|---:|---:|---:|---:|
//! | `compress` | 643.2 µs | ≤ 25.7 µs (25×) | 88.7 µs | 35.1 µs (18×) | 24.5 µs (26×) |
//! | `compress`, `evict=10%` | — | — | 117.5 µs | 55.0 µs | 47.5 µs |
//! | `decompress` | 39.85 µs | ≤ 7.97 µs (5×) | 23.5 µs | 12.4 µs (3.2×) | unchanged |
//!
//! "exact AVX2 kernels" is the full report of 268ceea; "reciprocal encoder" criterion medians
//! of this file's rows on the same 2-core AVX2 VM (3.2 GHz) (three full reports of the final
//! code: `compress` 25.0, 24.8 and 24.9 µs, 25.8–26.0×), next to best-of-batches A/B runs of
//! each step:
//! - The encoder used to reproduce squish-core's division-based code bit for bit: a
//!   reciprocal multiply plus a certainty check against the rounding boundary (four `f32`
//!   additions per eight values) and a repair pass. The division's code is no closer to the
//!   exact quotient, so squish-core now defines the code as the reciprocal product converted
//!   with ties to even (`cvtps2dq`), as GGML does: 34.3 → 24.3 µs best of batches.
//! - Per-column parameters held in registers down a strip of 32 columns: 24.1 → 23.1 µs.
//! - Scales as `range * (1 / max_code)`, one division per group fewer: 23.8 → 23.2 µs.
//!
//! Where the time goes now (perf, 8 heads): the two encoders 45 %, minimum / maximum 36 % (the
//! per-column pass is the first touch of the keys and waits on memory), scales 6 %, call glue
//! 6 %. The input's placement matters: the bench's arrays start 16 bytes past a 64-byte line
//! (where malloc puts large buffers), and the same data 64-byte aligned compresses in 22.1
//! instead of 23.5 µs; loading the keys as two 16-byte halves did not win that back.
//! 4-bit and 2-bit take 10 % and 16 % longer than 8-bit (best of batches 25.6 and 27.1 against
//! 23.4 µs; packing is vectorised).
//!
//! - `decompress` writes 512 KiB of `f32` per call, more than this core's L2: 0.07-0.085 ns
//!   per value while the output fits in cache, 0.11 ns at this size. The multiply and add stay
//!   separate (no FMA) to remain bit-identical to `dequantize_into`. Its target is below what
//!   this VM can store. Stand-alone loops (best of 2 000 ten-call batches, quiet machine):
//!   - AVX2 stores of 512 KiB with no loads: 6.3 µs;
//!   - the least a dequantiser can do (8-bit codes → `f32`, one multiply and one add per
//!     value, two flat 256 KiB outputs): 8.6 µs, 4.6× the seed;
//!   - the same loop with non-temporal stores: 22.9 µs;
//!   - the same loop in the compressor's layout (per head: per-channel keys, per-token
//!     values, per-group parameters): 11.3 µs.
//!
//!   So 5× needs a smaller output (`f16`, or dequantising inside the attention kernel), not a
//!   faster kernel.
//!
//! Per head, with the data in cache (one head: 64 KiB in, 16 KiB of codes) against all eight
//! (512 KiB): `compress` 2.72 vs 3.08 µs per head with the reciprocal encoder (3.81 vs 4.29 with
//! the exact one), `decompress` 1.28 vs 1.56 µs per head. So memory adds only 10–20 %; even in
//! cache, eight heads would take 10.2 µs to decompress (3.9×). Software prefetch of the next
//! block of keys (to L1 or to L2) made `compress` 2.5 µs slower.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use ndarray::Array3;
use squish_core::quant::QuantBits;
use squish_kv::kv_compress::{
    Budget, CompressedKv, Eviction, EvictionPolicy, KvCompressor, KvCompressorConfig,
};
use squish_testkit::data;

const HEADS: usize = 8;
const SEQ: usize = 128;
const HEAD_DIM: usize = 64;

/// Registers the `KvCompressor` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let n = HEADS * SEQ * HEAD_DIM;
    let keys = Array3::from_shape_vec(
        (HEADS, SEQ, HEAD_DIM),
        data::kv_with_outliers(
            &mut rng,
            &data::KvSpec {
                heads: HEADS,
                seq_len: SEQ,
                head_dim: HEAD_DIM,
                outlier_channels: vec![3, 40],
                outlier_scale: 10.0,
            },
        ),
    )
    .expect("shape");
    let values = Array3::from_shape_vec(
        (HEADS, SEQ, HEAD_DIM),
        data::normal_vec(&mut rng, n, 0.0, 1.0),
    )
    .expect("shape");
    let cfg = KvCompressorConfig::new(QuantBits::B8, 32, 0);
    let mut comp = KvCompressor::new(cfg).expect("valid config");
    let mut kv = CompressedKv::new();

    let (group, id) = benches::seed_row("kv_compress/compress");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(2 * n as u64));
    g.bench_function(BenchmarkId::from_parameter(&id), |b| {
        b.iter(|| comp.compress_into(black_box(&keys), black_box(&values), None, &mut kv));
    });
    let keep = SEQ - SEQ.div_ceil(10);
    let ev = Eviction::new(EvictionPolicy::KeyNorm, Budget::Equal(keep));
    let mut evicted = CompressedKv::new();
    comp.compress_into(&keys, &values, Some(&ev), &mut evicted)
        .expect("finite data");
    assert_eq!(evicted.head_len(0), keep);
    g.bench_function(
        BenchmarkId::from_parameter(format!("{id},evict=10%")),
        |b| {
            b.iter(|| {
                comp.compress_into(
                    black_box(&keys),
                    black_box(&values),
                    Some(&ev),
                    &mut evicted,
                )
            });
        },
    );
    g.finish();

    // One decode step of a StreamingLLM window: append a token to every head, then evict
    // back to 128 tokens (4 sinks); the cache's size is steady, so every iteration is alike.
    let window = Eviction::new(
        EvictionPolicy::StreamingLlm { sinks: 4 },
        Budget::Equal(SEQ),
    );
    let token = ndarray::Array2::from_elem((HEADS, HEAD_DIM), 0.5f32);
    let mut rolling = CompressedKv::new();
    comp.compress_into(&keys, &values, None, &mut rolling)
        .expect("finite data");
    let mut g = c.benchmark_group("KvCompressor/append_evict");
    g.throughput(Throughput::Elements(HEADS as u64));
    g.bench_function(
        BenchmarkId::from_parameter(format!("streaming_llm,heads={HEADS},window={SEQ}")),
        |b| {
            b.iter(|| {
                comp.append(black_box(&token), black_box(&token), &mut rolling)
                    .expect("finite token");
                comp.evict(&window, &mut rolling).expect("valid eviction");
            });
        },
    );
    g.finish();
    assert_eq!(rolling.head_len(0), SEQ);

    comp.compress_into(&keys, &values, None, &mut kv)
        .expect("finite data");
    let (mut k_out, mut v_out) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (group, id) = benches::seed_row("kv_compress/decompress");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(2 * n as u64));
    g.bench_function(BenchmarkId::from_parameter(&id), |b| {
        b.iter(|| black_box(&kv).decompress_into(&mut k_out, &mut v_out));
    });
    g.finish();
}
