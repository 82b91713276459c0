//! KIVI-style online KV-cache compression with an f32 residual window and optional token
//! eviction.
//!
//! Follows KIVI (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache",
//! ICML 2024): keys are quantised **per channel** (a group is `group_size` consecutive tokens of
//! one channel, so an outlier channel only stretches its own scale), values **per token** (a
//! group is `value_group_size` consecutive channels of one token), asymmetric (scale and
//! zero-point per group, squish-core's grouped format), bit-packed at 8, 4 or 2 bits. The most
//! recent tokens stay in full precision as a residual window and are quantised `group_size`
//! tokens at a time as they age. Optional eviction follows StreamingLLM, H2O or key norm (see
//! [`EvictionPolicy`]).
//!
//! # Layout
//! Per head, with `n` tokens held, `q = group_size * floor(max(0, n - residual) / group_size)`
//! tokens are quantised and the last `n - q` (between `min(n, residual)` and
//! `residual + group_size - 1`) are held as `f32`. The quantised part of a head is exactly what
//! [`squish_core::quant::quantize_grouped`] returns for its first `q` rows: keys with
//! [`GroupAxis::AlongColumn`] (or [`GroupAxis::AlongRow`] for the per-token baseline), values
//! with [`GroupAxis::AlongRow`]. The residual is `f32` rather than `f16`: it is exact (KIVI
//! keeps it in the model's precision), costs `2 * residual * head_dim * 4` bytes per head, and
//! appends cost one copy.
//!
//! Eviction from a compressed cache ([`KvCompressor::evict`], during decode) keeps what it
//! keeps without re-quantising: the kept quantised tokens keep their codes and their groups'
//! parameters, so a per-channel key group may then hold fewer than `group_size` tokens (its
//! length is stored), and the residual may hold fewer than `residual` tokens until appends
//! refill it.

mod evict;
mod kernel;

use ndarray::{ArrayRef2, ArrayRef3};
use squish_core::quant::{GroupAxis, GroupedQuantConfig, QuantBits};
use squish_core::{ConfigError, ShapeError};

pub use evict::{Budget, Eviction, EvictionPolicy};

use crate::{Error, Result};
use kernel::{Anomaly, Groups, Lens};

/// Configuration of a [`KvCompressor`].
///
/// # Example
/// ```
/// use squish_kv::kv_compress::KvCompressorConfig;
/// let cfg = KvCompressorConfig::default();
/// assert!(cfg.validate().is_ok());
/// assert_eq!((cfg.group_size, cfg.residual), (32, 128));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvCompressorConfig {
    /// Bits per key code.
    pub key_bits: QuantBits,
    /// Bits per value code.
    pub value_bits: QuantBits,
    /// `G`: tokens per key group (per channel), and the number of tokens quantised at once as
    /// they leave the residual window. In `1..=65536`.
    pub group_size: usize,
    /// Channels per value group (per token), and per key group when `key_axis` is
    /// [`GroupAxis::AlongRow`]. A multiple of 4 in `4..=65536` that must divide `head_dim`.
    pub value_group_size: usize,
    /// `R`: the most recent tokens kept in full precision (`f32`). At most `2^24`.
    pub residual: usize,
    /// How keys are grouped: [`GroupAxis::AlongColumn`] (per channel, KIVI) or
    /// [`GroupAxis::AlongRow`] (per token, `value_group_size` channels per group: the
    /// baseline KIVI improves on).
    pub key_axis: GroupAxis,
}

impl Default for KvCompressorConfig {
    /// KIVI's setting at 4 bits: groups of 32, residual of 128 tokens, per-channel keys.
    fn default() -> Self {
        Self {
            key_bits: QuantBits::B4,
            value_bits: QuantBits::B4,
            group_size: 32,
            value_group_size: 32,
            residual: 128,
            key_axis: GroupAxis::AlongColumn,
        }
    }
}

impl KvCompressorConfig {
    /// A configuration with `bits` for keys and values, groups of `group_size` tokens (keys)
    /// and channels (values), residual `residual`, per-channel keys.
    pub const fn new(bits: QuantBits, group_size: usize, residual: usize) -> Self {
        Self {
            key_bits: bits,
            value_bits: bits,
            group_size,
            value_group_size: group_size,
            residual,
            key_axis: GroupAxis::AlongColumn,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field out of its documented range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const C: &str = "KvCompressor";
        if !(1..=65_536).contains(&self.group_size) {
            return Err(ConfigError::new(
                C,
                "group_size",
                "must be in 1..=65536",
                self.group_size,
            ));
        }
        if !(4..=65_536).contains(&self.value_group_size)
            || !self.value_group_size.is_multiple_of(4)
        {
            return Err(ConfigError::new(
                C,
                "value_group_size",
                "must be a multiple of 4 in 4..=65536",
                self.value_group_size,
            ));
        }
        if self.residual > 1 << 24 {
            return Err(ConfigError::new(
                C,
                "residual",
                "must be at most 16777216",
                self.residual,
            ));
        }
        Ok(())
    }

    /// Tokens of a head holding `n` tokens that are quantised (the rest is the residual), as
    /// compression and appends leave it (after [`KvCompressor::evict`], see
    /// [`CompressedKv::quantized_len`]).
    pub const fn quantized_len(&self, n: usize) -> usize {
        n.saturating_sub(self.residual) / self.group_size * self.group_size
    }

    /// squish-core's grouping of the keys.
    fn key_quant(&self) -> GroupedQuantConfig {
        match self.key_axis {
            GroupAxis::AlongColumn => {
                GroupedQuantConfig::new(self.key_bits, self.group_size, GroupAxis::AlongColumn)
            }
            GroupAxis::AlongRow => {
                GroupedQuantConfig::new(self.key_bits, self.value_group_size, GroupAxis::AlongRow)
            }
        }
    }

    /// squish-core's grouping of the values.
    fn value_quant(&self) -> GroupedQuantConfig {
        GroupedQuantConfig::new(self.value_bits, self.value_group_size, GroupAxis::AlongRow)
    }
}

/// One head's storage.
#[derive(Debug, Clone, Default, PartialEq)]
struct HeadStore {
    /// Quantised tokens (a multiple of `group_size`).
    qlen: usize,
    /// Quantised keys and values.
    k: Groups,
    v: Groups,
    /// Residual keys and values, `[len - qlen, head_dim]` row-major.
    k_res: Vec<f32>,
    v_res: Vec<f32>,
    /// Original positions of the held tokens, only after eviction.
    positions: Vec<u32>,
    /// Tokens of each per-channel key group, once [`KvCompressor::evict`] has shortened some
    /// (empty while every group holds `group_size`).
    k_lens: Vec<u32>,
}

impl HeadStore {
    fn clear(&mut self) {
        self.qlen = 0;
        self.k.clear();
        self.v.clear();
        self.k_res.clear();
        self.v_res.clear();
        self.positions.clear();
        self.k_lens.clear();
    }

    /// Empties the head except for the quantised buffers, which the next fill overwrites in
    /// place (their lengths are set by [`Groups::write_at`]).
    fn reset(&mut self) {
        self.qlen = 0;
        self.k_res.clear();
        self.v_res.clear();
        self.positions.clear();
        self.k_lens.clear();
    }

    /// Tokens held, quantised and residual (`d` channels per token).
    fn len(&self, d: usize) -> usize {
        self.qlen + self.k_res.len() / d.max(1)
    }

    /// Keeps the tokens `kept` (ascending indices into the tokens held) and drops the rest,
    /// without re-quantising: kept quantised tokens keep their codes and their groups'
    /// parameters, kept residual tokens their values.
    fn retain(&mut self, kept: &[u32], d: usize, cfg: &KvCompressorConfig) {
        let q = self.qlen;
        let (kq, kr) = kept.split_at(kept.partition_point(|&i| (i as usize) < q));
        if kq.len() != q {
            let per_row = d / cfg.value_group_size;
            match cfg.key_axis {
                GroupAxis::AlongColumn => {
                    if self.k_lens.is_empty() {
                        let g = cfg.group_size;
                        self.k_lens.resize(q / g, g as u32);
                    }
                    let rb = cfg.key_bits.packed_len(d);
                    self.k.retain_column_rows(kq, rb, d, &mut self.k_lens);
                }
                GroupAxis::AlongRow => {
                    self.k.retain_rows(kq, cfg.key_bits.packed_len(d), per_row);
                }
            }
            self.v
                .retain_rows(kq, cfg.value_bits.packed_len(d), per_row);
            self.qlen = kq.len();
        }
        let res = || kr.iter().map(|&i| i as usize - q);
        kernel::compact(&mut self.k_res, d, res());
        kernel::compact(&mut self.v_res, d, res());
        kernel::compact(&mut self.positions, 1, kept.iter().map(|&i| i as usize));
    }

    /// Payload bytes: the buffers' lengths (spare capacity not counted).
    fn bytes(&self) -> usize {
        let f = size_of::<f32>();
        self.k.bytes()
            + self.v.bytes()
            + f * (self.k_res.len() + self.v_res.len())
            + size_of::<u32>() * (self.positions.len() + self.k_lens.len())
    }
}

/// Metadata bytes per head: its quantised length and its residual length (the residual
/// buffers' length), a `usize` each.
const HEAD_METADATA_BYTES: usize = 2 * size_of::<usize>();

/// Metadata bytes of a [`CompressedKv`] besides its heads, each field at its in-memory size
/// (padding not counted): the configuration (`group_size`, `value_group_size`, `residual`:
/// `usize`; `key_bits`, `value_bits`: [`QuantBits`]; `key_axis`: [`GroupAxis`]), `head_dim`,
/// the next position and the number of heads (`usize` each), and the evicted flag (`bool`).
const HEADER_BYTES: usize = 3 * size_of::<usize>()
    + 2 * size_of::<QuantBits>()
    + size_of::<GroupAxis>()
    + 3 * size_of::<usize>()
    + size_of::<bool>();

/// A compressed KV cache (all heads of one layer), produced by [`KvCompressor`].
///
/// Heads may hold different numbers of tokens after a ragged eviction ([`Budget::PerHead`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompressedKv {
    cfg: KvCompressorConfig,
    head_dim: usize,
    /// Position the next appended token gets.
    next_position: usize,
    evicted: bool,
    heads: Vec<HeadStore>,
}

impl CompressedKv {
    /// An empty cache (no heads), to be filled by [`KvCompressor::compress_into`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads.len()
    }

    /// Channels per token.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The configuration it was compressed with.
    pub fn config(&self) -> &KvCompressorConfig {
        &self.cfg
    }

    /// Tokens held by head `h` (quantised plus residual).
    ///
    /// # Panics
    /// If `h >= heads()`.
    pub fn head_len(&self, h: usize) -> usize {
        self.heads[h].len(self.head_dim)
    }

    /// Tokens of head `h` held quantised (the rest are in the `f32` residual window).
    ///
    /// # Panics
    /// If `h >= heads()`.
    pub fn quantized_len(&self, h: usize) -> usize {
        self.heads[h].qlen
    }

    /// Original sequence positions of head `h`'s tokens, in order, if tokens were evicted;
    /// `None` when the head holds every position `0..head_len(h)`.
    ///
    /// # Panics
    /// If `h >= heads()`.
    pub fn positions(&self, h: usize) -> Option<&[u32]> {
        self.evicted.then(|| self.heads[h].positions.as_slice())
    }

    /// Whether every head holds the same number of tokens.
    pub fn is_uniform(&self) -> bool {
        (1..self.heads()).all(|h| self.head_len(h) == self.head_len(0))
    }

    /// Payload bytes held, from the buffers' lengths: packed key and value codes, 4 bytes per
    /// scale and per zero-point, 4 per residual `f32`, 4 per kept position after eviction,
    /// and 4 per key group once [`KvCompressor::evict`] has shortened groups (their lengths)
    /// (spare capacity kept for reuse is not counted).
    pub fn payload_bytes(&self) -> usize {
        self.heads.iter().map(HeadStore::bytes).sum()
    }

    /// Bytes of metadata kept to interpret and extend the payload, each field at its in-memory
    /// size (padding and the buffers' pointer / capacity words not counted):
    /// - per head, its quantised length and its residual length (`usize` each);
    /// - once, the configuration (`group_size`, `value_group_size` and `residual` as `usize`,
    ///   `key_bits` and `value_bits` as [`QuantBits`], `key_axis` as [`GroupAxis`]),
    ///   `head_dim`, the position the next token gets and the number of heads (`usize` each),
    ///   and whether tokens were evicted (`bool`).
    ///
    /// On a 64-bit target: `16 * heads() + 52` bytes.
    pub fn metadata_bytes(&self) -> usize {
        HEADER_BYTES + HEAD_METADATA_BYTES * self.heads()
    }

    /// Bytes held: [`payload_bytes`](Self::payload_bytes) plus
    /// [`metadata_bytes`](Self::metadata_bytes), computed from the buffers' lengths and the
    /// fields (spare capacity kept for reuse is not counted). There are no codebooks.
    pub fn bytes_held(&self) -> usize {
        self.payload_bytes() + self.metadata_bytes()
    }

    /// Reconstructs head `h` into `keys` and `values`, each `[head_len(h), head_dim]`
    /// row-major: quantised tokens as `zero + code * scale` (bit-identical to
    /// squish-core's `dequantize_into`), residual tokens exactly.
    ///
    /// # Errors
    /// [`Error::Shape`] if `h >= heads()` or a buffer has the wrong length.
    ///
    /// # Performance
    /// No allocation.
    pub fn decompress_head_into(
        &self,
        h: usize,
        keys: &mut [f32],
        values: &mut [f32],
    ) -> Result<()> {
        if h >= self.heads() {
            return Err(ShapeError::new(
                "CompressedKv head",
                format_args!("< {}", self.heads()),
                h,
            )
            .into());
        }
        let n = self.head_len(h) * self.head_dim;
        for (buf, what) in [(&*keys, "decompress keys"), (&*values, "decompress values")] {
            if buf.len() != n {
                return Err(ShapeError::new(what, format_args!("{n} values"), buf.len()).into());
            }
        }
        self.decode_head(h, keys, values);
        Ok(())
    }

    /// Reconstructs every head into `keys` and `values`, each `[heads, len, head_dim]`
    /// row-major, where every head holds `len` tokens.
    ///
    /// # Errors
    /// [`Error::Shape`] if the heads hold different numbers of tokens (use
    /// [`decompress_head_into`](Self::decompress_head_into)) or a buffer has the wrong length.
    ///
    /// # Performance
    /// No allocation; squish-core's [`dequantize_grouped_slices`] (AVX2 when the CPU has it)
    /// plus one copy of the residual. 8 heads x 128 tokens x 64 channels at 8 bits (131 072
    /// values, 512 KiB of output): about 14 us on a loaded 2-core AVX2 VM, 0.11 ns per value,
    /// bound by the stores (0.07-0.085 ns per value while the output fits in L2).
    ///
    /// [`dequantize_grouped_slices`]: squish_core::quant::dequantize_grouped_slices
    pub fn decompress_into(&self, keys: &mut [f32], values: &mut [f32]) -> Result<()> {
        if !self.is_uniform() {
            return Err(ShapeError::new(
                "CompressedKv decompress_into",
                "heads of equal length",
                "ragged heads",
            )
            .into());
        }
        let per = if self.heads() == 0 {
            0
        } else {
            self.head_len(0) * self.head_dim
        };
        let n = per * self.heads();
        for (buf, what) in [(&*keys, "decompress keys"), (&*values, "decompress values")] {
            if buf.len() != n {
                return Err(ShapeError::new(what, format_args!("{n} values"), buf.len()).into());
            }
        }
        if per == 0 {
            return Ok(());
        }
        for (h, (k, v)) in keys
            .chunks_exact_mut(per)
            .zip(values.chunks_exact_mut(per))
            .enumerate()
        {
            self.decode_head(h, k, v);
        }
        Ok(())
    }

    fn decode_head(&self, h: usize, keys: &mut [f32], values: &mut [f32]) {
        self.decode_head_keys(h, keys);
        let s = &self.heads[h];
        let (vq, vr) = values.split_at_mut(s.qlen * self.head_dim);
        s.v.read(self.head_dim, &self.cfg.value_quant(), vq);
        vr.copy_from_slice(&s.v_res);
    }

    fn decode_head_keys(&self, h: usize, keys: &mut [f32]) {
        let s = &self.heads[h];
        let d = self.head_dim;
        let (kq, kr) = keys.split_at_mut(s.qlen * d);
        if s.k_lens.is_empty() {
            s.k.read(d, &self.cfg.key_quant(), kq);
        } else {
            s.k.read_ragged(d, &self.cfg.key_quant(), &s.k_lens, kq);
        }
        kr.copy_from_slice(&s.k_res);
    }
}

/// KIVI-style KV-cache compressor: per-channel keys, per-token values, 8/4/2-bit packed
/// codes with a scale and zero-point per group, an `f32` residual window of recent tokens, and
/// optional StreamingLLM / H2O / key-norm token eviction.
///
/// Implements the seed's `KVCompressor` ("INT8 quant + magnitude pruning"), without its
/// defects: codes are really packed, scales are per group (an outlier channel only stretches
/// its own groups), and eviction keeps the low-norm keys that attract attention.
///
/// # Example
/// ```
/// use ndarray::Array3;
/// use squish_core::quant::QuantBits;
/// use squish_kv::kv_compress::{CompressedKv, KvCompressor, KvCompressorConfig};
///
/// // 2 heads x 200 tokens x 64 channels; 4-bit, groups of 32, 32 recent tokens in f32.
/// let k = Array3::from_shape_fn((2, 200, 64), |(h, t, c)| ((h + t * c) % 17) as f32 * 0.1);
/// let v = k.mapv(|x| -x);
/// let mut comp = KvCompressor::new(KvCompressorConfig::new(QuantBits::B4, 32, 32))?;
/// let mut kv = CompressedKv::new();
/// comp.compress_into(&k, &v, None, &mut kv)?; // a prefill
/// assert_eq!(kv.quantized_len(0), 160); // 32 * floor((200 - 32) / 32)
/// // Decode: one token per head.
/// let tok = ndarray::Array2::<f32>::ones((2, 64));
/// comp.append(&tok, &tok, &mut kv)?;
/// assert_eq!(kv.head_len(1), 201);
/// let (mut k2, mut v2) = (vec![0.0; 2 * 201 * 64], vec![0.0; 2 * 201 * 64]);
/// kv.decompress_into(&mut k2, &mut v2)?;
/// assert_eq!(k2[200 * 64], 1.0); // residual tokens are exact
/// let f16_bytes = 2 * 2 * 201 * 64 * 2; // keys and values of 2 heads
/// assert!(kv.bytes_held() * 10 < f16_bytes * 8); // codes + scales + f32 residual
/// # Ok::<(), squish_kv::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct KvCompressor {
    cfg: KvCompressorConfig,
    gather_k: Vec<f32>,
    gather_v: Vec<f32>,
    kept: Vec<u32>,
    work: Vec<(f32, u32)>,
    /// Heads whose aging group `append` quantised, with their buffer lengths before it (the
    /// rollback on an error).
    aged: Vec<(usize, (Lens, Lens))>,
}

impl KvCompressor {
    /// A compressor with a validated configuration.
    ///
    /// # Errors
    /// [`Error::Config`] if `cfg.validate()` fails.
    pub fn new(cfg: KvCompressorConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            gather_k: Vec::new(),
            gather_v: Vec::new(),
            kept: Vec::new(),
            work: Vec::new(),
            aged: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KvCompressorConfig {
        &self.cfg
    }

    /// Compresses a whole prefill: `keys` and `values` are `[heads, seq_len, head_dim]`. With
    /// `eviction`, each head first keeps only its budgeted tokens (in temporal order), then
    /// those are compressed. Replaces the contents of `out`, reusing its buffers.
    ///
    /// # Errors
    /// - [`Error::Shape`] if `keys` and `values` differ in shape, `head_dim` is not a multiple
    ///   of 4, `seq_len >= 2^32`, H2O scores are not `[heads, seq_len]`, or a per-head budget
    ///   does not list one count per head.
    /// - [`Error::Config`] if `value_group_size` does not divide `head_dim`.
    /// - [`Error::Core`] for a NaN or infinity in the data or the scores, or a group whose
    ///   range overflows `f32` (squish-core's `NonFinite` / `OutOfRange`, with the element's
    ///   flat index in the input). `out` is left empty on these errors.
    ///
    /// # Performance
    /// No allocation once `out` and the compressor's scratch have grown to size: a prefill
    /// rewrites the previous cache's buffers in place. Quantisation is squish-core's
    /// [`quantize_grouped_slices`] (AVX2 when the CPU has it, bit-identical to
    /// `quantize_grouped`): 8 heads x 128 tokens x 64 channels at 8 bits with no residual
    /// (131 072 keys and values) take about 34 us on a loaded 2-core AVX2 VM, 0.26 ns per
    /// value (per-channel keys 0.21, per-token values 0.24 in cache). Non-contiguous inputs are
    /// copied once. With eviction, the kept tokens are gathered into scratch (one copy per run
    /// of consecutive tokens) and only the evicted ones are scanned for NaN / infinity up front;
    /// 10 % key-norm eviction on that shape takes about 57 us.
    ///
    /// [`quantize_grouped_slices`]: squish_core::quant::quantize_grouped_slices
    pub fn compress_into(
        &mut self,
        keys: &ArrayRef3<f32>,
        values: &ArrayRef3<f32>,
        eviction: Option<&Eviction<'_>>,
        out: &mut CompressedKv,
    ) -> Result<()> {
        let (heads, seq, d) = keys.dim();
        if values.dim() != (heads, seq, d) {
            return Err(ShapeError::new(
                "KvCompressor values",
                format_args!("{heads} x {seq} x {d} like the keys"),
                format_args!("{:?}", values.dim()),
            )
            .into());
        }
        self.check_head_dim(d)?;
        if u32::try_from(seq).is_err() {
            return Err(ShapeError::new("KvCompressor seq_len", "< 2^32", seq).into());
        }
        if let Some(e) = eviction {
            check_eviction(
                e,
                heads,
                heads * seq,
                format_args!("{heads} x {seq} = {} values", heads * seq),
                ("KvCompressor per-head budget", "KvCompressor H2O scores"),
            )?;
        }
        let k_std = keys.as_standard_layout();
        let v_std = values.as_standard_layout();
        let (Some(ks), Some(vs)) = (k_std.as_slice(), v_std.as_slice()) else {
            unreachable!("standard layout arrays are contiguous")
        };
        out.cfg.clone_from(&self.cfg);
        out.head_dim = d;
        out.next_position = seq;
        out.evicted = eviction.is_some();
        out.heads.resize_with(heads, HeadStore::default);
        let per = seq * d;
        for h in 0..heads {
            let (kh, vh) = (&ks[h * per..(h + 1) * per], &vs[h * per..(h + 1) * per]);
            let res = match eviction {
                None => {
                    out.heads[h].reset();
                    self.fill_head(kh, vh, d, &mut out.heads[h])
                        .map_err(|a| (a, h * per))
                }
                Some(e) => self.fill_head_evicted(e, h, kh, vh, d, &mut out.heads[h]),
            };
            if let Err((a, offset)) = res {
                let error = anomaly_error(a, offset, ks, vs);
                for s in &mut out.heads {
                    s.clear();
                }
                out.heads.clear();
                return Err(error);
            }
        }
        Ok(())
    }

    /// Appends one token to every head: `keys` and `values` are `[heads, head_dim]`. When a
    /// head's residual window reaches `residual + group_size` tokens, its oldest `group_size`
    /// tokens are quantised. The result equals compressing the whole sequence at once. To
    /// decode without a prefill, start from a cache compressed from `[heads, 0, head_dim]`
    /// arrays.
    ///
    /// # Errors
    /// - [`Error::Shape`] if the shapes do not match `cache` (heads, head_dim), or `cache`
    ///   was made with another configuration, or holds `2^32` positions.
    /// - [`Error::Core`] for a NaN or infinity in the token, or a group leaving the residual
    ///   window whose range overflows `f32`. The cache is unchanged on every error.
    ///
    /// # Performance
    /// No allocation once buffers have grown; one `f32` copy per token, plus one group
    /// quantisation every `group_size` tokens.
    pub fn append(
        &mut self,
        keys: &ArrayRef2<f32>,
        values: &ArrayRef2<f32>,
        cache: &mut CompressedKv,
    ) -> Result<()> {
        let (heads, d) = keys.dim();
        if values.dim() != (heads, d) || heads != cache.heads() || d != cache.head_dim {
            return Err(ShapeError::new(
                "KvCompressor append",
                format_args!("keys and values of {} x {}", cache.heads(), cache.head_dim),
                format_args!("{:?} and {:?}", keys.dim(), values.dim()),
            )
            .into());
        }
        self.check_config_of(cache, "KvCompressor append")?;
        let pos = u32::try_from(cache.next_position).map_err(|_| {
            ShapeError::new(
                "KvCompressor append position",
                "< 2^32",
                cache.next_position,
            )
        })?;
        for (name, a) in [
            ("KvCompressor append keys", keys),
            ("KvCompressor append values", values),
        ] {
            if let Some(i) = a.iter().position(|v| !v.is_finite()) {
                return Err(squish_core::Error::NonFinite {
                    context: name,
                    index: i,
                    value: a.iter().nth(i).copied().unwrap_or(f32::NAN),
                }
                .into());
            }
        }
        let (g, r) = (self.cfg.group_size, self.cfg.residual);
        let m = g * d;
        // Phase 1: every head that reaches `r + g` tokens with this one quantises its oldest
        // `g` tokens after the groups it holds. A range overflow truncates the heads quantised
        // so far back, so that the cache is unchanged on any error.
        self.aged.clear();
        for (h, s) in cache.heads.iter_mut().enumerate() {
            if s.k_res.len() / d + 1 != r + g {
                continue;
            }
            let at = (s.k.lens(), s.v.lens());
            let res = if r > 0 {
                // The aging group lies in the residual already.
                let (kr, vr) = (std::mem::take(&mut s.k_res), std::mem::take(&mut s.v_res));
                let res = self.quantize_into(&kr[..m], &vr[..m], d, s, at);
                (s.k_res, s.v_res) = (kr, vr);
                res
            } else {
                // No residual window: the group ends with this token.
                let (mut gk, mut gv) = (
                    std::mem::take(&mut self.gather_k),
                    std::mem::take(&mut self.gather_v),
                );
                gk.clear();
                gk.extend_from_slice(&s.k_res);
                gk.extend(keys.row(h).iter().copied());
                gv.clear();
                gv.extend_from_slice(&s.v_res);
                gv.extend(values.row(h).iter().copied());
                let res = self.quantize_into(&gk, &gv, d, s, at);
                (self.gather_k, self.gather_v) = (gk, gv);
                res
            };
            if let Err(a) = res {
                // This head's keys may be written although its values failed.
                s.k.truncate(at.0);
                s.v.truncate(at.1);
                for &(hh, (kl, vl)) in &self.aged {
                    cache.heads[hh].k.truncate(kl);
                    cache.heads[hh].v.truncate(vl);
                }
                return Err(append_anomaly_error(a));
            }
            self.aged.push((h, at));
        }
        // Phase 2: the token joins every residual; the aged groups leave it.
        for (h, s) in cache.heads.iter_mut().enumerate() {
            s.k_res.extend(keys.row(h).iter().copied());
            s.v_res.extend(values.row(h).iter().copied());
            if cache.evicted {
                s.positions.push(pos);
            }
            if s.k_res.len() / d == r + g {
                s.qlen += g;
                if !s.k_lens.is_empty() {
                    s.k_lens.push(g as u32);
                }
                s.k_res.copy_within(m.., 0);
                s.k_res.truncate(r * d);
                s.v_res.copy_within(m.., 0);
                s.v_res.truncate(r * d);
            }
        }
        cache.next_position += 1;
        Ok(())
    }

    /// Evicts tokens from a compressed cache, as decoding goes (StreamingLLM's rolling
    /// window, H2O with the scores accumulated so far, key norm): head `h` keeps
    /// `eviction`'s budget of the `head_len(h)` tokens it holds, chosen by the policy among
    /// them, in temporal order; [`CompressedKv::positions`] then names their original
    /// positions.
    ///
    /// Nothing is re-quantised, so every kept token decompresses to the very bits it did
    /// before: kept quantised tokens keep their codes and their groups' scales and
    /// zero-points (a per-channel key group may shrink below `group_size` tokens, and goes
    /// when empty), kept residual tokens their `f32` values. Tokens appended later join the
    /// residual window and age into full groups as usual. The policy sees the cache as it is:
    /// key norms are those of the decompressed keys; H2O's scores are one per held token,
    /// head `h`'s `head_len(h)` scores after head `h - 1`'s (`[heads, len]` row-major when the
    /// heads hold equal counts).
    ///
    /// # Errors
    /// - [`Error::Shape`] if `cache` was made with another configuration, a per-head budget
    ///   does not hold one count per head, or the H2O scores are not one per held token.
    /// - [`Error::Core`] (`NonFinite`) for a NaN or infinite H2O score.
    ///
    /// The cache is unchanged on every error.
    ///
    /// # Performance
    /// No allocation once the compressor's scratch and the cache's buffers have grown. Per
    /// head that evicts, one selection (key norm also decompresses the head's keys) and one
    /// in-place compaction of its buffers (one move per run of kept tokens). A StreamingLLM
    /// window of 128 tokens on 8 heads of 64 channels at 8 bits, one token appended and one
    /// evicted per decode step: about 9 µs per step on the 2-core AVX2 VM of the benches
    /// (`KvCompressor/append_evict`), mostly moving each head's codes down by a token;
    /// evicting in batches (a window with some slack) amortises that.
    ///
    /// # Example
    /// A StreamingLLM window during decode: 4 attention sinks and the most recent tokens, 64
    /// tokens per head in all.
    /// ```
    /// use ndarray::{Array2, Array3};
    /// use squish_core::quant::QuantBits;
    /// use squish_kv::kv_compress::{
    ///     Budget, CompressedKv, Eviction, EvictionPolicy, KvCompressor, KvCompressorConfig,
    /// };
    /// let mut comp = KvCompressor::new(KvCompressorConfig::new(QuantBits::B4, 32, 16))?;
    /// let mut kv = CompressedKv::new();
    /// let prompt = Array3::from_shape_fn((2, 60, 64), |(h, t, c)| ((h + t + c) % 9) as f32);
    /// comp.compress_into(&prompt, &prompt, None, &mut kv)?;
    /// let window = Eviction::new(EvictionPolicy::StreamingLlm { sinks: 4 }, Budget::Equal(64));
    /// for step in 0..20 {
    ///     let token = Array2::from_elem((2, 64), step as f32 * 0.1);
    ///     comp.append(&token, &token, &mut kv)?;
    ///     comp.evict(&window, &mut kv)?;
    /// }
    /// assert_eq!(kv.head_len(0), 64);
    /// let pos = kv.positions(0).unwrap();
    /// assert_eq!((&pos[..5], pos[63]), (&[0, 1, 2, 3, 20][..], 79));
    /// # Ok::<(), squish_kv::Error>(())
    /// ```
    pub fn evict(&mut self, eviction: &Eviction<'_>, cache: &mut CompressedKv) -> Result<()> {
        self.check_config_of(cache, "KvCompressor evict")?;
        let heads = cache.heads();
        let total: usize = (0..heads).map(|h| cache.head_len(h)).sum();
        check_eviction(
            eviction,
            heads,
            total,
            format_args!("{total} values (one per held token)"),
            (
                "KvCompressor evict per-head budget",
                "KvCompressor evict H2O scores",
            ),
        )?;
        let evicts = |h: usize| {
            let n = cache.head_len(h);
            eviction.keep(h, n) < n
        };
        if !(0..heads).any(evicts) {
            return Ok(());
        }
        if !cache.evicted {
            // Until now every head held the positions 0..len.
            for s in &mut cache.heads {
                let n = s.len(cache.head_dim) as u32;
                s.positions.clear();
                s.positions.extend(0..n);
            }
            cache.evicted = true;
        }
        let d = cache.head_dim;
        let (mut kept, mut keys) = (
            std::mem::take(&mut self.kept),
            std::mem::take(&mut self.gather_k),
        );
        let mut offset = 0;
        for h in 0..heads {
            let n = cache.head_len(h);
            let keep = eviction.keep(h, n);
            let scores = match eviction.policy {
                EvictionPolicy::H2o { scores, .. } => &scores[offset..offset + n],
                _ => &[],
            };
            offset += n;
            if keep == n {
                continue;
            }
            keys.clear();
            if matches!(eviction.policy, EvictionPolicy::KeyNorm) {
                keys.resize(n * d, 0.0);
                cache.decode_head_keys(h, &mut keys);
            }
            evict::select(
                &eviction.policy,
                &keys,
                d,
                n,
                scores,
                keep,
                &mut kept,
                &mut self.work,
            );
            cache.heads[h].retain(&kept, d, &self.cfg);
        }
        (self.kept, self.gather_k) = (kept, keys);
        Ok(())
    }

    /// [`Error::Shape`] (in `context`) unless `cache` was made with this configuration.
    fn check_config_of(&self, cache: &CompressedKv, context: &'static str) -> Result<()> {
        if cache.cfg != self.cfg {
            return Err(ShapeError::new(
                context,
                "a cache compressed with this configuration",
                "another configuration",
            )
            .into());
        }
        Ok(())
    }

    fn check_head_dim(&self, d: usize) -> Result<()> {
        if d == 0 || !d.is_multiple_of(4) {
            return Err(
                ShapeError::new("KvCompressor head_dim", "a positive multiple of 4", d).into(),
            );
        }
        if !d.is_multiple_of(self.cfg.value_group_size) {
            return Err(ConfigError::new(
                "KvCompressor",
                "value_group_size",
                format!("must divide head_dim ({d})"),
                self.cfg.value_group_size,
            )
            .into());
        }
        Ok(())
    }

    /// Fills a reset head from its `[n, d]` keys and values.
    fn fill_head(
        &self,
        kh: &[f32],
        vh: &[f32],
        d: usize,
        s: &mut HeadStore,
    ) -> Result<(), Anomaly> {
        let n = kh.len() / d;
        let q = self.cfg.quantized_len(n);
        self.quantize_into(&kh[..q * d], &vh[..q * d], d, s, ((0, 0, 0), (0, 0, 0)))?;
        s.qlen = q;
        s.k_res.extend_from_slice(&kh[q * d..]);
        s.v_res.extend_from_slice(&vh[q * d..]);
        // The residual may hold NaN that the quantiser never saw.
        for (x, off) in [(&kh[q * d..], q * d), (&vh[q * d..], VALUES + q * d)] {
            if let Some(i) = first_non_finite(x) {
                return Err(Anomaly::NonFinite(off + i));
            }
        }
        Ok(())
    }

    fn fill_head_evicted(
        &mut self,
        e: &Eviction<'_>,
        h: usize,
        kh: &[f32],
        vh: &[f32],
        d: usize,
        s: &mut HeadStore,
    ) -> Result<(), (Anomaly, usize)> {
        let n = kh.len() / d;
        let keep = e.keep(h, n);
        let scores = match e.policy {
            EvictionPolicy::H2o { scores, .. } => &scores[h * n..(h + 1) * n],
            _ => &[],
        };
        let mut kept = std::mem::take(&mut self.kept);
        // `select` orders NaN norms or scores totally; a NaN anywhere fails the head below.
        evict::select(&e.policy, kh, d, n, scores, keep, &mut kept, &mut self.work);
        self.gather_k.clear();
        self.gather_v.clear();
        // Kept tokens are ascending: copy runs of consecutive tokens at once, and scan the
        // evicted tokens between them for NaN / infinity (the quantiser and the residual scan
        // check the kept ones), so a NaN is an error whether or not its token is kept.
        let mut evicted_finite = true;
        let (mut i, mut next) = (0, 0);
        while i < kept.len() {
            let start = kept[i] as usize;
            let mut end = start + 1;
            i += 1;
            while i < kept.len() && kept[i] as usize == end {
                end += 1;
                i += 1;
            }
            evicted_finite &= all_finite(&kh[next * d..start * d], &vh[next * d..start * d]);
            self.gather_k.extend_from_slice(&kh[start * d..end * d]);
            self.gather_v.extend_from_slice(&vh[start * d..end * d]);
            next = end;
        }
        evicted_finite &= all_finite(&kh[next * d..], &vh[next * d..]);
        s.reset();
        let (gk, gv) = (
            std::mem::take(&mut self.gather_k),
            std::mem::take(&mut self.gather_v),
        );
        let res = self.fill_head(&gk, &gv, d, s);
        s.positions.extend_from_slice(&kept);
        self.gather_k = gk;
        self.gather_v = gv;
        if !evicted_finite || res.is_err() {
            // The head's first NaN or infinity, keys before values, wins over a range error.
            if let Some(i) = first_non_finite(kh) {
                self.kept = kept;
                return Err((Anomaly::NonFinite(i), h * n * d));
            }
            if let Some(i) = first_non_finite(vh) {
                self.kept = kept;
                return Err((Anomaly::NonFinite(VALUES + i), h * n * d));
            }
        }
        let res = res.map_err(|a| {
            // Map a gathered index back to the input.
            let remap = |i: usize| {
                let (base, i) = if i >= VALUES {
                    (VALUES, i - VALUES)
                } else {
                    (0, i)
                };
                base + kept[i / d] as usize * d + i % d
            };
            let a = match a {
                Anomaly::NonFinite(i) => Anomaly::NonFinite(remap(i)),
                Anomaly::Range(i) => Anomaly::Range(remap(i)),
            };
            (a, h * n * d)
        });
        self.kept = kept;
        res
    }

    /// Quantises `[rows, d]` keys and values (rows a multiple of `group_size`) into a head's
    /// buffers at lengths `at` (keys, values): see [`Groups::write_at`].
    fn quantize_into(
        &self,
        k: &[f32],
        v: &[f32],
        d: usize,
        s: &mut HeadStore,
        at: (Lens, Lens),
    ) -> Result<(), Anomaly> {
        s.k.write_at(at.0, k, d, &self.cfg.key_quant())?;
        // Values are reported with an offset past the keys' index space.
        s.v.write_at(at.1, v, d, &self.cfg.value_quant())
            .map_err(|a| match a {
                Anomaly::NonFinite(i) => Anomaly::NonFinite(i + VALUES),
                Anomaly::Range(i) => Anomaly::Range(i + VALUES),
            })
    }
}

/// The error for an anomaly met while quantising an aged group in `append`.
#[cold]
fn append_anomaly_error(a: Anomaly) -> Error {
    match a {
        Anomaly::NonFinite(_) => unreachable_nonfinite(),
        Anomaly::Range(i) => squish_core::Error::OutOfRange {
            context: "KvCompressor append (a group's range max - min is too large for f32)",
            index: i % VALUES,
            value: f32::NAN,
        }
        .into(),
    }
}

/// Appended tokens are checked for finiteness before quantisation, so the quantiser cannot
/// meet a non-finite value; reported as an empty-context error if it ever did.
#[cold]
fn unreachable_nonfinite() -> Error {
    squish_core::Error::NonFinite {
        context: "KvCompressor append",
        index: 0,
        value: f32::NAN,
    }
    .into()
}

/// The error for an anomaly met while compressing the head whose input starts at `offset`.
#[cold]
fn anomaly_error(a: Anomaly, offset: usize, ks: &[f32], vs: &[f32]) -> Error {
    let (Anomaly::NonFinite(i) | Anomaly::Range(i)) = a;
    let (i, values) = if i >= VALUES {
        (i - VALUES, true)
    } else {
        (i, false)
    };
    let x = if values { vs } else { ks };
    let index = offset + i;
    let value = x.get(index).copied().unwrap_or(f32::NAN);
    match (a, values) {
        (Anomaly::NonFinite(_), false) => squish_core::Error::NonFinite {
            context: "KvCompressor keys",
            index,
            value,
        },
        (Anomaly::NonFinite(_), true) => squish_core::Error::NonFinite {
            context: "KvCompressor values",
            index,
            value,
        },
        (Anomaly::Range(_), false) => squish_core::Error::OutOfRange {
            context: "KvCompressor keys (a group's range max - min is too large for f32)",
            index,
            value,
        },
        (Anomaly::Range(_), true) => squish_core::Error::OutOfRange {
            context: "KvCompressor values (a group's range max - min is too large for f32)",
            index,
            value,
        },
    }
    .into()
}

/// Index of the first NaN or infinity in `x` (squish-core's AVX2 scan first).
fn first_non_finite(x: &[f32]) -> Option<usize> {
    match squish_core::check_finite("KvCompressor", x) {
        Ok(()) => None,
        Err(squish_core::Error::NonFinite { index, .. }) => Some(index),
        // `check_finite` reports nothing else; treat it as the first element should it change.
        Err(_) => Some(0),
    }
}

/// Whether `k` and `v` hold no NaN or infinity.
fn all_finite(k: &[f32], v: &[f32]) -> bool {
    first_non_finite(k).is_none() && first_non_finite(v).is_none()
}

/// Anomaly indices at or above this refer to the values.
const VALUES: usize = 1 << 62;

/// Checks an eviction request against `heads` heads holding `tokens` tokens in all (the H2O
/// scores' expected length, described as `shape` in the error); `site` names the call in
/// the errors: (per-head budget context, H2O scores context).
fn check_eviction(
    e: &Eviction<'_>,
    heads: usize,
    tokens: usize,
    shape: std::fmt::Arguments<'_>,
    site: (&'static str, &'static str),
) -> Result<()> {
    if let Budget::PerHead(ks) = e.budget
        && ks.len() != heads
    {
        return Err(ShapeError::new(site.0, format_args!("{heads} counts"), ks.len()).into());
    }
    if let EvictionPolicy::H2o { scores, .. } = e.policy {
        if scores.len() != tokens {
            return Err(ShapeError::new(site.1, shape, scores.len()).into());
        }
        squish_core::check_finite(site.1, scores)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
