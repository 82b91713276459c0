#![doc = include_str!("../README.md")]

pub mod clock;
pub mod data;
pub mod npy;
pub mod prop;
pub mod reference;
pub mod tol;

pub use rand::rngs::StdRng;

/// A seeded [`StdRng`]: the one way tests make randomness.
pub fn rng(seed: u64) -> StdRng {
    use rand::SeedableRng;
    StdRng::seed_from_u64(seed)
}

/// The project's `shared/` folder (real data sets and reference tables), which lies beside the
/// repository checkout: `$SQUISH_SHARED_DIR` if set, else `<workspace>/../shared`. `None` if
/// neither exists.
pub fn shared_dir() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("SQUISH_SHARED_DIR") {
        let dir = std::path::PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    dir.is_dir().then_some(dir)
}
