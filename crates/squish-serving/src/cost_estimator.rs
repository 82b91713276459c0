//! Request cost estimation and an exact, idempotent billing ledger.
//!
//! [`RequestCostEstimator`] implements the seed's `RequestCostEstimator` ("3-factor billing
//! computation": prompt, output and KV-cache cost). Where the seed kept money in `f64` (so its
//! lifetime total drifted, became NaN forever after one NaN input, and billed a repeated request
//! twice), this one follows how production metering works: the per-request usage records of
//! LLM APIs (OpenAI's and Anthropic's usage objects bill input, cached input and output tokens
//! at separate per-million-token prices), the byte-time metering of storage billing (a GB-month
//! is integrated over the bytes actually held, not the peak), applied to the KV cache a paged
//! allocator such as vLLM's PagedAttention (Kwon et al., SOSP 2023) grows and frees block by
//! block, and the idempotency keys of payment APIs (a retried request with the same key is
//! answered from the record, never charged twice):
//!
//! - **Money** is [`MicroCredits`], a `u64` count of 10⁻⁶ credits. Every sum is checked: an
//!   overflow is [`Error::Overflow`], never a wrap.
//! - **Prices** ([`Prices`]) are integer micro-credits per million tokens for input, cached
//!   input and output tokens, and integer micro-credits per GiB-hour of KV cache held. A table
//!   gives each model a default and lets a `(model, tenant)` pair override it.
//! - **Rounding**, the one place exactness is given up: each line item (input, cached input,
//!   output, KV) of one request is computed exactly as a rational number and rounded **once**,
//!   to the nearest micro-credit with ties to even. A request's total is the sum of its rounded
//!   line items, and every aggregate is the sum of the rounded line items it covers, so the
//!   ledger is exactly additive: the records of a tenant sum to its aggregate, to the unit.
//! - **KV cost** is integrated over time from caller-reported [`KvSegment`]s: within a segment
//!   the allocation changes linearly from `start_bytes` to `end_bytes` (a step when they are
//!   equal), so the integral is the trapezoid `(start + end) / 2 × duration`, exact in integer
//!   half-byte-nanoseconds ([`KvByteTime`]). Not peak × duration.
//! - **The ledger** is keyed by [`RequestId`]: recording the same request again with identical
//!   usage returns the stored record and bills nothing; with different usage it is
//!   [`Error::LedgerConflict`] and nothing changes.
//! - **Inputs**: token counts and bytes are `u64` and durations are [`Duration`], so a negative
//!   or NaN usage cannot be expressed; the two float entry points
//!   ([`MicroCredits::from_credits_f64`] for price sheets, [`KvSegment::from_secs_f64`] for
//!   telemetry) reject NaN, infinities and negatives with [`Error::InvalidInput`]. Unknown model
//!   and tenant ids are [`Error::UnknownModel`] / [`Error::UnknownTenant`].
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use squish_serving::cost_estimator::{
//!     EstimateRequest, KvSegment, MicroCredits, ModelId, ModelPricing, Prices,
//!     RequestCostEstimator, RequestCostEstimatorConfig, RequestId, TenantId, TokenUsage,
//! };
//!
//! # fn main() -> squish_serving::Result<()> {
//! let model = ModelId(1);
//! let tenant = TenantId(7);
//! let prices = Prices::new(
//!     MicroCredits::from_credits_f64(2.50)?, // input: 2.50 credits per 1M tokens
//!     MicroCredits::from_credits_f64(1.25)?, // cached input
//!     MicroCredits::from_credits_f64(10.0)?, // output
//!     MicroCredits::from_credits_f64(0.05)?, // KV: per GiB-hour
//! );
//! let mut cfg = RequestCostEstimatorConfig::default();
//! cfg.models.push(ModelPricing::new(model, prices));
//! cfg.tenants.push(tenant);
//! let est = RequestCostEstimator::new(cfg)?;
//!
//! // Before the request runs: price the prompt and the worst-case output.
//! let quote = est.estimate(model, tenant, &EstimateRequest::from_prompt(1000, 0, 200)?)?;
//! assert_eq!(quote.input, MicroCredits::new(2_500)); // 1000 × 2.50 / 1M credits
//! assert_eq!(quote.output, MicroCredits::new(2_000));
//!
//! // After it ran: bill what it used, once.
//! let used = TokenUsage { input_tokens: 1000, cached_input_tokens: 0, output_tokens: 150 };
//! let kv = [KvSegment::ramp(Duration::from_secs(3), 0, 1 << 30)]; // 0 → 1 GiB over 3 s
//! let first = est.record_actual(RequestId(1), model, tenant, used, &kv)?;
//! let again = est.record_actual(RequestId(1), model, tenant, used, &kv)?;
//! assert!(!first.duplicate && again.duplicate);
//! assert_eq!(est.tenant_totals(tenant)?.cost.total, first.record.cost.total); // billed once
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

pub use crate::ids::{ModelId, RequestId, TenantId};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use parking_lot::Mutex;
use squish_core::ConfigError;

use crate::{Error, Result};

const COMPONENT: &str = "RequestCostEstimator";

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Money
// ---------------------------------------------------------------------------------------------

/// An amount of money in micro-credits (10⁻⁶ credit), exact.
///
/// All arithmetic is checked; the ledger turns an overflow into [`Error::Overflow`].
/// Displayed in credits with six decimals, e.g. `12.000345 cr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MicroCredits(u64);

impl MicroCredits {
    /// Zero.
    pub const ZERO: Self = Self(0);
    /// The largest representable amount (about 1.8 × 10¹³ credits).
    pub const MAX: Self = Self(u64::MAX);
    /// Micro-credits in one credit.
    pub const PER_CREDIT: u64 = 1_000_000;

    /// `micros` micro-credits.
    pub const fn new(micros: u64) -> Self {
        Self(micros)
    }

    /// The amount in micro-credits.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// Converts a decimal amount of credits (as found in a price sheet), rounded to the nearest
    /// micro-credit with ties to even. A decimal literal with at most six decimals below 10⁹
    /// credits converts exactly (tested against its digits).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `credits` is NaN, infinite, negative, or too large for a
    /// `u64` of micro-credits.
    pub fn from_credits_f64(credits: f64) -> Result<Self> {
        let invalid = |rule: &str| Error::InvalidInput {
            context: "MicroCredits::from_credits_f64",
            reason: format!("credits {rule}, got {credits}"),
        };
        if !credits.is_finite() || credits < 0.0 {
            return Err(invalid("must be finite and >= 0"));
        }
        let micros = (credits * 1e6).round_ties_even();
        // 2^64 is exactly representable; anything at or above it does not fit.
        if micros >= 18_446_744_073_709_551_616.0 {
            return Err(invalid("must be at most 1.8e13"));
        }
        // In range and integral: the conversion is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Self(micros as u64))
    }

    /// The amount in credits, as `f64` (for display and reports only: `f64` cannot hold every
    /// amount exactly above 2⁵³ micro-credits).
    #[allow(clippy::cast_precision_loss)]
    pub fn as_credits_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }

    /// `self + rhs`, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, rhs: Self) -> Option<Self> {
        match self.0.checked_add(rhs.0) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// `self - rhs`, or `None` if `rhs > self`.
    #[must_use]
    pub const fn checked_sub(self, rhs: Self) -> Option<Self> {
        match self.0.checked_sub(rhs.0) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// `self × n`, or `None` on overflow.
    #[must_use]
    pub const fn checked_mul(self, n: u64) -> Option<Self> {
        match self.0.checked_mul(n) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    fn add(self, rhs: Self, context: &'static str) -> Result<Self> {
        match self.checked_add(rhs) {
            Some(v) => Ok(v),
            None => Err(Error::Overflow { context }),
        }
    }
}

impl fmt::Display for MicroCredits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06} cr",
            self.0 / Self::PER_CREDIT,
            self.0 % Self::PER_CREDIT
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Prices and configuration
// ---------------------------------------------------------------------------------------------

/// The rates of one `(model, tenant)` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Prices {
    /// Price of one million uncached prompt tokens.
    pub input_per_mtok: MicroCredits,
    /// Price of one million prompt tokens served from a prefix cache.
    pub cached_input_per_mtok: MicroCredits,
    /// Price of one million generated tokens.
    pub output_per_mtok: MicroCredits,
    /// Price of holding one GiB (2³⁰ bytes) of KV cache for one hour.
    pub kv_per_gib_hour: MicroCredits,
}

impl Prices {
    /// The four rates, in the order input, cached input, output, KV.
    pub const fn new(
        input_per_mtok: MicroCredits,
        cached_input_per_mtok: MicroCredits,
        output_per_mtok: MicroCredits,
        kv_per_gib_hour: MicroCredits,
    ) -> Self {
        Self {
            input_per_mtok,
            cached_input_per_mtok,
            output_per_mtok,
            kv_per_gib_hour,
        }
    }
}

/// A model's default prices and the profile [`RequestCostEstimator::estimate`] uses to predict
/// its KV cache.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelPricing {
    /// The model.
    pub model: ModelId,
    /// Prices for every tenant without an override.
    pub prices: Prices,
    /// KV-cache bytes held per token of context (all layers, keys and values). Default 0 (no
    /// KV term in estimates).
    pub kv_bytes_per_token: u64,
    /// Nominal prefill time per uncached prompt token, for the estimate's KV term.
    pub prefill_time_per_token: Duration,
    /// Nominal decode time per generated token, for the estimate's KV term.
    pub decode_time_per_token: Duration,
}

impl ModelPricing {
    /// A model with `prices` and no KV profile (estimates carry no KV term).
    pub const fn new(model: ModelId, prices: Prices) -> Self {
        Self {
            model,
            prices,
            kv_bytes_per_token: 0,
            prefill_time_per_token: Duration::ZERO,
            decode_time_per_token: Duration::ZERO,
        }
    }

    /// The same model with a KV profile: `kv_bytes_per_token` held per context token, and the
    /// nominal prefill and decode time per token.
    #[must_use]
    pub const fn with_kv_profile(
        mut self,
        kv_bytes_per_token: u64,
        prefill_time_per_token: Duration,
        decode_time_per_token: Duration,
    ) -> Self {
        self.kv_bytes_per_token = kv_bytes_per_token;
        self.prefill_time_per_token = prefill_time_per_token;
        self.decode_time_per_token = decode_time_per_token;
        self
    }
}

/// A tenant's prices for one model, overriding the model's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantPrices {
    /// The model.
    pub model: ModelId,
    /// The tenant.
    pub tenant: TenantId,
    /// The tenant's prices for that model.
    pub prices: Prices,
}

impl TenantPrices {
    /// `tenant` pays `prices` for `model`.
    pub const fn new(model: ModelId, tenant: TenantId, prices: Prices) -> Self {
        Self {
            model,
            tenant,
            prices,
        }
    }
}

/// Configuration of a [`RequestCostEstimator`]: the price table and the ledger's bound.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestCostEstimatorConfig {
    /// Every priced model, with its default prices. Ids must be unique.
    pub models: Vec<ModelPricing>,
    /// Every tenant that may be billed. Ids must be unique. A tenant not listed is
    /// [`Error::UnknownTenant`].
    pub tenants: Vec<TenantId>,
    /// Per-tenant overrides; each names a listed model and a listed tenant, at most one per
    /// pair.
    pub tenant_prices: Vec<TenantPrices>,
    /// Most records the ledger holds (≥ 1); recording beyond it is [`Error::LedgerFull`].
    /// Default 2²⁰.
    pub max_ledger_entries: usize,
}

impl Default for RequestCostEstimatorConfig {
    /// An empty price table (every model is unknown) and a ledger of 2²⁰ records.
    fn default() -> Self {
        Self {
            models: Vec::new(),
            tenants: Vec::new(),
            tenant_prices: Vec::new(),
            max_ledger_entries: 1 << 20,
        }
    }
}

impl RequestCostEstimatorConfig {
    /// Checks every rule of the fields above.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first broken rule: a duplicate model or tenant id, an
    /// override naming an unlisted model or tenant, two overrides for one pair, or
    /// `max_ledger_entries == 0`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut models: Vec<ModelId> = self.models.iter().map(|m| m.model).collect();
        models.sort_unstable();
        if let Some(w) = models.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::new(
                COMPONENT,
                "models",
                "model ids must be unique",
                format!("model {} twice", w[0]),
            ));
        }
        let mut tenants = self.tenants.clone();
        tenants.sort_unstable();
        if let Some(w) = tenants.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::new(
                COMPONENT,
                "tenants",
                "tenant ids must be unique",
                format!("tenant {} twice", w[0]),
            ));
        }
        let mut pairs = Vec::with_capacity(self.tenant_prices.len());
        for o in &self.tenant_prices {
            if models.binary_search(&o.model).is_err() {
                return Err(ConfigError::new(
                    COMPONENT,
                    "tenant_prices",
                    "must name a model listed in models",
                    format!("model {}", o.model),
                ));
            }
            if tenants.binary_search(&o.tenant).is_err() {
                return Err(ConfigError::new(
                    COMPONENT,
                    "tenant_prices",
                    "must name a tenant listed in tenants",
                    format!("tenant {}", o.tenant),
                ));
            }
            pairs.push((o.model, o.tenant));
        }
        pairs.sort_unstable();
        if let Some(w) = pairs.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::new(
                COMPONENT,
                "tenant_prices",
                "at most one override per (model, tenant)",
                format!("model {} tenant {} twice", w[0].0, w[0].1),
            ));
        }
        if self.max_ledger_entries == 0 {
            return Err(ConfigError::new(
                COMPONENT,
                "max_ledger_entries",
                "must be >= 1",
                0,
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------------------------------

/// Token counts of one request. The three counts are disjoint: the prompt is
/// `input_tokens + cached_input_tokens` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TokenUsage {
    /// Prompt tokens that were computed (not served from a prefix cache).
    pub input_tokens: u64,
    /// Prompt tokens served from a prefix cache.
    pub cached_input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
}

impl TokenUsage {
    /// The field-wise sum, or `None` on overflow.
    #[must_use]
    pub const fn checked_add(self, rhs: Self) -> Option<Self> {
        let (Some(i), Some(c), Some(o)) = (
            self.input_tokens.checked_add(rhs.input_tokens),
            self.cached_input_tokens
                .checked_add(rhs.cached_input_tokens),
            self.output_tokens.checked_add(rhs.output_tokens),
        ) else {
            return None;
        };
        Some(Self {
            input_tokens: i,
            cached_input_tokens: c,
            output_tokens: o,
        })
    }
}

/// One interval of KV-cache allocation reported by the caller: over `duration`, the bytes held
/// change **linearly** from `start_bytes` to `end_bytes` (equal for a step interval, where the
/// allocation is constant). Its byte-time is the trapezoid `(start + end) / 2 × duration`.
///
/// A request's KV history is a list of segments; they need not be contiguous in value (a
/// block allocator's jumps are modelled by consecutive segments with different end and start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KvSegment {
    /// How long the segment lasts.
    pub duration: Duration,
    /// Bytes held at the segment's start.
    pub start_bytes: u64,
    /// Bytes held at the segment's end.
    pub end_bytes: u64,
}

impl KvSegment {
    /// `bytes` held constant for `duration`.
    pub const fn step(duration: Duration, bytes: u64) -> Self {
        Self {
            duration,
            start_bytes: bytes,
            end_bytes: bytes,
        }
    }

    /// Bytes changing linearly from `start_bytes` to `end_bytes` over `duration`.
    pub const fn ramp(duration: Duration, start_bytes: u64, end_bytes: u64) -> Self {
        Self {
            duration,
            start_bytes,
            end_bytes,
        }
    }

    /// A segment whose duration is given in (float) seconds, as telemetry often reports it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `secs` is NaN, infinite, negative or too large for a
    /// [`Duration`].
    pub fn from_secs_f64(secs: f64, start_bytes: u64, end_bytes: u64) -> Result<Self> {
        if !secs.is_finite() || secs < 0.0 {
            return Err(Error::InvalidInput {
                context: "KvSegment::from_secs_f64",
                reason: format!("duration must be finite and >= 0, got {secs}"),
            });
        }
        let duration = Duration::try_from_secs_f64(secs).map_err(|_| Error::InvalidInput {
            context: "KvSegment::from_secs_f64",
            reason: format!("duration must fit a Duration, got {secs}"),
        })?;
        Ok(Self::ramp(duration, start_bytes, end_bytes))
    }
}

/// KV-cache byte-time, exact, in half-byte-nanoseconds (the unit in which every trapezoid
/// `(start + end) × duration / 2` is an integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct KvByteTime(u128);

impl KvByteTime {
    /// No KV held.
    pub const ZERO: Self = Self(0);

    /// `half_byte_nanos` half-byte-nanoseconds.
    pub const fn from_half_byte_nanos(half_byte_nanos: u128) -> Self {
        Self(half_byte_nanos)
    }

    /// The byte-time in half-byte-nanoseconds.
    pub const fn half_byte_nanos(self) -> u128 {
        self.0
    }

    /// The exact integral of `segments`.
    ///
    /// # Errors
    /// [`Error::Overflow`] if it exceeds `u128` half-byte-nanoseconds (about 5.4 × 10¹⁸
    /// TB·hours: only absurd inputs reach it).
    pub fn from_segments(segments: &[KvSegment]) -> Result<Self> {
        let overflow = || Error::Overflow {
            context: "KvByteTime::from_segments",
        };
        let mut acc: u128 = 0;
        for s in segments {
            let bytes = u128::from(s.start_bytes) + u128::from(s.end_bytes);
            let term = bytes
                .checked_mul(s.duration.as_nanos())
                .ok_or_else(overflow)?;
            acc = acc.checked_add(term).ok_or_else(overflow)?;
        }
        Ok(Self(acc))
    }

    /// The byte-time in byte-seconds, as `f64` (for reports; rounded).
    #[allow(clippy::cast_precision_loss)]
    pub fn byte_seconds_f64(self) -> f64 {
        self.0 as f64 / 2e9
    }

    fn checked_add(self, rhs: Self) -> Option<Self> {
        self.0.checked_add(rhs.0).map(Self)
    }
}

/// What [`RequestCostEstimator::estimate`] prices before a request runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EstimateRequest {
    /// Prompt tokens that will be computed.
    pub input_tokens: u64,
    /// Prompt tokens expected from a prefix cache.
    pub cached_input_tokens: u64,
    /// The request's generation limit (the estimate is the worst case: every token generated).
    pub max_new_tokens: u64,
}

impl EstimateRequest {
    /// From a prompt of `prompt_tokens`, of which `cached_prefix_tokens` are expected from a
    /// prefix cache, and a limit of `max_new_tokens`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `cached_prefix_tokens > prompt_tokens`.
    pub fn from_prompt(
        prompt_tokens: u64,
        cached_prefix_tokens: u64,
        max_new_tokens: u64,
    ) -> Result<Self> {
        let Some(input_tokens) = prompt_tokens.checked_sub(cached_prefix_tokens) else {
            return Err(Error::InvalidInput {
                context: "EstimateRequest::from_prompt",
                reason: format!(
                    "cached prefix ({cached_prefix_tokens} tokens) longer than the prompt ({prompt_tokens} tokens)"
                ),
            });
        };
        Ok(Self {
            input_tokens,
            cached_input_tokens: cached_prefix_tokens,
            max_new_tokens,
        })
    }
}

/// A price split into its line items. Each line item is rounded once (to the nearest
/// micro-credit, ties to even); `total` is their exact sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CostBreakdown {
    /// Uncached prompt tokens.
    pub input: MicroCredits,
    /// Cached prompt tokens.
    pub cached_input: MicroCredits,
    /// Generated tokens.
    pub output: MicroCredits,
    /// KV-cache byte-time.
    pub kv: MicroCredits,
    /// `input + cached_input + output + kv`.
    pub total: MicroCredits,
}

impl CostBreakdown {
    fn from_items(
        input: MicroCredits,
        cached_input: MicroCredits,
        output: MicroCredits,
        kv: MicroCredits,
    ) -> Result<Self> {
        const CTX: &str = "RequestCostEstimator cost total";
        let total = input
            .add(cached_input, CTX)?
            .add(output, CTX)?
            .add(kv, CTX)?;
        Ok(Self {
            input,
            cached_input,
            output,
            kv,
            total,
        })
    }

    /// The line-item-wise sum, or `None` on overflow.
    #[must_use]
    pub fn checked_add(self, rhs: Self) -> Option<Self> {
        Some(Self {
            input: self.input.checked_add(rhs.input)?,
            cached_input: self.cached_input.checked_add(rhs.cached_input)?,
            output: self.output.checked_add(rhs.output)?,
            kv: self.kv.checked_add(rhs.kv)?,
            total: self.total.checked_add(rhs.total)?,
        })
    }
}

/// One billed request, as the ledger holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BillingRecord {
    /// The request.
    pub request: RequestId,
    /// The model that served it.
    pub model: ModelId,
    /// The tenant billed.
    pub tenant: TenantId,
    /// Its tokens.
    pub tokens: TokenUsage,
    /// Its KV byte-time.
    pub kv: KvByteTime,
    /// What it cost.
    pub cost: CostBreakdown,
}

/// The result of [`RequestCostEstimator::record_actual`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The ledger's record of the request.
    pub record: BillingRecord,
    /// `true` if the request was already recorded (with identical usage): nothing was billed
    /// this time.
    pub duplicate: bool,
}

/// Sums over a set of records (one tenant's, or all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Totals {
    /// Records summed.
    pub requests: u64,
    /// Their tokens.
    pub tokens: TokenUsage,
    /// Their KV byte-time.
    pub kv: KvByteTime,
    /// Their cost, line item by line item: exactly the sum of the records' line items.
    pub cost: CostBreakdown,
}

impl Totals {
    fn plus(&self, r: &BillingRecord) -> Result<Self> {
        let overflow = || Error::Overflow {
            context: "RequestCostEstimator ledger totals",
        };
        Ok(Self {
            requests: self.requests.checked_add(1).ok_or_else(overflow)?,
            tokens: self.tokens.checked_add(r.tokens).ok_or_else(overflow)?,
            kv: self.kv.checked_add(r.kv).ok_or_else(overflow)?,
            cost: self.cost.checked_add(r.cost).ok_or_else(overflow)?,
        })
    }
}

/// Counters of the ledger's activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LedgerStats {
    /// Records held (requests billed).
    pub records: u64,
    /// Repeats with identical usage (answered from the ledger, not billed).
    pub duplicates: u64,
    /// Repeats with different usage (rejected with [`Error::LedgerConflict`]).
    pub conflicts: u64,
}

// ---------------------------------------------------------------------------------------------
// Exact line-item arithmetic
// ---------------------------------------------------------------------------------------------

/// `round(num / den)` to the nearest integer, ties to even. Monotone non-decreasing in `num`.
fn div_round_half_even(num: u128, den: u128) -> u128 {
    let q = num / den;
    let r = num % den;
    // 2r vs den without overflow: r < den, so compare r with den - r.
    let rest = den - r;
    if r > rest || (r == rest && q & 1 == 1) {
        q + 1
    } else {
        q
    }
}

const TOKENS_PER_MTOK: u64 = 1_000_000;

/// `tokens × rate / 10⁶`, rounded once to the nearest micro-credit (ties to even).
fn token_line(tokens: u64, rate: MicroCredits) -> Result<MicroCredits> {
    if let Some(p) = tokens.checked_mul(rate.0) {
        // Fast path: a u64 division by a constant compiles to a multiply and shifts, and the
        // rounded quotient (at most u64::MAX / 10⁶ + 1) cannot overflow.
        let (q, r) = (p / TOKENS_PER_MTOK, p % TOKENS_PER_MTOK);
        let rest = TOKENS_PER_MTOK - r;
        return Ok(MicroCredits(
            q + u64::from(r > rest || (r == rest && q & 1 == 1)),
        ));
    }
    token_line_wide(tokens, rate)
}

/// [`token_line`] for products beyond `u64`.
#[cold]
fn token_line_wide(tokens: u64, rate: MicroCredits) -> Result<MicroCredits> {
    let q = div_round_half_even(
        u128::from(tokens) * u128::from(rate.0),
        u128::from(TOKENS_PER_MTOK),
    );
    u64::try_from(q)
        .map(MicroCredits)
        .map_err(|_| Error::Overflow {
            context: "RequestCostEstimator token line item",
        })
}

/// Nanoseconds in an hour.
const NS_PER_HOUR: u64 = 3_600_000_000_000;
/// Half-byte-nanoseconds in a GiB-hour is `2 × 2³⁰ × NS_PER_HOUR = 2³¹ × NS_PER_HOUR`.
const KV_SHIFT: u32 = 31;
const KV_DEN: u128 = (NS_PER_HOUR as u128) << KV_SHIFT;

/// `kv × rate / (2³¹ × NS_PER_HOUR)` (half-byte-ns × µcr per GiB-hour), rounded once to the
/// nearest micro-credit (ties to even).
fn kv_line(kv: KvByteTime, rate: MicroCredits) -> Result<MicroCredits> {
    let overflow = || Error::Overflow {
        context: "RequestCostEstimator kv line item",
    };
    let num = kv.0.checked_mul(u128::from(rate.0)).ok_or_else(overflow)?;
    let hi = num >> KV_SHIFT;
    let q = match u64::try_from(hi) {
        // Fast path: num = hi·2³¹ + lo, so num / (2³¹·H) = hi / H (floor) with remainder
        // (hi mod H)·2³¹ + lo, and a u64 division by a constant is a multiply and shifts.
        Ok(hi) => {
            let lo = num & ((1u128 << KV_SHIFT) - 1);
            let q = hi / NS_PER_HOUR;
            let r = (u128::from(hi % NS_PER_HOUR) << KV_SHIFT) | lo;
            let rest = KV_DEN - r;
            u128::from(q) + u128::from(r > rest || (r == rest && q & 1 == 1))
        }
        Err(_) => div_round_half_even(num, KV_DEN),
    };
    u64::try_from(q).map(MicroCredits).map_err(|_| overflow())
}

fn price_with(prices: &Prices, tokens: &TokenUsage, kv: KvByteTime) -> Result<CostBreakdown> {
    CostBreakdown::from_items(
        token_line(tokens.input_tokens, prices.input_per_mtok)?,
        token_line(tokens.cached_input_tokens, prices.cached_input_per_mtok)?,
        token_line(tokens.output_tokens, prices.output_per_mtok)?,
        kv_line(kv, prices.kv_per_gib_hour)?,
    )
}

// ---------------------------------------------------------------------------------------------
// Lookup tables
// ---------------------------------------------------------------------------------------------

/// FxHash-style hasher for the small integer ids of the price table (ids come from the
/// operator's configuration, not from untrusted input, so a keyed hash is not needed there).
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A read-only table keyed by a `u32` id: a direct-indexed vector when the ids are compact
/// (the largest is below `4 × len + 64`, as when ids are numbered from 0), else a hash map.
/// The dense form turns a lookup into a bounds check and a load.
#[derive(Debug)]
enum IdTable<V> {
    Dense(Vec<Option<V>>),
    Sparse(IdMap<u32, V>),
}

impl<V> IdTable<V> {
    fn new(entries: Vec<(u32, V)>) -> Self {
        let max = entries.iter().map(|&(id, _)| id as usize).max();
        match max {
            Some(max) if max >= 4 * entries.len() + 64 => {
                Self::Sparse(entries.into_iter().collect())
            }
            _ => {
                let mut dense: Vec<Option<V>> = Vec::new();
                dense.resize_with(max.map_or(0, |m| m + 1), || None);
                for (id, v) in entries {
                    dense[id as usize] = Some(v);
                }
                Self::Dense(dense)
            }
        }
    }

    #[inline]
    fn get(&self, id: u32) -> Option<&V> {
        match self {
            Self::Dense(v) => v.get(id as usize)?.as_ref(),
            Self::Sparse(m) => m.get(&id),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ModelEntry {
    prices: Prices,
    /// `kv_bytes_per_token × prefill ns per token` (`None` if it overflows `u128`: then any
    /// estimate with a prefill overflows).
    kv_prefill: Option<u128>,
    /// `kv_bytes_per_token × decode ns per token`, likewise.
    kv_decode: Option<u128>,
}

#[derive(Debug, Default)]
struct Ledger {
    records: HashMap<RequestId, BillingRecord>,
    tenants: IdMap<TenantId, Totals>,
    all: Totals,
    duplicates: u64,
    conflicts: u64,
}

// ---------------------------------------------------------------------------------------------
// The estimator
// ---------------------------------------------------------------------------------------------

/// Prices requests before they run and bills them, exactly and once, after.
///
/// Implements the seed's `RequestCostEstimator` (see the [module docs](self) for the units,
/// the rounding rule and the KV contract). `Send + Sync`: share it behind an `Arc`; pricing
/// reads an immutable table without locking, and the ledger sits behind one `parking_lot`
/// mutex held only for a hash-map update.
#[derive(Debug)]
pub struct RequestCostEstimator {
    cfg: RequestCostEstimatorConfig,
    models: IdTable<ModelEntry>,
    /// Each known tenant with its overrides (usually none or a few: scanned linearly).
    tenants: IdTable<Box<[(ModelId, Prices)]>>,
    ledger: Mutex<Ledger>,
}

impl RequestCostEstimator {
    /// Builds the price table from `cfg`, with an empty ledger.
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg.validate()` fails.
    pub fn new(cfg: RequestCostEstimatorConfig) -> Result<Self> {
        cfg.validate()?;
        let models = cfg
            .models
            .iter()
            .map(|m| {
                let b = u128::from(m.kv_bytes_per_token);
                let entry = ModelEntry {
                    prices: m.prices,
                    kv_prefill: b.checked_mul(m.prefill_time_per_token.as_nanos()),
                    kv_decode: b.checked_mul(m.decode_time_per_token.as_nanos()),
                };
                (m.model.0, entry)
            })
            .collect();
        let models = IdTable::new(models);
        let mut own: IdMap<TenantId, Vec<(ModelId, Prices)>> = IdMap::default();
        for o in &cfg.tenant_prices {
            own.entry(o.tenant).or_default().push((o.model, o.prices));
        }
        let tenants = cfg
            .tenants
            .iter()
            .map(|&t| (t.0, own.remove(&t).unwrap_or_default().into_boxed_slice()))
            .collect();
        let tenants = IdTable::new(tenants);
        Ok(Self {
            cfg,
            models,
            tenants,
            ledger: Mutex::new(Ledger::default()),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &RequestCostEstimatorConfig {
        &self.cfg
    }

    #[inline]
    fn lookup(
        &self,
        model: ModelId,
        tenant: TenantId,
        context: &'static str,
    ) -> Result<(&ModelEntry, &Prices)> {
        let Some(entry) = self.models.get(model.0) else {
            return Err(Error::UnknownModel {
                context,
                model: model.0,
            });
        };
        let Some(own) = self.tenants.get(tenant.0) else {
            return Err(Error::UnknownTenant {
                context,
                tenant: tenant.0,
            });
        };
        let prices = own
            .iter()
            .find(|(m, _)| *m == model)
            .map_or(&entry.prices, |(_, p)| p);
        Ok((entry, prices))
    }

    /// The prices `tenant` pays for `model`: its override if it has one, else the model's
    /// default.
    ///
    /// # Errors
    /// [`Error::UnknownModel`] / [`Error::UnknownTenant`] for ids not in the configuration.
    pub fn prices(&self, model: ModelId, tenant: TenantId) -> Result<Prices> {
        self.lookup(model, tenant, "RequestCostEstimator::prices")
            .map(|(_, p)| *p)
    }

    /// Prices `tokens` and `kv` byte-time for `tenant` on `model`, without touching the ledger.
    ///
    /// # Errors
    /// [`Error::UnknownModel`] / [`Error::UnknownTenant`]; [`Error::Overflow`] if a line
    /// item or the total exceeds `u64` micro-credits.
    ///
    /// # Performance
    /// Two table lookups (direct-indexed for compact ids, else hashed) and four integer line
    /// items; no allocation, no lock.
    pub fn price(
        &self,
        model: ModelId,
        tenant: TenantId,
        tokens: &TokenUsage,
        kv: KvByteTime,
    ) -> Result<CostBreakdown> {
        let (_, prices) = self.lookup(model, tenant, "RequestCostEstimator::price")?;
        price_with(prices, tokens, kv)
    }

    /// Prices a request before it runs: its prompt, `max_new_tokens` of output (the worst
    /// case) and the KV cache it would hold at the model's nominal speed.
    ///
    /// The KV term follows the model's profile ([`ModelPricing::with_kv_profile`]): the cached
    /// prefix's KV is held from the start; during prefill the KV ramps linearly from
    /// `cached × b` to `prompt × b` over `input_tokens × prefill_time_per_token`; during decode
    /// it ramps from `prompt × b` to `(prompt + max_new) × b` over `max_new ×
    /// decode_time_per_token` (b = `kv_bytes_per_token`). These are the [`KvSegment`]s a
    /// request running at nominal speed would report, so the estimate equals the actual bill
    /// of such a request. The estimate is non-decreasing in every field of `req`.
    ///
    /// # Errors
    /// [`Error::UnknownModel`] / [`Error::UnknownTenant`]; [`Error::Overflow`] for absurd
    /// sizes.
    ///
    /// # Performance
    /// No allocation, no lock: two table lookups and a few integer multiplies (about 270
    /// instructions under callgrind).
    pub fn estimate(
        &self,
        model: ModelId,
        tenant: TenantId,
        req: &EstimateRequest,
    ) -> Result<CostBreakdown> {
        let (entry, prices) = self.lookup(model, tenant, "RequestCostEstimator::estimate")?;
        let tokens = TokenUsage {
            input_tokens: req.input_tokens,
            cached_input_tokens: req.cached_input_tokens,
            output_tokens: req.max_new_tokens,
        };
        let kv = nominal_kv(entry, req)?;
        price_with(prices, &tokens, kv)
    }

    /// Bills a finished request: `tokens` it used and the KV `segments` it held.
    ///
    /// Idempotent by `request`: if the request is already in the ledger with the same model,
    /// tenant, tokens and KV byte-time, the stored record is returned with `duplicate: true`
    /// and nothing is billed. "Same KV" means the same integral: two segment lists with equal
    /// byte-time bill the same and are the same usage.
    ///
    /// # Errors
    /// [`Error::UnknownModel`] / [`Error::UnknownTenant`]; [`Error::LedgerConflict`] if the
    /// request was recorded with different usage; [`Error::LedgerFull`] at
    /// `max_ledger_entries`; [`Error::Overflow`] if a cost or an aggregate overflows. On any
    /// error the ledger is unchanged (except the conflict counter).
    ///
    /// # Performance
    /// Prices outside the lock; holds the ledger mutex for two hash-map updates.
    pub fn record_actual(
        &self,
        request: RequestId,
        model: ModelId,
        tenant: TenantId,
        tokens: TokenUsage,
        segments: &[KvSegment],
    ) -> Result<Recorded> {
        let (_, prices) = self.lookup(model, tenant, "RequestCostEstimator::record_actual")?;
        let kv = KvByteTime::from_segments(segments)?;
        let cost = price_with(prices, &tokens, kv)?;
        let record = BillingRecord {
            request,
            model,
            tenant,
            tokens,
            kv,
            cost,
        };
        let mut guard = self.ledger.lock();
        let ledger = &mut *guard;
        let capacity = self.cfg.max_ledger_entries;
        let full = ledger.records.len() >= capacity;
        match ledger.records.entry(request) {
            Entry::Occupied(e) => {
                let old = *e.get();
                if old.model == model
                    && old.tenant == tenant
                    && old.tokens == tokens
                    && old.kv == kv
                {
                    ledger.duplicates += 1;
                    Ok(Recorded {
                        record: old,
                        duplicate: true,
                    })
                } else {
                    ledger.conflicts += 1;
                    Err(Error::LedgerConflict { request: request.0 })
                }
            }
            Entry::Vacant(v) => {
                if full {
                    return Err(Error::LedgerFull { capacity });
                }
                let tenant_totals = ledger.tenants.get(&tenant).copied().unwrap_or_default();
                let new_tenant = tenant_totals.plus(&record)?;
                let new_all = ledger.all.plus(&record)?;
                v.insert(record);
                ledger.tenants.insert(tenant, new_tenant);
                ledger.all = new_all;
                Ok(Recorded {
                    record,
                    duplicate: false,
                })
            }
        }
    }

    /// The ledger's record of `request`, if billed.
    pub fn record(&self, request: RequestId) -> Option<BillingRecord> {
        self.ledger.lock().records.get(&request).copied()
    }

    /// A snapshot of every record, sorted by request id.
    ///
    /// # Performance
    /// Copies the ledger (allocates); for audits and exports, not hot paths.
    pub fn records(&self) -> Vec<BillingRecord> {
        let mut v: Vec<BillingRecord> = self.ledger.lock().records.values().copied().collect();
        v.sort_unstable_by_key(|r| r.request);
        v
    }

    /// The sums over `tenant`'s records (zero if it has none yet).
    ///
    /// # Errors
    /// [`Error::UnknownTenant`] for a tenant not in the configuration.
    pub fn tenant_totals(&self, tenant: TenantId) -> Result<Totals> {
        if self.tenants.get(tenant.0).is_none() {
            return Err(Error::UnknownTenant {
                context: "RequestCostEstimator::tenant_totals",
                tenant: tenant.0,
            });
        }
        Ok(self
            .ledger
            .lock()
            .tenants
            .get(&tenant)
            .copied()
            .unwrap_or_default())
    }

    /// The sums over every record.
    pub fn totals(&self) -> Totals {
        self.ledger.lock().all
    }

    /// The ledger's counters.
    pub fn stats(&self) -> LedgerStats {
        let l = self.ledger.lock();
        LedgerStats {
            records: l.records.len() as u64,
            duplicates: l.duplicates,
            conflicts: l.conflicts,
        }
    }
}

/// The KV byte-time of a request running at the model's nominal speed (see
/// [`RequestCostEstimator::estimate`]), computed as the two trapezoids directly.
fn nominal_kv(entry: &ModelEntry, req: &EstimateRequest) -> Result<KvByteTime> {
    // In half-byte-ns, with b the bytes per token: prefill (cached·b + prompt·b) × input·t_p,
    // decode (prompt·b + (prompt + new)·b) × new·t_d.
    let (c, i, n) = (
        req.cached_input_tokens,
        req.input_tokens,
        req.max_new_tokens,
    );
    // Fast path: token products and per-token factors fit u64, so each term is one widening
    // multiply that cannot overflow, and their sum fits u128.
    let fast = || -> Option<u128> {
        let prompt = c.checked_add(i)?;
        let pre = c.checked_add(prompt)?.checked_mul(i)?;
        let dec = prompt.checked_mul(2)?.checked_add(n)?.checked_mul(n)?;
        let fp = u64::try_from(entry.kv_prefill?).ok()?;
        let fd = u64::try_from(entry.kv_decode?).ok()?;
        Some(u128::from(pre) * u128::from(fp) + u128::from(dec) * u128::from(fd))
    };
    if let Some(kv) = fast() {
        return Ok(KvByteTime(kv));
    }
    nominal_kv_wide(entry, c, i, n)
}

/// [`nominal_kv`] in full `u128` checked arithmetic.
#[cold]
fn nominal_kv_wide(entry: &ModelEntry, c: u64, i: u64, n: u64) -> Result<KvByteTime> {
    let overflow = || Error::Overflow {
        context: "RequestCostEstimator::estimate kv",
    };
    // Sums of three u64s cannot overflow u128.
    let term = |bytes_tokens: u128, tokens: u64, factor: Option<u128>| -> Result<u128> {
        if tokens == 0 || factor == Some(0) {
            return Ok(0);
        }
        bytes_tokens
            .checked_mul(u128::from(tokens))
            .and_then(|x| x.checked_mul(factor?))
            .ok_or_else(overflow)
    };
    let cached = u128::from(c);
    let prompt = cached + u128::from(i);
    let prefill = term(cached + prompt, i, entry.kv_prefill)?;
    let decode = term(2 * prompt + u128::from(n), n, entry.kv_decode)?;
    prefill
        .checked_add(decode)
        .map(KvByteTime)
        .ok_or_else(overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prices(i: u64, c: u64, o: u64, kv: u64) -> Prices {
        Prices::new(
            MicroCredits::new(i),
            MicroCredits::new(c),
            MicroCredits::new(o),
            MicroCredits::new(kv),
        )
    }

    fn estimator() -> RequestCostEstimator {
        let mut cfg = RequestCostEstimatorConfig {
            models: vec![
                ModelPricing::new(ModelId(1), prices(2_500_000, 1_250_000, 10_000_000, 50_000))
                    .with_kv_profile(
                        36_864,
                        Duration::from_micros(200),
                        Duration::from_millis(20),
                    ),
            ],
            tenants: vec![TenantId(1), TenantId(2)],
            ..Default::default()
        };
        cfg.tenant_prices.push(TenantPrices::new(
            ModelId(1),
            TenantId(2),
            prices(1_000_000, 0, 4_000_000, 0),
        ));
        RequestCostEstimator::new(cfg).unwrap()
    }

    #[test]
    fn rounding_is_half_even_and_matches_the_u128_path() {
        assert_eq!(div_round_half_even(5, 10), 0);
        assert_eq!(div_round_half_even(15, 10), 2);
        assert_eq!(div_round_half_even(25, 10), 2);
        assert_eq!(div_round_half_even(26, 10), 3);
        assert_eq!(div_round_half_even(24, 10), 2);
        // 500_000 tokens at 1 µcr/Mtok = 0.5 µcr → 0 (even); 1.5 → 2.
        assert_eq!(token_line(500_000, MicroCredits(1)).unwrap().0, 0);
        assert_eq!(token_line(1_500_000, MicroCredits(1)).unwrap().0, 2);
        let mut rng = squish_testkit::rng(11);
        use rand::RngExt;
        for _ in 0..20_000 {
            let t: u64 = rng.random::<u64>() >> rng.random_range(0..64);
            let r: u64 = rng.random::<u64>() >> rng.random_range(0..64);
            let exact = div_round_half_even(u128::from(t) * u128::from(r), 1_000_000);
            match token_line(t, MicroCredits(r)) {
                Ok(v) => assert_eq!(u128::from(v.0), exact),
                Err(_) => assert!(exact > u128::from(u64::MAX)),
            }
            let kv: u128 = rng.random::<u128>() >> rng.random_range(0..128);
            let rate: u64 = rng.random::<u64>() >> rng.random_range(0..64);
            let num = kv.checked_mul(u128::from(rate));
            match (num, kv_line(KvByteTime(kv), MicroCredits(rate))) {
                (Some(n), Ok(v)) => assert_eq!(u128::from(v.0), div_round_half_even(n, KV_DEN)),
                (Some(n), Err(_)) => assert!(div_round_half_even(n, KV_DEN) > u128::from(u64::MAX)),
                (None, r) => assert!(r.is_err()),
            }
        }
    }

    #[test]
    fn nominal_kv_fast_path_matches_the_wide_path() {
        use rand::RngExt;
        let mut rng = squish_testkit::rng(12);
        for _ in 0..20_000 {
            let mut draw = |max_shift: u32| rng.random::<u64>() >> rng.random_range(max_shift..64);
            let entry = ModelEntry {
                prices: Prices::default(),
                kv_prefill: Some(u128::from(draw(0)) * u128::from(draw(20))),
                kv_decode: Some(u128::from(draw(0))),
            };
            let req = EstimateRequest {
                input_tokens: draw(0),
                cached_input_tokens: draw(0),
                max_new_tokens: draw(0),
            };
            let wide = nominal_kv_wide(
                &entry,
                req.cached_input_tokens,
                req.input_tokens,
                req.max_new_tokens,
            );
            assert_eq!(nominal_kv(&entry, &req), wide, "{req:?} {entry:?}");
        }
    }

    #[test]
    fn kv_fast_path_rounds_ties_to_even() {
        // Exactly half a micro-credit: 1 GiB·hour at rate 1 is 1 µcr; half of it is a tie.
        let half = KvByteTime(KV_DEN / 2);
        assert_eq!(kv_line(half, MicroCredits(1)).unwrap().0, 0);
        assert_eq!(
            kv_line(KvByteTime(KV_DEN * 3 / 2), MicroCredits(1))
                .unwrap()
                .0,
            2
        );
        assert_eq!(
            kv_line(KvByteTime(KV_DEN / 2 + 1), MicroCredits(1))
                .unwrap()
                .0,
            1
        );
    }

    #[test]
    fn id_tables_dense_and_sparse_agree() {
        use rand::RngExt;
        let mut rng = squish_testkit::rng(14);
        for case in 0..200 {
            let n = rng.random_range(0..50usize);
            let spread: u32 = if case % 2 == 0 { 100 } else { u32::MAX };
            let mut ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..spread)).collect();
            ids.sort_unstable();
            ids.dedup();
            let t = IdTable::new(ids.iter().map(|&i| (i, u64::from(i) * 3)).collect());
            let compact = ids
                .last()
                .is_none_or(|&m| (m as usize) < 4 * ids.len() + 64);
            assert_eq!(matches!(t, IdTable::Dense(_)), compact);
            for probe in ids
                .iter()
                .copied()
                .chain((0..50).map(|_| rng.random_range(0..spread)))
            {
                let want = ids.binary_search(&probe).ok().map(|_| u64::from(probe) * 3);
                assert_eq!(t.get(probe).copied(), want);
            }
            assert_eq!(t.get(u32::MAX).is_some(), ids.last() == Some(&u32::MAX));
        }
    }

    #[test]
    fn overrides_apply_per_tenant() {
        let e = estimator();
        assert_eq!(
            e.prices(ModelId(1), TenantId(1)).unwrap().input_per_mtok.0,
            2_500_000
        );
        assert_eq!(
            e.prices(ModelId(1), TenantId(2)).unwrap().input_per_mtok.0,
            1_000_000
        );
    }

    #[test]
    fn estimator_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RequestCostEstimator>();
    }

    #[test]
    fn decimal_prices_convert_exactly() {
        // Oracle: a price sheet's decimal with at most 6 decimals is that many micro-credits
        // exactly (up to 10⁹ credits, far beyond any per-token or per-GiB-hour price).
        use rand::RngExt;
        let mut rng = squish_testkit::rng(13);
        for _ in 0..50_000 {
            let micros: u64 = rng.random_range(0..1_000_000_000_000_000);
            let text = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
            let credits: f64 = text.parse().unwrap();
            assert_eq!(
                MicroCredits::from_credits_f64(credits).unwrap().0,
                micros,
                "{text}"
            );
            assert_eq!(MicroCredits(micros).to_string(), format!("{text} cr"));
        }
    }

    #[test]
    fn money_display_and_float_conversion() {
        assert_eq!(MicroCredits::new(12_000_345).to_string(), "12.000345 cr");
        assert_eq!(MicroCredits::from_credits_f64(2.5).unwrap().0, 2_500_000);
        assert_eq!(MicroCredits::from_credits_f64(0.000_000_5).unwrap().0, 0);
        assert_eq!(MicroCredits::from_credits_f64(0.000_001_5).unwrap().0, 2);
        for bad in [f64::NAN, f64::INFINITY, -1.0, 1e14] {
            let e = MicroCredits::from_credits_f64(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidInput { .. }), "{bad}: {e}");
        }
        insta::assert_snapshot!(
            MicroCredits::from_credits_f64(-0.5).unwrap_err(),
            @"invalid input to MicroCredits::from_credits_f64: credits must be finite and >= 0, got -0.5"
        );
    }
}
