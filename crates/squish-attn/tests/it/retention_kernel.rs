//! RetentionKernel against float64 oracles: the closed form of retention and of its state,
//! recurrent = parallel = chunkwise, linearity, decay.

use rand::RngExt;
use squish_attn::{RetentionConfig, RetentionDecays, RetentionKernel, RetentionState};
use squish_testkit::{
    data, prop,
    tol::{Tol, assert_close},
};

/// Naive f64 retention `o_n = Σ_{m≤n} γ^(n−m) (q_n·k_m)/√d v_m`, head-major layouts.
fn reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    gammas: &[f64],
    seq: usize,
    d: usize,
    dv: usize,
) -> Vec<f64> {
    let mut out = vec![0.0f64; gammas.len() * seq * dv];
    let scale = 1.0 / (d as f64).sqrt();
    for (h, &g) in gammas.iter().enumerate() {
        for n in 0..seq {
            for m in 0..=n {
                let qk: f64 = (0..d)
                    .map(|i| {
                        f64::from(q[(h * seq + n) * d + i]) * f64::from(k[(h * seq + m) * d + i])
                    })
                    .sum();
                let w = g.powi((n - m) as i32) * qk * scale;
                for j in 0..dv {
                    out[(h * seq + n) * dv + j] += w * f64::from(v[(h * seq + m) * dv + j]);
                }
            }
        }
    }
    out
}

/// The closed-form state `S_t = Σ_s γ^(t−s) k̂_s v_sᵀ` after `seq` tokens (heads × d × dv).
fn state_reference(
    k: &[f32],
    v: &[f32],
    gammas: &[f64],
    seq: usize,
    d: usize,
    dv: usize,
) -> Vec<f64> {
    let mut s = vec![0.0f64; gammas.len() * d * dv];
    let scale = 1.0 / (d as f64).sqrt();
    for (h, &g) in gammas.iter().enumerate() {
        for t in 0..seq {
            let w = g.powi((seq - 1 - t) as i32) * scale;
            for i in 0..d {
                for j in 0..dv {
                    s[(h * d + i) * dv + j] += w
                        * f64::from(k[(h * seq + t) * d + i])
                        * f64::from(v[(h * seq + t) * dv + j]);
                }
            }
        }
    }
    s
}

/// Token `t`'s `heads × dim` vector out of a head-major sequence.
fn token(x: &[f32], heads: usize, seq: usize, dim: usize, t: usize) -> Vec<f32> {
    (0..heads)
        .flat_map(|h| {
            x[(h * seq + t) * dim..(h * seq + t + 1) * dim]
                .iter()
                .copied()
        })
        .collect()
}

/// A relative tolerance with an absolute floor scaled to the data (outputs near zero).
/// The recurrent form token by token from a zero state: the outputs gathered back to
/// head-major `[heads, seq, dv]`, and the final state.
fn recurrent(
    kernel: &RetentionKernel,
    (q, k, v): (&[f32], &[f32], &[f32]),
    h: usize,
    seq: usize,
    d: usize,
    dv: usize,
) -> (Vec<f32>, RetentionState) {
    let mut st = kernel.init_state();
    let mut rec = vec![0.0f32; h * seq * dv];
    let mut o = vec![0.0f32; h * dv];
    for t in 0..seq {
        kernel
            .step_into(
                &mut st,
                &token(q, h, seq, d, t),
                &token(k, h, seq, d, t),
                &token(v, h, seq, dv, t),
                &mut o,
            )
            .unwrap();
        for hh in 0..h {
            rec[(hh * seq + t) * dv..(hh * seq + t + 1) * dv]
                .copy_from_slice(&o[hh * dv..(hh + 1) * dv]);
        }
    }
    (rec, st)
}

fn rel(expected: &[f64], rtol: f64) -> Tol {
    let max = expected.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    Tol::new(rtol, rtol * max)
}

/// The default configuration with `f` applied (the config is `#[non_exhaustive]`).
fn with_cfg(f: impl FnOnce(&mut RetentionConfig)) -> RetentionConfig {
    let mut c = RetentionConfig::default();
    f(&mut c);
    c
}

/// `cfg` with `f` applied.
fn with_base(cfg: &RetentionConfig, f: impl FnOnce(&mut RetentionConfig)) -> RetentionConfig {
    let mut c = cfg.clone();
    f(&mut c);
    c
}

fn random_config(rng: &mut impl rand::Rng) -> (RetentionConfig, Vec<f64>) {
    let heads = rng.random_range(1..4);
    let gammas: Vec<f64> = (0..heads).map(|_| rng.random_range(0.5..1.0)).collect();
    let cfg = with_cfg(|c| {
        c.heads = heads;
        c.head_dim = rng.random_range(1..20);
        c.value_dim = rng.random_range(1..20);
        c.decays = RetentionDecays::PerHead(gammas.clone());
        c.chunk_size = 1;
    });
    (cfg, gammas)
}

#[test]
fn recurrent_parallel_and_chunkwise_equal_the_closed_form() {
    prop::check("retention_three_forms", 24, |rng| {
        let (cfg, gammas) = random_config(rng);
        let (h, d, dv) = (cfg.heads, cfg.head_dim, cfg.value_dim);
        let seq = rng.random_range(1..40);
        let q = data::normal_vec(rng, h * seq * d, 0.0, 1.0);
        let k = data::normal_vec(rng, h * seq * d, 0.0, 1.0);
        let v = data::normal_vec(rng, h * seq * dv, 0.0, 1.0);
        let expected = reference(&q, &k, &v, &gammas, seq, d, dv);
        let tol = rel(&expected, 1e-4);
        let s_expected = state_reference(&k, &v, &gammas, seq, d, dv);
        let s_tol = rel(&s_expected, 1e-4);

        let kernel = RetentionKernel::new(cfg.clone()).unwrap();
        // Parallel.
        let mut out = vec![0.0f32; h * seq * dv];
        kernel.parallel_into(&q, &k, &v, seq, &mut out).unwrap();
        assert_close(&out, &expected, tol);
        // Recurrent, token by token.
        let (rec, st) = recurrent(&kernel, (&q, &k, &v), h, seq, d, dv);
        assert_close(&rec, &expected, tol);
        assert_close(st.as_slice(), &s_expected, s_tol);
        assert_eq!(st.tokens(), seq as u64);
        // Chunkwise, every chunk size from 1 to past the sequence.
        for chunk in 1..=seq + 1 {
            let kernel = RetentionKernel::new(with_base(&cfg, |c| {
                c.chunk_size = chunk;
            }))
            .unwrap();
            let mut st = kernel.init_state();
            let mut out = vec![0.0f32; h * seq * dv];
            kernel
                .prefill_chunkwise_into(&mut st, &q, &k, &v, seq, &mut out)
                .unwrap();
            assert_close(&out, &expected, tol);
            assert_close(st.as_slice(), &s_expected, s_tol);
        }
    });
}

#[test]
fn chunkwise_continues_across_calls_and_into_decode() {
    prop::check("retention_continuation", 16, |rng| {
        let (mut cfg, gammas) = random_config(rng);
        cfg.chunk_size = rng.random_range(1..9);
        let (h, d, dv) = (cfg.heads, cfg.head_dim, cfg.value_dim);
        let seq = rng.random_range(2..30);
        let split = rng.random_range(1..seq);
        let q = data::normal_vec(rng, h * seq * d, 0.0, 1.0);
        let k = data::normal_vec(rng, h * seq * d, 0.0, 1.0);
        let v = data::normal_vec(rng, h * seq * dv, 0.0, 1.0);
        let expected = reference(&q, &k, &v, &gammas, seq, d, dv);
        let tol = rel(&expected, 1e-4);
        let kernel = RetentionKernel::new(cfg).unwrap();
        let part = |x: &[f32], dim: usize, r: std::ops::Range<usize>| -> Vec<f32> {
            (0..h)
                .flat_map(|hh| x[(hh * seq + r.start) * dim..(hh * seq + r.end) * dim].to_vec())
                .collect()
        };
        // Prefill [0, split) then the rest as a second chunkwise call ...
        let mut st = kernel.init_state();
        let mut a = vec![0.0f32; h * split * dv];
        kernel
            .prefill_chunkwise_into(
                &mut st,
                &part(&q, d, 0..split),
                &part(&k, d, 0..split),
                &part(&v, dv, 0..split),
                split,
                &mut a,
            )
            .unwrap();
        let mut st2 = st.clone();
        let rest = seq - split;
        let mut b = vec![0.0f32; h * rest * dv];
        kernel
            .prefill_chunkwise_into(
                &mut st,
                &part(&q, d, split..seq),
                &part(&k, d, split..seq),
                &part(&v, dv, split..seq),
                rest,
                &mut b,
            )
            .unwrap();
        // ... or by decode steps: both equal the matching rows of the closed form.
        let mut o = vec![0.0f32; h * dv];
        for t in split..seq {
            kernel
                .step_into(
                    &mut st2,
                    &token(&q, h, seq, d, t),
                    &token(&k, h, seq, d, t),
                    &token(&v, h, seq, dv, t),
                    &mut o,
                )
                .unwrap();
            for hh in 0..h {
                let exp = &expected[(hh * seq + t) * dv..(hh * seq + t + 1) * dv];
                assert_close(&o[hh * dv..(hh + 1) * dv], exp, tol);
                assert_close(
                    &b[(hh * rest + t - split) * dv..(hh * rest + t - split + 1) * dv],
                    exp,
                    tol,
                );
            }
        }
        for hh in 0..h {
            for t in 0..split {
                assert_close(
                    &a[(hh * split + t) * dv..(hh * split + t + 1) * dv],
                    &expected[(hh * seq + t) * dv..(hh * seq + t + 1) * dv],
                    tol,
                );
            }
        }
    });
}

#[test]
fn first_step_from_zero_is_scaled_qk_times_v() {
    prop::check("retention_first_step", 32, |rng| {
        let (cfg, _) = random_config(rng);
        let (h, d, dv) = (cfg.heads, cfg.head_dim, cfg.value_dim);
        let kernel = RetentionKernel::new(cfg).unwrap();
        let q = data::normal_vec(rng, h * d, 0.0, 1.0);
        let k = data::normal_vec(rng, h * d, 0.0, 1.0);
        let v = data::normal_vec(rng, h * dv, 0.0, 1.0);
        let mut o = vec![0.0f32; h * dv];
        let mut st = kernel.init_state();
        kernel.step_into(&mut st, &q, &k, &v, &mut o).unwrap();
        let mut expected = vec![0.0f64; h * dv];
        for hh in 0..h {
            let qk: f64 = (0..d)
                .map(|i| f64::from(q[hh * d + i]) * f64::from(k[hh * d + i]))
                .sum::<f64>()
                / (d as f64).sqrt();
            for j in 0..dv {
                expected[hh * dv + j] = qk * f64::from(v[hh * dv + j]);
            }
        }
        assert_close(&o, &expected, rel(&expected, 1e-5));
    });
}

#[test]
fn output_is_linear_in_v() {
    prop::check("retention_linear_in_v", 16, |rng| {
        let (mut cfg, _) = random_config(rng);
        cfg.chunk_size = rng.random_range(1..8);
        let (h, d, dv) = (cfg.heads, cfg.head_dim, cfg.value_dim);
        let seq = rng.random_range(1..25);
        let kernel = RetentionKernel::new(cfg).unwrap();
        let q = data::normal_vec(rng, h * seq * d, 0.0, 1.0);
        let k = data::normal_vec(rng, h * seq * d, 0.0, 1.0);
        let v1 = data::normal_vec(rng, h * seq * dv, 0.0, 1.0);
        let v2 = data::normal_vec(rng, h * seq * dv, 0.0, 1.0);
        let c: f32 = rng.random_range(-3.0..3.0);
        let vc: Vec<f32> = v1.iter().zip(&v2).map(|(a, b)| a + c * b).collect();
        let run = |v: &[f32]| {
            let mut st = kernel.init_state();
            let mut out = vec![0.0f32; h * seq * dv];
            kernel
                .prefill_chunkwise_into(&mut st, &q, &k, v, seq, &mut out)
                .unwrap();
            out
        };
        let (o1, o2, oc) = (run(&v1), run(&v2), run(&vc));
        let expected: Vec<f64> = o1
            .iter()
            .zip(&o2)
            .map(|(&a, &b)| f64::from(a) + f64::from(c) * f64::from(b))
            .collect();
        assert_close(&oc, &expected, rel(&expected, 1e-4));
    });
}

#[test]
fn state_decays_by_gamma_pow_n_under_zero_input() {
    let kernel = RetentionKernel::new(RetentionConfig::default()).unwrap();
    let mut rng = squish_testkit::rng(7);
    let mut st = kernel.init_state();
    let mut o = vec![0.0f32; 256];
    for _ in 0..5 {
        let q = data::normal_vec(&mut rng, 256, 0.0, 1.0);
        let k = data::normal_vec(&mut rng, 256, 0.0, 1.0);
        let v = data::normal_vec(&mut rng, 256, 0.0, 1.0);
        kernel.step_into(&mut st, &q, &k, &v, &mut o).unwrap();
    }
    let before = st.clone();
    let zero = vec![0.0f32; 256];
    let v = data::normal_vec(&mut rng, 256, 0.0, 1.0);
    let n = 50;
    for _ in 0..n {
        kernel.step_into(&mut st, &zero, &zero, &v, &mut o).unwrap();
        assert!(o.iter().all(|&x| x == 0.0), "zero query reads nothing");
    }
    for h in 0..4 {
        let g = 1.0 - 2f64.powi(-5 - h as i32);
        let expected: Vec<f64> = before
            .head(h)
            .unwrap()
            .iter()
            .map(|&s| f64::from(s) * g.powi(n))
            .collect();
        assert_close(st.head(h).unwrap(), &expected, Tol::new(1e-5, 1e-7));
    }
    assert_eq!(st.bytes(), before.bytes());
}

#[test]
fn state_bytes_are_constant_in_sequence_length() {
    let kernel = RetentionKernel::new(RetentionConfig::default()).unwrap();
    let mut st = kernel.init_state();
    let x = vec![0.25f32; 256];
    let mut o = vec![0.0f32; 256];
    let bytes = st.bytes();
    // 4 heads × 64 × 64 floats, plus under one cache line of alignment padding.
    assert!(
        (4 * 64 * 64 * 4..4 * 64 * 64 * 4 + 64).contains(&bytes),
        "{bytes}"
    );
    for _ in 0..1000 {
        kernel.step_into(&mut st, &x, &x, &x, &mut o).unwrap();
    }
    assert_eq!(st.bytes(), bytes);
    assert_eq!(st.tokens(), 1000);
    assert!(o.iter().all(|v| v.is_finite()));
}

#[test]
fn every_head_size_path_agrees_with_the_reference() {
    // Head dims up to 64 scale the keys into a small stack buffer, up to 512 into a larger one
    // (both then the dispatched fused kernel); wider heads take the portable fused loop.
    for d in [64, 65, 512, 600] {
        let gammas = vec![0.9, 0.99];
        let cfg = with_cfg(|c| {
            c.heads = 2;
            c.head_dim = d;
            c.value_dim = 5;
            c.decays = RetentionDecays::PerHead(gammas.clone());
            c.chunk_size = 2;
        });
        let (h, dv, seq) = (2, 5, 4);
        let mut rng = squish_testkit::rng(9);
        let q = data::normal_vec(&mut rng, h * seq * d, 0.0, 1.0);
        let k = data::normal_vec(&mut rng, h * seq * d, 0.0, 1.0);
        let v = data::normal_vec(&mut rng, h * seq * dv, 0.0, 1.0);
        let expected = reference(&q, &k, &v, &gammas, seq, d, dv);
        let kernel = RetentionKernel::new(cfg).unwrap();
        let (rec, st) = recurrent(&kernel, (&q, &k, &v), h, seq, d, dv);
        assert_close(&rec, &expected, rel(&expected, 1e-4));
        let s_expected = state_reference(&k, &v, &gammas, seq, d, dv);
        assert_close(st.as_slice(), &s_expected, rel(&s_expected, 1e-4));
    }
}

#[test]
fn heads_step_independently_whatever_the_sweep_order() {
    // `step_into` sweeps the heads forwards on even steps and backwards on odd ones (so a step
    // starts on the head still in cache): every head's outputs and state must be bit for bit
    // those of a one-head kernel with its decay, on odd and even steps alike.
    let (h, d, dv, steps) = (4, 64, 64, 7);
    let gammas = vec![0.9, 0.95, 0.99, 1.0];
    let cfg = with_cfg(|c| c.decays = RetentionDecays::PerHead(gammas.clone()));
    let kernel = RetentionKernel::new(cfg).unwrap();
    let mut rng = squish_testkit::rng(21);
    let q = data::normal_vec(&mut rng, steps * h * d, 0.0, 1.0);
    let k = data::normal_vec(&mut rng, steps * h * d, 0.0, 1.0);
    let v = data::normal_vec(&mut rng, steps * h * dv, 0.0, 1.0);
    let mut state = kernel.init_state();
    let mut singles: Vec<(RetentionKernel, RetentionState)> = gammas
        .iter()
        .map(|&g| {
            let k1 = RetentionKernel::new(with_cfg(|c| {
                c.heads = 1;
                c.decays = RetentionDecays::PerHead(vec![g]);
            }))
            .unwrap();
            let s1 = k1.init_state();
            (k1, s1)
        })
        .collect();
    let (mut o, mut o1) = (vec![0.0; h * dv], vec![0.0; dv]);
    for t in 0..steps {
        let (qt, kt) = (&q[t * h * d..][..h * d], &k[t * h * d..][..h * d]);
        let vt = &v[t * h * dv..][..h * dv];
        kernel.step_into(&mut state, qt, kt, vt, &mut o).unwrap();
        for (i, (k1, s1)) in singles.iter_mut().enumerate() {
            let (qi, ki, vi) = (&qt[i * d..][..d], &kt[i * d..][..d], &vt[i * dv..][..dv]);
            k1.step_into(s1, qi, ki, vi, &mut o1).unwrap();
            assert_eq!(o[i * dv..][..dv], o1[..], "step {t}, head {i}: output");
            assert_eq!(
                state.head(i).unwrap(),
                s1.as_slice(),
                "step {t}, head {i}: state"
            );
        }
    }
}
