#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;

pub mod adaptive_quantizer;
pub mod kv_codec;
pub mod kv_compress;
pub mod mixed_precision_kv_cache;

pub use adaptive_quantizer::{
    AdaptiveQuantizer, AdaptiveQuantizerConfig, Precision, QuantizedTensor, TensorData,
};
pub use error::{Error, Result};
pub use kv_codec::{CodebookSharing, KvCodec, KvCodecConfig, PqCodes, ScoreTable};
pub use kv_compress::{CompressedKv, KvCompressor, KvCompressorConfig};
pub use mixed_precision_kv_cache::{
    HeadStats, KvTier, MixedPrecisionKvCache, MixedPrecisionKvConfig, PlanSummary,
    PrecisionPlanner, PrecisionPlannerConfig,
};
