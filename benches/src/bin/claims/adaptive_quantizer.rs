//! Claim `adaptive_quantize` ("KV memory under pressure", seed: 4× reduction at INT4): bytes
//! held vs `f16` and `f32` at each precision level, with the measured error, on real K/V.
//!
//! Data: every SmolLM2-135M-Instruct key (post-RoPE) and value tensor in
//! `shared/data/smollm2-kv` (Apache-2.0; texts 3, 12, 17, 33 × layers 0, 1, 8, 15, 22, 29;
//! `--quick`: text 33 only), each `[3, seq, 64]` quantised as a `[3 · seq, 64]` matrix by
//! `AdaptiveQuantizer` at the level its pressure selects (0.50 → F16, 0.80 → Q8_0,
//! 0.92 → Q4_0). Bytes are `QuantizedTensor::bytes_held()` (payload + metadata); error is
//! `||x − x̂|| / ||x||` over all keys (resp. values). For contrast the seed's scheme is computed
//! on the same tensors: one symmetric scale per tensor, one byte per value at both INT8 and
//! "INT4" (its INT4 was never packed).

use std::time::Instant;

use ndarray::Array2;
use serde_json::json;
use squish_kv::adaptive_quantizer::{AdaptiveQuantizer, AdaptiveQuantizerConfig, Precision};
use squish_testkit::npy;

use crate::{Measured, Opts};

const LAYERS: [u32; 6] = [0, 1, 8, 15, 22, 29];

/// The seed's per-tensor symmetric quantisation: (squared error).
fn per_tensor_sse(x: &[f32], levels: f64) -> f64 {
    let amax = x.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    let s = amax / levels;
    x.iter()
        .map(|&v| {
            let v = f64::from(v);
            (v - (v / s).round().clamp(-levels, levels) * s).powi(2)
        })
        .sum()
}

pub(super) fn measure(opts: Opts) -> Measured {
    let texts: &[u32] = if opts.quick { &[33] } else { &[3, 12, 17, 33] };
    let dir = squish_testkit::shared_dir()
        .expect("shared/ (with smollm2-kv) must lie beside the checkout")
        .join("data/smollm2-kv");
    let mut tensors: Vec<(&str, Array2<f32>)> = Vec::new();
    for &t in texts {
        for l in LAYERS {
            for part in ["k", "v"] {
                let a = npy::read::<f32>(dir.join(format!("t{t:02}_L{l:02}_{part}.npy")))
                    .expect("readable .npy");
                let cols = a.shape[2];
                let rows = a.data.len() / cols;
                tensors.push((
                    part,
                    Array2::from_shape_vec((rows, cols), a.data).expect("shape"),
                ));
            }
        }
    }
    let values: usize = tensors.iter().map(|(_, a)| a.len()).sum();
    let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).expect("valid");
    let now = Instant::now();
    let mut levels = Vec::new();
    let mut parts = Vec::new();
    for (pressure, want) in [
        (0.50, Precision::F16),
        (0.80, Precision::Q8_0),
        (0.92, Precision::Q4_0),
    ] {
        assert_eq!(aq.update(pressure, now).expect("pressure in [0, 1]"), want);
        let (mut bytes, mut err, mut norm) = (0usize, [0.0f64; 2], [0.0f64; 2]);
        for (part, a) in &tensors {
            let q = aq.quantize(a).expect("finite K/V within range");
            assert_eq!(q.precision(), want);
            bytes += q.bytes_held();
            let y = q.dequantize();
            let i = usize::from(*part == "v");
            for (u, v) in a.iter().zip(&y) {
                err[i] += (f64::from(*u) - f64::from(*v)).powi(2);
                norm[i] += f64::from(*u).powi(2);
            }
        }
        let rel = [(err[0] / norm[0]).sqrt(), (err[1] / norm[1]).sqrt()];
        let vs_f32 = (4 * values) as f64 / bytes as f64;
        let vs_f16 = (2 * values) as f64 / bytes as f64;
        parts.push(format!(
            "{want:?} {vs_f32:.2}× vs f32 / {vs_f16:.2}× vs f16 (rel. error K {:.4}, V {:.4})",
            rel[0], rel[1]
        ));
        levels.push(json!({
            "pressure": pressure,
            "precision": format!("{want:?}"),
            "bytes_held": bytes,
            "ratio_vs_f32": vs_f32,
            "ratio_vs_f16": vs_f16,
            "rel_error_keys": rel[0],
            "rel_error_values": rel[1],
        }));
    }
    let mut seed = Vec::new();
    for (name, lv) in [("int8", 127.0), ("int4", 7.0)] {
        let (mut err, mut norm) = ([0.0f64; 2], [0.0f64; 2]);
        for (part, a) in &tensors {
            let i = usize::from(*part == "v");
            let x = a.as_slice().expect("standard layout");
            err[i] += per_tensor_sse(x, lv);
            norm[i] += x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>();
        }
        seed.push(json!({
            "level": name,
            "bytes": values + 4 * tensors.len(),
            "ratio_vs_f32": (4 * values) as f64 / (values + 4 * tensors.len()) as f64,
            "rel_error_keys": (err[0] / norm[0]).sqrt(),
            "rel_error_values": (err[1] / norm[1]).sqrt(),
        }));
    }
    Measured {
        summary: format!(
            "SmolLM2 K/V ({} tensors, {values} values), bytes held incl. scales: {}; the seed's \
             per-tensor unpacked INT4 on the same data: {:.2}× vs f32, rel. error K {:.4}, V {:.4}",
            tensors.len(),
            parts.join("; "),
            seed[1]["ratio_vs_f32"].as_f64().unwrap_or(f64::NAN),
            seed[1]["rel_error_keys"].as_f64().unwrap_or(f64::NAN),
            seed[1]["rel_error_values"].as_f64().unwrap_or(f64::NAN),
        ),
        details: json!({
            "data": "shared/data/smollm2-kv (SmolLM2-135M-Instruct, Apache-2.0)",
            "texts": texts,
            "layers": LAYERS,
            "values": values,
            "f32_bytes": 4 * values,
            "f16_bytes": 2 * values,
            "levels": levels,
            "seed_per_tensor_scheme": seed,
        }),
    }
}
