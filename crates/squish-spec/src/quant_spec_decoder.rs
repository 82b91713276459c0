//! Quantised self-speculation: [`QuantSpecDecoder`], implementing the seed's `QuantSpecDecoder`
//! ("INT4 draft + FP verify"), and its [`HierarchicalKvCache`].
//!
//! Follows Tiwari et al., "QuantSpec: Self-Speculative Decoding with Hierarchical Quantized KV
//! Cache" (ICML 2025): the draft is the target model itself reading a 4-bit view of the KV
//! cache, the target pass reads the 8-bit codes, and both views come from **one** buffer of
//! 8-bit codes whose upper nibble is the 4-bit code, so drafting costs no extra KV memory.
//! Draft logits / activations can be packed in GGML's `Q4_0` blocks
//! ([`QuantSpecDecoder::quantize_draft_into`]).
//!
//! Verification is the lossless speculative sampling of Leviathan et al. (ICML 2023) and Chen
//! et al. (2023) with an explicit contract for how each draft token was produced
//! ([`DraftSource`]): sampled from a given draft distribution, or chosen greedily (its draft
//! distribution is one-hot, so it is accepted with probability `p(x)` and on rejection the
//! correction is drawn from the target with `x` removed). The seed accepted argmax drafts as if
//! they had been sampled (it could emit a token with probability 1 where the target gave it
//! 0.55), produced no bonus token and counted the correction as accepted; none of that here.
//!
//! # The hierarchical INT8 / INT4 quantisation
//! Each group of `group_size` consecutive values of a token's vector `x` with minimum `m` and
//! maximum `M` gets the scale `s = (M − m) / 255` and the 8-bit codes
//! `c = round_ties_even((x − m) / s)` in `[0, 255]`. The two views decode
//!
//! - INT8: `x̂₈ = m + c · s`, error `|x − x̂₈| <= s / 2`;
//! - INT4: `x̂₄ = m + (16 · (c >> 4) + 7.5) · s`, i.e. the 4-bit code `c >> 4` with scale
//!   `16 s` and an offset of half a 4-bit step, error `|x − x̂₄| <= 8 s` (half the 4-bit step:
//!   `c >> 4` places `c` in `[16 k, 16 k + 15]`, whose centre `16 k + 7.5` is within `7.5` of
//!   `c`, plus the `s / 2` of the 8-bit rounding).
//!
//! (plus `f32` rounding of a few ulps of `max(|m|, |M|)`). A constant group has `s = 0` and
//! decodes exactly in both views.

use rand::Rng;
use squish_core::quant::{self, BlockQ4_0, GroupAxis, QK4_0};
use squish_core::{ConfigError, ShapeError, check_finite};

use crate::error::Result;
use crate::verify::{
    DraftRows, Params, Parents, Sampling, Scores, TreeRef, VerifyOutput, VerifyScratch, VerifyStats,
};

/// Configuration of a [`QuantSpecDecoder`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QuantSpecDecoderConfig {
    /// Vocabulary size: the length of every target and draft row, `>= 1`. Default 32 000.
    pub vocab: usize,
    /// Temperature / top-k / top-p, applied identically to target and draft rows. Default:
    /// temperature 1, no top-k, no top-p.
    pub sampling: Sampling,
    /// Whether rows hold logits or probabilities. Default logits.
    pub scores: Scores,
}

impl Default for QuantSpecDecoderConfig {
    fn default() -> Self {
        Self {
            vocab: 32_000,
            sampling: Sampling::default(),
            scores: Scores::Logits,
        }
    }
}

impl QuantSpecDecoderConfig {
    /// A configuration for `vocab` tokens with `sampling`, rows holding logits.
    pub fn new(vocab: usize, sampling: Sampling) -> Self {
        Self {
            vocab,
            sampling,
            scores: Scores::Logits,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] if `vocab` is 0 or `>= 2^32 - 1`, or [`Sampling::validate`] fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vocab == 0 || self.vocab as u64 >= u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "QuantSpecDecoder",
                "vocab",
                "must be in [1, 2^32 - 1)",
                self.vocab,
            ));
        }
        self.sampling.validate("QuantSpecDecoder")
    }
}

/// How the draft tokens handed to [`QuantSpecDecoder::verify_into`] were produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DraftSource<'a> {
    /// Draft token `i` was sampled from the (warped) distribution of row `i` of these
    /// `n_draft × vocab` scores.
    Sampled(&'a [f32]),
    /// Each draft token was the draft model's argmax (or any deterministic choice): its draft
    /// distribution is one-hot.
    Greedy,
}

/// Draft logits packed in GGML `Q4_0` blocks (4.5 bits per value), as written by
/// [`QuantSpecDecoder::quantize_draft_into`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QuantizedDraft {
    rows: usize,
    vocab: usize,
    blocks: Vec<BlockQ4_0>,
}

impl QuantizedDraft {
    /// An empty value to quantise into (its buffer is reused across calls).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row length.
    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The `Q4_0` blocks, row-major (`vocab / 32` per row), byte-compatible with GGML.
    pub fn blocks(&self) -> &[BlockQ4_0] {
        &self.blocks
    }

    /// Bytes of the packed blocks (18 per 32 values).
    pub fn bytes_held(&self) -> usize {
        size_of_val(self.blocks.as_slice())
    }

    /// Dequantises every row into `out` (`rows × vocab`), as GGML's `dequantize_row_q4_0`.
    ///
    /// # Panics
    /// If `out.len() != rows × vocab`.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        quant::dequantize_row_q4_0(&self.blocks, out);
    }
}

/// Lossless speculative decoding of a chain of draft tokens, with the quantised draft of
/// QuantSpec. Implements the seed's `QuantSpecDecoder`.
///
/// - [`verify_into`](Self::verify_into): standard speculative sampling of `n_draft` tokens
///   with a bonus token when all are accepted; the draft contract is explicit
///   ([`DraftSource`]).
/// - [`quantize_draft_into`](Self::quantize_draft_into): packs draft logits in `Q4_0`.
/// - [`HierarchicalKvCache`]: the shared INT8 / INT4 KV store the draft and target passes read.
///
/// # Example
/// ```
/// use rand::{SeedableRng, rngs::StdRng};
/// use squish_spec::{DraftSource, QuantSpecDecoder, QuantSpecDecoderConfig, Sampling, VerifyOutput};
///
/// let vocab = 4;
/// let mut dec = QuantSpecDecoder::new(QuantSpecDecoderConfig::new(vocab, Sampling::greedy())).unwrap();
/// // Greedy target: the target's argmax after the context is 2, then 0, then 1.
/// let target = [
///     0.0, 0.0, 5.0, 0.0, // at the context
///     5.0, 0.0, 0.0, 0.0, // after draft token 0
///     0.0, 5.0, 0.0, 0.0, // after draft token 1
/// ];
/// let mut out = VerifyOutput::new();
/// let mut rng = StdRng::seed_from_u64(0);
/// dec.verify_into(&[2, 3], DraftSource::Greedy, &target, &mut rng, &mut out).unwrap();
/// assert_eq!(out.accepted(), &[2]); // 3 is rejected: the target wants 0
/// assert_eq!(out.next_token(), 0); // the correction
/// assert_eq!(dec.stats().acceptance_rate(), 0.5);
/// ```
#[derive(Debug, Clone)]
pub struct QuantSpecDecoder {
    cfg: QuantSpecDecoderConfig,
    scratch: VerifyScratch,
    stats: VerifyStats,
}

impl QuantSpecDecoder {
    /// A decoder for `cfg`.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) if [`QuantSpecDecoderConfig::validate`] fails.
    pub fn new(cfg: QuantSpecDecoderConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            scratch: VerifyScratch::default(),
            stats: VerifyStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &QuantSpecDecoderConfig {
        &self.cfg
    }

    /// Running totals since construction or the last [`reset_stats`](Self::reset_stats).
    pub fn stats(&self) -> &VerifyStats {
        &self.stats
    }

    /// Clears the running totals.
    pub fn reset_stats(&mut self) {
        self.stats = VerifyStats::default();
    }

    /// Verifies the chain `draft_tokens` against `target` (`n_draft + 1` rows of `vocab`
    /// scores: row 0 at the context, row `i + 1` after draft token `i`), accepting draft token
    /// `i` with probability `min(1, p(x) / q(x))`; the first rejection emits a correction from
    /// `norm(max(0, p − q))`, and if every draft is accepted a bonus token is drawn from the
    /// last row. With [`DraftSource::Greedy`], `q` is one-hot. Randomness comes from `rng`
    /// only.
    ///
    /// # Errors
    /// - [`Error::Shape`](crate::Error::Shape) if `target` is not `(n_draft + 1) × vocab`, or
    ///   sampled draft scores are not `n_draft × vocab`.
    /// - [`Error::InvalidTree`](crate::Error::InvalidTree) for a token `>= vocab`.
    /// - [`Error::Core`](crate::Error::Core) for a row read with NaN / `+inf` logits (or only
    ///   `-inf`), or with probabilities, a negative / non-finite entry or a sum off 1 by more
    ///   than [`PROB_SUM_TOLERANCE`](crate::PROB_SUM_TOLERANCE).
    /// - [`Error::ImpossibleDraft`](crate::Error::ImpossibleDraft) if a tested token has draft
    ///   probability 0.
    ///
    /// Only the rows the verification reads are validated. On error `out` is unspecified and
    /// the statistics are unchanged.
    ///
    /// # Performance
    /// No allocation once `out` has seen a chain of this length. Per tested position the target
    /// row and the draft row (none for greedy drafts) are normalised; greedy sampling does one
    /// argmax per position and no softmax.
    ///
    /// With plain temperature sampling from logits (no top-k / top-p) rows are read lazily: a
    /// validating maximum pass and a pass bounding the softmax total without exponentials
    /// decide almost every acceptance exactly, and the bonus or the correction
    /// (`norm(max(0, p − q))`, never built) is drawn by exact rejection sampling from the bounded
    /// rows; a row's exponentials are computed ([`VerifyOutput::exp_passes`]) only when the
    /// bounds cannot decide. At the seed's 4 × 8192 (7.1 rows read, 0.14 with exponentials) it
    /// took 10.7-11.5 µs on a shared 2-core VM (57-61 µs before). With top-k, top-p or
    /// probability rows, each row read is warped in full, one `O(vocab)` pass on rejection and
    /// one sampling pass for the final token.
    pub fn verify_into<R: Rng + ?Sized>(
        &mut self,
        draft_tokens: &[u32],
        draft: DraftSource<'_>,
        target: &[f32],
        rng: &mut R,
        out: &mut VerifyOutput,
    ) -> Result<()> {
        let vocab = self.cfg.vocab;
        let n = draft_tokens.len();
        let (rows, draft) = match draft {
            DraftSource::Sampled(d) => {
                if d.len() != n * vocab {
                    return Err(ShapeError::new(
                        "QuantSpecDecoder::verify draft rows n_draft x vocab",
                        format!("{} = {n} x {vocab}", n * vocab),
                        d.len(),
                    )
                    .into());
                }
                (DraftRows::Identity, d)
            }
            DraftSource::Greedy => (DraftRows::Greedy, &[][..]),
        };
        let params = Params {
            vocab,
            sampling: self.cfg.sampling,
            scores: self.cfg.scores,
        };
        let tree = TreeRef {
            parents: Parents::Chain,
            tokens: draft_tokens,
            rows,
        };
        self.scratch.run(&params, tree, target, draft, rng, out)?;
        self.stats.record(out);
        Ok(())
    }

    /// [`verify_into`](Self::verify_into) into a new [`VerifyOutput`].
    ///
    /// # Errors
    /// As [`verify_into`](Self::verify_into).
    pub fn verify<R: Rng + ?Sized>(
        &mut self,
        draft_tokens: &[u32],
        draft: DraftSource<'_>,
        target: &[f32],
        rng: &mut R,
    ) -> Result<VerifyOutput> {
        let mut out = VerifyOutput::new();
        self.verify_into(draft_tokens, draft, target, rng, &mut out)?;
        Ok(out)
    }

    /// Packs `logits` (`rows × vocab`, `vocab` a multiple of 32) into GGML `Q4_0` blocks,
    /// reusing `out`'s buffer. Dequantised, each value is within half a step (`|d| / 2`, `d` =
    /// the block's largest magnitude / 8) of the input, except the block's opposite extreme,
    /// which `Q4_0` clamps (error up to one step).
    ///
    /// A draft that samples from the dequantised logits must hand exactly those (not the
    /// originals) to [`verify_into`](Self::verify_into) as [`DraftSource::Sampled`]: losslessness
    /// needs the distribution the tokens were really drawn from.
    ///
    /// # Errors
    /// - [`Error::Shape`](crate::Error::Shape) if `vocab` is not a multiple of 32 or
    ///   `logits.len()` not a multiple of `vocab`.
    /// - [`Error::Core`](crate::Error::Core) for a NaN / infinite logit or one whose block scale
    ///   overflows `f16`.
    ///
    /// # Performance
    /// No allocation once `out` has held this many blocks; one validation pass and one
    /// quantisation pass.
    pub fn quantize_draft_into(&self, logits: &[f32], out: &mut QuantizedDraft) -> Result<()> {
        let vocab = self.cfg.vocab;
        if !vocab.is_multiple_of(QK4_0) {
            return Err(ShapeError::new(
                "QuantSpecDecoder::quantize_draft vocab",
                "a multiple of 32 (Q4_0 blocks)",
                vocab,
            )
            .into());
        }
        if !logits.len().is_multiple_of(vocab) {
            return Err(ShapeError::new(
                "QuantSpecDecoder::quantize_draft logits rows x vocab",
                format!("a multiple of {vocab}"),
                logits.len(),
            )
            .into());
        }
        out.rows = logits.len() / vocab;
        out.vocab = vocab;
        // Every block is overwritten below, so a buffer of the right length is not zeroed
        // again (18 KiB per call at the seed's shape); on an error the draft is left empty.
        out.blocks
            .resize(logits.len() / QK4_0, BlockQ4_0::default());
        if let Err(e) = quant::quantize_row_q4_0(logits, &mut out.blocks) {
            out.blocks.clear();
            out.rows = 0;
            return Err(e.into());
        }
        Ok(())
    }
}

/// Which view of a [`HierarchicalKvCache`] to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPrecision {
    /// The full 8-bit codes (the target pass).
    Int8,
    /// The upper nibble of each code (the draft pass).
    Int4,
}

/// Configuration of a [`HierarchicalKvCache`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HierarchicalKvConfig {
    /// Values per token (e.g. one head's `head_dim`), `>= 1`. Default 64.
    pub dim: usize,
    /// Values sharing one scale and minimum, `>= 1`. Default 32.
    pub group_size: usize,
    /// How groups run: [`GroupAxis::AlongRow`] = `group_size` consecutive values of one token
    /// (per-token, for values; `group_size` must divide `dim`), [`GroupAxis::AlongColumn`] =
    /// one channel over `group_size` consecutive tokens (per-channel, for keys, as KIVI and
    /// QuantSpec do; tokens are then appended in blocks of `group_size`). Default per-token.
    pub axis: GroupAxis,
}

impl Default for HierarchicalKvConfig {
    fn default() -> Self {
        Self {
            dim: 64,
            group_size: 32,
            axis: GroupAxis::AlongRow,
        }
    }
}

impl HierarchicalKvConfig {
    /// A per-token configuration with `dim` values per token in groups of `group_size`.
    pub fn new(dim: usize, group_size: usize) -> Self {
        Self {
            dim,
            group_size,
            axis: GroupAxis::AlongRow,
        }
    }

    /// A per-channel configuration (for keys): each channel of each block of `group_size`
    /// tokens is a group.
    pub fn per_channel(dim: usize, group_size: usize) -> Self {
        Self {
            dim,
            group_size,
            axis: GroupAxis::AlongColumn,
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// A [`ConfigError`] if `dim` or `group_size` is 0, or, per token, `group_size` does not
    /// divide `dim`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dim == 0 {
            return Err(ConfigError::new(
                "HierarchicalKvCache",
                "dim",
                "must be >= 1",
                self.dim,
            ));
        }
        let divides = match self.axis {
            GroupAxis::AlongRow => self.dim.is_multiple_of(self.group_size.max(1)),
            GroupAxis::AlongColumn => true,
        };
        if self.group_size == 0 || !divides {
            return Err(ConfigError::new(
                "HierarchicalKvCache",
                "group_size",
                format!("must be >= 1 and divide dim = {} per token", self.dim),
                self.group_size,
            ));
        }
        Ok(())
    }
}

/// QuantSpec's hierarchical KV store: one buffer of 8-bit codes (plus an `f32` scale and
/// minimum per group) that decodes at 8 bits for the target pass and, from the upper nibble of
/// the same codes, at 4 bits for the draft pass. Part of the seed's `QuantSpecDecoder`.
///
/// Each group (per token or per channel, see [`HierarchicalKvConfig::axis`]) with minimum `m`
/// and maximum `M` gets the step `s = (M − m) / 255` and codes
/// `c = round_ties_even((x − m) / s)` in `[0, 255]`. The INT8 view decodes `m + c · s` (error
/// `<= s / 2`); the INT4 view decodes `m + (16 · (c >> 4) + 7.5) · s`, the 4-bit code `c >> 4`
/// with step `16 s` and an offset of half a 4-bit step (error `<= 8 s`: `c` lies within 7.5 of
/// its nibble's centre, plus the 8-bit rounding). Both bounds hold up to `f32` rounding
/// ([`error_bound`](Self::error_bound)).
///
/// # Example
/// ```
/// use squish_spec::{HierarchicalKvCache, HierarchicalKvConfig, KvPrecision};
///
/// let mut kv = HierarchicalKvCache::new(HierarchicalKvConfig::new(4, 4)).unwrap();
/// kv.append(&[0.0, 1.0, 2.0, 2.55]).unwrap(); // one token
/// let (mut x8, mut x4) = ([0.0f32; 4], [0.0f32; 4]);
/// kv.dequantize_into(KvPrecision::Int8, &mut x8);
/// kv.dequantize_into(KvPrecision::Int4, &mut x4);
/// let s = 2.55 / 255.0; // the group's 8-bit step
/// assert!((x8[1] - 1.0).abs() <= 0.5 * s + 1e-6);
/// assert!((x4[1] - 1.0).abs() <= 8.0 * s + 1e-6);
/// assert_eq!(kv.bytes_held(), 4 + 8); // 4 codes + one scale and one minimum: no INT4 copy
/// ```
#[derive(Debug, Clone)]
pub struct HierarchicalKvCache {
    cfg: HierarchicalKvConfig,
    codes: Vec<u8>,
    scales: Vec<f32>,
    mins: Vec<f32>,
}

impl HierarchicalKvCache {
    /// An empty cache.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) if [`HierarchicalKvConfig::validate`] fails.
    pub fn new(cfg: HierarchicalKvConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            codes: Vec::new(),
            scales: Vec::new(),
            mins: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HierarchicalKvConfig {
        &self.cfg
    }

    /// Tokens stored.
    pub fn len(&self) -> usize {
        self.codes.len() / self.cfg.dim
    }

    /// Whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }

    /// The 8-bit codes, token-major (`len × dim`).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The 8-bit step of each group, indexed by [`group_of`](Self::group_of).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The minimum of each group, indexed by [`group_of`](Self::group_of).
    pub fn mins(&self) -> &[f32] {
        &self.mins
    }

    /// The group holding channel `channel` of token `token`: `token · dim / group_size +
    /// channel / group_size` per token, `token / group_size · dim + channel` per channel.
    pub fn group_of(&self, token: usize, channel: usize) -> usize {
        let (d, g) = (self.cfg.dim, self.cfg.group_size);
        match self.cfg.axis {
            GroupAxis::AlongRow => token * (d / g) + channel / g,
            GroupAxis::AlongColumn => token / g * d + channel,
        }
    }

    /// Bytes held by the store: one byte per value plus 8 per group. Both views read these
    /// buffers; the INT4 view adds nothing.
    pub fn bytes_held(&self) -> usize {
        self.codes.len() + size_of_val(self.scales.as_slice()) + size_of_val(self.mins.as_slice())
    }

    /// Appends tokens: `x` holds `k × dim` values (row-major), `k` a multiple of `group_size`
    /// for a per-channel cache.
    ///
    /// # Errors
    /// - [`Error::Shape`](crate::Error::Shape) if `x.len()` is not a multiple of `dim`
    ///   (per-channel: of `dim × group_size`).
    /// - [`Error::Core`](crate::Error::Core) for a NaN / infinite value, or a group whose range
    ///   `max − min` overflows `f32`. Nothing is appended on error.
    ///
    /// # Performance
    /// Amortised allocation only (the buffers grow); two passes per group.
    pub fn append(&mut self, x: &[f32]) -> Result<()> {
        let (dim, g) = (self.cfg.dim, self.cfg.group_size);
        let unit = match self.cfg.axis {
            GroupAxis::AlongRow => dim,
            GroupAxis::AlongColumn => dim * g,
        };
        if !x.len().is_multiple_of(unit) {
            return Err(ShapeError::new(
                "HierarchicalKvCache::append values (tokens x dim)",
                format!("a multiple of {unit}"),
                x.len(),
            )
            .into());
        }
        check_finite("HierarchicalKvCache::append x", x)?;
        let overflow = |index: usize, value: f32| -> crate::Error {
            squish_core::Error::OutOfRange {
                context: "HierarchicalKvCache::append x (the group's range max - min overflows)",
                index,
                value,
            }
            .into()
        };
        match self.cfg.axis {
            GroupAxis::AlongRow => {
                for (gi, group) in x.chunks_exact(g).enumerate() {
                    let (lo, hi) = min_max(group.iter().copied());
                    if !(hi - lo).is_finite() {
                        let i = group.iter().position(|&v| v == hi).unwrap_or(0);
                        return Err(overflow(gi * g + i, hi));
                    }
                }
                self.codes.reserve(x.len());
                for group in x.chunks_exact(g) {
                    let (lo, hi) = min_max(group.iter().copied());
                    let (s, inv) = step(lo, hi);
                    self.codes.extend(group.iter().map(|&v| encode(v, lo, inv)));
                    self.scales.push(s);
                    self.mins.push(lo);
                }
            }
            GroupAxis::AlongColumn => {
                for (bi, block) in x.chunks_exact(unit).enumerate() {
                    for c in 0..dim {
                        let (lo, hi) = min_max(block.iter().skip(c).step_by(dim).copied());
                        if !(hi - lo).is_finite() {
                            let t = block
                                .iter()
                                .skip(c)
                                .step_by(dim)
                                .position(|&v| v == hi)
                                .unwrap_or(0);
                            return Err(overflow(bi * unit + t * dim + c, hi));
                        }
                    }
                }
                let base = self.codes.len();
                self.codes.resize(base + x.len(), 0);
                for (block, out) in x
                    .chunks_exact(unit)
                    .zip(self.codes[base..].chunks_exact_mut(unit))
                {
                    let first = self.scales.len();
                    for c in 0..dim {
                        let (lo, hi) = min_max(block.iter().skip(c).step_by(dim).copied());
                        let (s, _) = step(lo, hi);
                        self.scales.push(s);
                        self.mins.push(lo);
                    }
                    let (scales, mins) = (&self.scales[first..], &self.mins[first..]);
                    for (row, orow) in block.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
                        for (((o, &v), &s), &m) in orow.iter_mut().zip(row).zip(scales).zip(mins) {
                            let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                            *o = encode(v, m, inv);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Decodes every stored token at `precision` into `out` (`len × dim`).
    ///
    /// # Panics
    /// If `out.len() != len × dim`.
    pub fn dequantize_into(&self, precision: KvPrecision, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.codes.len(),
            "HierarchicalKvCache::dequantize_into: out has length {}, expected {}",
            out.len(),
            self.codes.len()
        );
        for (t, o) in out.chunks_exact_mut(self.cfg.dim).enumerate() {
            self.decode_token(t, precision, o);
        }
    }

    /// Decodes token `token` at `precision` into `out` (`dim` values).
    ///
    /// # Panics
    /// If `token >= len` or `out.len() != dim`.
    pub fn dequantize_token_into(&self, token: usize, precision: KvPrecision, out: &mut [f32]) {
        let dim = self.cfg.dim;
        assert!(
            token < self.len(),
            "token {token} out of range ({} stored)",
            self.len()
        );
        assert_eq!(out.len(), dim, "out must hold dim = {dim} values");
        self.decode_token(token, precision, out);
    }

    /// The guaranteed bound of `|x − x̂|` for every value of group `group` (see
    /// [`group_of`](Self::group_of)): `s / 2` for [`KvPrecision::Int8`], `8 s` for
    /// [`KvPrecision::Int4`], plus `f32` rounding (`4 ε · (|min| + |max|)`).
    ///
    /// # Panics
    /// If `group` is out of range.
    pub fn error_bound(&self, group: usize, precision: KvPrecision) -> f32 {
        let s = self.scales[group];
        let m = self.mins[group];
        let round = 4.0 * f32::EPSILON * (m.abs() + (m + 255.0 * s).abs());
        match precision {
            KvPrecision::Int8 => 0.5 * s + round,
            KvPrecision::Int4 => 8.0 * s + round,
        }
    }

    fn decode_token(&self, token: usize, precision: KvPrecision, out: &mut [f32]) {
        let (dim, g) = (self.cfg.dim, self.cfg.group_size);
        let codes = &self.codes[token * dim..(token + 1) * dim];
        // Per-token: `dim / g` groups of g values; per-channel: `dim` groups of one value each.
        let (first, width) = match self.cfg.axis {
            GroupAxis::AlongRow => (token * (dim / g), g),
            GroupAxis::AlongColumn => (token / g * dim, 1),
        };
        let n = dim / width;
        let (scales, mins) = (&self.scales[first..first + n], &self.mins[first..first + n]);
        for (((o, c), &s), &m) in out
            .chunks_exact_mut(width)
            .zip(codes.chunks_exact(width))
            .zip(scales)
            .zip(mins)
        {
            match precision {
                KvPrecision::Int8 => {
                    for (o, &c) in o.iter_mut().zip(c) {
                        *o = m + f32::from(c) * s;
                    }
                }
                KvPrecision::Int4 => {
                    let (s4, m4) = (16.0 * s, m + 7.5 * s);
                    for (o, &c) in o.iter_mut().zip(c) {
                        *o = m4 + f32::from(c >> 4) * s4;
                    }
                }
            }
        }
    }
}

/// The 8-bit step of a group with range `[lo, hi]` and its reciprocal (0 for a constant group).
fn step(lo: f32, hi: f32) -> (f32, f32) {
    let s = (hi - lo) / 255.0;
    (s, if s > 0.0 { 1.0 / s } else { 0.0 })
}

/// The 8-bit code of `v` (ties to even, clamped to `[0, 255]`).
fn encode(v: f32, lo: f32, inv: f32) -> u8 {
    let t = ((v - lo) * inv).round_ties_even();
    let t = if t > 255.0 { 255.0 } else { t };
    let t = if t > 0.0 { t } else { 0.0 };
    t as u8
}

fn min_max(x: impl Iterator<Item = f32>) -> (f32, f32) {
    x.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (if v < lo { v } else { lo }, if v > hi { v } else { hi })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn config_errors() {
        let e =
            QuantSpecDecoder::new(QuantSpecDecoderConfig::new(0, Sampling::default())).unwrap_err();
        insta::assert_snapshot!(e, @"invalid QuantSpecDecoder.vocab: must be in [1, 2^32 - 1), got 0");
        let s = Sampling::new(1.0, 0, 1.5);
        let e = QuantSpecDecoder::new(QuantSpecDecoderConfig::new(8, s)).unwrap_err();
        insta::assert_snapshot!(e, @"invalid QuantSpecDecoder.sampling.top_p: must be in (0, 1], got 1.5");
        let e = HierarchicalKvCache::new(HierarchicalKvConfig::new(0, 1)).unwrap_err();
        insta::assert_snapshot!(e, @"invalid HierarchicalKvCache.dim: must be >= 1, got 0");
        let e = HierarchicalKvCache::new(HierarchicalKvConfig::new(64, 24)).unwrap_err();
        insta::assert_snapshot!(e, @"invalid HierarchicalKvCache.group_size: must be >= 1 and divide dim = 64 per token, got 24");
    }

    #[test]
    fn shape_and_value_errors() {
        let mut dec =
            QuantSpecDecoder::new(QuantSpecDecoderConfig::new(4, Sampling::default())).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        let mut out = VerifyOutput::new();
        let t = [0.0f32; 12];
        let e = dec
            .verify_into(
                &[1, 2],
                DraftSource::Sampled(&[0.0; 4]),
                &t,
                &mut rng,
                &mut out,
            )
            .unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in QuantSpecDecoder::verify draft rows n_draft x vocab: expected 8 = 2 x 4, got 4");
        let e = dec
            .verify_into(&[1, 2], DraftSource::Greedy, &t[..8], &mut rng, &mut out)
            .unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in verify target rows (draft tokens + 1) x vocab: expected 12 = (2 + 1) x 4, got 8");
        let e = dec
            .verify_into(&[1, 7], DraftSource::Greedy, &t, &mut rng, &mut out)
            .unwrap_err();
        insta::assert_snapshot!(e, @"invalid draft tree: draft node 1: token 7 is outside the vocabulary of 4");
        let mut bad = t;
        bad[2] = f32::NAN;
        let e = dec
            .verify_into(&[1, 2], DraftSource::Greedy, &bad, &mut rng, &mut out)
            .unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in verify target: element 2 is NaN");
        assert_eq!(dec.stats().steps, 0);

        let e = dec
            .quantize_draft_into(&[0.0; 8], &mut QuantizedDraft::new())
            .unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in QuantSpecDecoder::quantize_draft vocab: expected a multiple of 32 (Q4_0 blocks), got 4");
        let dec =
            QuantSpecDecoder::new(QuantSpecDecoderConfig::new(32, Sampling::default())).unwrap();
        let e = dec
            .quantize_draft_into(&[0.0; 48], &mut QuantizedDraft::new())
            .unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in QuantSpecDecoder::quantize_draft logits rows x vocab: expected a multiple of 32, got 48");
        let mut x = [0.0f32; 32];
        x[3] = f32::INFINITY;
        let e = dec
            .quantize_draft_into(&x, &mut QuantizedDraft::new())
            .unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in quantize_row_q4_0 x: element 3 is inf");

        let mut kv = HierarchicalKvCache::new(HierarchicalKvConfig::new(4, 2)).unwrap();
        let e = kv.append(&[0.0; 6]).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in HierarchicalKvCache::append values (tokens x dim): expected a multiple of 4, got 6");
        let e = kv.append(&[0.0, 1.0, f32::NAN, 0.0]).unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in HierarchicalKvCache::append x: element 2 is NaN");
        let e = kv.append(&[0.0, 1.0, -3e38, 3e38]).unwrap_err();
        insta::assert_snapshot!(e, @"value out of range in HierarchicalKvCache::append x (the group's range max - min overflows): element 3 is 300000000000000000000000000000000000000");
        assert!(kv.is_empty());
        assert_eq!(kv.bytes_held(), 0);

        let mut kv = HierarchicalKvCache::new(HierarchicalKvConfig::per_channel(2, 2)).unwrap();
        let e = kv.append(&[0.0; 2]).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in HierarchicalKvCache::append values (tokens x dim): expected a multiple of 4, got 2");
        let e = kv.append(&[0.0, 3e38, 0.0, -3e38]).unwrap_err();
        insta::assert_snapshot!(e, @"value out of range in HierarchicalKvCache::append x (the group's range max - min overflows): element 1 is 300000000000000000000000000000000000000");
        assert!(kv.is_empty());
    }

    #[test]
    fn constant_groups_decode_exactly() {
        let mut kv = HierarchicalKvCache::new(HierarchicalKvConfig::new(4, 2)).unwrap();
        kv.append(&[1.5, 1.5, -2.0, -2.0]).unwrap();
        let mut o = [0.0; 4];
        kv.dequantize_into(KvPrecision::Int8, &mut o);
        assert_eq!(o, [1.5, 1.5, -2.0, -2.0]);
        kv.dequantize_into(KvPrecision::Int4, &mut o);
        assert_eq!(o, [1.5, 1.5, -2.0, -2.0]);
    }
}
