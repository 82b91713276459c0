//! Quantisation formats: GGML's `Q8_0` / `Q4_0` blocks and KIVI-style grouped asymmetric
//! quantisation for KV caches.
//!
//! # GGML blocks (`Q8_0`, `Q4_0`)
//!
//! Both formats cut a row into blocks of 32 consecutive `f32` values and store one `f16` scale
//! `d` per block followed by the 32 codes. The layouts are byte-compatible with GGML's
//! `block_q8_0` / `block_q4_0` (and therefore with GGUF tensors of those types) on
//! little-endian targets; the scale is stored in native byte order.
//!
//! ```text
//! BlockQ8_0 (34 bytes, align 2)          value[j] = qs[j] * d
//! offset: 0    2    3    4          33
//!         +----+----+----+-- ... --+----+
//!         | d  |qs0 |qs1 |         |qs31|    d: f16 = amax / 127,  qs: i8 in [-127, 127]
//!         +----+----+----+-- ... --+----+
//!
//! BlockQ4_0 (18 bytes, align 2)          value[j] = (code[j] - 8) * d
//! offset: 0    2         3               17
//!         +----+---------+-- ... --+---------+
//!         | d  | qs[0]   |         | qs[15]  |   d: f16 = max / -8 (max: the signed value
//!         +----+---------+-- ... --+---------+      of largest magnitude), code in [0, 15]
//!   qs[j] = code[j] | code[j + 16] << 4      (low nibble: element j, high nibble: j + 16)
//! ```
//!
//! Quantisation reproduces GGML bit for bit: `Q8_0` as ggml-cpu's x86 `quantize_row_q8_0`
//! (the AVX/AVX2 path llama.cpp runs for `Q8_0` KV caches and activations: `id = 127 / amax`,
//! ties to even), `Q4_0` as `quantize_row_q4_0_ref` in `ggml-quants.c`; see
//! [`quantize_row_q8_0`] and [`quantize_row_q4_0`] for the exact arithmetic. Dequantisation (`code * d` in `f32`) is exact.
//! Blocks are `#[repr(C)]` [`bytemuck::Pod`] structs: [`blocks_as_bytes`] views them as bytes
//! without copying, [`try_cast_blocks`] views aligned bytes as blocks, and [`blocks_from_bytes`]
//! copies from bytes of any alignment.
//!
//! # Grouped asymmetric quantisation (KIVI)
//!
//! [`quantize_grouped`] quantises a row-major `[rows, cols]` matrix (rows = tokens,
//! cols = channels) with 2, 4 or 8 bits per value and one `f32` scale and zero-point per group
//! of [`GroupedQuantConfig::group_size`] values:
//!
//! ```text
//! scale = (max - min) * (1 / (2^bits - 1))      zero = min
//! code  = round_ties_even((x - min) * (1 / scale))      x' = zero + code * scale
//! ```
//!
//! (the reciprocal rounded once per group, as GGML's quantisers compute codes; every element
//! reconstructs within `scale * (1/2 + 2^-14)`, up to the rounding of the decode).
//!
//! A group runs along one axis ([`GroupAxis`]): KIVI quantises **keys per channel**
//! ([`GroupAxis::AlongColumn`]: `group_size` consecutive tokens of one channel) and **values
//! per token** ([`GroupAxis::AlongRow`]: `group_size` consecutive channels of one token).
//!
//! Codes are stored in row-major element order, packed little-end first:
//!
//! ```text
//! 8 bits: byte i = code[i]
//! 4 bits: byte i = code[2i] | code[2i+1] << 4                  (low nibble = earlier element)
//! 2 bits: byte i = code[4i] | code[4i+1] << 2 | code[4i+2] << 4 | code[4i+3] << 6
//! ```
//!
//! so `n` codes take exactly `ceil(n * bits / 8)` bytes (unused high bits of the last byte are
//! zero). [`pack_codes`] / [`unpack_codes`] expose the packing for caches that append codes
//! incrementally.

mod ggml;
mod grouped;
mod pack;

pub use ggml::{
    BlockQ4_0, BlockQ8_0, GgmlBlock, QK4_0, QK8_0, blocks_as_bytes, blocks_from_bytes,
    dequantize_row_q4_0, dequantize_row_q8_0, quantize_q4_0, quantize_q8_0, quantize_row_q4_0,
    quantize_row_q8_0, try_cast_blocks,
};
#[cfg(test)]
pub(crate) use grouped::encode as encode_code;
pub(crate) use grouped::scale_and_reciprocal;
pub use grouped::{
    GroupAxis, GroupedQuantConfig, GroupedQuantized, quantize_grouped, quantize_grouped_into,
};
pub use grouped::{dequantize_grouped_slices, quantize_grouped_slices};
pub use pack::{QuantBits, pack_codes, unpack_codes};

pub(crate) use ggml::{
    dequantize_q4_0_scalar, dequantize_q8_0_scalar, first_max_abs, max_abs, q4_0_codes_scalar,
    q8_0_codes_scalar,
};

/// `1.5 * 2^23`: adding it to an `f32` of magnitude below `2^22` lands in the binade whose
/// spacing is exactly 1, which rounds to an integer (ties to even) and makes the integer
/// readable from the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// Nearest integer to `v`, ties to even, for `|v| < 2^22` (never fused or reassociated in
/// Rust, so the magic-number trick is exact).
#[inline(always)]
fn round_ties_even_small(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

/// The nearest integer to `v`, ties to even, as `i32`, for finite `|v| < 2^22` (what x86's
/// `cvtps2dq` gives in the default rounding mode); exact for an integral `v`.
///
/// A bit-level conversion instead of `f32::round_ties_even` and `as`: those are a libm call
/// (without SSE4.1) and a saturating scalar `cvttss2si` with NaN and range checks per element,
/// and block vectorisation on x86-64's baseline, while this is one add and one integer
/// subtract per lane.
#[inline(always)]
fn nearest_i32(v: f32) -> i32 {
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// `floor(v)` for finite `0 <= v < 2^22` (C's truncating cast of a non-negative float).
#[inline(always)]
fn floor_non_negative(v: f32) -> i32 {
    let n = round_ties_even_small(v);
    let n = if n > v { n - 1.0 } else { n };
    nearest_i32(n)
}

#[cfg(test)]
mod tests {
    use super::{floor_non_negative, nearest_i32};

    #[test]
    fn nearest_i32_matches_std_round_ties_even() {
        let specials = [
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.499_999_97,
            -0.499_999_97,
            126.5,
            -126.5,
            127.0,
            -127.0,
            1e-30,
            f32::from_bits(1),
        ];
        for v in specials {
            assert_eq!(nearest_i32(v), v.round_ties_even() as i32, "{v}");
        }
        // Every f32 in [-130, 130] with a coarse bit stride, plus its neighbours.
        let mut bits = 0u32;
        while bits < 0x4302_0000 {
            for v in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert_eq!(nearest_i32(v), v.round_ties_even() as i32, "{v}");
            }
            bits += 997;
        }
    }

    #[test]
    fn floor_non_negative_matches_std_floor() {
        for v in [
            0.0f32,
            0.5,
            0.499_999_97,
            0.999_999_94,
            1.0,
            7.5,
            14.999_999,
            15.0,
            16.5,
        ] {
            assert_eq!(floor_non_negative(v), v.floor() as i32, "{v}");
        }
        let mut bits = 0u32;
        while bits < 0x4380_0000 {
            let v = f32::from_bits(bits);
            assert_eq!(floor_non_negative(v), v.floor() as i32, "{v}");
            bits += 991;
        }
    }
}
