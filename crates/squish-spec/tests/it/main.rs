//! Integration tests of `squish_spec`, one module per component, through the public API only.

mod budget_spec_decoder;
mod quant_spec_decoder;
mod spec_oracle;
mod tree_verifier;
