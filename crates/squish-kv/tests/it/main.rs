//! Integration tests of `squish_kv`, through its public API only.

mod kv_codec;
