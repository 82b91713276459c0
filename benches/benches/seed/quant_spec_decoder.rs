//! `QuantSpecDecoder` at the seed's configuration `n_draft=4,vocab=8192`:
//! - `quantize_draft`: packs 4 × 8192 standard-normal draft logits into GGML `Q4_0` blocks:
//!   `squish_core::quant::quantize_row_q4_0`'s whole-row AVX2 kernel (~0.15 ns per value; a
//!   standalone loop over 32 768 values went 19.5 → 5.0 µs) into the decoder's reused block
//!   buffer (no longer zeroed again on each call). Target ≤ 8.2 µs: the last full run gave 21.7 µs; on the
//!   loaded VM, before and after binaries run alternately gave 36 → 9.6–11.3 µs (the VM about
//!   1.7x slower than in the full run), i.e. about 6 µs on a quiet VM.
//! - `verify`: a chain of 4 draft tokens sampled from standard-normal draft logits, verified
//!   against independent standard-normal target logits (5 rows); each iteration is one full
//!   verification with a fresh random outcome (the RNG advances), so the time is the mean over
//!   outcomes. The bench prints the means per verification before timing: 7.09 rows of 8192
//!   logits normalised of at most 9, only 0.14 of them with exponentials (2.72 of 4 drafts
//!   accepted per step) on this input. Rows are read lazily: a validating maximum pass and a
//!   pass bounding the softmax total without exponentials (one FMA per logit) decide almost
//!   every acceptance exactly; the bonus and the correction are drawn by exact rejection
//!   sampling from the bounded rows.
//!
//!   | `verify` | median | ns per normalised logit |
//!   |---|---:|---:|
//!   | before (full softmax of every row read; last full run) | 75.0 µs | 1.29 |
//!   | before, 3 interleaved runs (criterion defaults) | 60.8 / 56.6 / 58.2 µs | 0.97-1.05 |
//!   | lazy rows, same interleaved runs | 11.5 / 10.8 / 10.7 µs | 0.18-0.20 |
//!   | seed target (13× Python's 148.1 µs) | ≤ 11.4 µs | |
//!
//!   Met only just: 5.2-5.4× faster than the previous code next to it on the shared VM (load
//!   ~2.7), which ran it faster than in the last full run (56-61 vs 75 µs); at the full run's
//!   speed the same ratio gives ~14 µs, above the target. What remains is two passes over each
//!   of the ~7 rows read (maximum with validation ~0.35 µs, bounds ~0.5 µs per 8192 logits,
//!   min-of-200 on this VM): every row tested needs its normaliser bounded, fusing the two
//!   passes measured only 4%, and both passes run near the VM's load / FP throughput.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use rand::SeedableRng;
use rand::rngs::StdRng;
use squish_core::{ops, sampling};
use squish_spec::{
    DraftSource, QuantSpecDecoder, QuantSpecDecoderConfig, QuantizedDraft, Sampling, VerifyOutput,
};
use squish_testkit::data;

const N_DRAFT: usize = 4;
const VOCAB: usize = 8192;

/// Registers the benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let draft = data::normal_vec(&mut rng, N_DRAFT * VOCAB, 0.0, 1.0);
    let target = data::normal_vec(&mut rng, (N_DRAFT + 1) * VOCAB, 0.0, 1.0);
    let tokens: Vec<u32> = draft
        .chunks_exact(VOCAB)
        .map(|row| {
            let q = ops::softmax(row, 1.0);
            sampling::sample_categorical(&q, &mut rng).unwrap() as u32
        })
        .collect();
    let mut dec =
        QuantSpecDecoder::new(QuantSpecDecoderConfig::new(VOCAB, Sampling::default())).unwrap();

    let (group, id) = benches::seed_row("quant_spec_decode/quantize_draft");
    let mut qd = QuantizedDraft::new();
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::from_parameter(id), |bench| {
        bench.iter(|| dec.quantize_draft_into(black_box(&draft), &mut qd).unwrap());
    });
    g.finish();

    let mut out = VerifyOutput::new();
    let mut vrng = StdRng::seed_from_u64(benches::INPUT_SEED ^ 2);
    for _ in 0..2000 {
        dec.verify_into(
            &tokens,
            DraftSource::Sampled(&draft),
            &target,
            &mut vrng,
            &mut out,
        )
        .unwrap();
    }
    let st = dec.stats();
    eprintln!(
        "QuantSpecDecoder/verify: {:.2} softmaxes per verification (max possible 9), {:.2} of them with exponentials, {:.3} accepted per step",
        st.softmaxes as f64 / st.steps as f64,
        st.exp_passes as f64 / st.steps as f64,
        st.accepted_per_step()
    );
    let (group, id) = benches::seed_row("quant_spec_decode/verify");
    let mut g = c.benchmark_group(group);
    g.bench_function(BenchmarkId::from_parameter(id), |bench| {
        bench.iter(|| {
            dec.verify_into(
                black_box(&tokens),
                DraftSource::Sampled(black_box(&draft)),
                black_box(&target),
                &mut vrng,
                &mut out,
            )
            .unwrap();
        });
    });
    g.finish();
}
