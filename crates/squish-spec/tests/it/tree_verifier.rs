//! TreeVerifier against the exact-enumeration oracle, chi-squared tests of the real
//! implementation, and the closed forms of speculative sampling.

use std::collections::HashMap;

use rand::SeedableRng;
use rand::rngs::StdRng;
use squish_spec::{
    DraftTree, Error, GREEDY_DRAFT, NextKind, Sampling, Scores, TreeVerifier, TreeVerifierConfig,
    VerifyOutput,
};

use crate::spec_oracle::{
    Model, Policy, Shape, chi_critical, chi_square, draft_tree, enumerate, extend, max_diff,
    sample, target_joint,
};

fn verifier(vocab: usize, s: Sampling, scores: Scores) -> TreeVerifier {
    let mut cfg = TreeVerifierConfig::new(vocab, s);
    cfg.scores = scores;
    TreeVerifier::new(cfg).unwrap()
}

/// The shapes of the enumeration: depth <= 3, <= 3 children per node.
fn shapes() -> Vec<(&'static str, Shape)> {
    vec![
        ("chain of 3", Shape::chain(3)),
        (
            "3 leaves",
            Shape(vec![Shape::leaf(), Shape::leaf(), Shape::leaf()]),
        ),
        ("3 branches of 3", Shape::branches(3, 3)),
        (
            "2 x 2 + uneven",
            Shape(vec![
                Shape(vec![Shape::leaf(), Shape::chain(1)]),
                Shape(vec![Shape::leaf(), Shape::leaf(), Shape::leaf()]),
            ]),
        ),
    ]
}

fn samplings() -> Vec<Sampling> {
    vec![
        Sampling::default(),
        Sampling::with_temperature(0.6),
        Sampling::new(1.3, 3, 1.0),
        Sampling::new(0.9, 0, 0.8),
        Sampling::greedy(),
    ]
}

/// The verification rule, walked branch by branch with probabilities, emits the target's
/// distribution: extended to depth + 1 tokens it equals the target's joint to 1e-9.
#[test]
fn exact_enumeration_equals_target() {
    let mut cases = 0;
    for (name, shape) in shapes() {
        for (vi, &vocab) in [5usize, 8].iter().enumerate() {
            // The 8-token vocabulary on the widest shape is slow in debug builds: 5 covers it.
            if vocab == 8 && shape.size() > 6 {
                continue;
            }
            for (si, s) in samplings().iter().enumerate() {
                for policy in [Policy::Sampled, Policy::TopM] {
                    for scores in [Scores::Logits, Scores::Probabilities] {
                        let seed =
                            (vi * 100 + si * 10) as u64 + u64::from(scores == Scores::Logits);
                        let mut m = Model::new(vocab, seed, 1.5, 0.8, scores);
                        let emitted = enumerate(&mut m, s, &shape, policy);
                        let total: f64 = emitted.values().sum();
                        assert!((total - 1.0).abs() < 1e-12, "{name}: total {total}");
                        let len = shape.depth() + 1;
                        let ext = extend(&mut m, s, &emitted, len);
                        let joint = target_joint(&mut m, s, len);
                        let d = max_diff(&ext, &joint);
                        assert!(
                            d < 1e-9,
                            "{name}, vocab {vocab}, {s:?}, {policy:?}, {scores:?}: differs by {d}"
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases >= 60);
}

/// Runs the real verifier on `runs` seeded drafts and counts the emitted sequences.
fn run_counts(
    m: &mut Model,
    s: &Sampling,
    shape: &Shape,
    policy: Policy,
    runs: u64,
    seed: u64,
    extend_to: Option<usize>,
) -> HashMap<Vec<u32>, u64> {
    let mut v = verifier(m.vocab, *s, m.scores);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = VerifyOutput::new();
    let mut counts = HashMap::new();
    let mut e = Vec::new();
    for _ in 0..runs {
        let d = draft_tree(m, s, shape, policy, &mut rng);
        let tree = DraftTree::new(&d.parents, &d.tokens, &d.draft_rows);
        v.verify_into(&tree, &d.target, &d.draft, &mut rng, &mut out)
            .unwrap();
        out.emitted_into(&mut e);
        if let Some(len) = extend_to {
            while e.len() < len {
                let p = m.p(&e, s);
                e.push(sample(&p, &mut rng));
            }
        }
        *counts.entry(e.clone()).or_insert(0) += 1;
    }
    assert_eq!(v.stats().steps, runs);
    counts
}

/// The implementation's emitted sequences follow the enumerated distribution (which equals the
/// target's): 200 000 seeded runs on the bench's shape in miniature, chi-squared.
#[test]
fn implementation_matches_enumeration_chi_square() {
    let cases = [
        (
            Shape::branches(3, 3),
            Sampling::default(),
            Policy::Sampled,
            Scores::Logits,
            200_000,
        ),
        (
            Shape::branches(3, 2),
            Sampling::new(0.8, 3, 1.0),
            Policy::TopM,
            Scores::Probabilities,
            50_000,
        ),
        (
            Shape::chain(3),
            Sampling::new(1.2, 0, 0.85),
            Policy::Sampled,
            Scores::Logits,
            50_000,
        ),
    ];
    for (i, (shape, s, policy, scores, runs)) in cases.into_iter().enumerate() {
        let mut m = Model::new(6, 40 + i as u64, 1.2, 1.0, scores);
        let probs = enumerate(&mut m, &s, &shape, policy);
        let counts = run_counts(&mut m, &s, &shape, policy, runs, 7 + i as u64, None);
        let (stat, df) = chi_square(&counts, &probs, runs);
        assert!(df >= 10, "case {i}: only {df} degrees of freedom");
        assert!(
            stat < chi_critical(df),
            "case {i}: chi2 {stat} with {df} dof"
        );
    }
}

/// At shapes beyond the enumeration (4 children, depth 4, top-k + temperature), the emitted
/// sequence continued with the target follows the target's joint distribution: 200 000 runs.
#[test]
fn chi_square_against_target_at_other_shapes() {
    let shape = Shape(vec![
        Shape(vec![Shape::chain(2), Shape::leaf()]),
        Shape::chain(3),
        Shape(vec![Shape::leaf(), Shape::leaf()]),
        Shape::leaf(),
    ]);
    assert_eq!(shape.depth(), 4);
    let s = Sampling::new(0.9, 5, 1.0);
    let mut m = Model::new(7, 99, 1.0, 0.7, Scores::Logits);
    let len = 3; // compare the first 3 tokens (7^3 cells); later ones extend the same way
    let runs = 200_000;
    let counts = run_counts(&mut m, &s, &shape, Policy::Sampled, runs, 2024, Some(len));
    let mut truncated: HashMap<Vec<u32>, u64> = HashMap::new();
    for (k, c) in counts {
        *truncated.entry(k[..len].to_vec()).or_insert(0) += c;
    }
    let joint = target_joint(&mut m, &s, len);
    let (stat, df) = chi_square(&truncated, &joint, runs);
    assert!(df >= 60, "only {df} degrees of freedom");
    assert!(stat < chi_critical(df), "chi2 {stat} with {df} dof");
}

/// One draft token: P(accept) = Σ min(p, q) = 1 − TV(p, q), in the enumeration exactly and in
/// the implementation within 5 standard errors.
#[test]
fn single_chain_acceptance_is_one_minus_tv() {
    for seed in 0..4u64 {
        let s = Sampling::with_temperature(0.8 + 0.2 * seed as f32);
        let mut m = Model::new(8, seed, 1.5, 1.2, Scores::Logits);
        let p = m.p(&[], &s);
        let q = m.q(&[], &s);
        let tv: f64 = 0.5 * p.iter().zip(&q).map(|(a, b)| (a - b).abs()).sum::<f64>();
        let emitted = enumerate(&mut m, &s, &Shape::chain(1), Policy::Sampled);
        let accepted: f64 = emitted
            .iter()
            .filter(|(e, _)| e.len() == 2)
            .map(|(_, w)| w)
            .sum();
        assert!((accepted - (1.0 - tv)).abs() < 1e-12);

        let runs = 100_000u64;
        let mut v = verifier(8, s, Scores::Logits);
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..runs {
            let d = draft_tree(&mut m, &s, &Shape::chain(1), Policy::Sampled, &mut rng);
            v.verify(
                &DraftTree::new(&d.parents, &d.tokens, &d.draft_rows),
                &d.target,
                &d.draft,
                &mut rng,
            )
            .unwrap();
        }
        let rate = v.stats().acceptance_rate();
        let se = ((1.0 - tv) * tv / runs as f64).sqrt();
        assert!(
            (rate - (1.0 - tv)).abs() < 5.0 * se + 1e-6,
            "rate {rate}, 1 - TV {}",
            1.0 - tv
        );
    }
}

/// p == q: every tested child is accepted, whatever the tree; the step ends with a bonus.
#[test]
fn equal_distributions_accept_everything() {
    let vocab = 16;
    let mut rng = StdRng::seed_from_u64(5);
    let mut v = verifier(vocab, Sampling::default(), Scores::Logits);
    // Root: 3 children drawn from row 0; node 1 has two children (row 1), node 4 one (row 2).
    let parents = [0, 0, 0, 1, 1, 4];
    let rows = [0, 0, 0, 1, 1, 2];
    let logits = squish_testkit::data::normal_vec(&mut rng, 7 * vocab, 0.0, 2.0);
    // Target rows at nodes 0, 1, 4 equal the draft rows 0, 1, 2.
    let mut draft = Vec::new();
    for node in [0usize, 1, 4] {
        draft.extend_from_slice(&logits[node * vocab..(node + 1) * vocab]);
    }
    for _ in 0..2000 {
        let q0 = squish_core::ops::softmax(&draft[..vocab], 1.0);
        let p0: Vec<f64> = q0.iter().map(|&x| f64::from(x)).collect();
        let tokens: Vec<u32> = (0..6).map(|_| sample(&p0, &mut rng)).collect();
        let out = v
            .verify(
                &DraftTree::new(&parents, &tokens, &rows),
                &logits,
                &draft,
                &mut rng,
            )
            .unwrap();
        assert_eq!(out.path()[..2], [0, 3]);
        assert_eq!(out.path().len(), 3);
        assert_eq!(out.next_kind(), NextKind::Bonus);
    }
    assert_eq!(v.stats().per_depth.len(), 3);
    assert_eq!(v.stats().per_depth[0].accepted, 2000);
    assert_eq!(v.stats().per_depth[0].tested, 2000);
    assert_eq!(v.stats().per_depth[0].drafted, 6000);
    assert_eq!(v.stats().acceptance_rate(), 3.0 / 6.0);
    assert_eq!(v.stats().accepted_per_step(), 3.0);
    assert_eq!(v.stats().emitted_per_step(), 4.0);
}

/// Disjoint supports: every child is rejected and the correction follows p exactly
/// (the residual max(0, p − q) is p), chi-squared over 100 000 runs.
#[test]
fn disjoint_supports_always_reject_and_correct_to_p() {
    let p = [0.0f32, 0.0, 0.1, 0.2, 0.3, 0.4];
    let q = [0.5f32, 0.5, 0.0, 0.0, 0.0, 0.0];
    let mut v = verifier(6, Sampling::default(), Scores::Probabilities);
    let mut target = Vec::new();
    for _ in 0..4 {
        target.extend_from_slice(&p);
    }
    let mut rng = StdRng::seed_from_u64(11);
    let qf: Vec<f64> = q.iter().map(|&x| f64::from(x)).collect();
    let runs = 100_000u64;
    let mut counts: HashMap<Vec<u32>, u64> = HashMap::new();
    for _ in 0..runs {
        let tokens: Vec<u32> = (0..3).map(|_| sample(&qf, &mut rng)).collect();
        let out = v
            .verify(
                &DraftTree::new(&[0, 0, 0], &tokens, &[0, 0, 0]),
                &target,
                &q,
                &mut rng,
            )
            .unwrap();
        assert!(out.accepted().is_empty());
        assert_eq!(out.next_kind(), NextKind::Correction);
        *counts.entry(vec![out.next_token()]).or_insert(0) += 1;
    }
    let probs: HashMap<Vec<u32>, f64> = p
        .iter()
        .enumerate()
        .filter(|(_, x)| **x > 0.0)
        .map(|(i, &x)| (vec![i as u32], f64::from(x)))
        .collect();
    let (stat, df) = chi_square(&counts, &probs, runs);
    assert_eq!(df, 3);
    assert!(stat < chi_critical(df), "chi2 {stat}");
    assert_eq!(v.stats().acceptance_rate(), 0.0);
    assert_eq!(v.stats().per_depth[0].tested, 3 * runs);
}

/// Same seed, same result; the RNG is the only source of randomness.
#[test]
fn same_seed_same_result() {
    let s = Sampling::new(0.7, 4, 0.9);
    let mut m = Model::new(10, 3, 1.0, 1.0, Scores::Logits);
    let mut draw = StdRng::seed_from_u64(1);
    let d = draft_tree(
        &mut m,
        &s,
        &Shape::branches(3, 3),
        Policy::Sampled,
        &mut draw,
    );
    let tree = DraftTree::new(&d.parents, &d.tokens, &d.draft_rows);
    let run = |seed: u64| {
        let mut v = verifier(10, s, Scores::Logits);
        let mut rng = StdRng::seed_from_u64(seed);
        (0..50)
            .map(|_| v.verify(&tree, &d.target, &d.draft, &mut rng).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(9), run(9));
    assert_ne!(run(9), run(10));
}

/// Greedy target: the emitted tokens are exactly the target's argmax path, whatever was drafted.
#[test]
fn greedy_emits_the_argmax_path() {
    let vocab = 6;
    let s = Sampling::greedy();
    let mut m = Model::new(vocab, 17, 1.0, 2.0, Scores::Logits);
    let mut rng = StdRng::seed_from_u64(3);
    let shape = Shape::branches(3, 3);
    let mut v = verifier(vocab, s, Scores::Logits);
    // The target's greedy continuation.
    let mut best = Vec::new();
    for _ in 0..4 {
        let p = m.p(&best, &s);
        best.push(p.iter().position(|&x| x == 1.0).unwrap() as u32);
    }
    let mut saw_accept = false;
    for _ in 0..300 {
        let d = draft_tree(
            &mut m,
            &Sampling::default(),
            &shape,
            Policy::Sampled,
            &mut rng,
        );
        let out = v
            .verify(
                &DraftTree::new(&d.parents, &d.tokens, &d.draft_rows),
                &d.target,
                &d.draft,
                &mut rng,
            )
            .unwrap();
        let mut e = Vec::new();
        out.emitted_into(&mut e);
        assert_eq!(e[..], best[..e.len()]);
        assert_eq!(out.softmaxes(), 0);
        saw_accept |= !out.accepted().is_empty();
        // The accepted path really is in the tree, in order.
        for (i, &node) in out.path().iter().enumerate() {
            assert_eq!(d.tokens[node], e[i]);
        }
    }
    assert!(saw_accept);
}

/// A greedy (one-hot) draft whose token the target gives 0.55: emitted with probability 0.55,
/// not 1 (the seed's bug), and the correction follows the target with it removed.
#[test]
fn one_hot_draft_is_accepted_with_the_target_probability() {
    let p = [0.55f32, 0.45];
    let mut v = verifier(2, Sampling::default(), Scores::Probabilities);
    let target = [p, p].concat();
    let mut rng = StdRng::seed_from_u64(4);
    let runs = 100_000u32;
    let mut zeros = 0u32;
    for _ in 0..runs {
        let out = v
            .verify(
                &DraftTree::new(&[0], &[0], &[GREEDY_DRAFT]),
                &target,
                &[],
                &mut rng,
            )
            .unwrap();
        if out.accepted().is_empty() {
            assert_eq!(out.next_token(), 1);
        } else {
            zeros += 1;
        }
    }
    let rate = f64::from(zeros) / f64::from(runs);
    let se = (0.55f64 * 0.45 / f64::from(runs)).sqrt();
    assert!((rate - 0.55).abs() < 5.0 * se, "rate {rate}");
}

#[test]
fn impossible_draft_is_an_error() {
    // Top-k 2 removes token 0 from the draft distribution; a draft claiming it is rejected.
    let mut v = verifier(4, Sampling::new(1.0, 2, 1.0), Scores::Logits);
    let draft = [0.0, 1.0, 2.0, 3.0];
    let target = [0.0f32; 8];
    let e = v
        .verify(
            &DraftTree::new(&[0], &[0], &[0]),
            &target,
            &draft,
            &mut StdRng::seed_from_u64(0),
        )
        .unwrap_err();
    assert_eq!(e, Error::ImpossibleDraft { node: 0, token: 0 });
}

/// `Warper` computes the distribution the verifiers use, equal to the test's own f64 warping;
/// drafting from it never trips `ImpossibleDraft`, even with top-k and top-p.
#[test]
fn warper_matches_the_oracle_and_drafts_verify() {
    let mut rng = StdRng::seed_from_u64(31);
    for s in samplings() {
        for scores in [Scores::Logits, Scores::Probabilities] {
            let mut w = squish_spec::Warper::new(s, scores).unwrap();
            for _ in 0..20 {
                let logits = squish_testkit::data::normal_vec(&mut rng, 50, 0.0, 2.0);
                let row = match scores {
                    Scores::Probabilities => crate::spec_oracle::to_probs(&logits),
                    _ => logits,
                };
                let mut out = vec![0.0f32; 50];
                w.probs_into(&row, &mut out).unwrap();
                let want = crate::spec_oracle::warp(&row, scores, &s);
                for (a, b) in out.iter().zip(&want) {
                    assert!(
                        (f64::from(*a) - b).abs() < 1e-6,
                        "{s:?} {scores:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
    let s = Sampling::new(0.8, 20, 0.7);
    let mut w = squish_spec::Warper::new(s, Scores::Logits).unwrap();
    let mut v = verifier(200, s, Scores::Logits);
    let mut q = vec![0.0f32; 200];
    for _ in 0..500 {
        let target = squish_testkit::data::normal_vec(&mut rng, 3 * 200, 0.0, 3.0);
        let draft = squish_testkit::data::normal_vec(&mut rng, 200, 0.0, 3.0);
        w.probs_into(&draft, &mut q).unwrap();
        let qf: Vec<f64> = q.iter().map(|&x| f64::from(x)).collect();
        let tokens = [sample(&qf, &mut rng), sample(&qf, &mut rng)];
        v.verify(
            &DraftTree::new(&[0, 0], &tokens, &[0, 0]),
            &target,
            &draft,
            &mut rng,
        )
        .unwrap();
    }
    let e = squish_spec::Warper::new(Sampling::with_temperature(-1.0), Scores::Logits).unwrap_err();
    insta::assert_snapshot!(e, @"invalid Warper.sampling.temperature: must be finite and >= 0, got -1");
}
