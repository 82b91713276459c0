//! Row passes of lazy softmax: what a speculative verifier needs from a row of logits without
//! materialising its normalised distribution.
//!
//! - [`max_below_inf`]: the row's maximum fused with its validation (no NaN, no `+inf`), one
//!   pass instead of two.
//! - [`exp_weights_into`]: `exp((xᵢ - m) · inv_t)` written out, exactly the `f32` values of
//!   [`exp_shifted_into`](super::exp_shifted_into) (the unnormalised softmax), with their sum
//!   accumulated in `f64` so that it is the sum of the stored values to within `f64` rounding
//!   (`~n · 2⁻⁵³` relative) instead of `f32` rounding.
//! - [`exp_bound_sum`]: `Σ 2^sᵢ` with `sᵢ = (xᵢ - m) · inv_t · log₂e`, each power of two
//!   replaced by its linear interpolation between integer exponents, read straight from the
//!   bits of `(sᵢ + 127) · 2²³` (Schraudolph, "A Fast, Compact Approximation of the Exponential
//!   Function", Neural Computation 1999): no polynomial, about a third of the work of the
//!   exponentials. The interpolation lies above the exponential by a factor in
//!   `[1, 1.0615]`, which makes the sum a cheap two-sided bound on the softmax normaliser
//!   (see [`ops::softmax_total_bounds`](crate::ops::softmax_total_bounds)).
//! - [`exp_bound_scan`]: the inverse-CDF scan over the same terms (blocks of 32 summed in
//!   `f64`), the proposal step of
//!   [`sampling::propose_softmax`](crate::sampling::propose_softmax).
//!
//! # Agreement with the scalar twins
//! - [`max_below_inf`]: same comparisons lane by lane: the maximum is exact on both paths (for
//!   valid input; `-0.0` and `0.0` compare equal, so either may be returned), the flag is the
//!   same.
//! - [`exp_weights_into`]: each path stores bit for bit what its
//!   [`exp_shifted_into`](super::exp_shifted_into) stores (the AVX2 path calls the same
//!   `x86::exp8` of `simd.rs`; a test pins the two together bit for bit), and sums them in `f64` in the same order (lane `l`
//!   accumulates elements `l, l + 8, …`, then the lanes pairwise), so the sum is bit-identical
//!   to the twin's sum of the same values.
//! - [`exp_bound_sum`], [`exp_bound_scan`]: the same `f32` operations lane by lane (one fused
//!   multiply-add, clamp, truncate, reinterpret; the twin's [`f32::mul_add`] is correctly
//!   rounded like the AVX2 instruction, though it is a libm call on x86 without FMA) and the same
//!   summation order (32 lane sums then a fixed tree; blocks of 32 for the scan), so the twins
//!   are **bit-identical**.

use super::{Isa, isa};

/// `(max, ok)`: the largest element (`-inf` for an empty slice) and whether every element is
/// below `+inf` (false if any is NaN or `+inf`; `max` is then unspecified).
pub(crate) fn max_below_inf(x: &[f32]) -> (f32, bool) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::max_below_inf_avx2(x) },
        Isa::Scalar => max_below_inf_scalar(x),
    }
}

/// Scalar twin of [`max_below_inf`]: eight lane maxima with plain `>` and an `&`-accumulated
/// `< inf` test, so it vectorises.
pub(crate) fn max_below_inf_scalar(x: &[f32]) -> (f32, bool) {
    const LANES: usize = 8;
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut ok = [true; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            ok[l] &= c[l] < f32::INFINITY;
            if c[l] > acc[l] {
                acc[l] = c[l];
            }
        }
    }
    for (l, &v) in rem.iter().enumerate() {
        ok[l] &= v < f32::INFINITY;
        if v > acc[l] {
            acc[l] = v;
        }
    }
    let mut m = acc[0];
    for &v in &acc[1..] {
        if v > m {
            m = v;
        }
    }
    (m, ok.iter().all(|&o| o))
}

/// Writes `exp((xᵢ - m) · inv_t)` into `out` (the values
/// [`exp_shifted_into`](super::exp_shifted_into) writes) and returns their sum in `f64`.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn exp_weights_into(x: &[f32], m: f32, inv_t: f32, out: &mut [f32]) -> f64 {
    assert_eq!(x.len(), out.len(), "exp_weights_into: length mismatch");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::exp_weights_into_avx2(x, m, inv_t, out) },
        Isa::Scalar => exp_weights_into_scalar(x, m, inv_t, out),
    }
}

/// Scalar twin of [`exp_weights_into`] ([`f32::exp`], as
/// [`exp_shifted_into_scalar`](super::exp_shifted_into_scalar)).
pub(crate) fn exp_weights_into_scalar(x: &[f32], m: f32, inv_t: f32, out: &mut [f32]) -> f64 {
    assert_eq!(x.len(), out.len(), "exp_weights_into: length mismatch");
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v - m) * inv_t).exp();
    }
    lane_sum_f64(out)
}

/// `Σ xᵢ` in `f64`: lane `l` sums elements `l, l + 8, …` in order, then the lanes are added
/// pairwise (the order of the AVX2 kernel).
pub(crate) fn lane_sum_f64(x: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f64::from(c[l]);
        }
    }
    for (l, &v) in rem.iter().enumerate() {
        acc[l] += f64::from(v);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `127 · 2²³`: the biased exponent of 1.0 in the bits of an `f32`.
pub(crate) const BOUND_BIAS: f32 = 1_065_353_216.0;
/// `2²³`: the smallest clamped value of `y`, the bits of `2⁻¹²⁶` (no subnormals, no negative
/// bit patterns; `-inf` lands here).
pub(crate) const BOUND_FLOOR: f32 = 8_388_608.0;

/// `Σᵢ Aᵢ` in `f32` (32 lane sums, then a fixed tree), where `Aᵢ` is the `f32` whose bits are
/// the integer part of `max(fma(xᵢ, c1, 127·2²³ - m·c1), 2²³)` (the offset rounded once to
/// `f32`, [`bound_offset`]; it stands for `(xᵢ - m) · c1 + 127·2²³`): with `c1 = inv_t · 2²³ · log₂e`,
/// the linear interpolation of `2^(sᵢ)` between integer exponents, `sᵢ = (xᵢ - m) · inv_t ·
/// log₂e`, floored at `2⁻¹²⁶`. Requires `xᵢ <= m` or `-inf` (no NaN) and a finite `c1 > 0`.
pub(crate) fn exp_bound_sum(x: &[f32], m: f32, c1: f32) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::exp_bound_sum_avx2(x, m, c1) },
        Isa::Scalar => exp_bound_sum_scalar(x, m, c1),
    }
}

/// `127·2²³ - m · c1`, rounded once to `f32`: the offset of the fused multiply-add
/// `y = v · c1 + offset` that stands for `(v - m) · c1 + 127·2²³`.
pub(crate) fn bound_offset(m: f32, c1: f32) -> f32 {
    (f64::from(BOUND_BIAS) - f64::from(m) * f64::from(c1)) as f32
}

/// One term of [`exp_bound_sum`].
fn bound_term(v: f32, m: f32, c1: f32) -> f32 {
    let y = v.mul_add(c1, bound_offset(m, c1));
    let y = if y > BOUND_FLOOR { y } else { BOUND_FLOOR };
    // `y` is in [2²³, 2³⁰]: the truncating conversion is exact in range, the bits positive.
    f32::from_bits(y as i32 as u32)
}

/// Scalar twin of [`exp_bound_sum`], bit-identical to it.
pub(crate) fn exp_bound_sum_scalar(x: &[f32], m: f32, c1: f32) -> f32 {
    let mut acc = [0.0f32; 32];
    let c32 = x.chunks_exact(32);
    let rest = c32.remainder();
    for c in c32 {
        for l in 0..32 {
            acc[l] += bound_term(c[l], m, c1);
        }
    }
    let c8 = rest.chunks_exact(8);
    let tail = c8.remainder();
    for c in c8 {
        for l in 0..8 {
            acc[l] += bound_term(c[l], m, c1);
        }
    }
    for (l, &v) in tail.iter().enumerate() {
        acc[l] += bound_term(v, m, c1);
    }
    let mut s = [0.0f32; 8];
    for (j, sj) in s.iter_mut().enumerate() {
        *sj = (acc[j] + acc[j + 8]) + (acc[j + 16] + acc[j + 24]);
    }
    let t = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// The inverse-CDF scan over the terms `Aᵢ` of [`exp_bound_sum`]: the first index whose
/// cumulative sum exceeds `target`, or `None` if the total does not. The sum runs in `f64`
/// over blocks of 32 (each block summed in the fixed order of [`block_sum`], added to the
/// running sum; a block the running sum crosses is then walked term by term, and if rounding
/// carries `target` past it, its last index is returned). Every term is positive, so index
/// `i` is returned for `target` in an interval of length `Aᵢ` (up to `f64` rounding).
pub(crate) fn exp_bound_scan(x: &[f32], m: f32, c1: f32, target: f64) -> Option<usize> {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::exp_bound_scan_avx2(x, m, c1, target) },
        Isa::Scalar => exp_bound_scan_scalar(x, m, c1, target),
    }
}

/// One term of [`exp_bound_sum`] (the `f32` operations of every lane).
pub(crate) fn exp_bound_term(v: f32, m: f32, c1: f32) -> f32 {
    bound_term(v, m, c1)
}

/// The sum of a block of 32 terms (zero-padded) in the order of the AVX2 kernel: lanes
/// `vⱼ = ((t[j] + t[j+4]) + (t[j+8] + t[j+12])) + ((t[j+16] + t[j+20]) + (t[j+24] + t[j+28]))`
/// for `j < 4`, then `(v0 + v2) + (v1 + v3)`.
fn block_sum(t: &[f64; 32]) -> f64 {
    let mut v = [0.0f64; 4];
    for (j, vj) in v.iter_mut().enumerate() {
        *vj = ((t[j] + t[j + 4]) + (t[j + 8] + t[j + 12]))
            + ((t[j + 16] + t[j + 20]) + (t[j + 24] + t[j + 28]));
    }
    (v[0] + v[2]) + (v[1] + v[3])
}

/// The terms of a block of at most 32 values, zero-padded.
fn block_terms(block: &[f32], m: f32, c1: f32) -> [f64; 32] {
    let mut t = [0.0f64; 32];
    for (tj, &v) in t.iter_mut().zip(block) {
        *tj = f64::from(bound_term(v, m, c1));
    }
    t
}

/// Walks one block (at most 32 terms) whose sum carries the running sum `cum` past `target`.
fn walk_block(block: &[f32], base: usize, m: f32, c1: f32, cum: f64, target: f64) -> usize {
    let mut inner = cum;
    for (j, &v) in block.iter().enumerate() {
        inner += f64::from(bound_term(v, m, c1));
        if target < inner {
            return base + j;
        }
    }
    base + block.len() - 1
}

/// Scalar twin of [`exp_bound_scan`], bit-identical to it.
pub(crate) fn exp_bound_scan_scalar(x: &[f32], m: f32, c1: f32, target: f64) -> Option<usize> {
    let mut cum = 0.0f64;
    for (bi, block) in x.chunks(32).enumerate() {
        let next = cum + block_sum(&block_terms(block, m, c1));
        if target < next {
            return Some(walk_block(block, bi * 32, m, c1, cum, target));
        }
        cum = next;
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m256d, _CMP_LT_OQ, _mm_add_pd, _mm_cvtsd_f64, _mm_max_ps, _mm_movehl_ps,
        _mm_shuffle_ps, _mm_unpackhi_pd, _mm256_add_pd, _mm256_add_ps, _mm256_and_ps,
        _mm256_castpd256_pd128, _mm256_castps256_ps128, _mm256_castsi256_ps, _mm256_cmp_ps,
        _mm256_cvtps_pd, _mm256_extractf128_pd, _mm256_extractf128_ps, _mm256_fmadd_ps,
        _mm256_loadu_ps, _mm256_max_ps, _mm256_movemask_ps, _mm256_mul_ps, _mm256_set1_ps,
        _mm256_setzero_pd, _mm256_storeu_ps, _mm256_sub_ps,
    };

    /// Largest lane of `v` (no NaN expected).
    #[target_feature(enable = "avx2,fma")]
    fn hmax(v: __m256) -> f32 {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ps(m, _mm_shuffle_ps::<0b01>(m, m));
        std::arch::x86_64::_mm_cvtss_f32(m)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn max_below_inf_avx2(x: &[f32]) -> (f32, bool) {
        let inf = _mm256_set1_ps(f32::INFINITY);
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let (mut m0, mut m1, mut m2, mut m3) = (ninf, ninf, ninf, ninf);
        // All-ones lanes while every element seen is `< inf` (false for NaN and +inf).
        let all = _mm256_cmp_ps::<_CMP_LT_OQ>(ninf, inf);
        let (mut ok0, mut ok1) = (all, all);
        let c32 = x.chunks_exact(32);
        let rest = c32.remainder();
        for c in c32 {
            // SAFETY: `c` is exactly 32 floats long; unaligned loads.
            let (a, b, d, e) = unsafe {
                (
                    _mm256_loadu_ps(c.as_ptr()),
                    _mm256_loadu_ps(c.as_ptr().add(8)),
                    _mm256_loadu_ps(c.as_ptr().add(16)),
                    _mm256_loadu_ps(c.as_ptr().add(24)),
                )
            };
            ok0 = _mm256_and_ps(ok0, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf));
            ok1 = _mm256_and_ps(ok1, _mm256_cmp_ps::<_CMP_LT_OQ>(b, inf));
            ok0 = _mm256_and_ps(ok0, _mm256_cmp_ps::<_CMP_LT_OQ>(d, inf));
            ok1 = _mm256_and_ps(ok1, _mm256_cmp_ps::<_CMP_LT_OQ>(e, inf));
            m0 = _mm256_max_ps(m0, a);
            m1 = _mm256_max_ps(m1, b);
            m2 = _mm256_max_ps(m2, d);
            m3 = _mm256_max_ps(m3, e);
        }
        let c8 = rest.chunks_exact(8);
        let tail = c8.remainder();
        for c in c8 {
            // SAFETY: `c` is exactly 8 floats long; unaligned load.
            let a = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            ok0 = _mm256_and_ps(ok0, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf));
            m0 = _mm256_max_ps(m0, a);
        }
        if !tail.is_empty() {
            // `-inf` padding: valid, and never above the maximum.
            let mut buf = [f32::NEG_INFINITY; 8];
            buf[..tail.len()].copy_from_slice(tail);
            // SAFETY: `buf` is an 8-float array; unaligned load.
            let a = unsafe { _mm256_loadu_ps(buf.as_ptr()) };
            ok0 = _mm256_and_ps(ok0, _mm256_cmp_ps::<_CMP_LT_OQ>(a, inf));
            m0 = _mm256_max_ps(m0, a);
        }
        let m = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
        let ok = _mm256_movemask_ps(_mm256_and_ps(ok0, ok1)) == 0xff;
        (hmax(m), ok)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_bound_sum_avx2(x: &[f32], m: f32, c1: f32) -> f32 {
        use std::arch::x86_64::{
            _mm256_cmpgt_epi32, _mm256_cvttps_epi32, _mm256_set1_epi32 as set1_i,
            _mm256_setr_epi32, _mm256_setzero_ps,
        };
        let (vb, vc1) = (
            _mm256_set1_ps(super::bound_offset(m, c1)),
            _mm256_set1_ps(c1),
        );
        let floor = _mm256_set1_ps(super::BOUND_FLOOR);
        let mut acc = [_mm256_setzero_ps(); 4];
        let c32 = x.chunks_exact(32);
        let rest = c32.remainder();
        for c in c32 {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` is exactly 32 floats long and `8 * k + 8 <= 32`; unaligned load.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * k)) };
                let y = _mm256_fmadd_ps(v, vc1, vb);
                let t = _mm256_castsi256_ps(_mm256_cvttps_epi32(_mm256_max_ps(y, floor)));
                *a = _mm256_add_ps(*a, t);
            }
        }
        let c8 = rest.chunks_exact(8);
        let tail = c8.remainder();
        for c in c8 {
            // SAFETY: `c` is exactly 8 floats long; unaligned load.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            let y = _mm256_fmadd_ps(v, vc1, vb);
            let t = _mm256_castsi256_ps(_mm256_cvttps_epi32(_mm256_max_ps(y, floor)));
            acc[0] = _mm256_add_ps(acc[0], t);
        }
        if !tail.is_empty() {
            let mut buf = [0.0f32; 8];
            buf[..tail.len()].copy_from_slice(tail);
            // SAFETY: `buf` is an 8-float array; unaligned load.
            let v = unsafe { _mm256_loadu_ps(buf.as_ptr()) };
            let y = _mm256_fmadd_ps(v, vc1, vb);
            let t = _mm256_castsi256_ps(_mm256_cvttps_epi32(_mm256_max_ps(y, floor)));
            // Lanes at or past the tail's length add exactly 0.
            let keep = _mm256_cmpgt_epi32(
                set1_i(tail.len() as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            acc[0] = _mm256_add_ps(acc[0], _mm256_and_ps(t, _mm256_castsi256_ps(keep)));
        }
        // s = (acc0 + acc1) + (acc2 + acc3); t_j = s_j + s_{j+4}; (t0 + t2) + (t1 + t3).
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let t =
            std::arch::x86_64::_mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let u = std::arch::x86_64::_mm_add_ps(t, _mm_movehl_ps(t, t));
        let r = std::arch::x86_64::_mm_add_ss(u, _mm_shuffle_ps::<0b01>(u, u));
        std::arch::x86_64::_mm_cvtss_f32(r)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_bound_scan_avx2(x: &[f32], m: f32, c1: f32, target: f64) -> Option<usize> {
        use std::arch::x86_64::{_mm_add_pd, _mm256_cvttps_epi32};
        let (vb, vc1) = (
            _mm256_set1_ps(super::bound_offset(m, c1)),
            _mm256_set1_ps(c1),
        );
        let floor = _mm256_set1_ps(super::BOUND_FLOOR);
        let mut cum = 0.0f64;
        let c32 = x.chunks_exact(32);
        let tail = c32.remainder();
        for (bi, c) in c32.enumerate() {
            // (lo_k + hi_k) per 8 terms k, lanes j < 4: t[8k + j] + t[8k + j + 4].
            let mut pair = [_mm256_setzero_pd(); 4];
            for (k, pk) in pair.iter_mut().enumerate() {
                // SAFETY: `c` is exactly 32 floats long and `8 * k + 8 <= 32`; unaligned load.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * k)) };
                let y = _mm256_fmadd_ps(v, vc1, vb);
                let a = _mm256_castsi256_ps(_mm256_cvttps_epi32(_mm256_max_ps(y, floor)));
                *pk = _mm256_add_pd(
                    _mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                    _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(a)),
                );
            }
            let v = _mm256_add_pd(
                _mm256_add_pd(pair[0], pair[1]),
                _mm256_add_pd(pair[2], pair[3]),
            );
            // [v0 + v2, v1 + v3], then their sum.
            let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
            let bs = _mm_cvtsd_f64(_mm_add_pd(s, _mm_unpackhi_pd(s, s)));
            let next = cum + bs;
            if target < next {
                return Some(super::walk_block(c, bi * 32, m, c1, cum, target));
            }
            cum = next;
        }
        if !tail.is_empty() {
            let next = cum + super::block_sum(&super::block_terms(tail, m, c1));
            if target < next {
                let base = x.len() - tail.len();
                return Some(super::walk_block(tail, base, m, c1, cum, target));
            }
        }
        None
    }

    /// Adds the eight lanes of `e` to the `f64` lane sums `lo` (lanes 0-3) and `hi` (4-7).
    #[target_feature(enable = "avx2,fma")]
    fn add_f64(e: __m256, lo: &mut __m256d, hi: &mut __m256d) {
        *lo = _mm256_add_pd(*lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        *hi = _mm256_add_pd(*hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_weights_into_avx2(x: &[f32], m: f32, inv_t: f32, out: &mut [f32]) -> f64 {
        let (vm, vt) = (_mm256_set1_ps(m), _mm256_set1_ps(inv_t));
        let (mut lo, mut hi) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        let mut co = out.chunks_exact_mut(8);
        let cx = x.chunks_exact(8);
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..cx.remainder().len()].copy_from_slice(cx.remainder());
        for (o, xc) in co.by_ref().zip(cx) {
            // SAFETY: `xc` and `o` are exactly 8 floats long; unaligned load / store.
            unsafe {
                let e = crate::simd::x86::exp8(_mm256_mul_ps(
                    _mm256_sub_ps(_mm256_loadu_ps(xc.as_ptr()), vm),
                    vt,
                ));
                _mm256_storeu_ps(o.as_mut_ptr(), e);
                add_f64(e, &mut lo, &mut hi);
            }
        }
        let rest = co.into_remainder();
        if !rest.is_empty() {
            let mut buf = [0.0f32; 8];
            // SAFETY: `tail` and `buf` are 8-float arrays; unaligned load / store. The `-inf`
            // padding gives exactly 0, which leaves the lane sums unchanged.
            unsafe {
                let e = crate::simd::x86::exp8(_mm256_mul_ps(
                    _mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), vm),
                    vt,
                ));
                _mm256_storeu_ps(buf.as_mut_ptr(), e);
                add_f64(e, &mut lo, &mut hi);
            }
            let n = rest.len();
            rest.copy_from_slice(&buf[..n]);
        }
        // Lanes (0 + 4), (1 + 5), (2 + 6), (3 + 7), then ((a + b) + (c + d)).
        let s = _mm256_add_pd(lo, hi);
        let a = _mm256_castpd256_pd128(s);
        let b = _mm256_extractf128_pd::<1>(s);
        // (s0 + s1) and (s2 + s3).
        let ab = _mm_add_pd(
            std::arch::x86_64::_mm_unpacklo_pd(a, b),
            _mm_unpackhi_pd(a, b),
        );
        // ab = [s0 + s1, s2 + s3]
        _mm_cvtsd_f64(_mm_add_pd(ab, _mm_unpackhi_pd(ab, ab)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    fn lengths() -> impl Iterator<Item = usize> {
        (0..80).chain([127, 128, 129, 255, 1000, 4096, 4099, 8192])
    }

    #[test]
    fn max_below_inf_twins_agree() {
        squish_testkit::prop::check("simd_max_below_inf_twins_agree", 20, |rng| {
            for n in lengths() {
                let mut x: Vec<f32> = (0..n).map(|_| rng.random_range(-50.0f32..50.0)).collect();
                for v in x.iter_mut() {
                    if rng.random_bool(0.05) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                let naive = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(max_below_inf(&x), (naive, true), "n={n}");
                assert_eq!(max_below_inf_scalar(&x), (naive, true), "n={n}");
                if n > 0 {
                    for bad in [f32::NAN, f32::INFINITY] {
                        let mut y = x.clone();
                        y[rng.random_range(0..n)] = bad;
                        assert!(!max_below_inf(&y).1, "n={n}, {bad}");
                        assert!(!max_below_inf_scalar(&y).1, "n={n}, {bad}");
                    }
                }
            }
        });
    }

    #[test]
    fn exp_bound_sum_twins_are_bit_identical() {
        squish_testkit::prop::check("simd_exp_bound_sum_twins", 20, |rng| {
            for n in lengths() {
                let mut x: Vec<f32> = (0..n).map(|_| rng.random_range(-100.0f32..10.0)).collect();
                for v in x.iter_mut() {
                    if rng.random_bool(0.05) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                let (m, _) = max_below_inf(&x);
                let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
                let c1 = rng.random_range(0.01f32..1e9);
                assert_eq!(
                    exp_bound_sum(&x, m, c1).to_bits(),
                    exp_bound_sum_scalar(&x, m, c1).to_bits(),
                    "n={n}"
                );
            }
        });
    }

    /// The bounds hold on both paths, over logits of every scale (down to the flush-to-zero
    /// range), temperatures from 0.05 to 20, lengths up to 65 536, masked entries, rows
    /// dominated by one token and flat rows; and they stay tight.
    #[test]
    fn softmax_total_bounds_hold() {
        use crate::ops::{softmax_total_bounds, softmax_weights_into};
        squish_testkit::prop::check("softmax_total_bounds_hold", 40, |rng| {
            for n in lengths().chain([32_000, 65_536]) {
                if n == 0 {
                    continue;
                }
                let scale = [0.0f32, 1e-3, 1.0, 5.0, 30.0, 300.0][rng.random_range(0..6)];
                let mut x: Vec<f32> = (0..n)
                    .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                    .collect();
                for v in x.iter_mut() {
                    if rng.random_bool(0.03) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                let i = rng.random_range(0..n);
                x[i] = rng.random_range(-5.0f32..5.0) * scale;
                let m = max_below_inf(&x).0;
                if m == f32::NEG_INFINITY {
                    continue;
                }
                let t = [0.05f32, 0.3, 0.7, 1.0, 1.5, 20.0][rng.random_range(0..6)];
                let mut w = vec![0.0f32; n];
                let total = softmax_weights_into(&x, m, t, &mut w);
                let Some((lo, hi)) = softmax_total_bounds(&x, m, t) else {
                    // Only for logits far beyond the offset's range.
                    assert!(f64::from(m.abs()) / f64::from(t) > 600.0, "{m} {t}");
                    continue;
                };
                assert!(lo <= total && total <= hi, "n={n}: {lo} <= {total} <= {hi}");
                assert!(hi / lo < 1.07, "n={n}: {lo} .. {hi}");
                // Each term on its own (the worst-case factor is reached per term).
                if let Some((lo1, hi1)) = softmax_total_bounds(&x[i..=i], x[i], t) {
                    assert!(lo1 <= 1.0 && 1.0 <= hi1);
                }
                let c1 = crate::ops::bound_scale(m, t).unwrap();
                for j in 0..n.min(64) {
                    let mut one = [0.0f32];
                    let wj = softmax_weights_into(&x[j..=j], m, t, &mut one);
                    let a = f64::from(exp_bound_sum(&x[j..=j], m, c1));
                    if wj >= f64::from(f32::MIN_POSITIVE) * 2.0 {
                        let r = a / wj;
                        assert!(
                            (1.0 - 1e-4..=1.0615 * (1.0 + 1e-4)).contains(&r),
                            "{r} {m} {t}"
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn exp_bound_scan_twins_agree_with_a_naive_scan() {
        squish_testkit::prop::check("simd_exp_bound_scan", 20, |rng| {
            for n in lengths().filter(|&n| n > 0) {
                let mut x: Vec<f32> = (0..n).map(|_| rng.random_range(-30.0f32..3.0)).collect();
                for v in x.iter_mut() {
                    if rng.random_bool(0.05) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                let (m, _) = max_below_inf(&x);
                let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
                let c1 = rng.random_range(1e5f32..1e8);
                let terms: Vec<f64> = x
                    .iter()
                    .map(|&v| f64::from(exp_bound_term(v, m, c1)))
                    .collect();
                let total: f64 = terms.iter().sum();
                // The f32 sum of the same terms is within its rounding of the total.
                let s = f64::from(exp_bound_sum(&x, m, c1));
                assert!((s - total).abs() <= 1e-5 * total, "n={n}: {s} vs {total}");
                for k in 0..20 {
                    let target = if k == 0 {
                        total * 1.000_001
                    } else {
                        rng.random::<f64>() * total
                    };
                    let got = exp_bound_scan(&x, m, c1, target);
                    assert_eq!(got, exp_bound_scan_scalar(&x, m, c1, target), "n={n}");
                    if k == 0 {
                        assert_eq!(got, None);
                        continue;
                    }
                    // Naive sequential inverse CDF: equal unless the target is within
                    // rounding of a boundary.
                    let mut cum = 0.0;
                    let naive = terms.iter().position(|&a| {
                        cum += a;
                        target < cum
                    });
                    if got != naive {
                        let i = got.unwrap_or(n - 1);
                        let before: f64 = terms[..i].iter().sum();
                        let near = (target - before)
                            .abs()
                            .min((target - before - terms[i]).abs());
                        assert!(near <= 1e-12 * total, "n={n}: {got:?} vs {naive:?}");
                    }
                }
            }
        });
    }

    #[test]
    fn exp_weights_match_exp_shifted_into() {
        squish_testkit::prop::check("simd_exp_weights_match", 20, |rng| {
            for n in lengths() {
                let mut x: Vec<f32> = (0..n).map(|_| rng.random_range(-30.0f32..30.0)).collect();
                for v in x.iter_mut() {
                    if rng.random_bool(0.1) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                let (m, _) = max_below_inf(&x);
                let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
                let inv_t = 1.0 / rng.random_range(0.1f32..4.0);

                // Dispatched path: the values of `exp_shifted_into`, bit for bit, and their
                // lane sum, bit for bit.
                let mut want = vec![0.0f32; n];
                super::super::exp_shifted_into(&x, m, inv_t, &mut want);
                let mut got = vec![0.0f32; n];
                let s = exp_weights_into(&x, m, inv_t, &mut got);
                assert_eq!(got, want, "n={n}");
                assert_eq!(s.to_bits(), lane_sum_f64(&got).to_bits(), "n={n}");

                // Scalar twin: the values of the scalar `exp_shifted_into`, bit for bit.
                let mut want = vec![0.0f32; n];
                super::super::exp_shifted_into_scalar(&x, m, inv_t, &mut want);
                let mut got = vec![0.0f32; n];
                let s = exp_weights_into_scalar(&x, m, inv_t, &mut got);
                assert_eq!(got, want, "n={n}");
                assert_eq!(s.to_bits(), lane_sum_f64(&got).to_bits(), "n={n}");

                // The sum is the sum of the stored values to within f64 rounding.
                let exact: f64 = got.iter().map(|&v| f64::from(v)).sum();
                assert!((s - exact).abs() <= 1e-13 * exact.max(1e-300), "n={n}");
            }
        });
    }
}
