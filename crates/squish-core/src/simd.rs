//! Runtime-dispatched SIMD kernels: the one module of the crate allowed to use `unsafe`.
//!
//! Every kernel has a portable scalar twin (`*_scalar`) and, on `x86_64`, an AVX2 + FMA
//! version. The instruction set is detected once per process (`is_x86_feature_detected!`,
//! cached in a [`OnceLock`]) and every call dispatches on the cached value; other targets always
//! take the scalar path. Setting the environment variable `SQUISH_SIMD=off` (read once, at
//! detection) forces the scalar path, so `SQUISH_SIMD=off cargo test` checks the portable
//! kernels through the public API as well. Only safe wrappers leave this module.
//!
//! Kernels: [`dot`], [`axpy`], the GGML block quantisers' inner loops, the exponential pass of softmax / log-sum-exp
//! ([`exp_shifted_into`], [`exp_shifted_in_place`], [`exp_shifted_sum`]:
//! `exp((xᵢ - m) · inv_t)` and its sum), and the squared distances of k-means ([`sq_dist`],
//! [`nearest`]); in `simd/rows.rs`, the row-batched [`dot_rows`] (eight rows share one
//! transposed horizontal sum, bit-identical to [`dot`] per row) and [`fold_min_max`] (page
//! minima / maxima with the finiteness probe in the same pass). `max` is not here: the portable lane-maximum loop already
//! compiles to packed SSE compares and runs at ~0.05 ns per element, far below the exponentials.
//!
//! # Agreement with the scalar twins
//! - [`dot`]: the AVX2 version keeps 32 partial sums (4 × 8 lanes, fused multiply-add) where the
//!   scalar twin keeps 8, so the summation order differs. Each is within `(n + 1) · ε/2 · Σ|aᵢbᵢ|`
//!   of the exact value (ε = 2⁻²³), so they agree to within twice that; the tests check exactly
//!   this bound.
//! - [`axpy`]: the AVX2 version uses a separate multiply and add (no FMA), the same two
//!   roundings as the scalar loop, so results are **bit-identical**.
//! - [`nearest_blocked`] / [`nearest_blocked_pair`] (the k-means assignment kernel, on the
//!   coordinate-major layout of [`block_centroids`]: eight centroids per register, up to 32
//!   per pass over the point, two points per pass for the pair): both paths sum each distance
//!   over the coordinates in order; the AVX2 version fuses each square and add (one rounding
//!   where the twin has two), so each distance is within `(dim + 1) · ε/2` (relative) of the
//!   exact value on both paths; exact inputs give identical indices and distances, and the pair
//!   kernel is bit-identical to two single calls. The tests check all three.
//! - [`sq_dist`], [`nearest`]: as for `dot` (32 vs 8 partial sums), each distance within
//!   `(n + 3) · ε/2` (relative) of the exact value on both paths. Exact inputs (e.g. small
//!   integers) give identical distances and so identical nearest indices; otherwise a near-tie
//!   between two centroids can resolve differently on the two paths.
//! - exponential pass: the scalar twin calls the platform's [`f32::exp`] (≈ 0.5 ulp); the AVX2
//!   version uses a Cephes-style range reduction and degree-7 polynomial whose measured worst
//!   relative error over `[-87.33, 0]` is ≈ 0.98 ε (about 2 ulp); the tests check each element
//!   within 2 ε of the twin and the sums within `(n + 4) ε` (relative). Exponents below
//!   `ln(f32::MIN_POSITIVE)` ≈ -87.3, including the `-inf` of masked logits, give exactly 0 on
//!   the AVX2 path (the twin gives a subnormal or 0): a probability below `1.2e-38` of the
//!   maximum's is flushed to zero. `exp(0)` is exactly 1 on both paths.
//! - [`decay_rank1_vecmat`] (the recurrent step of linear attention / retention,
//!   `s_i ← γ·s_i + a_i·x`, `out = Σ b_i·s_i`): the AVX2 version uses FMA (one rounding where the
//!   twin has two) and sums the output rows in the same order; each state entry is within
//!   `2ε·(|γ·s| + |a·x|)` of the exact value on both paths and each output within
//!   `(rows + 3)·ε·Σ|b_i·s_i|`; the test checks both bounds against f64.
//!
//! # Measured gain
//! Ad-hoc timing (release build, default target without `target-cpu`, so the scalar twins
//! compile to SSE2; 2-core x86_64 VM with AVX2 + FMA; median over repeated calls, warm cache):
//!
//! | kernel | n | scalar twin | AVX2(+FMA) | speed-up |
//! |---|---:|---:|---:|---:|
//! | dot | 64 | 14.9 ns | 8.0 ns | 1.9× |
//! | dot | 256 | 47.8 ns | 15.4 ns | 3.1× |
//! | dot | 4096 | 686 ns | 237 ns | 2.9× |
//! | dot | 65536 | 11.7 µs | 6.2 µs | 1.9× (memory-bound) |
//! | axpy | 64 | 7.9 ns | 6.1 ns | 1.3× |
//! | axpy | 4096 | 413 ns | 313 ns | 1.3× |
//! | axpy | 65536 | 7.4 µs | 7.2 µs | 1.0× (memory-bound) |
//! | `ops::softmax_into` | 64 | 318 ns | 67 ns | 4.7× |
//! | `ops::softmax_into` | 4096 | 12.9 µs | 2.8 µs | 4.6× |
//! | `ops::softmax_into` | 32000 | 101 µs | 21 µs | 4.8× |
//! | `ops::log_sum_exp` | 4096 | 12.8 µs | 2.3 µs | 5.5× |
//! | `KMeans::assign_into`, k = 32, dim = 32 | 128 points | 40.9 µs | 13.4 µs | 3.1× |
//! | `KMeans::fit`, k = 32, dim = 32 | 400 points | 1.71 ms | 0.60 ms | 2.9× |
//!
//! The GGML block quantisers dispatch per block to [`max_abs32`], [`first_max_abs32`],
//! [`q8_0_codes`] and [`q4_0_codes`] (bit-identical twins: the same `f32` operations lane by
//! lane). Instructions per element of `quantize_row_q8_0` on 4096 values (callgrind): 14.1
//! portable, 5.8 with AVX2 (including the up-front finiteness scan); `quantize_row_q4_0`:
//! 14.7 and 6.0.
//!
//! Since then the quantisers run the whole-row kernels of [`ggml_rows`] (eight blocks per
//! vector of scales, about 1.4 instructions per element, 4x faster); the per-block kernels
//! above serve their block-by-block fallback (bad input, CPUs without F16C). [`ggml_rows`]
//! also holds the GGML dequantisers with an F16C scale and the checked `f32` → `f16` row.
//!
//! The blocked kernel (`nearest_blocked`) replaced the row-major scan ([`nearest`], now a test
//! reference) in k-means: on the same loaded VM, criterion medians for `KvCodec/encode_keys`
//! (128 points, k = 32, dim = 32, the `assign_into` workload) went from 22.5 µs to 7.3 µs and
//! `KMeans::fit` (k = 32, dim = 32, 400 points) from 0.76–0.99 ms to 0.41–0.47 ms: the row-major
//! scan paid a horizontal sum and a dependent compare per centroid, the blocked kernel keeps
//! eight (sixteen for a pair) independent FMA chains and reduces once per point.
//!
//! `dot` gains from wider registers, FMA and more accumulators; `axpy` is bound by loads and
//! stores and gains less, but never loses; softmax and log-sum-exp were dominated by one libm
//! `expf` call per element (≈ 3 ns) and now evaluate eight exponentials at once; the k-means
//! distance scan dispatches once per point and inlines a 32-wide distance kernel.
//! `decay_rank1_vecmat` at 64 × 64 (one retention head) measured 2.2× over its twin (3.6 vs
//! 8.0 µs for four heads on the loaded VM); it is bound by one read and one write of the state.

#![allow(unsafe_code)]

use std::sync::OnceLock;

pub(crate) mod gemm;
pub(crate) mod ggml_rows;
pub(crate) mod grouped_rows;
mod rows;
pub(crate) use rows::{all_finite, fold_min_max, fold_min_max_copy};
pub(crate) mod select;
pub(crate) mod softmax_rows;

/// The instruction set the kernels dispatch to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Portable code (SSE2 on `x86_64`, whatever the compiler vectorises elsewhere).
    Scalar,
    /// AVX2 and FMA, detected at run time.
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

static ISA: OnceLock<Isa> = OnceLock::new();

/// The detected instruction set, computed once.
pub(crate) fn isa() -> Isa {
    *ISA.get_or_init(detect)
}

fn detect() -> Isa {
    // Escape hatch for testing and for bisecting numerical differences between machines: the
    // whole test suite can be run on the portable path with `SQUISH_SIMD=off cargo test`.
    if std::env::var_os("SQUISH_SIMD").is_some_and(|v| v == "off") {
        return Isa::Scalar;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
    }
    Isa::Scalar
}

/// Number of independent accumulators of the scalar reductions (as ndarray does): enough for the
/// compiler to keep them in vector registers.
pub(crate) const LANES: usize = 8;

/// Dot product `Σ aᵢ·bᵢ`, dispatched.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after `is_x86_feature_detected!` confirmed both the
        // AVX2 and FMA features on this CPU, which is what `dot_avx2_fma` is compiled for.
        Isa::Avx2Fma => unsafe { x86::dot_avx2_fma(a, b) },
        Isa::Scalar => dot_scalar(a, b),
    }
}

/// `out[j] = dot(x, row j)` for contiguous rows of `x.len() > 0` values, dispatched once;
/// each score bit-identical to [`dot`] on that row.
pub(crate) fn dot_rows(x: &[f32], rows: &[f32], out: &mut [f32]) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { rows::x86::dot_rows_avx2_fma(x, rows, out) },
        Isa::Scalar => {
            for (o, r) in out.iter_mut().zip(rows.chunks_exact(x.len())) {
                *o = dot_scalar(x, r);
            }
        }
    }
}

/// Whether the CPU converts between `f32` and `f16` in hardware (F16C), detected once;
/// `SQUISH_SIMD=off` turns it off like the other kernels.
fn has_f16c() -> bool {
    static F16C: OnceLock<bool> = OnceLock::new();
    *F16C.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            isa() != Isa::Scalar && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// `f32` → `f16` bits (round to nearest even), dispatched: F16C eight at a time, else `half`'s
/// slice conversion. Both give IEEE round-to-nearest-even results, so they agree bit for bit
/// (tested over every `f16` and random `f32` bit patterns).
pub(crate) fn f32_to_f16(src: &[f32], dst: &mut [half::f16]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C (and AVX, implied by the AVX2 `Isa`) was detected.
        unsafe { x86::f32_to_f16_f16c(src, bytemuck::cast_slice_mut(dst)) };
        return;
    }
    half::slice::HalfFloatSliceExt::convert_from_f32_slice(dst, src);
}

/// `f16` → `f32` (exact), dispatched like [`f32_to_f16`].
pub(crate) fn f16_to_f32(src: &[half::f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C (and AVX, implied by the AVX2 `Isa`) was detected.
        unsafe { x86::f16_to_f32_f16c(bytemuck::cast_slice(src), dst) };
        return;
    }
    half::slice::HalfFloatSliceExt::convert_to_f32_slice(src, dst);
}

/// `Q8_0` blocks to `f32` rows, dispatched once per call; exact (and so bit-identical) on both
/// paths.
pub(crate) fn dequantize_q8_0(blocks: &[crate::quant::BlockQ8_0], out: &mut [[f32; 32]]) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::dequantize_q8_0_avx2(blocks, out) },
        Isa::Scalar => crate::quant::dequantize_q8_0_scalar(blocks, out),
    }
}

/// `Q4_0` blocks to `f32` rows, dispatched once per call; exact (and so bit-identical) on both
/// paths.
pub(crate) fn dequantize_q4_0(blocks: &[crate::quant::BlockQ4_0], out: &mut [[f32; 32]]) {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::dequantize_q4_0_avx2(blocks, out) },
        Isa::Scalar => crate::quant::dequantize_q4_0_scalar(blocks, out),
    }
}

/// `y += alpha * x`, dispatched.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "axpy: length mismatch");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `dot`: AVX2 was detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::axpy_avx2(alpha, x, y) },
        Isa::Scalar => axpy_scalar(alpha, x, y),
    }
}

/// Squared Euclidean distance `Σ (aᵢ - bᵢ)²`, dispatched.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "sq_dist: length mismatch");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::sq_dist_avx2_fma(a, b) },
        Isa::Scalar => sq_dist_scalar(a, b),
    }
}

/// The row of the row-major `centroids` (rows of `x.len()` floats) nearest to `x` in squared
/// Euclidean distance, and that distance; the lower index on ties, `(0, inf)` for no rows.
/// Dispatched once per call, so the per-row distances are inlined.
///
/// # Panics
/// If `x` is empty or `centroids.len()` is not a multiple of `x.len()`.
// Kept as the row-major reference of `nearest_blocked` (used by k-means until the blocked
// kernel replaced it; see `blocked_tests`).
#[cfg(test)]
pub(crate) fn nearest(centroids: &[f32], x: &[f32]) -> (usize, f32) {
    assert!(
        !x.is_empty() && centroids.len().is_multiple_of(x.len()),
        "nearest: {} centroid floats for points of length {}",
        centroids.len(),
        x.len()
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::nearest_avx2_fma(centroids, x) },
        Isa::Scalar => nearest_scalar(centroids, x),
    }
}

/// Scalar twin of [`sq_dist`]: eight lane accumulators. Lengths must match.
pub(crate) fn sq_dist_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..LANES {
            let d = xa[l] - xb[l];
            acc[l] += d * d;
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        let d = x - y;
        acc[l] += d * d;
    }
    reduce_lanes(acc)
}

/// Scalar twin of [`nearest`]. Shapes must be valid.
// Kept as the row-major reference of `nearest_blocked` (used by k-means until the blocked
// kernel replaced it; see `blocked_tests`).
#[cfg(test)]
pub(crate) fn nearest_scalar(centroids: &[f32], x: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for (j, c) in centroids.chunks_exact(x.len()).enumerate() {
        let d = sq_dist_scalar(x, c);
        if d < best.1 {
            best = (j, d);
        }
    }
    best
}

/// Scalar twin of [`dot`]: eight lane accumulators over `chunks_exact(8)`, then the tail, then a
/// pairwise sum of the lanes. Lengths must match (checked by the caller).
pub(crate) fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += xa[l] * xb[l];
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    reduce_lanes(acc)
}

/// Scalar twin of [`axpy`]. Lengths must match (checked by the caller).
pub(crate) fn axpy_scalar(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Writes `exp((xᵢ - m) · inv_t)` into `out` and returns the sum of what it wrote: the
/// exponential pass of softmax, dispatched. Entries whose exponent is below `ln(f32::MIN_POSITIVE)`
/// (≈ -87.3, including `-inf`, i.e. masked logits) give exactly `0` on the AVX2 path.
///
/// # Panics
/// If the lengths differ.
pub(crate) fn exp_shifted_into(x: &[f32], m: f32, inv_t: f32, out: &mut [f32]) -> f32 {
    assert_eq!(x.len(), out.len(), "exp_shifted_into: length mismatch");
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::exp_shifted_into_avx2(x, m, inv_t, out) },
        Isa::Scalar => exp_shifted_into_scalar(x, m, inv_t, out),
    }
}

/// [`exp_shifted_into`] in place: `x` is replaced by `exp((xᵢ - m) · inv_t)`; returns the sum.
pub(crate) fn exp_shifted_in_place(x: &mut [f32], m: f32, inv_t: f32) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::exp_shifted_in_place_avx2(x, m, inv_t) },
        Isa::Scalar => exp_shifted_in_place_scalar(x, m, inv_t),
    }
}

/// `Σ exp((xᵢ - m) · inv_t)` without writing anything: the log-sum-exp pass, dispatched.
pub(crate) fn exp_shifted_sum(x: &[f32], m: f32, inv_t: f32) -> f32 {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::exp_shifted_sum_avx2(x, m, inv_t) },
        Isa::Scalar => exp_shifted_sum_scalar(x, m, inv_t),
    }
}

/// Scalar twin of [`exp_shifted_into`] ([`f32::exp`] from the platform's libm, lane sums).
pub(crate) fn exp_shifted_into_scalar(x: &[f32], m: f32, inv_t: f32, out: &mut [f32]) -> f32 {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v - m) * inv_t).exp();
    }
    lane_sum(out)
}

/// Scalar twin of [`exp_shifted_in_place`].
pub(crate) fn exp_shifted_in_place_scalar(x: &mut [f32], m: f32, inv_t: f32) -> f32 {
    for v in x.iter_mut() {
        *v = ((*v - m) * inv_t).exp();
    }
    lane_sum(x)
}

/// Scalar twin of [`exp_shifted_sum`].
pub(crate) fn exp_shifted_sum_scalar(x: &[f32], m: f32, inv_t: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += ((c[l] - m) * inv_t).exp();
        }
    }
    for (l, &v) in rem.iter().enumerate() {
        acc[l] += ((v - m) * inv_t).exp();
    }
    reduce_lanes(acc)
}

/// Sum with eight lane accumulators.
pub(crate) fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    for (l, &v) in rem.iter().enumerate() {
        acc[l] += v;
    }
    reduce_lanes(acc)
}

/// Pairwise sum of eight lane accumulators.
pub(crate) fn reduce_lanes(acc: [f32; LANES]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Decayed rank-1 update fused with a vector-matrix product, dispatched: for each row `i` of the
/// row-major `a.len() × x.len()` matrix `s`, `s_i ← gamma·s_i + a_i·x`, and
/// `out = Σ_i b_i·s_i` (after the update; `out` is overwritten). The recurrent step of linear
/// attention / retention.
///
/// # Panics
/// If `a.len() != b.len()`, `x.len() != out.len()` or `s.len() != a.len() * x.len()`.
pub(crate) fn decay_rank1_vecmat(
    gamma: f32,
    a: &[f32],
    x: &[f32],
    b: &[f32],
    s: &mut [f32],
    out: &mut [f32],
) {
    assert_eq!(a.len(), b.len(), "decay_rank1_vecmat: a and b differ");
    assert_eq!(x.len(), out.len(), "decay_rank1_vecmat: x and out differ");
    assert_eq!(
        s.len(),
        a.len() * x.len(),
        "decay_rank1_vecmat: s is not a×x"
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86::decay_rank1_vecmat_avx2_fma(gamma, a, x, b, s, out) },
        Isa::Scalar => decay_rank1_vecmat_scalar(gamma, a, x, b, s, out),
    }
}

/// Scalar twin of [`decay_rank1_vecmat`] (lengths checked by the caller): one pass over the rows,
/// separate multiplies and adds.
pub(crate) fn decay_rank1_vecmat_scalar(
    gamma: f32,
    a: &[f32],
    x: &[f32],
    b: &[f32],
    s: &mut [f32],
    out: &mut [f32],
) {
    out.fill(0.0);
    if x.is_empty() {
        return;
    }
    for ((row, &ai), &bi) in s.chunks_exact_mut(x.len()).zip(a).zip(b) {
        for ((sj, &xj), oj) in row.iter_mut().zip(x).zip(out.iter_mut()) {
            let ns = gamma * *sj + ai * xj;
            *sj = ns;
            *oj += bi * ns;
        }
    }
}

/// Largest `|x|` of a 32-value block (exact: a maximum does not depend on order), dispatched
/// on an `isa` the caller read once per row.
#[inline]
pub(crate) fn max_abs32(isa: Isa, x: &[f32; 32]) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::max_abs32_avx2(x) },
        Isa::Scalar => crate::quant::max_abs(x),
    }
}

/// `(max |x|, the first x of that magnitude)` of a 32-value block, `(0, +0.0)` when all are
/// zero (see `quant::first_max_abs`), dispatched. Exact on both paths.
#[inline]
pub(crate) fn first_max_abs32(isa: Isa, x: &[f32; 32]) -> (f32, f32) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::first_max_abs32_avx2(x) },
        Isa::Scalar => crate::quant::first_max_abs(x),
    }
}

/// `Q8_0` codes of one block (see `quant::q8_0_codes_scalar`), dispatched. Bit-identical on
/// both paths: the same `f32` multiply, clamp and rounding (nearest, ties to even), lane by
/// lane.
#[inline]
pub(crate) fn q8_0_codes(isa: Isa, x: &[f32; 32], id: f32, qs: &mut [i8; 32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::q8_0_codes_avx2(x, id, qs) },
        Isa::Scalar => crate::quant::q8_0_codes_scalar(x, id, qs),
    }
}

/// `Q4_0` nibbles of one block (see `quant::q4_0_codes_scalar`), dispatched. Bit-identical on
/// both paths: the same `f32` multiply then add (never fused), clamp and floor.
#[inline]
pub(crate) fn q4_0_codes(isa: Isa, x: &[f32; 32], id: f32, qs: &mut [u8; 16]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only produced by `detect` after AVX2 and FMA were detected.
        Isa::Avx2Fma => unsafe { x86::q4_0_codes_avx2(x, id, qs) },
        Isa::Scalar => crate::quant::q4_0_codes_scalar(x, id, qs),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m128i, __m256, __m256i, _CMP_EQ_OQ, _CMP_LT_OQ, _MM_FROUND_NO_EXC,
        _MM_FROUND_TO_NEAREST_INT, _MM_FROUND_TO_NEG_INF, _mm_add_ps, _mm_add_ss, _mm_and_si128,
        _mm_cvtss_f32, _mm_loadl_epi64, _mm_loadu_si128, _mm_max_ps, _mm_max_ss, _mm_movehl_ps,
        _mm_packus_epi16, _mm_set1_epi8, _mm_shuffle_ps, _mm_srli_epi16, _mm_srli_si128,
        _mm_storeu_si128, _mm256_add_epi32, _mm256_add_ps, _mm256_andnot_ps,
        _mm256_castps256_ps128, _mm256_castsi256_ps, _mm256_castsi256_si128, _mm256_cmp_ps,
        _mm256_cvtepi8_epi32, _mm256_cvtepi32_ps, _mm256_cvtepu8_epi32, _mm256_cvtph_ps,
        _mm256_cvtps_epi32, _mm256_cvtps_ph, _mm256_cvttps_epi32, _mm256_extractf128_ps,
        _mm256_extracti128_si256, _mm256_fmadd_ps, _mm256_fnmadd_ps, _mm256_loadu_ps,
        _mm256_max_ps, _mm256_min_ps, _mm256_movemask_ps, _mm256_mul_ps, _mm256_or_si256,
        _mm256_packs_epi16, _mm256_packs_epi32, _mm256_permute4x64_epi64,
        _mm256_permutevar8x32_epi32, _mm256_round_ps, _mm256_set1_epi32, _mm256_set1_ps,
        _mm256_setr_epi32, _mm256_setzero_ps, _mm256_setzero_si256, _mm256_slli_epi32,
        _mm256_storeu_ps, _mm256_storeu_si256, _mm256_sub_epi32, _mm256_sub_ps,
    };

    /// Horizontal sum of the eight lanes of `v`.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// AVX2+FMA dot product: four 8-lane FMA accumulators over blocks of 32, one over the
    /// remaining blocks of 8, then a scalar tail.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
        let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        let mut acc = [_mm256_setzero_ps(); 4];
        for (xa, xb) in ca.zip(cb) {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `xa` and `xb` are exactly 32 floats long, so the 8 floats at offset
                // 8*j (j < 4) are in bounds; `loadu` has no alignment requirement.
                let (va, vb) = unsafe {
                    (
                        _mm256_loadu_ps(xa.as_ptr().add(8 * j)),
                        _mm256_loadu_ps(xb.as_ptr().add(8 * j)),
                    )
                };
                *acc = _mm256_fmadd_ps(va, vb, *acc);
            }
        }
        let (ca8, cb8) = (ra.chunks_exact(8), rb.chunks_exact(8));
        let (ta, tb) = (ca8.remainder(), cb8.remainder());
        for (xa, xb) in ca8.zip(cb8) {
            // SAFETY: `xa` and `xb` are exactly 8 floats long; `loadu` is unaligned.
            let (va, vb) = unsafe { (_mm256_loadu_ps(xa.as_ptr()), _mm256_loadu_ps(xb.as_ptr())) };
            acc[0] = _mm256_fmadd_ps(va, vb, acc[0]);
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        for (&x, &y) in ta.iter().zip(tb) {
            s += x * y;
        }
        s
    }

    /// F16C `f32` → `f16` bits, 8 per instruction; the tail through `half` (same rounding).
    #[target_feature(enable = "avx,f16c")]
    pub(super) fn f32_to_f16_f16c(src: &[f32], dst: &mut [u16]) {
        let (cs, mut cd) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
        let tail = cs.remainder();
        for (s, d) in cs.zip(cd.by_ref()) {
            // SAFETY: `s` is 8 floats and `d` 8 u16 (16 bytes); unaligned load / store.
            unsafe {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.as_ptr()));
                _mm_storeu_si128(d.as_mut_ptr().cast::<__m128i>(), h);
            }
        }
        for (d, &x) in cd.into_remainder().iter_mut().zip(tail) {
            *d = half::f16::from_f32(x).to_bits();
        }
    }

    /// F16C `f16` bits → `f32`, 8 per instruction (exact); the tail through `half`.
    #[target_feature(enable = "avx,f16c")]
    pub(super) fn f16_to_f32_f16c(src: &[u16], dst: &mut [f32]) {
        let (cs, mut cd) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
        let tail = cs.remainder();
        for (s, d) in cs.zip(cd.by_ref()) {
            // SAFETY: `s` is 8 u16 (16 bytes) and `d` 8 floats; unaligned load / store.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().cast::<__m128i>()));
                _mm256_storeu_ps(d.as_mut_ptr(), v);
            }
        }
        for (d, &h) in cd.into_remainder().iter_mut().zip(tail) {
            *d = half::f16::from_bits(h).to_f32();
        }
    }

    /// AVX2 `Q8_0` dequantiser: sign-extend 8 codes at a time to `i32`, convert, multiply by
    /// the block's scale (all exact).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dequantize_q8_0_avx2(blocks: &[crate::quant::BlockQ8_0], out: &mut [[f32; 32]]) {
        for (b, y) in blocks.iter().zip(out) {
            let d = _mm256_set1_ps(b.d.to_f32());
            for j in 0..4 {
                // SAFETY: `qs` holds 32 bytes, so the 8 at 8*j (j < 4) are in bounds; `y` holds
                // 32 floats, so the 8 at 8*j are too. Unaligned load / store.
                unsafe {
                    let q = _mm_loadl_epi64(b.qs.as_ptr().add(8 * j).cast::<__m128i>());
                    let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
                    _mm256_storeu_ps(y.as_mut_ptr().add(8 * j), _mm256_mul_ps(v, d));
                }
            }
        }
    }

    /// AVX2 `Q4_0` dequantiser: low and high nibbles of the 16 code bytes, zero-extended 8 at a
    /// time to `i32`, minus 8, converted and multiplied by the block's scale (all exact).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dequantize_q4_0_avx2(blocks: &[crate::quant::BlockQ4_0], out: &mut [[f32; 32]]) {
        let mask = _mm_set1_epi8(0x0f);
        let eight = _mm256_set1_epi32(8);
        for (b, y) in blocks.iter().zip(out) {
            let d = _mm256_set1_ps(b.d.to_f32());
            // SAFETY: `qs` is 16 bytes, one unaligned 128-bit load.
            let q = unsafe { _mm_loadu_si128(b.qs.as_ptr().cast::<__m128i>()) };
            let lo = _mm_and_si128(q, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
            let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
            for (j, p) in parts.iter().enumerate() {
                let c = _mm256_sub_epi32(_mm256_cvtepu8_epi32(*p), eight);
                let v = _mm256_mul_ps(_mm256_cvtepi32_ps(c), d);
                // SAFETY: `y` holds 32 floats, so the 8 at 8*j (j < 4) are in bounds.
                unsafe { _mm256_storeu_ps(y.as_mut_ptr().add(8 * j), v) };
            }
        }
    }

    /// AVX2+FMA squared distance: four 8-lane accumulators over blocks of 32, one over the
    /// remaining blocks of 8, then a scalar tail (the same shape as the dot product).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn sq_dist_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
        let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        let mut acc = [_mm256_setzero_ps(); 4];
        for (xa, xb) in ca.zip(cb) {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `xa` and `xb` are exactly 32 floats long, so the 8 floats at offset
                // 8*j (j < 4) are in bounds; `loadu` has no alignment requirement.
                let d = unsafe {
                    _mm256_sub_ps(
                        _mm256_loadu_ps(xa.as_ptr().add(8 * j)),
                        _mm256_loadu_ps(xb.as_ptr().add(8 * j)),
                    )
                };
                *acc = _mm256_fmadd_ps(d, d, *acc);
            }
        }
        let (ca8, cb8) = (ra.chunks_exact(8), rb.chunks_exact(8));
        let (ta, tb) = (ca8.remainder(), cb8.remainder());
        for (xa, xb) in ca8.zip(cb8) {
            // SAFETY: `xa` and `xb` are exactly 8 floats long; `loadu` is unaligned.
            let d = unsafe {
                _mm256_sub_ps(_mm256_loadu_ps(xa.as_ptr()), _mm256_loadu_ps(xb.as_ptr()))
            };
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        for (&x, &y) in ta.iter().zip(tb) {
            let d = x - y;
            s += d * d;
        }
        s
    }

    /// AVX2+FMA [`nearest`](super::nearest): the distance kernel inlined into the scan.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn nearest_avx2_fma(centroids: &[f32], x: &[f32]) -> (usize, f32) {
        let mut best = (0, f32::INFINITY);
        for (j, c) in centroids.chunks_exact(x.len()).enumerate() {
            let d = sq_dist_avx2_fma(x, c);
            if d < best.1 {
                best = (j, d);
            }
        }
        best
    }

    /// AVX2 `y += alpha * x` with a separate multiply and add, bit-identical to the scalar loop.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn axpy_avx2(alpha: f32, x: &[f32], y: &mut [f32]) {
        let va = _mm256_set1_ps(alpha);
        let mut cy = y.chunks_exact_mut(8);
        let mut cx = x.chunks_exact(8);
        for (yc, xc) in cy.by_ref().zip(cx.by_ref()) {
            // SAFETY: `xc` and `yc` are exactly 8 floats long, `yc` is a unique borrow, and
            // `loadu` / `storeu` have no alignment requirement.
            unsafe {
                let vx = _mm256_loadu_ps(xc.as_ptr());
                let vy = _mm256_loadu_ps(yc.as_ptr());
                _mm256_storeu_ps(yc.as_mut_ptr(), _mm256_add_ps(vy, _mm256_mul_ps(va, vx)));
            }
        }
        for (yi, &xi) in cy.into_remainder().iter_mut().zip(cx.remainder()) {
            *yi += alpha * xi;
        }
    }

    /// `exp` of eight lanes: Cephes-style range reduction `x = n·ln2 + r` (|r| <= ln2 / 2,
    /// ln2 split in two constants), a degree-7 polynomial for `exp(r)` and `2ⁿ` built in the
    /// exponent bits. Inputs below `ln(f32::MIN_POSITIVE)` (including `-inf`) give exactly 0
    /// (no subnormal results); inputs above 88.37 saturate to `f32::MAX`-ish / inf. Relative
    /// error against a correctly rounded `exp` is within a few ulp (see the tests).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp8(x: __m256) -> __m256 {
        const LO: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)
        const HI: f32 = 88.376_26;
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(LO));
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(HI)), _mm256_set1_ps(LO));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x - n·ln2, with ln2 = 0.693359375 - 2.12194440e-4 (the first part is exact in
        // few bits, so n·C1 is exact; `0.693_359_4` is that f32, 0x3f31_7200).
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        // Cephes expf coefficients (its 5.0000001201e-1 rounds to 0.5 in f32).
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        // exp(r) ≈ 1 + r + r²·p(r)
        let y = _mm256_fmadd_ps(
            p,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2))
    }

    /// `exp((v - m) · inv_t)` on eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn exp_shifted8(v: __m256, m: __m256, inv_t: __m256) -> __m256 {
        exp8(_mm256_mul_ps(_mm256_sub_ps(v, m), inv_t))
    }

    /// The tail (< 8 elements) padded with `-inf`, whose exponential is exactly 0, so the tail
    /// goes through the same approximation as the body.
    fn padded(tail: &[f32]) -> [f32; 8] {
        let mut buf = [f32::NEG_INFINITY; 8];
        buf[..tail.len()].copy_from_slice(tail);
        buf
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_shifted_into_avx2(x: &[f32], m: f32, inv_t: f32, out: &mut [f32]) -> f32 {
        let (vm, vt) = (_mm256_set1_ps(m), _mm256_set1_ps(inv_t));
        let mut acc = _mm256_setzero_ps();
        let mut co = out.chunks_exact_mut(8);
        let cx = x.chunks_exact(8);
        let tail = padded(cx.remainder());
        for (o, xc) in co.by_ref().zip(cx) {
            // SAFETY: `xc` and `o` are exactly 8 floats long; unaligned load / store.
            unsafe {
                let e = exp_shifted8(_mm256_loadu_ps(xc.as_ptr()), vm, vt);
                _mm256_storeu_ps(o.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let rest = co.into_remainder();
        if !rest.is_empty() {
            let mut buf = [0.0f32; 8];
            // SAFETY: `tail` and `buf` are 8-float arrays; unaligned load / store.
            unsafe {
                let e = exp_shifted8(_mm256_loadu_ps(tail.as_ptr()), vm, vt);
                _mm256_storeu_ps(buf.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
            rest.copy_from_slice(&buf[..rest.len()]);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_shifted_in_place_avx2(x: &mut [f32], m: f32, inv_t: f32) -> f32 {
        let (vm, vt) = (_mm256_set1_ps(m), _mm256_set1_ps(inv_t));
        let mut acc = _mm256_setzero_ps();
        let mut cx = x.chunks_exact_mut(8);
        for c in cx.by_ref() {
            // SAFETY: `c` is exactly 8 floats long and uniquely borrowed; unaligned load / store.
            unsafe {
                let e = exp_shifted8(_mm256_loadu_ps(c.as_ptr()), vm, vt);
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let rest = cx.into_remainder();
        if !rest.is_empty() {
            let mut buf = padded(rest);
            // SAFETY: `buf` is an 8-float array; unaligned load / store.
            unsafe {
                let e = exp_shifted8(_mm256_loadu_ps(buf.as_ptr()), vm, vt);
                _mm256_storeu_ps(buf.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
            let n = rest.len();
            rest.copy_from_slice(&buf[..n]);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp_shifted_sum_avx2(x: &[f32], m: f32, inv_t: f32) -> f32 {
        let (vm, vt) = (_mm256_set1_ps(m), _mm256_set1_ps(inv_t));
        let mut acc = _mm256_setzero_ps();
        let cx = x.chunks_exact(8);
        let tail = padded(cx.remainder());
        for c in cx {
            // SAFETY: `c` is exactly 8 floats long; unaligned load.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            acc = _mm256_add_ps(acc, exp_shifted8(v, vm, vt));
        }
        if !x.len().is_multiple_of(8) {
            // SAFETY: `tail` is an 8-float array; unaligned load.
            let v = unsafe { _mm256_loadu_ps(tail.as_ptr()) };
            acc = _mm256_add_ps(acc, exp_shifted8(v, vm, vt));
        }
        hsum(acc)
    }

    /// AVX2+FMA [`decay_rank1_vecmat`](super::decay_rank1_vecmat): column blocks of 32 (then
    /// 8, then a scalar tail) with the block of `x` and four output accumulators in registers,
    /// each block swept down all rows; `s_i ← fma(gamma, s_i, a_i·x)`, `out += b_i·s_i` (FMA).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn decay_rank1_vecmat_avx2_fma(
        gamma: f32,
        a: &[f32],
        x: &[f32],
        b: &[f32],
        s: &mut [f32],
        out: &mut [f32],
    ) {
        let n = x.len();
        let vg = _mm256_set1_ps(gamma);
        let mut c0 = 0;
        while c0 + 32 <= n {
            // SAFETY: c0 + 32 <= n = x.len(): the four 8-float loads are in bounds.
            let xv = unsafe {
                let p = x.as_ptr().add(c0);
                [
                    _mm256_loadu_ps(p),
                    _mm256_loadu_ps(p.add(8)),
                    _mm256_loadu_ps(p.add(16)),
                    _mm256_loadu_ps(p.add(24)),
                ]
            };
            let mut acc = [_mm256_setzero_ps(); 4];
            for (row, (&ai, &bi)) in s.chunks_exact_mut(n).zip(a.iter().zip(b)) {
                let (va, vb) = (_mm256_set1_ps(ai), _mm256_set1_ps(bi));
                let blk = &mut row[c0..c0 + 32];
                for (j, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: `blk` is 32 floats, a unique borrow; 8 floats at 8*j (j < 4) are
                    // in bounds; unaligned load / store.
                    unsafe {
                        let p = blk.as_mut_ptr().add(8 * j);
                        let ns = _mm256_fmadd_ps(vg, _mm256_loadu_ps(p), _mm256_mul_ps(va, xv[j]));
                        _mm256_storeu_ps(p, ns);
                        *acc = _mm256_fmadd_ps(vb, ns, *acc);
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                // SAFETY: c0 + 32 <= n = out.len(); unaligned store.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c0 + 8 * j), *acc) };
            }
            c0 += 32;
        }
        while c0 + 8 <= n {
            // SAFETY: c0 + 8 <= n = x.len().
            let xv = unsafe { _mm256_loadu_ps(x.as_ptr().add(c0)) };
            let mut acc = _mm256_setzero_ps();
            for (row, (&ai, &bi)) in s.chunks_exact_mut(n).zip(a.iter().zip(b)) {
                let (va, vb) = (_mm256_set1_ps(ai), _mm256_set1_ps(bi));
                let blk = &mut row[c0..c0 + 8];
                // SAFETY: `blk` is 8 floats, a unique borrow; unaligned load / store.
                unsafe {
                    let ns =
                        _mm256_fmadd_ps(vg, _mm256_loadu_ps(blk.as_ptr()), _mm256_mul_ps(va, xv));
                    _mm256_storeu_ps(blk.as_mut_ptr(), ns);
                    acc = _mm256_fmadd_ps(vb, ns, acc);
                }
            }
            // SAFETY: c0 + 8 <= n = out.len(); unaligned store.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c0), acc) };
            c0 += 8;
        }
        if c0 < n {
            out[c0..].fill(0.0);
            for (row, (&ai, &bi)) in s.chunks_exact_mut(n).zip(a.iter().zip(b)) {
                for ((sj, &xj), oj) in row[c0..].iter_mut().zip(&x[c0..]).zip(&mut out[c0..]) {
                    let ns = gamma.mul_add(*sj, ai * xj);
                    *sj = ns;
                    *oj = bi.mul_add(ns, *oj);
                }
            }
        }
    }

    /// Test access to the vector `exp`.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp8_array(x: [f32; 8]) -> [f32; 8] {
        let mut out = [0.0f32; 8];
        // SAFETY: both are 8-float arrays; unaligned load / store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(x.as_ptr()))) };
        out
    }

    /// The eight lanes of a block's four 8-value loads, as one array.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn load4(x: &[f32; 32]) -> [__m256; 4] {
        // SAFETY: `x` holds 32 floats, so the 8 floats at offsets 0, 8, 16 and 24 are in
        // bounds; `loadu` has no alignment requirement.
        unsafe {
            [
                _mm256_loadu_ps(x.as_ptr()),
                _mm256_loadu_ps(x.as_ptr().add(8)),
                _mm256_loadu_ps(x.as_ptr().add(16)),
                _mm256_loadu_ps(x.as_ptr().add(24)),
            ]
        }
    }

    /// AVX2 `max |x|` of a 32-value block: clear the sign bits, three lane-wise maxima and a
    /// horizontal maximum. Inputs are finite, so `max_ps` is an exact maximum.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn max_abs32_avx2(x: &[f32; 32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        let v = load4(x);
        let m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
        let m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
        let m = _mm256_max_ps(m01, m23);
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
        _mm_cvtss_f32(m)
    }

    /// AVX2 first value of largest magnitude: the maximum as in [`max_abs32_avx2`], then one
    /// equality mask per 8 lanes, and the lowest set bit of the combined 32-bit mask.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn first_max_abs32_avx2(x: &[f32; 32]) -> (f32, f32) {
        let amax = max_abs32_avx2(x);
        if amax == 0.0 {
            return (0.0, 0.0);
        }
        let (sign, m) = (_mm256_set1_ps(-0.0), _mm256_set1_ps(amax));
        let v = load4(x);
        let mut mask = 0u32;
        for (k, &v) in v.iter().enumerate() {
            let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, v), m);
            mask |= (_mm256_movemask_ps(eq) as u32 & 0xff) << (8 * k);
        }
        // `amax` is one of the |x|, so the mask is never empty.
        let i = (mask.trailing_zeros() as usize).min(31);
        (amax, x[i])
    }

    /// AVX2 `Q8_0` codes: `clamp(x * id, ±127)` converted with `cvtps2dq` (nearest, ties to
    /// even: the default rounding mode, which Rust code never changes), and the 32 integers
    /// packed to bytes in order.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn q8_0_codes_avx2(x: &[f32; 32], id: f32, qs: &mut [i8; 32]) {
        let vid = _mm256_set1_ps(id);
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        // No closures here: a closure does not inherit `target_feature`, so its intrinsics
        // would become calls.
        let v = load4(x);
        let mut ints = [_mm256_setzero_si256(); 4];
        for (i, &v) in ints.iter_mut().zip(&v) {
            let v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v, vid), lo), hi);
            *i = _mm256_cvtps_epi32(v);
        }
        // packs: [i0 0..4, i1 0..4, i2 0..4, i3 0..4 | i0 4..8, i1 4..8, i2 4..8, i3 4..8] as
        // bytes; the 32-bit permutation restores element order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(ints[0], ints[1]),
            _mm256_packs_epi32(ints[2], ints[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: `qs` is 32 bytes, exactly one unaligned 256-bit store.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast::<__m256i>(), p) };
    }

    /// AVX2 `Q4_0` nibbles: `floor(clamp(x * id + 8.5, 0, 15))` (multiply then add, not fused),
    /// then `code[j] | code[j + 16] << 4` packed to 16 bytes in order.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn q4_0_codes_avx2(x: &[f32; 32], id: f32, qs: &mut [u8; 16]) {
        let vid = _mm256_set1_ps(id);
        let (off, zero, top) = (
            _mm256_set1_ps(8.5),
            _mm256_setzero_ps(),
            _mm256_set1_ps(15.0),
        );
        let v = load4(x);
        let mut c = [_mm256_setzero_si256(); 4];
        for (c, &v) in c.iter_mut().zip(&v) {
            let t = _mm256_add_ps(_mm256_mul_ps(v, vid), off);
            let t = _mm256_max_ps(_mm256_min_ps(t, top), zero);
            *c = _mm256_cvttps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC },
            >(t));
        }
        let a = _mm256_or_si256(c[0], _mm256_slli_epi32::<4>(c[2])); // bytes 0..8
        let b = _mm256_or_si256(c[1], _mm256_slli_epi32::<4>(c[3])); // bytes 8..16
        // [a 0..4, b 0..4 | a 4..8, b 4..8] as i16, reordered to a 0..8, b 0..8.
        let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
        let bytes = _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
        // SAFETY: `qs` is 16 bytes, exactly one unaligned 128-bit store.
        unsafe { _mm_storeu_si128(qs.as_mut_ptr().cast::<__m128i>(), bytes) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    fn f64_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
        let exact = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum();
        let abs = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
            .sum();
        (exact, abs)
    }

    fn lengths() -> impl Iterator<Item = usize> {
        (0..80).chain([127, 128, 129, 255, 1000, 4096, 4099])
    }

    #[test]
    fn detection_is_cached_and_stable() {
        assert_eq!(isa(), isa());
        if std::env::var_os("SQUISH_SIMD").is_some_and(|v| v == "off") {
            assert_eq!(isa(), Isa::Scalar);
        }
    }

    #[test]
    fn dot_twins_agree_within_reordering_bound() {
        squish_testkit::prop::check("simd_dot_twins_agree", 20, |rng| {
            for n in lengths() {
                let a: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let b: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let (exact, abs) = f64_dot(&a, &b);
                let eps = f64::from(f32::EPSILON) / 2.0;
                // Worst-case bound of any summation order, plus the final rounding.
                let bound = (n as f64 + 1.0) * eps * abs + f64::from(f32::MIN_POSITIVE);
                let s = dot_scalar(&a, &b);
                let d = dot(&a, &b);
                assert!((f64::from(s) - exact).abs() <= bound, "scalar n={n}");
                assert!((f64::from(d) - exact).abs() <= bound, "dispatched n={n}");
                assert!(
                    (f64::from(d) - f64::from(s)).abs() <= 2.0 * bound,
                    "twins n={n}"
                );
                #[cfg(target_arch = "x86_64")]
                if isa() == Isa::Avx2Fma {
                    // SAFETY: AVX2 and FMA were detected.
                    let v = unsafe { x86::dot_avx2_fma(&a, &b) };
                    assert_eq!(v.to_bits(), d.to_bits());
                }
            }
        });
    }

    #[test]
    fn axpy_twins_are_bit_identical() {
        squish_testkit::prop::check("simd_axpy_twins_identical", 20, |rng| {
            for n in lengths() {
                let alpha = rng.random_range(-3.0f32..3.0);
                let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let y0: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let mut ys = y0.clone();
                axpy_scalar(alpha, &x, &mut ys);
                let mut yd = y0.clone();
                axpy(alpha, &x, &mut yd);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&ys), bits(&yd), "n={n}");
            }
        });
    }

    /// Blocks that stress the quantisers' rounding: half-integers (ties) under `id = 1`, values
    /// one ulp around the ties, `0.49999997`, the clamp edges, and plain random values.
    fn quant_blocks(rng: &mut impl rand::Rng) -> Vec<([f32; 32], f32)> {
        let mut out = Vec::new();
        for kind in 0..5 {
            let mut x = [0.0f32; 32];
            let id = match kind {
                0..=2 => 1.0,
                3 => rng.random_range(0.01f32..100.0),
                _ => 1.0 / rng.random_range(0.001f32..10.0),
            };
            for v in &mut x {
                let half = f32::from(rng.random_range(-300i16..300)) / 2.0;
                *v = match kind {
                    0 => half,
                    1 => {
                        let b = half.to_bits();
                        let b = if rng.random_bool(0.5) {
                            b.wrapping_add(1)
                        } else {
                            b.wrapping_sub(1)
                        };
                        if half == 0.0 {
                            0.499_999_97
                        } else {
                            f32::from_bits(b)
                        }
                    }
                    2 => [
                        0.499_999_97,
                        -0.499_999_97,
                        127.5,
                        -127.5,
                        8.0,
                        -8.0,
                        7.5,
                        -8.5,
                        0.0,
                        -0.0,
                    ][rng.random_range(0..10)],
                    _ => rng.random_range(-10.0f32..10.0) / id,
                };
            }
            out.push((x, id));
        }
        out
    }

    #[test]
    fn dequantize_twins_are_bit_identical() {
        use crate::quant::{BlockQ4_0, BlockQ8_0};
        squish_testkit::prop::check("simd_dequantize_twins", 50, |rng| {
            let n = rng.random_range(0..9);
            let mut q8 = vec![BlockQ8_0::default(); n];
            let mut q4 = vec![BlockQ4_0::default(); n];
            for (a, b) in q8.iter_mut().zip(&mut q4) {
                let d = half::f16::from_bits(rng.random_range(0..0x7c00u16))
                    * if rng.random_bool(0.5) {
                        half::f16::ONE
                    } else {
                        half::f16::NEG_ONE
                    };
                a.d = d;
                b.d = d;
                for q in &mut a.qs {
                    *q = rng.random();
                }
                for q in &mut b.qs {
                    *q = rng.random();
                }
            }
            let bits = |m: &[[f32; 32]]| m.concat().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let (mut x, mut y) = (vec![[0.0f32; 32]; n], vec![[1.0f32; 32]; n]);
            dequantize_q8_0(&q8, &mut x);
            crate::quant::dequantize_q8_0_scalar(&q8, &mut y);
            assert_eq!(bits(&x), bits(&y));
            dequantize_q4_0(&q4, &mut x);
            crate::quant::dequantize_q4_0_scalar(&q4, &mut y);
            assert_eq!(bits(&x), bits(&y));
        });
    }

    #[test]
    fn quant_block_twins_are_bit_identical() {
        let isa = isa();
        squish_testkit::prop::check("simd_quant_block_twins", 400, |rng| {
            for (x, id) in quant_blocks(rng) {
                assert_eq!(
                    max_abs32(isa, &x).to_bits(),
                    crate::quant::max_abs(&x).to_bits(),
                    "{x:?}"
                );
                let (a, m) = first_max_abs32(isa, &x);
                let (b, n) = crate::quant::first_max_abs(&x);
                assert_eq!(
                    (a.to_bits(), m.to_bits()),
                    (b.to_bits(), n.to_bits()),
                    "{x:?}"
                );
                let (mut a, mut b) = ([0i8; 32], [0i8; 32]);
                q8_0_codes(isa, &x, id, &mut a);
                crate::quant::q8_0_codes_scalar(&x, id, &mut b);
                assert_eq!(a, b, "q8_0 id={id} x={x:?}");
                // Q4_0 sees x * id within [-8, 8] in real use; scale into that range.
                let id4 = id / 16.0;
                let (mut c, mut d) = ([0u8; 16], [0u8; 16]);
                q4_0_codes(isa, &x, id4, &mut c);
                crate::quant::q4_0_codes_scalar(&x, id4, &mut d);
                assert_eq!(c, d, "q4_0 id={id4} x={x:?}");
                let (mut c, mut d) = ([0u8; 16], [0u8; 16]);
                q4_0_codes(isa, &x, 1.0, &mut c);
                crate::quant::q4_0_codes_scalar(&x, 1.0, &mut d);
                assert_eq!(c, d, "q4_0 id=1 x={x:?}");
            }
        });
    }

    #[test]
    fn exact_small_integer_dot() {
        // Small integers: every partial sum is exact, so all orders agree exactly.
        let a: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..1000).map(|i| (i % 5) as f32 - 2.0).collect();
        let (exact, _) = f64_dot(&a, &b);
        assert_eq!(f64::from(dot(&a, &b)), exact);
        assert_eq!(f64::from(dot_scalar(&a, &b)), exact);
    }
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_is_within_two_ulp_of_exact() {
        if isa() != Isa::Avx2Fma {
            return;
        }
        let eps = f64::from(f32::EPSILON);
        // Every 10007th float in [-87.33, 0] (x <= 0 is all softmax needs), plus small positives.
        let mut xs: Vec<f32> = Vec::new();
        let mut b = (-87.33f32).to_bits();
        while b > 0x8000_0000 {
            xs.push(f32::from_bits(b));
            b = b.saturating_sub(10_007).max(0x8000_0000);
        }
        xs.extend([0.0, -0.0, 1e-30, 0.5, 1.0, 10.0, 80.0]);
        for chunk in xs.chunks(8) {
            let mut arr = [0.0f32; 8];
            arr[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: AVX2 and FMA were detected.
            let e = unsafe { x86::exp8_array(arr) };
            for (&x, &y) in arr.iter().zip(&e) {
                let r = f64::from(x).exp();
                let rel = (f64::from(y) - r).abs() / r;
                // Measured worst case ≈ 0.98·ε (about 2 ulp); libm is ≈ 0.5·ε.
                assert!(rel <= 1.5 * eps, "exp({x}) = {y}, exact {r}, rel {rel:e}");
            }
        }
        // SAFETY: as above.
        let e = unsafe {
            x86::exp8_array([
                0.0,
                -0.0,
                -87.34,
                -88.0,
                -1e4,
                f32::NEG_INFINITY,
                -87.33,
                1.0,
            ])
        };
        assert_eq!(e[..6], [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(e[6] >= f32::MIN_POSITIVE);
    }

    #[test]
    fn exp_pass_twins_agree() {
        squish_testkit::prop::check("simd_exp_pass_twins_agree", 20, |rng| {
            let eps = f64::from(f32::EPSILON);
            for n in lengths() {
                let mut x: Vec<f32> = (0..n).map(|_| rng.random_range(-30.0f32..30.0)).collect();
                for v in x.iter_mut() {
                    if rng.random_bool(0.1) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let m = if m == f32::NEG_INFINITY { 0.0 } else { m };
                let inv_t = 1.0 / rng.random_range(0.1f32..4.0);

                let mut es = vec![0.0f32; n];
                let ss = exp_shifted_into_scalar(&x, m, inv_t, &mut es);
                let mut ed = vec![0.0f32; n];
                let sd = exp_shifted_into(&x, m, inv_t, &mut ed);
                for (&a, &b) in ed.iter().zip(&es) {
                    // Per element: 2 ulp of the approximation, or both below the smallest
                    // normal (the vector path flushes those to 0).
                    let ok = (f64::from(a) - f64::from(b)).abs() <= 2.0 * eps * f64::from(b)
                        || (a == 0.0 && b < f32::MIN_POSITIVE);
                    assert!(ok, "n={n}: {a} vs {b}");
                }
                // Sums of n positive terms in different orders: within (n + 4)·ε relative.
                let bound = (n as f64 + 4.0) * eps * f64::from(ss) + 1e-37;
                assert!(
                    (f64::from(sd) - f64::from(ss)).abs() <= bound,
                    "n={n}: {sd} vs {ss}"
                );

                // The in-place and sum-only forms are the same computation, bit for bit, on each
                // path.
                let mut xi = x.clone();
                assert_eq!(
                    exp_shifted_in_place(&mut xi, m, inv_t).to_bits(),
                    sd.to_bits()
                );
                assert_eq!(xi, ed);
                assert_eq!(exp_shifted_sum(&x, m, inv_t).to_bits(), sd.to_bits());
                let mut xs = x.clone();
                assert_eq!(
                    exp_shifted_in_place_scalar(&mut xs, m, inv_t).to_bits(),
                    ss.to_bits()
                );
                assert_eq!(xs, es);
                assert_eq!(exp_shifted_sum_scalar(&x, m, inv_t).to_bits(), ss.to_bits());
            }
        });
    }
    #[test]
    fn distance_twins_agree() {
        squish_testkit::prop::check("simd_distance_twins_agree", 20, |rng| {
            let eps = f64::from(f32::EPSILON) / 2.0;
            for n in lengths().filter(|&n| n > 0) {
                let a: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let b: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let exact: f64 = a
                    .iter()
                    .zip(&b)
                    .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
                    .sum();
                // Each difference rounds once (relative ε/2, so its square 2·ε/2), then any
                // summation order of n non-negative terms: (n + 3)·ε/2 relative overall.
                let bound = (n as f64 + 3.0) * eps * exact + f64::from(f32::MIN_POSITIVE);
                let s = sq_dist_scalar(&a, &b);
                let d = sq_dist(&a, &b);
                assert!((f64::from(s) - exact).abs() <= bound, "scalar n={n}");
                assert!((f64::from(d) - exact).abs() <= bound, "dispatched n={n}");
            }
        });
    }

    #[test]
    fn nearest_twins_agree() {
        squish_testkit::prop::check("simd_nearest_twins_agree", 50, |rng| {
            let dim = rng.random_range(1..70);
            let k = rng.random_range(1..20);
            // Small integers: every distance is exact on both paths, so the labels (ties to the
            // lower index included) must be identical.
            let cents: Vec<f32> = (0..k * dim)
                .map(|_| rng.random_range(-2i32..3) as f32)
                .collect();
            for _ in 0..20 {
                let x: Vec<f32> = (0..dim)
                    .map(|_| rng.random_range(-2i32..3) as f32)
                    .collect();
                assert_eq!(nearest(&cents, &x), nearest_scalar(&cents, &x));
            }
            // Continuous values: the chosen distances agree within the reordering bound.
            let cents: Vec<f32> = (0..k * dim)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            let x: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (_, d) = nearest(&cents, &x);
            let (_, s) = nearest_scalar(&cents, &x);
            let bound = (dim as f64 + 3.0) * f64::from(f32::EPSILON) * f64::from(s);
            assert!((f64::from(d) - f64::from(s)).abs() <= bound);
        });
        assert_eq!(nearest(&[], &[1.0]), (0, f32::INFINITY));
    }

    #[test]
    fn decay_rank1_vecmat_agrees_with_its_twin_and_f64() {
        let mut rng = squish_testkit::rng(11);
        for (rows, n) in [
            (0, 5),
            (3, 0),
            (1, 1),
            (5, 7),
            (64, 64),
            (16, 40),
            (9, 33),
            (2, 100),
        ] {
            let a: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let s0: Vec<f32> = (0..rows * n).map(|_| rng.random_range(-2.0..2.0)).collect();
            let g = 0.96875f32;
            let (mut s1, mut s2) = (s0.clone(), s0.clone());
            let (mut o1, mut o2) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            decay_rank1_vecmat(g, &a, &x, &b, &mut s1, &mut o1);
            decay_rank1_vecmat_scalar(g, &a, &x, &b, &mut s2, &mut o2);
            // f64 reference; each new state entry has two roundings on either path, each output
            // a sum of `rows` products.
            let eps = f64::from(f32::EPSILON);
            for i in 0..rows {
                for j in 0..n {
                    let e =
                        f64::from(g) * f64::from(s0[i * n + j]) + f64::from(a[i]) * f64::from(x[j]);
                    let bound = 2.0
                        * eps
                        * (f64::from(g) * f64::from(s0[i * n + j]).abs()
                            + (f64::from(a[i]) * f64::from(x[j])).abs());
                    assert!(
                        (f64::from(s1[i * n + j]) - e).abs() <= bound + 1e-30,
                        "{rows}x{n} s[{i},{j}]"
                    );
                    assert!((f64::from(s2[i * n + j]) - e).abs() <= bound + 1e-30);
                }
            }
            for j in 0..n {
                let (mut e, mut abs) = (0.0f64, 0.0f64);
                for i in 0..rows {
                    let si =
                        f64::from(g) * f64::from(s0[i * n + j]) + f64::from(a[i]) * f64::from(x[j]);
                    e += f64::from(b[i]) * si;
                    abs +=
                        (f64::from(b[i]) * si).abs() + f64::from(b[i]).abs() * 2.0 * eps * si.abs();
                }
                let bound = (rows as f64 + 3.0) * eps * abs + 1e-30;
                assert!((f64::from(o1[j]) - e).abs() <= bound, "{rows}x{n} out[{j}]");
                assert!((f64::from(o2[j]) - e).abs() <= bound);
            }
        }
    }
}

/// Centroids per block of the blocked nearest-centroid layout ([`block_centroids`]): one AVX
/// register of lanes.
pub(crate) const BLOCK: usize = 8;

/// Lays out `centroids` (row-major, rows of `dim` floats) for [`nearest_blocked`]:
/// coordinate-major, `out[(d · nb + b) · 8 + l] = centroid (b · 8 + l), coordinate d`, with
/// `nb = ceil(k / 8)` blocks and the missing lanes of the last block set to `+inf` (their
/// distance is `+inf`, never chosen). Reuses `out`'s allocation.
///
/// # Panics
/// If `dim == 0` or `centroids.len()` is not a multiple of `dim`.
pub(crate) fn block_centroids(centroids: &[f32], dim: usize, out: &mut Vec<f32>) {
    assert!(
        dim > 0 && centroids.len().is_multiple_of(dim),
        "block_centroids: {} floats for rows of {dim}",
        centroids.len()
    );
    let k = centroids.len() / dim;
    let nb = k.div_ceil(BLOCK);
    out.clear();
    out.resize(dim * nb * BLOCK, f32::INFINITY);
    for (j, c) in centroids.chunks_exact(dim).enumerate() {
        let (b, l) = (j / BLOCK, j % BLOCK);
        for (d, &v) in c.iter().enumerate() {
            out[(d * nb + b) * BLOCK + l] = v;
        }
    }
}

/// [`nearest`] on the blocked layout of [`block_centroids`] (`k` centroids, rows of `x.len()`
/// floats), dispatched: the nearest centroid and its squared distance, the lower index on
/// ties, `(0, inf)` for `k == 0`. Each distance is summed over the coordinates in order
/// (one accumulator per centroid), `Σ (xᵢ - cᵢ)²`; the AVX2 path fuses each square and add.
///
/// # Panics
/// If `x` is empty or `blocks.len() != x.len() · ceil(k / 8) · 8`.
pub(crate) fn nearest_blocked(blocks: &[f32], k: usize, x: &[f32]) -> (usize, f32) {
    assert!(
        !x.is_empty() && blocks.len() == x.len() * k.div_ceil(BLOCK) * BLOCK,
        "nearest_blocked: {} layout floats for {k} centroids of length {}",
        blocks.len(),
        x.len()
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86_blocked::nearest_blocked_avx2_fma(blocks, k, x) },
        Isa::Scalar => nearest_blocked_scalar(blocks, k, x),
    }
}

/// Scalar twin of [`nearest_blocked`] (shapes checked by the caller): one block of eight
/// distances at a time, separate multiply and add.
pub(crate) fn nearest_blocked_scalar(blocks: &[f32], k: usize, x: &[f32]) -> (usize, f32) {
    let nb = k.div_ceil(BLOCK);
    let mut best = (0, f32::INFINITY);
    for b in 0..nb {
        let mut acc = [0.0f32; BLOCK];
        for (&xd, row) in x.iter().zip(blocks.chunks_exact(nb * BLOCK)) {
            for (a, &c) in acc.iter_mut().zip(&row[b * BLOCK..(b + 1) * BLOCK]) {
                let t = xd - c;
                *a += t * t;
            }
        }
        for (l, &d) in acc.iter().enumerate() {
            if d < best.1 {
                best = (b * BLOCK + l, d);
            }
        }
    }
    best
}

/// [`nearest_blocked`] for two points at once (twice the independent accumulators, so the
/// fused multiply-add latency is hidden); each result is bit-identical to
/// `nearest_blocked(blocks, k, x)` for its point.
///
/// # Panics
/// As [`nearest_blocked`], or if `x0.len() != x1.len()`.
pub(crate) fn nearest_blocked_pair(
    blocks: &[f32],
    k: usize,
    x0: &[f32],
    x1: &[f32],
) -> [(usize, f32); 2] {
    assert!(
        !x0.is_empty()
            && x0.len() == x1.len()
            && blocks.len() == x0.len() * k.div_ceil(BLOCK) * BLOCK,
        "nearest_blocked_pair: {} layout floats for {k} centroids of length {} / {}",
        blocks.len(),
        x0.len(),
        x1.len()
    );
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected before `Avx2Fma` was cached.
        Isa::Avx2Fma => unsafe { x86_blocked::nearest_blocked_pair_avx2_fma(blocks, k, x0, x1) },
        Isa::Scalar => [
            nearest_blocked_scalar(blocks, k, x0),
            nearest_blocked_scalar(blocks, k, x1),
        ],
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_blocked {
    use std::arch::x86_64::{
        __m256, __m256i, _CMP_EQ_OQ, _CMP_LT_OQ, _mm256_add_epi32, _mm256_blendv_ps,
        _mm256_castps_si256, _mm256_castsi256_ps, _mm256_cmp_ps, _mm256_cvtsi256_si32,
        _mm256_cvtss_f32, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_min_epi32, _mm256_min_ps,
        _mm256_permute2f128_ps, _mm256_permute2x128_si256, _mm256_set1_epi32, _mm256_set1_ps,
        _mm256_setr_epi32, _mm256_setzero_ps, _mm256_setzero_si256, _mm256_shuffle_epi32,
        _mm256_shuffle_ps, _mm256_sub_ps,
    };

    use super::BLOCK;

    /// Squared distances of `x` to the `G` blocks starting at block `b` (each accumulator
    /// summed over the coordinates in order, one FMA per coordinate).
    #[target_feature(enable = "avx2,fma")]
    fn group<const G: usize>(blocks: &[f32], nb: usize, b: usize, x: &[f32]) -> [__m256; G] {
        let mut acc = [_mm256_setzero_ps(); G];
        for (&xd, row) in x.iter().zip(blocks.chunks_exact(nb * BLOCK)) {
            let vx = _mm256_set1_ps(xd);
            let lanes = &row[b * BLOCK..(b + G) * BLOCK];
            for (a, c) in acc.iter_mut().zip(lanes.chunks_exact(BLOCK)) {
                // SAFETY: `c` holds exactly 8 floats; unaligned load.
                let vc = unsafe { _mm256_loadu_ps(c.as_ptr()) };
                let t = _mm256_sub_ps(vx, vc);
                *a = _mm256_fmadd_ps(t, t, *a);
            }
        }
        acc
    }

    /// Squared distances of `x0` and `x1` to the `G` blocks starting at block `b`: the same
    /// per-lane order and fused operations as [`group`], for two points in one pass.
    #[target_feature(enable = "avx2,fma")]
    fn group2<const G: usize>(
        blocks: &[f32],
        nb: usize,
        b: usize,
        x0: &[f32],
        x1: &[f32],
    ) -> ([__m256; G], [__m256; G]) {
        let mut acc0 = [_mm256_setzero_ps(); G];
        let mut acc1 = [_mm256_setzero_ps(); G];
        for ((&p, &q), row) in x0.iter().zip(x1).zip(blocks.chunks_exact(nb * BLOCK)) {
            let (vp, vq) = (_mm256_set1_ps(p), _mm256_set1_ps(q));
            let lanes = &row[b * BLOCK..(b + G) * BLOCK];
            for ((a0, a1), c) in acc0
                .iter_mut()
                .zip(&mut acc1)
                .zip(lanes.chunks_exact(BLOCK))
            {
                // SAFETY: `c` holds exactly 8 floats; unaligned load.
                let vc = unsafe { _mm256_loadu_ps(c.as_ptr()) };
                let t0 = _mm256_sub_ps(vp, vc);
                let t1 = _mm256_sub_ps(vq, vc);
                *a0 = _mm256_fmadd_ps(t0, t0, *a0);
                *a1 = _mm256_fmadd_ps(t1, t1, *a1);
            }
        }
        (acc0, acc1)
    }

    /// Running per-lane minimum distance (strict `<`, so the earlier block keeps a tie) and
    /// its centroid index.
    struct Best {
        d: __m256,
        i: __m256i,
    }

    impl Best {
        #[target_feature(enable = "avx2,fma")]
        fn new() -> Self {
            Self {
                d: _mm256_set1_ps(f32::INFINITY),
                i: _mm256_setzero_si256(),
            }
        }

        /// Folds in the distances of blocks `b0, b0 + 1, ...`.
        #[target_feature(enable = "avx2,fma")]
        fn take(&mut self, acc: &[__m256], b0: usize) {
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            for (j, &a) in acc.iter().enumerate() {
                // k fits in u32 (checked by the callers' configurations) and is far below 2^31
                // in any layout that fits in memory next to its points.
                let base = i32::try_from((b0 + j) * BLOCK).unwrap_or(i32::MAX);
                let idx = _mm256_add_epi32(lane, _mm256_set1_epi32(base));
                let m = _mm256_cmp_ps::<_CMP_LT_OQ>(a, self.d);
                self.d = _mm256_blendv_ps(self.d, a, m);
                self.i = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(self.i),
                    _mm256_castsi256_ps(idx),
                    m,
                ));
            }
        }

        /// The lane reduction, branch-free: the minimum distance, then the lowest index among
        /// the lanes holding it.
        #[target_feature(enable = "avx2,fma")]
        fn finish(&self) -> (usize, f32) {
            let d = self.d;
            let m = _mm256_min_ps(d, _mm256_permute2f128_ps::<0x01>(d, d));
            let m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b0100_1110>(m, m));
            let m = _mm256_min_ps(m, _mm256_shuffle_ps::<0b1011_0001>(m, m));
            let at_min = _mm256_cmp_ps::<_CMP_EQ_OQ>(d, m);
            let i = _mm256_castps_si256(_mm256_blendv_ps(
                _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)),
                _mm256_castsi256_ps(self.i),
                at_min,
            ));
            let i = _mm256_min_epi32(i, _mm256_permute2x128_si256::<0x01>(i, i));
            let i = _mm256_min_epi32(i, _mm256_shuffle_epi32::<0b0100_1110>(i));
            let i = _mm256_min_epi32(i, _mm256_shuffle_epi32::<0b1011_0001>(i));
            let idx = usize::try_from(_mm256_cvtsi256_si32(i)).unwrap_or(0);
            (idx, _mm256_cvtss_f32(m))
        }
    }

    /// AVX2+FMA [`nearest_blocked`](super::nearest_blocked): up to four blocks (32
    /// centroids) per pass over `x`, a running per-lane minimum, then a lane reduction.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn nearest_blocked_avx2_fma(blocks: &[f32], k: usize, x: &[f32]) -> (usize, f32) {
        let nb = k.div_ceil(BLOCK);
        let mut best = Best::new();
        let mut b = 0;
        while b + 4 <= nb {
            best.take(&group::<4>(blocks, nb, b, x), b);
            b += 4;
        }
        match nb - b {
            3 => best.take(&group::<3>(blocks, nb, b, x), b),
            2 => best.take(&group::<2>(blocks, nb, b, x), b),
            1 => best.take(&group::<1>(blocks, nb, b, x), b),
            _ => {}
        }
        best.finish()
    }

    /// AVX2+FMA [`nearest_blocked_pair`](super::nearest_blocked_pair): [`nearest_blocked_avx2_fma`]
    /// for two points sharing each pass over the centroids.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn nearest_blocked_pair_avx2_fma(
        blocks: &[f32],
        k: usize,
        x0: &[f32],
        x1: &[f32],
    ) -> [(usize, f32); 2] {
        let nb = k.div_ceil(BLOCK);
        let (mut b0, mut b1) = (Best::new(), Best::new());
        let mut b = 0;
        while b + 4 <= nb {
            let (a0, a1) = group2::<4>(blocks, nb, b, x0, x1);
            b0.take(&a0, b);
            b1.take(&a1, b);
            b += 4;
        }
        let mut tail = |a0: &[__m256], a1: &[__m256]| {
            b0.take(a0, b);
            b1.take(a1, b);
        };
        match nb - b {
            3 => {
                let (a0, a1) = group2::<3>(blocks, nb, b, x0, x1);
                tail(&a0, &a1);
            }
            2 => {
                let (a0, a1) = group2::<2>(blocks, nb, b, x0, x1);
                tail(&a0, &a1);
            }
            1 => {
                let (a0, a1) = group2::<1>(blocks, nb, b, x0, x1);
                tail(&a0, &a1);
            }
            _ => {}
        }
        [b0.finish(), b1.finish()]
    }
}

#[cfg(test)]
mod blocked_tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn nearest_blocked_matches_the_row_major_scan() {
        squish_testkit::prop::check("simd_nearest_blocked", 80, |rng| {
            let dim = rng.random_range(1..70);
            let k = rng.random_range(1..45);
            let mut layout = Vec::new();
            // Small integers: every distance is exact on every path, so indices (ties to the
            // lower index included) and distances must be identical.
            let cents: Vec<f32> = (0..k * dim)
                .map(|_| rng.random_range(-2i32..3) as f32)
                .collect();
            block_centroids(&cents, dim, &mut layout);
            for _ in 0..20 {
                let x: Vec<f32> = (0..dim)
                    .map(|_| rng.random_range(-2i32..3) as f32)
                    .collect();
                let want = nearest_scalar(&cents, &x);
                assert_eq!(nearest_blocked(&layout, k, &x), want);
                assert_eq!(nearest_blocked_scalar(&layout, k, &x), want);
                let y: Vec<f32> = x.iter().rev().copied().collect();
                let pair = nearest_blocked_pair(&layout, k, &x, &y);
                assert_eq!(pair, [want, nearest_scalar(&cents, &y)]);
            }
            // Continuous values: each chosen distance within the summation bound of the exact
            // minimum (both paths sum the same terms in order; γ_{dim+1} relative).
            let cents: Vec<f32> = (0..k * dim)
                .map(|_| rng.random_range(-1.0f32..1.0))
                .collect();
            block_centroids(&cents, dim, &mut layout);
            let x: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let exact_min = cents
                .chunks_exact(dim)
                .map(|c| {
                    c.iter()
                        .zip(&x)
                        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            let bound = (dim as f64 + 2.0) * f64::from(f32::EPSILON) * exact_min;
            let y: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let single = [
                nearest_blocked(&layout, k, &x),
                nearest_blocked(&layout, k, &y),
            ];
            // Same operations in the same order: bit-identical to the single-point kernel.
            assert_eq!(nearest_blocked_pair(&layout, k, &x, &y), single);
            for (_, d) in [
                nearest_blocked(&layout, k, &x),
                nearest_blocked_scalar(&layout, k, &x),
            ] {
                assert!((f64::from(d) - exact_min).abs() <= 2.0 * bound + 1e-30);
            }
        });
        let mut layout = Vec::new();
        block_centroids(&[], 3, &mut layout);
        assert!(layout.is_empty());
        assert_eq!(
            nearest_blocked(&layout, 0, &[1.0, 2.0, 3.0]),
            (0, f32::INFINITY)
        );
    }
}
