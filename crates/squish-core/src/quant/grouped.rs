//! KIVI-style grouped asymmetric quantisation (scale + zero-point per group).

use super::pack::{QuantBits, pack_codes, packed_code, unpack_codes};
use crate::simd::grouped_rows;
use crate::{ConfigError, Error, Result, ShapeError, check_finite};

/// The direction a group runs in a row-major `[rows, cols]` matrix (rows = tokens,
/// cols = channels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupAxis {
    /// A group is `group_size` consecutive elements of one **row**: per-token quantisation,
    /// which KIVI uses for the **values**. `cols` must be a multiple of `group_size`.
    AlongRow,
    /// A group is `group_size` consecutive elements of one **column**: per-channel
    /// quantisation, which KIVI uses for the **keys** (whose outlier channels would otherwise
    /// stretch every token's range). `rows` must be a multiple of `group_size`.
    AlongColumn,
}

/// Configuration of [`quantize_grouped`].
///
/// # Example
/// ```
/// use squish_core::quant::{GroupAxis, GroupedQuantConfig, QuantBits};
/// let keys = GroupedQuantConfig::new(QuantBits::B2, 32, GroupAxis::AlongColumn);
/// assert!(keys.validate().is_ok());
/// assert_eq!(GroupedQuantConfig::default(), keys);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupedQuantConfig {
    /// Bits per code.
    pub bits: QuantBits,
    /// Values per group, `> 0`; must divide the matrix dimension along `axis`.
    pub group_size: usize,
    /// The direction groups run.
    pub axis: GroupAxis,
}

impl Default for GroupedQuantConfig {
    /// KIVI-2's key setting: 2 bits, groups of 32 tokens per channel.
    fn default() -> Self {
        Self::new(QuantBits::B2, 32, GroupAxis::AlongColumn)
    }
}

impl GroupedQuantConfig {
    /// A configuration with the given fields (not validated; see [`validate`](Self::validate)).
    pub const fn new(bits: QuantBits, group_size: usize, axis: GroupAxis) -> Self {
        Self {
            bits,
            group_size,
            axis,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] on `group_size` if it is 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_size == 0 {
            return Err(ConfigError::new(
                "GroupedQuantConfig",
                "group_size",
                "must be > 0",
                self.group_size,
            ));
        }
        Ok(())
    }

    /// Checks the configuration against a `[rows, cols]` matrix.
    fn check_shape(&self, rows: usize, cols: usize) -> Result<(), ConfigError> {
        self.validate()?;
        let (dim, name) = match self.axis {
            GroupAxis::AlongRow => (cols, "cols"),
            GroupAxis::AlongColumn => (rows, "rows"),
        };
        if !dim.is_multiple_of(self.group_size) {
            return Err(ConfigError::new(
                "GroupedQuantConfig",
                "group_size",
                format!("must divide {name} ({dim}) for {:?} groups", self.axis),
                self.group_size,
            ));
        }
        Ok(())
    }
}

/// A matrix quantised by [`quantize_grouped`]: packed codes plus one `f32` scale and one `f32`
/// zero-point per group.
///
/// Layout:
/// - `codes()`: `rows * cols` codes in row-major element order, packed as by
///   [`pack_codes`](super::pack_codes): exactly `ceil(rows * cols * bits / 8)` bytes.
/// - `scales()`, `zeros()`: one entry per group, in the order of [`group_index`]:
///   [`GroupAxis::AlongRow`]: `row * (cols / group_size) + col / group_size`;
///   [`GroupAxis::AlongColumn`]: `(row / group_size) * cols + col` (so appending
///   `group_size` tokens appends `cols` groups at the end).
///
/// Element `(r, c)` decodes to `zeros[g] + code(r, c) as f32 * scales[g]` with
/// `g = group_index(r, c)`. Scales and zero-points are `f32` (not `f16`): 8 bytes per group,
/// and the reconstruction bound `scale / 2` holds without an extra rounding of the parameters.
///
/// [`group_index`]: Self::group_index
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedQuantized {
    codes: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
    rows: usize,
    cols: usize,
    cfg: GroupedQuantConfig,
}

impl Default for GroupedQuantized {
    fn default() -> Self {
        Self::new()
    }
}

/// Codes are encoded and decoded through a stack buffer of this many elements (a multiple of
/// every `codes_per_byte`, so chunks stay byte-aligned when their row is).
const CHUNK: usize = 256;

impl GroupedQuantized {
    /// An empty `0 x 0` matrix (with the default configuration), to be filled by
    /// [`quantize_grouped_into`].
    pub fn new() -> Self {
        Self {
            codes: Vec::new(),
            scales: Vec::new(),
            zeros: Vec::new(),
            rows: 0,
            cols: 0,
            cfg: GroupedQuantConfig::default(),
        }
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (channels).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Number of quantised values, `rows * cols`.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Whether the matrix holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configuration it was quantised with.
    pub fn config(&self) -> &GroupedQuantConfig {
        &self.cfg
    }

    /// The packed codes (see the type docs for the layout).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// Per-group scales, `(max - min) * (1 / (2^bits - 1))`.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Per-group zero-points (the group minimum).
    pub fn zeros(&self) -> &[f32] {
        &self.zeros
    }

    /// Number of groups, `rows * cols / group_size`.
    pub fn group_count(&self) -> usize {
        self.scales.len()
    }

    /// Index into [`scales`](Self::scales) / [`zeros`](Self::zeros) of the group holding
    /// element `(row, col)`.
    ///
    /// # Panics
    /// If `row >= rows()` or `col >= cols()`.
    pub fn group_index(&self, row: usize, col: usize) -> usize {
        self.check_element(row, col);
        let gs = self.cfg.group_size;
        match self.cfg.axis {
            GroupAxis::AlongRow => row * (self.cols / gs) + col / gs,
            GroupAxis::AlongColumn => (row / gs) * self.cols + col,
        }
    }

    /// The code of element `(row, col)`, in `0..=bits.max_code()`.
    ///
    /// # Panics
    /// If `row >= rows()` or `col >= cols()`.
    pub fn code(&self, row: usize, col: usize) -> u8 {
        self.check_element(row, col);
        packed_code(&self.codes, self.cfg.bits, row * self.cols + col)
    }

    /// Bytes of quantised data held: packed codes plus 4 bytes per scale and per zero-point,
    /// from the buffers' lengths (spare capacity kept for reuse is not counted).
    pub fn bytes_held(&self) -> usize {
        self.codes.len() + size_of::<f32>() * (self.scales.len() + self.zeros.len())
    }

    /// Reconstructs the matrix, row-major, into `out`:
    /// `out[r * cols + c] = zero + code * scale` of the element's group (in `f32`).
    ///
    /// # Panics
    /// If `out.len() != rows() * cols()`.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.len(),
            "dequantize_into: out must hold {} x {} values",
            self.rows,
            self.cols
        );
        let bits = self.cfg.bits;
        let gs = self.cfg.group_size;
        let mut buf = [0u8; CHUNK];
        for (r, y_row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            let row_start = r * self.cols;
            for (ci, y) in y_row.chunks_mut(CHUNK).enumerate() {
                let c0 = ci * CHUNK;
                let codes = &mut buf[..y.len()];
                read_codes(&self.codes, bits, row_start + c0, codes);
                match self.cfg.axis {
                    GroupAxis::AlongRow => {
                        let groups = r * (self.cols / gs);
                        for_each_group_run(c0, y.len(), gs, |g, lo, hi| {
                            let (z, s) = (self.zeros[groups + g], self.scales[groups + g]);
                            for (o, &c) in y[lo..hi].iter_mut().zip(&codes[lo..hi]) {
                                *o = z + f32::from(c) * s;
                            }
                        });
                    }
                    GroupAxis::AlongColumn => {
                        let p = (r / gs) * self.cols + c0;
                        let zs = &self.zeros[p..p + y.len()];
                        let ss = &self.scales[p..p + y.len()];
                        for (((o, &c), &z), &s) in y.iter_mut().zip(&*codes).zip(zs).zip(ss) {
                            *o = z + f32::from(c) * s;
                        }
                    }
                }
            }
        }
    }

    /// Reconstructs the matrix into a new row-major vector; see
    /// [`dequantize_into`](Self::dequantize_into).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        self.dequantize_into(&mut out);
        out
    }

    #[track_caller]
    fn check_element(&self, row: usize, col: usize) {
        assert!(
            row < self.rows && col < self.cols,
            "element ({row}, {col}) outside a {} x {} matrix",
            self.rows,
            self.cols
        );
    }

    fn clear(&mut self) {
        self.codes.clear();
        self.scales.clear();
        self.zeros.clear();
        self.rows = 0;
        self.cols = 0;
    }
}

/// Quantises a row-major `[rows, cols]` matrix with one scale and zero-point per group.
///
/// Per group, in `f32`: `min`, `max`, `scale = (max - min) * (1 / (2^bits - 1))`, `zero = min`,
/// and `code = round_ties_even((x - min) * (1 / scale))` (the reciprocal rounded to `f32` once per
/// group; the rounded product never leaves `[0, 2^bits - 1]`), as GGML's quantisers do. A constant
/// group gets `scale = 0` (reciprocal 0) and all codes 0, and reconstructs exactly; a group
/// whose range is positive but so small that its scale would be subnormal gets
/// `scale = f32::MIN_POSITIVE`, so the reciprocal stays finite and exact.
///
/// Every element reconstructs within `scale * (1/2 + 2^-14)` of its input, up to the `f32`
/// rounding of the decode `min + code * scale`: the subtraction, the reciprocal and the
/// product each round by at most `2^-24` relative, so the computed `(x - min) / scale` is off by
/// at most `3 * 2^-24 * 255 < 2^-14` codes. (A division instead of the reciprocal rounds twice
/// and is off by `2 * 2^-24 * 255`: neither is the code of the exact quotient, and the division
/// costs far more.)
///
/// # Errors
/// - [`Error::Config`] if the configuration is invalid or `group_size` does not divide the
///   dimension along `cfg.axis`.
/// - [`Error::Shape`] if `x.len() != rows * cols`.
/// - [`Error::NonFinite`] for the first NaN or infinity in `x`.
/// - [`Error::OutOfRange`] for a group whose range `max - min` (or its reconstruction `min + (2^bits - 1) * scale`)
///   overflows `f32`, naming the group's maximum. Only ranges within a rounding of
///   `f32::MAX` (about `3.4e38`) are affected.
///
/// # Example
/// ```
/// use squish_core::quant::{GroupAxis, GroupedQuantConfig, QuantBits, quantize_grouped};
/// // 4 tokens x 2 channels; keys per channel: one group of 4 tokens per channel.
/// let x = [0.0, 10.0, 1.0, 20.0, 2.0, 30.0, 3.0, 40.0];
/// let cfg = GroupedQuantConfig::new(QuantBits::B2, 4, GroupAxis::AlongColumn);
/// let q = quantize_grouped(&x, 4, 2, &cfg)?;
/// assert_eq!(q.scales(), &[1.0, 10.0]);
/// assert_eq!(q.zeros(), &[0.0, 10.0]);
/// assert_eq!(q.codes().len(), 2); // 8 codes of 2 bits
/// assert_eq!(q.dequantize(), x);
/// # Ok::<(), squish_core::Error>(())
/// ```
pub fn quantize_grouped(
    x: &[f32],
    rows: usize,
    cols: usize,
    cfg: &GroupedQuantConfig,
) -> Result<GroupedQuantized> {
    let mut out = GroupedQuantized::new();
    quantize_grouped_into(x, rows, cols, cfg, &mut out)?;
    Ok(out)
}

/// [`quantize_grouped`] into `out`, reusing its buffers: no allocation once they have grown
/// to the size needed.
///
/// # Errors
/// As [`quantize_grouped`]. On error `out` is left valid: unchanged for configuration, shape
/// and NaN / infinity errors (checked first), empty (`0 x 0`) for a range overflow.
pub fn quantize_grouped_into(
    x: &[f32],
    rows: usize,
    cols: usize,
    cfg: &GroupedQuantConfig,
    out: &mut GroupedQuantized,
) -> Result<()> {
    cfg.check_shape(rows, cols)?;
    let n = rows.checked_mul(cols).ok_or_else(|| {
        ShapeError::new(
            "quantize_grouped x",
            format_args!("{rows} x {cols} values"),
            "an overflowing size",
        )
    })?;
    if x.len() != n {
        return Err(ShapeError::new(
            "quantize_grouped x",
            format_args!("{rows} x {cols} = {n} values"),
            format_args!("{} values", x.len()),
        )
        .into());
    }
    check_finite("quantize_grouped x", x)?;

    let gs = cfg.group_size;
    let groups = n / gs;
    out.rows = rows;
    out.cols = cols;
    out.cfg = cfg.clone();
    out.zeros.clear();
    out.zeros.resize(groups, 0.0);
    out.scales.clear();
    out.scales.resize(groups, 0.0);
    out.codes.clear();
    out.codes.resize(cfg.bits.packed_len(n), 0);
    if n == 0 {
        return Ok(());
    }

    // Pass 1: group minimum into `zeros`, maximum into `scales`.
    match cfg.axis {
        GroupAxis::AlongRow => {
            let groups = x
                .chunks_exact(gs)
                .zip(out.zeros.iter_mut().zip(&mut out.scales));
            for (g, (lo, hi)) in groups {
                (*lo, *hi) = min_max(g);
            }
        }
        GroupAxis::AlongColumn => {
            for (block, (los, his)) in x.chunks_exact(gs * cols).zip(
                out.zeros
                    .chunks_exact_mut(cols)
                    .zip(out.scales.chunks_exact_mut(cols)),
            ) {
                los.copy_from_slice(&block[..cols]);
                his.copy_from_slice(&block[..cols]);
                for row in block.chunks_exact(cols).skip(1) {
                    for ((lo, hi), &v) in los.iter_mut().zip(his.iter_mut()).zip(row) {
                        *lo = if v < *lo { v } else { *lo };
                        *hi = if v > *hi { v } else { *hi };
                    }
                }
            }
        }
    }

    // Pass 2: maximum -> scale. The largest reconstruction `min + max_code * scale` must be
    // finite too: with a range just below f32::MAX, `max_code * scale` can round up past it.
    let max_code = f32::from(cfg.bits.max_code());
    if let Some(g) = out.scales.iter().zip(&out.zeros).position(|(&hi, &lo)| {
        let range = hi - lo;
        !(range.is_finite() && (lo + max_code * scale_of(range, max_code)).is_finite())
    }) {
        let e = range_overflow(x, rows, cols, cfg, g, out.scales[g]);
        out.clear();
        return Err(e);
    }
    for (s, &lo) in out.scales.iter_mut().zip(&out.zeros) {
        *s = scale_of(*s - lo, max_code);
    }

    // Pass 3: encode row by row through a stack buffer, then pack.
    let bits = cfg.bits;
    let mut buf = [0u8; CHUNK];
    for (r, x_row) in x.chunks_exact(cols).enumerate() {
        let row_start = r * cols;
        for (ci, xs) in x_row.chunks(CHUNK).enumerate() {
            let c0 = ci * CHUNK;
            let codes = &mut buf[..xs.len()];
            match cfg.axis {
                GroupAxis::AlongRow => {
                    let first = r * (cols / gs);
                    for_each_group_run(c0, xs.len(), gs, |g, lo, hi| {
                        let (z, inv) = (out.zeros[first + g], reciprocal(out.scales[first + g]));
                        for (c, &v) in codes[lo..hi].iter_mut().zip(&xs[lo..hi]) {
                            *c = encode(v, z, inv, max_code);
                        }
                    });
                }
                GroupAxis::AlongColumn => {
                    let p = (r / gs) * cols + c0;
                    let zs = &out.zeros[p..p + xs.len()];
                    let ss = &out.scales[p..p + xs.len()];
                    for (((c, &v), &z), &s) in codes.iter_mut().zip(xs).zip(zs).zip(ss) {
                        *c = encode(v, z, reciprocal(s), max_code);
                    }
                }
            }
            write_codes(&mut out.codes, bits, row_start + c0, codes);
        }
    }
    Ok(())
}

/// The scale of a group with range `max - min`: `range * (1 / max_code)` (a multiply: one
/// division fewer per group than `range / max_code`, and the error bound is relative to the
/// stored scale either way), raised to `f32::MIN_POSITIVE` if positive but subnormal (so
/// `1 / scale` is finite and exact).
#[inline(always)]
pub(crate) fn scale_of(range: f32, max_code: f32) -> f32 {
    let s = range * (1.0 / max_code);
    if range > 0.0 && s < f32::MIN_POSITIVE {
        f32::MIN_POSITIVE
    } else {
        s
    }
}

/// [`scale_of`] and the [`reciprocal`] the codes are computed with (0 for a constant group).
#[inline(always)]
pub(crate) fn scale_and_reciprocal(range: f32, max_code: f32) -> (f32, f32) {
    let s = scale_of(range, max_code);
    (s, reciprocal(s))
}

/// The reciprocal of a group's scale (0 for scale 0, a constant group).
#[inline(always)]
pub(crate) fn reciprocal(s: f32) -> f32 {
    if s > 0.0 { 1.0 / s } else { 0.0 }
}

/// The code of `v` in a group with zero-point `z` and reciprocal scale `inv`:
/// `round_ties_even((v - z) * inv)` clamped to `[0, max_code]`. For `v` in the group's range the
/// clamp never acts (the product is at most `max_code * (1 + 2^-22)`); it keeps the code in
/// range should a caller ever pass a value outside it.
#[inline(always)]
pub(crate) fn encode(v: f32, z: f32, inv: f32, max_code: f32) -> u8 {
    let t = (v - z) * inv;
    let t = if t > 0.0 { t } else { 0.0 };
    let t = if t < max_code { t } else { max_code };
    t.round_ties_even() as u8
}

/// Minimum and maximum of a non-empty, finite slice.
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

/// Calls `f(g, lo, hi)` for each run `[lo, hi)` (relative to `c0`) of a chunk of `len`
/// elements starting at column `c0` that lies in one row group `g` (relative to the row).
#[inline]
fn for_each_group_run(c0: usize, len: usize, gs: usize, mut f: impl FnMut(usize, usize, usize)) {
    let mut c = c0;
    let end = c0 + len;
    while c < end {
        let g = c / gs;
        let run_end = ((g + 1) * gs).min(end);
        f(g, c - c0, run_end - c0);
        c = run_end;
    }
}

/// Writes `codes` into the zero-initialised packed buffer at element offset `start`.
fn write_codes(packed: &mut [u8], bits: QuantBits, start: usize, codes: &[u8]) {
    let k = bits.codes_per_byte();
    if start.is_multiple_of(k) {
        let b = start / k;
        pack_codes(
            codes,
            bits,
            &mut packed[b..b + bits.packed_len(codes.len())],
        );
    } else {
        // Rows whose length is not a multiple of `k` start mid-byte: merge code by code into
        // bytes that earlier writes left partially filled (their unused bits are zero).
        let w = bits.bits() as usize;
        for (i, &c) in (start..).zip(codes) {
            packed[i / k] |= (c & bits.max_code()) << (w * (i % k));
        }
    }
}

/// Reads `out.len()` codes starting at element offset `start`.
fn read_codes(packed: &[u8], bits: QuantBits, start: usize, out: &mut [u8]) {
    let k = bits.codes_per_byte();
    if start.is_multiple_of(k) {
        let b = start / k;
        unpack_codes(&packed[b..b + bits.packed_len(out.len())], bits, out);
    } else {
        for (i, c) in (start..).zip(out.iter_mut()) {
            *c = packed_code(packed, bits, i);
        }
    }
}

fn range_overflow(
    x: &[f32],
    rows: usize,
    cols: usize,
    cfg: &GroupedQuantConfig,
    g: usize,
    max: f32,
) -> Error {
    let gs = cfg.group_size;
    let index = match cfg.axis {
        GroupAxis::AlongRow => {
            let start = g * gs;
            start
                + x[start..start + gs]
                    .iter()
                    .position(|&v| v == max)
                    .unwrap_or(0)
        }
        GroupAxis::AlongColumn => {
            let (rb, c) = (g / cols, g % cols);
            (rb * gs..(rb + 1) * gs)
                .map(|r| r * cols + c)
                .find(|&i| x[i] == max)
                .unwrap_or(c)
        }
    };
    debug_assert!(index < rows * cols);
    Error::OutOfRange {
        context: "quantize_grouped x (a group's range max - min is too large for f32)",
        index,
        value: x[index],
    }
}

/// Per-row groups quantised per tile by [`quantize_grouped_slices`]: 128 groups of 32 values
/// are 16 KiB of input, read again from L1 by the encoder.
const TILE: usize = 128;

/// Columns per strip of per-column groups (their reciprocal scales live on the stack): head
/// dimensions up to 512 are encoded a whole block of rows per kernel call.
const COL_TILE: usize = 512;

/// [`quantize_grouped`] into caller-owned slices: the packed codes, scales and zero-points of
/// a row-major `[x.len() / cols, cols]` matrix, in [`GroupedQuantized`]'s layout and
/// **bit-identical** to [`quantize_grouped`]'s. For caches that append whole groups to their
/// own buffers (a KV cache quantising `group_size` tokens at a time): with `cols` a multiple of
/// 4, rows are byte-aligned, so quantising rows `a..b` writes exactly the bytes and groups that
/// quantising the whole matrix would put there.
///
/// # Errors
/// As [`quantize_grouped`], with the same values: [`Error::Config`] if the configuration is
/// invalid or `group_size` does not divide the dimension along `cfg.axis`,
/// [`Error::NonFinite`] for the first NaN or infinity in `x`, [`Error::OutOfRange`] for the
/// first group whose range overflows `f32`. The slices' contents are then unspecified.
///
/// # Panics
/// If `cols == 0`, `cols % 4 != 0`, `x.len() % cols != 0`,
/// `codes.len() != cfg.bits.packed_len(x.len())`, or `scales` / `zeros` do not hold
/// `x.len() / group_size` values.
///
/// # Performance
/// No allocation. Three passes per tile of groups (at most 128 groups, so the encoder reads
/// the values again from L1): minimum / maximum, scales and reciprocals, then the codes
/// (subtract, multiply, convert with ties to even, pack; one unsigned maximum per
/// eight values notices a NaN or infinity). With AVX2 + FMA (detected at run time) every pass runs eight
/// lanes at a time and the codes are packed in registers; per-row groups need a `group_size`
/// that is a multiple of 8 for that, other sizes take the portable path (`SQUISH_SIMD=off`
/// forces it). Measured on a 2-core AVX2 VM (3.2 GHz), 8-bit, groups of 32, 64 columns, in
/// cache: see the `KvCompressor/compress` bench docs.
///
/// # Example
/// ```
/// use squish_core::quant::{
///     GroupAxis, GroupedQuantConfig, QuantBits, quantize_grouped, quantize_grouped_slices,
/// };
/// let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
/// let cfg = GroupedQuantConfig::new(QuantBits::B4, 8, GroupAxis::AlongColumn);
/// let (mut codes, mut scales, mut zeros) = (vec![0u8; 32], vec![0.0; 8], vec![0.0; 8]);
/// quantize_grouped_slices(&x, 8, &cfg, &mut codes, &mut scales, &mut zeros)?;
/// let q = quantize_grouped(&x, 8, 8, &cfg)?;
/// assert_eq!((q.codes(), q.scales(), q.zeros()), (&codes[..], &scales[..], &zeros[..]));
/// # Ok::<(), squish_core::Error>(())
/// ```
pub fn quantize_grouped_slices(
    x: &[f32],
    cols: usize,
    cfg: &GroupedQuantConfig,
    codes: &mut [u8],
    scales: &mut [f32],
    zeros: &mut [f32],
) -> Result<()> {
    assert!(
        cols > 0 && cols.is_multiple_of(4) && x.len().is_multiple_of(cols),
        "quantize_grouped_slices: cols must be a positive multiple of 4 dividing x.len()"
    );
    let rows = x.len() / cols;
    cfg.check_shape(rows, cols)?;
    let (bits, gs) = (cfg.bits, cfg.group_size);
    assert_eq!(
        codes.len(),
        bits.packed_len(x.len()),
        "quantize_grouped_slices: codes length"
    );
    assert!(
        scales.len() == x.len() / gs && zeros.len() == scales.len(),
        "quantize_grouped_slices: scales and zeros must hold one value per group"
    );
    if x.is_empty() {
        return Ok(());
    }
    let isa = crate::simd::isa();
    let max_code = f32::from(bits.max_code());
    let row_bytes = bits.packed_len(cols);
    // Reciprocal scales of a tile, on the stack; zeroing the 2 KiB of a wide strip on every
    // call showed in profiles of 64-channel heads, so narrow tiles take a small buffer.
    let mut small = [0.0f32; TILE];
    let mut wide;
    let inv: &mut [f32] = if cfg.axis == GroupAxis::AlongRow || cols <= TILE {
        &mut small
    } else {
        wide = [0.0f32; COL_TILE];
        &mut wide
    };
    let fail = || slices_error(x, rows, cols, cfg);
    match cfg.axis {
        GroupAxis::AlongColumn => {
            for (b, block) in x.chunks_exact(gs * cols).enumerate() {
                let (zs, ss) = (
                    &mut zeros[b * cols..(b + 1) * cols],
                    &mut scales[b * cols..(b + 1) * cols],
                );
                grouped_rows::column_min_max(isa, block, cols, zs, ss);
                let packed = &mut codes[b * gs * row_bytes..(b + 1) * gs * row_bytes];
                for c0 in (0..cols).step_by(COL_TILE) {
                    let w = COL_TILE.min(cols - c0);
                    let (z, s, iv) = (&zs[c0..c0 + w], &mut ss[c0..c0 + w], &mut inv[..w]);
                    if !grouped_rows::finish_scales(isa, z, s, iv, max_code) {
                        return Err(fail());
                    }
                    if w == cols {
                        if !grouped_rows::encode_cols(isa, bits, block, cols, z, iv, packed) {
                            return Err(fail());
                        }
                    } else {
                        // Rows wider than a tile: one strip of `w` channels per row.
                        let (p0, pw) = (bits.packed_len(c0), bits.packed_len(w));
                        for r in 0..gs {
                            let xs = &block[r * cols + c0..r * cols + c0 + w];
                            let ps = &mut packed[r * row_bytes + p0..r * row_bytes + p0 + pw];
                            if !grouped_rows::encode_cols(isa, bits, xs, w, z, iv, ps) {
                                return Err(fail());
                            }
                        }
                    }
                }
            }
        }
        GroupAxis::AlongRow => {
            let per_row = cols / gs;
            // Tiles of whole rows holding at most TILE groups, or strips of TILE groups of one
            // row when a row holds more.
            let (tile_rows, tile_cols) = if per_row <= TILE {
                (TILE / per_row, cols)
            } else {
                (1, TILE * gs)
            };
            for r0 in (0..rows).step_by(tile_rows) {
                let r1 = (r0 + tile_rows).min(rows);
                for c0 in (0..cols).step_by(tile_cols) {
                    let w = tile_cols.min(cols - c0);
                    let (g0, ng) = ((r0 * cols + c0) / gs, (r1 - r0) * w / gs);
                    let (zs, ss) = (&mut zeros[g0..g0 + ng], &mut scales[g0..g0 + ng]);
                    let iv = &mut inv[..ng];
                    let (xs, ps) = if w == cols {
                        (
                            &x[r0 * cols..r1 * cols],
                            &mut codes[r0 * row_bytes..r1 * row_bytes],
                        )
                    } else {
                        let (p0, pw) = (r0 * row_bytes + bits.packed_len(c0), bits.packed_len(w));
                        (
                            &x[r0 * cols + c0..r0 * cols + c0 + w],
                            &mut codes[p0..p0 + pw],
                        )
                    };
                    grouped_rows::group_min_max(isa, xs, gs, zs, ss);
                    if !(grouped_rows::finish_scales(isa, zs, ss, iv, max_code)
                        && grouped_rows::encode_groups(isa, bits, xs, w, gs, zs, iv, ps))
                    {
                        return Err(fail());
                    }
                }
            }
        }
    }
    Ok(())
}

/// [`quantize_grouped`]'s error for `x`, found once the fast path met an anomaly: the first
/// NaN or infinity, else the first group (in group order) whose range overflows.
#[cold]
#[inline(never)]
fn slices_error(x: &[f32], rows: usize, cols: usize, cfg: &GroupedQuantConfig) -> Error {
    if let Err(e) = check_finite("quantize_grouped x", x) {
        return e;
    }
    let gs = cfg.group_size;
    let max_code = f32::from(cfg.bits.max_code());
    for g in 0..x.len() / gs {
        let (lo, hi) = match cfg.axis {
            GroupAxis::AlongRow => min_max(&x[g * gs..(g + 1) * gs]),
            GroupAxis::AlongColumn => {
                let (rb, c) = (g / cols, g % cols);
                (rb * gs..(rb + 1) * gs)
                    .map(|r| x[r * cols + c])
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
                        (l.min(v), h.max(v))
                    })
            }
        };
        let range = hi - lo;
        if !(range.is_finite() && (lo + max_code * scale_of(range, max_code)).is_finite()) {
            return range_overflow(x, rows, cols, cfg, g, hi);
        }
    }
    // Unreachable: the fast path only reports an anomaly for one of the two cases above.
    Error::OutOfRange {
        context: "quantize_grouped x (a group's range max - min is too large for f32)",
        index: 0,
        value: x[0],
    }
}

/// Reconstructs a matrix quantised by [`quantize_grouped_slices`] (or laid out as
/// [`GroupedQuantized`]) into `out`, row-major `[out.len() / cols, cols]`:
/// `zero + code * scale` of each element's group, bit-identical to
/// [`GroupedQuantized::dequantize_into`].
///
/// # Panics
/// If `cols == 0`, `cols % 4 != 0`, `out.len() % cols != 0`, `group_size` is 0 or does not
/// divide the dimension along `cfg.axis`, `codes.len() != cfg.bits.packed_len(out.len())`, or
/// `scales` / `zeros` do not hold `out.len() / group_size` values.
///
/// # Performance
/// No allocation. With AVX2, eight values per step (codes unpacked with variable shifts,
/// per-column parameters held in registers down strips of 32 columns); per-row groups need a
/// `group_size` that is a multiple of 8 for that. Measured at 8 bits (loaded 2-core AVX2 VM,
/// in cache): 0.07 ns per value along columns, 0.085 along rows; about 0.11 ns once the output
/// (512 KiB) no longer fits in L2. The multiply and add stay separate (no FMA) to match
/// [`GroupedQuantized::dequantize_into`] bit for bit.
///
/// # Example
/// ```
/// use squish_core::quant::{
///     GroupAxis, GroupedQuantConfig, QuantBits, dequantize_grouped_slices, quantize_grouped,
/// };
/// let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
/// let cfg = GroupedQuantConfig::new(QuantBits::B2, 16, GroupAxis::AlongRow);
/// let q = quantize_grouped(&x, 2, 32, &cfg)?;
/// let mut y = vec![0.0; 64];
/// dequantize_grouped_slices(q.codes(), q.scales(), q.zeros(), 32, &cfg, &mut y);
/// assert_eq!(y, q.dequantize());
/// # Ok::<(), squish_core::Error>(())
/// ```
pub fn dequantize_grouped_slices(
    codes: &[u8],
    scales: &[f32],
    zeros: &[f32],
    cols: usize,
    cfg: &GroupedQuantConfig,
    out: &mut [f32],
) {
    assert!(
        cols > 0 && cols.is_multiple_of(4) && out.len().is_multiple_of(cols),
        "dequantize_grouped_slices: cols must be a positive multiple of 4 dividing out.len()"
    );
    let rows = out.len() / cols;
    assert!(
        cfg.check_shape(rows, cols).is_ok(),
        "dequantize_grouped_slices: invalid group size for the shape"
    );
    let (bits, gs) = (cfg.bits, cfg.group_size);
    assert_eq!(
        codes.len(),
        bits.packed_len(out.len()),
        "dequantize_grouped_slices: codes length"
    );
    assert!(
        scales.len() == out.len() / gs && zeros.len() == scales.len(),
        "dequantize_grouped_slices: scales and zeros must hold one value per group"
    );
    let isa = crate::simd::isa();
    match cfg.axis {
        GroupAxis::AlongColumn => {
            let block_bytes = gs * bits.packed_len(cols);
            for (((y, cs), zs), ss) in out
                .chunks_exact_mut(gs * cols)
                .zip(codes.chunks_exact(block_bytes))
                .zip(zeros.chunks_exact(cols))
                .zip(scales.chunks_exact(cols))
            {
                grouped_rows::decode_cols(isa, bits, cs, cols, zs, ss, y);
            }
        }
        GroupAxis::AlongRow => {
            grouped_rows::decode_groups(isa, bits, codes, cols, gs, zeros, scales, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_of_odd_lengths() {
        let x: Vec<f32> = (0..19).map(|i| ((i * 7) % 19) as f32 - 9.0).collect();
        assert_eq!(min_max(&x), (-9.0, 9.0));
        assert_eq!(min_max(&[4.0]), (4.0, 4.0));
    }

    #[test]
    fn encode_handles_degenerate_scales() {
        // A constant group: scale 0, reciprocal 0, code 0.
        assert_eq!(scale_and_reciprocal(0.0, 3.0), (0.0, 0.0));
        assert_eq!(encode(1.5, 1.5, 0.0, 3.0), 0);
        // A subnormal scale is raised to the smallest normal one, whose reciprocal is exact.
        let tiny = f32::from_bits(5);
        let (s, inv) = scale_and_reciprocal(tiny, 3.0);
        assert_eq!((s, inv), (f32::MIN_POSITIVE, 2f32.powi(126)));
        assert_eq!(encode(tiny, 0.0, inv, 3.0), 0);
        assert_eq!(encode(f32::MIN_POSITIVE * 2.0, 0.0, inv, 3.0), 2);
        // Ties go to even; out-of-range values are clamped.
        assert_eq!(encode(0.5, 0.0, 1.0, 3.0), 0);
        assert_eq!(encode(1.5, 0.0, 1.0, 3.0), 2);
        assert_eq!(encode(9.0, 0.0, 1.0, 3.0), 3);
        assert_eq!(encode(-1.0, 0.0, 1.0, 3.0), 0);
        assert_eq!(encode(f32::NAN, 0.0, 1.0, 3.0), 0);
    }

    #[test]
    fn group_runs_split_chunks() {
        let mut runs = Vec::new();
        for_each_group_run(6, 10, 4, |g, lo, hi| runs.push((g, lo, hi)));
        assert_eq!(runs, [(1, 0, 2), (2, 2, 6), (3, 6, 10)]);
    }

    #[test]
    fn error_messages() {
        let cfg = GroupedQuantConfig::new(QuantBits::B4, 32, GroupAxis::AlongRow);
        let e = quantize_grouped(&[0.0; 100], 1, 100, &cfg).unwrap_err();
        insta::assert_snapshot!(e, @"invalid GroupedQuantConfig.group_size: must divide cols (100) for AlongRow groups, got 32");
        let cfg = GroupedQuantConfig::new(QuantBits::B4, 3, GroupAxis::AlongColumn);
        let e = quantize_grouped(&[0.0; 8], 4, 2, &cfg).unwrap_err();
        insta::assert_snapshot!(e, @"invalid GroupedQuantConfig.group_size: must divide rows (4) for AlongColumn groups, got 3");
        let cfg = GroupedQuantConfig::new(QuantBits::B4, 0, GroupAxis::AlongColumn);
        insta::assert_snapshot!(cfg.validate().unwrap_err(), @"invalid GroupedQuantConfig.group_size: must be > 0, got 0");
        let cfg = GroupedQuantConfig::new(QuantBits::B4, 2, GroupAxis::AlongColumn);
        let e = quantize_grouped(&[0.0; 7], 4, 2, &cfg).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in quantize_grouped x: expected 4 x 2 = 8 values, got 7 values");
        let e = quantize_grouped(&[3e38, 0.0, -3e38, 0.0], 2, 2, &cfg).unwrap_err();
        insta::assert_snapshot!(e, @"value out of range in quantize_grouped x (a group's range max - min is too large for f32): element 0 is 300000000000000000000000000000000000000");
        // A range of exactly f32::MAX: `3 * (MAX / 3)` rounds past MAX unless it is caught.
        let near = [f32::MAX, 0.0, 0.0, 0.0];
        let cfg = GroupedQuantConfig::new(QuantBits::B2, 4, GroupAxis::AlongRow);
        match quantize_grouped(&near, 1, 4, &cfg) {
            Ok(q) => assert!(q.dequantize().iter().all(|v| v.is_finite())),
            Err(e) => assert!(matches!(e, Error::OutOfRange { index: 0, .. })),
        }
    }

    /// `quantize_grouped_slices` and `dequantize_grouped_slices` against `quantize_grouped`
    /// (the independent, all-division implementation): bit-identical outputs and equal errors,
    /// on random shapes, widths, axes, near-ties and planted anomalies (on whichever path the
    /// process dispatches to; `SQUISH_SIMD=off` checks the portable one).
    #[test]
    fn slices_match_quantize_grouped() {
        use rand::{RngExt, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(7);
        for case in 0..1500 {
            let bits = [QuantBits::B2, QuantBits::B4, QuantBits::B8][case % 3];
            let axis = if case % 2 == 0 {
                GroupAxis::AlongRow
            } else {
                GroupAxis::AlongColumn
            };
            let gs = [1, 4, 8, 12, 16, 32, 64][rng.random_range(0..7)];
            let cols = match axis {
                GroupAxis::AlongRow => (gs * rng.random_range(1..6usize)).next_multiple_of(4),
                GroupAxis::AlongColumn => 4 * rng.random_range(1..40),
            };
            let cols = if cols.is_multiple_of(gs) {
                cols
            } else {
                gs * 4
            };
            // Now and then rows wider than a tile of reciprocals (strip paths).
            let cols = if case % 50 < 4 {
                4124usize.next_multiple_of(4 * gs)
            } else {
                cols
            };
            let rows = match axis {
                GroupAxis::AlongRow => rng.random_range(0..20),
                GroupAxis::AlongColumn => gs * rng.random_range(0..4),
            };
            let n = rows * cols;
            let max = f32::from(bits.max_code());
            let mut x: Vec<f32> = (0..n)
                .map(|i| match case % 4 {
                    // Near-ties: a hair off every half step of a 0..max grid.
                    0 => {
                        let t = (i % (2 * bits.max_code() as usize + 1)) as f32 * 0.5;
                        let u = rng.random_range(-2i32..=2);
                        f32::from_bits((t.to_bits() as i32 + u).max(0) as u32) * 0.37
                    }
                    1 => f32::from(rng.random_range(0..4u8)),
                    _ => rng.random_range(-1.0f32..1.0) * 1e3,
                })
                .collect();
            if case % 4 == 0 && n > 1 {
                x[0] = 0.0;
                x[1] = max * 0.37;
            }
            if n > 0 && case % 7 == 3 {
                let i = rng.random_range(0..n);
                x[i] = [f32::NAN, f32::INFINITY, 3e38][rng.random_range(0..3)];
                if x[i] == 3e38 {
                    let j = rng.random_range(0..n);
                    x[j] = -3e38;
                }
            }
            let cfg = GroupedQuantConfig::new(bits, gs, axis);
            let oracle = quantize_grouped(&x, rows, cols, &cfg);
            let (mut codes, mut scales, mut zeros) = (
                vec![0xa5u8; bits.packed_len(n)],
                vec![0.0; n / gs],
                vec![0.0; n / gs],
            );
            let got = quantize_grouped_slices(&x, cols, &cfg, &mut codes, &mut scales, &mut zeros);
            match oracle {
                Ok(q) => {
                    assert!(got.is_ok(), "case {case}: {got:?}");
                    assert_eq!(q.codes(), &codes[..], "case {case}");
                    let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(b(q.scales()), b(&scales), "case {case}");
                    assert_eq!(b(q.zeros()), b(&zeros), "case {case}");
                    let mut y = vec![0.0; n];
                    dequantize_grouped_slices(&codes, &scales, &zeros, cols, &cfg, &mut y);
                    assert_eq!(b(&q.dequantize()), b(&y), "case {case}");
                }
                Err(e) => assert_eq!(
                    format!("{e:?}"),
                    format!("{:?}", got.unwrap_err()),
                    "case {case}"
                ),
            }
        }
    }
}
