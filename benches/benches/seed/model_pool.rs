//! `ModelPool/acquire_release`: a lease taken and dropped (acquire + release).
//!
//! - `hit,512MB` (the seed row): one 512 MiB model resident in an 8 GiB pool; one
//!   acquire + release per iteration (criterion resolves a single call).
//! - `miss_evict,resident=100`: 100 resident 64 MiB models fill the budget and keys cycle
//!   through 101 models, so every acquire misses, plans over 100 candidates, evicts the least
//!   recently used model, "loads" (a trivial loader: the pool's own cost, not I/O) and releases.
//! - `hit,threads=8`: 8 threads each acquire + release the same resident model `iters` times
//!   (timed with `iter_custom` from a barrier to the last join); one iteration is one round of
//!   8 concurrent acquire + release pairs (`Throughput::Elements(8)`). The machine's core count
//!   bounds the parallelism.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use squish_serving::model_pool::{ModelId, ModelPool, ModelPoolConfig};

const MIB: u64 = 1 << 20;

/// A loader that does nothing but build a value: the benches time the pool.
fn trivial(key: ModelId) -> Result<u64, Infallible> {
    Ok(u64::from(key.0))
}

/// Registers the `ModelPool` benchmarks.
pub(crate) fn benches(c: &mut Criterion) {
    let (group, id) = benches::seed_row("model_pool/acquire_release");
    let mut g = c.benchmark_group(group);

    let pool = ModelPool::new(ModelPoolConfig::new(8 << 30), trivial).expect("valid config");
    let key = ModelId(7);
    pool.register(key, 512 * MIB).expect("fits");
    drop(pool.acquire(key).expect("loads"));
    g.bench_function(BenchmarkId::from_parameter(id), |b| {
        b.iter(|| drop(black_box(pool.acquire(black_box(key)))));
    });

    let resident = 100u32;
    let pool = ModelPool::new(
        ModelPoolConfig::new(u64::from(resident) * 64 * MIB),
        trivial,
    )
    .expect("valid config");
    for k in 0..=resident {
        pool.register(ModelId(k), 64 * MIB).expect("fits");
    }
    for k in 0..resident {
        drop(pool.acquire(ModelId(k)).expect("fits"));
    }
    let mut next = resident;
    g.bench_function(
        BenchmarkId::from_parameter(format!("miss_evict,resident={resident}")),
        |b| {
            b.iter(|| {
                // The least recently used model is always the next key in the cycle.
                let lease = pool.acquire(ModelId(next));
                next = if next == resident { 0 } else { next + 1 };
                drop(black_box(lease));
            });
        },
    );
    let s = pool.stats();
    assert_eq!(s.hits, 0, "every acquire of the eviction bench must miss");
    assert_eq!(s.failures, 0, "and succeed");

    let threads = 8;
    let pool = ModelPool::new(ModelPoolConfig::new(8 << 30), trivial).expect("valid config");
    pool.register(key, 512 * MIB).expect("fits");
    drop(pool.acquire(key).expect("loads"));
    g.throughput(Throughput::Elements(threads as u64));
    g.bench_function(
        BenchmarkId::from_parameter(format!("hit,threads={threads}")),
        |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(threads + 1);
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| {
                            barrier.wait();
                            for _ in 0..iters {
                                drop(black_box(pool.acquire(black_box(key))));
                            }
                        });
                    }
                    barrier.wait();
                    let start = Instant::now();
                    // Scoped threads join when the scope ends; time until then.
                    start
                })
                .elapsed()
                .max(Duration::from_nanos(1))
            });
        },
    );
    g.finish();
}
