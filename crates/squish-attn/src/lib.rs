#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;

pub mod dedupe_attn;
pub mod dynamic_ntk_scaler;
pub mod flash_prefill;
pub mod retention_kernel;
pub mod sparse_attn_index;

pub use dedupe_attn::{
    AttentionDeduplicator, AttentionDeduplicatorConfig, AttnContext, DedupStats, Lookup, ReuseRule,
    SearchPolicy, output_error_bound,
};
pub use dynamic_ntk_scaler::{
    DynamicNtkConfig, DynamicNtkScaler, RopeLayout, RopeParams, RopeScaling, rope_rotate_in_place,
};
pub use error::{Error, Result};
pub use flash_prefill::{
    AttnShape, FlashOutput, FlashPrefillConfig, FlashPrefillKernel, merge_attention_into,
};
pub use retention_kernel::{RetentionConfig, RetentionDecays, RetentionKernel, RetentionState};
pub use sparse_attn_index::{SelectMode, Selection, SparseAttnIndex, SparseAttnIndexConfig};
