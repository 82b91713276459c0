//! A reader for NumPy `.npy` files (format versions 1.0–3.0), enough for the real KV tensors
//! in `shared/data/smollm2-kv/` (little-endian `<f4`, `<i4`, `<i8`, C order).
//!
//! The format (numpy's `numpy/lib/format.py`): the magic `\x93NUMPY`, a major and minor version
//! byte, the header length (u16 little-endian for 1.0, u32 for 2.0 and 3.0), an ASCII (3.0:
//! UTF-8) Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 36, 64), }`
//! padded with spaces and a newline, then the raw data.

use std::fmt;
use std::path::Path;

/// An array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray<T> {
    /// The shape, outermost dimension first.
    pub shape: Vec<usize>,
    /// The elements in C (row-major) order.
    pub data: Vec<T>,
}

/// Why a `.npy` file could not be read.
#[derive(Debug)]
pub enum NpyError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The bytes are not a `.npy` file this reader supports.
    Format(String),
}

impl fmt::Display for NpyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "npy: {e}"),
            Self::Format(m) => write!(f, "npy: {m}"),
        }
    }
}

impl std::error::Error for NpyError {}

/// Decodes one element from its little-endian bytes.
pub type Decoder<T> = fn(&[u8]) -> T;

/// An element type this reader can decode.
pub trait NpyElement: Sized + Copy {
    /// Decodes one element from the `descr` type string and its little-endian bytes, or `None`
    /// if the type cannot be read as `Self` without loss.
    fn decode(descr: &str) -> Option<(usize, Decoder<Self>)>;
}

impl NpyElement for f32 {
    fn decode(descr: &str) -> Option<(usize, Decoder<Self>)> {
        (descr == "<f4").then_some((4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
    }
}

impl NpyElement for i64 {
    fn decode(descr: &str) -> Option<(usize, Decoder<Self>)> {
        match descr {
            "<i4" => Some((4, |b| {
                i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            })),
            "<i8" => Some((8, |b| {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
            })),
            _ => None,
        }
    }
}

/// Reads a `.npy` file.
///
/// # Errors
/// [`NpyError::Io`] if the file cannot be read, [`NpyError::Format`] if it is not a C-order
/// little-endian array of a type `T` can hold.
pub fn read<T: NpyElement>(path: impl AsRef<Path>) -> Result<NpyArray<T>, NpyError> {
    let bytes = std::fs::read(path.as_ref()).map_err(NpyError::Io)?;
    parse(&bytes)
}

/// Parses the bytes of a `.npy` file.
///
/// # Errors
/// [`NpyError::Format`] if the bytes are not a C-order little-endian array of a type `T` can
/// hold, or the data length does not match the shape.
pub fn parse<T: NpyElement>(bytes: &[u8]) -> Result<NpyArray<T>, NpyError> {
    let bad = |m: &str| NpyError::Format(m.to_string());
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or_else(|| bad("missing magic"))?;
    let (&major, rest) = rest.split_first().ok_or_else(|| bad("truncated version"))?;
    let (_minor, rest) = rest.split_first().ok_or_else(|| bad("truncated version"))?;
    let (header_len, rest) = match major {
        1 if rest.len() >= 2 => (
            usize::from(u16::from_le_bytes([rest[0], rest[1]])),
            &rest[2..],
        ),
        2 | 3 if rest.len() >= 4 => {
            let n = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            (
                usize::try_from(n).map_err(|_| bad("header too long"))?,
                &rest[4..],
            )
        }
        1..=3 => return Err(bad("truncated header length")),
        v => return Err(NpyError::Format(format!("unsupported version {v}"))),
    };
    if rest.len() < header_len {
        return Err(bad("truncated header"));
    }
    let (header, data) = rest.split_at(header_len);
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad("no descr"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| bad("no fortran_order"))?;
    if fortran != "False" {
        return Err(bad("fortran_order arrays are not supported"));
    }
    let shape_txt = dict_value(header, "shape").ok_or_else(|| bad("no shape"))?;
    let shape = shape_txt
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| NpyError::Format(format!("bad shape {shape_txt}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (size, decode) = T::decode(descr)
        .ok_or_else(|| NpyError::Format(format!("unsupported descr {descr:?} for this type")))?;
    let n: usize = shape.iter().product();
    if data.len() != n * size {
        return Err(NpyError::Format(format!(
            "data is {} bytes, shape {shape:?} of {descr} needs {}",
            data.len(),
            n * size
        )));
    }
    Ok(NpyArray {
        shape,
        data: data.chunks_exact(size).map(decode).collect(),
    })
}

/// The text of `key`'s value in a flat Python dict literal (tuples allowed as values).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let after = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if after.starts_with('(') {
        after.find(')')? + 1
    } else {
        after.find([',', '}'])?
    };
    Some(after[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a version-1.0 file exactly as the format specification lays it out.
    fn npy_v1(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // Total of magic (6) + version (2) + length (2) + header is a multiple of 64, ending in '\n'.
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn reads_f32_c_order() {
        let vals = [1.0f32, -2.5, 3.25, 0.0, f32::MAX, f32::MIN_POSITIVE];
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let a: NpyArray<f32> = parse(&npy_v1("<f4", "(2, 3)", &data)).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, vals);
    }

    #[test]
    fn reads_1d_ints() {
        let data: Vec<u8> = [7i32, -1, 42]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let a: NpyArray<i64> = parse(&npy_v1("<i4", "(3,)", &data)).unwrap();
        assert_eq!(a.shape, vec![3]);
        assert_eq!(a.data, vec![7, -1, 42]);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(parse::<f32>(b"nope"), Err(NpyError::Format(_))));
        let short = npy_v1("<f4", "(2,)", &[0u8; 4]);
        assert!(
            parse::<f32>(&short)
                .unwrap_err()
                .to_string()
                .contains("needs 8")
        );
        let wrong_type = npy_v1("<f8", "(1,)", &[0u8; 8]);
        assert!(parse::<f32>(&wrong_type).is_err());
        let fortran = npy_v1("<f4", "(1,)", &[0u8; 4]);
        let fortran = String::from_utf8_lossy(&fortran).replace("False", "True ");
        assert!(parse::<f32>(fortran.as_bytes()).is_err());
    }
}
