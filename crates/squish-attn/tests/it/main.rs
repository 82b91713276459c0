//! Integration tests of `squish_attn`, through its public API only.

mod dynamic_ntk_scaler;
mod flash_prefill;
mod retention_kernel;
