//! `TokenBudgetGate` through the public API: one gate serving a sequence of requests.

use rand::RngExt;
use squish_serving::{BudgetStatus, Error, TokenBudgetGate, TokenBudgetGateConfig};
use squish_testkit::prop;

/// Oracle: for every request of a random stream, admission agrees with the context arithmetic,
/// the tokens produced are exactly min(max_new, max_tokens), and the gate is reusable after
/// `reset`.
#[test]
fn request_lifecycle_over_many_requests() {
    prop::check("it_token_budget_lifecycle", 200, |rng| {
        let context = rng.random_range(16..=4096u64);
        let max = rng.random_range(1..=context);
        let mut cfg = TokenBudgetGateConfig::new(max, context);
        cfg.warn_at_tokens = rng.random_range(1..=max);
        let mut gate = TokenBudgetGate::new(cfg).unwrap();
        for _ in 0..20 {
            let prompt = rng.random_range(0..=context);
            let max_new = rng.random_range(1..=context);
            let fits = prompt + max_new <= context;
            match gate.admit(prompt, max_new) {
                Ok(()) => assert!(fits),
                Err(Error::ContextOverflow { .. }) => {
                    assert!(!fits);
                    continue;
                }
                Err(e) => panic!("unexpected {e}"),
            }
            // The engine stops at max_new on its own; the gate stops it at max_tokens.
            let mut produced = 0;
            let mut warnings = 0;
            while produced < max_new {
                let step = rng.random_range(1..=6u64).min(max_new - produced);
                let g = gate.grant(step);
                produced += g.granted;
                warnings += u32::from(g.warning);
                if g.granted < step {
                    break;
                }
            }
            assert_eq!(produced, max_new.min(max));
            assert_eq!(
                warnings,
                u32::from(produced >= gate.config().warn_at_tokens)
            );
            assert_eq!(gate.status() == BudgetStatus::Exhausted, produced == max);
            gate.reset();
            assert_eq!(gate.remaining(), max);
        }
    });
}
