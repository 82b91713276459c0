//! `RequestCostEstimator` against its oracles: exact rational line items, additivity of the
//! ledger, monotonicity, zero-cost-for-zero-usage, the KV ramp closed form, idempotency,
//! overflow, and a multi-threaded ledger against a sequential reference.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use rand::rngs::StdRng;
use squish_serving::Error;
use squish_serving::cost_estimator::{
    CostBreakdown, EstimateRequest, KvByteTime, KvSegment, MicroCredits, ModelId, ModelPricing,
    Prices, RequestCostEstimator, RequestCostEstimatorConfig, RequestId, TenantId, TenantPrices,
    TokenUsage,
};
use squish_testkit::prop;

/// Half-byte-nanoseconds per GiB-hour.
const KV_DEN: u128 = 2 * (1 << 30) * 3_600_000_000_000;

fn prices(i: u64, c: u64, o: u64, kv: u64) -> Prices {
    Prices::new(
        MicroCredits::new(i),
        MicroCredits::new(c),
        MicroCredits::new(o),
        MicroCredits::new(kv),
    )
}

/// Two models (one with a KV profile), three tenants, one override.
fn config() -> RequestCostEstimatorConfig {
    table(
        vec![
            ModelPricing::new(ModelId(1), prices(2_500_000, 1_250_000, 10_000_000, 50_000))
                .with_kv_profile(
                    36_864,
                    Duration::from_micros(150),
                    Duration::from_millis(25),
                ),
            ModelPricing::new(ModelId(2), prices(150_000, 75_000, 600_000, 7_777)),
        ],
        vec![TenantId(10), TenantId(11), TenantId(12)],
        vec![TenantPrices::new(
            ModelId(1),
            TenantId(12),
            prices(1_999_999, 333_333, 7_000_001, 123_457),
        )],
    )
}

/// A configuration with the given price table and the default ledger bound.
fn table(
    models: Vec<ModelPricing>,
    tenants: Vec<TenantId>,
    tenant_prices: Vec<TenantPrices>,
) -> RequestCostEstimatorConfig {
    let mut cfg = RequestCostEstimatorConfig::default();
    cfg.models = models;
    cfg.tenants = tenants;
    cfg.tenant_prices = tenant_prices;
    cfg
}

fn estimator() -> RequestCostEstimator {
    RequestCostEstimator::new(config()).unwrap()
}

fn random_tokens(rng: &mut StdRng) -> TokenUsage {
    TokenUsage {
        input_tokens: rng.random_range(0..200_000),
        cached_input_tokens: rng.random_range(0..200_000),
        output_tokens: rng.random_range(0..20_000),
    }
}

fn random_segments(rng: &mut StdRng) -> Vec<KvSegment> {
    let n = rng.random_range(0..6);
    (0..n)
        .map(|_| {
            KvSegment::ramp(
                Duration::from_nanos(rng.random_range(0..120_000_000_000)),
                rng.random_range(0..8u64 << 30),
                rng.random_range(0..8u64 << 30),
            )
        })
        .collect()
}

/// `|item − num/den| ≤ 1/2`, i.e. the item is a nearest integer to the exact rational.
fn assert_nearest(item: MicroCredits, num: u128, den: u128) {
    let scaled = u128::from(item.get()) * den;
    let diff = scaled.abs_diff(num);
    assert!(
        2 * diff <= den,
        "{item:?} is not a nearest integer to {num}/{den}"
    );
}

#[test]
fn line_items_are_the_exact_rationals_rounded_once() {
    let est = estimator();
    prop::check("cost_line_items_exact", 400, |rng| {
        let tokens = random_tokens(rng);
        let segs = random_segments(rng);
        let model = ModelId(rng.random_range(1..=2));
        let tenant = TenantId(rng.random_range(10..=12));
        let p = est.prices(model, tenant).unwrap();
        let kv = KvByteTime::from_segments(&segs).unwrap();
        // Independent integral: Σ (start + end) × ns.
        let half: u128 = segs
            .iter()
            .map(|s| (u128::from(s.start_bytes) + u128::from(s.end_bytes)) * s.duration.as_nanos())
            .sum();
        assert_eq!(kv.half_byte_nanos(), half);
        let c = est.price(model, tenant, &tokens, kv).unwrap();
        let tok = |n: u64, r: MicroCredits| u128::from(n) * u128::from(r.get());
        assert_nearest(
            c.input,
            tok(tokens.input_tokens, p.input_per_mtok),
            1_000_000,
        );
        assert_nearest(
            c.cached_input,
            tok(tokens.cached_input_tokens, p.cached_input_per_mtok),
            1_000_000,
        );
        assert_nearest(
            c.output,
            tok(tokens.output_tokens, p.output_per_mtok),
            1_000_000,
        );
        assert_nearest(c.kv, half * u128::from(p.kv_per_gib_hour.get()), KV_DEN);
        assert_eq!(
            c.total.get(),
            c.input.get() + c.cached_input.get() + c.output.get() + c.kv.get()
        );
        // And a float64 reference agrees to within half a micro-credit per line item (+ the
        // float's own rounding).
        let f = |n: u64, r: MicroCredits| n as f64 * r.get() as f64 / 1e6;
        let want = f(tokens.input_tokens, p.input_per_mtok)
            + f(tokens.cached_input_tokens, p.cached_input_per_mtok)
            + f(tokens.output_tokens, p.output_per_mtok)
            + kv.byte_seconds_f64() / (1u64 << 30) as f64 / 3600.0 * p.kv_per_gib_hour.get() as f64;
        assert!((c.total.get() as f64 - want).abs() <= 2.0 + 1e-9 * want);
    });
}

#[test]
fn zero_usage_costs_zero() {
    let est = estimator();
    for model in [ModelId(1), ModelId(2)] {
        for tenant in [TenantId(10), TenantId(12)] {
            let c = est
                .price(model, tenant, &TokenUsage::default(), KvByteTime::ZERO)
                .unwrap();
            assert_eq!(c, CostBreakdown::default());
            let e = est
                .estimate(model, tenant, &EstimateRequest::default())
                .unwrap();
            assert_eq!(e, CostBreakdown::default());
            // Segments of zero bytes or zero duration hold nothing.
            let segs = [
                KvSegment::step(Duration::from_secs(3600), 0),
                KvSegment::ramp(Duration::ZERO, 1 << 40, 1 << 40),
            ];
            assert_eq!(KvByteTime::from_segments(&segs).unwrap(), KvByteTime::ZERO);
        }
    }
}

#[test]
fn kv_linear_ramp_costs_half_peak_times_duration() {
    // Oracle: a ramp 0 → M over T costs M·T/2 × rate, within one unit.
    let est = estimator();
    let rate = est
        .prices(ModelId(1), TenantId(12))
        .unwrap()
        .kv_per_gib_hour;
    prop::check("kv_ramp_closed_form", 300, |rng| {
        let m: u64 = rng.random_range(0..64u64 << 30);
        let t = Duration::from_nanos(rng.random_range(0..7_200_000_000_000));
        let kv = KvByteTime::from_segments(&[KvSegment::ramp(t, 0, m)]).unwrap();
        let c = est
            .price(ModelId(1), TenantId(12), &TokenUsage::default(), kv)
            .unwrap();
        let closed =
            m as f64 * t.as_secs_f64() / 2.0 / (1u64 << 30) as f64 / 3600.0 * rate.get() as f64;
        assert!(
            (c.kv.get() as f64 - closed).abs() <= 1.0,
            "ramp 0→{m} over {t:?}: {} vs {closed}",
            c.kv.get()
        );
        // A ramp down costs the same as a ramp up, and splitting the ramp at its midpoint
        // (exact when M and T are even) does not change the integral.
        let down = KvByteTime::from_segments(&[KvSegment::ramp(t, m, 0)]).unwrap();
        assert_eq!(down, kv);
        let (m2, t2) = (m & !1, Duration::from_nanos((t.as_nanos() as u64) & !1));
        let whole = KvByteTime::from_segments(&[KvSegment::ramp(t2, 0, m2)]).unwrap();
        let halves = KvByteTime::from_segments(&[
            KvSegment::ramp(t2 / 2, 0, m2 / 2),
            KvSegment::ramp(t2 / 2, m2 / 2, m2),
        ])
        .unwrap();
        assert_eq!(whole, halves);
    });
    // Exact case: 1 GiB → 0 over 2 h at 1 credit per GiB-hour is exactly 1 credit.
    let one = RequestCostEstimator::new(table(
        vec![ModelPricing::new(ModelId(0), prices(0, 0, 0, 1_000_000))],
        vec![TenantId(0)],
        vec![],
    ))
    .unwrap();
    let kv = KvByteTime::from_segments(&[KvSegment::ramp(Duration::from_secs(7200), 1 << 30, 0)])
        .unwrap();
    assert_eq!(kv.byte_seconds_f64(), (1u64 << 30) as f64 * 3600.0);
    let c = one
        .price(ModelId(0), TenantId(0), &TokenUsage::default(), kv)
        .unwrap();
    assert_eq!(c.kv, MicroCredits::new(1_000_000));
}

#[test]
fn cost_is_monotone_in_every_input() {
    let est = estimator();
    prop::check("cost_monotone", 400, |rng| {
        let model = ModelId(rng.random_range(1..=2));
        let tenant = TenantId(rng.random_range(10..=12));
        let tokens = random_tokens(rng);
        let segs = random_segments(rng);
        let base = est
            .price(
                model,
                tenant,
                &tokens,
                KvByteTime::from_segments(&segs).unwrap(),
            )
            .unwrap();
        // Bump one input at a time.
        for field in 0..6 {
            let mut t = tokens;
            let mut s = segs.clone();
            let d = rng.random_range(0..5_000u64);
            match field {
                0 => t.input_tokens += d,
                1 => t.cached_input_tokens += d,
                2 => t.output_tokens += d,
                3 => s.push(KvSegment::ramp(
                    Duration::from_millis(d),
                    rng.random_range(0..1 << 30),
                    rng.random_range(0..1 << 30),
                )),
                4 if !s.is_empty() => {
                    let i = rng.random_range(0..s.len());
                    s[i].duration += Duration::from_micros(d);
                }
                5 if !s.is_empty() => {
                    let i = rng.random_range(0..s.len());
                    s[i].start_bytes += d << 20;
                    s[i].end_bytes += d;
                }
                _ => {}
            }
            let bumped = est
                .price(model, tenant, &t, KvByteTime::from_segments(&s).unwrap())
                .unwrap();
            for (a, b) in [
                (base.input, bumped.input),
                (base.cached_input, bumped.cached_input),
                (base.output, bumped.output),
                (base.kv, bumped.kv),
                (base.total, bumped.total),
            ] {
                assert!(b >= a, "field {field}: {b:?} < {a:?}");
            }
        }
        // The estimate is monotone in each of its three fields too.
        let req = EstimateRequest {
            input_tokens: rng.random_range(0..8192),
            cached_input_tokens: rng.random_range(0..8192),
            max_new_tokens: rng.random_range(0..4096),
        };
        let e0 = est.estimate(model, tenant, &req).unwrap();
        for field in 0..3 {
            let mut r = req;
            let d = rng.random_range(1..512);
            match field {
                0 => r.input_tokens += d,
                1 => r.cached_input_tokens += d,
                _ => r.max_new_tokens += d,
            }
            let e1 = est.estimate(model, tenant, &r).unwrap();
            assert!(
                e1.total >= e0.total && e1.kv >= e0.kv,
                "estimate field {field}"
            );
        }
    });
}

#[test]
fn estimate_equals_the_bill_of_a_request_at_nominal_speed() {
    // Oracle: the estimate's KV term is the two trapezoids a nominal request would report.
    let est = estimator();
    let (b, tp, td) = (
        36_864u64,
        Duration::from_micros(150),
        Duration::from_millis(25),
    );
    prop::check("estimate_matches_nominal_bill", 200, |rng| {
        let prompt = rng.random_range(0..16_384u64);
        let cached = rng.random_range(0..=prompt);
        let new = rng.random_range(0..4096u64);
        let req = EstimateRequest::from_prompt(prompt, cached, new).unwrap();
        let tenant = TenantId(rng.random_range(10..=12));
        let quote = est.estimate(ModelId(1), tenant, &req).unwrap();
        let segs = [
            KvSegment::ramp(tp * (prompt - cached) as u32, cached * b, prompt * b),
            KvSegment::ramp(td * new as u32, prompt * b, (prompt + new) * b),
        ];
        let tokens = TokenUsage {
            input_tokens: prompt - cached,
            cached_input_tokens: cached,
            output_tokens: new,
        };
        let bill = est
            .price(
                ModelId(1),
                tenant,
                &tokens,
                KvByteTime::from_segments(&segs).unwrap(),
            )
            .unwrap();
        assert_eq!(quote, bill);
    });
    // A model without a KV profile estimates no KV cost.
    let q = est
        .estimate(
            ModelId(2),
            TenantId(10),
            &EstimateRequest::from_prompt(512, 0, 128).unwrap(),
        )
        .unwrap();
    assert_eq!(q.kv, MicroCredits::ZERO);
    assert_eq!(q.input, MicroCredits::new(77)); // 512 × 0.15 = 76.8 → 77
    assert_eq!(q.output, MicroCredits::new(77)); // 128 × 0.6 = 76.8 → 77
}

#[test]
fn ledger_is_exactly_additive_and_idempotent() {
    prop::check("ledger_additive", 60, |rng| {
        let est = estimator();
        let mut billed = 0u64;
        let mut dups = 0u64;
        let mut conflicts = 0u64;
        for _ in 0..rng.random_range(1..200) {
            let id = RequestId(rng.random_range(0..64));
            let model = ModelId(rng.random_range(1..=2));
            let tenant = TenantId(rng.random_range(10..=12));
            let tokens = random_tokens(rng);
            let segs = random_segments(rng);
            if let Some(old) = est.record(id) {
                if rng.random_bool(0.5) {
                    // An identical repeat (same tokens and KV integral, different segment
                    // list): returns the stored record, bills nothing.
                    let before = est.totals();
                    let segs = split_to_same_integral(old.kv);
                    let r = est
                        .record_actual(id, old.model, old.tenant, old.tokens, &segs)
                        .unwrap();
                    assert!(r.duplicate);
                    assert_eq!(r.record, old);
                    assert_eq!(est.totals(), before);
                    dups += 1;
                } else {
                    let mut t = old.tokens;
                    t.output_tokens += 1;
                    let before = est.totals();
                    let e = est.record_actual(id, old.model, old.tenant, t, &segs);
                    assert_eq!(e, Err(Error::LedgerConflict { request: id.0 }));
                    assert_eq!(est.record(id), Some(old), "a conflict never overwrites");
                    assert_eq!(est.totals(), before);
                    conflicts += 1;
                }
            } else {
                let r = est.record_actual(id, model, tenant, tokens, &segs).unwrap();
                assert!(!r.duplicate);
                billed += 1;
            }
        }
        let stats = est.stats();
        assert_eq!(
            (stats.records, stats.duplicates, stats.conflicts),
            (billed, dups, conflicts)
        );
        // Additivity: the records of each tenant sum, line item by line item, to its totals,
        // and the tenants sum to the grand total.
        let records = est.records();
        assert_eq!(records.len() as u64, billed);
        let mut grand = [0u64; 5];
        let mut grand_tokens = [0u64; 3];
        for tenant in [TenantId(10), TenantId(11), TenantId(12)] {
            let mut sum = [0u64; 5];
            let mut tok = [0u64; 3];
            let mut kv = 0u128;
            let mut n = 0u64;
            for r in records.iter().filter(|r| r.tenant == tenant) {
                let c = r.cost;
                for (s, v) in sum
                    .iter_mut()
                    .zip([c.input, c.cached_input, c.output, c.kv, c.total])
                {
                    *s += v.get();
                }
                tok[0] += r.tokens.input_tokens;
                tok[1] += r.tokens.cached_input_tokens;
                tok[2] += r.tokens.output_tokens;
                kv += r.kv.half_byte_nanos();
                n += 1;
            }
            let t = est.tenant_totals(tenant).unwrap();
            let c = t.cost;
            assert_eq!(
                sum,
                [c.input, c.cached_input, c.output, c.kv, c.total].map(|m| m.get())
            );
            assert_eq!(sum[4], sum[..4].iter().sum::<u64>());
            assert_eq!(
                tok,
                [
                    t.tokens.input_tokens,
                    t.tokens.cached_input_tokens,
                    t.tokens.output_tokens
                ]
            );
            assert_eq!(t.kv.half_byte_nanos(), kv);
            assert_eq!(t.requests, n);
            for (g, s) in grand.iter_mut().zip(sum) {
                *g += s;
            }
            for (g, s) in grand_tokens.iter_mut().zip(tok) {
                *g += s;
            }
        }
        let all = est.totals();
        let c = all.cost;
        assert_eq!(
            grand,
            [c.input, c.cached_input, c.output, c.kv, c.total].map(|m| m.get())
        );
        assert_eq!(all.requests, billed);
        assert_eq!(
            grand_tokens,
            [
                all.tokens.input_tokens,
                all.tokens.cached_input_tokens,
                all.tokens.output_tokens
            ]
        );
    });
}

/// A segment list, different from the one recorded, with exactly the integral `kv`: 1-ns
/// ramps whose `start + end` add up to `kv` half-byte-nanoseconds.
fn split_to_same_integral(kv: KvByteTime) -> Vec<KvSegment> {
    let mut rest = kv.half_byte_nanos();
    let mut out = Vec::new();
    while rest > 0 {
        let part = rest.min(u128::from(u64::MAX));
        let part64 = part as u64;
        out.push(KvSegment::ramp(
            Duration::from_nanos(1),
            part64 / 2,
            part64 - part64 / 2,
        ));
        rest -= part;
    }
    out
}

#[test]
fn identical_repeat_is_not_billed_twice() {
    let est = estimator();
    let t = TokenUsage {
        input_tokens: 512,
        cached_input_tokens: 0,
        output_tokens: 128,
    };
    let segs = [KvSegment::ramp(Duration::from_secs(2), 0, 1 << 28)];
    let a = est
        .record_actual(RequestId(9), ModelId(1), TenantId(10), t, &segs)
        .unwrap();
    for _ in 0..5 {
        let b = est
            .record_actual(RequestId(9), ModelId(1), TenantId(10), t, &segs)
            .unwrap();
        assert!(b.duplicate);
        assert_eq!(b.record, a.record);
    }
    assert_eq!(est.totals().requests, 1);
    assert_eq!(est.totals().cost, a.record.cost);
    assert_eq!(est.stats().duplicates, 5);
    // The same id for another tenant or model is a conflict, not a new bill.
    for (m, tenant) in [(ModelId(2), TenantId(10)), (ModelId(1), TenantId(11))] {
        let e = est.record_actual(RequestId(9), m, tenant, t, &segs);
        assert_eq!(e, Err(Error::LedgerConflict { request: 9 }));
    }
    // Different KV is a conflict too.
    let e = est.record_actual(RequestId(9), ModelId(1), TenantId(10), t, &[]);
    assert_eq!(e, Err(Error::LedgerConflict { request: 9 }));
    assert_eq!(est.stats().conflicts, 3);
    assert_eq!(est.tenant_totals(TenantId(11)).unwrap().requests, 0);
}

#[test]
fn overflow_is_detected_and_changes_nothing() {
    let big = RequestCostEstimator::new(table(
        vec![ModelPricing::new(
            ModelId(0),
            prices(u64::MAX, u64::MAX, 1_000_000, u64::MAX),
        )],
        vec![TenantId(0)],
        vec![],
    ))
    .unwrap();
    let over = |e: Error| matches!(e, Error::Overflow { .. });
    // A line item beyond u64 micro-credits.
    let t = TokenUsage {
        input_tokens: 2_000_000,
        ..Default::default()
    };
    assert!(over(
        big.price(ModelId(0), TenantId(0), &t, KvByteTime::ZERO)
            .unwrap_err()
    ));
    // Line items that fit but whose total does not.
    let t = TokenUsage {
        input_tokens: 1_000_000,
        cached_input_tokens: 1_000_000,
        output_tokens: 0,
    };
    assert!(over(
        big.price(ModelId(0), TenantId(0), &t, KvByteTime::ZERO)
            .unwrap_err()
    ));
    // KV byte-time beyond u128, and a KV product beyond u128.
    let huge = [KvSegment::step(Duration::MAX, u64::MAX); 2];
    assert!(over(KvByteTime::from_segments(&huge).unwrap_err()));
    let kv =
        KvByteTime::from_segments(&[KvSegment::step(Duration::from_secs(3600), u64::MAX)]).unwrap();
    assert!(over(
        big.price(ModelId(0), TenantId(0), &TokenUsage::default(), kv)
            .unwrap_err()
    ));
    // Estimates of absurd sizes.
    let r = EstimateRequest {
        input_tokens: u64::MAX,
        cached_input_tokens: u64::MAX,
        max_new_tokens: u64::MAX,
    };
    assert!(over(big.estimate(ModelId(0), TenantId(0), &r).unwrap_err()));
    // Aggregates: two records whose sum overflows; the second is rejected, nothing changes.
    let t = TokenUsage {
        output_tokens: u64::MAX / 2 + 1,
        ..Default::default()
    };
    big.record_actual(RequestId(1), ModelId(0), TenantId(0), t, &[])
        .unwrap();
    let before = (big.totals(), big.records(), big.stats());
    let e = big
        .record_actual(RequestId(2), ModelId(0), TenantId(0), t, &[])
        .unwrap_err();
    assert!(over(e));
    assert_eq!((big.totals(), big.records(), big.stats()), before);
    assert_eq!(big.record(RequestId(2)), None);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let est = estimator();
    let t = TokenUsage::default();
    let e = est.estimate(ModelId(9), TenantId(10), &EstimateRequest::default());
    assert_eq!(
        e,
        Err(Error::UnknownModel {
            context: "RequestCostEstimator::estimate",
            model: 9
        })
    );
    let e = est.record_actual(RequestId(0), ModelId(1), TenantId(99), t, &[]);
    insta::assert_snapshot!(e.unwrap_err(), @"unknown tenant 99 in RequestCostEstimator::record_actual");
    assert!(matches!(
        est.tenant_totals(TenantId(99)),
        Err(Error::UnknownTenant { tenant: 99, .. })
    ));
    assert!(matches!(
        est.prices(ModelId(3), TenantId(10)),
        Err(Error::UnknownModel { .. })
    ));
    assert_eq!(est.stats().records, 0);
    for secs in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1e-9, 1e30] {
        assert!(
            matches!(
                KvSegment::from_secs_f64(secs, 0, 1),
                Err(Error::InvalidInput { .. })
            ),
            "{secs}"
        );
    }
    insta::assert_snapshot!(
        KvSegment::from_secs_f64(f64::NAN, 0, 1).unwrap_err(),
        @"invalid input to KvSegment::from_secs_f64: duration must be finite and >= 0, got NaN"
    );
    assert_eq!(
        KvSegment::from_secs_f64(1.5, 0, 8).unwrap(),
        KvSegment::ramp(Duration::from_millis(1500), 0, 8)
    );
    insta::assert_snapshot!(
        EstimateRequest::from_prompt(10, 11, 5).unwrap_err(),
        @"invalid input to EstimateRequest::from_prompt: cached prefix (11 tokens) longer than the prompt (10 tokens)"
    );
}

#[test]
fn ledger_capacity_is_enforced() {
    let mut cfg = config();
    cfg.max_ledger_entries = 2;
    let est = RequestCostEstimator::new(cfg).unwrap();
    let t = TokenUsage::default();
    est.record_actual(RequestId(1), ModelId(1), TenantId(10), t, &[])
        .unwrap();
    est.record_actual(RequestId(2), ModelId(1), TenantId(10), t, &[])
        .unwrap();
    // A repeat still answers when full; a new request does not fit.
    assert!(
        est.record_actual(RequestId(2), ModelId(1), TenantId(10), t, &[])
            .unwrap()
            .duplicate
    );
    assert_eq!(
        est.record_actual(RequestId(3), ModelId(1), TenantId(10), t, &[]),
        Err(Error::LedgerFull { capacity: 2 })
    );
    assert_eq!(est.stats().records, 2);
}

#[test]
fn config_rules() {
    assert!(RequestCostEstimatorConfig::default().validate().is_ok());
    let mut c = config();
    c.models
        .push(ModelPricing::new(ModelId(2), Prices::default()));
    insta::assert_snapshot!(c.validate().unwrap_err(), @"invalid RequestCostEstimator.models: model ids must be unique, got model 2 twice");
    let mut c = config();
    c.tenants.push(TenantId(10));
    insta::assert_snapshot!(c.validate().unwrap_err(), @"invalid RequestCostEstimator.tenants: tenant ids must be unique, got tenant 10 twice");
    let mut c = config();
    c.tenant_prices.push(TenantPrices::new(
        ModelId(5),
        TenantId(10),
        Prices::default(),
    ));
    insta::assert_snapshot!(c.validate().unwrap_err(), @"invalid RequestCostEstimator.tenant_prices: must name a model listed in models, got model 5");
    let mut c = config();
    c.tenant_prices.push(TenantPrices::new(
        ModelId(1),
        TenantId(50),
        Prices::default(),
    ));
    insta::assert_snapshot!(c.validate().unwrap_err(), @"invalid RequestCostEstimator.tenant_prices: must name a tenant listed in tenants, got tenant 50");
    let mut c = config();
    c.tenant_prices.push(TenantPrices::new(
        ModelId(1),
        TenantId(12),
        Prices::default(),
    ));
    insta::assert_snapshot!(c.validate().unwrap_err(), @"invalid RequestCostEstimator.tenant_prices: at most one override per (model, tenant), got model 1 tenant 12 twice");
    let mut c = config();
    c.max_ledger_entries = 0;
    insta::assert_snapshot!(c.validate().unwrap_err(), @"invalid RequestCostEstimator.max_ledger_entries: must be >= 1, got 0");
    assert!(matches!(
        RequestCostEstimator::new(c),
        Err(Error::Config(_))
    ));
}

#[test]
fn concurrent_ledger_matches_a_sequential_reference() {
    // 8 threads record 4000 requests; every request id is recorded by two threads with the
    // same usage. The shared ledger must hold each once and equal a sequential replay.
    let mut rng = squish_testkit::rng(0xc057);
    let work: Vec<(RequestId, ModelId, TenantId, TokenUsage, Vec<KvSegment>)> = (0..4000)
        .map(|i| {
            (
                RequestId(i),
                ModelId(rng.random_range(1..=2)),
                TenantId(rng.random_range(10..=12)),
                random_tokens(&mut rng),
                random_segments(&mut rng),
            )
        })
        .collect();
    let work = Arc::new(work);
    let shared = Arc::new(estimator());
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let (work, est) = (Arc::clone(&work), Arc::clone(&shared));
            std::thread::spawn(move || {
                // Threads k and k + 4 take the items with i % 4 == k % 4, in opposite orders.
                let mut mine: Vec<_> = work.iter().filter(|w| w.0.0 % 4 == k % 4).collect();
                if k >= 4 {
                    mine.reverse();
                }
                let mut dups = 0;
                for (id, m, t, tok, segs) in mine {
                    dups += u64::from(
                        est.record_actual(*id, *m, *t, *tok, segs)
                            .unwrap()
                            .duplicate,
                    );
                }
                dups
            })
        })
        .collect();
    let dups: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let reference = estimator();
    for (id, m, t, tok, segs) in work.iter() {
        reference.record_actual(*id, *m, *t, *tok, segs).unwrap();
    }
    assert_eq!(dups, 4000);
    assert_eq!(shared.stats().duplicates, 4000);
    assert_eq!(shared.records(), reference.records());
    assert_eq!(shared.totals(), reference.totals());
    for t in [TenantId(10), TenantId(11), TenantId(12)] {
        assert_eq!(
            shared.tenant_totals(t).unwrap(),
            reference.tenant_totals(t).unwrap()
        );
    }
}

#[test]
fn sparse_ids_price_like_dense_ids() {
    // Ids far apart take the hash-table path; prices must not depend on the representation.
    let sparse = RequestCostEstimator::new(table(
        vec![ModelPricing::new(
            ModelId(4_000_000_000),
            prices(2_500_000, 1_250_000, 10_000_000, 50_000),
        )],
        vec![TenantId(3_000_000_000), TenantId(7)],
        vec![TenantPrices::new(
            ModelId(4_000_000_000),
            TenantId(7),
            prices(1, 2, 3, 4),
        )],
    ))
    .unwrap();
    let dense = estimator();
    let req = EstimateRequest::from_prompt(4096, 1024, 512).unwrap();
    let t = TokenUsage {
        input_tokens: 3,
        cached_input_tokens: 2,
        output_tokens: 1,
    };
    let a = sparse.price(
        ModelId(4_000_000_000),
        TenantId(3_000_000_000),
        &t,
        KvByteTime::ZERO,
    );
    let b = dense.price(ModelId(1), TenantId(10), &t, KvByteTime::ZERO);
    assert_eq!(a, b);
    assert_eq!(
        sparse.prices(ModelId(4_000_000_000), TenantId(7)).unwrap(),
        prices(1, 2, 3, 4)
    );
    assert!(matches!(
        sparse.estimate(ModelId(1), TenantId(7), &req),
        Err(Error::UnknownModel { model: 1, .. })
    ));
    assert!(matches!(
        sparse.estimate(ModelId(4_000_000_000), TenantId(8), &req),
        Err(Error::UnknownTenant { tenant: 8, .. })
    ));
    assert!(matches!(
        dense.estimate(ModelId(u32::MAX), TenantId(10), &req),
        Err(Error::UnknownModel { .. })
    ));
}
