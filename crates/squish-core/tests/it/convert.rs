//! `squish_core::convert`: bulk f16 / bf16 conversion.
//!
//! Oracle: the scalar `f16::from_f32` / `bf16::from_f32` / `to_f32` conversions, element by
//! element (bit-identical; NaN only needs to stay NaN), exhaustively over every 16-bit pattern
//! for the widening direction and on random bit patterns plus special values for the
//! narrowing one.

use rand::{Rng, RngExt};
use squish_core::convert::*;
use squish_testkit::prop;

/// Values that stress rounding: signed zeros, infinities, NaN, f16 subnormals and the f16
/// range edges, bf16 halfway cases, f32 subnormals.
fn specials() -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        1.0,
        -1.0,
        0.1,
        65504.0,        // f16::MAX
        65519.0,        // rounds down to f16::MAX
        65520.0,        // halfway to the next binade: rounds (to even) to infinity
        -65520.0,       // -> -inf
        6.103_515_6e-5, // f16 MIN_POSITIVE (smallest normal)
        5.960_464_5e-8, // 2^-24: smallest f16 subnormal
        2.980_232_2e-8, // 2^-25: halfway to 0, ties to even -> 0
        3.0e-8,         // just above halfway -> 2^-24
        -4.0e-8,
        1.0e-9, // underflows to +0 in f16
        -1.0e-9,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(1),
        f32::MAX,
        f32::MIN,
        f32::from_bits(0x3F80_8000), // 1 + 2^-8: bf16 tie, to even -> 1.0
        f32::from_bits(0x3F81_8000), // bf16 tie, to even -> up
        f32::from_bits(0x3F80_8001), // just above a bf16 tie -> up
        f32::from_bits(0x7F7F_FFFF), // f32::MAX -> bf16 inf
        f32::from_bits(0x3F80_1000), // 1 + 2^-11: f16 tie, to even -> 1.0
        f32::from_bits(0x3F80_3000), // f16 tie, to even -> up
    ];
    for e in -30..=20 {
        v.push(2f32.powi(e) * 1.000_123);
    }
    v
}

fn random_f32(rng: &mut impl Rng) -> f32 {
    match rng.random_range(0..4) {
        // Any bit pattern: all exponents, NaNs, infinities, subnormals.
        0 => f32::from_bits(rng.random()),
        // Around f16's range, where rounding is interesting.
        1 => rng.random_range(-70000.0f32..70000.0),
        2 => rng.random_range(-1.0f32..1.0) * 2f32.powi(rng.random_range(-26..-10)),
        _ => rng.random_range(-4.0f32..4.0),
    }
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

#[test]
fn f32_to_f16_matches_scalar() {
    prop::check("f32_to_f16_matches_scalar", 100, |rng| {
        let n = rng.random_range(0..100); // odd lengths exercise SIMD tails
        let mut x: Vec<f32> = (0..n).map(|_| random_f32(rng)).collect();
        if rng.random::<bool>() {
            x.extend(specials());
        }
        let mut h = vec![f16::ZERO; x.len()];
        f32_to_f16_into(&x, &mut h);
        for (&v, &got) in x.iter().zip(&h) {
            let want = f16::from_f32(v);
            if v.is_nan() {
                assert!(got.is_nan(), "NaN must stay NaN");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "f16 of {v:e}");
            }
        }
    });
}

#[test]
fn f32_to_bf16_matches_scalar() {
    prop::check("f32_to_bf16_matches_scalar", 100, |rng| {
        let n = rng.random_range(0..100);
        let mut x: Vec<f32> = (0..n).map(|_| random_f32(rng)).collect();
        if rng.random::<bool>() {
            x.extend(specials());
        }
        let mut b = vec![bf16::ZERO; x.len()];
        f32_to_bf16_into(&x, &mut b);
        for (&v, &got) in x.iter().zip(&b) {
            let want = bf16::from_f32(v);
            if v.is_nan() {
                assert!(got.is_nan(), "NaN must stay NaN");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "bf16 of {v:e}");
            }
        }
    });
}

#[test]
fn specials_round_as_documented() {
    let x = [
        0.0,
        -0.0,
        65519.0,
        65520.0,
        2.980_232_2e-8,
        3.0e-8,
        1.0e-9,
        -1.0e-9,
    ];
    let mut h = [f16::ZERO; 8];
    f32_to_f16_into(&x, &mut h);
    let mut y = [0.0f32; 8];
    f16_to_f32_into(&h, &mut y);
    let expected = [
        0.0,
        -0.0,
        65504.0,
        f32::INFINITY,
        0.0,
        5.960_464_5e-8,
        0.0,
        -0.0,
    ];
    for (a, b) in y.iter().zip(expected) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a:e} vs {b:e}");
    }
}

/// Every one of the 65536 f16 patterns widens exactly like the scalar conversion, and every
/// non-NaN one narrows back to itself (f16 values are exactly representable in f32).
#[test]
fn f16_all_patterns_round_trip() {
    let h: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let mut y = vec![0.0f32; h.len()];
    f16_to_f32_into(&h, &mut y);
    for (&a, &v) in h.iter().zip(&y) {
        assert!(same_f32(v, a.to_f32()), "{:#06x}", a.to_bits());
    }
    let mut back = vec![f16::ZERO; y.len()];
    f32_to_f16_into(&y, &mut back);
    for (&a, &b) in h.iter().zip(&back) {
        if a.is_nan() {
            assert!(b.is_nan());
        } else {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }
}

/// Same for all 65536 bf16 patterns.
#[test]
fn bf16_all_patterns_round_trip() {
    let h: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    let mut y = vec![0.0f32; h.len()];
    bf16_to_f32_into(&h, &mut y);
    for (&a, &v) in h.iter().zip(&y) {
        assert!(same_f32(v, a.to_f32()), "{:#06x}", a.to_bits());
        if !a.is_nan() {
            // bf16 is the top half of an f32.
            assert_eq!(v.to_bits(), u32::from(a.to_bits()) << 16);
        }
    }
    let mut back = vec![bf16::ZERO; y.len()];
    f32_to_bf16_into(&y, &mut back);
    for (&a, &b) in h.iter().zip(&back) {
        if a.is_nan() {
            assert!(b.is_nan());
        } else {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }
}

#[test]
#[should_panic(expected = "bf16_to_f32_into: source has 3 elements but destination has 2")]
fn length_mismatch_panics() {
    bf16_to_f32_into(&[bf16::ZERO; 3], &mut [0.0; 2]);
}
