//! `flash_prefill`: the seed claims `O(chunk)` memory for chunked causal attention (TTFT).
//!
//! Measured with [`FlashPrefillKernel`]:
//! - the scratch it holds (measured from its buffers after a real prefill at each length) next to
//!   the `S × S` f32 score matrix a naive attention materialises per head, for several `S`;
//! - its accuracy on real activations: the SmolLM2-135M q/k/v of `shared/data/smollm2-kv/`
//!   (9 query heads over 3 KV heads, head_dim 64, scale 1/8, causal, 4 texts × 6 layers), as the
//!   largest absolute output error against a float64 naive attention, for one full prefill and
//!   for chunked prefill (chunks of 16 tokens continuing over the cached prefix).

use serde_json::{Value, json};
use squish_attn::{AttnShape, FlashPrefillConfig, FlashPrefillKernel};
use squish_testkit::reference::attention_f64;

use super::{Measured, Opts};

/// SmolLM2-135M attention: 9 query heads, 3 KV heads, head_dim 64, scale 1/8.
fn smollm2_config() -> FlashPrefillConfig {
    let mut cfg = FlashPrefillConfig::new(9, 3, 64);
    cfg.scale = 0.125;
    cfg
}

/// Naive causal attention in float64 (the oracle: testkit's reference per query row over the
/// keys it sees), `[heads, seq, d]` layouts.
fn reference(cfg: &FlashPrefillConfig, seq: usize, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let (h, d) = (cfg.n_heads, cfg.head_dim);
    let group = h / cfg.n_kv_heads;
    let mut out = Vec::with_capacity(h * seq * d);
    for head in 0..h {
        let g = head / group;
        let (kh, vh) = (&k[g * seq * d..][..seq * d], &v[g * seq * d..][..seq * d]);
        for i in 0..seq {
            let qi = &q[(head * seq + i) * d..][..d];
            let seen = (i + 1) * d;
            out.extend(attention_f64(qi, &kh[..seen], &vh[..seen], cfg.scale));
        }
    }
    out
}

/// Rows `[a, b)` of every head of a `[heads, len, d]` tensor.
fn rows(x: &[f32], heads: usize, len: usize, d: usize, a: usize, b: usize) -> Vec<f32> {
    (0..heads)
        .flat_map(|h| x[(h * len + a) * d..(h * len + b) * d].iter().copied())
        .collect()
}

fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
}

/// Full and chunked prefill of one real (q, k, v) triple: (max error full, max error chunked,
/// largest |output| of the reference for scale).
fn real_errors(
    kernel: &mut FlashPrefillKernel,
    seq: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    chunk: usize,
) -> (f64, f64, f64) {
    let cfg = kernel.config().clone();
    let (h, hkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let want = reference(&cfg, seq, q, k, v);
    let (mut out, mut lse) = (vec![0.0; h * seq * d], vec![0.0; h * seq]);
    kernel
        .attend_into(AttnShape::prefill(seq), q, k, v, &mut out, &mut lse)
        .expect("real activations are valid");
    let full = max_abs_err(&out, &want);
    // Chunked: each chunk attends to the cache [0, end) holding the prefix and itself.
    let mut chunked = vec![0.0f32; h * seq * d];
    for p in (0..seq).step_by(chunk) {
        let end = (p + chunk).min(seq);
        let c = end - p;
        let (mut o, mut l) = (vec![0.0; h * c * d], vec![0.0; h * c]);
        kernel
            .attend_into(
                AttnShape::continuation(p, c),
                &rows(q, h, seq, d, p, end),
                &rows(k, hkv, seq, d, 0, end),
                &rows(v, hkv, seq, d, 0, end),
                &mut o,
                &mut l,
            )
            .expect("real activations are valid");
        for head in 0..h {
            chunked[(head * seq + p) * d..(head * seq + end) * d]
                .copy_from_slice(&o[head * c * d..(head + 1) * c * d]);
        }
    }
    let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    (full, max_abs_err(&chunked, &want), scale)
}

pub(super) fn measure(opts: Opts) -> Measured {
    // Memory: one KV head, head_dim 64, 64 × 64 tiles, real prefills at each length.
    let mut cfg = FlashPrefillConfig::new(1, 1, 64);
    cfg.q_tile = 64;
    cfg.kv_tile = 64;
    let mut kernel = FlashPrefillKernel::new(cfg).expect("valid config");
    let lengths: &[usize] = if opts.quick {
        &[256, 1024]
    } else {
        &[256, 1024, 4096]
    };
    let mut rng = benches::input_rng();
    let mut memory = Vec::new();
    for &seq in lengths {
        let n = seq * 64;
        let q = squish_testkit::data::normal_vec(&mut rng, n, 0.0, 1.0);
        let k = squish_testkit::data::normal_vec(&mut rng, n, 0.0, 1.0);
        let v = squish_testkit::data::normal_vec(&mut rng, n, 0.0, 1.0);
        let (mut out, mut lse) = (vec![0.0; n], vec![0.0; seq]);
        kernel
            .attend_into(AttnShape::prefill(seq), &q, &k, &v, &mut out, &mut lse)
            .expect("valid input");
        let scratch = kernel.scratch_bytes();
        let naive = seq * seq * size_of::<f32>();
        memory.push(json!({
            "seq": seq,
            "scratch_bytes": scratch,
            "naive_scores_bytes_per_head": naive,
            "ratio": naive as f64 / scratch as f64,
        }));
    }
    // Lengths too long to run here: the scratch is a function of the config only.
    for seq in [16_384usize, 131_072] {
        let naive = seq * seq * size_of::<f32>();
        memory.push(json!({
            "seq": seq,
            "scratch_bytes": kernel.scratch_bytes(),
            "naive_scores_bytes_per_head": naive,
            "ratio": naive as f64 / kernel.scratch_bytes() as f64,
            "not_run": true,
        }));
    }
    let scratch = kernel.scratch_bytes();

    // Accuracy on real SmolLM2 activations.
    let mut real = Vec::new();
    let (mut worst_full, mut worst_chunked) = (0.0f64, 0.0f64);
    if let Some(dir) = squish_testkit::shared_dir() {
        let dir = dir.join("data/smollm2-kv");
        let mut kernel = FlashPrefillKernel::new(smollm2_config()).expect("valid config");
        let texts: &[&str] = if opts.quick {
            &["t03", "t33"]
        } else {
            &["t03", "t12", "t17", "t33"]
        };
        for text in texts {
            for layer in ["L00", "L01", "L08", "L15", "L22", "L29"] {
                let read = |t: &str| {
                    squish_testkit::npy::read::<f32>(dir.join(format!("{text}_{layer}_{t}.npy")))
                        .expect("smollm2-kv tensor")
                };
                let (q, k, v) = (read("q"), read("k"), read("v"));
                let seq = q.shape[1];
                let (full, chunked, max_out) =
                    real_errors(&mut kernel, seq, &q.data, &k.data, &v.data, 16);
                worst_full = worst_full.max(full);
                worst_chunked = worst_chunked.max(chunked);
                real.push(json!({
                    "file": format!("{text}_{layer}"),
                    "seq": seq,
                    "max_abs_err_full": full,
                    "max_abs_err_chunked16": chunked,
                    "max_abs_out": max_out,
                }));
            }
        }
    }
    let real_summary = if real.is_empty() {
        "real SmolLM2 data not found".to_string()
    } else {
        format!(
            "max |err| vs f64 on real SmolLM2 q/k/v ({} tensors, GQA 9/3, d=64): {:.1e} full, {:.1e} chunked by 16",
            real.len(),
            worst_full,
            worst_chunked
        )
    };
    let longest: &Value = &memory[memory.len() - 1];
    let summary = format!(
        "scratch {} KiB for every S (S×S scores: {} KiB at S=256, {} MiB at S=4096, {} GiB at S={}); {}",
        scratch / 1024,
        256 * 256 * 4 / 1024,
        4096 * 4096 * 4 / (1024 * 1024),
        longest["naive_scores_bytes_per_head"].as_u64().unwrap_or(0) / (1 << 30),
        longest["seq"],
        real_summary
    );
    Measured {
        summary,
        details: json!({
            "config": {"head_dim": 64, "q_tile": 64, "kv_tile": 64},
            "memory": memory,
            "real_smollm2": real,
            "max_abs_err_full": worst_full,
            "max_abs_err_chunked16": worst_chunked,
        }),
    }
}
