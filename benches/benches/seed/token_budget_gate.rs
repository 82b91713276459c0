//! `TokenBudgetGate`: one `grant(1)` (the seed's per-token `tick()` in hard mode) and one
//! `reset()` (the seed's state clear for a new request), with the default configuration (4096
//! tokens, warning at 3687, 8192-token context).
//!
//! Both operations take a few nanoseconds, so timer overhead matters: each is measured as a
//! single call with criterion's `iter`, which reads the clock once per sample around a loop of
//! `iters` calls (criterion grows `iters` until a sample lasts milliseconds), so the cost of
//! reading the timer is spread over millions of calls. `black_box` on the gate and the argument
//! keeps the compiler from hoisting or folding the calls out of that loop.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use squish_serving::{TokenBudgetGate, TokenBudgetGateConfig};

/// Registers the `TokenBudgetGate` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let gate = TokenBudgetGate::new(TokenBudgetGateConfig::default()).expect("default config");

    let (group, id) = benches::seed_row("token_budget_gate/tick");
    let mut g = c.benchmark_group(group);
    let mut tick_gate = gate.clone();
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            let grant = black_box(&mut tick_gate).grant(black_box(1));
            // A request ends when its budget does (every 4097th call): start the next one, as
            // a serving loop would, so the measured calls are real grants, not refusals.
            if grant.granted == 0 {
                tick_gate.reset();
            }
            grant
        });
    });
    g.finish();

    let (group, id) = benches::seed_row("token_budget_gate/reset");
    let mut g = c.benchmark_group(group);
    let mut reset_gate = gate;
    let _ = reset_gate.grant(1000);
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| black_box(&mut reset_gate).reset());
    });
    g.finish();
}
