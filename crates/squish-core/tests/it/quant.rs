//! `squish_core::quant`: GGML block formats and grouped quantisation.
//!
//! Oracles: golden bytes derived by hand from the published GGML formats, independent
//! scalar transcriptions of GGML's quantisers (`Q8_0`: the x86 AVX/AVX2 one; `Q4_0`: the
//! reference), f64 error bounds, exact round trips of
//! representable values, and an outlier-channel comparison against a per-tensor baseline.

use rand::{Rng, RngExt};
use squish_core::Error;
use squish_core::convert::f16;
use squish_core::quant::*;
use squish_testkit::{data, prop};

// ---------------------------------------------------------------------------------------------
// GGML blocks: sizes and golden bytes
// ---------------------------------------------------------------------------------------------

#[test]
fn block_sizes_match_ggml() {
    assert_eq!(QK8_0, 32);
    assert_eq!(QK4_0, 32);
    assert_eq!(size_of::<BlockQ8_0>(), 34); // f16 + 32 x i8
    assert_eq!(size_of::<BlockQ4_0>(), 18); // f16 + 16 x u8
    assert_eq!(<BlockQ8_0 as GgmlBlock>::BYTES, 34);
    assert_eq!(<BlockQ4_0 as GgmlBlock>::BYTES, 18);
    let q8 = quantize_q8_0(&[1.0; 96]).unwrap();
    assert_eq!(blocks_as_bytes(&q8).len(), 3 * 34);
    let q4 = quantize_q4_0(&[1.0; 96]).unwrap();
    assert_eq!(blocks_as_bytes(&q4).len(), 3 * 18);
}

fn q8_bytes(x: &[f32]) -> Vec<u8> {
    blocks_as_bytes(&quantize_q8_0(x).unwrap()).to_vec()
}

fn q4_bytes(x: &[f32]) -> Vec<u8> {
    blocks_as_bytes(&quantize_q4_0(x).unwrap()).to_vec()
}

/// Q8_0 with amax = 127: d = 127 / 127 = 1.0 exactly, f16 1.0 = 0x3C00 (bytes `00 3C`),
/// id = 127 / 127 = 1, so each code is x rounded to nearest with ties to EVEN, as GGML's
/// AVX2 `_mm256_round_ps(_MM_ROUND_NEAREST)` (0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -2.5 -> -2,
/// 126.5 -> 126, where C's roundf in `quantize_row_q8_0_ref` gives 1, 2, 3, -3, 127), and
/// 0.49999997 -> 0 (a naive floor(x + 0.5) would give 1).
#[test]
fn q8_0_golden_unit_scale() {
    let mut x = [0.0f32; 32];
    let vals = [
        0.5,
        -0.5,
        1.5,
        2.5,
        -2.5,
        0.499_999_97,
        126.5,
        -127.0,
        127.0,
        3.25,
        -3.75,
        0.0,
        -0.0,
    ];
    x[..vals.len()].copy_from_slice(&vals);
    #[rustfmt::skip]
    let expected: [u8; 34] = [
        0x00, 0x3C,                                     // d = f16 1.0
        0x00, 0x00, 0x02, 0x02, 0xFE, 0x00, 0x7E, 0x81, // 0, 0, 2, 2, -2, 0, 126, -127
        0x7F, 0x03, 0xFC, 0x00, 0x00,                   // 127, 3, -4, 0, 0
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 19 zeros
    ];
    assert_eq!(q8_bytes(&x), expected);
}

/// Q8_0 with amax = 1: d = 1/127 = 0.0078740157..., which lies in f16's binade
/// [2^-7, 2^-6) with ulp 2^-17: (0.0078740157 - 2^-7) / 2^-17 = 8.06 -> mantissa 8, so
/// d16 = 2^-7 + 8 * 2^-17 = 0.00787353515625, bits 0 01000 0000001000 = 0x2008 (bytes `08 20`).
/// Codes use id = 127 / amax = 127 exactly: 1 -> 127 (0x7F), -1 -> -127 (0x81),
/// 0.25 -> 31.75 -> 32 (0x20), -0.1 -> -12.7 -> -13 (0xF3), zeros -> 0.
#[test]
fn q8_0_golden_rounded_scale() {
    let mut x = [0.0f32; 32];
    x[..4].copy_from_slice(&[1.0, -1.0, 0.25, -0.1]);
    let mut expected = [0u8; 34];
    expected[..6].copy_from_slice(&[0x08, 0x20, 0x7F, 0x81, 0x20, 0xF3]);
    assert_eq!(q8_bytes(&x), expected);
}

/// Q4_0: max = -8 (the FIRST value of largest magnitude; the later +8 does not replace it),
/// d = -8 / -8 = 1.0 (bytes `00 3C`), id = 1, code = min(15, trunc(x + 8.5)):
///   x[0]  = -8    -> 0.5  -> 0          x[1]  = 8     -> 16.5 -> 16 -> clamped 15
///   x[2]  = 0.5   -> 9.0  -> 9 (+1)     x[3]  = -0.5  -> 8.0  -> 8 (0: ties go UP, roundf
///   x[4]  = 1.5   -> 10.0 -> 10         x[5]  = -1.5  -> 7.0  -> 7          would give -1)
///   x[6]  = 7     -> 15.5 -> 15         x[7]  = -7.49 -> 1.01 -> 1
///   x[8]  = 3.2   -> 11.7 -> 11         zeros -> 8.5 -> 8
///   x[16] = -3    -> 5.5  -> 5          x[17] = 2.75  -> 11.25 -> 11
/// qs[j] = code[j] | code[j + 16] << 4: 0x50, 0xBF, 0x89, 0x88, 0x8A, 0x87, 0x8F, 0x81, 0x8B,
/// then 0x88 for j = 9..16.
#[test]
fn q4_0_golden_negative_max() {
    let mut x = [0.0f32; 32];
    x[..9].copy_from_slice(&[-8.0, 8.0, 0.5, -0.5, 1.5, -1.5, 7.0, -7.49, 3.2]);
    x[16] = -3.0;
    x[17] = 2.75;
    #[rustfmt::skip]
    let expected: [u8; 18] = [
        0x00, 0x3C,
        0x50, 0xBF, 0x89, 0x88, 0x8A, 0x87, 0x8F, 0x81, 0x8B,
        0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,
    ];
    assert_eq!(q4_bytes(&x), expected);
}

/// Q4_0 with a positive max: max = 4, d = 4 / -8 = -0.5 = f16 0xB800 (bytes `00 B8`), id = -2:
///   x[0]  = 4     -> -8 + 8.5 = 0.5  -> 0   (value (0 - 8) * -0.5 = 4, exact)
///   x[1]  = -4    ->  8 + 8.5 = 16.5 -> 15  (clamped: value 7 * -0.5 = -3.5)
///   x[2]  = 1     -> -2 + 8.5 = 6.5  -> 6   (value 1, exact)
///   x[16] = 0.25  -> -0.5 + 8.5 = 8  -> 8   (value 0: the tie goes up in code space)
///   x[17] = -0.25 ->  0.5 + 8.5 = 9  -> 9   (value -0.5)
/// qs = 0x80, 0x9F, 0x86, then 0x88.
#[test]
fn q4_0_golden_positive_max() {
    let mut x = [0.0f32; 32];
    x[..3].copy_from_slice(&[4.0, -4.0, 1.0]);
    x[16] = 0.25;
    x[17] = -0.25;
    let mut expected = [0x88u8; 18];
    expected[..5].copy_from_slice(&[0x00, 0xB8, 0x80, 0x9F, 0x86]);
    assert_eq!(q4_bytes(&x), expected);
    let mut y = [0.0f32; 32];
    dequantize_row_q4_0(&quantize_q4_0(&x).unwrap(), &mut y);
    assert_eq!(&y[..3], &[4.0, -3.5, 1.0]);
    assert_eq!(&y[16..18], &[0.0, -0.5]);
}

/// Q4_0 with an f16-rounded scale: max = 0.1, d = -0.0125, in f16's binade [2^-7, 2^-6) with
/// ulp 2^-17: (0.0125 - 2^-7) / 2^-17 = 614.4 -> mantissa 614 = 0x266, sign 1, exponent
/// 8 = 0b01000: bits 0xA266 (bytes `66 A2`). With id ~= -80: 0.1 -> -8 + 8.5 = 0.5 -> 0,
/// -0.05 -> 4 + 8.5 = 12.5 -> 12, zeros -> 8. qs = 0x80, 0x8C, then 0x88.
#[test]
fn q4_0_golden_rounded_scale() {
    let mut x = [0.0f32; 32];
    x[..2].copy_from_slice(&[0.1, -0.05]);
    let mut expected = [0x88u8; 18];
    expected[..4].copy_from_slice(&[0x66, 0xA2, 0x80, 0x8C]);
    assert_eq!(q4_bytes(&x), expected);
}

/// All-zero blocks: Q8_0 stores d = +0 and codes 0; Q4_0 stores d = 0.0 / -8 = -0.0 (f16
/// 0x8000, bytes `00 80`, exactly as GGML) and codes 8 (bytes 0x88). Both decode to zeros.
#[test]
fn zero_blocks() {
    let x = [0.0f32; 64];
    let q8 = quantize_q8_0(&x).unwrap();
    assert_eq!(q8[0].d, f16::ZERO);
    assert_eq!(blocks_as_bytes(&q8), &[0u8; 68][..]);
    let q4 = quantize_q4_0(&x).unwrap();
    assert_eq!(q4[0].d.to_bits(), 0x8000);
    assert_eq!(q4[0].d.to_f32(), 0.0);
    let mut expected = [0x88u8; 18];
    expected[..2].copy_from_slice(&[0x00, 0x80]);
    assert_eq!(blocks_as_bytes(&q4[..1]), &expected);
    let mut y = [1.0f32; 64];
    dequantize_row_q8_0(&q8, &mut y);
    assert!(y.iter().all(|&v| v == 0.0));
    let mut y = [1.0f32; 64];
    dequantize_row_q4_0(&q4, &mut y);
    assert!(y.iter().all(|&v| v == 0.0));
}

// ---------------------------------------------------------------------------------------------
// GGML blocks: independent reference and error bounds
// ---------------------------------------------------------------------------------------------

/// f32 -> f16 round-to-nearest-even, computed in f64 from the definition (independent of
/// `half`): normal binades have 10 fraction bits, subnormals a fixed ulp of 2^-24.
fn f16_rne(d: f32) -> f64 {
    let a = f64::from(d).abs();
    if a == 0.0 {
        return f64::from(d);
    }
    let e = a.log2().floor().max(-14.0);
    // log2 may be off by one ulp at binade edges: fix the exponent exactly.
    let e = if 2f64.powf(e) > a {
        e - 1.0
    } else if 2f64.powf(e + 1.0) <= a && e > -14.0 {
        e + 1.0
    } else {
        e
    };
    let e = e.max(-14.0);
    let ulp = 2f64.powf(e - 10.0);
    let r = (a / ulp).round_ties_even() * ulp;
    let r = if r >= 65520.0 { f64::INFINITY } else { r };
    r.copysign(f64::from(d))
}

/// GGML's x86 `quantize_row_q8_0` (the `__AVX2__ || __AVX__` branch of ggml-cpu), transcribed
/// statement by statement in scalar form: `maxScalar`, `d = maxScalar / 127.f`,
/// `id = maxScalar != 0.0f ? 127.f / maxScalar : 0.0f`, `_mm256_mul_ps`, then
/// `_mm256_round_ps(.., _MM_ROUND_NEAREST)` (ties to even) and `_mm256_cvtps_epi32`.
fn ref_q8_0(x: &[f32]) -> Vec<(f64, [i8; 32])> {
    x.chunks(32)
        .map(|b| {
            let mut amax = 0.0f32;
            for &v in b {
                amax = amax.max(v.abs());
            }
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mut qs = [0i8; 32];
            for (q, &v) in qs.iter_mut().zip(b) {
                *q = (v * id).round_ties_even() as i8;
            }
            (f16_rne(d), qs)
        })
        .collect()
}

/// GGML's `quantize_row_q4_0_ref`, transcribed statement by statement.
fn ref_q4_0(x: &[f32]) -> Vec<(f64, [u8; 16])> {
    x.chunks(32)
        .map(|b| {
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in b {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0u8; 16];
            for j in 0..16 {
                let x0 = b[j] * id;
                let x1 = b[j + 16] * id;
                let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
                let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
                qs[j] = xi0 | (xi1 << 4);
            }
            (f16_rne(d), qs)
        })
        .collect()
}

/// Row data of varied scales: normal, uniform, log-normal magnitudes with random signs, a few
/// exact ties and repeated magnitudes of both signs (to exercise "first max wins").
fn block_data(rng: &mut impl Rng, blocks: usize) -> Vec<f32> {
    let n = blocks * 32;
    let scale = 2f32.powi(rng.random_range(-12..12));
    let mut x = match rng.random_range(0..3) {
        0 => data::normal_vec(rng, n, 0.0, scale),
        1 => data::uniform_vec(rng, n, -scale, scale),
        _ => data::lognormal_vec(rng, n, 0.0, 2.0)
            .into_iter()
            .map(|v| v * scale * 1e-3)
            .collect(),
    };
    for v in x.iter_mut() {
        match rng.random_range(0..20) {
            0 => *v = -*v,
            1 => *v = 0.0,
            2 => *v = (rng.random_range(-16..16) as f32) * 0.5 * scale,
            _ => {}
        }
    }
    if rng.random_range(0..4) == 0 && n >= 2 {
        // A repeated magnitude with the opposite sign.
        let (i, j) = (rng.random_range(0..n), rng.random_range(0..n));
        x[j] = -x[i];
    }
    x
}

#[test]
fn q8_0_matches_reference_bit_for_bit() {
    prop::check("q8_0_matches_reference", 300, |rng| {
        let blocks = rng.random_range(1..6);
        let x = block_data(rng, blocks);
        let got = quantize_q8_0(&x).unwrap();
        for (b, (d, qs)) in got.iter().zip(ref_q8_0(&x)) {
            assert_eq!(f64::from(b.d.to_f32()), d);
            assert_eq!(b.qs, qs);
        }
    });
}

#[test]
fn q4_0_matches_reference_bit_for_bit() {
    prop::check("q4_0_matches_reference", 300, |rng| {
        let blocks = rng.random_range(1..6);
        let x = block_data(rng, blocks);
        let got = quantize_q4_0(&x).unwrap();
        for (b, (d, qs)) in got.iter().zip(ref_q4_0(&x)) {
            let d16 = f64::from(b.d.to_f32());
            assert!(d16 == d && d16.is_sign_negative() == d.is_sign_negative());
            assert_eq!(b.qs, qs);
        }
    });
}

/// Q8_0 error bound, per element, in f64.
///
/// With `d = amax / 127` (exact), codes are `q = round(x / d)` up to f32 rounding, so
/// `|x - q d| <= d / 2`. The stored scale is `d16 = f16(d)`, and the decoded value is
/// `q * d16` (exact in f32: 8-bit code times 11-bit significand). Hence
/// `|x - q d16| <= d/2 + |q| |d - d16| <= d16/2 + (|q| + 1/2) |d - d16|`: the f16-rounding
/// slack, at most 127.5 half-ulps of f16 (2^-11 relative, about 6% of d for a normal f16
/// scale). The f32 steps `d = amax/127`, `id = 1/d`, `x * id` each add at most 2^-24
/// relative on a code of magnitude <= 127, i.e. < 2^-16 code units; `2^-13 d` covers them.
#[test]
fn q8_0_error_is_within_half_a_step() {
    prop::check("q8_0_error_bound", 300, |rng| {
        let blocks = rng.random_range(1..6);
        let x = block_data(rng, blocks);
        let q = quantize_q8_0(&x).unwrap();
        let mut y = vec![0.0; x.len()];
        dequantize_row_q8_0(&q, &mut y);
        for ((xb, yb), b) in x.chunks(32).zip(y.chunks(32)).zip(&q) {
            let amax = xb.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
            let d = amax / 127.0;
            let d16 = f64::from(b.d.to_f32());
            for ((&xv, &yv), &c) in xb.iter().zip(yb).zip(&b.qs) {
                assert!((-127..=127).contains(&c));
                let err = (f64::from(xv) - f64::from(yv)).abs();
                let bound = d16 / 2.0 + (f64::from(c).abs() + 0.5) * (d - d16).abs() + d / 8192.0;
                assert!(
                    err <= bound,
                    "x {xv} y {yv} err {err} > {bound} (d {d}, d16 {d16})"
                );
                if f64::from(xv).abs() == amax && amax > 0.0 {
                    assert_eq!(c.abs(), 127, "the largest magnitude maps to +-127");
                }
            }
        }
    });
}

/// Q4_0 error bound, per element, in f64. With `d = max / -8`, `v = x / d` lies in
/// `[-8, 8]`; the code is `round_half_up(v) + 8` clamped to 15, so the step error is <= 1/2
/// for `v < 7.5` and <= 1 for the clamped `v in [7.5, 8]`. The f16 slack is
/// `(|code - 8| + 1/2) |d - d16|` as for Q8_0, plus `2^-13 |d|` for the f32 steps.
#[test]
fn q4_0_error_is_bounded() {
    prop::check("q4_0_error_bound", 300, |rng| {
        let blocks = rng.random_range(1..6);
        let x = block_data(rng, blocks);
        let q = quantize_q4_0(&x).unwrap();
        let mut y = vec![0.0; x.len()];
        dequantize_row_q4_0(&q, &mut y);
        for ((xb, yb), b) in x.chunks(32).zip(y.chunks(32)).zip(&q) {
            let max = xb.iter().fold(0.0f64, |m, &v| {
                if f64::from(v).abs() > m.abs() {
                    f64::from(v)
                } else {
                    m
                }
            });
            let d = max / -8.0;
            let d16 = f64::from(b.d.to_f32());
            for (j, (&xv, &yv)) in xb.iter().zip(yb).enumerate() {
                let code = if j < 16 {
                    b.qs[j] & 15
                } else {
                    b.qs[j - 16] >> 4
                };
                let v = if d == 0.0 { 0.0 } else { f64::from(xv) / d };
                let steps = if v < 7.5 { 0.5 } else { 1.0 };
                let slack = (f64::from(code) - 8.0).abs() + 0.5;
                let bound = steps * d16.abs() + slack * (d - d16).abs() + d.abs() / 8192.0;
                let err = (f64::from(xv) - f64::from(yv)).abs();
                assert!(
                    err <= bound,
                    "x {xv} y {yv} err {err} > {bound} (d {d}, d16 {d16})"
                );
            }
        }
    });
}

/// Integers k in [-127, 127] times a power of two, with +-127 * 2^e present so that
/// d = 2^e exactly (representable in f16): every value survives bit-exactly.
#[test]
fn q8_0_round_trips_representable_values() {
    prop::check("q8_0_exact_round_trip", 100, |rng| {
        let e = rng.random_range(-14..=8);
        let step = 2f32.powi(e);
        let mut x: Vec<f32> = (0..64)
            .map(|_| rng.random_range(-127..=127) as f32 * step)
            .collect();
        for b in 0..2 {
            let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
            x[b * 32 + rng.random_range(0..32)] = sign * 127.0 * step;
        }
        let q = quantize_q8_0(&x).unwrap();
        assert!(q.iter().all(|b| b.d.to_f32() == step));
        let mut y = vec![0.0; 64];
        dequantize_row_q8_0(&q, &mut y);
        assert_eq!(
            x.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    });
}

/// Values in {-8..7} * s * 2^e with -8 * s * 2^e present (s = +-1), so d = s * 2^e exactly:
/// every value survives bit-exactly (zeros may come back as -0.0 when d < 0, which compares
/// equal).
#[test]
fn q4_0_round_trips_representable_values() {
    prop::check("q4_0_exact_round_trip", 100, |rng| {
        let e = rng.random_range(-14..=8);
        let s = if rng.random::<bool>() { 1.0 } else { -1.0 };
        let step = s * 2f32.powi(e);
        let mut x: Vec<f32> = (0..64)
            .map(|_| rng.random_range(-8..=7) as f32 * step)
            .collect();
        for b in 0..2 {
            x[b * 32 + rng.random_range(0..32)] = -8.0 * step;
        }
        let q = quantize_q4_0(&x).unwrap();
        assert!(q.iter().all(|b| b.d.to_f32() == step));
        let mut y = vec![0.0; 64];
        dequantize_row_q4_0(&q, &mut y);
        assert_eq!(x, y);
    });
}

#[test]
fn non_finite_input_is_an_error() {
    let mut x = vec![0.5f32; 64];
    x[40] = f32::NAN;
    let mut q8 = [BlockQ8_0::default(); 2];
    assert!(matches!(
        quantize_row_q8_0(&x, &mut q8),
        Err(Error::NonFinite { index: 40, .. })
    ));
    x[40] = 0.0;
    x[33] = f32::NEG_INFINITY;
    let mut q4 = [BlockQ4_0::default(); 2];
    assert!(matches!(
        quantize_row_q4_0(&x, &mut q4),
        Err(Error::NonFinite { index: 33, value, .. }) if value == f32::NEG_INFINITY
    ));
}

/// Scales beyond f16's range are refused (GGML would store an infinite scale).
#[test]
fn f16_scale_overflow_is_an_error() {
    let mut x = vec![1.0f32; 32];
    x[7] = -65504.0 * 127.0; // d = 65504 = f16::MAX: still fine
    assert_eq!(quantize_q8_0(&x).unwrap()[0].d.to_f32(), 65504.0);
    x[7] = -9.0e6; // d = 70866 -> f16 infinity
    assert!(matches!(
        quantize_q8_0(&x),
        Err(Error::OutOfRange { index: 7, .. })
    ));
    x[7] = 65504.0 * 8.0;
    assert_eq!(quantize_q4_0(&x).unwrap()[0].d.to_f32(), -65504.0);
    x[7] = 6.0e5;
    assert!(matches!(
        quantize_q4_0(&x),
        Err(Error::OutOfRange { index: 7, .. })
    ));
}

#[test]
#[should_panic(expected = "do not fill")]
fn quantize_row_panics_on_length_mismatch() {
    let mut q = [BlockQ8_0::default(); 1];
    let _ = quantize_row_q8_0(&[0.0; 33], &mut q);
}

#[test]
#[should_panic(expected = "do not fill")]
fn dequantize_row_panics_on_length_mismatch() {
    dequantize_row_q4_0(&[BlockQ4_0::default(); 2], &mut [0.0; 32]);
}

#[test]
fn byte_views_round_trip() {
    let mut rng = squish_testkit::rng(7);
    let x = data::normal_vec(&mut rng, 96, 0.0, 1.0);
    let q8 = quantize_q8_0(&x).unwrap();
    let bytes = blocks_as_bytes(&q8);
    // Native byte order, which is GGML's little-endian layout on little-endian targets.
    assert_eq!(bytes[..2], q8[0].d.to_ne_bytes());
    #[cfg(target_endian = "little")]
    assert_eq!(bytes[..2], q8[0].d.to_le_bytes());
    assert_eq!(bytes[2..34], q8[0].qs.map(|q| q as u8));
    assert_eq!(try_cast_blocks::<BlockQ8_0>(bytes).unwrap(), &q8[..]);
    assert_eq!(blocks_from_bytes::<BlockQ8_0>(bytes).unwrap(), q8);

    let q4 = quantize_q4_0(&x).unwrap();
    let mut buf = vec![0u8];
    buf.extend_from_slice(blocks_as_bytes(&q4));
    // Copying decode works at any offset.
    assert_eq!(blocks_from_bytes::<BlockQ4_0>(&buf[1..]).unwrap(), q4);
    // Bad lengths are typed errors for both.
    assert!(matches!(
        blocks_from_bytes::<BlockQ4_0>(&buf[1..buf.len() - 1]),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        try_cast_blocks::<BlockQ8_0>(&bytes[..35]),
        Err(Error::Shape(_))
    ));
    // An odd start address is refused by the zero-copy view, whatever the length.
    let odd = &bytes[1..35];
    assert!(matches!(
        try_cast_blocks::<BlockQ8_0>(odd),
        Err(Error::Shape(_))
    ));
    assert_eq!(
        blocks_from_bytes::<BlockQ8_0>(odd).unwrap().len(),
        1,
        "the copying decode accepts it"
    );
    assert!(try_cast_blocks::<BlockQ4_0>(&[]).unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------------

const ALL_BITS: [QuantBits; 3] = [QuantBits::B2, QuantBits::B4, QuantBits::B8];

#[test]
fn pack_unpack_round_trip() {
    prop::check("pack_unpack_round_trip", 300, |rng| {
        let bits = ALL_BITS[rng.random_range(0..3)];
        let n = rng.random_range(0..200);
        let codes: Vec<u8> = (0..n)
            .map(|_| rng.random_range(0..bits.levels()) as u8)
            .collect();
        let mut packed = vec![0xAAu8; bits.packed_len(n)];
        pack_codes(&codes, bits, &mut packed);
        assert_eq!(packed.len(), (n * bits.bits() as usize).div_ceil(8));
        // Naive layout oracle: code i at byte i / k, bit bits * (i % k); the rest zero.
        let k = 8 / bits.bits() as usize;
        let mut naive = vec![0u8; packed.len()];
        for (i, &c) in codes.iter().enumerate() {
            naive[i / k] |= c << (bits.bits() as usize * (i % k));
        }
        assert_eq!(packed, naive);
        let mut back = vec![0xFFu8; n];
        unpack_codes(&packed, bits, &mut back);
        assert_eq!(back, codes);
    });
}

#[test]
#[should_panic(expected = "pack_codes: out must hold 5 codes of 2 bits")]
fn pack_panics_on_wrong_output_length() {
    pack_codes(&[0; 5], QuantBits::B2, &mut [0; 1]);
}

#[test]
fn quant_bits_levels() {
    assert_eq!(
        ALL_BITS.map(|b| (b.bits(), b.levels(), b.max_code(), b.codes_per_byte())),
        [(2, 4, 3, 4), (4, 16, 15, 2), (8, 256, 255, 1)]
    );
    assert_eq!(QuantBits::B2.packed_len(9), 3);
    assert!(QuantBits::from_bits(5).is_err());
}

// ---------------------------------------------------------------------------------------------
// Grouped quantisation
// ---------------------------------------------------------------------------------------------

/// 3 tokens x 3 channels, 4 bits, one group of 3 tokens per channel (keys):
///   channel 0 = [0, 15, 7.5]: min 0, scale 15/15 = 1, codes [0, 15, 8] (7.5 ties to even)
///   channel 1 = [-1, -1, -1]: constant, scale 0, codes [0, 0, 0], exact
///   channel 2 = [2, 0, 30]:   min 0, scale 30/15 = 2, codes [1, 0, 15]
/// Row-major codes 0,0,1 | 15,0,0 | 8,0,15 packed two per byte, low nibble first:
/// 0x00, 0xF1, 0x00, 0x08, 0x0F (9 codes -> 5 bytes; rows start mid-byte).
#[test]
fn grouped_golden_per_channel() {
    let x = [0.0, -1.0, 2.0, 15.0, -1.0, 0.0, 7.5, -1.0, 30.0];
    let cfg = GroupedQuantConfig::new(QuantBits::B4, 3, GroupAxis::AlongColumn);
    let q = quantize_grouped(&x, 3, 3, &cfg).unwrap();
    assert_eq!(q.codes(), &[0x00, 0xF1, 0x00, 0x08, 0x0F]);
    assert_eq!(q.scales(), &[1.0, 0.0, 2.0]);
    assert_eq!(q.zeros(), &[0.0, -1.0, 0.0]);
    assert_eq!(q.code(2, 0), 8);
    assert_eq!(q.bytes_held(), 5 + 3 * 4 + 3 * 4);
    assert_eq!(
        q.dequantize(),
        [0.0, -1.0, 2.0, 15.0, -1.0, 0.0, 8.0, -1.0, 30.0]
    );
}

/// 2 tokens x 4 channels, 2 bits, one group of 4 channels per token (values):
///   token 0 = [0, 1, 2, 3]: scale 3/3 = 1, codes 0,1,2,3 -> 0b11_10_01_00 = 0xE4
///   token 1 = [10, 10, 10, 10]: constant -> codes 0 -> 0x00
#[test]
fn grouped_golden_per_token() {
    let x = [0.0, 1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 10.0];
    let cfg = GroupedQuantConfig::new(QuantBits::B2, 4, GroupAxis::AlongRow);
    let q = quantize_grouped(&x, 2, 4, &cfg).unwrap();
    assert_eq!(q.codes(), &[0xE4, 0x00]);
    assert_eq!(q.scales(), &[1.0, 0.0]);
    assert_eq!(q.zeros(), &[0.0, 10.0]);
    assert_eq!(q.dequantize(), x);
}

fn random_config(rng: &mut impl Rng) -> (usize, usize, GroupedQuantConfig) {
    let bits = ALL_BITS[rng.random_range(0..3)];
    let axis = if rng.random::<bool>() {
        GroupAxis::AlongRow
    } else {
        GroupAxis::AlongColumn
    };
    let gs = [1, 2, 3, 4, 8, 32][rng.random_range(0..6)];
    let (mut rows, mut cols): (usize, usize) = (rng.random_range(1..40), rng.random_range(1..300));
    match axis {
        GroupAxis::AlongRow => cols = cols.div_ceil(gs) * gs,
        GroupAxis::AlongColumn => rows = rows.div_ceil(gs) * gs,
    }
    (rows, cols, GroupedQuantConfig::new(bits, gs, axis))
}

/// The group of `(r, c)` from the definition of the axes (independent of `group_index`).
fn group_of(cfg: &GroupedQuantConfig, cols: usize, r: usize, c: usize) -> usize {
    match cfg.axis {
        GroupAxis::AlongRow => (r * cols + c) / cfg.group_size,
        GroupAxis::AlongColumn => (r / cfg.group_size) * cols + c,
    }
}

/// Per element, with the group's `min`, `max` (f64) and `scale = (max - min) / (L - 1)`:
/// `|x - x'| <= scale / 2 + 8 eps (|min| + |max|)`, `eps = 2^-23`. The slack: `max - min`,
/// `1 / (L - 1)`, their product (the stored scale: within `3 * 2^-24` relative, checked below),
/// `1 / scale`, `x - min` and `* (1 / scale)` each round by at most `2^-24` relative, moving the
/// code-space value by <= `6 * 2^-24 * (L - 1)` codes, i.e. `3 eps * range` in value; the decode
/// `min + code * scale` rounds twice more, by <= `2^-24 (range + max(|min|, |max|))`. In total
/// <= `4 eps (|min| + |max|)`; 8 eps leaves a margin.
#[test]
fn grouped_error_sizes_and_codes() {
    prop::check("grouped_error_bound", 200, |rng| {
        let (rows, cols, cfg) = random_config(rng);
        let n = rows * cols;
        let scale = 2f32.powi(rng.random_range(-10..10));
        let offset = rng.random_range(-4.0f32..4.0) * scale;
        let mut x = data::normal_vec(rng, n, offset, scale);
        if rng.random_range(0..4) == 0 {
            // Some constant stretches.
            let v = x[0];
            let k = rng.random_range(0..n);
            x[..k].fill(v);
        }
        let q = quantize_grouped(&x, rows, cols, &cfg).unwrap();
        let groups = n / cfg.group_size;
        let bits = cfg.bits;

        // Sizes: exactly ceil(n * bits / 8) code bytes plus 8 bytes per group.
        assert_eq!(q.codes().len(), (n * bits.bits() as usize).div_ceil(8));
        assert_eq!(q.group_count(), groups);
        assert_eq!(q.bytes_held(), q.codes().len() + 8 * groups);
        assert_eq!((q.rows(), q.cols(), q.len()), (rows, cols, n));

        // f64 reference group statistics.
        let mut lo = vec![f64::INFINITY; groups];
        let mut hi = vec![f64::NEG_INFINITY; groups];
        for r in 0..rows {
            for c in 0..cols {
                let g = group_of(&cfg, cols, r, c);
                assert_eq!(q.group_index(r, c), g);
                let v = f64::from(x[r * cols + c]);
                lo[g] = lo[g].min(v);
                hi[g] = hi[g].max(v);
            }
        }
        let levels = f64::from(bits.levels());
        for g in 0..groups {
            assert_eq!(f64::from(q.zeros()[g]), lo[g]);
            let s_ref = (hi[g] - lo[g]) / (levels - 1.0);
            // Three roundings of 2^-24: 1.8e-7 relative.
            assert!((f64::from(q.scales()[g]) - s_ref).abs() <= s_ref * 2e-7);
        }

        let y = q.dequantize();
        let mut all = vec![0u8; n];
        unpack_codes(q.codes(), bits, &mut all);
        let eps = f64::from(f32::EPSILON);
        for r in 0..rows {
            for c in 0..cols {
                let i = r * cols + c;
                let g = group_of(&cfg, cols, r, c);
                let code = q.code(r, c);
                assert!(code <= bits.max_code());
                assert_eq!(all[i], code);
                let s = (hi[g] - lo[g]) / (levels - 1.0);
                let bound = s / 2.0 + 8.0 * eps * (lo[g].abs() + hi[g].abs());
                let err = (f64::from(x[i]) - f64::from(y[i])).abs();
                assert!(
                    err <= bound,
                    "({r}, {c}): x {} y {} err {err} > {bound}",
                    x[i],
                    y[i]
                );
                if hi[g] == lo[g] {
                    assert_eq!((code, y[i]), (0, x[i]), "constant groups are exact");
                }
            }
        }
    });
}

#[test]
fn grouped_into_reuses_buffers() {
    let mut rng = squish_testkit::rng(11);
    let cfg = GroupedQuantConfig::new(QuantBits::B4, 16, GroupAxis::AlongColumn);
    let big = data::normal_vec(&mut rng, 64 * 48, 0.0, 1.0);
    let small = data::normal_vec(&mut rng, 32 * 40, 0.0, 1.0);
    let mut out = GroupedQuantized::new();
    assert!(out.is_empty());
    quantize_grouped_into(&big, 64, 48, &cfg, &mut out).unwrap();
    let ptrs = (
        out.codes().as_ptr(),
        out.scales().as_ptr(),
        out.zeros().as_ptr(),
    );
    let values = GroupedQuantConfig::new(QuantBits::B2, 8, GroupAxis::AlongRow);
    quantize_grouped_into(&small, 32, 40, &values, &mut out).unwrap();
    assert_eq!(
        ptrs,
        (
            out.codes().as_ptr(),
            out.scales().as_ptr(),
            out.zeros().as_ptr()
        ),
        "no reallocation for a smaller input"
    );
    assert_eq!(out, quantize_grouped(&small, 32, 40, &values).unwrap());
    assert_eq!(out.config(), &values);
}

#[test]
fn grouped_errors() {
    let cfg = GroupedQuantConfig::new(QuantBits::B4, 4, GroupAxis::AlongRow);
    let mut x = vec![0.0f32; 16];
    x[9] = f32::NAN;
    let mut out = quantize_grouped(&[1.0; 8], 2, 4, &cfg).unwrap();
    let before = out.clone();
    assert!(matches!(
        quantize_grouped_into(&x, 4, 4, &cfg, &mut out),
        Err(Error::NonFinite { index: 9, .. })
    ));
    assert_eq!(out, before, "validation errors leave out untouched");
    assert!(matches!(
        quantize_grouped(&[0.0; 6], 1, 6, &cfg),
        Err(Error::Config(e)) if e.field == "group_size"
    ));
    assert!(matches!(
        quantize_grouped(&[0.0; 15], 4, 4, &cfg),
        Err(Error::Shape(_))
    ));
    let zero = GroupedQuantConfig::new(QuantBits::B4, 0, GroupAxis::AlongRow);
    assert!(zero.validate().is_err());
    // A range beyond f32: refused, and `out` is left empty but valid.
    let x = [3.0e38, -3.0e38, 0.0, 0.0];
    assert!(matches!(
        quantize_grouped_into(&x, 1, 4, &cfg, &mut out),
        Err(Error::OutOfRange { index: 0, .. })
    ));
    assert!(out.is_empty() && out.codes().is_empty());
    // Empty matrices are fine.
    let q = quantize_grouped(&[], 0, 8, &cfg).unwrap();
    assert_eq!((q.bytes_held(), q.dequantize()), (0, vec![]));
}

#[test]
#[should_panic(expected = "outside a 2 x 4 matrix")]
fn code_panics_out_of_range() {
    let cfg = GroupedQuantConfig::new(QuantBits::B4, 4, GroupAxis::AlongRow);
    let q = quantize_grouped(&[1.0; 8], 2, 4, &cfg).unwrap();
    let _ = q.code(2, 0);
}

/// KIVI's motivation: keys have a few outlier channels (20x wider, biased). Per-channel
/// groups (AlongColumn) keep the ordinary channels' error at the scale of their own range;
/// one group over the whole tensor stretches the scale by the outliers for everyone.
#[test]
fn per_channel_keys_beat_per_tensor_on_outlier_channels() {
    let spec = data::KvSpec {
        heads: 1,
        seq_len: 256,
        head_dim: 64,
        outlier_channels: vec![3, 17, 40],
        outlier_scale: 20.0,
    };
    let keys = data::kv_with_outliers(&mut squish_testkit::rng(42), &spec);
    let (rows, cols) = (spec.seq_len, spec.head_dim);
    let mse = |y: &[f32]| {
        keys.iter()
            .zip(y)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum::<f64>()
            / keys.len() as f64
    };
    for bits in [QuantBits::B2, QuantBits::B4] {
        let per_channel = GroupedQuantConfig::new(bits, 32, GroupAxis::AlongColumn);
        let q = quantize_grouped(&keys, rows, cols, &per_channel).unwrap();
        let per_channel_mse = mse(&q.dequantize());

        // Baseline computed here: one scale / zero-point for the whole tensor.
        let lo = keys.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = keys.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s = (hi - lo) / bits.max_code() as f32;
        let baseline: Vec<f32> = keys
            .iter()
            .map(|&v| lo + ((v - lo) / s).round().min(bits.max_code() as f32) * s)
            .collect();
        let per_tensor_mse = mse(&baseline);
        // The library agrees with the baseline when asked for one group.
        let one = GroupedQuantConfig::new(bits, rows * cols, GroupAxis::AlongRow);
        let q1 = quantize_grouped(&keys, 1, rows * cols, &one).unwrap();
        assert!((mse(&q1.dequantize()) - per_tensor_mse).abs() <= 1e-3 * per_tensor_mse);

        assert!(
            per_channel_mse * 50.0 < per_tensor_mse,
            "{bits:?}: per-channel mse {per_channel_mse} vs per-tensor {per_tensor_mse}"
        );
    }
}
