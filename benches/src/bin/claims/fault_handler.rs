//! `fault_tolerance`: the seed claims that ordered degradation prevents OOM.
//!
//! A deterministic discrete-time simulation of one GPU serving a ramping overload, driven by the
//! real Azure LLM inference trace (`shared/data/azure-llm-inference-2023/conv.csv`: arrival
//! times, prompt and output lengths; Patel et al., "Splitwise", ISCA 2024, CC-BY 4.0). The first
//! 4000 requests (1000 with `--quick`) are replayed with their inter-arrival gaps compressed by a
//! factor ramping linearly from 0.5× to 3× the trace's rate, so pressure ramps past capacity.
//! (If `shared/` is absent, a seeded synthetic trace stands in and the details say so.)
//!
//! The model, stated so it can be argued with:
//! - memory is the KV bytes of the running requests: (prompt + generated tokens) × 512 KiB
//!   (Llama-2-7B in fp16: 2 × 32 layers × 4096 × 2 bytes), plus 1/8 of that for the draft model's
//!   KV while speculative drafting is on; capacity 16 GiB of KV (32 768 tokens);
//! - one decode step every 25 ms: each running request gains 1 token, or 1.5 on average while
//!   drafting is on (2 tokens every other step); a request's prompt KV is allocated when it is
//!   admitted; at most 64 running requests;
//! - a request that waits 30 s without starting times out (both engines);
//! - memory above capacity is an OOM: the engine crashes and every running request is lost.
//!
//! Two engines see the same arrivals:
//! - **baseline** (no policy): admits the next request whenever its prompt fits in free memory,
//!   drafting always on; decode growth of the admitted requests then runs it out of memory;
//! - **FaultHandler**: every step feeds the pressure (used / capacity) to a [`FaultHandler`]
//!   with the default watermarks and acts on the decision, cheapest action first: `EvictKv`
//!   swaps the newest running requests to host memory (4 GiB, vLLM's default swap space) until
//!   `bytes_to_free` is covered or swap is full; `DisableDrafting` turns drafting off;
//!   `ShrinkBatch` preempts the newest requests beyond `batch_size` back to the queue (vLLM's
//!   recompute preemption; they keep their progress); `ShedLoad` drops the requests
//!   [`FaultHandler::select_shed_into`] lists (priorities are synthetic: id mod 3), stopping once
//!   memory is back at the low watermark. It admits (swapped requests first) only at `Normal`
//!   and only while pressure stays below `evict_kv.enter`. It runs twice: with 4 GiB of swap,
//!   and with none (so `EvictKv` frees nothing and the later levels must act).
//!
//! A third engine isolates the admission rule: it admits like the FaultHandler engine (below
//! `evict_kv.enter`) but takes no degradation action.
//!
//! Two scenarios: the trace as recorded, and the same arrivals with every output length ×4
//! (long, reasoning-style generations), where memory grows after admission by more than an
//! admission headroom can foresee.
//!
//! Served = completed within the run (until everything is done, or 300 s after the last
//! arrival).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{Value, json};
use squish_serving::{Action, ActiveRequest, DegradationLevel, FaultHandler, FaultHandlerConfig};

use super::{Measured, Opts};

const KV_BYTES_PER_TOKEN: u64 = 512 << 10;
const CAPACITY: u64 = 16 << 30;
const SWAP_BYTES: u64 = 4 << 30;
const STEP: f64 = 0.025;
const MAX_BATCH: usize = 64;
const QUEUE_TIMEOUT: f64 = 30.0;
const DRAIN: f64 = 300.0;

#[derive(Debug, Clone)]
struct Req {
    id: u64,
    arrival: f64,
    prompt: u64,
    output: u64,
    generated: u64,
    started: bool,
}

impl Req {
    fn tokens(&self) -> u64 {
        self.prompt + self.generated
    }

    fn kv_bytes(&self, drafting: bool) -> u64 {
        let b = self.tokens() * KV_BYTES_PER_TOKEN;
        if drafting { b + b / 8 } else { b }
    }

    fn priority(&self) -> u32 {
        (self.id % 3) as u32
    }
}

/// `(arrival seconds from the first request, prompt tokens, output tokens)`.
fn load_trace(n: usize) -> (Vec<(f64, u64, u64)>, &'static str) {
    let path = squish_testkit::shared_dir()
        .map(|d| d.join("data/azure-llm-inference-2023/conv.csv"))
        .filter(|p| p.is_file());
    if let Some(path) = path {
        let text = std::fs::read_to_string(path).expect("conv.csv is readable");
        let mut rows = Vec::with_capacity(n);
        for line in text.lines().skip(1).take(n) {
            let mut f = line.split(',');
            let (ts, ctx, out_tokens) = (f.next(), f.next(), f.next());
            let (Some(ts), Some(ctx), Some(out_tokens)) = (ts, ctx, out_tokens) else {
                panic!("bad conv.csv row {line:?}")
            };
            let (date, time) = ts.split_once(' ').expect("timestamp has a date and a time");
            let day: f64 = date[8..10].parse().expect("day of month");
            let mut hms = time
                .split(':')
                .map(|x| x.parse::<f64>().expect("time field"));
            let (h, m, s) = (hms.next(), hms.next(), hms.next());
            let secs = day * 86_400.0
                + h.unwrap_or(0.0) * 3600.0
                + m.unwrap_or(0.0) * 60.0
                + s.unwrap_or(0.0);
            rows.push((
                secs,
                ctx.trim().parse().expect("ContextTokens"),
                out_tokens
                    .trim()
                    .parse::<u64>()
                    .expect("GeneratedTokens")
                    .max(1),
            ));
        }
        let t0 = rows.first().map_or(0.0, |r| r.0);
        for r in &mut rows {
            r.0 -= t0;
        }
        (rows, "azure-llm-inference-2023/conv.csv")
    } else {
        let mut rng = benches::input_rng();
        let mut t = 0.0;
        let rows = (0..n)
            .map(|_| {
                t += -(1.0 - rng.random::<f64>()).ln() / 5.4;
                (t, rng.random_range(50..2500), rng.random_range(10..500))
            })
            .collect();
        (
            rows,
            "synthetic (shared/ not found): Poisson 5.4/s, uniform lengths",
        )
    }
}

/// Compresses inter-arrival gaps by a rate multiplier ramping from 0.5 to 3.
fn ramp(trace: &[(f64, u64, u64)]) -> Vec<Req> {
    let n = trace.len().max(1) as f64;
    let mut t = 0.0;
    let mut prev = trace.first().map_or(0.0, |r| r.0);
    trace
        .iter()
        .enumerate()
        .map(|(i, &(at, prompt, output))| {
            let rate = 0.5 + 2.5 * i as f64 / n;
            t += (at - prev) / rate;
            prev = at;
            Req {
                id: i as u64,
                arrival: t,
                prompt,
                output,
                generated: 0,
                started: false,
            }
        })
        .collect()
}

#[derive(Debug, Default)]
struct Outcome {
    completed: u64,
    lost_to_oom: u64,
    shed: u64,
    timed_out: u64,
    unfinished: u64,
    oom_events: u64,
    peak_pressure: f64,
    swapped_out: u64,
    preempted: u64,
    steps_at_level: [u64; 5],
    drafting_off_steps: u64,
    stats: Option<squish_serving::FaultStats>,
    sim_seconds: f64,
}

fn used_bytes(running: &[Req], drafting: bool) -> u64 {
    running.iter().map(|r| r.kv_bytes(drafting)).sum()
}

#[allow(clippy::too_many_lines)]
/// Runs one engine: `policy` is the FaultHandler (or none); without a policy the engine admits
/// while memory after admission stays at most `admit_limit` bytes.
fn simulate(
    arrivals: &[Req],
    mut policy: Option<FaultHandler>,
    swap_bytes: u64,
    admit_limit: u64,
) -> Outcome {
    let mut out = Outcome::default();
    let t0 = Instant::now();
    let low_bytes = (FaultHandlerConfig::default().evict_kv.exit * CAPACITY as f64) as u64;
    let admit_below = (FaultHandlerConfig::default().evict_kv.enter * CAPACITY as f64) as u64;
    let end = arrivals.last().map_or(0.0, |r| r.arrival) + DRAIN;
    let (mut next, mut step) = (0usize, 0u64);
    let mut waiting: VecDeque<Req> = VecDeque::new();
    let mut running: Vec<Req> = Vec::new();
    let mut swapped: Vec<Req> = Vec::new();
    let mut shed_ids = Vec::new();
    loop {
        let now = step as f64 * STEP;
        if now > end
            || (next == arrivals.len()
                && waiting.is_empty()
                && running.is_empty()
                && swapped.is_empty())
        {
            break;
        }
        while next < arrivals.len() && arrivals[next].arrival <= now {
            waiting.push_back(arrivals[next].clone());
            next += 1;
        }
        let before = waiting.len();
        waiting.retain(|r| r.started || now - r.arrival <= QUEUE_TIMEOUT);
        out.timed_out += (before - waiting.len()) as u64;

        let mut drafting = true;
        if let Some(h) = policy.as_mut() {
            let used = used_bytes(&running, h.level() < DegradationLevel::DisableDrafting);
            let pressure = (used as f64 / CAPACITY as f64).min(1.0);
            let instant = t0 + Duration::from_secs_f64(now);
            let d = h
                .evaluate(pressure, running.len() as u32, instant)
                .expect("pressure in [0, 1], time moves forward");
            let level = d.level;
            out.steps_at_level[level.index()] += 1;
            drafting = d.drafting_allowed();
            let mut used = used_bytes(&running, drafting);
            if level.is_active(Action::EvictKv) {
                let mut swap_used: u64 = swapped.iter().map(|r| r.kv_bytes(false)).sum();
                while used > low_bytes {
                    let Some(r) = running.last() else { break };
                    if swap_used + r.kv_bytes(false) > swap_bytes {
                        break;
                    }
                    let r = running.pop().expect("non-empty");
                    used -= r.kv_bytes(drafting);
                    swap_used += r.kv_bytes(false);
                    swapped.push(r);
                    out.swapped_out += 1;
                }
            }
            if level.is_active(Action::ShrinkBatch) {
                while running.len() > d.batch_size as usize {
                    let r = running.pop().expect("longer than the batch target");
                    used -= r.kv_bytes(drafting);
                    waiting.push_front(r);
                    out.preempted += 1;
                }
            }
            if level.is_active(Action::ShedLoad) && used > low_bytes {
                let batch: Vec<ActiveRequest> = running
                    .iter()
                    .map(|r| ActiveRequest {
                        id: squish_serving::RequestId(r.id),
                        priority: r.priority(),
                        kv_bytes: r.kv_bytes(drafting),
                    })
                    .collect();
                h.select_shed_into(&d, &batch, &mut shed_ids)
                    .expect("ids are unique");
                for id in &shed_ids {
                    if used <= low_bytes {
                        break;
                    }
                    let i = running
                        .iter()
                        .position(|r| squish_serving::RequestId(r.id) == *id)
                        .expect("listed");
                    let r = running.remove(i);
                    used -= r.kv_bytes(drafting);
                    out.shed += 1;
                }
            }
            if level == DegradationLevel::Normal {
                swapped.sort_by_key(|r| r.id);
                while let Some(r) = swapped.first() {
                    if running.len() >= MAX_BATCH || used + r.kv_bytes(drafting) >= admit_below {
                        break;
                    }
                    let r = swapped.remove(0);
                    used += r.kv_bytes(drafting);
                    running.push(r);
                }
                if swapped.is_empty() {
                    while let Some(r) = waiting.front() {
                        if running.len() >= MAX_BATCH || used + r.kv_bytes(drafting) >= admit_below
                        {
                            break;
                        }
                        let mut r = waiting.pop_front().expect("non-empty");
                        used += r.kv_bytes(drafting);
                        r.started = true;
                        running.push(r);
                    }
                }
            }
        } else {
            let mut used = used_bytes(&running, drafting);
            while let Some(r) = waiting.front() {
                if running.len() >= MAX_BATCH || used + r.kv_bytes(drafting) > admit_limit {
                    break;
                }
                let mut r = waiting.pop_front().expect("non-empty");
                used += r.kv_bytes(drafting);
                r.started = true;
                running.push(r);
            }
        }
        if !drafting {
            out.drafting_off_steps += 1;
        }

        // One decode step.
        let tokens = if drafting { 1 + step % 2 } else { 1 };
        for r in &mut running {
            r.generated = (r.generated + tokens).min(r.output);
        }
        let before = running.len();
        running.retain(|r| r.generated < r.output);
        out.completed += (before - running.len()) as u64;

        let used = used_bytes(&running, drafting);
        let pressure = used as f64 / CAPACITY as f64;
        out.peak_pressure = out.peak_pressure.max(pressure);
        if used > CAPACITY {
            out.oom_events += 1;
            out.lost_to_oom += running.len() as u64;
            running.clear();
        }
        step += 1;
    }
    out.unfinished =
        (waiting.len() + running.len() + swapped.len() + (arrivals.len() - next)) as u64;
    out.stats = policy.map(|h| h.stats());
    out.sim_seconds = step as f64 * STEP;
    out
}

fn outcome_json(o: &Outcome, n: usize) -> Value {
    let mut v = json!({
        "served": o.completed,
        "served_fraction": o.completed as f64 / n as f64,
        "lost_to_oom": o.lost_to_oom,
        "shed": o.shed,
        "timed_out_in_queue": o.timed_out,
        "unfinished_at_end": o.unfinished,
        "oom_events": o.oom_events,
        "peak_pressure": o.peak_pressure,
        "simulated_seconds": o.sim_seconds,
    });
    if let Some(s) = o.stats {
        v["swapped_out"] = json!(o.swapped_out);
        v["preempted"] = json!(o.preempted);
        v["steps_at_level"] = json!({
            "normal": o.steps_at_level[0],
            "evict_kv": o.steps_at_level[1],
            "disable_drafting": o.steps_at_level[2],
            "shrink_batch": o.steps_at_level[3],
            "shed_load": o.steps_at_level[4],
        });
        v["activations_per_action"] = json!(s.activated);
        v["deactivations_per_action"] = json!(s.deactivated);
        v["escalations_deferred"] = json!(s.escalations_deferred);
        v["transitions"] = json!(s.transitions());
        v["evaluations"] = json!(s.evaluations);
    }
    v
}

/// The four engines on one arrival sequence.
struct Scenario {
    base: Outcome,
    watermark_only: Outcome,
    ours: Outcome,
    no_swap: Outcome,
}

fn run_scenario(arrivals: &[Req]) -> Scenario {
    let base = simulate(arrivals, None, 0, CAPACITY);
    // The FaultHandler engine's admission rule alone, without its degradation actions.
    let admit_below = (FaultHandlerConfig::default().evict_kv.enter * CAPACITY as f64) as u64;
    let watermark_only = simulate(arrivals, None, 0, admit_below - 1);
    let mut cfg = FaultHandlerConfig::default();
    cfg.capacity_bytes = CAPACITY;
    let handler = FaultHandler::new(cfg).expect("valid config");
    let ours = simulate(arrivals, Some(handler.clone()), SWAP_BYTES, CAPACITY);
    // Without swap space the cheapest action frees nothing, so the later levels must act.
    let no_swap = simulate(arrivals, Some(handler), 0, CAPACITY);
    for o in [&ours, &no_swap] {
        assert_eq!(o.oom_events, 0, "FaultHandler policy ran out of memory");
    }
    Scenario {
        base,
        watermark_only,
        ours,
        no_swap,
    }
}

fn scenario_json(s: &Scenario, n: usize) -> Value {
    json!({
        "fault_handler": outcome_json(&s.ours, n),
        "fault_handler_without_swap": outcome_json(&s.no_swap, n),
        "baseline_no_policy": outcome_json(&s.base, n),
        "admission_watermark_only": outcome_json(&s.watermark_only, n),
    })
}

pub(super) fn measure(opts: Opts) -> Measured {
    let n = if opts.quick { 1000 } else { 4000 };
    let (trace, source) = load_trace(n);
    let arrivals = ramp(&trace);
    let trace_run = run_scenario(&arrivals);
    // Long generations (every output length x4, e.g. reasoning-style answers): growth after
    // admission that an admission headroom cannot foresee.
    let long: Vec<Req> = arrivals
        .iter()
        .map(|r| Req {
            output: r.output * 4,
            ..r.clone()
        })
        .collect();
    let long_run = run_scenario(&long);
    let pct = |o: &Outcome| 100.0 * o.completed as f64 / n as f64;
    let line = |name: &str, s: &Scenario| {
        format!(
            "{name}: FaultHandler 0 OOM, {:.1}% served (no swap: 0 OOM, {:.1}%); no policy {} \
             OOM crashes losing {} running requests, {:.1}% served; admission watermark alone {} \
             OOM, {:.1}% served",
            pct(&s.ours),
            pct(&s.no_swap),
            s.base.oom_events,
            s.base.lost_to_oom,
            pct(&s.base),
            s.watermark_only.oom_events,
            pct(&s.watermark_only),
        )
    };
    Measured {
        summary: format!(
            "{n} requests of the Azure conv trace at 0.5x-3x its rate, 16 GiB of KV. {}. {}",
            line("As traced", &trace_run),
            line("Outputs x4", &long_run),
        ),
        details: json!({
            "trace": source,
            "requests": n,
            "rate_ramp": [0.5, 3.0],
            "kv_bytes_per_token": KV_BYTES_PER_TOKEN,
            "capacity_bytes": CAPACITY,
            "swap_bytes": SWAP_BYTES,
            "step_seconds": STEP,
            "max_batch": MAX_BATCH,
            "queue_timeout_seconds": QUEUE_TIMEOUT,
            "as_traced": scenario_json(&trace_run, n),
            "outputs_x4": scenario_json(&long_run, n),
        }),
    }
}
