//! `retention_attn` ("Decode memory: O(1) per step", RetentionKernel recurrent state).
//!
//! Runs our recurrent decode for growing sequence lengths at the seed's configuration (4 heads,
//! d = d_v = 64) and reads the bytes the state holds from its buffer, next to what a float32
//! KV cache of the same heads holds at that length (2 · heads · L · d · 4 bytes). Also checks
//! that the recurrent, parallel and chunkwise forms agree on the same inputs (max relative
//! error), since an O(1) decode is only worth having if it computes the same retention.

use serde_json::json;
use squish_attn::{RetentionConfig, RetentionKernel};
use squish_testkit::data;

use super::{Measured, Opts};

pub(super) fn measure(opts: Opts) -> Measured {
    let kernel = RetentionKernel::new(RetentionConfig::default()).expect("valid config");
    let (h, d) = (4usize, 64usize);
    let lengths: &[usize] = if opts.quick {
        &[128, 512, 2048]
    } else {
        &[128, 512, 2048, 8192]
    };
    let mut rng = benches::input_rng();
    let mut rows = Vec::new();
    let mut st = kernel.init_state();
    let mut o = vec![0.0f32; h * d];
    let q = data::normal_vec(&mut rng, h * d, 0.0, 1.0);
    let mut steps = 0usize;
    for &l in lengths {
        while steps < l {
            let k = data::normal_vec(&mut rng, h * d, 0.0, 1.0);
            let v = data::normal_vec(&mut rng, h * d, 0.0, 1.0);
            kernel
                .step_into(&mut st, &q, &k, &v, &mut o)
                .expect("valid shapes");
            steps += 1;
        }
        let kv_bytes = 2 * h * l * d * 4;
        rows.push(json!({
            "seq_len": l,
            "state_bytes": st.bytes(),
            "kv_cache_bytes_f32": kv_bytes,
            "kv_over_state": kv_bytes as f64 / st.bytes() as f64,
        }));
    }

    // Agreement of the three forms on one random sequence.
    let seq = if opts.quick { 128 } else { 512 };
    let qs = data::normal_vec(&mut rng, h * seq * d, 0.0, 1.0);
    let ks = data::normal_vec(&mut rng, h * seq * d, 0.0, 1.0);
    let vs = data::normal_vec(&mut rng, h * seq * d, 0.0, 1.0);
    let mut par = vec![0.0f32; h * seq * d];
    kernel
        .parallel_into(&qs, &ks, &vs, seq, &mut par)
        .expect("valid shapes");
    let mut chunk = vec![0.0f32; h * seq * d];
    let mut st_c = kernel.init_state();
    kernel
        .prefill_chunkwise_into(&mut st_c, &qs, &ks, &vs, seq, &mut chunk)
        .expect("valid shapes");
    let mut rec = vec![0.0f32; h * seq * d];
    let mut st_r = kernel.init_state();
    let tok = |x: &[f32], t: usize| -> Vec<f32> {
        (0..h)
            .flat_map(|hh| x[(hh * seq + t) * d..(hh * seq + t + 1) * d].to_vec())
            .collect()
    };
    for t in 0..seq {
        kernel
            .step_into(&mut st_r, &tok(&qs, t), &tok(&ks, t), &tok(&vs, t), &mut o)
            .expect("valid shapes");
        for hh in 0..h {
            rec[(hh * seq + t) * d..(hh * seq + t + 1) * d]
                .copy_from_slice(&o[hh * d..(hh + 1) * d]);
        }
    }
    let scale = par.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let max_rel = |a: &[f32]| {
        a.iter()
            .zip(&par)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0.0f32, f32::max)
    };
    let (rec_err, chunk_err) = (max_rel(&rec), max_rel(&chunk));
    let state_err = st_r
        .as_slice()
        .iter()
        .zip(st_c.as_slice())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max)
        / st_r.as_slice().iter().fold(0.0f32, |m, x| m.max(x.abs()));

    let last = rows.last().cloned().unwrap_or_default();
    Measured {
        summary: format!(
            "state {:.1} KiB at every length (4 heads × 64 × 64 f32, plus alignment padding) vs f32 KV cache {} KiB at L={} ({:.0}×); recurrent vs parallel max rel err {:.1e}, chunkwise {:.1e} (seq {})",
            st.bytes() as f64 / 1024.0,
            last["kv_cache_bytes_f32"].as_u64().unwrap_or(0) / 1024,
            last["seq_len"],
            last["kv_over_state"].as_f64().unwrap_or(0.0),
            rec_err,
            chunk_err,
            seq
        ),
        details: json!({
            "heads": h, "head_dim": d, "value_dim": d,
            "memory": rows,
            "agreement": {
                "seq_len": seq,
                "recurrent_vs_parallel_max_rel_err": rec_err,
                "chunkwise_vs_parallel_max_rel_err": chunk_err,
                "final_state_recurrent_vs_chunkwise_max_rel_err": state_err,
            },
            "note": "state bytes read from RetentionState::bytes() after running the steps; the KV-cache figure is 2·heads·L·d·4 bytes for the same heads in f32",
        }),
    }
}
