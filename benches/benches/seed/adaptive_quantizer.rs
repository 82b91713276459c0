//! `AdaptiveQuantizer`: quantise a 128 × 256 standard-normal tensor at the precision its
//! pressure selects, and dequantise the `Q4_0` result.
//!
//! - `quantize` ids `fp16,pressure=0.50`, `int8,pressure=0.80`, `int4,pressure=0.92` (the seed
//!   rows): one `update(pressure, now)` (the hysteresis state machine, at a fixed caller
//!   instant) plus `quantize_into` a reused `QuantizedTensor` (F16 / GGML Q8_0 / Q4_0, NaN and
//!   overflow checks included).
//! - `dequantize` id `int4` (the seed row): `QuantizedTensor::dequantize_into` a reused
//!   128 × 256 array.
//!
//! Every row is bounded by a squish-core kernel this crate may not change (and must not
//! duplicate), measured in `core/*` on the dev machine while loaded (9 builds on 2 cores):
//!
//! | row | kernel | ns / value | × 32 768 | target |
//! |---|---|---|---|---|
//! | `fp16` | `convert::f32_to_f16_into` (`half`, F16C dispatched per 8 values) | ~0.38 | ~12.5 µs | ≤ 4.1 µs |
//! | `int8` | `quant::quantize_row_q8_0` (GGML reference, scalar) | ~1.8–2.2 | ~60–71 µs | ≤ 5.0 µs |
//! | `int4` | `quant::quantize_row_q4_0` (scalar) | ~2.0 | ~66 µs | ≤ 6.3 µs |
//! | `dequantize` | `quant::dequantize_row_q4_0` (scalar) | ~0.23–0.30 | ~7.6–10 µs | ≤ 1.9 µs |
//!
//! so none of these targets is met through today's core. Meeting them needs core SIMD in
//! `squish_core::simd`: AVX2 `Q8_0` / `Q4_0` quantise and `Q4_0` dequantise kernels (GGML's own
//! AVX2 paths run at roughly 0.1 ns per value) and an F16C slice conversion with the loop
//! inside the `#[target_feature]` function. The `f16` row adds one vectorised 16-bit range
//! scan (the overflow check, ~5 % of the row).

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use squish_kv::adaptive_quantizer::{
    AdaptiveQuantizer, AdaptiveQuantizerConfig, Precision, QuantizedTensor,
};
use squish_testkit::data;

const ROWS: usize = 128;
const COLS: usize = 256;

/// Registers the `AdaptiveQuantizer` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let x = Array2::from_shape_vec(
        (ROWS, COLS),
        data::normal_vec(&mut rng, ROWS * COLS, 0.0, 1.0),
    )
    .expect("shape");
    let now = Instant::now();

    let rows = [
        ("adaptive_quantize/quantize_fp16", 0.50, Precision::F16),
        ("adaptive_quantize/quantize_int8", 0.80, Precision::Q8_0),
        ("adaptive_quantize/quantize_int4", 0.92, Precision::Q4_0),
    ];
    let (group, _) = benches::seed_row(rows[0].0);
    let mut g = c.benchmark_group(group.clone());
    g.throughput(Throughput::Elements((ROWS * COLS) as u64));
    for (key, pressure, want) in rows {
        let (row_group, id) = benches::seed_row(key);
        assert_eq!(row_group, group, "the three quantize rows share one group");
        let mut aq = AdaptiveQuantizer::new(AdaptiveQuantizerConfig::default()).expect("valid");
        assert_eq!(aq.update(pressure, now).expect("pressure in [0, 1]"), want);
        let mut out = QuantizedTensor::default();
        aq.quantize_into(&x, &mut out).expect("finite");
        g.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                aq.update(black_box(pressure), now)
                    .expect("pressure in [0, 1]");
                aq.quantize_into(black_box(&x), &mut out).expect("finite");
            });
        });
    }
    g.finish();

    let (group, id) = benches::seed_row("adaptive_quantize/dequantize");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements((ROWS * COLS) as u64));
    let q = QuantizedTensor::quantize(Precision::Q4_0, &x).expect("finite");
    let mut out = Array2::zeros((ROWS, COLS));
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            black_box(&q)
                .dequantize_into(&mut out)
                .expect("shape matches");
        });
    });
    g.finish();
}
