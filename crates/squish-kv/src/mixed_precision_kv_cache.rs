//! A per-head mixed-precision KV cache ([`MixedPrecisionKvCache`]) and the budgeted bit
//! allocation that chooses each head's tier ([`PrecisionPlanner`]).
//!
//! Implements the seed's `MixedPrecisionKVCache` ("sensitivity-driven tier assignment"),
//! corrected where the seed was a sketch: every head really stores its keys and values in its
//! tier (`f16` via `half`, or 8-bit / packed 4-bit codes **with** their scales and zero-points),
//! and the tiers come from an optimisation, not fixed thresholds.
//!
//! # Tiers and storage
//!
//! | tier | storage per token row of `head_dim` values | bits per value |
//! |---|---|---|
//! | [`KvTier::Fp16`] | `head_dim` IEEE `f16` | 16 |
//! | [`KvTier::Int8`] | 8-bit codes + `f32` scale and zero-point per group | `8 + 64 / group_size` |
//! | [`KvTier::Int4`] | packed 4-bit codes + `f32` scale and zero-point per group | `4 + 64 / group_size` |
//!
//! INT tiers use squish-core's grouped asymmetric quantisation
//! ([`squish_core::quant::quantize_grouped`]) per token, groups of `group_size` consecutive
//! channels (KIVI's per-token layout, which needs no residual window, so a token is stored the
//! moment it is appended): an outlier channel only stretches the range of its own group.
//! Every value reconstructs within `scale / 2` of its input.
//!
//! # Assignment: budgeted bit allocation
//!
//! Following the rate-distortion view of bit allocation (KVQuant, Hooper et al. 2024;
//! classic transform coding), tier `t` of head `h` is expected to add, per value, the noise
//! variance of a uniform quantiser, `scale² / 12`, weighted by the head's sensitivity:
//!
//! ```text
//! error(h, t) = sensitivity_h · E[R_h²] / 12 · f_t
//! f_Int4 = 1 / 15²,  f_Int8 = 1 / 255²,  f_Fp16 = 2^-20
//! ```
//!
//! where `R_h` is the range (max − min) of a group of the head's data, so `R / (2^b − 1)` is
//! the group's scale; `E[R²]` is measured from samples by [`HeadStats::from_samples`]. `f16`
//! is modelled as a uniform quantiser with step `R · 2^-10`, an upper bound of its spacing for
//! values with `|x| <= R` (it is ~4 000× below INT8, so its exact value never changes a
//! decision). [`PrecisionPlanner`] minimises `Σ_h error(h, t_h)` subject to
//! `Σ_h bits(t_h) <= heads · avg_bits` **exactly**: as all heads pay the same bits per tier,
//! an assignment's cost depends only on how many heads take each tier, and for given counts
//! the rearrangement inequality puts the heaviest weights in the most precise tiers. The
//! planner tries every FP16 count (the INT8 count is then the most the budget allows) over
//! heads sorted by weight: `O(H log H)`, and provably equal to brute force (tested against
//! enumeration of all `3^H` assignments for `H <= 6`).
//!
//! Consequences (all tested): the budget is never exceeded; a head of larger weight never gets
//! fewer bits (monotone); heads of equal weight all get the highest tier the budget affords
//! them uniformly, and budget left over upgrades the lowest-indexed heads to the next tier (so
//! a budget equal to a tier's cost gives exactly that tier everywhere).
//!
//! # Example
//! ```
//! use squish_kv::mixed_precision_kv_cache::{
//!     HeadStats, KvTier, MixedPrecisionKvCache, MixedPrecisionKvConfig, PrecisionPlanner,
//!     PrecisionPlannerConfig,
//! };
//!
//! // Four heads; head 2 is four times as sensitive. Budget: 10 bits per value on average.
//! let stats: Vec<HeadStats> = [1.0, 1.0, 4.0, 1.0]
//!     .iter()
//!     .map(|&s| HeadStats::new(s, 9.0))
//!     .collect::<Result<_, _>>()?;
//! let plan_cfg = PrecisionPlannerConfig::new(10.0, 32);
//! let mut planner = PrecisionPlanner::new(plan_cfg.clone())?;
//! let (tiers, plan) = planner.assign_precisions(&stats)?;
//! assert_eq!(tiers, [KvTier::Int8, KvTier::Int8, KvTier::Int8, KvTier::Int8]);
//! assert!(plan.avg_bits <= 10.0);
//!
//! // The cache's INT groups are the planner's, so it holds what the plan budgeted.
//! let mut cache =
//!     MixedPrecisionKvCache::new(MixedPrecisionKvConfig::from_plan(64, &plan_cfg, tiers))?;
//! let k: Vec<f32> = (0..64).map(|i| i as f32 / 8.0).collect();
//! let v = vec![0.5f32; 64];
//! cache.append(2, &k, &v)?;
//! let (mut k2, mut v2) = (vec![0.0; 64], vec![0.0; 64]);
//! cache.read_token_into(2, 0, &mut k2, &mut v2)?;
//! assert!(k.iter().zip(&k2).all(|(a, b)| (a - b).abs() <= 3.875 / 255.0 / 2.0 + 1e-6));
//! assert_eq!(v2, v);
//! assert_eq!(cache.payload_bytes(), 2 * (64 + 2 * 8)); // codes + scale and zero per group, K and V
//! assert_eq!(cache.bytes_held(), cache.payload_bytes() + cache.metadata_bytes());
//! # Ok::<(), squish_kv::Error>(())
//! ```

use std::cmp::Ordering;

use squish_core::convert::{f16, f16_to_f32_into};
use squish_core::quant::{
    GroupAxis, GroupedQuantConfig, GroupedQuantized, QuantBits, quantize_grouped_into, unpack_codes,
};
use squish_core::{ConfigError, ShapeError, check_finite};

use crate::adaptive_quantizer::f32_to_f16_checked;
use crate::{Error, Result};

/// The storage tier of one head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvTier {
    /// IEEE `f16` per value.
    Fp16,
    /// 8-bit codes with an `f32` scale and zero-point per group.
    Int8,
    /// Packed 4-bit codes with an `f32` scale and zero-point per group.
    Int4,
}

impl KvTier {
    /// All tiers, most precise first.
    pub const ALL: [Self; 3] = [Self::Fp16, Self::Int8, Self::Int4];

    /// Bits per code (16, 8 or 4), without scales.
    pub const fn code_bits(self) -> u32 {
        match self {
            Self::Fp16 => 16,
            Self::Int8 => 8,
            Self::Int4 => 4,
        }
    }

    /// Storage bits per value with groups of `group_size` values: 16, `8 + 64 / group_size`
    /// or `4 + 64 / group_size` (an `f32` scale and an `f32` zero-point per group).
    pub fn bits_per_value(self, group_size: usize) -> f64 {
        match self {
            Self::Fp16 => 16.0,
            Self::Int8 | Self::Int4 => {
                f64::from(self.code_bits()) + 64.0 / group_size.max(1) as f64
            }
        }
    }

    /// The tier's noise factor `f_t` in the error model (see the module docs): the per-value
    /// noise variance is `E[R²] / 12 · f_t`.
    pub const fn noise_factor(self) -> f64 {
        match self {
            Self::Fp16 => 1.0 / 1_048_576.0,
            Self::Int8 => 1.0 / (255.0 * 255.0),
            Self::Int4 => 1.0 / (15.0 * 15.0),
        }
    }

    /// Cost in integer units of `1 / group_size` bits per value.
    fn cost_units(self, group_size: u64) -> u64 {
        match self {
            Self::Fp16 => 16 * group_size,
            Self::Int8 => 8 * group_size + 64,
            Self::Int4 => 4 * group_size + 64,
        }
    }
}

/// What the planner knows about one head: its sensitivity (weight of its error in the
/// objective, e.g. its attention-output error per unit of KV noise) and the mean squared range
/// `E[R²]` of its quantisation groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadStats {
    sensitivity: f64,
    mean_sq_range: f64,
}

impl HeadStats {
    /// Stats from a sensitivity and a mean squared group range.
    ///
    /// # Errors
    /// [`Error::Config`] if either is negative or not finite.
    pub fn new(sensitivity: f64, mean_sq_range: f64) -> Result<Self> {
        for (field, v) in [
            ("sensitivity", sensitivity),
            ("mean_sq_range", mean_sq_range),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(
                    ConfigError::new("HeadStats", field, "must be finite and >= 0", v).into(),
                );
            }
        }
        Ok(Self {
            sensitivity,
            mean_sq_range,
        })
    }

    /// Stats from sample data of the head (e.g. its keys and values of a calibration prompt,
    /// token rows concatenated): `E[R²]` over consecutive groups of `group_size` values.
    ///
    /// # Errors
    /// - [`Error::Config`] if `sensitivity` is negative or not finite, or `group_size` is 0.
    /// - [`Error::Shape`] if `samples` is empty or not a multiple of `group_size` long.
    /// - [`Error::Core`] (`NonFinite`) for a NaN or infinity in `samples`.
    pub fn from_samples(sensitivity: f64, samples: &[f32], group_size: usize) -> Result<Self> {
        if group_size == 0 {
            return Err(ConfigError::new("HeadStats", "group_size", "must be > 0", 0).into());
        }
        if samples.is_empty() || !samples.len().is_multiple_of(group_size) {
            return Err(ShapeError::new(
                "HeadStats::from_samples samples",
                format_args!("a non-zero multiple of group_size ({group_size}) values"),
                format_args!("{} values", samples.len()),
            )
            .into());
        }
        check_finite("HeadStats::from_samples samples", samples)?;
        let groups = samples.len() / group_size;
        let sum: f64 = samples
            .chunks_exact(group_size)
            .map(|g| {
                let (lo, hi) = g.iter().fold((g[0], g[0]), |(lo, hi), &v| {
                    (if v < lo { v } else { lo }, if v > hi { v } else { hi })
                });
                (f64::from(hi) - f64::from(lo)).powi(2)
            })
            .sum();
        Self::new(sensitivity, sum / groups as f64)
    }

    /// The sensitivity.
    pub fn sensitivity(&self) -> f64 {
        self.sensitivity
    }

    /// The mean squared group range `E[R²]`.
    pub fn mean_sq_range(&self) -> f64 {
        self.mean_sq_range
    }

    /// The head's weight in the objective, `sensitivity · E[R²] / 12`.
    pub fn weight(&self) -> f64 {
        self.sensitivity * self.mean_sq_range / 12.0
    }

    /// Expected error per value of storing this head at `tier`: `weight · f_tier`.
    pub fn expected_error(&self, tier: KvTier) -> f64 {
        self.weight() * tier.noise_factor()
    }
}

/// Largest [`PrecisionPlannerConfig::group_size`]: far above any head dimension, and small
/// enough that the planner's integer costs (`16 · group_size` units per head) cannot overflow.
const MAX_PLANNER_GROUP: usize = 1 << 16;

/// Configuration of [`PrecisionPlanner`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PrecisionPlannerConfig {
    /// Budget: average storage bits per value over all heads, scales included (see
    /// [`KvTier::bits_per_value`]); at least the INT4 tier's `4 + 64 / group_size`. Budgets
    /// of 16 or more give every head FP16.
    pub avg_bits: f64,
    /// Values per quantisation group of the INT tiers, in `16..=65536` (below 16 a group's
    /// scale and zero-point cost more than FP16 saves); must match the cache's, which
    /// [`MixedPrecisionKvConfig::from_plan`] guarantees.
    pub group_size: usize,
}

impl Default for PrecisionPlannerConfig {
    /// The seed's "2–4× KV memory" middle: 8 bits per value on average, groups of 32.
    fn default() -> Self {
        Self::new(8.0, 32)
    }
}

impl PrecisionPlannerConfig {
    /// A configuration with the given fields (not validated).
    pub const fn new(avg_bits: f64, group_size: usize) -> Self {
        Self {
            avg_bits,
            group_size,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] on `group_size` if it is outside `16..=65536`, or on `avg_bits` if
    /// it is not finite or below the INT4 tier's bits per value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = "PrecisionPlanner";
        if !(16..=MAX_PLANNER_GROUP).contains(&self.group_size) {
            return Err(ConfigError::new(
                c,
                "group_size",
                format!("must be in 16..={MAX_PLANNER_GROUP}"),
                self.group_size,
            ));
        }
        let min = KvTier::Int4.bits_per_value(self.group_size);
        if !(self.avg_bits.is_finite() && self.avg_bits >= min) {
            return Err(ConfigError::new(
                c,
                "avg_bits",
                format!("must be finite and >= {min} (all heads INT4)"),
                self.avg_bits,
            ));
        }
        Ok(())
    }
}

/// The outcome of an assignment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanSummary {
    /// Model error of the assignment, `Σ_h error(h, t_h)` (per value of each head).
    pub expected_error: f64,
    /// Average storage bits per value of the assignment (`<=` the budget).
    pub avg_bits: f64,
    /// Number of heads per tier, in the order of [`KvTier::ALL`] (FP16, INT8, INT4).
    pub counts: [usize; 3],
}

/// Budgeted bit allocation over heads: chooses every head's [`KvTier`] to minimise the total
/// expected error within an average-bits budget. The `assign_precisions` of the seed's
/// `MixedPrecisionKVCache`. See the module docs for the model and why the result is exact.
///
/// Monotone in sensitivity (a head of larger weight never gets fewer bits), but, being exact,
/// not in the budget: a larger budget can afford one head's step to FP16 in place of two
/// other heads' steps to INT8, and then gives some head fewer bits than before.
#[derive(Debug, Clone)]
pub struct PrecisionPlanner {
    cfg: PrecisionPlannerConfig,
    order: Vec<(f64, usize)>,
    prefix: Vec<f64>,
}

impl PrecisionPlanner {
    /// A planner.
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg` is invalid.
    pub fn new(cfg: PrecisionPlannerConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            order: Vec::new(),
            prefix: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PrecisionPlannerConfig {
        &self.cfg
    }

    /// Assigns a tier to each head into a new vector; see
    /// [`assign_precisions_into`](Self::assign_precisions_into).
    ///
    /// # Errors
    /// As [`assign_precisions_into`](Self::assign_precisions_into).
    pub fn assign_precisions(&mut self, heads: &[HeadStats]) -> Result<(Vec<KvTier>, PlanSummary)> {
        let mut out = vec![KvTier::Int4; heads.len()];
        let s = self.assign_precisions_into(heads, &mut out)?;
        Ok((out, s))
    }

    /// Assigns a tier to each head (`out[h]` for `heads[h]`), minimising the total expected
    /// error `Σ_h heads[h].expected_error(out[h])` subject to
    /// `Σ_h out[h].bits_per_value(group_size) <= heads.len() · avg_bits`. Among optimal
    /// assignments, heads of equal weight are ordered by index (lower index, higher tier).
    ///
    /// # Errors
    /// [`Error::Shape`] if `out.len() != heads.len()`.
    ///
    /// # Performance
    /// `O(H log H)`; no allocation once the planner has seen `H` heads.
    pub fn assign_precisions_into(
        &mut self,
        heads: &[HeadStats],
        out: &mut [KvTier],
    ) -> Result<PlanSummary> {
        if out.len() != heads.len() {
            return Err(ShapeError::new(
                "PrecisionPlanner::assign_precisions_into out",
                format_args!("{} tiers (one per head)", heads.len()),
                out.len(),
            )
            .into());
        }
        let h = heads.len();
        let g = self.cfg.group_size as u64;
        let [c16, c8, c4] = KvTier::ALL.map(|t| t.cost_units(g));
        // Budget in units of 1/g bit per value, rounded down: never exceeded.
        let budget = (self.cfg.avg_bits * g as f64 * h as f64).floor();
        let slack = if budget >= ((h as u64) * c16) as f64 {
            (h as u64) * (c16 - c4)
        } else {
            // Validation guarantees budget >= h * c4.
            (budget as u64).saturating_sub(h as u64 * c4)
        };
        let (d8, d16) = (c8 - c4, c16 - c4);

        self.order.clear();
        self.order
            .extend(heads.iter().enumerate().map(|(i, s)| (s.weight(), i)));
        // Heaviest first; a stable sort keeps equal weights in index order.
        // Weights are finite (checked by `HeadStats`), so `>` / `<` is a total order.
        self.order.sort_by(|a, b| {
            if a.0 > b.0 {
                Ordering::Less
            } else if a.0 < b.0 {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        });
        self.prefix.clear();
        self.prefix.resize(h + 1, 0.0);
        let mut acc = 0.0;
        for (pi, &(w, _)) in self.prefix[1..].iter_mut().zip(&self.order) {
            acc += w;
            *pi = acc;
        }
        let p = &self.prefix;
        let [f16f, f8, f4] = KvTier::ALL.map(KvTier::noise_factor);
        let mut best = (f64::INFINITY, 0usize, 0usize);
        let mut n16 = 0usize;
        loop {
            let used = n16 as u64 * d16;
            if used > slack {
                break;
            }
            let n8 = usize::try_from((slack - used) / d8).map_or(h - n16, |q| q.min(h - n16));
            let err = f16f * p[n16] + f8 * (p[n16 + n8] - p[n16]) + f4 * (p[h] - p[n16 + n8]);
            if err < best.0 {
                best = (err, n16, n8);
            }
            if n16 == h {
                break;
            }
            n16 += 1;
        }
        let (_, n16, n8) = best;
        // Write the tiers and sum the model error in rank order (not from prefix differences).
        let mut expected_error = 0.0;
        for (rank, &(w, i)) in self.order.iter().enumerate() {
            let (t, f) = if rank < n16 {
                (KvTier::Fp16, f16f)
            } else if rank < n16 + n8 {
                (KvTier::Int8, f8)
            } else {
                (KvTier::Int4, f4)
            };
            out[i] = t;
            expected_error += w * f;
        }
        let units = n16 as u64 * c16 + n8 as u64 * c8 + (h - n16 - n8) as u64 * c4;
        Ok(PlanSummary {
            expected_error,
            avg_bits: if h == 0 {
                0.0
            } else {
                units as f64 / (g as f64 * h as f64)
            },
            counts: [n16, n8, h - n16 - n8],
        })
    }
}

/// Configuration of [`MixedPrecisionKvCache`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MixedPrecisionKvConfig {
    /// Values per key (and value) row of a head, `> 0`, even.
    pub head_dim: usize,
    /// Values per quantisation group of the INT tiers: even, `> 0`, dividing `head_dim` (so
    /// every group of packed 4-bit codes starts on a byte).
    pub group_size: usize,
    /// The tier of each head (e.g. from [`PrecisionPlanner`]); at least one head.
    pub tiers: Vec<KvTier>,
}

impl Default for MixedPrecisionKvConfig {
    /// The seed's shape: 8 heads of dimension 64, all FP16, groups of 32.
    fn default() -> Self {
        Self::new(64, 32, vec![KvTier::Fp16; 8])
    }
}

impl MixedPrecisionKvConfig {
    /// A configuration with the given fields (not validated).
    pub fn new(head_dim: usize, group_size: usize, tiers: Vec<KvTier>) -> Self {
        Self {
            head_dim,
            group_size,
            tiers,
        }
    }

    /// The configuration for tiers chosen by a [`PrecisionPlanner`] with configuration
    /// `plan`: the cache's INT groups are the planner's (`plan.group_size`), so the storage
    /// it holds is exactly what the planner budgeted: `avg_bits / 8` bytes per value of codes,
    /// scales and zero-points, before the per-head metadata [`bytes_held`] adds (not
    /// validated; [`MixedPrecisionKvCache::new`] checks that the groups divide `head_dim`).
    ///
    /// [`bytes_held`]: MixedPrecisionKvCache::bytes_held
    pub fn from_plan(head_dim: usize, plan: &PrecisionPlannerConfig, tiers: Vec<KvTier>) -> Self {
        Self::new(head_dim, plan.group_size, tiers)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that breaks its rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = "MixedPrecisionKvCache";
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::new(
                c,
                "head_dim",
                "must be even and > 0",
                self.head_dim,
            ));
        }
        if self.group_size == 0
            || !self.group_size.is_multiple_of(2)
            || !self.head_dim.is_multiple_of(self.group_size)
        {
            return Err(ConfigError::new(
                c,
                "group_size",
                format!("must be even, > 0 and divide head_dim ({})", self.head_dim),
                self.group_size,
            ));
        }
        if self.tiers.is_empty() {
            return Err(ConfigError::new(
                c,
                "tiers",
                "must name at least one head",
                0,
            ));
        }
        Ok(())
    }
}

/// Error contexts of a group range too large for `f32` in an INT head.
const RANGE_K: &str =
    "MixedPrecisionKvCache::append k (a group's range max - min is too large for f32)";
const RANGE_V: &str =
    "MixedPrecisionKvCache::append v (a group's range max - min is too large for f32)";

/// Quantised rows of one head's keys or values in an INT tier.
#[derive(Debug, Clone, Default)]
struct IntRows {
    codes: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<f32>,
}

impl IntRows {
    fn bytes(&self) -> usize {
        self.codes.len() + size_of::<f32>() * (self.scales.len() + self.zeros.len())
    }

    fn push(&mut self, codes: &[u8], scales: &[f32], zeros: &[f32]) {
        self.codes.extend_from_slice(codes);
        self.scales.extend_from_slice(scales);
        self.zeros.extend_from_slice(zeros);
    }

    fn clear(&mut self) {
        self.codes.clear();
        self.scales.clear();
        self.zeros.clear();
    }

    /// Decodes token `t` into `out` (`head_dim` values).
    fn read(&self, t: usize, bits: QuantBits, gs: usize, out: &mut [f32]) {
        let row_bytes = bits.packed_len(out.len());
        let groups = out.len() / gs;
        let packed = &self.codes[t * row_bytes..][..row_bytes];
        let scales = &self.scales[t * groups..][..groups];
        let zeros = &self.zeros[t * groups..][..groups];
        // One group at a time: codes unpacked into a stack buffer, then `zero + code * scale`.
        // Groups start byte-aligned (`head_dim` and `group_size` are even, codes are 4 or 8
        // bits); groups longer than the buffer are decoded in 256-code pieces.
        let mut buf = [0u8; 256];
        let per_byte = bits.codes_per_byte();
        for (gi, y) in out.chunks_mut(gs).enumerate() {
            let (z, s) = (zeros[gi], scales[gi]);
            for (pi, y) in y.chunks_mut(256).enumerate() {
                let c0 = gi * gs + pi * 256;
                let codes = &mut buf[..y.len()];
                let p0 = c0 / per_byte;
                unpack_codes(&packed[p0..p0 + bits.packed_len(y.len())], bits, codes);
                for (o, &c) in y.iter_mut().zip(codes.iter()) {
                    *o = z + f32::from(c) * s;
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum HeadStore {
    Fp16 {
        k: Vec<f16>,
        v: Vec<f16>,
    },
    Int {
        bits: QuantBits,
        k: IntRows,
        v: IntRows,
    },
}

impl HeadStore {
    fn bytes(&self) -> usize {
        match self {
            Self::Fp16 { k, v } => size_of::<f16>() * (k.len() + v.len()),
            Self::Int { k, v, .. } => k.bytes() + v.bytes(),
        }
    }
}

/// A KV cache whose heads each store their keys and values in their own [`KvTier`]; tokens are
/// appended one row at a time and read back into caller buffers. Implements the seed's
/// `MixedPrecisionKVCache` (store / load); tiers usually come from [`PrecisionPlanner`].
///
/// See the [module docs](self) for the storage formats and an example.
#[derive(Debug, Clone)]
pub struct MixedPrecisionKvCache {
    cfg: MixedPrecisionKvConfig,
    heads: Vec<HeadStore>,
    lens: Vec<usize>,
    qcfg8: GroupedQuantConfig,
    qcfg4: GroupedQuantConfig,
    scratch: GroupedQuantized,
    rows: Vec<f32>,
}

impl MixedPrecisionKvCache {
    /// An empty cache.
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg` is invalid.
    pub fn new(cfg: MixedPrecisionKvConfig) -> Result<Self> {
        cfg.validate()?;
        let heads = cfg
            .tiers
            .iter()
            .map(|t| match t {
                KvTier::Fp16 => HeadStore::Fp16 {
                    k: Vec::new(),
                    v: Vec::new(),
                },
                KvTier::Int8 | KvTier::Int4 => HeadStore::Int {
                    bits: if *t == KvTier::Int8 {
                        QuantBits::B8
                    } else {
                        QuantBits::B4
                    },
                    k: IntRows::default(),
                    v: IntRows::default(),
                },
            })
            .collect();
        let gs = cfg.group_size;
        Ok(Self {
            lens: vec![0; cfg.tiers.len()],
            heads,
            qcfg8: GroupedQuantConfig::new(QuantBits::B8, gs, GroupAxis::AlongRow),
            qcfg4: GroupedQuantConfig::new(QuantBits::B4, gs, GroupAxis::AlongRow),
            scratch: GroupedQuantized::new(),
            rows: Vec::with_capacity(2 * cfg.head_dim),
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MixedPrecisionKvConfig {
        &self.cfg
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads.len()
    }

    /// The tier of `head`.
    ///
    /// # Errors
    /// [`Error::HeadOutOfRange`] if `head >= heads()`.
    pub fn tier(&self, head: usize) -> Result<KvTier> {
        self.check_head(head)?;
        Ok(self.cfg.tiers[head])
    }

    /// Number of tokens stored for `head`.
    ///
    /// # Errors
    /// [`Error::HeadOutOfRange`] if `head >= heads()`.
    pub fn len(&self, head: usize) -> Result<usize> {
        self.check_head(head)?;
        Ok(self.lens[head])
    }

    /// Whether no head holds any token.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&n| n == 0)
    }

    /// Appends one token's key row `k` and value row `v` (`head_dim` values each) to `head`,
    /// stored in the head's tier.
    ///
    /// # Errors
    /// - [`Error::HeadOutOfRange`] if `head >= heads()`.
    /// - [`Error::Shape`] if `k` or `v` is not `head_dim` long.
    /// - [`Error::Core`] (`NonFinite`) for a NaN or infinity; (`OutOfRange`) for an FP16 head
    ///   given `|x| > f16::MAX`.
    ///
    /// On error nothing is appended.
    ///
    /// # Performance
    /// No allocation beyond the buffers' amortised growth.
    pub fn append(&mut self, head: usize, k: &[f32], v: &[f32]) -> Result<()> {
        self.check_head(head)?;
        let d = self.cfg.head_dim;
        for (what, x) in [
            ("MixedPrecisionKvCache::append k", k),
            ("MixedPrecisionKvCache::append v", v),
        ] {
            if x.len() != d {
                return Err(
                    ShapeError::new(what, format_args!("{d} values (head_dim)"), x.len()).into(),
                );
            }
        }
        let t = self.lens[head];
        match &mut self.heads[head] {
            HeadStore::Fp16 { k: hk, v: hv } => {
                hk.resize((t + 1) * d, f16::ZERO);
                hv.resize((t + 1) * d, f16::ZERO);
                let r = f32_to_f16_checked("MixedPrecisionKvCache::append k", k, &mut hk[t * d..])
                    .and_then(|()| {
                        f32_to_f16_checked("MixedPrecisionKvCache::append v", v, &mut hv[t * d..])
                    });
                if let Err(e) = r {
                    hk.truncate(t * d);
                    hv.truncate(t * d);
                    return Err(e);
                }
            }
            HeadStore::Int { bits, k: hk, v: hv } => {
                check_finite("MixedPrecisionKvCache::append k", k)?;
                check_finite("MixedPrecisionKvCache::append v", v)?;
                let qcfg = if *bits == QuantBits::B8 {
                    &self.qcfg8
                } else {
                    &self.qcfg4
                };
                // K and V as one 2-row matrix: one call, one set of fixed costs. Rows are
                // byte-aligned in the packed codes (`head_dim` is even) and own
                // `head_dim / group_size` groups each.
                self.rows.clear();
                self.rows.extend_from_slice(k);
                self.rows.extend_from_slice(v);
                quantize_grouped_into(&self.rows, 2, d, qcfg, &mut self.scratch).map_err(|e| {
                    match e {
                        // Name the caller's row and index instead of the joined matrix's.
                        squish_core::Error::OutOfRange { index, value, .. } => {
                            let (context, index) = if index < d {
                                (RANGE_K, index)
                            } else {
                                (RANGE_V, index - d)
                            };
                            squish_core::Error::OutOfRange {
                                context,
                                index,
                                value,
                            }
                        }
                        e => e,
                    }
                })?;
                let (rb, g) = (bits.packed_len(d), d / self.cfg.group_size);
                let q = &self.scratch;
                let (kc, vc) = q.codes().split_at(rb);
                let (ks, vs) = q.scales().split_at(g);
                let (kz, vz) = q.zeros().split_at(g);
                hk.push(kc, ks, kz);
                hv.push(vc, vs, vz);
            }
        }
        self.lens[head] = t + 1;
        Ok(())
    }

    /// Reads token `token` of `head` back into `k_out` and `v_out` (`head_dim` values each).
    /// FP16 is exact (`f16 -> f32`); INT tiers give `zero + code · scale`, within `scale / 2`
    /// of the stored input.
    ///
    /// # Errors
    /// - [`Error::HeadOutOfRange`] / [`Error::TokenOutOfRange`] for a bad index.
    /// - [`Error::Shape`] if an output is not `head_dim` long.
    ///
    /// # Performance
    /// No allocation.
    pub fn read_token_into(
        &self,
        head: usize,
        token: usize,
        k_out: &mut [f32],
        v_out: &mut [f32],
    ) -> Result<()> {
        self.check_head(head)?;
        let d = self.cfg.head_dim;
        if token >= self.lens[head] {
            return Err(Error::TokenOutOfRange {
                head,
                token,
                tokens: self.lens[head],
            });
        }
        for (what, x) in [
            ("MixedPrecisionKvCache::read_token_into k_out", &*k_out),
            ("MixedPrecisionKvCache::read_token_into v_out", &*v_out),
        ] {
            if x.len() != d {
                return Err(
                    ShapeError::new(what, format_args!("{d} values (head_dim)"), x.len()).into(),
                );
            }
        }
        match &self.heads[head] {
            HeadStore::Fp16 { k, v } => {
                f16_to_f32_into(&k[token * d..][..d], k_out);
                f16_to_f32_into(&v[token * d..][..d], v_out);
            }
            HeadStore::Int { bits, k, v } => {
                k.read(token, *bits, self.cfg.group_size, k_out);
                v.read(token, *bits, self.cfg.group_size, v_out);
            }
        }
        Ok(())
    }

    /// Reads every token of `head` back into `k_out` and `v_out` (`len(head) · head_dim`
    /// values each, token-major).
    ///
    /// # Errors
    /// [`Error::HeadOutOfRange`] for a bad head; [`Error::Shape`] if an output has the wrong
    /// length.
    ///
    /// # Performance
    /// No allocation.
    pub fn read_head_into(&self, head: usize, k_out: &mut [f32], v_out: &mut [f32]) -> Result<()> {
        self.check_head(head)?;
        let d = self.cfg.head_dim;
        let n = self.lens[head] * d;
        for (what, x) in [
            ("MixedPrecisionKvCache::read_head_into k_out", &*k_out),
            ("MixedPrecisionKvCache::read_head_into v_out", &*v_out),
        ] {
            if x.len() != n {
                return Err(ShapeError::new(
                    what,
                    format_args!("{n} values (tokens x head_dim)"),
                    x.len(),
                )
                .into());
            }
        }
        match &self.heads[head] {
            HeadStore::Fp16 { k, v } => {
                f16_to_f32_into(k, k_out);
                f16_to_f32_into(v, v_out);
            }
            HeadStore::Int { bits, k, v } => {
                for (t, (ko, vo)) in k_out
                    .chunks_exact_mut(d)
                    .zip(v_out.chunks_exact_mut(d))
                    .enumerate()
                {
                    k.read(t, *bits, self.cfg.group_size, ko);
                    v.read(t, *bits, self.cfg.group_size, vo);
                }
            }
        }
        Ok(())
    }

    /// Payload bytes held by `head`: its codes (or `f16` values), scales and zero-points, from
    /// the buffers' lengths (what [`PrecisionPlanner`] budgets).
    ///
    /// # Errors
    /// [`Error::HeadOutOfRange`] if `head >= heads()`.
    pub fn head_bytes_held(&self, head: usize) -> Result<usize> {
        self.check_head(head)?;
        Ok(self.heads[head].bytes())
    }

    /// Payload bytes held by all heads: the sum of [`head_bytes_held`](Self::head_bytes_held).
    pub fn payload_bytes(&self) -> usize {
        self.heads.iter().map(HeadStore::bytes).sum()
    }

    /// Bytes of metadata the cache keeps to interpret its payload: `head_dim` and
    /// `group_size`, and per head its tier and token count, at their in-memory sizes.
    pub fn metadata_bytes(&self) -> usize {
        2 * size_of::<usize>() + self.heads() * (size_of::<KvTier>() + size_of::<usize>())
    }

    /// Bytes held: [`payload_bytes`](Self::payload_bytes) plus
    /// [`metadata_bytes`](Self::metadata_bytes) (spare capacity kept for reuse is not
    /// counted).
    pub fn bytes_held(&self) -> usize {
        self.payload_bytes() + self.metadata_bytes()
    }

    /// Removes every token, keeping the buffers' capacity for reuse.
    pub fn clear(&mut self) {
        for h in &mut self.heads {
            match h {
                HeadStore::Fp16 { k, v } => {
                    k.clear();
                    v.clear();
                }
                HeadStore::Int { k, v, .. } => {
                    k.clear();
                    v.clear();
                }
            }
        }
        self.lens.fill(0);
    }

    fn check_head(&self, head: usize) -> Result<()> {
        if head < self.heads.len() {
            Ok(())
        } else {
            Err(Error::HeadOutOfRange {
                head,
                heads: self.heads.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    use squish_testkit::{data, prop, rng};

    fn stats(ws: &[f64]) -> Vec<HeadStats> {
        ws.iter()
            .map(|&s| HeadStats::new(s, 12.0).unwrap())
            .collect()
    }

    /// Brute force over all 3^H assignments: the minimal error within the budget.
    fn brute_force(heads: &[HeadStats], avg_bits: f64, g: usize) -> f64 {
        let h = heads.len();
        let gu = g as u64;
        let budget = (avg_bits * g as f64 * h as f64).floor();
        let mut best = f64::INFINITY;
        for mut code in 0..3usize.pow(h as u32) {
            let mut units = 0u64;
            let mut err = 0.0;
            for s in heads {
                let t = KvTier::ALL[code % 3];
                code /= 3;
                units += t.cost_units(gu);
                err += s.expected_error(t);
            }
            if units as f64 <= budget && err < best {
                best = err;
            }
        }
        best
    }

    fn bits_used(tiers: &[KvTier], g: usize) -> f64 {
        tiers.iter().map(|t| t.bits_per_value(g)).sum()
    }

    #[test]
    fn planner_equals_brute_force_and_respects_the_budget() {
        prop::check("mpkv_planner_brute_force", 300, |r| {
            let h = r.random_range(1..=6usize);
            let g = [16usize, 32, 64, 128][r.random_range(0..4usize)];
            let min = KvTier::Int4.bits_per_value(g);
            let avg = r.random_range(min..17.0);
            let heads: Vec<HeadStats> = (0..h)
                .map(|_| {
                    // Some heads equal, some wildly different, some zero.
                    let s = match r.random_range(0..4u32) {
                        0 => 1.0,
                        1 => 0.0,
                        _ => r.random_range(0.0..1.0f64).powi(4) * 100.0,
                    };
                    HeadStats::new(s, r.random_range(0.1..50.0)).unwrap()
                })
                .collect();
            let mut p = PrecisionPlanner::new(PrecisionPlannerConfig::new(avg, g)).unwrap();
            let (tiers, s) = p.assign_precisions(&heads).unwrap();
            assert!(bits_used(&tiers, g) <= avg * h as f64 + 1e-9);
            assert!((s.avg_bits * h as f64 - bits_used(&tiers, g)).abs() < 1e-9);
            let direct: f64 = heads
                .iter()
                .zip(&tiers)
                .map(|(s, &t)| s.expected_error(t))
                .sum();
            assert!((s.expected_error - direct).abs() <= 1e-12 * direct.max(1e-300));
            let bf = brute_force(&heads, avg, g);
            assert!(
                (s.expected_error - bf).abs() <= 1e-9 * bf.max(1e-300),
                "planner {} vs brute force {bf}",
                s.expected_error
            );
        });
    }

    /// The budget holds for the bytes a real cache holds, not only in the planner's model: a
    /// cache configured `from_plan` and filled with tokens holds exactly `avg_bits / 8` payload
    /// bytes per value of the plan, and never more than the budget.
    #[test]
    fn planned_cache_holds_what_the_planner_budgeted() {
        prop::check("mpkv_plan_bytes", 100, |r| {
            let h = r.random_range(1..=10usize);
            let g = [16usize, 32, 64][r.random_range(0..3usize)];
            let d = g * r.random_range(1..=4usize);
            let avg = r.random_range(KvTier::Int4.bits_per_value(g)..17.0);
            let heads: Vec<HeadStats> = (0..h)
                .map(|_| HeadStats::new(r.random_range(0.0..10.0), 1.0).unwrap())
                .collect();
            let plan_cfg = PrecisionPlannerConfig::new(avg, g);
            let (tiers, plan) = PrecisionPlanner::new(plan_cfg.clone())
                .unwrap()
                .assign_precisions(&heads)
                .unwrap();
            let cfg = MixedPrecisionKvConfig::from_plan(d, &plan_cfg, tiers);
            assert_eq!(cfg.group_size, g);
            let mut c = MixedPrecisionKvCache::new(cfg).unwrap();
            let n = r.random_range(1..6usize);
            for head in 0..h {
                for _ in 0..n {
                    let x = data::normal_vec(r, 2 * d, 0.0, 1.0);
                    c.append(head, &x[..d], &x[d..]).unwrap();
                }
            }
            let values = (2 * n * d * h) as f64;
            let bits = 8.0 * c.payload_bytes() as f64;
            assert!(
                bits <= avg * values * (1.0 + 1e-12),
                "{bits} > {avg} x {values}"
            );
            assert!((bits - plan.avg_bits * values).abs() <= 1e-9 * bits);
        });
    }

    /// A head of larger weight never gets fewer bits (shared E[R²], so weight ∝ sensitivity).
    #[test]
    fn planner_is_monotone_in_sensitivity() {
        prop::check("mpkv_planner_monotone", 300, |r| {
            let h = r.random_range(1..40usize);
            let ws: Vec<f64> = (0..h)
                .map(|_| r.random_range(0.0..10.0f64).powi(3))
                .collect();
            let avg = r.random_range(6.0..17.0);
            let mut p = PrecisionPlanner::new(PrecisionPlannerConfig::new(avg, 32)).unwrap();
            let (tiers, _) = p.assign_precisions(&stats(&ws)).unwrap();
            for a in 0..h {
                for b in 0..h {
                    if ws[a] > ws[b] {
                        assert!(
                            tiers[a].code_bits() >= tiers[b].code_bits(),
                            "{ws:?} {tiers:?}"
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn equal_sensitivities_give_a_uniform_assignment_when_affordable() {
        let heads = stats(&[2.0; 8]);
        let run = |avg: f64| {
            let mut p = PrecisionPlanner::new(PrecisionPlannerConfig::new(avg, 32)).unwrap();
            p.assign_precisions(&heads).unwrap().0
        };
        // Exactly a tier's cost: that tier everywhere (the seed sent every head to INT4).
        assert_eq!(run(6.0), vec![KvTier::Int4; 8]);
        assert_eq!(run(10.0), vec![KvTier::Int8; 8]);
        assert_eq!(run(16.0), vec![KvTier::Fp16; 8]);
        assert_eq!(run(100.0), vec![KvTier::Fp16; 8]);
        // Between tiers: everyone at the highest uniformly affordable tier, the rest of the
        // budget upgrades the lowest-indexed heads. 12 bits: 8·12 - 8·10 = 16 bits left,
        // an INT8 -> FP16 upgrade costs 6: heads 0 and 1.
        let t = run(12.0);
        assert_eq!(&t[..2], &[KvTier::Fp16; 2]);
        assert_eq!(&t[2..], &[KvTier::Int8; 6]);
        // 7 bits: 8 bits left above all-INT4, an upgrade costs 4: heads 0 and 1 to INT8.
        let t = run(7.0);
        assert_eq!(&t[..2], &[KvTier::Int8; 2]);
        assert_eq!(&t[2..], &[KvTier::Int4; 6]);
        // Below all-INT4 the budget cannot be met: a config error.
        let e = PrecisionPlanner::new(PrecisionPlannerConfig::new(5.9, 32)).unwrap_err();
        insta::assert_snapshot!(e, @"invalid PrecisionPlanner.avg_bits: must be finite and >= 6 (all heads INT4), got 5.9");
    }

    #[test]
    fn planner_errors() {
        let e = PrecisionPlanner::new(PrecisionPlannerConfig::new(10.0, 8)).unwrap_err();
        insta::assert_snapshot!(e, @"invalid PrecisionPlanner.group_size: must be in 16..=65536, got 8");
        let e = PrecisionPlanner::new(PrecisionPlannerConfig::new(10.0, usize::MAX)).unwrap_err();
        insta::assert_snapshot!(e, @"invalid PrecisionPlanner.group_size: must be in 16..=65536, got 18446744073709551615");
        let mut p = PrecisionPlanner::new(PrecisionPlannerConfig::default()).unwrap();
        let e = p
            .assign_precisions_into(&stats(&[1.0, 2.0]), &mut [KvTier::Fp16])
            .unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in PrecisionPlanner::assign_precisions_into out: expected 2 tiers (one per head), got 1");
        let e = HeadStats::new(f64::NAN, 1.0).unwrap_err();
        insta::assert_snapshot!(e, @"invalid HeadStats.sensitivity: must be finite and >= 0, got NaN");
        assert!(HeadStats::new(1.0, -1.0).is_err());
        let e = HeadStats::from_samples(1.0, &[1.0; 33], 32).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in HeadStats::from_samples samples: expected a non-zero multiple of group_size (32) values, got 33 values");
        assert!(HeadStats::from_samples(1.0, &[f32::NAN; 32], 32).is_err());
        assert!(HeadStats::from_samples(1.0, &[1.0; 32], 0).is_err());
        let (t, s) = p.assign_precisions(&[]).unwrap();
        assert!(t.is_empty());
        assert_eq!(s.counts, [0, 0, 0]);
    }

    #[test]
    fn head_stats_from_samples_is_the_mean_squared_range() {
        // Groups [0, 1, 2, 3] (range 3) and [10, 10, 10, 14] (range 4).
        let s =
            HeadStats::from_samples(2.0, &[0.0, 1.0, 2.0, 3.0, 10.0, 10.0, 10.0, 14.0], 4).unwrap();
        assert_eq!(s.mean_sq_range(), 12.5);
        assert_eq!(s.weight(), 2.0 * 12.5 / 12.0);
        assert_eq!(s.expected_error(KvTier::Int4), s.weight() / 225.0);
    }

    /// The model's INT noise `E[R²] / 12 · f_t` is the measured MSE of uniform data, within
    /// sampling error: the model is real.
    #[test]
    fn error_model_matches_measured_noise_on_uniform_data() {
        let d = 64;
        let x = data::uniform_vec(&mut rng(9), 512 * d, -1.0, 1.0);
        let st = HeadStats::from_samples(1.0, &x, 32).unwrap();
        for tier in [KvTier::Int8, KvTier::Int4] {
            let mut c =
                MixedPrecisionKvCache::new(MixedPrecisionKvConfig::new(d, 32, vec![tier])).unwrap();
            for row in x.chunks(2 * d) {
                c.append(0, &row[..d], &row[d..]).unwrap();
            }
            let (mut k, mut v) = (vec![0.0; 256 * d], vec![0.0; 256 * d]);
            c.read_head_into(0, &mut k, &mut v).unwrap();
            let mse: f64 = x
                .chunks(2 * d)
                .zip(k.chunks(d).zip(v.chunks(d)))
                .flat_map(|(row, (k, v))| row.iter().zip(k.iter().chain(v)))
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum::<f64>()
                / x.len() as f64;
            let model = st.expected_error(tier);
            assert!(
                (mse / model - 1.0).abs() < 0.1,
                "{tier:?}: {mse} vs {model}"
            );
        }
    }

    #[test]
    fn round_trip_per_tier() {
        prop::check("mpkv_round_trip", 32, |r| {
            let d = [32usize, 64, 128][r.random_range(0..3usize)];
            let gs = [8usize, 16, 32][r.random_range(0..3usize)];
            let tiers = vec![KvTier::Fp16, KvTier::Int8, KvTier::Int4];
            let mut c =
                MixedPrecisionKvCache::new(MixedPrecisionKvConfig::new(d, gs, tiers)).unwrap();
            let n = r.random_range(1..20usize);
            let spec = data::KvSpec {
                heads: 2,
                seq_len: n,
                head_dim: d,
                outlier_channels: vec![3],
                outlier_scale: 20.0,
            };
            let kv = data::kv_with_outliers(r, &spec);
            let (ks, vs) = kv.split_at(n * d);
            for head in 0..3 {
                for t in 0..n {
                    c.append(head, &ks[t * d..][..d], &vs[t * d..][..d])
                        .unwrap();
                }
            }
            for head in 0..3 {
                assert_eq!(c.len(head).unwrap(), n);
                let (mut k, mut v) = (vec![0.0; n * d], vec![0.0; n * d]);
                c.read_head_into(head, &mut k, &mut v).unwrap();
                let (mut k1, mut v1) = (vec![0.0; d], vec![0.0; d]);
                for t in 0..n {
                    c.read_token_into(head, t, &mut k1, &mut v1).unwrap();
                    assert_eq!(k1, k[t * d..][..d]);
                    assert_eq!(v1, v[t * d..][..d]);
                }
                for (x, y) in [(ks, &k), (vs, &v)] {
                    match KvTier::ALL[head] {
                        KvTier::Fp16 => {
                            for (a, b) in x.iter().zip(y.iter()) {
                                assert_eq!(*b, f16::from_f32(*a).to_f32());
                            }
                        }
                        tier => {
                            let levels = f64::from((1u32 << tier.code_bits()) - 1);
                            for (xg, yg) in x.chunks(gs).zip(y.chunks(gs)) {
                                let lo = xg.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                                let hi = xg.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                                let bound = (f64::from(hi) - f64::from(lo)) / levels / 2.0;
                                for (a, b) in xg.iter().zip(yg) {
                                    let e = (f64::from(*a) - f64::from(*b)).abs();
                                    assert!(
                                        e <= bound * (1.0 + 1e-5) + 1e-5,
                                        "{tier:?} {e} > {bound}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
            // Bytes from the buffers equal the format's formula.
            let groups = d / gs;
            let per_token = [2 * 2 * d, 2 * (d + 8 * groups), 2 * (d / 2 + 8 * groups)];
            for (head, want) in per_token.iter().enumerate() {
                assert_eq!(c.head_bytes_held(head).unwrap(), n * want);
            }
            assert_eq!(c.payload_bytes(), n * per_token.iter().sum::<usize>());
            // Metadata: head_dim and group_size, then a tier (1 byte) and a length per head.
            let meta = 2 * size_of::<usize>() + 3 * (1 + size_of::<usize>());
            assert_eq!(c.metadata_bytes(), meta);
            assert_eq!(c.bytes_held(), n * per_token.iter().sum::<usize>() + meta);
            c.clear();
            assert!(c.is_empty());
            assert_eq!(c.payload_bytes(), 0);
            assert_eq!(c.bytes_held(), meta);
        });
    }

    #[test]
    fn cache_errors_leave_nothing_appended() {
        let cfg = MixedPrecisionKvConfig::new(32, 32, vec![KvTier::Fp16, KvTier::Int4]);
        let mut c = MixedPrecisionKvCache::new(cfg).unwrap();
        let ok = vec![1.0f32; 32];
        let mut big = ok.clone();
        big[4] = 7e4;
        let e = c.append(0, &ok, &big).unwrap_err();
        insta::assert_snapshot!(e, @"value out of range in MixedPrecisionKvCache::append v: element 4 is 70000");
        assert!(c.append(1, &ok, &big).is_ok()); // INT tiers hold any finite value...
        // ...whose group range fits an f32: ±3e38 in one group overflows it.
        let mut wide = ok.clone();
        (wide[0], wide[1]) = (3e38, -3e38);
        let e = c.append(1, &wide, &ok).unwrap_err();
        insta::assert_snapshot!(e, @"value out of range in MixedPrecisionKvCache::append k (a group's range max - min is too large for f32): element 0 is 300000000000000000000000000000000000000");
        let e = c.append(1, &ok, &wide).unwrap_err();
        insta::assert_snapshot!(e, @"value out of range in MixedPrecisionKvCache::append v (a group's range max - min is too large for f32): element 0 is 300000000000000000000000000000000000000");
        assert_eq!(c.len(1).unwrap(), 1);
        let mut nan = ok.clone();
        nan[2] = f32::NAN;
        for head in 0..2 {
            let e = c.append(head, &ok, &nan).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Core(squish_core::Error::NonFinite { index: 2, .. })
                ),
                "{e}"
            );
        }
        assert_eq!(c.len(0).unwrap(), 0);
        assert_eq!(c.len(1).unwrap(), 1);
        assert_eq!(c.head_bytes_held(0).unwrap(), 0);
        let e = c.append(2, &ok, &ok).unwrap_err();
        insta::assert_snapshot!(e, @"head 2 out of range: the cache has 2 heads");
        let e = c.append(0, &ok[..31], &ok).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in MixedPrecisionKvCache::append k: expected 32 values (head_dim), got 31");
        let (mut k, mut v) = (vec![0.0; 32], vec![0.0; 32]);
        let e = c.read_token_into(1, 1, &mut k, &mut v).unwrap_err();
        insta::assert_snapshot!(e, @"token 1 out of range for head 1: it holds 1 tokens");
        assert!(c.read_token_into(1, 0, &mut k, &mut v[..3]).is_err());
        assert!(c.read_head_into(1, &mut k[..0], &mut v).is_err());
        let bad = MixedPrecisionKvConfig::new(48, 32, vec![KvTier::Fp16]);
        insta::assert_snapshot!(MixedPrecisionKvCache::new(bad).unwrap_err(), @"invalid MixedPrecisionKvCache.group_size: must be even, > 0 and divide head_dim (48), got 32");
        let bad = MixedPrecisionKvConfig::new(6, 3, vec![KvTier::Int4]);
        assert!(MixedPrecisionKvCache::new(bad).is_err());
        let bad = MixedPrecisionKvConfig::new(0, 32, vec![KvTier::Fp16]);
        assert!(MixedPrecisionKvCache::new(bad).is_err());
        let bad = MixedPrecisionKvConfig::new(64, 32, vec![]);
        assert!(MixedPrecisionKvCache::new(bad).is_err());
    }

    #[test]
    fn int4_is_really_packed() {
        let d = 64;
        let mut c = MixedPrecisionKvCache::new(MixedPrecisionKvConfig::new(
            d,
            32,
            vec![KvTier::Int8, KvTier::Int4],
        ))
        .unwrap();
        let x = data::normal_vec(&mut rng(2), d, 0.0, 1.0);
        c.append(0, &x, &x).unwrap();
        c.append(1, &x, &x).unwrap();
        // 8-bit: 64 code bytes + 2 groups x 8; 4-bit: 32 code bytes + 2 groups x 8 (per K and V).
        assert_eq!(c.head_bytes_held(0).unwrap(), 2 * (64 + 16));
        assert_eq!(c.head_bytes_held(1).unwrap(), 2 * (32 + 16));
    }
}
