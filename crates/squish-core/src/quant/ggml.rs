//! GGML's legacy 32-element block formats `Q8_0` and `Q4_0`.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::{floor_non_negative, nearest_i32};
use crate::simd;
use crate::{Error, Result, ShapeError, check_finite};

/// Number of values in a [`BlockQ8_0`] (GGML's `QK8_0`).
pub const QK8_0: usize = 32;

/// Number of values in a [`BlockQ4_0`] (GGML's `QK4_0`).
pub const QK4_0: usize = 32;

/// One GGML `Q8_0` block: 32 values as `i8` codes times one `f16` scale (8.5 bits per value).
///
/// Value `j` is `qs[j] as f32 * d.to_f32()`. Layout (34 bytes, alignment 2, no padding) is
/// GGML's `block_q8_0`: the scale `d`, then the 32 codes.
///
/// # Example
/// ```
/// use squish_core::quant::{BlockQ8_0, blocks_as_bytes, dequantize_row_q8_0, quantize_row_q8_0};
/// let x: Vec<f32> = (0..32).map(|i| i as f32 - 16.0).collect();
/// let mut blocks = [BlockQ8_0::default()];
/// quantize_row_q8_0(&x, &mut blocks)?;
/// assert_eq!(blocks_as_bytes(&blocks).len(), 34);
/// let mut y = [0.0f32; 32];
/// dequantize_row_q8_0(&blocks, &mut y);
/// assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= 0.07));
/// # Ok::<(), squish_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale: `amax / 127` rounded to `f16`, where `amax` is the block's largest `|x|`.
    pub d: f16,
    /// Codes in `[-127, 127]` (`-128` is never produced, but decodes as `-128 * d`).
    pub qs: [i8; QK8_0],
}

/// One GGML `Q4_0` block: 32 values as 4-bit codes times one `f16` scale (4.5 bits per value).
///
/// Value `j` is `(code[j] as f32 - 8.0) * d.to_f32()`, where `code[j]` is the low nibble of
/// `qs[j]` for `j < 16` and the high nibble of `qs[j - 16]` for `j >= 16`. Layout (18 bytes,
/// alignment 2, no padding) is GGML's `block_q4_0`.
///
/// # Example
/// ```
/// use squish_core::quant::{BlockQ4_0, dequantize_row_q4_0, quantize_row_q4_0};
/// // Multiples of 0.5 in [-4, 3.5] are exact: max = -4 gives d = 0.5.
/// let x: Vec<f32> = (0..32).map(|i| (i % 16) as f32 * 0.5 - 4.0).collect();
/// let mut blocks = [BlockQ4_0::default()];
/// quantize_row_q4_0(&x, &mut blocks)?;
/// assert_eq!(blocks[0].d.to_f32(), 0.5);
/// let mut y = [0.0f32; 32];
/// dequantize_row_q4_0(&blocks, &mut y);
/// assert_eq!(x, y);
/// # Ok::<(), squish_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct BlockQ4_0 {
    /// Scale: `max / -8` rounded to `f16`, where `max` is the block's signed value of largest
    /// magnitude (the first one, on ties).
    pub d: f16,
    /// Packed codes: low nibble = code of element `j`, high nibble = code of element `j + 16`.
    pub qs: [u8; QK4_0 / 2],
}

const _: () = assert!(size_of::<BlockQ8_0>() == 34);
const _: () = assert!(align_of::<BlockQ8_0>() == 2);
const _: () = assert!(size_of::<BlockQ4_0>() == 18);
const _: () = assert!(align_of::<BlockQ4_0>() == 2);

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::BlockQ8_0 {}
    impl Sealed for super::BlockQ4_0 {}
}

/// A GGML block type ([`BlockQ8_0`] or [`BlockQ4_0`]): its size and name, for the generic byte
/// views [`blocks_as_bytes`], [`try_cast_blocks`] and [`blocks_from_bytes`].
///
/// Sealed: implemented only by this crate's block types.
pub trait GgmlBlock: Pod + sealed::Sealed {
    /// GGML's name of the type, e.g. `"Q8_0"`.
    const NAME: &'static str;
    /// Number of `f32` values one block holds.
    const VALUES: usize;
    /// Size of one block in bytes.
    const BYTES: usize;
}

impl GgmlBlock for BlockQ8_0 {
    const NAME: &'static str = "Q8_0";
    const VALUES: usize = QK8_0;
    const BYTES: usize = size_of::<Self>();
}

impl GgmlBlock for BlockQ4_0 {
    const NAME: &'static str = "Q4_0";
    const VALUES: usize = QK4_0;
    const BYTES: usize = size_of::<Self>();
}

/// Views blocks as their bytes, without copying: `blocks.len() * B::BYTES` bytes in GGML's
/// layout (the `f16` scale in native byte order, i.e. GGML's little-endian layout on
/// little-endian targets).
///
/// # Example
/// ```
/// use squish_core::quant::{BlockQ4_0, blocks_as_bytes};
/// let blocks = [BlockQ4_0::default(); 3];
/// assert_eq!(blocks_as_bytes(&blocks).len(), 3 * 18);
/// ```
pub fn blocks_as_bytes<B: GgmlBlock>(blocks: &[B]) -> &[u8] {
    bytemuck::cast_slice(blocks)
}

/// Views bytes as blocks without copying.
///
/// The bytes must start at an address aligned for `B` (2 bytes, for the `f16` scale); for
/// bytes at any address (e.g. at an odd offset inside a file) use [`blocks_from_bytes`].
///
/// # Errors
/// [`Error::Shape`] if `bytes.len()` is not a multiple of `B::BYTES`, or if `bytes` is
/// non-empty and not aligned for `B`.
///
/// # Example
/// ```
/// use squish_core::quant::{BlockQ8_0, blocks_as_bytes, try_cast_blocks};
/// let blocks = [BlockQ8_0::default(); 2];
/// let bytes = blocks_as_bytes(&blocks);
/// let back: &[BlockQ8_0] = try_cast_blocks(bytes)?;
/// assert_eq!(back, &blocks);
/// assert!(try_cast_blocks::<BlockQ8_0>(&bytes[..33]).is_err());
/// # Ok::<(), squish_core::Error>(())
/// ```
pub fn try_cast_blocks<B: GgmlBlock>(bytes: &[u8]) -> Result<&[B]> {
    check_block_bytes::<B>("try_cast_blocks bytes", bytes)?;
    if bytes.is_empty() {
        // An empty slice's (dangling) address says nothing about the caller's buffer.
        return Ok(&[]);
    }
    bytemuck::try_cast_slice(bytes).map_err(|_| {
        Error::Shape(ShapeError::new(
            "try_cast_blocks bytes",
            format_args!("a start address aligned to {} bytes", align_of::<B>()),
            "an unaligned address (use blocks_from_bytes)",
        ))
    })
}

/// Copies bytes of any alignment into a new vector of blocks.
///
/// # Errors
/// [`Error::Shape`] if `bytes.len()` is not a multiple of `B::BYTES`.
///
/// # Example
/// ```
/// use squish_core::quant::{BlockQ4_0, blocks_as_bytes, blocks_from_bytes};
/// let blocks = [BlockQ4_0::default(); 2];
/// let mut file = vec![0xff_u8]; // one header byte: the blocks start at an odd offset
/// file.extend_from_slice(blocks_as_bytes(&blocks));
/// let back: Vec<BlockQ4_0> = blocks_from_bytes(&file[1..])?;
/// assert_eq!(back, blocks);
/// # Ok::<(), squish_core::Error>(())
/// ```
pub fn blocks_from_bytes<B: GgmlBlock>(bytes: &[u8]) -> Result<Vec<B>> {
    check_block_bytes::<B>("blocks_from_bytes bytes", bytes)?;
    Ok(bytes
        .chunks_exact(B::BYTES)
        .map(bytemuck::pod_read_unaligned)
        .collect())
}

fn check_block_bytes<B: GgmlBlock>(context: &'static str, bytes: &[u8]) -> Result<()> {
    if bytes.len().is_multiple_of(B::BYTES) {
        Ok(())
    } else {
        Err(Error::Shape(ShapeError::new(
            context,
            format_args!("a multiple of {} bytes ({} blocks)", B::BYTES, B::NAME),
            format_args!("{} bytes", bytes.len()),
        )))
    }
}

/// `Q8_0` codes of one block given `id = 127 / amax`: `clamp(x * id, ±127)` rounded to the
/// nearest integer, ties to even. The portable twin of the AVX2 kernels in `simd`.
pub(crate) fn q8_0_codes_scalar(xb: &[f32; QK8_0], id: f32, qs: &mut [i8; QK8_0]) {
    for (q, &v) in qs.iter_mut().zip(xb) {
        // |v * id| <= 127 * (1 + 2^-20) < 127.5, so clamping before rounding is exact and
        // keeps the integer conversion in range.
        let v = v * id;
        let v = if v > 127.0 { 127.0 } else { v };
        let v = if v < -127.0 { -127.0 } else { v };
        *q = nearest_i32(v) as i8;
    }
}

/// `Q4_0` nibbles of one block given `id = 1 / d`: `code = min(15, trunc(x * id + 8.5))`,
/// element `j` in the low nibble of byte `j`, element `j + 16` in its high nibble. The portable
/// twin of the AVX2 kernel in `simd`.
pub(crate) fn q4_0_codes_scalar(xb: &[f32; QK4_0], id: f32, qs: &mut [u8; QK4_0 / 2]) {
    let mut codes = [0u8; QK4_0];
    for (c, &v) in codes.iter_mut().zip(xb) {
        // v * id is in [-8 (1 + 2^-20), 8 (1 + 2^-20)], so t >= 0.49 and C's truncating
        // (int8_t) cast is a floor; clamping to [0, 15] first equals GGML's MIN(15, ..).
        let t = v * id + 8.5;
        let t = if t < 15.0 { t } else { 15.0 };
        let t = if t > 0.0 { t } else { 0.0 };
        *c = floor_non_negative(t) as u8;
    }
    let (lo, hi) = codes.split_at(QK4_0 / 2);
    for ((q, &l), &h) in qs.iter_mut().zip(lo).zip(hi) {
        *q = l | (h << 4);
    }
}

/// `(max |x|, the first x of that magnitude)` of a block, `(0, +0.0)` for an all-zero block
/// (GGML's `Q4_0` scale source). The portable twin of the AVX2 kernel in `simd`.
pub(crate) fn first_max_abs(x: &[f32; 32]) -> (f32, f32) {
    let amax = max_abs(x);
    let max = if amax == 0.0 {
        0.0
    } else {
        x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
    };
    (amax, max)
}

/// Largest `|x|` of a block. The block is finite (validated up front), so plain comparisons
/// replace NaN-aware `f32::max`; eight lanes let the loop vectorise. The portable twin of the
/// AVX2 kernel in `simd`.
#[inline]
pub(crate) fn max_abs(x: &[f32; 32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for chunk in x.as_chunks::<8>().0 {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            let v = v.abs();
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(0.0, |m, &v| if v > m { v } else { m })
}

/// `n / d`, or 0 when `d` is zero or so small that the quotient overflows (`Q4_0`'s
/// `1 / d`: `|d|` below about `2.9e-39`; `Q8_0`'s `127 / amax`: `amax` below about `3.7e-37`).
///
/// GGML computes `id = d ? 1.0f/d : 0.0f` (`Q4_0`) and `id = amax != 0.0f ? 127.f/amax : 0.0f`
/// (`Q8_0`); for the overflowing case its next step converts an infinite or NaN float to an
/// integer, which is undefined behaviour in C. Such a block's `f16` scale is 0 anyway, so we
/// quantise it as the zero block.
#[inline]
fn quotient_or_zero(n: f32, d: f32) -> f32 {
    let id = if d == 0.0 { 0.0 } else { n / d };
    if id.is_finite() { id } else { 0.0 }
}

fn scale_overflow(context: &'static str, block_start: usize, x: &[f32; 32], amax: f32) -> Error {
    let at = x.iter().position(|v| v.abs() == amax).unwrap_or(0);
    Error::OutOfRange {
        context,
        index: block_start + at,
        value: x[at],
    }
}

#[track_caller]
fn assert_row_len(what: &str, values: usize, blocks: usize, per_block: usize) {
    assert!(
        blocks.checked_mul(per_block) == Some(values),
        "{what}: {values} values do not fill {blocks} blocks of {per_block}"
    );
}

/// Quantises `x` into `Q8_0` blocks, bit-identical to the `quantize_row_q8_0` that GGML's CPU
/// backend runs on x86 with AVX or AVX2 (the quantiser llama.cpp applies to `Q8_0` KV caches and
/// to the activations of its `Q8_0`/`Q4_0` dot products).
///
/// For each block of 32 values, in `f32` arithmetic:
/// `amax = max |x|`, `d = amax / 127`, `id = 127 / amax` (0 if `amax == 0`), and
/// `qs[j] = x[j] * id` rounded to the nearest integer with ties to **even** (`_mm256_round_ps`
/// with `_MM_ROUND_NEAREST`). `d` is rounded to `f16` (round to nearest even) for storage.
/// The products are never fused into an FMA. A block so small that `127 / amax` overflows
/// `f32` (`amax < ~3.7e-37`, where GGML's C is undefined behaviour) is stored as the zero
/// block; its `f16` scale would be 0 regardless.
///
/// GGML's portable `quantize_row_q8_0_ref` (what `llama-quantize` writes into model files)
/// differs in two details: `id = 1 / d` (a second rounding, so it can be one ulp away from
/// `127 / amax`) and C's `roundf` (ties away from zero). The two agree on every code except at
/// exact ties and within an ulp of them; either way each code is a nearest integer to
/// `x / d`, and both produce the same format (same block layout and dequantisation).
///
/// # Errors
/// - [`Error::NonFinite`] for the first NaN or infinity in `x` (nothing is quantised with a
///   silent bad scale).
/// - [`Error::OutOfRange`] for a block whose `f16` scale
///   would be infinite (`amax / 127 >= 65520`, i.e. `amax >= ~8.32e6`); it names the block's
///   largest element. GGML would store an infinite scale there.
///
/// On error, the contents of `out` are unspecified.
///
/// # Panics
/// If `x.len() != out.len() * 32`.
///
/// # Performance
/// With AVX2 + FMA + F16C (detected at run time), one fused pass per 64 blocks: eight blocks'
/// maxima, finiteness checks, scales (`f16` by F16C) and reciprocals at a time, then the codes
/// from L1 (see `simd::ggml_rows`); about 0.13 ns per value (4.1 µs for 32 768 values at 16 mod
/// 64, 3.4 µs 64-byte aligned, on the 2-core Zen 3 VM of the seed benches). Bad input (NaN,
/// infinity, an overflowing scale) falls back to the block-by-block path, which also serves
/// CPUs without those features and `SQUISH_SIMD=off`: one validation pass, then per block a
/// vectorised max-abs, a software `f16` rounding and the codes.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [BlockQ8_0]) -> Result<()> {
    assert_row_len("quantize_row_q8_0", x.len(), out.len(), QK8_0);
    if simd::ggml_rows::quantize_row_q8_0(x.as_chunks::<QK8_0>().0, out) {
        return Ok(());
    }
    quantize_row_q8_0_blocks(simd::isa(), x, out)
}

/// The block-by-block `Q8_0` row path: one finiteness pass, then per block the `isa` kernels
/// for the maximum and the codes and a software `f16` scale. With [`Isa::Scalar`](simd::Isa)
/// it is the portable twin of the whole-row AVX2 kernel (`simd::ggml_rows`); it is also the
/// path that produces the errors. Lengths are checked by the caller.
pub(crate) fn quantize_row_q8_0_blocks(
    isa: simd::Isa,
    x: &[f32],
    out: &mut [BlockQ8_0],
) -> Result<()> {
    check_finite("quantize_row_q8_0 x", x)?;
    for (i, (xb, yb)) in x.as_chunks::<QK8_0>().0.iter().zip(out).enumerate() {
        let amax = simd::max_abs32(isa, xb);
        let d = amax / 127.0;
        let dh = f16::from_f32(d);
        if dh.is_infinite() {
            return Err(scale_overflow(
                "quantize_row_q8_0 x (the block's f16 scale amax / 127 overflows)",
                i * QK8_0,
                xb,
                amax,
            ));
        }
        let id = quotient_or_zero(127.0, amax);
        simd::q8_0_codes(isa, xb, id, &mut yb.qs);
        yb.d = dh;
    }
    Ok(())
}

/// Quantises `x` into a new vector of `Q8_0` blocks; see [`quantize_row_q8_0`].
///
/// # Errors
/// [`Error::Shape`] if `x.len()` is not a multiple of 32, and the errors of
/// [`quantize_row_q8_0`].
pub fn quantize_q8_0(x: &[f32]) -> Result<Vec<BlockQ8_0>> {
    check_values_len::<BlockQ8_0>("quantize_q8_0 x", x.len())?;
    let mut out = vec![BlockQ8_0::zeroed(); x.len() / QK8_0];
    quantize_row_q8_0(x, &mut out)?;
    Ok(out)
}

/// Dequantises `Q8_0` blocks into `out` (`out[32 * i + j] = qs[j] * d` of block `i`), exactly
/// as GGML's `dequantize_row_q8_0`. Every product is exact in `f32`.
///
/// # Panics
/// If `out.len() != blocks.len() * 32`.
///
/// # Performance
/// AVX2 with the scale converted by F16C (when detected): about 0.3 µs for 4096 values (in
/// L1) on the 2-core Zen 3 VM of the seed benches, against 0.68 µs with a software scale.
pub fn dequantize_row_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    assert_row_len("dequantize_row_q8_0", out.len(), blocks.len(), QK8_0);
    simd::ggml_rows::dequantize_q8_0(blocks, out.as_chunks_mut::<QK8_0>().0);
}

/// Portable twin of the AVX2 `Q8_0` dequantiser: `y[j] = qs[j] * d` (exact in `f32`).
pub(crate) fn dequantize_q8_0_scalar(blocks: &[BlockQ8_0], out: &mut [[f32; QK8_0]]) {
    for (b, y) in blocks.iter().zip(out) {
        let d = b.d.to_f32();
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

/// Quantises `x` into `Q4_0` blocks, bit-identical to GGML's `quantize_row_q4_0_ref`.
///
/// For each block of 32 values, in `f32` arithmetic: `max` is the first value of largest
/// magnitude (keeping its sign; `+0.0` for an all-zero block), `d = max / -8`,
/// `id = 1 / d` (0 if `d == 0`), and `code[j] = min(15, trunc(x[j] * id + 8.5))`: round half
/// **up** in code space (not `roundf`), computed as an `f32` multiply then an `f32` add
/// (never fused). `max` itself maps to code 0 (value `-8 d = max`); the opposite extreme would
/// need code 16 and is clamped to 15. `d` is rounded to `f16` (nearest even) only for storage.
/// An all-zero block stores `d = -0.0` (bytes `00 80`, as GGML: `0.0 / -8`) and codes 8.
/// A block so small that `1 / d` overflows `f32` (GGML: undefined behaviour) is stored with
/// codes 8, i.e. as zeros; its `f16` scale is ±0 regardless.
///
/// # Errors
/// - [`Error::NonFinite`] for the first NaN or infinity in `x`.
/// - [`Error::OutOfRange`] for a block whose `f16` scale
///   would be infinite (`|max| / 8 >= 65520`); it names the block's largest element.
///
/// On error, the contents of `out` are unspecified.
///
/// # Panics
/// If `x.len() != out.len() * 32`.
///
/// # Performance
/// As [`quantize_row_q8_0`]: with AVX2 + FMA + F16C one fused pass per 64 blocks (the scale
/// source from each block's signed maximum and minimum; a block holding both `+amax` and
/// `-amax` is resolved by a scalar search for the first), about 0.15 ns per value (5.0 µs for
/// 32 768 values, 3.9x the block-by-block path); bad input falls back to the block-by-block
/// path, which produces the error.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [BlockQ4_0]) -> Result<()> {
    assert_row_len("quantize_row_q4_0", x.len(), out.len(), QK4_0);
    if simd::ggml_rows::quantize_row_q4_0(x.as_chunks::<QK4_0>().0, out) {
        return Ok(());
    }
    quantize_row_q4_0_blocks(simd::isa(), x, out)
}

/// The block-by-block `Q4_0` row path (see [`quantize_row_q8_0_blocks`]): the portable twin of
/// the whole-row AVX2 kernel with [`Isa::Scalar`](simd::Isa), and the path that produces the
/// errors. Lengths are checked by the caller.
pub(crate) fn quantize_row_q4_0_blocks(
    isa: simd::Isa,
    x: &[f32],
    out: &mut [BlockQ4_0],
) -> Result<()> {
    check_finite("quantize_row_q4_0 x", x)?;
    for (i, (xb, yb)) in x.as_chunks::<QK4_0>().0.iter().zip(out).enumerate() {
        // GGML keeps the first element with `amax < |v|`, i.e. the first of largest magnitude.
        let (amax, max) = simd::first_max_abs32(isa, xb);
        let d = max / -8.0;
        let dh = f16::from_f32(d);
        if dh.is_infinite() {
            return Err(scale_overflow(
                "quantize_row_q4_0 x (the block's f16 scale max / -8 overflows)",
                i * QK4_0,
                xb,
                amax,
            ));
        }
        let id = quotient_or_zero(1.0, d);
        simd::q4_0_codes(isa, xb, id, &mut yb.qs);
        yb.d = dh;
    }
    Ok(())
}

/// Quantises `x` into a new vector of `Q4_0` blocks; see [`quantize_row_q4_0`].
///
/// # Errors
/// [`Error::Shape`] if `x.len()` is not a multiple of 32, and the errors of
/// [`quantize_row_q4_0`].
pub fn quantize_q4_0(x: &[f32]) -> Result<Vec<BlockQ4_0>> {
    check_values_len::<BlockQ4_0>("quantize_q4_0 x", x.len())?;
    let mut out = vec![BlockQ4_0::zeroed(); x.len() / QK4_0];
    quantize_row_q4_0(x, &mut out)?;
    Ok(out)
}

/// Dequantises `Q4_0` blocks into `out` (`(code - 8) * d`), exactly as GGML's
/// `dequantize_row_q4_0`. Every product is exact in `f32`.
///
/// # Panics
/// If `out.len() != blocks.len() * 32`.
///
/// # Performance
/// AVX2 with the scale converted by F16C (when detected), 25 instructions per block: about
/// 0.07 ns per value into L1, 0.08 ns (2.6 µs for 32 768 values) when the 128 KiB of output
/// go to L2, where a bare AVX2 fill of the same buffer already takes about 1.3 µs.
pub fn dequantize_row_q4_0(blocks: &[BlockQ4_0], out: &mut [f32]) {
    assert_row_len("dequantize_row_q4_0", out.len(), blocks.len(), QK4_0);
    simd::ggml_rows::dequantize_q4_0(blocks, out.as_chunks_mut::<QK4_0>().0);
}

/// Portable twin of the AVX2 `Q4_0` dequantiser: `y[j] = (code[j] - 8) * d` (exact in `f32`).
pub(crate) fn dequantize_q4_0_scalar(blocks: &[BlockQ4_0], out: &mut [[f32; QK4_0]]) {
    for (b, y) in blocks.iter().zip(out) {
        let d = b.d.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_0 / 2);
        for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b.qs) {
            *l = f32::from(i16::from(q & 0x0f) - 8) * d;
            *h = f32::from(i16::from(q >> 4) - 8) * d;
        }
    }
}

fn check_values_len<B: GgmlBlock>(context: &'static str, len: usize) -> Result<()> {
    if len.is_multiple_of(B::VALUES) {
        Ok(())
    } else {
        Err(Error::Shape(ShapeError::new(
            context,
            format_args!("a multiple of {} values ({} blocks)", B::VALUES, B::NAME),
            format_args!("{len} values"),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngExt};

    /// One block of a kind chosen at random: smooth data at any scale, exact ties in `Q8_0` or
    /// `Q4_0` code space, zero and signed-zero blocks, tiny and subnormal blocks, blocks near
    /// the `f16` overflow limit of either scale, magnitudes repeated with both signs.
    fn block(rng: &mut impl Rng) -> [f32; 32] {
        let mut x = [0.0f32; 32];
        let p2 = 2f32.powi(rng.random_range(-30..30));
        match rng.random_range(0..9) {
            0 => x
                .iter_mut()
                .for_each(|v| *v = rng.random_range(-1.0f32..1.0) * p2),
            1 => {
                // Q8_0 with d = p2 exactly: codes of (k + 1/2) p2 are ties.
                x.iter_mut().for_each(|v| {
                    *v = (f32::from(rng.random_range(-127i16..127)) + 0.5) * p2;
                });
                x[rng.random_range(0..32)] = if rng.random_bool(0.5) { 127.0 } else { -127.0 } * p2;
            }
            2 => {
                // Q4_0 with max = ±8 p2: d = ∓p2, and x * id + 8.5 is an integer for these.
                x.iter_mut().for_each(|v| {
                    *v = (f32::from(rng.random_range(-8i16..8)) + 0.5) * p2;
                });
                x[rng.random_range(0..32)] = if rng.random_bool(0.5) { 8.0 } else { -8.0 } * p2;
            }
            3 => x
                .iter_mut()
                .for_each(|v| *v = if rng.random_bool(0.5) { 0.0 } else { -0.0 }),
            4 => {
                // Subnormals, half the time only the smallest ones (a scale of a few ulps,
                // whose reciprocal overflows: the `id = 0` path).
                let top = if rng.random_bool(0.5) {
                    64
                } else {
                    0x0080_0000u32
                };
                x.iter_mut().for_each(|v| {
                    *v = f32::from_bits(rng.random_range(0..top) | (rng.random::<u32>() << 31));
                });
            }
            5 => {
                // Tiny blocks: scales that underflow to 0, subnormal scales with a finite
                // reciprocal (imprecise d), and the smallest normal ones.
                let s = [1e-37f32, 4e-37, 6e-37, 2e-36, 4e-36][rng.random_range(0..5)];
                x.iter_mut()
                    .for_each(|v| *v = rng.random_range(-1.0f32..1.0) * s);
            }
            6 => {
                // Around the largest magnitudes whose f16 scale is finite (just below and
                // just above, by a few ulps).
                let limit = if rng.random_bool(0.5) {
                    65520.0 * 127.0
                } else {
                    65520.0 * 8.0f32
                };
                x.iter_mut()
                    .for_each(|v| *v = rng.random_range(-1.0f32..1.0) * limit);
                let b = f32::to_bits(limit);
                let top = f32::from_bits(b.wrapping_add_signed(rng.random_range(-8..3)));
                x[rng.random_range(0..32)] = if rng.random_bool(0.5) { top } else { -top };
            }
            7 => {
                // +a and -a as the largest magnitudes, in random order ("first max wins").
                let a = rng.random_range(0.5f32..1.0) * p2;
                x.iter_mut().for_each(|v| *v = rng.random_range(-a..a));
                for _ in 0..rng.random_range(2..5) {
                    x[rng.random_range(0..32)] = if rng.random_bool(0.5) { a } else { -a };
                }
            }
            _ => x
                .iter_mut()
                .for_each(|v| *v = f32::from(rng.random_range(-300i16..300)) / 2.0),
        }
        x
    }

    fn row(rng: &mut impl Rng) -> Vec<[f32; 32]> {
        let n = rng.random_range(0..40);
        let mut x: Vec<[f32; 32]> = (0..n).map(|_| block(rng)).collect();
        if n > 0 && rng.random_range(0..6) == 0 {
            // NaN or infinity somewhere, sometimes twice.
            for _ in 0..rng.random_range(1..3) {
                let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.random_range(0..3)];
                x[rng.random_range(0..n)][rng.random_range(0..32)] = bad;
            }
        }
        x
    }

    /// The row kernels either finish bit-identical to the portable block path, or defer exactly
    /// when that path fails; the public function then returns the very same error.
    fn check_row(x: &[[f32; 32]]) {
        let flat = x.as_flattened();
        let n = x.len();
        let mut a8 = vec![BlockQ8_0::default(); n];
        let mut b8 = vec![BlockQ8_0::default(); n];
        let fast = simd::ggml_rows::quantize_row_q8_0(x, &mut a8);
        let want = quantize_row_q8_0_blocks(simd::Isa::Scalar, flat, &mut b8);
        match &want {
            Ok(()) => {
                assert_eq!(
                    fast,
                    simd::ggml_rows::rows_available(),
                    "q8_0 deferred on a valid row {x:?}"
                );
                if fast {
                    assert_eq!(a8, b8, "q8_0 {x:?}");
                }
            }
            Err(e) => {
                assert!(!fast, "q8_0 finished on a bad row: {e}");
                let got = quantize_row_q8_0(flat, &mut a8).unwrap_err();
                assert_eq!(format!("{got:?}"), format!("{e:?}"));
            }
        }
        let mut a4 = vec![BlockQ4_0::default(); n];
        let mut b4 = vec![BlockQ4_0::default(); n];
        let fast = simd::ggml_rows::quantize_row_q4_0(x, &mut a4);
        let want = quantize_row_q4_0_blocks(simd::Isa::Scalar, flat, &mut b4);
        match &want {
            Ok(()) => {
                assert_eq!(
                    fast,
                    simd::ggml_rows::rows_available(),
                    "q4_0 deferred on a valid row {x:?}"
                );
                if fast {
                    // Compare bits: the scale may be -0.0.
                    assert_eq!(
                        bytemuck::cast_slice::<_, u8>(&a4),
                        bytemuck::cast_slice::<_, u8>(&b4),
                        "q4_0 {x:?}"
                    );
                }
            }
            Err(e) => {
                assert!(!fast, "q4_0 finished on a bad row: {e}");
                let got = quantize_row_q4_0(flat, &mut a4).unwrap_err();
                assert_eq!(format!("{got:?}"), format!("{e:?}"));
            }
        }
    }

    /// The bound behind the AVX2 row kernels' missing clamps (`simd::ggml_rows`): `amax * id`
    /// stays below 127.5 (`Q8_0`) and 8.5 (`Q4_0`). Checked off-line on every `f32`; here on
    /// every 4099th bit pattern and within 64 ulps of every power of two and of every
    /// `127 * 2^k` and `8 * 2^k`, where the scale's rounding is extreme.
    #[test]
    fn scaled_maxima_stay_inside_the_code_range() {
        let check = |amax: f32| {
            let d = amax / 127.0;
            if !f16::from_f32(d).is_infinite() {
                assert!(
                    amax * quotient_or_zero(127.0, amax) <= 127.000_02,
                    "q8_0 amax={amax:e}"
                );
            }
            let d = amax / -8.0;
            if !f16::from_f32(d).is_infinite() {
                assert!(
                    amax * quotient_or_zero(1.0, d) >= -8.000_002,
                    "q4_0 amax={amax:e}"
                );
            }
        };
        for bits in (0..0x7f80_0000u32).step_by(4099) {
            check(f32::from_bits(bits));
        }
        for e in -149..128 {
            for m in [1.0f32, 127.0, 8.0] {
                let c = (2f64.powi(e) * f64::from(m)) as f32;
                if c.is_finite() && c > 0.0 {
                    let b = c.to_bits();
                    for bits in b.saturating_sub(64)..=b.saturating_add(64).min(0x7f7f_ffff) {
                        check(f32::from_bits(bits));
                    }
                }
            }
        }
    }

    #[test]
    fn row_kernels_are_bit_identical_to_the_block_path() {
        squish_testkit::prop::check("simd_ggml_rows_twins", 300, |rng| check_row(&row(rng)));
    }

    #[test]
    fn row_kernels_defer_to_the_first_error_of_the_row() {
        let mut x = vec![[1.0f32; 32]; 20];
        check_row(&x);
        // An overflowing scale in block 2 and a NaN in block 17: the NaN is reported (the
        // whole row is checked for finiteness first), however the chunks fall.
        x[2][5] = 1e7;
        check_row(&x);
        x[17][3] = f32::NAN;
        check_row(&x);
        x[17][3] = 1.0;
        x[19][31] = f32::INFINITY;
        check_row(&x);
        x[2][5] = 1.0;
        x[19][31] = 1.0;
        x[12][0] = 6e5; // Q4_0 overflows, Q8_0 does not
        check_row(&x);
    }

    /// The kernels' conversion (`cvtps2dq`, the current rounding mode: nearest, ties to even)
    /// against `f32::round_ties_even` on every `f32` within 64 ulps of each multiple of one
    /// half up to 127 (both signs), through the kernel (`d = 1`).
    #[test]
    fn q8_0_rounds_to_nearest_even_near_every_half_integer() {
        let mut values = Vec::new();
        for k in 0..=254u16 {
            let h = f32::from(k) * 0.5;
            let b = h.to_bits();
            for bits in b.saturating_sub(64)..=b + 64 {
                let v = f32::from_bits(bits);
                if v <= 127.0 {
                    values.extend([v, -v]);
                }
            }
        }
        let mut x: Vec<[f32; 32]> = Vec::new();
        for chunk in values.chunks(31) {
            let mut b = [0.0f32; 32];
            b[0] = 127.0; // d = 1, id = 1
            b[1..=chunk.len()].copy_from_slice(chunk);
            x.push(b);
        }
        check_row(&x);
        let mut q = vec![BlockQ8_0::default(); x.len()];
        quantize_row_q8_0(x.as_flattened(), &mut q).unwrap();
        for (b, xb) in q.iter().zip(&x) {
            assert_eq!(b.d.to_f32(), 1.0);
            for (&c, &v) in b.qs.iter().zip(xb) {
                assert_eq!(f32::from(c), v.round_ties_even(), "{v:e}");
            }
        }
    }

    #[test]
    fn max_abs_is_the_largest_magnitude() {
        let mut x = [0.0f32; 32];
        assert_eq!(max_abs(&x), 0.0);
        x[31] = -3.0;
        x[5] = 2.0;
        assert_eq!(max_abs(&x), 3.0);
    }

    #[test]
    fn quotient_or_zero_handles_tiny_scales() {
        assert_eq!(quotient_or_zero(1.0, 0.0), 0.0);
        assert_eq!(quotient_or_zero(1.0, -0.0), 0.0);
        assert_eq!(quotient_or_zero(1.0, 2.0), 0.5);
        assert_eq!(quotient_or_zero(1.0, f32::from_bits(1)), 0.0);
        assert_eq!(quotient_or_zero(127.0, 0.0), 0.0);
        assert_eq!(quotient_or_zero(127.0, 254.0), 0.5);
        assert_eq!(quotient_or_zero(127.0, 3e-37), 0.0);
        assert!(quotient_or_zero(127.0, 4e-37) > 3e38);
    }

    #[test]
    fn tiny_blocks_quantise_as_zero() {
        let x = [1e-40f32; 32];
        let mut q8 = [BlockQ8_0::zeroed()];
        quantize_row_q8_0(&x, &mut q8).unwrap();
        assert_eq!(q8[0], BlockQ8_0::zeroed());
        let mut q4 = [BlockQ4_0::zeroed()];
        quantize_row_q4_0(&x, &mut q4).unwrap();
        assert_eq!(q4[0].qs, [0x88; 16]);
        assert_eq!(q4[0].d.to_f32(), 0.0);
    }

    #[test]
    fn error_messages() {
        let mut x = [0.0f32; 32];
        x[3] = 1e7;
        let e = quantize_q4_0(&x).unwrap_err();
        insta::assert_snapshot!(e, @"value out of range in quantize_row_q4_0 x (the block's f16 scale max / -8 overflows): element 3 is 10000000");
        let e = quantize_q8_0(&x[..31]).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in quantize_q8_0 x: expected a multiple of 32 values (Q8_0 blocks), got 31 values");
        let e = blocks_from_bytes::<BlockQ4_0>(&[0; 19]).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in blocks_from_bytes bytes: expected a multiple of 18 bytes (Q4_0 blocks), got 19 bytes");
    }
}
