//! QuantSpecDecoder: exact enumeration for sampled and greedy drafts, chi-squared of the real
//! implementation, the hierarchical KV store's two error bounds and bytes, Q4_0 draft packing.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use squish_core::quant;
use squish_spec::{
    DraftSource, HierarchicalKvCache, HierarchicalKvConfig, KvPrecision, NextKind,
    QuantSpecDecoder, QuantSpecDecoderConfig, QuantizedDraft, Sampling, Scores, VerifyOutput,
};
use squish_testkit::data;

use crate::spec_oracle::{
    Model, Policy, Shape, chi_critical, chi_square, draft_tree, enumerate, extend, max_diff,
    target_joint,
};

fn decoder(vocab: usize, s: Sampling, scores: Scores) -> QuantSpecDecoder {
    let mut cfg = QuantSpecDecoderConfig::new(vocab, s);
    cfg.scores = scores;
    QuantSpecDecoder::new(cfg).unwrap()
}

/// Sampled drafts and greedy (argmax, one-hot) drafts: the emitted distribution equals the
/// target's to 1e-9, chains of 1 to 3 tokens, several warpings.
#[test]
fn exact_enumeration_sampled_and_greedy_drafts() {
    for n in 1..=3 {
        for (si, s) in [
            Sampling::default(),
            Sampling::with_temperature(0.5),
            Sampling::new(1.0, 3, 0.9),
        ]
        .iter()
        .enumerate()
        {
            for policy in [Policy::Sampled, Policy::TopM] {
                let mut m = Model::new(7, (n * 10 + si) as u64, 1.5, 1.0, Scores::Logits);
                let emitted = enumerate(&mut m, s, &Shape::chain(n), policy);
                let ext = extend(&mut m, s, &emitted, n + 1);
                let joint = target_joint(&mut m, s, n + 1);
                let d = max_diff(&ext, &joint);
                assert!(d < 1e-9, "n {n}, {s:?}, {policy:?}: {d}");
            }
        }
    }
}

/// Runs the decoder on `runs` seeded chains and counts the emitted sequences.
fn run_chain(
    m: &mut Model,
    s: &Sampling,
    n: usize,
    policy: Policy,
    runs: u64,
) -> HashMap<Vec<u32>, u64> {
    let mut dec = decoder(m.vocab, *s, m.scores);
    let mut rng = StdRng::seed_from_u64(77);
    let mut out = VerifyOutput::new();
    let mut counts = HashMap::new();
    let mut e = Vec::new();
    for _ in 0..runs {
        let d = draft_tree(m, s, &Shape::chain(n), policy, &mut rng);
        let src = match policy {
            Policy::Sampled => DraftSource::Sampled(&d.draft[..n * m.vocab]),
            Policy::TopM => DraftSource::Greedy,
        };
        dec.verify_into(&d.tokens, src, &d.target, &mut rng, &mut out)
            .unwrap();
        out.emitted_into(&mut e);
        *counts.entry(e.clone()).or_insert(0) += 1;
    }
    counts
}

/// The real decoder follows the enumerated (= target) distribution: sampled and greedy drafts,
/// 200 000 runs each, chi-squared.
#[test]
fn implementation_matches_enumeration_chi_square() {
    for (i, policy) in [Policy::Sampled, Policy::TopM].into_iter().enumerate() {
        let s = Sampling::with_temperature(0.9);
        let mut m = Model::new(6, 500 + i as u64, 1.2, 1.0, Scores::Logits);
        let probs = enumerate(&mut m, &s, &Shape::chain(3), policy);
        let runs = 200_000;
        let counts = run_chain(&mut m, &s, 3, policy, runs);
        let (stat, df) = chi_square(&counts, &probs, runs);
        assert!(df >= 10, "{policy:?}: {df} dof");
        assert!(
            stat < chi_critical(df),
            "{policy:?}: chi2 {stat} with {df} dof"
        );
    }
}

/// All drafts accepted: a bonus token from the last row; the statistics count accepted / drafted
/// only (the bonus is not an accepted draft).
#[test]
fn bonus_token_and_honest_statistics() {
    let vocab = 8;
    let mut dec = decoder(vocab, Sampling::default(), Scores::Logits);
    let mut rng = StdRng::seed_from_u64(1);
    let rows = data::normal_vec(&mut rng, 5 * vocab, 0.0, 1.0);
    // p == q at every position: everything is accepted.
    let tokens = [3, 1, 4, 1];
    let out = dec
        .verify(
            &tokens,
            DraftSource::Sampled(&rows[..4 * vocab]),
            &rows,
            &mut rng,
        )
        .unwrap();
    assert_eq!(out.accepted(), &tokens);
    assert_eq!(out.next_kind(), NextKind::Bonus);
    assert_eq!(out.emitted(), 5);
    assert_eq!(out.softmaxes(), 5 + 4);
    assert_eq!(dec.stats().acceptance_rate(), 1.0);
    assert_eq!(dec.stats().bonuses, 1);
    assert_eq!(dec.stats().emitted_per_step(), 5.0);
}

/// Same seed, same result.
#[test]
fn same_seed_same_result() {
    let vocab = 64;
    let mut rng = StdRng::seed_from_u64(2);
    let target = data::normal_vec(&mut rng, 5 * vocab, 0.0, 2.0);
    let draft = data::normal_vec(&mut rng, 4 * vocab, 0.0, 2.0);
    let tokens = [5, 9, 2, 60];
    let run = |seed| {
        let mut dec = decoder(vocab, Sampling::default(), Scores::Logits);
        let mut rng = StdRng::seed_from_u64(seed);
        (0..100)
            .map(|_| {
                dec.verify(&tokens, DraftSource::Sampled(&draft), &target, &mut rng)
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

/// Both views of the hierarchical store stay within their bounds (INT8: s/2, INT4: 8 s = half
/// the 4-bit step) on Gaussian data, data with outlier channels and, when present, real
/// SmolLM2 keys; and the INT4 view is exactly the upper-nibble decode of the same codes.
#[test]
fn kv_views_within_their_bounds() {
    let mut inputs: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut rng = StdRng::seed_from_u64(8);
    inputs.push((64, data::normal_vec(&mut rng, 64 * 50, 0.0, 3.0)));
    inputs.push((64, data::lognormal_vec(&mut rng, 64 * 20, 0.0, 2.0)));
    let mut outlier = data::normal_vec(&mut rng, 64 * 30, 0.0, 1.0);
    for t in 0..30 {
        outlier[t * 64 + 40] += 10.0;
    }
    inputs.push((64, outlier));
    if let Some(dir) = squish_testkit::shared_dir() {
        let path = dir.join("data/smollm2-kv/t12_L15_k.npy");
        if let Ok(a) = squish_testkit::npy::read::<f32>(&path) {
            inputs.push((64, a.data.clone()));
        }
    }
    for (dim, x) in inputs {
        for g in [16, 32, 64] {
            for per_channel in [false, true] {
                let (cfg, x) = if per_channel {
                    let tokens = x.len() / dim / g * g;
                    (
                        HierarchicalKvConfig::per_channel(dim, g),
                        &x[..tokens * dim],
                    )
                } else {
                    (HierarchicalKvConfig::new(dim, g), &x[..])
                };
                if x.is_empty() {
                    continue;
                }
                check_views(cfg, dim, x);
            }
        }
    }
}

fn check_views(cfg: HierarchicalKvConfig, dim: usize, x: &[f32]) {
    let g = cfg.group_size;
    let mut kv = HierarchicalKvCache::new(cfg).unwrap();
    // Appended in two parts: the store grows without re-quantising.
    let half = x.len() / dim / g / 2 * g * dim;
    kv.append(&x[..half]).unwrap();
    kv.append(&x[half..]).unwrap();
    let mut x8 = vec![0.0; x.len()];
    let mut x4 = vec![0.0; x.len()];
    kv.dequantize_into(KvPrecision::Int8, &mut x8);
    kv.dequantize_into(KvPrecision::Int4, &mut x4);
    let (mut worst8, mut worst4) = (0.0f64, 0.0f64);
    for (i, &v) in x.iter().enumerate() {
        let grp = kv.group_of(i / dim, i % dim);
        let s = kv.scales()[grp];
        let b8 = kv.error_bound(grp, KvPrecision::Int8);
        let b4 = kv.error_bound(grp, KvPrecision::Int4);
        assert!(
            (v - x8[i]).abs() <= b8,
            "int8 {i}: {} > {b8}",
            (v - x8[i]).abs()
        );
        assert!(
            (v - x4[i]).abs() <= b4,
            "int4 {i}: {} > {b4}",
            (v - x4[i]).abs()
        );
        // Independent f64 decode of both views from the stored codes.
        let c = kv.codes()[i];
        let m = f64::from(kv.mins()[grp]);
        let r8 = m + f64::from(c) * f64::from(s);
        let r4 = m + (16.0 * f64::from(c >> 4) + 7.5) * f64::from(s);
        let tol = 1e-5 * (1.0 + m.abs() + 255.0 * f64::from(s));
        assert!((r8 - f64::from(x8[i])).abs() <= tol);
        assert!((r4 - f64::from(x4[i])).abs() <= tol);
        if s > 0.0 {
            worst8 = worst8.max(f64::from((v - x8[i]).abs() / s));
            worst4 = worst4.max(f64::from((v - x4[i]).abs() / s));
        }
    }
    // The bounds are tight: errors of nearly the bound are reached.
    assert!(worst8 > 0.45 && worst8 <= 0.5 + 1e-3, "{worst8}");
    assert!(worst4 > 6.5 && worst4 <= 8.0 + 1e-3, "{worst4}");
    // One buffer: bytes held are the INT8 codes plus a scale and a minimum per group.
    assert_eq!(kv.bytes_held(), x.len() + 8 * (x.len() / g));
    let mut one = vec![0.0; dim];
    kv.dequantize_token_into(kv.len() - 1, KvPrecision::Int4, &mut one);
    assert_eq!(one[..], x4[x.len() - dim..]);
}

/// quantize_draft writes exactly GGML's Q4_0 blocks, reuses its buffer, and decodes within a
/// step of the input.
#[test]
fn quantize_draft_is_q4_0() {
    let vocab = 256;
    let dec = decoder(vocab, Sampling::default(), Scores::Logits);
    let mut rng = StdRng::seed_from_u64(12);
    let logits = data::normal_vec(&mut rng, 4 * vocab, 0.0, 2.0);
    let mut qd = QuantizedDraft::new();
    dec.quantize_draft_into(&logits, &mut qd).unwrap();
    assert_eq!(
        qd.blocks(),
        quant::quantize_q4_0(&logits).unwrap().as_slice()
    );
    assert_eq!((qd.rows(), qd.vocab()), (4, vocab));
    assert_eq!(qd.bytes_held(), 4 * vocab / 32 * 18);
    // The buffer is reused without stale blocks (a shorter and a same-length call), and a NaN
    // is an error that leaves the draft empty.
    let mut again = QuantizedDraft::new();
    let other = data::normal_vec(&mut rng, 4 * vocab, 1.0, 3.0);
    dec.quantize_draft_into(&other[..2 * vocab], &mut again)
        .unwrap();
    dec.quantize_draft_into(&other, &mut again).unwrap();
    assert_eq!(
        again.blocks(),
        quant::quantize_q4_0(&other).unwrap().as_slice()
    );
    let mut bad = other.clone();
    bad[3 * vocab + 5] = f32::NAN;
    assert!(dec.quantize_draft_into(&bad, &mut again).is_err());
    assert_eq!((again.rows(), again.blocks().len()), (0, 0));
    let mut back = vec![0.0; 4 * vocab];
    qd.dequantize_into(&mut back);
    for (b, (x, y)) in logits.chunks(32).zip(back.chunks(32)).enumerate() {
        let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let step = amax / 8.0 * (1.0 + 1e-3);
        for (u, v) in x.iter().zip(y) {
            assert!((u - v).abs() <= step, "block {b}: {u} vs {v}");
        }
    }
    // A draft sampling from the dequantised logits verifies losslessly against them.
    let mut dq = decoder(vocab, Sampling::default(), Scores::Logits);
    let target = data::normal_vec(&mut rng, 5 * vocab, 0.0, 2.0);
    let out = dq
        .verify(
            &[1, 2, 3, 4],
            DraftSource::Sampled(&back),
            &target,
            &mut rng,
        )
        .unwrap();
    assert!(out.emitted() >= 1);
}
