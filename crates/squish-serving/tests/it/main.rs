//! Integration tests of `squish_serving`, one module per component, through the public API.

mod cost_estimator;
mod fault_handler;
mod token_budget_gate;
