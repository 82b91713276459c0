//! Error-bounded reuse of attention outputs for nearby queries over the same keys and values.
//!
//! # What is safe to reuse
//! An attention output `o(q) = Σⱼ softmax(s·q·kⱼ)ⱼ vⱼ` depends on the query **and** on the
//! context (the keys and values). A cached output may stand in for a new query only if both the
//! context is the same and the query is close enough that the output provably barely changes.
//! The seed keyed its cache on the query direction alone (cosine similarity), so `q` and `3q`
//! "hit" although their softmax temperatures differ threefold, and entries computed against one
//! context were served for another. Here:
//!
//! - every entry belongs to one slot `(layer, head)` and one **context version**; the caller
//!   passes an [`AttnContext`] with each call and bumps its `version` whenever the keys or
//!   values change, which clears the slot (entries never cross versions or slots);
//! - the default rule ([`ReuseRule::ErrorBounded`]) accepts a stored `q'` only when
//!   `s·M·‖q − q'‖₂ ≤ ε`, with `s` the softmax scale and `M` the largest key norm of the context.
//!
//! # The error bound
//! Let `zⱼ = s·q·kⱼ`, `z'ⱼ = s·q'·kⱼ`, `Δⱼ = zⱼ − z'ⱼ`, `p = softmax(z)`, `p' = softmax(z')`.
//!
//! 1. **Logits.** `|Δⱼ| = s·|(q − q')·kⱼ| ≤ s·‖kⱼ‖·‖q − q'‖ ≤ s·M·‖q − q'‖ ≤ ε` (Cauchy–Schwarz),
//!    so the oscillation `u = maxⱼ Δⱼ − minⱼ Δⱼ ≤ 2ε`.
//! 2. **Weights.** Shift `Δ` so `min Δ = 0` (softmax is shift-invariant); then `p'` is `p`
//!    tilted by `e^{−Δ}`, i.e. `p'ⱼ ∝ pⱼ·wⱼ` with `wⱼ ∈ [e^{−u}, 1]`. For any set `A` of
//!    positions with `t = p(A)`, `p'(A) ≤ t/(t + (1−t)·e^{−u})` (the ratio is largest when the
//!    weights are 1 on `A` and `e^{−u}` off it), hence
//!    `p'(A) − p(A) ≤ max_t t(1−t)(c−1)/(1 + t(c−1)) = (√c − 1)/(√c + 1) = tanh(u/4)` with
//!    `c = e^u`, the maximum at `t = 1/(1+√c)`; the same holds for `p(A) − p'(A)` (apply it to
//!    the complement). So the total-variation distance `TV(p, p') = ½‖p − p'‖₁ ≤ tanh(u/4) ≤
//!    tanh(ε/2)`, and the bound is attained by a two-point distribution (a unit test checks both
//!    the bound and its attainment).
//! 3. **Output.** `o − o' = Σⱼ (pⱼ − p'ⱼ)·vⱼ` with `Σⱼ (pⱼ − p'ⱼ) = 0`, which is `TV·(a − b)` for two
//!    convex combinations `a`, `b` of the values, so
//!    `‖o − o'‖₂ ≤ TV·2·maxⱼ‖vⱼ‖ ≤ 2·tanh(ε/2)·V` where `V = maxⱼ ‖vⱼ‖₂`.
//!
//! [`output_error_bound`] evaluates `2·tanh(ε/2)·V` (≈ `ε·V` for small ε; the cruder
//! `‖p − p'‖₁ ≤ e^{2ε} − 1` gives about twice as much). The bound is on **exact** attention
//! outputs: a reused output also carries whatever rounding error the caller's attention kernel
//! made when it computed the stored output. The distance test is itself conservative: the `f32`
//! squared distance is inflated by its worst-case relative rounding error before the
//! comparison, which is done in `f64`, so a hit always has a true distance within the radius.
//! If `M = 0` every logit is 0 whatever the query, so every stored query of the slot is
//! acceptable.
//!
//! # Search
//! A lookup scans the slot's entries newest first. An entry is skipped without touching its
//! vector when `|‖q‖ − ‖q'‖| > r` (the reverse triangle inequality: its distance exceeds the
//! radius `r = ε/(s·M)`), so a miss among queries of different norms costs one pass over the
//! stored norms. Entries that pass are next rejected, when clearly outside the radius, by the
//! expanded form `‖q‖² + ‖q'‖² − 2·q·q'` (one vectorised dot product, with its worst-case
//! rounding error allowed for); only the remaining candidates get the accurate distance that
//! decides acceptance. [`SearchPolicy::Nearest`] (default) returns the acceptable entry nearest to `q`
//! (the smallest error bound; ties go to the newest); [`SearchPolicy::FirstAcceptable`] stops at
//! the newest acceptable one (cheaper on hits, same guarantee, possibly a larger distance).
//!
//! # Cosine mode
//! [`ReuseRule::CosineUnbounded`] is the seed's rule (accept when `cos(q, q') ≥ threshold`),
//! kept for comparison. It gives **no** error bound: `q` and `c·q` have cosine 1 and different
//! outputs. Entries are still kept per slot and version. A zero query has no direction: in
//! cosine mode it always misses (counted in [`DedupStats::zero_norm_misses`]) and a stored zero
//! query never matches; in the bounded mode the zero vector is an ordinary query.
//!
//! # Storage
//! Each slot is a fixed-capacity ring in structure-of-arrays form: one contiguous buffer of
//! queries (`capacity × head_dim`), one of outputs and one of query norms, allocated on the
//! slot's first store. When full, a store overwrites the oldest entry (FIFO). Lookups and
//! stores do not allocate.
//!
//! No published system is followed for the acceptance rule: it and its bound are derived above
//! (step 2 is the standard total-variation bound between Gibbs distributions whose energies
//! differ by a bounded amount). Implements the seed's `AttentionDeduplicator`.

use squish_core::{ConfigError, ShapeError, check_finite, ops};

use crate::{Error, Result};

const COMPONENT: &str = "AttentionDeduplicator";

/// When a stored query's output may be returned for a new query.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ReuseRule {
    /// Accept when `s·M·‖q − q'‖₂ ≤ max_logit_change`: every logit moves by at most
    /// `max_logit_change`, so the output moves by at most [`output_error_bound`].
    ErrorBounded {
        /// ε, the largest allowed change of any logit `s·q·k` (finite, > 0).
        max_logit_change: f32,
    },
    /// The seed's rule: accept when `cos(q, q') ≥ threshold`. **Unbounded**: no guarantee on
    /// the output error (see the [module docs](self)).
    CosineUnbounded {
        /// Minimum cosine similarity, in `(-1, 1)` (1 is excluded: a rounded cosine of a
        /// vector with itself can fall just below it).
        threshold: f32,
    },
}

/// Which acceptable entry a lookup returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SearchPolicy {
    /// The acceptable entry nearest to the query (L2; cosine mode: the most similar); ties go
    /// to the newest. Scans every entry that passes the norm filter.
    #[default]
    Nearest,
    /// The newest acceptable entry; stops scanning there.
    FirstAcceptable,
}

/// Configuration of an [`AttentionDeduplicator`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AttentionDeduplicatorConfig {
    /// Number of layers (≥ 1).
    pub layers: usize,
    /// Number of (query) heads per layer (≥ 1).
    pub heads: usize,
    /// Length of each query and output vector (≥ 1).
    pub head_dim: usize,
    /// Entries kept per `(layer, head)` slot before FIFO eviction (≥ 1).
    pub capacity: usize,
    /// The acceptance rule.
    pub rule: ReuseRule,
    /// Which acceptable entry a lookup returns.
    pub search: SearchPolicy,
}

impl Default for AttentionDeduplicatorConfig {
    /// One layer and head of the seed's benchmark shape (head_dim 64, 512 entries), error
    /// bounded with ε = 0.01 (output error ≤ 0.01·max‖v‖), nearest-entry search.
    fn default() -> Self {
        Self {
            layers: 1,
            heads: 1,
            head_dim: 64,
            capacity: 512,
            rule: ReuseRule::ErrorBounded {
                max_logit_change: 0.01,
            },
            search: SearchPolicy::Nearest,
        }
    }
}

impl AttentionDeduplicatorConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that breaks its rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("layers", self.layers),
            ("heads", self.heads),
            ("head_dim", self.head_dim),
            ("capacity", self.capacity),
        ] {
            if v == 0 {
                return Err(ConfigError::new(COMPONENT, field, "must be >= 1", v));
            }
        }
        match self.rule {
            ReuseRule::ErrorBounded { max_logit_change } => {
                if !(max_logit_change.is_finite() && max_logit_change > 0.0) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "max_logit_change",
                        "must be finite and > 0",
                        max_logit_change,
                    ));
                }
            }
            ReuseRule::CosineUnbounded { threshold } => {
                if !(threshold > -1.0 && threshold < 1.0) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "threshold",
                        "must be in (-1, 1)",
                        threshold,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What the deduplicator needs to know about one head's keys and values.
///
/// The caller bumps `version` whenever the keys or values change (a token appended, a cache
/// evicted). Within one version the statistics must not change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnContext {
    /// Identifies the key/value contents; a different version clears the slot.
    pub version: u64,
    /// Softmax scale `s` applied to `q·k` (finite, > 0; usually `1/√head_dim`).
    pub scale: f32,
    /// `M`, an upper bound on the L2 norm of every key (finite, ≥ 0).
    pub max_key_norm: f32,
    /// `V`, an upper bound on the L2 norm of every value (finite, ≥ 0).
    pub max_value_norm: f32,
}

impl AttnContext {
    /// The context of `keys` and `values` (`[seq, dim]` each, row-major slices of
    /// `seq·key_dim` and `seq·value_dim` elements): their largest L2 norms, computed in `f64`
    /// and rounded up to `f32` so that they are true upper bounds.
    ///
    /// # Errors
    /// [`Error::Shape`] if a slice length is not a multiple of its dimension or the row counts
    /// differ; [`Error::Core`] for NaN or infinite data; [`Error::Config`] for a bad `scale`.
    pub fn from_kv(
        version: u64,
        scale: f32,
        keys: &[f32],
        key_dim: usize,
        values: &[f32],
        value_dim: usize,
    ) -> Result<Self> {
        if key_dim == 0
            || value_dim == 0
            || !keys.len().is_multiple_of(key_dim)
            || !values.len().is_multiple_of(value_dim)
            || keys.len() / key_dim != values.len() / value_dim
        {
            return Err(ShapeError::new(
                "AttnContext::from_kv keys [seq, key_dim] and values [seq, value_dim]",
                format!("equal row counts with key_dim {key_dim}, value_dim {value_dim}"),
                format!("{} key and {} value elements", keys.len(), values.len()),
            )
            .into());
        }
        check_finite("AttnContext keys", keys)?;
        check_finite("AttnContext values", values)?;
        let ctx = Self {
            version,
            scale,
            max_key_norm: max_norm_up(keys, key_dim),
            max_value_norm: max_norm_up(values, value_dim),
        };
        ctx.validate()?;
        Ok(ctx)
    }

    /// Checks the fields.
    ///
    /// # Errors
    /// [`ConfigError`] (component `AttnContext`) for a scale that is not finite and positive,
    /// or a norm bound that is not finite and non-negative.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(ConfigError::new(
                "AttnContext",
                "scale",
                "must be finite and > 0",
                self.scale,
            ));
        }
        for (field, v) in [
            ("max_key_norm", self.max_key_norm),
            ("max_value_norm", self.max_value_norm),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::new(
                    "AttnContext",
                    field,
                    "must be finite and >= 0",
                    v,
                ));
            }
        }
        Ok(())
    }
}

/// The largest row norm of `rows` (`dim` wide), computed in f64, as an f32 upper bound.
fn max_norm_up(rows: &[f32], dim: usize) -> f32 {
    let m = rows
        .chunks_exact(dim)
        .map(|r| r.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
        .fold(0.0f64, f64::max)
        .sqrt();
    round_up_f32(m)
}

/// The smallest `f32` that is ≥ `x` (for finite, non-negative `x` within `f32` range).
fn round_up_f32(x: f64) -> f32 {
    #[allow(clippy::cast_possible_truncation)] // rounding to nearest, corrected below
    let y = x as f32;
    if f64::from(y) < x { y.next_up() } else { y }
}

/// The bound on `‖o − o'‖₂` for exact attention outputs whose logits all differ by at most
/// `max_logit_change` (ε), over values of norm at most `max_value_norm` (V): `2·tanh(ε/2)·V`.
/// Derived in the [module docs](self).
pub fn output_error_bound(max_logit_change: f64, max_value_norm: f64) -> f64 {
    2.0 * (max_logit_change / 2.0).tanh() * max_value_norm
}

/// The outcome of a lookup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup {
    /// No stored query was acceptable; the output buffer is untouched.
    Miss,
    /// A stored output was copied into the output buffer.
    Hit {
        /// `‖q − q'‖₂` to the stored query (from the `f32` computation).
        distance: f32,
        /// Bound on `‖o − o(q)‖₂` against the exact output for `q`: `2·tanh(ε'/2)·V` with
        /// `ε' = s·M·distance` (conservatively rounded); `None` in cosine mode (unbounded).
        error_bound: Option<f32>,
    },
}

/// Counters of an [`AttentionDeduplicator`]; exact, never sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DedupStats {
    /// Lookups made (`hits + misses`).
    pub lookups: u64,
    /// Lookups that returned a stored output.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Of the misses, those of a zero query in cosine mode (no direction to compare).
    pub zero_norm_misses: u64,
    /// Entries stored.
    pub stores: u64,
    /// Entries overwritten by FIFO eviction.
    pub evictions: u64,
    /// Entries dropped because their slot's context version changed.
    pub invalidated: u64,
}

impl DedupStats {
    /// `hits / lookups`, or 0 before the first lookup.
    pub fn hit_rate(&self) -> f64 {
        if self.lookups == 0 {
            0.0
        } else {
            #[allow(clippy::cast_precision_loss)] // counts far below 2⁵³
            let r = self.hits as f64 / self.lookups as f64;
            r
        }
    }
}

/// One `(layer, head)` ring.
#[derive(Debug, Clone, Default)]
struct Slot {
    ctx: Option<AttnContext>,
    /// `capacity × head_dim` stored queries (allocated on first store).
    queries: Vec<f32>,
    /// `capacity × head_dim` stored outputs.
    outputs: Vec<f32>,
    /// `capacity` stored query norms.
    norms: Vec<f32>,
    /// Entries held (≤ capacity).
    len: usize,
    /// Position the next store writes.
    next: usize,
}

/// A cache of attention outputs reused only within a provable error bound.
///
/// Implements the seed's `AttentionDeduplicator`, made safe: entries are keyed by `(layer,
/// head, context version)` and, by default, reused only when every logit provably changes by at
/// most ε (see the [module docs](self) for the rule, the bound and its derivation).
///
/// # Example
/// ```
/// use squish_attn::{AttentionDeduplicator, AttentionDeduplicatorConfig, AttnContext, Lookup};
///
/// let mut cfg = AttentionDeduplicatorConfig::default();
/// cfg.head_dim = 2;
/// let mut dedup = AttentionDeduplicator::new(cfg)?; // ε = 0.01 by default
/// let (keys, values) = ([1.0, 0.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0]);
/// let ctx = AttnContext::from_kv(0, 0.5, &keys, 2, &values, 2)?;
/// let mut out = [0.0; 2];
/// assert_eq!(dedup.lookup(0, 0, &ctx, &[0.3, 0.1], &mut out)?, Lookup::Miss);
/// dedup.store(0, 0, &ctx, &[0.3, 0.1], &[1.9, 2.9])?; // the caller's attention output
/// // A query 0.001 away: every logit moves by at most 0.5·1·0.001 ≤ ε.
/// let hit = dedup.lookup(0, 0, &ctx, &[0.301, 0.1], &mut out)?;
/// assert!(matches!(hit, Lookup::Hit { error_bound: Some(b), .. } if b < 0.01));
/// assert_eq!(out, [1.9, 2.9]);
/// // 3q points the same way but is far away: a miss (the seed's cosine rule would hit).
/// assert_eq!(dedup.lookup(0, 0, &ctx, &[0.9, 0.3], &mut out)?, Lookup::Miss);
/// // New keys or values: a new version, and the old entries are gone.
/// let ctx1 = AttnContext { version: 1, ..ctx };
/// assert_eq!(dedup.lookup(0, 0, &ctx1, &[0.3, 0.1], &mut out)?, Lookup::Miss);
/// # Ok::<(), squish_attn::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AttentionDeduplicator {
    cfg: AttentionDeduplicatorConfig,
    slots: Vec<Slot>,
    stats: DedupStats,
}

impl AttentionDeduplicator {
    /// An empty cache; slot buffers are allocated on each slot's first store.
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg` is invalid.
    pub fn new(cfg: AttentionDeduplicatorConfig) -> Result<Self> {
        cfg.validate()?;
        let slots = vec![Slot::default(); cfg.layers * cfg.heads];
        Ok(Self {
            cfg,
            slots,
            stats: DedupStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AttentionDeduplicatorConfig {
        &self.cfg
    }

    /// The counters so far.
    pub fn stats(&self) -> DedupStats {
        self.stats
    }

    /// Entries currently held by slot `(layer, head)` (0 for an unknown slot).
    pub fn len(&self, layer: usize, head: usize) -> usize {
        self.slot_index(layer, head)
            .map_or(0, |i| self.slots[i].len)
    }

    /// Bytes of query, output and norm buffers allocated across all slots.
    pub fn bytes_held(&self) -> usize {
        self.slots
            .iter()
            .map(|s| (s.queries.capacity() + s.outputs.capacity() + s.norms.capacity()) * 4)
            .sum()
    }

    fn slot_index(&self, layer: usize, head: usize) -> Option<usize> {
        (layer < self.cfg.layers && head < self.cfg.heads).then(|| layer * self.cfg.heads + head)
    }

    /// Validates the call and brings the slot to `ctx`'s version; returns the slot index and
    /// `‖q‖`.
    fn enter(
        &mut self,
        layer: usize,
        head: usize,
        ctx: &AttnContext,
        q: &[f32],
    ) -> Result<(usize, f32)> {
        let Some(i) = self.slot_index(layer, head) else {
            return Err(Error::UnknownSlot {
                layer,
                head,
                layers: self.cfg.layers,
                heads: self.cfg.heads,
            });
        };
        if q.len() != self.cfg.head_dim {
            return Err(ShapeError::new(
                "AttentionDeduplicator query [head_dim]",
                self.cfg.head_dim,
                q.len(),
            )
            .into());
        }
        let qn = finite_norm("AttentionDeduplicator query", q)?;
        let slot = &mut self.slots[i];
        match slot.ctx {
            Some(old) if old.version == ctx.version => {
                if old != *ctx {
                    return Err(Error::ContextMismatch {
                        version: ctx.version,
                    });
                }
            }
            _ => {
                ctx.validate()?;
                self.stats.invalidated += slot.len as u64;
                slot.len = 0;
                slot.next = 0;
                slot.ctx = Some(*ctx);
            }
        }
        Ok((i, qn))
    }

    /// Looks for a stored query of slot `(layer, head)` and context `ctx` acceptable for `q`
    /// under the configured rule; on a hit copies its output into `out`.
    ///
    /// A `ctx.version` different from the slot's clears the slot first (and so misses).
    ///
    /// # Errors
    /// [`Error::UnknownSlot`] for a layer or head out of range; [`Error::Shape`] if `q` or
    /// `out` is not `head_dim` long; [`Error::Core`] for a NaN or infinite query;
    /// [`Error::Config`] for an invalid new `ctx`; [`Error::ContextMismatch`] if `ctx` has the
    /// slot's version but different statistics. Errors change neither the cache nor the
    /// counters.
    ///
    /// # Performance
    /// One pass over the slot's stored norms; a full distance computation (`head_dim`
    /// multiply-adds) only for entries whose norm is within the radius. No allocation.
    pub fn lookup(
        &mut self,
        layer: usize,
        head: usize,
        ctx: &AttnContext,
        q: &[f32],
        out: &mut [f32],
    ) -> Result<Lookup> {
        if out.len() != self.cfg.head_dim {
            return Err(ShapeError::new(
                "AttentionDeduplicator output [head_dim]",
                self.cfg.head_dim,
                out.len(),
            )
            .into());
        }
        let (i, qn) = self.enter(layer, head, ctx, q)?;
        let slot = &self.slots[i];
        let d = self.cfg.head_dim;
        let found = match self.cfg.rule {
            ReuseRule::ErrorBounded { max_logit_change } => {
                find_bounded(slot, q, qn, ctx, max_logit_change, self.cfg.search)
            }
            ReuseRule::CosineUnbounded { threshold } => {
                if qn == 0.0 {
                    self.stats.zero_norm_misses += 1;
                    None
                } else {
                    find_cosine(slot, q, qn, threshold, self.cfg.search)
                }
            }
        };
        self.stats.lookups += 1;
        let Some((e, d2)) = found else {
            self.stats.misses += 1;
            return Ok(Lookup::Miss);
        };
        self.stats.hits += 1;
        out.copy_from_slice(&slot.outputs[e * d..(e + 1) * d]);
        let d2 = match d2 {
            Some(d2) => d2,
            None => sq_dist(q, &slot.queries[e * d..(e + 1) * d]),
        };
        let distance = d2.sqrt();
        let error_bound = match self.cfg.rule {
            ReuseRule::ErrorBounded { .. } => {
                let dist_up = (f64::from(d2) * (1.0 + dist_slack(d))).sqrt();
                let eps = f64::from(ctx.scale) * f64::from(ctx.max_key_norm) * dist_up;
                Some(round_up_f32(output_error_bound(
                    eps,
                    f64::from(ctx.max_value_norm),
                )))
            }
            ReuseRule::CosineUnbounded { .. } => None,
        };
        Ok(Lookup::Hit {
            distance,
            error_bound,
        })
    }

    /// Stores `output`, the attention output the caller computed for query `q` against
    /// context `ctx`, in slot `(layer, head)`; when the slot is full the oldest entry is
    /// overwritten.
    ///
    /// # Errors
    /// As [`lookup`](Self::lookup), with `output` in place of `out`; also [`Error::Core`] for
    /// a NaN or infinite output. Errors change neither the cache nor the counters.
    ///
    /// # Performance
    /// Two `head_dim` copies and one norm; allocation only on the slot's first store.
    pub fn store(
        &mut self,
        layer: usize,
        head: usize,
        ctx: &AttnContext,
        q: &[f32],
        output: &[f32],
    ) -> Result<()> {
        let d = self.cfg.head_dim;
        if output.len() != d {
            return Err(ShapeError::new(
                "AttentionDeduplicator output [head_dim]",
                d,
                output.len(),
            )
            .into());
        }
        finite_norm("AttentionDeduplicator output", output)?;
        let (i, qn) = self.enter(layer, head, ctx, q)?;
        let cap = self.cfg.capacity;
        let slot = &mut self.slots[i];
        if slot.queries.is_empty() {
            slot.queries = vec![0.0; cap * d];
            slot.outputs = vec![0.0; cap * d];
            slot.norms = vec![0.0; cap];
        }
        let e = slot.next;
        slot.queries[e * d..(e + 1) * d].copy_from_slice(q);
        slot.outputs[e * d..(e + 1) * d].copy_from_slice(output);
        slot.norms[e] = qn;
        slot.next = if e + 1 == cap { 0 } else { e + 1 };
        if slot.len == cap {
            self.stats.evictions += 1;
        } else {
            slot.len += 1;
        }
        self.stats.stores += 1;
        Ok(())
    }

    /// Drops every entry and context of every slot (counted as invalidated); buffers are kept.
    pub fn clear(&mut self) {
        for s in &mut self.slots {
            self.stats.invalidated += s.len as u64;
            s.len = 0;
            s.next = 0;
            s.ctx = None;
        }
    }
}

/// `‖x‖₂` after checking that `x` is finite. A finite `x·x` proves every element finite (a NaN
/// or infinity would make it NaN or infinite), so the common case costs one dot product; only
/// otherwise does [`check_finite`] scan for the offending element. For finite vectors whose
/// squared norm overflows `f32` the norm is `+inf`, which no distance test accepts except an
/// exactly equal stored query.
fn finite_norm(context: &'static str, x: &[f32]) -> Result<f32> {
    let n2 = ops::dot(x, x);
    if !n2.is_finite() {
        check_finite(context, x)?;
    }
    Ok(n2.sqrt())
}

/// Relative slack covering the rounding of an `f32` squared distance of `d`-vectors: each
/// difference and square is within `2⁻²⁴` relative, and a sum of `d` non-negative terms within
/// `(d − 1)·2⁻²⁴`, about `(d + 2)·2⁻²⁴` in all; doubled for margin.
fn dist_slack(d: usize) -> f64 {
    #[allow(clippy::cast_precision_loss)] // head_dim far below 2⁵³
    let d = d as f64;
    (d + 2.0) * f64::from(f32::EPSILON) // f32::EPSILON = 2 · 2⁻²⁴
}

/// Stored entries of `slot`, newest first.
fn newest_first(slot: &Slot) -> impl Iterator<Item = usize> + '_ {
    (0..slot.next).rev().chain((slot.next..slot.len).rev())
}

/// `‖a − b‖²` in `f32` with eight independent accumulators.
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        let t = x - y;
        tail += t * t;
    }
    acc.iter().sum::<f32>() + tail
}

/// Error-bounded search: the entry and its f32 squared distance.
fn find_bounded(
    slot: &Slot,
    q: &[f32],
    qn: f32,
    ctx: &AttnContext,
    eps: f32,
    search: SearchPolicy,
) -> Option<(usize, Option<f32>)> {
    let d = q.len();
    // Radius r = ε / (s·M); with M = 0 every query is acceptable.
    let denom = f64::from(ctx.scale) * f64::from(ctx.max_key_norm);
    let r2 = if denom > 0.0 {
        (f64::from(eps) / denom).powi(2)
    } else {
        f64::INFINITY
    };
    // The norm filter only skips work: a small margin keeps rounding of the norms from
    // rejecting an acceptable entry; acceptance itself is decided below.
    #[allow(clippy::cast_possible_truncation)]
    let filter = (r2.sqrt() * (1.0 + 1e-4) + 1e-30) as f32 + 1e-6 * qn;
    let grow = 1.0 + dist_slack(d);
    // Bound on the rounding error of ‖q‖² + ‖q'‖² − 2·q·q' evaluated from f32 norms and an f32
    // dot product, relative to ‖q‖² + ‖q'‖²: about (2d + 7)·2⁻²⁴, taken with a margin.
    #[allow(clippy::cast_precision_loss)] // head_dim far below 2⁵³
    let expand_tol = 4.0 * (d as f64 + 4.0) * f64::from(f32::EPSILON) / 2.0;
    let qn2 = f64::from(qn) * f64::from(qn);
    let mut best: Option<(usize, f32)> = None;
    for e in newest_first(slot) {
        let n = slot.norms[e];
        if (qn - n).abs() > filter {
            continue;
        }
        let stored = &slot.queries[e * d..(e + 1) * d];
        // Cheap rejection by the expanded form (one vectorised dot product); only entries that
        // may be within the radius get the accurate difference-based distance below.
        let n2 = f64::from(n) * f64::from(n);
        let expanded = qn2 + n2 - 2.0 * f64::from(ops::dot(q, stored));
        if expanded - expand_tol * (qn2 + n2) > r2 {
            continue;
        }
        let d2 = sq_dist(q, stored);
        if f64::from(d2) * grow > r2 {
            continue;
        }
        if search == SearchPolicy::FirstAcceptable {
            return Some((e, Some(d2)));
        }
        if best.is_none_or(|(_, b)| d2 < b) {
            best = Some((e, d2));
        }
    }
    best.map(|(e, d2)| (e, Some(d2)))
}

/// Cosine search (the seed's unbounded rule): the entry, distance computed by the caller.
fn find_cosine(
    slot: &Slot,
    q: &[f32],
    qn: f32,
    threshold: f32,
    search: SearchPolicy,
) -> Option<(usize, Option<f32>)> {
    let d = q.len();
    let mut best: Option<(usize, f32)> = None;
    for e in newest_first(slot) {
        let n = slot.norms[e];
        if n == 0.0 {
            continue;
        }
        let cos = ops::dot(q, &slot.queries[e * d..(e + 1) * d]) / (qn * n);
        if cos < threshold {
            continue;
        }
        if search == SearchPolicy::FirstAcceptable {
            return Some((e, None));
        }
        if best.is_none_or(|(_, b)| cos > b) {
            best = Some((e, cos));
        }
    }
    best.map(|(e, _)| (e, None))
}

#[cfg(test)]
mod tests {
    use rand::RngExt;
    use squish_testkit::reference::l2_distance as dist;
    use squish_testkit::{data, prop};

    use super::*;

    /// Exact attention output `softmax(s·K q) V` in float64.
    fn attend(q: &[f32], keys: &[f32], values: &[f32], d: usize, scale: f32) -> Vec<f64> {
        assert_eq!(q.len(), d);
        squish_testkit::reference::attention_f64(q, keys, values, scale)
    }

    fn cfg(
        d: usize,
        cap: usize,
        rule: ReuseRule,
        search: SearchPolicy,
    ) -> AttentionDeduplicatorConfig {
        AttentionDeduplicatorConfig {
            layers: 2,
            heads: 3,
            head_dim: d,
            capacity: cap,
            rule,
            search,
        }
    }

    fn bounded(eps: f32) -> ReuseRule {
        ReuseRule::ErrorBounded {
            max_logit_change: eps,
        }
    }

    #[test]
    fn softmax_total_variation_bound_holds_and_is_attained() {
        // TV(softmax(z), softmax(z + Δ)) ≤ tanh(u/4) for Δ of oscillation u, with equality for
        // the two-point tilt at t = 1/(1 + e^{u/2}).
        prop::check("dedup_tv_lemma", 300, |rng| {
            let n = rng.random_range(1..40);
            let u: f64 = rng.random_range(0.0..6.0);
            let z = data::normal_vec_f64(rng, n, 0.0, 3.0);
            let delta: Vec<f64> = (0..n)
                .map(|_| {
                    if rng.random_bool(0.3) {
                        [0.0, u][rng.random_range(0..2)]
                    } else {
                        rng.random_range(0.0..=u)
                    }
                })
                .collect();
            let sm = |x: &[f64]| {
                let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = x.iter().map(|&v| (v - m).exp()).collect();
                let s: f64 = w.iter().sum();
                w.into_iter().map(|v| v / s).collect::<Vec<_>>()
            };
            let p = sm(&z);
            let zp: Vec<f64> = z.iter().zip(&delta).map(|(a, b)| a + b).collect();
            let pp = sm(&zp);
            let tv = 0.5 * p.iter().zip(&pp).map(|(a, b)| (a - b).abs()).sum::<f64>();
            assert!(tv <= (u / 4.0).tanh() + 1e-12, "tv {tv} > tanh({u}/4)");
        });
        for u in [0.01f64, 0.5, 2.0, 8.0] {
            let t = 1.0 / (1.0 + (u / 2.0).exp());
            // p = (t, 1 − t), tilt the first by e^u.
            let p1 = t * u.exp() / (t * u.exp() + 1.0 - t);
            assert!((p1 - t - (u / 4.0).tanh()).abs() < 1e-12);
        }
    }

    #[test]
    fn a_hit_is_within_the_documented_bound_of_exact_attention() {
        let mut worst_ratio = 0.0f64;
        let mut hits = 0;
        prop::check("dedup_hit_error_bound", 200, |rng| {
            let d = [2, 8, 16, 64][rng.random_range(0..4)];
            let seq = rng.random_range(1..60);
            let scale = 1.0 / (d as f32).sqrt() * rng.random_range(0.5..4.0);
            // Keys with log-normal norms, values of mixed scale.
            let mut keys = data::normal_vec(rng, seq * d, 0.0, 1.0);
            for k in keys.chunks_exact_mut(d) {
                let c = data::lognormal_vec(rng, 1, 0.0, 1.0)[0];
                k.iter_mut().for_each(|x| *x *= c);
            }
            let vstd = rng.random_range(0.1..5.0);
            let values = data::normal_vec(rng, seq * d, 0.0, vstd);
            let ctx =
                AttnContext::from_kv(rng.random::<u64>(), scale, &keys, d, &values, d).unwrap();
            let eps = [0.01f32, 0.1, 0.5, 2.0][rng.random_range(0..4)];
            let search = if rng.random_bool(0.5) {
                SearchPolicy::Nearest
            } else {
                SearchPolicy::FirstAcceptable
            };
            let mut dd = AttentionDeduplicator::new(cfg(d, 8, bounded(eps), search)).unwrap();
            let radius = f64::from(eps) / (f64::from(scale) * f64::from(ctx.max_key_norm));
            let base = data::normal_vec(rng, d, 0.0, 2.0);
            for _ in 0..6 {
                // Stored queries around `base` at distances spread around the radius.
                let dir = data::normal_vec(rng, d, 0.0, 1.0);
                let n = dir.iter().map(|x| x * x).sum::<f32>().sqrt();
                let r = radius as f32 * rng.random_range(0.0..2.0);
                let q: Vec<f32> = base.iter().zip(&dir).map(|(b, x)| b + x / n * r).collect();
                let o: Vec<f32> = attend(&q, &keys, &values, d, scale)
                    .iter()
                    .map(|&x| x as f32)
                    .collect();
                dd.store(1, 2, &ctx, &q, &o).unwrap();
            }
            let mut out = vec![0.0f32; d];
            if let Lookup::Hit {
                distance,
                error_bound,
            } = dd.lookup(1, 2, &ctx, &base, &mut out).unwrap()
            {
                let exact = attend(&base, &keys, &values, d, scale);
                let err = dist(&out, &exact);
                let bound = f64::from(error_bound.unwrap());
                // The stored output was rounded to f32 once.
                let rounding = 1e-6 * f64::from(ctx.max_value_norm);
                assert!(err <= bound + rounding, "error {err} > bound {bound}");
                assert!(
                    f64::from(distance) <= radius * (1.0 + 1e-4),
                    "accepted beyond the radius"
                );
                assert!(
                    bound
                        <= output_error_bound(f64::from(eps), f64::from(ctx.max_value_norm))
                            * (1.0 + 1e-4)
                );
                if bound > 0.0 {
                    worst_ratio = worst_ratio.max(err / bound);
                }
                hits += 1;
            }
        });
        assert!(hits > 50, "the property should exercise hits, got {hits}");
        eprintln!("worst observed error / bound = {worst_ratio:.3} over {hits} hits");
    }

    #[test]
    fn nearest_returns_the_closest_acceptable_entry_and_first_the_newest() {
        prop::check("dedup_search_oracle", 100, |rng| {
            let d = 8;
            let ctx = AttnContext {
                version: 1,
                scale: 1.0,
                max_key_norm: 1.0,
                max_value_norm: 1.0,
            };
            let eps = 0.5;
            let cap = rng.random_range(1..12);
            let n = rng.random_range(0..3 * cap);
            let q = data::normal_vec(rng, d, 0.0, 1.0);
            let mut stored: Vec<Vec<f32>> = Vec::new();
            let mut near =
                AttentionDeduplicator::new(cfg(d, cap, bounded(eps), SearchPolicy::Nearest))
                    .unwrap();
            let mut first = AttentionDeduplicator::new(cfg(
                d,
                cap,
                bounded(eps),
                SearchPolicy::FirstAcceptable,
            ))
            .unwrap();
            for i in 0..n {
                let x: Vec<f32> = q
                    .iter()
                    .map(|v| v + rng.random_range(-0.3f32..0.3))
                    .collect();
                let o = vec![i as f32; d];
                near.store(0, 0, &ctx, &x, &o).unwrap();
                first.store(0, 0, &ctx, &x, &o).unwrap();
                stored.push(x);
            }
            // Oracle over the live window (the last `cap` stores), by exact f64 distance.
            let live: Vec<(usize, f64)> = (n.saturating_sub(cap)..n)
                .map(|i| {
                    (
                        i,
                        dist(
                            &q,
                            &stored[i].iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                        ),
                    )
                })
                .collect();
            let ok: Vec<&(usize, f64)> = live
                .iter()
                .filter(|(_, dd)| *dd <= 0.5 * (1.0 - 1e-5))
                .collect();
            let mut out = vec![0.0f32; d];
            let r = near.lookup(0, 0, &ctx, &q, &mut out).unwrap();
            let clearly_none = live.iter().all(|(_, dd)| *dd > 0.5 * (1.0 + 1e-5));
            if clearly_none {
                assert_eq!(r, Lookup::Miss);
            }
            if let Some(best) = ok
                .iter()
                .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap().then(b.0.cmp(&a.0)))
            {
                assert!(matches!(r, Lookup::Hit { .. }));
                let second = ok
                    .iter()
                    .filter(|x| x.0 != best.0)
                    .map(|x| x.1)
                    .fold(f64::INFINITY, f64::min);
                if second - best.1 > 1e-5 {
                    assert_eq!(out[0], best.0 as f32);
                }
                let r = first.lookup(0, 0, &ctx, &q, &mut out).unwrap();
                assert!(matches!(r, Lookup::Hit { .. }));
                let newest = ok.iter().map(|x| x.0).max().unwrap();
                let newer_borderline = live
                    .iter()
                    .any(|(i, dd)| *i > newest && (dd - 0.5).abs() <= 1e-5);
                if !newer_borderline {
                    assert_eq!(out[0], newest as f32);
                }
            }
        });
    }

    #[test]
    fn store_then_lookup_of_the_same_query_is_a_bit_exact_hit() {
        prop::check("dedup_same_query_hit", 50, |rng| {
            let d = rng.random_range(1..70);
            for rule in [
                bounded(1e-6),
                ReuseRule::CosineUnbounded { threshold: 0.9999 },
            ] {
                let mut dd =
                    AttentionDeduplicator::new(cfg(d, 4, rule, SearchPolicy::Nearest)).unwrap();
                let ctx = AttnContext {
                    version: 0,
                    scale: 0.125,
                    max_key_norm: 30.0,
                    max_value_norm: 3.0,
                };
                let q = data::normal_vec(rng, d, 0.0, 1.0);
                let o = data::normal_vec(rng, d, 0.0, 1.0);
                dd.store(0, 1, &ctx, &q, &o).unwrap();
                let mut out = vec![0.0; d];
                let r = dd.lookup(0, 1, &ctx, &q, &mut out).unwrap();
                assert!(
                    matches!(r, Lookup::Hit { distance, .. } if distance == 0.0),
                    "{r:?}"
                );
                assert_eq!(out, o);
                if let Lookup::Hit {
                    error_bound: Some(b),
                    ..
                } = r
                {
                    assert_eq!(b, 0.0);
                }
            }
        });
    }

    #[test]
    fn entries_never_cross_versions_or_slots() {
        let d = 4;
        let mut dd =
            AttentionDeduplicator::new(cfg(d, 8, bounded(1.0), SearchPolicy::Nearest)).unwrap();
        let c0 = AttnContext {
            version: 0,
            scale: 1.0,
            max_key_norm: 1.0,
            max_value_norm: 1.0,
        };
        let q = [0.5, -0.5, 1.0, 0.0];
        dd.store(0, 0, &c0, &q, &[1.0; 4]).unwrap();
        dd.store(0, 0, &c0, &[9.0; 4], &[2.0; 4]).unwrap();
        let mut out = [0.0; 4];
        // Other heads and layers, same version: miss.
        for (l, h) in [(0, 1), (0, 2), (1, 0)] {
            assert_eq!(dd.lookup(l, h, &c0, &q, &mut out).unwrap(), Lookup::Miss);
        }
        assert!(matches!(
            dd.lookup(0, 0, &c0, &q, &mut out).unwrap(),
            Lookup::Hit { .. }
        ));
        // Same version with other statistics is an error, and changes nothing.
        let bad = AttnContext {
            max_key_norm: 2.0,
            ..c0
        };
        let e = dd.lookup(0, 0, &bad, &q, &mut out).unwrap_err();
        assert_eq!(e, Error::ContextMismatch { version: 0 });
        assert_eq!(dd.len(0, 0), 2);
        // A new version clears the slot: the same query misses.
        let c1 = AttnContext { version: 1, ..c0 };
        assert_eq!(dd.lookup(0, 0, &c1, &q, &mut out).unwrap(), Lookup::Miss);
        assert_eq!(dd.len(0, 0), 0);
        assert_eq!(dd.stats().invalidated, 2);
        // Going back to version 0 does not resurrect anything.
        assert_eq!(dd.lookup(0, 0, &c0, &q, &mut out).unwrap(), Lookup::Miss);
    }

    #[test]
    fn fifo_after_capacity_plus_j_stores_exactly_the_first_j_miss() {
        for (cap, j) in [(1, 0), (1, 3), (5, 2), (8, 8), (8, 13)] {
            let d = 3;
            let mut dd =
                AttentionDeduplicator::new(cfg(d, cap, bounded(0.01), SearchPolicy::Nearest))
                    .unwrap();
            let ctx = AttnContext {
                version: 5,
                scale: 1.0,
                max_key_norm: 1.0,
                max_value_norm: 1.0,
            };
            let qs: Vec<[f32; 3]> = (0..cap + j).map(|i| [i as f32, 1.0, -(i as f32)]).collect();
            for (i, q) in qs.iter().enumerate() {
                dd.store(1, 1, &ctx, q, &[i as f32; 3]).unwrap();
            }
            assert_eq!(dd.len(1, 1), cap);
            assert_eq!(dd.stats().evictions, j as u64);
            let mut out = [0.0; 3];
            for (i, q) in qs.iter().enumerate() {
                let r = dd.lookup(1, 1, &ctx, q, &mut out).unwrap();
                if i < j {
                    assert_eq!(r, Lookup::Miss, "entry {i} should be evicted");
                } else {
                    assert!(matches!(r, Lookup::Hit { .. }));
                    assert_eq!(out, [i as f32; 3]);
                }
            }
        }
    }

    #[test]
    fn zero_queries_are_handled_explicitly() {
        let d = 4;
        let ctx = AttnContext {
            version: 0,
            scale: 1.0,
            max_key_norm: 2.0,
            max_value_norm: 1.0,
        };
        let mut out = [0.0; 4];
        // Bounded: the zero vector is an ordinary point.
        let mut dd =
            AttentionDeduplicator::new(cfg(d, 4, bounded(0.1), SearchPolicy::Nearest)).unwrap();
        dd.store(0, 0, &ctx, &[0.0; 4], &[1.0; 4]).unwrap();
        assert!(matches!(
            dd.lookup(0, 0, &ctx, &[0.0; 4], &mut out).unwrap(),
            Lookup::Hit { .. }
        ));
        assert!(matches!(
            dd.lookup(0, 0, &ctx, &[0.01, 0.0, 0.0, 0.0], &mut out)
                .unwrap(),
            Lookup::Hit { .. }
        ));
        assert_eq!(
            dd.lookup(0, 0, &ctx, &[0.1, 0.0, 0.0, 0.0], &mut out)
                .unwrap(),
            Lookup::Miss
        );
        assert_eq!(dd.stats().zero_norm_misses, 0);
        // Cosine: no direction, never a hit, counted.
        let mut dd = AttentionDeduplicator::new(cfg(
            d,
            4,
            ReuseRule::CosineUnbounded { threshold: 0.9 },
            SearchPolicy::Nearest,
        ))
        .unwrap();
        dd.store(0, 0, &ctx, &[0.0; 4], &[1.0; 4]).unwrap();
        assert_eq!(
            dd.lookup(0, 0, &ctx, &[0.0; 4], &mut out).unwrap(),
            Lookup::Miss
        );
        assert_eq!(
            dd.lookup(0, 0, &ctx, &[1.0, 0.0, 0.0, 0.0], &mut out)
                .unwrap(),
            Lookup::Miss
        );
        assert_eq!(dd.stats().zero_norm_misses, 1);
        assert_eq!(dd.stats().misses, 2);
    }

    #[test]
    fn huge_finite_queries_whose_norm_overflows_are_safe() {
        let ctx = AttnContext {
            version: 0,
            scale: 1.0,
            max_key_norm: 1.0,
            max_value_norm: 1.0,
        };
        let mut dd =
            AttentionDeduplicator::new(cfg(4, 4, bounded(0.1), SearchPolicy::Nearest)).unwrap();
        let q = [3e19f32, -3e19, 1.0, 0.0];
        dd.store(0, 0, &ctx, &q, &[1.0; 4]).unwrap();
        let mut out = [0.0; 4];
        assert!(matches!(
            dd.lookup(0, 0, &ctx, &q, &mut out).unwrap(),
            Lookup::Hit { .. }
        ));
        let far = [3e19f32, -3e19, 1e18, 0.0];
        assert_eq!(dd.lookup(0, 0, &ctx, &far, &mut out).unwrap(), Lookup::Miss);
        assert_eq!(
            dd.lookup(0, 0, &ctx, &[1.0; 4], &mut out).unwrap(),
            Lookup::Miss
        );
    }

    #[test]
    fn zero_key_norm_makes_every_query_acceptable() {
        // All keys zero: softmax is uniform whatever q, so reuse is exact.
        let keys = [0.0f32; 8];
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let ctx = AttnContext::from_kv(0, 1.0, &keys, 2, &values, 2).unwrap();
        assert_eq!(ctx.max_key_norm, 0.0);
        let mut dd =
            AttentionDeduplicator::new(cfg(2, 4, bounded(0.01), SearchPolicy::Nearest)).unwrap();
        dd.store(0, 0, &ctx, &[1.0, 1.0], &[4.0, 5.0]).unwrap();
        let mut out = [0.0; 2];
        let r = dd.lookup(0, 0, &ctx, &[-100.0, 7.0], &mut out).unwrap();
        assert!(matches!(r, Lookup::Hit { error_bound: Some(b), .. } if b == 0.0));
        assert_eq!(out, [4.0, 5.0]);
    }

    #[test]
    fn the_seed_cosine_rule_is_unbounded_and_the_bounded_rule_is_not_fooled() {
        // q and 3q: cosine 1, different outputs.
        let d = 2;
        let keys = [4.0f32, 0.0, 0.0, 4.0, -4.0, 0.0];
        let values = [1.0f32, 0.0, 0.0, 1.0, -1.0, -1.0];
        let ctx = AttnContext::from_kv(0, 1.0, &keys, d, &values, d).unwrap();
        let q = [0.3f32, 0.1];
        let q3 = [0.9f32, 0.3];
        let o: Vec<f32> = attend(&q, &keys, &values, d, 1.0)
            .iter()
            .map(|&x| x as f32)
            .collect();
        let exact3 = attend(&q3, &keys, &values, d, 1.0);
        let mut out = [0.0f32; 2];
        let mut cos = AttentionDeduplicator::new(cfg(
            d,
            4,
            ReuseRule::CosineUnbounded { threshold: 0.99 },
            SearchPolicy::Nearest,
        ))
        .unwrap();
        cos.store(0, 0, &ctx, &q, &o).unwrap();
        let r = cos.lookup(0, 0, &ctx, &q3, &mut out).unwrap();
        assert!(matches!(
            r,
            Lookup::Hit {
                error_bound: None,
                ..
            }
        ));
        let err = dist(&out, &exact3);
        // Far beyond what the bounded rule at ε = 0.1 could ever serve (2·tanh(0.05)·V ≈ 0.14).
        assert!(err > 0.3, "the cosine hit is far off: {err}");
        assert!(err > 2.5 * output_error_bound(0.1, f64::from(ctx.max_value_norm)));
        let mut safe =
            AttentionDeduplicator::new(cfg(d, 4, bounded(0.1), SearchPolicy::Nearest)).unwrap();
        safe.store(0, 0, &ctx, &q, &o).unwrap();
        assert_eq!(
            safe.lookup(0, 0, &ctx, &q3, &mut out).unwrap(),
            Lookup::Miss
        );
    }

    #[test]
    fn statistics_are_exact() {
        prop::check("dedup_stats_exact", 30, |rng| {
            let d = 4;
            let cap = rng.random_range(1..6);
            let mut dd =
                AttentionDeduplicator::new(cfg(d, cap, bounded(0.05), SearchPolicy::Nearest))
                    .unwrap();
            let mut expect = DedupStats::default();
            let mut live: Vec<usize> = Vec::new(); // stored ids in slot (0, 0), FIFO
            let mut version = 0u64;
            let pool: Vec<Vec<f32>> = (0..6).map(|i| vec![10.0 * i as f32; d]).collect();
            let mut out = [0.0f32; 4];
            for _ in 0..60 {
                let ctx = AttnContext {
                    version,
                    scale: 1.0,
                    max_key_norm: 1.0,
                    max_value_norm: 1.0,
                };
                let id = rng.random_range(0..pool.len());
                match rng.random_range(0..10) {
                    0 => {
                        version += 1;
                        let ctx = AttnContext { version, ..ctx };
                        expect.invalidated += live.len() as u64;
                        live.clear();
                        expect.lookups += 1;
                        expect.misses += 1;
                        assert_eq!(
                            dd.lookup(0, 0, &ctx, &pool[id], &mut out).unwrap(),
                            Lookup::Miss
                        );
                    }
                    1..=4 => {
                        dd.store(0, 0, &ctx, &pool[id], &[id as f32; 4]).unwrap();
                        expect.stores += 1;
                        if live.len() == cap {
                            live.remove(0);
                            expect.evictions += 1;
                        }
                        live.push(id);
                    }
                    _ => {
                        let r = dd.lookup(0, 0, &ctx, &pool[id], &mut out).unwrap();
                        expect.lookups += 1;
                        if live.contains(&id) {
                            expect.hits += 1;
                            assert!(matches!(r, Lookup::Hit { .. }));
                            assert_eq!(out[0], id as f32);
                        } else {
                            expect.misses += 1;
                            assert_eq!(r, Lookup::Miss);
                        }
                    }
                }
                assert_eq!(dd.stats(), expect);
            }
            if expect.lookups > 0 {
                assert_eq!(
                    dd.stats().hit_rate(),
                    expect.hits as f64 / expect.lookups as f64
                );
            }
        });
    }

    #[test]
    fn from_kv_norms_are_upper_bounds() {
        prop::check("dedup_from_kv_norms", 50, |rng| {
            let d = rng.random_range(1..20);
            let n = rng.random_range(1..30);
            let k = data::normal_vec(rng, n * d, 0.0, 3.0);
            let v = data::normal_vec(rng, n * d, 0.0, 0.3);
            let ctx = AttnContext::from_kv(3, 0.5, &k, d, &v, d).unwrap();
            let exact = |x: &[f32]| {
                x.chunks_exact(d)
                    .map(|r| r.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt())
                    .fold(0.0, f64::max)
            };
            assert!(f64::from(ctx.max_key_norm) >= exact(&k));
            assert!(f64::from(ctx.max_key_norm) <= exact(&k) * (1.0 + 1e-6));
            assert!(f64::from(ctx.max_value_norm) >= exact(&v));
        });
    }

    #[test]
    fn bad_inputs_are_typed_errors_and_change_nothing() {
        let mut dd =
            AttentionDeduplicator::new(cfg(4, 4, bounded(0.1), SearchPolicy::Nearest)).unwrap();
        let ctx = AttnContext {
            version: 0,
            scale: 1.0,
            max_key_norm: 1.0,
            max_value_norm: 1.0,
        };
        let mut out = [0.0f32; 4];
        dd.store(0, 0, &ctx, &[1.0; 4], &[1.0; 4]).unwrap();
        let before = dd.stats();
        let e = dd.lookup(2, 0, &ctx, &[1.0; 4], &mut out).unwrap_err();
        insta::assert_snapshot!(e, @"unknown attention slot (layer 2, head 0): have 2 layers x 3 heads");
        assert!(matches!(
            dd.store(0, 3, &ctx, &[1.0; 4], &[1.0; 4]),
            Err(Error::UnknownSlot { .. })
        ));
        let e = dd.lookup(0, 0, &ctx, &[1.0; 3], &mut out).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in AttentionDeduplicator query [head_dim]: expected 4, got 3");
        let e = dd.lookup(0, 0, &ctx, &[1.0; 4], &mut [0.0; 5]).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in AttentionDeduplicator output [head_dim]: expected 4, got 5");
        let e = dd
            .lookup(0, 0, &ctx, &[1.0, f32::NAN, 0.0, 0.0], &mut out)
            .unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in AttentionDeduplicator query: element 1 is NaN");
        let e = dd
            .store(0, 0, &ctx, &[1.0; 4], &[f32::INFINITY; 4])
            .unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in AttentionDeduplicator output: element 0 is inf");
        let e = dd.store(0, 0, &ctx, &[1.0; 4], &[1.0; 2]).unwrap_err();
        assert!(matches!(e, Error::Shape(_)));
        for bad in [
            AttnContext {
                version: 1,
                scale: 0.0,
                ..ctx
            },
            AttnContext {
                version: 1,
                max_key_norm: f32::NAN,
                ..ctx
            },
            AttnContext {
                version: 1,
                max_value_norm: -1.0,
                ..ctx
            },
        ] {
            assert!(matches!(
                dd.lookup(0, 0, &bad, &[1.0; 4], &mut out),
                Err(Error::Config(_))
            ));
        }
        let e = AttnContext {
            version: 1,
            scale: f32::INFINITY,
            ..ctx
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid AttnContext.scale: must be finite and > 0, got inf");
        let e = AttnContext {
            version: 1,
            max_value_norm: -1.0,
            ..ctx
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid AttnContext.max_value_norm: must be finite and >= 0, got -1");
        let e = AttnContext::from_kv(0, 1.0, &[1.0; 6], 3, &[1.0; 6], 2).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in AttnContext::from_kv keys [seq, key_dim] and values [seq, value_dim]: expected equal row counts with key_dim 3, value_dim 2, got 6 key and 6 value elements");
        assert!(matches!(
            AttnContext::from_kv(0, 1.0, &[f32::NAN; 2], 2, &[1.0; 2], 2),
            Err(Error::Core(_))
        ));
        assert_eq!(dd.stats(), before);
        assert_eq!(dd.len(0, 0), 1);
        assert!(matches!(
            dd.lookup(0, 0, &ctx, &[1.0; 4], &mut out).unwrap(),
            Lookup::Hit { .. }
        ));
    }

    #[test]
    fn config_errors_are_pinned() {
        let base = AttentionDeduplicatorConfig::default();
        assert_eq!(base.validate(), Ok(()));
        let e = AttentionDeduplicatorConfig {
            capacity: 0,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid AttentionDeduplicator.capacity: must be >= 1, got 0");
        let e = AttentionDeduplicatorConfig {
            layers: 0,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid AttentionDeduplicator.layers: must be >= 1, got 0");
        let e = AttentionDeduplicatorConfig {
            rule: bounded(0.0),
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid AttentionDeduplicator.max_logit_change: must be finite and > 0, got 0");
        let e = AttentionDeduplicatorConfig {
            rule: bounded(f32::NAN),
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid AttentionDeduplicator.max_logit_change: must be finite and > 0, got NaN");
        let e = AttentionDeduplicatorConfig {
            rule: ReuseRule::CosineUnbounded { threshold: 1.5 },
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid AttentionDeduplicator.threshold: must be in (-1, 1), got 1.5");
        assert!(matches!(
            AttentionDeduplicator::new(AttentionDeduplicatorConfig { heads: 0, ..base }),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn memory_is_allocated_per_slot_on_first_store() {
        let mut dd =
            AttentionDeduplicator::new(cfg(8, 16, bounded(0.1), SearchPolicy::Nearest)).unwrap();
        assert_eq!(dd.bytes_held(), 0);
        let ctx = AttnContext {
            version: 0,
            scale: 1.0,
            max_key_norm: 1.0,
            max_value_norm: 1.0,
        };
        dd.store(1, 1, &ctx, &[1.0; 8], &[1.0; 8]).unwrap();
        assert_eq!(dd.bytes_held(), (16 * 8 * 2 + 16) * 4);
    }

    #[test]
    fn deduplicator_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<AttentionDeduplicator>();
    }
}
