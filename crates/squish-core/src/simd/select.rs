//! Threshold kernels behind `ops::top_k_into`'s selection: the finite range of a slice, how many
//! values reach a threshold, and the positions that do. Part of the `simd` module (the one
//! place `unsafe` is allowed). Every comparison is the same IEEE comparison on both paths, so
//! the twins agree exactly.

use super::{Isa, isa};

/// `(min, max)` of `x`, or `None` if `x` is empty or holds a NaN or an infinity, dispatched
/// (the search of [`top_k_threshold`] calls the kernels directly; this is for the tests).
#[cfg(test)]
pub(crate) fn finite_range(x: &[f32]) -> Option<(f32, f32)> {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected on this CPU.
        Isa::Avx2Fma => unsafe { x86::finite_range_avx2(x) },
        Isa::Scalar => finite_range_scalar(x),
    }
}

/// Portable twin of [`finite_range`].
pub(crate) fn finite_range_scalar(x: &[f32]) -> Option<(f32, f32)> {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    let mut finite = true;
    for &v in x {
        finite &= v.is_finite();
        lo = if v < lo { v } else { lo };
        hi = if v > hi { v } else { hi };
    }
    (finite && !x.is_empty()).then_some((lo, hi))
}

/// A threshold `t` with `count(x >= t) >= k`, as tight as a bisection of the finite range of
/// `x` gets it: it stops once at most `k + k/8` values pass, or when the interval can no longer
/// shrink (ties). `None` when `x` holds a NaN or an infinity. Dispatched once for the whole
/// search. `1 <= k <= x.len()`.
pub(crate) fn top_k_threshold(x: &[f32], k: usize) -> Option<f32> {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected on this CPU.
        Isa::Avx2Fma => unsafe { x86::top_k_threshold_avx2(x, k) },
        Isa::Scalar => bisect::<false>(x, k),
    }
}

/// The bisection of [`top_k_threshold`], on the AVX2 kernels when `AVX` (only instantiated so
/// from `x86::top_k_threshold_avx2`, which has the features) or on the twins. Both paths make
/// the same comparisons, so they return the same threshold.
#[inline(always)]
fn bisect<const AVX: bool>(x: &[f32], k: usize) -> Option<f32> {
    let range = |x: &[f32]| {
        #[cfg(target_arch = "x86_64")]
        if AVX {
            // SAFETY: `AVX` is only set by the caller compiled with AVX2 + FMA (see above).
            return unsafe { x86::finite_range_avx2(x) };
        }
        finite_range_scalar(x)
    };
    let count = |x: &[f32], t: f32| {
        #[cfg(target_arch = "x86_64")]
        if AVX {
            // SAFETY: as above.
            return unsafe { x86::count_ge_avx2(x, t) };
        }
        count_ge_scalar(x, t)
    };
    let (mut lo, mut hi) = range(x)?;
    // Invariant: count(x >= lo) >= k (at the start lo is the minimum: every value passes).
    let slack = k / 8;
    for _ in 0..64 {
        // Halves of finite values never overflow, unlike `hi - lo`.
        let mid = 0.5 * lo + 0.5 * hi;
        if !(mid > lo && mid < hi) {
            break;
        }
        let c = count(x, mid);
        if c < k {
            hi = mid;
        } else {
            lo = mid;
            if c <= k + slack {
                break;
            }
        }
    }
    Some(lo)
}

/// The number of elements of `x` with `x[i] >= t` (IEEE comparison: NaN never counts),
/// dispatched (tests only, as [`finite_range`]).
#[cfg(test)]
pub(crate) fn count_ge(x: &[f32], t: f32) -> usize {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected on this CPU.
        Isa::Avx2Fma => unsafe { x86::count_ge_avx2(x, t) },
        Isa::Scalar => count_ge_scalar(x, t),
    }
}

/// Portable twin of [`count_ge`].
pub(crate) fn count_ge_scalar(x: &[f32], t: f32) -> usize {
    x.iter().map(|&v| usize::from(v >= t)).sum()
}

/// Appends to `out`, in ascending order, every position `i` with `x[i] >= t`, dispatched.
pub(crate) fn positions_ge(x: &[f32], t: f32, out: &mut Vec<usize>) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected on this CPU.
        Isa::Avx2Fma => unsafe { x86::positions_ge_avx2(x, t, out) },
        Isa::Scalar => positions_ge_scalar(x, t, out),
    }
}

/// Portable twin of [`positions_ge`].
pub(crate) fn positions_ge_scalar(x: &[f32], t: f32, out: &mut Vec<usize>) {
    out.extend(
        x.iter()
            .enumerate()
            .filter(|&(_, &v)| v >= t)
            .map(|(i, _)| i),
    );
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        _CMP_GE_OQ, _CMP_UNORD_Q, _mm_add_epi32, _mm_cvtsi128_si32, _mm_hadd_epi32,
        _mm256_add_epi32, _mm256_castps_si256, _mm256_castsi256_si128, _mm256_cmp_ps,
        _mm256_extracti128_si256, _mm256_loadu_ps, _mm256_max_ps, _mm256_min_ps,
        _mm256_movemask_ps, _mm256_or_ps, _mm256_set1_ps, _mm256_setzero_ps, _mm256_setzero_si256,
        _mm256_storeu_ps, _mm256_sub_epi32,
    };

    /// AVX2 [`finite_range`](super::finite_range): lane minima / maxima (`min(v, lo)` keeps
    /// `lo` on NaN, so NaN is tracked separately by an unordered compare) over blocks of 8,
    /// the tail by the twin.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) fn finite_range_avx2(x: &[f32]) -> Option<(f32, f32)> {
        let (blocks, tail) = x.as_chunks::<8>();
        let mut lo = _mm256_set1_ps(f32::INFINITY);
        let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut nan = _mm256_setzero_ps();
        for b in blocks {
            // SAFETY: `b` is exactly 8 floats long; `loadu` is unaligned.
            let v = unsafe { _mm256_loadu_ps(b.as_ptr()) };
            lo = _mm256_min_ps(v, lo);
            hi = _mm256_max_ps(v, hi);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        }
        let (mut l, mut h, mut n) = ([0.0f32; 8], [0.0f32; 8], [0.0f32; 8]);
        // SAFETY: each array holds 8 floats; `storeu` is unaligned.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), lo);
            _mm256_storeu_ps(h.as_mut_ptr(), hi);
            _mm256_storeu_ps(n.as_mut_ptr(), nan);
        }
        if n.iter().any(|v| v.to_bits() != 0) {
            return None;
        }
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for (&a, &b) in l.iter().zip(&h) {
            lo = if a < lo { a } else { lo };
            hi = if b > hi { b } else { hi };
        }
        if !tail.is_empty() {
            let (tl, th) = super::finite_range_scalar(tail)?;
            lo = if tl < lo { tl } else { lo };
            hi = if th > hi { th } else { hi };
        }
        (lo.is_finite() && hi.is_finite()).then_some((lo, hi))
    }

    /// AVX2 [`top_k_threshold`](super::top_k_threshold): the bisection with the range and
    /// count kernels inlined.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn top_k_threshold_avx2(x: &[f32], k: usize) -> Option<f32> {
        super::bisect::<true>(x, k)
    }

    /// AVX2 [`count_ge`](super::count_ge): an ordered `>=` compare per lane, its all-ones mask
    /// subtracted from 32-bit lane counters (exact below 2³¹ values per call; `ops::top_k_into`
    /// uses it only where indices fit in 32 bits).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn count_ge_avx2(x: &[f32], t: f32) -> usize {
        let (blocks, tail) = x.as_chunks::<8>();
        let vt = _mm256_set1_ps(t);
        let mut acc = [_mm256_setzero_si256(); 2];
        let (pairs, last) = blocks.as_chunks::<2>();
        for p in pairs {
            for (a, b) in acc.iter_mut().zip(p) {
                // SAFETY: `b` is exactly 8 floats long; `loadu` is unaligned.
                let v = unsafe { _mm256_loadu_ps(b.as_ptr()) };
                let m = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(v, vt));
                *a = _mm256_sub_epi32(*a, m);
            }
        }
        for b in last {
            // SAFETY: as above.
            let v = unsafe { _mm256_loadu_ps(b.as_ptr()) };
            let m = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(v, vt));
            acc[0] = _mm256_sub_epi32(acc[0], m);
        }
        // Eight lane counts, then four, two, one (each at most the slice length, so the 32-bit
        // sums cannot overflow for slices below 2³¹ values).
        let a = _mm256_add_epi32(acc[0], acc[1]);
        let a = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
        let a = _mm_hadd_epi32(a, a);
        let a = _mm_hadd_epi32(a, a);
        _mm_cvtsi128_si32(a) as u32 as usize + super::count_ge_scalar(tail, t)
    }

    /// AVX2 [`positions_ge`](super::positions_ge): a compare and a movemask per 8 values,
    /// then the set bits in ascending order.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn positions_ge_avx2(x: &[f32], t: f32, out: &mut Vec<usize>) {
        let (blocks, tail) = x.as_chunks::<8>();
        let vt = _mm256_set1_ps(t);
        for (c, b) in blocks.iter().enumerate() {
            // SAFETY: `b` is exactly 8 floats long; `loadu` is unaligned.
            let v = unsafe { _mm256_loadu_ps(b.as_ptr()) };
            let mut m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, vt)) as u32;
            while m != 0 {
                out.push(8 * c + m.trailing_zeros() as usize);
                m &= m - 1;
            }
        }
        let base = blocks.len() * 8;
        out.extend(
            tail.iter()
                .enumerate()
                .filter(|&(_, &v)| v >= t)
                .map(|(i, _)| base + i),
        );
    }
}

#[cfg(test)]
mod tests {
    use rand::RngExt;

    use super::*;

    #[test]
    fn select_twins_agree_with_naive_scans() {
        squish_testkit::prop::check("simd_select_twins", 200, |rng| {
            let n = rng.random_range(0..300);
            let levels = rng.random_range(1..8);
            let mut x: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.random_bool(0.5) {
                        rng.random_range(0..levels) as f32 - 3.0
                    } else {
                        rng.random_range(-5.0f32..5.0)
                    }
                })
                .collect();
            for _ in 0..rng.random_range(0..3) {
                if n > 0 {
                    let at = rng.random_range(0..n);
                    x[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.0, 0.0]
                        [rng.random_range(0..5)];
                }
            }
            let finite = !x.is_empty() && x.iter().all(|v| v.is_finite());
            let want_range = finite.then(|| {
                let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                (lo, hi)
            });
            assert_eq!(finite_range_scalar(&x), want_range, "scalar n={n}");
            assert_eq!(finite_range(&x), want_range, "dispatched n={n}");
            let t = [-0.0, 0.0, 1.0, -3.0, rng.random_range(-5.0f32..5.0)][rng.random_range(0..5)];
            let want: Vec<usize> = (0..n).filter(|&i| x[i] >= t).collect();
            assert_eq!(count_ge_scalar(&x, t), want.len());
            assert_eq!(count_ge(&x, t), want.len(), "n={n} t={t}");
            let mut got = vec![7];
            positions_ge_scalar(&x, t, &mut got);
            assert_eq!(got[1..], want[..]);
            let mut got = vec![7];
            positions_ge(&x, t, &mut got);
            assert_eq!(got[0], 7, "appends");
            assert_eq!(got[1..], want[..], "n={n} t={t}");
        });
    }
}
