//! `dynamic_ntk` ("Infinite context (NTK RoPE)": the seed claims "unbounded extension").
//!
//! Measures what dynamic NTK actually does at the seed's configuration (base 10 000, d = 128,
//! L₀ = 4096, α = 8), with our `DynamicNtkScaler`:
//! * the effective base at L = 1, 2, 4, 8, 16 × L₀;
//! * the rotation-angle range: the largest angle `(L−1)·θ_i` of the lowest frequency relative to
//!   the largest seen in training `(L₀−1)·θ_i(base)`, and how many pairs rotate further than in
//!   training while never having completed a full turn there (out-of-distribution angles),
//!   against plain RoPE at the same lengths;
//! * cache consistency: keys cached (after RoPE) under one base and read under the next are
//!   stale; the relative error of the attention logits `q·k` with stale keys, and after
//!   `rerotate_in_place` (which should be at float rounding).
//!
//! Inputs are N(0, 1) raw queries and keys from the fixed bench seed.

use std::f64::consts::TAU;

use serde_json::json;
use squish_attn::{
    DynamicNtkConfig, DynamicNtkScaler, RopeLayout, RopeScaling, rope_rotate_in_place,
};
use squish_testkit::data;

use super::{Measured, Opts};

const D: usize = 128;
const L0: usize = 4096;

fn freqs(base: f64) -> Vec<f64> {
    (0..D / 2)
        .map(|i| base.powf(-((2 * i) as f64) / D as f64))
        .collect()
}

/// `(lowest-frequency angle ratio to training, pairs with out-of-distribution angles)` at `L`.
fn angle_stats(base_trained: f64, base_eff: f64, l: usize) -> (f64, usize) {
    let trained = freqs(base_trained);
    let eff = freqs(base_eff);
    let max_train = |i: usize| (L0 - 1) as f64 * trained[i];
    let ratio = (l - 1) as f64 * eff[D / 2 - 1] / max_train(D / 2 - 1);
    let ood = (0..D / 2)
        .filter(|&i| max_train(i) < TAU && (l - 1) as f64 * eff[i] > max_train(i) * (1.0 + 1e-12))
        .count();
    (ratio, ood)
}

/// Relative error of the logits of a query at position `l − 1` against keys at `positions`,
/// when the keys were rotated with `base_keys` instead of `base_now`, and after re-rotating.
fn stale_error(
    rope: &DynamicNtkScaler,
    raw_q: &[f32],
    raw_k: &[f32],
    positions: &[usize],
    base_keys: f64,
    base_now: f64,
    l: usize,
) -> (f64, f64) {
    let mut q = raw_q.to_vec();
    rope_rotate_in_place(&mut q, D, l - 1, &freqs(base_now), RopeLayout::HalfSplit)
        .expect("valid shapes");
    let (mut num_stale, mut num_fixed, mut den) = (0.0f64, 0.0f64, 0.0f64);
    for (j, &p) in positions.iter().enumerate() {
        let raw = &raw_k[j * D..(j + 1) * D];
        let mut exact = raw.to_vec();
        rope_rotate_in_place(&mut exact, D, p, &freqs(base_now), RopeLayout::HalfSplit)
            .expect("valid shapes");
        let mut stale = raw.to_vec();
        rope_rotate_in_place(&mut stale, D, p, &freqs(base_keys), RopeLayout::HalfSplit)
            .expect("valid shapes");
        let mut fixed = stale.clone();
        rope.rerotate_in_place(&mut fixed, p, base_keys, base_now)
            .expect("finite keys");
        let dot = |k: &[f32]| -> f64 {
            q.iter()
                .zip(k)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum()
        };
        let e = dot(&exact);
        num_stale += (dot(&stale) - e).powi(2);
        num_fixed += (dot(&fixed) - e).powi(2);
        den += e * e;
    }
    ((num_stale / den).sqrt(), (num_fixed / den).sqrt())
}

pub(super) fn measure(opts: Opts) -> Measured {
    let rope = DynamicNtkScaler::new(DynamicNtkConfig::default()).expect("valid config");
    let base = rope.config().base;
    let RopeScaling::DynamicNtk { factor: alpha } = rope.config().scaling else {
        unreachable!("the default policy is dynamic NTK")
    };
    let mut lengths = Vec::new();
    for m in [1usize, 2, 4, 8, 16] {
        let l = m * L0;
        let p = rope.params(l);
        let (ratio, ood) = angle_stats(base, p.base, l);
        let (plain_ratio, plain_ood) = angle_stats(base, base, l);
        // Angle per position step relative to training: how finely a pair still separates
        // neighbouring positions (1 = as trained; 0.1 = ten times coarser).
        let (ft, fe) = (freqs(base), freqs(p.base));
        let res_low = fe[D / 2 - 1] / ft[D / 2 - 1];
        let res_mid = fe[D / 4] / ft[D / 4];
        lengths.push(json!({
            "lowest_freq_resolution_vs_trained": res_low,
            "mid_freq_resolution_vs_trained": res_mid,
            "seq_len": l, "times_l0": m, "effective_base": p.base, "is_scaled": p.is_scaled,
            "lowest_freq_max_angle_over_trained": ratio, "ood_angle_pairs": ood,
            "plain_rope_lowest_freq_max_angle_over_trained": plain_ratio,
            "plain_rope_ood_angle_pairs": plain_ood,
        }));
    }

    let mut rng = benches::input_rng();
    let n_keys = if opts.quick { 64 } else { 256 };
    let raw_q = data::normal_vec(&mut rng, D, 0.0, 1.0);
    let raw_k = data::normal_vec(&mut rng, n_keys * D, 0.0, 1.0);
    let mut transitions = Vec::new();
    for (from, to) in [
        (2 * L0, 2 * L0 + 1),
        (L0, 2 * L0),
        (2 * L0, 4 * L0),
        (4 * L0, 8 * L0),
    ] {
        // Keys spread over the positions cached when the base was that of `from`.
        let positions: Vec<usize> = (0..n_keys).map(|j| j * (from - 1) / (n_keys - 1)).collect();
        let (a, b) = (rope.params(from).base, rope.params(to).base);
        let (stale, fixed) = stale_error(&rope, &raw_q, &raw_k, &positions, a, b, to);
        transitions.push(json!({
            "from_len": from, "to_len": to, "from_base": a, "to_base": b,
            "needs_rerotation": rope.needs_rerotation(a, to),
            "stale_logit_rel_err": stale, "rerotated_logit_rel_err": fixed,
        }));
    }
    let at = |m: usize| &lengths[[1, 2, 4, 8, 16].iter().position(|&x| x == m).unwrap_or(0)];
    let t_step = &transitions[0];
    let t_jump = &transitions[2];
    Measured {
        summary: format!(
            "not unbounded: base 1e4 → {:.3e} / {:.3e} / {:.3e} at 2×/4×/8× L₀ (α {alpha}); lowest-frequency angle range {:.2}× / {:.2}× / {:.2}× the trained one (plain RoPE {:.0}× / {:.0}× / {:.0}×), bought by interpolation: at 8× L₀ the lowest pair separates neighbouring positions {:.0}× and the middle pair {:.1}× more coarsely than trained; cached keys go stale when the base moves: logit rel err {:.1e} after one token past 2×L₀, {:.2} for 2×→4× L₀; {:.1e} after re-rotation",
            at(2)["effective_base"].as_f64().unwrap_or(0.0),
            at(4)["effective_base"].as_f64().unwrap_or(0.0),
            at(8)["effective_base"].as_f64().unwrap_or(0.0),
            at(2)["lowest_freq_max_angle_over_trained"]
                .as_f64()
                .unwrap_or(0.0),
            at(4)["lowest_freq_max_angle_over_trained"]
                .as_f64()
                .unwrap_or(0.0),
            at(8)["lowest_freq_max_angle_over_trained"]
                .as_f64()
                .unwrap_or(0.0),
            at(2)["plain_rope_lowest_freq_max_angle_over_trained"]
                .as_f64()
                .unwrap_or(0.0),
            at(4)["plain_rope_lowest_freq_max_angle_over_trained"]
                .as_f64()
                .unwrap_or(0.0),
            at(8)["plain_rope_lowest_freq_max_angle_over_trained"]
                .as_f64()
                .unwrap_or(0.0),
            1.0 / at(8)["lowest_freq_resolution_vs_trained"]
                .as_f64()
                .unwrap_or(1.0),
            1.0 / at(8)["mid_freq_resolution_vs_trained"]
                .as_f64()
                .unwrap_or(1.0),
            t_step["stale_logit_rel_err"].as_f64().unwrap_or(0.0),
            t_jump["stale_logit_rel_err"].as_f64().unwrap_or(0.0),
            t_jump["rerotated_logit_rel_err"].as_f64().unwrap_or(0.0),
        ),
        details: json!({
            "config": {"base": base, "head_dim": D, "original_max_position": L0, "alpha": alpha,
                       "trigger": "none: transformers' formula has none; scaling starts past L₀"},
            "lengths": lengths,
            "cache_consistency": transitions,
            "conclusion": "dynamic NTK keeps every pair's angles inside the trained range (no out-of-distribution angles; at α = 8 the lowest frequency even uses only 0.13–0.22× of it) by raising the base about linearly in L; the price is interpolation: the low and middle frequencies separate neighbouring positions ever more coarsely as L grows, the change is untrained, so quality degrades past a few × L₀, and each base change invalidates cached post-RoPE keys unless they are re-rotated. It extends context by a bounded factor; it does not give unbounded context.",
        }),
    }
}
