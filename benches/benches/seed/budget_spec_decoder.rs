//! `BudgetSpecDecoder`: the seed's `effective_draft_len() budget=512` and `step(3)` rows.
//!
//! Both operations take nanoseconds, so timer overhead matters. The seed rows time ONE call per
//! iteration (the report divides nothing) with `n_draft` 4 and ramp-down from 80 % of the
//! budget (the crate's defaults).
//! - `effective_draft_len` on a fresh 512-token request uses criterion's `iter`, which reads
//!   the clock once per sample of millions of iterations, so the timer cost is amortised away.
//! - `step` mutates the decoder. The seed row steps one long-running decoder (budget 2^40, so
//!   it never reaches its ramp or its budget during the run) under plain `iter`: every call is
//!   the pre-ramp step a 512-token request takes for its first 80 %, timed one call per
//!   iteration with the clock read once per sample.
//!
//! Extra ids (reported under "Other benchmarks"): the acceptance-aware policy; a batch of
//! `effective_draft_len` calls over every state of a 512-token request (ramp included,
//! `Throughput::Elements(512)`, so the median is per batch of 512); and `step` on fresh clones
//! of the seed's 512-token decoder via `iter_batched_ref` with `BatchSize::NumIterations(64)`
//! (64 clones made untimed, the 64 calls timed between two clock reads; criterion's default
//! `SmallInput` batches would hold ~10⁵ decoders and time cache misses instead).

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use squish_spec::budget_spec_decoder::MAX_BUDGET;
use squish_spec::{
    AcceptanceAwarePolicy, BudgetSpecDecoder, BudgetSpecDecoderConfig, DraftLenPolicy,
};

/// The seed's budget.
const BUDGET: usize = 512;
/// Draft length of the seed's benchmarks (the crate's default).
const N_DRAFT: usize = 4;

fn ramp_down() -> BudgetSpecDecoder {
    BudgetSpecDecoder::new(BudgetSpecDecoderConfig::new(BUDGET, N_DRAFT)).expect("valid config")
}

fn acceptance_aware() -> BudgetSpecDecoder {
    let mut cfg = BudgetSpecDecoderConfig::new(BUDGET, N_DRAFT);
    cfg.policy = DraftLenPolicy::AcceptanceAware(AcceptanceAwarePolicy::new(0.1));
    BudgetSpecDecoder::new(cfg).expect("valid config")
}

/// Registers the `BudgetSpecDecoder` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let (group, id) = benches::seed_row("budget_spec/effective_draft_len");
    let mut g = c.benchmark_group(group);
    let fresh = ramp_down();
    g.bench_function(BenchmarkId::from_parameter(&id), |bench| {
        bench.iter(|| black_box(&fresh).effective_draft_len());
    });
    let aware = acceptance_aware();
    g.bench_function(
        BenchmarkId::from_parameter(format!("{id},acceptance_aware")),
        |bench| {
            bench.iter(|| black_box(&aware).effective_draft_len());
        },
    );
    // Every state of a request, one token per round: before the ramp, on it, and clamped.
    let mut states = Vec::with_capacity(BUDGET);
    let mut d = ramp_down();
    for _ in 0..BUDGET {
        states.push(d.clone());
        d.step(1).expect("one token always fits");
    }
    g.throughput(Throughput::Elements(BUDGET as u64));
    g.bench_function(
        BenchmarkId::from_parameter(format!("{id},all_states_batch")),
        |bench| {
            bench.iter(|| {
                black_box(&states)
                    .iter()
                    .map(BudgetSpecDecoder::effective_draft_len)
                    .sum::<usize>()
            });
        },
    );
    g.finish();

    let (group, id) = benches::seed_row("budget_spec/step");
    let mut g = c.benchmark_group(group);
    // n_accepted = 3 of the 4 drafts, then the correction token: the round emits 4 tokens.
    let emitted = 3 + 1;
    // One long-running request whose budget outlasts the benchmark (2^40 tokens; criterion
    // runs far fewer than 0.8 · 2^40 / 4 rounds), so every call is the same pre-ramp step a
    // 512-token request takes for its first 80 %: one call per iteration, no clones.
    let steady = |policy: DraftLenPolicy| {
        let mut cfg = BudgetSpecDecoderConfig::new(MAX_BUDGET, N_DRAFT);
        cfg.policy = policy;
        BudgetSpecDecoder::new(cfg).expect("valid config")
    };
    let mut long = steady(DraftLenPolicy::default());
    g.bench_function(BenchmarkId::from_parameter(&id), |bench| {
        bench.iter(|| long.step(black_box(emitted)).is_ok());
    });
    assert_eq!(long.effective_draft_len(), N_DRAFT, "the ramp was reached");
    let mut long = steady(DraftLenPolicy::AcceptanceAware(AcceptanceAwarePolicy::new(
        0.1,
    )));
    g.bench_function(
        BenchmarkId::from_parameter(format!("{id},acceptance_aware")),
        |bench| {
            bench.iter(|| long.step(black_box(emitted)).is_ok());
        },
    );
    // At α ≈ 3/4 and c = 0.1 the optimum stays at 4 drafts, so every step above was valid.
    // (Only if it ran: a criterion filter may have skipped it.)
    if long.stats().rounds > 0 {
        assert_eq!(long.last_draft_len(), N_DRAFT);
        assert_eq!(long.stats().rounds, long.stats().rejected);
    }
    // Cross-check on the seed's 512-token request: each call steps a fresh clone.
    g.bench_function(
        BenchmarkId::from_parameter(format!("{id},fresh_budget=512_batched")),
        |bench| {
            bench.iter_batched_ref(
                || fresh.clone(),
                |d| d.step(black_box(emitted)).is_ok(),
                BatchSize::NumIterations(64),
            );
        },
    );
    g.finish();
}
