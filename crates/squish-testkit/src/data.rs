//! Seeded data generators.
//!
//! Gaussian data hides exactly the effects KV compression and sparse attention exist for, so
//! besides plain normal / uniform / log-normal tensors there is [`kv_with_outliers`], which
//! gives a few key channels a much larger scale, as real RoPE'd keys have.

use rand::{Rng, RngExt};
use rand_distr::{Distribution, LogNormal, Normal};

/// `n` samples of N(`mean`, `std`²) as `f32`.
///
/// # Panics
/// If `std` is negative or not finite.
pub fn normal_vec<R: Rng + ?Sized>(rng: &mut R, n: usize, mean: f32, std: f32) -> Vec<f32> {
    let d = Normal::new(mean, std).expect("std must be finite and >= 0");
    (0..n).map(|_| d.sample(rng)).collect()
}

/// `n` samples of N(`mean`, `std`²) as `f64`.
///
/// # Panics
/// If `std` is negative or not finite.
pub fn normal_vec_f64<R: Rng + ?Sized>(rng: &mut R, n: usize, mean: f64, std: f64) -> Vec<f64> {
    let d = Normal::new(mean, std).expect("std must be finite and >= 0");
    (0..n).map(|_| d.sample(rng)).collect()
}

/// `n` samples of U[`lo`, `hi`) as `f32`.
///
/// # Panics
/// If `lo >= hi`.
pub fn uniform_vec<R: Rng + ?Sized>(rng: &mut R, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

/// `n` samples of a log-normal whose logarithm is N(`mu`, `sigma`²).
///
/// # Panics
/// If `sigma` is negative or not finite.
pub fn lognormal_vec<R: Rng + ?Sized>(rng: &mut R, n: usize, mu: f32, sigma: f32) -> Vec<f32> {
    let d = LogNormal::new(mu, sigma).expect("sigma must be finite and >= 0");
    (0..n).map(|_| d.sample(rng)).collect()
}

/// A probability vector of length `n`: the softmax of N(0, `temperature`²) logits, which is
/// what a model's next-token distribution looks like.
///
/// # Panics
/// If `n == 0` or `temperature` is not finite and positive.
pub fn softmax_probs<R: Rng + ?Sized>(rng: &mut R, n: usize, temperature: f64) -> Vec<f64> {
    assert!(n > 0, "n must be > 0");
    let logits = normal_vec_f64(rng, n, 0.0, temperature);
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

/// Layout and outlier pattern of a generated KV tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct KvSpec {
    /// Number of heads.
    pub heads: usize,
    /// Tokens per head.
    pub seq_len: usize,
    /// Channels per token.
    pub head_dim: usize,
    /// Channels (same for every head) whose values are scaled by `outlier_scale`.
    pub outlier_channels: Vec<usize>,
    /// Scale of the outlier channels relative to the others (e.g. 20.0).
    pub outlier_scale: f32,
}

/// A `[heads, seq_len, head_dim]` row-major tensor of N(0, 1) values where the channels in
/// `spec.outlier_channels` are N(mean, (`outlier_scale`)²) with a per-channel offset, like the
/// outlier key channels of real RoPE'd caches (large magnitude, consistent per channel).
///
/// # Panics
/// If an outlier channel is `>= head_dim`.
pub fn kv_with_outliers<R: Rng + ?Sized>(rng: &mut R, spec: &KvSpec) -> Vec<f32> {
    let KvSpec {
        heads,
        seq_len,
        head_dim,
        ..
    } = *spec;
    for &c in &spec.outlier_channels {
        assert!(c < head_dim, "outlier channel {c} >= head_dim {head_dim}");
    }
    let mut out = normal_vec(rng, heads * seq_len * head_dim, 0.0, 1.0);
    for h in 0..heads {
        for &c in &spec.outlier_channels {
            // A per-(head, channel) offset: outlier channels are biased, not just wide.
            let offset = spec.outlier_scale * rng.random_range(-1.0f32..1.0);
            for t in 0..seq_len {
                let x = &mut out[(h * seq_len + t) * head_dim + c];
                *x = *x * spec.outlier_scale + offset;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng;

    #[test]
    fn generators_are_seeded() {
        assert_eq!(
            normal_vec(&mut rng(1), 8, 0.0, 1.0),
            normal_vec(&mut rng(1), 8, 0.0, 1.0)
        );
        assert_ne!(
            normal_vec(&mut rng(1), 8, 0.0, 1.0),
            normal_vec(&mut rng(2), 8, 0.0, 1.0)
        );
    }

    #[test]
    fn normal_moments() {
        let v = normal_vec_f64(&mut rng(3), 100_000, 2.0, 3.0);
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((m - 2.0).abs() < 0.05, "mean {m}");
        assert!((var.sqrt() - 3.0).abs() < 0.05, "std {}", var.sqrt());
    }

    #[test]
    fn outlier_channels_are_wide() {
        let spec = KvSpec {
            heads: 2,
            seq_len: 512,
            head_dim: 16,
            outlier_channels: vec![3],
            outlier_scale: 20.0,
        };
        let kv = kv_with_outliers(&mut rng(4), &spec);
        let chan_rms = |h: usize, c: usize| {
            let s: f32 = (0..512).map(|t| kv[(h * 512 + t) * 16 + c].powi(2)).sum();
            (s / 512.0).sqrt()
        };
        for h in 0..2 {
            assert!(chan_rms(h, 3) > 10.0 * chan_rms(h, 0));
        }
    }

    #[test]
    fn softmax_probs_sum_to_one() {
        let p = softmax_probs(&mut rng(5), 50, 2.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p.iter().all(|&x| x > 0.0));
    }
}
