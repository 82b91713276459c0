//! `FlashPrefillKernel` against a naive float64 causal attention, and its algebraic laws:
//! tile-size invariance, the log-sum-exp merge law, continuation = full prefill rows, causality
//! bit for bit, large logits, bounded scratch; plus every error path.

use ndarray::{Array2, Array3, ArrayView3};
use rand::{Rng, RngExt};
use squish_attn::{AttnShape, Error, FlashPrefillConfig, FlashPrefillKernel, merge_attention_into};
use squish_testkit::data::normal_vec;
use squish_testkit::prop::check;
use squish_testkit::reference::attention_lse_f64;
use squish_testkit::tol::{Tol, assert_close};

/// Naive causal attention in float64 (testkit's reference per query row over the keys it
/// sees): returns (out, lse) in the kernel's layouts.
fn reference(
    cfg: &FlashPrefillConfig,
    shape: AttnShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let (h, d) = (cfg.n_heads, cfg.head_dim);
    let group = h / cfg.n_kv_heads;
    let mut out = Vec::with_capacity(h * shape.q_len * d);
    let mut lse = Vec::with_capacity(h * shape.q_len);
    for head in 0..h {
        let g = head / group;
        let (kh, vh) = (
            &k[g * shape.kv_len * d..][..shape.kv_len * d],
            &v[g * shape.kv_len * d..][..shape.kv_len * d],
        );
        for i in 0..shape.q_len {
            let qi = &q[(head * shape.q_len + i) * d..][..d];
            let visible = shape.kv_len.min(shape.q_offset + i + 1) * d;
            let (o, l) = attention_lse_f64(qi, &kh[..visible], &vh[..visible], cfg.scale);
            out.extend(o);
            lse.push(l);
        }
    }
    (out, lse)
}

struct Case {
    cfg: FlashPrefillConfig,
    shape: AttnShape,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Case {
    fn random<R: Rng + ?Sized>(rng: &mut R, cfg: FlashPrefillConfig, shape: AttnShape) -> Self {
        let d = cfg.head_dim;
        let q = normal_vec(rng, cfg.n_heads * shape.q_len * d, 0.0, 1.0);
        let k = normal_vec(rng, cfg.n_kv_heads * shape.kv_len * d, 0.0, 1.0);
        let v = normal_vec(rng, cfg.n_kv_heads * shape.kv_len * d, 0.0, 1.0);
        Self {
            cfg,
            shape,
            q,
            k,
            v,
        }
    }

    fn run_with(&self, cfg: FlashPrefillConfig) -> (Vec<f32>, Vec<f32>) {
        let mut kernel = FlashPrefillKernel::new(cfg).unwrap();
        let mut out = vec![0.0; self.q.len()];
        let mut lse = vec![0.0; self.cfg.n_heads * self.shape.q_len];
        kernel
            .attend_into(self.shape, &self.q, &self.k, &self.v, &mut out, &mut lse)
            .unwrap();
        (out, lse)
    }

    fn run(&self) -> (Vec<f32>, Vec<f32>) {
        self.run_with(self.cfg.clone())
    }
}

fn random_cfg<R: Rng + ?Sized>(rng: &mut R) -> FlashPrefillConfig {
    let n_kv = rng.random_range(1..=3);
    let group = [1, 2, 3][rng.random_range(0..3)];
    let d = [1, 3, 8, 16, 32, 33, 64, 100][rng.random_range(0..8)];
    let mut cfg = FlashPrefillConfig::new(n_kv * group, n_kv, d);
    cfg.q_tile = rng.random_range(1..=80);
    cfg.kv_tile = rng.random_range(1..=80);
    cfg
}

fn random_seq<R: Rng + ?Sized>(rng: &mut R) -> usize {
    [1, 2, 5, 16, 63, 64, 65, 100, 129, 200][rng.random_range(0..10)]
}

const TOL: Tol = Tol::new(1e-5, 1e-5);

#[test]
fn matches_f64_reference_on_many_shapes() {
    check("flash_matches_f64_reference", 60, |rng| {
        let cfg = random_cfg(rng);
        let seq = random_seq(rng);
        let case = Case::random(rng, cfg, AttnShape::prefill(seq));
        let (out, lse) = case.run();
        let (want_out, want_lse) = reference(&case.cfg, case.shape, &case.q, &case.k, &case.v);
        assert_close(&out, &want_out, TOL);
        assert_close(&lse, &want_lse, TOL);
    });
}

#[test]
fn edge_shapes_match_reference() {
    // S = 1, S < tile, S not a multiple of the tile, GQA and MQA, the seed's configuration.
    let mut rng = squish_testkit::rng(7);
    for (h, hkv, d, seq, qt, kt) in [
        (1, 1, 1, 1, 64, 64),
        (4, 4, 32, 1, 64, 64),
        (4, 4, 32, 10, 64, 64),
        (4, 4, 32, 256, 64, 64),
        (4, 2, 32, 97, 64, 64),
        (6, 1, 16, 70, 16, 48),
        (9, 3, 64, 130, 64, 64),
        (2, 2, 128, 77, 32, 32),
        (2, 1, 5, 33, 1, 1),
    ] {
        let mut cfg = FlashPrefillConfig::new(h, hkv, d);
        cfg.q_tile = qt;
        cfg.kv_tile = kt;
        let case = Case::random(&mut rng, cfg, AttnShape::prefill(seq));
        let (out, lse) = case.run();
        let (want_out, want_lse) = reference(&case.cfg, case.shape, &case.q, &case.k, &case.v);
        assert_close(&out, &want_out, TOL);
        assert_close(&lse, &want_lse, TOL);
    }
}

#[test]
fn continuation_and_non_causal_match_reference() {
    check("flash_offsets_match_reference", 30, |rng| {
        let cfg = random_cfg(rng);
        let kv_len = random_seq(rng);
        let q_len = rng.random_range(1..=kv_len);
        // Continuation (queries are the last q_len positions) or beyond the keys (non-causal).
        let q_offset = if rng.random_bool(0.7) {
            kv_len - q_len
        } else {
            kv_len + rng.random_range(0..5)
        };
        let shape = AttnShape {
            q_len,
            kv_len,
            q_offset,
        };
        let case = Case::random(rng, cfg, shape);
        let (out, lse) = case.run();
        let (want_out, want_lse) = reference(&case.cfg, case.shape, &case.q, &case.k, &case.v);
        assert_close(&out, &want_out, TOL);
        assert_close(&lse, &want_lse, TOL);
    });
}

#[test]
fn tile_size_does_not_change_the_result() {
    check("flash_tile_invariance", 20, |rng| {
        let cfg = random_cfg(rng);
        let seq = random_seq(rng);
        let case = Case::random(rng, cfg, AttnShape::prefill(seq));
        let (base_out, base_lse) = case.run();
        for (qt, kt) in [(1, 1), (3, 7), (16, 64), (64, 16), (128, 128), (200, 33)] {
            let mut cfg = case.cfg.clone();
            cfg.q_tile = qt;
            cfg.kv_tile = kt;
            let (out, lse) = case.run_with(cfg);
            assert_close(&out, &base_out, Tol::new(2e-6, 2e-6));
            assert_close(&lse, &base_lse, Tol::new(2e-6, 2e-6));
        }
        // The query tile alone never changes a row's arithmetic: bit-for-bit equal.
        let mut cfg = case.cfg.clone();
        cfg.q_tile = if cfg.q_tile == 1 { 5 } else { 1 };
        let (out, lse) = case.run_with(cfg);
        assert_eq!(out, base_out);
        assert_eq!(lse, base_lse);
    });
}

/// Splits `[heads, len, d]` rows `[a, b)` of every head into a new contiguous buffer.
fn rows(x: &[f32], heads: usize, len: usize, d: usize, a: usize, b: usize) -> Vec<f32> {
    (0..heads)
        .flat_map(|h| x[(h * len + a) * d..(h * len + b) * d].iter().copied())
        .collect()
}

#[test]
fn merge_law_prefix_and_chunk() {
    // Attention of a chunk over [prefix; chunk] == LSE-merge of attention over the prefix
    // (all visible) and over the chunk alone (causal).
    check("flash_merge_law", 30, |rng| {
        let cfg = random_cfg(rng);
        let (h, hkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let p = rng.random_range(1..150);
        let c = rng.random_range(1..100);
        let full = Case::random(rng, cfg.clone(), AttnShape::continuation(p, c));
        let (want_out, want_lse) = full.run();

        let mut kernel = FlashPrefillKernel::new(cfg).unwrap();
        let n = h * c;
        let (mut oa, mut la) = (vec![0.0; n * d], vec![0.0; n]);
        let (mut ob, mut lb) = (vec![0.0; n * d], vec![0.0; n]);
        let prefix = AttnShape {
            q_len: c,
            kv_len: p,
            q_offset: p,
        };
        let (kp, vp) = (
            rows(&full.k, hkv, p + c, d, 0, p),
            rows(&full.v, hkv, p + c, d, 0, p),
        );
        kernel
            .attend_into(prefix, &full.q, &kp, &vp, &mut oa, &mut la)
            .unwrap();
        let (kc, vc) = (
            rows(&full.k, hkv, p + c, d, p, p + c),
            rows(&full.v, hkv, p + c, d, p, p + c),
        );
        kernel
            .attend_into(AttnShape::prefill(c), &full.q, &kc, &vc, &mut ob, &mut lb)
            .unwrap();
        let (mut out, mut lse) = (vec![0.0; n * d], vec![0.0; n]);
        merge_attention_into(&oa, &la, &ob, &lb, &mut out, &mut lse).unwrap();
        assert_close(&out, &want_out, Tol::new(1e-5, 1e-5));
        assert_close(&lse, &want_lse, Tol::new(1e-5, 1e-5));
    });
}

#[test]
fn merge_handles_empty_partials_and_rejects_bad_input() {
    let (a, b) = ([1.0f32, 2.0], [3.0f32, 4.0]);
    let (mut out, mut lse) = ([0.0f32; 2], [0.0f32; 1]);
    merge_attention_into(&a, &[0.3], &b, &[f32::NEG_INFINITY], &mut out, &mut lse).unwrap();
    assert_eq!((out, lse), ([1.0, 2.0], [0.3]));
    merge_attention_into(
        &a,
        &[f32::NEG_INFINITY],
        &b,
        &[f32::NEG_INFINITY],
        &mut out,
        &mut lse,
    )
    .unwrap();
    assert_eq!((out, lse), ([0.0, 0.0], [f32::NEG_INFINITY]));
    let e = merge_attention_into(&a, &[0.0], &b[..1], &[0.0], &mut out, &mut lse).unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in merge_attention_into b length: expected 2, got 1");
    let e = merge_attention_into(&a, &[f32::NAN], &b, &[0.0], &mut out, &mut lse).unwrap_err();
    insta::assert_snapshot!(e, @"non-finite value in merge_attention_into lse_a: element 0 is NaN");
    let e = merge_attention_into(
        &[f32::INFINITY, 0.0],
        &[0.0],
        &b,
        &[0.0],
        &mut out,
        &mut lse,
    )
    .unwrap_err();
    insta::assert_snapshot!(e, @"non-finite value in merge_attention_into a: element 0 is inf");
}

#[test]
fn continuation_equals_full_prefill_rows_bit_for_bit() {
    check("flash_continuation", 20, |rng| {
        let cfg = random_cfg(rng);
        let (h, hkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let seq = rng.random_range(2..200);
        let full = Case::random(rng, cfg.clone(), AttnShape::prefill(seq));
        let (full_out, full_lse) = full.run();
        let p = rng.random_range(1..seq);
        // The chunk [p, end) with the cache holding [0, end).
        let end = rng.random_range(p + 1..=seq);
        let q = rows(&full.q, h, seq, d, p, end);
        let k = rows(&full.k, hkv, seq, d, 0, end);
        let v = rows(&full.v, hkv, seq, d, 0, end);
        let c = end - p;
        let mut kernel = FlashPrefillKernel::new(cfg).unwrap();
        let (mut out, mut lse) = (vec![0.0; h * c * d], vec![0.0; h * c]);
        kernel
            .attend_into(
                AttnShape::continuation(p, c),
                &q,
                &k,
                &v,
                &mut out,
                &mut lse,
            )
            .unwrap();
        assert_eq!(out, rows(&full_out, h, seq, d, p, end));
        assert_eq!(lse, rows(&full_lse, h, seq, 1, p, end));
    });
}

#[test]
fn causality_bit_for_bit() {
    check("flash_causality", 20, |rng| {
        let cfg = random_cfg(rng);
        let (h, hkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let seq = rng.random_range(2..160);
        let mut case = Case::random(rng, cfg, AttnShape::prefill(seq));
        let (out, lse) = case.run();
        let j = rng.random_range(1..seq);
        for g in 0..hkv {
            for c in 0..d {
                case.k[(g * seq + j) * d + c] = rng.random_range(-1e6..1e6);
                case.v[(g * seq + j) * d + c] = rng.random_range(-1e6..1e6);
            }
        }
        let (out2, lse2) = case.run();
        assert_eq!(rows(&out2, h, seq, d, 0, j), rows(&out, h, seq, d, 0, j));
        assert_eq!(rows(&lse2, h, seq, 1, 0, j), rows(&lse, h, seq, 1, 0, j));
        // ...and the perturbation is seen from row j on.
        assert_ne!(
            rows(&out2, h, seq, d, j, seq),
            rows(&out, h, seq, d, j, seq)
        );
    });
}

#[test]
fn logits_scaled_by_1000_stay_finite_and_correct() {
    check("flash_large_logits", 10, |rng| {
        let cfg = random_cfg(rng);
        let seq = random_seq(rng);
        let mut case = Case::random(rng, cfg, AttnShape::prefill(seq));
        for x in &mut case.q {
            *x *= 1000.0;
        }
        let (out, lse) = case.run();
        assert!(out.iter().chain(&lse).all(|x| x.is_finite()));
        let (want_out, want_lse) = reference(&case.cfg, case.shape, &case.q, &case.k, &case.v);
        // At logits of size ~1e4 the f32 rounding of the logits themselves dominates: each is
        // within δ = d·2⁻²⁴·scale·Σ|q·k| of exact, which moves a softmax weight by at most a
        // factor e^{±2δ}, so outputs move by at most (e^{2δ} − 1)·max|v| and lse by δ.
        let (cfg, d) = (&case.cfg, case.cfg.head_dim);
        let group = cfg.n_heads / cfg.n_kv_heads;
        let mut delta = 0.0f64;
        for h in 0..cfg.n_heads {
            for i in 0..seq {
                let qi = &case.q[(h * seq + i) * d..][..d];
                for j in 0..=i {
                    let kj = &case.k[((h / group) * seq + j) * d..][..d];
                    let abs: f64 = qi
                        .iter()
                        .zip(kj)
                        .map(|(&a, &b)| f64::from((a * b).abs()))
                        .sum();
                    delta = delta.max(d as f64 * 2f64.powi(-24) * f64::from(cfg.scale) * abs);
                }
            }
        }
        let vmax = case.v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let out_bound = (2.0 * delta).exp_m1() * f64::from(vmax) + 1e-5;
        assert_close(&out, &want_out, Tol::new(0.0, out_bound));
        assert_close(&lse, &want_lse, Tol::new(1e-6, delta + 1e-5));
    });
}

#[test]
fn scratch_is_independent_of_sequence_length() {
    let cfg = FlashPrefillConfig::new(2, 1, 64);
    let mut kernel = FlashPrefillKernel::new(cfg.clone()).unwrap();
    let before = kernel.scratch_bytes();
    // 64×64 tiles, head_dim 64: qt, s (each 64·64), m, l, alpha (64 each), plus up to 15
    // floats per tile of alignment.
    let exact = 4 * (2 * 64 * 64 + 3 * 64);
    assert!(
        (exact..exact + 2 * 60 + 1).contains(&before),
        "{before} vs {exact}"
    );
    let mut rng = squish_testkit::rng(3);
    for seq in [1, 63, 64, 65, 500, 2048] {
        let case = Case::random(&mut rng, cfg.clone(), AttnShape::prefill(seq));
        let mut out = vec![0.0; case.q.len()];
        let mut lse = vec![0.0; 2 * seq];
        kernel
            .attend_into(case.shape, &case.q, &case.k, &case.v, &mut out, &mut lse)
            .unwrap();
        assert_eq!(kernel.scratch_bytes(), before, "seq={seq}");
    }
    // A query tile that is not a multiple of the vector width (8) is padded, still
    // S-independent.
    let mut odd = cfg;
    odd.q_tile = 10;
    odd.kv_tile = 10;
    let k = FlashPrefillKernel::new(odd).unwrap();
    // qt, s (query tile padded to 16), then m, l and alpha; the two tiles' allocations carry
    // up to 15 floats each that align them.
    let exact = 4 * (64 * 16 + 10 * 16 + 3 * 16);
    let held = k.scratch_bytes();
    assert!(
        (exact..exact + 2 * 60 + 1).contains(&held),
        "{held} vs {exact}"
    );
}

#[test]
fn ndarray_boundary_matches_slices_and_accepts_strided_input() {
    let mut rng = squish_testkit::rng(11);
    let mut cfg = FlashPrefillConfig::new(4, 2, 16);
    cfg.scale = 0.3;
    let case = Case::random(&mut rng, cfg.clone(), AttnShape::continuation(20, 12));
    let (want_out, want_lse) = case.run();
    let q = Array3::from_shape_vec((4, 12, 16), case.q.clone()).unwrap();
    let k = Array3::from_shape_vec((2, 32, 16), case.k.clone()).unwrap();
    let v = Array3::from_shape_vec((2, 32, 16), case.v.clone()).unwrap();
    let mut kernel = FlashPrefillKernel::new(cfg).unwrap();
    let res = kernel.prefill(&q, &k, &v).unwrap();
    assert_eq!(res.out.as_slice().unwrap(), &want_out[..]);
    assert_eq!(res.lse.as_slice().unwrap(), &want_lse[..]);
    // A strided view of the same values (stored as [seq, heads, d], viewed as [heads, seq, d]).
    let q_t = q.permuted_axes([1, 0, 2]).as_standard_layout().into_owned();
    let q_view: ArrayView3<'_, f32> = q_t.view().permuted_axes([1, 0, 2]);
    assert!(q_view.as_slice().is_none());
    let res2 = kernel.prefill(&q_view, &k, &v).unwrap();
    assert_eq!(res2, res);
}

#[test]
fn real_smollm2_qkv_match_reference() {
    let Some(dir) = squish_testkit::shared_dir() else {
        assert!(std::env::var_os("CI").is_none(), "shared/ not found");
        eprintln!("shared/ not found: SmolLM2 check not run");
        return;
    };
    let dir = dir.join("data/smollm2-kv");
    let mut cfg = FlashPrefillConfig::new(9, 3, 64);
    cfg.scale = 0.125;
    let mut kernel = FlashPrefillKernel::new(cfg.clone()).unwrap();
    for text in ["t03", "t33"] {
        for layer in ["L00", "L15", "L29"] {
            let read = |t: &str| {
                squish_testkit::npy::read::<f32>(dir.join(format!("{text}_{layer}_{t}.npy")))
                    .unwrap()
            };
            let (q, k, v) = (read("q"), read("k"), read("v"));
            let seq = q.shape[1];
            assert_eq!(
                (q.shape.as_slice(), k.shape.as_slice()),
                (&[9, seq, 64][..], &[3, seq, 64][..])
            );
            let shape = AttnShape::prefill(seq);
            let (mut out, mut lse) = (vec![0.0; q.data.len()], vec![0.0; 9 * seq]);
            kernel
                .attend_into(shape, &q.data, &k.data, &v.data, &mut out, &mut lse)
                .unwrap();
            let (want_out, want_lse) = reference(&cfg, shape, &q.data, &k.data, &v.data);
            assert_close(&out, &want_out, TOL);
            assert_close(&lse, &want_lse, TOL);
        }
    }
}

#[test]
fn config_errors() {
    let bad = |f: fn(&mut FlashPrefillConfig)| {
        let mut cfg = FlashPrefillConfig::default();
        f(&mut cfg);
        let e = cfg.validate().unwrap_err();
        assert_eq!(
            FlashPrefillKernel::new(cfg).unwrap_err(),
            Error::Config(e.clone())
        );
        e.to_string()
    };
    insta::assert_snapshot!(bad(|c| c.n_heads = 0), @"invalid FlashPrefillKernel.n_heads: must be >= 1, got 0");
    insta::assert_snapshot!(bad(|c| c.n_kv_heads = 0), @"invalid FlashPrefillKernel.n_kv_heads: must be >= 1, got 0");
    insta::assert_snapshot!(bad(|c| c.n_kv_heads = 3), @"invalid FlashPrefillKernel.n_kv_heads: must divide n_heads (4), got 3");
    insta::assert_snapshot!(bad(|c| c.head_dim = 0), @"invalid FlashPrefillKernel.head_dim: must be in [1, 4096], got 0");
    insta::assert_snapshot!(bad(|c| c.q_tile = 0), @"invalid FlashPrefillKernel.q_tile: must be in [1, 4096], got 0");
    insta::assert_snapshot!(bad(|c| c.kv_tile = 5000), @"invalid FlashPrefillKernel.kv_tile: must be in [1, 4096], got 5000");
    insta::assert_snapshot!(bad(|c| c.scale = 0.0), @"invalid FlashPrefillKernel.scale: must be finite and > 0, got 0");
    insta::assert_snapshot!(bad(|c| c.scale = f32::NAN), @"invalid FlashPrefillKernel.scale: must be finite and > 0, got NaN");
    insta::assert_snapshot!(bad(|c| c.scale = f32::INFINITY), @"invalid FlashPrefillKernel.scale: must be finite and > 0, got inf");
    assert!(FlashPrefillConfig::default().validate().is_ok());
}

#[test]
fn shape_and_value_errors() {
    let cfg = FlashPrefillConfig::new(2, 1, 4);
    let mut kernel = FlashPrefillKernel::new(cfg).unwrap();
    let q = Array3::<f32>::zeros((2, 3, 4));
    let k = Array3::<f32>::zeros((1, 3, 4));
    fn msg<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
        r.unwrap_err().to_string()
    }
    insta::assert_snapshot!(
        msg(kernel.prefill(&Array3::zeros((3, 3, 4)), &k, &k)),
        @"shape mismatch in FlashPrefillKernel q: expected [2, q_len, 4], got [3, 3, 4]"
    );
    insta::assert_snapshot!(
        msg(kernel.prefill(&q, &Array3::zeros((2, 3, 4)), &k)),
        @"shape mismatch in FlashPrefillKernel k: expected [1, kv_len, 4], got [2, 3, 4]"
    );
    insta::assert_snapshot!(
        msg(kernel.prefill(&q, &k, &Array3::zeros((1, 2, 4)))),
        @"shape mismatch in FlashPrefillKernel v: expected [1, 3, 4], got [1, 2, 4]"
    );
    insta::assert_snapshot!(
        msg(kernel.prefill(&q, &Array3::zeros((1, 2, 4)), &Array3::zeros((1, 2, 4)))),
        @"shape mismatch in FlashPrefillKernel q_len (at most kv_len): expected <= 2, got 3"
    );
    let mut out = Array3::zeros((2, 3, 4));
    insta::assert_snapshot!(
        msg(kernel.prefill_into(&q, &k, &k, &mut out, &mut Array2::zeros((2, 2)))),
        @"shape mismatch in FlashPrefillKernel lse: expected [2, 3], got [2, 2]"
    );
    insta::assert_snapshot!(
        msg(kernel.prefill_into(&q, &k, &k, &mut Array3::zeros((2, 3, 3)), &mut Array2::zeros((2, 3)))),
        @"shape mismatch in FlashPrefillKernel out: expected [2, 3, 4], got [2, 3, 3]"
    );
    let mut strided = Array3::<f32>::zeros((3, 2, 4));
    let mut view = strided.view_mut().permuted_axes([1, 0, 2]);
    insta::assert_snapshot!(
        msg(kernel.prefill_into(&q, &k, &k, &mut view, &mut Array2::zeros((2, 3)))),
        @"shape mismatch in FlashPrefillKernel out: expected standard layout, got strided"
    );
    // Slices: lengths and an empty key set.
    let (mut o, mut l) = (vec![0.0; 24], vec![0.0; 6]);
    insta::assert_snapshot!(
        msg(kernel.attend_into(AttnShape::prefill(3), &[0.0; 23], &[0.0; 12], &[0.0; 12], &mut o, &mut l)),
        @"shape mismatch in FlashPrefillKernel q length: expected 24, got 23"
    );
    let none = AttnShape {
        q_len: 3,
        kv_len: 0,
        q_offset: 0,
    };
    insta::assert_snapshot!(
        msg(kernel.attend_into(none, &[0.0; 24], &[], &[], &mut o, &mut l)),
        @"shape mismatch in FlashPrefillKernel kv_len: expected >= 1, got 0"
    );
    // Zero queries: nothing to do.
    let empty = AttnShape {
        q_len: 0,
        kv_len: 0,
        q_offset: 0,
    };
    kernel
        .attend_into(empty, &[], &[], &[], &mut [], &mut [])
        .unwrap();
    // Non-finite values, in each input.
    let mut qn = q.clone();
    qn[[1, 2, 3]] = f32::NAN;
    insta::assert_snapshot!(msg(kernel.prefill(&qn, &k, &k)), @"non-finite value in FlashPrefillKernel q: element 23 is NaN");
    let mut kn = k.clone();
    kn[[0, 1, 0]] = f32::INFINITY;
    insta::assert_snapshot!(msg(kernel.prefill(&q, &kn, &k)), @"non-finite value in FlashPrefillKernel k: element 4 is inf");
    insta::assert_snapshot!(msg(kernel.prefill(&q, &k, &kn)), @"non-finite value in FlashPrefillKernel v: element 4 is inf");
    // Finite inputs whose logits overflow f32.
    let big = Array3::from_elem((2, 3, 4), 1e30f32);
    let e = kernel
        .prefill(&big, &Array3::from_elem((1, 3, 4), 1e30), &k)
        .unwrap_err();
    assert_eq!(e, Error::AttentionOverflow { head: 0, row: 0 });
    // Finite logits but values whose weighted sum overflows: row 1 sums two values of 3e38.
    let huge = Array3::from_elem((1, 3, 4), 3e38f32);
    let e = kernel.prefill(&q, &k, &huge).unwrap_err();
    assert_eq!(e, Error::AttentionOverflow { head: 0, row: 1 });
    // Positions that overflow usize.
    let far = AttnShape {
        q_len: 3,
        kv_len: 3,
        q_offset: usize::MAX - 1,
    };
    insta::assert_snapshot!(
        msg(kernel.attend_into(far, &[0.0; 24], &[0.0; 12], &[0.0; 12], &mut o, &mut l)),
        @"shape mismatch in FlashPrefillKernel q_offset + q_len: expected a position within usize, got 18446744073709551614 + 3"
    );
    let e = kernel
        .attend_into(
            AttnShape::prefill(usize::MAX / 2),
            &[],
            &[],
            &[],
            &mut [],
            &mut [],
        )
        .unwrap_err();
    insta::assert_snapshot!(e, @"shape mismatch in FlashPrefillKernel q length: expected a length within usize, got 0");
}
