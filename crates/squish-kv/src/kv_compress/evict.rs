//! Token eviction policies of [`KvCompressor`](super::KvCompressor): which tokens of a head
//! to keep under a budget.
//!
//! - StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks",
//!   ICLR 2024): the first `sinks` tokens plus the most recent ones.
//! - H2O (Zhang et al., "H2O: Heavy-Hitter Oracle", NeurIPS 2023): the `recent` most recent
//!   tokens plus the heavy hitters, the tokens with the largest accumulated attention scores
//!   (supplied by the caller, who owns the attention computation).
//! - Key norm (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//!   Compression", EMNLP 2024): keep the keys with the **lowest** L2 norm, which draw the most
//!   attention.
//!
//! The kept tokens are always returned in temporal (ascending) order.

use std::cmp::Ordering;

/// A token eviction policy. Scores and norms are compared with ties broken towards the
/// earlier token, so selection is deterministic.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum EvictionPolicy<'a> {
    /// StreamingLLM: keep the first `sinks` tokens (attention sinks) and fill the rest of the
    /// budget with the most recent tokens.
    StreamingLlm {
        /// Attention-sink tokens kept at the start of the sequence.
        sinks: usize,
    },
    /// H2O: keep the `recent` most recent tokens and fill the rest of the budget with the
    /// tokens of largest accumulated attention score among the older ones.
    H2o {
        /// Most recent tokens always kept.
        recent: usize,
        /// Accumulated attention score per token, `[heads, seq_len]` row-major (finite).
        scores: &'a [f32],
    },
    /// Key norm: keep the tokens whose keys have the smallest L2 norm.
    KeyNorm,
}

/// How many tokens each head keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Budget<'a> {
    /// Every head keeps this many tokens (or all of them, if fewer).
    Equal(usize),
    /// Head `h` keeps `per_head[h]` tokens (or all, if fewer): ragged per-head storage.
    PerHead(&'a [usize]),
}

/// An eviction request: a policy and a budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eviction<'a> {
    /// Which tokens to keep.
    pub policy: EvictionPolicy<'a>,
    /// How many to keep per head.
    pub budget: Budget<'a>,
}

impl<'a> Eviction<'a> {
    /// An eviction request.
    pub const fn new(policy: EvictionPolicy<'a>, budget: Budget<'a>) -> Self {
        Self { policy, budget }
    }

    /// The number of tokens head `h` keeps out of `n`.
    pub(super) fn keep(&self, h: usize, n: usize) -> usize {
        match self.budget {
            Budget::Equal(k) => k.min(n),
            Budget::PerHead(ks) => ks[h].min(n),
        }
    }
}

/// Orders `(value, index)` ascending by value, then by index.
fn by_value_then_index(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
}

/// Writes into `kept` the ascending indices of the `keep` tokens out of `n` that `policy`
/// keeps for one head. `keys` is the head's `[n, head_dim]` keys (read by key norm only,
/// and may be empty otherwise), `scores` its H2O scores. `work` is reusable scratch.
#[allow(clippy::too_many_arguments)]
pub(super) fn select(
    policy: &EvictionPolicy<'_>,
    keys: &[f32],
    head_dim: usize,
    n: usize,
    scores: &[f32],
    keep: usize,
    kept: &mut Vec<u32>,
    work: &mut Vec<(f32, u32)>,
) {
    debug_assert!(keep <= n && n <= u32::MAX as usize);
    kept.clear();
    if keep == n {
        kept.extend(0..n as u32);
        return;
    }
    match *policy {
        EvictionPolicy::StreamingLlm { sinks } => {
            let s = sinks.min(keep);
            kept.extend(0..s as u32);
            kept.extend((n - (keep - s)) as u32..n as u32);
        }
        EvictionPolicy::H2o { recent, .. } => {
            let r = recent.min(keep);
            let old = n - r;
            // Largest scores first: negate so the ascending order picks them.
            work.clear();
            work.extend(scores[..old].iter().zip(0u32..).map(|(&s, i)| (-s, i)));
            smallest_first(work, keep - r, kept);
            kept.extend(old as u32..n as u32);
        }
        EvictionPolicy::KeyNorm => {
            work.clear();
            work.extend(
                keys.chunks_exact(head_dim)
                    .zip(0u32..)
                    .map(|(k, i)| (squared_norm(k), i)),
            );
            smallest_first(work, keep, kept);
        }
    }
}

/// `Σ x²` in `f32` with eight independent accumulators (a single running sum is one dependent
/// add per element and does not vectorise).
fn squared_norm(x: &[f32]) -> f32 {
    let (chunks, rest) = x.as_chunks::<8>();
    let mut acc = [0.0f32; 8];
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k] * c[k];
        }
    }
    let tail: f32 = rest.iter().map(|v| v * v).sum();
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Appends to `kept`, ascending, the indices of the `k` smallest `(value, index)` pairs.
fn smallest_first(work: &mut [(f32, u32)], k: usize, kept: &mut Vec<u32>) {
    if k == 0 {
        return;
    }
    if k < work.len() {
        work.select_nth_unstable_by(k - 1, by_value_then_index);
    }
    if 2 * k > work.len() {
        // Most tokens are kept (`work` holds the indices `0..work.len()`): sort the few evicted
        // ones and keep the complement.
        let n = work.len() as u32;
        let evicted = &mut work[k..];
        evicted.sort_unstable_by_key(|&(_, i)| i);
        let mut e = evicted.iter().map(|&(_, i)| i).peekable();
        for i in 0..n {
            if e.next_if_eq(&i).is_none() {
                kept.push(i);
            }
        }
        return;
    }
    let start = kept.len();
    kept.extend(work[..k].iter().map(|&(_, i)| i));
    kept[start..].sort_unstable();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_llm_keeps_sinks_and_recent() {
        let keys = [0.0f32; 10];
        let (mut kept, mut work) = (Vec::new(), Vec::new());
        let p = EvictionPolicy::StreamingLlm { sinks: 2 };
        select(&p, &keys, 1, 10, &[], 5, &mut kept, &mut work);
        assert_eq!(kept, [0, 1, 7, 8, 9]);
        select(&p, &keys, 1, 10, &[], 1, &mut kept, &mut work);
        assert_eq!(kept, [0]);
    }

    #[test]
    fn h2o_breaks_ties_towards_earlier_tokens() {
        let scores = [1.0, 3.0, 3.0, 0.5, 3.0, 9.0];
        let keys = [0.0f32; 6];
        let (mut kept, mut work) = (Vec::new(), Vec::new());
        let p = EvictionPolicy::H2o {
            recent: 1,
            scores: &scores,
        };
        select(&p, &keys, 1, 6, &scores, 3, &mut kept, &mut work);
        assert_eq!(kept, [1, 2, 5]);
    }
}
