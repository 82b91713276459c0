#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod cost_estimator;
mod error;
mod ids;
pub mod model_pool;

pub use cost_estimator::{RequestCostEstimator, RequestCostEstimatorConfig};
pub use error::{Error, Result};
pub use ids::{ModelId, RequestId, TenantId};
pub use model_pool::{ModelPool, ModelPoolConfig};

pub mod fault_handler;
pub mod token_budget_gate;

pub use fault_handler::{
    Action, ActiveRequest, Decision, DegradationLevel, FaultHandler, FaultHandlerConfig,
    FaultStats, Watermarks,
};
pub use token_budget_gate::{BudgetStatus, Grant, TokenBudgetGate, TokenBudgetGateConfig};
