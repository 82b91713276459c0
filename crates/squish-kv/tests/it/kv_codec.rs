//! `KvCodec` against oracles: exact reconstruction of centroids and of K-point data, the
//! single-mean MSE baseline, ADC scores against a float64 dot with the decoded keys (within a
//! proven rounding bound), bytes from the buffers, determinism, typed errors.

use ndarray::{Array3, Axis, s};
use rand::{Rng, RngExt, rngs::StdRng};
use squish_kv::{CodebookSharing, Error, KvCodec, KvCodecConfig, PqCodes, ScoreTable};
use squish_testkit::{data, prop};

fn cfg(head_dim: usize, m: usize, k: usize, sharing: CodebookSharing) -> KvCodecConfig {
    let mut c = KvCodecConfig::default();
    c.head_dim = head_dim;
    c.subspaces = m;
    c.codebook_size = k;
    c.sharing = sharing;
    c
}

fn keys(rng: &mut impl Rng, heads: usize, seq: usize, d: usize) -> Array3<f32> {
    let spec = data::KvSpec {
        heads,
        seq_len: seq,
        head_dim: d,
        outlier_channels: vec![d / 2],
        outlier_scale: 10.0,
    };
    Array3::from_shape_vec((heads, seq, d), data::kv_with_outliers(rng, &spec)).unwrap()
}

/// A random valid configuration and key tensor large enough to fit it.
fn random_case(rng: &mut StdRng) -> (KvCodecConfig, Array3<f32>) {
    let m = [1, 2, 4][rng.random_range(0..3)];
    let d = m * rng.random_range(1..5);
    let k = rng.random_range(1..20);
    let heads = rng.random_range(1..4);
    let seq = rng.random_range(k..k + 30);
    let sharing = if rng.random::<bool>() {
        CodebookSharing::Shared
    } else {
        CodebookSharing::PerHead
    };
    (cfg(d, m, k, sharing), keys(rng, heads, seq, d))
}

fn book_of(codec: &KvCodec, h: usize) -> usize {
    if codec.codebook_sets() == 1 { 0 } else { h }
}

#[test]
fn decoding_the_encoding_of_centroids_gives_them_back_bit_exactly() {
    prop::check("kv_codec_centroid_roundtrip", 60, |rng| {
        let (c, train) = random_case(rng);
        let codec = KvCodec::fit(c.clone(), &train, rng).unwrap();
        let (heads, seq) = (train.dim().0, 17);
        let dsub = c.sub_dim();
        // Every key is a concatenation of centroids (one random centroid per sub-space).
        let mut x = Array3::<f32>::zeros((heads, seq, c.head_dim));
        for h in 0..heads {
            for t in 0..seq {
                for m in 0..c.subspaces {
                    let j = rng.random_range(0..c.codebook_size);
                    let cent = &codec.codebook(book_of(&codec, h), m)[j * dsub..(j + 1) * dsub];
                    for (i, &v) in cent.iter().enumerate() {
                        x[[h, t, m * dsub + i]] = v;
                    }
                }
            }
        }
        let codes = codec.encode_keys(&x).unwrap();
        assert!(
            codes
                .codes()
                .iter()
                .all(|&j| usize::from(j) < c.codebook_size)
        );
        assert_eq!(codec.decode_keys(&codes).unwrap(), x);
    });
}

#[test]
fn data_with_exactly_k_distinct_points_reconstructs_exactly() {
    prop::check("kv_codec_k_points_exact", 40, |rng| {
        let m = [1, 2][rng.random_range(0..2)];
        let d = m * rng.random_range(1..5);
        let k = rng.random_range(1..12);
        let c = cfg(d, m, k, CodebookSharing::Shared);
        let dsub = d / m;
        // K distinct sub-vectors per sub-space (distinct first coordinates).
        let points: Vec<Vec<f32>> = (0..m)
            .map(|_| {
                let mut p = data::normal_vec(rng, k * dsub, 0.0, 3.0);
                for j in 0..k {
                    p[j * dsub] = j as f32 * 2.5 - 7.0;
                }
                p
            })
            .collect();
        let (heads, seq) = (2, k + rng.random_range(0..40));
        let mut x = Array3::<f32>::zeros((heads, seq, d));
        for h in 0..heads {
            for t in 0..seq {
                for (mm, p) in points.iter().enumerate() {
                    // The first K tokens of head 0 use every point once.
                    let j = if h == 0 && t < k {
                        t
                    } else {
                        rng.random_range(0..k)
                    };
                    for i in 0..dsub {
                        x[[h, t, mm * dsub + i]] = p[j * dsub + i];
                    }
                }
            }
        }
        let codec = KvCodec::fit(c, &x, rng).unwrap();
        assert_eq!(codec.inertia(), 0.0);
        assert_eq!(
            codec.decode_keys(&codec.encode_keys(&x).unwrap()).unwrap(),
            x
        );
    });
}

/// Σ ‖x - x̂‖² in f64.
fn sq_err(x: &Array3<f32>, y: &Array3<f32>) -> f64 {
    x.iter()
        .zip(y)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum()
}

#[test]
fn reconstruction_error_is_at_most_the_single_mean_baseline_and_equals_the_inertia() {
    prop::check("kv_codec_mse_vs_mean", 60, |rng| {
        let (c, x) = random_case(rng);
        let codec = KvCodec::fit(c.clone(), &x, rng).unwrap();
        let err = sq_err(
            &x,
            &codec.decode_keys(&codec.encode_keys(&x).unwrap()).unwrap(),
        );
        // Baseline: every key replaced by the mean of the keys its codebook was fitted on.
        let groups: Vec<Array3<f32>> = match c.sharing {
            CodebookSharing::Shared => vec![x.clone()],
            CodebookSharing::PerHead => x
                .axis_iter(Axis(0))
                .map(|h| h.insert_axis(Axis(0)).to_owned())
                .collect(),
        };
        let mut baseline = 0.0;
        for g in &groups {
            let n = (g.dim().0 * g.dim().1) as f64;
            for ch in 0..c.head_dim {
                let col = g.slice(s![.., .., ch]);
                let mean = col.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                baseline += col
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>();
            }
        }
        assert!(err <= baseline * (1.0 + 1e-5) + 1e-9, "{err} > {baseline}");
        // Encoding the training keys is the fit's final assignment: same error.
        let rel = (err - codec.inertia()).abs() / err.max(1e-30);
        assert!(rel < 1e-5, "{err} vs inertia {}", codec.inertia());
    });
}

/// The rounding bound γ_n = n·u / (1 - n·u), u = 2⁻²⁴.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f64::from(f32::EPSILON) / 2.0;
    nu / (1.0 - nu)
}

#[test]
fn lookup_table_scores_match_scores_against_decoded_keys() {
    prop::check("kv_codec_adc_scores", 60, |rng| {
        let (c, x) = random_case(rng);
        let codec = KvCodec::fit(c.clone(), &x, rng).unwrap();
        let codes = codec.encode_keys(&x).unwrap();
        let decoded = codec.decode_keys(&codes).unwrap();
        let (heads, seq, d) = x.dim();
        let mut table = ScoreTable::new();
        let mut scores = vec![0.0f32; seq];
        for h in 0..heads {
            let q = data::normal_vec(rng, d, 0.0, 2.0);
            codec.score_table_into(h, &q, &mut table).unwrap();
            assert_eq!(table.entries().len(), c.subspaces * c.codebook_size);
            codec.scores_into(&table, &codes, h, &mut scores).unwrap();
            for (t, &got) in scores.iter().enumerate() {
                let k = decoded.slice(s![h, t, ..]);
                let exact: f64 = k
                    .iter()
                    .zip(&q)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let mag: f64 = k
                    .iter()
                    .zip(&q)
                    .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
                    .sum();
                let bound = gamma(c.sub_dim() + c.subspaces) * mag;
                assert!(
                    (f64::from(got) - exact).abs() <= bound,
                    "head {h} token {t}: {got} vs {exact} (bound {bound})"
                );
            }
        }
    });
}

#[test]
fn bytes_held_come_from_the_buffers() {
    let mut rng = squish_testkit::rng(3);
    let x = keys(&mut rng, 3, 50, 16);
    for (m, k, sharing, sets) in [
        (1, 32, CodebookSharing::Shared, 1),
        (4, 16, CodebookSharing::Shared, 1),
        (8, 8, CodebookSharing::PerHead, 3),
    ] {
        let codec = KvCodec::fit(cfg(16, m, k, sharing), &x, &mut rng).unwrap();
        let codes = codec.encode_keys(&x).unwrap();
        assert_eq!(codes.codes().len(), 3 * 50 * m);
        // One byte per code, and the four usize shape fields.
        assert_eq!(codes.bytes_held(), 3 * 50 * m + 4 * size_of::<usize>());
        let book_floats: usize = (0..sets)
            .flat_map(|b| (0..m).map(move |mm| (b, mm)))
            .map(|(b, mm)| codec.codebook(b, mm).len())
            .sum();
        assert_eq!(codec.bytes_held(), 4 * book_floats);
        assert_eq!(codec.bytes_held(), sets * k * 16 * 4);
        assert_eq!(codec.codebook_sets(), sets);
        assert_eq!(codec.lloyd_iterations().len(), sets * m);
    }
}

#[test]
fn the_same_seed_gives_the_same_codebooks() {
    let x = keys(&mut squish_testkit::rng(5), 2, 60, 8);
    let c = cfg(8, 2, 8, CodebookSharing::PerHead);
    let a = KvCodec::fit(c.clone(), &x, &mut squish_testkit::rng(9)).unwrap();
    let b = KvCodec::fit(c.clone(), &x, &mut squish_testkit::rng(9)).unwrap();
    assert_eq!(a, b);
    let other = KvCodec::fit(c, &x, &mut squish_testkit::rng(10)).unwrap();
    assert_ne!(a.codebook(0, 0), other.codebook(0, 0));
}

#[test]
fn per_head_codebooks_are_fitted_on_their_own_head() {
    // Head 1 is head 0 shifted by 100: its codebooks must live around 100.
    let mut rng = squish_testkit::rng(11);
    let h0 = data::normal_vec(&mut rng, 40 * 4, 0.0, 1.0);
    let mut all = h0.clone();
    all.extend(h0.iter().map(|v| v + 100.0));
    let x = Array3::from_shape_vec((2, 40, 4), all).unwrap();
    let codec = KvCodec::fit(cfg(4, 2, 4, CodebookSharing::PerHead), &x, &mut rng).unwrap();
    assert!(codec.codebook(0, 1).iter().all(|v| v.abs() < 10.0));
    assert!(codec.codebook(1, 1).iter().all(|v| *v > 90.0));
    let shared = KvCodec::fit(cfg(4, 2, 4, CodebookSharing::Shared), &x, &mut rng).unwrap();
    assert!(codec.inertia() < shared.inertia());
}

#[test]
fn non_contiguous_keys_encode_like_their_contiguous_copy() {
    let mut rng = squish_testkit::rng(12);
    let x = keys(&mut rng, 3, 40, 8);
    let codec = KvCodec::fit(cfg(8, 2, 16, CodebookSharing::Shared), &x, &mut rng).unwrap();
    // A [seq, heads, d] array viewed as [heads, seq, d]: not in standard layout.
    let mut t = Array3::<f32>::zeros((40, 3, 8));
    t.assign(&x.view().permuted_axes([1, 0, 2]));
    let view = t.view().permuted_axes([1, 0, 2]);
    assert!(view.as_slice().is_none());
    assert_eq!(
        codec.encode_keys(&view).unwrap(),
        codec.encode_keys(&x).unwrap()
    );
    let refit = KvCodec::fit(
        cfg(8, 2, 16, CodebookSharing::Shared),
        &view,
        &mut squish_testkit::rng(1),
    )
    .unwrap();
    let direct = KvCodec::fit(
        cfg(8, 2, 16, CodebookSharing::Shared),
        &x,
        &mut squish_testkit::rng(1),
    )
    .unwrap();
    assert_eq!(refit, direct);
}

#[test]
fn empty_sequences_encode_decode_and_score() {
    let mut rng = squish_testkit::rng(13);
    let x = keys(&mut rng, 2, 20, 4);
    let codec = KvCodec::fit(cfg(4, 2, 4, CodebookSharing::Shared), &x, &mut rng).unwrap();
    let empty = Array3::<f32>::zeros((2, 0, 4));
    let codes = codec.encode_keys(&empty).unwrap();
    assert_eq!(
        (codes.heads(), codes.seq_len(), codes.codes().len()),
        (2, 0, 0)
    );
    assert_eq!(codec.decode_keys(&codes).unwrap().dim(), (2, 0, 4));
    let mut table = ScoreTable::new();
    codec.score_table_into(0, &[1.0; 4], &mut table).unwrap();
    codec.scores_into(&table, &codes, 1, &mut []).unwrap();
}

#[test]
fn config_errors() {
    let ok = cfg(64, 8, 16, CodebookSharing::Shared);
    assert!(ok.validate().is_ok());
    let msg = |f: fn(&mut KvCodecConfig)| {
        let mut c = ok.clone();
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    insta::assert_snapshot!(msg(|c| c.head_dim = 0), @"invalid KvCodec.head_dim: must be > 0, got 0");
    insta::assert_snapshot!(msg(|c| c.subspaces = 0), @"invalid KvCodec.subspaces: must be > 0, got 0");
    insta::assert_snapshot!(msg(|c| c.subspaces = 5), @"invalid KvCodec.subspaces: must divide head_dim (64), got 5");
    insta::assert_snapshot!(msg(|c| c.codebook_size = 0), @"invalid KvCodec.codebook_size: must be in 1..=256 (codes are u8), got 0");
    insta::assert_snapshot!(msg(|c| c.codebook_size = 257), @"invalid KvCodec.codebook_size: must be in 1..=256 (codes are u8), got 257");
    insta::assert_snapshot!(msg(|c| c.tol = f64::NAN), @"invalid KvCodec.tol: must be finite and >= 0, got NaN");
    let mut bad = ok.clone();
    bad.codebook_size = 300;
    let e = KvCodec::fit(
        bad,
        &keys(&mut squish_testkit::rng(1), 1, 400, 64),
        &mut squish_testkit::rng(1),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Config(_)));
}

#[test]
fn fit_errors() {
    let mut rng = squish_testkit::rng(14);
    let c = cfg(8, 2, 16, CodebookSharing::PerHead);
    let e = KvCodec::fit(c.clone(), &keys(&mut rng, 2, 10, 8), &mut rng).unwrap_err();
    assert!(matches!(e, Error::Config(_)));
    insta::assert_snapshot!(e, @"invalid KvCodec.codebook_size: must be <= the training vectors per codebook (10), got 16");
    let e = KvCodec::fit(c.clone(), &keys(&mut rng, 2, 30, 6), &mut rng).unwrap_err();
    assert!(matches!(e, Error::Shape(_)));
    insta::assert_snapshot!(e, @"shape mismatch in KvCodec::fit keys: expected head_dim 8, got 6 channels");
    let e = KvCodec::fit(c.clone(), &Array3::zeros((0, 30, 8)), &mut rng).unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in KvCodec::fit keys: expected at least one head, got 0 heads");
    let mut x = keys(&mut rng, 2, 30, 8);
    x[[1, 3, 5]] = f32::NAN;
    let e = KvCodec::fit(c, &x, &mut rng).unwrap_err();
    assert!(matches!(e, Error::Core(_)));
    insta::assert_snapshot!(e, @"non-finite value in KvCodec::fit keys: element 269 is NaN");
}

#[test]
fn encode_decode_and_score_errors() {
    let mut rng = squish_testkit::rng(15);
    let x = keys(&mut rng, 2, 30, 8);
    let codec = KvCodec::fit(cfg(8, 2, 16, CodebookSharing::PerHead), &x, &mut rng).unwrap();
    let other = KvCodec::fit(cfg(8, 4, 16, CodebookSharing::PerHead), &x, &mut rng).unwrap();

    let mut y = x.clone();
    y[[0, 0, 0]] = f32::INFINITY;
    let mut out = PqCodes::new();
    let e = codec.encode_keys_into(&y, &mut out).unwrap_err();
    assert!(matches!(e, Error::Core(_)));
    insta::assert_snapshot!(e, @"non-finite value in KvCodec::encode_keys keys: element 0 is inf");
    assert_eq!(out, PqCodes::new(), "unchanged on error");
    insta::assert_snapshot!(codec.encode_keys(&keys(&mut rng, 3, 5, 8)).unwrap_err(), @"shape mismatch in KvCodec::encode_keys keys: expected 2 heads (per-head codebooks), got 3 heads");
    insta::assert_snapshot!(codec.encode_keys(&keys(&mut rng, 2, 5, 4)).unwrap_err(), @"shape mismatch in KvCodec::encode_keys keys: expected head_dim 8, got 4 channels");

    let codes = codec.encode_keys(&x).unwrap();
    insta::assert_snapshot!(other.decode_keys(&codes).unwrap_err(), @"shape mismatch in KvCodec::decode_keys codes: expected codes of a codec with M = 4, K = 16, got M = 2, K = 16");
    let mut buf = vec![0.0; 2 * 30 * 8 - 1];
    insta::assert_snapshot!(codec.decode_keys_into(&codes, &mut buf).unwrap_err(), @"shape mismatch in KvCodec::decode_keys out: expected 2 × 30 × 8 = 480 values, got 479 values");

    let mut table = ScoreTable::new();
    insta::assert_snapshot!(codec.score_table_into(2, &[0.0; 8], &mut table).unwrap_err(), @"shape mismatch in KvCodec::score_table head: expected a head below 2, got head 2");
    insta::assert_snapshot!(codec.score_table_into(0, &[0.0; 7], &mut table).unwrap_err(), @"shape mismatch in KvCodec::score_table query: expected head_dim 8, got 7 channels");
    let mut q = [0.5f32; 8];
    q[2] = f32::NAN;
    assert!(matches!(
        codec.score_table_into(0, &q, &mut table).unwrap_err(),
        Error::Core(_)
    ));
    codec.score_table_into(0, &[0.5; 8], &mut table).unwrap();
    let mut scores = vec![0.0; 30];
    insta::assert_snapshot!(codec.scores_into(&table, &codes, 1, &mut scores).unwrap_err(), @"shape mismatch in KvCodec::scores table: expected a table built for head 1 (per-head codebooks), got a table for head 0");
    insta::assert_snapshot!(codec.scores_into(&table, &codes, 2, &mut scores).unwrap_err(), @"shape mismatch in KvCodec::scores head: expected a head below 2, got head 2");
    insta::assert_snapshot!(codec.scores_into(&table, &codes, 0, &mut scores[..29]).unwrap_err(), @"shape mismatch in KvCodec::scores out: expected 30 scores, got 29");
    let mut t4 = ScoreTable::new();
    other.score_table_into(0, &[0.5; 8], &mut t4).unwrap();
    insta::assert_snapshot!(codec.scores_into(&t4, &codes, 0, &mut scores).unwrap_err(), @"shape mismatch in KvCodec::scores table: expected a table of M = 2, K = 16, got M = 4, K = 16");
}

#[test]
fn types_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KvCodec>();
    assert_send_sync::<PqCodes>();
    assert_send_sync::<ScoreTable>();
    assert_send_sync::<KvCodecConfig>();
}

#[test]
fn decoding_copies_the_coded_centroids_for_every_sub_vector_width() {
    let mut rng = squish_testkit::rng(16);
    for (d, m, sharing) in [
        (64, 1, CodebookSharing::Shared),
        (64, 2, CodebookSharing::PerHead),
        (64, 8, CodebookSharing::Shared),
        (128, 1, CodebookSharing::PerHead),
        (32, 1, CodebookSharing::Shared),
        (48, 3, CodebookSharing::Shared),
        (10, 2, CodebookSharing::PerHead),
    ] {
        let x = keys(&mut rng, 2, 40, d);
        let codec = KvCodec::fit(cfg(d, m, 8, sharing), &x, &mut rng).unwrap();
        let codes = codec.encode_keys(&x).unwrap();
        let decoded = codec.decode_keys(&codes).unwrap();
        let dsub = d / m;
        for h in 0..2 {
            for t in 0..40 {
                for mm in 0..m {
                    let j = usize::from(codes.head(h)[t * m + mm]);
                    let want = &codec.codebook(book_of(&codec, h), mm)[j * dsub..(j + 1) * dsub];
                    let got = decoded.slice(s![h, t, mm * dsub..(mm + 1) * dsub]);
                    assert_eq!(
                        got.as_slice().unwrap(),
                        want,
                        "d {d} m {m} head {h} token {t}"
                    );
                }
            }
        }
    }
}
