#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod budget_spec_decoder;
mod error;
pub mod quant_spec_decoder;
pub mod tree_verifier;
pub mod verify;

pub use budget_spec_decoder::{
    AcceptanceAwarePolicy, BudgetSpecDecoder, BudgetSpecDecoderConfig, BudgetSpecStats,
    DraftLenPolicy,
};
pub use error::{Error, Result};
pub use quant_spec_decoder::{
    DraftSource, HierarchicalKvCache, HierarchicalKvConfig, KvPrecision, QuantSpecDecoder,
    QuantSpecDecoderConfig, QuantizedDraft,
};
pub use tree_verifier::{DraftTree, TreeVerifier, TreeVerifierConfig};
pub use verify::{
    DepthStats, GREEDY_DRAFT, NextKind, PROB_SUM_TOLERANCE, Sampling, Scores, VerifyOutput,
    VerifyStats, Warper,
};
