//! `KvCodec`: product-quantised key storage with attention scores computed from the codes.
//!
//! Follows **product quantisation** (Jégou, Douze & Schmid, "Product quantization for nearest
//! neighbor search", TPAMI 2011). A key of `head_dim` channels is cut into `M` contiguous
//! sub-vectors of `dsub = head_dim / M` channels; each sub-space has its own codebook of `K`
//! centroids fitted with k-means++ and Lloyd iterations ([`squish_core::kmeans`]), and a key
//! is stored as `M` one-byte codes (the index of the nearest centroid in each sub-space, so
//! `K <= 256`). Codebooks are shared by every KV head or fitted per head
//! ([`CodebookSharing`]).
//!
//! **Asymmetric distance computation** (ADC, section 3.1 of the paper): the query stays in
//! full precision. For a query `q` one [`ScoreTable`] holds `q_m · c_{m,j}` for every
//! sub-space `m` and centroid `j` (`M × K` dot products of length `dsub`); the attention score
//! `q · k̂` of an encoded key is then the sum of its `M` table entries, so scoring `n` keys
//! costs `n · M` table look-ups and never decodes a key.
//!
//! Bytes held are measured from the buffers: one byte per code plus the codes' shape
//! ([`PqCodes::bytes_held`]), and the `f32` codebooks ([`KvCodec::bytes_held`]), which a caller amortises over the tokens
//! they serve. With short sequences the codebook dominates: see the `codec_kv` claim.

use ndarray::{Array3, ArrayRef3, ArrayView1};
use rand::Rng;
use squish_core::kmeans::{KMeans, KMeansConfig};
use squish_core::{ConfigError, ShapeError, check_finite, ops};

use crate::{Error, Result};

const C: &str = "KvCodec";

/// Whether one set of codebooks serves every KV head or each head gets its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CodebookSharing {
    /// One set of `M` codebooks, fitted on the keys of every head pooled together; any number
    /// of heads can be encoded with it.
    #[default]
    Shared,
    /// One set of `M` codebooks per KV head, fitted on that head's keys only; encoding needs
    /// the same number of heads as fitting.
    PerHead,
}

/// Configuration of [`KvCodec`].
///
/// # Example
/// ```
/// use squish_kv::KvCodecConfig;
/// let mut cfg = KvCodecConfig::default();
/// cfg.head_dim = 64;
/// cfg.subspaces = 8;
/// cfg.codebook_size = 16;
/// assert!(cfg.validate().is_ok());
/// cfg.subspaces = 5;
/// assert_eq!(
///     cfg.validate().unwrap_err().to_string(),
///     "invalid KvCodec.subspaces: must divide head_dim (64), got 5"
/// );
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct KvCodecConfig {
    /// Channels per key, `>= 1`. Default 32 (the seed's benchmark shape).
    pub head_dim: usize,
    /// Number of sub-spaces `M`, `>= 1`, dividing `head_dim`; each key is stored as `M` bytes.
    /// Default 1 (the seed's single codebook over the whole key).
    pub subspaces: usize,
    /// Centroids per codebook `K`, in `1..=256` (codes are `u8`). Default 32 (the seed's
    /// `n_codebook`).
    pub codebook_size: usize,
    /// Codebooks shared by all heads or per head. Default [`CodebookSharing::Shared`].
    pub sharing: CodebookSharing,
    /// Maximum Lloyd iterations per codebook ([`KMeansConfig::max_iters`]). Default 100.
    pub max_iters: usize,
    /// Relative inertia improvement below which Lloyd stops ([`KMeansConfig::tol`]), finite
    /// and `>= 0`. Default `1e-4`.
    pub tol: f64,
}

impl Default for KvCodecConfig {
    fn default() -> Self {
        let km = KMeansConfig::default();
        Self {
            head_dim: 32,
            subspaces: 1,
            codebook_size: 32,
            sharing: CodebookSharing::Shared,
            max_iters: km.max_iters,
            tol: km.tol,
        }
    }
}

impl KvCodecConfig {
    /// Checks every field and the cross-field rule `head_dim % subspaces == 0`.
    ///
    /// # Errors
    /// A [`ConfigError`] for component `KvCodec` naming the first field that breaks its rule:
    /// `head_dim` or `subspaces` is 0, `subspaces` does not divide `head_dim`,
    /// `codebook_size` is 0 or above 256 (codes are `u8`), `tol` is negative or not finite.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.head_dim == 0 {
            return Err(ConfigError::new(
                C,
                "head_dim",
                "must be > 0",
                self.head_dim,
            ));
        }
        if self.subspaces == 0 {
            return Err(ConfigError::new(
                C,
                "subspaces",
                "must be > 0",
                self.subspaces,
            ));
        }
        if !self.head_dim.is_multiple_of(self.subspaces) {
            return Err(ConfigError::new(
                C,
                "subspaces",
                format!("must divide head_dim ({})", self.head_dim),
                self.subspaces,
            ));
        }
        if !(1..=256).contains(&self.codebook_size) {
            return Err(ConfigError::new(
                C,
                "codebook_size",
                "must be in 1..=256 (codes are u8)",
                self.codebook_size,
            ));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(ConfigError::new(
                C,
                "tol",
                "must be finite and >= 0",
                self.tol,
            ));
        }
        Ok(())
    }

    /// Channels per sub-vector, `head_dim / subspaces`.
    pub fn sub_dim(&self) -> usize {
        self.head_dim / self.subspaces.max(1)
    }

    fn kmeans(&self) -> KMeansConfig {
        let mut km = KMeansConfig::new(self.codebook_size);
        km.max_iters = self.max_iters;
        km.tol = self.tol;
        km
    }
}

/// Product-quantisation codes of a `[heads, seq, head_dim]` key tensor: `M` one-byte codes
/// per key, row-major `[heads][seq][M]`.
///
/// Produced by [`KvCodec::encode_keys`] / [`KvCodec::encode_keys_into`]; it records the codec
/// shape (`M`, `K`) it was made with, so a codec of another shape refuses to read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PqCodes {
    codes: Vec<u8>,
    heads: usize,
    seq_len: usize,
    subspaces: usize,
    codebook_size: usize,
}

impl PqCodes {
    /// Empty codes, to be filled by [`KvCodec::encode_keys_into`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Tokens per head.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Codes per key (`M`).
    pub fn subspaces(&self) -> usize {
        self.subspaces
    }

    /// Centroids per codebook (`K`) of the codec that wrote the codes; every code is `< K`.
    pub fn codebook_size(&self) -> usize {
        self.codebook_size
    }

    /// All codes, row-major `[heads][seq][M]`.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The codes of head `h`, row-major `[seq][M]`.
    ///
    /// # Panics
    /// If `h >= heads()`.
    pub fn head(&self, h: usize) -> &[u8] {
        assert!(h < self.heads, "head {h} out of range ({})", self.heads);
        let n = self.seq_len * self.subspaces;
        &self.codes[h * n..(h + 1) * n]
    }

    /// Bytes held by the codes: one per code, from the buffer's length, plus the four `usize`
    /// shape fields (heads, sequence length, sub-spaces, codebook size) a reader needs to
    /// interpret them. Spare capacity kept for reuse is not counted. The codebooks are counted
    /// by [`KvCodec::bytes_held`].
    pub fn bytes_held(&self) -> usize {
        self.codes.len() + 4 * size_of::<usize>()
    }
}

/// A per-query lookup table for asymmetric distance computation: `table[m * K + j] =
/// q_m · c_{m,j}`, built by [`KvCodec::score_table_into`] and read by
/// [`KvCodec::scores_into`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScoreTable {
    table: Vec<f32>,
    subspaces: usize,
    codebook_size: usize,
    /// The head whose codebooks built the table, for per-head codebooks.
    head: Option<usize>,
}

impl ScoreTable {
    /// An empty table, to be filled by [`KvCodec::score_table_into`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The entries, row-major `[M][K]`: entry `(m, j)` is `q_m · c_{m,j}`.
    pub fn entries(&self) -> &[f32] {
        &self.table
    }
}

/// Product-quantisation codec for KV-cache keys with ADC attention scores.
///
/// Implements the seed's `KVCodec` ("k-means++ codebook", `fit` / `encode_keys` /
/// `decode_keys`), as real product quantisation: `M` sub-space codebooks of `K` centroids
/// (k-means++ seeding and Lloyd iterations from [`squish_core::kmeans`]), `u8` codes, shared or
/// per-head codebooks, and attention scores read straight from the codes through a per-query
/// [`ScoreTable`]. See the
/// [module docs](crate::kv_codec) for the method.
///
/// # Example
/// ```
/// use ndarray::Array3;
/// use rand::{SeedableRng, rngs::StdRng};
/// use squish_kv::{KvCodec, KvCodecConfig, PqCodes, ScoreTable};
///
/// // 2 heads × 64 tokens × 8 channels, 4 sub-spaces of 2 channels, 16 centroids each.
/// let mut rng = StdRng::seed_from_u64(7);
/// let keys = Array3::from_shape_fn((2, 64, 8), |(h, t, c)| ((h * 64 + t) * 8 + c) as f32 % 5.0);
/// let mut cfg = KvCodecConfig::default();
/// (cfg.head_dim, cfg.subspaces, cfg.codebook_size) = (8, 4, 16);
/// let codec = KvCodec::fit(cfg, &keys, &mut rng)?;
///
/// let codes = codec.encode_keys(&keys)?;
/// assert_eq!(codes.codes().len(), 2 * 64 * 4); // 4 bytes per key instead of 32 (f32)
/// assert_eq!(codes.bytes_held(), 2 * 64 * 4 + 4 * size_of::<usize>()); // and the shape
/// let decoded = codec.decode_keys(&codes)?;
/// assert_eq!(decoded.dim(), (2, 64, 8));
///
/// // Attention scores of one query against head 1's keys, from the codes alone.
/// let q = [1.0, -1.0, 0.5, 0.0, 2.0, 1.0, -0.5, 0.25];
/// let mut table = ScoreTable::new();
/// codec.score_table_into(1, &q, &mut table)?;
/// let mut scores = vec![0.0; 64];
/// codec.scores_into(&table, &codes, 1, &mut scores)?;
/// let k1 = decoded.slice(ndarray::s![1, 10, ..]);
/// let exact: f32 = k1.iter().zip(&q).map(|(a, b)| a * b).sum();
/// assert!((scores[10] - exact).abs() <= 1e-4 * (1.0 + exact.abs()));
/// # Ok::<(), squish_kv::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct KvCodec {
    cfg: KvCodecConfig,
    /// One fitted k-means per (book, sub-space), index `book * M + m`.
    books: Vec<KMeans>,
    /// Number of codebook sets: 1 (shared) or the fitted head count (per head).
    n_books: usize,
}

impl KvCodec {
    /// Fits the codebooks to `keys` (`[heads, seq, head_dim]`): for [`CodebookSharing::Shared`]
    /// each sub-space's k-means sees the `heads · seq` sub-vectors of every head, for
    /// [`CodebookSharing::PerHead`] each head's `seq`. Codebooks are fitted in order (book,
    /// then sub-space) from the one `rng`, so the same seed gives the same codebooks.
    ///
    /// # Errors
    /// - [`Error::Config`] if `cfg` is invalid ([`KvCodecConfig::validate`]), or if a
    ///   codebook would be fitted on fewer vectors than `codebook_size` (field
    ///   `codebook_size`).
    /// - [`Error::Shape`] if the last axis of `keys` is not `head_dim` or `keys` has no head.
    /// - [`Error::Core`] (non-finite) for a NaN or infinity in `keys`.
    ///
    /// # Performance
    /// `O(heads · seq · K · head_dim)` per Lloyd iteration; copies the training sub-vectors
    /// into one scratch buffer unless `M == 1`, codebooks are shared and `keys` is contiguous.
    pub fn fit<R: Rng + ?Sized>(
        cfg: KvCodecConfig,
        keys: &ArrayRef3<f32>,
        rng: &mut R,
    ) -> Result<Self> {
        cfg.validate()?;
        let (heads, seq, d) = keys.dim();
        check_dim(&cfg, "KvCodec::fit keys", d)?;
        if heads == 0 {
            return Err(
                ShapeError::new("KvCodec::fit keys", "at least one head", "0 heads").into(),
            );
        }
        let n_books = match cfg.sharing {
            CodebookSharing::Shared => 1,
            CodebookSharing::PerHead => heads,
        };
        let per_book = heads / n_books * seq;
        if per_book < cfg.codebook_size {
            return Err(ConfigError::new(
                C,
                "codebook_size",
                format!("must be <= the training vectors per codebook ({per_book})"),
                cfg.codebook_size,
            )
            .into());
        }
        let contiguous = keys.as_slice();
        match contiguous {
            Some(s) => check_finite("KvCodec::fit keys", s)?,
            None => {
                for row in keys.rows() {
                    check_finite("KvCodec::fit keys", &row.to_vec())?;
                }
            }
        }
        let km_cfg = cfg.kmeans();
        let (m_count, dsub) = (cfg.subspaces, cfg.sub_dim());
        let mut books = Vec::with_capacity(n_books * m_count);
        let mut scratch = Vec::new();
        for b in 0..n_books {
            for m in 0..m_count {
                let data: &[f32] = match contiguous {
                    Some(s) if m_count == 1 && n_books == 1 => s,
                    _ => {
                        scratch.clear();
                        let hs = if n_books == 1 { 0..heads } else { b..b + 1 };
                        for h in hs {
                            for t in 0..seq {
                                let row = keys.slice(ndarray::s![h, t, m * dsub..(m + 1) * dsub]);
                                scratch.extend(row.iter().copied());
                            }
                        }
                        &scratch
                    }
                };
                books.push(KMeans::fit(&km_cfg, data, dsub, rng)?);
            }
        }
        Ok(Self {
            cfg,
            books,
            n_books,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KvCodecConfig {
        &self.cfg
    }

    /// Number of codebook sets: 1 for shared codebooks, the fitted head count per head.
    pub fn codebook_sets(&self) -> usize {
        self.n_books
    }

    /// The centroids of sub-space `m` in codebook set `book`, row-major `K × dsub`.
    ///
    /// # Panics
    /// If `book >= codebook_sets()` or `m >= subspaces`.
    pub fn codebook(&self, book: usize, m: usize) -> &[f32] {
        assert!(
            book < self.n_books && m < self.cfg.subspaces,
            "codebook ({book}, {m}) out of range ({} sets × {} sub-spaces)",
            self.n_books,
            self.cfg.subspaces
        );
        self.books[book * self.cfg.subspaces + m].centroids()
    }

    /// Lloyd iterations run by each codebook's fit, in order (book, then sub-space).
    pub fn lloyd_iterations(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.books.iter().map(KMeans::iterations)
    }

    /// Total k-means inertia of the fit: the sum of squared reconstruction errors of the
    /// training keys (every sub-space of every key).
    pub fn inertia(&self) -> f64 {
        self.books.iter().map(KMeans::inertia).sum()
    }

    /// Bytes held by the codebooks: `4 · K · head_dim` per codebook set, from the centroid
    /// buffers' lengths: what a reader needs next to the codes to decode or score them.
    ///
    /// Not counted: the fit's diagnostics (a few `f64` of inertia history), and the encoder's
    /// working copy of each codebook that squish-core's k-means keeps for its nearest-centroid
    /// kernel (the same centroids in a blocked layout, `K` rounded up to a multiple of 8), which
    /// doubles the codebook memory of a codec that still encodes.
    pub fn bytes_held(&self) -> usize {
        self.books.iter().map(|b| size_of_val(b.centroids())).sum()
    }

    /// Encodes `keys` (`[heads, seq, head_dim]`) into new codes; see
    /// [`encode_keys_into`](Self::encode_keys_into).
    ///
    /// # Errors
    /// As [`encode_keys_into`](Self::encode_keys_into).
    pub fn encode_keys(&self, keys: &ArrayRef3<f32>) -> Result<PqCodes> {
        let mut out = PqCodes::new();
        self.encode_keys_into(keys, &mut out)?;
        Ok(out)
    }

    /// Encodes every key: each sub-vector gets the index of its nearest centroid (squared
    /// Euclidean distance computed directly, lower index on ties; [`KMeans::assign`]).
    ///
    /// # Errors
    /// - [`Error::Shape`] if the last axis is not `head_dim`, or (per-head codebooks) the
    ///   number of heads differs from the fitted one.
    /// - [`Error::Core`] (non-finite) for a NaN or infinity in `keys`.
    ///
    /// On error `out` is unchanged.
    ///
    /// # Performance
    /// `O(heads · seq · K · head_dim)` through squish-core's dispatched (AVX2 + FMA)
    /// nearest-centroid kernel; no allocation once `out` has grown, for contiguous `keys`.
    pub fn encode_keys_into(&self, keys: &ArrayRef3<f32>, out: &mut PqCodes) -> Result<()> {
        let (heads, seq, d) = keys.dim();
        check_dim(&self.cfg, "KvCodec::encode_keys keys", d)?;
        self.check_heads("KvCodec::encode_keys keys", heads)?;
        let m_count = self.cfg.subspaces;
        let dsub = self.cfg.sub_dim();
        if let Some(s) = keys.as_slice() {
            check_finite("KvCodec::encode_keys keys", s)?;
            self.prepare(out, heads, seq);
            if heads * seq == 0 {
                return Ok(());
            }
            let per_head = seq * m_count;
            for (h, (xs, codes)) in s
                .chunks_exact(seq * d)
                .zip(out.codes.chunks_exact_mut(per_head.max(1)))
                .enumerate()
            {
                let books = &self.books[self.book_of(h)..][..m_count];
                // Two keys per kernel call (`KMeans::assign2`): twice the independent work.
                let pairs = xs.chunks_exact(2 * d);
                let rest = pairs.remainder();
                for (x, c) in pairs.zip(codes.chunks_exact_mut(2 * m_count)) {
                    let (x0, x1) = x.split_at(d);
                    let (c0, c1) = c.split_at_mut(m_count);
                    for (m, km) in books.iter().enumerate() {
                        let r = m * dsub..(m + 1) * dsub;
                        let [j0, j1] = km.assign2(&x0[r.clone()], &x1[r]);
                        (c0[m], c1[m]) = (code_of(j0), code_of(j1));
                    }
                }
                if !rest.is_empty() {
                    let c = &mut codes[per_head - m_count..];
                    for ((sub, code), km) in rest.chunks_exact(dsub).zip(c.iter_mut()).zip(books) {
                        *code = code_of(km.assign(sub));
                    }
                }
            }
        } else {
            let mut row = vec![0.0f32; d];
            for lane in keys.rows() {
                copy_lane(lane, &mut row);
                check_finite("KvCodec::encode_keys keys", &row)?;
            }
            self.prepare(out, heads, seq);
            for (i, (lane, c)) in keys
                .rows()
                .into_iter()
                .zip(out.codes.chunks_exact_mut(m_count))
                .enumerate()
            {
                copy_lane(lane, &mut row);
                let book = self.book_of(i / seq.max(1));
                for ((sub, code), km) in row
                    .chunks_exact(dsub)
                    .zip(c.iter_mut())
                    .zip(&self.books[book..book + m_count])
                {
                    *code = code_of(km.assign(sub));
                }
            }
        }
        Ok(())
    }

    /// Decodes `codes` into a new `[heads, seq, head_dim]` array; see
    /// [`decode_keys_into`](Self::decode_keys_into).
    ///
    /// # Errors
    /// As [`decode_keys_into`](Self::decode_keys_into).
    pub fn decode_keys(&self, codes: &PqCodes) -> Result<Array3<f32>> {
        let mut out = Array3::zeros((codes.heads, codes.seq_len, self.cfg.head_dim));
        let slice = out
            .as_slice_mut()
            .ok_or_else(|| ShapeError::new("KvCodec::decode_keys", "a standard layout", "other"))?;
        self.decode_keys_into(codes, slice)?;
        Ok(out)
    }

    /// Writes the reconstruction of every key, row-major `[heads][seq][head_dim]`, into `out`:
    /// sub-vector `m` of a key is centroid `code_m` of its codebook, copied exactly.
    ///
    /// # Errors
    /// - [`Error::Shape`] if `codes` were written by a codec with another `M` or `K`, (per-head
    ///   codebooks) for another number of heads, or if
    ///   `out.len() != heads · seq · head_dim`.
    ///
    /// # Performance
    /// One `dsub`-float copy per code; no allocation.
    pub fn decode_keys_into(&self, codes: &PqCodes, out: &mut [f32]) -> Result<()> {
        self.check_codes("KvCodec::decode_keys codes", codes)?;
        let d = self.cfg.head_dim;
        let want = codes.heads * codes.seq_len * d;
        if out.len() != want {
            return Err(ShapeError::new(
                "KvCodec::decode_keys out",
                format_args!("{} × {} × {d} = {want} values", codes.heads, codes.seq_len),
                format_args!("{} values", out.len()),
            )
            .into());
        }
        let (m_count, dsub) = (self.cfg.subspaces, self.cfg.sub_dim());
        if codes.seq_len == 0 {
            return Ok(());
        }
        let per_head = codes.seq_len * m_count;
        for (h, (c, y)) in codes
            .codes
            .chunks_exact(per_head)
            .zip(out.chunks_exact_mut(codes.seq_len * d))
            .enumerate()
        {
            let book = self.book_of(h);
            let books = &self.books[book..book + m_count];
            match dsub {
                2 => decode_fixed::<2>(c, books, y),
                4 => decode_fixed::<4>(c, books, y),
                8 => decode_fixed::<8>(c, books, y),
                16 => decode_fixed::<16>(c, books, y),
                32 => decode_fixed::<32>(c, books, y),
                64 => decode_fixed::<64>(c, books, y),
                128 => decode_fixed::<128>(c, books, y),
                _ => decode_any(c, books, dsub, y),
            }
        }
        Ok(())
    }

    /// Builds the ADC lookup table of `query` (`head_dim` floats) for the keys of `head`:
    /// entry `(m, j)` is `q_m · c_{m,j}` computed in `f32` with [`ops::dot`]. With shared
    /// codebooks the table serves every head; with per-head codebooks only `head`.
    ///
    /// # Errors
    /// - [`Error::Shape`] if `query.len() != head_dim`, or (per-head codebooks)
    ///   `head >= codebook_sets()`.
    /// - [`Error::Core`] (non-finite) for a NaN or infinity in `query`.
    ///
    /// # Performance
    /// `M · K` dot products of `dsub` floats; no allocation once `table` has grown.
    pub fn score_table_into(
        &self,
        head: usize,
        query: &[f32],
        table: &mut ScoreTable,
    ) -> Result<()> {
        check_dim(&self.cfg, "KvCodec::score_table query", query.len())?;
        if self.cfg.sharing == CodebookSharing::PerHead && head >= self.n_books {
            return Err(ShapeError::new(
                "KvCodec::score_table head",
                format_args!("a head below {}", self.n_books),
                format_args!("head {head}"),
            )
            .into());
        }
        check_finite("KvCodec::score_table query", query)?;
        let (m_count, k, dsub) = (
            self.cfg.subspaces,
            self.cfg.codebook_size,
            self.cfg.sub_dim(),
        );
        let book = self.book_of(head);
        table.table.clear();
        table.table.resize(m_count * k, 0.0);
        for ((row, q), km) in table
            .table
            .chunks_exact_mut(k)
            .zip(query.chunks_exact(dsub))
            .zip(&self.books[book..book + m_count])
        {
            for (t, c) in row.iter_mut().zip(km.centroids().chunks_exact(dsub)) {
                *t = ops::dot(q, c);
            }
        }
        table.subspaces = m_count;
        table.codebook_size = k;
        table.head = (self.cfg.sharing == CodebookSharing::PerHead).then_some(head);
        Ok(())
    }

    /// Attention scores `q · k̂_t` of the table's query against every key of `head` in
    /// `codes`, from the codes alone: `out[t] = Σ_m table[m][code_{t,m}]`, summed in `f32`
    /// in sub-space order. Equals `q · decode(k_t)` up to `f32` rounding: the error is at most
    /// `γ_{dsub + M} · Σ_i |q_i · k̂_{t,i}|` with `γ_n = n·u / (1 - n·u)`, `u = 2⁻²⁴`.
    /// (Scale by `1/√head_dim` yourself.)
    ///
    /// # Errors
    /// - [`Error::Shape`] if `codes` were written by a codec with another `M` or `K` (or
    ///   another head count, per head), the table was built by a codec of another shape or
    ///   (per-head codebooks) for another head, `head >= codes.heads()`, or
    ///   `out.len() != codes.seq_len()`.
    ///
    /// # Performance
    /// `seq · M` table look-ups and adds; no allocation.
    pub fn scores_into(
        &self,
        table: &ScoreTable,
        codes: &PqCodes,
        head: usize,
        out: &mut [f32],
    ) -> Result<()> {
        self.check_codes("KvCodec::scores codes", codes)?;
        let (m_count, k) = (self.cfg.subspaces, self.cfg.codebook_size);
        if table.subspaces != m_count
            || table.codebook_size != k
            || table.table.len() != m_count * k
        {
            return Err(ShapeError::new(
                "KvCodec::scores table",
                format_args!("a table of M = {m_count}, K = {k}"),
                format_args!("M = {}, K = {}", table.subspaces, table.codebook_size),
            )
            .into());
        }
        if head >= codes.heads {
            return Err(ShapeError::new(
                "KvCodec::scores head",
                format_args!("a head below {}", codes.heads),
                format_args!("head {head}"),
            )
            .into());
        }
        if let Some(th) = table.head
            && th != head
        {
            return Err(ShapeError::new(
                "KvCodec::scores table",
                format_args!("a table built for head {head} (per-head codebooks)"),
                format_args!("a table for head {th}"),
            )
            .into());
        }
        if out.len() != codes.seq_len {
            return Err(ShapeError::new(
                "KvCodec::scores out",
                format_args!("{} scores", codes.seq_len),
                format_args!("{}", out.len()),
            )
            .into());
        }
        let c = codes.head(head);
        let t = &table.table;
        if m_count == 1 {
            for (o, &code) in out.iter_mut().zip(c) {
                *o = t[usize::from(code)];
            }
        } else {
            for (o, key) in out.iter_mut().zip(c.chunks_exact(m_count)) {
                let mut s = 0.0f32;
                for (row, &code) in t.chunks_exact(k).zip(key) {
                    s += row[usize::from(code)];
                }
                *o = s;
            }
        }
        Ok(())
    }

    /// Index of the first codebook (sub-space 0) of head `h`'s set.
    fn book_of(&self, h: usize) -> usize {
        if self.n_books == 1 {
            0
        } else {
            h * self.cfg.subspaces
        }
    }

    fn check_heads(&self, context: &'static str, heads: usize) -> Result<()> {
        if self.cfg.sharing == CodebookSharing::PerHead && heads != self.n_books {
            return Err(ShapeError::new(
                context,
                format_args!("{} heads (per-head codebooks)", self.n_books),
                format_args!("{heads} heads"),
            )
            .into());
        }
        Ok(())
    }

    fn check_codes(&self, context: &'static str, codes: &PqCodes) -> Result<()> {
        let (m, k) = (self.cfg.subspaces, self.cfg.codebook_size);
        if codes.subspaces != m || codes.codebook_size != k {
            return Err(ShapeError::new(
                context,
                format_args!("codes of a codec with M = {m}, K = {k}"),
                format_args!("M = {}, K = {}", codes.subspaces, codes.codebook_size),
            )
            .into());
        }
        self.check_heads(context, codes.heads)
    }

    fn prepare(&self, out: &mut PqCodes, heads: usize, seq: usize) {
        out.codes.clear();
        out.codes.resize(heads * seq * self.cfg.subspaces, 0);
        out.heads = heads;
        out.seq_len = seq;
        out.subspaces = self.cfg.subspaces;
        out.codebook_size = self.cfg.codebook_size;
    }
}

fn check_dim(cfg: &KvCodecConfig, context: &'static str, d: usize) -> Result<(), Error> {
    if d != cfg.head_dim {
        return Err(ShapeError::new(
            context,
            format_args!("head_dim {}", cfg.head_dim),
            format_args!("{d} channels"),
        )
        .into());
    }
    Ok(())
}

/// Decodes one head's codes (`[seq][M]`) into `y` (`[seq][M · W]`) for sub-vectors of a
/// compile-time width: each copy is a fixed-size move the compiler inlines (no `memcpy` call).
fn decode_fixed<const W: usize>(codes: &[u8], books: &[KMeans], y: &mut [f32]) {
    let (out, _) = y.as_chunks_mut::<W>();
    if let [km] = books {
        let (cents, _) = km.centroids().as_chunks::<W>();
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = cents[usize::from(c)];
        }
        return;
    }
    let m_count = books.len();
    for (key_out, key) in out
        .chunks_exact_mut(m_count)
        .zip(codes.chunks_exact(m_count))
    {
        for ((o, &c), km) in key_out.iter_mut().zip(key).zip(books) {
            *o = km.centroids().as_chunks::<W>().0[usize::from(c)];
        }
    }
}

/// [`decode_fixed`] for any sub-vector width.
fn decode_any(codes: &[u8], books: &[KMeans], dsub: usize, y: &mut [f32]) {
    let m_count = books.len();
    for (key_out, key) in y
        .chunks_exact_mut(dsub * m_count)
        .zip(codes.chunks_exact(m_count))
    {
        for ((o, &c), km) in key_out.chunks_exact_mut(dsub).zip(key).zip(books) {
            let j = usize::from(c) * dsub;
            o.copy_from_slice(&km.centroids()[j..j + dsub]);
        }
    }
}

fn copy_lane(lane: ArrayView1<'_, f32>, row: &mut [f32]) {
    for (r, &v) in row.iter_mut().zip(lane.iter()) {
        *r = v;
    }
}

/// A centroid index as a code; `K <= 256` was validated, so this never saturates.
fn code_of(j: usize) -> u8 {
    u8::try_from(j).unwrap_or(u8::MAX)
}
