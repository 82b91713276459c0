#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;

pub mod adaptive_quantizer;
pub mod mixed_precision_kv_cache;

pub use error::{Error, Result};
