#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;

pub use error::{Error, Result};
mod retention_kernel;
pub use retention_kernel::{RetentionConfig, RetentionDecays, RetentionKernel, RetentionState};
mod dynamic_ntk_scaler;
pub use dynamic_ntk_scaler::{
    DynamicNtkConfig, DynamicNtkScaler, RopeLayout, RopeParams, RopeScaling, rope_rotate_in_place,
};
