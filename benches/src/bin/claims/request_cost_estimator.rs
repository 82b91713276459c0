//! Claim `cost_estimator` ("billing accuracy"): the seed billed in `f64` credits. This measures
//! what that costs against [`RequestCostEstimator`]'s exact integer micro-credits:
//!
//! 1. the seed's own example, 10⁶ charges of 0.001 credit summed in `f64`, vs the exact total;
//! 2. per-request billing of the real Azure LLM inference trace (conversation service,
//!    `shared/data/azure-llm-inference-2023/conv.csv`, CC-BY 4.0, Patel et al., "Splitwise",
//!    ISCA 2024) at list-style prices, in `f64` as the seed does and in our ledger, both against
//!    the exact rational total; plus the order dependence of the `f64` total and whether
//!    per-tenant totals add up to the grand total;
//! 3. what one NaN input and a replay of retried requests do to each.

use std::time::Duration;

use serde_json::json;
use squish_serving::cost_estimator::{
    KvByteTime, KvSegment, MicroCredits, ModelId, ModelPricing, Prices, RequestCostEstimator,
    RequestCostEstimatorConfig, RequestId, TenantId, TokenUsage,
};

use crate::{Measured, Opts};

/// Input price, credits per million tokens (a list-style price).
const INPUT_PER_MTOK: f64 = 2.50;
/// Output price, credits per million tokens.
const OUTPUT_PER_MTOK: f64 = 10.00;
/// KV price, credits per GiB-hour.
const KV_PER_GIB_HOUR: f64 = 0.05;
/// KV bytes per token of a Llama-3-8B-shaped model: 32 layers × 8 KV heads × 128 dims × K and
/// V × 2 bytes.
const KV_BYTES_PER_TOKEN: u64 = 131_072;
/// Nominal prefill time per prompt token and decode time per generated token.
const PREFILL_NS: u64 = 100_000;
const DECODE_NS: u64 = 20_000_000;
/// Tenants the trace's requests are spread over (request i → tenant i mod TENANTS).
const TENANTS: u32 = 8;
/// Half-byte-nanoseconds per GiB-hour.
const KV_DEN: u128 = 2 * (1 << 30) * 3_600_000_000_000;

/// One request of the trace.
#[derive(Clone, Copy)]
struct Req {
    prompt: u64,
    output: u64,
}

fn load_trace() -> Option<Vec<Req>> {
    let path = squish_testkit::shared_dir()?.join("data/azure-llm-inference-2023/conv.csv");
    let text = std::fs::read_to_string(path).ok()?;
    let rows = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            let _ts = f.next()?;
            Some(Req {
                prompt: f.next()?.trim().parse().ok()?,
                output: f.next()?.trim().parse().ok()?,
            })
        })
        .collect::<Vec<_>>();
    (!rows.is_empty()).then_some(rows)
}

/// The request's KV history at nominal speed: a prefill ramp 0 → prompt and a decode ramp
/// prompt → prompt + output.
fn segments(r: Req) -> [KvSegment; 2] {
    let b = KV_BYTES_PER_TOKEN;
    [
        KvSegment::ramp(Duration::from_nanos(r.prompt * PREFILL_NS), 0, r.prompt * b),
        KvSegment::ramp(
            Duration::from_nanos(r.output * DECODE_NS),
            r.prompt * b,
            (r.prompt + r.output) * b,
        ),
    ]
}

/// The seed's way: per-token prices in `f64` credits, the KV term as float GiB-hours.
fn float_cost(r: Req) -> f64 {
    let gib = (1u64 << 30) as f64;
    let b = KV_BYTES_PER_TOKEN as f64;
    let (p, o) = (r.prompt as f64, r.output as f64);
    let prefill_h = p * PREFILL_NS as f64 / 3.6e12;
    let decode_h = o * DECODE_NS as f64 / 3.6e12;
    let gib_hours = (p * b / 2.0 * prefill_h + (2.0 * p + o) * b / 2.0 * decode_h) / gib;
    p * (INPUT_PER_MTOK / 1e6) + o * (OUTPUT_PER_MTOK / 1e6) + gib_hours * KV_PER_GIB_HOUR
}

fn mc(credits: f64) -> MicroCredits {
    MicroCredits::from_credits_f64(credits).expect("a valid price")
}

fn estimator(n: usize) -> RequestCostEstimator {
    let mut cfg = RequestCostEstimatorConfig::default();
    cfg.models.push(ModelPricing::new(
        ModelId(0),
        Prices::new(
            mc(INPUT_PER_MTOK),
            mc(INPUT_PER_MTOK),
            mc(OUTPUT_PER_MTOK),
            mc(KV_PER_GIB_HOUR),
        ),
    ));
    cfg.tenants = (0..TENANTS).map(TenantId).collect();
    cfg.max_ledger_entries = n.max(1);
    RequestCostEstimator::new(cfg).expect("a valid config")
}

/// `a − b` in credits, where `b` is an exact amount of micro-credits plus a fraction of one.
fn credits_minus(a: f64, b_micros: u64, b_frac: f64) -> f64 {
    (a - b_micros as f64 / 1e6) - b_frac / 1e6
}

pub(super) fn measure(opts: Opts) -> Measured {
    // 1. The seed's example: 10⁶ × 0.001 credit.
    let n: u64 = if opts.quick { 100_000 } else { 1_000_000 };
    let mut float_sum = 0.0f64;
    let mut exact = MicroCredits::ZERO;
    let milli = mc(0.001);
    for _ in 0..n {
        float_sum += 0.001;
        exact = exact.checked_add(milli).expect("no overflow");
    }
    let small_drift = credits_minus(float_sum, exact.get(), 0.0);

    let mut details = json!({
        "sum_of_0.001": {
            "n": n,
            "f64_total_credits": float_sum,
            "exact_total": exact.to_string(),
            "f64_drift_credits": small_drift,
        }
    });
    let mut summary =
        format!("f64 sum of {n} × 0.001 credit drifts {small_drift:+.3e} credits (integer: exact)");

    // 2. The Azure conversation trace.
    if let Some(trace) = load_trace() {
        let est = estimator(trace.len());
        let mut float_total = 0.0f64;
        let mut float_tenant = vec![0.0f64; TENANTS as usize];
        let mut num_tok: u128 = 0; // exact token cost, pico-credits
        let mut num_kv: u128 = 0; // exact KV cost, µcr / KV_DEN
        let rate = |c: f64| u128::from(mc(c).get());
        for (i, &r) in trace.iter().enumerate() {
            let c = float_cost(r);
            float_total += c;
            float_tenant[i % TENANTS as usize] += c;
            let tokens = TokenUsage {
                input_tokens: r.prompt,
                cached_input_tokens: 0,
                output_tokens: r.output,
            };
            let segs = segments(r);
            est.record_actual(
                RequestId(i as u64),
                ModelId(0),
                TenantId(i as u32 % TENANTS),
                tokens,
                &segs,
            )
            .expect("billable");
            num_tok += u128::from(r.prompt) * rate(INPUT_PER_MTOK)
                + u128::from(r.output) * rate(OUTPUT_PER_MTOK);
            num_kv += KvByteTime::from_segments(&segs)
                .expect("fits")
                .half_byte_nanos()
                * rate(KV_PER_GIB_HOUR);
        }
        // The exact rational total, as whole micro-credits plus a fraction of one.
        let whole = num_tok / 1_000_000 + num_kv / KV_DEN;
        let frac = (num_tok % 1_000_000) as f64 / 1e6 + (num_kv % KV_DEN) as f64 / KV_DEN as f64;
        let exact_micros = u64::try_from(whole).expect("fits u64");
        let ledger = est.totals().cost.total;
        let float_drift = credits_minus(float_total, exact_micros, frac);
        let ledger_vs_exact = credits_minus(ledger.as_credits_f64(), exact_micros, frac);
        // Where the ledger's rounding lands: token line items here are multiples of half a
        // micro-credit (ties to even, unbiased); KV line items are arbitrary fractions.
        let ledger_cost = est.totals().cost;
        let kv_whole = u64::try_from(num_kv / KV_DEN).expect("fits u64");
        let kv_frac = (num_kv % KV_DEN) as f64 / KV_DEN as f64;
        let ledger_kv_vs_exact = credits_minus(ledger_cost.kv.as_credits_f64(), kv_whole, kv_frac);
        let kv_zero_items = est
            .records()
            .iter()
            .filter(|r| r.cost.kv.get() == 0)
            .count();

        // Order dependence of the float total, and per-tenant additivity.
        let mut sorted: Vec<f64> = trace.iter().map(|&r| float_cost(r)).collect();
        sorted.sort_by(f64::total_cmp);
        let float_ascending: f64 = sorted.iter().sum();
        let float_descending: f64 = sorted.iter().rev().sum();
        let float_by_tenant: f64 = float_tenant.iter().sum();
        let mut ledger_by_tenant = 0u64;
        for t in 0..TENANTS {
            ledger_by_tenant += est
                .tenant_totals(TenantId(t))
                .expect("known")
                .cost
                .total
                .get();
        }
        let ledger_additive = ledger_by_tenant == ledger.get();
        let record_sum: u64 = est.records().iter().map(|r| r.cost.total.get()).sum();

        // 3a. One NaN input (a duration that telemetry reported as NaN).
        let poisoned = float_total + f64::NAN * KV_PER_GIB_HOUR + float_cost(trace[0]);
        let nan_rejected = KvSegment::from_secs_f64(f64::NAN, 0, 1 << 20).is_err();
        let nan_state_unchanged = est.totals().cost.total == ledger;

        // 3b. Replay 1 % of the requests (client retries): the seed bills them again.
        let mut float_rebilled = 0.0f64;
        let mut replays = 0u64;
        for (i, &r) in trace.iter().enumerate().step_by(100) {
            float_rebilled += float_cost(r);
            let tokens = TokenUsage {
                input_tokens: r.prompt,
                cached_input_tokens: 0,
                output_tokens: r.output,
            };
            let rec = est
                .record_actual(
                    RequestId(i as u64),
                    ModelId(0),
                    TenantId(i as u32 % TENANTS),
                    tokens,
                    &segments(r),
                )
                .expect("an identical repeat");
            assert!(rec.duplicate);
            replays += 1;
        }
        let ledger_after_replay = est.totals().cost.total;

        details["azure_conv"] = json!({
            "requests": trace.len(),
            "prices": {
                "input_credits_per_mtok": INPUT_PER_MTOK,
                "output_credits_per_mtok": OUTPUT_PER_MTOK,
                "kv_credits_per_gib_hour": KV_PER_GIB_HOUR,
                "kv_bytes_per_token": KV_BYTES_PER_TOKEN,
                "prefill_ns_per_token": PREFILL_NS,
                "decode_ns_per_token": DECODE_NS,
            },
            "exact_total_micros": exact_micros,
            "exact_total_fraction_of_a_micro": frac,
            "f64_total_credits": float_total,
            "f64_drift_vs_exact_credits": float_drift,
            "ledger_total": ledger.to_string(),
            "ledger_vs_exact_credits": ledger_vs_exact,
            "ledger_line_items": 4 * trace.len(),
            "ledger_rounding_bound_credits": 0.5e-6 * (4 * trace.len()) as f64,
            "ledger_kv_vs_exact_credits": ledger_kv_vs_exact,
            "ledger_kv_total": ledger_cost.kv.to_string(),
            "kv_line_items_rounded_to_zero": kv_zero_items,
            "f64_ascending_minus_trace_order_credits": float_ascending - float_total,
            "f64_descending_minus_trace_order_credits": float_descending - float_total,
            "f64_tenant_sum_minus_total_credits": float_by_tenant - float_total,
            "ledger_tenant_sum_equals_total": ledger_additive,
            "ledger_record_sum_equals_total": record_sum == ledger.get(),
            "one_nan": {
                "f64_total_after": poisoned.to_string(),
                "ledger_rejects_with_typed_error": nan_rejected,
                "ledger_total_unchanged": nan_state_unchanged,
            },
            "replayed_requests": replays,
            "f64_double_billed_credits": float_rebilled,
            "ledger_double_billed": ledger_after_replay.get() - ledger.get(),
        });
        summary = format!(
            "{summary}; Azure conv ({} requests, {:.2} credits): f64 per-request billing drifts \
             {float_drift:+.2e} credits from the exact rational total; the integer ledger is \
             {ledger_vs_exact:+.2e} from it (one rounding to the micro-credit per line item, \
             {ledger_kv_vs_exact:+.2e} of it on sub-micro-credit KV items) and its tenants sum \
             to its total exactly: {ledger_additive}; f64 order \
             dependence up to {:.1e} credits; one NaN makes the f64 total NaN (ours: typed \
             error); {replays} retried requests double-bill {float_rebilled:.4} credits in f64 \
             (ours: 0)",
            trace.len(),
            ledger.as_credits_f64(),
            (float_ascending - float_total)
                .abs()
                .max((float_descending - float_total).abs()),
        );
    } else {
        details["azure_conv"] = json!("shared/data/azure-llm-inference-2023/conv.csv not found");
        summary.push_str("; Azure trace not found (shared/ missing)");
    }
    Measured { summary, details }
}
