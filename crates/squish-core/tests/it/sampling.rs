//! `squish_core::sampling`: chi-squared goodness of fit, zero-probability categories, the
//! residual against an f64 reference, the TV and speculative-decoding identities, and the error
//! messages.

use rand::RngExt;
use squish_core::Error;
use squish_core::sampling::{residual_into, sample_categorical, sample_categorical_f64};
use squish_testkit::data::softmax_probs;
use squish_testkit::prop::check;
use squish_testkit::rng;
use squish_testkit::tol::{Tol, assert_close, assert_close_scalar};

/// Critical value of the chi-squared distribution with 9 degrees of freedom at p = 0.001
/// (upper tail): P(χ²₉ > 27.877) = 0.001. Standard tables (e.g. NIST/SEMATECH e-Handbook,
/// table 1.3.6.7.4) give 27.877.
const CHI2_CRIT_DF9_P001: f64 = 27.877;

/// Pearson's chi-squared statistic of `counts` against expected probabilities `p` (summing to 1)
/// over the categories with positive expectation.
fn chi_squared(counts: &[u64], p: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(p)
        .filter(|&(_, &pi)| pi > 0.0)
        .map(|(&c, &pi)| {
            let e = pi * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

fn normalised(w: &[f64]) -> Vec<f64> {
    let s: f64 = w.iter().sum();
    w.iter().map(|x| x / s).collect()
}

const DRAWS: usize = 200_000;

#[test]
fn f32_sampler_passes_chi_squared_goodness_of_fit() {
    // Unnormalised weights 1..=10: 10 categories, 9 degrees of freedom.
    let w: Vec<f32> = (1..=10).map(|i| i as f32).collect();
    let p = normalised(&w.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
    let mut r = rng(0x5eed_0001);
    let mut counts = [0u64; 10];
    for _ in 0..DRAWS {
        counts[sample_categorical(&w, &mut r).unwrap()] += 1;
    }
    let stat = chi_squared(&counts, &p);
    assert!(
        stat < CHI2_CRIT_DF9_P001,
        "chi2 {stat} >= {CHI2_CRIT_DF9_P001}, counts {counts:?}"
    );
    // The test has power: the same counts are far from a uniform distribution.
    assert!(chi_squared(&counts, &[0.1; 10]) > 100.0 * CHI2_CRIT_DF9_P001);
}

#[test]
fn f64_sampler_passes_chi_squared_goodness_of_fit() {
    // A peaked model-like distribution plus two zero categories (which must get no draws and do
    // not count as degrees of freedom): 10 positive categories, 9 degrees of freedom.
    let mut w = softmax_probs(&mut rng(11), 10, 1.5);
    w.insert(3, 0.0);
    w.push(0.0);
    let mut r = rng(0x5eed_0002);
    let mut counts = vec![0u64; w.len()];
    for _ in 0..DRAWS {
        counts[sample_categorical_f64(&w, &mut r).unwrap()] += 1;
    }
    assert_eq!(counts[3], 0);
    assert_eq!(counts[11], 0);
    let stat = chi_squared(&counts, &normalised(&w));
    assert!(
        stat < CHI2_CRIT_DF9_P001,
        "chi2 {stat} >= {CHI2_CRIT_DF9_P001}, counts {counts:?}"
    );
}

#[test]
fn zero_probability_categories_are_never_drawn() {
    check("sampling_zero_prob_never_drawn", 200, |rng| {
        let n = rng.random_range(1..40);
        let mut w: Vec<f32> = (0..n)
            .map(|_| match rng.random_range(0..4) {
                0 | 1 => 0.0,
                2 => rng.random_range(0.0f32..1.0),
                // Tiny and subnormal weights next to zeros.
                _ => f32::from_bits(rng.random_range(1u32..0x0100_0000)),
            })
            .collect();
        let keep = rng.random_range(0..n);
        if w[keep] == 0.0 {
            w[keep] = 1e-30;
        }
        let w64: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
        for _ in 0..200 {
            let i = sample_categorical(&w, rng).unwrap();
            assert!(w[i] > 0.0, "drew zero-weight index {i} from {w:?}");
            let j = sample_categorical_f64(&w64, rng).unwrap();
            assert!(w64[j] > 0.0, "drew zero-weight index {j} from {w64:?}");
        }
    });
}

#[test]
fn single_positive_category_is_always_drawn() {
    let w = [0.0f32, 0.0, 0.0, 7.0, 0.0];
    let mut r = rng(3);
    for _ in 0..1000 {
        assert_eq!(sample_categorical(&w, &mut r).unwrap(), 3);
    }
}

#[test]
fn sampling_is_seeded_and_consumes_nothing_on_error() {
    let w = [0.2f32, 0.3, 0.5];
    let draws = |seed| {
        let mut r = rng(seed);
        (0..50)
            .map(|_| sample_categorical(&w, &mut r).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draws(9), draws(9));
    let mut a = rng(10);
    let mut b = rng(10);
    assert!(sample_categorical(&[f32::NAN], &mut a).is_err());
    assert_eq!(a.random::<u64>(), b.random::<u64>());
}

#[test]
fn sampling_error_messages() {
    let mut r = rng(1);
    let msg = |e: Error| e.to_string();
    insta::assert_snapshot!(
        msg(sample_categorical(&[], &mut r).unwrap_err()),
        @"invalid distribution in sample_categorical probs: is empty"
    );
    insta::assert_snapshot!(
        msg(sample_categorical(&[0.5, -0.5], &mut r).unwrap_err()),
        @"invalid distribution in sample_categorical probs: element 1 is negative (-0.5)"
    );
    insta::assert_snapshot!(
        msg(sample_categorical(&[0.5, 0.1, f32::NAN], &mut r).unwrap_err()),
        @"invalid distribution in sample_categorical probs: element 2 is NaN"
    );
    insta::assert_snapshot!(
        msg(sample_categorical(&[f32::INFINITY], &mut r).unwrap_err()),
        @"invalid distribution in sample_categorical probs: element 0 is inf"
    );
    insta::assert_snapshot!(
        msg(sample_categorical(&[0.0, 0.0], &mut r).unwrap_err()),
        @"invalid distribution in sample_categorical probs: sum is 0"
    );
    insta::assert_snapshot!(
        msg(sample_categorical_f64(&[f64::MAX, f64::MAX], &mut r).unwrap_err()),
        @"invalid distribution in sample_categorical_f64 probs: sum is inf"
    );
    insta::assert_snapshot!(
        msg(sample_categorical_f64(&[f64::NEG_INFINITY], &mut r).unwrap_err()),
        @"invalid distribution in sample_categorical_f64 probs: element 0 is -inf"
    );
    assert!(matches!(
        sample_categorical(&[-1.0], &mut r),
        Err(Error::InvalidDistribution { .. })
    ));
}

/// f64 reference of the residual: (normalised residual, mass).
fn residual_ref(p: &[f32], q: &[f32]) -> (Vec<f64>, f64) {
    let d: Vec<f64> = p
        .iter()
        .zip(q)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).max(0.0))
        .collect();
    let mass: f64 = d.iter().sum();
    (d.into_iter().map(|x| x / mass).collect(), mass)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn residual_matches_f64_reference_and_tv_identity() {
    check("sampling_residual_reference", 300, |rng| {
        let n = rng.random_range(2..300);
        let (tp, tq) = (rng.random_range(0.5..3.0), rng.random_range(0.5..3.0));
        let p = to_f32(&softmax_probs(rng, n, tp));
        let q = to_f32(&softmax_probs(rng, n, tq));
        let mut out = vec![f32::NAN; n];
        let mass = residual_into(&p, &q, &mut out).unwrap();
        let (r, m) = residual_ref(&p, &q);
        assert_close_scalar(mass, m, Tol::new(1e-12, 0.0));
        assert_close(&out, &r, Tol::new(1e-6, 0.0));
        assert!(out.iter().all(|&x| x >= 0.0));
        let total: f64 = out.iter().map(|&x| f64::from(x)).sum();
        assert_close_scalar(total, 1.0, Tol::new(0.0, 1e-5));

        // Σ max(0, p - q) = ½ Σ |p - q| + ½ (Σp - Σq), exactly; = TV(p, q) when both sum to 1.
        let half_l1: f64 = 0.5
            * p.iter()
                .zip(&q)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs())
                .sum::<f64>();
        let sp: f64 = p.iter().map(|&x| f64::from(x)).sum();
        let sq: f64 = q.iter().map(|&x| f64::from(x)).sum();
        assert_close_scalar(mass, half_l1 + 0.5 * (sp - sq), Tol::new(1e-12, 1e-15));
        assert_close_scalar(mass, half_l1, Tol::new(0.0, 1e-6));

        // Speculative decoding: accept a draft x ~ q with probability min(1, p/q), otherwise
        // resample from the residual; the result is distributed as p:
        // min(pᵢ, qᵢ) + (1 - Σ min(p, q)) · rᵢ = pᵢ, and 1 - Σ min(p, q) is the mass.
        let recon: Vec<f64> = p
            .iter()
            .zip(&q)
            .zip(&out)
            .map(|((&a, &b), &ri)| f64::from(a.min(b)) + mass * f64::from(ri))
            .collect();
        assert_close(&recon, &p, Tol::new(0.0, 1e-7));
    });
}

#[test]
fn residual_of_disjoint_supports_is_p() {
    let p = [0.5f32, 0.5, 0.0, 0.0];
    let q = [0.0f32, 0.0, 0.25, 0.75];
    let mut out = [0.0; 4];
    assert_eq!(residual_into(&p, &q, &mut out).unwrap(), 1.0);
    assert_eq!(out, p);
}

#[test]
fn residual_error_messages() {
    let mut out = [0.0f32; 3];
    let p = [0.2f32, 0.3, 0.5];
    insta::assert_snapshot!(
        residual_into(&p, &p, &mut out).unwrap_err(),
        @"invalid distribution in residual_into: residual mass is 0 (p <= q everywhere)"
    );
    insta::assert_snapshot!(
        residual_into(&p, &[0.5, -1.0, 0.5], &mut out).unwrap_err(),
        @"invalid distribution in residual_into q: element 1 is negative (-1)"
    );
    insta::assert_snapshot!(
        residual_into(&[0.0; 3], &p, &mut out).unwrap_err(),
        @"invalid distribution in residual_into p: sum is 0"
    );
    insta::assert_snapshot!(
        residual_into(&[0.1, f32::NAN, 0.2], &p, &mut out).unwrap_err(),
        @"invalid distribution in residual_into p: element 1 is NaN"
    );
    insta::assert_snapshot!(
        residual_into(&[], &[], &mut []).unwrap_err(),
        @"invalid distribution in residual_into p: is empty"
    );
}

#[test]
#[should_panic(expected = "residual_into: lengths differ")]
fn residual_length_mismatch_panics() {
    let _ = residual_into(&[0.5, 0.5], &[0.5, 0.5], &mut [0.0; 3]);
}
