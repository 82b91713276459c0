//! Claim `dedupe_attn` (seed: "FLOPs: hit-rate × FLOPs saved", a cosine-keyed cache). Measured:
//! the hit rate of `AttentionDeduplicator` and the worst error of a reused output against exact
//! (float64) attention for the query actually asked, with the error-bounded rule (ε = 0.01 and
//! 0.1) and with the seed's cosine rule (threshold 0.95), on
//! - a synthetic repetitive workload: per context (S = 512 keys with log-normal norms, head_dim
//!   64, scale 1/8, values N(0, 1)), 1000 queries drawn from 32 prototypes: 40% near-repeats
//!   (jitter of norm 0.002–0.02), 10% exact repeats, 20% rescaled prototypes (c·q, c ∈ [1.5, 3]:
//!   same direction, sharper softmax) and 30% fresh random queries; the context version is
//!   bumped (new keys and values) every 1000 queries; on a miss the exact output is computed
//!   and stored;
//! - real SmolLM2-135M queries (`shared/data/smollm2-kv`): each query head's queries of a
//!   text, in order, against that text's full keys and values of the head's KV head (one
//!   version per text and layer).
//!
//! "FLOPs saved" is the fraction of attention computations (4·S·d flops each) skipped, i.e. the
//! hit rate; a lookup's own cost is one pass over the stored norms plus a distance for the
//! entries that pass the norm filter (see the bench docs).

use serde_json::{Value, json};
use squish_attn::{
    AttentionDeduplicator, AttentionDeduplicatorConfig, AttnContext, Lookup, ReuseRule,
    output_error_bound,
};
use squish_testkit::reference::{self, l2_distance as l2};
use squish_testkit::{data, npy};

use super::{Measured, Opts};

const D: usize = 64;
const SCALE: f32 = 0.125;

/// Exact attention output for one query, float64.
fn attend(q: &[f32], keys: &[f32], values: &[f32]) -> Vec<f64> {
    reference::attention_f64(q, keys, values, SCALE)
}

#[derive(Default)]
struct Run {
    lookups: u64,
    hits: u64,
    worst_error: f64,
    worst_error_over_bound: f64,
    max_value_norm: f64,
}

impl Run {
    fn json(&self, bounded: Option<f64>) -> Value {
        json!({
            "lookups": self.lookups,
            "hits": self.hits,
            "hit_rate": self.hits as f64 / self.lookups.max(1) as f64,
            "worst_output_error": self.worst_error,
            "worst_error_over_its_bound": if bounded.is_some() { json!(self.worst_error_over_bound) } else { Value::Null },
            "bound_at_eps": bounded,
            "max_value_norm": self.max_value_norm,
        })
    }
}

/// Serves `queries` (rows of D) against one context through `dd` slot (0, h), computing and
/// storing exact outputs on misses.
fn serve(
    dd: &mut AttentionDeduplicator,
    h: usize,
    ctx: &AttnContext,
    keys: &[f32],
    values: &[f32],
    queries: &[f32],
    run: &mut Run,
) {
    let mut out = vec![0.0f32; D];
    for q in queries.chunks_exact(D) {
        let r = dd.lookup(0, h, ctx, q, &mut out).expect("valid lookup");
        run.lookups += 1;
        match r {
            Lookup::Hit { error_bound, .. } => {
                run.hits += 1;
                let err = l2(&out, &attend(q, keys, values));
                run.worst_error = run.worst_error.max(err);
                if let Some(b) = error_bound.filter(|&b| b > 0.0) {
                    run.worst_error_over_bound = run.worst_error_over_bound.max(err / f64::from(b));
                }
            }
            Lookup::Miss => {
                let o: Vec<f32> = attend(q, keys, values).iter().map(|&x| x as f32).collect();
                dd.store(0, h, ctx, q, &o).expect("valid store");
            }
        }
    }
    run.max_value_norm = run.max_value_norm.max(f64::from(ctx.max_value_norm));
}

fn rules() -> [(&'static str, ReuseRule); 3] {
    [
        (
            "bounded_eps_0.01",
            ReuseRule::ErrorBounded {
                max_logit_change: 0.01,
            },
        ),
        (
            "bounded_eps_0.1",
            ReuseRule::ErrorBounded {
                max_logit_change: 0.1,
            },
        ),
        (
            "seed_cosine_0.95",
            ReuseRule::CosineUnbounded { threshold: 0.95 },
        ),
    ]
}

fn eps_of(rule: ReuseRule) -> Option<f64> {
    match rule {
        ReuseRule::ErrorBounded { max_logit_change } => Some(f64::from(max_logit_change)),
        _ => None,
    }
}

fn synthetic(opts: Opts, rule: ReuseRule) -> Run {
    use rand::RngExt;
    let mut rng = squish_testkit::rng(0xdede_0001);
    let (seq, contexts, per_ctx) = (512, if opts.quick { 2 } else { 4 }, 1000);
    let mut cfg = AttentionDeduplicatorConfig::default();
    cfg.rule = rule;
    let mut dd = AttentionDeduplicator::new(cfg).expect("valid config");
    let mut run = Run::default();
    for version in 0..contexts {
        let mut keys = data::normal_vec(&mut rng, seq * D, 0.0, 1.0);
        let norms = data::lognormal_vec(&mut rng, seq, 1.0, 0.7);
        for (row, n) in keys.chunks_exact_mut(D).zip(norms) {
            let len = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x *= n / len);
        }
        let values = data::normal_vec(&mut rng, seq * D, 0.0, 1.0);
        let ctx = AttnContext::from_kv(version, SCALE, &keys, D, &values, D).expect("finite");
        let protos = data::normal_vec(&mut rng, 32 * D, 0.0, 1.0);
        let mut queries = Vec::with_capacity(per_ctx * D);
        for _ in 0..per_ctx {
            let p = &protos[rng.random_range(0..32) * D..][..D];
            let kind: f64 = rng.random();
            if kind < 0.4 {
                let jitter = data::normal_vec(&mut rng, D, 0.0, 1.0);
                let jn = jitter.iter().map(|x| x * x).sum::<f32>().sqrt();
                let r: f32 = rng.random_range(0.002..0.02);
                queries.extend(p.iter().zip(&jitter).map(|(a, b)| a + b / jn * r));
            } else if kind < 0.5 {
                queries.extend_from_slice(p);
            } else if kind < 0.7 {
                let c: f32 = rng.random_range(1.5..3.0);
                queries.extend(p.iter().map(|a| a * c));
            } else {
                queries.extend(data::normal_vec(&mut rng, D, 0.0, 1.0));
            }
        }
        serve(&mut dd, 0, &ctx, &keys, &values, &queries, &mut run);
    }
    run
}

fn smollm2(opts: Opts, rule: ReuseRule) -> Option<Run> {
    let dir = squish_testkit::shared_dir()?.join("data/smollm2-kv");
    let texts: &[u32] = if opts.quick {
        &[12, 33]
    } else {
        &[3, 12, 17, 33]
    };
    let mut cfg = AttentionDeduplicatorConfig::default();
    (cfg.heads, cfg.rule) = (9, rule);
    let mut dd = AttentionDeduplicator::new(cfg).ok()?;
    let mut run = Run::default();
    let mut version = 0;
    for &t in texts {
        for layer in [0, 1, 8, 15, 22, 29] {
            let read =
                |x: &str| npy::read::<f32>(dir.join(format!("t{t:02}_L{layer:02}_{x}.npy"))).ok();
            let (q, k, v) = (read("q")?, read("k")?, read("v")?);
            let seq = k.shape[1];
            version += 1;
            for h in 0..9 {
                let kv = h / 3;
                let keys = &k.data[kv * seq * D..(kv + 1) * seq * D];
                let values = &v.data[kv * seq * D..(kv + 1) * seq * D];
                let ctx = AttnContext::from_kv(version, SCALE, keys, D, values, D).ok()?;
                serve(
                    &mut dd,
                    h,
                    &ctx,
                    keys,
                    values,
                    &q.data[h * seq * D..(h + 1) * seq * D],
                    &mut run,
                );
            }
        }
    }
    Some(run)
}

pub(super) fn measure(opts: Opts) -> Measured {
    let mut details = serde_json::Map::new();
    let mut parts = Vec::new();
    for (name, rule) in rules() {
        let eps = eps_of(rule);
        let syn = synthetic(opts, rule);
        let real = smollm2(opts, rule);
        let bound = eps.map(|e| output_error_bound(e, syn.max_value_norm));
        parts.push(format!(
            "{name}: hit {:.1}%, worst err {:.3}{}{}",
            100.0 * syn.hits as f64 / syn.lookups as f64,
            syn.worst_error,
            bound.map_or(" (unbounded)".to_string(), |b| format!(" (bound {b:.3})")),
            real.as_ref().map_or(String::new(), |r| format!(
                ", SmolLM2 hit {:.1}%",
                100.0 * r.hits as f64 / r.lookups.max(1) as f64
            )),
        ));
        details.insert(
            name.to_string(),
            json!({
                "synthetic_repetitive": syn.json(bound),
                "smollm2_135m": real.map_or(json!("shared/data/smollm2-kv not found"), |r| {
                    let b = eps.map(|e| output_error_bound(e, r.max_value_norm));
                    r.json(b)
                }),
            }),
        );
    }
    Measured {
        summary: format!(
            "synthetic repetitive workload (50% repeats, 20% rescaled q): {}",
            parts.join("; ")
        ),
        details: details.into(),
    }
}
