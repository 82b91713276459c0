//! `FaultHandler::evaluate` at the seed's two points, a batch of 8 and the default configuration:
//! pressure 0.95 on a handler settled at `ShrinkBatch` (three actions active, as in the seed's
//! "3-action policy check", computing bytes to free and the shrunk batch) and pressure 0.50 on a
//! handler at `Normal` (the no-action fast path). The handlers are brought to their level outside
//! the timed closure; each timed call re-evaluates the steady state at one fixed `now`.
//!
//! The timed closure returns the `Decision` (unwrapped, as a caller's `?` would), so the
//! benchmark measures the evaluation and the use of its result.
//!
//! Each call takes a few nanoseconds, so timer overhead matters: each is measured as a single
//! call with criterion's `iter`, which reads the clock once per sample around a loop of `iters`
//! calls (criterion grows `iters` until a sample lasts milliseconds), so the cost of reading the
//! timer is spread over millions of calls. `black_box` on the handler and the inputs keeps the
//! compiler from hoisting or folding the calls out of that loop.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use squish_serving::{DegradationLevel, FaultHandler, FaultHandlerConfig};

/// Registers the `FaultHandler` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let t0 = Instant::now();
    for (key, pressure, level) in [
        (
            "fault_tolerance/evaluate_high_pressure",
            0.95,
            DegradationLevel::ShrinkBatch,
        ),
        (
            "fault_tolerance/evaluate_low_pressure",
            0.50,
            DegradationLevel::Normal,
        ),
    ] {
        let mut h = FaultHandler::new(FaultHandlerConfig::default()).expect("default config");
        // One escalation per interval: feed the pressure until the level settles.
        let mut now = t0;
        for _ in 0..8 {
            now += Duration::from_secs(1);
            h.evaluate(pressure, 8, now).expect("valid pressure");
        }
        assert_eq!(h.level(), level);
        let (group, id) = benches::seed_row(key);
        let mut g = c.benchmark_group(group);
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                black_box(&mut h)
                    .evaluate(black_box(pressure), black_box(8), now)
                    .expect("valid pressure")
            });
        });
        g.finish();
    }
}
