//! Ordered degradation under memory pressure: a level state machine with hysteresis.
//!
//! Implements the seed's `FaultHandler` ("3-action policy check"), corrected: the seed had no
//! state, so pressure flapping at a threshold switched eviction on and off every tick, and one of
//! its actions could never fire. Here memory pressure drives a level state machine over the
//! canonical order of degradation actions, cheapest first:
//!
//! ```text
//! Normal -> EvictKv -> DisableDrafting -> ShrinkBatch -> ShedLoad
//! ```
//!
//! The design follows Kubernetes' kubelet node-pressure eviction: each level has an *enter*
//! (hard threshold) and a lower *exit* watermark, so pressure oscillating inside the band
//! between them causes at most one transition, and a level is left only after pressure has
//! stayed at or below its exit watermark for a minimum dwell (the kubelet's
//! `eviction-pressure-transition-period`). Escalation is rate-limited to one level per
//! escalation interval, so a single spike does not jump straight to shedding load; the
//! magnitudes of each level (bytes to free, batch size, requests to shed) follow vLLM's
//! preemption model, where memory is freed down to a watermark rather than one block at a time.
//!
//! # Semantics (pinned by a table test)
//! At level `L` (0 = `Normal`, 4 = `ShedLoad`), one [`FaultHandler::evaluate`] at time `now`
//! does at most one of:
//! - **escalate** to `L + 1` if `pressure >= enter(L + 1)` and no escalation happened within the
//!   last `escalation_interval` (an escalation held back by the interval is counted in
//!   [`FaultStats::escalations_deferred`]);
//! - **step down** to `L - 1` if `pressure <= exit(L)` and the last evaluation that saw
//!   `pressure > exit(L)`, or the entry into `L` if later, is at least `min_dwell` before `now`;
//! - otherwise stay.
//!
//! Both comparisons are inclusive at the watermark. Since `enter(L + 1) > enter(L) > exit(L)`,
//! the two conditions never hold together.
//!
//! # Magnitudes
//! The *low watermark* is `evict_kv.exit`, the pressure below which no action is needed. With
//! `C = capacity_bytes` and pressure `p`:
//! - `bytes_to_free = round(p * C) - floor(low * C)` (0 if negative) when `EvictKv` is active,
//!   else 0: the used bytes (recovered exactly from a pressure the caller computed as
//!   `used as f64 / C as f64`, for capacities up to 2^50 bytes) minus the bytes allowed at the
//!   low watermark;
//! - `batch_size = clamp(floor(batch * low / p), min_batch, batch)` when `ShrinkBatch` is active
//!   and `p > low` (memory held by a batch is roughly proportional to its size), else `batch`;
//!   a batch already below `min_batch` is never grown;
//! - when `ShedLoad` is active, [`FaultHandler::select_shed_into`] picks which requests to shed.

use std::time::{Duration, Instant};

use squish_core::ConfigError;

use crate::{Error, RequestId, Result};

/// The largest capacity whose byte counts are all exact in `f64`.
const MAX_CAPACITY: u64 = 1 << 53;

/// One degradation action, in the canonical order (cheapest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Free KV-cache memory (evict cached prefixes, swap or preempt) down to the low watermark.
    EvictKv,
    /// Stop speculative drafting (its draft model and draft KV cost memory).
    DisableDrafting,
    /// Run a smaller decode batch ([`Decision::batch_size`]).
    ShrinkBatch,
    /// Drop requests ([`FaultHandler::select_shed_into`]).
    ShedLoad,
}

impl Action {
    /// Every action, in the canonical order.
    pub const ALL: [Action; 4] = [
        Action::EvictKv,
        Action::DisableDrafting,
        Action::ShrinkBatch,
        Action::ShedLoad,
    ];
}

/// How degraded the server is: the number of active actions, as a level.
///
/// Level `k` activates exactly the first `k` actions of [`Action::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DegradationLevel {
    /// No action.
    Normal,
    /// [`Action::EvictKv`].
    EvictKv,
    /// [`Action::EvictKv`] and [`Action::DisableDrafting`].
    DisableDrafting,
    /// The first three actions.
    ShrinkBatch,
    /// All four actions.
    ShedLoad,
}

impl DegradationLevel {
    /// Every level, from `Normal` up.
    pub const ALL: [DegradationLevel; 5] = [
        DegradationLevel::Normal,
        DegradationLevel::EvictKv,
        DegradationLevel::DisableDrafting,
        DegradationLevel::ShrinkBatch,
        DegradationLevel::ShedLoad,
    ];

    /// The level's index: 0 for `Normal` up to 4 for `ShedLoad` (= the number of active actions).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The active actions: always a prefix of [`Action::ALL`].
    pub fn actions(self) -> &'static [Action] {
        &Action::ALL[..self.index()]
    }

    /// Whether `action` is active at this level.
    pub fn is_active(self, action: Action) -> bool {
        (action as usize) < self.index()
    }
}

/// The pair of pressure thresholds of one level, as fractions of capacity in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watermarks {
    /// The level is entered when pressure is at or above this.
    pub enter: f64,
    /// The level is left when pressure is at or below this (after the dwell). Must be below
    /// `enter`.
    pub exit: f64,
}

impl Watermarks {
    /// Watermarks with the given enter and exit pressures.
    pub const fn new(enter: f64, exit: f64) -> Self {
        Self { enter, exit }
    }
}

/// Configuration of a [`FaultHandler`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FaultHandlerConfig {
    /// Watermarks of [`DegradationLevel::EvictKv`]; its exit is the low watermark that
    /// `bytes_to_free` and `batch_size` aim for.
    pub evict_kv: Watermarks,
    /// Watermarks of [`DegradationLevel::DisableDrafting`].
    pub disable_drafting: Watermarks,
    /// Watermarks of [`DegradationLevel::ShrinkBatch`].
    pub shrink_batch: Watermarks,
    /// Watermarks of [`DegradationLevel::ShedLoad`].
    pub shed_load: Watermarks,
    /// How long pressure must stay at or below a level's exit watermark before the level is
    /// left (one level per dwell).
    pub min_dwell: Duration,
    /// The least time between two escalations (at most one level up per interval).
    pub escalation_interval: Duration,
    /// The memory the pressure is a fraction of, in bytes. Must be in `1..=2^53` (so that it
    /// and every byte count below it are exact in `f64`).
    pub capacity_bytes: u64,
    /// The smallest batch [`Decision::batch_size`] shrinks to. Must be at least 1.
    pub min_batch: u32,
}

impl Default for FaultHandlerConfig {
    /// Enter/exit at 0.80/0.70 (evict KV), 0.85/0.75 (disable drafting), 0.90/0.80 (shrink
    /// batch), 0.97/0.88 (shed load); a 2 s dwell, a 200 ms escalation interval, 16 GiB of
    /// capacity and a minimum batch of 1. At a steady pressure of 0.95 three actions are active,
    /// as in the seed's benchmark.
    fn default() -> Self {
        Self {
            evict_kv: Watermarks::new(0.80, 0.70),
            disable_drafting: Watermarks::new(0.85, 0.75),
            shrink_batch: Watermarks::new(0.90, 0.80),
            shed_load: Watermarks::new(0.97, 0.88),
            min_dwell: Duration::from_secs(2),
            escalation_interval: Duration::from_millis(200),
            capacity_bytes: 16 << 30,
            min_batch: 1,
        }
    }
}

impl FaultHandlerConfig {
    fn levels(&self) -> [(&'static str, &'static str, Watermarks); 4] {
        [
            ("evict_kv.enter", "evict_kv.exit", self.evict_kv),
            (
                "disable_drafting.enter",
                "disable_drafting.exit",
                self.disable_drafting,
            ),
            ("shrink_batch.enter", "shrink_batch.exit", self.shrink_batch),
            ("shed_load.enter", "shed_load.exit", self.shed_load),
        ]
    }

    /// Checks every field and cross-field rule: each watermark finite in `[0, 1]`, `exit <
    /// enter` per level, enters and exits strictly increasing across levels in the canonical
    /// order, `capacity_bytes` in `1..=2^53`, `min_batch >= 1`.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that breaks its rule.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        const C: &str = "FaultHandler";
        let levels = self.levels();
        for (i, &(enter_name, exit_name, w)) in levels.iter().enumerate() {
            for (name, v) in [(enter_name, w.enter), (exit_name, w.exit)] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(ConfigError::new(C, name, "must be in [0, 1]", v));
                }
            }
            if w.exit >= w.enter {
                return Err(ConfigError::new(
                    C,
                    exit_name,
                    format!("must be below {enter_name} ({})", w.enter),
                    w.exit,
                ));
            }
            if i > 0 {
                let (prev_enter, prev_exit, p) = levels[i - 1];
                if w.enter <= p.enter {
                    return Err(ConfigError::new(
                        C,
                        enter_name,
                        format!("must be above {prev_enter} ({})", p.enter),
                        w.enter,
                    ));
                }
                if w.exit <= p.exit {
                    return Err(ConfigError::new(
                        C,
                        exit_name,
                        format!("must be above {prev_exit} ({})", p.exit),
                        w.exit,
                    ));
                }
            }
        }
        if self.capacity_bytes == 0 || self.capacity_bytes > MAX_CAPACITY {
            return Err(ConfigError::new(
                C,
                "capacity_bytes",
                "must be in 1..=2^53",
                self.capacity_bytes,
            ));
        }
        if self.min_batch == 0 {
            return Err(ConfigError::new(C, "min_batch", "must be at least 1", 0));
        }
        Ok(())
    }
}

/// What one [`FaultHandler::evaluate`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The level after this evaluation.
    pub level: DegradationLevel,
    /// The level before it.
    pub previous: DegradationLevel,
    /// Bytes to free to bring pressure down to the low watermark (`evict_kv.exit`); 0 unless
    /// [`Action::EvictKv`] is active.
    pub bytes_to_free: u64,
    /// The batch size to run: the caller's `batch` unless [`Action::ShrinkBatch`] is active,
    /// then never below `min(min_batch, batch)` and never above `batch`.
    pub batch_size: u32,
}

impl Decision {
    /// Whether this evaluation changed the level.
    pub fn changed(&self) -> bool {
        self.level != self.previous
    }

    /// The active actions (a prefix of [`Action::ALL`]).
    pub fn actions(&self) -> &'static [Action] {
        self.level.actions()
    }

    /// Whether speculative drafting may run (i.e. [`Action::DisableDrafting`] is not active).
    pub fn drafting_allowed(&self) -> bool {
        !self.level.is_active(Action::DisableDrafting)
    }
}

/// A running request, as [`FaultHandler::select_shed_into`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActiveRequest {
    /// The caller's request id; unique within one call.
    pub id: RequestId,
    /// Importance: requests with a *lower* value are shed first.
    pub priority: u32,
    /// KV-cache bytes the request holds (what shedding it frees).
    pub kv_bytes: u64,
}

/// Transition counters of a [`FaultHandler`]. Indices follow [`Action::ALL`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// How many times each action was switched on (a level entered from below).
    pub activated: [u64; 4],
    /// How many times each action was switched off (a level left downwards).
    pub deactivated: [u64; 4],
    /// Evaluations where pressure called for the next level but the escalation interval held
    /// it back.
    pub escalations_deferred: u64,
    /// Successful evaluations.
    pub evaluations: u64,
}

impl FaultStats {
    /// All level changes: the sum of `activated` and `deactivated`.
    pub fn transitions(&self) -> u64 {
        self.activated.iter().chain(&self.deactivated).sum()
    }
}

/// A memory-pressure state machine deciding which degradation actions are active.
///
/// Implements the seed's `FaultHandler` ("3-action policy check") as a hysteresis state
/// machine; see the [module docs](crate::fault_handler) for the exact semantics. Time is
/// injected: every call takes the caller's `now`.
///
/// # Example
/// ```
/// use std::time::{Duration, Instant};
/// use squish_serving::{Action, DegradationLevel, FaultHandler, FaultHandlerConfig};
///
/// let mut cfg = FaultHandlerConfig::default();
/// cfg.capacity_bytes = 1_000_000;
/// let mut h = FaultHandler::new(cfg)?;
/// let t0 = Instant::now();
///
/// let d = h.evaluate(0.85, 8, t0)?; // past evict_kv.enter (0.80): one level up
/// assert_eq!(d.level, DegradationLevel::EvictKv);
/// assert_eq!(d.bytes_to_free, 150_000); // down to the low watermark 0.70
/// assert!(d.drafting_allowed());
///
/// let d = h.evaluate(0.85, 8, t0 + Duration::from_millis(10))?; // within the interval
/// assert_eq!(d.level, DegradationLevel::EvictKv);
/// let d = h.evaluate(0.85, 8, t0 + Duration::from_millis(200))?;
/// assert_eq!(d.actions(), &[Action::EvictKv, Action::DisableDrafting]);
///
/// // 0.72 is inside the band: no flapping.
/// let d = h.evaluate(0.72, 8, t0 + Duration::from_secs(5))?;
/// assert_eq!(d.level, DegradationLevel::EvictKv); // one step down after the dwell
/// assert_eq!(h.evaluate(0.72, 8, t0 + Duration::from_secs(60))?.level, DegradationLevel::EvictKv);
/// assert_eq!(h.stats().transitions(), 3);
/// # Ok::<(), squish_serving::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FaultHandler {
    cfg: FaultHandlerConfig,
    enter: [f64; 4],
    exit: [f64; 4],
    capacity: f64,
    /// `floor(evict_kv.exit * capacity_bytes)`.
    low_bytes: u64,
    level: usize,
    /// Start of the current dwell: the entry into the level or the last evaluation that saw
    /// pressure above the level's exit watermark.
    last_hot: Option<Instant>,
    last_escalation: Option<Instant>,
    last_now: Option<Instant>,
    stats: FaultStats,
    scratch: Vec<usize>,
}

impl FaultHandler {
    /// A handler at [`DegradationLevel::Normal`].
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg` fails [`FaultHandlerConfig::validate`].
    pub fn new(cfg: FaultHandlerConfig) -> Result<Self> {
        cfg.validate()?;
        let w = cfg.levels().map(|(_, _, w)| w);
        #[allow(clippy::cast_precision_loss)] // validated: at most 2^53, exact
        let capacity = cfg.capacity_bytes as f64;
        Ok(Self {
            enter: w.map(|w| w.enter),
            exit: w.map(|w| w.exit),
            capacity,
            low_bytes: (cfg.evict_kv.exit * capacity).floor() as u64,
            cfg,
            level: 0,
            last_hot: None,
            last_escalation: None,
            last_now: None,
            stats: FaultStats::default(),
            scratch: Vec::new(),
        })
    }

    /// The configuration the handler was built with.
    pub fn config(&self) -> &FaultHandlerConfig {
        &self.cfg
    }

    /// The current level.
    pub fn level(&self) -> DegradationLevel {
        DegradationLevel::ALL[self.level]
    }

    /// The transition counters.
    pub fn stats(&self) -> FaultStats {
        self.stats
    }

    /// Feeds one memory-pressure sample (used / capacity, in `[0, 1]`) taken at `now`, with the
    /// caller's current decode `batch` size; moves at most one level (see the
    /// [module docs](crate::fault_handler)) and returns the decision with its magnitudes.
    ///
    /// # Errors
    /// [`Error::InvalidPressure`] if `pressure` is NaN, negative or above 1;
    /// [`Error::ClockWentBackwards`] if `now` is earlier than a previous call's. On error the
    /// handler is unchanged.
    ///
    /// # Performance
    /// A few comparisons and no allocation: a few nanoseconds. Always inlined: returned
    /// through memory across a call, the crate's large `Result` costs more than the body.
    #[inline(always)]
    pub fn evaluate(&mut self, pressure: f64, batch: u32, now: Instant) -> Result<Decision> {
        if !(0.0..=1.0).contains(&pressure) || self.last_now.is_some_and(|last| now < last) {
            return Err(self.input_error(pressure, now));
        }
        self.last_now = Some(now);
        self.stats.evaluations += 1;
        let previous = self.level;
        if self.level < 4 && pressure >= self.enter[self.level] {
            let allowed = self
                .last_escalation
                .is_none_or(|t| now - t >= self.cfg.escalation_interval);
            if allowed {
                self.stats.activated[self.level] += 1;
                self.level += 1;
                self.last_escalation = Some(now);
                self.last_hot = Some(now);
            } else {
                self.stats.escalations_deferred += 1;
            }
        } else if self.level > 0 {
            let exit = self.exit[self.level - 1];
            if pressure > exit {
                self.last_hot = Some(now);
            } else if self.last_hot.is_none_or(|t| now - t >= self.cfg.min_dwell) {
                self.level -= 1;
                self.stats.deactivated[self.level] += 1;
                self.last_hot = Some(now);
            }
        }
        Ok(self.decision(pressure, batch, previous))
    }

    /// The error for an input [`evaluate`](Self::evaluate) refused; kept out of line so the
    /// hot path stays small enough to inline.
    #[cold]
    #[inline(never)]
    fn input_error(&self, pressure: f64, now: Instant) -> Error {
        match self.last_now {
            Some(last) if (0.0..=1.0).contains(&pressure) => Error::ClockWentBackwards {
                context: "FaultHandler::evaluate",
                by: last - now,
            },
            _ => Error::InvalidPressure(pressure),
        }
    }

    #[inline]
    fn decision(&self, pressure: f64, batch: u32, previous: usize) -> Decision {
        let low = self.exit[0];
        let over = pressure > low;
        let level = DegradationLevel::ALL[self.level];
        let bytes_to_free = if self.level >= 1 {
            // Round half up by truncation (`f64::round` is a libm call on baseline x86-64).
            // The value is in [0.5, 2^53 + 0.5], so the cast through i64 is exact (and
            // shorter than a saturating cast to u64, which needs two conversions on x86-64).
            let used = (pressure * self.capacity + 0.5) as i64 as u64;
            used.saturating_sub(self.low_bytes)
        } else {
            0
        };
        let batch_size = if self.level >= 3 && over {
            // Truncation is floor for this non-negative value.
            let target = (f64::from(batch) * low / pressure) as u32;
            target.max(self.cfg.min_batch).min(batch)
        } else {
            batch
        };
        Decision {
            level,
            previous: DegradationLevel::ALL[previous],
            bytes_to_free,
            batch_size,
        }
    }

    /// Chooses the requests to shed for `decision` (which must come from this handler's last
    /// [`evaluate`](Self::evaluate)), writing their ids to `out` (cleared first) in shed order.
    ///
    /// Contract: when [`Action::ShedLoad`] is not active, `out` is left empty. Otherwise the
    /// requests are ordered lowest `priority` first, then most `kv_bytes` first (fewest
    /// requests for the bytes), then highest `id` first (newest, if ids grow with arrival), and
    /// `out` receives the shortest prefix of that order whose `kv_bytes` add up to at least
    /// `decision.bytes_to_free` (all requests if they do not add up to it; none if it is 0).
    /// Shedding the whole
    /// list frees the bytes on its own; a caller that has already freed some bytes with the
    /// cheaper actions may stop early, since the list is in shed order.
    ///
    /// # Errors
    /// [`Error::DuplicateRequestId`] if two requests share an id (checked only when shedding);
    /// `out` is then left empty.
    ///
    /// # Performance
    /// O(n log n) in the batch size, only when shedding; reuses an internal scratch buffer and
    /// `out`, so it allocates only when the batch is larger than any before.
    pub fn select_shed_into(
        &mut self,
        decision: &Decision,
        requests: &[ActiveRequest],
        out: &mut Vec<RequestId>,
    ) -> Result<()> {
        out.clear();
        if !decision.level.is_active(Action::ShedLoad) {
            return Ok(());
        }
        let idx = &mut self.scratch;
        idx.clear();
        idx.extend(0..requests.len());
        idx.sort_unstable_by_key(|&i| requests[i].id);
        if let Some(w) = idx
            .windows(2)
            .find(|w| requests[w[0]].id == requests[w[1]].id)
        {
            return Err(Error::DuplicateRequestId {
                context: "FaultHandler::select_shed_into",
                id: requests[w[0]].id,
            });
        }
        idx.sort_unstable_by_key(|&i| {
            let r = &requests[i];
            (
                r.priority,
                std::cmp::Reverse(r.kv_bytes),
                std::cmp::Reverse(r.id),
            )
        });
        let mut freed = 0u64;
        for &i in idx.iter() {
            if freed >= decision.bytes_to_free {
                break;
            }
            out.push(requests[i].id);
            freed = freed.saturating_add(requests[i].kv_bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;
    use squish_testkit::clock::FakeClock;
    use squish_testkit::prop;
    use std::fmt::Write;

    const MS: Duration = Duration::from_millis(1);

    fn handler() -> FaultHandler {
        FaultHandler::new(FaultHandlerConfig {
            capacity_bytes: 1 << 30,
            min_batch: 2,
            ..FaultHandlerConfig::default()
        })
        .unwrap()
    }

    /// Drives a fresh handler to `level` (each step after interval and dwell have passed).
    fn settled(level: usize, clock: &FakeClock) -> FaultHandler {
        let mut h = handler();
        for l in 0..level {
            clock.advance(Duration::from_secs(10));
            let d = h.evaluate(h.enter[l], 8, clock.now()).unwrap();
            assert_eq!(d.level.index(), l + 1);
        }
        clock.advance(Duration::from_secs(10));
        h
    }

    #[test]
    fn config_errors() {
        let bad = |f: fn(&mut FaultHandlerConfig)| {
            let mut c = FaultHandlerConfig::default();
            f(&mut c);
            FaultHandler::new(c).unwrap_err().to_string()
        };
        insta::assert_snapshot!(bad(|c| c.evict_kv.enter = f64::NAN), @"invalid FaultHandler.evict_kv.enter: must be in [0, 1], got NaN");
        insta::assert_snapshot!(bad(|c| c.shed_load.enter = 1.5), @"invalid FaultHandler.shed_load.enter: must be in [0, 1], got 1.5");
        insta::assert_snapshot!(bad(|c| c.evict_kv.exit = -0.1), @"invalid FaultHandler.evict_kv.exit: must be in [0, 1], got -0.1");
        insta::assert_snapshot!(bad(|c| c.evict_kv.exit = 0.8), @"invalid FaultHandler.evict_kv.exit: must be below evict_kv.enter (0.8), got 0.8");
        insta::assert_snapshot!(bad(|c| c.disable_drafting.enter = 0.8), @"invalid FaultHandler.disable_drafting.enter: must be above evict_kv.enter (0.8), got 0.8");
        insta::assert_snapshot!(bad(|c| c.shrink_batch.exit = 0.75), @"invalid FaultHandler.shrink_batch.exit: must be above disable_drafting.exit (0.75), got 0.75");
        insta::assert_snapshot!(bad(|c| c.capacity_bytes = 0), @"invalid FaultHandler.capacity_bytes: must be in 1..=2^53, got 0");
        insta::assert_snapshot!(bad(|c| c.capacity_bytes = (1 << 53) + 1), @"invalid FaultHandler.capacity_bytes: must be in 1..=2^53, got 9007199254740993");
        insta::assert_snapshot!(bad(|c| c.min_batch = 0), @"invalid FaultHandler.min_batch: must be at least 1, got 0");
        assert!(FaultHandlerConfig::default().validate().is_ok());
    }

    #[test]
    fn bad_pressure_and_time_are_errors_and_change_nothing() {
        let clock = FakeClock::new();
        let mut h = handler();
        clock.advance(MS * 10);
        h.evaluate(0.5, 8, clock.now()).unwrap();
        for p in [f64::NAN, -0.0001, 1.0001, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(
                h.evaluate(p, 8, clock.now()),
                Err(Error::InvalidPressure(_))
            ));
        }
        let e = h.evaluate(0.9, 8, clock.now() - MS * 3).unwrap_err();
        insta::assert_snapshot!(e, @"clock went backwards in FaultHandler::evaluate by 3ms");
        assert_eq!(h.stats().evaluations, 1);
        assert_eq!(h.level(), DegradationLevel::Normal);
        // 0 and 1 are valid.
        assert!(h.evaluate(0.0, 8, clock.now()).is_ok());
        assert!(h.evaluate(1.0, 8, clock.now()).is_ok());
    }

    #[test]
    fn actions_are_prefixes_of_the_canonical_order() {
        for (k, l) in DegradationLevel::ALL.into_iter().enumerate() {
            assert_eq!(l.index(), k);
            assert_eq!(l.actions(), &Action::ALL[..k]);
            for (j, a) in Action::ALL.into_iter().enumerate() {
                assert_eq!(l.is_active(a), j < k);
            }
        }
    }

    /// The boundary semantics at every threshold: from a level settled long enough (interval
    /// and dwell both passed), the level after one evaluation just below, at and just above
    /// each enter and exit watermark.
    #[test]
    fn boundary_table() {
        let mut table = String::new();
        let names = [
            "normal",
            "evict_kv",
            "disable_drafting",
            "shrink_batch",
            "shed_load",
        ];
        let cfg = FaultHandlerConfig::default();
        let w = cfg.levels();
        for from in 0..5 {
            let mut probes = Vec::new();
            if from < 4 {
                probes.push(("enter", w[from].0, w[from].2.enter));
            }
            if from > 0 {
                probes.push(("exit", w[from - 1].1, w[from - 1].2.exit));
            }
            for (kind, name, t) in probes {
                let mut row = format!("{:<16} {kind:<5} {name:<22}", names[from]);
                for (label, p) in [("-", t.next_down()), ("=", t), ("+", t.next_up())] {
                    let clock = FakeClock::new();
                    let mut h = settled(from, &clock);
                    let d = h.evaluate(p.min(1.0), 8, clock.now()).unwrap();
                    write!(row, " {label}{}", names[d.level.index()]).unwrap();
                }
                writeln!(table, "{}", row.trim_end()).unwrap();
            }
        }
        insta::assert_snapshot!(table, @r"
        normal           enter evict_kv.enter         -normal =evict_kv +evict_kv
        evict_kv         enter disable_drafting.enter -evict_kv =disable_drafting +disable_drafting
        evict_kv         exit  evict_kv.exit          -normal =normal +evict_kv
        disable_drafting enter shrink_batch.enter     -disable_drafting =shrink_batch +shrink_batch
        disable_drafting exit  disable_drafting.exit  -evict_kv =evict_kv +disable_drafting
        shrink_batch     enter shed_load.enter        -shrink_batch =shed_load +shed_load
        shrink_batch     exit  shrink_batch.exit      -disable_drafting =disable_drafting +shrink_batch
        shed_load        exit  shed_load.exit         -shrink_batch =shrink_batch +shed_load
        ");
    }

    #[test]
    fn dwell_and_interval_boundaries() {
        let clock = FakeClock::new();
        let mut h = handler();
        let t0 = clock.now();
        assert_eq!(h.evaluate(0.99, 8, t0).unwrap().level.index(), 1);
        // Escalation interval: held at 200ms - 1ns, allowed at exactly 200ms.
        let held = t0 + Duration::from_millis(200) - Duration::from_nanos(1);
        assert_eq!(h.evaluate(0.99, 8, held).unwrap().level.index(), 1);
        assert_eq!(h.stats().escalations_deferred, 1);
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(h.evaluate(0.99, 8, t1).unwrap().level.index(), 2);
        // Dwell: below the exit watermark, step down only once 2 s have passed since the
        // entry (or the last hot sample).
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(h.evaluate(0.74, 8, t2).unwrap().level.index(), 2);
        let t3 = t1 + Duration::from_secs(2) - Duration::from_nanos(1);
        assert_eq!(h.evaluate(0.5, 8, t3).unwrap().level.index(), 2);
        // A hot sample restarts the dwell.
        let t4 = t1 + Duration::from_millis(2500);
        assert_eq!(h.evaluate(0.76, 8, t4).unwrap().level.index(), 2);
        let t5 = t4 + Duration::from_secs(2) - Duration::from_nanos(1);
        assert_eq!(h.evaluate(0.5, 8, t5).unwrap().level.index(), 2);
        let t6 = t4 + Duration::from_secs(2);
        assert_eq!(h.evaluate(0.5, 8, t6).unwrap().level.index(), 1);
        // The next step down needs its own dwell.
        assert_eq!(h.evaluate(0.5, 8, t6).unwrap().level.index(), 1);
        let t7 = t6 + Duration::from_secs(2);
        assert_eq!(h.evaluate(0.5, 8, t7).unwrap().level.index(), 0);
        let s = h.stats();
        assert_eq!(s.activated, [1, 1, 0, 0]);
        assert_eq!(s.deactivated, [1, 1, 0, 0]);
        assert_eq!(s.evaluations, 10);
    }

    #[test]
    fn magnitudes() {
        let clock = FakeClock::new();
        let cap = 1u64 << 30;
        // Normal: nothing.
        let mut h = settled(0, &clock);
        let d = h.evaluate(0.75, 8, clock.now()).unwrap();
        assert_eq!((d.bytes_to_free, d.batch_size), (0, 8));
        // EvictKv: bytes down to the low watermark 0.70, batch untouched.
        let mut h = settled(1, &clock);
        let d = h.evaluate(0.78, 8, clock.now()).unwrap();
        assert_eq!(d.level, DegradationLevel::EvictKv);
        let want = (0.78 * cap as f64).round() as u64 - (0.70 * cap as f64).floor() as u64;
        assert_eq!(d.bytes_to_free, want);
        assert_eq!(d.batch_size, 8);
        // ShrinkBatch: batch * 0.70 / p, floored, at least min_batch (2), at most batch.
        let mut h = settled(3, &clock);
        let d = h.evaluate(0.93, 8, clock.now()).unwrap();
        assert_eq!(d.level, DegradationLevel::ShrinkBatch);
        assert_eq!(d.batch_size, 6); // floor(8 * 0.70 / 0.93) = floor(6.02)
        assert!(!d.drafting_allowed());
        clock.advance(MS);
        assert_eq!(h.evaluate(0.93, 2, clock.now()).unwrap().batch_size, 2);
        clock.advance(MS);
        assert_eq!(h.evaluate(0.93, 1, clock.now()).unwrap().batch_size, 1);
        clock.advance(MS);
        assert_eq!(h.evaluate(0.93, 0, clock.now()).unwrap().batch_size, 0);
    }

    /// Oracle: a pressure computed as `used / C` gives back exactly `used - floor(low * C)`
    /// bytes to free, for capacities up to 2^50 bytes.
    #[test]
    fn bytes_to_free_recovers_used_bytes_exactly() {
        prop::check("fault_bytes_exact", 2000, |rng| {
            let bits = rng.random_range(1..=50);
            let cap = rng.random_range(1..=1u64 << bits);
            let mut h = FaultHandler::new(FaultHandlerConfig {
                capacity_bytes: cap,
                ..FaultHandlerConfig::default()
            })
            .unwrap();
            let now = Instant::now();
            // Enter EvictKv; with the clock standing still the dwell keeps it there.
            h.evaluate(1.0, 8, now).unwrap();
            let low = (0.70 * cap as f64).floor() as u64;
            for _ in 0..20 {
                let used = rng.random_range(0..=cap);
                let d = h.evaluate(used as f64 / cap as f64, 8, now).unwrap();
                assert_eq!(d.level, DegradationLevel::EvictKv);
                assert_eq!(d.bytes_to_free, used.saturating_sub(low), "{used} of {cap}");
            }
        });
    }

    /// Oracle for the batch target and bytes: an independent f64 computation over random
    /// pressures and batches; the target never drops below min(min_batch, batch).
    #[test]
    fn batch_target_never_below_minimum() {
        prop::check("fault_batch_minimum", 500, |rng| {
            let clock = FakeClock::new();
            let mut h = settled(3, &clock);
            for _ in 0..50 {
                clock.advance(MS);
                let p = rng.random_range(0.81..0.97);
                let batch = rng.random_range(0..300u32);
                let d = h.evaluate(p, batch, clock.now()).unwrap();
                assert_eq!(d.level, DegradationLevel::ShrinkBatch);
                let ideal = (f64::from(batch) * 0.70 / p).floor();
                let want = ideal.max(2.0).min(f64::from(batch)) as u32;
                assert_eq!(d.batch_size, want);
                assert!(d.batch_size >= batch.min(2) && d.batch_size <= batch);
                // round(p C) - floor(low C) is within 0.5 + 1 bytes of the exact (p - low) C.
                let bytes = (p - 0.70) * (1u64 << 30) as f64;
                assert!((d.bytes_to_free as f64 - bytes).abs() < 1.5);
            }
        });
    }

    /// Oracle: a reference state machine written directly from the module docs, run on random
    /// pressure/time sequences; levels, counters and decisions agree. Counters count level
    /// changes, not evaluations.
    #[test]
    fn matches_reference_state_machine() {
        prop::check("fault_reference_machine", 500, |rng| {
            let cfg = FaultHandlerConfig::default();
            let mut h = FaultHandler::new(cfg.clone()).unwrap();
            let ws = cfg.levels().map(|(_, _, w)| w);
            let clock = FakeClock::new();
            let (mut level, mut hot, mut esc) = (0usize, None::<Instant>, None::<Instant>);
            let mut changes = 0u64;
            let steps = rng.random_range(1..400);
            for _ in 0..steps {
                clock.advance(Duration::from_millis(rng.random_range(0..700)));
                let now = clock.now();
                let p: f64 = rng.random_range(0.0..=1.0);
                let prev = level;
                if level < 4 && p >= ws[level].enter {
                    if esc.is_none_or(|t| now - t >= cfg.escalation_interval) {
                        level += 1;
                        esc = Some(now);
                        hot = Some(now);
                    }
                } else if level > 0 {
                    if p > ws[level - 1].exit {
                        hot = Some(now);
                    } else if hot.is_none_or(|t| now - t >= cfg.min_dwell) {
                        level -= 1;
                        hot = Some(now);
                    }
                }
                let d = h.evaluate(p, 8, now).unwrap();
                assert_eq!(d.level.index(), level);
                assert_eq!(d.previous.index(), prev);
                assert!(level.abs_diff(prev) <= 1);
                changes += u64::from(level != prev);
            }
            let s = h.stats();
            assert_eq!(s.transitions(), changes);
            assert_eq!(s.evaluations, steps);
            // Net activations minus deactivations is the current level, per action.
            for a in 0..4 {
                let on = s.activated[a] - s.deactivated[a];
                assert_eq!(on, u64::from(a < level));
            }
        });
    }

    /// Monotone in pressure: after the same history, a higher final pressure never yields a
    /// lower level.
    #[test]
    fn monotone_in_pressure() {
        prop::check("fault_monotone", 500, |rng| {
            let clock = FakeClock::new();
            let mut h = handler();
            for _ in 0..rng.random_range(0..60) {
                clock.advance(Duration::from_millis(rng.random_range(0..900)));
                h.evaluate(rng.random_range(0.0..=1.0), 8, clock.now())
                    .unwrap();
            }
            clock.advance(Duration::from_millis(rng.random_range(0..900)));
            let mut ps: Vec<f64> = (0..8).map(|_| rng.random_range(0.0..=1.0)).collect();
            ps.sort_by(f64::total_cmp);
            let levels: Vec<_> = ps
                .iter()
                .map(|&p| h.clone().evaluate(p, 8, clock.now()).unwrap().level)
                .collect();
            assert!(
                levels.windows(2).all(|w| w[0] <= w[1]),
                "{ps:?} -> {levels:?}"
            );
        });
    }

    /// Pressure oscillating anywhere inside one level's band [enter(L), ..) above exit(L) and
    /// below enter(L + 1) causes at most one transition, at any sampling rate.
    #[test]
    fn oscillation_in_a_band_transitions_at_most_once() {
        prop::check("fault_band_oscillation", 500, |rng| {
            let cfg = FaultHandlerConfig::default();
            let ws = cfg.levels().map(|(_, _, w)| w);
            let l = rng.random_range(0..4);
            let lo = ws[l].exit.next_up();
            let hi = if l < 3 { ws[l + 1].enter } else { 1.0 };
            let clock = FakeClock::new();
            let mut h = settled(l, &clock);
            for _ in 0..300 {
                clock.advance(Duration::from_millis(rng.random_range(0..3000)));
                let p = if rng.random_bool(0.5) {
                    rng.random_range(lo..hi)
                } else if rng.random_bool(0.5) {
                    lo
                } else {
                    hi.next_down()
                };
                h.evaluate(p, 8, clock.now()).unwrap();
            }
            // `settled` made l transitions to get here.
            assert!(h.stats().transitions() <= l as u64 + 1);
        });
    }

    #[test]
    fn shed_selection_contract() {
        let clock = FakeClock::new();
        let mut h = settled(4, &clock);
        let mb = 1u64 << 20;
        let reqs = [
            ActiveRequest {
                id: RequestId(1),
                priority: 2,
                kv_bytes: 50 * mb,
            },
            ActiveRequest {
                id: RequestId(2),
                priority: 0,
                kv_bytes: 10 * mb,
            },
            ActiveRequest {
                id: RequestId(3),
                priority: 0,
                kv_bytes: 30 * mb,
            },
            ActiveRequest {
                id: RequestId(4),
                priority: 1,
                kv_bytes: 40 * mb,
            },
            ActiveRequest {
                id: RequestId(5),
                priority: 0,
                kv_bytes: 10 * mb,
            },
        ];
        let d = h.evaluate(0.98, 5, clock.now()).unwrap();
        assert_eq!(d.level, DegradationLevel::ShedLoad);
        let mut out = Vec::new();
        // Forge smaller targets to walk the prefix rule.
        for (need, want) in [
            (0, vec![]),
            (1, vec![3]),
            (30 * mb, vec![3]),
            (30 * mb + 1, vec![3, 5]),
            (50 * mb, vec![3, 5, 2]),
            (90 * mb, vec![3, 5, 2, 4]),
            (u64::MAX, vec![3, 5, 2, 4, 1]),
        ] {
            let d = Decision {
                bytes_to_free: need,
                ..d
            };
            h.select_shed_into(&d, &reqs, &mut out).unwrap();
            let want: Vec<RequestId> = want.into_iter().map(RequestId).collect();
            assert_eq!(out, want, "need {need}");
        }
        // Below ShedLoad nothing is shed.
        let lower = Decision {
            level: DegradationLevel::ShrinkBatch,
            ..d
        };
        h.select_shed_into(&lower, &reqs, &mut out).unwrap();
        assert!(out.is_empty());
        let mut dup = reqs.to_vec();
        dup[4].id = RequestId(1);
        let e = h.select_shed_into(&d, &dup, &mut out).unwrap_err();
        insta::assert_snapshot!(e, @"duplicate request id 1 in FaultHandler::select_shed_into");
        assert!(out.is_empty());
    }

    /// Oracle: the shed list is the shortest prefix of a brute-force sorted order that covers
    /// the bytes.
    #[test]
    fn shed_selection_matches_brute_force() {
        prop::check("fault_shed_brute_force", 500, |rng| {
            let clock = FakeClock::new();
            let mut h = settled(4, &clock);
            let n = rng.random_range(0..40);
            let mut ids: Vec<u64> = (0..200).collect();
            let reqs: Vec<ActiveRequest> = (0..n)
                .map(|_| {
                    let k = rng.random_range(0..ids.len());
                    ActiveRequest {
                        id: RequestId(ids.swap_remove(k)),
                        priority: rng.random_range(0..3),
                        kv_bytes: rng.random_range(0..1000),
                    }
                })
                .collect();
            let d = h.evaluate(0.99, n, clock.now()).unwrap();
            let d = Decision {
                bytes_to_free: rng.random_range(0..20_000),
                ..d
            };
            let mut out = Vec::new();
            h.select_shed_into(&d, &reqs, &mut out).unwrap();
            let mut order = reqs.clone();
            order.sort_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then(b.kv_bytes.cmp(&a.kv_bytes))
                    .then(b.id.cmp(&a.id))
            });
            let mut want = Vec::new();
            let mut freed = 0;
            for r in &order {
                if freed >= d.bytes_to_free {
                    break;
                }
                want.push(r.id);
                freed += r.kv_bytes;
            }
            assert_eq!(out, want);
        });
    }

    #[test]
    fn handler_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FaultHandler>();
    }
}
