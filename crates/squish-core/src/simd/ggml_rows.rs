//! Whole-row AVX2 kernels of the storage formats: GGML `Q8_0` / `Q4_0` quantisation and the
//! range-checked `f32` → `f16` conversion.
//!
//! # GGML rows
//! [`quantize_row_q8_0`] and [`quantize_row_q4_0`] work on groups of 64 blocks (2048 values,
//! 8 KiB, which stay in L1 between the two passes):
//!
//! 1. eight blocks at a time: load them and reduce each to its largest `|x|` (`Q8_0`: an integer
//!    maximum of the magnitude bit patterns, which also catches NaN and infinity, whose
//!    patterns are above `f32::MAX`'s) or to its signed maximum and minimum (`Q4_0`); a
//!    transposing reduction puts the eight blocks' results in one vector, so the eight scales
//!    `d`, their `f16` (F16C, round to nearest even: the rounding of `half::f16::from_f32`) and
//!    `id = 1 / d` are computed together. The eight-block steps of a group are independent, so
//!    their latency chains (reduction, two divisions, the conversion) overlap;
//! 2. reload each block and write its codes (`Q4_0`: two blocks per packing, and the NaN check,
//!    see below).
//!
//! They return `false`, leaving `out` partly written, when the caller must take the
//! block-by-block path (`quant::quantize_row_q8_0_blocks` / `quantize_row_q4_0_blocks`): on a
//! CPU without AVX2 + FMA + F16C (or with `SQUISH_SIMD=off`), and when a group holds a
//! non-finite value or a block whose `f16` scale overflows. That path then produces the
//! documented error (first non-finite index of the whole row, or the overflowing block's largest
//! element) with the very same value. `Q4_0` finds a NaN in pass 2: its `x * id + 8.5` is NaN
//! (`id` is always finite), the conversion gives `i32::MIN` and the signed packing the byte
//! `-128`, while real codes are `0..=16`; an infinity makes the scale infinite in pass 1.

//! Agreement with the block-by-block path, **bit-identical**, lane by lane:
//! - maxima are exact whatever the order;
//! - `Q4_0`'s scale source, the first value of largest magnitude keeping its sign, is the signed
//!   maximum when it exceeds minus the signed minimum, the minimum in the opposite case, `+0.0`
//!   for an all-zero block; when both `+amax` and `-amax` occur, the block is resolved by the
//!   portable `quant::first_max_abs`;
//! - `d` and `id` (`Q8_0`: `127 / amax`, `Q4_0`: `1 / d`; 0 when that is not finite, as
//!   `quant::quotient_or_zero`) are the same `f32` divisions; `x * id` and, for `Q4_0`,
//!   `+ 8.5` are separate roundings (never fused);
//! - `Q8_0`'s code, `v = x * id` rounded to the nearest integer with ties to even (clamped to
//!   `±127` on the block path, a clamp that never binds: see below), is one `cvtps2dq` per
//!   eight values (the default rounding mode, which Rust code never changes); the block path
//!   rounds with the same tie rule;
//! - the clamps of the block path that can never bind are left out. Over **every** finite
//!   `f32` `amax` whose scale does not overflow, `amax * id` is at most 127.00001 for `Q8_0`
//!   (`id = 127 / amax`) and at most 8.000002 for `Q4_0` (`d = amax / -8`; checked exhaustively
//!   off-line, and on a sweep by `quant::ggml`'s tests). Rounding is monotone, so every
//!   `|x * id|` of the block is within that bound: `Q8_0`'s clamp to `±127` never changes
//!   the rounded result (127 either way), and `Q4_0`'s `t = x * id + 8.5 >= 0.49`, so its clamp
//!   at 0 never binds; the clamp at 15 does (the code of `-max` would be 16) and stays;
//! - `Q4_0`'s `floor(min(t, 15))` is a truncating conversion of `t` (non-negative) followed by
//!   a byte minimum with 15 (`min(floor t, 15) = floor(min(t, 15))`).
//!
//! # f16 rows
//! [`f32_to_f16_top`] converts like `simd::f32_to_f16` and returns the largest magnitude bit
//! pattern `bits & 0x7fff` of the results, folded inside the F16C loop (NaN, infinity and
//! overflow to infinity are all at or above `0x7c00`), so a range check needs no second pass.

#![allow(unsafe_code)]

use super::{Isa, has_f16c, isa};
use crate::quant::{BlockQ4_0, BlockQ8_0};

/// Whether the whole-row kernels may run: AVX2 + FMA (the `Isa`) and F16C.
#[inline]
pub(crate) fn rows_available() -> bool {
    isa() == Isa::Avx2Fma && has_f16c()
}

/// Quantises whole blocks into `Q8_0` on the AVX2 path; `true` when done (bit-identical to
/// `quant::quantize_row_q8_0_blocks`), `false` when the caller must run that path instead (see
/// the module docs). `out` may then be partly written.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn quantize_row_q8_0(x: &[[f32; 32]], out: &mut [BlockQ8_0]) -> bool {
    assert_eq!(x.len(), out.len(), "quantize_row_q8_0: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if rows_available() {
        // SAFETY: `rows_available` confirmed AVX2, FMA and F16C on this CPU, the features the
        // kernel is compiled for.
        return unsafe { x86::quantize_row_q8_0_avx2(x, out) };
    }
    false
}

/// Quantises whole blocks into `Q4_0` on the AVX2 path; `true` when done (bit-identical to
/// `quant::quantize_row_q4_0_blocks`), `false` when the caller must run that path instead.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn quantize_row_q4_0(x: &[[f32; 32]], out: &mut [BlockQ4_0]) -> bool {
    assert_eq!(x.len(), out.len(), "quantize_row_q4_0: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if rows_available() {
        // SAFETY: as in `quantize_row_q8_0`.
        return unsafe { x86::quantize_row_q4_0_avx2(x, out) };
    }
    false
}

/// `Q8_0` blocks to `f32` rows (`code * d`, exact), dispatched like [`dequantize_q4_0`].
pub(crate) fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [[f32; 32]]) {
    #[cfg(target_arch = "x86_64")]
    if rows_available() {
        // SAFETY: `rows_available` confirmed AVX2, FMA and F16C.
        unsafe { x86::dequantize_q8_0_avx2(blocks, out) };
        return;
    }
    super::dequantize_q8_0(blocks, out);
}

/// `Q4_0` blocks to `f32` rows (`(code - 8) * d`, exact), dispatched: the AVX2 + F16C kernel
/// here, else [`super::dequantize_q4_0`] (AVX2 without F16C, or the portable twin
/// `quant::dequantize_q4_0_scalar`). Bit-identical on every path.
pub(crate) fn dequantize_q4_0(blocks: &[BlockQ4_0], out: &mut [[f32; 32]]) {
    #[cfg(target_arch = "x86_64")]
    if rows_available() {
        // SAFETY: `rows_available` confirmed AVX2, FMA and F16C.
        unsafe { x86::dequantize_q4_0_avx2(blocks, out) };
        return;
    }
    super::dequantize_q4_0(blocks, out);
}

/// `f32` → `f16` (round to nearest even, as [`super::f32_to_f16`]) into `dst`, returning the
/// largest `bits & 0x7fff` of the results (0 for empty input), dispatched: F16C with the maximum
/// folded into the conversion loop, else the portable [`f32_to_f16_top_scalar`]. Identical
/// results on both paths.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn f32_to_f16_top(src: &[f32], dst: &mut [half::f16]) -> u16 {
    assert_eq!(src.len(), dst.len(), "f32_to_f16_top: length mismatch");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C was detected, and `has_f16c` implies the AVX2 `Isa` (so AVX2 too).
        return unsafe { x86::f32_to_f16_top_f16c(src, bytemuck::cast_slice_mut(dst)) };
    }
    f32_to_f16_top_scalar(src, dst)
}

/// Portable twin of [`f32_to_f16_top`]: `half`'s slice conversion, then a maximum over the
/// 16-bit magnitudes (a `pmaxsw` loop on SSE2).
pub(crate) fn f32_to_f16_top_scalar(src: &[f32], dst: &mut [half::f16]) -> u16 {
    half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
    let top = dst
        .iter()
        .fold(0i16, |m, h| m.max((h.to_bits() & 0x7fff) as i16));
    top as u16
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256, __m256i, _CMP_EQ_OQ, _CMP_GE_OQ, _CMP_LT_OQ, _MM_FROUND_TO_NEAREST_INT,
        _mm_and_si128, _mm_cmpeq_epi16, _mm_cvtph_ps, _mm_cvtsi32_si128, _mm_loadl_epi64,
        _mm_max_epu16, _mm_movemask_epi8, _mm_set1_epi16, _mm_storeu_si128, _mm256_add_ps,
        _mm256_and_ps, _mm256_and_si256, _mm256_andnot_ps, _mm256_blendv_ps, _mm256_broadcastss_ps,
        _mm256_castpd_ps, _mm256_castps_pd, _mm256_castps_si256, _mm256_castsi256_ps,
        _mm256_castsi256_si128, _mm256_cmp_ps, _mm256_cmpgt_epi32, _mm256_cvtepi8_epi32,
        _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32, _mm256_cvtps_epi32, _mm256_cvtps_ph,
        _mm256_cvttps_epi32, _mm256_div_ps, _mm256_extracti128_si256, _mm256_loadu_ps,
        _mm256_max_epi32, _mm256_max_epu16, _mm256_max_ps, _mm256_min_epu8, _mm256_min_ps,
        _mm256_movemask_epi8, _mm256_movemask_ps, _mm256_mul_ps, _mm256_or_si256,
        _mm256_packs_epi16, _mm256_packs_epi32, _mm256_permute2f128_ps, _mm256_permute2x128_si256,
        _mm256_permutevar8x32_epi32, _mm256_set_m128i, _mm256_set1_epi8, _mm256_set1_epi16,
        _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps,
        _mm256_setzero_si256, _mm256_slli_epi16, _mm256_srli_epi32, _mm256_storeu_ps,
        _mm256_storeu_si256, _mm256_sub_epi32, _mm256_unpackhi_epi32, _mm256_unpackhi_epi64,
        _mm256_unpackhi_pd, _mm256_unpackhi_ps, _mm256_unpacklo_epi32, _mm256_unpacklo_epi64,
        _mm256_unpacklo_pd, _mm256_unpacklo_ps, _mm256_xor_ps,
    };

    use crate::quant::{BlockQ4_0, BlockQ8_0};

    /// Blocks per chunk: one vector of scales.
    const CHUNK: usize = 8;
    /// Blocks per group (8 KiB of input): pass 1 runs over a whole group before pass 2.
    const GROUP: usize = 64;

    /// Lane-wise maximum of the `|x|` bit patterns of a block (as non-negative `i32`, whose
    /// order is the order of the magnitudes; NaN and infinity compare above every finite value).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn abs_bits_max(v: &[__m256; 4]) -> __m256i {
        let abs = _mm256_set1_epi32(0x7fff_ffff);
        let a: [__m256i; 4] = [
            _mm256_and_si256(_mm256_castps_si256(v[0]), abs),
            _mm256_and_si256(_mm256_castps_si256(v[1]), abs),
            _mm256_and_si256(_mm256_castps_si256(v[2]), abs),
            _mm256_and_si256(_mm256_castps_si256(v[3]), abs),
        ];
        _mm256_max_epi32(_mm256_max_epi32(a[0], a[1]), _mm256_max_epi32(a[2], a[3]))
    }

    /// Transposing reduction: lane `k` of the result is the maximum of the eight lanes of
    /// `m[k]` (signed `i32`).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce8_max_epi32(m: &[__m256i; CHUNK]) -> __m256i {
        // [m0 (0|2), m1 (0|2), m0 (1|3), m1 (1|3)] in each 128-bit half, and so on.
        let a = _mm256_max_epi32(
            _mm256_unpacklo_epi32(m[0], m[1]),
            _mm256_unpackhi_epi32(m[0], m[1]),
        );
        let b = _mm256_max_epi32(
            _mm256_unpacklo_epi32(m[2], m[3]),
            _mm256_unpackhi_epi32(m[2], m[3]),
        );
        let c = _mm256_max_epi32(
            _mm256_unpacklo_epi32(m[4], m[5]),
            _mm256_unpackhi_epi32(m[4], m[5]),
        );
        let d = _mm256_max_epi32(
            _mm256_unpacklo_epi32(m[6], m[7]),
            _mm256_unpackhi_epi32(m[6], m[7]),
        );
        // [M0, M1, M2, M3] and [M4, M5, M6, M7] per 128-bit half.
        let lo = _mm256_max_epi32(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
        let hi = _mm256_max_epi32(_mm256_unpacklo_epi64(c, d), _mm256_unpackhi_epi64(c, d));
        _mm256_max_epi32(
            _mm256_permute2x128_si256::<0x20>(lo, hi),
            _mm256_permute2x128_si256::<0x31>(lo, hi),
        )
    }

    /// `_mm256_max_ps` (`MAX`) or `_mm256_min_ps`; only used on lanes without NaN, where both
    /// are exact.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pick<const MAX: bool>(a: __m256, b: __m256) -> __m256 {
        if MAX {
            _mm256_max_ps(a, b)
        } else {
            _mm256_min_ps(a, b)
        }
    }

    /// First step of the transposing reduction of [`reduce8_max_epi32`] for `f32` lanes, on
    /// blocks `2k` and `2k + 1`; taken as soon as the pair is loaded, so that only four partial
    /// vectors per quantity stay live (eight would spill).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce_pair<const MAX: bool>(a: __m256, b: __m256) -> __m256 {
        pick::<MAX>(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b))
    }

    /// The rest of the reduction: lane `k` of the result reduces block `k`'s eight lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reduce_pairs<const MAX: bool>(p: &[__m256; 4]) -> __m256 {
        let mut quads = [_mm256_setzero_ps(); 2];
        for (q, p) in quads.iter_mut().zip(p.as_chunks::<2>().0) {
            let (a, b) = (_mm256_castps_pd(p[0]), _mm256_castps_pd(p[1]));
            *q = pick::<MAX>(
                _mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
                _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)),
            );
        }
        pick::<MAX>(
            _mm256_permute2f128_ps::<0x20>(quads[0], quads[1]),
            _mm256_permute2f128_ps::<0x31>(quads[0], quads[1]),
        )
    }

    /// Whether any lane of the largest-magnitude bit patterns is NaN or infinite.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn any_non_finite(amax_bits: __m256i) -> bool {
        let finite_max = _mm256_set1_epi32(0x7f7f_ffff); // f32::MAX
        _mm256_movemask_epi8(_mm256_cmpgt_epi32(amax_bits, finite_max)) != 0
    }

    /// The eight scales' `f16` bits (round to nearest even) and whether any is infinite (`d` is
    /// finite here, so that is an overflow).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn f16_scales(d: __m256) -> (__m128i, bool) {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d);
        let inf = _mm_cmpeq_epi16(
            _mm_and_si128(h, _mm_set1_epi16(0x7fff)),
            _mm_set1_epi16(0x7c00),
        );
        (h, _mm_movemask_epi8(inf) != 0)
    }

    /// `n / d`, or 0 where that is not finite (`d` zero or tiny): `quant::quotient_or_zero`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quotient_or_zero(n: f32, d: __m256) -> __m256 {
        let r = _mm256_div_ps(_mm256_set1_ps(n), d);
        let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(
            _mm256_andnot_ps(_mm256_set1_ps(-0.0), r),
            _mm256_set1_ps(f32::INFINITY),
        );
        _mm256_and_ps(r, finite)
    }

    /// Stores eight `f32` lanes and eight `u16` lanes to arrays.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store_scales(id: __m256, h: __m128i, ids: &mut [f32; CHUNK], hs: &mut [u16; CHUNK]) {
        // SAFETY: `ids` is 8 floats (32 bytes) and `hs` 8 u16 (16 bytes); unaligned stores.
        unsafe {
            _mm256_storeu_ps(ids.as_mut_ptr(), id);
            _mm_storeu_si128(hs.as_mut_ptr().cast::<__m128i>(), h);
        }
    }

    /// Pass 1 over a group of up to [`GROUP`] blocks: `scales` fills `ids` / `hs` eight blocks
    /// at a time (a partial last eight through a zero-padded copy: zero blocks are valid input
    /// and never defer). The eight-block scale computations are independent, so their latency
    /// chains (reductions, two divisions, the `f16` conversion) overlap; the group's 8 KiB of
    /// input stays in L1 for pass 2. `false` as soon as one defers.
    macro_rules! group_scales {
        ($xg:ident, $ids:ident, $hs:ident, $scales:ident) => {{
            let (full, part) = $xg.as_chunks::<CHUNK>();
            let mut slots = $ids
                .as_chunks_mut::<CHUNK>()
                .0
                .iter_mut()
                .zip($hs.as_chunks_mut::<CHUNK>().0);
            for xs in full {
                let Some((ids, hs)) = slots.next() else {
                    return false;
                };
                if !$scales(xs, ids, hs) {
                    return false;
                }
            }
            if !part.is_empty() {
                let mut xs = [[0.0f32; 32]; CHUNK];
                xs[..part.len()].copy_from_slice(part);
                let Some((ids, hs)) = slots.next() else {
                    return false;
                };
                if !$scales(&xs, ids, hs) {
                    return false;
                }
            }
        }};
    }

    /// Whole-row AVX2 `Q8_0` quantiser (see the module docs).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn quantize_row_q8_0_avx2(x: &[[f32; 32]], out: &mut [BlockQ8_0]) -> bool {
        let (mut ids, mut hs) = ([0.0f32; GROUP], [0u16; GROUP]);
        for (xg, og) in x.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            group_scales!(xg, ids, hs, q8_0_scales);
            for ((xb, ob), (&id, &h)) in xg.iter().zip(og).zip(ids.iter().zip(&hs)) {
                q8_0_codes(xb, id, &mut ob.qs);
                ob.d = half::f16::from_bits(h);
            }
        }
        true
    }

    /// Whole-row AVX2 `Q4_0` quantiser (see the module docs).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn quantize_row_q4_0_avx2(x: &[[f32; 32]], out: &mut [BlockQ4_0]) -> bool {
        let (mut ids, mut hs) = ([0.0f32; GROUP], [0u16; GROUP]);
        for (xg, og) in x.chunks(GROUP).zip(out.chunks_mut(GROUP)) {
            group_scales!(xg, ids, hs, q4_0_scales);
            // Two blocks per packing; an odd last block is packed with itself.
            let (xp, xt) = xg.as_chunks::<2>();
            let (op, ot) = og.as_chunks_mut::<2>();
            let (ip, _) = ids.as_chunks::<2>();
            let mut nan = _mm256_setzero_si256();
            for ((xp, op), ip) in xp.iter().zip(op).zip(ip) {
                let p = q4_0_codes2(&xp[0], &xp[1], ip[0], ip[1], &mut nan);
                // SAFETY: each `qs` is 16 bytes, one unaligned 128-bit store each.
                unsafe {
                    _mm_storeu_si128(
                        op[0].qs.as_mut_ptr().cast::<__m128i>(),
                        _mm256_castsi256_si128(p),
                    );
                    _mm_storeu_si128(
                        op[1].qs.as_mut_ptr().cast::<__m128i>(),
                        _mm256_extracti128_si256::<1>(p),
                    );
                }
            }
            if let (Some(xb), Some(ob)) = (xt.first(), ot.first_mut()) {
                let id = ids[xg.len() - 1];
                let p = q4_0_codes2(xb, xb, id, id, &mut nan);
                // SAFETY: `qs` is 16 bytes, one unaligned 128-bit store.
                unsafe {
                    _mm_storeu_si128(
                        ob.qs.as_mut_ptr().cast::<__m128i>(),
                        _mm256_castsi256_si128(p),
                    );
                }
            }
            if _mm256_movemask_epi8(nan) != 0 {
                return false;
            }
            for (ob, &h) in og.iter_mut().zip(&hs) {
                ob.d = half::f16::from_bits(h);
            }
        }
        true
    }

    /// Pass 1 of eight `Q8_0` blocks: their `id`s and `f16` scales; `false` on a non-finite
    /// value or an overflowing scale.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_scales(xs: &[[f32; 32]; CHUNK], ids: &mut [f32; CHUNK], hs: &mut [u16; CHUNK]) -> bool {
        let mut m = [_mm256_setzero_si256(); CHUNK];
        for (m, xb) in m.iter_mut().zip(xs) {
            *m = abs_bits_max(&crate::simd::x86::load4(xb));
        }
        let amax_bits = reduce8_max_epi32(&m);
        if any_non_finite(amax_bits) {
            return false;
        }
        let amax = _mm256_castsi256_ps(amax_bits);
        let d = _mm256_div_ps(amax, _mm256_set1_ps(127.0));
        let (h, overflow) = f16_scales(d);
        if overflow {
            return false;
        }
        store_scales(quotient_or_zero(127.0, amax), h, ids, hs);
        true
    }

    /// Pass 2 of one `Q8_0` block: its 32 codes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0_codes(xb: &[f32; 32], id: f32, qs: &mut [i8; 32]) {
        let vid = _mm256_set1_ps(id);
        let v = crate::simd::x86::load4(xb);
        let mut ints = [_mm256_setzero_si256(); 4];
        for (i, &v) in ints.iter_mut().zip(&v) {
            // No clamp to ±127: |x * id| <= 127.00001 (module docs), so it never binds.
            // `cvtps2dq` rounds to nearest, ties to even (the default rounding mode).
            *i = _mm256_cvtps_epi32(_mm256_mul_ps(v, vid));
        }
        // packs: [i0 0..4, i1 0..4, i2 0..4, i3 0..4 | i0 4..8, ...] as bytes; the 32-bit
        // permutation restores element order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(ints[0], ints[1]),
            _mm256_packs_epi32(ints[2], ints[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit store.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast::<__m256i>(), p) };
    }

    /// Pass 1 of eight `Q4_0` blocks: their `id`s and `f16` scales; `false` on an infinite
    /// value or an overflowing scale (a NaN is caught in pass 2).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_0_scales(xs: &[[f32; 32]; CHUNK], ids: &mut [f32; CHUNK], hs: &mut [u16; CHUNK]) -> bool {
        // Per-block signed maximum and minimum (exact for finite and infinite values; a NaN is
        // caught in pass 2, whatever scale it produced here).
        let mut pmx = [_mm256_setzero_ps(); 4];
        let mut pmn = [_mm256_setzero_ps(); 4];
        for ((pmx, pmn), xp) in pmx.iter_mut().zip(&mut pmn).zip(xs.as_chunks::<2>().0) {
            let mut mx = [_mm256_setzero_ps(); 2];
            let mut mn = [_mm256_setzero_ps(); 2];
            for ((mx, mn), xb) in mx.iter_mut().zip(&mut mn).zip(xp) {
                let v = crate::simd::x86::load4(xb);
                *mx = _mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3]));
                *mn = _mm256_min_ps(_mm256_min_ps(v[0], v[1]), _mm256_min_ps(v[2], v[3]));
            }
            *pmx = reduce_pair::<true>(mx[0], mx[1]);
            *pmn = reduce_pair::<false>(mn[0], mn[1]);
        }
        let (mx, mn) = (reduce_pairs::<true>(&pmx), reduce_pairs::<false>(&pmn));
        let neg_mn = _mm256_xor_ps(mn, _mm256_set1_ps(-0.0));
        let amax = _mm256_max_ps(mx, neg_mn);
        // An infinity would also show as an infinite scale below; tested here for clarity.
        let inf = _mm256_cmp_ps::<_CMP_EQ_OQ>(amax, _mm256_set1_ps(f32::INFINITY));
        if _mm256_movemask_ps(inf) != 0 {
            return false;
        }
        // The first value of largest magnitude: the maximum when it beats minus the minimum,
        // the minimum when it loses, +0.0 for an all-zero block; on a tie (both +amax and
        // -amax occur) only the order tells, so those blocks go through the portable search.
        let zero = _mm256_cmp_ps::<_CMP_EQ_OQ>(amax, _mm256_setzero_ps());
        let max = _mm256_blendv_ps(mn, mx, _mm256_cmp_ps::<_CMP_GE_OQ>(mx, neg_mn));
        let mut max = _mm256_andnot_ps(zero, max);
        let tie = _mm256_andnot_ps(zero, _mm256_cmp_ps::<_CMP_EQ_OQ>(mx, neg_mn));
        let tie = _mm256_movemask_ps(tie);
        if tie != 0 {
            let mut lanes = [0.0f32; CHUNK];
            // SAFETY: `lanes` is 8 floats; unaligned load / store.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), max) };
            for (k, (l, xb)) in lanes.iter_mut().zip(xs).enumerate() {
                if tie & (1 << k) != 0 {
                    *l = crate::quant::first_max_abs(xb).1;
                }
            }
            // SAFETY: as above.
            max = unsafe { _mm256_loadu_ps(lanes.as_ptr()) };
        }
        let d = _mm256_div_ps(max, _mm256_set1_ps(-8.0));
        let (h, overflow) = f16_scales(d);
        if overflow {
            return false;
        }
        store_scales(quotient_or_zero(1.0, d), h, ids, hs);
        true
    }

    /// Pass 2 of two `Q4_0` blocks: block `a`'s 16 code bytes in the low half, `b`'s in the
    /// high half.
    ///
    /// Each block's codes `trunc(x * id + 8.5)` (in `[0, 16]`: no clamp at 0 is needed, as
    /// `x * id >= -8.000002` gives `t >= 0.49`, see the module docs) are packed to bytes first
    /// and clamped to 15 there, 32 at once (`min(floor(t), 15) = floor(min(t, 15))`); the
    /// nibbles of both blocks are then combined with one shift and one or. Non-finite input is
    /// detected here rather than in pass 1: `x * id + 8.5` is NaN for a NaN `x` (`id` is
    /// finite), its code byte saturates to -128 and is or-ed into `nan` (finite codes are
    /// 0..=16, so their top bit is clear); infinities already made the scale defer.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_0_codes2(
        xa: &[f32; 32],
        xb: &[f32; 32],
        ida: f32,
        idb: f32,
        nan: &mut __m256i,
    ) -> __m256i {
        let (off, top) = (_mm256_set1_ps(8.5), _mm256_set1_epi8(15));
        let mut bytes = [_mm256_setzero_si256(); 2];
        for (bytes, (x, id)) in bytes.iter_mut().zip([(xa, ida), (xb, idb)]) {
            let vid = _mm256_set1_ps(id);
            let v = crate::simd::x86::load4(x);
            let mut c = [_mm256_setzero_si256(); 4];
            for (c, &v) in c.iter_mut().zip(&v) {
                *c = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, vid), off));
            }
            // Dwords of 4 codes: [c0 0..4, c1 0..4, c2 0..4, c3 0..4 | c0 4..8, c1, c2, c3
            // 4..8]: low nibbles (elements 0..16, c0 and c1) in dwords 0, 1, 4, 5, high
            // nibbles (elements 16..32) in dwords 2, 3, 6, 7.
            // Signed saturation: a NaN's code (the conversion gives i32::MIN) becomes the byte
            // -128, the only byte with its top bit set; `nan` collects it for the caller.
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(c[0], c[1]),
                _mm256_packs_epi32(c[2], c[3]),
            );
            *nan = _mm256_or_si256(*nan, p);
            *bytes = _mm256_min_epu8(p, top);
        }
        // [a lo 0..4, a lo 8..12, b lo 0..4, b lo 8..12 | a lo 4..8, a lo 12..16, b, b] and
        // the same for the high nibbles, or-ed together.
        let lo = _mm256_unpacklo_epi64(bytes[0], bytes[1]);
        let hi = _mm256_unpackhi_epi64(bytes[0], bytes[1]);
        let q = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
        _mm256_permutevar8x32_epi32(q, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// AVX2 `Q8_0` dequantiser: the scale through F16C (the per-block `half` call it replaces
    /// cost more than the block's arithmetic), then eight codes at a time sign-extended from
    /// memory to `i32`, converted and multiplied by the scale (all exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dequantize_q8_0_avx2(blocks: &[BlockQ8_0], out: &mut [[f32; 32]]) {
        for (b, y) in blocks.iter().zip(out) {
            let h = _mm_cvtsi32_si128(i32::from(b.d.to_bits()));
            let d = _mm256_broadcastss_ps(_mm_cvtph_ps(h));
            for j in 0..4 {
                // SAFETY: `qs` holds 32 bytes, so the 8 at 8 * j (j < 4) are in bounds; `y`
                // holds 32 floats, so the 8 at 8 * j are too. Unaligned load / store.
                unsafe {
                    let q = _mm_loadl_epi64(b.qs.as_ptr().add(8 * j).cast::<__m128i>());
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                    _mm256_storeu_ps(y.as_mut_ptr().add(8 * j), _mm256_mul_ps(v, d));
                }
            }
        }
    }

    /// AVX2 `Q4_0` dequantiser: the scale through F16C; the 16 code bytes zero-extended eight
    /// at a time straight from memory to `i32` lanes, whose low nibbles are elements `0..16` and
    /// whose high nibbles (a shift: the bytes are below 256) are elements `16..32`; minus 8,
    /// converted and multiplied by the scale (all exact).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn dequantize_q4_0_avx2(blocks: &[BlockQ4_0], out: &mut [[f32; 32]]) {
        let (low, eight) = (_mm256_set1_epi32(0x0f), _mm256_set1_epi32(8));
        for (b, y) in blocks.iter().zip(out) {
            let h = _mm_cvtsi32_si128(i32::from(b.d.to_bits()));
            let d = _mm256_broadcastss_ps(_mm_cvtph_ps(h));
            // SAFETY: `qs` is 16 bytes, so the 8-byte loads at offsets 0 and 8 are in bounds.
            let (q0, q1) = unsafe {
                (
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(b.qs.as_ptr().cast::<__m128i>())),
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(b.qs.as_ptr().add(8).cast::<__m128i>())),
                )
            };
            let codes = [
                _mm256_and_si256(q0, low),
                _mm256_and_si256(q1, low),
                _mm256_srli_epi32::<4>(q0),
                _mm256_srli_epi32::<4>(q1),
            ];
            for (j, &c) in codes.iter().enumerate() {
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, eight)), d);
                // SAFETY: `y` holds 32 floats, so the 8 at 8 * j (j < 4) are in bounds.
                unsafe { _mm256_storeu_ps(y.as_mut_ptr().add(8 * j), v) };
            }
        }
    }

    /// F16C `f32` → `f16` bits, 32 per iteration, folding the largest `bits & 0x7fff` into the
    /// loop; the tail through `half` (same rounding). Each pair of 8-value conversions is
    /// joined into one 256-bit vector before it is stored and masked: stored separately,
    /// LLVM folds each store into a second, memory-form conversion (two `vcvtps2ph` per
    /// eight values).
    #[target_feature(enable = "avx2,f16c")]
    pub(super) fn f32_to_f16_top_f16c(src: &[f32], dst: &mut [u16]) -> u16 {
        let mag = _mm256_set1_epi16(0x7fff);
        let (mut t0, mut t1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        let (cs, cd) = (src.as_chunks::<32>(), dst.as_chunks_mut::<32>());
        for (s, d) in cs.0.iter().zip(cd.0.iter_mut()) {
            let mut h = [_mm256_setzero_si256(); 2];
            for (k, h) in h.iter_mut().enumerate() {
                // SAFETY: `s` is 32 floats, so the 8 at 16 * k and 16 * k + 8 (k < 2) are in
                // bounds; unaligned loads.
                let (a, b) = unsafe {
                    (
                        _mm256_loadu_ps(s.as_ptr().add(16 * k)),
                        _mm256_loadu_ps(s.as_ptr().add(16 * k + 8)),
                    )
                };
                *h = _mm256_set_m128i(
                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(b),
                    _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a),
                );
                // SAFETY: `d` is 32 u16 (64 bytes), so the 16 at 16 * k are in bounds;
                // unaligned store.
                unsafe { _mm256_storeu_si256(d.as_mut_ptr().add(16 * k).cast::<__m256i>(), *h) };
            }
            t0 = _mm256_max_epu16(t0, _mm256_and_si256(h[0], mag));
            t1 = _mm256_max_epu16(t1, _mm256_and_si256(h[1], mag));
        }
        let t = _mm256_max_epu16(t0, t1);
        let t = _mm_max_epu16(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
        let mut t_lanes = [0u16; 8];
        // SAFETY: `t_lanes` is 8 u16 (16 bytes); unaligned store.
        unsafe { _mm_storeu_si128(t_lanes.as_mut_ptr().cast::<__m128i>(), t) };
        let mut top = t_lanes.iter().copied().fold(0, u16::max);
        for (d, &x) in cd.1.iter_mut().zip(cs.1) {
            *d = half::f16::from_f32(x).to_bits();
            top = top.max(*d & 0x7fff);
        }
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    /// Every path agrees bit for bit with the portable twin, on random codes and on scales of
    /// every kind (normal, subnormal, ±0, ±infinity, NaN: products of NaN keep the payload the
    /// F16C and `half` conversions give alike).
    #[test]
    fn dequantize_twins_are_bit_identical() {
        squish_testkit::prop::check("simd_ggml_rows_dequantize", 100, |rng| {
            let n = rng.random_range(0..20);
            let mut q = vec![BlockQ4_0::default(); n];
            for b in &mut q {
                b.d = half::f16::from_bits(match rng.random_range(0..4) {
                    0 => rng.random(),
                    1 => [
                        0x0000, 0x8000, 0x7c00, 0xfc00, 0x7e00, 0x7c01, 0x0001, 0x83ff,
                    ][rng.random_range(0..8)],
                    _ => rng.random_range(0..0x7c00u16) | (rng.random::<u16>() & 0x8000),
                });
                for v in &mut b.qs {
                    *v = rng.random();
                }
            }
            let q8: Vec<BlockQ8_0> = q
                .iter()
                .map(|b| BlockQ8_0 {
                    d: b.d,
                    qs: std::array::from_fn(|_| rng.random()),
                })
                .collect();
            let bits = |m: &[[f32; 32]]| {
                m.as_flattened()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            let (mut x, mut y) = (vec![[0.0f32; 32]; n], vec![[1.0f32; 32]; n]);
            dequantize_q8_0(&q8, &mut x);
            crate::quant::dequantize_q8_0_scalar(&q8, &mut y);
            assert_eq!(bits(&x), bits(&y));
            dequantize_q4_0(&q, &mut x);
            crate::quant::dequantize_q4_0_scalar(&q, &mut y);
            assert_eq!(bits(&x), bits(&y));
        });
    }

    #[test]
    fn f16_top_twins_agree() {
        squish_testkit::prop::check("simd_f16_top_twins", 100, |rng| {
            let n = rng.random_range(0..100);
            let src: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..4) {
                    0 => f32::from_bits(rng.random()),
                    1 => rng.random_range(-70000.0f32..70000.0),
                    2 => [65504.0, 65519.996, 65520.0, -65536.0, f32::NAN, 1e-8]
                        [rng.random_range(0..6)],
                    _ => rng.random_range(-1.0f32..1.0),
                })
                .collect();
            let (mut a, mut b) = (vec![half::f16::ZERO; n], vec![half::f16::ONE; n]);
            let ta = f32_to_f16_top(&src, &mut a);
            let tb = f32_to_f16_top_scalar(&src, &mut b);
            let bits = |h: &[half::f16]| h.iter().map(|h| h.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b));
            assert_eq!(ta, tb);
            let top = a.iter().map(|h| h.to_bits() & 0x7fff).max().unwrap_or(0);
            assert_eq!(ta, top);
            for (h, &x) in a.iter().zip(&src) {
                let want = half::f16::from_f32(x);
                assert!(h.to_bits() == want.to_bits() || (h.is_nan() && want.is_nan()));
            }
        });
    }
}
