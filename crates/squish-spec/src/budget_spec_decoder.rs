//! Budget-aware draft length for speculative decoding.
//!
//! Implements the seed's `BudgetSpecDecoder` ("ramp-down draft length", claimed 0 token
//! overshoot), made correct by construction and extended with an acceptance-aware policy.
//!
//! # The guarantee
//! A speculative round with `L` draft tokens emits between 1 and `L + 1` tokens: the accepted
//! drafts plus one correction (after a rejection) or bonus (after full acceptance) token, as in
//! the lossless speculative sampling of Leviathan et al. ("Fast Inference from Transformers via
//! Speculative Decoding", ICML 2023) and Chen et al. ("Accelerating Large Language Model
//! Decoding with Speculative Sampling", 2023). [`BudgetSpecDecoder::effective_draft_len`] is
//! therefore always clamped to `remaining − 1`, and is 0 (plain decoding) when one token
//! remains. No sequence of verification outcomes can then overshoot the budget, and a run that
//! continues until [`BudgetSpecDecoder::is_exhausted`] emits exactly `budget` tokens.
//!
//! # Policies
//! - [`DraftLenPolicy::RampDown`], the seed's: the full `n_draft` until `ramp_down_at × budget`
//!   tokens have been emitted, then linearly down to 0 at the budget,
//!   `L = round_ties_even(n_draft × remaining / (budget − ramp_down_at × budget))` (computed in
//!   `f64` exactly as written), floored at 1 while at least two tokens remain (rounding would
//!   otherwise fall back to plain decoding with budget left, which the clamp already makes
//!   unnecessary), then clamped to `remaining − 1`. So `L = 0` exactly when at most one token
//!   remains, and `L` never increases once the ramp has started.
//! - [`DraftLenPolicy::AcceptanceAware`]: keeps an online estimate `α` of the per-token
//!   acceptance probability and picks the `L` in `0..=n_draft` (and `≤ remaining − 1`) that
//!   maximises expected tokens per unit cost, `E(L) / (L·c + 1)`, where
//!   `E(L) = (1 − α^(L+1)) / (1 − α) = 1 + α + … + α^L` is the expected number of tokens a round
//!   emits under i.i.d. acceptance and `c` is the cost of one draft step relative to one
//!   target step: the objective is Leviathan et al.'s expected walltime improvement factor
//!   `(1 − α^(γ+1)) / ((1 − α)(γc + 1))` (§3), maximised over `γ = L` each round. `E` is summed rather than divided, so
//!   `α = 1` needs no special case (`E = L + 1`). `E` never needs capping at what remains:
//!   `E(L) ≤ L + 1 ≤ remaining` under the clamp. Ties go to the shorter draft.
//!
//! # The acceptance estimator
//! A round that drafted `L ≥ 1` tokens and emitted `n` tokens accepted `a = n − 1` drafts. Under
//! the i.i.d. model the drafts after the first rejection were never tested, so the round holds
//! `a` successes in `a + [a < L]` Bernoulli trials (the naive `a / L` is biased low). The
//! decoder keeps exponentially discounted counts of the observations on top of a fixed Beta
//! prior of `prior_weight` pseudo-trials with mean `prior_alpha`:
//!
//! ```text
//! S ← decay·S + a,   T ← decay·T + a + [a < L],   α = (prior_alpha·prior_weight + S) / (prior_weight + T),   S₀ = T₀ = 0
//! ```
//!
//! With `decay = 1` this is exactly the Beta posterior mean. With `decay < 1` observations
//! fade with a memory of about `1 / (1 − decay)` rounds, every round, including rounds with
//! `L = 0` (which observe nothing), while the prior does not fade. That is what keeps the
//! policy from locking itself out: once it stops drafting (a low estimate makes `L = 0`
//! optimal), no evidence would ever arrive to raise the estimate again; instead the estimate
//! drifts back towards the prior until drafting is worth a probe. Both policies keep an
//! estimate ([`BudgetSpecDecoder::acceptance_estimate`]); only the acceptance-aware one acts
//! on it.
//!
//! # Wiring it with a verifier
//! The decoder is a small state machine that never calls a model, so it composes with any
//! lossless verifier that honours one contract: *a round that drafts `L` tokens along a path
//! emits between 1 and `L + 1` tokens* (the accepted prefix plus exactly one correction or bonus
//! token). Both verifiers of this crate (`TreeVerifier`, `QuantSpecDecoder`) are specified that
//! way. One decoder per request; per round:
//!
//! 1. `let l = dec.effective_draft_len();` Pure, so asking twice is free and gives the same
//!    answer; the state only changes in `step`.
//! 2. If `l > 0`, draft **exactly** `l` tokens and verify them:
//!    - a chain verifier (`QuantSpecDecoder`, or `TreeVerifier` with one child per node): run
//!      the draft model `l` steps, then one target pass over the `l` drafts;
//!    - a tree verifier: use `l` as the tree's **depth** (its longest root-to-leaf path).
//!      Whatever the branching, the accepted path has at most `l` nodes and the round emits at
//!      most `l + 1` tokens, so the budget guarantee is unchanged; the acceptance estimate then
//!      measures acceptance per tree level rather than per chain token.
//!
//!    If `l == 0`, run one plain target step (it emits one token).
//! 3. Count the tokens the round emitted **including** the correction/bonus token:
//!    `n = accepted + 1`, where `accepted` excludes that token (as this crate's verifiers
//!    report it).
//! 4. `dec.step(n)?`, append the `n` tokens, and loop until
//!    [`BudgetSpecDecoder::is_exhausted`]. An end-of-sequence token simply ends the request
//!    early; a caller that truncates a round there may pass the truncated count (still `≥ 1`),
//!    at the price of the estimator seeing one rejection that did not happen.
//!
//! `step` refuses counts outside `1..=l + 1` with [`Error::EmittedCount`] (a verifier that
//! breaks the contract, or a caller that drafted a different length), and any count once the
//! budget is exhausted with [`Error::OverBudget`]; a refused call leaves the state unchanged,
//! so the caller can report the bug without corrupting the request's accounting. For the
//! acceptance-aware policy, set `cost_ratio` to the measured cost of one draft step over one
//! target step (including the verifier's own overhead per drafted token, if it is material).
//!
//! # Example
//! ```
//! use squish_spec::{BudgetSpecDecoder, BudgetSpecDecoderConfig, DraftLenPolicy};
//!
//! // budget 20 tokens, at most 5 drafts, ramp down after half the budget
//! let mut cfg = BudgetSpecDecoderConfig::new(20, 5);
//! cfg.policy = DraftLenPolicy::RampDown { ramp_down_at: 0.5 };
//! let mut dec = BudgetSpecDecoder::new(cfg)?;
//! let mut lens = Vec::new();
//! while !dec.is_exhausted() {
//!     let l = dec.effective_draft_len();
//!     lens.push(l);
//!     // Pretend the verifier accepted every draft: l accepted + 1 bonus token.
//!     dec.step(l + 1)?;
//! }
//! assert_eq!(lens, [5, 5, 4, 2]); // 6 + 6 + 5 + 3 = 20 tokens
//! assert_eq!(dec.emitted(), 20);
//! assert!(dec.step(1).is_err()); // nothing may be emitted past the budget
//! # Ok::<(), squish_spec::Error>(())
//! ```

use squish_core::ConfigError;

use crate::{Error, Result};

/// The component name used in configuration errors.
const COMPONENT: &str = "BudgetSpecDecoder";

/// The largest accepted `budget`: counts stay exactly representable in `f64`.
pub const MAX_BUDGET: usize = 1 << 40;

/// The largest accepted `n_draft`.
pub const MAX_DRAFT: usize = 256;

/// How [`BudgetSpecDecoder`] chooses the draft length before the budget clamp.
#[derive(Debug, Clone, PartialEq)]
pub enum DraftLenPolicy {
    /// The seed's ramp-down: the full `n_draft` until `ramp_down_at × budget` tokens have been
    /// emitted, then linearly down to 0 at the budget (rounding ties to even, floored at 1
    /// while two or more tokens remain).
    RampDown {
        /// Fraction of the budget after which the ramp starts, in `[0, 1]` (1 = never ramp,
        /// only the budget clamp applies).
        ramp_down_at: f64,
    },
    /// Maximise expected tokens per unit cost under an online acceptance estimate.
    AcceptanceAware(AcceptanceAwarePolicy),
}

impl Default for DraftLenPolicy {
    /// The seed's ramp-down, starting at 80 % of the budget (our choice: the seed does not
    /// publish its default).
    fn default() -> Self {
        Self::RampDown { ramp_down_at: 0.8 }
    }
}

/// Parameters of [`DraftLenPolicy::AcceptanceAware`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AcceptanceAwarePolicy {
    /// Cost of one draft-model step relative to one target (verification) step, `c ≥ 0`,
    /// finite. A round with `L` drafts costs `L·c + 1`.
    pub cost_ratio: f64,
    /// Prior mean of the per-token acceptance probability, in `[0, 1]`.
    pub prior_alpha: f64,
    /// Weight of the prior in pseudo-trials, finite and `> 0`.
    pub prior_weight: f64,
    /// Per-round discount of past observations, in `(0, 1]` (1 = exact Beta posterior mean,
    /// no forgetting).
    pub decay: f64,
}

impl AcceptanceAwarePolicy {
    /// A policy with the given draft-to-target cost ratio and the default estimator
    /// (prior α = 0.7 with weight 4 pseudo-trials, decay 0.95, i.e. a memory of ~20 rounds).
    pub fn new(cost_ratio: f64) -> Self {
        Self {
            cost_ratio,
            ..Self::default()
        }
    }
}

impl Default for AcceptanceAwarePolicy {
    /// Cost ratio 0.1, prior α = 0.7 with weight 4, decay 0.95.
    fn default() -> Self {
        Self {
            cost_ratio: 0.1,
            prior_alpha: 0.7,
            prior_weight: 4.0,
            decay: 0.95,
        }
    }
}

/// Configuration of [`BudgetSpecDecoder`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BudgetSpecDecoderConfig {
    /// Tokens the request may emit in total, in `1..=MAX_BUDGET`.
    pub budget: usize,
    /// Largest draft length, in `1..=MAX_DRAFT`.
    pub n_draft: usize,
    /// How the draft length is chosen before the budget clamp.
    pub policy: DraftLenPolicy,
}

impl Default for BudgetSpecDecoderConfig {
    /// Budget 512 (the seed's benchmark), `n_draft` 4, ramp-down from 80 % of the budget.
    fn default() -> Self {
        Self {
            budget: 512,
            n_draft: 4,
            policy: DraftLenPolicy::default(),
        }
    }
}

impl BudgetSpecDecoderConfig {
    /// A configuration with the given budget and maximum draft length and the default
    /// ramp-down policy.
    pub fn new(budget: usize, n_draft: usize) -> Self {
        Self {
            budget,
            n_draft,
            ..Self::default()
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field out of its documented range (NaN and infinities
    /// included).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_BUDGET).contains(&self.budget) {
            return Err(ConfigError::new(
                COMPONENT,
                "budget",
                format!("must be in [1, {MAX_BUDGET}]"),
                self.budget,
            ));
        }
        if !(1..=MAX_DRAFT).contains(&self.n_draft) {
            return Err(ConfigError::new(
                COMPONENT,
                "n_draft",
                format!("must be in [1, {MAX_DRAFT}]"),
                self.n_draft,
            ));
        }
        match &self.policy {
            DraftLenPolicy::RampDown { ramp_down_at } => {
                if !(0.0..=1.0).contains(ramp_down_at) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "ramp_down_at",
                        "must be in [0, 1]",
                        ramp_down_at,
                    ));
                }
            }
            DraftLenPolicy::AcceptanceAware(p) => {
                if !(p.cost_ratio.is_finite() && p.cost_ratio >= 0.0) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "cost_ratio",
                        "must be finite and >= 0",
                        p.cost_ratio,
                    ));
                }
                if !(0.0..=1.0).contains(&p.prior_alpha) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "prior_alpha",
                        "must be in [0, 1]",
                        p.prior_alpha,
                    ));
                }
                if !(p.prior_weight.is_finite() && p.prior_weight > 0.0) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "prior_weight",
                        "must be finite and > 0",
                        p.prior_weight,
                    ));
                }
                if !(p.decay > 0.0 && p.decay <= 1.0) {
                    return Err(ConfigError::new(
                        COMPONENT,
                        "decay",
                        "must be in (0, 1]",
                        p.decay,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Counters of a [`BudgetSpecDecoder`] run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetSpecStats {
    /// Rounds completed ([`BudgetSpecDecoder::step`] calls that succeeded).
    pub rounds: u64,
    /// Draft tokens proposed over all rounds (the sum of the rounds' draft lengths).
    pub drafted: u64,
    /// Draft tokens accepted (emitted tokens minus one correction/bonus token per round with
    /// `L ≥ 1`).
    pub accepted: u64,
    /// Rounds with `L ≥ 1` that did not accept every draft (they ended with a correction
    /// token).
    pub rejected: u64,
}

impl BudgetSpecStats {
    /// Accepted / drafted (0 when nothing was drafted). This is the fraction of all proposed
    /// drafts that were accepted, not the per-token acceptance probability α (see
    /// [`BudgetSpecDecoder::acceptance_estimate`]).
    pub fn acceptance_rate(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
}

/// The policy with its constants precomputed.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Ramp-down: the ramp starts once `emitted ≥ start` (`start = ⌈ramp_down_at × budget⌉`,
    /// an integer, so the test is exact); `span = budget − ramp_down_at × budget` in `f64`.
    RampDown {
        start: usize,
        span: f64,
        /// `n_draft` as `f64`.
        n_draft: f64,
    },
    /// Acceptance-aware: the estimator's discounted counts and the unconstrained best draft
    /// length for the current estimate.
    AcceptanceAware {
        cost_ratio: f64,
        decay: f64,
        /// `prior_alpha · prior_weight`.
        prior_successes: f64,
        /// `prior_weight`, `> 0`.
        prior_trials: f64,
        /// Discounted accepted drafts.
        successes: f64,
        /// Discounted tested drafts.
        trials: f64,
        best: usize,
    },
}

/// Chooses how many tokens to draft in each speculative round so that a request never emits
/// more than its token budget, and reaches it exactly.
///
/// Implements the seed's `BudgetSpecDecoder`. See the [module docs](crate::budget_spec_decoder) for the policies,
/// the acceptance estimator and how to wire it with a verifier.
///
/// # Performance
/// [`effective_draft_len`](Self::effective_draft_len) is a handful of arithmetic operations
/// (one `f64` division on the ramp); [`step`](Self::step) adds the estimator update and, for
/// the acceptance-aware policy, an early-exit scan over at most `n_draft + 1` lengths. Nothing
/// allocates after [`new`](Self::new).
#[derive(Debug, Clone)]
pub struct BudgetSpecDecoder {
    cfg: BudgetSpecDecoderConfig,
    plan: Plan,
    emitted: usize,
    last_draft_len: usize,
    stats: BudgetSpecStats,
}

impl BudgetSpecDecoder {
    /// Builds a decoder for one request with nothing emitted yet.
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg` fails [`BudgetSpecDecoderConfig::validate`].
    pub fn new(cfg: BudgetSpecDecoderConfig) -> Result<Self> {
        cfg.validate()?;
        let budget = cfg.budget as f64;
        let plan = match &cfg.policy {
            DraftLenPolicy::RampDown { ramp_down_at } => {
                let start = ramp_down_at * budget;
                Plan::RampDown {
                    // An integer `emitted` is < start iff it is < ⌈start⌉ (start ≤ 2^40).
                    start: start.ceil() as usize,
                    span: budget - start,
                    n_draft: cfg.n_draft as f64,
                }
            }
            DraftLenPolicy::AcceptanceAware(p) => Plan::AcceptanceAware {
                cost_ratio: p.cost_ratio,
                decay: p.decay,
                prior_successes: p.prior_alpha * p.prior_weight,
                prior_trials: p.prior_weight,
                successes: 0.0,
                trials: 0.0,
                best: best_draft_len(p.prior_alpha, p.cost_ratio, cfg.n_draft),
            },
        };
        Ok(Self {
            cfg,
            plan,
            emitted: 0,
            last_draft_len: 0,
            stats: BudgetSpecStats::default(),
        })
    }

    /// The configuration this decoder was built with.
    pub fn config(&self) -> &BudgetSpecDecoderConfig {
        &self.cfg
    }

    /// The token budget.
    pub fn budget(&self) -> usize {
        self.cfg.budget
    }

    /// Tokens emitted so far.
    pub fn emitted(&self) -> usize {
        self.emitted
    }

    /// Tokens that may still be emitted, `budget − emitted`.
    pub fn remaining(&self) -> usize {
        self.cfg.budget - self.emitted
    }

    /// Whether the budget has been reached (nothing more may be emitted).
    pub fn is_exhausted(&self) -> bool {
        self.emitted == self.cfg.budget
    }

    /// The draft length of the last completed round (0 before the first).
    pub fn last_draft_len(&self) -> usize {
        self.last_draft_len
    }

    /// The current estimate of the per-token acceptance probability α, in `[0, 1]` (see the
    /// [module docs](crate::budget_spec_decoder#the-acceptance-estimator)). Under the
    /// ramp-down policy, which does not act on it, it is the undiscounted estimate with a prior
    /// of 0.5 and weight 1, `(0.5 + accepted) / (1 + accepted + rejected)` from
    /// [`stats`](Self::stats), computed on demand.
    pub fn acceptance_estimate(&self) -> f64 {
        match self.plan {
            Plan::RampDown { .. } => {
                let st = &self.stats;
                (0.5 + st.accepted as f64) / (1.0 + (st.accepted + st.rejected) as f64)
            }
            Plan::AcceptanceAware {
                prior_successes,
                prior_trials,
                successes,
                trials,
                ..
            } => (prior_successes + successes) / (prior_trials + trials),
        }
    }

    /// Counters of the rounds so far.
    pub fn stats(&self) -> BudgetSpecStats {
        self.stats
    }

    /// How many tokens to draft in the next round.
    ///
    /// Pure: a function of the state only (budget, emitted count, acceptance estimate). Always
    /// `≤ n_draft` and `≤ remaining − 1`; 0 when at most one token remains, so that the round's
    /// at most `L + 1` emitted tokens fit the budget.
    ///
    /// # Performance
    /// A few nanoseconds: one compare before the ramp, one `f64` division on it; the
    /// acceptance-aware optimum is precomputed by [`step`](Self::step).
    #[inline]
    pub fn effective_draft_len(&self) -> usize {
        let remaining = self.cfg.budget - self.emitted;
        if remaining <= 1 {
            return 0;
        }
        let len = match self.plan {
            Plan::RampDown {
                start,
                span,
                n_draft,
            } => {
                if self.emitted < start {
                    self.cfg.n_draft
                } else {
                    // emitted ≥ start and emitted < budget, so span > 0 and x ≤ n_draft. The
                    // `i64` casts are exact (remaining ≤ 2^40, x ≤ 256) and one instruction each.
                    let x = n_draft * (remaining as i64 as f64) / span;
                    (round_ties_even_small(x) as i64 as usize).max(1)
                }
            }
            Plan::AcceptanceAware { best, .. } => best,
        };
        len.min(self.cfg.n_draft).min(remaining - 1)
    }

    /// Records a completed round that emitted `n_emitted` tokens (accepted drafts plus the
    /// correction or bonus token) after drafting [`effective_draft_len`](Self::effective_draft_len)
    /// tokens, and updates the acceptance estimate.
    ///
    /// # Errors
    /// - [`Error::EmittedCount`] if `n_emitted` is 0 or more than the round's draft length + 1
    ///   (a round emits at least its correction/bonus token and at most every draft plus one).
    /// - [`Error::OverBudget`] if `n_emitted` exceeds the remaining budget (only possible once
    ///   the budget is exhausted, since the draft length is clamped to `remaining − 1`).
    ///
    /// On error the state is unchanged.
    #[inline]
    pub fn step(&mut self, n_emitted: usize) -> Result<()> {
        let draft_len = self.effective_draft_len();
        let remaining = self.cfg.budget - self.emitted;
        // 1 ≤ n ≤ L + 1 in one unsigned comparison (n = 0 wraps to usize::MAX).
        if n_emitted.wrapping_sub(1) > draft_len || n_emitted > remaining {
            return Err(step_error(n_emitted, draft_len, remaining));
        }
        self.emitted += n_emitted;
        self.last_draft_len = draft_len;
        // With L = 0 the round emitted exactly 1 token: these all add 0 except `rounds`.
        let accepted = n_emitted - 1;
        let rejected = usize::from(accepted < draft_len);
        self.stats.rounds += 1;
        self.stats.drafted += draft_len as u64;
        self.stats.accepted += accepted as u64;
        self.stats.rejected += rejected as u64;
        if let Plan::AcceptanceAware { .. } = self.plan {
            self.observe(accepted, accepted + rejected);
        }
        Ok(())
    }

    /// The acceptance-aware policy's estimator update and re-optimisation (out of line, so the
    /// ramp-down step stays small).
    #[inline(never)]
    fn observe(&mut self, accepted: usize, tested: usize) {
        if let Plan::AcceptanceAware {
            cost_ratio,
            decay,
            prior_successes,
            prior_trials,
            successes,
            trials,
            best,
        } = &mut self.plan
        {
            *successes = *decay * *successes + accepted as f64;
            *trials = *decay * *trials + tested as f64;
            let alpha = (*prior_successes + *successes) / (*prior_trials + *trials);
            *best = best_draft_len(alpha, *cost_ratio, self.cfg.n_draft);
        }
    }
}

/// The error of a refused [`BudgetSpecDecoder::step`], kept out of the hot path.
#[cold]
#[inline(never)]
fn step_error(n_emitted: usize, draft_len: usize, remaining: usize) -> Error {
    if n_emitted == 0 || n_emitted > draft_len + 1 {
        Error::EmittedCount {
            n_emitted,
            draft_len,
        }
    } else {
        Error::OverBudget {
            n_emitted,
            remaining,
        }
    }
}

/// Rounds `0 ≤ x < 2^52` to the nearest integer, ties to even: adding 2^52 leaves no fraction
/// bits, so the (default, round-to-nearest-even) addition does the rounding. Equals
/// `f64::round_ties_even` on that range (tested) without the libm call that `roundeven`
/// becomes on baseline x86-64.
#[inline]
fn round_ties_even_small(x: f64) -> f64 {
    const TWO_52: f64 = 4_503_599_627_370_496.0;
    (x + TWO_52) - TWO_52
}

/// The smallest `L` in `0..=n_draft` maximising `E(L) / (L·c + 1)` with
/// `E(L) = 1 + α + … + α^L`.
///
/// The sign of `f(L) − f(L−1)` is the sign of `g(L) = α^L (1 + (L−1)c) − c·E(L−1)`, and
/// `g(L+1) − g(L) = α^L (α − 1)(1 + Lc) ≤ 0`: once `f` stops increasing it never increases
/// again, so the scan stops at the first non-improvement. For the same reason the best length
/// under a cap `m` is `min(best, m)` (f increases strictly up to `best`).
fn best_draft_len(alpha: f64, cost_ratio: f64, n_draft: usize) -> usize {
    let (mut best, mut best_e, mut best_d) = (0, 1.0, 1.0);
    let (mut e, mut pow) = (1.0, 1.0);
    for len in 1..=n_draft {
        pow *= alpha;
        e += pow;
        let d = len as f64 * cost_ratio + 1.0;
        // e / d > best_e / best_d, without dividing (both denominators are ≥ 1).
        if e * best_d > best_e * d {
            (best, best_e, best_d) = (len, e, d);
        } else {
            break;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(budget: usize, n_draft: usize, ramp_down_at: f64) -> BudgetSpecDecoder {
        let cfg = BudgetSpecDecoderConfig {
            budget,
            n_draft,
            policy: DraftLenPolicy::RampDown { ramp_down_at },
        };
        BudgetSpecDecoder::new(cfg).unwrap()
    }

    /// The draft length at every emitted count, stepping one token at a time.
    fn schedule(mut d: BudgetSpecDecoder) -> Vec<usize> {
        let mut out = Vec::new();
        while !d.is_exhausted() {
            out.push(d.effective_draft_len());
            d.step(1).unwrap();
        }
        out.push(d.effective_draft_len());
        out
    }

    #[test]
    fn ramp_schedule_by_hand() {
        // n=5, budget 20, ramp at 0.5: start 10, span 10, x = remaining / 2 on the ramp.
        // remaining 9 -> 4.5 -> 4 (tie to even), 7 -> 3.5 -> 4, 5 -> 2.5 -> 2, 3 -> 1.5 -> 2,
        // clamped by remaining - 1 at the end, 0 with one token left and when exhausted.
        let s = schedule(ramp(20, 5, 0.5));
        assert_eq!(
            s,
            [
                5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 4, 4, 4, 3, 2, 2, 2, 1, 0, 0
            ]
        );
        // The floor at 1: n=1, budget 100, ramp at 0: x = remaining / 100 < 0.5 soon, but L
        // stays 1 until one token remains.
        let s = schedule(ramp(100, 1, 0.0));
        assert!(s[..99].iter().all(|&l| l == 1), "{s:?}");
        assert_eq!(&s[99..], [0, 0]);
        // Never ramping: only the clamp.
        assert_eq!(schedule(ramp(5, 8, 1.0)), [4, 3, 2, 1, 0, 0]);
    }

    #[test]
    fn magic_rounding_matches_std() {
        let mut rng = squish_testkit::rng(7);
        use rand::RngExt;
        for k in 0..2000u32 {
            let x = f64::from(k) * 0.25;
            assert_eq!(round_ties_even_small(x), x.round_ties_even(), "{x}");
            let y: f64 = rng.random::<f64>() * 300.0;
            assert_eq!(round_ties_even_small(y), y.round_ties_even(), "{y}");
        }
    }

    #[test]
    fn best_len_edge_cases() {
        // α = 0: every draft is wasted, so plain decoding (unless drafts are free: tie -> 0).
        assert_eq!(best_draft_len(0.0, 0.1, 8), 0);
        assert_eq!(best_draft_len(0.0, 0.0, 8), 0);
        // α = 1: f(L) = (L + 1) / (L c + 1), increasing iff c < 1, flat at c = 1.
        assert_eq!(best_draft_len(1.0, 0.5, 8), 8);
        assert_eq!(best_draft_len(1.0, 1.0, 8), 0);
        assert_eq!(best_draft_len(1.0, 2.0, 8), 0);
        // Free drafts and any α > 0: draft as much as allowed.
        assert_eq!(best_draft_len(0.3, 0.0, 8), 8);
    }

    #[test]
    fn estimator_counts_only_tested_drafts() {
        let policy = AcceptanceAwarePolicy {
            cost_ratio: 0.0,
            prior_alpha: 0.5,
            prior_weight: 2.0,
            decay: 1.0,
        };
        let cfg = BudgetSpecDecoderConfig {
            budget: 100,
            n_draft: 4,
            policy: DraftLenPolicy::AcceptanceAware(policy),
        };
        let mut d = BudgetSpecDecoder::new(cfg).unwrap();
        assert_eq!(d.effective_draft_len(), 4);
        // 1 accepted, then a rejection: 1 success in 2 trials (not 1 in 4).
        d.step(2).unwrap();
        assert_eq!(d.acceptance_estimate(), (1.0 + 1.0) / (2.0 + 2.0));
        // All 4 accepted + bonus: 4 successes in 4 trials.
        d.step(5).unwrap();
        assert_eq!(
            d.acceptance_estimate(),
            (1.0 + 1.0 + 4.0) / (2.0 + 2.0 + 4.0)
        );
        assert_eq!(
            d.stats(),
            BudgetSpecStats {
                rounds: 2,
                drafted: 8,
                accepted: 5,
                rejected: 1,
            }
        );
        assert_eq!(d.stats().acceptance_rate(), 5.0 / 8.0);
    }
}
