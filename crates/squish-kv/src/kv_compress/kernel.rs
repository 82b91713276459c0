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

/// Fast codes of one row against per-element zero-points and reciprocal scales; returns
/// whether every code is certainly equal to the exact one.
#[inline(always)]
fn encode_fast(x: &[f32], z: &[f32], inv: &[f32], out: &mut [u8]) -> bool {
    let mut ok = true;
    for (((o, &v), &z), &i) in out.iter_mut().zip(x).zip(z).zip(inv) {
        let t = (v - z) * i;
        let r = t + MAGIC;
        let d = t - (r - MAGIC);
        ok &= d.abs() < LIM;
        *o = (r.to_bits() & 0xff) as u8;
    }
    ok
}

/// As [`encode_fast`] with one zero-point and reciprocal scale for the whole slice.
#[inline(always)]
fn encode_fast_splat(x: &[f32], z: f32, inv: f32, out: &mut [u8]) -> bool {
    let mut ok = true;
    for (o, &v) in out.iter_mut().zip(x) {
        let t = (v - z) * inv;
        let r = t + MAGIC;
        let d = t - (r - MAGIC);
        ok &= d.abs() < LIM;
        *o = (r.to_bits() & 0xff) as u8;
    }
    ok
}

/// Scale from a group's minimum and maximum, as squish-core computes it, or `None` when the
/// range or its reconstruction overflows (or is NaN).
#[inline(always)]
fn scale_of(lo: f32, hi: f32, max_code: f32) -> Option<f32> {
    let range = hi - lo;
    let ok = range.is_finite() && (lo + max_code * (range / max_code)).is_finite();
    ok.then_some(range / max_code)
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
    let lens = out.lens();
    let Groups {
        codes,
        scales,
        zeros,
    } = &mut *out;
    let res = quantize_columns_inner(x, cols, gs, bits, codes, scales, zeros, scratch);
    if res.is_err() {
        out.truncate(lens);
    }
    res
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
    let mut buf = [0u8; CHUNK];
    for (b, block) in x.chunks_exact(gs * cols).enumerate() {
        // Pass 1: per-channel minimum and maximum, row by row (one lane per channel).
        let g0 = zeros.len();
        zeros.extend_from_slice(&block[..cols]);
        scales.extend_from_slice(&block[..cols]);
        let (los, his) = (&mut zeros[g0..], &mut scales[g0..]);
        for row in block.chunks_exact(cols).skip(1) {
            for ((lo, hi), &v) in los.iter_mut().zip(his.iter_mut()).zip(row) {
                *lo = if v < *lo { v } else { *lo };
                *hi = if v > *hi { v } else { *hi };
            }
        }
        // Pass 2: scales and reciprocals.
        for (c, ((hi, &lo), inv)) in his.iter_mut().zip(&*los).zip(&mut scratch.inv).enumerate() {
            let Some(s) = scale_of(lo, *hi, max_code) else {
                return Err(column_anomaly(block, cols, c, *hi, b * gs * cols));
            };
            *hi = s;
            *inv = fast_inverse(s);
        }
        let (zs, ss) = (&zeros[g0..], &scales[g0..]);
        // Pass 3: encode row by row, then pack.
        for (r, row) in block.chunks_exact(cols).enumerate() {
            let start = c0 + (b * gs + r) * row_bytes;
            let out = &mut codes[start..start + row_bytes];
            if bits == QuantBits::B8 {
                if !encode_fast(row, zs, &scratch.inv, out) {
                    exact_row(row, zs, ss, max_code, out)
                        .map_err(|i| Anomaly::NonFinite(b * gs * cols + r * cols + i))?;
                }
            } else {
                for (k, xs) in row.chunks(CHUNK).enumerate() {
                    let lo = k * CHUNK;
                    let n = xs.len();
                    let (z, s, inv) = (&zs[lo..lo + n], &ss[lo..lo + n], &scratch.inv[lo..lo + n]);
                    let cs = &mut buf[..n];
                    if !encode_fast(xs, z, inv, cs) {
                        exact_row(xs, z, s, max_code, cs)
                            .map_err(|i| Anomaly::NonFinite(b * gs * cols + r * cols + lo + i))?;
                    }
                    let p = bits.packed_len(lo);
                    pack_codes(cs, bits, &mut out[p..p + bits.packed_len(n)]);
                }
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
fn column_anomaly(block: &[f32], cols: usize, c: usize, hi: f32, offset: usize) -> Anomaly {
    let rows = block.len() / cols;
    if let Some(r) = (0..rows).find(|&r| !block[r * cols + c].is_finite()) {
        return Anomaly::NonFinite(offset + r * cols + c);
    }
    let r = (0..rows).find(|&r| block[r * cols + c] == hi).unwrap_or(0);
    Anomaly::Range(offset + r * cols + c)
}

/// Quantises `x`, `[rows, cols]` row-major with `cols % gs == 0` and `cols % 4 == 0`, with
/// groups of `gs` consecutive channels per row (KIVI values), appending to `codes`, `scales`
/// and `zeros` (`cols / gs` per row) exactly as `quantize_grouped(.., GroupAxis::AlongRow)`
/// lays them out.
///
/// On an anomaly the vectors are truncated back to their lengths on entry.
pub(super) fn quantize_rows(
    x: &[f32],
    cols: usize,
    gs: usize,
    bits: QuantBits,
    out: &mut Groups,
) -> Result<(), Anomaly> {
    let lens = out.lens();
    let Groups {
        codes,
        scales,
        zeros,
    } = &mut *out;
    let res = quantize_rows_inner(x, cols, gs, bits, codes, scales, zeros);
    if res.is_err() {
        out.truncate(lens);
    }
    res
}

fn quantize_rows_inner(
    x: &[f32],
    cols: usize,
    gs: usize,
    bits: QuantBits,
    codes: &mut Vec<u8>,
    scales: &mut Vec<f32>,
    zeros: &mut Vec<f32>,
) -> Result<(), Anomaly> {
    debug_assert!(cols > 0 && cols.is_multiple_of(4) && cols.is_multiple_of(gs));
    let max_code = f32::from(bits.max_code());
    let row_bytes = bits.packed_len(cols);
    let c0 = codes.len();
    codes.resize(c0 + x.len() / cols * row_bytes, 0);
    let mut buf = [0u8; CHUNK];
    for (r, row) in x.chunks_exact(cols).enumerate() {
        let start = c0 + r * row_bytes;
        let out = &mut codes[start..start + row_bytes];
        let mut lo_idx = 0;
        while lo_idx < cols {
            // A run of whole groups that fits the stack buffer (a group larger than the buffer
            // is encoded straight into `out` for 8 bits, or group by group otherwise).
            let run = if gs >= CHUNK {
                gs
            } else {
                (CHUNK / gs * gs).min(cols - lo_idx)
            };
            let xs = &row[lo_idx..lo_idx + run];
            let encode_group = |g: &[f32],
                                cs: &mut [u8],
                                at: usize|
             -> Result<(f32, f32), Anomaly> {
                let (lo, hi) = min_max(g);
                let Some(s) = scale_of(lo, hi, max_code) else {
                    let off = r * cols + at;
                    return Err(match g.iter().position(|v| !v.is_finite()) {
                        Some(i) => Anomaly::NonFinite(off + i),
                        None => Anomaly::Range(off + g.iter().position(|&v| v == hi).unwrap_or(0)),
                    });
                };
                if !encode_fast_splat(g, lo, fast_inverse(s), cs) {
                    exact_group(g, lo, s, max_code, cs)
                        .map_err(|i| Anomaly::NonFinite(r * cols + at + i))?;
                }
                Ok((lo, s))
            };
            if bits == QuantBits::B8 {
                let outs = &mut out[lo_idx..lo_idx + run];
                for (k, (g, cs)) in xs
                    .chunks_exact(gs)
                    .zip(outs.chunks_exact_mut(gs))
                    .enumerate()
                {
                    let (z, s) = encode_group(g, cs, lo_idx + k * gs)?;
                    zeros.push(z);
                    scales.push(s);
                }
            } else if run <= CHUNK {
                let cs = &mut buf[..run];
                for (k, (g, c)) in xs.chunks_exact(gs).zip(cs.chunks_exact_mut(gs)).enumerate() {
                    let (z, s) = encode_group(g, c, lo_idx + k * gs)?;
                    zeros.push(z);
                    scales.push(s);
                }
                let p = bits.packed_len(lo_idx);
                pack_codes(cs, bits, &mut out[p..p + bits.packed_len(run)]);
            } else {
                // One large group: encode it in buffer-sized pieces with shared parameters.
                let (lo, hi) = min_max(xs);
                let Some(s) = scale_of(lo, hi, max_code) else {
                    let off = r * cols + lo_idx;
                    return Err(match xs.iter().position(|v| !v.is_finite()) {
                        Some(i) => Anomaly::NonFinite(off + i),
                        None => Anomaly::Range(off + xs.iter().position(|&v| v == hi).unwrap_or(0)),
                    });
                };
                for (k, piece) in xs.chunks(CHUNK).enumerate() {
                    let cs = &mut buf[..piece.len()];
                    if !encode_fast_splat(piece, lo, fast_inverse(s), cs) {
                        exact_group(piece, lo, s, max_code, cs)
                            .map_err(|i| Anomaly::NonFinite(r * cols + lo_idx + k * CHUNK + i))?;
                    }
                    let p = bits.packed_len(lo_idx + k * CHUNK);
                    pack_codes(cs, bits, &mut out[p..p + bits.packed_len(piece.len())]);
                }
                zeros.push(lo);
                scales.push(s);
            }
            lo_idx += run;
        }
    }
    Ok(())
}

/// Minimum and maximum of a non-empty slice (NaN-blind: NaN is caught by the encoder).
#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut lo = [x[0]; 8];
    let mut hi = [x[0]; 8];
    let (chunks, rest) = x.as_chunks::<8>();
    for c in chunks {
        for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(c) {
            *l = if v < *l { v } else { *l };
            *h = if v > *h { v } else { *h };
        }
    }
    let lo = lo
        .iter()
        .chain(rest)
        .fold(x[0], |m, &v| if v < m { v } else { m });
    let hi = hi
        .iter()
        .chain(rest)
        .fold(x[0], |m, &v| if v > m { v } else { m });
    (lo, hi)
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
