#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;
pub mod flash_prefill;

pub use error::{Error, Result};
pub use flash_prefill::{
    AttnShape, FlashOutput, FlashPrefillConfig, FlashPrefillKernel, merge_attention_into,
};
