//! `RetentionKernel` (RetNet multi-scale retention) at the seed's configuration: 4 heads of
//! 64 × 64 (hidden 256), q, k, v standard normal. `step` is one recurrent decode step for all
//! heads (state decay, rank-1 update and query product, fused, on a warm non-zero state);
//! `init_state` makes a zero 4 × 64 × 64 state (the seed's `np.zeros`): one 64 KiB allocation
//! that is not written, because the zero state stays implicit until the first token writes
//! `S₁ = k̂ᵀv` (the `reset_then_first_step` id times a new sequence in a pooled state: the O(1)
//! reset plus that first token, which replaces the seed's memset and first decay; a fresh
//! allocation per sequence would add the allocator's page faults); `prefill_chunkwise` runs the chunkwise form over 1024 tokens (chunk 64) from a
//! zero state, reported with tokens/s throughput.
//!
//! Where `step` goes (target ≥ 15× the seed's 21.5 µs, i.e. ≤ 1.43 µs): the fused kernel
//! (`ops::decay_rank1_vecmat_into`) is ≈ 87 % of it, finiteness checks of q, k, v ≈ 3 %, the
//! rest the scaled keys and bookkeeping. The kernel does a multiply and two FMAs per state
//! element, which Zen 3 runs on its two FMA pipes: ≈ 1.5 cycles per 8 elements at best. A
//! stand-alone loop of the same kernel (best of batches) shows that the state's traffic counts
//! too: 0.18 µs per 64 × 64 head while one head's state (16 KiB) stays in L1, 0.23 at two heads
//! (32 KiB, the size of L1), 0.30 at four (64 KiB, streamed from L2 and back every step).
//! (An earlier version of these docs called the step compute-bound from a coarser reading.)
//! So `step_into` sweeps the heads forwards on even steps and backwards on odd ones: each step
//! starts on the head the previous one finished, still in L1. The heads are independent, so the
//! results are bit-identical (tested against one-head kernels); the stand-alone loop went from
//! 0.30 to 0.27 µs per head, and `step_into` 1.45 → 1.30 µs best of batches (A/B alternating,
//! with the per-head loop indexing heads directly instead of zipping five chunk iterators).
//! Reversing the column strips as well, to reuse a second head's lines, gained nothing more.
//! Measured and dropped: a decay-free update (`fma(a, x, s)`, one operation fewer) was *slower*
//! in place; 64-column blocks with eight accumulators were 8 % faster in a stand-alone loop and
//! 2–5 % slower inside `step_into`. Kept: a 64-float stack buffer for the scaled keys instead
//! of zeroing 2 KiB per step (1.475 → 1.435 µs best of batches). Criterion medians of this row
//! have ranged 1.28–1.58 µs across full reports on the shared VM.
//!
//! Since: the state lives in a 64-byte-aligned buffer (`squish_core::aligned::AlignedVec`), so
//! the kernel's 32-byte loads and stores of it never split a cache line, wherever the heap put
//! it. A/B with the state allocated after seven different heap offsets (best of 10 000 batches
//! each): `step` 1.17–1.34 µs before (1.29–1.34 in five of seven), 1.12–1.15 µs after in six
//! of seven and 1.39 in one (its 4 KiB offset against the inputs, not its alignment).
//! `reset_then_first_step` pays a little for it: 1.60–1.68 → 1.78–1.85 µs (the first token's
//! 256 row writes go through the aligned buffer's `extend`, one more capacity check each).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use squish_attn::{RetentionConfig, RetentionKernel};
use squish_testkit::data;

/// Registers the RetentionKernel benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let kernel = RetentionKernel::new(RetentionConfig::default()).expect("valid config");
    let hidden = 4 * 64;
    let q = data::normal_vec(&mut rng, hidden, 0.0, 1.0);
    let k = data::normal_vec(&mut rng, hidden, 0.0, 1.0);
    let v = data::normal_vec(&mut rng, hidden, 0.0, 1.0);
    let mut o = vec![0.0f32; hidden];
    let mut state = kernel.init_state();

    let (group, id) = benches::seed_row("retention_attn/step");
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            kernel
                .step_into(
                    &mut state,
                    black_box(&q),
                    black_box(&k),
                    black_box(&v),
                    &mut o,
                )
                .expect("valid shapes");
        });
    });
    g.finish();

    let (group, id) = benches::seed_row("retention_attn/init_state");
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| black_box(kernel.init_state()));
    });
    let mut pooled = kernel.init_state();
    g.bench_function(
        BenchmarkId::from_parameter("4x64x64,reset_then_first_step"),
        |b| {
            b.iter(|| {
                pooled.reset();
                kernel
                    .step_into(
                        &mut pooled,
                        black_box(&q),
                        black_box(&k),
                        black_box(&v),
                        &mut o,
                    )
                    .expect("valid shapes");
            });
        },
    );
    g.finish();

    let seq = 1024;
    let qs = data::normal_vec(&mut rng, 4 * seq * 64, 0.0, 1.0);
    let ks = data::normal_vec(&mut rng, 4 * seq * 64, 0.0, 1.0);
    let vs = data::normal_vec(&mut rng, 4 * seq * 64, 0.0, 1.0);
    let mut out = vec![0.0f32; 4 * seq * 64];
    let mut g = c.benchmark_group("RetentionKernel/prefill_chunkwise");
    g.throughput(Throughput::Elements(seq as u64));
    g.sample_size(20);
    g.bench_function(
        BenchmarkId::from_parameter(format!("seq={seq},chunk=64,heads=4,head_dim=64")),
        |b| {
            b.iter(|| {
                state.reset();
                kernel
                    .prefill_chunkwise_into(&mut state, &qs, &ks, &vs, seq, &mut out)
                    .expect("valid shapes");
            });
        },
    );
    g.finish();
}
