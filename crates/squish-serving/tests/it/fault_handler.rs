//! `FaultHandler` through the public API, on a `FakeClock`: a pressure ramp up and back down.

use std::time::Duration;

use squish_serving::{
    Action, ActiveRequest, DegradationLevel, FaultHandler, FaultHandlerConfig, RequestId,
};
use squish_testkit::clock::FakeClock;

/// A ramp to full pressure climbs one level per escalation interval in the canonical order,
/// sheds the lowest-priority requests, and the way back down takes one dwell per level; the
/// counters record exactly those eight transitions.
#[test]
fn ramp_up_and_down() {
    let clock = FakeClock::new();
    let mut cfg = FaultHandlerConfig::default();
    cfg.capacity_bytes = 1000;
    cfg.min_batch = 2;
    let mut h = FaultHandler::new(cfg.clone()).unwrap();
    let tick = Duration::from_millis(50);
    let mut seen = vec![h.level()];
    for _ in 0..40 {
        clock.advance(tick);
        let d = h.evaluate(1.0, 16, clock.now()).unwrap();
        if d.changed() {
            seen.push(d.level);
        }
    }
    // 40 ticks of 50 ms = 2 s: room for all four escalations at 200 ms each.
    assert_eq!(seen, DegradationLevel::ALL);
    let d = h.evaluate(1.0, 16, clock.now()).unwrap();
    assert_eq!(d.actions(), &Action::ALL);
    assert_eq!(d.bytes_to_free, 300); // 1000 used down to the 0.70 low watermark
    assert_eq!(d.batch_size, 11); // floor(16 * 0.70 / 1.0)

    let batch: Vec<ActiveRequest> = (0..6)
        .map(|i| ActiveRequest {
            id: RequestId(i),
            priority: (i % 3) as u32,
            kv_bytes: 100,
        })
        .collect();
    let mut shed = Vec::new();
    h.select_shed_into(&d, &batch, &mut shed).unwrap();
    assert_eq!(shed, [3, 0, 4].map(RequestId)); // priority 0 (newest first), then priority 1

    let mut down = Vec::new();
    for _ in 0..400 {
        clock.advance(tick);
        let d = h.evaluate(0.1, 16, clock.now()).unwrap();
        if d.changed() {
            down.push((d.level, clock.elapsed()));
        }
    }
    let levels: Vec<_> = down.iter().map(|&(l, _)| l).collect();
    assert_eq!(
        levels,
        [
            DegradationLevel::ShrinkBatch,
            DegradationLevel::DisableDrafting,
            DegradationLevel::EvictKv,
            DegradationLevel::Normal
        ]
    );
    for w in down.windows(2) {
        assert!(w[1].1 - w[0].1 >= cfg.min_dwell);
    }
    let s = h.stats();
    assert_eq!((s.activated, s.deactivated), ([1; 4], [1; 4]));
    assert_eq!(s.transitions(), 8);
}
