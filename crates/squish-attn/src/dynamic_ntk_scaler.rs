//! RoPE frequencies under dynamic NTK / YaRN / Llama 3: [`DynamicNtkScaler`] (docs there).

use std::ops::Range;

use squish_core::{ConfigError, ShapeError, check_finite};

use crate::{Error, Result};

const COMPONENT: &str = "DynamicNtkScaler";

/// Which channels of a head form the rotated pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RopeLayout {
    /// Pair `i` is channels `(2i, 2i+1)`: GGUF / llama.cpp "normal" RoPE, Meta's original Llama
    /// code (and the SmolLM2 tensors in the shared data).
    AdjacentPairs,
    /// Pair `i` is channels `(i, i + d/2)`: Hugging Face transformers' `rotate_half`, GPT-NeoX.
    HalfSplit,
}

/// The context-extension policy of a [`DynamicNtkScaler`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum RopeScaling {
    /// Plain RoPE: `θ_i = base^(−2i/d)` at every length.
    None,
    /// Dynamic NTK: the base grows with the sequence length past `L₀`.
    DynamicNtk {
        /// `α ≥ 1` (transformers' `rope_scaling["factor"]`).
        factor: f64,
    },
    /// YaRN (NTK-by-parts with attention temperature).
    Yarn {
        /// Scale `s ≥ 1`.
        factor: f64,
        /// `β_fast` (32 in the paper and transformers): rotations marking the ramp's start.
        beta_fast: f64,
        /// `β_slow` (1): rotations marking the ramp's end; `0 < β_slow < β_fast`.
        beta_slow: f64,
        /// Overrides the temperature `0.1·ln s + 1` when set (must be finite and > 0).
        attention_factor: Option<f64>,
    },
    /// Llama 3.1's wavelength-banded scaling.
    Llama3 {
        /// Scale `s ≥ 1` (8 for Llama 3.1).
        factor: f64,
        /// `low_freq_factor` (1 for Llama 3.1), `> 0`.
        low_freq_factor: f64,
        /// `high_freq_factor` (4 for Llama 3.1), `> low_freq_factor`.
        high_freq_factor: f64,
    },
}

impl RopeScaling {
    /// YaRN with the paper's `β_fast = 32`, `β_slow = 1` and the default temperature.
    pub fn yarn(factor: f64) -> Self {
        Self::Yarn {
            factor,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
        }
    }

    /// Llama 3.1's policy: `low_freq_factor = 1`, `high_freq_factor = 4`.
    pub fn llama3(factor: f64) -> Self {
        Self::Llama3 {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
        }
    }
}

/// Configuration of a [`DynamicNtkScaler`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DynamicNtkConfig {
    /// The model's RoPE base (`rope_theta`), finite and > 1. Default 10 000.
    pub base: f64,
    /// Rotary dimension `d` (the head dimension, or the rotated part of it), even, ≥ 2
    /// (≥ 4 for dynamic NTK, whose exponent is `d/(d−2)`). Default 128.
    pub head_dim: usize,
    /// `L₀`, the context length the model was trained with, ≥ 1. Default 4096.
    pub original_max_position: usize,
    /// The policy. Default dynamic NTK with `α = 8` (the seed's).
    pub scaling: RopeScaling,
    /// The channel pairing of keys and queries. Default [`RopeLayout::HalfSplit`].
    pub layout: RopeLayout,
    /// How many effective bases keep cached frequencies and cos/sin tables, ≥ 1 (least recently
    /// used evicted). Default 4.
    pub cache_capacity: usize,
    /// Positions `[0, n)` a cached cos/sin table may hold, ≥ 1: rows past it are computed into
    /// the caller's buffers, not cached. Bounds the cache at
    /// `cache_capacity · max_cached_positions · d · 4` bytes. Default 8192 (4 MiB per base at
    /// `d = 128`).
    pub max_cached_positions: usize,
}

impl Default for DynamicNtkConfig {
    fn default() -> Self {
        Self {
            base: 10_000.0,
            head_dim: 128,
            original_max_position: 4096,
            scaling: RopeScaling::DynamicNtk { factor: 8.0 },
            layout: RopeLayout::HalfSplit,
            cache_capacity: 4,
            max_cached_positions: 8192,
        }
    }
}

fn factor_ok(field: &'static str, f: f64) -> Result<(), ConfigError> {
    if f.is_finite() && f >= 1.0 {
        Ok(())
    } else {
        Err(ConfigError::new(
            COMPONENT,
            field,
            "must be finite and ≥ 1",
            f,
        ))
    }
}

impl DynamicNtkConfig {
    /// Checks every field and the policy's parameters.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that breaks its rule (see each field).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.base.is_finite() && self.base > 1.0) {
            return Err(ConfigError::new(
                COMPONENT,
                "base",
                "must be finite and > 1",
                self.base,
            ));
        }
        let min_dim = if matches!(self.scaling, RopeScaling::DynamicNtk { .. }) {
            4
        } else {
            2
        };
        if self.head_dim < min_dim || !self.head_dim.is_multiple_of(2) {
            return Err(ConfigError::new(
                COMPONENT,
                "head_dim",
                format!("must be even and at least {min_dim}"),
                self.head_dim,
            ));
        }
        for (field, v) in [
            ("original_max_position", self.original_max_position),
            ("cache_capacity", self.cache_capacity),
            ("max_cached_positions", self.max_cached_positions),
        ] {
            if v == 0 {
                return Err(ConfigError::new(COMPONENT, field, "must be at least 1", v));
            }
        }
        match self.scaling {
            RopeScaling::None => {}
            RopeScaling::DynamicNtk { factor } => factor_ok("scaling.factor", factor)?,
            RopeScaling::Yarn {
                factor,
                beta_fast,
                beta_slow,
                attention_factor,
            } => {
                factor_ok("scaling.factor", factor)?;
                if !(beta_slow.is_finite() && beta_slow > 0.0) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "scaling.beta_slow",
                        "must be finite and > 0",
                        beta_slow,
                    ));
                }
                if !(beta_fast.is_finite() && beta_fast > beta_slow) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "scaling.beta_fast",
                        format!("must be finite and > beta_slow ({beta_slow})"),
                        beta_fast,
                    ));
                }
                if let Some(a) = attention_factor
                    && !(a.is_finite() && a > 0.0)
                {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "scaling.attention_factor",
                        "must be finite and > 0",
                        a,
                    ));
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
            } => {
                factor_ok("scaling.factor", factor)?;
                if !(low_freq_factor.is_finite() && low_freq_factor > 0.0) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "scaling.low_freq_factor",
                        "must be finite and > 0",
                        low_freq_factor,
                    ));
                }
                if !(high_freq_factor.is_finite() && high_freq_factor > low_freq_factor) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "scaling.high_freq_factor",
                        format!("must be finite and > low_freq_factor ({low_freq_factor})"),
                        high_freq_factor,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What the scaler uses for a sequence length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    /// The sequence length asked for (positions `[0, seq_len)`).
    pub seq_len: usize,
    /// The effective rotary base: `base'` for dynamic NTK past `L₀`, else the configured base
    /// (YaRN and Llama 3 change frequencies per pair, not the base).
    pub base: f64,
    /// True exactly when the frequencies differ from the unscaled `base^(−2i/d)`: for dynamic
    /// NTK when `base' ≠ base`, for YaRN and Llama 3 when `factor > 1`, never for
    /// [`RopeScaling::None`].
    pub is_scaled: bool,
    /// The factor cos and sin are multiplied by (YaRN's temperature; 1 otherwise).
    pub attention_factor: f64,
}

/// One cached effective base: its frequencies and a cos/sin table for positions `[0, rows)`.
#[derive(Debug, Clone)]
struct CacheEntry {
    /// `base.to_bits()` of the effective base (the policy is fixed per scaler).
    key: u64,
    inv_freq: Vec<f32>,
    inv_freq64: Vec<f64>,
    attention_factor: f64,
    /// `rows × d/2` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    last_used: u64,
}

/// RoPE frequencies and cos/sin tables under dynamic NTK, YaRN or Llama 3 scaling, with exact
/// re-rotation of cached keys when the base changes.
///
/// The policies follow Hugging Face transformers' `modeling_rope_utils.py`
/// (`_compute_dynamic_ntk_parameters`, `_compute_yarn_parameters`,
/// `_compute_llama3_parameters`), re-implemented from their definitions (in f64 here):
///
/// * **Dynamic NTK** (bloc97 / emozilla, as in transformers' `"dynamic"` rope type): for a
///   sequence of `L` positions with `L > L₀` (the trained length), the base becomes
///   `base' = base · (α·L/L₀ − (α − 1))^(d/(d−2))`; for `L ≤ L₀` it is unchanged (the formula
///   is continuous there: at `L = L₀` the bracket is 1). Frequencies are `base'^(−2i/d)`.
/// * **YaRN** (Peng et al. 2023, arXiv:2309.00071, "NTK-by-parts"): with `s` the factor,
///   frequency `i` is interpolated (`θ_i/s`) or kept (`θ_i`) according to a linear ramp over
///   pair indices between `⌊i(β_fast)⌋` and `⌈i(β_slow)⌉`, where
///   `i(r) = d·ln(L₀/(2π r)) / (2 ln base)` is the pair whose wavelength fits `r` times in `L₀`
///   (clamped to `[0, d−1]`); below the ramp frequencies are kept, above it divided by `s`.
///   cos and sin are multiplied by the attention temperature `0.1·ln s + 1` (or a given
///   `attention_factor`), as transformers does.
/// * **Llama 3** (Llama 3.1's `rope_scaling`): wavelengths `λ_i = 2π/θ_i` shorter than
///   `L₀/high_freq_factor` are kept, longer than `L₀/low_freq_factor` divided by `s`, and in
///   between smoothly interpolated with `κ = (L₀/λ_i − low)/(high − low)`:
///   `(1−κ)·θ_i/s + κ·θ_i`.
///
/// YaRN and Llama 3 are static (their frequencies do not depend on the current length);
/// dynamic NTK changes the base as the sequence grows. YaRN is the paper's and transformers'
/// default form (correction range truncated to whole pairs); DeepSeek-style
/// `mscale / mscale_all_dim` temperatures are expressed through `attention_factor`.
///
/// Every call takes the sequence length `L` (largest position + 1) explicitly; the scaler keeps
/// no per-sequence state. transformers recomputes the dynamic base whenever `L` exceeds the
/// longest length seen so far (a new base per decode step past `L₀`, each invalidating the
/// cached keys); a caller can instead pass a bucketed length (e.g. `L` rounded up to a multiple
/// of 1024) to bound the number of distinct bases and re-rotations.
///
/// # What dynamic NTK does and does not give
/// The seed claimed "unbounded context extension". It is not: dynamic NTK is an *untrained*
/// change of the rotary base that keeps the low-frequency rotation angles near the range seen
/// in training at the cost of compressing every frequency except `θ_0`. The base grows about
/// linearly with `L` (exponent `d/(d−2)`), so the lowest frequency's largest angle stays near
/// `α`× the trained one rather than growing with `L`; the attention pattern still drifts, and
/// models lose quality as `L` grows past a few times `L₀` (perplexity rises; long-range
/// retrieval fails first). It also changes the rotation of every position, so keys already in
/// a KV cache become stale whenever the base changes (below). The claims program measures the
/// effective base, the angle ranges and the stale-key error.
///
/// # Cache consistency
/// Serving stacks store keys *after* RoPE. When the dynamic base changes from `A` to `B`
/// mid-sequence, every cached key at position `p` was rotated by `p·θ_A,i` but a fresh key would
/// be rotated by `p·θ_B,i`. vLLM and SGLang ignore this (the base is fixed at the maximum model
/// length, or cached keys are silently stale). Here [`RopeParams::base`] tells the caller the
/// effective base of each length, [`DynamicNtkScaler::needs_rerotation`] compares two, and
/// [`DynamicNtkScaler::rerotate_in_place`] rotates cached keys by `p·(θ_B,i − θ_A,i)` (angles in
/// f64), which equals rotating the raw keys with `B` from scratch.
///
/// The "trigger" of the seed (0.8 × L₀) is dropped: transformers' formula has no such
/// parameter, and applying it below `L₀` would *lower* the base (the bracket is < 1 there),
/// raising frequencies beyond the trained ones. A caller who wants scaling to start earlier sets
/// [`DynamicNtkConfig::original_max_position`] lower. [`RopeParams::is_scaled`] is true exactly
/// when the frequencies differ from the unscaled ones (for dynamic NTK: the base changed).
///
/// Implements the seed's `DynamicNTKScaler` ("NTK formula applied"), as Hugging Face
/// transformers computes it (see above for the formulas, what NTK scaling does
/// and does not give, and the dropped "trigger").
///
/// # Example
/// ```
/// use squish_attn::{DynamicNtkConfig, DynamicNtkScaler};
///
/// let mut rope = DynamicNtkScaler::new(DynamicNtkConfig::default())?; // base 1e4, d 128, L₀ 4096, α 8
/// let mut inv_freq = vec![0.0f32; 64];
/// let p = rope.inv_freq_into(2048, &mut inv_freq)?;
/// assert!(!p.is_scaled && p.base == 10_000.0);
/// let p = rope.inv_freq_into(6000, &mut inv_freq)?;
/// assert!(p.is_scaled && p.base > 10_000.0);
///
/// // Keys cached (after RoPE) at base 1e4 must be re-rotated to be used at the new base.
/// let mut keys = vec![0.5f32; 3 * 128]; // positions 4093, 4094, 4095
/// assert!(rope.needs_rerotation(10_000.0, 6000));
/// rope.rerotate_in_place(&mut keys, 4093, 10_000.0, p.base)?;
///
/// // cos/sin for positions [5998, 6000) at the length-6000 base, cached for that base.
/// let (mut cos, mut sin) = (vec![0.0f32; 2 * 64], vec![0.0f32; 2 * 64]);
/// rope.cos_sin_into(6000, 5998..6000, &mut cos, &mut sin)?;
/// # Ok::<(), squish_attn::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DynamicNtkScaler {
    cfg: DynamicNtkConfig,
    /// `base^(−2/d)`, the ratio of the unscaled frequencies.
    r0: f64,
    entries: Vec<CacheEntry>,
    clock: u64,
}

impl DynamicNtkScaler {
    /// Builds a scaler, validating the configuration once. The cache starts empty.
    ///
    /// # Errors
    /// [`Error::Config`] if [`DynamicNtkConfig::validate`] fails.
    pub fn new(cfg: DynamicNtkConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            r0: cfg.base.powf(-2.0 / cfg.head_dim as f64),
            entries: Vec::with_capacity(cfg.cache_capacity),
            cfg,
            clock: 0,
        })
    }

    /// The configuration the scaler was built with.
    pub fn config(&self) -> &DynamicNtkConfig {
        &self.cfg
    }

    /// The effective base and scaling flags for a sequence of `seq_len` positions
    /// (`seq_len` = largest position + 1, as transformers' dynamic update uses).
    ///
    /// # Performance
    /// One `powf` for dynamic NTK past `L₀`; otherwise a few comparisons.
    pub fn params(&self, seq_len: usize) -> RopeParams {
        self.params_and_ratio(seq_len).0
    }

    /// [`params`](Self::params) and the geometric ratio `base'^(−2/d)` of its frequencies.
    /// Past `L₀`, with `b = α·L/L₀ − (α−1)` and `t = b^(1/(d−2))`: `base' = base·t^d` and
    /// `base'^(−2/d) = base^(−2/d)/t²`, so one `powf` serves both.
    fn params_and_ratio(&self, seq_len: usize) -> (RopeParams, f64) {
        let base = self.cfg.base;
        let unscaled = |is_scaled, attention_factor| RopeParams {
            seq_len,
            base,
            is_scaled,
            attention_factor,
        };
        match self.cfg.scaling {
            RopeScaling::None => (unscaled(false, 1.0), self.r0),
            RopeScaling::DynamicNtk { factor } => {
                let l0 = self.cfg.original_max_position;
                if seq_len <= l0 {
                    return (unscaled(false, 1.0), self.r0);
                }
                let d = self.cfg.head_dim;
                let b = factor * (seq_len as f64 / l0 as f64) - (factor - 1.0);
                let t = b.powf(1.0 / (d as f64 - 2.0));
                let eff = base * t.powi(i32::try_from(d).unwrap_or(i32::MAX));
                let p = RopeParams {
                    seq_len,
                    base: eff,
                    is_scaled: eff.to_bits() != base.to_bits(),
                    attention_factor: 1.0,
                };
                (p, self.r0 / (t * t))
            }
            RopeScaling::Yarn {
                factor,
                attention_factor,
                ..
            } => (
                unscaled(
                    factor > 1.0,
                    attention_factor.unwrap_or(0.1 * factor.ln() + 1.0),
                ),
                self.r0,
            ),
            RopeScaling::Llama3 { factor, .. } => (unscaled(factor > 1.0, 1.0), self.r0),
        }
    }

    /// True when keys rotated with `keys_base` must be re-rotated to be used at `seq_len`: the
    /// effective base of `seq_len` differs (bit for bit) from `keys_base`. Always false for
    /// YaRN and Llama 3 keys rotated with the configured base (their base never changes).
    pub fn needs_rerotation(&self, keys_base: f64, seq_len: usize) -> bool {
        self.params(seq_len).base.to_bits() != keys_base.to_bits()
    }

    /// Calls `sink(i, θ_i)` for every pair `i < d/2` with the policy's frequency (f64).
    fn for_each_freq(&self, p: &RopeParams, r: f64, mut sink: impl FnMut(usize, f64)) {
        let d = self.cfg.head_dim as f64;
        let half = self.cfg.head_dim / 2;
        let l0 = self.cfg.original_max_position as f64;
        let mut f = 1.0f64;
        match self.cfg.scaling {
            RopeScaling::None | RopeScaling::DynamicNtk { .. } => {
                // Four interleaved geometric chains (ratio r⁴) instead of one dependent chain.
                let r2 = r * r;
                let r4 = r2 * r2;
                let mut lanes = [1.0, r, r2, r2 * r];
                let mut i = 0;
                while i + 4 <= half {
                    for (k, l) in lanes.iter_mut().enumerate() {
                        sink(i + k, *l);
                        *l *= r4;
                    }
                    i += 4;
                }
                for (k, l) in lanes.iter().enumerate().take(half - i) {
                    sink(i + k, *l);
                }
            }
            RopeScaling::Yarn {
                factor,
                beta_fast,
                beta_slow,
                ..
            } => {
                let (low, high) = yarn_correction_range(beta_fast, beta_slow, d, p.base, l0);
                for i in 0..half {
                    let ramp = yarn_ramp(i, low, high);
                    // transformers' "extrapolation factor" is 1 − ramp: kept below the ramp.
                    let keep = 1.0 - ramp;
                    sink(i, (f / factor) * (1.0 - keep) + f * keep);
                    f *= r;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
            } => {
                let low_wl = l0 / low_freq_factor;
                let high_wl = l0 / high_freq_factor;
                for i in 0..half {
                    let wl = 2.0 * std::f64::consts::PI / f;
                    let g = if wl > low_wl {
                        f / factor
                    } else if wl < high_wl {
                        f
                    } else {
                        let k = (l0 / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - k) * f / factor + k * f
                    };
                    sink(i, g);
                    f *= r;
                }
            }
        }
    }

    fn check_freq_len(&self, context: &'static str, len: usize) -> Result<()> {
        let half = self.cfg.head_dim / 2;
        if len != half {
            return Err(ShapeError::new(context, half, len).into());
        }
        Ok(())
    }

    /// Writes the `d/2` inverse frequencies for a sequence of `seq_len` positions into `out`,
    /// recomputing them, and returns the parameters used.
    ///
    /// `base'^(−2i/d)` is computed as four interleaved geometric sequences in f64 (ratio from
    /// one `powf`, precomputed for the configured base),
    /// within 1 ulp of f32 of the f64 `powf` reference; the YaRN / Llama 3 rules are then
    /// applied per pair in f64.
    ///
    /// # Errors
    /// [`Error::Shape`] if `out.len() != head_dim / 2`.
    ///
    /// # Performance
    /// One `powf` past `L₀` for dynamic NTK (none otherwise) and `O(d)` arithmetic; no
    /// allocation, no cache access. See
    /// [`inv_freq_cached_into`](Self::inv_freq_cached_into) for the cached path.
    pub fn inv_freq_into(&self, seq_len: usize, out: &mut [f32]) -> Result<RopeParams> {
        self.check_freq_len("DynamicNtkScaler::inv_freq_into out", out.len())?;
        let (p, r) = self.params_and_ratio(seq_len);
        self.for_each_freq(&p, r, |i, f| out[i] = f as f32);
        Ok(p)
    }

    /// As [`inv_freq_into`](Self::inv_freq_into), in f64 (for callers that build their own
    /// angle tables in f64).
    ///
    /// # Errors
    /// [`Error::Shape`] if `out.len() != head_dim / 2`.
    pub fn inv_freq_f64_into(&self, seq_len: usize, out: &mut [f64]) -> Result<RopeParams> {
        self.check_freq_len("DynamicNtkScaler::inv_freq_f64_into out", out.len())?;
        let (p, r) = self.params_and_ratio(seq_len);
        self.for_each_freq(&p, r, |i, f| out[i] = f);
        Ok(p)
    }

    /// The cache entry of `p`'s effective base, made (evicting the least recently used entry
    /// when full) if absent. Returns its index.
    fn entry(&mut self, p: &RopeParams, r: f64) -> usize {
        self.clock += 1;
        let key = p.base.to_bits();
        if let Some(i) = self.entries.iter().position(|e| e.key == key) {
            self.entries[i].last_used = self.clock;
            return i;
        }
        let half = self.cfg.head_dim / 2;
        let mut inv_freq64 = vec![0.0f64; half];
        self.for_each_freq(p, r, |i, f| inv_freq64[i] = f);
        let entry = CacheEntry {
            key,
            inv_freq: inv_freq64.iter().map(|&f| f as f32).collect(),
            inv_freq64,
            attention_factor: p.attention_factor,
            cos: Vec::new(),
            sin: Vec::new(),
            last_used: self.clock,
        };
        if self.entries.len() < self.cfg.cache_capacity {
            self.entries.push(entry);
            self.entries.len() - 1
        } else {
            let (i, _) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .unwrap_or((0, &self.entries[0]));
            self.entries[i] = entry;
            i
        }
    }

    /// As [`inv_freq_into`](Self::inv_freq_into), served from the per-base cache (filled on the
    /// first request for a base).
    ///
    /// # Errors
    /// [`Error::Shape`] if `out.len() != head_dim / 2`.
    ///
    /// # Performance
    /// A hit costs the effective-base computation (one `powf` past `L₀` for dynamic NTK), a
    /// scan of at most `cache_capacity` keys and a `d/2` copy; a miss allocates the entry.
    pub fn inv_freq_cached_into(&mut self, seq_len: usize, out: &mut [f32]) -> Result<RopeParams> {
        self.check_freq_len("DynamicNtkScaler::inv_freq_cached_into out", out.len())?;
        let (p, r) = self.params_and_ratio(seq_len);
        let i = self.entry(&p, r);
        out.copy_from_slice(&self.entries[i].inv_freq);
        Ok(p)
    }

    /// Number of effective bases currently cached (≤ `cache_capacity`).
    pub fn cached_bases(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held by the cache's tables and frequencies, measured from its buffers.
    pub fn cache_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| {
                size_of_val(e.inv_freq.as_slice())
                    + size_of_val(e.inv_freq64.as_slice())
                    + size_of_val(e.cos.as_slice())
                    + size_of_val(e.sin.as_slice())
            })
            .sum()
    }

    /// Writes the cos and sin tables for `positions` at the effective base of `seq_len`:
    /// row `r` (position `positions.start + r`) holds `c·cos(p·θ_i)` and `c·sin(p·θ_i)` for
    /// `i < d/2`, with `c` the attention factor (YaRN's temperature, else 1). Angles are
    /// computed in f64.
    ///
    /// Rows below [`DynamicNtkConfig::max_cached_positions`] come from the base's cached table,
    /// which grows on demand when the request starts inside (or right after) what it holds;
    /// other rows are computed into the buffers without being cached.
    ///
    /// # Errors
    /// [`Error::Config`] if `positions.start > positions.end`; [`Error::Shape`] if `cos` or
    /// `sin` is not `positions.len() × d/2` long.
    ///
    /// # Performance
    /// Cached rows are a copy; computed rows cost one f64 `sin_cos` per entry. Growing a table
    /// may reallocate it.
    pub fn cos_sin_into(
        &mut self,
        seq_len: usize,
        positions: Range<usize>,
        cos: &mut [f32],
        sin: &mut [f32],
    ) -> Result<RopeParams> {
        if positions.start > positions.end {
            return Err(ConfigError::new(
                COMPONENT,
                "positions",
                "start must not exceed end",
                format!("{}..{}", positions.start, positions.end),
            )
            .into());
        }
        let half = self.cfg.head_dim / 2;
        let n = positions.len() * half;
        if cos.len() != n {
            return Err(ShapeError::new("DynamicNtkScaler::cos_sin_into cos", n, cos.len()).into());
        }
        if sin.len() != n {
            return Err(ShapeError::new("DynamicNtkScaler::cos_sin_into sin", n, sin.len()).into());
        }
        let (p, r) = self.params_and_ratio(seq_len);
        let max_rows = self.cfg.max_cached_positions;
        let i = self.entry(&p, r);
        let e = &mut self.entries[i];
        let rows = e.cos.len() / half;
        // Grow the cached table when the request is contiguous with it.
        if positions.start <= rows && positions.end > rows && rows < max_rows {
            let new_rows = positions.end.min(max_rows);
            e.cos.resize(new_rows * half, 0.0);
            e.sin.resize(new_rows * half, 0.0);
            fill_cos_sin(
                &e.inv_freq64,
                e.attention_factor,
                rows,
                &mut e.cos[rows * half..],
                &mut e.sin[rows * half..],
            );
        }
        let rows = e.cos.len() / half;
        // Rows [start, cached_end) come from the table, the rest are computed.
        let cached_end = if positions.start < rows {
            positions.end.min(rows)
        } else {
            positions.start
        };
        let k = (cached_end - positions.start) * half;
        if k > 0 {
            cos[..k].copy_from_slice(&e.cos[positions.start * half..cached_end * half]);
            sin[..k].copy_from_slice(&e.sin[positions.start * half..cached_end * half]);
        }
        fill_cos_sin(
            &e.inv_freq64,
            e.attention_factor,
            cached_end,
            &mut cos[k..],
            &mut sin[k..],
        );
        Ok(p)
    }

    /// Re-rotates keys cached after RoPE with base `from_base` so they equal the raw keys
    /// rotated with `to_base`: pair `i` of the key at position `p` is rotated by
    /// `p·(θ_to,i − θ_from,i)` (angles in f64), in the configured [`RopeLayout`].
    ///
    /// `keys` holds `n × head_dim` floats, row `r` at position `first_pos + r` (one head; call
    /// once per head). Use the [`RopeParams::base`] of the lengths involved; the frequencies are
    /// `base^(−2i/d)` (the dynamic-NTK and unscaled policies, whose base is what changes).
    ///
    /// # Errors
    /// [`Error::Config`] if a base is not finite and > 1; [`Error::Shape`] if `keys.len()` is not
    /// a multiple of `head_dim`; [`Error::Core`] if `keys` holds NaN or infinity (then nothing
    /// is modified).
    ///
    /// # Performance
    /// One f64 `sin_cos` per pair and position: a rare operation (once per base change), linear
    /// in the cached tokens. No allocation.
    pub fn rerotate_in_place(
        &self,
        keys: &mut [f32],
        first_pos: usize,
        from_base: f64,
        to_base: f64,
    ) -> Result<()> {
        for (field, b) in [("from_base", from_base), ("to_base", to_base)] {
            if !(b.is_finite() && b > 1.0) {
                return Err(ConfigError::new(COMPONENT, field, "must be finite and > 1", b).into());
            }
        }
        let d = self.cfg.head_dim;
        if !keys.len().is_multiple_of(d) {
            return Err(ShapeError::new(
                "DynamicNtkScaler::rerotate_in_place keys (multiple of head_dim)",
                format!("n × {d}"),
                keys.len(),
            )
            .into());
        }
        check_finite("DynamicNtkScaler::rerotate_in_place keys", keys)?;
        if from_base.to_bits() == to_base.to_bits() {
            return Ok(());
        }
        let ra = from_base.powf(-2.0 / d as f64);
        let rb = to_base.powf(-2.0 / d as f64);
        let mut delta = [0.0f64; 256];
        let (mut fa, mut fb) = (1.0f64, 1.0f64);
        let half = d / 2;
        // Frequency differences in chunks of 256 pairs (no allocation; d/2 ≤ 256 is one pass).
        let mut start = 0;
        while start < half {
            let len = (half - start).min(delta.len());
            for dl in &mut delta[..len] {
                *dl = fb - fa;
                fa *= ra;
                fb *= rb;
            }
            rotate_pairs(keys, d, first_pos, start, &delta[..len], self.cfg.layout);
            start += len;
        }
        Ok(())
    }
}

/// Rotates every row of `x` (`n × head_dim`, row `r` at position `first_pos + r`) in place:
/// pair `i` by the angle `(first_pos + r)·freqs[i]`, in `layout`. Rotating by `freqs` applies
/// RoPE with those frequencies; by their negatives undoes it; by a difference of two frequency
/// sets, moves keys from one base to another. Angles are computed in f64.
///
/// # Errors
/// [`Error::Shape`] if `head_dim` is odd or zero, `freqs.len() != head_dim / 2`, or `x.len()` is
/// not a multiple of `head_dim`; [`Error::Core`] if `x` or `freqs` is not finite.
///
/// # Example
/// ```
/// use squish_attn::{RopeLayout, rope_rotate_in_place};
///
/// let mut x = vec![1.0f32, 0.0, 1.0, 0.0]; // head_dim 4, one row at position 3
/// let freqs = [0.5f64, 0.0];
/// rope_rotate_in_place(&mut x, 4, 3, &freqs, RopeLayout::AdjacentPairs)?;
/// assert!((x[0] - 1.5f32.cos()).abs() < 1e-6 && (x[1] - 1.5f32.sin()).abs() < 1e-6);
/// let back: Vec<f64> = freqs.iter().map(|f| -f).collect();
/// rope_rotate_in_place(&mut x, 4, 3, &back, RopeLayout::AdjacentPairs)?;
/// assert!((x[0] - 1.0).abs() < 1e-6 && x[1].abs() < 1e-6);
/// # Ok::<(), squish_attn::Error>(())
/// ```
pub fn rope_rotate_in_place(
    x: &mut [f32],
    head_dim: usize,
    first_pos: usize,
    freqs: &[f64],
    layout: RopeLayout,
) -> Result<()> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(
            ShapeError::new("rope_rotate_in_place head_dim (even)", "even ≥ 2", head_dim).into(),
        );
    }
    if freqs.len() != head_dim / 2 {
        return Err(
            ShapeError::new("rope_rotate_in_place freqs", head_dim / 2, freqs.len()).into(),
        );
    }
    if !x.len().is_multiple_of(head_dim) {
        return Err(ShapeError::new(
            "rope_rotate_in_place x (multiple of head_dim)",
            format!("n × {head_dim}"),
            x.len(),
        )
        .into());
    }
    if let Some(i) = freqs.iter().position(|f| !f.is_finite()) {
        return Err(Error::Core(squish_core::Error::NonFinite {
            context: "rope_rotate_in_place freqs",
            index: i,
            value: freqs[i] as f32,
        }));
    }
    check_finite("rope_rotate_in_place x", x)?;
    rotate_pairs(x, head_dim, first_pos, 0, freqs, layout);
    Ok(())
}

/// Rotates pairs `[pair0, pair0 + freqs.len())` of every row by `pos·freqs[k]`.
fn rotate_pairs(
    x: &mut [f32],
    d: usize,
    first_pos: usize,
    pair0: usize,
    freqs: &[f64],
    layout: RopeLayout,
) {
    let half = d / 2;
    for (r, row) in x.chunks_exact_mut(d).enumerate() {
        let pos = (first_pos + r) as f64;
        for (k, &f) in freqs.iter().enumerate() {
            let i = pair0 + k;
            let (s, co) = (pos * f).sin_cos();
            let (a, b) = match layout {
                RopeLayout::AdjacentPairs => (2 * i, 2 * i + 1),
                RopeLayout::HalfSplit => (i, i + half),
            };
            let (x0, x1) = (f64::from(row[a]), f64::from(row[b]));
            row[a] = (x0 * co - x1 * s) as f32;
            row[b] = (x0 * s + x1 * co) as f32;
        }
    }
}

/// Fills `cos`/`sin` (rows of `inv_freq.len()`) for positions `first_pos, first_pos + 1, …`.
fn fill_cos_sin(inv_freq: &[f64], c: f64, first_pos: usize, cos: &mut [f32], sin: &mut [f32]) {
    let half = inv_freq.len();
    for (r, (cr, sr)) in cos
        .chunks_exact_mut(half)
        .zip(sin.chunks_exact_mut(half))
        .enumerate()
    {
        let pos = (first_pos + r) as f64;
        for ((co, si), &f) in cr.iter_mut().zip(sr.iter_mut()).zip(inv_freq) {
            let (s, cc) = (pos * f).sin_cos();
            *co = (cc * c) as f32;
            *si = (s * c) as f32;
        }
    }
}

/// YaRN's correction range `(⌊i(β_fast)⌋ ∨ 0, ⌈i(β_slow)⌉ ∧ (d − 1))`, with
/// `i(r) = d·ln(L₀/(2πr)) / (2 ln base)`.
fn yarn_correction_range(beta_fast: f64, beta_slow: f64, d: f64, base: f64, l0: f64) -> (f64, f64) {
    let dim = |rot: f64| d * (l0 / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * base.ln());
    let low = dim(beta_fast).floor().max(0.0);
    let high = dim(beta_slow).ceil().min(d - 1.0);
    (low, high)
}

/// YaRN's linear ramp at pair `i`: 0 at or below `low`, 1 at or above `high`
/// (`high` nudged by 0.001 when equal to `low`, as transformers does).
fn yarn_ramp(i: usize, low: f64, high: f64) -> f64 {
    let high = if high == low { high + 0.001 } else { high };
    ((i as f64 - low) / (high - low)).clamp(0.0, 1.0)
}
