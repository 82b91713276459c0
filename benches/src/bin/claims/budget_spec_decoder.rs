//! Claim `budget_spec` ("0 token overshoot", BudgetSpecDecoder ramp-down).
//!
//! 1. **Overshoot.** At least 10⁶ speculative rounds over real request lengths: the budgets are
//!    the `GeneratedTokens` of the Azure LLM inference trace 2023 (conversation + code services,
//!    in trace order, cycled; CC-BY 4.0, Patel et al., "Splitwise", ISCA 2024), or, when
//!    `shared/` is missing, log-normal lengths (the summary says which). Each request gets a
//!    random `n_draft` in 1..=8, a random policy (the seed's ramp-down at a random
//!    `ramp_down_at`, or the acceptance-aware one at a random cost ratio) and a random verifier:
//!    i.i.d. acceptance at a random α (stop at the first rejection), or adversarial counts
//!    uniform over every legal `1..=L+1`. The simulation keeps its own token count, independent
//!    of the decoder's, and runs every request to its end. Compared with the same ramp-down
//!    without the `remaining − 1` clamp (the seed's sketch), which overshoots (or must discard
//!    verified tokens).
//! 2. **Tokens per unit cost** at budget 512 (the seed's), i.i.d. acceptance at α, a round with
//!    `L` drafts costing `L·c + 1` target-step units: the acceptance-aware policy (`n_draft` 8,
//!    learning α online from its default prior) vs fixed draft lengths (clamped to the budget
//!    the same way), the seed's ramp-down, and the closed form `E(L)/(L·c + 1)` of each fixed
//!    length as a check of the simulation.
//!
//! `--quick` is not read: the whole measurement takes well under a second in release.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use squish_spec::{
    AcceptanceAwarePolicy, BudgetSpecDecoder, BudgetSpecDecoderConfig, DraftLenPolicy,
};

use super::{Measured, Opts};

/// Rounds simulated for the overshoot measurement (at least; the last request is finished).
const ROUNDS: u64 = 1_000_000;
/// The seed's budget.
const BUDGET: usize = 512;
/// Requests per (α, c) cell of the cost comparison.
const REQUESTS_PER_CELL: usize = 200;

/// Output lengths of the Azure trace, or `None` without `shared/`.
fn azure_lengths() -> Option<Vec<usize>> {
    let dir = squish_testkit::shared_dir()?.join("data/azure-llm-inference-2023");
    let mut out = Vec::new();
    for file in ["conv.csv", "code.csv"] {
        out.extend(read_generated_tokens(&dir.join(file))?);
    }
    Some(out)
}

/// The `GeneratedTokens` column (the third) of one trace file; rows with 0 are skipped (a
/// budget is at least 1 token).
fn read_generated_tokens(path: &Path) -> Option<Vec<usize>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let header = lines.next()?;
    assert_eq!(
        header.trim(),
        "TIMESTAMP,ContextTokens,GeneratedTokens",
        "{path:?}"
    );
    Some(
        lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.rsplit(',')
                    .next()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("bad row {l:?} in {path:?}"))
            })
            .filter(|&n| n > 0)
            .collect(),
    )
}

/// A round's emitted count under i.i.d. acceptance `alpha`: accepted drafts + 1.
fn iid_round(l: usize, alpha: f64, rng: &mut StdRng) -> usize {
    1 + (0..l).take_while(|_| rng.random::<f64>() < alpha).count()
}

/// The seed's ramp-down without the `remaining − 1` clamp: `n_draft` before the ramp, then
/// `round_ties_even(n_draft × remaining / span)` (0 once exhausted).
fn unclamped_ramp(budget: usize, n_draft: usize, ramp_down_at: f64, emitted: usize) -> usize {
    let start = ramp_down_at * budget as f64;
    if emitted >= budget {
        0
    } else if (emitted as f64) < start {
        n_draft
    } else {
        let x = n_draft as f64 * (budget - emitted) as f64 / (budget as f64 - start);
        x.round_ties_even() as usize
    }
}

struct Overshoot {
    rounds: u64,
    requests: u64,
    max_overshoot: usize,
    errors: u64,
    short: u64,
    unclamped_max: usize,
    unclamped_over_requests: u64,
    unclamped_over_tokens: u64,
}

fn overshoot(budgets: &[usize]) -> Overshoot {
    let mut rng = StdRng::seed_from_u64(benches::INPUT_SEED ^ 0xb0d6e7);
    let mut o = Overshoot {
        rounds: 0,
        requests: 0,
        max_overshoot: 0,
        errors: 0,
        short: 0,
        unclamped_max: 0,
        unclamped_over_requests: 0,
        unclamped_over_tokens: 0,
    };
    for &budget in budgets.iter().cycle() {
        if o.rounds >= ROUNDS {
            break;
        }
        let n_draft = rng.random_range(1..=8);
        let ramp_down_at: f64 = rng.random();
        let policy = if rng.random::<bool>() {
            DraftLenPolicy::RampDown { ramp_down_at }
        } else {
            DraftLenPolicy::AcceptanceAware(AcceptanceAwarePolicy::new(rng.random_range(0.0..0.5)))
        };
        let alpha: f64 = rng.random();
        let adversarial = rng.random_range(0..4) == 0;
        let draw = |l: usize, rng: &mut StdRng| {
            if adversarial {
                rng.random_range(1..=l + 1)
            } else {
                iid_round(l, alpha, rng)
            }
        };
        let mut cfg = BudgetSpecDecoderConfig::new(budget, n_draft);
        cfg.policy = policy;
        let mut dec = BudgetSpecDecoder::new(cfg).expect("valid config");
        let mut total = 0usize;
        while total < budget {
            let l = dec.effective_draft_len();
            let n = draw(l, &mut rng);
            if dec.step(n).is_err() {
                o.errors += 1;
                break;
            }
            total += n;
            o.rounds += 1;
        }
        o.max_overshoot = o.max_overshoot.max(total.saturating_sub(budget));
        o.short += u64::from(total < budget);
        o.requests += 1;

        // The same request under the ramp-down without the clamp.
        let mut total = 0usize;
        while total < budget {
            let l = unclamped_ramp(budget, n_draft, ramp_down_at, total);
            total += draw(l, &mut rng);
        }
        let over = total - budget;
        o.unclamped_max = o.unclamped_max.max(over);
        o.unclamped_over_requests += u64::from(over > 0);
        o.unclamped_over_tokens += over as u64;
    }
    o
}

/// Tokens per unit cost of `requests` requests of `BUDGET` tokens under i.i.d. acceptance.
fn tokens_per_cost(
    policy: &DraftLenPolicy,
    n_draft: usize,
    alpha: f64,
    c: f64,
    rng: &mut StdRng,
) -> f64 {
    let (mut tokens, mut cost) = (0usize, 0.0f64);
    for _ in 0..REQUESTS_PER_CELL {
        let mut cfg = BudgetSpecDecoderConfig::new(BUDGET, n_draft);
        cfg.policy = policy.clone();
        let mut dec = BudgetSpecDecoder::new(cfg).expect("valid config");
        while !dec.is_exhausted() {
            let l = dec.effective_draft_len();
            let n = iid_round(l, alpha, rng);
            dec.step(n).expect("a legal count");
            cost += l as f64 * c + 1.0;
        }
        tokens += dec.emitted();
    }
    tokens as f64 / cost
}

/// `E(L) / (L·c + 1)` in closed form.
fn closed_form(alpha: f64, l: usize, c: f64) -> f64 {
    (1.0 - alpha.powi(l as i32 + 1)) / (1.0 - alpha) / (l as f64 * c + 1.0)
}

pub(super) fn measure(_opts: Opts) -> Measured {
    let (budgets, source) = match azure_lengths() {
        Some(b) => (b, "azure-llm-inference-2023 GeneratedTokens"),
        None => {
            let mut rng = StdRng::seed_from_u64(benches::INPUT_SEED);
            let b = (0..20_000)
                .map(|_| {
                    let z: f64 = -rng.random::<f64>().max(1e-12).ln();
                    (200.0 * z).ceil().max(1.0) as usize
                })
                .collect();
            (
                b,
                "synthetic exponential lengths (mean 200; shared/ not found)",
            )
        }
    };
    let o = overshoot(&budgets);
    assert_eq!(o.errors, 0, "step refused a legal count");
    assert_eq!(o.short, 0, "a request stopped short of its budget");

    // Tokens per unit cost.
    let fixed = [1usize, 2, 4, 8];
    let mut cells = Vec::new();
    let mut ratios_vs_l4 = Vec::new();
    let mut ratios_vs_best = Vec::new();
    let mut rng = StdRng::seed_from_u64(benches::INPUT_SEED ^ 0xc057);
    for &alpha in &[0.3, 0.6, 0.8, 0.95] {
        for &c in &[0.05, 0.2, 0.5] {
            // A fixed length is ramp-down that never ramps: n_draft, clamped to remaining − 1.
            let never = DraftLenPolicy::RampDown { ramp_down_at: 1.0 };
            let mut fixed_rows = Vec::new();
            let mut best_fixed = f64::NEG_INFINITY;
            let mut at_l4 = 0.0;
            for &l in &fixed {
                let sim = tokens_per_cost(&never, l, alpha, c, &mut rng);
                best_fixed = best_fixed.max(sim);
                if l == 4 {
                    at_l4 = sim;
                }
                fixed_rows.push(json!({
                    "draft_len": l,
                    "tokens_per_cost": sim,
                    "closed_form_unbounded": closed_form(alpha, l, c),
                }));
            }
            let plain = 1.0; // L = 0: one token per target step
            best_fixed = best_fixed.max(plain);
            let ramp = tokens_per_cost(&DraftLenPolicy::default(), 4, alpha, c, &mut rng);
            let aware_policy = DraftLenPolicy::AcceptanceAware(AcceptanceAwarePolicy::new(c));
            let aware = tokens_per_cost(&aware_policy, 8, alpha, c, &mut rng);
            ratios_vs_l4.push((alpha, c, aware / at_l4));
            ratios_vs_best.push(aware / best_fixed);
            cells.push(json!({
                "alpha": alpha,
                "cost_ratio": c,
                "acceptance_aware_n_draft_8": aware,
                "ramp_down_n_draft_4_at_0.8": ramp,
                "plain_decoding": plain,
                "fixed": fixed_rows,
                "aware_over_fixed_4": aware / at_l4,
                "aware_over_best_fixed": aware / best_fixed,
            }));
        }
    }
    let (lo, hi) = ratios_vs_l4
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(r.2), hi.max(r.2))
        });
    let worst_vs_best = ratios_vs_best.iter().copied().fold(f64::INFINITY, f64::min);
    let pick = |a: f64, c: f64| {
        ratios_vs_l4
            .iter()
            .find(|r| r.0 == a && r.1 == c)
            .map_or(f64::NAN, |r| r.2)
    };
    let summary = format!(
        "max overshoot {} tokens over {} rounds ({} requests, budgets from {source}; 0 refused \
         steps, every request reached its budget exactly); the same ramp-down without the \
         remaining-1 clamp overshoots {:.1}% of requests, by up to {} tokens. Tokens per unit \
         cost, acceptance-aware (n_draft 8) vs fixed L=4: x{:.2} at alpha 0.3, c 0.5; x{:.2} at \
         alpha 0.95, c 0.05; x{lo:.2}-x{hi:.2} over 12 (alpha, c) cells; worst cell vs the best \
         fixed L (0, 1, 2, 4, 8) in hindsight x{worst_vs_best:.3}",
        o.max_overshoot,
        o.rounds,
        o.requests,
        100.0 * o.unclamped_over_requests as f64 / o.requests as f64,
        o.unclamped_max,
        pick(0.3, 0.5),
        pick(0.95, 0.05),
    );
    let details: Value = json!({
        "overshoot": {
            "rounds": o.rounds,
            "requests": o.requests,
            "budget_source": source,
            "max_overshoot_tokens": o.max_overshoot,
            "refused_steps": o.errors,
            "requests_short_of_budget": o.short,
            "unclamped_ramp_down": {
                "max_overshoot_tokens": o.unclamped_max,
                "requests_overshooting": o.unclamped_over_requests,
                "tokens_overshot_total": o.unclamped_over_tokens,
            },
        },
        "tokens_per_cost": {
            "budget": BUDGET,
            "requests_per_cell": REQUESTS_PER_CELL,
            "cost_model": "round with L drafts costs L*c + 1 target steps; i.i.d. acceptance alpha",
            "cells": cells,
        },
    });
    Measured { summary, details }
}
