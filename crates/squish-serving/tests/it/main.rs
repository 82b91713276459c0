//! Integration tests of `squish_serving`, through its public API only.

mod fault_handler;
mod token_budget_gate;
