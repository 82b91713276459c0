//! `KvCodec`: fitting the codebook, encoding keys to codes and decoding them, at the seed's
//! shapes with the seed's single codebook (M = 1 sub-space, K = 32 centroids, head_dim 32,
//! standard-normal keys):
//! - `fit`: 400 keys, k-means++ seeding plus Lloyd iterations (default `max_iters` 100,
//!   `tol` 1e-4; the number of iterations this input takes is printed once on stderr). Each
//!   iteration times one whole fit from a fresh copy of the same seeded RNG.
//! - `encode_keys`: 4 heads × 32 tokens into a reused `PqCodes`.
//! - `decode_keys`: one head × 32 tokens into a reused buffer.
//!
//! Extra ids: the ADC scores of one query against 32 encoded keys through a reused lookup
//! table (`KvCodec/scores`), and the table build itself.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use ndarray::Array3;
use squish_kv::{KvCodec, KvCodecConfig, PqCodes, ScoreTable};
use squish_testkit::data;

const HEAD_DIM: usize = 32;

fn keys(rng: &mut impl rand::Rng, heads: usize, seq: usize) -> Array3<f32> {
    Array3::from_shape_vec(
        (heads, seq, HEAD_DIM),
        data::normal_vec(rng, heads * seq * HEAD_DIM, 0.0, 1.0),
    )
    .expect("shape matches")
}

/// Registers the `KvCodec` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let mut rng = benches::input_rng();
    let cfg = KvCodecConfig::default();
    assert_eq!(
        (cfg.head_dim, cfg.subspaces, cfg.codebook_size),
        (HEAD_DIM, 1, 32)
    );
    let train = keys(&mut rng, 1, 400);

    let (group, id) = benches::seed_row("codec_kv/fit");
    let probe = KvCodec::fit(cfg.clone(), &train, &mut benches::input_rng()).expect("valid fit");
    eprintln!(
        "{group}/{id}: {} Lloyd iterations",
        probe.lloyd_iterations().sum::<usize>()
    );
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(400));
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            let mut fit_rng = benches::input_rng();
            KvCodec::fit(cfg.clone(), black_box(&train), &mut fit_rng).expect("valid fit")
        });
    });
    g.finish();

    let codec = probe;
    let x = keys(&mut rng, 4, 32);
    let (group, id) = benches::seed_row("codec_kv/encode_keys");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(4 * 32));
    let mut codes = PqCodes::new();
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            codec
                .encode_keys_into(black_box(&x), &mut codes)
                .expect("valid keys");
        });
    });
    g.finish();

    let one = keys(&mut rng, 1, 32);
    let one_codes = codec.encode_keys(&one).expect("valid keys");
    let mut out = vec![0.0f32; 32 * HEAD_DIM];
    let (group, id) = benches::seed_row("codec_kv/decode_keys");
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(32));
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| {
            codec
                .decode_keys_into(black_box(&one_codes), &mut out)
                .expect("matching codes");
        });
    });
    g.finish();

    let q = data::normal_vec(&mut rng, HEAD_DIM, 0.0, 1.0);
    let mut table = ScoreTable::new();
    let mut g = c.benchmark_group("KvCodec/score_table");
    g.bench_function(BenchmarkId::from_parameter("m=1,k=32,head_dim=32"), |b| {
        b.iter(|| {
            codec
                .score_table_into(0, black_box(&q), &mut table)
                .expect("valid query");
        });
    });
    g.finish();
    let mut scores = vec![0.0f32; 32];
    let mut g = c.benchmark_group("KvCodec/scores");
    g.throughput(Throughput::Elements(32));
    g.bench_function(BenchmarkId::from_parameter("m=1,k=32,seq=32"), |b| {
        b.iter(|| {
            codec
                .scores_into(&table, black_box(&one_codes), 0, &mut scores)
                .expect("matching codes");
        });
    });
    g.finish();
}
