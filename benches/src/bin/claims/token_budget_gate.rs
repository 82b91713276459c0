//! `token_budget_gate`: the seed claims a hard budget with 0 overshoot.
//!
//! Measured over 10⁶ random requests (10⁵ with `--quick`), each with a budget drawn uniformly
//! from 1..=512 tokens and a stream of multi-token steps drawn uniformly from 1..=8 tokens (the
//! accepted length of a speculative-decoding step). Each request runs until the gate stops it:
//! - ours: [`TokenBudgetGate::grant`] each step, producing what it grants, stopping at the first
//!   partial grant;
//! - the seed's check-then-emit tick: a step is allowed whenever tokens produced so far are below
//!   the budget, and then all of its tokens are produced (the seed's three ticks of 4 against 10
//!   produced 12).
//!
//! Both consume the same step stream. Overshoot is tokens produced beyond the budget; we also
//! check that ours produces exactly the budget (no undershoot either).

use rand::RngExt;
use serde_json::json;
use squish_serving::{TokenBudgetGate, TokenBudgetGateConfig};

use super::{Measured, Opts};

pub(super) fn measure(opts: Opts) -> Measured {
    let requests: u64 = if opts.quick { 100_000 } else { 1_000_000 };
    let mut rng = benches::input_rng();
    let mut steps = Vec::with_capacity(600);
    let (mut ours_over, mut ours_over_reqs, mut ours_inexact) = (0u64, 0u64, 0u64);
    let (mut seed_over, mut seed_over_reqs, mut seed_max_over) = (0u64, 0u64, 0u64);
    let (mut budget_total, mut step_total) = (0u64, 0u64);
    for _ in 0..requests {
        let max = rng.random_range(1..=512u64);
        budget_total += max;
        // Enough steps for either policy to stop: the stream sums past the budget.
        steps.clear();
        let mut sum = 0;
        while sum < max {
            let n = rng.random_range(1..=8u64);
            steps.push(n);
            sum += n;
        }
        step_total += steps.len() as u64;

        let mut gate = TokenBudgetGate::new(TokenBudgetGateConfig::new(max, max))
            .expect("budget within the context");
        let mut ours = 0;
        for &n in &steps {
            let g = gate.grant(n);
            ours += g.granted;
            if g.granted < n {
                break;
            }
        }
        let over = ours.saturating_sub(max);
        ours_over += over;
        ours_over_reqs += u64::from(over > 0);
        ours_inexact += u64::from(ours != max);

        // The seed: `if used < max { used += n; allow }`.
        let mut used = 0;
        for &n in &steps {
            if used >= max {
                break;
            }
            used += n;
        }
        let over = used.saturating_sub(max);
        seed_over += over;
        seed_over_reqs += u64::from(over > 0);
        seed_max_over = seed_max_over.max(over);
    }
    assert_eq!(ours_over, 0, "TokenBudgetGate overshot its budget");
    assert_eq!(
        ours_inexact, 0,
        "TokenBudgetGate did not produce exactly its budget"
    );
    #[allow(clippy::cast_precision_loss)]
    let pct = |x: u64| 100.0 * x as f64 / requests as f64;
    Measured {
        summary: format!(
            "{requests} random multi-token requests (budget 1-512, steps of 1-8 tokens): \
             TokenBudgetGate overshoot 0 tokens, every request produced exactly its budget; \
             the seed's check-then-emit tick overshot in {:.1}% of requests, by up to \
             {seed_max_over} tokens ({seed_over} tokens in total)",
            pct(seed_over_reqs)
        ),
        details: json!({
            "requests": requests,
            "budget_range": [1, 512],
            "step_range": [1, 8],
            "budget_tokens_total": budget_total,
            "steps_total": step_total,
            "ours": {
                "overshoot_tokens": ours_over,
                "requests_overshooting": ours_over_reqs,
                "requests_not_exactly_at_budget": ours_inexact,
            },
            "seed_check_then_emit": {
                "overshoot_tokens": seed_over,
                "requests_overshooting": seed_over_reqs,
                "requests_overshooting_pct": pct(seed_over_reqs),
                "max_overshoot_tokens": seed_max_over,
            },
        }),
    }
}
