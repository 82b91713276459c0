//! Strided matrix products, the column-wise online softmax and the transpose of attention
//! tiles.
//!
//! Part of the [`simd`](super) module (the one place allowed to use `unsafe`); same policy: an
//! AVX2 + FMA kernel dispatched on the cached [`isa`], a portable twin, tests comparing them.
//!
//! - [`gemm`]: `C = A·B` or `C = diag(s)·C + A·B` (`s` scales the rows), `A` read through two
//!   strides (so `A` can be a row-major matrix or the transpose of one without packing), `B` and
//!   `C` row-major. The AVX2 kernel holds a 6 × 16 block of `C` in twelve 8-lane accumulators
//!   (six broadcasts of `A` and two loads of `B` per twelve FMAs), so the two FMA pipes are
//!   fed from twelve independent chains; row edges use 4–5 rows (1–3 only when `m < 4`),
//!   column edges 8 or masked columns. Every element is its own chain, summed in order of `p`, starting from `0` or from
//!   `c·s` (one rounded product): the twin does the same with a separate multiply and add, the
//!   AVX2 kernel with one fused multiply-add, so both are within `k·ε·Σ|aₚbₚ|` (plus the
//!   starting value's rounding) of the exact value, ε = 2⁻²⁴, and exact inputs (small integers)
//!   give bit-identical results. A column's arithmetic never depends on which block or edge
//!   case it falls in.
//! - [`online_softmax_cols_exp2`]: one step of the online softmax, column by column, on a score
//!   tile whose columns are independent rows of attention (base-2 logits): every reduction is
//!   vertical (lane-wise), so no horizontal sum or maximum is needed. The exponential is a
//!   degree-5 minimax polynomial on `[-1/2, 1/2]` (see `EXP2_P`) times `2^n` built from the bits
//!   of a rounded float: the twin evaluates it by Horner's rule with separate multiplies and adds,
//!   the AVX2 kernel by Horner's rule with FMAs; each is within `2.5e-7` (relative) of the exact
//!   `2^x` on `[-126, 0]` (tested against `f64`). Both clamp the argument to `-127` first and
//!   build `2^n` by shifting the bits of `x + 1.5·2^23 + 127` (see `EXP2_MAGIC`), which gives
//!   `+0.0` for `n = -127`: arguments at or below `-126.5` (including `-inf`, a masked score)
//!   give exactly 0, those in `(-126.5, -126)` a subnormal close to `2^x`. The AVX2 kernel
//!   evaluates one row × one or two 8-column blocks per step; the out-of-order core overlaps
//!   the rows.
//!
//! - [`transpose_scaled`]: `dst[c·ldd + r] = src[r·cols + c] · scale` (packing a query tile
//!   as one column per query); AVX2 8 × 8 register transposes, bit-identical twin.
//!
//! # Measured
//! Inside `squish_attn::FlashPrefillKernel` (2-core Zen 3 VM at ≈ 3.2 GHz, `perf` profile and
//! a min-of-batches harness): the AVX2 [`gemm`] runs at ≈ 93 GFLOP/s on 64 × 64 tiles with
//! `k = 32` (≈ 90 % of the 102 GFLOP/s AVX2 + FMA peak) and ≈ 80 GFLOP/s with `k = 128`; the
//! softmax step costs ≈ 8.5 cycles per 8 scores (≈ 10 with Horner's rule and the clamp). The
//! kernel went from 0.68 ms to 0.28 ms at the seed's size and from 34–39 to 74–77 GFLOP/s at
//! long sequences compared with the 4 × 8 multiply-then-add kernel over packed panels; with
//! `SQUISH_SIMD=off` the portable twins are slightly faster than the old portable path
//! (0.89 vs 0.94 ms at the seed's size).

use super::{Isa, isa};
use crate::ops::GemmLayout;

/// Largest row block of the AVX2 product (twelve accumulators with two vectors per row).
#[cfg(target_arch = "x86_64")]
const MR: usize = 6;

/// Checks that `layout` stays inside `a`, `b`, `c` and `scale`.
///
/// # Panics
/// If an index would be out of bounds, a stride product overflows, or `ldc < n`.
fn check(l: &GemmLayout, a: &[f32], b: &[f32], c: &[f32], scale: Option<&[f32]>) {
    let at = |x: usize, y: usize| {
        let Some(v) = x.checked_mul(y) else {
            panic!("gemm_into: layout overflows usize")
        };
        v
    };
    let sum = |x: usize, y: usize| {
        let Some(v) = x.checked_add(y) else {
            panic!("gemm_into: layout overflows usize")
        };
        v
    };
    assert!(l.ldc >= l.n, "gemm_into: ldc ({}) < n ({})", l.ldc, l.n);
    if l.m == 0 || l.n == 0 {
        return;
    }
    let c_need = sum(at(l.m - 1, l.ldc), l.n);
    assert!(
        c.len() >= c_need,
        "gemm_into: c has {} values, the layout needs {c_need}",
        c.len()
    );
    if let Some(s) = scale {
        assert!(
            s.len() >= l.m,
            "gemm_into: row_scale has {} values, m is {}",
            s.len(),
            l.m
        );
    }
    if l.k == 0 {
        return;
    }
    let a_need = sum(sum(at(l.m - 1, l.a_row), at(l.k - 1, l.a_col)), 1);
    assert!(
        a.len() >= a_need,
        "gemm_into: a has {} values, the layout needs {a_need}",
        a.len()
    );
    let b_need = sum(at(l.k - 1, l.ldb), l.n);
    assert!(
        b.len() >= b_need,
        "gemm_into: b has {} values, the layout needs {b_need}",
        b.len()
    );
}

/// `C = A·B` (`scale = None`) or `C = diag(s)·C + A·B` (row `i` of `C` times `s[i]`), on the
/// layout `l`; dispatched. See the module docs for the agreement between the paths.
///
/// # Panics
/// If the layout does not fit the slices (see [`check`]).
pub(crate) fn gemm(l: &GemmLayout, a: &[f32], b: &[f32], c: &mut [f32], scale: Option<&[f32]>) {
    check(l, a, b, c, scale);
    if l.m == 0 || l.n == 0 {
        return;
    }
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected; `check` proved
        // every index the kernel reads or writes in bounds.
        Isa::Avx2Fma => unsafe { x86::gemm_avx2(l, a, b, c, scale) },
        Isa::Scalar => gemm_scalar(l, a, b, c, scale),
    }
}

/// Portable twin of [`gemm`]: each element starts from 0 or `c·s` and adds `a·b` (rounded
/// product, then rounded sum) in order of `p`. Blocks of up to 4 rows × 8 columns keep their
/// accumulators in registers (SSE2 on `x86_64`, NEON elsewhere); a last strip of fewer than 8
/// columns goes element by element with the same operations.
pub(crate) fn gemm_scalar(
    l: &GemmLayout,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    scale: Option<&[f32]>,
) {
    check(l, a, b, c, scale);
    if l.m == 0 || l.n == 0 {
        return;
    }
    let mut i = 0;
    while i < l.m {
        let rows = 4.min(l.m - i);
        let mut j = 0;
        while j + 8 <= l.n {
            // SAFETY (each arm): `check` passed above, `i + rows ≤ m` and `j + 8 ≤ n`.
            match rows {
                // SAFETY: as above.
                1 => unsafe { block_scalar::<1>(l, a, b, c, scale, i, j) },
                // SAFETY: as above.
                2 => unsafe { block_scalar::<2>(l, a, b, c, scale, i, j) },
                // SAFETY: as above.
                3 => unsafe { block_scalar::<3>(l, a, b, c, scale, i, j) },
                // SAFETY: as above.
                _ => unsafe { block_scalar::<4>(l, a, b, c, scale, i, j) },
            }
            j += 8;
        }
        for r in i..i + rows {
            for jj in j..l.n {
                let mut x = scale.map_or(0.0, |s| c[r * l.ldc + jj] * s[r]);
                for p in 0..l.k {
                    x += a[r * l.a_row + p * l.a_col] * b[p * l.ldb + jj];
                }
                c[r * l.ldc + jj] = x;
            }
        }
        i += rows;
    }
}

/// Rows `i .. i + R`, columns `j .. j + 8` of [`gemm_scalar`], accumulators in registers.
///
/// # Safety
/// The layout must have passed [`check`] for these slices, with `i + R ≤ m` and `j + 8 ≤ n`
/// (the reads of `A` are unchecked; everything else is indexed safely).
#[inline]
unsafe fn block_scalar<const R: usize>(
    l: &GemmLayout,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    scale: Option<&[f32]>,
    i: usize,
    j: usize,
) {
    let mut acc = [[0.0f32; 8]; R];
    if let Some(s) = scale {
        for (r, row) in acc.iter_mut().enumerate() {
            for (x, &old) in row.iter_mut().zip(&c[(i + r) * l.ldc + j..][..8]) {
                *x = old * s[i + r];
            }
        }
    }
    for p in 0..l.k {
        let (bv, _) = b[p * l.ldb + j..][..8].as_chunks::<8>();
        let bv = &bv[0];
        for (r, row) in acc.iter_mut().enumerate() {
            // SAFETY: `check` proved `A[i][p]` in bounds for every `i < m`, `p < k`, and
            // `i + R ≤ m` (the function's contract).
            let x = unsafe { *a.get_unchecked((i + r) * l.a_row + p * l.a_col) };
            for (o, &y) in row.iter_mut().zip(bv) {
                *o += x * y;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        c[(i + r) * l.ldc + j..][..8].copy_from_slice(row);
    }
}

/// Checks the slices of [`online_softmax_cols_exp2`]; returns the number of columns.
fn check_softmax(s: &[f32], ld: usize, rows: usize, m: &[f32], l: &[f32], alpha: &[f32]) -> usize {
    let cols = m.len();
    assert!(
        l.len() == cols && alpha.len() == cols,
        "online_softmax_cols_exp2: m, l and alpha have {}, {} and {} values",
        cols,
        l.len(),
        alpha.len()
    );
    assert!(
        ld >= cols,
        "online_softmax_cols_exp2: ld ({ld}) < columns ({cols})"
    );
    if rows > 0 && cols > 0 {
        let Some(need) = (rows - 1).checked_mul(ld).and_then(|x| x.checked_add(cols)) else {
            panic!("online_softmax_cols_exp2: layout overflows usize")
        };
        assert!(
            s.len() >= need,
            "online_softmax_cols_exp2: s has {} values, the layout needs {need}",
            s.len()
        );
    }
    cols
}

/// One online-softmax step on the columns of `s` (`rows` rows of stride `ld`, `m.len()`
/// columns); dispatched. See `ops::online_softmax_cols_exp2`.
///
/// # Panics
/// If the slices do not fit (see [`check_softmax`]).
pub(crate) fn online_softmax_cols_exp2(
    s: &mut [f32],
    ld: usize,
    rows: usize,
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
) {
    check_softmax(s, ld, rows, m, l, alpha);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected; `check_softmax`
        // proved every index in bounds.
        Isa::Avx2Fma => unsafe { x86::online_softmax_cols_exp2_avx2(s, ld, rows, m, l, alpha) },
        Isa::Scalar => online_softmax_cols_exp2_scalar(s, ld, rows, m, l, alpha),
    }
}

/// Portable twin of [`online_softmax_cols_exp2`]: the same steps per column, the exponential
/// by [`exp2_scalar`].
pub(crate) fn online_softmax_cols_exp2_scalar(
    s: &mut [f32],
    ld: usize,
    rows: usize,
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
) {
    let cols = check_softmax(s, ld, rows, m, l, alpha);
    if cols == 0 {
        return;
    }
    // Column maxima, row by row (vectorised over the columns).
    let mut mx = [0.0f32; 64];
    for c0 in (0..cols).step_by(64) {
        let w = 64.min(cols - c0);
        let mx = &mut mx[..w];
        mx.copy_from_slice(&m[c0..c0 + w]);
        for j in 0..rows {
            for (x, &v) in mx.iter_mut().zip(&s[j * ld + c0..][..w]) {
                *x = if v > *x { v } else { *x };
            }
        }
        // Shift: the new maximum, or 0 for a column with no finite score yet.
        let mut sh = [0.0f32; 64];
        for ((sh, &x), (a, &mo)) in sh
            .iter_mut()
            .zip(&*mx)
            .zip(alpha[c0..c0 + w].iter_mut().zip(&m[c0..c0 + w]))
        {
            *sh = if x == f32::NEG_INFINITY { 0.0 } else { x };
            *a = exp2_scalar(mo - *sh);
        }
        let mut sum = [0.0f32; 64];
        for j in 0..rows {
            let row = &mut s[j * ld + c0..][..w];
            for ((p, &sh), acc) in row.iter_mut().zip(&sh).zip(sum.iter_mut()) {
                *p = exp2_scalar(*p - sh);
                *acc += *p;
            }
        }
        for (((lv, &a), &acc), (mv, &x)) in l[c0..c0 + w]
            .iter_mut()
            .zip(&alpha[c0..c0 + w])
            .zip(&sum)
            .zip(m[c0..c0 + w].iter_mut().zip(&*mx))
        {
            *lv = *lv * a + acc;
            *mv = x;
        }
    }
}

/// `2^x` for `x ≤ 0` (and `-inf`), branch-free so that loops over it vectorise: the portable
/// twin of the AVX2 `exp2x8` (see the module docs). Relative error below `2.5e-7` on
/// `[-126, 0]`; `x ≤ -126.5` gives exactly 0 and `(-126.5, -126)` a subnormal close to `2^x`;
/// NaN stays NaN.
#[inline(always)]
pub(crate) fn exp2_scalar(x: f32) -> f32 {
    let xc = if x < -127.0 { -127.0 } else { x };
    let t = xc + EXP2_MAGIC;
    let n = t - EXP2_MAGIC;
    let f = xc - n;
    let p = EXP2_P[0];
    let p = p * f + EXP2_P[1];
    let p = p * f + EXP2_P[2];
    let p = p * f + EXP2_P[3];
    let p = p * f + EXP2_P[4];
    let p = p * f + EXP2_P[5];
    // See `EXP2_MAGIC`: 2^n, or 0 for n = -127.
    let scale = f32::from_bits(t.to_bits() << 23);
    p * scale
}

/// Checks the slices of [`transpose_scaled`].
fn check_transpose(src: &[f32], cols: usize, dst: &[f32], ldd: usize) -> usize {
    assert!(
        cols > 0 && src.len().is_multiple_of(cols),
        "transpose_scaled_into: src has {} values, not a multiple of cols ({cols})",
        src.len()
    );
    let rows = src.len() / cols;
    assert!(
        ldd >= rows,
        "transpose_scaled_into: ldd ({ldd}) < rows ({rows})"
    );
    let Some(need) = (cols - 1)
        .checked_mul(ldd)
        .and_then(|x| x.checked_add(rows))
    else {
        panic!("transpose_scaled_into: layout overflows usize")
    };
    assert!(
        rows == 0 || dst.len() >= need,
        "transpose_scaled_into: dst has {} values, the layout needs {need}",
        dst.len()
    );
    rows
}

/// `dst[c·ldd + r] = src[r·cols + c] · scale` for every row `r` and column `c` of the
/// row-major `src`; dispatched. Bit-identical on both paths (one multiply per element).
///
/// # Panics
/// If `cols = 0`, `src.len()` is not a multiple of `cols`, `ldd` is less than the number of
/// rows, or `dst` is too short.
pub(crate) fn transpose_scaled(src: &[f32], cols: usize, scale: f32, dst: &mut [f32], ldd: usize) {
    check_transpose(src, cols, dst, ldd);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected; `check_transpose`
        // proved the layout in bounds.
        Isa::Avx2Fma => unsafe { x86::transpose_scaled_avx2(src, cols, scale, dst, ldd) },
        Isa::Scalar => transpose_scaled_scalar(src, cols, scale, dst, ldd),
    }
}

/// Portable twin of [`transpose_scaled`].
pub(crate) fn transpose_scaled_scalar(
    src: &[f32],
    cols: usize,
    scale: f32,
    dst: &mut [f32],
    ldd: usize,
) {
    let rows = check_transpose(src, cols, dst, ldd);
    for (r, row) in src.chunks_exact(cols).enumerate().take(rows) {
        for (c, &x) in row.iter().enumerate() {
            dst[c * ldd + r] = x * scale;
        }
    }
}

/// `1.5 · 2^23 + 127`: for an argument `x` in `[-127, 1/2]`, `t = x + EXP2_MAGIC` is
/// `EXP2_MAGIC + n` exactly, `n` the integer nearest `x` (on a tie, the one with `n + 127`
/// even; `|x - n| ≤ 1/2` either way), and the low 9 bits of `t`'s bit pattern are `n + 127`,
/// so `t.to_bits() << 23` is the bit pattern of `2^n` (of `+0.0` for `n = -127`, which
/// flushes the result to 0).
const EXP2_MAGIC: f32 = 12_583_039.0;

/// Degree-5 polynomial for `2^f` on `[-1/2, 1/2]`, highest degree first: a minimax fit of the
/// relative error with the constant term pinned to 1 (`2^0` is exact), at most `9.2e-8` in
/// exact arithmetic; evaluated in `f32` on the test's 200 001 points of `[-126, 0]`, at most
/// `1.64e-7` with FMAs and `1.80e-7` with separate multiplies and adds.
/// Cephes' degree-6 `exp2f` polynomial is about twice as accurate and costs one more FMA per
/// eight scores, about 1.3 % of `FlashPrefillKernel` at the seed's size.
// The linear coefficient is the fit's, two ulps below ln 2 (which the lint would suggest).
#[allow(clippy::approx_constant)]
const EXP2_P: [f32; 6] = [
    1.326_473_2e-3,
    9.671_514e-3,
    5.550_733_6e-2,
    2.402_224_2e-1,
    6.931_47e-1,
    1.0,
];

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m256i, _CMP_EQ_OQ, _mm256_add_ps, _mm256_andnot_ps, _mm256_castps_si256,
        _mm256_castsi256_ps, _mm256_cmp_ps, _mm256_cmpgt_epi32, _mm256_fmadd_ps, _mm256_loadu_ps,
        _mm256_maskload_ps, _mm256_maskstore_ps, _mm256_max_ps, _mm256_mul_ps,
        _mm256_permute2f128_ps, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32,
        _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_slli_epi32, _mm256_storeu_ps, _mm256_sub_ps,
        _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };

    use super::{EXP2_MAGIC, EXP2_P, MR};
    use crate::ops::GemmLayout;

    /// `p + j`, or null if `p` is null (no row scale).
    fn offset(p: *const f32, j: usize) -> *const f32 {
        if p.is_null() { p } else { p.wrapping_add(j) }
    }

    /// Lane mask with the first `w` (< 8) lanes set.
    #[target_feature(enable = "avx2,fma")]
    fn lane_mask(w: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        // `w < 8` fits in an i32.
        _mm256_cmpgt_epi32(_mm256_set1_epi32(w as i32), idx)
    }

    /// Loads 8 floats, or the lanes of `mask` (others 0) when `MASKED`.
    ///
    /// # Safety
    /// The 8 floats at `p` (the masked lanes when `MASKED`) must be readable.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load<const MASKED: bool>(p: *const f32, mask: __m256i) -> __m256 {
        // SAFETY: the caller guarantees the lanes read are in bounds; unaligned access.
        unsafe {
            if MASKED {
                _mm256_maskload_ps(p, mask)
            } else {
                _mm256_loadu_ps(p)
            }
        }
    }

    /// Stores 8 floats, or the lanes of `mask` when `MASKED`.
    ///
    /// # Safety
    /// The 8 floats at `p` (the masked lanes when `MASKED`) must be writable.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store<const MASKED: bool>(p: *mut f32, v: __m256, mask: __m256i) {
        // SAFETY: the caller guarantees the lanes written are in bounds; unaligned access.
        unsafe {
            if MASKED {
                _mm256_maskstore_ps(p, mask, v);
            } else {
                _mm256_storeu_ps(p, v);
            }
        }
    }

    /// One `R × 8·NV` block of `C` (`NV = 1` and a lane mask when `MASKED`): twelve (or fewer)
    /// accumulators, one broadcast of `A` per row and `NV` loads of `B` per step of `p`.
    ///
    /// # Safety
    /// `a[i·a_row + p·a_col]` for `i < R, p < k`, `b[p·ldb + 8v + lane]`, `c[i·ldc + 8v + lane]`
    /// and `s[i]` (if `s` is not null) must be in bounds for every lane read or written
    /// (the masked lanes when `MASKED`).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn block<const R: usize, const NV: usize, const MASKED: bool>(
        l: &GemmLayout,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        s: *const f32,
        mask: __m256i,
    ) {
        let mut acc = [[_mm256_setzero_ps(); NV]; R];
        if !s.is_null() {
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: see the function's contract.
                let sv = _mm256_set1_ps(unsafe { *s.add(r) });
                for (v, x) in row.iter_mut().enumerate() {
                    // SAFETY: see the function's contract.
                    let cv = unsafe { load::<MASKED>(c.add(r * l.ldc + 8 * v), mask) };
                    *x = _mm256_mul_ps(cv, sv);
                }
            }
        }
        let (mut ap, mut bp) = (a, b);
        for _ in 0..l.k {
            let mut bv = [_mm256_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: see the function's contract (row `p` of `B`).
                *x = unsafe { load::<MASKED>(bp.add(8 * v), mask) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: see the function's contract (`A[r][p]`).
                let x = _mm256_set1_ps(unsafe { *ap.add(r * l.a_row) });
                for (o, &y) in row.iter_mut().zip(&bv) {
                    *o = _mm256_fmadd_ps(x, y, *o);
                }
            }
            // Past the last step these may point beyond the slices; they are not read then.
            ap = ap.wrapping_add(l.a_col);
            bp = bp.wrapping_add(l.ldb);
        }
        for (r, row) in acc.iter().enumerate() {
            for (v, &x) in row.iter().enumerate() {
                // SAFETY: see the function's contract.
                unsafe { store::<MASKED>(c.add(r * l.ldc + 8 * v), x, mask) };
            }
        }
    }

    /// All row blocks of one strip of `8·NV` columns (`MASKED`: one partial vector).
    ///
    /// # Safety
    /// As [`block`], for every row `i < l.m`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn strip<const NV: usize, const MASKED: bool>(
        l: &GemmLayout,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        s: *const f32,
        mask: __m256i,
    ) {
        // Blocks of `MR` rows; a remainder of 1–3 rows shares the last block's rows instead
        // (e.g. 32 = 4·6 + 4 + 4, not 5·6 + 2) so no block has fewer than 4 rows (8 chains)
        // unless `m < 4`.
        let (full, rem) = (l.m / MR, l.m % MR);
        let (full, tail) = if full > 0 && (1..4).contains(&rem) {
            (full - 1, [(MR + rem).div_ceil(2), (MR + rem) / 2])
        } else {
            (full, [rem, 0])
        };
        for blk in 0..full {
            let i = blk * MR;
            let (a, c, s) = (
                a.wrapping_add(i * l.a_row),
                c.wrapping_add(i * l.ldc),
                offset(s, i),
            );
            // SAFETY: rows `i .. i + MR` are below `l.m`, so `block`'s contract follows from
            // this function's.
            unsafe { block::<MR, NV, MASKED>(l, a, b, c, s, mask) };
        }
        let mut i = full * MR;
        for rows in tail {
            let (a, c, s) = (
                a.wrapping_add(i * l.a_row),
                c.wrapping_add(i * l.ldc),
                offset(s, i),
            );
            // SAFETY (each arm): rows `i .. i + rows` are below `l.m`; as above.
            match rows {
                // SAFETY: as above.
                1 => unsafe { block::<1, NV, MASKED>(l, a, b, c, s, mask) },
                // SAFETY: as above.
                2 => unsafe { block::<2, NV, MASKED>(l, a, b, c, s, mask) },
                // SAFETY: as above.
                3 => unsafe { block::<3, NV, MASKED>(l, a, b, c, s, mask) },
                // SAFETY: as above.
                4 => unsafe { block::<4, NV, MASKED>(l, a, b, c, s, mask) },
                // SAFETY: as above.
                5 => unsafe { block::<5, NV, MASKED>(l, a, b, c, s, mask) },
                _ => {}
            }
            i += rows;
        }
    }

    /// AVX2 + FMA [`gemm`](super::gemm): strips of 16 columns, then 8, then a masked strip.
    ///
    /// # Safety
    /// The layout must have passed [`check`](super::check) for these slices, and `m, n > 0`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gemm_avx2(
        l: &GemmLayout,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        scale: Option<&[f32]>,
    ) {
        let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
        let sp = match scale {
            Some(s) => s.as_ptr(),
            None => std::ptr::null(),
        };
        let full = lane_mask(0);
        let mut j = 0;
        // `check` proved `A[i][p]`, `B[p][j]`, `C[i][j]` and `s[i]` in bounds for `i < m`,
        // `p < k`, `j < n`; each strip covers columns below `n` only.
        while j + 16 <= l.n {
            let (b, c) = (bp.wrapping_add(j), cp.wrapping_add(j));
            // SAFETY: columns `j .. j + 16 ≤ n` of every row, in bounds (above).
            unsafe { strip::<2, false>(l, ap, b, c, sp, full) };
            j += 16;
        }
        if j + 8 <= l.n {
            let (b, c) = (bp.wrapping_add(j), cp.wrapping_add(j));
            // SAFETY: columns `j .. j + 8 ≤ n` of every row, in bounds (above).
            unsafe { strip::<1, false>(l, ap, b, c, sp, full) };
            j += 8;
        }
        if j < l.n {
            let mask = lane_mask(l.n - j);
            let (b, c) = (bp.wrapping_add(j), cp.wrapping_add(j));
            // SAFETY: the mask touches columns `j .. n` only, in bounds (above).
            unsafe { strip::<1, true>(l, ap, b, c, sp, mask) };
        }
    }

    /// AVX2 [`transpose_scaled`](super::transpose_scaled): 8 × 8 blocks transposed in
    /// registers (unpack, shuffle, lane permute), scaled and stored as 8-wide rows; edges
    /// element by element with the same multiply. The blocks address `src` and `dst` through
    /// raw pointers (bounds proved once by `check_transpose`): with sliced indexing, the bounds
    /// checks of sixteen rows per block spilled the index arithmetic and made this pass cost
    /// as much as the finiteness scan of three times the data in `FlashPrefill`.
    ///
    /// # Safety
    /// The slices must have passed [`check_transpose`](super::check_transpose).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn transpose_scaled_avx2(
        src: &[f32],
        cols: usize,
        scale: f32,
        dst: &mut [f32],
        ldd: usize,
    ) {
        let rows = src.len() / cols;
        let sv = _mm256_set1_ps(scale);
        let (rb, cb) = (rows / 8 * 8, cols / 8 * 8);
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        for r0 in (0..rb).step_by(8) {
            for c0 in (0..cb).step_by(8) {
                let s = sp.wrapping_add(r0 * cols + c0);
                let mut v = [_mm256_setzero_ps(); 8];
                for (i, x) in v.iter_mut().enumerate() {
                    // SAFETY: row `r0 + i < rows`, columns `c0 .. c0 + 8 <= cols` of `src`
                    // (`rows · cols` values); unaligned load.
                    *x = unsafe { _mm256_loadu_ps(s.add(i * cols)) };
                }
                let t0 = _mm256_unpacklo_ps(v[0], v[1]);
                let t1 = _mm256_unpackhi_ps(v[0], v[1]);
                let t2 = _mm256_unpacklo_ps(v[2], v[3]);
                let t3 = _mm256_unpackhi_ps(v[2], v[3]);
                let t4 = _mm256_unpacklo_ps(v[4], v[5]);
                let t5 = _mm256_unpackhi_ps(v[4], v[5]);
                let t6 = _mm256_unpacklo_ps(v[6], v[7]);
                let t7 = _mm256_unpackhi_ps(v[6], v[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let out = [
                    _mm256_permute2f128_ps::<0x20>(u0, u4),
                    _mm256_permute2f128_ps::<0x20>(u1, u5),
                    _mm256_permute2f128_ps::<0x20>(u2, u6),
                    _mm256_permute2f128_ps::<0x20>(u3, u7),
                    _mm256_permute2f128_ps::<0x31>(u0, u4),
                    _mm256_permute2f128_ps::<0x31>(u1, u5),
                    _mm256_permute2f128_ps::<0x31>(u2, u6),
                    _mm256_permute2f128_ps::<0x31>(u3, u7),
                ];
                let d = dp.wrapping_add(c0 * ldd + r0);
                for (i, &o) in out.iter().enumerate() {
                    // SAFETY: `dst[(c0 + i)·ldd + r0 ..][..8]` with `c0 + i < cols` and
                    // `r0 + 8 <= rows <= ldd` lies below `(cols − 1)·ldd + rows`, which
                    // `check_transpose` proved in bounds; unaligned store.
                    unsafe { _mm256_storeu_ps(d.add(i * ldd), _mm256_mul_ps(o, sv)) };
                }
            }
        }
        // Edges: columns past the last whole block for the blocked rows, then the last rows.
        for r in 0..rows {
            let c_start = if r < rb { cb } else { 0 };
            for c in c_start..cols {
                dst[c * ldd + r] = src[r * cols + c] * scale;
            }
        }
    }

    /// `2^x` on eight lanes: the twin's polynomial with FMAs (see the module docs).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp2x8(x: __m256) -> __m256 {
        exp2x8n([x])[0]
    }

    /// [`exp2x8`] on `N` independent vectors, step by step across them, so that the
    /// out-of-order core sees `N` dependency chains side by side. Each lane's arithmetic is
    /// that of [`exp2x8`].
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp2x8n<const N: usize>(x: [__m256; N]) -> [__m256; N] {
        let magic = _mm256_set1_ps(EXP2_MAGIC);
        let lo = _mm256_set1_ps(-127.0);
        let mut t = [_mm256_setzero_ps(); N];
        let mut f = [_mm256_setzero_ps(); N];
        for k in 0..N {
            // The twin's clamp: `max(lo, x)` is `x` when `x` is NaN (`maxps` returns its
            // second operand then), so NaN propagates as in the twin.
            let xc = _mm256_max_ps(lo, x[k]);
            t[k] = _mm256_add_ps(xc, magic);
            f[k] = _mm256_sub_ps(xc, _mm256_sub_ps(t[k], magic));
        }
        // Horner's rule with FMAs: five dependent FMAs per vector, but one multiply fewer than
        // Estrin's scheme (which measured no faster: the FMA pipes, not the latency, bound it).
        let [c5, c4, c3, c2, c1, c0] = EXP2_P;
        let (c0, c1, c2, c3) = (
            _mm256_set1_ps(c0),
            _mm256_set1_ps(c1),
            _mm256_set1_ps(c2),
            _mm256_set1_ps(c3),
        );
        let (c4, c5) = (_mm256_set1_ps(c4), _mm256_set1_ps(c5));
        let mut p = [_mm256_setzero_ps(); N];
        for k in 0..N {
            let mut q = _mm256_fmadd_ps(c5, f[k], c4);
            q = _mm256_fmadd_ps(q, f[k], c3);
            q = _mm256_fmadd_ps(q, f[k], c2);
            q = _mm256_fmadd_ps(q, f[k], c1);
            p[k] = _mm256_fmadd_ps(q, f[k], c0);
        }
        let mut r = [_mm256_setzero_ps(); N];
        for k in 0..N {
            // See `EXP2_MAGIC`: 2^n, or 0 for n = -127.
            let bits = _mm256_slli_epi32::<23>(_mm256_castps_si256(t[k]));
            r[k] = _mm256_mul_ps(p[k], _mm256_castsi256_ps(bits));
        }
        r
    }

    /// One online-softmax step on the `8·NB` columns at `s`, `m`, `l`, `alpha` (`MASKED`: one
    /// block, the lanes of `mask`). Several blocks per row give the out-of-order core
    /// independent exponentials to overlap; each lane's arithmetic is the same either way.
    ///
    /// # Safety
    /// `s[j·ld + 8b + lane]` for `j < rows`, `b < NB` and `m`, `l`, `alpha` at `8b + lane` must
    /// be in bounds for every lane touched.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_blocks<const NB: usize, const MASKED: bool>(
        s: *mut f32,
        ld: usize,
        rows: usize,
        m: *mut f32,
        l: *mut f32,
        alpha: *mut f32,
        mask: __m256i,
    ) {
        let mut m_old = [_mm256_setzero_ps(); NB];
        for (b, x) in m_old.iter_mut().enumerate() {
            // SAFETY: `m` at the lanes touched is in bounds (the function's contract).
            *x = unsafe { load::<MASKED>(m.add(8 * b), mask) };
        }
        let (mut mx0, mut mx1) = (m_old, m_old);
        let mut j = 0;
        while j + 2 <= rows {
            let (r0, r1) = (s.wrapping_add(j * ld), s.wrapping_add((j + 1) * ld));
            for b in 0..NB {
                // SAFETY: rows `j, j + 1 < rows` are in bounds (the function's contract).
                let (x0, x1) = unsafe {
                    (
                        load::<MASKED>(r0.add(8 * b), mask),
                        load::<MASKED>(r1.add(8 * b), mask),
                    )
                };
                mx0[b] = _mm256_max_ps(mx0[b], x0);
                mx1[b] = _mm256_max_ps(mx1[b], x1);
            }
            j += 2;
        }
        if j < rows {
            let r0 = s.wrapping_add(j * ld);
            for (b, mx) in mx0.iter_mut().enumerate() {
                // SAFETY: row `j < rows` is in bounds (the function's contract).
                let x = unsafe { load::<MASKED>(r0.add(8 * b), mask) };
                *mx = _mm256_max_ps(*mx, x);
            }
        }
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut mx = [_mm256_setzero_ps(); NB];
        let mut shift = [_mm256_setzero_ps(); NB];
        let mut a = [_mm256_setzero_ps(); NB];
        let mut sum = [_mm256_setzero_ps(); NB];
        for b in 0..NB {
            mx[b] = _mm256_max_ps(mx0[b], mx1[b]);
            let empty = _mm256_cmp_ps::<_CMP_EQ_OQ>(mx[b], ninf);
            shift[b] = _mm256_andnot_ps(empty, mx[b]);
            a[b] = exp2x8(_mm256_sub_ps(m_old[b], shift[b]));
        }
        // One row per step (NB exponentials side by side); successive rows are independent
        // but for the sums, so the out-of-order core overlaps them. (Two rows per step ran
        // out of registers and spilled.)
        for j in 0..rows {
            let row = s.wrapping_add(j * ld);
            let mut x = [_mm256_setzero_ps(); NB];
            for (b, xb) in x.iter_mut().enumerate() {
                // SAFETY: row `j < rows` is in bounds (the function's contract).
                let v = unsafe { load::<MASKED>(row.add(8 * b), mask) };
                *xb = _mm256_sub_ps(v, shift[b]);
            }
            for (b, &eb) in exp2x8n(x).iter().enumerate() {
                // SAFETY: as for the load.
                unsafe { store::<MASKED>(row.add(8 * b), eb, mask) };
                sum[b] = _mm256_add_ps(sum[b], eb);
            }
        }
        for b in 0..NB {
            let (l, m, alpha) = (
                l.wrapping_add(8 * b),
                m.wrapping_add(8 * b),
                alpha.wrapping_add(8 * b),
            );
            // SAFETY: `l`, `m` and `alpha` at the lanes touched are in bounds (the contract).
            unsafe {
                let l_old = load::<MASKED>(l, mask);
                store::<MASKED>(l, _mm256_add_ps(_mm256_mul_ps(l_old, a[b]), sum[b]), mask);
                store::<MASKED>(m, mx[b], mask);
                store::<MASKED>(alpha, a[b], mask);
            }
        }
    }

    /// AVX2 + FMA [`online_softmax_cols_exp2`](super::online_softmax_cols_exp2): pairs of
    /// 8-column blocks, then one block, then a masked one.
    ///
    /// # Safety
    /// The slices must have passed [`check_softmax`](super::check_softmax).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn online_softmax_cols_exp2_avx2(
        s: &mut [f32],
        ld: usize,
        rows: usize,
        m: &mut [f32],
        l: &mut [f32],
        alpha: &mut [f32],
    ) {
        let cols = m.len();
        let (sp, mp, lp, ap) = (
            s.as_mut_ptr(),
            m.as_mut_ptr(),
            l.as_mut_ptr(),
            alpha.as_mut_ptr(),
        );
        let full = lane_mask(0);
        let mut c0 = 0;
        // `check_softmax` proved `s[j·ld + c]` for `j < rows, c < cols` and `m, l, alpha[c]`
        // for `c < cols` in bounds; the blocks stay below `cols`.
        while c0 + 16 <= cols {
            let (s, m, l, a) = (
                sp.wrapping_add(c0),
                mp.wrapping_add(c0),
                lp.wrapping_add(c0),
                ap.wrapping_add(c0),
            );
            // SAFETY: columns `c0 .. c0 + 16 ≤ cols`, in bounds (above).
            unsafe { softmax_blocks::<2, false>(s, ld, rows, m, l, a, full) };
            c0 += 16;
        }
        while c0 + 8 <= cols {
            let (s, m, l, a) = (
                sp.wrapping_add(c0),
                mp.wrapping_add(c0),
                lp.wrapping_add(c0),
                ap.wrapping_add(c0),
            );
            // SAFETY: columns `c0 .. c0 + 8 ≤ cols`, in bounds (above).
            unsafe { softmax_blocks::<1, false>(s, ld, rows, m, l, a, full) };
            c0 += 8;
        }
        if c0 < cols {
            let mask = lane_mask(cols - c0);
            let (s, m, l, a) = (
                sp.wrapping_add(c0),
                mp.wrapping_add(c0),
                lp.wrapping_add(c0),
                ap.wrapping_add(c0),
            );
            // SAFETY: the mask touches columns `c0 .. cols` only, in bounds (above).
            unsafe { softmax_blocks::<1, true>(s, ld, rows, m, l, a, mask) };
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngExt};

    use super::*;

    const EPS: f64 = 1.0 / (1u64 << 24) as f64;

    /// A random layout with slices that fit it (padding between rows, `A` row-major or
    /// transposed), small integers when `exact`.
    #[allow(clippy::type_complexity)]
    fn random_case<R: Rng + ?Sized>(
        rng: &mut R,
        exact: bool,
    ) -> (GemmLayout, Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
        let (m, n, k): (usize, usize, usize) = (
            rng.random_range(1..20),
            rng.random_range(1..41),
            rng.random_range(0..50),
        );
        let (ldb, ldc) = (n + rng.random_range(0..5), n + rng.random_range(0..5));
        let (a_row, a_col) = if rng.random_bool(0.5) {
            (k + rng.random_range(0..3), 1)
        } else {
            (1, m + rng.random_range(0..3))
        };
        let val = |rng: &mut R| {
            if exact {
                f32::from(rng.random_range(-8i8..8))
            } else {
                rng.random_range(-2.0f32..2.0)
            }
        };
        let a_len = (m - 1) * a_row + k.saturating_sub(1) * a_col + 1;
        let a: Vec<f32> = (0..a_len).map(|_| val(rng)).collect();
        let b: Vec<f32> = (0..k * ldb).map(|_| val(rng)).collect();
        let c: Vec<f32> = (0..m * ldc).map(|_| val(rng)).collect();
        let s = rng
            .random_bool(0.5)
            .then(|| (0..m).map(|_| val(rng)).collect());
        let l = GemmLayout {
            m,
            n,
            k,
            a_row,
            a_col,
            ldb,
            ldc,
        };
        (l, a, b, c, s)
    }

    #[test]
    fn gemm_twins_match_f64_within_bound() {
        let isa_is_used = isa();
        squish_testkit::prop::check("simd_gemm_twins_bound", 200, |rng| {
            let (l, a, b, c, s) = random_case(rng, false);
            let (mut x, mut y) = (c.clone(), c.clone());
            gemm(&l, &a, &b, &mut x, s.as_deref());
            gemm_scalar(&l, &a, &b, &mut y, s.as_deref());
            for i in 0..l.m {
                for j in 0..l.ldc {
                    let at = i * l.ldc + j;
                    if j >= l.n {
                        // Padding between rows is never written.
                        assert_eq!(x[at].to_bits(), c[at].to_bits(), "isa={isa_is_used:?}");
                        assert_eq!(y[at].to_bits(), c[at].to_bits());
                        continue;
                    }
                    let c0 = s.as_ref().map_or(0.0, |s| f64::from(c[at] * s[i]));
                    let (mut exact, mut mag) = (c0, c0.abs());
                    for p in 0..l.k {
                        let t =
                            f64::from(a[i * l.a_row + p * l.a_col]) * f64::from(b[p * l.ldb + j]);
                        exact += t;
                        mag += t.abs();
                    }
                    let bound = (l.k as f64 + 1.0) * EPS * mag;
                    for (name, got) in [("dispatched", x[at]), ("scalar", y[at])] {
                        assert!(
                            (f64::from(got) - exact).abs() <= bound,
                            "{name} isa={isa_is_used:?} {l:?} ({i},{j}): {got} vs {exact}, bound {bound:e}"
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn gemm_twins_are_bit_identical_on_exact_inputs() {
        squish_testkit::prop::check("simd_gemm_twins_exact", 100, |rng| {
            let (l, a, b, c, s) = random_case(rng, true);
            let (mut x, mut y) = (c.clone(), c);
            gemm(&l, &a, &b, &mut x, s.as_deref());
            gemm_scalar(&l, &a, &b, &mut y, s.as_deref());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&x), bits(&y), "{l:?}");
        });
    }

    #[test]
    fn gemm_column_does_not_depend_on_its_neighbours() {
        // The same column computed in a wide strip, an 8-strip and the masked tail: same bits.
        squish_testkit::prop::check("simd_gemm_column_invariance", 50, |rng| {
            let (l, a, b, c, s) = random_case(rng, false);
            let mut full = c.clone();
            gemm(&l, &a, &b, &mut full, s.as_deref());
            let j0 = rng.random_range(0..l.n);
            let one = GemmLayout { n: l.n - j0, ..l };
            let mut part = c.clone();
            gemm(
                &one,
                &a,
                &b[j0.min(b.len())..],
                &mut part[j0..],
                s.as_deref(),
            );
            for i in 0..l.m {
                for j in j0..l.n {
                    assert_eq!(part[i * l.ldc + j].to_bits(), full[i * l.ldc + j].to_bits());
                }
            }
        });
    }

    #[test]
    #[should_panic(expected = "gemm_into: b has")]
    fn gemm_rejects_short_b() {
        let l = GemmLayout {
            m: 1,
            n: 2,
            k: 2,
            a_row: 2,
            a_col: 1,
            ldb: 2,
            ldc: 2,
        };
        gemm(&l, &[1.0; 2], &[1.0; 3], &mut [0.0; 2], None);
    }

    #[test]
    fn transpose_twins_are_bit_identical_and_exact() {
        squish_testkit::prop::check("simd_transpose_scaled", 50, |rng| {
            let (rows, cols) = (rng.random_range(0..40), rng.random_range(1..40));
            let ldd = rows + rng.random_range(0..4);
            let src: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-4.0f32..4.0))
                .collect();
            let scale = rng.random_range(-2.0f32..2.0);
            let fill = f32::from_bits(0x7fc0_1234);
            // The kernel gets exactly as many values as the layout needs (the last column
            // ends at its last row); a guard of 16 values after them must stay untouched, so
            // the pointer-addressed kernel cannot write past its slice unnoticed.
            let len = (cols - 1) * ldd + rows;
            let (mut x, mut y) = (vec![fill; len + 16], vec![fill; len + 16]);
            transpose_scaled(&src, cols, scale, &mut x[..len], ldd);
            transpose_scaled_scalar(&src, cols, scale, &mut y[..len], ldd);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&x), bits(&y), "rows={rows} cols={cols}");
            assert!(
                x[len..].iter().all(|v| v.to_bits() == fill.to_bits()),
                "guard"
            );
            for c in 0..cols {
                for r in (0..ldd).take_while(|&r| c * ldd + r < len) {
                    let want = if r < rows {
                        src[r * cols + c] * scale
                    } else {
                        fill
                    };
                    assert_eq!(x[c * ldd + r].to_bits(), want.to_bits());
                }
            }
        });
    }

    #[test]
    fn exp2_matches_f64_on_both_paths() {
        // Moved here with the kernel from squish-attn's flash_prefill (same points, same bound).
        let n = 200_000;
        let xs: Vec<f32> = (0..=n)
            .map(|i| (-126.0 * f64::from(i) / f64::from(n)) as f32)
            .collect();
        // The vector path through a one-column softmax step with shift 0 (m = 0, l = 0).
        let mut v = xs.clone();
        let (mut m, mut l, mut alpha) = ([0.0f32], [0.0f32], [0.0f32]);
        online_softmax_cols_exp2(&mut v, 1, xs.len(), &mut m, &mut l, &mut alpha);
        let (mut worst_s, mut worst_v) = (0.0f64, 0.0f64);
        for (&x, &got_v) in xs.iter().zip(&v) {
            let want = f64::from(x).exp2();
            worst_s = worst_s.max((f64::from(exp2_scalar(x)) - want).abs() / want);
            worst_v = worst_v.max((f64::from(got_v) - want).abs() / want);
        }
        assert!(worst_s < 2.5e-7, "scalar: worst relative error {worst_s:e}");
        assert!(
            worst_v < 2.5e-7,
            "dispatched: worst relative error {worst_v:e}"
        );
        assert_eq!(exp2_scalar(0.0), 1.0);
        assert_eq!(exp2_scalar(-1.0), 0.5);
        // The flush edge: 0 at or below -126.5 (and for -inf), a subnormal within two units
        // of the subnormal grid (2^-149) of 2^x on (-126.5, -126).
        let edge = |got: f32, x: f32| {
            assert!(
                (f64::from(got) - f64::from(x).exp2()).abs() <= 2.0 * 2f64.powi(-149),
                "2^{x}: {got:e}"
            );
        };
        for (x, want) in [
            (-126.5f32, 0.0f32),
            (-126.6, 0.0),
            (-127.0, 0.0),
            (-1e9, 0.0),
            (f32::NEG_INFINITY, 0.0),
        ] {
            assert_eq!(exp2_scalar(x), want);
        }
        edge(exp2_scalar(-126.4), -126.4);
        edge(exp2_scalar(-126.25), -126.25);
        assert!(exp2_scalar(f32::NAN).is_nan());
        let mut v = [
            0.0,
            -1.0,
            -126.5,
            f32::NEG_INFINITY,
            -1e9,
            -126.0,
            -126.4,
            -126.25,
        ];
        let (mut m, mut l, mut alpha) = ([0.0f32], [0.0f32], [0.0f32]);
        online_softmax_cols_exp2(&mut v, 1, 8, &mut m, &mut l, &mut alpha);
        assert_eq!(v[..5], [1.0, 0.5, 0.0, 0.0, 0.0]);
        assert_eq!(v[5], (-126.0f32).exp2());
        edge(v[6], -126.4);
        edge(v[7], -126.25);
    }

    #[test]
    fn online_softmax_column_does_not_depend_on_its_neighbours() {
        // A column in a pair of blocks, a single block or the masked tail: the same bits.
        squish_testkit::prop::check("simd_online_softmax_column_invariance", 50, |rng| {
            let cols = rng.random_range(1..40);
            let rows = rng.random_range(1..30);
            let s0: Vec<f32> = (0..rows * cols)
                .map(|_| rng.random_range(-20.0f32..20.0))
                .collect();
            let m0: Vec<f32> = (0..cols)
                .map(|_| rng.random_range(-20.0f32..20.0))
                .collect();
            let l0 = vec![1.5f32; cols];
            let run = |c0: usize| {
                let (mut s, mut m, mut l) = (s0.clone(), m0.clone(), l0.clone());
                let mut a = vec![0.0f32; cols];
                online_softmax_cols_exp2(
                    &mut s[c0..],
                    cols,
                    rows,
                    &mut m[c0..],
                    &mut l[c0..],
                    &mut a[c0..],
                );
                (s, m, l, a)
            };
            let full = run(0);
            let c0 = rng.random_range(0..cols);
            let part = run(c0);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for j in 0..rows {
                let r = j * cols + c0..(j + 1) * cols;
                assert_eq!(bits(&part.0[r.clone()]), bits(&full.0[r]));
            }
            assert_eq!(bits(&part.1[c0..]), bits(&full.1[c0..]));
            assert_eq!(bits(&part.2[c0..]), bits(&full.2[c0..]));
            assert_eq!(bits(&part.3[c0..]), bits(&full.3[c0..]));
        });
    }

    #[test]
    fn online_softmax_twins_agree_and_match_f64() {
        let isa_is_used = isa();
        squish_testkit::prop::check("simd_online_softmax_cols", 100, |rng| {
            let cols = rng.random_range(1..40);
            let ld = cols + rng.random_range(0..4);
            let rows = rng.random_range(0..70);
            let mut s: Vec<f32> = (0..rows * ld)
                .map(|_| {
                    if rng.random_bool(0.2) {
                        f32::NEG_INFINITY
                    } else {
                        rng.random_range(-30.0f32..30.0)
                    }
                })
                .collect();
            if rows > 0 && rng.random_bool(0.3) {
                // A fully masked column.
                let c = rng.random_range(0..cols);
                for j in 0..rows {
                    s[j * ld + c] = f32::NEG_INFINITY;
                }
            }
            let m0: Vec<f32> = (0..cols)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        f32::NEG_INFINITY
                    } else {
                        rng.random_range(-30.0f32..30.0)
                    }
                })
                .collect();
            let l0: Vec<f32> = m0
                .iter()
                .map(|&m| {
                    if m == f32::NEG_INFINITY {
                        0.0
                    } else {
                        rng.random_range(1.0f32..10.0)
                    }
                })
                .collect();
            let (mut sx, mut mx, mut lx, mut ax) =
                (s.clone(), m0.clone(), l0.clone(), vec![0.0; cols]);
            let (mut sy, mut my, mut ly, mut ay) =
                (s.clone(), m0.clone(), l0.clone(), vec![0.0; cols]);
            online_softmax_cols_exp2(&mut sx, ld, rows, &mut mx, &mut lx, &mut ax);
            online_softmax_cols_exp2_scalar(&mut sy, ld, rows, &mut my, &mut ly, &mut ay);
            for i in 0..cols {
                let m_new = (0..rows).map(|j| s[j * ld + i]).fold(m0[i], f32::max);
                assert_eq!(mx[i].to_bits(), m_new.to_bits(), "isa={isa_is_used:?}");
                assert_eq!(my[i].to_bits(), m_new.to_bits());
                let shift = if m_new == f32::NEG_INFINITY {
                    0.0
                } else {
                    m_new
                };
                // The argument of 2^x is rounded to f32 on both paths; the reference starts there.
                let arg = |x: f32| f64::from(x - shift);
                let close = |got: f32, want: f64, rel: f64| {
                    (f64::from(got) - want).abs() <= rel * want.abs() + f64::from(f32::MIN_POSITIVE)
                };
                let a_want = arg(m0[i]).exp2();
                assert!(close(ax[i], a_want, 2.5e-7) && close(ay[i], a_want, 2.5e-7));
                let mut sum = 0.0;
                for j in 0..rows {
                    let want = arg(s[j * ld + i]).exp2();
                    let want = if want <= 2f64.powf(-126.5) { 0.0 } else { want };
                    sum += want;
                    for got in [sx[j * ld + i], sy[j * ld + i]] {
                        assert!(
                            close(got, want, 2.5e-7),
                            "p {got} vs {want} isa={isa_is_used:?}"
                        );
                    }
                }
                let l_want = f64::from(l0[i]) * a_want + sum;
                let rel = 2.5e-7 + (rows as f64 + 2.0) * EPS;
                assert!(close(lx[i], l_want, rel), "l {} vs {l_want}", lx[i]);
                assert!(close(ly[i], l_want, rel), "l {} vs {l_want}", ly[i]);
            }
            // Padding columns between rows are untouched.
            for j in 0..rows {
                for c in cols..ld {
                    assert_eq!(sx[j * ld + c].to_bits(), s[j * ld + c].to_bits());
                }
            }
        });
    }
}
