//! `QuantSpecDecoder` at the seed's configuration `n_draft=4,vocab=8192`:
//! - `quantize_draft`: packs 4 × 8192 standard-normal draft logits into GGML `Q4_0` blocks.
//! - `verify`: a chain of 4 draft tokens sampled from standard-normal draft logits, verified
//!   against independent standard-normal target logits (5 rows); each iteration is one full
//!   verification with a fresh random outcome (the RNG advances), so the time is the mean over
//!   outcomes. The bench prints the mean softmaxes per verification before timing: 7.10 of
//!   at most 9 (2.74 of 4 drafts accepted per step) on this input.

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
