//! `squish_core::ops` against float64 references, closed forms and a full-sort oracle.

use rand::{Rng, RngExt};
use squish_core::ops;
use squish_testkit::data::normal_vec;
use squish_testkit::prop::check;
use squish_testkit::tol::{Tol, assert_close, assert_close_scalar};

fn random_len<R: Rng + ?Sized>(rng: &mut R) -> usize {
    // Mostly short (every tail length), sometimes long.
    if rng.random_bool(0.8) {
        rng.random_range(0..70)
    } else {
        rng.random_range(70..5000)
    }
}

fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

fn softmax_f64(x: &[f32], t: f64) -> Vec<f64> {
    let m = x
        .iter()
        .map(|&v| f64::from(v))
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|&v| ((f64::from(v) - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

fn lse_f64(x: &[f32], t: f64) -> f64 {
    let m = x
        .iter()
        .map(|&v| f64::from(v))
        .fold(f64::NEG_INFINITY, f64::max);
    m / t
        + x.iter()
            .map(|&v| ((f64::from(v) - m) / t).exp())
            .sum::<f64>()
            .ln()
}

#[test]
fn dot_matches_f64_reference() {
    check("ops_dot_f64", 200, |rng| {
        let n = random_len(rng);
        let a = normal_vec(rng, n, 0.0, 1.0);
        let b = normal_vec(rng, n, 0.5, 2.0);
        let abs: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
            .sum();
        // Relative to Σ|aᵢbᵢ| (the conditioning of the sum), not to the possibly tiny result.
        let bound = 1e-5 * abs + 1e-6;
        let err = (f64::from(ops::dot(&a, &b)) - dot_f64(&a, &b)).abs();
        assert!(err <= bound, "n={n} err={err:e} bound={bound:e}");
    });
}

#[test]
fn dot_of_positive_vectors_is_relatively_accurate() {
    check("ops_dot_positive", 100, |rng| {
        let n = random_len(rng).max(1);
        let a: Vec<f32> = (0..n).map(|_| rng.random_range(0.1f32..2.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.random_range(0.1f32..2.0)).collect();
        assert_close_scalar(ops::dot(&a, &b), dot_f64(&a, &b), Tol::new(1e-5, 0.0));
    });
}

#[test]
#[should_panic(expected = "dot: lengths differ")]
fn dot_length_mismatch_panics() {
    let _ = ops::dot(&[1.0, 2.0], &[1.0]);
}

#[test]
fn axpy_matches_elementwise_definition_exactly() {
    check("ops_axpy", 100, |rng| {
        let n = random_len(rng);
        let alpha = rng.random_range(-4.0f32..4.0);
        let x = normal_vec(rng, n, 0.0, 1.0);
        let y0 = normal_vec(rng, n, 0.0, 1.0);
        let mut y = y0.clone();
        ops::axpy(alpha, &x, &mut y);
        // Documented: y + (alpha * x), two roundings, on every instruction set.
        let expected: Vec<f32> = y0.iter().zip(&x).map(|(&y, &x)| y + alpha * x).collect();
        assert_close(&y, &expected, Tol::EXACT);
    });
}

#[test]
#[should_panic(expected = "axpy: lengths differ")]
fn axpy_length_mismatch_panics() {
    ops::axpy(1.0, &[1.0, 2.0], &mut [0.0]);
}

#[test]
fn l2_normalize_gives_unit_norm_and_returns_the_norm() {
    check("ops_l2_normalize", 100, |rng| {
        let n = random_len(rng).max(1);
        let x0 = normal_vec(rng, n, 0.0, 3.0);
        let norm64 = dot_f64(&x0, &x0).sqrt();
        let mut x = x0.clone();
        let norm = ops::l2_normalize(&mut x);
        assert_close_scalar(norm, norm64, Tol::new(1e-5, 0.0));
        assert_close_scalar(dot_f64(&x, &x), 1.0, Tol::new(0.0, 1e-5));
        let expected: Vec<f64> = x0.iter().map(|&v| f64::from(v) / norm64).collect();
        assert_close(&x, &expected, Tol::new(1e-5, 1e-7));
    });
    let mut z = vec![0.0f32; 37];
    assert_eq!(ops::l2_normalize(&mut z), 0.0);
    assert!(z.iter().all(|&v| v == 0.0));
    assert_eq!(ops::l2_normalize(&mut []), 0.0);
}

#[test]
fn cosine_matches_f64_reference() {
    check("ops_cosine", 100, |rng| {
        let n = random_len(rng).max(1);
        let a = normal_vec(rng, n, 0.0, 1.0);
        let b = normal_vec(rng, n, 0.2, 1.0);
        let r = dot_f64(&a, &b) / (dot_f64(&a, &a).sqrt() * dot_f64(&b, &b).sqrt());
        let c = ops::cosine(&a, &b);
        assert!((-1.0..=1.0).contains(&c));
        assert_close_scalar(c, r, Tol::new(0.0, 1e-5));
        assert_close_scalar(ops::cosine(&a, &a), 1.0, Tol::new(0.0, 1e-6));
        let neg: Vec<f32> = a.iter().map(|v| -2.0 * v).collect();
        assert_close_scalar(ops::cosine(&a, &neg), -1.0, Tol::new(0.0, 1e-6));
    });
    assert_eq!(ops::cosine(&[0.0; 5], &[1.0; 5]), 0.0);
    assert_eq!(ops::cosine(&[1.0; 5], &[0.0; 5]), 0.0);
    assert_eq!(ops::cosine(&[], &[]), 0.0);
}

#[test]
fn max_and_argmax_match_naive_scans() {
    check("ops_max_argmax", 200, |rng| {
        let n = random_len(rng);
        // Small integer set: many ties.
        let x: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-3i32..4) as f32 - 0.5)
            .collect();
        let naive_max = x.iter().copied().reduce(f32::max);
        assert_eq!(ops::max(&x), naive_max);
        let naive_argmax = naive_max.and_then(|m| x.iter().position(|&v| v == m));
        assert_eq!(ops::argmax(&x), naive_argmax);
    });
    assert_eq!(ops::argmax(&[]), None);
    assert_eq!(ops::argmax(&[2.0, 2.0, 2.0]), Some(0));
    assert_eq!(
        ops::argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]),
        Some(0)
    );
}

#[test]
fn softmax_matches_f64_reference() {
    check("ops_softmax_f64", 200, |rng| {
        let n = random_len(rng).max(1);
        let t = rng.random_range(0.2f32..5.0);
        let x = normal_vec(rng, n, 0.0, 4.0);
        let expected = softmax_f64(&x, f64::from(t));
        let p = ops::softmax(&x, t);
        assert_close(&p, &expected, Tol::new(1e-5, 1e-9));
        let total: f64 = p.iter().map(|&v| f64::from(v)).sum();
        assert_close_scalar(total, 1.0, Tol::new(0.0, 1e-5));
        // The three forms agree exactly.
        let mut out = vec![f32::NAN; n];
        ops::softmax_into(&x, t, &mut out);
        assert_close(&out, &p, Tol::EXACT);
        let mut inplace = x.clone();
        ops::softmax_in_place(&mut inplace, t);
        assert_close(&inplace, &p, Tol::EXACT);
    });
}

#[test]
fn softmax_is_shift_invariant() {
    check("ops_softmax_shift", 100, |rng| {
        let n = random_len(rng).max(1);
        let t = rng.random_range(0.5f32..2.0);
        // Logits on a 2^-10 grid and power-of-two shifts: x + c and (x + c) - max(x + c) are
        // exact in f32, so the shifted softmax must equal the unshifted one bit for bit.
        let x: Vec<f32> = normal_vec(rng, n, 0.0, 2.0)
            .into_iter()
            .map(|v| (v * 1024.0).round() / 1024.0)
            .collect();
        let c = [-256.0f32, -1.0, 8.0, 256.0][rng.random_range(0..4)];
        let shifted: Vec<f32> = x.iter().map(|v| v + c).collect();
        let p = ops::softmax(&x, t);
        assert_close(&ops::softmax(&shifted, t), &p, Tol::EXACT);
        assert_close(&p, &softmax_f64(&x, f64::from(t)), Tol::new(1e-5, 1e-9));
        // log-sum-exp shifts by c / T.
        let lse = f64::from(ops::log_sum_exp(&x, t)) + f64::from(c / t);
        assert_close_scalar(ops::log_sum_exp(&shifted, t), lse, Tol::new(1e-5, 1e-4));
    });
}

#[test]
fn softmax_with_masked_logits() {
    check("ops_softmax_masked", 100, |rng| {
        let n = random_len(rng).max(2);
        let mut x = normal_vec(rng, n, 0.0, 2.0);
        let keep = rng.random_range(0..n);
        for (i, v) in x.iter_mut().enumerate() {
            if i != keep && rng.random_bool(0.3) {
                *v = f32::NEG_INFINITY;
            }
        }
        let p = ops::softmax(&x, 1.0);
        let unmasked: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
        let expected_unmasked = softmax_f64(&unmasked, 1.0);
        let mut j = 0;
        for (&pi, &xi) in p.iter().zip(&x) {
            if xi == f32::NEG_INFINITY {
                assert_eq!(pi, 0.0);
            } else {
                assert_close_scalar(pi, expected_unmasked[j], Tol::new(1e-5, 1e-9));
                j += 1;
            }
        }
    });
}

#[test]
#[should_panic(expected = "every logit is -inf")]
fn softmax_of_fully_masked_row_panics() {
    let mut x = [f32::NEG_INFINITY; 4];
    ops::softmax_in_place(&mut x, 1.0);
}

#[test]
fn softmax_of_empty_is_empty() {
    assert!(ops::softmax(&[], 1.0).is_empty());
    ops::softmax_in_place(&mut [], 1.0);
}

#[test]
fn temperature_sharpens_and_flattens() {
    let x = [1.0f32, 2.0, 3.0];
    let cold = ops::softmax(&x, 0.1);
    let hot = ops::softmax(&x, 100.0);
    assert!(cold[2] > 0.999);
    assert!(hot.iter().all(|&p| (p - 1.0 / 3.0).abs() < 0.01));
}

#[test]
#[should_panic(expected = "temperature must be finite and > 0")]
fn nan_temperature_panics() {
    let _ = ops::softmax(&[1.0], f32::NAN);
}

#[test]
#[should_panic(expected = "out has length")]
fn softmax_into_length_mismatch_panics() {
    ops::softmax_into(&[1.0, 2.0], 1.0, &mut [0.0; 3]);
}

#[test]
fn log_sum_exp_matches_f64_reference() {
    check("ops_lse_f64", 200, |rng| {
        let n = random_len(rng).max(1);
        let t = rng.random_range(0.2f32..5.0);
        let x = normal_vec(rng, n, 0.0, 4.0);
        let expected = lse_f64(&x, f64::from(t));
        assert_close_scalar(ops::log_sum_exp(&x, t), expected, Tol::new(1e-5, 1e-5));
        // It is the log-normaliser of softmax.
        let p = ops::softmax(&x, t);
        let lse = ops::log_sum_exp(&x, t);
        let i = rng.random_range(0..n);
        assert_close_scalar(
            (x[i] / t - lse).exp(),
            f64::from(p[i]),
            Tol::new(1e-4, 1e-9),
        );
    });
}

#[test]
fn log_sum_exp_of_huge_logits_stays_finite() {
    check("ops_lse_huge", 50, |rng| {
        let n = random_len(rng).max(1);
        let x: Vec<f32> = normal_vec(rng, n, 0.0, 4.0)
            .into_iter()
            .map(|v| v * 1000.0)
            .collect();
        let lse = ops::log_sum_exp(&x, 1.0);
        assert!(lse.is_finite());
        assert_close_scalar(lse, lse_f64(&x, 1.0), Tol::new(1e-5, 1e-3));
        let p = ops::softmax(&x, 1.0);
        assert!(p.iter().all(|v| v.is_finite()));
        assert_close(&p, &softmax_f64(&x, 1.0), Tol::new(1e-5, 1e-9));
    });
}

#[test]
fn log_sum_exp_edge_cases() {
    assert_eq!(ops::log_sum_exp(&[], 1.0), f32::NEG_INFINITY);
    assert_eq!(
        ops::log_sum_exp(&[f32::NEG_INFINITY; 3], 1.0),
        f32::NEG_INFINITY
    );
    assert_close_scalar(
        ops::log_sum_exp(&[0.0, f32::NEG_INFINITY], 1.0),
        0.0,
        Tol::EXACT,
    );
    assert_close_scalar(
        ops::log_sum_exp(&[2.0; 4], 2.0),
        1.0 + 4f64.ln(),
        Tol::new(1e-6, 0.0),
    );
}

/// Oracle: a full stable sort of the indices by descending value.
fn top_k_oracle(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap_or(std::cmp::Ordering::Equal));
    idx.truncate(k);
    idx
}

#[test]
fn top_k_equals_full_sort_with_many_ties() {
    let mut out = Vec::new();
    check("ops_top_k_ties", 300, |rng| {
        let n = random_len(rng);
        let levels = rng.random_range(1..6);
        let x: Vec<f32> = (0..n)
            .map(|_| rng.random_range(0..levels) as f32 - 2.0)
            .collect();
        let k = rng.random_range(0..=n + 2);
        let expected = top_k_oracle(&x, k);
        top_k_into(&x, k, &mut out);
        assert_eq!(out, expected, "n={n} k={k}");
        assert_eq!(ops::top_k(&x, k), expected);
    });
}

fn top_k_into(x: &[f32], k: usize, out: &mut Vec<usize>) {
    let cap = out.capacity();
    ops::top_k_into(x, k, out);
    // Capacity is reused, never shrunk.
    assert!(out.capacity() >= cap);
}

#[test]
fn top_k_equals_full_sort_on_continuous_values() {
    check("ops_top_k_continuous", 100, |rng| {
        let n = random_len(rng);
        let x = normal_vec(rng, n, 0.0, 1.0);
        let k = rng.random_range(0..=n);
        assert_eq!(ops::top_k(&x, k), top_k_oracle(&x, k));
    });
}

#[test]
fn top_k_small_cases() {
    assert_eq!(ops::top_k(&[], 3), Vec::<usize>::new());
    assert_eq!(ops::top_k(&[1.0, 2.0], 0), Vec::<usize>::new());
    assert_eq!(ops::top_k(&[5.0, 5.0, 5.0], 2), [0, 1]);
    assert_eq!(
        ops::top_k(&[f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY], 3),
        [1, 0, 2]
    );
    let mut out = vec![99; 16];
    ops::top_k_into(&[0.5, 0.25], 1, &mut out);
    assert_eq!(out, [0]);
}

/// Small `k` against long inputs (the bounded-heap path), with ties, signed zeros and
/// infinities, against the full-sort oracle.
#[test]
fn top_k_small_k_long_input_equals_full_sort() {
    let mut out = Vec::new();
    check("ops_top_k_small_k", 100, |rng| {
        let n = rng.random_range(64..5000);
        let tied = rng.random_bool(0.5);
        let mut x: Vec<f32> = if tied {
            (0..n)
                .map(|_| rng.random_range(0..7) as f32 - 3.0)
                .collect()
        } else {
            normal_vec(rng, n, 0.0, 1.0)
        };
        for _ in 0..3 {
            let i = rng.random_range(0..n);
            x[i] = [f32::INFINITY, f32::NEG_INFINITY, -0.0][rng.random_range(0..3)];
        }
        let k = rng.random_range(1..=n / 16);
        top_k_into(&x, k, &mut out);
        assert_eq!(out, top_k_oracle(&x, k), "n={n} k={k}");
    });
}

/// `dot_rows_into` is `dot` per row, bit for bit, for every length (including the SIMD tails).
#[test]
fn dot_rows_equals_dot_per_row() {
    check("ops_dot_rows", 100, |rng| {
        let d = rng.random_range(0..140);
        let n = rng.random_range(0..20);
        let x = normal_vec(rng, d, 0.0, 1.0);
        let rows = normal_vec(rng, n * d, 0.0, 1.0);
        let mut out = vec![f32::NAN; n];
        ops::dot_rows_into(&x, &rows, &mut out);
        for (j, &o) in out.iter().enumerate() {
            let want = if d == 0 {
                0.0
            } else {
                ops::dot(&x, &rows[j * d..(j + 1) * d])
            };
            assert_eq!(o.to_bits(), want.to_bits(), "d={d} row {j}");
        }
    });
}

/// `k` between `n / 16` and `n / 4` (selection narrowed by a bisected value threshold), with
/// ties, signed zeros, infinities, extremes and adversarial orders (sorted, reversed, one
/// repeated value), against the full-sort oracle.
#[test]
fn top_k_mid_k_equals_full_sort() {
    let mut out = Vec::new();
    check("ops_top_k_mid_k", 150, |rng| {
        let n = rng.random_range(16..3000);
        let mut x: Vec<f32> = match rng.random_range(0..6) {
            // Extremes whose difference overflows, and subnormals.
            5 => (0..n)
                .map(|_| match rng.random_range(0..3) {
                    0 => f32::MAX,
                    1 => -f32::MAX,
                    _ => f32::from_bits(rng.random_range(0..0x0080_0000)),
                })
                .collect(),
            0 => (0..n)
                .map(|_| rng.random_range(0..7) as f32 - 3.0)
                .collect(),
            1 => (0..n).map(|i| i as f32).collect(),
            2 => (0..n).map(|i| -(i as f32)).collect(),
            3 => vec![1.5; n],
            _ => normal_vec(rng, n, 0.0, 1.0),
        };
        for _ in 0..3 {
            let i = rng.random_range(0..n);
            x[i] = [f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0][rng.random_range(0..4)];
        }
        let k = rng.random_range(n / 16..=n / 4).max(1);
        top_k_into(&x, k, &mut out);
        assert_eq!(out, top_k_oracle(&x, k), "n={n} k={k}");
    });
}

/// `log2_into` is within 2.5e-7 relative (1e-7 absolute below |log2 x| = 1) of f64's log2.
fn assert_log2_close(x: f32, got: f32) {
    let want = f64::from(x).log2();
    let err = (f64::from(got) - want).abs();
    assert!(
        err <= 2.5e-7 * want.abs() || err <= 1e-7,
        "log2({x:e}) = {got} vs {want} (error {err:e})"
    );
}

#[test]
fn log2_into_matches_f64_over_the_whole_positive_range() {
    // Every 997th positive finite f32 bit pattern: subnormals, every binade, both halves of
    // each mantissa range, and the neighbourhood of 1.
    let mut xs: Vec<f32> = (1..0x7F80_0000u32)
        .step_by(997)
        .map(f32::from_bits)
        .collect();
    xs.extend((-2000..=2000).map(|i| 1.0 + i as f32 * f32::EPSILON));
    xs.extend([
        f32::MIN_POSITIVE,
        f32::MAX,
        1.0,
        2.0,
        0.5,
        std::f32::consts::SQRT_2,
    ]);
    let mut out = vec![0.0; xs.len()];
    ops::log2_into(&xs, &mut out);
    for (&x, &got) in xs.iter().zip(&out) {
        assert_log2_close(x, got);
    }
    // Exact powers of two are exact.
    for k in -149i32..=127 {
        let x = if k >= -126 {
            f32::from_bits(((k + 127) as u32) << 23)
        } else {
            f32::from_bits(1 << (k + 149))
        };
        let mut o = [0.0];
        ops::log2_into(&[x], &mut o);
        assert_eq!(o[0], k as f32, "log2(2^{k})");
    }
}

#[test]
fn log2_into_special_values() {
    let x = [
        0.0,
        -0.0,
        f32::INFINITY,
        -1.0,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::MIN_POSITIVE,
    ];
    let mut out = [0.0f32; 7];
    ops::log2_into(&x, &mut out);
    assert_eq!(
        out[..3],
        [f32::NEG_INFINITY, f32::NEG_INFINITY, f32::INFINITY]
    );
    assert!(out[3..].iter().all(|v| v.is_nan()), "{out:?}");
}

#[test]
#[should_panic(expected = "log2_into: out has length 1, expected 2")]
fn log2_into_length_mismatch_panics() {
    ops::log2_into(&[1.0, 2.0], &mut [0.0]);
}
