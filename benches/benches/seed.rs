//! Criterion benchmarks: one group per seed-table row (see benches/seed.tsv).
fn main() {}
