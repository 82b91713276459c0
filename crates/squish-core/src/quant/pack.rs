//! Bit widths and bit packing of grouped-quantisation codes.

use crate::ConfigError;

/// Bits per code of grouped quantisation.
///
/// # Example
/// ```
/// use squish_core::quant::QuantBits;
/// assert_eq!(QuantBits::B2.levels(), 4);
/// assert_eq!(QuantBits::B4.packed_len(5), 3); // ceil(5 * 4 / 8)
/// assert_eq!(QuantBits::from_bits(8)?, QuantBits::B8);
/// # Ok::<(), squish_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantBits {
    /// 2 bits: codes `0..=3`, four per byte.
    B2,
    /// 4 bits: codes `0..=15`, two per byte.
    B4,
    /// 8 bits: codes `0..=255`, one per byte.
    B8,
}

impl QuantBits {
    /// The bit width from its number of bits.
    ///
    /// # Errors
    /// A [`ConfigError`] on `GroupedQuantConfig.bits` unless `bits` is 2, 4 or 8.
    pub fn from_bits(bits: u32) -> Result<Self, ConfigError> {
        match bits {
            2 => Ok(Self::B2),
            4 => Ok(Self::B4),
            8 => Ok(Self::B8),
            _ => Err(ConfigError::new(
                "GroupedQuantConfig",
                "bits",
                "must be one of 2, 4, 8",
                bits,
            )),
        }
    }

    /// Number of bits per code (2, 4 or 8).
    pub const fn bits(self) -> u32 {
        match self {
            Self::B2 => 2,
            Self::B4 => 4,
            Self::B8 => 8,
        }
    }

    /// Number of quantisation levels, `2^bits` (4, 16 or 256).
    pub const fn levels(self) -> u32 {
        1 << self.bits()
    }

    /// Largest code, `2^bits - 1` (3, 15 or 255).
    pub const fn max_code(self) -> u8 {
        (self.levels() - 1) as u8
    }

    /// Codes per byte, `8 / bits` (4, 2 or 1).
    pub const fn codes_per_byte(self) -> usize {
        8 / self.bits() as usize
    }

    /// Bytes taken by `n` packed codes: `ceil(n * bits / 8)`.
    pub const fn packed_len(self, n: usize) -> usize {
        n.div_ceil(self.codes_per_byte())
    }
}

/// Packs codes (one per byte) into `out`, [`QuantBits::codes_per_byte`] per byte, earlier
/// elements in lower bits: code `i` lands in byte `i / k` at bit `bits * (i % k)`, with
/// `k = 8 / bits`. Unused high bits of the last byte are set to zero. Only the low `bits` bits
/// of each code are stored; higher bits are ignored.
///
/// # Panics
/// If `out.len() != bits.packed_len(codes.len())`.
///
/// # Example
/// ```
/// use squish_core::quant::{QuantBits, pack_codes};
/// let mut out = [0u8; 2];
/// pack_codes(&[1, 2, 3, 0, 2], QuantBits::B2, &mut out);
/// assert_eq!(out, [0b00_11_10_01, 0b10]);
/// ```
pub fn pack_codes(codes: &[u8], bits: QuantBits, out: &mut [u8]) {
    assert_eq!(
        out.len(),
        bits.packed_len(codes.len()),
        "pack_codes: out must hold {} codes of {} bits",
        codes.len(),
        bits.bits()
    );
    match bits {
        QuantBits::B8 => out.copy_from_slice(codes),
        QuantBits::B4 => {
            let (pairs, rest) = codes.as_chunks::<2>();
            let (full, tail) = out.split_at_mut(pairs.len());
            for (o, p) in full.iter_mut().zip(pairs) {
                *o = (p[0] & 0x0f) | (p[1] << 4);
            }
            if let ([last], [o]) = (rest, tail) {
                *o = last & 0x0f;
            }
        }
        QuantBits::B2 => {
            let (quads, rest) = codes.as_chunks::<4>();
            let (full, tail) = out.split_at_mut(quads.len());
            for (o, q) in full.iter_mut().zip(quads) {
                *o = (q[0] & 3) | ((q[1] & 3) << 2) | ((q[2] & 3) << 4) | (q[3] << 6);
            }
            if let [o] = tail {
                *o = rest
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (i, &c)| acc | ((c & 3) << (2 * i)));
            }
        }
    }
}

/// Unpacks `out.len()` codes from `packed` (the layout of [`pack_codes`]), one per byte.
///
/// # Panics
/// If `packed.len() != bits.packed_len(out.len())`.
///
/// # Example
/// ```
/// use squish_core::quant::{QuantBits, unpack_codes};
/// let mut codes = [0u8; 3];
/// unpack_codes(&[0x21, 0x03], QuantBits::B4, &mut codes);
/// assert_eq!(codes, [1, 2, 3]);
/// ```
pub fn unpack_codes(packed: &[u8], bits: QuantBits, out: &mut [u8]) {
    assert_eq!(
        packed.len(),
        bits.packed_len(out.len()),
        "unpack_codes: packed must hold {} codes of {} bits",
        out.len(),
        bits.bits()
    );
    match bits {
        QuantBits::B8 => out.copy_from_slice(packed),
        QuantBits::B4 => {
            let (pairs, rest) = out.as_chunks_mut::<2>();
            let n = pairs.len();
            for (p, &b) in pairs.iter_mut().zip(packed) {
                *p = [b & 0x0f, b >> 4];
            }
            if let ([last], Some(&b)) = (rest, packed.get(n)) {
                *last = b & 0x0f;
            }
        }
        QuantBits::B2 => {
            let (quads, rest) = out.as_chunks_mut::<4>();
            let n = quads.len();
            for (q, &b) in quads.iter_mut().zip(packed) {
                *q = [b & 3, (b >> 2) & 3, (b >> 4) & 3, b >> 6];
            }
            if let Some(&b) = packed.get(n) {
                for (i, c) in rest.iter_mut().enumerate() {
                    *c = (b >> (2 * i)) & 3;
                }
            }
        }
    }
}

/// Code `i` of a packed buffer.
///
/// # Panics
/// If `i` is beyond `packed`.
#[inline]
pub(super) fn packed_code(packed: &[u8], bits: QuantBits, i: usize) -> u8 {
    let k = bits.codes_per_byte();
    let b = packed[i / k];
    let shift = bits.bits() as usize * (i % k);
    (b >> shift) & bits.max_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_bits_rejects_other_widths() {
        let e = QuantBits::from_bits(3).unwrap_err();
        insta::assert_snapshot!(e, @"invalid GroupedQuantConfig.bits: must be one of 2, 4, 8, got 3");
        for b in [QuantBits::B2, QuantBits::B4, QuantBits::B8] {
            assert_eq!(QuantBits::from_bits(b.bits()), Ok(b));
        }
    }

    #[test]
    fn packed_code_reads_the_layout() {
        let codes = [3u8, 0, 1, 2, 2, 1, 3];
        for bits in [QuantBits::B2, QuantBits::B4, QuantBits::B8] {
            let mut p = vec![0u8; bits.packed_len(codes.len())];
            pack_codes(&codes, bits, &mut p);
            for (i, &c) in codes.iter().enumerate() {
                assert_eq!(packed_code(&p, bits, i), c);
            }
        }
    }

    #[test]
    fn high_bits_are_ignored() {
        let mut p = [0u8; 1];
        pack_codes(&[0xff, 0xf0], QuantBits::B4, &mut p);
        assert_eq!(p, [0x0f]);
    }
}
