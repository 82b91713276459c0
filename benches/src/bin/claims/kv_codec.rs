//! Claim `codec_kv` (seed: "KV cache size (codec): 256× ratio", a k-means++ codebook). The
//! seed's 256× is `64 channels × 4 bytes (f32) / 1 byte of code` and leaves out the codebook.
//! Measured here on real SmolLM2-135M keys (`shared/data/smollm2-kv`: texts 3, 12, 17, 33 of
//! 36–175 tokens, layers 0, 1, 8, 15, 22, 29, 3 KV heads × 64 channels) with `KvCodec`:
//! - bytes held from the buffers (codes + `f32` codebooks) against f16 (and f32) keys;
//! - relative key error `‖K - K̂‖_F / ‖K‖_F`;
//! - the attention error through the ADC path: scores of the real queries (9 query heads,
//!   GQA head `h / 3`, scale 1/8, causal) read from the codes via lookup tables, compared with
//!   exact scores (relative L2 over all scores) and through softmax with the exact values
//!   (relative L2 of the attention outputs), for the last query positions of each text.
//!
//! Two ways to amortise a codebook:
//! - **in-sample**: one shared codebook per (text, layer), fitted on that sequence's keys and
//!   counted in full against it (what a per-request codec costs);
//! - **held out**: one codebook per layer fitted on text 33 (525 key vectors) and used for
//!   texts 3, 12, 17, its bytes amortised over those three sequences. `K = 256` needs at least
//!   256 training vectors, so it appears only here.
//!
//! Against packed INT4 (squish-core grouped asymmetric 4-bit, per-channel keys as in KIVI, one
//! group of the whole sequence per channel: the fewest scale bytes) on the same texts, at the
//! same code bytes: PQ with M = 32 sub-spaces of 2 channels and a `u8` code each holds 32 B
//! per 64-channel key, as INT4 does (checked); the totals then differ only by INT4's scales
//! and zero-points against PQ's codebook, both counted and reported as bits per value.

use ndarray::{Array3, s};
use serde_json::{Value, json};
use squish_core::quant::{self, GroupAxis, GroupedQuantConfig, QuantBits};
use squish_kv::{CodebookSharing, KvCodec, KvCodecConfig, PqCodes, ScoreTable};
use squish_testkit::npy;

use super::{Measured, Opts};

const D: usize = 64;
const KV: usize = 3;
const QH: usize = 9;
const SCALE: f64 = 0.125;
const TEXTS: [u32; 4] = [3, 12, 17, 33];
const CALIB: u32 = 33;
const SEED: u64 = 0x00c0_dec0;

/// One text × layer.
struct Tensors {
    text: u32,
    seq: usize,
    q: Vec<f32>,
    k: Array3<f32>,
    v: Vec<f32>,
}

fn load(opts: Opts) -> Option<Vec<(usize, Vec<Tensors>)>> {
    let dir = squish_testkit::shared_dir()?.join("data/smollm2-kv");
    let layers: &[usize] = if opts.quick {
        &[1, 15, 29]
    } else {
        &[0, 1, 8, 15, 22, 29]
    };
    let mut out = Vec::new();
    for &layer in layers {
        let mut per = Vec::new();
        for t in TEXTS {
            let read = |x: &str| npy::read::<f32>(dir.join(format!("t{t:02}_L{layer:02}_{x}.npy")));
            let (Ok(q), Ok(k), Ok(v)) = (read("q"), read("k"), read("v")) else {
                return None;
            };
            let seq = k.shape[1];
            per.push(Tensors {
                text: t,
                seq,
                q: q.data,
                k: Array3::from_shape_vec((KV, seq, D), k.data).ok()?,
                v: v.data,
            });
        }
        out.push((layer, per));
    }
    Some(out)
}

/// Error and bytes accumulated over (text, layer) pairs.
#[derive(Default, Clone)]
struct Acc {
    bytes: f64,
    code_bytes: f64,
    f16_bytes: f64,
    key_err2: f64,
    key_norm2: f64,
    score_err2: f64,
    score_norm2: f64,
    out_err2: f64,
    out_norm2: f64,
    queries: usize,
}

impl Acc {
    fn key_err(&self) -> f64 {
        (self.key_err2 / self.key_norm2).sqrt()
    }
    fn score_err(&self) -> f64 {
        (self.score_err2 / self.score_norm2).sqrt()
    }
    fn out_err(&self) -> f64 {
        (self.out_err2 / self.out_norm2).sqrt()
    }
    fn ratio(&self) -> f64 {
        self.f16_bytes / self.bytes
    }
    /// Bits held per key value, everything counted (f16 keys: 16).
    fn bits(&self) -> f64 {
        16.0 * self.bytes / self.f16_bytes
    }
    /// Bits of codes alone per key value.
    fn code_bits(&self) -> f64 {
        16.0 * self.code_bytes / self.f16_bytes
    }
    fn json(&self) -> Value {
        json!({
            "bytes_held": self.bytes,
            "code_bytes": self.code_bytes,
            "f16_bytes": self.f16_bytes,
            "ratio_vs_f16": self.ratio(),
            "ratio_vs_f32": 2.0 * self.ratio(),
            "codes_only_ratio_vs_f16": self.f16_bytes / self.code_bytes,
            "bits_per_value": self.bits(),
            "code_bits_per_value": self.code_bits(),
            "key_rel_err": self.key_err(),
            "score_rel_err": self.score_err(),
            "attn_output_rel_err": self.out_err(),
            "queries": self.queries,
        })
    }
}

/// Adds the key error of `recon` and the attention error of `scores_of(kv_head, q, out)` (raw
/// `q·k̂` for every key of the head) over the last `last` positions of `t`.
fn evaluate(
    t: &Tensors,
    recon: &[f32],
    last: usize,
    acc: &mut Acc,
    mut scores_of: impl FnMut(usize, &[f32], &mut [f32]),
) {
    let k = t.k.as_slice().expect("standard layout");
    for (&a, &b) in k.iter().zip(recon) {
        acc.key_err2 += (f64::from(a) - f64::from(b)).powi(2);
        acc.key_norm2 += f64::from(a).powi(2);
    }
    let seq = t.seq;
    let mut approx = vec![0.0f32; seq];
    for h in 0..QH {
        let kvh = h / KV;
        let kh = &k[kvh * seq * D..(kvh + 1) * seq * D];
        let vh = &t.v[kvh * seq * D..(kvh + 1) * seq * D];
        for pos in seq.saturating_sub(last)..seq {
            let q = &t.q[(h * seq + pos) * D..(h * seq + pos + 1) * D];
            scores_of(kvh, q, &mut approx);
            let n = pos + 1;
            let exact: Vec<f64> = kh
                .chunks_exact(D)
                .take(n)
                .map(|kk| {
                    SCALE
                        * kk.iter()
                            .zip(q)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                })
                .collect();
            let got: Vec<f64> = approx[..n].iter().map(|&x| SCALE * f64::from(x)).collect();
            for (&e, &g) in exact.iter().zip(&got) {
                acc.score_err2 += (g - e).powi(2);
                acc.score_norm2 += e * e;
            }
            let (oe, og) = (attend(&exact, vh), attend(&got, vh));
            for (&e, &g) in oe.iter().zip(&og) {
                acc.out_err2 += (g - e).powi(2);
                acc.out_norm2 += e * e;
            }
            acc.queries += 1;
        }
    }
    acc.f16_bytes += (KV * seq * D * 2) as f64;
}

/// softmax(logits) · V in f64.
fn attend(logits: &[f64], v: &[f32]) -> Vec<f64> {
    let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = logits.iter().map(|&z| (z - m).exp()).collect();
    let total: f64 = w.iter().sum();
    let mut o = vec![0.0; D];
    for (&wi, vi) in w.iter().zip(v.chunks_exact(D)) {
        for (oj, &x) in o.iter_mut().zip(vi) {
            *oj += wi / total * f64::from(x);
        }
    }
    o
}

fn codec_cfg(m: usize, k: usize) -> KvCodecConfig {
    let mut c = KvCodecConfig::default();
    (c.head_dim, c.subspaces, c.codebook_size) = (D, m, k);
    c.sharing = CodebookSharing::Shared;
    c
}

/// PQ on `t` with `codec`; `book_bytes` is the codebook share charged to this sequence.
fn eval_pq(codec: &KvCodec, t: &Tensors, book_bytes: f64, last: usize, acc: &mut Acc) {
    let codes: PqCodes = codec.encode_keys(&t.k).expect("valid keys");
    let recon = codec.decode_keys(&codes).expect("matching codes");
    let mut table = ScoreTable::new();
    evaluate(
        t,
        recon.as_slice().expect("standard layout"),
        last,
        acc,
        |h, q, out| {
            codec
                .score_table_into(h, q, &mut table)
                .expect("valid query");
            codec.scores_into(&table, &codes, h, out).expect("matching");
        },
    );
    acc.code_bytes += codes.codes().len() as f64;
    acc.bytes += codes.bytes_held() as f64 + book_bytes;
}

/// Packed INT4, per-channel keys (one group of `seq` tokens per channel and head).
fn eval_int4(t: &Tensors, last: usize, acc: &mut Acc) {
    let cfg = GroupedQuantConfig::new(QuantBits::B4, t.seq, GroupAxis::AlongColumn);
    let mut recon = vec![0.0f32; KV * t.seq * D];
    for h in 0..KV {
        let kh = t.k.slice(s![h, .., ..]);
        let q = quant::quantize_grouped(kh.as_slice().expect("contiguous"), t.seq, D, &cfg)
            .expect("finite keys");
        q.dequantize_into(&mut recon[h * t.seq * D..(h + 1) * t.seq * D]);
        // Its shape (rows, columns, group size, bits and axis) as four words, as `PqCodes`
        // counts its own.
        acc.bytes += (q.bytes_held() + 4 * size_of::<usize>()) as f64;
        acc.code_bytes += q.codes().len() as f64;
    }
    evaluate(t, &recon, last, acc, |h, q, out| {
        let kh = &recon[h * t.seq * D..(h + 1) * t.seq * D];
        for (o, kk) in out.iter_mut().zip(kh.chunks_exact(D)) {
            *o = squish_core::ops::dot(q, kk);
        }
    });
}

/// In-sample configurations (M, K): every text has >= 108 key vectors.
const IN_SAMPLE: [(usize, usize); 3] = [(1, 32), (16, 32), (32, 16)];
/// Held-out configurations (M, K), fitted on text 33.
const HELD_OUT: [(usize, usize); 3] = [(1, 32), (32, 16), (32, 256)];

pub(super) fn measure(opts: Opts) -> Measured {
    let Some(data) = load(opts) else {
        return Measured {
            summary: "not measured: shared/data/smollm2-kv is missing".into(),
            details: json!({}),
        };
    };
    let last = if opts.quick { 8 } else { 32 };
    let mut rng = squish_testkit::rng(SEED);
    let mut ins = vec![Acc::default(); IN_SAMPLE.len()];
    let mut held = vec![Acc::default(); HELD_OUT.len()];
    let mut iters_in = vec![Vec::new(); IN_SAMPLE.len()];
    let (mut int4_all, mut int4_held) = (Acc::default(), Acc::default());
    for (_, texts) in &data {
        for t in texts {
            for (i, &(m, k)) in IN_SAMPLE.iter().enumerate() {
                let codec = KvCodec::fit(codec_cfg(m, k), &t.k, &mut rng).expect("fit");
                iters_in[i].push(codec.lloyd_iterations().sum::<usize>() as f64 / m as f64);
                eval_pq(&codec, t, codec.bytes_held() as f64, last, &mut ins[i]);
            }
            eval_int4(t, last, &mut int4_all);
            if t.text != CALIB {
                eval_int4(t, last, &mut int4_held);
            }
        }
        let calib = texts
            .iter()
            .find(|t| t.text == CALIB)
            .expect("calibration text");
        let evals: Vec<&Tensors> = texts.iter().filter(|t| t.text != CALIB).collect();
        let eval_tokens: usize = evals.iter().map(|t| t.seq).sum();
        for (i, &(m, k)) in HELD_OUT.iter().enumerate() {
            let codec = KvCodec::fit(codec_cfg(m, k), &calib.k, &mut rng).expect("fit");
            for t in &evals {
                let share = codec.bytes_held() as f64 * t.seq as f64 / eval_tokens as f64;
                eval_pq(&codec, t, share, last, &mut held[i]);
            }
        }
    }
    let name = |(m, k): (usize, usize)| format!("M={m},K={k}");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let seed = &ins[0];
    let details = json!({
        "data": "SmolLM2-135M keys/queries/values, texts 3,12,17,33, 3 KV heads x 64; attention over the last positions of each text",
        "layers": data.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        "last_positions": last,
        "seed_256x": "64 ch x 4 B (f32) / 1 B code, codebook not counted",
        "in_sample_shared_codebook": IN_SAMPLE.iter().zip(&ins).zip(&iters_in).map(|((&c, a), it)| {
            let mut j = a.json();
            j["mean_lloyd_iterations_per_codebook"] = json!(mean(it));
            (name(c), j)
        }).collect::<serde_json::Map<_, _>>(),
        "held_out_codebook_text33": HELD_OUT.iter().zip(&held).map(|(&c, a)| (name(c), a.json())).collect::<serde_json::Map<_, _>>(),
        "int4_per_channel_packed": int4_all.json(),
        "int4_per_channel_packed_texts_3_12_17": int4_held.json(),
    });
    let fmt = |a: &Acc| {
        format!(
            "{:.2} bits/value ({:.1}x vs f16), key err {:.3}, attn-out err {:.3}",
            a.bits(),
            a.ratio(),
            a.key_err(),
            a.out_err()
        )
    };
    // The same code bytes as INT4 (4 bits per value, 32 B per 64-channel key): PQ with 32
    // sub-spaces of 2 channels and one u8 code each (K = 16 in-sample, 256 held out).
    for a in [&ins[2], &held[2], &int4_all] {
        assert!(
            (a.code_bits() - 4.0).abs() < 1e-9,
            "code bits {}",
            a.code_bits()
        );
    }
    let summary = format!(
        "SmolLM2 keys: seed codec M=1,K=32 {:.1}x vs f32 incl. codebook (256x only without it; {}). \
         At INT4's code bytes (4 bits/value): PQ M=32,K=16 in-sample {}; INT4 per-channel {}; \
         PQ M=32,K=256 held-out {} vs INT4 on the same texts {}",
        2.0 * seed.ratio(),
        fmt(seed),
        fmt(&ins[2]),
        fmt(&int4_all),
        fmt(&held[2]),
        fmt(&int4_held),
    );
    Measured { summary, details }
}
