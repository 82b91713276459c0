//! Claim `mixed_precision_kv` ("KV memory (mixed precision)", seed: 2–4× reduction from
//! sensitivity-driven per-head tiers): bytes held vs all-FP16 at equal total error, mixed
//! (`PrecisionPlanner`) against uniform tier assignments, on real K/V.
//!
//! Data: SmolLM2-135M-Instruct keys (post-RoPE) and values from `shared/data/smollm2-kv`
//! (Apache-2.0; see its README): layers 0, 1, 8, 15, 22, 29 × 3 KV heads = 18 cache heads,
//! each holding the tokens of texts 3, 12, 17 and 33 (383 tokens; `--quick`: text 33 only,
//! 175 tokens). Every head's `HeadStats` is measured from its own K/V (`E[R²]` over groups of
//! 32 channels) with sensitivity 1, so the objective is the total squared error of the cache
//! and the planner's only knowledge is each head's real range statistics (the layer-0 heads and
//! the outlier-channel key heads differ by large factors).
//!
//! Every assignment is *stored* in a `MixedPrecisionKvCache` and read back: bytes are
//! `bytes_held()` and errors the measured sum of squared errors over all K/V values (not the
//! model's prediction). The planner is swept over every budget from 6 to 16 bits per value in
//! steps of 1/32 bit. For an error target, the cheapest uniform assignment meeting it (all
//! INT4, all INT8 or all FP16) is compared with the cheapest mixed plan meeting it; the
//! summary gives the target at the geometric midpoint of uniform INT8's and INT4's errors
//! and the best saving over all targets, and the details every target plus, at each uniform
//! tier's own error, the cheapest mixed plan.

use serde_json::{Value, json};
use squish_kv::mixed_precision_kv_cache::{
    HeadStats, KvTier, MixedPrecisionKvCache, MixedPrecisionKvConfig, PrecisionPlanner,
    PrecisionPlannerConfig,
};
use squish_testkit::npy;

use crate::{Measured, Opts};

const LAYERS: [u32; 6] = [0, 1, 8, 15, 22, 29];
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const GROUP: usize = 32;

/// Per cache head: (keys, values), token rows of `HEAD_DIM` values.
fn load_heads(texts: &[u32]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let dir = squish_testkit::shared_dir()
        .expect("shared/ (with smollm2-kv) must lie beside the checkout")
        .join("data/smollm2-kv");
    let mut heads = vec![(Vec::new(), Vec::new()); LAYERS.len() * KV_HEADS];
    for &t in texts {
        for (li, l) in LAYERS.iter().enumerate() {
            for (which, part) in ["k", "v"].into_iter().enumerate() {
                let a = npy::read::<f32>(dir.join(format!("t{t:02}_L{l:02}_{part}.npy")))
                    .expect("readable .npy");
                assert_eq!(a.shape.len(), 3);
                assert_eq!((a.shape[0], a.shape[2]), (KV_HEADS, HEAD_DIM));
                let per_head = a.shape[1] * HEAD_DIM;
                for (h, chunk) in a.data.chunks_exact(per_head).enumerate() {
                    let dst = &mut heads[li * KV_HEADS + h];
                    if which == 0 {
                        dst.0.extend_from_slice(chunk);
                    } else {
                        dst.1.extend_from_slice(chunk);
                    }
                }
            }
        }
    }
    heads
}

/// Stores every head at its tier and reads it back: (bytes held, total squared error).
fn store(heads: &[(Vec<f32>, Vec<f32>)], tiers: &[KvTier]) -> (usize, f64) {
    let cfg = MixedPrecisionKvConfig::new(HEAD_DIM, GROUP, tiers.to_vec());
    let mut cache = MixedPrecisionKvCache::new(cfg).expect("valid config");
    let mut sse = 0.0;
    for (h, (k, v)) in heads.iter().enumerate() {
        for (kr, vr) in k.chunks_exact(HEAD_DIM).zip(v.chunks_exact(HEAD_DIM)) {
            cache
                .append(h, kr, vr)
                .expect("finite K/V within f16 range");
        }
        let (mut k2, mut v2) = (vec![0.0; k.len()], vec![0.0; v.len()]);
        cache
            .read_head_into(h, &mut k2, &mut v2)
            .expect("shapes match");
        sse += k
            .iter()
            .chain(v)
            .zip(k2.iter().chain(&v2))
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
            .sum::<f64>();
    }
    (cache.bytes_held(), sse)
}

pub(super) fn measure(opts: Opts) -> Measured {
    let texts: &[u32] = if opts.quick { &[33] } else { &[3, 12, 17, 33] };
    let heads = load_heads(texts);
    let n_heads = heads.len();
    let stats: Vec<HeadStats> = heads
        .iter()
        .map(|(k, v)| {
            let mut s = k.clone();
            s.extend_from_slice(v);
            HeadStats::from_samples(1.0, &s, GROUP).expect("finite samples")
        })
        .collect();

    let (fp16_bytes, fp16_sse) = store(&heads, &vec![KvTier::Fp16; n_heads]);
    let uniform: Vec<(KvTier, usize, f64)> = KvTier::ALL
        .iter()
        .map(|&t| {
            let (b, e) = store(&heads, &vec![t; n_heads]);
            (t, b, e)
        })
        .collect();

    // Sweep every budget step; store each distinct plan once.
    let mut plans: Vec<(Vec<KvTier>, usize, f64)> = Vec::new();
    let steps = (16 - 6) * GROUP;
    for i in 0..=steps {
        let avg = 6.0 + i as f64 / GROUP as f64;
        let mut planner =
            PrecisionPlanner::new(PrecisionPlannerConfig::new(avg, GROUP)).expect("valid budget");
        let (tiers, _) = planner
            .assign_precisions(&stats)
            .expect("one tier per head");
        if plans.last().is_none_or(|p| p.0 != tiers) {
            let (b, e) = store(&heads, &tiers);
            plans.push((tiers, b, e));
        }
    }

    let ratio = |b: usize| fp16_bytes as f64 / b as f64;
    let mut rows = Vec::new();
    // Per uniform tier: (uniform bytes, cheapest mixed bytes at its error).
    let mut equal_err = Vec::new();
    for &(tier, ub, ue) in &uniform {
        // Smallest mixed cache with measured error <= the uniform one's.
        let at_err = plans
            .iter()
            .filter(|p| p.2 <= ue)
            .min_by_key(|p| p.1)
            .expect("the uniform assignment itself is a plan of the sweep");
        // Lowest mixed error within the uniform one's bytes.
        let at_bytes = plans
            .iter()
            .filter(|p| p.1 <= ub)
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .expect("the uniform assignment itself is a plan of the sweep");
        rows.push(json!({
            "uniform_tier": format!("{tier:?}"),
            "uniform_bytes": ub,
            "uniform_sse": ue,
            "uniform_ratio_vs_fp16": fp16_bytes as f64 / ub as f64,
            "mixed_bytes_at_equal_error": at_err.1,
            "mixed_sse_at_equal_error": at_err.2,
            "mixed_sse_at_equal_bytes": at_bytes.2,
        }));
        equal_err.push((ub, at_err.1));
    }

    // Error targets between the uniform tiers: the cheapest uniform cache meeting a target
    // is the next more precise tier, while the planner can stop in between. Targets: every
    // measured error of the mixed curve, plus the geometric midpoint of INT8's and INT4's.
    let cheapest = |target: f64, cands: &mut dyn Iterator<Item = (usize, f64)>| {
        cands
            .filter(|c| c.1 <= target)
            .map(|c| c.0)
            .min()
            .expect("all-FP16 meets every target above its error")
    };
    let at_target = |target: f64| {
        let u = cheapest(target, &mut uniform.iter().map(|u| (u.1, u.2)));
        let m_plan = plans
            .iter()
            .filter(|p| p.2 <= target)
            .min_by_key(|p| p.1)
            .expect("all-FP16 is on the curve");
        (u, m_plan)
    };
    let count = |t: &[KvTier], x: KvTier| t.iter().filter(|&&y| y == x).count();
    let (sse8, sse4) = (uniform[1].2, uniform[2].2);
    let mid = (sse8 * sse4).sqrt();
    let (u_mid, m_mid) = at_target(mid);
    let mut best_saving = (0.0f64, 0.0f64);
    let mut targets = Vec::new();
    for p in &plans {
        let (u, m) = at_target(p.2);
        let saving = 1.0 - m.1 as f64 / u as f64;
        if saving > best_saving.0 {
            best_saving = (saving, p.2 / sse8);
        }
        targets.push(json!({
            "target_sse": p.2, "uniform_bytes": u, "mixed_bytes": m.1,
            "mixed_ratio_vs_fp16": fp16_bytes as f64 / m.1 as f64,
            "uniform_ratio_vs_fp16": fp16_bytes as f64 / u as f64,
        }));
    }
    let summary_core = format!(
        "at the error target √(INT8·INT4) = {mid:.0} (sum of squares) mixed holds {:.2}× less \
         than all-FP16 ({} FP16 / {} INT8 / {} INT4 heads) vs {:.2}× for the cheapest uniform \
         assignment meeting it ({:.0}% fewer bytes); best saving over targets {:.0}% (at {:.1}× \
         INT8's error); at uniform INT8's own error mixed {:.2}× vs uniform {:.2}×, at \
         INT4's {:.2}× vs {:.2}× (one tier step changes a head's noise 289×)",
        fp16_bytes as f64 / m_mid.1 as f64,
        count(&m_mid.0, KvTier::Fp16),
        count(&m_mid.0, KvTier::Int8),
        count(&m_mid.0, KvTier::Int4),
        fp16_bytes as f64 / u_mid as f64,
        100.0 * (1.0 - m_mid.1 as f64 / u_mid as f64),
        100.0 * best_saving.0,
        best_saving.1,
        ratio(equal_err[1].1),
        ratio(equal_err[1].0),
        ratio(equal_err[2].1),
        ratio(equal_err[2].0),
    );
    let values: usize = heads.iter().map(|(k, v)| k.len() + v.len()).sum();
    let summary = format!(
        "SmolLM2 K/V, {n_heads} heads × {} tokens, measured bytes and squared error: \
         {summary_core}",
        heads[0].0.len() / HEAD_DIM,
    );
    let curve: Vec<Value> = plans
        .iter()
        .map(|(t, b, e)| {
            json!({
                "bytes": b,
                "sse": e,
                "fp16": t.iter().filter(|&&x| x == KvTier::Fp16).count(),
                "int8": t.iter().filter(|&&x| x == KvTier::Int8).count(),
                "int4": t.iter().filter(|&&x| x == KvTier::Int4).count(),
            })
        })
        .collect();
    Measured {
        summary,
        details: json!({
            "data": "shared/data/smollm2-kv (SmolLM2-135M-Instruct, Apache-2.0)",
            "texts": texts,
            "layers": LAYERS,
            "heads": n_heads,
            "values": values,
            "group_size": GROUP,
            "sensitivity": "1 for every head (objective = total squared error)",
            "fp16_bytes": fp16_bytes,
            "fp16_sse": fp16_sse,
            "head_mean_sq_range": stats.iter().map(HeadStats::mean_sq_range).collect::<Vec<_>>(),
            "vs_uniform": rows,
            "equal_error_targets": targets,
            "mixed_curve": curve,
        }),
    }
}
