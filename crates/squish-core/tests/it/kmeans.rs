//! `squish_core::kmeans`: typed errors, seeded determinism, non-increasing inertia, an
//! independent f64 inertia, well-separated blobs, `k == n`, `k == 1`, brute-force nearest
//! assignments and the Lloyd fixed point.

use rand::{Rng, RngExt};
use squish_core::Error;
use squish_core::kmeans::{KMeans, KMeansConfig};
use squish_testkit::data::normal_vec;
use squish_testkit::prop::check;
use squish_testkit::rng;
use squish_testkit::tol::{Tol, assert_close, assert_close_scalar};

fn cfg(k: usize) -> KMeansConfig {
    KMeansConfig::new(k)
}

fn sq_dist_f64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum()
}

/// Inertia of `centroids` on `data`, independently in f64 (each point to its nearest centroid).
fn inertia_f64(data: &[f32], dim: usize, centroids: &[f32]) -> f64 {
    data.chunks_exact(dim)
        .map(|x| {
            centroids
                .chunks_exact(dim)
                .map(|c| sq_dist_f64(x, c))
                .fold(f64::INFINITY, f64::min)
        })
        .sum()
}

/// A random dataset: Gaussian, small-integer (many duplicates and ties), or Gaussian with
/// repeated rows.
fn dataset<R: Rng + ?Sized>(rng: &mut R, n: usize, dim: usize) -> Vec<f32> {
    match rng.random_range(0..3) {
        0 => normal_vec(rng, n * dim, 0.0, 1.0),
        1 => (0..n * dim)
            .map(|_| rng.random_range(-2i32..3) as f32)
            .collect(),
        _ => {
            let distinct = rng.random_range(1..=n);
            let base = normal_vec(rng, distinct * dim, 0.0, 5.0);
            (0..n)
                .flat_map(|_| {
                    let r = rng.random_range(0..distinct);
                    base[r * dim..(r + 1) * dim].to_vec()
                })
                .collect()
        }
    }
}

#[test]
fn errors_are_typed_and_named() {
    let mut r = rng(1);
    let data = [0.0f32; 12];
    let e = KMeans::fit(&cfg(0), &data, 3, &mut r).unwrap_err();
    assert!(matches!(&e, Error::Config(c) if c.component == "KMeans" && c.field == "k"));
    insta::assert_snapshot!(e, @"invalid KMeans.k: must be > 0, got 0");

    let e = KMeans::fit(&cfg(2), &data, 0, &mut r).unwrap_err();
    assert!(matches!(&e, Error::Config(c) if c.field == "dim"));
    insta::assert_snapshot!(e, @"invalid KMeans.dim: must be > 0, got 0");

    let e = KMeans::fit(&cfg(2), &data[..10], 3, &mut r).unwrap_err();
    assert!(matches!(e, Error::Shape(_)));
    insta::assert_snapshot!(e, @"shape mismatch in KMeans::fit data: expected a length that is a multiple of dim 3, got length 10");

    let e = KMeans::fit(&cfg(5), &data, 3, &mut r).unwrap_err();
    assert!(matches!(&e, Error::Config(c) if c.field == "k"));
    insta::assert_snapshot!(e, @"invalid KMeans.k: must be <= the number of points (4), got 5");

    let e = KMeans::fit(&cfg(1), &[], 3, &mut r).unwrap_err();
    insta::assert_snapshot!(e, @"invalid KMeans.k: must be <= the number of points (0), got 1");

    let mut bad = data;
    bad[4] = f32::NAN;
    let e = KMeans::fit(&cfg(2), &bad, 3, &mut r).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 4, .. }));
    insta::assert_snapshot!(e, @"non-finite value in KMeans::fit data: element 4 is NaN");
    bad[4] = f32::NEG_INFINITY;
    assert!(matches!(
        KMeans::fit(&cfg(2), &bad, 3, &mut r),
        Err(Error::NonFinite { index: 4, .. })
    ));

    let mut c = cfg(2);
    c.tol = -1.0;
    insta::assert_snapshot!(c.validate().unwrap_err(), @"invalid KMeans.tol: must be finite and >= 0, got -1");
    c.tol = f64::NAN;
    insta::assert_snapshot!(c.validate().unwrap_err(), @"invalid KMeans.tol: must be finite and >= 0, got NaN");
    assert!(matches!(
        KMeans::fit(&c, &data, 3, &mut r),
        Err(Error::Config(_))
    ));
}

#[test]
fn default_config_is_valid() {
    let c = KMeansConfig::default();
    assert_eq!(c.k, 32);
    assert!(c.validate().is_ok());
}

#[test]
fn same_seed_gives_identical_centroids() {
    check("kmeans_seeded_determinism", 30, |rng| {
        let dim = rng.random_range(1..10);
        let n = rng.random_range(1..120);
        let k = rng.random_range(1..=n.min(12));
        let data = dataset(rng, n, dim);
        let seed = rng.random::<u64>();
        let a = KMeans::fit(&cfg(k), &data, dim, &mut squish_testkit::rng(seed)).unwrap();
        let b = KMeans::fit(&cfg(k), &data, dim, &mut squish_testkit::rng(seed)).unwrap();
        let bits = |km: &KMeans| {
            km.centroids()
                .iter()
                .map(|c| c.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(a, b);
    });
}

#[test]
fn inertia_is_non_increasing_and_matches_an_f64_recomputation() {
    check("kmeans_inertia_monotone", 300, |rng| {
        let dim = rng.random_range(1..9);
        let n = rng.random_range(1..150);
        let k = rng.random_range(1..=n.min(16));
        let data = dataset(rng, n, dim);
        let mut c = cfg(k);
        c.max_iters = rng.random_range(0..40);
        c.tol = [0.0, 1e-6, 1e-3][rng.random_range(0..3)];
        let km = KMeans::fit(&c, &data, dim, rng).unwrap();

        let h = km.inertia_history();
        assert_eq!(h.len(), km.iterations() + 1);
        assert!(km.iterations() <= c.max_iters);
        assert!(h.windows(2).all(|w| w[1] <= w[0]), "history {h:?}");
        assert!(h.iter().all(|&v| v >= 0.0));
        assert_eq!(km.k(), k);
        assert_eq!(km.dim(), dim);
        assert_eq!(km.centroids().len(), k * dim);

        let reference = inertia_f64(&data, dim, km.centroids());
        assert_close_scalar(km.inertia(), reference, Tol::new(1e-5, 1e-6));
        let mut labels = vec![u32::MAX; n];
        assert_eq!(km.assign_into(&data, &mut labels), km.inertia());
    });
}

#[test]
fn assignments_are_the_true_nearest_centroids() {
    check("kmeans_assign_nearest", 200, |rng| {
        let dim = rng.random_range(1..4);
        let n = rng.random_range(1..12);
        let k = rng.random_range(1..=n);
        let data = dataset(rng, n, dim);
        let km = KMeans::fit(&cfg(k), &data, dim, rng).unwrap();
        let mut labels = vec![0u32; n];
        km.assign_into(&data, &mut labels);
        for (x, &l) in data.chunks_exact(dim).zip(&labels) {
            let l = l as usize;
            assert_eq!(km.assign(x), l);
            let d: Vec<f64> = (0..k).map(|j| sq_dist_f64(x, km.centroid(j))).collect();
            let best = d.iter().copied().fold(f64::INFINITY, f64::min);
            // Nearest up to f32 rounding of the distances ...
            assert!(
                d[l] <= best + 1e-5 * (1.0 + best),
                "label {l}, distances {d:?}"
            );
            // ... and never behind an identical, lower-indexed centroid (ties go low).
            assert!((0..l).all(|j| km.centroid(j) != km.centroid(l)));
        }
    });
}

#[test]
fn converged_fit_is_a_lloyd_fixed_point() {
    check("kmeans_fixed_point", 100, |rng| {
        let dim = rng.random_range(1..6);
        let n = rng.random_range(2..100);
        let k = rng.random_range(1..=n.min(8));
        let data = normal_vec(rng, n * dim, 0.0, 1.0);
        let mut c = cfg(k);
        c.tol = 0.0;
        c.max_iters = 1000;
        let km = KMeans::fit(&c, &data, dim, rng).unwrap();
        assert!(km.iterations() < c.max_iters);
        let mut labels = vec![0u32; n];
        km.assign_into(&data, &mut labels);
        // Σ_j n_j |c_j - mean_j|² is how much moving to the means would gain; converged means it
        // is zero up to rounding.
        let mut sums = vec![0.0f64; k * dim];
        let mut counts = vec![0usize; k];
        for (x, &l) in data.chunks_exact(dim).zip(&labels) {
            counts[l as usize] += 1;
            for (s, &v) in sums[l as usize * dim..].iter_mut().zip(x) {
                *s += f64::from(v);
            }
        }
        let mut gain = 0.0;
        for j in 0..k {
            if counts[j] > 0 {
                let mean: Vec<f64> = sums[j * dim..(j + 1) * dim]
                    .iter()
                    .map(|s| s / counts[j] as f64)
                    .collect();
                let d: f64 = km
                    .centroid(j)
                    .iter()
                    .zip(&mean)
                    .map(|(&c, &m)| (f64::from(c) - m).powi(2))
                    .sum();
                gain += counts[j] as f64 * d;
            }
        }
        assert!(gain <= 1e-5 * km.inertia() + 1e-9, "gain {gain}");
    });
}

#[test]
fn well_separated_blobs_are_found() {
    check("kmeans_blobs", 40, |rng| {
        let k = rng.random_range(2..10);
        let dim = rng.random_range(2..16);
        let per = rng.random_range(5..40);
        // Blob centres on a grid 1000 apart per coordinate, points N(0, 1) around them.
        let centres: Vec<f32> = (0..k * dim)
            .map(|i| ((i / dim) * 1000 + (i % dim) * 37) as f32)
            .collect();
        let mut data = Vec::with_capacity(k * per * dim);
        let mut truth = Vec::with_capacity(k * per);
        for _ in 0..per {
            for b in 0..k {
                let noise = normal_vec(rng, dim, 0.0, 1.0);
                data.extend(
                    centres[b * dim..(b + 1) * dim]
                        .iter()
                        .zip(&noise)
                        .map(|(c, e)| c + e),
                );
                truth.push(b);
            }
        }
        let km = KMeans::fit(&cfg(k), &data, dim, rng).unwrap();
        let mut labels = vec![0u32; k * per];
        km.assign_into(&data, &mut labels);
        let mut label_of_blob = vec![None; k];
        for (&b, &l) in truth.iter().zip(&labels) {
            let seen = label_of_blob[b].get_or_insert(l);
            assert_eq!(*seen, l, "blob {b} split across labels");
        }
        let mut distinct: Vec<u32> = label_of_blob.into_iter().flatten().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), k, "two blobs merged");
        // Each centroid is its blob's mean, so the inertia is about n·dim (unit variance).
        assert!(km.inertia() < 2.0 * (k * per * dim) as f64);
    });
}

#[test]
fn k_equal_n_gives_zero_inertia() {
    check("kmeans_k_eq_n", 50, |rng| {
        let dim = rng.random_range(1..6);
        let n = rng.random_range(1..40);
        let data = dataset(rng, n, dim);
        let km = KMeans::fit(&cfg(n), &data, dim, rng).unwrap();
        assert_eq!(km.inertia(), 0.0);
        assert_eq!(km.inertia_history(), [0.0]);
        assert_eq!(km.iterations(), 0);
        // Every point is (a copy of) one of the centroids.
        for x in data.chunks_exact(dim) {
            assert_eq!(km.centroid(km.assign(x)), x);
        }
    });
}

#[test]
fn all_duplicate_points() {
    let data = [1.5f32, -2.0].repeat(10);
    for k in [1, 3, 10] {
        let km = KMeans::fit(&cfg(k), &data, 2, &mut rng(4)).unwrap();
        assert_eq!(km.inertia(), 0.0);
        assert!(km.centroids().chunks_exact(2).all(|c| c == [1.5, -2.0]));
    }
}

#[test]
fn k_one_gives_the_mean() {
    check("kmeans_k_one", 50, |rng| {
        let dim = rng.random_range(1..8);
        let n = rng.random_range(1..80);
        let data = normal_vec(rng, n * dim, 3.0, 2.0);
        let km = KMeans::fit(&cfg(1), &data, dim, rng).unwrap();
        let mean: Vec<f64> = (0..dim)
            .map(|d| {
                data.iter()
                    .skip(d)
                    .step_by(dim)
                    .map(|&v| f64::from(v))
                    .sum::<f64>()
                    / n as f64
            })
            .collect();
        assert_close(km.centroid(0), &mean, Tol::new(1e-5, 1e-5));
        let ss: f64 = data
            .chunks_exact(dim)
            .map(|x| {
                x.iter()
                    .zip(&mean)
                    .map(|(&v, m)| (f64::from(v) - m).powi(2))
                    .sum::<f64>()
            })
            .sum();
        assert_close_scalar(km.inertia(), ss, Tol::new(1e-5, 1e-6));
        assert!(km.iterations() >= usize::from(n > 1));
    });
}

#[test]
fn seed_bench_shape_fits() {
    // The KV codec's codebook: 32 centroids of dim 32 over 400 vectors.
    let data = normal_vec(&mut rng(32), 400 * 32, 0.0, 1.0);
    let km = KMeans::fit(&KMeansConfig::default(), &data, 32, &mut rng(33)).unwrap();
    assert_eq!(km.k(), 32);
    assert_eq!(km.centroids().len(), 32 * 32);
    let h = km.inertia_history();
    assert!(h.windows(2).all(|w| w[1] <= w[0]));
    assert!(km.inertia() < h[0]);
    let mut labels = vec![0u32; 400];
    km.assign_into(&data, &mut labels);
    assert!(labels.iter().all(|&l| l < 32));
}

#[test]
#[should_panic(expected = "expected dim 3")]
fn assign_wrong_length_panics() {
    let km = KMeans::fit(&cfg(1), &[0.0; 6], 3, &mut rng(0)).unwrap();
    let _ = km.assign(&[0.0; 2]);
}

#[test]
#[should_panic(expected = "KMeans::assign_into")]
fn assign_into_wrong_length_panics() {
    let km = KMeans::fit(&cfg(1), &[0.0; 6], 3, &mut rng(0)).unwrap();
    let _ = km.assign_into(&[0.0; 6], &mut [0u32; 3]);
}
