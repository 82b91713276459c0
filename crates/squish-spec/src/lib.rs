#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod budget_spec_decoder;
mod error;

pub use budget_spec_decoder::{
    AcceptanceAwarePolicy, BudgetSpecDecoder, BudgetSpecDecoderConfig, BudgetSpecStats,
    DraftLenPolicy,
};
pub use error::{Error, Result};
