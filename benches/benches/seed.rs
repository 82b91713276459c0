//! Placeholder criterion benches (to be replaced by the lead engineer with one group per seed
//! row). They exist so `cargo xtask bench` can be tried end to end: both benchmark-id shapes
//! criterion writes (`bench_with_input` + `BenchmarkId::from_parameter`, and `bench_function`),
//! one with a throughput.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// `Example/sum`: sum of 1024 floats, id from a parameter, with an element throughput.
fn example_sum(c: &mut Criterion) {
    let data: Vec<f32> = (0..1024u16).map(f32::from).collect();
    let mut group = c.benchmark_group("Example/sum");
    group.throughput(Throughput::Elements(data.len() as u64));
    group.bench_with_input(BenchmarkId::from_parameter("n=1024"), &data, |b, d| {
        b.iter(|| black_box(d).iter().sum::<f32>());
    });
    group.finish();
}

/// `Example/max`: maximum of 1024 floats, id from `bench_function`.
fn example_max(c: &mut Criterion) {
    let data: Vec<f32> = (0..1024u16).map(f32::from).collect();
    let mut group = c.benchmark_group("Example/max");
    group.bench_function("n=1024", |b| {
        b.iter(|| black_box(&data).iter().copied().fold(f32::MIN, f32::max));
    });
    group.finish();
}

criterion_group!(benches, example_sum, example_max);
criterion_main!(benches);
