//! Integration tests of `squish_serving`, one module per component, through the public API.

mod cost_estimator;
