#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;

pub mod aligned;
pub mod convert;
pub mod kmeans;
pub mod ops;
pub mod quant;
pub mod sampling;
mod simd;

pub use error::{ConfigError, Error, Result, ShapeError, check_finite};
