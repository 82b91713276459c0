//! Claim `kv_compress` (seed: "KV cache memory (INT8+prune) 2× reduction"): bytes held by
//! `KvCompressor` against f16, with the reconstruction and attention-output error, at 8/4/2
//! bits, per-channel (KIVI) against per-token keys, with and without eviction.
//!
//! Data:
//! - real: the SmolLM2-135M K/V/Q captures in `shared/data/smollm2-kv/` (texts 3, 12, 17, 33
//!   of 36–175 tokens × layers 0, 1, 8, 15, 22, 29; `--quick`: texts 12, 33 × layers 1, 15,
//!   29), 3 KV heads of 64 channels, 9 query heads (GQA, query head h reads KV head h / 3);
//! - generated: 8 heads × 128 tokens × 64 channels of N(0, 1) keys with two channels at 20×
//!   scale and a per-channel offset (`squish_testkit::data::kv_with_outliers`), N(0, 1) values
//!   and 8 N(0, 1) query heads (one per KV head), seeded.
//!
//! Compressor: groups of 32 (tokens per key group, channels per value group), residual window
//! 0 (everything past the last whole group of 32 tokens, fewer than 32, stays f32; KIVI's
//! R = 128 would keep these short captures entirely in f32). Bytes are `bytes_held()`
//! (codes + scales + zero-points + f32 tail + kept positions + the lengths and configuration
//! it keeps as metadata), against f16 keys and values
//! (`2 * heads * tokens * head_dim * 2`).
//!
//! Errors: relative Frobenius error of the reconstructed keys and values over all tokens
//! (evicted tokens count as zeros: they are lost), and the relative error of the attention
//! output `softmax(q kᵀ / 8) v` (causal) of the real queries at the last quarter of positions
//! (decode-like queries that see the whole compressed cache, at least one per capture), against
//! the exact f32 attention. With eviction, a query sees the kept tokens at or before its
//! position. Eviction budgets are half the tokens per head: StreamingLLM (4 sinks + recent),
//! H2O (a quarter of the tokens as the recent window, the rest by accumulated attention of the
//! exact prefill, which is what H2O accumulates) and key norm (lowest norms), applied to the
//! whole capture at once; and StreamingLLM during decode (`streaming_llm_decode`): the first
//! half compressed, the rest appended token by token with `KvCompressor::evict` after each,
//! which keeps the same tokens but never re-quantises them (their key groups were formed
//! before the eviction, over tokens since evicted).
//!
//! The seed's own approach is measured too: one symmetric INT8 scale per tensor (bytes: one per
//! value + one scale). `ratio_vs_f16_quantized_tokens` leaves out the f32 tail (and kept
//! positions): the steady-state ratio of a long cache.

use ndarray::{Array3, s};
use serde_json::{Value, json};
use squish_core::quant::{GroupAxis, QuantBits};
use squish_kv::kv_compress::{
    Budget, CompressedKv, Eviction, EvictionPolicy, KvCompressor, KvCompressorConfig,
};
use squish_testkit::data;

use crate::{Measured, Opts};

const D: usize = 64;
const GROUP: usize = 32;

/// One capture: keys and values `[kv_heads, n, D]`, queries `[q_heads, n, D]`.
struct Capture {
    name: String,
    kv_heads: usize,
    q_heads: usize,
    n: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    q: Vec<f32>,
}

fn real_captures(quick: bool) -> Vec<Capture> {
    let dir = squish_testkit::shared_dir()
        .expect("shared/ (with smollm2-kv) must lie beside the checkout")
        .join("data/smollm2-kv");
    let (texts, layers): (&[u32], &[u32]) = if quick {
        (&[12, 33], &[1, 15, 29])
    } else {
        (&[3, 12, 17, 33], &[0, 1, 8, 15, 22, 29])
    };
    let mut out = Vec::new();
    for &t in texts {
        for &l in layers {
            let read = |x: &str| {
                squish_testkit::npy::read::<f32>(dir.join(format!("t{t:02}_L{l:02}_{x}.npy")))
                    .expect("readable capture")
            };
            let (k, v, q) = (read("k"), read("v"), read("q"));
            assert_eq!(k.shape[2], D);
            out.push(Capture {
                name: format!("t{t:02}_L{l:02}"),
                kv_heads: k.shape[0],
                q_heads: q.shape[0],
                n: k.shape[1],
                k: k.data,
                v: v.data,
                q: q.data,
            });
        }
    }
    out
}

fn generated_capture() -> Capture {
    let mut rng = squish_testkit::rng(0x6b76);
    let (heads, n) = (8, 128);
    let k = data::kv_with_outliers(
        &mut rng,
        &data::KvSpec {
            heads,
            seq_len: n,
            head_dim: D,
            outlier_channels: vec![7, 45],
            outlier_scale: 20.0,
        },
    );
    let v = data::normal_vec(&mut rng, heads * n * D, 0.0, 1.0);
    let q = data::normal_vec(&mut rng, heads * n * D, 0.0, 1.0);
    Capture {
        name: "generated".into(),
        kv_heads: heads,
        q_heads: heads,
        n,
        k,
        v,
        q,
    }
}

/// Causal attention of query head `qh` at position `i` over the tokens `idx` (ascending
/// positions, `pos[j]` the position of row `j` of `k`/`v`), accumulated in f64 into `out`.
fn attend(q: &[f32], k: &[f32], v: &[f32], rows: &[(usize, usize)], out: &mut [f64; D]) {
    // rows: (row in k/v, position); all visible.
    let mut logits: Vec<f64> = rows
        .iter()
        .map(|&(r, _)| {
            let kr = &k[r * D..(r + 1) * D];
            q.iter()
                .zip(kr)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>()
                / 8.0
        })
        .collect();
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut z = 0.0;
    for l in &mut logits {
        *l = (*l - m).exp();
        z += *l;
    }
    out.fill(0.0);
    for (&(r, _), &p) in rows.iter().zip(&logits) {
        for (o, &x) in out.iter_mut().zip(&v[r * D..(r + 1) * D]) {
            *o += p / z * f64::from(x);
        }
    }
}

/// Sums of squared errors and of squared references.
#[derive(Default, Clone, Copy)]
struct Err2 {
    num: f64,
    den: f64,
}

impl Err2 {
    fn add(&mut self, a: f64, b: f64) {
        self.num += (a - b) * (a - b);
        self.den += b * b;
    }
    fn rel(self) -> f64 {
        (self.num / self.den).sqrt()
    }
}

#[derive(Default, Clone, Copy)]
struct Tally {
    bytes: usize,
    f16_bytes: usize,
    /// Bytes of the quantised tokens alone (codes, scales, zero-points) and their f16 size.
    quantized_bytes: usize,
    quantized_f16_bytes: usize,
    k: Err2,
    v: Err2,
    attn: Err2,
}

impl Tally {
    fn json(&self) -> Value {
        json!({
            "bytes_held": self.bytes,
            "f16_bytes": self.f16_bytes,
            "ratio_vs_f16": self.f16_bytes as f64 / self.bytes as f64,
            "ratio_vs_f16_quantized_tokens": self.quantized_f16_bytes as f64 / self.quantized_bytes as f64,
            "key_rel_err": self.k.rel(),
            "value_rel_err": self.v.rel(),
            "attn_rel_err": self.attn.rel(),
        })
    }
}

/// Exact H2O scores: accumulated causal attention per (KV head, token) over all queries of the
/// head's group.
fn h2o_scores(c: &Capture) -> Vec<f32> {
    let n = c.n;
    let group = c.q_heads / c.kv_heads;
    let mut scores = vec![0.0f64; c.kv_heads * n];
    for qh in 0..c.q_heads {
        let kh = qh / group;
        let k = &c.k[kh * n * D..(kh + 1) * n * D];
        for i in 0..n {
            let q = &c.q[(qh * n + i) * D..(qh * n + i + 1) * D];
            let logits: Vec<f64> = (0..=i)
                .map(|j| {
                    q.iter()
                        .zip(&k[j * D..(j + 1) * D])
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum::<f64>()
                        / 8.0
                })
                .collect();
            let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
            for (j, l) in logits.iter().enumerate() {
                scores[kh * n + j] += (l - m).exp() / z;
            }
        }
    }
    scores.into_iter().map(|s| s as f32).collect()
}

/// How the cache is built.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    /// One `compress_into` of the whole capture, eviction (if any) applied to it.
    Prefill,
    /// `compress_into` of the first half, then the rest appended token by token, each append
    /// followed by `evict` (decode-time eviction).
    Decode,
}

/// Compresses one capture and adds its bytes and errors to `t`.
fn run(
    c: &Capture,
    cfg: &KvCompressorConfig,
    ev: Option<&Eviction<'_>>,
    build: Build,
    t: &mut Tally,
) {
    let (h, n) = (c.kv_heads, c.n);
    let ka = Array3::from_shape_vec((h, n, D), c.k.clone()).expect("shape");
    let va = Array3::from_shape_vec((h, n, D), c.v.clone()).expect("shape");
    let mut comp = KvCompressor::new(cfg.clone()).expect("valid config");
    let mut kv = CompressedKv::new();
    match (build, ev) {
        (Build::Decode, Some(ev)) => {
            let half = n / 2;
            let (kp, vp) = (ka.slice(s![.., ..half, ..]), va.slice(s![.., ..half, ..]));
            comp.compress_into(&kp, &vp, None, &mut kv)
                .expect("finite data");
            comp.evict(ev, &mut kv).expect("valid eviction");
            for i in half..n {
                let (kt, vt) = (ka.slice(s![.., i, ..]), va.slice(s![.., i, ..]));
                comp.append(&kt, &vt, &mut kv).expect("finite data");
                comp.evict(ev, &mut kv).expect("valid eviction");
            }
        }
        _ => comp
            .compress_into(&ka, &va, ev, &mut kv)
            .expect("finite data"),
    }
    t.bytes += kv.bytes_held();
    t.f16_bytes += 2 * h * n * D * 2;
    let mut tail = 0;
    for kh in 0..h {
        let (len, q) = (kv.head_len(kh), kv.quantized_len(kh));
        tail += 2 * (len - q) * D * 4 + kv.positions(kh).map_or(0, |p| 4 * p.len());
        t.quantized_f16_bytes += 2 * q * D * 2;
    }
    t.quantized_bytes += kv.payload_bytes() - tail;
    // Reconstruct each head; rows with their positions.
    let mut heads = Vec::new();
    for kh in 0..h {
        let len = kv.head_len(kh);
        let (mut kd, mut vd) = (vec![0.0; len * D], vec![0.0; len * D]);
        kv.decompress_head_into(kh, &mut kd, &mut vd)
            .expect("sized buffers");
        let pos: Vec<usize> = match kv.positions(kh) {
            Some(p) => p.iter().map(|&p| p as usize).collect(),
            None => (0..len).collect(),
        };
        // Dense reconstruction with evicted tokens as zeros.
        let (mut kf, mut vf) = (vec![0.0f32; n * D], vec![0.0f32; n * D]);
        for (r, &p) in pos.iter().enumerate() {
            kf[p * D..(p + 1) * D].copy_from_slice(&kd[r * D..(r + 1) * D]);
            vf[p * D..(p + 1) * D].copy_from_slice(&vd[r * D..(r + 1) * D]);
        }
        let base = kh * n * D;
        for i in 0..n * D {
            t.k.add(f64::from(kf[i]), f64::from(c.k[base + i]));
            t.v.add(f64::from(vf[i]), f64::from(c.v[base + i]));
        }
        heads.push((kd, vd, pos));
    }
    let group = c.q_heads / h;
    let first = n - (n / 4).max(1);
    let (mut exact, mut approx) = ([0.0f64; D], [0.0f64; D]);
    for qh in 0..c.q_heads {
        let kh = qh / group;
        let (kd, vd, pos) = &heads[kh];
        let (k, v) = (
            &c.k[kh * n * D..(kh + 1) * n * D],
            &c.v[kh * n * D..(kh + 1) * n * D],
        );
        for i in first..n {
            let q = &c.q[(qh * n + i) * D..(qh * n + i + 1) * D];
            let all: Vec<(usize, usize)> = (0..=i).map(|j| (j, j)).collect();
            attend(q, k, v, &all, &mut exact);
            let kept: Vec<(usize, usize)> = pos
                .iter()
                .enumerate()
                .filter(|&(_, &p)| p <= i)
                .map(|(r, &p)| (r, p))
                .collect();
            if kept.is_empty() {
                approx.fill(0.0);
            } else {
                attend(q, kd, vd, &kept, &mut approx);
            }
            for (&a, &b) in approx.iter().zip(&exact) {
                t.attn.add(a, b);
            }
        }
    }
}

/// The seed's scheme: one symmetric INT8 scale per tensor (keys, values), bytes n + 4 each.
fn seed_int8(c: &Capture, t: &mut Tally) {
    for (x, e) in [(&c.k, &mut t.k), (&c.v, &mut t.v)] {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = amax / 127.0;
        for &v in x.iter() {
            let code = (v / s).round().clamp(-127.0, 127.0);
            e.add(f64::from(code * s), f64::from(v));
        }
        t.bytes += x.len() + 4;
        t.quantized_bytes += x.len() + 4;
    }
    t.f16_bytes += 2 * c.kv_heads * c.n * D * 2;
    t.quantized_f16_bytes += 2 * c.kv_heads * c.n * D * 2;
}

fn bits_name(b: QuantBits) -> String {
    format!("{}bit", b.bits())
}

pub(super) fn measure(opts: Opts) -> Measured {
    let real = real_captures(opts.quick);
    let generated = vec![generated_capture()];
    let mut details = serde_json::Map::new();
    let mut headline = Vec::new();
    for (set, caps) in [("smollm2", &real), ("generated_outliers", &generated)] {
        let scores: Vec<Vec<f32>> = caps.iter().map(h2o_scores).collect();
        let mut rows = serde_json::Map::new();
        let mut seed = Tally::default();
        for c in caps.iter() {
            seed_int8(c, &mut seed);
        }
        let mut seed_json = seed.json();
        seed_json["attn_rel_err"] = Value::Null;
        rows.insert("seed_int8_per_tensor".into(), seed_json);
        for bits in [QuantBits::B8, QuantBits::B4, QuantBits::B2] {
            for axis in [GroupAxis::AlongColumn, GroupAxis::AlongRow] {
                let mut cfg = KvCompressorConfig::new(bits, GROUP, 0);
                cfg.key_axis = axis;
                let mut t = Tally::default();
                for c in caps.iter() {
                    run(c, &cfg, None, Build::Prefill, &mut t);
                }
                let keys = if axis == GroupAxis::AlongColumn {
                    "per_channel_keys"
                } else {
                    "per_token_keys"
                };
                rows.insert(format!("{},{keys}", bits_name(bits)), t.json());
                if axis == GroupAxis::AlongColumn {
                    headline.push((set, bits_name(bits), "", t));
                } else if bits == QuantBits::B4 {
                    headline.push((set, bits_name(bits), "per-token keys", t));
                }
            }
            for policy in ["streaming_llm", "h2o", "key_norm"] {
                let cfg = KvCompressorConfig::new(bits, GROUP, 0);
                let mut t = Tally::default();
                for (c, sc) in caps.iter().zip(&scores) {
                    let keep = c.n / 2;
                    let p = match policy {
                        "streaming_llm" => EvictionPolicy::StreamingLlm { sinks: 4 },
                        "h2o" => EvictionPolicy::H2o {
                            recent: c.n / 4,
                            scores: sc,
                        },
                        _ => EvictionPolicy::KeyNorm,
                    };
                    let ev = Eviction::new(p, Budget::Equal(keep));
                    run(c, &cfg, Some(&ev), Build::Prefill, &mut t);
                }
                rows.insert(format!("{},evict50%_{policy}", bits_name(bits)), t.json());
                if bits == QuantBits::B4 {
                    headline.push((set, bits_name(bits), policy, t));
                }
            }
            // StreamingLLM during decode: the window rolls from the middle of the capture on,
            // evicting from the compressed cache (no re-quantisation) after every token.
            let cfg = KvCompressorConfig::new(bits, GROUP, 0);
            let mut t = Tally::default();
            for c in caps.iter() {
                let p = EvictionPolicy::StreamingLlm { sinks: 4 };
                let ev = Eviction::new(p, Budget::Equal(c.n / 2));
                run(c, &cfg, Some(&ev), Build::Decode, &mut t);
            }
            rows.insert(
                format!("{},evict50%_streaming_llm_decode", bits_name(bits)),
                t.json(),
            );
            if bits == QuantBits::B4 {
                headline.push((set, bits_name(bits), "streaming_llm decode", t));
            }
        }
        details.insert(set.into(), Value::Object(rows));
    }
    let part = |set: &str| -> String {
        headline
            .iter()
            .filter(|h| h.0 == set)
            .map(|(_, b, what, t)| {
                let label = if what.is_empty() {
                    b.clone()
                } else {
                    format!("{b} {what}")
                };
                format!(
                    "{label} {:.1}x / attn err {:.1}%",
                    t.f16_bytes as f64 / t.bytes as f64,
                    100.0 * t.attn.rel()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let seed_part = |set: &str| -> String {
        let Some(Value::Object(rows)) = details.get(set) else {
            return String::new();
        };
        let f = |row: &str, key: &str| rows[row][key].as_f64().unwrap_or(f64::NAN) * 100.0;
        format!(
            "key error {:.2}% (seed's per-tensor INT8, 2.0x) vs {:.2}% (ours, 8-bit)",
            f("seed_int8_per_tensor", "key_rel_err"),
            f("8bit,per_channel_keys", "key_rel_err")
        )
    };
    let summary = format!(
        "bytes held vs f16 / attention-output error, per-channel keys, groups of 32, 50% budget \
         for eviction. Real SmolLM2 K/V: {}; {}. Generated 20x-outlier keys: {}",
        part("smollm2"),
        seed_part("smollm2"),
        part("generated_outliers")
    );
    details.insert(
        "setup".into(),
        json!({
            "group_size": GROUP,
            "value_group_size": GROUP,
            "residual": 0,
            "real_captures": real.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
            "attention_queries": "last quarter of positions, causal, scale 1/8",
            "eviction_budget": "half the tokens per head",
        }),
    );
    Measured {
        summary,
        details: Value::Object(details),
    }
}
