//! Integration tests of `squish_spec` (public API only), one module per component.

mod quant_spec_decoder;
mod spec_oracle;
mod tree_verifier;
