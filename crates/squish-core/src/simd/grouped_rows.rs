//! Kernels of grouped asymmetric (KIVI) quantisation on byte-aligned rows: group minimum and
//! maximum, scales and reciprocals, the encoder (multiply by the reciprocal scale, convert with
//! ties to even, check the codes) with bit packing, and decode with unpacking. Used
//! by [`crate::quant::quantize_grouped_slices`] and
//! [`crate::quant::dequantize_grouped_slices`].
//!
//! Every kernel has a scalar twin (`*_scalar`) doing the same `f32` operations element by
//! element in the same order (minimum / maximum reductions included), so the AVX2 versions are
//! **bit-identical** to them, NaN propagation included; the tests check this on random data
//! with NaN, infinities, signed zeros, ties and near-ties.
//!
//! # The code
//! `t = (v - z) * inv` (separate subtract and multiply, no FMA), converted to `i32` as
//! `cvtps2dq` does it: `round_ties_even(t)` (the default rounding mode, which Rust code never
//! changes), or `i32::MIN` for a NaN or a `t` out of `i32` range. The code is its low byte. For
//! `v` in its group's range `0 <= t <= max * (1 + 2^-22)`, so this is exactly the clamped code
//! of [`crate::quant::quantize_grouped`], the reference. The encoders also fold the `i32`s
//! into an unsigned maximum: it exceeds `max` exactly when some `t` is NaN, infinite, or rounds
//! outside `0..=max`, so a NaN or infinity in the input (which the minimum / maximum skip after
//! the first row) is reported by one comparison per call, and the codes are then unspecified.
//!
//! # Layout
//! `x` is `[rows, cols]` row-major with `cols % 4 == 0`; packed rows are
//! `bits.packed_len(cols)` bytes each (rows start on a byte since `cols` is a multiple of every
//! `codes_per_byte`), codes packed as by [`crate::quant::pack_codes`]. Per-column parameters
//! (`*_cols`) are `cols` long; per-group parameters (`*_groups`) hold `cols / gs` groups per row.

use super::Isa;
use crate::quant::{QuantBits, pack_codes, unpack_codes};

/// Elements per stack buffer of the scalar twins.
const CHUNK: usize = 256;

/// The code of `v` (low byte of the converted value; see the module docs); folds the
/// converted value into `worst` (unsigned maximum).
#[inline(always)]
fn fast_code(v: f32, z: f32, inv: f32, worst: &mut u32) -> u8 {
    let t = (v - z) * inv;
    // `cvtps2dq`: nearest, ties to even; the "integer indefinite" i32::MIN for NaN or overflow.
    let c = if t.abs() < 2_147_483_648.0 {
        t.round_ties_even() as i32
    } else {
        i32::MIN
    } as u32;
    *worst = (*worst).max(c);
    c as u8
}

/// Whether `worst` (from [`fast_code`]) shows only codes in `0..=max_code`.
#[inline(always)]
fn codes_valid(worst: u32, max_code: u8) -> bool {
    worst <= u32::from(max_code)
}

#[inline(always)]
fn min2(a: f32, b: f32) -> f32 {
    if a < b { a } else { b }
}

#[inline(always)]
fn max2(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// Per-column minimum and maximum of `x` (`[rows, cols]`, `rows >= 1`) into `los` / `his`
/// (`cols` each), row by row: `lo = if v < lo { v } else { lo }` (a NaN survives only in the
/// first row; the encoder reports it).
pub(crate) fn column_min_max(isa: Isa, x: &[f32], cols: usize, los: &mut [f32], his: &mut [f32]) {
    assert!(cols > 0 && x.len() >= cols && x.len().is_multiple_of(cols));
    assert!(los.len() == cols && his.len() == cols);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::column_min_max_avx2(x, cols, los, his) },
        Isa::Scalar => column_min_max_scalar(x, cols, los, his),
    }
}

/// Scalar twin of [`column_min_max`].
pub(crate) fn column_min_max_scalar(x: &[f32], cols: usize, los: &mut [f32], his: &mut [f32]) {
    los.copy_from_slice(&x[..cols]);
    his.copy_from_slice(&x[..cols]);
    for row in x.chunks_exact(cols).skip(1) {
        for ((lo, hi), &v) in los.iter_mut().zip(his.iter_mut()).zip(row) {
            *lo = min2(v, *lo);
            *hi = max2(v, *hi);
        }
    }
}

/// Minimum and maximum of each group of `gs` consecutive values of `x` into `los` / `his`
/// (`x.len() / gs` each). Per group: eight lanes (`lo[k] = min(v, lo[k])` over chunks of 8,
/// starting from the first chunk), reduced as `min(min(l[0], l[2]), min(l[1], l[3]))` with
/// `l[k] = min(lo[k], lo[k + 4])`, then the `gs % 8` remaining values in order; groups shorter
/// than 8 fold from their first value.
pub(crate) fn group_min_max(isa: Isa, x: &[f32], gs: usize, los: &mut [f32], his: &mut [f32]) {
    assert!(gs > 0 && x.len().is_multiple_of(gs));
    assert!(los.len() == x.len() / gs && his.len() == los.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma if gs.is_multiple_of(8) => unsafe {
            x86::group_min_max_avx2(x, gs, los, his);
        },
        _ => group_min_max_scalar(x, gs, los, his),
    }
}

/// Scalar twin of [`group_min_max`].
pub(crate) fn group_min_max_scalar(x: &[f32], gs: usize, los: &mut [f32], his: &mut [f32]) {
    for ((g, lo), hi) in x.chunks_exact(gs).zip(los).zip(his) {
        (*lo, *hi) = min_max8(g);
    }
}

/// Minimum and maximum of one non-empty group (the reduction of [`group_min_max`]).
#[inline(always)]
fn min_max8(x: &[f32]) -> (f32, f32) {
    let (chunks, rest) = x.as_chunks::<8>();
    let Some((first, chunks)) = chunks.split_first() else {
        return x
            .iter()
            .fold((x[0], x[0]), |(l, h), &v| (min2(v, l), max2(v, h)));
    };
    let (mut lo, mut hi) = (*first, *first);
    for c in chunks {
        for k in 0..8 {
            lo[k] = min2(c[k], lo[k]);
        }
        for k in 0..8 {
            hi[k] = max2(c[k], hi[k]);
        }
    }
    let l4: [f32; 4] = std::array::from_fn(|k| min2(lo[k], lo[k + 4]));
    let h4: [f32; 4] = std::array::from_fn(|k| max2(hi[k], hi[k + 4]));
    let mut l = min2(min2(l4[0], l4[2]), min2(l4[1], l4[3]));
    let mut h = max2(max2(h4[0], h4[2]), max2(h4[1], h4[3]));
    for &v in rest {
        l = min2(v, l);
        h = max2(v, h);
    }
    (l, h)
}

/// Largest bit pattern of a finite `f32` magnitude.
const FINITE_BITS: u32 = 0x7f7f_ffff;

/// Turns group maxima `his` into scales and writes their reciprocals into `inv`, as
/// [`crate::quant::scale_and_reciprocal`] of `hi - lo`; `false` if some group's range or largest
/// reconstruction `lo + max_code * scale` (multiply, then add) is not finite.
pub(crate) fn finish_scales(
    isa: Isa,
    los: &[f32],
    his: &mut [f32],
    inv: &mut [f32],
    max_code: f32,
) -> bool {
    assert!(los.len() == his.len() && inv.len() == his.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::finish_scales_avx2(los, his, inv, max_code) },
        Isa::Scalar => finish_scales_scalar(los, his, inv, max_code),
    }
}

/// Scalar twin of [`finish_scales`].
pub(crate) fn finish_scales_scalar(
    los: &[f32],
    his: &mut [f32],
    inv: &mut [f32],
    max_code: f32,
) -> bool {
    // Sign bit set iff `|x|`'s bit pattern exceeds the largest finite one (NaN included).
    let over = |x: f32| FINITE_BITS.wrapping_sub(x.to_bits() & 0x7fff_ffff);
    let mut bad = 0u32;
    for ((hi, &lo), iv) in his.iter_mut().zip(los).zip(inv.iter_mut()) {
        let range = *hi - lo;
        let (s, r) = crate::quant::scale_and_reciprocal(range, max_code);
        bad |= over(range) | over(lo + max_code * s);
        *hi = s;
        *iv = r;
    }
    bad >> 31 == 0
}

/// Codes of `x` (`[rows, cols]`) against per-column zero-points `zs` and reciprocal scales
/// `invs` (`cols` each), packed at `bits` into `packed` (`rows * bits.packed_len(cols)`
/// bytes), computed as in the module docs (no clamp). `false` if some code is not valid (a
/// NaN or infinity, or a value outside its group's range); the codes are then unspecified.
#[must_use]
pub(crate) fn encode_cols(
    isa: Isa,
    bits: QuantBits,
    x: &[f32],
    cols: usize,
    zs: &[f32],
    invs: &[f32],
    packed: &mut [u8],
) -> bool {
    assert!(cols > 0 && cols.is_multiple_of(4) && x.len().is_multiple_of(cols));
    assert!(zs.len() == cols && invs.len() == cols);
    assert_eq!(packed.len(), x.len() / cols * bits.packed_len(cols));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::encode_avx2::<false>(bits, x, cols, 8, [zs, invs], packed) },
        Isa::Scalar => encode_cols_scalar(bits, x, cols, zs, invs, packed),
    }
}

/// Scalar twin of [`encode_cols`].
#[must_use]
pub(crate) fn encode_cols_scalar(
    bits: QuantBits,
    x: &[f32],
    cols: usize,
    zs: &[f32],
    invs: &[f32],
    packed: &mut [u8],
) -> bool {
    encode_scalar(bits, x, cols, 0, [zs, invs], packed)
}

/// As [`encode_cols`] with one zero-point and reciprocal per group of `gs` consecutive values
/// of a row (`rows * cols / gs` each, `cols % gs == 0`).
#[must_use]
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_groups(
    isa: Isa,
    bits: QuantBits,
    x: &[f32],
    cols: usize,
    gs: usize,
    zs: &[f32],
    invs: &[f32],
    packed: &mut [u8],
) -> bool {
    assert!(cols > 0 && cols.is_multiple_of(4) && x.len().is_multiple_of(cols));
    assert!(gs > 0 && cols.is_multiple_of(gs));
    assert!(zs.len() == x.len() / gs && invs.len() == zs.len());
    assert_eq!(packed.len(), x.len() / cols * bits.packed_len(cols));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma if gs.is_multiple_of(8) => unsafe {
            x86::encode_avx2::<true>(bits, x, cols, gs, [zs, invs], packed)
        },
        _ => encode_groups_scalar(bits, x, cols, gs, zs, invs, packed),
    }
}

/// Scalar twin of [`encode_groups`].
#[must_use]
pub(crate) fn encode_groups_scalar(
    bits: QuantBits,
    x: &[f32],
    cols: usize,
    gs: usize,
    zs: &[f32],
    invs: &[f32],
    packed: &mut [u8],
) -> bool {
    encode_scalar(bits, x, cols, gs, [zs, invs], packed)
}

/// The parameter index of column `c` of row `r`: per column (`gs == 0`) or per group.
#[inline(always)]
fn param_index(r: usize, c: usize, cols: usize, gs: usize) -> usize {
    (r * cols + c).checked_div(gs).unwrap_or(c)
}

/// Both scalar encoders; `gs == 0` selects per-column parameters. `p` = zero-points,
/// reciprocals.
fn encode_scalar(
    bits: QuantBits,
    x: &[f32],
    cols: usize,
    gs: usize,
    [zs, invs]: [&[f32]; 2],
    packed: &mut [u8],
) -> bool {
    let row_bytes = bits.packed_len(cols);
    let mut buf = [0u8; CHUNK];
    let mut worst = 0u32;
    for (r, (row, out)) in x
        .chunks_exact(cols)
        .zip(packed.chunks_exact_mut(row_bytes))
        .enumerate()
    {
        for (k, xs) in row.chunks(CHUNK).enumerate() {
            let c0 = k * CHUNK;
            let b = &mut buf[..xs.len()];
            for (i, (o, &v)) in b.iter_mut().zip(xs).enumerate() {
                let q = param_index(r, c0 + i, cols, gs);
                *o = fast_code(v, zs[q], invs[q], &mut worst);
            }
            let start = bits.packed_len(c0);
            pack_codes(b, bits, &mut out[start..start + bits.packed_len(xs.len())]);
        }
    }
    codes_valid(worst, bits.max_code())
}

/// Decodes `packed` (`rows` packed rows of `cols` codes) into `out` (`[rows, cols]`) as
/// `z + code * s` (multiply then add, no FMA) with per-column `zs` / `ss` (`cols` each).
pub(crate) fn decode_cols(
    isa: Isa,
    bits: QuantBits,
    packed: &[u8],
    cols: usize,
    zs: &[f32],
    ss: &[f32],
    out: &mut [f32],
) {
    assert!(cols > 0 && cols.is_multiple_of(4) && out.len().is_multiple_of(cols));
    assert!(zs.len() == cols && ss.len() == cols);
    assert_eq!(packed.len(), out.len() / cols * bits.packed_len(cols));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::decode_avx2::<false>(bits, packed, cols, 8, zs, ss, out) },
        Isa::Scalar => decode_cols_scalar(bits, packed, cols, zs, ss, out),
    }
}

/// Scalar twin of [`decode_cols`].
pub(crate) fn decode_cols_scalar(
    bits: QuantBits,
    packed: &[u8],
    cols: usize,
    zs: &[f32],
    ss: &[f32],
    out: &mut [f32],
) {
    decode_scalar(bits, packed, cols, 0, zs, ss, out);
}

/// As [`decode_cols`] with one zero-point and scale per group of `gs` consecutive values of a
/// row (`rows * cols / gs` each, `cols % gs == 0`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_groups(
    isa: Isa,
    bits: QuantBits,
    packed: &[u8],
    cols: usize,
    gs: usize,
    zs: &[f32],
    ss: &[f32],
    out: &mut [f32],
) {
    assert!(cols > 0 && cols.is_multiple_of(4) && out.len().is_multiple_of(cols));
    assert!(gs > 0 && cols.is_multiple_of(gs));
    assert!(zs.len() == out.len() / gs && ss.len() == zs.len());
    assert_eq!(packed.len(), out.len() / cols * bits.packed_len(cols));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma if gs.is_multiple_of(8) => unsafe {
            x86::decode_avx2::<true>(bits, packed, cols, gs, zs, ss, out);
        },
        _ => decode_groups_scalar(bits, packed, cols, gs, zs, ss, out),
    }
}

/// Scalar twin of [`decode_groups`].
pub(crate) fn decode_groups_scalar(
    bits: QuantBits,
    packed: &[u8],
    cols: usize,
    gs: usize,
    zs: &[f32],
    ss: &[f32],
    out: &mut [f32],
) {
    decode_scalar(bits, packed, cols, gs, zs, ss, out);
}

/// Both scalar decoders; `gs == 0` selects per-column parameters.
fn decode_scalar(
    bits: QuantBits,
    packed: &[u8],
    cols: usize,
    gs: usize,
    zs: &[f32],
    ss: &[f32],
    out: &mut [f32],
) {
    let row_bytes = bits.packed_len(cols);
    let mut buf = [0u8; CHUNK];
    for (r, (y, cs)) in out
        .chunks_exact_mut(cols)
        .zip(packed.chunks_exact(row_bytes))
        .enumerate()
    {
        for (k, yk) in y.chunks_mut(CHUNK).enumerate() {
            let c0 = k * CHUNK;
            let b = &mut buf[..yk.len()];
            let p = bits.packed_len(c0);
            unpack_codes(&cs[p..p + bits.packed_len(yk.len())], bits, b);
            for (i, (o, &c)) in yk.iter_mut().zip(&*b).enumerate() {
                let g = param_index(r, c0 + i, cols, gs);
                *o = zs[g] + f32::from(c) * ss[g];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m256i, _mm_cvtss_f32, _mm_loadl_epi64, _mm_max_ps, _mm_max_ss, _mm_min_ps,
        _mm_min_ss, _mm_movehl_ps, _mm_packus_epi16, _mm_packus_epi32, _mm_shuffle_ps,
        _mm_storel_epi64, _mm_storeu_si128, _mm256_add_ps, _mm256_and_si256, _mm256_castps_si256,
        _mm256_castps256_ps128, _mm256_castsi256_ps, _mm256_castsi256_si128, _mm256_cmpgt_epi32,
        _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32, _mm256_cvtps_epi32, _mm256_extractf128_ps,
        _mm256_extracti128_si256, _mm256_loadu_ps, _mm256_madd_epi16, _mm256_maddubs_epi16,
        _mm256_max_epu32, _mm256_max_ps, _mm256_min_ps, _mm256_movemask_ps, _mm256_mul_ps,
        _mm256_packus_epi16, _mm256_packus_epi32, _mm256_permutevar8x32_epi32, _mm256_set1_epi16,
        _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_si256,
        _mm256_srlv_epi32, _mm256_storeu_ps, _mm256_storeu_si256, _mm256_sub_ps,
    };
    use std::arch::x86_64::{
        _CMP_GT_OQ, _CMP_LT_OQ, _mm256_and_ps, _mm256_blendv_ps, _mm256_cmp_ps, _mm256_div_ps,
        _mm256_or_si256, _mm256_permute2f128_ps, _mm256_setzero_ps, _mm256_shuffle_ps,
    };

    use super::{QuantBits, codes_valid, fast_code, max2, min2, param_index};

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn column_min_max_avx2(x: &[f32], cols: usize, los: &mut [f32], his: &mut [f32]) {
        let rows = x.len() / cols;
        let mut c0 = 0;
        // Strips of 32 channels held in registers down the rows.
        while c0 + 32 <= cols {
            // SAFETY: row 0 holds `cols >= c0 + 32` values from `x`'s start; unaligned loads.
            let mut lo = unsafe {
                [
                    _mm256_loadu_ps(x.as_ptr().add(c0)),
                    _mm256_loadu_ps(x.as_ptr().add(c0 + 8)),
                    _mm256_loadu_ps(x.as_ptr().add(c0 + 16)),
                    _mm256_loadu_ps(x.as_ptr().add(c0 + 24)),
                ]
            };
            let mut hi = lo;
            for r in 1..rows {
                for k in 0..4 {
                    // SAFETY: `r < rows` and `c0 + 8k + 8 <= cols`, so in bounds.
                    let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(r * cols + c0 + 8 * k)) };
                    lo[k] = _mm256_min_ps(v, lo[k]);
                    hi[k] = _mm256_max_ps(v, hi[k]);
                }
            }
            for k in 0..4 {
                // SAFETY: `c0 + 8k + 8 <= cols` = the slices' lengths; unaligned stores.
                unsafe {
                    _mm256_storeu_ps(los.as_mut_ptr().add(c0 + 8 * k), lo[k]);
                    _mm256_storeu_ps(his.as_mut_ptr().add(c0 + 8 * k), hi[k]);
                }
            }
            c0 += 32;
        }
        while c0 + 8 <= cols {
            // SAFETY: as above with one register.
            let mut lo = unsafe { _mm256_loadu_ps(x.as_ptr().add(c0)) };
            let mut hi = lo;
            for r in 1..rows {
                // SAFETY: `r < rows`, `c0 + 8 <= cols`.
                let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(r * cols + c0)) };
                lo = _mm256_min_ps(v, lo);
                hi = _mm256_max_ps(v, hi);
            }
            // SAFETY: `c0 + 8 <= cols`.
            unsafe {
                _mm256_storeu_ps(los.as_mut_ptr().add(c0), lo);
                _mm256_storeu_ps(his.as_mut_ptr().add(c0), hi);
            }
            c0 += 8;
        }
        for c in c0..cols {
            let (mut lo, mut hi) = (x[c], x[c]);
            for r in 1..rows {
                let v = x[r * cols + c];
                lo = min2(v, lo);
                hi = max2(v, hi);
            }
            los[c] = lo;
            his[c] = hi;
        }
    }

    /// Lane-wise minimum and maximum of the `gs / 8` chunks of the group at `p`, starting
    /// from the first chunk (`gs % 8 == 0`, `gs > 0`).
    ///
    /// # Safety
    /// `p` must be valid for reading `gs` floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn lanes_min_max(p: *const f32, gs: usize) -> (__m256, __m256) {
        // SAFETY: `8 <= gs` floats are readable at `p`.
        let mut lo = unsafe { _mm256_loadu_ps(p) };
        let mut hi = lo;
        let mut j = 8;
        while j < gs {
            // SAFETY: `j + 8 <= gs`.
            let v = unsafe { _mm256_loadu_ps(p.add(j)) };
            lo = _mm256_min_ps(v, lo);
            hi = _mm256_max_ps(v, hi);
            j += 8;
        }
        (lo, hi)
    }

    /// `if a < b { a } else { b }` (`>` for `MAX`), lane-wise.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn op<const MAX: bool>(a: __m256, b: __m256) -> __m256 {
        if MAX {
            _mm256_max_ps(a, b)
        } else {
            _mm256_min_ps(a, b)
        }
    }

    /// The twin's reduction of eight lane vectors (one per group) to eight results, in group
    /// order: `l[k] = op(v[k], v[k + 4])`, then `op(op(l[0], l[2]), op(l[1], l[3]))`, with
    /// `op(a, b) = if a < b { a } else { b }` (`> ` for the maximum), batched across groups
    /// with 128-bit-lane shuffles (the same operations in the same order per group).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn reduce8<const MAX: bool>(v: [__m256; 8]) -> __m256 {
        // [g.lo | g'.lo] against [g.hi | g'.hi]: l4 of groups g and g' in the two lanes.
        let mut m = [_mm256_setzero_ps(); 4];
        for (k, mk) in m.iter_mut().enumerate() {
            let (a, b) = (v[2 * k], v[2 * k + 1]);
            *mk = op::<MAX>(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            );
        }
        // (l0, l2) and (l1, l3) of four groups per register.
        let n0 = op::<MAX>(
            _mm256_shuffle_ps::<0x44>(m[0], m[1]),
            _mm256_shuffle_ps::<0xEE>(m[0], m[1]),
        );
        let n1 = op::<MAX>(
            _mm256_shuffle_ps::<0x44>(m[2], m[3]),
            _mm256_shuffle_ps::<0xEE>(m[2], m[3]),
        );
        let f = op::<MAX>(
            _mm256_shuffle_ps::<0x88>(n0, n1),
            _mm256_shuffle_ps::<0xDD>(n0, n1),
        );
        // Lanes hold groups [0, 2, 4, 6 | 1, 3, 5, 7].
        _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(
            _mm256_castps_si256(f),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        ))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn group_min_max_avx2(x: &[f32], gs: usize, los: &mut [f32], his: &mut [f32]) {
        // KIVI's groups of 32 get a copy with the group loop unrolled.
        if gs == 32 {
            group_min_max_gs::<32>(x, gs, los, his);
        } else {
            group_min_max_gs::<0>(x, gs, los, his);
        }
    }

    /// [`group_min_max_avx2`] for groups of `GS` values, or of `gs` if `GS == 0`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn group_min_max_gs<const GS: usize>(x: &[f32], gs: usize, los: &mut [f32], his: &mut [f32]) {
        let gs = if GS == 0 { gs } else { GS };
        let groups = x.len() / gs;
        let xp = x.as_ptr();
        let mut g = 0;
        while g + 8 <= groups {
            let mut lo = [_mm256_setzero_ps(); 8];
            let mut hi = [_mm256_setzero_ps(); 8];
            for k in 0..8 {
                // SAFETY: group `g + k < groups` spans `gs` floats inside `x`.
                (lo[k], hi[k]) = unsafe { lanes_min_max(xp.add((g + k) * gs), gs) };
            }
            let (l8, h8) = (&mut los[g..g + 8], &mut his[g..g + 8]);
            // SAFETY: `l8` and `h8` are 8 floats long; unaligned stores.
            unsafe {
                _mm256_storeu_ps(l8.as_mut_ptr(), reduce8::<false>(lo));
                _mm256_storeu_ps(h8.as_mut_ptr(), reduce8::<true>(hi));
            }
            g += 8;
        }
        for g in g..groups {
            // SAFETY: group `g < groups` spans `gs` floats inside `x`.
            let (lo, hi) = unsafe { lanes_min_max(xp.add(g * gs), gs) };
            // min(lo[k], lo[k + 4]), then min(min(l0, l2), min(l1, l3)): the twin's order.
            let l4 = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps::<1>(lo));
            let h4 = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps::<1>(hi));
            let l2 = _mm_min_ps(l4, _mm_movehl_ps(l4, l4));
            let h2 = _mm_max_ps(h4, _mm_movehl_ps(h4, h4));
            los[g] = _mm_cvtss_f32(_mm_min_ss(l2, _mm_shuffle_ps::<0b01>(l2, l2)));
            his[g] = _mm_cvtss_f32(_mm_max_ss(h2, _mm_shuffle_ps::<0b01>(h2, h2)));
        }
    }

    /// AVX2 twin of `finish_scales_scalar` (the same operations: the same roundings).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn finish_scales_avx2(
        los: &[f32],
        his: &mut [f32],
        inv: &mut [f32],
        max_code: f32,
    ) -> bool {
        let n = his.len();
        let main = n / 8 * 8;
        let max = _mm256_set1_ps(max_code);
        let one = _mm256_set1_ps(1.0);
        let rcp_max = _mm256_set1_ps(1.0 / max_code);
        let tiny = _mm256_set1_ps(f32::MIN_POSITIVE);
        let zero = _mm256_setzero_ps();
        let abs = _mm256_set1_epi32(0x7fff_ffff);
        let finite = _mm256_set1_epi32(super::FINITE_BITS as i32);
        let mut bad = _mm256_setzero_si256();
        let mut i = 0;
        while i < main {
            let (l8, h8, i8) = (&los[i..i + 8], &mut his[i..i + 8], &mut inv[i..i + 8]);
            // SAFETY: the three slices are 8 floats long; unaligned loads and stores.
            unsafe {
                let lo = _mm256_loadu_ps(l8.as_ptr());
                let range = _mm256_sub_ps(_mm256_loadu_ps(h8.as_ptr()), lo);
                let s = _mm256_mul_ps(range, rcp_max);
                // `scale_and_reciprocal`: a positive range's subnormal scale becomes the
                // smallest normal one; a zero scale gets reciprocal 0.
                let small = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(range, zero),
                    _mm256_cmp_ps::<_CMP_LT_OQ>(s, tiny),
                );
                let s = _mm256_blendv_ps(s, tiny, small);
                let recon = _mm256_add_ps(lo, _mm256_mul_ps(max, s));
                for y in [range, recon] {
                    let m = _mm256_and_si256(_mm256_castps_si256(y), abs);
                    bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(m, finite));
                }
                let r = _mm256_and_ps(_mm256_div_ps(one, s), _mm256_cmp_ps::<_CMP_GT_OQ>(s, zero));
                _mm256_storeu_ps(h8.as_mut_ptr(), s);
                _mm256_storeu_ps(i8.as_mut_ptr(), r);
            }
            i += 8;
        }
        let tail =
            super::finish_scales_scalar(&los[main..], &mut his[main..], &mut inv[main..], max_code);
        tail && _mm256_movemask_ps(_mm256_castsi256_ps(bad)) == 0
    }

    /// Eight codes (one per `i32` lane); folds them into `worst` (unsigned maximum).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn codes8(v: __m256, z: __m256, inv: __m256, worst: &mut __m256i) -> __m256i {
        let c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(v, z), inv));
        *worst = _mm256_max_epu32(*worst, c);
        c
    }

    /// [`codes_valid`] of the eight lanes of `worst`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn lanes_valid<const B: u32>(worst: __m256i) -> bool {
        let mut w = [0u32; 8];
        // SAFETY: `w` is 32 writable bytes; unaligned store.
        unsafe { _mm256_storeu_si256(w.as_mut_ptr().cast(), worst) };
        codes_valid(
            w.into_iter().fold(0, u32::max),
            quant_bits::<B>().max_code(),
        )
    }

    /// Packs 32 codes (four registers of `i32` codes in `0..=max_code`, in order) at `B` bits
    /// into `out` (`4 * B` bytes).
    ///
    /// # Safety
    /// `out` must be valid for writing `4 * B` bytes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn store32<const B: u32>(c: [__m256i; 4], out: *mut u8) {
        // i32 -> u16 -> u8 packs interleave 128-bit lanes; the permutation restores order.
        let p01 = _mm256_packus_epi32(c[0], c[1]);
        let p23 = _mm256_packus_epi32(c[2], c[3]);
        let b = _mm256_packus_epi16(p01, p23);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        if B == 8 {
            // SAFETY: the caller provides 32 writable bytes; unaligned store.
            unsafe { _mm256_storeu_si256(out.cast(), b) };
        } else if B == 4 {
            // b0 + 16 * b1 per byte pair.
            let w = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x1001));
            let lo = _mm256_castsi256_si128(w);
            let hi = _mm256_extracti128_si256::<1>(w);
            // SAFETY: the caller provides 16 writable bytes; unaligned store.
            unsafe { _mm_storeu_si128(out.cast(), _mm_packus_epi16(lo, hi)) };
        } else {
            // (b0 + 4 b1) + 16 (b2 + 4 b3) per byte quadruple.
            let w = _mm256_maddubs_epi16(b, _mm256_set1_epi16(0x0401));
            let d = _mm256_madd_epi16(w, _mm256_set1_epi32(0x0010_0001));
            let lo = _mm256_castsi256_si128(d);
            let hi = _mm256_extracti128_si256::<1>(d);
            let h = _mm_packus_epi32(lo, hi);
            // SAFETY: the caller provides 8 writable bytes; the low 8 bytes are stored.
            unsafe { _mm_storel_epi64(out.cast(), _mm_packus_epi16(h, h)) };
        }
    }

    /// Walks the groups of a row eight values at a time (`gs % 8 == 0`).
    struct Cursor {
        g: usize,
        rem: usize,
        gs: usize,
    }

    impl Cursor {
        #[inline(always)]
        fn new(gs: usize) -> Self {
            Self { g: 0, rem: 0, gs }
        }

        /// Group of the next eight values.
        #[inline(always)]
        fn next8(&mut self) -> usize {
            if self.rem == self.gs {
                self.g += 1;
                self.rem = 0;
            }
            self.rem += 8;
            self.g
        }
    }

    /// Parameter registers (zero-point, reciprocal) of the 8 values at column `c` of a row:
    /// loaded per column, or broadcast from the cursor's group (`GROUPED`). `p` holds the row's
    /// parameters.
    ///
    /// # Safety
    /// Per column, both arrays must hold `c + 8` values; per group, both arrays must hold the
    /// cursor's next group (the row's parameters cover its `cols / gs` groups).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn params8<const GROUPED: bool>(
        p: [&[f32]; 2],
        c: usize,
        cur: &mut Cursor,
    ) -> [__m256; 2] {
        let mut out = [_mm256_setzero_ps(); 2];
        if GROUPED {
            let g = cur.next8();
            for (o, a) in out.iter_mut().zip(p) {
                debug_assert!(g < a.len());
                // SAFETY: the caller guarantees `g < a.len()`.
                *o = _mm256_set1_ps(unsafe { *a.as_ptr().add(g) });
            }
        } else {
            for (o, a) in out.iter_mut().zip(p) {
                debug_assert!(c + 8 <= a.len());
                // SAFETY: the caller guarantees `c + 8 <= a.len()`; unaligned load.
                *o = unsafe { _mm256_loadu_ps(a.as_ptr().add(c)) };
            }
        }
        out
    }

    /// The parameters of row `r`: all `cols` of them per column, its groups if `GROUPED`.
    #[inline(always)]
    fn row_params<const GROUPED: bool>(p: &[f32], r: usize, per_row: usize) -> &[f32] {
        if GROUPED {
            &p[r * per_row..(r + 1) * per_row]
        } else {
            p
        }
    }

    /// AVX2 twin of `encode_scalar`: per-column parameters, or per group (`GROUPED`,
    /// `gs % 8 == 0`). `p` = zero-points, reciprocals.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn encode_avx2<const GROUPED: bool>(
        bits: QuantBits,
        x: &[f32],
        cols: usize,
        gs: usize,
        p: [&[f32]; 2],
        packed: &mut [u8],
    ) -> bool {
        match bits {
            QuantBits::B8 => encode_bits::<8, GROUPED>(x, cols, gs, p, packed),
            QuantBits::B4 => encode_bits::<4, GROUPED>(x, cols, gs, p, packed),
            QuantBits::B2 => encode_bits::<2, GROUPED>(x, cols, gs, p, packed),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn encode_bits<const B: u32, const GROUPED: bool>(
        x: &[f32],
        cols: usize,
        gs: usize,
        p: [&[f32]; 2],
        packed: &mut [u8],
    ) -> bool {
        if GROUPED && gs.is_multiple_of(32) {
            return encode_flat_groups::<B>(x, gs, p, packed);
        }
        if !GROUPED && cols.is_multiple_of(32) {
            return encode_rows_by_32::<B>(x, cols, p, packed);
        }
        let row_bytes = quant_bits::<B>().packed_len(cols);
        let per_row = cols / gs;
        let mut worst = _mm256_setzero_si256();
        let mut tail_worst = 0u32;
        for (r, (row, out)) in x
            .chunks_exact(cols)
            .zip(packed.chunks_exact_mut(row_bytes))
            .enumerate()
        {
            let rp = [
                row_params::<GROUPED>(p[0], r, per_row),
                row_params::<GROUPED>(p[1], r, per_row),
            ];
            encode_row::<B, GROUPED>(row, gs, rp, out, &mut worst);
            encode_tail::<B, GROUPED>(row, r, cols, gs, p, out, &mut tail_worst);
        }
        lanes_valid::<B>(worst) && codes_valid(tail_worst, quant_bits::<B>().max_code())
    }

    /// Per-column parameters on rows of a multiple of 32 values: strips of 32 columns, whose
    /// zero-points and reciprocals stay in registers down the rows.
    #[target_feature(enable = "avx2,fma")]
    fn encode_rows_by_32<const B: u32>(
        x: &[f32],
        cols: usize,
        p: [&[f32]; 2],
        packed: &mut [u8],
    ) -> bool {
        let [zs, invs] = p;
        assert!(zs.len() == cols && invs.len() == cols);
        assert_eq!(packed.len(), x.len() * B as usize / 8);
        let rows = x.len() / cols;
        let row_bytes = cols * B as usize / 8;
        let (xp, op) = (x.as_ptr(), packed.as_mut_ptr());
        let mut worst = _mm256_setzero_si256();
        let mut c = 0;
        while c < cols {
            // SAFETY: `c + 32 <= cols`, the length of `zs` and `invs`; unaligned loads.
            let (z, inv) = unsafe {
                (
                    [0, 8, 16, 24].map(|k| _mm256_loadu_ps(zs.as_ptr().add(c + k))),
                    [0, 8, 16, 24].map(|k| _mm256_loadu_ps(invs.as_ptr().add(c + k))),
                )
            };
            for r in 0..rows {
                let mut codes = [_mm256_setzero_si256(); 4];
                for (k, code) in codes.iter_mut().enumerate() {
                    // SAFETY: `r < rows` and `c + 8k + 8 <= cols`, inside `x`; unaligned load.
                    let v = unsafe { _mm256_loadu_ps(xp.add(r * cols + c + 8 * k)) };
                    *code = codes8(v, z[k], inv[k], &mut worst);
                }
                // SAFETY: codes `c..c + 32` of row `r` pack into `4 * B` bytes at
                // `r * row_bytes + c * B / 8`, inside `packed` (`rows * row_bytes` bytes).
                unsafe { store32::<B>(codes, op.add(r * row_bytes + c * B as usize / 8)) };
            }
            c += 32;
        }
        lanes_valid::<B>(worst)
    }

    /// Per-row groups of a multiple of 32 values: the groups of consecutive rows are
    /// consecutive in `x` and in `packed`, so they are encoded as one flat sequence.
    #[target_feature(enable = "avx2,fma")]
    fn encode_flat_groups<const B: u32>(
        x: &[f32],
        gs: usize,
        [zs, invs]: [&[f32]; 2],
        packed: &mut [u8],
    ) -> bool {
        let groups = x.len() / gs;
        assert!(zs.len() == groups && invs.len() == groups);
        assert_eq!(packed.len(), x.len() * B as usize / 8);
        let (xp, op) = (x.as_ptr(), packed.as_mut_ptr());
        let mut worst = _mm256_setzero_si256();
        for (g, (&z, &inv)) in zs.iter().zip(invs).enumerate() {
            let (zv, iv) = (_mm256_set1_ps(z), _mm256_set1_ps(inv));
            let base = g * gs;
            let mut c = base;
            while c < base + gs {
                // SAFETY: `c + 32 <= (g + 1) * gs <= x.len()`; unaligned loads.
                let v = unsafe {
                    [
                        _mm256_loadu_ps(xp.add(c)),
                        _mm256_loadu_ps(xp.add(c + 8)),
                        _mm256_loadu_ps(xp.add(c + 16)),
                        _mm256_loadu_ps(xp.add(c + 24)),
                    ]
                };
                let codes = v.map(|v| codes8(v, zv, iv, &mut worst));
                // SAFETY: codes `c..c + 32` pack into `4 * B` bytes at `c * B / 8`, inside
                // `packed` (`x.len() * B / 8` bytes).
                unsafe { store32::<B>(codes, op.add(c * B as usize / 8)) };
                c += 32;
            }
        }
        lanes_valid::<B>(worst)
    }

    /// Codes of the whole blocks of 32 of a row (per column, or per group with `gs % 8 == 0`;
    /// groups of a multiple of 32 take [`encode_flat_groups`]), folded into `worst`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn encode_row<const B: u32, const GROUPED: bool>(
        row: &[f32],
        gs: usize,
        rp: [&[f32]; 2],
        out: &mut [u8],
        worst: &mut __m256i,
    ) {
        let main = row.len() / 32 * 32;
        assert!(out.len() >= main * B as usize / 8);
        let need = if GROUPED { row.len() / gs } else { row.len() };
        assert!(rp.iter().all(|a| a.len() >= need));
        let (xp, op) = (row.as_ptr(), out.as_mut_ptr());
        let mut cur = Cursor::new(gs);
        let mut c = 0;
        while c < main {
            let mut codes = [_mm256_setzero_si256(); 4];
            for (k, code) in codes.iter_mut().enumerate() {
                let ck = c + 8 * k;
                // SAFETY: `ck + 8 <= cols` values per column; the cursor stays in the row's
                // `cols / gs` groups.
                let [z, inv] = unsafe { params8::<GROUPED>(rp, ck, &mut cur) };
                // SAFETY: `ck + 8 <= main <= row.len()`; unaligned load.
                let v = unsafe { _mm256_loadu_ps(xp.add(ck)) };
                *code = codes8(v, z, inv, worst);
            }
            // SAFETY: codes `c..c + 32` pack into `4 * B` bytes at `c * B / 8`, inside `out`
            // (checked above).
            unsafe { store32::<B>(codes, op.add(c * B as usize / 8)) };
            c += 32;
        }
    }

    /// The last `cols % 32` values of row `r` (a multiple of 4), through a stack buffer, as the
    /// scalar twin (folding into `worst`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn encode_tail<const B: u32, const GROUPED: bool>(
        row: &[f32],
        r: usize,
        cols: usize,
        gs: usize,
        [zs, invs]: [&[f32]; 2],
        out: &mut [u8],
        worst: &mut u32,
    ) {
        let main = cols / 32 * 32;
        if main == cols {
            return;
        }
        let bits = quant_bits::<B>();
        let mut buf = [0u8; 32];
        let n = cols - main;
        let gs = if GROUPED { gs } else { 0 };
        for (i, o) in buf[..n].iter_mut().enumerate() {
            let q = param_index(r, main + i, cols, gs);
            *o = fast_code(row[main + i], zs[q], invs[q], worst);
        }
        let o = bits.packed_len(main);
        super::pack_codes(&buf[..n], bits, &mut out[o..o + bits.packed_len(n)]);
    }

    /// The `QuantBits` of `B` bits.
    #[inline(always)]
    const fn quant_bits<const B: u32>() -> QuantBits {
        match B {
            8 => QuantBits::B8,
            4 => QuantBits::B4,
            _ => QuantBits::B2,
        }
    }

    /// Eight codes (as `i32` lanes) packed at `B` bits from `p`.
    ///
    /// # Safety
    /// `p` must be valid for reading `B` bytes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_codes8<const B: u32>(p: *const u8) -> __m256i {
        if B == 8 {
            // SAFETY: the caller provides 8 readable bytes; `loadl` reads 8, unaligned.
            _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(p.cast()) })
        } else {
            let (w, s, m) = if B == 4 {
                // SAFETY: the caller provides 4 readable bytes.
                let w = unsafe { p.cast::<u32>().read_unaligned() };
                (w, _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), 0xf)
            } else {
                // SAFETY: the caller provides 2 readable bytes.
                let w = u32::from(unsafe { p.cast::<u16>().read_unaligned() });
                (w, _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14), 3)
            };
            _mm256_and_si256(
                _mm256_srlv_epi32(_mm256_set1_epi32(w as i32), s),
                _mm256_set1_epi32(m),
            )
        }
    }

    /// `z + code * s` of eight codes at `p`, stored at `y`.
    ///
    /// # Safety
    /// `p` must be valid for reading `B` bytes and `y` for writing 8 floats.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn decode8<const B: u32>(p: *const u8, z: __m256, s: __m256, y: *mut f32) {
        // SAFETY: forwarded from the caller.
        let f = _mm256_cvtepi32_ps(unsafe { load_codes8::<B>(p) });
        // SAFETY: forwarded from the caller; unaligned store.
        unsafe { _mm256_storeu_ps(y, _mm256_add_ps(z, _mm256_mul_ps(f, s))) };
    }

    /// AVX2 twin of `decode_scalar`: per-column parameters, or per group (`GROUPED`,
    /// `gs % 8 == 0`).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn decode_avx2<const GROUPED: bool>(
        bits: QuantBits,
        packed: &[u8],
        cols: usize,
        gs: usize,
        zs: &[f32],
        ss: &[f32],
        out: &mut [f32],
    ) {
        match bits {
            QuantBits::B8 => decode_bits::<8, GROUPED>(packed, cols, gs, zs, ss, out),
            QuantBits::B4 => decode_bits::<4, GROUPED>(packed, cols, gs, zs, ss, out),
            QuantBits::B2 => decode_bits::<2, GROUPED>(packed, cols, gs, zs, ss, out),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    fn decode_bits<const B: u32, const GROUPED: bool>(
        packed: &[u8],
        cols: usize,
        gs: usize,
        zs: &[f32],
        ss: &[f32],
        out: &mut [f32],
    ) {
        // Byte offset of code `c` in a row.
        let at = |c: usize| c * B as usize / 8;
        let (pp, yp) = (packed.as_ptr(), out.as_mut_ptr());
        let main = cols / 8 * 8;
        if GROUPED {
            // The groups of consecutive rows are consecutive in `packed` and `out`: one flat
            // sequence, one broadcast per group.
            let groups = out.len() / gs;
            assert!(zs.len() == groups && ss.len() == groups);
            assert_eq!(packed.len(), out.len() * B as usize / 8);
            // Two walking pointers (the code and output offsets derived from a group index
            // cost the loop a multiply and masks per group, about 10 % of the compressor's
            // decompression): blocks of 32, then of 8.
            let (mut p, mut y) = (pp, yp);
            for (&z, &s) in zs.iter().zip(ss) {
                let (z, s) = (_mm256_set1_ps(z), _mm256_set1_ps(s));
                for _ in 0..gs / 32 {
                    for k in 0..4 {
                        // SAFETY: the groups tile `out` exactly (`groups * gs == out.len()`)
                        // and `packed` holds their codes (`out.len() * B / 8` bytes), so the 8
                        // values at `y + 8k` and their `B` code bytes at `p + at(8k)` are in
                        // bounds.
                        unsafe { decode8::<B>(p.add(at(8 * k)), z, s, y.add(8 * k)) };
                    }
                    p = p.wrapping_add(at(32));
                    y = y.wrapping_add(32);
                }
                for _ in 0..gs % 32 / 8 {
                    // SAFETY: as above, for the group's remaining blocks of 8 (`gs % 8 == 0`).
                    unsafe { decode8::<B>(p, z, s, y) };
                    p = p.wrapping_add(at(8));
                    y = y.wrapping_add(8);
                }
            }
            return;
        }
        let bits = quant_bits::<B>();
        let row_bytes = bits.packed_len(cols);
        let rows = out.len() / cols;
        // Strips of 32 channels whose zero-points and scales stay in registers down the rows.
        let mut c0 = 0;
        while c0 + 32 <= cols {
            let (z4, s4) = (&zs[c0..c0 + 32], &ss[c0..c0 + 32]);
            // SAFETY: `z4` and `s4` hold 32 floats; unaligned loads.
            let (z, s) = unsafe {
                let (zp, sp) = (z4.as_ptr(), s4.as_ptr());
                (
                    [
                        _mm256_loadu_ps(zp),
                        _mm256_loadu_ps(zp.add(8)),
                        _mm256_loadu_ps(zp.add(16)),
                        _mm256_loadu_ps(zp.add(24)),
                    ],
                    [
                        _mm256_loadu_ps(sp),
                        _mm256_loadu_ps(sp.add(8)),
                        _mm256_loadu_ps(sp.add(16)),
                        _mm256_loadu_ps(sp.add(24)),
                    ],
                )
            };
            for r in 0..rows {
                let (p, y) = (r * row_bytes + at(c0), r * cols + c0);
                for k in 0..4 {
                    // SAFETY: columns `c0 + 8k .. c0 + 8k + 8 <= cols` of row `r < rows`.
                    unsafe { decode8::<B>(pp.add(p + at(8 * k)), z[k], s[k], yp.add(y + 8 * k)) };
                }
            }
            c0 += 32;
        }
        while c0 < main {
            // SAFETY: `c0 + 8 <= main <= cols`; unaligned loads.
            let (z, s) = unsafe {
                (
                    _mm256_loadu_ps(zs.as_ptr().add(c0)),
                    _mm256_loadu_ps(ss.as_ptr().add(c0)),
                )
            };
            for r in 0..rows {
                // SAFETY: columns `c0 .. c0 + 8 <= cols` of row `r < rows`.
                unsafe {
                    decode8::<B>(pp.add(r * row_bytes + at(c0)), z, s, yp.add(r * cols + c0));
                };
            }
            c0 += 8;
        }
        // Tail of 4 codes (byte-aligned: `main` is a multiple of 8).
        if main < cols {
            for (y, cs) in out
                .chunks_exact_mut(cols)
                .zip(packed.chunks_exact(row_bytes))
            {
                let mut b = [0u8; 4];
                let o = bits.packed_len(main);
                super::unpack_codes(&cs[o..], bits, &mut b[..cols - main]);
                for (c, (yo, &code)) in (main..).zip(y[main..].iter_mut().zip(&b)) {
                    *yo = zs[c] + f32::from(code) * ss[c];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    const ALL_BITS: [QuantBits; 3] = [QuantBits::B2, QuantBits::B4, QuantBits::B8];

    fn avx2() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Some(Isa::Avx2Fma);
        }
        None
    }

    /// Random values with specials sprinkled in: NaN, infinities, signed zeros, repeats.
    fn data(rng: &mut StdRng, n: usize, specials: bool) -> Vec<f32> {
        (0..n)
            .map(|_| {
                if specials {
                    match rng.random_range(0..40) {
                        0 => return f32::NAN,
                        1 => return f32::INFINITY,
                        2 => return f32::NEG_INFINITY,
                        3 => return -0.0,
                        4 => return 0.0,
                        _ => {}
                    }
                }
                rng.random_range(-8.0f32..8.0)
            })
            .collect()
    }

    fn bits_of(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn min_max_twins_are_bit_identical() {
        let Some(isa) = avx2() else { return };
        let mut rng = StdRng::seed_from_u64(1);
        for case in 0..400 {
            let cols = 4 * rng.random_range(1..80);
            let rows = rng.random_range(1..40);
            let x = data(&mut rng, rows * cols, case % 2 == 0);
            let (mut l1, mut h1, mut l2, mut h2) = (
                vec![0.0; cols],
                vec![0.0; cols],
                vec![0.0; cols],
                vec![0.0; cols],
            );
            column_min_max(isa, &x, cols, &mut l1, &mut h1);
            column_min_max_scalar(&x, cols, &mut l2, &mut h2);
            assert_eq!((bits_of(&l1), bits_of(&h1)), (bits_of(&l2), bits_of(&h2)));

            let gs = [4, 8, 12, 16, 32, 64][rng.random_range(0..6)];
            let n = gs * rng.random_range(1..20);
            let x = data(&mut rng, n, case % 2 == 0);
            let g = n / gs;
            let (mut l1, mut h1, mut l2, mut h2) =
                (vec![0.0; g], vec![0.0; g], vec![0.0; g], vec![0.0; g]);
            group_min_max(isa, &x, gs, &mut l1, &mut h1);
            group_min_max_scalar(&x, gs, &mut l2, &mut h2);
            assert_eq!((bits_of(&l1), bits_of(&h1)), (bits_of(&l2), bits_of(&h2)));
        }
    }

    #[test]
    fn min_max_follows_its_documented_order() {
        // A NaN in the first row survives; later NaNs are skipped.
        let x = [f32::NAN, 1.0, 2.0, 4.0, f32::NAN, 5.0, 3.0, 0.0];
        let (mut l, mut h) = ([0.0; 4], [0.0; 4]);
        column_min_max_scalar(&x, 4, &mut l, &mut h);
        assert!(l[0].is_nan() && h[0].is_nan());
        assert_eq!(
            (l[1..].to_vec(), h[1..].to_vec()),
            (vec![1.0, 2.0, 0.0], vec![5.0, 3.0, 4.0])
        );
        let g: Vec<f32> = (0..19).map(|i| ((i * 7) % 19) as f32 - 9.0).collect();
        assert_eq!(min_max8(&g), (-9.0, 9.0));
        assert_eq!(min_max8(&[4.0]), (4.0, 4.0));
    }

    #[test]
    fn encode_and_decode_twins_are_bit_identical() {
        let Some(isa) = avx2() else { return };
        let mut rng = StdRng::seed_from_u64(2);
        for case in 0..800 {
            let bits = ALL_BITS[(case / 3) % 3];
            let max = f32::from(bits.max_code());
            let gs: usize = [8, 16, 32, 64][rng.random_range(0..4)];
            let cols = if case % 4 == 0 {
                4 * rng.random_range(1..90)
            } else {
                gs * rng.random_range(1..6)
            };
            let rows = rng.random_range(1..12);
            let n = rows * cols;
            let per_col = case % 2 == 0 || !cols.is_multiple_of(gs);
            let groups = if per_col { cols } else { n / gs };
            // Random parameters, or unit steps from 0 (ties and near-ties below).
            let random = case % 3 == 0;
            let zs: Vec<f32> = (0..groups)
                .map(|_| {
                    if random {
                        rng.random_range(-9.0f32..0.0)
                    } else {
                        0.0
                    }
                })
                .collect();
            let ss: Vec<f32> = (0..groups)
                .map(|_| {
                    if random {
                        rng.random_range(0.05f32..2.0)
                    } else {
                        1.0
                    }
                })
                .collect();
            let mut invs: Vec<f32> = ss.iter().map(|s| 1.0 / s).collect();
            let gs_or_col = if per_col { 0 } else { gs };
            // Values in their group's range `z + [0, max] / inv`: random, on half steps (ties)
            // or one ulp above them; specials (NaN, infinities) in some cases.
            let specials = case % 5 == 0;
            let mut x: Vec<f32> = (0..n)
                .map(|i| {
                    let q = param_index(i / cols, i % cols, cols, gs_or_col);
                    let k = rng.random_range(0..bits.max_code()) as f32 + 0.5;
                    match case % 3 {
                        1 => k,
                        2 => f32::from_bits(k.to_bits() + 1),
                        _ => zs[q] + rng.random_range(0.0..=max) / invs[q],
                    }
                })
                .collect();
            if specials {
                let specials = data(&mut rng, n, true);
                for (v, s) in x.iter_mut().zip(specials) {
                    if !s.is_finite() {
                        *v = s;
                    }
                }
                invs[0] = 0.0;
            }
            let pb = rows * bits.packed_len(cols);
            let (mut p1, mut p2) = (vec![0u8; pb], vec![0u8; pb]);
            let (v1, v2) = if per_col {
                (
                    encode_cols(isa, bits, &x, cols, &zs, &invs, &mut p1),
                    encode_cols_scalar(bits, &x, cols, &zs, &invs, &mut p2),
                )
            } else {
                (
                    encode_groups(isa, bits, &x, cols, gs, &zs, &invs, &mut p1),
                    encode_groups_scalar(bits, &x, cols, gs, &zs, &invs, &mut p2),
                )
            };
            // Valid exactly when every code is finite and in `0..=max`; the codes are only
            // specified then.
            let valid = x.iter().enumerate().all(|(i, &v)| {
                let q = param_index(i / cols, i % cols, cols, gs_or_col);
                let t = ((v - zs[q]) * invs[q]).round_ties_even();
                (0.0..=max).contains(&t)
            });
            assert_eq!((v1, v2), (valid, valid), "case {case}");
            if valid {
                assert_eq!(p1, p2, "case {case}");
            }

            let packed: Vec<u8> = (0..pb).map(|_| rng.random()).collect();
            let (mut y1, mut y2) = (vec![0.0; n], vec![0.0; n]);
            if per_col {
                decode_cols(isa, bits, &packed, cols, &zs, &ss, &mut y1);
                decode_cols_scalar(bits, &packed, cols, &zs, &ss, &mut y2);
            } else {
                decode_groups(isa, bits, &packed, cols, gs, &zs, &ss, &mut y1);
                decode_groups_scalar(bits, &packed, cols, gs, &zs, &ss, &mut y2);
            }
            assert_eq!(bits_of(&y1), bits_of(&y2), "case {case}");
        }
    }

    /// The kernels' codes equal the reference encoder's (`quantize_grouped`'s clamped
    /// `round_ties_even((v - z) * inv)`) on data whose parameters come from the data itself,
    /// with exact ties, constant and subnormal-range groups.
    #[test]
    fn codes_equal_the_reference_encoder() {
        let isas: Vec<Isa> = std::iter::once(Isa::Scalar).chain(avx2()).collect();
        let mut rng = StdRng::seed_from_u64(4);
        for case in 0..300 {
            let bits = ALL_BITS[case % 3];
            let max_code = f32::from(bits.max_code());
            let cols = 4 * rng.random_range(1..40);
            let rows = rng.random_range(1..10);
            let n = rows * cols;
            let x: Vec<f32> = (0..n)
                .map(|i| match (case / 3) % 4 {
                    // Exact ties: half steps of a unit scale (rows 0 and 1 pin the range to
                    // `0..=max`).
                    0 if i / cols == 0 => 0.0,
                    0 if i / cols == 1 => max_code,
                    0 => {
                        (rng.random_range(0..2 * bits.max_code() as u32) as f32 * 0.5).min(max_code)
                    }
                    // A constant or a subnormal-range column.
                    1 if i % cols == 0 => 1.5,
                    1 if i % cols == 4 => 1e-40 * (i / cols % 3) as f32,
                    _ => rng.random_range(-8.0f32..8.0),
                })
                .collect();
            for &isa in &isas {
                let (mut lo, mut hi, mut inv) = (vec![0.0; cols], vec![0.0; cols], vec![0.0; cols]);
                column_min_max(isa, &x, cols, &mut lo, &mut hi);
                let maxima = hi.clone();
                assert!(finish_scales(isa, &lo, &mut hi, &mut inv, max_code));
                for c in 0..cols {
                    let want = crate::quant::scale_and_reciprocal(maxima[c] - lo[c], max_code);
                    assert_eq!((hi[c], inv[c]), want, "case {case} {isa:?} column {c}");
                }
                let mut packed = vec![0u8; rows * bits.packed_len(cols)];
                assert!(encode_cols(isa, bits, &x, cols, &lo, &inv, &mut packed));
                let mut codes = vec![0u8; n];
                unpack_codes(&packed, bits, &mut codes);
                for (i, (&c, &v)) in codes.iter().zip(&x).enumerate() {
                    let (z, r) = (lo[i % cols], inv[i % cols]);
                    let want = crate::quant::encode_code(v, z, r, max_code);
                    assert_eq!(c, want, "case {case} {isa:?} value {i}: {v}");
                }
            }
        }
    }

    #[test]
    fn finish_scales_twins_are_bit_identical() {
        let Some(isa) = avx2() else { return };
        let mut rng = StdRng::seed_from_u64(3);
        for case in 0..300 {
            let n = rng.random_range(0..40);
            let max_code = [3.0, 15.0, 255.0][case % 3];
            let mut los = data(&mut rng, n, case % 3 == 0);
            let mut his: Vec<f32> = los
                .iter()
                .map(|&l| l + rng.random_range(0.0f32..4.0))
                .collect();
            if case % 4 == 1 && n > 0 {
                // Constant, subnormal-range and overflowing groups.
                let i = rng.random_range(0..n);
                his[i] = los[i];
                let j = rng.random_range(0..n);
                his[j] = los[j] + 1e-40;
                if case % 8 == 1 {
                    los[i] = -3e38;
                    his[i] = 3e38;
                }
            }
            let (mut h1, mut h2) = (his.clone(), his);
            let (mut i1, mut i2) = (vec![0.0; n], vec![0.0; n]);
            let r1 = finish_scales(isa, &los, &mut h1, &mut i1, max_code);
            let r2 = finish_scales_scalar(&los, &mut h2, &mut i2, max_code);
            assert_eq!(r1, r2, "case {case}");
            assert_eq!(
                (bits_of(&h1), bits_of(&i1)),
                (bits_of(&h2), bits_of(&i2)),
                "case {case}"
            );
        }
    }
}
