#![doc = include_str!("../README.md")]

pub mod clock;
pub mod data;
pub mod prop;
pub mod tol;

pub use rand::rngs::StdRng;

/// A seeded [`StdRng`]: the one way tests make randomness.
pub fn rng(seed: u64) -> StdRng {
    use rand::SeedableRng;
    StdRng::seed_from_u64(seed)
}
