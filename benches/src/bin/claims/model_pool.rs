//! Claim `model_pool` ("GPU idle time", seed technique "LRU eviction"): hit rate, loads avoided
//! and load time on a replayed multi-model request trace, `ModelPool` vs load-on-demand.
//!
//! Trace: every request of the Azure LLM inference trace 2023 (`code.csv` + `conv.csv`, 28 185
//! requests, merged in arrival order; CC-BY 4.0, Patel et al., "Splitwise", ISCA 2024). The
//! trace has no model column, so each request is assigned one of 8 models of varied sizes
//! (fp16 weights of 0.5B to 14B-parameter models) by a seeded Zipf(s = 1) draw; the two services
//! use different seeded popularity orders over the same models, so the real interleaving of
//! code and conversation traffic shapes the sequence. Requests are replayed one at a time
//! (acquire, then release). Compared:
//! - `ModelPool` with a 48 GB budget (one 48 GB accelerator);
//! - `ModelPool` with a budget of the largest model (28.4 GB);
//! - load-on-demand (the seed's baseline): one model resident at a time, loaded whenever the
//!   request's model differs from the loaded one.
//!
//! While a model loads its accelerator is idle, so load-induced idle time is proportional to the
//! bytes loaded; `load_seconds` converts them at an assumed 2 GB/s weight-load bandwidth (a sum
//! over the sequential replay, not wall time of the one-hour trace).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use squish_serving::model_pool::{ModelId, ModelPool, ModelPoolConfig};

use crate::{Measured, Opts};

const GB: u64 = 1_000_000_000;
/// Model sizes in bytes (fp16 weights): 0.5B, 1.1B, 1.5B, 3B, 7B, 8B, 13B, 14B parameters.
const SIZES: [u64; 8] = [
    GB,
    2_200_000_000,
    3_100_000_000,
    6_200_000_000,
    14_500_000_000,
    16_100_000_000,
    26_000_000_000,
    28_400_000_000,
];
const POOL_BUDGET: u64 = 48 * GB;
const LOAD_BYTES_PER_S: f64 = 2.0e9;
const SEED: u64 = 2023;

/// The merged trace: (arrival timestamp, service 0 = code / 1 = conv), in arrival order.
fn trace() -> Vec<(String, usize)> {
    let dir = squish_testkit::shared_dir()
        .expect("shared/ (with azure-llm-inference-2023) must lie beside the checkout")
        .join("data/azure-llm-inference-2023");
    let mut out = Vec::new();
    for (service, file) in ["code.csv", "conv.csv"].into_iter().enumerate() {
        let text = std::fs::read_to_string(dir.join(file)).expect("readable trace");
        for line in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let ts = line.split(',').next().expect("a timestamp column");
            out.push((ts.to_string(), service));
        }
    }
    // Timestamps share one fixed-width format, so text order is time order; stable ties.
    out.sort();
    out
}

/// Each request's model: a seeded Zipf(1) rank, mapped through its service's popularity order.
fn assign_models(trace: &[(String, usize)]) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut orders = [[0u32, 1, 2, 3, 4, 5, 6, 7]; 2];
    for order in &mut orders {
        order.shuffle(&mut rng);
    }
    let weights: Vec<f64> = (1..=SIZES.len()).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    trace
        .iter()
        .map(|&(_, service)| {
            let mut u = rng.random::<f64>() * total;
            let mut rank = SIZES.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                if u < *w {
                    rank = i;
                    break;
                }
                u -= w;
            }
            orders[service][rank]
        })
        .collect()
}

struct Replay {
    hits: u64,
    loads: u64,
    bytes_loaded: u64,
    evictions: u64,
}

fn replay_pool(models: &[u32], budget: u64) -> Replay {
    let loaded = AtomicU64::new(0);
    let loader = |k: ModelId| {
        loaded.fetch_add(SIZES[k.0 as usize], Ordering::Relaxed);
        Ok::<_, Infallible>(k.0)
    };
    let pool = ModelPool::new(ModelPoolConfig::new(budget), loader).expect("valid budget");
    for (k, &size) in SIZES.iter().enumerate() {
        pool.register(ModelId(k as u32), size)
            .expect("every model fits the budget");
    }
    for &m in models {
        let lease = pool
            .acquire(ModelId(m))
            .expect("idle models can always be evicted");
        assert_eq!(*lease, m);
    }
    let s = pool.stats();
    assert_eq!(s.hits + s.misses, models.len() as u64);
    Replay {
        hits: s.hits,
        loads: s.loads,
        bytes_loaded: loaded.load(Ordering::Relaxed),
        evictions: s.evictions,
    }
}

fn replay_on_demand(models: &[u32]) -> Replay {
    let mut current = None;
    let mut r = Replay {
        hits: 0,
        loads: 0,
        bytes_loaded: 0,
        evictions: 0,
    };
    for &m in models {
        if current == Some(m) {
            r.hits += 1;
        } else {
            r.evictions += u64::from(current.is_some());
            current = Some(m);
            r.loads += 1;
            r.bytes_loaded += SIZES[m as usize];
        }
    }
    r
}

pub(super) fn measure(_opts: Opts) -> Measured {
    let trace = trace();
    let models = assign_models(&trace);
    let n = models.len() as f64;
    let mut share = [0u64; 8];
    for &m in &models {
        share[m as usize] += 1;
    }
    let pool = replay_pool(&models, POOL_BUDGET);
    let pool_one = replay_pool(&models, SIZES[7]);
    let naive = replay_on_demand(&models);
    let load_s = |r: &Replay| r.bytes_loaded as f64 / LOAD_BYTES_PER_S;
    let row = |r: &Replay| {
        json!({
            "hit_rate": r.hits as f64 / n,
            "loads": r.loads,
            "evictions": r.evictions,
            "gb_loaded": r.bytes_loaded as f64 / GB as f64,
            "load_seconds": load_s(r),
        })
    };
    let summary = format!(
        "{} Azure-trace requests over 8 models (seeded Zipf): ModelPool (48 GB) hit rate {:.1}% \
         with {} loads vs load-on-demand {:.1}% with {} loads ({} loads avoided); weights \
         loaded {:.0} GB vs {:.0} GB ({:.0}% less load-induced idle time)",
        models.len(),
        100.0 * pool.hits as f64 / n,
        pool.loads,
        100.0 * naive.hits as f64 / n,
        naive.loads,
        naive.loads - pool.loads,
        pool.bytes_loaded as f64 / GB as f64,
        naive.bytes_loaded as f64 / GB as f64,
        100.0 * (1.0 - pool.bytes_loaded as f64 / naive.bytes_loaded as f64),
    );
    Measured {
        summary,
        details: json!({
            "requests": models.len(),
            "model_sizes_bytes": SIZES,
            "model_request_counts": share,
            "zipf_s": 1.0,
            "seed": SEED,
            "load_bandwidth_bytes_per_s": LOAD_BYTES_PER_S,
            "model_pool_48gb": row(&pool),
            "model_pool_budget_of_largest_model": row(&pool_one),
            "load_on_demand": row(&naive),
            "loads_avoided": naive.loads - pool.loads,
        }),
    }
}
