#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod dedupe_attn;
mod error;
pub mod sparse_attn_index;

pub use dedupe_attn::{
    AttentionDeduplicator, AttentionDeduplicatorConfig, AttnContext, DedupStats, Lookup, ReuseRule,
    SearchPolicy, output_error_bound,
};
pub use error::{Error, Result};
mod retention_kernel;
pub use retention_kernel::{RetentionConfig, RetentionDecays, RetentionKernel, RetentionState};
mod dynamic_ntk_scaler;
pub use dynamic_ntk_scaler::{
    DynamicNtkConfig, DynamicNtkScaler, RopeLayout, RopeParams, RopeScaling, rope_rotate_in_place,
};
pub use sparse_attn_index::{SelectMode, Selection, SparseAttnIndex, SparseAttnIndexConfig};
