//! The quantisation kernels of [`KvCompressor`](super::KvCompressor), specialised for its
//! layout and bit-identical to [`squish_core::quant::quantize_grouped`].
//!
//! squish-core's quantiser is general (any group size, any alignment) and divides per element.
//! Here rows are byte-aligned (`cols % 4 == 0`) and each call quantises whole groups, so:
//! - per-channel minimum and maximum run row-wise over contiguous token rows (one vector lane
//!   per channel);
//! - the code is computed with a multiplication by the reciprocal scale instead of a division,
//!   and rounded with the magic-number trick (`t + 1.5 * 2^23` holds `round_ties_even(t)` in
//!   its low mantissa bits). `t' = (v - z) * (1 / s)` differs from squish-core's
//!   `t = (v - z) / s` by at most `3 * 2^-24 * t <= 4.6e-5` for `t <= 255`, so the two round to
//!   the same code unless `t'` lies within that distance of a half-integer. Every element checks
//!   `|t' - round(t')| < 0.5 - DELTA` (with `DELTA = 2^-13`, far above the bound); a row with
//!   any element failing the check (about 1.5 % of 64-wide rows on random data, and every row of
//!   a group whose scale is zero or subnormal, or holding NaN) is re-encoded with squish-core's
//!   exact expression: division, clamp, rounding half away from zero.
//!
//! Ties to the exact-path rounding therefore never need handling in the fast path.

use squish_core::quant::{QuantBits, pack_codes, unpack_codes};

/// `1.5 * 2^23`: adding it to a float in `[0, 2^22)` rounds it to an integer (ties to even)
/// held in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;
/// Elements whose fast code lies closer than this to a rounding boundary are re-encoded exactly.
const DELTA: f32 = 1.0 / 8192.0;
/// `0.5 - DELTA`: the largest accepted distance from the rounded value.
const LIM: f32 = 0.5 - DELTA;
/// Codes are packed through a stack buffer of this many elements.
const CHUNK: usize = 256;

/// Something the fast path cannot decide: the caller reports the right error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Anomaly {
    /// A non-finite value, at this index of the kernel's input slice.
    NonFinite(usize),
    /// A group's range (or its reconstruction) overflows `f32`; index of the group's maximum.
    Range(usize),
}

/// squish-core's exact code: `clamp(round_half_away((v - z) / s), 0, max)`.
#[inline(always)]
fn encode_exact(v: f32, z: f32, s: f32, max_code: f32) -> u8 {
    let t = (v - z) / s;
    let t = if t > 0.0 { t } else { 0.0 };
    let t = if t < max_code { t } else { max_code };
    let n = (t + MAGIC) - MAGIC;
    let n = if t - n == 0.5 { n + 1.0 } else { n };
    ((n + MAGIC).to_bits() & 0xff) as u8
}

/// The reciprocal used by the fast path, or NaN (forcing the exact path) for a zero or
/// subnormal scale, whose reciprocal would overflow or lose precision.
#[inline(always)]
fn fast_inverse(s: f32) -> f32 {
    if s >= f32::MIN_POSITIVE {
        1.0 / s
    } else {
        f32::NAN
    }
}

/// Largest bit pattern of a finite `f32` magnitude.
const FINITE_BITS: u32 = 0x7f7f_ffff;
/// Bit pattern of [`LIM`].
const LIM_BITS: u32 = LIM.to_bits();

/// Has its sign bit set iff `|x|`'s bit pattern exceeds `limit` (`x` NaN included); OR-ed
/// together over lanes, so the check vectorises as integer subtractions.
#[inline(always)]
fn over(x: f32, limit: u32) -> u32 {
    limit.wrapping_sub(x.to_bits() & 0x7fff_ffff)
}

/// Fast codes of one row against per-element zero-points and reciprocal scales; returns
/// whether every code is certainly equal to the exact one.
#[inline(always)]
fn encode_fast(x: &[f32], z: &[f32], inv: &[f32], out: &mut [u8]) -> bool {
    let mut bad = 0u32;
    for (((o, &v), &z), &i) in out.iter_mut().zip(x).zip(z).zip(inv) {
        let t = (v - z) * i;
        let r = t + MAGIC;
        bad |= over(t - (r - MAGIC), LIM_BITS);
        *o = r.to_bits() as u8;
    }
    bad >> 31 == 0
}

/// As [`encode_fast`] with one zero-point and reciprocal scale for the whole slice; the sign
/// bit of the result is set if some code is uncertain.
#[inline(always)]
fn encode_fast_splat(x: &[f32], z: f32, inv: f32, out: &mut [u8]) -> u32 {
    let mut bad = 0u32;
    for (o, &v) in out.iter_mut().zip(x) {
        let t = (v - z) * inv;
        let r = t + MAGIC;
        bad |= over(t - (r - MAGIC), LIM_BITS);
        *o = r.to_bits() as u8;
    }
    bad
}

/// Turns group maxima `his` into scales `(hi - lo) / max_code` and writes the fast path's
/// reciprocals into `inv`, as squish-core does; returns the first group whose range or
/// largest reconstruction `lo + max_code * scale` is not finite.
#[inline(always)]
fn finish_scales(los: &[f32], his: &mut [f32], inv: &mut [f32], max_code: f32) -> Option<usize> {
    let mut bad = 0u32;
    for ((hi, &lo), iv) in his.iter_mut().zip(los).zip(inv.iter_mut()) {
        let range = *hi - lo;
        let s = range / max_code;
        bad |= over(range, FINITE_BITS) | over(lo + max_code * s, FINITE_BITS);
        *hi = s;
        *iv = fast_inverse(s);
    }
    if bad >> 31 == 0 {
        return None;
    }
    // A range is finite iff its scale is.
    his.iter()
        .zip(los)
        .position(|(&s, &lo)| !(s.is_finite() && (lo + max_code * s).is_finite()))
}

/// Packed codes with one scale and zero-point per group (squish-core's grouped layout).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Groups {
    /// Packed codes, row-major.
    pub(super) codes: Vec<u8>,
    /// One scale per group.
    pub(super) scales: Vec<f32>,
    /// One zero-point per group.
    pub(super) zeros: Vec<f32>,
}

impl Groups {
    pub(super) fn clear(&mut self) {
        self.codes.clear();
        self.scales.clear();
        self.zeros.clear();
    }

    /// Bytes held: codes plus 4 per scale and per zero-point.
    pub(super) fn bytes(&self) -> usize {
        self.codes.len() + size_of::<f32>() * (self.scales.len() + self.zeros.len())
    }

    /// Runs `append` on the three buffers; if it fails, truncates them back to their lengths on
    /// entry, so a failed append leaves the groups unchanged.
    fn append_or_rollback<E>(
        &mut self,
        append: impl FnOnce(&mut Vec<u8>, &mut Vec<f32>, &mut Vec<f32>) -> Result<(), E>,
    ) -> Result<(), E> {
        let lens = self.lens();
        let res = append(&mut self.codes, &mut self.scales, &mut self.zeros);
        if res.is_err() {
            self.truncate(lens);
        }
        res
    }

    fn truncate(&mut self, lens: (usize, usize, usize)) {
        self.codes.truncate(lens.0);
        self.scales.truncate(lens.1);
        self.zeros.truncate(lens.2);
    }

    fn lens(&self) -> (usize, usize, usize) {
        (self.codes.len(), self.scales.len(), self.zeros.len())
    }
}

/// Reusable buffers of the kernels.
#[derive(Debug, Clone, Default)]
pub(super) struct Scratch {
    inv: Vec<f32>,
    row: Vec<u8>,
}

/// Quantises `x`, `[rows, cols]` row-major with `rows % gs == 0` and `cols % 4 == 0`, with
/// groups of `gs` consecutive rows per column (KIVI keys), appending to `codes` (packed,
/// row-major), `scales` and `zeros` (`cols` per block of `gs` rows) exactly as
/// `quantize_grouped(.., GroupAxis::AlongColumn)` lays them out.
///
/// On an anomaly the vectors are truncated back to their lengths on entry.
pub(super) fn quantize_columns(
    x: &[f32],
    cols: usize,
    gs: usize,
    bits: QuantBits,
    out: &mut Groups,
    scratch: &mut Scratch,
) -> Result<(), Anomaly> {
    out.append_or_rollback(|codes, scales, zeros| {
        quantize_columns_inner(x, cols, gs, bits, codes, scales, zeros, scratch)
    })
}

#[allow(clippy::too_many_arguments)]
fn quantize_columns_inner(
    x: &[f32],
    cols: usize,
    gs: usize,
    bits: QuantBits,
    codes: &mut Vec<u8>,
    scales: &mut Vec<f32>,
    zeros: &mut Vec<f32>,
    scratch: &mut Scratch,
) -> Result<(), Anomaly> {
    debug_assert!(cols > 0 && cols.is_multiple_of(4) && x.len().is_multiple_of(gs * cols));
    let max_code = f32::from(bits.max_code());
    let row_bytes = bits.packed_len(cols);
    let c0 = codes.len();
    codes.resize(c0 + x.len() / cols * row_bytes, 0);
    scratch.inv.resize(cols, 0.0);
    scratch.row.resize(cols, 0);
    for (b, block) in x.chunks_exact(gs * cols).enumerate() {
        // Pass 1: per-channel minimum and maximum, row by row (one lane per channel).
        let g0 = zeros.len();
        zeros.resize(g0 + cols, 0.0);
        scales.resize(g0 + cols, 0.0);
        let (los, his) = (&mut zeros[g0..], &mut scales[g0..]);
        column_min_max(block, cols, los, his);
        // Pass 2: scales and reciprocals.
        if let Some(c) = finish_scales(los, his, &mut scratch.inv, max_code) {
            return Err(column_anomaly(block, cols, c, b * gs * cols));
        }
        let (zs, ss) = (&zeros[g0..], &scales[g0..]);
        // Pass 3: encode row by row (then pack).
        for (r, row) in block.chunks_exact(cols).enumerate() {
            let start = c0 + (b * gs + r) * row_bytes;
            let out = &mut codes[start..start + row_bytes];
            let cs = if bits == QuantBits::B8 {
                &mut *out
            } else {
                &mut scratch.row[..]
            };
            if !encode_fast(row, zs, &scratch.inv, cs) {
                exact_row(row, zs, ss, max_code, cs)
                    .map_err(|i| Anomaly::NonFinite(b * gs * cols + r * cols + i))?;
            }
            if bits != QuantBits::B8 {
                pack_codes(&scratch.row, bits, out);
            }
        }
    }
    Ok(())
}

/// Exact codes of a row; `Err(i)` for the first non-finite element.
#[inline(never)]
fn exact_row(x: &[f32], z: &[f32], s: &[f32], max_code: f32, out: &mut [u8]) -> Result<(), usize> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(i);
    }
    for (((o, &v), &z), &s) in out.iter_mut().zip(x).zip(z).zip(s) {
        *o = encode_exact(v, z, s, max_code);
    }
    Ok(())
}

/// Exact codes of one group with a shared zero-point and scale.
#[inline(never)]
fn exact_group(x: &[f32], z: f32, s: f32, max_code: f32, out: &mut [u8]) -> Result<(), usize> {
    if let Some(i) = x.iter().position(|v| !v.is_finite()) {
        return Err(i);
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = encode_exact(v, z, s, max_code);
    }
    Ok(())
}

/// The anomaly behind an overflowing column group: a non-finite value if there is one, else
/// the group's maximum.
#[cold]
fn column_anomaly(block: &[f32], cols: usize, c: usize, offset: usize) -> Anomaly {
    let rows = block.len() / cols;
    if let Some(r) = (0..rows).find(|&r| !block[r * cols + c].is_finite()) {
        return Anomaly::NonFinite(offset + r * cols + c);
    }
    let hi = (0..rows)
        .map(|r| block[r * cols + c])
        .fold(f32::MIN, f32::max);
    let r = (0..rows).find(|&r| block[r * cols + c] == hi).unwrap_or(0);
    Anomaly::Range(offset + r * cols + c)
}

/// Quantises `x`, `[rows, cols]` row-major with `cols % gs == 0` and `cols % 4 == 0`, with
/// groups of `gs` consecutive channels per row (KIVI values), appending to `out` (`cols / gs`
/// groups per row) exactly as `quantize_grouped(.., GroupAxis::AlongRow)` lays them out.
///
/// On an anomaly `out` is truncated back to its lengths on entry.
pub(super) fn quantize_rows(
    x: &[f32],
    cols: usize,
    gs: usize,
    bits: QuantBits,
    out: &mut Groups,
    scratch: &mut Scratch,
) -> Result<(), Anomaly> {
    out.append_or_rollback(|codes, scales, zeros| {
        quantize_rows_inner(x, cols, gs, bits, codes, scales, zeros, scratch)
    })
}

#[allow(clippy::too_many_arguments)]
fn quantize_rows_inner(
    x: &[f32],
    cols: usize,
    gs: usize,
    bits: QuantBits,
    codes: &mut Vec<u8>,
    scales: &mut Vec<f32>,
    zeros: &mut Vec<f32>,
    scratch: &mut Scratch,
) -> Result<(), Anomaly> {
    debug_assert!(cols > 0 && cols.is_multiple_of(4) && cols.is_multiple_of(gs));
    let max_code = f32::from(bits.max_code());
    let row_bytes = bits.packed_len(cols);
    let c0 = codes.len();
    codes.resize(c0 + x.len() / cols * row_bytes, 0);
    // Pass 1: minimum and maximum of every group.
    let g0 = zeros.len();
    let groups = x.len() / gs;
    zeros.reserve(groups);
    scales.reserve(groups);
    for g in x.chunks_exact(gs) {
        let (lo, hi) = min_max(g);
        zeros.push(lo);
        scales.push(hi);
    }
    // Pass 2: scales and reciprocals, vectorised over the groups.
    scratch.inv.resize(groups, 0.0);
    let (los, his) = (&zeros[g0..], &mut scales[g0..]);
    if let Some(gi) = finish_scales(los, his, &mut scratch.inv, max_code) {
        let g = &x[gi * gs..(gi + 1) * gs];
        let off = gi * gs;
        return Err(match g.iter().position(|v| !v.is_finite()) {
            Some(i) => Anomaly::NonFinite(off + i),
            None => {
                let hi = min_max(g).1;
                Anomaly::Range(off + g.iter().position(|&v| v == hi).unwrap_or(0))
            }
        });
    }
    let (zs, ss) = (&zeros[g0..], &scales[g0..]);
    // Pass 3: encode group by group, row by row (then pack).
    scratch.row.resize(cols, 0);
    let per_row = cols / gs;
    for (r, row) in x.chunks_exact(cols).enumerate() {
        let start = c0 + r * row_bytes;
        let out = &mut codes[start..start + row_bytes];
        let cs = if bits == QuantBits::B8 {
            &mut *out
        } else {
            &mut scratch.row[..]
        };
        let gr = r * per_row;
        let (zr, sr) = (&zs[gr..gr + per_row], &ss[gr..gr + per_row]);
        let ir = &scratch.inv[gr..gr + per_row];
        // One check per row: a row with any uncertain code is re-encoded exactly.
        let mut bad = 0u32;
        for (((g, c), &z), &inv) in row
            .chunks_exact(gs)
            .zip(cs.chunks_exact_mut(gs))
            .zip(zr)
            .zip(ir)
        {
            bad |= encode_fast_splat(g, z, inv, c);
        }
        if bad >> 31 != 0 {
            for (k, ((g, c), (&z, &s))) in row
                .chunks_exact(gs)
                .zip(cs.chunks_exact_mut(gs))
                .zip(zr.iter().zip(sr))
                .enumerate()
            {
                exact_group(g, z, s, max_code, c)
                    .map_err(|i| Anomaly::NonFinite(r * cols + k * gs + i))?;
            }
        }
        if bits != QuantBits::B8 {
            pack_codes(&scratch.row, bits, out);
        }
    }
    Ok(())
}

/// Per-column minimum and maximum of `block` (`[rows, cols]`, `rows >= 1`) into `los` and
/// `his`, in strips of 16 columns held in registers across the rows.
#[inline(always)]
fn column_min_max(block: &[f32], cols: usize, los: &mut [f32], his: &mut [f32]) {
    let mut c0 = 0;
    while c0 + 16 <= cols {
        strip_min_max::<16>(block, cols, c0, los, his);
        c0 += 16;
    }
    while c0 < cols {
        strip_min_max::<4>(block, cols, c0, los, his);
        c0 += 4;
    }
}

#[inline(always)]
fn strip_min_max<const W: usize>(
    block: &[f32],
    cols: usize,
    c0: usize,
    los: &mut [f32],
    his: &mut [f32],
) {
    let mut lo: [f32; W] = std::array::from_fn(|k| block[c0 + k]);
    let mut hi = lo;
    for row in block.chunks_exact(cols).skip(1) {
        let Some(xs) = row[c0..].first_chunk::<W>() else {
            return;
        };
        for k in 0..W {
            lo[k] = min2(xs[k], lo[k]);
        }
        for k in 0..W {
            hi[k] = max2(xs[k], hi[k]);
        }
    }
    los[c0..c0 + W].copy_from_slice(&lo);
    his[c0..c0 + W].copy_from_slice(&hi);
}

#[inline(always)]
fn min2(a: f32, b: f32) -> f32 {
    if a < b { a } else { b }
}

#[inline(always)]
fn max2(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// Minimum and maximum of a non-empty slice (NaN-blind: NaN is caught by the encoder).
///
/// Eight lanes, with the minimum and maximum updated in separate loops: a fused loop makes
/// LLVM's SLP vectoriser shuffle the comparison masks and runs twice as slow.
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
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

/// Reconstructs `rows` rows of per-column-grouped codes (layout of [`quantize_columns`]) into
/// `out` (`rows * cols` values): `zero + code * scale`, as squish-core's `dequantize_into`.
pub(super) fn dequantize_columns(
    q: &Groups,
    cols: usize,
    gs: usize,
    bits: QuantBits,
    out: &mut [f32],
) {
    let Groups {
        codes,
        scales,
        zeros,
    } = q;
    if bits == QuantBits::B8 {
        // Strips of 16 channels whose zero-points and scales stay in registers down a block.
        let block = gs * cols;
        for ((yb, cb), (zs, ss)) in out
            .chunks_exact_mut(block)
            .zip(codes.chunks_exact(block))
            .zip(zeros.chunks_exact(cols).zip(scales.chunks_exact(cols)))
        {
            let mut c0 = 0;
            while c0 + 16 <= cols {
                decode_strip::<16>(yb, cb, zs, ss, cols, c0);
                c0 += 16;
            }
            while c0 < cols {
                decode_strip::<4>(yb, cb, zs, ss, cols, c0);
                c0 += 4;
            }
        }
        return;
    }
    let row_bytes = bits.packed_len(cols);
    let mut buf = [0u8; CHUNK];
    for (r, (y, cs)) in out
        .chunks_exact_mut(cols)
        .zip(codes.chunks_exact(row_bytes))
        .enumerate()
    {
        let g = (r / gs) * cols;
        let (zs, ss) = (&zeros[g..g + cols], &scales[g..g + cols]);
        if bits == QuantBits::B8 {
            for (((o, &c), &z), &s) in y.iter_mut().zip(cs).zip(zs).zip(ss) {
                *o = z + f32::from(c) * s;
            }
        } else {
            for (k, yk) in y.chunks_mut(CHUNK).enumerate() {
                let lo = k * CHUNK;
                let n = yk.len();
                let b = &mut buf[..n];
                let p = bits.packed_len(lo);
                unpack_codes(&cs[p..p + bits.packed_len(n)], bits, b);
                for (((o, &c), &z), &s) in yk.iter_mut().zip(&*b).zip(&zs[lo..]).zip(&ss[lo..]) {
                    *o = z + f32::from(c) * s;
                }
            }
        }
    }
}

/// Decodes channels `c0..c0 + W` of every row of an 8-bit column block.
#[inline(always)]
fn decode_strip<const W: usize>(
    y: &mut [f32],
    codes: &[u8],
    zs: &[f32],
    ss: &[f32],
    cols: usize,
    c0: usize,
) {
    let (Some(z), Some(s)) = (zs[c0..].first_chunk::<W>(), ss[c0..].first_chunk::<W>()) else {
        return;
    };
    for (yr, cr) in y.chunks_exact_mut(cols).zip(codes.chunks_exact(cols)) {
        let (Some(yo), Some(ci)) = (yr[c0..].first_chunk_mut::<W>(), cr[c0..].first_chunk::<W>())
        else {
            return;
        };
        for k in 0..W {
            yo[k] = z[k] + f32::from(ci[k]) * s[k];
        }
    }
}

/// Reconstructs rows of per-row-grouped codes (layout of [`quantize_rows`]) into `out`.
pub(super) fn dequantize_rows(
    q: &Groups,
    cols: usize,
    gs: usize,
    bits: QuantBits,
    out: &mut [f32],
) {
    let Groups {
        codes,
        scales,
        zeros,
    } = q;
    let row_bytes = bits.packed_len(cols);
    let per_row = cols / gs;
    let mut buf = [0u8; CHUNK];
    for (r, (y, cs)) in out
        .chunks_exact_mut(cols)
        .zip(codes.chunks_exact(row_bytes))
        .enumerate()
    {
        let g0 = r * per_row;
        if bits == QuantBits::B8 {
            for (g, (yg, cg)) in y.chunks_exact_mut(gs).zip(cs.chunks_exact(gs)).enumerate() {
                let (z, s) = (zeros[g0 + g], scales[g0 + g]);
                for (o, &c) in yg.iter_mut().zip(cg) {
                    *o = z + f32::from(c) * s;
                }
            }
            continue;
        }
        for (k, yk) in y.chunks_mut(CHUNK).enumerate() {
            let lo = k * CHUNK;
            let n = yk.len();
            let b = &mut buf[..n];
            let p = bits.packed_len(lo);
            unpack_codes(&cs[p..p + bits.packed_len(n)], bits, b);
            // Runs of the chunk that lie in one group.
            let mut i = 0;
            while i < n {
                let c = lo + i;
                let len = (gs - c % gs).min(n - i);
                let g = g0 + c / gs;
                let (z, s) = (zeros[g], scales[g]);
                for (o, &code) in yk[i..i + len].iter_mut().zip(&b[i..i + len]) {
                    *o = z + f32::from(code) * s;
                }
                i += len;
            }
        }
    }
}
