#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod cost_estimator;
mod error;
pub mod model_pool;

pub use cost_estimator::{RequestCostEstimator, RequestCostEstimatorConfig};
pub use error::{Error, Result};
pub use model_pool::{ModelKey, ModelPool, ModelPoolConfig};
