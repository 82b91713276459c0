//! Claim `sparse_attn_index` (seed: "prefill FLOPs: top-k / seq fraction", ranking keys by
//! cosine similarity). What a top-k key budget is worth is the share of the softmax attention
//! mass that the selected keys carry: attention restricted to them loses the rest. Measured at
//! budgets k/S for four rankings — exact maximum inner product (`SelectMode::Exact`, the
//! optimum for a given k), Quest pages (`SelectMode::Pages { oversample: 1 }`, 16-token pages;
//! and with twice the pages, `oversample: 2`) and the seed's cosine ranking — on
//! - real SmolLM2-135M queries and keys (`shared/data/smollm2-kv`: 4 texts × 6 layers × 9 query
//!   heads over 3 KV heads, causal, scale 1/8, the last 8 positions of each text; the index is
//!   grown token by token with `append`), and
//! - synthetic keys with random directions and log-normal norms (ln‖k‖ ~ N(2, 0.75²): median
//!   7.4, a few times larger at the tail, like real key norms), S = 2048, head_dim 64,
//!   standard-normal queries, scale 1/8.

use ndarray::{Array2, Array3, s};
use serde_json::{Value, json};
use squish_attn::{SelectMode, Selection, SparseAttnIndex, SparseAttnIndexConfig};
use squish_core::ops;
use squish_testkit::{data, npy};

use super::{Measured, Opts};

const D: usize = 64;
const SCALE: f32 = 0.125;
const FRACTIONS: [(usize, usize); 3] = [(1, 16), (1, 8), (1, 4)];
const PAGES: SelectMode = SelectMode::Pages { oversample: 1 };
const PAGES2: SelectMode = SelectMode::Pages { oversample: 2 };
/// Methods, in the order of the mass arrays.
const METHODS: [&str; 4] = ["exact", "pages", "pages_x2", "cosine"];

/// Softmax mass of `scores` (already scaled) over the positions `sel`.
fn mass(logits: &[f32], sel: &[usize]) -> f64 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let w: Vec<f64> = logits.iter().map(|&z| f64::from(z - m).exp()).collect();
    let total: f64 = w.iter().sum();
    sel.iter().map(|&j| w[j]).sum::<f64>() / total
}

/// Mass captured by each method for one query over `keys` (`seq × D`, one head).
fn masses(q: &[f32], keys: &[f32], sel: [&[usize]; 3], k: usize) -> [f64; 4] {
    let logits: Vec<f32> = keys
        .chunks_exact(D)
        .map(|kk| SCALE * ops::dot(q, kk))
        .collect();
    let cos: Vec<f32> = keys.chunks_exact(D).map(|kk| ops::cosine(q, kk)).collect();
    let by_cos = ops::top_k(&cos, k);
    [
        mass(&logits, sel[0]),
        mass(&logits, sel[1]),
        mass(&logits, sel[2]),
        mass(&logits, &by_cos),
    ]
}

#[derive(Default, Clone)]
struct Acc {
    sum: [f64; 4],
    min: [f64; 4],
    n: usize,
}

impl Acc {
    fn add(&mut self, m: [f64; 4]) {
        if self.n == 0 {
            self.min = m;
        }
        for ((sum, min), x) in self.sum.iter_mut().zip(&mut self.min).zip(m) {
            *sum += x;
            *min = min.min(x);
        }
        self.n += 1;
    }
    fn mean(&self, i: usize) -> f64 {
        self.sum[i] / self.n.max(1) as f64
    }
    fn json(&self) -> Value {
        let mean: serde_json::Map<_, _> = METHODS
            .iter()
            .enumerate()
            .map(|(i, m)| (m.to_string(), json!(self.mean(i))))
            .collect();
        let min: serde_json::Map<_, _> = METHODS
            .iter()
            .enumerate()
            .map(|(i, m)| (m.to_string(), json!(self.min[i])))
            .collect();
        json!({ "queries": self.n, "mean_mass": mean, "min_mass": min })
    }
}

fn budget(seq: usize, (num, den): (usize, usize)) -> usize {
    (seq * num).div_ceil(den).max(1)
}

/// Real SmolLM2 tensors: one accumulator per budget fraction, or `None` without the data.
fn smollm2(opts: Opts) -> Option<Vec<Acc>> {
    let dir = squish_testkit::shared_dir()?.join("data/smollm2-kv");
    if !dir.is_dir() {
        return None;
    }
    let texts: &[u32] = if opts.quick {
        &[17, 33]
    } else {
        &[3, 12, 17, 33]
    };
    let last = if opts.quick { 4 } else { 8 };
    let mut accs = vec![Acc::default(); FRACTIONS.len()];
    let mut cfg = SparseAttnIndexConfig::default();
    (cfg.kv_heads, cfg.query_heads, cfg.head_dim) = (3, 9, D);
    let mut sel_exact = Selection::new();
    let mut sel_pages = Selection::new();
    let mut sel_pages2 = Selection::new();
    for &t in texts {
        for layer in [0, 1, 8, 15, 22, 29] {
            let read = |x: &str| npy::read::<f32>(dir.join(format!("t{t:02}_L{layer:02}_{x}.npy")));
            let (Ok(q), Ok(k)) = (read("q"), read("k")) else {
                return None;
            };
            let seq = k.shape[1];
            let q = Array3::from_shape_vec((9, seq, D), q.data).ok()?;
            let k = Array3::from_shape_vec((3, seq, D), k.data).ok()?;
            let mut index = SparseAttnIndex::new(cfg.clone()).ok()?;
            for pos in 0..seq {
                index.append(&k.slice(s![.., pos..=pos, ..])).ok()?;
                if pos + last < seq {
                    continue;
                }
                let qp: Array2<f32> = q.slice(s![.., pos, ..]).to_owned();
                let n = pos + 1;
                for (acc, &frac) in accs.iter_mut().zip(&FRACTIONS) {
                    let kb = budget(n, frac);
                    index
                        .query_into(&qp, kb, SelectMode::Exact, &mut sel_exact)
                        .ok()?;
                    index.query_into(&qp, kb, PAGES, &mut sel_pages).ok()?;
                    index.query_into(&qp, kb, PAGES2, &mut sel_pages2).ok()?;
                    for h in 0..9 {
                        let keys = index.keys(h / 3);
                        let qh = qp.row(h);
                        let qh = qh.as_slice()?;
                        let sel = [
                            sel_exact.for_query_head(h),
                            sel_pages.for_query_head(h),
                            sel_pages2.for_query_head(h),
                        ];
                        acc.add(masses(qh, keys, sel, kb));
                    }
                }
            }
        }
    }
    Some(accs)
}

/// Synthetic log-normal-norm keys.
fn synthetic(opts: Opts) -> Vec<Acc> {
    let mut rng = squish_testkit::rng(0x5a_77_1d);
    let seq = 2048;
    let queries = if opts.quick { 16 } else { 64 };
    let mut keys = data::normal_vec(&mut rng, seq * D, 0.0, 1.0);
    let norms = data::lognormal_vec(&mut rng, seq, 2.0, 0.75);
    for (row, n) in keys.chunks_exact_mut(D).zip(norms) {
        let len = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x *= n / len);
    }
    let mut cfg = SparseAttnIndexConfig::default();
    (cfg.kv_heads, cfg.query_heads) = (1, 1);
    let mut index = SparseAttnIndex::new(cfg).expect("valid config");
    index
        .build(&Array3::from_shape_vec((1, seq, D), keys).expect("shape"))
        .expect("finite keys");
    let mut accs = vec![Acc::default(); FRACTIONS.len()];
    let (mut a, mut b, mut c) = (Selection::new(), Selection::new(), Selection::new());
    for _ in 0..queries {
        let q =
            Array2::from_shape_vec((1, D), data::normal_vec(&mut rng, D, 0.0, 1.0)).expect("shape");
        for (acc, &frac) in accs.iter_mut().zip(&FRACTIONS) {
            let kb = budget(seq, frac);
            index
                .query_into(&q, kb, SelectMode::Exact, &mut a)
                .expect("valid query");
            index
                .query_into(&q, kb, PAGES, &mut b)
                .expect("valid query");
            index
                .query_into(&q, kb, PAGES2, &mut c)
                .expect("valid query");
            acc.add(masses(
                q.as_slice().expect("contiguous"),
                index.keys(0),
                [a.row(0), b.row(0), c.row(0)],
                kb,
            ));
        }
    }
    accs
}

pub(super) fn measure(opts: Opts) -> Measured {
    let syn = synthetic(opts);
    let real = smollm2(opts);
    let label = |(n, d): (usize, usize)| format!("{n}/{d}");
    let mut details = json!({
        "methods": {"exact": "max inner product top-k", "pages": "Quest, 16-token pages, oversample 1", "pages_x2": "Quest pages, oversample 2 (twice the pages, exact top-k inside)", "cosine": "seed: top-k by cosine"},
        "synthetic_lognormal_norms": FRACTIONS.iter().zip(&syn).map(|(&f, a)| (label(f), a.json())).collect::<serde_json::Map<_, _>>(),
    });
    let pick = |accs: &[Acc]| accs[1].clone(); // k/S = 1/8 for the summary
    let fmt = |a: &Acc| {
        format!(
            "exact {:.3}, Quest pages {:.3} (2x pages {:.3}), seed cosine {:.3}",
            a.mean(0),
            a.mean(1),
            a.mean(2),
            a.mean(3)
        )
    };
    let mut summary = format!(
        "attention mass kept at k/S=1/8: log-normal keys {}",
        fmt(&pick(&syn))
    );
    match &real {
        Some(accs) => {
            details["smollm2_135m"] = FRACTIONS
                .iter()
                .zip(accs)
                .map(|(&f, a)| (label(f), a.json()))
                .collect::<serde_json::Map<_, _>>()
                .into();
            summary = format!("{summary}; SmolLM2 real q/k {}", fmt(&pick(accs)));
        }
        None => {
            details["smollm2_135m"] = json!("shared/data/smollm2-kv not found");
            summary.push_str("; SmolLM2 data not found");
        }
    }
    Measured { summary, details }
}
