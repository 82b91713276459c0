//! A thread-safe pool of loaded models under a memory budget: [`ModelPool`].
//!
//! Implements the seed's `ModelPool` ("LRU hot pool"), the way multi-model servers keep models
//! hot: Ollama's scheduler (`OLLAMA_MAX_LOADED_MODELS`, evict the least recently used idle
//! runner when a new model does not fit, refcounted runners), llama.cpp's server router, and
//! S-LoRA's adapter pool (unified memory budget, reservation before a load). What the seed got
//! wrong, and this pool does instead:
//!
//! - **Leases, not counters.** [`ModelPool::acquire`] returns a [`Lease`] that derefs to the model
//!   and releases it on drop; a model with a live lease is never evicted. The reference counts
//!   live under the pool's lock, so threads cannot lose them.
//! - **Plan, then act.** A miss first computes the whole eviction plan (idle, unpinned models in
//!   least-recently-used order) and applies it only if it frees enough; otherwise nothing is
//!   evicted and the caller gets [`Error::PoolExhausted`] (or waits, with
//!   [`ModelPool::acquire_timeout`]).
//! - **One budget check for everything.** Registration rejects duplicates and models larger than
//!   the budget; [`ModelPool::resize`] goes through the same plan as a miss.
//! - **Single flight.** Concurrent misses on one model cause exactly one load: the first misser
//!   reserves the model's bytes, evicts, and loads *outside the lock*; the others wait on a
//!   condition variable and share the result (the model, or the load error).
//!
//! # Memory accounting
//!
//! `resident + reserved <= budget` holds after every operation, where `resident` is the sum of
//! the sizes of loaded models and `reserved` covers loads in flight and models being unloaded
//! (evicted or unregistered), until their unloader returns. A miss that evicts victims of `V`
//! bytes to load `S` bytes reserves `max(S, V)` while it unloads them and `S` while it loads
//! (it runs every unloader before its loader starts; a resize that grows by `D` likewise holds
//! `V - D` until its unloaders return). So the memory really held by model objects never exceeds
//! the budget either: the stress test checks exactly that, inside the loader. A model being
//! unloaded is in a transient state: acquiring it waits until its unloader has returned, so a
//! loader never runs concurrently with the unloader of the same model.
//!
//! Recency is a logical tick bumped by every acquire and release of a model; the eviction
//! victim is the idle, unpinned resident model with the oldest tick.
//!
//! # Concurrency, and why no `loom`
//!
//! All state sits behind one `parking_lot::Mutex` with one `Condvar`; the loader and unloader
//! are never called with the lock held. The protocol points between lock sections are the
//! `Loading` state (its bytes reserved), the `Unloading` state (its bytes already handed to the
//! evictor), and a lease dropping its `Arc` before it decrements the count (so an idle model's
//! `Arc` is unique when it is unloaded). `loom` is not a workspace dependency and does not model
//! `parking_lot`; adding it would mean a `cfg(loom)` shim over every primitive and a separate CI
//! job, which is not cheap. Instead the tests replay random operation sequences against a
//! reference LRU model (single-threaded, every state compared after every step), and a 16-thread
//! stress test checks, with a concurrent checker thread and inside the loader and unloader, that
//! the accounted bytes and the bytes really held by loaded model objects stay within the budget,
//! that no leased model is ever unloaded, that no model is loaded twice at once, and that the
//! counters add up; a further test makes N threads miss the same model and counts one load.
//!
//! # Example
//!
//! ```
//! use squish_serving::{ModelId, ModelPool, ModelPoolConfig};
//!
//! const LLAMA: ModelId = ModelId(1);
//! const QWEN: ModelId = ModelId(2);
//! let cfg = ModelPoolConfig::new(10 << 30); // a 10 GiB budget
//! // The loader: any `Fn(ModelId) -> Result<M, E>` with `E: Display` (or a `ModelLoader`).
//! let pool = ModelPool::new(cfg, |key: ModelId| Ok::<_, String>(format!("weights of {key}")))?;
//! pool.register(LLAMA, 6 << 30)?;
//! pool.register(QWEN, 6 << 30)?;
//!
//! let lease = pool.acquire(LLAMA)?; // miss: loads
//! assert_eq!(*lease, "weights of 1");
//! // QWEN does not fit beside LLAMA, and LLAMA is leased: nothing is evicted.
//! assert!(pool.acquire(QWEN).is_err());
//! drop(lease);
//! let qwen = pool.acquire(QWEN)?; // LLAMA is idle now: evicted, QWEN loaded
//! assert_eq!(pool.snapshot().resident.len(), 1);
//! drop(qwen);
//! let s = pool.stats();
//! assert_eq!((s.hits, s.misses, s.loads, s.evictions), (0, 3, 2, 1));
//! # Ok::<(), squish_serving::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use squish_core::ConfigError;

use crate::{Error, Result};

pub use crate::ids::ModelId;

/// Loads (and optionally unloads) the models of a [`ModelPool`].
///
/// Any `Fn(ModelId) -> Result<M, E>` closure with `E: Display` is a loader whose unload just
/// drops the model; implement the trait (or use [`FnLoader`]) to run code on unload, e.g. to
/// free device memory. The pool never calls either method while holding its lock, and never
/// calls `load(k)` while `unload(k, _)` of the same key is running.
pub trait ModelLoader<M>: Send + Sync {
    /// The loader's error; the pool keeps its `Display` text in [`Error::ModelLoadFailed`].
    type Error: fmt::Display;

    /// Loads the model `key` (registered with its size in bytes).
    ///
    /// # Errors
    /// Any failure to load; the pool releases the memory it reserved for the load and hands
    /// the error to every caller waiting for this load.
    fn load(&self, key: ModelId) -> Result<M, Self::Error>;

    /// Unloads an evicted (or unregistered) model. The default drops it.
    fn unload(&self, key: ModelId, model: M) {
        let _ = key;
        drop(model);
    }
}

impl<M, E, F> ModelLoader<M> for F
where
    F: Fn(ModelId) -> Result<M, E> + Send + Sync,
    E: fmt::Display,
{
    type Error = E;

    fn load(&self, key: ModelId) -> Result<M, E> {
        self(key)
    }
}

/// A [`ModelLoader`] made of two closures: `load(key)` and `unload(key, model)`.
#[derive(Debug, Clone)]
pub struct FnLoader<F, U> {
    /// Loads a model.
    pub load: F,
    /// Unloads a model.
    pub unload: U,
}

impl<M, E, F, U> ModelLoader<M> for FnLoader<F, U>
where
    F: Fn(ModelId) -> Result<M, E> + Send + Sync,
    U: Fn(ModelId, M) + Send + Sync,
    E: fmt::Display,
{
    type Error = E;

    fn load(&self, key: ModelId) -> Result<M, E> {
        (self.load)(key)
    }

    fn unload(&self, key: ModelId, model: M) {
        (self.unload)(key, model);
    }
}

/// Configuration of a [`ModelPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelPoolConfig {
    /// Memory budget in bytes for all loaded and loading models; must be positive.
    pub budget_bytes: u64,
}

impl Default for ModelPoolConfig {
    /// An 8 GiB budget.
    fn default() -> Self {
        Self {
            budget_bytes: 8 << 30,
        }
    }
}

impl ModelPoolConfig {
    /// A configuration with a budget of `budget_bytes` (validated by [`ModelPool::new`]).
    pub fn new(budget_bytes: u64) -> Self {
        Self { budget_bytes }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`ConfigError`] if `budget_bytes` is zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.budget_bytes == 0 {
            return Err(ConfigError::new(
                "ModelPool",
                "budget_bytes",
                "must be positive",
                self.budget_bytes,
            ));
        }
        Ok(())
    }
}

/// Counters of a [`ModelPool`] since it was made. `hits + misses == acquires` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ModelPoolStats {
    /// Acquire calls on registered models (an unregistered key is rejected before it counts).
    pub acquires: u64,
    /// Acquires that found their model loaded.
    pub hits: u64,
    /// Acquires that did not (including those that waited for another caller's load: the
    /// loads avoided by single flight are `misses - loads` among successful acquires).
    pub misses: u64,
    /// Loader calls (successful or not).
    pub loads: u64,
    /// Models unloaded to make room (unregistering is not an eviction).
    pub evictions: u64,
    /// Acquires that blocked at least once (on a load or unload in flight, or for memory).
    pub waits: u64,
    /// Acquires that returned an error (load failure, exhausted budget, timeout).
    pub failures: u64,
}

/// A loaded model as reported by [`ModelPool::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResidentModel {
    /// The model.
    pub key: ModelId,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its live leases.
    pub leases: u32,
    /// Whether it is pinned.
    pub pinned: bool,
}

/// A consistent view of a [`ModelPool`], taken under its lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelPoolSnapshot {
    /// The budget in bytes.
    pub budget_bytes: u64,
    /// Bytes of loaded models.
    pub resident_bytes: u64,
    /// Bytes reserved by loads in flight and by evicted or unregistered models still being
    /// unloaded.
    pub reserved_bytes: u64,
    /// Loaded models, least recently used first (the eviction order, pinned and leased models
    /// included).
    pub resident: Vec<ResidentModel>,
    /// The counters.
    pub stats: ModelPoolStats,
}

/// A multiplicative hasher for the `u32` model keys (std's SipHash costs more than the rest
/// of a pool hit).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type KeyMap<V> = HashMap<ModelId, V, BuildHasherDefault<KeyHasher>>;

enum Residency<M> {
    Absent,
    /// A load is in flight; its bytes are reserved.
    Loading,
    /// Evicted or unregistered, its unloader not yet returned.
    Unloading,
    Resident {
        model: Arc<M>,
        refs: u32,
    },
}

struct Entry<M> {
    size: u64,
    pinned: bool,
    /// Tick of the last acquire or release.
    last_use: u64,
    residency: Residency<M>,
    /// Generation of the current or last load of this model.
    load_gen: u64,
    /// The last failed load: its generation and the loader's message.
    failed: Option<(u64, String)>,
}

struct State<M> {
    budget: u64,
    entries: KeyMap<Entry<M>>,
    resident_bytes: u64,
    reserved_bytes: u64,
    tick: u64,
    next_gen: u64,
    stats: ModelPoolStats,
    /// Reusable scratch for eviction planning: (last use, key, size).
    candidates: Vec<(u64, ModelId, u64)>,
}

/// Outcome of an eviction plan.
enum Plan {
    /// Evict these keys (possibly none).
    Evict(usize),
    /// Not enough can be freed; the bytes that could be.
    Short(u64),
}

impl<M> State<M> {
    fn free(&self) -> u64 {
        self.budget - self.resident_bytes - self.reserved_bytes
    }

    /// Plans room for `need` more bytes without touching `exclude`: on success the first
    /// `n` entries of `self.candidates` are the victims, least recently used first.
    fn plan(&mut self, need: u64, exclude: ModelId) -> Plan {
        let free = self.free();
        if need <= free {
            return Plan::Evict(0);
        }
        self.candidates.clear();
        for (&key, e) in &self.entries {
            if let Residency::Resident { refs: 0, .. } = e.residency
                && !e.pinned
                && key != exclude
            {
                self.candidates.push((e.last_use, key, e.size));
            }
        }
        // Ticks are unique, so the order is total.
        self.candidates.sort_unstable_by_key(|c| c.0);
        let mut freed = 0;
        for (i, c) in self.candidates.iter().enumerate() {
            freed += c.2;
            if free + freed >= need {
                return Plan::Evict(i + 1);
            }
        }
        Plan::Short(free + freed)
    }

    /// Applies the first `n` victims of the last plan: each leaves `resident` and enters
    /// `Unloading`. Returns the keys and models to unload, and their total bytes.
    fn evict(&mut self, n: usize) -> (Vec<(ModelId, Arc<M>)>, u64) {
        let mut out = Vec::with_capacity(n);
        let mut bytes = 0;
        for i in 0..n {
            let (_, key, size) = self.candidates[i];
            if let Some(e) = self.entries.get_mut(&key)
                && let Residency::Resident { model, .. } = &e.residency
            {
                let model = Arc::clone(model);
                // Dropping the pool's handle leaves `model` as the only one.
                e.residency = Residency::Unloading;
                self.resident_bytes -= size;
                bytes += size;
                self.stats.evictions += 1;
                out.push((key, model));
            }
        }
        (out, bytes)
    }
}

/// The loader-independent part of a pool: what a [`Lease`] needs to release itself.
struct Shared<M> {
    state: Mutex<State<M>>,
    cond: Condvar,
}

impl<M> Shared<M> {
    fn release(&self, key: ModelId) {
        let mut st = self.state.lock();
        st.tick += 1;
        let tick = st.tick;
        if let Some(e) = st.entries.get_mut(&key)
            && let Residency::Resident { refs, .. } = &mut e.residency
        {
            *refs -= 1;
            e.last_use = tick;
            if *refs == 0 {
                // The model became evictable: a caller waiting for memory may proceed.
                self.cond.notify_all();
            }
        }
    }
}

/// Marks unloaded models `Absent` (or removes them) when dropped, even if an unloader panics.
struct UnloadGuard<'a, M> {
    shared: &'a Shared<M>,
    keys: Vec<ModelId>,
    /// Reserved bytes to release once the models are unloaded.
    reserved: u64,
    /// Remove the entries instead of marking them absent (unregistering).
    remove: bool,
}

impl<M> Drop for UnloadGuard<'_, M> {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut st = self.shared.state.lock();
        st.reserved_bytes -= self.reserved;
        for key in &self.keys {
            if self.remove {
                st.entries.remove(key);
            } else if let Some(e) = st.entries.get_mut(key) {
                e.residency = Residency::Absent;
            }
        }
        self.shared.cond.notify_all();
    }
}

/// Completes a load: installs the model or releases the reservation and records the failure.
/// If the loader (or an unloader before it) panics, the drop records a failure, so waiters
/// never hang on a load that will not finish.
struct LoadGuard<'a, M> {
    shared: &'a Shared<M>,
    key: ModelId,
    generation: u64,
    reserved: u64,
    done: bool,
}

impl<M> LoadGuard<'_, M> {
    /// Installs `outcome`; on success the caller holds the first lease.
    fn finish(mut self, outcome: Result<Arc<M>, String>) -> Result<Arc<M>> {
        self.done = true;
        let mut st = self.shared.state.lock();
        st.reserved_bytes -= self.reserved;
        st.tick += 1;
        let tick = st.tick;
        let st = &mut *st;
        let Some(e) = st.entries.get_mut(&self.key) else {
            // Unreachable: a loading model cannot be unregistered. Keep the books right anyway.
            self.shared.cond.notify_all();
            return Err(Error::ModelNotRegistered { model: self.key });
        };
        let out = match outcome {
            Ok(model) => {
                e.residency = Residency::Resident {
                    model: Arc::clone(&model),
                    refs: 1,
                };
                e.last_use = tick;
                st.resident_bytes += self.reserved;
                Ok(model)
            }
            Err(reason) => {
                e.residency = Residency::Absent;
                e.failed = Some((self.generation, reason.clone()));
                st.stats.failures += 1;
                Err(Error::ModelLoadFailed {
                    model: self.key,
                    reason,
                })
            }
        };
        self.shared.cond.notify_all();
        out
    }
}

impl<M> Drop for LoadGuard<'_, M> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.shared.state.lock();
        st.reserved_bytes -= self.reserved;
        st.stats.failures += 1;
        let generation = self.generation;
        if let Some(e) = st.entries.get_mut(&self.key) {
            e.residency = Residency::Absent;
            e.failed = Some((generation, "the loader or an unloader panicked".to_string()));
        }
        self.shared.cond.notify_all();
    }
}

/// A thread-safe pool of loaded models under a memory budget, with leases, LRU eviction of
/// idle models, pinning and single-flight loading. Implements the seed's `ModelPool` ("LRU hot
/// pool"); see the [module docs](self) for the protocol and an example.
///
/// `M` is the model type (shared by leases through an `Arc`); `L` the [`ModelLoader`].
/// Dropping the pool unloads its idle models through the loader.
///
/// # Performance
/// A hit is one lock, one hash lookup and one `Arc` clone; its release one lock and one lookup
/// (`ModelPool/acquire_release` in the benches). A miss scans the resident models to plan
/// evictions (O(r log r) in the r resident models) and calls the loader outside the lock.
/// Waiting callers share one condition variable, woken on every change that can free memory.
pub struct ModelPool<M, L: ModelLoader<M>> {
    cfg: ModelPoolConfig,
    loader: L,
    shared: Arc<Shared<M>>,
}

impl<M, L: ModelLoader<M>> fmt::Debug for ModelPool<M, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.state.lock();
        f.debug_struct("ModelPool")
            .field("cfg", &self.cfg)
            .field("models", &st.entries.len())
            .field("resident_bytes", &st.resident_bytes)
            .field("reserved_bytes", &st.reserved_bytes)
            .field("stats", &st.stats)
            .finish_non_exhaustive()
    }
}

impl<M, L: ModelLoader<M>> ModelPool<M, L> {
    /// An empty pool (no models registered).
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg` is invalid.
    pub fn new(cfg: ModelPoolConfig, loader: L) -> Result<Self> {
        cfg.validate()?;
        let state = State {
            budget: cfg.budget_bytes,
            entries: KeyMap::default(),
            resident_bytes: 0,
            reserved_bytes: 0,
            tick: 0,
            next_gen: 0,
            stats: ModelPoolStats::default(),
            candidates: Vec::new(),
        };
        Ok(Self {
            cfg,
            loader,
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                cond: Condvar::new(),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelPoolConfig {
        &self.cfg
    }

    /// The loader.
    pub fn loader(&self) -> &L {
        &self.loader
    }

    /// Registers model `key` with its size in bytes (not loaded until acquired).
    ///
    /// # Errors
    /// [`Error::ModelAlreadyRegistered`] if `key` is registered; [`Error::ModelTooLarge`] if the size
    /// exceeds the budget; [`Error::Config`] if it is zero.
    pub fn register(&self, key: ModelId, size_bytes: u64) -> Result<()> {
        self.check_size(key, size_bytes)?;
        let mut st = self.shared.state.lock();
        if st.entries.contains_key(&key) {
            return Err(Error::ModelAlreadyRegistered { model: key });
        }
        st.entries.insert(
            key,
            Entry {
                size: size_bytes,
                pinned: false,
                last_use: 0,
                residency: Residency::Absent,
                load_gen: 0,
                failed: None,
            },
        );
        Ok(())
    }

    fn check_size(&self, key: ModelId, size_bytes: u64) -> Result<()> {
        if size_bytes == 0 {
            return Err(ConfigError::new("ModelPool", "size_bytes", "must be positive", 0).into());
        }
        if size_bytes > self.cfg.budget_bytes {
            return Err(Error::ModelTooLarge {
                model: key,
                size_bytes,
                budget_bytes: self.cfg.budget_bytes,
            });
        }
        Ok(())
    }

    /// Removes model `key`, unloading it first (in this call, outside the lock) if it is loaded
    /// and idle. A pinned idle model is unregistered too: unregistering is explicit.
    ///
    /// # Errors
    /// [`Error::ModelNotRegistered`]; [`Error::ModelBusy`] if it is leased, loading or unloading.
    pub fn unregister(&self, key: ModelId) -> Result<()> {
        let mut st = self.shared.state.lock();
        let st_ref = &mut *st;
        let Some(e) = st_ref.entries.get_mut(&key) else {
            return Err(Error::ModelNotRegistered { model: key });
        };
        match e.residency {
            Residency::Absent => {
                st_ref.entries.remove(&key);
                Ok(())
            }
            Residency::Resident { ref model, refs: 0 } => {
                let size = e.size;
                let model = Arc::clone(model);
                // Dropping the pool's handle leaves `model` as the only one.
                e.residency = Residency::Unloading;
                // The bytes stay accounted (as reserved) until the unloader returns.
                st_ref.resident_bytes -= size;
                st_ref.reserved_bytes += size;
                drop(st);
                let _guard = UnloadGuard {
                    shared: &self.shared,
                    keys: vec![key],
                    reserved: size,
                    remove: true,
                };
                self.unload(key, model);
                Ok(())
            }
            _ => Err(Error::ModelBusy { model: key }),
        }
    }

    /// Pins model `key`: while pinned it is never evicted (it still counts against the
    /// budget). Idempotent; pinning a model that is not loaded protects it once it is.
    ///
    /// # Errors
    /// [`Error::ModelNotRegistered`].
    pub fn pin(&self, key: ModelId) -> Result<()> {
        self.set_pinned(key, true)
    }

    /// Unpins model `key` (idempotent), making it evictable when idle.
    ///
    /// # Errors
    /// [`Error::ModelNotRegistered`].
    pub fn unpin(&self, key: ModelId) -> Result<()> {
        self.set_pinned(key, false)
    }

    fn set_pinned(&self, key: ModelId, pinned: bool) -> Result<()> {
        let mut st = self.shared.state.lock();
        let Some(e) = st.entries.get_mut(&key) else {
            return Err(Error::ModelNotRegistered { model: key });
        };
        e.pinned = pinned;
        if !pinned {
            self.shared.cond.notify_all();
        }
        Ok(())
    }

    /// Changes the size of model `key` (e.g. adapters or a KV arena grew). A loaded model that
    /// grows goes through the same budget check as a miss: idle, unpinned other models are
    /// evicted in LRU order (their unloaders run in this call) if, and only if, that frees
    /// enough; otherwise nothing changes.
    ///
    /// # Errors
    /// [`Error::ModelNotRegistered`]; [`Error::ModelBusy`] while it is loading or unloading;
    /// [`Error::ModelTooLarge`] / [`Error::Config`] for a size above the budget or zero;
    /// [`Error::PoolExhausted`] if a loaded model cannot grow.
    pub fn resize(&self, key: ModelId, size_bytes: u64) -> Result<()> {
        self.check_size(key, size_bytes)?;
        let mut st = self.shared.state.lock();
        let Some(e) = st.entries.get(&key) else {
            return Err(Error::ModelNotRegistered { model: key });
        };
        let old = e.size;
        match e.residency {
            Residency::Loading | Residency::Unloading => Err(Error::ModelBusy { model: key }),
            Residency::Absent => {
                Self::set_size(&mut st, key, size_bytes);
                Ok(())
            }
            Residency::Resident { .. } if size_bytes <= old => {
                st.resident_bytes -= old - size_bytes;
                Self::set_size(&mut st, key, size_bytes);
                self.shared.cond.notify_all();
                Ok(())
            }
            Residency::Resident { .. } => {
                let delta = size_bytes - old;
                match st.plan(delta, key) {
                    Plan::Short(available) => Err(Error::PoolExhausted {
                        model: key,
                        needed_bytes: delta,
                        available_bytes: available,
                    }),
                    Plan::Evict(n) => {
                        let (victims, freed) = st.evict(n);
                        // The victims stay accounted until unloaded; the growth is in use.
                        let extra = freed.saturating_sub(delta);
                        st.resident_bytes += delta;
                        st.reserved_bytes += extra;
                        Self::set_size(&mut st, key, size_bytes);
                        drop(st);
                        self.unload_victims(victims, extra);
                        Ok(())
                    }
                }
            }
        }
    }

    fn set_size(st: &mut State<M>, key: ModelId, size: u64) {
        if let Some(e) = st.entries.get_mut(&key) {
            e.size = size;
        }
    }

    fn unload(&self, key: ModelId, model: Arc<M>) {
        // Idle means no lease holds the Arc (a lease drops its Arc before it decrements the
        // count), so the pool's handle is the last one.
        if let Some(m) = Arc::into_inner(model) {
            self.loader.unload(key, m);
        }
    }

    /// Unloads evicted models, then releases `extra` reserved bytes (the part of the victims'
    /// bytes not taken over by the caller's load or growth).
    fn unload_victims(&self, victims: Vec<(ModelId, Arc<M>)>, extra: u64) {
        if victims.is_empty() {
            return;
        }
        let _guard = UnloadGuard {
            shared: &self.shared,
            keys: victims.iter().map(|v| v.0).collect(),
            reserved: extra,
            remove: false,
        };
        for (key, model) in victims {
            self.unload(key, model);
        }
    }

    /// Leases model `key`, loading it on a miss (evicting idle, unpinned models in LRU order
    /// if it does not fit). Never waits for memory; does wait for a load or unload of the same
    /// model that is already in flight (single flight).
    ///
    /// # Errors
    /// [`Error::ModelNotRegistered`]; [`Error::PoolExhausted`] if evicting every idle, unpinned
    /// model would still not make room (nothing is evicted then);
    /// [`Error::ModelLoadFailed`] if the load (this caller's or the one it waited for)
    /// failed. Models evicted to make room for a load that then fails stay unloaded.
    ///
    /// # Performance
    /// A hit takes the lock once (and its release once more); see [`ModelPool`].
    pub fn acquire(&self, key: ModelId) -> Result<Lease<'_, M>> {
        let model = self.acquire_inner(key, None)?;
        Ok(self.lease(key, model))
    }

    /// As [`acquire`](Self::acquire), but when the model does not fit and not enough can be
    /// evicted, waits (up to `timeout`, real time) for leases to be released, models unpinned
    /// or shrunk, or reservations freed. The timeout also bounds waiting for a load in flight.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), with [`Error::PoolTimeout`] instead of
    /// [`Error::PoolExhausted`]. A caller that waits for memory while holding a lease the
    /// pool needs waits until the timeout.
    pub fn acquire_timeout(&self, key: ModelId, timeout: Duration) -> Result<Lease<'_, M>> {
        let model = self.acquire_inner(key, Some(timeout))?;
        Ok(self.lease(key, model))
    }

    /// Leases model `key` like [`acquire`](Self::acquire), as an [`OwnedLease`] that does not
    /// borrow the pool (for `'static` tasks, e.g. async request handlers).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Performance
    /// One more atomic reference-count increment (and decrement on release) than a [`Lease`].
    pub fn acquire_owned(&self, key: ModelId) -> Result<OwnedLease<M>> {
        let model = self.acquire_inner(key, None)?;
        Ok(OwnedLease {
            shared: Arc::clone(&self.shared),
            key,
            model: Some(model),
        })
    }

    /// [`acquire_owned`](Self::acquire_owned) with the waiting of
    /// [`acquire_timeout`](Self::acquire_timeout).
    ///
    /// # Errors
    /// As [`acquire_timeout`](Self::acquire_timeout).
    pub fn acquire_owned_timeout(&self, key: ModelId, timeout: Duration) -> Result<OwnedLease<M>> {
        let model = self.acquire_inner(key, Some(timeout))?;
        Ok(OwnedLease {
            shared: Arc::clone(&self.shared),
            key,
            model: Some(model),
        })
    }

    fn lease(&self, key: ModelId, model: Arc<M>) -> Lease<'_, M> {
        Lease {
            shared: &self.shared,
            key,
            model: Some(model),
        }
    }

    /// The acquire protocol; returns the model with its count already incremented.
    fn acquire_inner(&self, key: ModelId, timeout: Option<Duration>) -> Result<Arc<M>> {
        let mut guard = self.shared.state.lock();
        let mut counted = false;
        let mut waited = false;
        let mut deadline: Option<Instant> = None;
        loop {
            let st = &mut *guard;
            st.tick += 1;
            let tick = st.tick;
            let Some(e) = st.entries.get_mut(&key) else {
                if counted {
                    // Unregistered while this caller waited for memory.
                    st.stats.failures += 1;
                }
                return Err(Error::ModelNotRegistered { model: key });
            };
            let hit = !counted && matches!(e.residency, Residency::Resident { .. });
            if !counted {
                counted = true;
                st.stats.acquires += 1;
                if hit {
                    st.stats.hits += 1;
                } else {
                    st.stats.misses += 1;
                }
            }
            match &mut e.residency {
                Residency::Resident { model, refs } => {
                    *refs += 1;
                    e.last_use = tick;
                    return Ok(Arc::clone(model));
                }
                Residency::Loading | Residency::Unloading => {
                    let pending = matches!(e.residency, Residency::Loading).then_some(e.load_gen);
                    if !waited {
                        waited = true;
                        st.stats.waits += 1;
                    }
                    if !self.wait(&mut guard, timeout, &mut deadline) {
                        guard.stats.failures += 1;
                        return Err(Error::PoolTimeout { model: key });
                    }
                    if let Some(generation) = pending
                        && let Some(e) = guard.entries.get(&key)
                        && let Some((g, reason)) = &e.failed
                        && *g == generation
                    {
                        let reason = reason.clone();
                        guard.stats.failures += 1;
                        return Err(Error::ModelLoadFailed { model: key, reason });
                    }
                }
                Residency::Absent => {
                    let size = e.size;
                    match st.plan(size, key) {
                        Plan::Evict(n) => {
                            let (victims, freed) = st.evict(n);
                            // The victims stay accounted until unloaded: reserve max(size,
                            // freed) now, `size` once they are gone.
                            let extra = freed.saturating_sub(size);
                            st.reserved_bytes += size + extra;
                            st.next_gen += 1;
                            let generation = st.next_gen;
                            st.stats.loads += 1;
                            if let Some(e) = st.entries.get_mut(&key) {
                                e.residency = Residency::Loading;
                                e.load_gen = generation;
                            }
                            drop(guard);
                            return self.load(key, size, generation, victims, extra);
                        }
                        Plan::Short(available) => {
                            if timeout.is_none() {
                                st.stats.failures += 1;
                                return Err(Error::PoolExhausted {
                                    model: key,
                                    needed_bytes: size,
                                    available_bytes: available,
                                });
                            }
                            if !waited {
                                waited = true;
                                st.stats.waits += 1;
                            }
                            if !self.wait(&mut guard, timeout, &mut deadline) {
                                guard.stats.failures += 1;
                                return Err(Error::PoolTimeout { model: key });
                            }
                        }
                    }
                }
            }
        }
    }

    /// Waits on the condition variable; `false` if the deadline passed.
    fn wait(
        &self,
        guard: &mut MutexGuard<'_, State<M>>,
        timeout: Option<Duration>,
        deadline: &mut Option<Instant>,
    ) -> bool {
        let Some(timeout) = timeout else {
            self.shared.cond.wait(guard);
            return true;
        };
        let end = *deadline.get_or_insert_with(|| Instant::now() + timeout);
        if Instant::now() >= end {
            return false;
        }
        // After a timed-out wait the caller's loop re-checks the state once more; the next call
        // here then returns false.
        self.shared.cond.wait_until(guard, end);
        true
    }

    /// Unloads the victims, then loads `key` into its reservation (both outside the lock).
    fn load(
        &self,
        key: ModelId,
        size: u64,
        generation: u64,
        victims: Vec<(ModelId, Arc<M>)>,
        extra: u64,
    ) -> Result<Arc<M>> {
        let pending = LoadGuard {
            shared: &self.shared,
            key,
            generation,
            reserved: size,
            done: false,
        };
        self.unload_victims(victims, extra);
        let outcome = self
            .loader
            .load(key)
            .map(Arc::new)
            .map_err(|e| e.to_string());
        pending.finish(outcome)
    }

    /// The counters.
    pub fn stats(&self) -> ModelPoolStats {
        self.shared.state.lock().stats
    }

    /// Whether model `key` is loaded (false for unknown keys).
    pub fn is_resident(&self, key: ModelId) -> bool {
        let st = self.shared.state.lock();
        st.entries
            .get(&key)
            .is_some_and(|e| matches!(e.residency, Residency::Resident { .. }))
    }

    /// A consistent view of the pool (allocates; for tests, metrics and debugging).
    pub fn snapshot(&self) -> ModelPoolSnapshot {
        let st = self.shared.state.lock();
        let mut resident: Vec<(u64, ResidentModel)> = st
            .entries
            .iter()
            .filter_map(|(&key, e)| match e.residency {
                Residency::Resident { refs, .. } => Some((
                    e.last_use,
                    ResidentModel {
                        key,
                        size_bytes: e.size,
                        leases: refs,
                        pinned: e.pinned,
                    },
                )),
                _ => None,
            })
            .collect();
        resident.sort_unstable_by_key(|r| r.0);
        ModelPoolSnapshot {
            budget_bytes: st.budget,
            resident_bytes: st.resident_bytes,
            reserved_bytes: st.reserved_bytes,
            resident: resident.into_iter().map(|r| r.1).collect(),
            stats: st.stats,
        }
    }
}

/// A lease on a loaded model: derefs to it, and releases it when dropped. While any lease on
/// a model is alive, the model is never evicted.
pub struct Lease<'a, M> {
    shared: &'a Shared<M>,
    key: ModelId,
    /// Always `Some` until drop, which takes it first so that an idle model's `Arc` is unique.
    model: Option<Arc<M>>,
}

impl<M> Lease<'_, M> {
    /// The leased model's key.
    pub fn key(&self) -> ModelId {
        self.key
    }
}

impl<M> Deref for Lease<'_, M> {
    type Target = M;

    fn deref(&self) -> &M {
        match &self.model {
            Some(m) => m,
            None => unreachable!("a lease holds its model until it is dropped"),
        }
    }
}

impl<M: fmt::Debug> fmt::Debug for Lease<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("model", &self.model)
            .finish()
    }
}

impl<M> Drop for Lease<'_, M> {
    fn drop(&mut self) {
        drop(self.model.take());
        self.shared.release(self.key);
    }
}

/// A lease that owns a handle on the pool's shared state instead of borrowing the pool:
/// `'static`, so it can move into spawned tasks. Otherwise identical to [`Lease`]; made by
/// [`ModelPool::acquire_owned`].
///
/// If the pool is dropped first, the model is dropped (without the loader's `unload`) when its
/// last owned lease is.
pub struct OwnedLease<M> {
    shared: Arc<Shared<M>>,
    key: ModelId,
    /// Always `Some` until drop (see [`Lease`]).
    model: Option<Arc<M>>,
}

impl<M> OwnedLease<M> {
    /// The leased model's key.
    pub fn key(&self) -> ModelId {
        self.key
    }
}

impl<M> Deref for OwnedLease<M> {
    type Target = M;

    fn deref(&self) -> &M {
        match &self.model {
            Some(m) => m,
            None => unreachable!("a lease holds its model until it is dropped"),
        }
    }
}

impl<M: fmt::Debug> fmt::Debug for OwnedLease<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedLease")
            .field("key", &self.key)
            .field("model", &self.model)
            .finish()
    }
}

impl<M> Drop for OwnedLease<M> {
    fn drop(&mut self) {
        drop(self.model.take());
        self.shared.release(self.key);
    }
}

impl<M, L: ModelLoader<M>> Drop for ModelPool<M, L> {
    /// Unloads every loaded model that no [`OwnedLease`] holds, through the loader.
    fn drop(&mut self) {
        let idle: Vec<(ModelId, Arc<M>)> = {
            let mut st = self.shared.state.lock();
            let st = &mut *st;
            let mut out = Vec::new();
            for (&key, e) in &mut st.entries {
                if let Residency::Resident { model, refs: 0 } = &e.residency {
                    let model = Arc::clone(model);
                    e.residency = Residency::Unloading;
                    st.resident_bytes -= e.size;
                    out.push((key, model));
                }
            }
            out
        };
        for (key, model) in idle {
            self.unload(key, model);
        }
    }
}

#[cfg(test)]
#[path = "model_pool_tests.rs"]
mod tests;
