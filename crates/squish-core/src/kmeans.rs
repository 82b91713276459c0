//! k-means clustering: k-means++ seeding followed by Lloyd iterations.
//!
//! Used to fit codebooks (for example the KV codec's, with 32 centroids of dimension 32 over a
//! few hundred vectors). Data is a row-major `&[f32]` of `n × dim`; distances are squared
//! Euclidean, computed directly as `Σ (xᵢ - cᵢ)²` (never through the cancellation-prone
//! expansion `|x|² - 2x·c + |c|²`), so they are exact-sign and never negative.
//!
//! # Algorithm
//! 1. **k-means++ seeding** (Arthur & Vassilvitskii, 2007): the first centroid is a uniformly
//!    chosen point; each next one is a point drawn with probability proportional to its squared
//!    distance to the nearest centroid chosen so far. Every point keeps its running minimum
//!    distance, updated against the newly chosen centroid only, so seeding costs `O(n·k·dim)`.
//!    If every point already coincides with a centroid (duplicate points, `n == k`), the
//!    remaining centroids are copies of point 0.
//! 2. **Lloyd iterations**: assign every point to its nearest centroid (lower index on ties),
//!    move every centroid to the mean of its points (accumulated in `f64`). A centroid left with
//!    no points is re-seeded, deterministically, at the point farthest from its assigned
//!    centroid (the next farthest for a second empty cluster, ties to the lower index): this
//!    cannot increase the inertia. Iteration stops when the relative improvement of the inertia
//!    is `<= tol`, when the inertia is 0, or after `max_iters` iterations.
//!
//! # Determinism and performance
//! The same data, configuration and RNG state give bit-identical results on one machine. The
//! distance kernel is runtime-dispatched (AVX2 + FMA on `x86_64` when available, as described
//! in [`ops`](crate::ops#accuracy-across-machines)), so results on machines with and without
//! AVX2 can differ in the last bits, and a near-tie can then resolve to a different centroid.
//! The assignment step scans the centroids in a coordinate-major blocked layout, eight per AVX
//! register and two points per pass (see `simd::nearest_blocked`). Fitting the KV codec's
//! codebook shape (k = 32, dim = 32, n = 400, 7 Lloyd iterations) takes about 0.45 ms on a
//! loaded 2-core x86_64 VM.
//!
//! The recorded inertia is non-increasing: in exact arithmetic each Lloyd step cannot increase
//! it, and an iteration whose inertia came out larger only through rounding (a converged
//! solution) is rejected and ends the fit with the previous centroids.

use rand::{Rng, RngExt};

use crate::error::{ConfigError, Error, Result, ShapeError, check_finite};
use crate::ops;
use crate::sampling::{chunked_total, inverse_cdf};
use crate::simd;

/// Configuration of [`KMeans::fit`].
///
/// # Example
/// ```
/// use squish_core::kmeans::KMeansConfig;
/// let mut cfg = KMeansConfig::new(16);
/// cfg.max_iters = 50;
/// assert!(cfg.validate().is_ok());
/// cfg.k = 0;
/// assert_eq!(cfg.validate().unwrap_err().to_string(), "invalid KMeans.k: must be > 0, got 0");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct KMeansConfig {
    /// Number of clusters (centroids), `>= 1` and at most the number of points passed to
    /// [`KMeans::fit`]. Default 32 (the KV codec's codebook size).
    pub k: usize,
    /// Maximum number of Lloyd iterations after seeding; `0` returns the k-means++ seeds.
    /// Default 100.
    pub max_iters: usize,
    /// Stop when an iteration improves the inertia by a relative amount `<= tol`
    /// (`(before - after) / before`); finite and `>= 0`, where `0` runs until no improvement at
    /// all (or `max_iters`). Default `1e-4`.
    pub tol: f64,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        Self {
            k: 32,
            max_iters: 100,
            tol: 1e-4,
        }
    }
}

impl KMeansConfig {
    /// The default configuration with `k` clusters.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            ..Self::default()
        }
    }

    /// Checks every field (the rule that `k` is at most the number of points is checked by
    /// [`KMeans::fit`], which knows the data).
    ///
    /// # Errors
    /// A [`ConfigError`] for component `KMeans` naming the first field that breaks its rule:
    /// `k` is 0 or does not fit in a `u32` label, or `tol` is negative or not finite.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const C: &str = "KMeans";
        if self.k == 0 {
            return Err(ConfigError::new(C, "k", "must be > 0", self.k));
        }
        if u32::try_from(self.k).is_err() {
            return Err(ConfigError::new(C, "k", "must fit in u32", self.k));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(ConfigError::new(
                C,
                "tol",
                "must be finite and >= 0",
                self.tol,
            ));
        }
        Ok(())
    }
}

/// A fitted k-means model: `k` centroids of dimension `dim` and the history of the fit.
///
/// Implements the seed's k-means++ codebook fitting (`kmeans_plus_plus` + Lloyd).
///
/// # Example
/// ```
/// use rand::{SeedableRng, rngs::StdRng};
/// use squish_core::kmeans::{KMeans, KMeansConfig};
///
/// // Two well-separated groups of 2-D points.
/// let data = [0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 10.0, 10.0, 10.1, 10.0, 10.0, 10.1];
/// let km = KMeans::fit(&KMeansConfig::new(2), &data, 2, &mut StdRng::seed_from_u64(1)).unwrap();
/// assert_eq!(km.assign(&[0.05, 0.05]), km.assign(&[0.0, 0.0]));
/// assert_ne!(km.assign(&[0.0, 0.0]), km.assign(&[10.0, 10.0]));
/// let mut labels = [0u32; 6];
/// let inertia = km.assign_into(&data, &mut labels);
/// assert_eq!(inertia, km.inertia());
/// assert!(km.inertia_history().windows(2).all(|w| w[1] <= w[0]));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    centroids: Vec<f32>,
    k: usize,
    dim: usize,
    inertia_history: Vec<f64>,
    iterations: usize,
    empty_reseeds: usize,
    /// The centroids in the blocked layout of the nearest-centroid kernel
    /// (`simd::block_centroids`).
    blocks: Vec<f32>,
}

impl KMeans {
    /// Fits `cfg.k` centroids to the `n = data.len() / dim` points of the row-major `data`,
    /// seeding with k-means++ drawn from `rng`. The same `rng` state, data and configuration
    /// give bit-identical centroids on the same machine (see the module docs).
    ///
    /// # Errors
    /// - [`Error::Config`] if `cfg` is invalid ([`KMeansConfig::validate`]), if `dim == 0`
    ///   (field `dim`), or if there are fewer points than clusters (field `k`).
    /// - [`Error::Shape`] if `data.len()` is not a multiple of `dim`.
    /// - [`Error::NonFinite`] if `data` holds a NaN or an infinity.
    ///
    /// # Performance
    /// `O(n·k·dim)` for seeding and per Lloyd iteration, plus `O(k·dim + n)` allocations made
    /// once per fit (labels, distances, centroid sums).
    pub fn fit<R: Rng + ?Sized>(
        cfg: &KMeansConfig,
        data: &[f32],
        dim: usize,
        rng: &mut R,
    ) -> Result<Self> {
        cfg.validate()?;
        if dim == 0 {
            return Err(ConfigError::new("KMeans", "dim", "must be > 0", dim).into());
        }
        if !data.len().is_multiple_of(dim) {
            return Err(ShapeError::new(
                "KMeans::fit data",
                format_args!("a length that is a multiple of dim {dim}"),
                format_args!("length {}", data.len()),
            )
            .into());
        }
        let n = data.len() / dim;
        if n < cfg.k {
            return Err(Error::from(ConfigError::new(
                "KMeans",
                "k",
                format!("must be <= the number of points ({n})"),
                cfg.k,
            )));
        }
        check_finite("KMeans::fit data", data)?;
        let centroids = seed_plus_plus(data, dim, cfg.k, rng);
        Ok(lloyd(data, dim, centroids, cfg))
    }

    /// Number of centroids.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Dimension of each centroid.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The centroids, row-major `k × dim`.
    pub fn centroids(&self) -> &[f32] {
        &self.centroids
    }

    /// Centroid `j`.
    ///
    /// # Panics
    /// If `j >= k`.
    pub fn centroid(&self, j: usize) -> &[f32] {
        assert!(j < self.k, "centroid {j} out of range (k = {})", self.k);
        &self.centroids[j * self.dim..(j + 1) * self.dim]
    }

    /// Final inertia: the sum over the fitted points of the squared distance to their nearest
    /// centroid (the last entry of [`inertia_history`](Self::inertia_history)).
    pub fn inertia(&self) -> f64 {
        self.inertia_history.last().copied().unwrap_or(0.0)
    }

    /// Inertia after seeding (entry 0) and after each accepted Lloyd iteration (entries
    /// `1..=iterations`); non-increasing.
    pub fn inertia_history(&self) -> &[f64] {
        &self.inertia_history
    }

    /// Number of Lloyd iterations kept (`inertia_history().len() - 1`).
    pub fn iterations(&self) -> usize {
        self.iterations
    }

    /// How many times a centroid that lost all its points was re-seeded.
    pub fn empty_reseeds(&self) -> usize {
        self.empty_reseeds
    }

    /// Index of the centroid nearest to `x` (squared Euclidean distance; the lower index on
    /// ties). Assumes finite `x`.
    ///
    /// # Panics
    /// If `x.len() != dim`.
    pub fn assign(&self, x: &[f32]) -> usize {
        assert_eq!(
            x.len(),
            self.dim,
            "KMeans::assign: point has length {}, expected dim {}",
            x.len(),
            self.dim
        );
        simd::nearest_blocked(&self.blocks, self.k, x).0
    }

    /// Writes the nearest centroid of every row of `data` (row-major, `labels.len() × dim`)
    /// into `labels` and returns the inertia of that assignment (sum of squared distances,
    /// accumulated in `f64`). On the data the model was fitted on this equals
    /// [`inertia`](Self::inertia) exactly. Assumes finite `data`.
    ///
    /// # Panics
    /// If `data.len() != labels.len() * dim`.
    ///
    /// # Performance
    /// `O(n·k·dim)`, no allocation.
    pub fn assign_into(&self, data: &[f32], labels: &mut [u32]) -> f64 {
        assert_eq!(
            Some(data.len()),
            labels.len().checked_mul(self.dim),
            "KMeans::assign_into: data has length {}, expected labels ({}) × dim ({})",
            data.len(),
            labels.len(),
            self.dim
        );
        let mut inertia = 0.0f64;
        for_each_nearest(data, self.dim, (&self.blocks, self.k), |i, j, d| {
            labels[i] = label_of(j);
            inertia += f64::from(d);
        });
        inertia
    }

    /// The nearest centroids of two points at once: `[assign(x0), assign(x1)]`, bit-identical,
    /// in about the time of one call on AVX2 (the two distance scans share each pass over the
    /// centroids and hide each other's latency). Assumes finite points.
    ///
    /// # Panics
    /// If `x0.len() != dim` or `x1.len() != dim`.
    pub fn assign2(&self, x0: &[f32], x1: &[f32]) -> [usize; 2] {
        assert!(
            x0.len() == self.dim && x1.len() == self.dim,
            "KMeans::assign2: points have lengths {} and {}, expected dim {}",
            x0.len(),
            x1.len(),
            self.dim
        );
        let [(a, _), (b, _)] = simd::nearest_blocked_pair(&self.blocks, self.k, x0, x1);
        [a, b]
    }
}

/// Calls `f(i, j, d)` for every row `i` of `data` with its nearest centroid `j` and squared
/// distance `d`, in row order, two rows per kernel call.
fn for_each_nearest(
    data: &[f32],
    dim: usize,
    (blocks, k): (&[f32], usize),
    mut f: impl FnMut(usize, usize, f32),
) {
    let pairs = data.chunks_exact(2 * dim);
    let rest = pairs.remainder();
    let mut i = 0;
    for p in pairs {
        let (x0, x1) = p.split_at(dim);
        let [(j0, d0), (j1, d1)] = simd::nearest_blocked_pair(blocks, k, x0, x1);
        f(i, j0, d0);
        f(i + 1, j1, d1);
        i += 2;
    }
    if !rest.is_empty() {
        let (j, d) = simd::nearest_blocked(blocks, k, rest);
        f(i, j, d);
    }
}

/// `j` as a `u32` label; `k` was validated to fit in `u32`, so this never saturates.
fn label_of(j: usize) -> u32 {
    u32::try_from(j).unwrap_or(u32::MAX)
}

/// k-means++ seeding; `1 <= k <= n`, finite data.
fn seed_plus_plus<R: Rng + ?Sized>(data: &[f32], dim: usize, k: usize, rng: &mut R) -> Vec<f32> {
    let n = data.len() / dim;
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut centroids = Vec::with_capacity(k * dim);
    let first = rng.random_range(0..n);
    centroids.extend_from_slice(row(first));
    let mut min_d2: Vec<f32> = data
        .chunks_exact(dim)
        .map(|x| simd::sq_dist(x, row(first)))
        .collect();
    for _ in 1..k {
        let total = chunked_total(&min_d2);
        let next = if total > 0.0 {
            let u = rng.random::<f64>() * total;
            inverse_cdf(&min_d2, u)
        } else {
            // Every point coincides with a chosen centroid: any choice is as good.
            0
        };
        let c = row(next);
        centroids.extend_from_slice(c);
        for (m, x) in min_d2.iter_mut().zip(data.chunks_exact(dim)) {
            let d = simd::sq_dist(x, c);
            if d < *m {
                *m = d;
            }
        }
    }
    centroids
}

/// Assigns every point to its nearest centroid (`blocks`: the `k` centroids in the layout of
/// `simd::block_centroids`); returns the inertia.
fn assign_all(
    data: &[f32],
    dim: usize,
    (blocks, k): (&[f32], usize),
    labels: &mut [u32],
    dists: &mut [f32],
) -> f64 {
    let mut inertia = 0.0f64;
    for_each_nearest(data, dim, (blocks, k), |i, j, d| {
        labels[i] = label_of(j);
        dists[i] = d;
        inertia += f64::from(d);
    });
    inertia
}

/// Scratch of the update step.
struct Update {
    sums: Vec<f64>,
    counts: Vec<usize>,
    empty: Vec<usize>,
    farthest: Vec<usize>,
}

impl Update {
    /// Moves every centroid to the mean of its points and re-seeds empty ones at the points
    /// farthest from their assigned centroids; returns the number of re-seeds.
    fn step(
        &mut self,
        data: &[f32],
        dim: usize,
        labels: &[u32],
        dists: &[f32],
        out: &mut [f32],
    ) -> usize {
        self.sums.fill(0.0);
        self.counts.fill(0);
        for (x, &l) in data.chunks_exact(dim).zip(labels) {
            let l = l as usize;
            self.counts[l] += 1;
            for (s, &v) in self.sums[l * dim..(l + 1) * dim].iter_mut().zip(x) {
                *s += f64::from(v);
            }
        }
        self.empty.clear();
        for (j, (c, s)) in out
            .chunks_exact_mut(dim)
            .zip(self.sums.chunks_exact(dim))
            .enumerate()
        {
            let count = self.counts[j];
            if count == 0 {
                self.empty.push(j);
                continue;
            }
            let inv = 1.0 / count as f64;
            for (ci, &si) in c.iter_mut().zip(s) {
                *ci = (si * inv) as f32;
            }
        }
        if self.empty.is_empty() {
            return 0;
        }
        // Farthest points first, lower index on ties (top-k's order).
        ops::top_k_into(dists, self.empty.len(), &mut self.farthest);
        for (&j, &p) in self.empty.iter().zip(&self.farthest) {
            out[j * dim..(j + 1) * dim].copy_from_slice(&data[p * dim..(p + 1) * dim]);
        }
        self.empty.len()
    }
}

/// Lloyd iterations from the given centroids; finite data, `1 <= k <= n`.
fn lloyd(data: &[f32], dim: usize, mut centroids: Vec<f32>, cfg: &KMeansConfig) -> KMeans {
    let n = data.len() / dim;
    let k = centroids.len() / dim;
    let mut labels = vec![0u32; n];
    let mut dists = vec![0.0f32; n];
    let mut blocks = Vec::new();
    simd::block_centroids(&centroids, dim, &mut blocks);
    let mut next_blocks = Vec::with_capacity(blocks.len());
    let mut inertia = assign_all(data, dim, (&blocks, k), &mut labels, &mut dists);
    let mut history = vec![inertia];
    let mut iterations = 0;
    let mut empty_reseeds = 0;

    let mut next = centroids.clone();
    let mut next_labels = vec![0u32; n];
    let mut next_dists = vec![0.0f32; n];
    let mut update = Update {
        sums: vec![0.0; k * dim],
        counts: vec![0; k],
        empty: Vec::with_capacity(k),
        farthest: Vec::with_capacity(n),
    };
    while iterations < cfg.max_iters && inertia > 0.0 {
        let reseeds = update.step(data, dim, &labels, &dists, &mut next);
        simd::block_centroids(&next, dim, &mut next_blocks);
        let new_inertia = assign_all(
            data,
            dim,
            (&next_blocks, k),
            &mut next_labels,
            &mut next_dists,
        );
        if new_inertia > inertia {
            // Only rounding can do this (the exact step cannot increase the inertia): the fit has
            // converged; keep the current centroids.
            break;
        }
        std::mem::swap(&mut centroids, &mut next);
        std::mem::swap(&mut blocks, &mut next_blocks);
        std::mem::swap(&mut labels, &mut next_labels);
        std::mem::swap(&mut dists, &mut next_dists);
        iterations += 1;
        empty_reseeds += reseeds;
        history.push(new_inertia);
        let improvement = inertia - new_inertia;
        inertia = new_inertia;
        if improvement <= cfg.tol * history[history.len() - 2] {
            break;
        }
    }
    KMeans {
        centroids,
        k,
        dim,
        inertia_history: history,
        iterations,
        empty_reseeds,
        blocks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    fn brute_nearest(centroids: &[f32], dim: usize, x: &[f32]) -> (usize, f64) {
        let mut best = (0, f64::INFINITY);
        for (j, c) in centroids.chunks_exact(dim).enumerate() {
            let d: f64 = x
                .iter()
                .zip(c)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            if d < best.1 {
                best = (j, d);
            }
        }
        best
    }

    #[test]
    fn every_assignment_is_the_true_nearest_centroid() {
        squish_testkit::prop::check("kmeans_assign_brute_force", 200, |rng| {
            let dim = rng.random_range(1..6);
            let n = rng.random_range(1..30);
            let k = rng.random_range(1..6);
            // Small integers: distances are exact in f32, ties are real and must go low.
            let data: Vec<f32> = (0..n * dim)
                .map(|_| rng.random_range(-3i32..4) as f32)
                .collect();
            let cents: Vec<f32> = (0..k * dim)
                .map(|_| rng.random_range(-3i32..4) as f32)
                .collect();
            let mut labels = vec![0u32; n];
            let mut dists = vec![0.0f32; n];
            let mut blocks = Vec::new();
            simd::block_centroids(&cents, dim, &mut blocks);
            let inertia = assign_all(&data, dim, (&blocks, k), &mut labels, &mut dists);
            let mut total = 0.0;
            for (i, x) in data.chunks_exact(dim).enumerate() {
                let (j, d) = brute_nearest(&cents, dim, x);
                assert_eq!(labels[i] as usize, j);
                assert_eq!(f64::from(dists[i]), d);
                total += d;
            }
            assert_eq!(inertia, total);
        });
    }

    #[test]
    fn assign2_is_two_assigns() {
        squish_testkit::prop::check("kmeans_assign2", 30, |rng| {
            let dim = rng.random_range(1..40);
            let n = rng.random_range(2..80);
            let k = rng.random_range(1..=n.min(40));
            let data = squish_testkit::data::normal_vec(rng, n * dim, 0.0, 1.0);
            let km = KMeans::fit(&KMeansConfig::new(k), &data, dim, rng).unwrap();
            let mut labels = vec![0u32; n];
            km.assign_into(&data, &mut labels);
            for (i, p) in data
                .chunks_exact(dim)
                .zip(data.chunks_exact(dim).skip(1))
                .enumerate()
            {
                let want = [km.assign(p.0), km.assign(p.1)];
                assert_eq!(km.assign2(p.0, p.1), want);
                assert_eq!([labels[i] as usize, labels[i + 1] as usize], want);
            }
        });
    }

    #[test]
    fn types_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<KMeans>();
        assert_send_sync::<KMeansConfig>();
    }

    #[test]
    fn empty_cluster_is_reseeded_at_the_farthest_point() {
        // 1-D points in two groups; the third centroid starts far from everything.
        let data = [0.0f32, 1.0, 2.0, 10.0, 11.0, 12.0];
        let cfg = KMeansConfig {
            k: 3,
            max_iters: 10,
            tol: 0.0,
        };
        let km = lloyd(&data, 1, vec![1.0, 11.0, 1000.0], &cfg);
        assert!(km.empty_reseeds() >= 1);
        // Points 0, 2, 3, 5 are all at distance 1: the lowest index, point 0, is taken.
        assert_eq!(km.inertia_history()[0], 4.0);
        assert!(km.inertia() < 4.0);
        assert!(km.inertia_history().windows(2).all(|w| w[1] <= w[0]));
        assert!(km.centroids().iter().all(|&c| c <= 12.0));
    }

    #[test]
    fn inertia_history_tracks_the_centroids() {
        squish_testkit::prop::check("kmeans_history_tracks", 50, |rng| {
            let dim = rng.random_range(1..5);
            let n = rng.random_range(2..60);
            let k = rng.random_range(1..=n.min(6));
            let data = squish_testkit::data::normal_vec(rng, n * dim, 0.0, 1.0);
            let km = KMeans::fit(&KMeansConfig::new(k), &data, dim, rng).unwrap();
            assert_eq!(km.inertia_history().len(), km.iterations() + 1);
            let mut labels = vec![0u32; n];
            assert_eq!(km.assign_into(&data, &mut labels), km.inertia());
        });
    }
}
