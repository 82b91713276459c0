//! Categorical sampling and the speculative-decoding residual distribution.
//!
//! - [`sample_categorical`] / [`sample_categorical_f64`] draw an index from (possibly
//!   unnormalised) non-negative weights by inverse CDF in `f64`, with the caller's RNG.
//! - [`residual_into`] builds `norm(max(0, p - q))`, the distribution a speculative decoder
//!   samples from when it rejects a draft token, and returns the residual mass, which is the
//!   total-variation distance `TV(p, q)` when `p` and `q` are normalised (so `1 - mass` is the
//!   acceptance probability of the draft).
//!
//! Unlike the [`ops`](crate::ops) kernels these functions validate their values (sampling from
//! a malformed distribution must not silently return a biased index) and report
//! [`Error::InvalidDistribution`]; mismatched lengths are programming errors and panic.

use rand::{Rng, RngExt};

use crate::error::{Error, Result};

/// Draws an index `i` with probability `probs[i] / Σ probs` (inverse CDF, in `f64`).
///
/// The weights need not be normalised: a uniform `u ∈ [0, total)` is drawn and the first index
/// whose cumulative weight exceeds `u` is returned. Zero-weight entries are never returned, even
/// when `u` falls exactly on a boundary; if rounding carries `u` past the last cumulative sum,
/// the last index with positive weight is returned. One `f64` is drawn from `rng` per call, and
/// none when the input is rejected.
///
/// # Errors
/// [`Error::InvalidDistribution`] if `probs` is empty, holds a negative, NaN or infinite entry,
/// or sums to zero.
///
/// # Performance
/// Two passes over `probs` (validate-and-sum, then scan), no allocation. For many draws from the
/// same distribution, build a cumulative table once instead.
///
/// # Example
/// ```
/// use rand::{SeedableRng, rngs::StdRng};
/// use squish_core::sampling::sample_categorical;
/// let mut rng = StdRng::seed_from_u64(7);
/// let i = sample_categorical(&[0.0, 3.0, 1.0, 0.0], &mut rng).unwrap();
/// assert!(i == 1 || i == 2);
/// assert!(sample_categorical(&[0.0, 0.0], &mut rng).is_err());
/// ```
pub fn sample_categorical<R: Rng + ?Sized>(probs: &[f32], rng: &mut R) -> Result<usize> {
    const CTX: &str = "sample_categorical probs";
    let total = validated_total(CTX, probs.iter().map(|&p| f64::from(p)))?;
    let u = rng.random::<f64>() * total;
    Ok(inverse_cdf(probs.iter().map(|&p| f64::from(p)), u))
}

/// [`sample_categorical`] for `f64` weights.
///
/// # Errors
/// [`Error::InvalidDistribution`] if `probs` is empty, holds a negative, NaN or infinite entry,
/// or its sum is zero or overflows to infinity.
///
/// # Example
/// ```
/// use rand::{SeedableRng, rngs::StdRng};
/// use squish_core::sampling::sample_categorical_f64;
/// let mut rng = StdRng::seed_from_u64(7);
/// assert_eq!(sample_categorical_f64(&[0.0, 0.0, 2.5], &mut rng).unwrap(), 2);
/// ```
pub fn sample_categorical_f64<R: Rng + ?Sized>(probs: &[f64], rng: &mut R) -> Result<usize> {
    const CTX: &str = "sample_categorical_f64 probs";
    let total = validated_total(CTX, probs.iter().copied())?;
    let u = rng.random::<f64>() * total;
    Ok(inverse_cdf(probs.iter().copied(), u))
}

fn invalid(context: &'static str, reason: String) -> Error {
    Error::InvalidDistribution { context, reason }
}

/// Checks every weight is finite and `>= 0` and returns the (positive, finite) sum.
fn validated_total(context: &'static str, probs: impl Iterator<Item = f64>) -> Result<f64> {
    let mut total = 0.0f64;
    let mut n = 0usize;
    for (i, p) in probs.enumerate() {
        if !p.is_finite() {
            return Err(invalid(context, format!("element {i} is {p}")));
        }
        if p < 0.0 {
            return Err(invalid(context, format!("element {i} is negative ({p})")));
        }
        total += p;
        n += 1;
    }
    if n == 0 {
        return Err(invalid(context, "is empty".into()));
    }
    if !total.is_finite() {
        return Err(invalid(context, format!("sum is {total}")));
    }
    if total <= 0.0 {
        return Err(invalid(context, "sum is 0".into()));
    }
    Ok(total)
}

/// The first index with positive weight whose cumulative weight exceeds `u`, or the last index
/// with positive weight. The weights have been validated (finite, `>= 0`, positive sum).
/// Shared with k-means++ seeding.
pub(crate) fn inverse_cdf(probs: impl Iterator<Item = f64>, u: f64) -> usize {
    let mut cum = 0.0f64;
    let mut last_positive = 0;
    for (i, p) in probs.enumerate() {
        if p > 0.0 {
            cum += p;
            last_positive = i;
            if u < cum {
                return i;
            }
        }
    }
    last_positive
}

/// Writes the speculative-decoding residual distribution `norm(max(0, p - q))` into `out` and
/// returns the residual mass `Σ max(0, pᵢ - qᵢ)` (computed in `f64`, before normalisation).
///
/// When `p` and `q` are normalised the mass equals the total-variation distance
/// `TV(p, q) = ½ Σ |pᵢ - qᵢ|`, and `1 - mass` is the probability that a draft token drawn from
/// `q` is accepted against target `p`. Differences and the normalisation are done in `f64`, then
/// rounded once to `f32`.
///
/// # Errors
/// [`Error::InvalidDistribution`] if `p` or `q` holds a negative, NaN or infinite entry or sums
/// to zero (this includes empty inputs), or if the residual mass is zero (`p <= q`
/// everywhere, e.g. `p == q`: there is nothing to resample, every draft is accepted). `out` is
/// left unspecified on error.
///
/// # Panics
/// If `p`, `q` and `out` do not all have the same length.
///
/// # Example
/// ```
/// use squish_core::sampling::residual_into;
/// let p = [0.5, 0.3, 0.2];
/// let q = [0.2, 0.5, 0.3];
/// let mut r = [0.0; 3];
/// let mass = residual_into(&p, &q, &mut r).unwrap();
/// assert!((mass - 0.3).abs() < 1e-7);
/// assert_eq!(r, [1.0, 0.0, 0.0]);
/// assert!(residual_into(&p, &p, &mut r).is_err());
/// ```
pub fn residual_into(p: &[f32], q: &[f32], out: &mut [f32]) -> Result<f64> {
    assert!(
        p.len() == q.len() && q.len() == out.len(),
        "residual_into: lengths differ (p {}, q {}, out {})",
        p.len(),
        q.len(),
        out.len()
    );
    validated_total("residual_into p", p.iter().map(|&v| f64::from(v)))?;
    validated_total("residual_into q", q.iter().map(|&v| f64::from(v)))?;
    let diff = |a: f32, b: f32| (f64::from(a) - f64::from(b)).max(0.0);
    let mass: f64 = p.iter().zip(q).map(|(&a, &b)| diff(a, b)).sum();
    if mass <= 0.0 {
        return Err(invalid(
            "residual_into",
            "residual mass is 0 (p <= q everywhere)".into(),
        ));
    }
    for ((o, &a), &b) in out.iter_mut().zip(p).zip(q) {
        *o = (diff(a, b) / mass) as f32;
    }
    Ok(mass)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RNG that always returns the same word: `u64::MAX` makes `random::<f64>()` the largest
    /// value below 1, which exercises the "rounding ran past the end" fallback.
    struct Constant(u64);
    impl rand::TryRng for Constant {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(self.0 as u32)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(self.0)
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            dst.fill(self.0 as u8);
            Ok(())
        }
    }

    #[test]
    fn extremes_of_u_skip_zero_weights() {
        let w = [0.0f32, 0.25, 0.0, 0.75, 0.0, 0.0];
        assert_eq!(sample_categorical(&w, &mut Constant(0)).unwrap(), 1);
        assert_eq!(sample_categorical(&w, &mut Constant(u64::MAX)).unwrap(), 3);
        let w64 = [0.0, 1e-300, 0.0];
        assert_eq!(sample_categorical_f64(&w64, &mut Constant(0)).unwrap(), 1);
        assert_eq!(
            sample_categorical_f64(&w64, &mut Constant(u64::MAX)).unwrap(),
            1
        );
    }

    #[test]
    fn inverse_cdf_falls_back_to_last_positive() {
        // u at (or past) the total: the last positive index, never a trailing zero.
        assert_eq!(inverse_cdf([0.5, 0.5, 0.0].into_iter(), 1.0), 1);
        assert_eq!(inverse_cdf([0.0, 0.3, 0.0].into_iter(), 0.3), 1);
        // u exactly on an internal boundary moves on to the next positive entry.
        assert_eq!(inverse_cdf([0.5, 0.0, 0.5].into_iter(), 0.5), 2);
    }
}
