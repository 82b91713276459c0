//! Numerics on `f32` slices: dot, axpy, L2 normalisation, cosine, max / argmax, numerically
//! stable softmax and log-sum-exp with temperature, and top-k.
//!
//! These are kernels: they take slices, write into caller buffers where they produce a vector,
//! `assert!` their length preconditions (see each `# Panics`) and do no validation of values.
//!
//! # Finite input
//! The kernels assume finite input, so that their reductions can use plain `>` and `+` that
//! vectorise instead of NaN-aware [`f32::max`]. Components validate caller data once, up front,
//! with [`check_finite`](crate::check_finite). The one exception is `-inf` in softmax and
//! log-sum-exp, which is a masked logit: it gets probability exactly 0. With a NaN or `+inf` in
//! the input the results are unspecified (but the kernels do not panic because of it and do not
//! read out of bounds).
//!
//! # Performance
//! Sums and maxima use eight independent lane accumulators over `chunks_exact(8)`, which the
//! compiler keeps in vector registers. [`dot`], [`axpy`] and the exponential pass of the softmax
//! family dispatch at run time to AVX2 + FMA kernels on `x86_64` CPUs that have them (detected
//! once per process); measured on a 2-core x86_64 VM: dot 1.9–3.1×, axpy 1.3×, softmax and
//! log-sum-exp ≈ 5× (softmax of 4096 logits: 12.9 µs → 2.8 µs). Setting the environment
//! variable `SQUISH_SIMD=off` before the first call forces the portable path.
//!
//! # Accuracy across machines
//! Results can differ in the last bits between CPUs with and without AVX2: reductions sum in a
//! different order, and the vectorised exponential is within about 2 ulp of the exact value
//! (the platform's `expf` is within about 0.5 ulp). On the vector path an exponent below
//! `ln(f32::MIN_POSITIVE)` ≈ -87.3 gives exactly 0, so softmax probabilities smaller than
//! `1.2e-38` times the largest one are flushed to zero.

use std::cmp::Ordering;

use crate::simd::{self, LANES};

/// Dot product `Σ aᵢ·bᵢ`.
///
/// The summation order depends on the instruction set detected at run time (8 lane accumulators
/// on the portable path, 32 with AVX2), so the last bits may differ between machines; the error
/// is within `(n + 1) · 2⁻²⁴ · Σ|aᵢ·bᵢ|` of the exact value on every path.
///
/// # Panics
/// If `a.len() != b.len()`.
///
/// # Performance
/// Runtime-dispatched AVX2 + FMA on `x86_64` (see the [module docs](self)); allocation-free.
///
/// # Example
/// ```
/// use squish_core::ops::dot;
/// assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
/// assert_eq!(dot(&[], &[]), 0.0);
/// ```
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "dot: lengths differ ({} vs {})",
        a.len(),
        b.len()
    );
    simd::dot(a, b)
}

/// Scores one vector against many: `out[j] = dot(x, rows[j·d .. (j+1)·d])` with `d = x.len()`,
/// each bit-identical to [`dot`] on that row (the same kernel and summation order).
///
/// This is attention's `q·kⱼ` over a contiguous key block: one dispatch for the whole block and
/// an inlined kernel per row, instead of one dispatched call per key.
///
/// # Panics
/// If `rows.len() != out.len() * x.len()`.
///
/// # Performance
/// Runtime-dispatched AVX2 + FMA on `x86_64`; allocation-free.
///
/// # Example
/// ```
/// use squish_core::ops::{dot, dot_rows_into};
/// let q = [1.0, 2.0];
/// let keys = [3.0, 4.0, -1.0, 0.5, 0.0, 0.0];
/// let mut scores = [0.0; 3];
/// dot_rows_into(&q, &keys, &mut scores);
/// assert_eq!(scores, [11.0, 0.0, 0.0]);
/// assert_eq!(scores[0], dot(&q, &keys[..2]));
/// ```
pub fn dot_rows_into(x: &[f32], rows: &[f32], out: &mut [f32]) {
    assert_eq!(
        Some(rows.len()),
        out.len().checked_mul(x.len()),
        "dot_rows_into: {} row values are not {} rows of {}",
        rows.len(),
        out.len(),
        x.len()
    );
    if x.is_empty() {
        out.fill(0.0);
        return;
    }
    simd::dot_rows(x, rows, out);
}

/// Folds contiguous rows into elementwise minima and maxima: for every row `r` of `rows` (rows
/// of `lo.len()` values) and column `c`, `lo[c] = min(lo[c], rows[r][c])` and
/// `hi[c] = max(hi[c], rows[r][c])`. Returns `true` when every element of `rows` is finite: one
/// pass yields the page summaries of a key index and its input check.
///
/// For finite input the result is exact on every path (min and max do not round). When the
/// function returns `false`, the contents of `lo` and `hi` are unspecified; validate with
/// [`check_finite`](crate::check_finite) to find the offending element.
///
/// # Panics
/// If `hi.len() != lo.len()`, or `rows.len()` is not a multiple of `lo.len()` (for an empty
/// `lo`, `rows` must be empty).
///
/// # Performance
/// Runtime-dispatched AVX2 (strips of 32 columns held in registers across all rows, the
/// finiteness probe `Σ (x − x)` in the same pass); allocation-free, one read of `rows`.
///
/// # Example
/// ```
/// use squish_core::ops::fold_min_max;
/// let rows = [1.0, -2.0, 3.0, 0.5, -4.0, 9.0];
/// let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
/// assert!(fold_min_max(&rows, &mut lo, &mut hi));
/// assert_eq!((lo, hi), ([-4.0, -2.0], [3.0, 9.0]));
/// assert!(!fold_min_max(&[f32::NAN, 0.0], &mut lo, &mut hi));
/// ```
pub fn fold_min_max(rows: &[f32], lo: &mut [f32], hi: &mut [f32]) -> bool {
    assert_eq!(lo.len(), hi.len(), "fold_min_max: lo and hi lengths differ");
    if lo.is_empty() {
        assert!(rows.is_empty(), "fold_min_max: rows given for zero columns");
        return true;
    }
    assert_eq!(
        rows.len() % lo.len(),
        0,
        "fold_min_max: {} values are not rows of {}",
        rows.len(),
        lo.len()
    );
    simd::fold_min_max(rows, lo, hi)
}

/// [`fold_min_max`] that also copies `rows` into `dst` in the same pass (each value is loaded
/// once): `dst` ends up equal to `rows` bit for bit, even when the function returns `false`.
/// This is how a key index appends keys and updates its page summaries in one read.
///
/// # Panics
/// As [`fold_min_max`], and if `dst.len() != rows.len()`.
///
/// # Performance
/// As [`fold_min_max`] plus one store per value; on a 2-core AVX2 VM, folding and copying
/// 8 × 256 × 64 keys runs at about the speed of the plain copy.
///
/// # Example
/// ```
/// use squish_core::ops::fold_min_max_copy;
/// let rows = [1.0, -2.0, 3.0, 0.5];
/// let mut copy = [0.0; 4];
/// let (mut lo, mut hi) = ([f32::MAX; 2], [f32::MIN; 2]);
/// assert!(fold_min_max_copy(&rows, &mut copy, &mut lo, &mut hi));
/// assert_eq!((copy, lo, hi), (rows, [1.0, -2.0], [3.0, 0.5]));
/// ```
pub fn fold_min_max_copy(rows: &[f32], dst: &mut [f32], lo: &mut [f32], hi: &mut [f32]) -> bool {
    assert_eq!(
        dst.len(),
        rows.len(),
        "fold_min_max_copy: dst and rows lengths differ"
    );
    assert_eq!(
        lo.len(),
        hi.len(),
        "fold_min_max_copy: lo and hi lengths differ"
    );
    if lo.is_empty() {
        assert!(
            rows.is_empty(),
            "fold_min_max_copy: rows given for zero columns"
        );
        return true;
    }
    assert_eq!(
        rows.len() % lo.len(),
        0,
        "fold_min_max_copy: {} values are not rows of {}",
        rows.len(),
        lo.len()
    );
    simd::fold_min_max_copy(rows, dst, lo, hi)
}

/// Shape and strides of a product `C = A·B` computed by [`gemm_into`], in elements.
///
/// `A` is `m × k` read through two strides, `A[i][p] = a[i·a_row + p·a_col]`, so a row-major
/// matrix (`a_row = k, a_col = 1`) and the transpose of one (`a_row = 1, a_col = m`) are both
/// read in place; `B` is `k × n` with rows `ldb` apart, `B[p][j] = b[p·ldb + j]`; `C` is
/// `m × n` with rows `ldc ≥ n` apart, `C[i][j] = c[i·ldc + j]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmLayout {
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// Columns of `A` and rows of `B` (the summed dimension).
    pub k: usize,
    /// Distance between `A[i][p]` and `A[i + 1][p]`.
    pub a_row: usize,
    /// Distance between `A[i][p]` and `A[i][p + 1]`.
    pub a_col: usize,
    /// Distance between the rows of `B`.
    pub ldb: usize,
    /// Distance between the rows of `C`, at least `n`.
    pub ldc: usize,
}

/// Matrix product into a caller buffer: `C = A·B` when `row_scale` is `None`, or
/// `C = diag(s)·C + A·B` (row `i` of the old `C` multiplied by `s[i]`, the rescale of an
/// online-softmax accumulator) when it is `Some(s)`; layouts as in [`GemmLayout`]. Only the
/// `m × n` block of `C` is written.
///
/// Each element is one chain `c₀ + a₀b₀ + a₁b₁ + …` in order of `p`, from `c₀ = 0` or
/// `c₀ = c·s` (one rounded product). The AVX2 path fuses each multiply-add (one rounding),
/// the portable path rounds the product and the sum: both are within `k·2⁻²⁴·Σₚ|aₚbₚ|` (plus
/// the rounding of `c·s`) of the exact value, so the last bits can differ between machines;
/// products of small integers are exact and identical on both. A column's arithmetic does not
/// depend on `n` or on the other columns, nor a row's on `m` or the other rows.
///
/// # Panics
/// If `ldc < n`, or the layout reaches past the end of `a`, `b`, `c` or `row_scale` (which
/// needs at least `m` values), or a stride product overflows `usize`. Nothing is read when `k = 0`
/// (beyond the old `C` when scaled) and nothing happens when `m = 0` or `n = 0`.
///
/// # Performance
/// Runtime-dispatched AVX2 + FMA on `x86_64`: a 6 × 16 register block (twelve 8-lane
/// accumulators, one broadcast of `A` and two loads of `B` per twelve FMAs), edges of 4–5 rows
/// (1–3 only when `m < 4`) and 8-column or masked strips; no packing, no allocation. Used by
/// FlashAttention-style tiles for both `K·Qᵀ` and `P·V`: on such 64 × 64 tiles with
/// `k = 32` it runs at ≈ 93 GFLOP/s on a 3.2 GHz Zen 3 core (≈ 90 % of its AVX2 + FMA peak),
/// ≈ 80 GFLOP/s with `k = 128` (the strided rows of `A` then come from L2). The portable
/// path keeps 4 × 8 blocks in registers (SSE2 on `x86_64`).
///
/// # Example
/// ```
/// use squish_core::ops::{GemmLayout, gemm_into};
/// // A = [[1, 2], [3, 4]] stored column-major (a transposed read), B = [[1, 0, 1], [0, 1, 1]].
/// let a = [1.0, 3.0, 2.0, 4.0];
/// let b = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0];
/// let layout = GemmLayout { m: 2, n: 3, k: 2, a_row: 1, a_col: 2, ldb: 3, ldc: 3 };
/// let mut c = [0.0; 6];
/// gemm_into(layout, &a, &b, &mut c, None);
/// assert_eq!(c, [1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
/// // Rescale the rows by [0, 2], then add A·B again.
/// gemm_into(layout, &a, &b, &mut c, Some(&[0.0, 2.0]));
/// assert_eq!(c, [1.0, 2.0, 3.0, 9.0, 12.0, 21.0]);
/// ```
pub fn gemm_into(
    layout: GemmLayout,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    row_scale: Option<&[f32]>,
) {
    simd::gemm::gemm(&layout, a, b, c, row_scale);
}

/// One step of the online softmax (Milakov & Gimelshein, 2018) on the **columns** of a tile of
/// base-2 logits: column `i` holds the new logits `s[j·ld + i]` (`j < rows`) of one softmax row
/// whose running maximum is `m[i]` and running sum `l[i]`. For each column:
///
/// - `m_new = max(m[i], maxⱼ s[j][i])`; the shift is `m_new`, or 0 if it is `-inf`;
/// - `alpha[i] = 2^(m[i] − shift)` (the factor that rescales the column's old sum and output);
/// - `s[j][i] ← 2^(s[j][i] − shift)` for `j < rows` (the probabilities, unnormalised);
/// - `l[i] ← l[i]·alpha[i] + Σⱼ s[j][i]` (summed in order of `j`), `m[i] ← m_new`.
///
/// The number of columns is `m.len()`. Masked logits are `-inf` and get probability exactly 0.
/// Every reduction runs down the columns, so no horizontal sum or maximum is needed.
///
/// `2^x` is a degree-5 minimax polynomial times `2^n` (relative error below `2.5e-7` on
/// `[-126, 0]`, at most `1.8e-7` measured; arguments at or below `-126.5` give exactly 0, those in `(-126.5, -126)` a subnormal close
/// to `2^x`), evaluated by Horner's rule with FMAs on the AVX2 path and with separate multiplies
/// and adds on the portable one, so results may differ in the last bit between machines.
///
/// # Panics
/// If `l` or `alpha` do not have `m.len()` values, `ld < m.len()`, or `s` is shorter than
/// `(rows − 1)·ld + m.len()` (when `rows > 0`).
///
/// # Performance
/// Runtime-dispatched AVX2 + FMA on `x86_64` (eight columns per vector, the last block masked);
/// no allocation.
///
/// # Example
/// ```
/// use squish_core::ops::online_softmax_cols_exp2;
/// // One column, fresh state, logits [0, -1, -inf]: probabilities 1, 1/2, 0.
/// let mut s = [0.0, -1.0, f32::NEG_INFINITY];
/// let (mut m, mut l, mut alpha) = ([f32::NEG_INFINITY], [0.0], [0.0]);
/// online_softmax_cols_exp2(&mut s, 1, 3, &mut m, &mut l, &mut alpha);
/// assert_eq!((s, m, l, alpha), ([1.0, 0.5, 0.0], [0.0], [1.5], [0.0]));
/// ```
pub fn online_softmax_cols_exp2(
    s: &mut [f32],
    ld: usize,
    rows: usize,
    m: &mut [f32],
    l: &mut [f32],
    alpha: &mut [f32],
) {
    simd::gemm::online_softmax_cols_exp2(s, ld, rows, m, l, alpha);
}

/// Transposes a row-major matrix and scales it into a caller buffer:
/// `dst[c·ldd + r] = src[r·cols + c] · scale` for each of the `src.len() / cols` rows `r` and
/// `cols` columns `c` (e.g. packing a query tile as one column per query). Entries of `dst`
/// outside that block are not written.
///
/// One multiply per element on every path, so the result is identical on every machine.
///
/// # Panics
/// If `cols = 0`, `src.len()` is not a multiple of `cols`, `ldd` is less than the number of
/// rows, or `dst` is shorter than `(cols − 1)·ldd + rows`.
///
/// # Performance
/// Runtime-dispatched AVX2 on `x86_64`: 8 × 8 blocks transposed in registers, 8-wide stores;
/// no allocation.
///
/// # Example
/// ```
/// use squish_core::ops::transpose_scaled_into;
/// let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2 × 3
/// let mut dst = [0.0; 6]; // 3 × 2
/// transpose_scaled_into(&src, 3, 0.5, &mut dst, 2);
/// assert_eq!(dst, [0.5, 2.0, 1.0, 2.5, 1.5, 3.0]);
/// ```
pub fn transpose_scaled_into(src: &[f32], cols: usize, scale: f32, dst: &mut [f32], ldd: usize) {
    simd::gemm::transpose_scaled(src, cols, scale, dst, ldd);
}

/// `out[i] = log₂(x[i])`, element-wise, branch-free so that the loop vectorises: a
/// replacement for calling [`f32::log2`] in a loop (a library call per element, ~20 cycles)
/// where many logarithms are needed at once, such as the log-sum-exp of every row of an
/// attention tile.
///
/// Within `2.5e-7` relative (`1e-7` absolute where `|log₂ x| < 1`) of the exact value for
/// every positive finite `x`, subnormals included (tested against `f64`); `log₂ 0 = -inf`,
/// `log₂ +inf = +inf`, and a negative `x` or NaN gives NaN. Every element is computed by the
/// same operations on every machine (no fused multiply-add, no instruction-set dispatch), so
/// results are identical across machines.
///
/// # Method
/// `x = 2^e · m` with `m` in `[√½, √2)` (read from the bits; a subnormal is first scaled by
/// `2²³`), then `log₂ m = (2 / ln 2)·atanh(t)`, `t = (m − 1) / (m + 1)`, `|t| ≤ 0.172`, by its
/// odd series to `t⁹` (truncation below `3e-9` relative).
///
/// # Panics
/// If `out.len() != x.len()`.
///
/// # Example
/// ```
/// use squish_core::ops::log2_into;
/// let mut out = [0.0f32; 4];
/// log2_into(&[8.0, 0.5, 0.0, -1.0], &mut out);
/// assert_eq!(out[..3], [3.0, -1.0, f32::NEG_INFINITY]);
/// assert!(out[3].is_nan());
/// ```
pub fn log2_into(x: &[f32], out: &mut [f32]) {
    assert_eq!(
        x.len(),
        out.len(),
        "log2_into: out has length {}, expected {}",
        out.len(),
        x.len()
    );
    for (o, &v) in out.iter_mut().zip(x) {
        *o = log2_branchless(v);
    }
}

/// One element of [`log2_into`].
#[inline(always)]
fn log2_branchless(x: f32) -> f32 {
    // 2 / (k · ln 2) for k = 1, 3, 5, 7, 9.
    const C: [f32; 5] = [2.885_39, 0.961_796_7, 0.577_078, 0.412_198_6, 0.320_598_9];
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * 8_388_608.0 } else { x };
    // Exponent relative to √½ (0x3F35_04F3), so that the mantissa lands in [√½, √2).
    let bits = xs.to_bits();
    let e = (bits.wrapping_sub(0x3F35_04F3) as i32) >> 23;
    let m = f32::from_bits(bits.wrapping_sub((e as u32) << 23));
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let p = C[4] * t2 + C[3];
    let p = p * t2 + C[2];
    let p = p * t2 + C[1];
    let p = p * t2 + C[0];
    let e = e as f32 - if sub { 23.0 } else { 0.0 };
    let r = e + t * p;
    if x.is_nan() || x < 0.0 {
        f32::NAN
    } else if x == 0.0 {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        f32::INFINITY
    } else {
        r
    }
}

/// `y += alpha * x`, element-wise, in place.
///
/// Each element is computed as `y + (alpha * x)` with two roundings (no fused multiply-add), on
/// every instruction set, so results are identical across machines.
///
/// # Panics
/// If `x.len() != y.len()`.
///
/// # Performance
/// Runtime-dispatched AVX2 on `x86_64`; allocation-free.
///
/// # Example
/// ```
/// use squish_core::ops::axpy;
/// let mut y = [1.0, 1.0, 1.0];
/// axpy(2.0, &[1.0, 2.0, 3.0], &mut y);
/// assert_eq!(y, [3.0, 5.0, 7.0]);
/// ```
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(
        x.len(),
        y.len(),
        "axpy: lengths differ ({} vs {})",
        x.len(),
        y.len()
    );
    simd::axpy(alpha, x, y);
}

/// Decayed rank-1 update fused with a vector-matrix product: for each row `i` of the row-major
/// `a.len() × x.len()` matrix `s`, `s_i ← gamma·s_i + a_i·x`; then `out = Σ_i b_i·s_i` with the
/// updated rows (`out` is overwritten). With `a = k`, `x = v`, `b = q` this is the recurrent
/// step of linear attention / retention (`S ← γS + kᵀv`, `o = qS`) in one pass over `S`.
///
/// # Panics
/// If `a.len() != b.len()`, `x.len() != out.len()` or `s.len() != a.len() * x.len()`.
///
/// # Performance
/// One read and one write of `s`; runtime-dispatched AVX2 + FMA on `x86_64` (column blocks of
/// 32 with the outputs in registers), allocation-free. The AVX2 path rounds once per FMA where
/// the portable path rounds the multiply and the add separately, so the two paths agree within
/// a few ulps, not bit for bit.
///
/// # Example
/// ```
/// use squish_core::ops::decay_rank1_vecmat_into;
/// let mut s = [1.0, 2.0, 3.0, 4.0]; // 2 × 2
/// let mut out = [0.0; 2];
/// decay_rank1_vecmat_into(0.5, &[1.0, 0.0], &[10.0, 20.0], &[1.0, 1.0], &mut s, &mut out);
/// assert_eq!(s, [10.5, 21.0, 1.5, 2.0]);
/// assert_eq!(out, [12.0, 23.0]);
/// ```
pub fn decay_rank1_vecmat_into(
    gamma: f32,
    a: &[f32],
    x: &[f32],
    b: &[f32],
    s: &mut [f32],
    out: &mut [f32],
) {
    simd::decay_rank1_vecmat(gamma, a, x, b, s, out);
}

/// Scales `x` in place to unit Euclidean (L2) norm and returns the norm it had.
///
/// A zero vector (and an empty slice) stays as it is and returns `0.0`. Vectors whose squared
/// norm overflows or underflows `f32` are handled on a slower `f64` path.
///
/// # Example
/// ```
/// use squish_core::ops::l2_normalize;
/// let mut v = [3.0, 4.0];
/// assert_eq!(l2_normalize(&mut v), 5.0);
/// assert_eq!(v, [0.6, 0.8]);
/// let mut z = [0.0; 4];
/// assert_eq!(l2_normalize(&mut z), 0.0);
/// assert_eq!(z, [0.0; 4]);
/// ```
pub fn l2_normalize(x: &mut [f32]) -> f32 {
    let ss = simd::dot(x, x);
    if ss.is_finite() && ss >= f32::MIN_POSITIVE {
        let norm = ss.sqrt();
        let inv = 1.0 / norm;
        for v in x.iter_mut() {
            *v *= inv;
        }
        return norm;
    }
    // Cold path: the squared norm is 0, subnormal or overflowed in f32.
    let norm = norm_f64(x);
    if norm == 0.0 || !norm.is_finite() {
        return norm as f32;
    }
    for v in x.iter_mut() {
        *v = (f64::from(*v) / norm) as f32;
    }
    norm as f32
}

/// Cosine similarity `a·b / (|a| |b|)`, clamped to `[-1, 1]`; `0.0` if either vector is zero.
///
/// # Panics
/// If `a.len() != b.len()`.
///
/// # Example
/// ```
/// use squish_core::ops::cosine;
/// assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), 0.0);
/// assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
/// assert_eq!(cosine(&[0.0, 0.0], &[1.0, 2.0]), 0.0);
/// ```
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "cosine: lengths differ ({} vs {})",
        a.len(),
        b.len()
    );
    let (aa, bb) = (simd::dot(a, a), simd::dot(b, b));
    let ok = |s: f32| s.is_finite() && s >= f32::MIN_POSITIVE;
    if ok(aa) && ok(bb) {
        let ab = simd::dot(a, b);
        if ab.is_finite() {
            return (ab / (aa.sqrt() * bb.sqrt())).clamp(-1.0, 1.0);
        }
    }
    // Cold path: a zero vector, or norms that underflow / overflow in f32.
    let (na, nb) = (norm_f64(a), norm_f64(b));
    if na == 0.0 || nb == 0.0 {
        return 0.0;
    }
    let ab: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) / na) * (f64::from(y) / nb))
        .sum();
    ab.clamp(-1.0, 1.0) as f32
}

/// Euclidean norm in f64, scaled by the largest magnitude so it neither overflows nor underflows.
fn norm_f64(x: &[f32]) -> f64 {
    let m = x.iter().fold(0.0f64, |m, &v| {
        let a = f64::from(v.abs());
        if a > m { a } else { m }
    });
    if m == 0.0 || !m.is_finite() {
        return m;
    }
    let ss: f64 = x.iter().map(|&v| (f64::from(v) / m).powi(2)).sum();
    m * ss.sqrt()
}

/// The largest element, or `None` for an empty slice.
///
/// Uses plain `>` comparisons (not NaN-aware [`f32::max`]) so the reduction vectorises; for
/// input containing NaN the result is unspecified. `-0.0` and `0.0` compare equal, so either may
/// be returned when both are the maximum.
///
/// # Example
/// ```
/// use squish_core::ops::max;
/// assert_eq!(max(&[1.0, -3.0, 7.5, 2.0]), Some(7.5));
/// assert_eq!(max(&[f32::NEG_INFINITY]), Some(f32::NEG_INFINITY));
/// assert_eq!(max(&[]), None);
/// ```
pub fn max(x: &[f32]) -> Option<f32> {
    let &first = x.first()?;
    let mut acc = [first; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            if c[l] > acc[l] {
                acc[l] = c[l];
            }
        }
    }
    for (l, &v) in rem.iter().enumerate() {
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
    Some(m)
}

/// Index of the largest element, the lowest such index on ties; `None` for an empty slice.
///
/// # Example
/// ```
/// use squish_core::ops::argmax;
/// assert_eq!(argmax(&[1.0, 5.0, 2.0, 5.0]), Some(1));
/// assert_eq!(argmax(&[]), None);
/// ```
pub fn argmax(x: &[f32]) -> Option<usize> {
    let m = max(x)?;
    // Two vectorisable passes (maximum, then its first position) beat one branchy pass. With a
    // NaN in the input (outside the contract) fall back to index 0 rather than panic.
    Some(x.iter().position(|&v| v == m).unwrap_or(0))
}

/// `1 / temperature` after checking the temperature; a reciprocal that overflows (temperatures
/// below ~3e-39) is capped at `f32::MAX`, which keeps `0 · (1/T) = 0` for the maximum logit
/// instead of `0 · inf = NaN` and gives the `T → 0` limit (all mass on the maxima).
#[track_caller]
fn inv_temperature(temperature: f32) -> f32 {
    assert!(
        temperature.is_finite() && temperature > 0.0,
        "temperature must be finite and > 0, got {temperature}"
    );
    (1.0 / temperature).min(f32::MAX)
}

/// Softmax of `x / temperature`, allocating the output. See [`softmax_into`].
///
/// # Panics
/// If `temperature` is not finite and positive, or if `x` is non-empty and every element is
/// `-inf`.
///
/// # Example
/// ```
/// use squish_core::ops::softmax;
/// let p = softmax(&[1.0, 2.0, f32::NEG_INFINITY], 1.0);
/// assert!((p[0] + p[1] - 1.0).abs() < 1e-6);
/// assert!(p[1] > p[0]);
/// assert_eq!(p[2], 0.0); // masked logit
/// ```
pub fn softmax(x: &[f32], temperature: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    softmax_into(x, temperature, &mut out);
    out
}

/// Numerically stable softmax of `x / temperature` written into `out`:
/// `outᵢ = exp((xᵢ - max) / T) / Σⱼ exp((xⱼ - max) / T)`.
///
/// Subtracting the maximum keeps every exponent `<= 0`, so large logits (e.g. ±3000) do not
/// overflow. `-inf` entries (masked logits) get probability exactly `0`. An empty `x` is a no-op.
/// Lower temperatures sharpen the distribution, higher ones flatten it.
///
/// # Panics
/// - If `out.len() != x.len()`.
/// - If `temperature` is not finite and `> 0` (components validate it in their configs).
/// - If `x` is non-empty and every element is `-inf` (a fully masked row has no distribution;
///   callers that can produce one must handle it before calling).
///
/// # Performance
/// Three passes (max, exp-and-sum, scale), no allocation; the exponentials dominate.
///
/// # Example
/// ```
/// use squish_core::ops::softmax_into;
/// let mut p = [0.0; 3];
/// softmax_into(&[0.0, 0.0, 0.0], 0.5, &mut p);
/// assert!(p.iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-6));
/// ```
pub fn softmax_into(x: &[f32], temperature: f32, out: &mut [f32]) {
    assert_eq!(
        x.len(),
        out.len(),
        "softmax_into: out has length {}, expected {}",
        out.len(),
        x.len()
    );
    let inv_t = inv_temperature(temperature);
    let Some(m) = max(x) else { return };
    assert!(
        m > f32::NEG_INFINITY,
        "softmax: every logit is -inf (fully masked row)"
    );
    let s = simd::exp_shifted_into(x, m, inv_t, out);
    // s >= 1 (the maximum contributes exp(0) = 1), so the reciprocal is safe.
    let inv = 1.0 / s;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// [`softmax_into`] in place: `x` is replaced by the softmax of `x / temperature`.
///
/// # Panics
/// If `temperature` is not finite and `> 0`, or if `x` is non-empty and every element is `-inf`.
///
/// # Example
/// ```
/// use squish_core::ops::softmax_in_place;
/// let mut x = [1.0f32, 1.0];
/// softmax_in_place(&mut x, 1.0);
/// assert_eq!(x, [0.5, 0.5]);
/// ```
pub fn softmax_in_place(x: &mut [f32], temperature: f32) {
    let inv_t = inv_temperature(temperature);
    let Some(m) = max(x) else { return };
    assert!(
        m > f32::NEG_INFINITY,
        "softmax: every logit is -inf (fully masked row)"
    );
    let inv = 1.0 / simd::exp_shifted_in_place(x, m, inv_t);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Numerically stable log-sum-exp of `x / temperature`: `ln Σᵢ exp(xᵢ / T)`, the log-normaliser
/// of [`softmax`] (`softmax(x, T)ᵢ = exp(xᵢ / T - log_sum_exp(x, T))`).
///
/// Computed as `max / T + ln Σ exp((xᵢ - max) / T)`, so it stays finite for large logits.
/// Returns `-inf` for an empty slice or when every element is `-inf` (the log of an empty sum).
///
/// # Panics
/// If `temperature` is not finite and `> 0`.
///
/// # Performance
/// Two passes (max, exp-sum), no allocation.
///
/// # Example
/// ```
/// use squish_core::ops::log_sum_exp;
/// let l = log_sum_exp(&[1000.0, 1000.0], 1.0);
/// assert!((l - (1000.0 + 2f32.ln())).abs() < 1e-3);
/// assert_eq!(log_sum_exp(&[], 1.0), f32::NEG_INFINITY);
/// ```
pub fn log_sum_exp(x: &[f32], temperature: f32) -> f32 {
    let inv_t = inv_temperature(temperature);
    let Some(m) = max(x) else {
        return f32::NEG_INFINITY;
    };
    if m == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    m * inv_t + simd::exp_shifted_sum(x, m, inv_t).ln()
}

/// The largest element of `x`, validated in the same pass: `None` if `x` is empty or holds a
/// NaN or `+inf` (`-inf`, a masked logit, is allowed; a row of only `-inf` gives
/// `Some(-inf)`).
///
/// Validation and [`max`] fused into one vectorised pass (AVX2 when available): what a
/// lazy softmax reads first.
///
/// # Example
/// ```
/// use squish_core::ops::max_below_inf;
/// assert_eq!(max_below_inf(&[1.0, f32::NEG_INFINITY, 3.5]), Some(3.5));
/// assert_eq!(max_below_inf(&[1.0, f32::NAN]), None);
/// assert_eq!(max_below_inf(&[f32::INFINITY]), None);
/// assert_eq!(max_below_inf(&[]), None);
/// ```
pub fn max_below_inf(x: &[f32]) -> Option<f32> {
    if x.is_empty() {
        return None;
    }
    let (m, ok) = simd::softmax_rows::max_below_inf(x);
    ok.then_some(m)
}

/// The unnormalised softmax of `x / temperature`: writes `exp((xᵢ - max) / T)` into `out`
/// and returns their sum, accumulated in `f64`.
///
/// The stored values are bit for bit those [`softmax_into`] computes before it scales them,
/// and the returned total is their sum to within `f64` rounding, so `outᵢ / total` is the
/// softmax without an `f32` normalisation pass (and without its rounding). A sampler can
/// draw from `out` directly with `u · total`; an acceptance test needs one element and the
/// total.
///
/// `max` should be the maximum of `x` (e.g. from [`max_below_inf`]): every exponent is then
/// `<= 0` and the maximum contributes exactly 1, so the total is `>= 1`. `-inf` entries give
/// exactly 0.
///
/// # Panics
/// If `out.len() != x.len()`, or `temperature` is not finite and `> 0`.
///
/// # Performance
/// One vectorised pass (the exponentials dominate; the `f64` sum costs two conversions and
/// two adds per eight elements), no allocation.
///
/// # Example
/// ```
/// use squish_core::ops::{softmax, softmax_weights_into};
/// let x = [1.0f32, 2.0, f32::NEG_INFINITY];
/// let mut w = [0.0f32; 3];
/// let total = softmax_weights_into(&x, 2.0, 1.0, &mut w);
/// assert_eq!(w[1], 1.0);
/// assert_eq!(w[2], 0.0);
/// let p = softmax(&x, 1.0);
/// assert!((f64::from(w[0]) / total - f64::from(p[0])).abs() < 1e-7);
/// ```
pub fn softmax_weights_into(x: &[f32], max: f32, temperature: f32, out: &mut [f32]) -> f64 {
    assert_eq!(
        x.len(),
        out.len(),
        "softmax_weights_into: out has length {}, expected {}",
        out.len(),
        x.len()
    );
    let inv_t = inv_temperature(temperature);
    simd::softmax_rows::exp_weights_into(x, max, inv_t, out)
}

/// Per-term slack of the interpolated exponentials of [`softmax_total_bounds`]: each term
/// `Aᵢ` is at least `(1 - BOUND_TERM)` times the weight [`softmax_weights_into`] stores (the
/// roundings of both passes derive below 1e-4, the rounded offset of the fused multiply-add
/// included; subnormal / flushed tails are covered too).
pub(crate) const BOUND_TERM: f64 = 3e-4;

/// `2²³ · log₂e / temperature` in `f32`, the scale of the interpolated exponentials, or `None`
/// if it overflows or the offset `127·2²³ - max · scale` of the fused multiply-add exceeds
/// `2³³` in magnitude (`|max| / temperature` above ~700), where its rounding would exceed the
/// margin.
///
/// # Panics
/// If `temperature` is not finite and `> 0`.
pub(crate) fn bound_scale(max: f32, temperature: f32) -> Option<f32> {
    let inv_t = inv_temperature(temperature);
    let c1 = (f64::from(inv_t) * 8_388_608.0 * std::f64::consts::LOG2_E) as f32;
    let offset = f64::from(simd::softmax_rows::BOUND_BIAS) - f64::from(max) * f64::from(c1);
    (c1.is_finite() && offset.abs() <= 8_589_934_592.0).then_some(c1)
}

/// Two-sided bounds on the total [`softmax_weights_into`] returns, without exponentials:
/// `Some((lo, hi))` with `lo <= total <= hi` and `hi / lo < 1.07`; `None` if the temperature is
/// so small that `2²³ · log₂e / temperature` overflows `f32`, if `|max| / temperature` exceeds
/// ~700 (see the margins below), or `x` is empty or longer than
/// 2 000 000.
///
/// One pass reads each `2^((xᵢ - max) / T · log₂e)` as the linear interpolation between
/// integer exponents that the bits of `(exponent + 127) · 2²³` give for free (Schraudolph,
/// 1999): it lies above the exponential by a factor in `[1, 1.0615]`. The bounds add
/// margins for every rounding of both passes (`3e-4` per term, `(n/32 + 8) · 2⁻²³` for the
/// `f32` sum) and rely on the total being `>= 1` (the maximum's weight is exactly 1). With
/// them a lazy softmax decides most comparisons against a probability without the
/// exponentials: a speculative verifier accepts or rejects a draft token exactly when the
/// bounds leave no doubt, and computes the total only when they do.
///
/// Same preconditions as [`softmax_weights_into`]: `max` is the maximum of `x`, and `x` holds no
/// NaN or `+inf` (validate first, e.g. with [`max_below_inf`]); otherwise the result is
/// meaningless.
///
/// # Panics
/// If `temperature` is not finite and `> 0`.
///
/// # Performance
/// One vectorised pass of a subtract, multiply, add, clamp and conversion per element (AVX2
/// when available), about a third of [`softmax_weights_into`]; no allocation.
///
/// # Example
/// ```
/// use squish_core::ops::{softmax_total_bounds, softmax_weights_into};
/// let x = [0.5f32, -1.0, 2.0, 0.0];
/// let (lo, hi) = softmax_total_bounds(&x, 2.0, 0.7).unwrap();
/// let mut w = [0.0f32; 4];
/// let total = softmax_weights_into(&x, 2.0, 0.7, &mut w);
/// assert!(lo <= total && total <= hi);
/// assert!(hi / lo < 1.07);
/// ```
pub fn softmax_total_bounds(x: &[f32], max: f32, temperature: f32) -> Option<(f64, f64)> {
    /// `max (1 + f) / 2^f` over `f` in `[0, 1)` is 1.061476 (at `f = 1/ln 2 - 1`).
    const INTERP: f64 = 1.061_5;
    const TERM: f64 = BOUND_TERM;
    if x.is_empty() || x.len() > 2_000_000 {
        return None;
    }
    let c1 = bound_scale(max, temperature)?;
    let s = f64::from(simd::softmax_rows::exp_bound_sum(x, max, c1));
    let gamma = (x.len() as f64 / 32.0 + 8.0) * f64::from(f32::EPSILON);
    let lo = s / ((1.0 + gamma) * INTERP * (1.0 + TERM));
    let hi = s * (1.0 + gamma) / (1.0 - TERM);
    Some((lo, hi))
}

/// The ordering of top-k: larger value first, then lower index first. `-0.0` and `0.0` are the
/// same value; anything else (NaN, outside the contract) is ordered by [`f32::total_cmp`] so the
/// order stays total and sorting never panics.
fn top_k_order(x: &[f32], a: usize, b: usize) -> Ordering {
    let key = |v: f32| if v == 0.0 { 0.0 } else { v };
    key(x[b]).total_cmp(&key(x[a])).then(a.cmp(&b))
}

/// Indices of the `k` largest elements of `x`, largest first (ties: lower index first),
/// allocating the output. See [`top_k_into`].
///
/// # Example
/// ```
/// use squish_core::ops::top_k;
/// assert_eq!(top_k(&[0.1, 0.7, 0.3, 0.7], 3), vec![1, 3, 2]);
/// assert_eq!(top_k(&[1.0, 2.0], 5), vec![1, 0]);
/// ```
pub fn top_k(x: &[f32], k: usize) -> Vec<usize> {
    let mut out = Vec::new();
    top_k_into(x, k, &mut out);
    out
}

/// Writes into `out` the indices of the `min(k, x.len())` largest elements of `x`, ordered by
/// value descending and, among equal values, by index ascending.
///
/// The result is deterministic and equal to the first `k` entries of a stable sort of the
/// indices by descending value. `-0.0` and `0.0` count as equal values. `out` is cleared first
/// and its capacity reused. `k == 0` gives an empty result; `k >= x.len()` gives every index.
///
/// # Performance
/// `O(n + k log k)`. For `k < n / 16`, one scan keeps the best `k` in a bounded heap and
/// skips, eight values at a time, everything not larger than the heap's worst (≈ 0.7 ns per
/// element at `n = 49 152`, `k = 50`); for `k <= n / 2`, a bisection on the value range finds
/// a threshold that at least `k` and at most about `k + k/8` values reach (each step one
/// runtime-dispatched AVX2 count over `x`), and only those are packed and selected (top-32 of
/// 256: ~0.3 µs); otherwise, or when `x` holds NaN or infinity, an `O(n)` selection
/// ([`slice::select_nth_unstable`]) among all. Then a sort of those `k`. On 64-bit targets (for `x.len() <= 2³²`) each candidate is packed
/// into one `usize` — an order-preserving transform of the value's bits above the index — so
/// selection and sort compare plain integers instead of chasing indices into `x`. No allocation
/// once `out` has capacity for `x.len()` indices.
///
/// # Example
/// ```
/// use squish_core::ops::top_k_into;
/// let mut idx = Vec::with_capacity(8);
/// top_k_into(&[3.0, 1.0, 3.0, 2.0], 2, &mut idx);
/// assert_eq!(idx, [0, 2]);
/// ```
pub fn top_k_into(x: &[f32], k: usize, out: &mut Vec<usize>) {
    out.clear();
    let k = k.min(x.len());
    if k == 0 {
        return;
    }
    #[cfg(target_pointer_width = "64")]
    if u32::try_from(x.len() - 1).is_ok() {
        top_k_packed(x, k, out);
        return;
    }
    top_k_by_comparator(x, k, out);
}

/// [`top_k_into`] for any length: indices selected and sorted with [`top_k_order`].
/// `1 <= k <= x.len()`, `out` empty.
fn top_k_by_comparator(x: &[f32], k: usize, out: &mut Vec<usize>) {
    out.extend(0..x.len());
    if k < x.len() {
        out.select_nth_unstable_by(k - 1, |&a, &b| top_k_order(x, a, b));
        out.truncate(k);
    }
    out.sort_unstable_by(|&a, &b| top_k_order(x, a, b));
}

/// Below `x.len() / HEAP_RATIO`, `k` is small enough that a bounded heap beats selection.
#[cfg(target_pointer_width = "64")]
const HEAP_RATIO: usize = 16;

/// [`top_k_packed`] for `k << n`: a max-heap of the `k` smallest packed keys seen so far. Almost
/// every element fails the single comparison against the heap's top (for values in random
/// order only about `k · ln(n / k)` replacements happen), so the scan costs about one compare
/// per element instead of selection's several passes. The heap lives in `out`'s buffer, so this
/// allocates nothing beyond `k` slots. Same result as selection: the packed keys are distinct.
#[cfg(target_pointer_width = "64")]
fn top_k_packed_heap(x: &[f32], k: usize, out: &mut Vec<usize>) {
    use std::collections::BinaryHeap;
    let key = |i: usize, v: f32| ((descending_key(v) as usize) << 32) | i;
    // The value of the heap's worst member: a later element (higher index) beats it only with a
    // strictly larger value, so most of the scan is a vectorisable `>` test on 8 values.
    let value_of = |packed: usize| x[packed & 0xffff_ffff];
    out.extend(x[..k].iter().enumerate().map(|(i, &v)| key(i, v)));
    let mut heap = BinaryHeap::from(std::mem::take(out));
    let mut worst = heap.peek().map_or(f32::INFINITY, |&p| value_of(p));
    let offer = |i: usize, v: f32, heap: &mut BinaryHeap<usize>, worst: &mut f32| {
        // Callers only offer `v > worst`: a strictly larger value has a strictly smaller packed
        // key, so it always replaces the top (`-0.0` and `0.0` are equal and never offered).
        let c = key(i, v);
        if let Some(mut top) = heap.peek_mut()
            && c < *top
        {
            *top = c;
        }
        *worst = heap.peek().map_or(f32::INFINITY, |&p| value_of(p));
    };
    let rest = &x[k..];
    let (chunks, tail) = rest.as_chunks::<8>();
    for (c, chunk) in chunks.iter().enumerate() {
        if chunk.iter().fold(false, |any, &v| any | (v > worst)) {
            for (j, &v) in chunk.iter().enumerate() {
                if v > worst {
                    offer(k + c * 8 + j, v, &mut heap, &mut worst);
                }
            }
        }
    }
    let tail_start = k + chunks.len() * 8;
    for (j, &v) in tail.iter().enumerate() {
        if v > worst {
            offer(tail_start + j, v, &mut heap, &mut worst);
        }
    }
    *out = heap.into_vec();
    out.sort_unstable();
    for o in out.iter_mut() {
        *o &= 0xffff_ffff;
    }
}

/// A `u32` whose ascending order is the *descending* order of the values (with `-0.0 == 0.0`,
/// and [`f32::total_cmp`] order otherwise).
#[cfg(target_pointer_width = "64")]
fn descending_key(v: f32) -> u32 {
    let bits = if v == 0.0 { 0 } else { v.to_bits() };
    // The usual order-preserving map to unsigned (flip all bits of negatives, the sign bit of
    // positives), then inverted for descending order.
    let ascending = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    !ascending
}

/// [`top_k_into`] with each candidate packed as `descending_key << 32 | index`: ascending
/// integer order is exactly (value descending, index ascending). `1 <= k <= x.len() <= 2³²`.
#[cfg(target_pointer_width = "64")]
fn top_k_packed(x: &[f32], k: usize, out: &mut Vec<usize>) {
    if k.saturating_mul(HEAP_RATIO) < x.len() {
        top_k_packed_heap(x, k, out);
        return;
    }
    if k.saturating_mul(2) <= x.len() && top_k_by_threshold(x, k, out) {
        return;
    }
    out.clear();
    out.extend(
        x.iter()
            .enumerate()
            .map(|(i, &v)| ((descending_key(v) as usize) << 32) | i),
    );
    if k < x.len() {
        out.select_nth_unstable(k - 1);
        out.truncate(k);
    }
    out.sort_unstable();
    for o in out.iter_mut() {
        *o &= 0xffff_ffff;
    }
}

/// [`top_k_packed`] narrowed by a value threshold: bisection on the finite range of `x` finds
/// `t` with `count(x >= t) >= k`, stopping once at most `k + k/8` values pass (or the interval
/// cannot shrink, e.g. on ties); only the positions with `x >= t` are packed and sorted. Exact:
/// the `k`-th largest value is `>= t` whenever `k` values are, so every member of the top `k`
/// (ties at the `k`-th value included) is a candidate, and the packed order decides among them.
/// Each count is one vectorised pass (`simd::select`), far cheaper than selection's passes
/// over packed keys. Returns `false`, with `out` unspecified, when `x` holds a NaN or an
/// infinity (the caller then selects among all). `1 <= 2k <= x.len()`.
#[cfg(target_pointer_width = "64")]
fn top_k_by_threshold(x: &[f32], k: usize, out: &mut Vec<usize>) -> bool {
    let Some(t) = simd::select::top_k_threshold(x, k) else {
        return false;
    };
    out.clear();
    simd::select::positions_ge(x, t, out);
    for o in out.iter_mut() {
        *o |= (descending_key(x[*o]) as usize) << 32;
    }
    if out.len() > 2 * k {
        out.select_nth_unstable(k - 1);
        out.truncate(k);
    }
    out.sort_unstable();
    out.truncate(k);
    for o in out.iter_mut() {
        *o &= 0xffff_ffff;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_and_argmax_on_every_tail_length() {
        for n in 1..40 {
            let x: Vec<f32> = (0..n).map(|i| ((i * 7) % 11) as f32).collect();
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), Some(m));
            assert_eq!(argmax(&x), x.iter().position(|&v| v == m));
        }
    }

    #[test]
    fn softmax_masked_logits() {
        let x = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        assert_eq!(softmax(&x, 2.0), [0.0, 0.5, 0.0, 0.5]);
        let mut y = x;
        softmax_in_place(&mut y, 0.1);
        assert_eq!(y, [0.0, 0.5, 0.0, 0.5]);
    }

    #[test]
    fn tiny_temperature_is_the_argmax_limit() {
        let p = softmax(&[1.0, 3.0, 3.0, -2.0], 1e-45);
        assert_eq!(p, [0.0, 0.5, 0.5, 0.0]);
        assert!(log_sum_exp(&[1.0, 3.0], 1e-45).is_infinite());
    }

    #[test]
    #[should_panic(expected = "fully masked")]
    fn softmax_all_masked_panics() {
        let _ = softmax(&[f32::NEG_INFINITY; 3], 1.0);
    }

    #[test]
    #[should_panic(expected = "temperature must be finite and > 0")]
    fn zero_temperature_panics() {
        let _ = log_sum_exp(&[1.0], 0.0);
    }

    #[test]
    fn norms_outside_f32_range_use_the_f64_path() {
        let mut big = [3e30f32, 4e30];
        let n = l2_normalize(&mut big);
        assert!((n / 5e30 - 1.0).abs() < 1e-6);
        assert!((big[0] - 0.6).abs() < 1e-6 && (big[1] - 0.8).abs() < 1e-6);
        let mut tiny = [3e-30f32, 4e-30];
        let n = l2_normalize(&mut tiny);
        assert!((n / 5e-30 - 1.0).abs() < 1e-6);
        assert!((tiny[0] - 0.6).abs() < 1e-6);
        assert!((cosine(&[1e30, 1e30], &[2e30, 2e30]) - 1.0).abs() < 1e-6);
        assert!((cosine(&[1e-30, 0.0], &[-1e-30, 0.0]) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn packed_top_k_matches_the_comparator_order() {
        squish_testkit::prop::check("ops_top_k_packed", 200, |rng| {
            use rand::RngExt;
            let n = rng.random_range(0..200);
            let specials = [
                0.0,
                -0.0,
                f32::NEG_INFINITY,
                f32::INFINITY,
                f32::MIN,
                f32::MAX,
            ];
            let x: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..4) {
                    0 => specials[rng.random_range(0..specials.len())],
                    // Any finite bit pattern (the lowest exponent bit cleared rules out inf and NaN).
                    1 => f32::from_bits(rng.random::<u32>() & 0xff7f_ffff),
                    2 => rng.random_range(-2i32..3) as f32,
                    _ => rng.random_range(-1e3f32..1e3),
                })
                .collect();
            let mut expected: Vec<usize> = (0..n).collect();
            expected.sort_by(|&a, &b| top_k_order(&x, a, b));
            for k in [0, 1, n / 3, n, n + 1] {
                assert_eq!(top_k(&x, k), expected[..k.min(n)], "k={k} x={x:?}");
                let k = k.min(n);
                if k > 0 {
                    let mut out = Vec::new();
                    top_k_by_comparator(&x, k, &mut out);
                    assert_eq!(out, expected[..k], "comparator path, k={k}");
                }
            }
        });
    }

    #[test]
    fn top_k_treats_signed_zeros_as_ties() {
        assert_eq!(top_k(&[-0.0, 0.0, -1.0], 2), [0, 1]);
        assert_eq!(top_k(&[0.0, -0.0, -1.0], 2), [0, 1]);
    }
}
