//! Integration tests of `squish_attn`, through its public API only.

mod flash_prefill;
