//! Integration tests of `squish_core`, through its public API only.

mod convert;
mod kmeans;
mod ops;
mod quant;
mod sampling;
