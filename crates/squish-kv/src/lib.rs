#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;

pub use error::{Error, Result};

pub mod kv_codec;
pub mod kv_compress;

pub use kv_codec::{CodebookSharing, KvCodec, KvCodecConfig, PqCodes, ScoreTable};
pub use kv_compress::{CompressedKv, KvCompressor, KvCompressorConfig};
