//! Tiled causal attention for prefill on CPU, following FlashAttention-2.
//!
//! Implements the seed's `FlashPrefillKernel` ("chunked causal attention") as the algorithm of
//! Dao, *FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning*
//! (2023, arXiv:2307.08691), Algorithm 1, on one CPU core:
//!
//! - the queries of a head are cut into tiles of [`FlashPrefillConfig::q_tile`] rows and the
//!   keys/values into tiles of [`FlashPrefillConfig::kv_tile`] rows;
//! - for each query tile, the key tiles are visited in order; the scores of a tile pair are one
//!   small matrix product, folded into a running maximum `m`, a running sum `l` and an output
//!   accumulator rescaled by `exp(m_old − m_new)` (the *online softmax* of Milakov & Gimelshein,
//!   2018);
//! - key tiles entirely above the causal diagonal are never touched, masking is applied only
//!   where a tile crosses the diagonal, and each output row is divided by its sum once, at the end;
//! - besides the output, the per-row log-sum-exp of the scaled logits is returned, which is what
//!   [`merge_attention_into`] needs to combine partial results (split-KV / flash-decoding, or a
//!   prefix attended separately from a chunk).
//!
//! Memory: the scratch holds a handful of tiles (see [`FlashPrefillKernel::scratch_bytes`]); it
//! does not depend on the sequence length, unlike the naive `S × S` score matrix.
//!
//! # Positions and continuation (chunked prefill)
//! [`AttnShape`] places the `q_len` queries at positions `q_offset .. q_offset + q_len` over
//! `kv_len` keys at positions `0 .. kv_len`; query row `i` attends to keys
//! `j < min(kv_len, q_offset + i + 1)`. A full causal prefill is `q_offset = 0,
//! q_len = kv_len`; a chunk of `c` new tokens after a cached prefix of `p` tokens is
//! `q_offset = p, q_len = c, kv_len = p + c` (its rows equal rows `p .. p + c` of one full
//! prefill, bit for bit); `q_offset ≥ kv_len` gives non-causal attention to every key.
//!
//! # Numerics
//! f32 throughout. The softmax scale is folded into the packed queries together with `log2(e)`,
//! so the exponentials are base 2, computed by a degree-5 minimax polynomial on
//! `[-1/2, 1/2]` with the exponent built from the bits of a rounded float (in
//! [`squish_core::ops::online_softmax_cols_exp2`]); its relative error is below `2.5e-7`
//! (tested against `f64`) and results at or below `2^-126.5` are flushed to 0, i.e. a key whose
//! probability is at most `8.3e-39` times the row's largest gets exactly 0. Each query row is
//! computed by the same operations whatever tile or vector lane it lands in (scores summed over
//! the channels in order, probabilities over the keys in order; masked keys add exact zeros),
//! which is why the query tile size and continuation never change a bit. Outputs agree with a
//! float64 naive attention to about `1e-6` (tested at `1e-5` over many shapes). The AVX2 path
//! fuses multiply-adds and the portable path does not, so the last bits differ between
//! machines.
//!
//! # Performance
//! The query and score tiles are kept **transposed**, one column per query: per query tile,
//! `Qᵀ` (scaled) is packed once; per key tile, the scores `Sᵀ = K·Qᵀ` (keys × queries), the
//! online softmax down each column and `O ← diag(α)·O + P·V` accumulated straight into the
//! output rows, reading `K`, `V` and `P` where they lie (no packing of keys, values or
//! probabilities, no output tile) and needing no horizontal reductions. Both products are
//! [`squish_core::ops::gemm_into`] (runtime-dispatched AVX2 + FMA, a 6 × 16 register block of
//! twelve accumulators, strided reads of `A`); the softmax step is
//! [`squish_core::ops::online_softmax_cols_exp2`] (eight queries per vector, one or two
//! exponentials per step, successive rows overlapped). On a tile that crosses the diagonal,
//! each band of keys first seen by the same group of 16 queries is multiplied (one product
//! call) only from that group on, only that group's hidden scores are set to `-inf`, and each
//! group sums only the keys its last query sees. Single-threaded, allocation-free, no `unsafe`
//! in this crate.
//!
//! Measured on a 2-core AMD EPYC Zen 3 VM at ≈ 3.2 GHz, whose AVX2 + FMA peak is 32
//! flop/cycle ≈ 102 GFLOP/s (the machine is shared; "best" figures are the fastest of many
//! short batches, what an unloaded core gives): the seed's size (seq 256, 4 heads, head_dim
//! 32) 0.260 ms best, 65 GFLOP/s, 12.3× the seed's Python, and a criterion median of 0.265 ms
//! (12.1×) in the full report (0.68 ms with the first 4 × 8 kernel over packed panels, 0.28 ms
//! before the cheaper exponential and the banded diagonal tiles); seq 1024–4096 with head_dim
//! 64 and 128 at 73–78 GFLOP/s, about three quarters of the peak. At head_dim 32 the products
//! (16.8 MFLOP of useful work, 17.8 computed) run at ≈ 90 GFLOP/s and take ≈ 75 % of the time;
//! the rest is one exponential per score (≈ 15 %, 7.3 cycles per 8 scores), the finiteness
//! checks (≈ 3.5 %, mostly the first touch of the inputs), the `Qᵀ` transpose (≈ 1.7 %), and
//! masking, the final scaling and bookkeeping (≈ 2.5 %). With `SQUISH_SIMD=off` the seed's size takes ≈ 0.9 ms.
//! The bench docs (`benches/benches/seed/flash_prefill.rs`) give the details.

use ndarray::{Array2, Array3, ArrayRef2, ArrayRef3};
use squish_core::aligned::AlignedVec;
use squish_core::{ConfigError, ShapeError, check_finite, ops};

use crate::{Error, Result};

/// Query columns of the score tile handled as one group on a tile that crosses the diagonal
/// (the column width of the product's register block).
const GROUP: usize = 16;
/// `HIDDEN[GROUP - n..][..GROUP]` selects (all ones) the first `n` lanes of a group: the
/// causal mask as bit operations that vectorise (a select compiled to one branch and store per
/// element).
const HIDDEN: [u32; 2 * GROUP] = {
    let mut t = [0u32; 2 * GROUP];
    let mut i = 0;
    while i < GROUP {
        t[i] = u32::MAX;
        i += 1;
    }
    t
};
/// Vector width the query tile is padded to.
const LANES: usize = 8;

/// Largest accepted `head_dim`, `q_tile` and `kv_tile` (bounds the scratch allocation).
pub const MAX_DIM: usize = 4096;

/// Configuration of a [`FlashPrefillKernel`].
///
/// # Example
/// ```
/// use squish_attn::FlashPrefillConfig;
/// // SmolLM2-135M: 9 query heads over 3 KV heads, head_dim 64, softmax scale 1/8.
/// let cfg = FlashPrefillConfig::new(9, 3, 64);
/// assert_eq!(cfg.scale, 0.125);
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FlashPrefillConfig {
    /// Number of query heads, ≥ 1 and a multiple of `n_kv_heads`.
    pub n_heads: usize,
    /// Number of key/value heads, ≥ 1 (`n_heads` for MHA, 1 for MQA, in between for GQA). Query
    /// head `h` uses key/value head `h / (n_heads / n_kv_heads)`.
    pub n_kv_heads: usize,
    /// Channels per head, in `[1, MAX_DIM]`.
    pub head_dim: usize,
    /// Softmax scale applied to `q·k` (usually `1/√head_dim`); finite and > 0.
    pub scale: f32,
    /// Query rows per tile (the seed's "chunk"), in `[1, MAX_DIM]`. Default 64.
    pub q_tile: usize,
    /// Keys per tile, in `[1, MAX_DIM]`. Default 64.
    pub kv_tile: usize,
}

impl FlashPrefillConfig {
    /// A configuration with scale `1/√head_dim` and 64 × 64 tiles.
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        Self {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: (1.0 / (head_dim.max(1) as f64).sqrt()) as f32,
            q_tile: 64,
            kv_tile: 64,
        }
    }

    /// Checks every field and the GQA divisibility rule.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that breaks its rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const C: &str = "FlashPrefillKernel";
        if self.n_heads == 0 {
            return Err(ConfigError::new(C, "n_heads", "must be >= 1", self.n_heads));
        }
        if self.n_kv_heads == 0 {
            return Err(ConfigError::new(
                C,
                "n_kv_heads",
                "must be >= 1",
                self.n_kv_heads,
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(ConfigError::new(
                C,
                "n_kv_heads",
                format!("must divide n_heads ({})", self.n_heads),
                self.n_kv_heads,
            ));
        }
        for (field, v) in [
            ("head_dim", self.head_dim),
            ("q_tile", self.q_tile),
            ("kv_tile", self.kv_tile),
        ] {
            if !(1..=MAX_DIM).contains(&v) {
                return Err(ConfigError::new(
                    C,
                    field,
                    format!("must be in [1, {MAX_DIM}]"),
                    v,
                ));
            }
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(ConfigError::new(
                C,
                "scale",
                "must be finite and > 0",
                self.scale,
            ));
        }
        Ok(())
    }
}

impl Default for FlashPrefillConfig {
    /// The seed's benchmark configuration: 4 heads (MHA), head_dim 32, scale `1/√32`, 64 × 64
    /// tiles.
    fn default() -> Self {
        Self::new(4, 4, 32)
    }
}

/// Where the queries sit relative to the keys (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Number of query rows per head.
    pub q_len: usize,
    /// Number of key/value rows per KV head, ≥ 1.
    pub kv_len: usize,
    /// Position of query row 0; row `i` sees keys `j < min(kv_len, q_offset + i + 1)`.
    pub q_offset: usize,
}

impl AttnShape {
    /// A full causal prefill of `seq` tokens.
    pub fn prefill(seq: usize) -> Self {
        Self {
            q_len: seq,
            kv_len: seq,
            q_offset: 0,
        }
    }

    /// A chunk of `chunk` new tokens after `cached` tokens already in the KV cache: the keys and
    /// values hold `cached + chunk` rows, the new tokens' included.
    pub fn continuation(cached: usize, chunk: usize) -> Self {
        Self {
            q_len: chunk,
            kv_len: cached + chunk,
            q_offset: cached,
        }
    }

    /// Number of (query, key) pairs that are attended (the causal triangle or trapezoid).
    pub fn attended_pairs(&self) -> u64 {
        (0..self.q_len)
            .map(|i| self.kv_len.min(self.q_offset.saturating_add(i + 1)) as u64)
            .sum()
    }
}

/// Output of [`FlashPrefillKernel::prefill`].
#[derive(Debug, Clone, PartialEq)]
pub struct FlashOutput {
    /// Attention output, `[n_heads, q_len, head_dim]`.
    pub out: Array3<f32>,
    /// Natural log-sum-exp of each row's scaled logits `scale·q·k` over its visible keys,
    /// `[n_heads, q_len]`.
    pub lse: Array2<f32>,
}

/// Reusable tiles of one kernel; their size depends on the configuration only. The query and
/// score tiles are stored *transposed* (one column per query), so the softmax reductions run
/// down columns; the output accumulates in the caller's `out`.
#[derive(Debug, Clone)]
struct Scratch {
    /// Pre-scaled query tile, transposed: `[head_dim][br_pad]`. Cache-line aligned, as is
    /// `s`: the products stream 32-byte loads and stores through both.
    qt: AlignedVec<f32>,
    /// Scores, then probabilities, keys × queries: `[kv_tile][br_pad]`.
    s: AlignedVec<f32>,
    /// Running maximum (log2 units), running sum and last rescale factor per query.
    m: Vec<f32>,
    l: Vec<f32>,
    alpha: Vec<f32>,
}

/// Chunked causal attention for prefill, FlashAttention-2 style (see the [module docs](self)).
///
/// Implements the seed's `FlashPrefillKernel` ("chunked causal attention", claiming `O(chunk)`
/// memory for time-to-first-token): the scratch is a few tiles, whatever the sequence length.
///
/// # Example
/// ```
/// use ndarray::Array3;
/// use squish_attn::{FlashPrefillConfig, FlashPrefillKernel};
///
/// let cfg = FlashPrefillConfig::new(2, 1, 4); // two query heads sharing one KV head
/// let mut kernel = FlashPrefillKernel::new(cfg)?;
/// let q = Array3::from_shape_fn((2, 3, 4), |(h, i, c)| (h + i + c) as f32 * 0.1);
/// let k = Array3::from_shape_fn((1, 3, 4), |(_, j, c)| (j * c) as f32 * 0.1);
/// let v = Array3::from_shape_fn((1, 3, 4), |(_, j, _)| j as f32);
/// let res = kernel.prefill(&q, &k, &v)?;
/// // Row 0 sees only key 0, so it returns value 0 with log-sum-exp scale·q₀·k₀ = 0.
/// assert_eq!(res.out[[0, 0, 0]], 0.0);
/// assert_eq!(res.lse[[0, 0]], 0.0);
/// // Later rows average values 0..=i, so they lie in [0, i].
/// assert!(res.out[[1, 2, 0]] > 0.0 && res.out[[1, 2, 0]] < 2.0);
/// # Ok::<(), squish_attn::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct FlashPrefillKernel {
    cfg: FlashPrefillConfig,
    /// `q_tile` rounded up to a multiple of the vector width (8).
    br_pad: usize,
    scratch: Scratch,
}

impl FlashPrefillKernel {
    /// Builds a kernel and allocates its scratch (see [`scratch_bytes`](Self::scratch_bytes)).
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg` fails [`FlashPrefillConfig::validate`].
    pub fn new(cfg: FlashPrefillConfig) -> Result<Self> {
        cfg.validate()?;
        let br_pad = cfg.q_tile.div_ceil(LANES) * LANES;
        let d = cfg.head_dim;
        let zeros = |n| {
            let mut tile = AlignedVec::with_capacity(n);
            tile.resize(n, 0.0);
            tile
        };
        let scratch = Scratch {
            qt: zeros(d * br_pad),
            s: zeros(cfg.kv_tile * br_pad),
            m: vec![0.0; br_pad],
            l: vec![0.0; br_pad],
            alpha: vec![0.0; br_pad],
        };
        Ok(Self {
            cfg,
            br_pad,
            scratch,
        })
    }

    /// The configuration this kernel was built with.
    pub fn config(&self) -> &FlashPrefillConfig {
        &self.cfg
    }

    /// Bytes of scratch the kernel holds, measured from its buffers. It depends on `q_tile`,
    /// `kv_tile` and `head_dim` only, never on the sequence length: about
    /// `4·q_tile·(kv_tile + head_dim + 3)` bytes (`q_tile` rounded up to a multiple of 8), plus
    /// under 128 bytes that put the two tiles on cache lines.
    pub fn scratch_bytes(&self) -> usize {
        let s = &self.scratch;
        let small: usize = [&s.m, &s.l, &s.alpha]
            .iter()
            .map(|b| size_of_val(b.as_slice()))
            .sum();
        s.qt.allocated_bytes() + s.s.allocated_bytes() + small
    }

    /// Causal attention of `q` over `k`/`v`, allocating the output.
    ///
    /// `q` is `[n_heads, q_len, head_dim]`, `k` and `v` are `[n_kv_heads, kv_len, head_dim]`
    /// with `q_len ≤ kv_len`: the queries are the *last* `q_len` positions, so `q_len = kv_len`
    /// is a full prefill and `q_len < kv_len` a chunk continuing a cached prefix (see
    /// [`AttnShape::continuation`]).
    ///
    /// # Errors
    /// As [`prefill_into`](Self::prefill_into).
    ///
    /// # Performance
    /// Allocates the output (and copies any input that is not in standard layout); use
    /// [`prefill_into`](Self::prefill_into) or [`attend_into`](Self::attend_into) on hot paths.
    pub fn prefill(
        &mut self,
        q: &ArrayRef3<f32>,
        k: &ArrayRef3<f32>,
        v: &ArrayRef3<f32>,
    ) -> Result<FlashOutput> {
        let (h, q_len) = (q.shape()[0], q.shape()[1]);
        let mut out = FlashOutput {
            out: Array3::zeros(q.raw_dim()),
            lse: Array2::zeros((h, q_len)),
        };
        self.prefill_into(q, k, v, &mut out.out, &mut out.lse)?;
        Ok(out)
    }

    /// Causal attention of `q` over `k`/`v` into caller arrays (shapes as in
    /// [`prefill`](Self::prefill)); `out` is `[n_heads, q_len, head_dim]` and `lse`
    /// `[n_heads, q_len]`, both in standard layout.
    ///
    /// # Errors
    /// - [`Error::Shape`] if a shape does not match the configuration or the others, if
    ///   `q_len > kv_len`, if `kv_len = 0`, or if `out`/`lse` are not in standard layout;
    /// - [`Error::Core`] (`NonFinite`) if `q`, `k` or `v` holds a NaN or an infinity;
    /// - [`Error::AttentionOverflow`] if finite inputs overflow f32 (logits or weighted sums of
    ///   values beyond its range).
    ///
    /// # Performance
    /// No allocation when the inputs are in standard layout (otherwise each is copied once).
    pub fn prefill_into(
        &mut self,
        q: &ArrayRef3<f32>,
        k: &ArrayRef3<f32>,
        v: &ArrayRef3<f32>,
        out: &mut ArrayRef3<f32>,
        lse: &mut ArrayRef2<f32>,
    ) -> Result<()> {
        let (h, q_len, dq) = (q.shape()[0], q.shape()[1], q.shape()[2]);
        let (kv_len, d) = (k.shape()[1], self.cfg.head_dim);
        let want_q = format!("[{}, q_len, {d}]", self.cfg.n_heads);
        if h != self.cfg.n_heads || dq != d {
            return Err(
                ShapeError::new("FlashPrefillKernel q", want_q, fmt_shape(q.shape())).into(),
            );
        }
        let want_kv = format!("[{}, kv_len, {d}]", self.cfg.n_kv_heads);
        if k.shape()[0] != self.cfg.n_kv_heads || k.shape()[2] != d {
            return Err(
                ShapeError::new("FlashPrefillKernel k", want_kv, fmt_shape(k.shape())).into(),
            );
        }
        if v.shape() != k.shape() {
            return Err(ShapeError::new(
                "FlashPrefillKernel v",
                fmt_shape(k.shape()),
                fmt_shape(v.shape()),
            )
            .into());
        }
        if q_len > kv_len {
            return Err(ShapeError::new(
                "FlashPrefillKernel q_len (at most kv_len)",
                format!("<= {kv_len}"),
                q_len,
            )
            .into());
        }
        if out.shape() != q.shape() {
            return Err(ShapeError::new(
                "FlashPrefillKernel out",
                fmt_shape(q.shape()),
                fmt_shape(out.shape()),
            )
            .into());
        }
        if lse.shape() != [h, q_len] {
            return Err(ShapeError::new(
                "FlashPrefillKernel lse",
                format!("[{h}, {q_len}]"),
                fmt_shape(lse.shape()),
            )
            .into());
        }
        let shape = AttnShape {
            q_len,
            kv_len,
            q_offset: kv_len - q_len,
        };
        let (qs, ks, vs) = (
            q.as_standard_layout(),
            k.as_standard_layout(),
            v.as_standard_layout(),
        );
        let (Some(qs), Some(ks), Some(vs)) = (qs.as_slice(), ks.as_slice(), vs.as_slice()) else {
            // `as_standard_layout` always yields a contiguous array.
            return Err(
                ShapeError::new("FlashPrefillKernel inputs", "contiguous", "strided").into(),
            );
        };
        let Some(out) = out.as_slice_mut() else {
            return Err(
                ShapeError::new("FlashPrefillKernel out", "standard layout", "strided").into(),
            );
        };
        let Some(lse) = lse.as_slice_mut() else {
            return Err(
                ShapeError::new("FlashPrefillKernel lse", "standard layout", "strided").into(),
            );
        };
        self.attend_into(shape, qs, ks, vs, out, lse)
    }

    /// The kernel on slices: attention of `q` over `k`/`v` placed by `shape`, written into
    /// `out` and `lse`.
    ///
    /// Layouts (row-major): `q` and `out` are `[n_heads, q_len, head_dim]`, `k` and `v`
    /// `[n_kv_heads, kv_len, head_dim]`, `lse` `[n_heads, q_len]` (natural log-sum-exp of the
    /// row's scaled logits over its visible keys).
    ///
    /// # Errors
    /// - [`Error::Shape`] if a slice length does not match `shape` and the configuration,
    ///   `q_offset + q_len` overflows `usize`, or `shape.kv_len = 0` while `shape.q_len > 0`;
    /// - [`Error::Core`] (`NonFinite`) if `q`, `k` or `v` holds a NaN or an infinity (checked
    ///   before anything is written);
    /// - [`Error::AttentionOverflow`] if finite inputs overflow f32: logits `scale·q·k` or a
    ///   weighted sum of values beyond its range (`out` and `lse` then hold unspecified values).
    ///
    /// # Performance
    /// No allocation. About `4·attended_pairs·head_dim` flops per query head; see the module
    /// docs for the micro-kernel.
    pub fn attend_into(
        &mut self,
        shape: AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        lse: &mut [f32],
    ) -> Result<()> {
        let (h, hkv, d) = (self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim);
        // Expected lengths as products that cannot silently wrap around.
        let check = |ctx: &'static str, dims: &[usize], got: usize| match dims
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
        {
            Some(want) if want == got => Ok(()),
            Some(want) => Err(Error::from(ShapeError::new(ctx, want, got))),
            None => Err(Error::from(ShapeError::new(
                ctx,
                "a length within usize",
                got,
            ))),
        };
        check("FlashPrefillKernel q length", &[h, shape.q_len, d], q.len())?;
        check(
            "FlashPrefillKernel k length",
            &[hkv, shape.kv_len, d],
            k.len(),
        )?;
        check(
            "FlashPrefillKernel v length",
            &[hkv, shape.kv_len, d],
            v.len(),
        )?;
        check(
            "FlashPrefillKernel out length",
            &[h, shape.q_len, d],
            out.len(),
        )?;
        check(
            "FlashPrefillKernel lse length",
            &[h, shape.q_len],
            lse.len(),
        )?;
        if shape.q_offset.checked_add(shape.q_len).is_none() {
            return Err(ShapeError::new(
                "FlashPrefillKernel q_offset + q_len",
                "a position within usize",
                format!("{} + {}", shape.q_offset, shape.q_len),
            )
            .into());
        }
        if shape.q_len == 0 {
            return Ok(());
        }
        if shape.kv_len == 0 {
            return Err(ShapeError::new("FlashPrefillKernel kv_len", ">= 1", 0).into());
        }
        check_finite("FlashPrefillKernel q", q)?;
        check_finite("FlashPrefillKernel k", k)?;
        check_finite("FlashPrefillKernel v", v)?;

        let group = h / hkv;
        let (qn, kn) = (shape.q_len * d, shape.kv_len * d);
        for head in 0..h {
            let g = head / group;
            self.head(
                shape,
                &q[head * qn..][..qn],
                &k[g * kn..][..kn],
                &v[g * kn..][..kn],
                &mut out[head * qn..][..qn],
                &mut lse[head * shape.q_len..][..shape.q_len],
            );
        }
        // Finite inputs can still overflow f32: logits beyond its range (lse), or weighted sums
        // of huge values (out). One vectorisable scan, then the exact row on failure.
        // The vectorised scan of `check_finite` (its error is only built on failure); the
        // per-row search below runs only when something overflowed.
        let finite = |x: &[f32]| check_finite("FlashPrefillKernel output", x).is_ok();
        if !(finite(lse) && finite(out)) {
            let rows = h * shape.q_len;
            let i = (0..rows)
                .find(|&i| !(lse[i].is_finite() && finite(&out[i * d..][..d])))
                .unwrap_or(0);
            return Err(Error::AttentionOverflow {
                head: i / shape.q_len,
                row: i % shape.q_len,
            });
        }
        Ok(())
    }

    /// One query head against its KV head; slices already validated.
    ///
    /// Per query tile: `Qᵀ` (scaled by `scale·log₂e`) is packed once; per key tile, the scores
    /// `Sᵀ = K·Qᵀ` (keys × queries), the online softmax down each query's column, and
    /// `O ← diag(alpha)·O + P·V` straight into the output rows, reading `K`, `V` and `P` where
    /// they lie. On a tile that crosses the diagonal, the scores of a band of keys are computed
    /// from the first group of [`GROUP`] queries that sees one of them, and each group sums
    /// only the keys its last query sees; masked scores are `-inf`, so they weigh exactly 0.
    fn head(
        &mut self,
        shape: AttnShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        lse: &mut [f32],
    ) {
        let d = self.cfg.head_dim;
        let (br, bc, bp) = (self.cfg.q_tile, self.cfg.kv_tile, self.br_pad);
        let qscale = self.cfg.scale * std::f32::consts::LOG2_E;
        let sc = &mut self.scratch;
        for i0 in (0..shape.q_len).step_by(br) {
            let rows = br.min(shape.q_len - i0);
            // Query columns in use, padded to whole vectors (padding columns are zero queries).
            let w = rows.div_ceil(LANES) * LANES;
            ops::transpose_scaled_into(&q[i0 * d..(i0 + rows) * d], d, qscale, &mut sc.qt, bp);
            if w > rows {
                for col in sc.qt.chunks_exact_mut(bp).take(d) {
                    col[rows..w].fill(0.0);
                }
            }
            sc.m[..w].fill(f32::NEG_INFINITY);
            sc.l[..w].fill(0.0);
            let o = &mut out[i0 * d..(i0 + rows) * d];
            // Position of the tile's first query; keys at or past `kv_end` are seen by none.
            let first = shape.q_offset + i0;
            let kv_end = shape.kv_len.min(first + rows);
            for k0 in (0..kv_end).step_by(bc) {
                let cols = bc.min(kv_end - k0);
                let (kt, vt) = (&k[k0 * d..(k0 + cols) * d], &v[k0 * d..(k0 + cols) * d]);
                // Keys of this tile seen by query column `i` (padding columns as the last row).
                let seen = |i: usize| cols.min((first + i.min(rows - 1) + 1).saturating_sub(k0));
                let scores = |m: usize, n: usize| ops::GemmLayout {
                    m,
                    n,
                    k: d,
                    a_row: d,
                    a_col: 1,
                    ldb: bp,
                    ldc: bp,
                };
                // O (queries × d) += P (read from Sᵀ) · V; the first key tile overwrites `out`.
                let pv = |m: usize, keys: usize| ops::GemmLayout {
                    m,
                    n: d,
                    k: keys,
                    a_row: 1,
                    a_col: bp,
                    ldb: d,
                    ldc: d,
                };
                if seen(0) == cols {
                    // Every query sees every key of the tile: three whole-tile calls.
                    ops::gemm_into(scores(cols, w), kt, &sc.qt, &mut sc.s, None);
                    ops::online_softmax_cols_exp2(
                        &mut sc.s,
                        bp,
                        cols,
                        &mut sc.m[..w],
                        &mut sc.l[..w],
                        &mut sc.alpha[..w],
                    );
                    let scale = (k0 > 0).then_some(&sc.alpha[..rows]);
                    ops::gemm_into(pv(rows, cols), &sc.s, vt, o, scale);
                    continue;
                }
                // The tile crosses the diagonal. Scores of each band of keys whose first
                // seeing query lies in the same group, from that group's first column on
                // (one product call per band).
                let mut j0 = 0;
                while j0 < cols {
                    // Query column `i` sees key `j` iff `first + i >= k0 + j`.
                    let c0 = (k0 + j0).saturating_sub(first) / GROUP * GROUP;
                    let j1 = (first + c0 + GROUP).saturating_sub(k0).clamp(j0 + 1, cols);
                    ops::gemm_into(
                        scores(j1 - j0, w - c0),
                        &kt[j0 * d..],
                        &sc.qt[c0..],
                        &mut sc.s[j0 * bp + c0..],
                        None,
                    );
                    j0 = j1;
                }
                // Mask: key `j` is unseen by the query columns before `hide`. Only the group
                // holding column `hide - 1` reads row `j` and hides some of it (an earlier
                // group's last query does not see key `j`, so its softmax stops above row
                // `j`), so only that group's hidden columns are set to `-inf`.
                for j in 0..cols {
                    let hide = (k0 + j).saturating_sub(first).min(w);
                    let from = hide / GROUP * GROUP;
                    let row = &mut sc.s[j * bp + from..];
                    match row.first_chunk_mut::<GROUP>() {
                        // A whole group inside the row: one fixed-width select (vectorised)
                        // instead of a fill of 0..16 values, which compiled to a masked store
                        // per element.
                        Some(band) if from + GROUP <= bp => {
                            let n = hide - from;
                            let hidden = &HIDDEN[GROUP - n..][..GROUP];
                            for (x, &h) in band.iter_mut().zip(hidden) {
                                let b = x.to_bits();
                                *x = f32::from_bits((b & !h) | (f32::NEG_INFINITY.to_bits() & h));
                            }
                        }
                        _ => row[..hide - from].fill(f32::NEG_INFINITY),
                    }
                }
                for g0 in (0..rows).step_by(GROUP) {
                    let gw = GROUP.min(w - g0);
                    let keys = seen(g0 + gw - 1);
                    if keys == 0 {
                        continue; // no query of the group sees a key of this tile
                    }
                    let cols_g = g0..g0 + gw;
                    ops::online_softmax_cols_exp2(
                        &mut sc.s[g0..],
                        bp,
                        keys,
                        &mut sc.m[cols_g.clone()],
                        &mut sc.l[cols_g.clone()],
                        &mut sc.alpha[cols_g],
                    );
                    let g_rows = GROUP.min(rows - g0);
                    let scale = (k0 > 0).then_some(&sc.alpha[g0..g0 + g_rows]);
                    ops::gemm_into(pv(g_rows, keys), &sc.s[g0..], vt, &mut o[g0 * d..], scale);
                }
            }
            // One division per row, then the log-sum-exp in natural units (the tile's
            // logarithms in one vectorised pass).
            let lse = &mut lse[i0..i0 + rows];
            ops::log2_into(&sc.l[..rows], lse);
            for ((lv, inv), (&m, &l)) in lse
                .iter_mut()
                .zip(&mut sc.alpha[..rows])
                .zip(sc.m.iter().zip(&sc.l))
            {
                *inv = 1.0 / l;
                *lv = (m + *lv) * std::f32::consts::LN_2;
            }
            // `O ← diag(1/l)·O`: the product with depth 0 is the row scaling alone (one
            // multiply per element), on the vectorised kernel.
            let rescale = ops::GemmLayout {
                m: rows,
                n: d,
                k: 0,
                a_row: 0,
                a_col: 0,
                ldb: d,
                ldc: d,
            };
            ops::gemm_into(rescale, &[], &[], o, Some(&sc.alpha[..rows]));
        }
    }
}

/// Merges two partial attention results over disjoint key sets by their log-sum-exps:
/// `out = (e^{lse_a}·a + e^{lse_b}·b) / (e^{lse_a} + e^{lse_b})`,
/// `lse = log(e^{lse_a} + e^{lse_b})`, row by row.
///
/// `a`, `b` and `out` are `rows × head_dim` (row-major), `lse_a`, `lse_b` and `lse` have `rows`
/// entries, `rows = lse.len()`. A row whose log-sum-exp is `-inf` is an empty partial (no keys)
/// and gets weight 0; when both are empty the row is 0 with log-sum-exp `-inf`.
///
/// # Errors
/// - [`Error::Shape`] if the lengths do not agree (or `rows = 0` with non-empty outputs);
/// - [`Error::Core`] (`NonFinite`) if `a` or `b` holds a NaN or an infinity, or a log-sum-exp is
///   NaN or `+inf`.
///
/// # Example
/// ```
/// use squish_attn::merge_attention_into;
/// // Two halves with equal mass: the merge is their mean and the log-sum-exp grows by ln 2.
/// let (mut out, mut lse) = ([0.0f32; 2], [0.0f32; 1]);
/// merge_attention_into(&[1.0, 0.0], &[0.5], &[0.0, 1.0], &[0.5], &mut out, &mut lse)?;
/// assert_eq!(out, [0.5, 0.5]);
/// assert!((lse[0] - (0.5 + 2f32.ln())).abs() < 1e-6);
/// # Ok::<(), squish_attn::Error>(())
/// ```
pub fn merge_attention_into(
    a: &[f32],
    lse_a: &[f32],
    b: &[f32],
    lse_b: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<()> {
    let rows = lse.len();
    let check = |ctx: &'static str, want: usize, got: usize| {
        if want == got {
            Ok(())
        } else {
            Err(Error::from(ShapeError::new(ctx, want, got)))
        }
    };
    check("merge_attention_into lse_a length", rows, lse_a.len())?;
    check("merge_attention_into lse_b length", rows, lse_b.len())?;
    if rows == 0 {
        check("merge_attention_into out length", 0, out.len())?;
        check("merge_attention_into a length", 0, a.len())?;
        return check("merge_attention_into b length", 0, b.len());
    }
    let d = out.len() / rows;
    check("merge_attention_into out length", rows * d, out.len())?;
    check("merge_attention_into a length", rows * d, a.len())?;
    check("merge_attention_into b length", rows * d, b.len())?;
    check_finite("merge_attention_into a", a)?;
    check_finite("merge_attention_into b", b)?;
    for (ctx, l) in [
        ("merge_attention_into lse_a", lse_a),
        ("merge_attention_into lse_b", lse_b),
    ] {
        if let Some((index, &value)) = l
            .iter()
            .enumerate()
            .find(|(_, x)| x.is_nan() || **x == f32::INFINITY)
        {
            return Err(Error::Core(squish_core::Error::NonFinite {
                context: ctx,
                index,
                value,
            }));
        }
    }
    for r in 0..rows {
        let (la, lb) = (lse_a[r], lse_b[r]);
        let m = la.max(lb);
        let dst = &mut out[r * d..][..d];
        if m == f32::NEG_INFINITY {
            dst.fill(0.0);
            lse[r] = f32::NEG_INFINITY;
            continue;
        }
        let (ea, eb) = ((la - m).exp(), (lb - m).exp());
        let sum = ea + eb;
        let (wa, wb) = (ea / sum, eb / sum);
        for ((o, &x), &y) in dst.iter_mut().zip(&a[r * d..][..d]).zip(&b[r * d..][..d]) {
            *o = wa * x + wb * y;
        }
        lse[r] = m + sum.ln();
    }
    Ok(())
}

fn fmt_shape(s: &[usize]) -> String {
    format!("{s:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FlashPrefillKernel>();
        assert_send_sync::<FlashOutput>();
    }
}
