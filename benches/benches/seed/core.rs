//! `squish_core` primitives at the sizes the components use them: a SmolLM2-sized vocabulary
//! (49 152) for softmax / top-k / sampling, a 4096-wide row for the GGML blocks, a 128-token ×
//! 64-channel KV head for grouped quantisation, and the seed's KV-codec shape for k-means.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use squish_core::convert::{self, f16};
use squish_core::kmeans::{KMeans, KMeansConfig};
use squish_core::quant::{self, BlockQ4_0, BlockQ8_0, GroupAxis, GroupedQuantConfig, QuantBits};
use squish_core::{ops, sampling};
use squish_testkit::data;

/// SmolLM2's vocabulary size.
const VOCAB: usize = 49_152;
/// A hidden-size row for the GGML block formats.
const ROW: usize = 4096;

/// Registers every core benchmark.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let logits = data::normal_vec(&mut rng, VOCAB, 0.0, 2.0);
    let a = data::normal_vec(&mut rng, ROW, 0.0, 1.0);
    let b = data::normal_vec(&mut rng, ROW, 0.0, 1.0);

    let mut g = c.benchmark_group("core/dot");
    g.throughput(Throughput::Elements(ROW as u64));
    g.bench_function(BenchmarkId::from_parameter(format!("n={ROW}")), |bench| {
        bench.iter(|| ops::dot(black_box(&a), black_box(&b)));
    });
    g.finish();

    let mut probs = vec![0.0f32; VOCAB];
    let mut g = c.benchmark_group("core/softmax_into");
    g.throughput(Throughput::Elements(VOCAB as u64));
    g.bench_function(
        BenchmarkId::from_parameter(format!("vocab={VOCAB},t=0.7")),
        |bench| {
            bench.iter(|| ops::softmax_into(black_box(&logits), 0.7, &mut probs));
        },
    );
    g.finish();

    let mut g = c.benchmark_group("core/top_k_into");
    g.throughput(Throughput::Elements(VOCAB as u64));
    let mut idx = Vec::with_capacity(50);
    g.bench_function(
        BenchmarkId::from_parameter(format!("k=50,vocab={VOCAB}")),
        |bench| {
            bench.iter(|| ops::top_k_into(black_box(&logits), 50, &mut idx));
        },
    );
    g.finish();

    ops::softmax_into(&logits, 1.0, &mut probs);
    let q_logits = data::normal_vec(&mut rng, VOCAB, 0.0, 2.0);
    let q = ops::softmax(&q_logits, 1.0);
    let mut draw_rng = benches::input_rng();
    let mut g = c.benchmark_group("core/sample_categorical");
    g.throughput(Throughput::Elements(VOCAB as u64));
    g.bench_function(
        BenchmarkId::from_parameter(format!("vocab={VOCAB}")),
        |bench| {
            bench.iter(|| sampling::sample_categorical(black_box(&probs), &mut draw_rng));
        },
    );
    g.finish();

    let mut residual = vec![0.0f32; VOCAB];
    let mut g = c.benchmark_group("core/residual_into");
    g.throughput(Throughput::Elements(VOCAB as u64));
    g.bench_function(
        BenchmarkId::from_parameter(format!("vocab={VOCAB}")),
        |bench| {
            bench.iter(|| sampling::residual_into(black_box(&probs), black_box(&q), &mut residual));
        },
    );
    g.finish();

    let mut q8 = vec![BlockQ8_0::default(); ROW / 32];
    let mut q4 = vec![BlockQ4_0::default(); ROW / 32];
    let mut out = vec![0.0f32; ROW];
    let mut g = c.benchmark_group("core/ggml_blocks");
    g.throughput(Throughput::Elements(ROW as u64));
    g.bench_function(BenchmarkId::new("quantize_row_q8_0", ROW), |bench| {
        bench.iter(|| quant::quantize_row_q8_0(black_box(&a), &mut q8));
    });
    g.bench_function(BenchmarkId::new("dequantize_row_q8_0", ROW), |bench| {
        bench.iter(|| quant::dequantize_row_q8_0(black_box(&q8), &mut out));
    });
    g.bench_function(BenchmarkId::new("quantize_row_q4_0", ROW), |bench| {
        bench.iter(|| quant::quantize_row_q4_0(black_box(&a), &mut q4));
    });
    g.bench_function(BenchmarkId::new("dequantize_row_q4_0", ROW), |bench| {
        bench.iter(|| quant::dequantize_row_q4_0(black_box(&q4), &mut out));
    });
    g.finish();

    // One KV head: 128 tokens x 64 channels with two outlier key channels.
    let (tokens, channels) = (128, 64);
    let spec = data::KvSpec {
        heads: 1,
        seq_len: tokens,
        head_dim: channels,
        outlier_channels: vec![5, 40],
        outlier_scale: 20.0,
    };
    let head = data::kv_with_outliers(&mut rng, &spec);
    let mut held = quant::GroupedQuantized::new();
    let mut back = vec![0.0f32; tokens * channels];
    let mut g = c.benchmark_group("core/grouped_quant");
    g.throughput(Throughput::Elements((tokens * channels) as u64));
    for (bits, name) in [(QuantBits::B2, 2), (QuantBits::B4, 4), (QuantBits::B8, 8)] {
        let keys = GroupedQuantConfig::new(bits, 32, GroupAxis::AlongColumn);
        let values = GroupedQuantConfig::new(bits, 32, GroupAxis::AlongRow);
        let id = format!("keys_per_channel,bits={name},128x64");
        g.bench_function(BenchmarkId::new("quantize_into", id), |bench| {
            bench.iter(|| {
                quant::quantize_grouped_into(black_box(&head), tokens, channels, &keys, &mut held)
            });
        });
        let id = format!("values_per_token,bits={name},128x64");
        g.bench_function(BenchmarkId::new("quantize_into", id), |bench| {
            bench.iter(|| {
                quant::quantize_grouped_into(black_box(&head), tokens, channels, &values, &mut held)
            });
        });
        g.bench_function(
            BenchmarkId::new("dequantize_into", format!("bits={name},128x64")),
            |bench| {
                bench.iter(|| held.dequantize_into(&mut back));
            },
        );
    }
    g.finish();

    let mut halves = vec![f16::ZERO; ROW];
    let mut g = c.benchmark_group("core/convert");
    g.throughput(Throughput::Elements(ROW as u64));
    g.bench_function(BenchmarkId::new("f32_to_f16_into", ROW), |bench| {
        bench.iter(|| convert::f32_to_f16_into(black_box(&a), &mut halves));
    });
    g.bench_function(BenchmarkId::new("f16_to_f32_into", ROW), |bench| {
        bench.iter(|| convert::f16_to_f32_into(black_box(&halves), &mut out));
    });
    g.bench_function(BenchmarkId::new("f32_to_f16_checked_into", ROW), |bench| {
        bench.iter(|| convert::f32_to_f16_checked_into("x", black_box(&a), &mut halves));
    });
    g.finish();

    // The seed's KV-codec shape: 32 centroids in 32 dimensions from 400 vectors.
    let points = data::normal_vec(&mut rng, 400 * 32, 0.0, 1.0);
    let cfg = KMeansConfig::new(32);
    let mut g = c.benchmark_group("core/kmeans_fit");
    g.bench_function(BenchmarkId::from_parameter("k=32,dim=32,n=400"), |bench| {
        bench.iter(|| {
            let mut fit_rng = benches::input_rng();
            KMeans::fit(&cfg, black_box(&points), 32, &mut fit_rng)
        });
    });
    g.finish();

    // The products and the softmax step of one FlashPrefill tile pair (64 keys × 64 queries,
    // head_dim 32). Throughput is 2·m·n·k flops, so "elem/s" reads as flop/s.
    let (tile, hd) = (64usize, 32usize);
    let kt = data::normal_vec(&mut rng, tile * hd, 0.0, 1.0);
    let qt = data::normal_vec(&mut rng, hd * tile, 0.0, 1.0);
    let mut st = vec![0.0f32; tile * tile];
    let mut ot = vec![0.0f32; tile * hd];
    let alpha = vec![0.5f32; tile];
    let mut g = c.benchmark_group("core/gemm_into");
    let scores = ops::GemmLayout {
        m: tile,
        n: tile,
        k: hd,
        a_row: hd,
        a_col: 1,
        ldb: tile,
        ldc: tile,
    };
    g.throughput(Throughput::Elements((2 * tile * tile * hd) as u64));
    g.bench_function(BenchmarkId::from_parameter("m=64,n=64,k=32"), |bench| {
        bench.iter(|| ops::gemm_into(scores, black_box(&kt), black_box(&qt), &mut st, None));
    });
    // P·V: A read transposed (P stored keys × queries), rows of C rescaled first.
    let pv = ops::GemmLayout {
        m: tile,
        n: hd,
        k: tile,
        a_row: 1,
        a_col: tile,
        ldb: hd,
        ldc: hd,
    };
    g.bench_function(
        BenchmarkId::from_parameter("m=64,n=32,k=64,a_transposed,row_scale"),
        |bench| {
            bench.iter(|| {
                ops::gemm_into(pv, black_box(&st), black_box(&kt), &mut ot, Some(&alpha));
            });
        },
    );
    g.finish();

    let (mut m, mut l, mut a) = (vec![0.0f32; tile], vec![0.0f32; tile], vec![0.0f32; tile]);
    let mut g = c.benchmark_group("core/online_softmax_cols_exp2");
    g.throughput(Throughput::Elements((tile * tile) as u64));
    g.bench_function(BenchmarkId::from_parameter("rows=64,cols=64"), |bench| {
        bench.iter(|| {
            ops::online_softmax_cols_exp2(black_box(&mut st), tile, tile, &mut m, &mut l, &mut a);
        });
    });
    g.finish();
}
