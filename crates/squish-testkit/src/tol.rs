//! Float tolerances.
//!
//! [`assert_close`] checks `|actual - expected| <= atol + rtol * |expected|` element-wise and,
//! when it fails, reports the worst element (index, both values, the error and the bound), not
//! just the first.

use std::fmt::Debug;

/// Relative and absolute tolerance: an element passes when
/// `|actual - expected| <= atol + rtol * |expected|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tol {
    /// Relative tolerance.
    pub rtol: f64,
    /// Absolute tolerance.
    pub atol: f64,
}

impl Tol {
    /// A tolerance with the given relative and absolute parts.
    pub const fn new(rtol: f64, atol: f64) -> Self {
        Self { rtol, atol }
    }
    /// Exact equality (`rtol = atol = 0`).
    pub const EXACT: Self = Self::new(0.0, 0.0);
}

/// A float that can be compared in `f64` (implemented for `f32` and `f64`).
pub trait Float: Copy + Debug {
    /// The value widened to `f64`.
    fn to_f64(self) -> f64;
}
impl Float for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}
impl Float for f64 {
    fn to_f64(self) -> f64 {
        self
    }
}

/// The worst element of a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Worst {
    /// Index of the element with the largest error relative to its bound.
    pub index: usize,
    /// `|actual - expected|` there.
    pub error: f64,
    /// The bound there (`atol + rtol * |expected|`).
    pub bound: f64,
}

/// Compares two slices and returns the worst element (by `error / bound`), or `None` for empty
/// slices. Non-finite values pass only where both sides are the identical non-finite value.
///
/// # Panics
/// If the slices differ in length.
pub fn worst<A: Float, E: Float>(actual: &[A], expected: &[E], tol: Tol) -> Option<Worst> {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let mut out: Option<(f64, Worst)> = None;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let (a, e) = (a.to_f64(), e.to_f64());
        let bound = if tol.rtol == 0.0 {
            tol.atol
        } else {
            tol.atol + tol.rtol * e.abs()
        };
        let error = if a == e || (a.is_nan() && e.is_nan()) {
            0.0
        } else {
            (a - e).abs()
        };
        let error = if error.is_nan() { f64::INFINITY } else { error };
        let ratio = if error == 0.0 {
            0.0
        } else if bound == 0.0 {
            f64::INFINITY
        } else {
            error / bound
        };
        if out.as_ref().is_none_or(|(r, _)| ratio > *r) {
            out = Some((
                ratio,
                Worst {
                    index: i,
                    error,
                    bound,
                },
            ));
        }
    }
    out.map(|(_, w)| w)
}

/// Asserts that `actual` is within `tol` of `expected`, element-wise.
///
/// # Panics
/// If the lengths differ or any element is out of tolerance; the message names the worst element.
#[track_caller]
pub fn assert_close<A: Float, E: Float>(actual: &[A], expected: &[E], tol: Tol) {
    if let Some(w) = worst(actual, expected, tol) {
        assert!(
            w.error == 0.0 || w.error <= w.bound,
            "not close at index {} of {}: actual {:?}, expected {:?}, |error| {:e} > bound {:e} \
             (rtol {:e}, atol {:e})",
            w.index,
            actual.len(),
            actual[w.index],
            expected[w.index],
            w.error,
            w.bound,
            tol.rtol,
            tol.atol
        );
    }
}

/// Asserts that two scalars are within `tol`.
///
/// # Panics
/// If they are not.
#[track_caller]
pub fn assert_close_scalar<A: Float, E: Float>(actual: A, expected: E, tol: Tol) {
    assert_close(&[actual], &[expected], tol);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_within_tolerance() {
        assert_close(&[1.0f32, 2.0], &[1.0f64, 2.000_001], Tol::new(1e-5, 0.0));
        assert_close::<f32, f32>(&[], &[], Tol::EXACT);
    }

    #[test]
    fn reports_the_worst_element() {
        let w = worst(
            &[1.0f64, 2.5, 3.1],
            &[1.0f64, 2.0, 3.0],
            Tol::new(0.0, 0.01),
        )
        .unwrap();
        assert_eq!(w.index, 1);
        assert!((w.error - 0.5).abs() < 1e-12);
        let r = std::panic::catch_unwind(|| {
            assert_close(&[1.0f64, 2.5], &[1.0f64, 2.0], Tol::new(0.0, 0.1));
        });
        assert!(r.is_err());
    }

    #[test]
    fn nan_fails_against_a_number() {
        let r =
            std::panic::catch_unwind(|| assert_close(&[f64::NAN], &[1.0f64], Tol::new(1.0, 1.0)));
        assert!(r.is_err());
        assert_close(&[f64::INFINITY], &[f64::INFINITY], Tol::EXACT);
    }
}
