//! Test-side models of a target and a draft LM over a small vocabulary, and the exact-enumeration
//! oracle of speculative verification. Everything here is written independently of the crate's
//! code path (own warping in f64, own walk of the multi-step speculative sampling rule with
//! probabilities instead of random draws), so the tests compare the crate against it.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use squish_spec::{GREEDY_DRAFT, Sampling, Scores};
use squish_testkit::data;

/// A target and a draft "language model": the logits after any prefix are a deterministic
/// function of (seed, prefix); the draft's logits are the target's plus Gaussian noise.
pub(crate) struct Model {
    pub(crate) vocab: usize,
    pub(crate) scores: Scores,
    seed: u64,
    scale: f32,
    noise: f32,
    cache: HashMap<Vec<u32>, (Vec<f32>, Vec<f32>)>,
    /// Warped (p, q) per prefix, for the sampling `warped_for`.
    warped: HashMap<Vec<u32>, (Vec<f64>, Vec<f64>)>,
    warped_for: Option<Sampling>,
}

impl Model {
    pub(crate) fn new(vocab: usize, seed: u64, scale: f32, noise: f32, scores: Scores) -> Self {
        Self {
            vocab,
            scores,
            seed,
            scale,
            noise,
            cache: HashMap::new(),
            warped: HashMap::new(),
            warped_for: None,
        }
    }

    /// (target row, draft row) after `prefix`, in the model's score kind.
    pub(crate) fn rows(&mut self, prefix: &[u32]) -> &(Vec<f32>, Vec<f32>) {
        let (vocab, seed, scale, noise, scores) =
            (self.vocab, self.seed, self.scale, self.noise, self.scores);
        self.cache.entry(prefix.to_vec()).or_insert_with(|| {
            let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
            for &t in prefix {
                h = (h ^ u64::from(t + 1)).wrapping_mul(0x0100_0000_01b3);
                h ^= h >> 29;
            }
            let mut rng = StdRng::seed_from_u64(h ^ prefix.len() as u64);
            let t = data::normal_vec(&mut rng, vocab, 0.0, scale);
            let n = data::normal_vec(&mut rng, vocab, 0.0, noise);
            let d: Vec<f32> = t.iter().zip(&n).map(|(a, b)| a + b).collect();
            match scores {
                Scores::Probabilities => (to_probs(&t), to_probs(&d)),
                _ => (t, d),
            }
        })
    }

    /// Warped target distribution after `prefix`, in f64.
    pub(crate) fn p(&mut self, prefix: &[u32], s: &Sampling) -> Vec<f64> {
        self.warped_pair(prefix, s).0.clone()
    }

    fn warped_pair(&mut self, prefix: &[u32], s: &Sampling) -> &(Vec<f64>, Vec<f64>) {
        if self.warped_for != Some(*s) {
            self.warped.clear();
            self.warped_for = Some(*s);
        }
        if !self.warped.contains_key(prefix) {
            let scores = self.scores;
            let (t, d) = self.rows(prefix).clone();
            let pair = (warp(&t, scores, s), warp(&d, scores, s));
            self.warped.insert(prefix.to_vec(), pair);
        }
        &self.warped[prefix]
    }

    /// Warped draft distribution after `prefix`, in f64.
    pub(crate) fn q(&mut self, prefix: &[u32], s: &Sampling) -> Vec<f64> {
        self.warped_pair(prefix, s).1.clone()
    }
}

/// Softmax in f64, rounded to f32 probabilities.
pub(crate) fn to_probs(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = logits.iter().map(|&l| (f64::from(l - m)).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| (v / z) as f32).collect()
}

/// The test's own warping: temperature (0 = one-hot argmax), then top-k, then top-p, in f64.
pub(crate) fn warp(row: &[f32], scores: Scores, s: &Sampling) -> Vec<f64> {
    let v = row.len();
    if s.temperature == 0.0 {
        let mut best = 0;
        for i in 1..v {
            if row[i] > row[best] {
                best = i;
            }
        }
        let mut out = vec![0.0; v];
        out[best] = 1.0;
        return out;
    }
    let t = f64::from(s.temperature);
    let mut p: Vec<f64> = match scores {
        Scores::Probabilities => row.iter().map(|&x| f64::from(x).powf(1.0 / t)).collect(),
        _ => {
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            row.iter()
                .map(|&x| ((f64::from(x) - f64::from(m)) / t).exp())
                .collect()
        }
    };
    norm(&mut p);
    if s.top_k == 0 && s.top_p >= 1.0 {
        return p;
    }
    let mut order: Vec<usize> = (0..v).collect();
    order.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap().then(a.cmp(&b)));
    if s.top_k > 0 && s.top_k < v {
        for &i in &order[s.top_k..] {
            p[i] = 0.0;
        }
        norm(&mut p);
    }
    if s.top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = v;
        for (k, &i) in order.iter().enumerate() {
            cum += p[i];
            if cum >= f64::from(s.top_p) {
                keep = k + 1;
                break;
            }
        }
        for &i in &order[keep..] {
            p[i] = 0.0;
        }
        norm(&mut p);
    }
    p
}

pub(crate) fn norm(p: &mut [f64]) {
    let z: f64 = p.iter().sum();
    for x in p.iter_mut() {
        *x /= z;
    }
}

/// A draft-tree template: each node's children.
#[derive(Debug, Clone)]
pub(crate) struct Shape(pub(crate) Vec<Shape>);

impl Shape {
    pub(crate) fn leaf() -> Self {
        Shape(vec![])
    }
    /// A chain of `n` draft tokens.
    pub(crate) fn chain(n: usize) -> Self {
        let mut s = Shape::leaf();
        for _ in 0..n {
            s = Shape(vec![s]);
        }
        s
    }
    /// `branches` chains of `len` tokens from the root.
    pub(crate) fn branches(branches: usize, len: usize) -> Self {
        Shape((0..branches).map(|_| Shape::chain(len - 1)).collect())
    }
    pub(crate) fn depth(&self) -> usize {
        self.0.iter().map(|c| c.depth() + 1).max().unwrap_or(0)
    }
    pub(crate) fn size(&self) -> usize {
        self.0.iter().map(|c| c.size() + 1).sum()
    }
}

/// How the draft chooses the children of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Policy {
    /// i.i.d. draws (with replacement) from the draft distribution.
    Sampled,
    /// The i-th child is the draft's i-th most likely token (one-hot draft distributions).
    TopM,
}

/// The i-th most likely token of `q` (ties by lower index).
pub(crate) fn rank(q: &[f64], i: usize) -> u32 {
    let mut order: Vec<usize> = (0..q.len()).collect();
    order.sort_by(|&a, &b| q[b].partial_cmp(&q[a]).unwrap().then(a.cmp(&b)));
    order[i] as u32
}

/// P(emitted sequence = e) for every e, by walking every branch of drafting and of the
/// verification rule with its probability.
pub(crate) fn enumerate(
    model: &mut Model,
    s: &Sampling,
    shape: &Shape,
    policy: Policy,
) -> HashMap<Vec<u32>, f64> {
    let mut out = HashMap::new();
    let mut prefix = Vec::new();
    walk(model, s, shape, policy, &mut prefix, 1.0, &mut out);
    out
}

fn add_final(out: &mut HashMap<Vec<u32>, f64>, prefix: &[u32], w: f64, dist: &[f64]) {
    for (y, &py) in dist.iter().enumerate() {
        if py > 0.0 && w > 0.0 {
            let mut e = prefix.to_vec();
            e.push(y as u32);
            *out.entry(e).or_insert(0.0) += w * py;
        }
    }
}

fn walk(
    model: &mut Model,
    s: &Sampling,
    shape: &Shape,
    policy: Policy,
    prefix: &mut Vec<u32>,
    weight: f64,
    out: &mut HashMap<Vec<u32>, f64>,
) {
    let p = model.p(prefix, s);
    if shape.0.is_empty() {
        add_final(out, prefix, weight, &p);
        return;
    }
    let q = model.q(prefix, s);
    let m = shape.0.len();
    let v = model.vocab;
    // Every combination of child tokens with its drafting probability.
    let combos: Vec<(Vec<u32>, f64)> = match policy {
        Policy::TopM => vec![((0..m).map(|i| rank(&q, i)).collect(), 1.0)],
        Policy::Sampled => {
            let mut all = vec![(vec![], 1.0)];
            for _ in 0..m {
                let mut next = Vec::new();
                for (toks, w) in &all {
                    for (x, &qx) in q.iter().enumerate() {
                        if qx > 0.0 {
                            let mut t: Vec<u32> = toks.clone();
                            t.push(x as u32);
                            next.push((t, w * qx));
                        }
                    }
                }
                all = next;
            }
            all
        }
    };
    for (toks, w_draft) in combos {
        let mut r = p.clone();
        let mut w_reach = 1.0;
        for (i, &x) in toks.iter().enumerate() {
            let x = x as usize;
            // The draft distribution this child was drawn from.
            let qc: Vec<f64> = match policy {
                Policy::Sampled => q.clone(),
                Policy::TopM => (0..v).map(|j| if j == x { 1.0 } else { 0.0 }).collect(),
            };
            let a = (r[x] / qc[x]).min(1.0);
            if a > 0.0 {
                prefix.push(x as u32);
                walk(
                    model,
                    s,
                    &shape.0[i],
                    policy,
                    prefix,
                    weight * w_draft * w_reach * a,
                    out,
                );
                prefix.pop();
            }
            w_reach *= 1.0 - a;
            if w_reach <= 0.0 {
                break;
            }
            let mut nr: Vec<f64> = r.iter().zip(&qc).map(|(a, b)| (a - b).max(0.0)).collect();
            norm(&mut nr);
            r = nr;
        }
        if w_reach > 0.0 {
            add_final(out, prefix, weight * w_draft * w_reach, &r);
        }
    }
}

/// Extends each emitted sequence to `len` tokens by continuing with the target.
pub(crate) fn extend(
    model: &mut Model,
    s: &Sampling,
    emitted: &HashMap<Vec<u32>, f64>,
    len: usize,
) -> HashMap<Vec<u32>, f64> {
    let mut out = HashMap::new();
    for (e, &w) in emitted {
        let mut stack = vec![(e.clone(), w)];
        while let Some((seq, w)) = stack.pop() {
            if seq.len() >= len {
                *out.entry(seq).or_insert(0.0) += w;
                continue;
            }
            let p = model.p(&seq, s);
            for (y, &py) in p.iter().enumerate() {
                if py > 0.0 {
                    let mut n = seq.clone();
                    n.push(y as u32);
                    stack.push((n, w * py));
                }
            }
        }
    }
    out
}

/// The target's joint distribution of the first `len` tokens.
pub(crate) fn target_joint(model: &mut Model, s: &Sampling, len: usize) -> HashMap<Vec<u32>, f64> {
    let mut start = HashMap::new();
    start.insert(Vec::new(), 1.0);
    extend(model, s, &start, len)
}

/// Largest |a − b| over the union of keys.
pub(crate) fn max_diff(a: &HashMap<Vec<u32>, f64>, b: &HashMap<Vec<u32>, f64>) -> f64 {
    let mut worst: f64 = 0.0;
    for (k, &v) in a {
        worst = worst.max((v - b.get(k).copied().unwrap_or(0.0)).abs());
    }
    for (k, &v) in b {
        worst = worst.max((v - a.get(k).copied().unwrap_or(0.0)).abs());
    }
    worst
}

/// Flat buffers of one drafted tree.
pub(crate) struct Drafted {
    pub(crate) parents: Vec<u32>,
    pub(crate) tokens: Vec<u32>,
    pub(crate) draft_rows: Vec<u32>,
    pub(crate) target: Vec<f32>,
    pub(crate) draft: Vec<f32>,
}

/// Drafts a tree of `shape` from `model` with `policy` (depth-first, so siblings keep the
/// shape's order), building the target rows at every node and one draft row per internal node.
pub(crate) fn draft_tree(
    model: &mut Model,
    s: &Sampling,
    shape: &Shape,
    policy: Policy,
    rng: &mut StdRng,
) -> Drafted {
    let mut d = Drafted {
        parents: vec![],
        tokens: vec![],
        draft_rows: vec![],
        target: model.rows(&[]).0.clone(),
        draft: vec![],
    };
    let mut prefix = Vec::new();
    grow(model, s, shape, policy, rng, 0, &mut prefix, &mut d);
    d
}

#[allow(clippy::too_many_arguments)]
fn grow(
    model: &mut Model,
    s: &Sampling,
    shape: &Shape,
    policy: Policy,
    rng: &mut StdRng,
    node: u32,
    prefix: &mut Vec<u32>,
    d: &mut Drafted,
) {
    if shape.0.is_empty() {
        return;
    }
    let q = model.q(prefix, s);
    let row = (d.draft.len() / model.vocab) as u32;
    d.draft.extend_from_slice(&model.rows(prefix).1.clone());
    // Draw every child first (the children of a node are drawn before any is verified).
    let toks: Vec<u32> = (0..shape.0.len())
        .map(|i| match policy {
            Policy::Sampled => sample(&q, rng),
            Policy::TopM => rank(&q, i),
        })
        .collect();
    for (i, &x) in toks.iter().enumerate() {
        d.parents.push(node);
        d.tokens.push(x);
        d.draft_rows.push(if policy == Policy::TopM {
            GREEDY_DRAFT
        } else {
            row
        });
        let me = d.tokens.len() as u32;
        prefix.push(x);
        d.target.extend_from_slice(&model.rows(prefix).0.clone());
        grow(model, s, &shape.0[i], policy, rng, me, prefix, d);
        prefix.pop();
    }
}

/// Inverse-CDF draw in f64 (the test's own sampler).
pub(crate) fn sample(p: &[f64], rng: &mut StdRng) -> u32 {
    let u: f64 = rng.random::<f64>() * p.iter().sum::<f64>();
    let mut c = 0.0;
    let mut last = 0;
    for (i, &x) in p.iter().enumerate() {
        if x > 0.0 {
            c += x;
            last = i;
            if u < c {
                return i as u32;
            }
        }
    }
    last as u32
}

/// Pearson's chi-squared of `counts` (over `n` runs) against `probs`; cells with an expected
/// count below 5 are pooled into one. Returns (statistic, degrees of freedom).
pub(crate) fn chi_square(
    counts: &HashMap<Vec<u32>, u64>,
    probs: &HashMap<Vec<u32>, f64>,
    n: u64,
) -> (f64, usize) {
    let n = n as f64;
    let mut stat = 0.0;
    let mut cells = 0usize;
    let (mut pool_o, mut pool_e) = (0.0, 0.0);
    for (k, &p) in probs {
        let e = p * n;
        let o = counts.get(k).copied().unwrap_or(0) as f64;
        if e < 5.0 {
            pool_o += o;
            pool_e += e;
        } else {
            stat += (o - e) * (o - e) / e;
            cells += 1;
        }
    }
    for (k, &o) in counts {
        if !probs.contains_key(k) {
            pool_o += o as f64;
        }
    }
    if pool_e > 0.0 || pool_o > 0.0 {
        assert!(pool_e > 0.0, "{pool_o} runs in cells of probability 0");
        stat += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        cells += 1;
    }
    (stat, cells.saturating_sub(1))
}

/// The fixed critical value of chi-squared with `df` degrees of freedom at z = 4.5 (upper tail
/// about 3.4e-6), by the Wilson–Hilferty approximation.
pub(crate) fn chi_critical(df: usize) -> f64 {
    let k = df as f64;
    let a = 2.0 / (9.0 * k);
    k * (1.0 - a + 4.5 * a.sqrt()).powi(3)
}
