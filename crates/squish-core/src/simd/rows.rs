//! Row-batched kernels over contiguous `rows × d` matrices (key stores, score rows): the
//! batched dot product behind [`dot_rows`](super::dot_rows) and the fused min / max / finiteness
//! fold behind [`fold_min_max`]. Part of the `simd` module (the one place `unsafe` is allowed).

use super::{Isa, isa};

/// `lo[c] = min(lo[c], rows[r][c])`, `hi[c] = max(hi[c], rows[r][c])` over every row `r` of
/// `rows` (rows of `lo.len()` values), dispatched; returns whether every element of `rows` is
/// finite. Both paths give identical flags, and identical summaries for finite input (min and
/// max round nothing); after a non-finite element the summaries are unspecified.
///
/// Lengths are checked by the caller (`ops::fold_min_max`).
pub(crate) fn fold_min_max(rows: &[f32], lo: &mut [f32], hi: &mut [f32]) -> bool {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected on this CPU.
        Isa::Avx2Fma => unsafe { x86::fold_min_max_avx2(rows, lo, hi) },
        Isa::Scalar => fold_min_max_scalar(rows, lo, hi),
    }
}

/// [`fold_min_max`] that also copies `rows` into `dst` (of the same length) in the same pass,
/// dispatched. `dst` ends up equal to `rows` bit for bit; flag and summaries as
/// [`fold_min_max`].
pub(crate) fn fold_min_max_copy(
    rows: &[f32],
    dst: &mut [f32],
    lo: &mut [f32],
    hi: &mut [f32],
) -> bool {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected on this CPU.
        Isa::Avx2Fma => unsafe { x86::fold_min_max_copy_avx2(rows, dst, lo, hi) },
        Isa::Scalar => {
            dst.copy_from_slice(rows);
            fold_min_max_scalar(rows, lo, hi)
        }
    }
}

/// Whether every element of `x` is finite (no NaN, no ±inf), dispatched.
pub(crate) fn all_finite(x: &[f32]) -> bool {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Avx2Fma` is only cached after AVX2 and FMA were detected on this CPU.
        Isa::Avx2Fma => unsafe { x86::all_finite_avx2(x) },
        Isa::Scalar => all_finite_scalar(x),
    }
}

/// Portable twin of [`all_finite`]: a float is NaN or infinite exactly when its exponent bits
/// are all ones; testing the bits (rather than `is_finite`, a scalar compare here) keeps the
/// loop in SIMD lanes.
pub(crate) fn all_finite_scalar(x: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    x.chunks(256).all(|c| {
        c.iter()
            .fold(0u32, |bad, v| bad | u32::from(v.to_bits() & EXP == EXP))
            == 0
    })
}

/// Portable twin of [`fold_min_max`]: strips of 16 columns held in locals across all rows, so
/// the compiler keeps them in vector registers; finiteness is the sum of `x − x` (0 for finite
/// `x`, NaN for NaN and ±inf).
#[allow(clippy::eq_op, clippy::needless_range_loop)] // `x - x` is the finiteness probe; fixed-size strips index by lane
pub(crate) fn fold_min_max_scalar(rows: &[f32], lo: &mut [f32], hi: &mut [f32]) -> bool {
    const W: usize = 16;
    let d = lo.len();
    let mut z = [0.0f32; W];
    let mut z_rest = 0.0f32;
    let strips = d / W;
    for c in 0..strips {
        let cols = c * W..(c + 1) * W;
        let mut l = [0.0f32; W];
        let mut h = [0.0f32; W];
        l.copy_from_slice(&lo[cols.clone()]);
        h.copy_from_slice(&hi[cols.clone()]);
        for row in rows.chunks_exact(d) {
            // Always `Some`: the strip lies inside the row.
            if let Some(x) = row[c * W..].first_chunk::<W>() {
                for i in 0..W {
                    l[i] = if x[i] < l[i] { x[i] } else { l[i] };
                    h[i] = if x[i] > h[i] { x[i] } else { h[i] };
                    z[i] += x[i] - x[i];
                }
            }
        }
        lo[cols.clone()].copy_from_slice(&l);
        hi[cols].copy_from_slice(&h);
    }
    let rest = strips * W;
    if rest < d {
        for row in rows.chunks_exact(d) {
            for ((l, h), &x) in lo[rest..]
                .iter_mut()
                .zip(hi[rest..].iter_mut())
                .zip(&row[rest..])
            {
                *l = if x < *l { x } else { *l };
                *h = if x > *h { x } else { *h };
                z_rest += x - x;
            }
        }
    }
    z_rest == 0.0 && z.iter().all(|&v| v == 0.0)
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::{
        __m256, _mm_loadu_ps, _mm256_add_ps, _mm256_castps_si256, _mm256_castps128_ps256,
        _mm256_fmadd_ps, _mm256_insertf128_ps, _mm256_loadu_ps, _mm256_max_ps, _mm256_min_ps,
        _mm256_or_ps, _mm256_permute2f128_ps, _mm256_permutevar8x32_ps, _mm256_setr_epi32,
        _mm256_setzero_ps, _mm256_shuffle_ps, _mm256_storeu_ps, _mm256_sub_ps, _mm256_testz_si256,
    };

    /// The eight-lane partial sums of `dot_avx2_fma(x, row)` before its horizontal sum, in
    /// exactly its order: four accumulators over blocks of 32, then blocks of 8 into the first,
    /// then `(acc0 + acc1) + (acc2 + acc3)`. The scalar tail (`len % 8` values) is not included.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn partial_sums(x: &[f32], row: &[f32]) -> __m256 {
        let (cx, cr) = (x.chunks_exact(32), row.chunks_exact(32));
        let (rx, rr) = (cx.remainder(), cr.remainder());
        let mut acc = [_mm256_setzero_ps(); 4];
        for (xa, xb) in cx.zip(cr) {
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
        for (xa, xb) in rx.chunks_exact(8).zip(rr.chunks_exact(8)) {
            // SAFETY: `xa` and `xb` are exactly 8 floats long; `loadu` is unaligned.
            let (va, vb) = unsafe { (_mm256_loadu_ps(xa.as_ptr()), _mm256_loadu_ps(xb.as_ptr())) };
            acc[0] = _mm256_fmadd_ps(va, vb, acc[0]);
        }
        _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))
    }

    /// The horizontal sums of eight rows' vectors at once, in two steps ([`hsum_pair`] per pair
    /// of rows as they are computed, then [`hsum_finish`]), each lane with exactly the additions
    /// of `simd::x86::hsum`: `s_i = v_i + v_{i+4}`, then `(s_0 + s_2) + (s_1 + s_3)`. Every
    /// addition pairs the same two values as there (IEEE addition is commutative, so only the
    /// tree matters), hence each lane is bit-identical to `hsum` of that row's vector.
    ///
    /// This first step takes two rows `a`, `b` to `[a lo + a hi | b lo + b hi]`, the four `s_i`
    /// of each. Callers fold rows in pairs as they are computed, so only four vectors stay live
    /// per eight rows.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum_pair(a: __m256, b: __m256) -> __m256 {
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(a, b),
            _mm256_permute2f128_ps::<0x31>(a, b),
        )
    }

    /// The rest of the batched horizontal sum from the four [`hsum_pair`] results of rows (0, 1) … (6, 7).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum_finish(w: &[__m256; 4]) -> __m256 {
        // [r.s0+r.s2, r.s1+r.s3, t.(..), t.(..) | r+1 .., t+1 ..] for row pairs (r, t).
        let u01 = _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(w[0], w[1]),
            _mm256_shuffle_ps::<0b11_10_11_10>(w[0], w[1]),
        );
        let u23 = _mm256_add_ps(
            _mm256_shuffle_ps::<0b01_00_01_00>(w[2], w[3]),
            _mm256_shuffle_ps::<0b11_10_11_10>(w[2], w[3]),
        );
        // Lanes: rows [0, 2, 4, 6 | 1, 3, 5, 7].
        let f = _mm256_add_ps(
            _mm256_shuffle_ps::<0b10_00_10_00>(u01, u23),
            _mm256_shuffle_ps::<0b11_01_11_01>(u01, u23),
        );
        _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }

    /// `out[j] = dot_avx2_fma(x, row j)` bit for bit: eight rows at a time share one batched
    /// horizontal sum ([`hsum_pair`], [`hsum_finish`]); the scalar tail of each row (`len % 8` values) is then added
    /// in order, as `dot_avx2_fma` does; leftover rows take `dot_avx2_fma` itself.
    /// `x` is non-empty and `rows.len() == out.len() * x.len()` (checked by the callers).
    ///
    /// Head dims 32, 64 and 128 (`d = 32·B`) take [`dot_rows_blocks`], which holds `x` in
    /// registers across the rows.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::simd) fn dot_rows_avx2_fma(x: &[f32], rows: &[f32], out: &mut [f32]) {
        match x.len() {
            32 => return dot_rows_blocks::<1>(x, rows, out),
            64 => return dot_rows_blocks::<2>(x, rows, out),
            128 => return dot_rows_blocks::<4>(x, rows, out),
            _ => {}
        }
        let d = x.len();
        let tail = d % 8;
        let (blocks, rest_out) = out.as_chunks_mut::<8>();
        let batched = blocks.len() * 8 * d;
        for (o, rows8) in blocks.iter_mut().zip(rows[..batched].chunks_exact(8 * d)) {
            let mut w = [_mm256_setzero_ps(); 4];
            for (w, pair) in w.iter_mut().zip(rows8.chunks_exact(2 * d)) {
                let (a, b) = pair.split_at(d);
                *w = hsum_pair(partial_sums(x, a), partial_sums(x, b));
            }
            // SAFETY: `o` is exactly 8 floats long; `storeu` is unaligned.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), hsum_finish(&w)) };
            if tail != 0 {
                for (s, row) in o.iter_mut().zip(rows8.chunks_exact(d)) {
                    for (&a, &b) in x[d - tail..].iter().zip(&row[d - tail..]) {
                        *s += a * b;
                    }
                }
            }
        }
        for (o, row) in rest_out.iter_mut().zip(rows[batched..].chunks_exact(d)) {
            *o = super::super::x86::dot_avx2_fma(x, row);
        }
    }

    /// [`dot_rows_avx2_fma`] for `x.len() == 32·B`: the same per-row arithmetic as
    /// [`partial_sums`] (four accumulators, blocks of 32 in order, then
    /// `(acc0 + acc1) + (acc2 + acc3)`; no blocks of 8, no tail), with `x` loaded once.
    #[target_feature(enable = "avx2,fma")]
    fn dot_rows_blocks<const B: usize>(x: &[f32], rows: &[f32], out: &mut [f32]) {
        let d = 32 * B;
        let mut q = [[_mm256_setzero_ps(); 4]; B];
        for (qb, xb) in q.iter_mut().zip(x.chunks_exact(32)) {
            for (j, v) in qb.iter_mut().enumerate() {
                // SAFETY: `xb` is exactly 32 floats long and j < 4; `loadu` is unaligned.
                *v = unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * j)) };
            }
        }
        let (blocks, rest_out) = out.as_chunks_mut::<8>();
        let batched = blocks.len() * 8 * d;
        for (o, rows8) in blocks.iter_mut().zip(rows[..batched].chunks_exact(8 * d)) {
            let mut w = [_mm256_setzero_ps(); 4];
            for (w, pair) in w.iter_mut().zip(rows8.chunks_exact(2 * d)) {
                let (a, b) = pair.split_at(d);
                *w = hsum_pair(row_sums::<B>(&q, a), row_sums::<B>(&q, b));
            }
            // SAFETY: `o` is exactly 8 floats long; `storeu` is unaligned.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), hsum_finish(&w)) };
        }
        for (o, row) in rest_out.iter_mut().zip(rows[batched..].chunks_exact(d)) {
            *o = super::super::x86::dot_avx2_fma(x, row);
        }
    }

    /// [`partial_sums`] of one row of `32·B` values against the preloaded `q`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn row_sums<const B: usize>(q: &[[__m256; 4]; B], row: &[f32]) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); 4];
        for (qb, rb) in q.iter().zip(row.chunks_exact(32)) {
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `rb` is exactly 32 floats long and j < 4; `loadu` is unaligned.
                let vb = unsafe { _mm256_loadu_ps(rb.as_ptr().add(8 * j)) };
                *acc = _mm256_fmadd_ps(qb[j], vb, *acc);
            }
        }
        _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))
    }

    /// AVX2 [`all_finite`](super::all_finite): `x − x` is `+0.0` (all bits clear) for finite
    /// `x` and NaN (exponent bits set) otherwise, so OR-ing the differences of 32 values per
    /// step leaves a set bit exactly when something was not finite; one exit test per 1024
    /// values.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::simd) fn all_finite_avx2(x: &[f32]) -> bool {
        let (blocks, tail) = x.as_chunks::<32>();
        for group in blocks.chunks(32) {
            let mut bad = [_mm256_setzero_ps(); 4];
            for b in group {
                for (j, bad) in bad.iter_mut().enumerate() {
                    // SAFETY: `b` is exactly 32 floats long and j < 4; `loadu` is unaligned.
                    let v = unsafe { _mm256_loadu_ps(b.as_ptr().add(8 * j)) };
                    *bad = _mm256_or_ps(*bad, _mm256_sub_ps(v, v));
                }
            }
            let any = _mm256_or_ps(_mm256_or_ps(bad[0], bad[1]), _mm256_or_ps(bad[2], bad[3]));
            // Every bit, not just the signs (`testz_ps`): a NaN input can have its sign clear.
            let bits = _mm256_castps_si256(any);
            if _mm256_testz_si256(bits, bits) == 0 {
                return false;
            }
        }
        super::all_finite_scalar(tail)
    }

    /// AVX2 [`fold_min_max`](super::fold_min_max): eight columns per register, the rows'
    /// minima / maxima kept in registers across all rows for strips of 32 columns, and the
    /// twin's finiteness probe `Σ (x − x)` (0 for finite `x`, NaN for NaN and ±inf) in one
    /// accumulator per register column. `min(x, l)` / `max(x, h)` return `l` / `h` on ties and
    /// NaN, exactly the twin's `if x < l { x } else { l }`, so finite input gives identical
    /// summaries (signed zeros included).
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::simd) fn fold_min_max_avx2(rows: &[f32], lo: &mut [f32], hi: &mut [f32]) -> bool {
        fold_min_max_impl::<false>(rows, &mut [], lo, hi)
    }

    /// [`fold_min_max_avx2`] that also copies `rows` into `dst` (same length) in the same pass,
    /// so each value is loaded once.
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::simd) fn fold_min_max_copy_avx2(
        rows: &[f32],
        dst: &mut [f32],
        lo: &mut [f32],
        hi: &mut [f32],
    ) -> bool {
        fold_min_max_impl::<true>(rows, dst, lo, hi)
    }

    /// Eight floats at `p`, for a kernel that both stores them elsewhere and computes with
    /// them: written as two 16-byte loads and an insert, which the code generator merges back
    /// into one 32-byte load after its IR passes. With a plain 32-byte load, LLVM (Rust 1.95)
    /// rewrites each row's load / store pairs into a 128-byte copy and then loads every vector
    /// a second time for the min / max, after the copy's stores; on the 2-core Zen 3 VM that
    /// made the key index's build (8 × 64 KiB, into 64-byte-aligned keys) 21.1–21.3 µs instead
    /// of 19.5–19.7 µs (best of 3 000 batches, four alternating rounds).
    ///
    /// # Safety
    /// `p..p + 8` must be readable, and the CPU must have AVX.
    #[inline(always)]
    unsafe fn load_once(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees eight readable floats at `p`; `loadu` is unaligned.
        unsafe {
            _mm256_insertf128_ps::<1>(
                _mm256_castps128_ps256(_mm_loadu_ps(p)),
                _mm_loadu_ps(p.add(4)),
            )
        }
    }

    /// The fold, storing each loaded vector into `dst` too when `COPY` (`dst` is then exactly
    /// as long as `rows`; otherwise it is unused).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn fold_min_max_impl<const COPY: bool>(
        rows: &[f32],
        dst: &mut [f32],
        lo: &mut [f32],
        hi: &mut [f32],
    ) -> bool {
        let d = lo.len();
        let n = rows.len() / d;
        // `x − x` is +0.0 (no bit set) for finite `x` and NaN otherwise: OR-ing them keeps a
        // set bit exactly when something was not finite (a one-cycle OR, no add chain).
        let mut z = [_mm256_setzero_ps(); 4];
        let mut c = 0;
        while c + 32 <= d {
            let mut l = [_mm256_setzero_ps(); 4];
            let mut h = [_mm256_setzero_ps(); 4];
            for j in 0..4 {
                // SAFETY: columns c..c+32 lie inside `lo` and `hi` (`c + 32 <= d`) and j < 4;
                // `loadu` is unaligned.
                unsafe {
                    l[j] = _mm256_loadu_ps(lo.as_ptr().add(c + 8 * j));
                    h[j] = _mm256_loadu_ps(hi.as_ptr().add(c + 8 * j));
                }
            }
            for r in 0..n {
                for j in 0..4 {
                    let at = r * d + c + 8 * j;
                    // SAFETY: `at + 8 <= n·d == rows.len()` (columns c..c+32 of row r), and
                    // `dst` has the same length when `COPY`; `loadu` / `storeu` are unaligned.
                    let x = unsafe { load_once(rows.as_ptr().add(at)) };
                    if COPY {
                        // SAFETY: as above.
                        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(at), x) };
                    }
                    l[j] = _mm256_min_ps(x, l[j]);
                    h[j] = _mm256_max_ps(x, h[j]);
                    z[j] = _mm256_or_ps(z[j], _mm256_sub_ps(x, x));
                }
            }
            for j in 0..4 {
                // SAFETY: as for the loads of `lo` / `hi` above; `storeu` is unaligned.
                unsafe {
                    _mm256_storeu_ps(lo.as_mut_ptr().add(c + 8 * j), l[j]);
                    _mm256_storeu_ps(hi.as_mut_ptr().add(c + 8 * j), h[j]);
                }
            }
            c += 32;
        }
        while c + 8 <= d {
            // SAFETY: columns c..c+8 lie inside `lo` and `hi`.
            let (mut l, mut h) = unsafe {
                (
                    _mm256_loadu_ps(lo.as_ptr().add(c)),
                    _mm256_loadu_ps(hi.as_ptr().add(c)),
                )
            };
            for r in 0..n {
                let at = r * d + c;
                // SAFETY: `at + 8 <= rows.len()`, and `dst` has the same length when `COPY`.
                let x = unsafe { load_once(rows.as_ptr().add(at)) };
                if COPY {
                    // SAFETY: as above.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(at), x) };
                }
                l = _mm256_min_ps(x, l);
                h = _mm256_max_ps(x, h);
                z[0] = _mm256_or_ps(z[0], _mm256_sub_ps(x, x));
            }
            // SAFETY: as above.
            unsafe {
                _mm256_storeu_ps(lo.as_mut_ptr().add(c), l);
                _mm256_storeu_ps(hi.as_mut_ptr().add(c), h);
            }
            c += 8;
        }
        let any = _mm256_or_ps(_mm256_or_ps(z[0], z[1]), _mm256_or_ps(z[2], z[3]));
        let bits = _mm256_castps_si256(any);
        let mut finite = _mm256_testz_si256(bits, bits) == 1;
        if c < d {
            if COPY {
                for (s, t) in rows.chunks_exact(d).zip(dst.chunks_exact_mut(d)) {
                    t[c..].copy_from_slice(&s[c..]);
                }
            }
            finite &= super::fold_min_max_scalar_cols(rows, d, c, lo, hi);
        }
        finite
    }
}

/// The columns `c..d` of [`fold_min_max_scalar`] (the AVX2 kernel's tail); returns whether
/// they were all finite.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::eq_op)] // `x - x` is the finiteness probe
fn fold_min_max_scalar_cols(
    rows: &[f32],
    d: usize,
    c: usize,
    lo: &mut [f32],
    hi: &mut [f32],
) -> bool {
    let mut z = 0.0f32;
    for row in rows.chunks_exact(d) {
        for ((l, h), &x) in lo[c..].iter_mut().zip(hi[c..].iter_mut()).zip(&row[c..]) {
            *l = if x < *l { x } else { *l };
            *h = if x > *h { x } else { *h };
            z += x - x;
        }
    }
    z == 0.0
}

#[cfg(test)]
mod tests {
    use rand::RngExt;

    use super::*;

    /// A naive oracle: per-column min / max over the rows and an `is_finite` scan.
    fn naive(rows: &[f32], lo: &mut [f32], hi: &mut [f32]) -> bool {
        let d = lo.len();
        for row in rows.chunks_exact(d) {
            for c in 0..d {
                lo[c] = lo[c].min(row[c]);
                hi[c] = hi[c].max(row[c]);
            }
        }
        rows.iter().all(|v| v.is_finite())
    }

    #[test]
    fn fold_min_max_twins_equal_the_naive_fold() {
        squish_testkit::prop::check("simd_fold_min_max_twins", 60, |rng| {
            let d = [1, 7, 8, 13, 32, 40, 64, 71, 128][rng.random_range(0..9)];
            let n = rng.random_range(0..20);
            let mut rows: Vec<f32> = (0..n * d).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            // Signed zeros, and sometimes one non-finite element anywhere.
            for v in rows.iter_mut() {
                if rng.random_bool(0.05) {
                    *v = if rng.random_bool(0.5) { 0.0 } else { -0.0 };
                }
            }
            let bad = !rows.is_empty() && rng.random_bool(0.3);
            if bad {
                let at = rng.random_range(0..rows.len());
                rows[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.random_range(0..3)];
            }
            let init: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (mut lo0, mut hi0) = (init.clone(), init.clone());
            let finite = naive(&rows, &mut lo0, &mut hi0);
            assert_eq!(finite, !bad);
            let (mut lo1, mut hi1) = (init.clone(), init.clone());
            assert_eq!(
                fold_min_max_scalar(&rows, &mut lo1, &mut hi1),
                finite,
                "scalar d={d}"
            );
            let (mut lo2, mut hi2) = (init.clone(), init.clone());
            assert_eq!(
                fold_min_max(&rows, &mut lo2, &mut hi2),
                finite,
                "dispatched d={d}"
            );
            // The copying variant: same flag, same summaries, and an exact copy.
            let (mut lo3, mut hi3) = (init.clone(), init.clone());
            let mut copy = vec![f32::NAN; rows.len()];
            assert_eq!(
                fold_min_max_copy(&rows, &mut copy, &mut lo3, &mut hi3),
                finite,
                "copy d={d}"
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&copy), bits(&rows), "copy d={d}");
            if finite {
                assert_eq!(bits(&lo3), bits(&lo2), "copy lo d={d}");
                assert_eq!(bits(&hi3), bits(&hi2), "copy hi d={d}");
            }
            if finite {
                // Equal as values to the naive fold (whose `f32::min` may pick either zero).
                assert_eq!(lo1, lo0);
                assert_eq!(hi1, hi0);
                // The twins agree bit for bit, signed zeros included.
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&lo2), bits(&lo1), "lo d={d}");
                assert_eq!(bits(&hi2), bits(&hi1), "hi d={d}");
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn batched_hsum_is_the_single_vector_hsum_per_lane() {
        if isa() != Isa::Avx2Fma {
            return;
        }
        squish_testkit::prop::check("simd_dot_rows_batched", 30, |rng| {
            let d = if rng.random_bool(0.5) {
                [32, 64, 128][rng.random_range(0..3)]
            } else {
                rng.random_range(1..150)
            };
            let n = rng.random_range(0..40);
            let x: Vec<f32> = (0..d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let rows: Vec<f32> = (0..n * d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
            let mut out = vec![f32::NAN; n];
            // SAFETY: AVX2 and FMA were detected.
            unsafe { x86::dot_rows_avx2_fma(&x, &rows, &mut out) };
            for (j, &o) in out.iter().enumerate() {
                // SAFETY: as above.
                let want = unsafe { crate::simd::x86::dot_avx2_fma(&x, &rows[j * d..(j + 1) * d]) };
                assert_eq!(o.to_bits(), want.to_bits(), "d={d} row {j}");
            }
        });
    }
}

#[cfg(test)]
mod finite_tests {
    use rand::RngExt;

    use super::*;

    #[test]
    fn all_finite_twins_equal_is_finite_everywhere() {
        let specials = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001), // signalling NaN, sign clear
            f32::from_bits(0xffc0_1234),
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        squish_testkit::prop::check("simd_all_finite_twins", 200, |rng| {
            let n = rng.random_range(0..3000);
            let mut x: Vec<f32> = (0..n)
                .map(|_| match rng.random_range(0..4) {
                    0 => f32::MAX * if rng.random_bool(0.5) { 1.0 } else { -1.0 },
                    1 => f32::from_bits(rng.random_range(1..0x0080_0000)), // subnormal
                    _ => rng.random_range(-1e30f32..1e30),
                })
                .collect();
            if n > 0 && rng.random_bool(0.6) {
                let at = rng.random_range(0..n);
                x[at] = specials[rng.random_range(0..specials.len())];
            }
            let want = x.iter().all(|v| v.is_finite());
            assert_eq!(all_finite_scalar(&x), want, "scalar n={n}");
            assert_eq!(all_finite(&x), want, "dispatched n={n}");
        });
    }
}
