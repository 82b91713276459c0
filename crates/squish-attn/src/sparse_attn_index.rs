//! Sparse key selection for attention: exact maximum-inner-product top-k and Quest-style page
//! selection, over per-head key stores that grow by appending.
//!
//! Attention weights a key by `softmax(s·q·k)`, so the keys that matter for a query are the ones
//! with the largest **inner product** `q·k`, not the largest cosine: a key with a large norm and
//! a moderate angle can outweigh a short key that points the same way as `q`. Real LLM keys have
//! norms that vary by an order of magnitude (attention sinks, outlier channels), which is where a
//! cosine ranking loses attention mass (see the `sparse_attn_index` claim).
//!
//! Two selection modes ([`SelectMode`]):
//! - [`SelectMode::Exact`]: the `k` keys with the largest `q·k`, in `O(S·d)` (a scan of every
//!   key) plus an `O(S)` selection.
//! - [`SelectMode::Pages`]: **Quest** (Tang et al., *Quest: Query-Aware Sparsity for Efficient
//!   Long-Context LLM Inference*, ICML 2024). Keys are grouped into pages of `page_size` tokens;
//!   each page keeps the elementwise minimum `m` and maximum `M` of its keys, updated
//!   incrementally on append. For a query `q`, `U = Σᵢ max(qᵢ·mᵢ, qᵢ·Mᵢ)` is an upper bound on
//!   `q·k` for every key `k` of the page (each term bounds `qᵢ·kᵢ` since `mᵢ ≤ kᵢ ≤ Mᵢ`). The
//!   `⌈k / page_size⌉ · oversample` pages with the largest bounds are selected (`O(S/page·d)`), and
//!   the exact top-k is taken among their tokens. Quest's own policy is `oversample = 1` (the
//!   token budget `k` buys `k / page_size` pages).
//!
//! What page mode guarantees: the selected pages are exactly the pages with the largest upper
//! bounds (ties: lower page first), and within them the result is the exact top-k. It does
//! **not** guarantee that the page holding the global argmax is selected: a page whose bound is
//! loose (a wide min/max box) can outrank it. The argmax page is selected whenever fewer than
//! the number of selected pages have a bound above its own — which always holds when its bound
//! is the largest, and the property tests check exactly this.
//!
//! GQA: with `query_heads = g · kv_heads`, query head `h` reads KV head `h / g`. Without group
//! sharing each query head gets its own selection; with [`SparseAttnIndexConfig::share_groups`]
//! the heads of a group share one selection, ranked by the score summed over the group,
//! `Σ_h q_h·k = (Σ_h q_h)·k` (computed in the second form, equal in exact arithmetic).
//!
//! Implements the seed's `SparseAttnIndex` (which ranked by cosine similarity).

use ndarray::{ArrayRef2, ArrayRef3};
use squish_core::aligned::AlignedVec;
use squish_core::{ConfigError, ShapeError, check_finite, ops};

use crate::Result;

/// The component name used in configuration errors.
const COMPONENT: &str = "SparseAttnIndex";

/// How [`SparseAttnIndex::query_into`] selects keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectMode {
    /// Exact maximum-inner-product top-k over every key (`O(S·d)`).
    Exact,
    /// Quest page selection: the `⌈k / page_size⌉ · oversample` pages with the largest upper
    /// bound, then the exact top-k among their tokens (`O(S/page_size · d + pages·page_size·d)`).
    /// `oversample` must be at least 1; Quest's policy is 1.
    Pages {
        /// Pages selected per `⌈k / page_size⌉` pages of budget (≥ 1).
        oversample: usize,
    },
}

/// Configuration of a [`SparseAttnIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SparseAttnIndexConfig {
    /// Number of key/value heads stored (≥ 1).
    pub kv_heads: usize,
    /// Number of query heads; a positive multiple of `kv_heads` (GQA/MQA when larger).
    pub query_heads: usize,
    /// Dimension of each key and query (≥ 1).
    pub head_dim: usize,
    /// Tokens per page for [`SelectMode::Pages`] (≥ 1; Quest uses 16).
    pub page_size: usize,
    /// When true, the query heads of a GQA group share one selection ranked by their summed
    /// scores; when false, each query head is ranked on its own.
    pub share_groups: bool,
}

impl Default for SparseAttnIndexConfig {
    /// The seed's benchmark shape: 8 heads (no GQA), head_dim 64, Quest's 16-token pages.
    fn default() -> Self {
        Self {
            kv_heads: 8,
            query_heads: 8,
            head_dim: 64,
            page_size: 16,
            share_groups: false,
        }
    }
}

impl SparseAttnIndexConfig {
    /// Checks every field and the GQA rule.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that breaks its rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kv_heads == 0 {
            return Err(ConfigError::new(COMPONENT, "kv_heads", "must be >= 1", 0));
        }
        if self.query_heads == 0 || !self.query_heads.is_multiple_of(self.kv_heads) {
            return Err(ConfigError::new(
                COMPONENT,
                "query_heads",
                format!(
                    "must be a positive multiple of kv_heads ({})",
                    self.kv_heads
                ),
                self.query_heads,
            ));
        }
        if self.head_dim == 0 {
            return Err(ConfigError::new(COMPONENT, "head_dim", "must be >= 1", 0));
        }
        if self.page_size == 0 {
            return Err(ConfigError::new(COMPONENT, "page_size", "must be >= 1", 0));
        }
        Ok(())
    }
}

/// The keys of one KV head and their page summaries, each contiguous.
#[derive(Debug, Clone, Default)]
struct HeadStore {
    /// Keys, token-major: the first `seq × head_dim` values are the index's; the buffer keeps
    /// its high-water length across `clear` so that a rebuild copies into it without first
    /// zero-filling it (what lies beyond `seq × head_dim` is stale and never read).
    ///
    /// Cache-line aligned, so that the build's 32-byte stores never split a line (see
    /// `squish_core::aligned` for what that is worth).
    keys: AlignedVec<f32>,
    /// `pages × head_dim` elementwise minima.
    page_min: Vec<f32>,
    /// `pages × head_dim` elementwise maxima.
    page_max: Vec<f32>,
}

/// A per-head key index supporting exact and Quest page top-k selection by `q·k`.
///
/// Implements the seed's `SparseAttnIndex`, ranking by inner product (what attention uses)
/// instead of the seed's cosine similarity. Keys are appended incrementally ([`append`]); no
/// operation rebuilds what is already stored.
///
/// [`append`]: SparseAttnIndex::append
///
/// # Example
/// ```
/// use ndarray::{Array2, Array3};
/// use squish_attn::{SelectMode, Selection, SparseAttnIndex, SparseAttnIndexConfig};
///
/// let mut cfg = SparseAttnIndexConfig::default();
/// (cfg.kv_heads, cfg.query_heads, cfg.head_dim) = (1, 1, 2);
/// let mut index = SparseAttnIndex::new(cfg)?;
/// // Key 1 is long and at an angle; key 0 points exactly along q but is short.
/// let keys = Array3::from_shape_vec((1, 3, 2), vec![0.1, 0.0, 3.0, 3.0, -1.0, 0.0]).unwrap();
/// index.append(&keys)?;
/// let q = Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap();
/// let mut sel = Selection::new();
/// index.query_into(&q, 2, SelectMode::Exact, &mut sel)?;
/// assert_eq!(sel.for_query_head(0), &[1, 0]); // q·k = 3.0, 0.1 (cosine would rank key 0 first)
/// # Ok::<(), squish_attn::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SparseAttnIndex {
    cfg: SparseAttnIndexConfig,
    heads: Vec<HeadStore>,
    seq: usize,
    /// Scratch: the partial last page's summaries, saved by `append` for a rollback.
    saved: Vec<f32>,
}

/// The result of a query and the scratch it reuses.
///
/// Rows are selection units: one per query head, or one per KV head (GQA group) when the index
/// shares groups. Each row holds `min(k, seq)` token positions, ordered by score descending and,
/// among equal scores, by position ascending. Reusing one `Selection` across queries makes
/// [`SparseAttnIndex::query_into`] allocation-free once its buffers have grown.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    indices: Vec<usize>,
    rows: usize,
    per_row: usize,
    heads_per_row: usize,
    // scratch
    query: Vec<f32>,
    q_pos: Vec<f32>,
    q_neg: Vec<f32>,
    scores: Vec<f32>,
    order: Vec<usize>,
    pages: Vec<usize>,
    candidates: Vec<usize>,
}

impl Selection {
    /// An empty selection; its buffers grow on the first query.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of rows (query heads, or GQA groups when sharing) of the last query.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Positions per row of the last query: `min(k, seq)`.
    pub fn per_row(&self) -> usize {
        self.per_row
    }

    /// The selected positions of row `r`, best first.
    ///
    /// # Panics
    /// If `r >= self.rows()`.
    pub fn row(&self, r: usize) -> &[usize] {
        assert!(r < self.rows, "row {r} out of range ({} rows)", self.rows);
        &self.indices[r * self.per_row..(r + 1) * self.per_row]
    }

    /// The selected positions for query head `h` (its group's row when groups are shared).
    ///
    /// # Panics
    /// If `h` is not a query head of the last query.
    pub fn for_query_head(&self, h: usize) -> &[usize] {
        self.row(h / self.heads_per_row.max(1))
    }
}

impl SparseAttnIndex {
    /// An empty index.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) if `cfg` is invalid.
    pub fn new(cfg: SparseAttnIndexConfig) -> Result<Self> {
        cfg.validate()?;
        let heads = vec![HeadStore::default(); cfg.kv_heads];
        Ok(Self {
            cfg,
            heads,
            seq: 0,
            saved: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SparseAttnIndexConfig {
        &self.cfg
    }

    /// Number of tokens stored per head.
    pub fn len(&self) -> usize {
        self.seq
    }

    /// Whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }

    /// Number of pages (the last one possibly partial).
    pub fn pages(&self) -> usize {
        self.seq.div_ceil(self.cfg.page_size)
    }

    /// The stored keys of KV head `head`, `len() × head_dim`, token-major.
    ///
    /// # Panics
    /// If `head >= kv_heads`.
    pub fn keys(&self, head: usize) -> &[f32] {
        &self.heads[head].keys[..self.seq * self.cfg.head_dim]
    }

    /// Bytes of key and page-summary data held (lengths, not capacities).
    pub fn bytes_held(&self) -> usize {
        self.heads
            .iter()
            .map(|h| (self.seq * self.cfg.head_dim + h.page_min.len() + h.page_max.len()) * 4)
            .sum()
    }

    /// Removes every token, keeping the allocated capacity.
    pub fn clear(&mut self) {
        for h in &mut self.heads {
            // `keys` keeps its (stale) contents: only the first `seq × head_dim` count.
            h.page_min.clear();
            h.page_max.clear();
        }
        self.seq = 0;
    }

    /// Replaces the contents with `keys` (`[kv_heads, seq, head_dim]`): [`clear`] then
    /// [`append`]. Reuses the existing capacity.
    ///
    /// [`clear`]: SparseAttnIndex::clear
    /// [`append`]: SparseAttnIndex::append
    ///
    /// # Errors
    /// As [`append`](SparseAttnIndex::append); on error the index is left empty.
    ///
    /// # Performance
    /// One copy of the keys and one min/max pass; no allocation once capacity suffices.
    pub fn build(&mut self, keys: &ArrayRef3<f32>) -> Result<()> {
        self.clear();
        self.append(keys)
    }

    /// Appends `n` new tokens' keys (`[kv_heads, n, head_dim]`) after the stored ones, updating
    /// the page minima and maxima incrementally (the last partial page is extended, not
    /// recomputed).
    ///
    /// # Errors
    /// [`Error::Shape`](crate::Error::Shape) if the head count or head_dim differ from the
    /// configuration; [`Error::Core`](crate::Error::Core) if a key is NaN or infinite. On error
    /// nothing is appended.
    ///
    /// # Performance
    /// `O(n·kv_heads·head_dim)` in a single pass over the input (copy, page min/max and the
    /// finiteness check fused per page); amortised allocation-free (vectors grow geometrically),
    /// except that a head whose input is not contiguous is first copied into a temporary.
    pub fn append(&mut self, keys: &ArrayRef3<f32>) -> Result<()> {
        let (h, n, d) = keys.dim();
        if h != self.cfg.kv_heads || d != self.cfg.head_dim {
            return Err(ShapeError::new(
                "SparseAttnIndex::append keys [kv_heads, n, head_dim]",
                format!("[{}, n, {}]", self.cfg.kv_heads, self.cfg.head_dim),
                format!("[{h}, {n}, {d}]"),
            )
            .into());
        }
        let page = self.cfg.page_size;
        let (old_seq, old_pages) = (self.seq, self.pages());
        // Rollback state: the partial last page's summaries, which the fold updates in place.
        let partial = old_seq % page != 0;
        self.saved.clear();
        if partial {
            let p = old_pages - 1;
            for store in &self.heads {
                self.saved
                    .extend_from_slice(&store.page_min[p * d..(p + 1) * d]);
                self.saved
                    .extend_from_slice(&store.page_max[p * d..(p + 1) * d]);
            }
        }
        let mut failed = None;
        for (hi, (store, head)) in self.heads.iter_mut().zip(keys.outer_iter()).enumerate() {
            let owned;
            let src = match head.as_slice() {
                Some(s) => s,
                None => {
                    owned = head.iter().copied().collect::<Vec<f32>>();
                    &owned
                }
            };
            // One pass: each page's new keys are copied and folded into the page's min/max as
            // they are loaded; the fold also proves every element finite.
            let need = (old_seq + n) * d;
            if store.keys.len() < need {
                store.keys.resize(need, 0.0);
            }
            let mut finite = true;
            let mut t = old_seq;
            while t < old_seq + n {
                let p = t / page;
                let stop = ((p + 1) * page).min(old_seq + n);
                let rows = &src[(t - old_seq) * d..(stop - old_seq) * d];
                if t == p * page {
                    store.page_min.extend_from_slice(&rows[..d]);
                    store.page_max.extend_from_slice(&rows[..d]);
                }
                finite &= ops::fold_min_max_copy(
                    rows,
                    &mut store.keys[t * d..stop * d],
                    &mut store.page_min[p * d..(p + 1) * d],
                    &mut store.page_max[p * d..(p + 1) * d],
                );
                t = stop;
            }
            if !finite {
                failed = Some((hi, check_finite("SparseAttnIndex keys", src)));
                break;
            }
        }
        if let Some((bad_head, err)) = failed {
            for (h, store) in self.heads.iter_mut().enumerate().take(bad_head + 1) {
                // Keys past `old_seq` are outside the index once `seq` stays `old_seq`.
                store.page_min.truncate(old_pages * d);
                store.page_max.truncate(old_pages * d);
                if partial {
                    let p = old_pages - 1;
                    let saved = &self.saved[h * 2 * d..(h + 1) * 2 * d];
                    store.page_min[p * d..(p + 1) * d].copy_from_slice(&saved[..d]);
                    store.page_max[p * d..(p + 1) * d].copy_from_slice(&saved[d..]);
                }
            }
            // The fold's flag is exact (squish-core tests it against `is_finite`), so the scan
            // finds the element; never fall through to appending after a rollback.
            err?;
            unreachable!("fold_min_max_copy flagged a value that check_finite accepts");
        }
        self.seq += n;
        Ok(())
    }

    /// Quest's upper bound `Σᵢ max(qᵢ·minᵢ, qᵢ·maxᵢ)` of page `page` of KV head `head` for the
    /// query `q`: no key of the page has a larger `q·k` (up to `f32` rounding of the sums).
    ///
    /// # Panics
    /// If `head` or `page` is out of range or `q.len() != head_dim`.
    pub fn page_upper_bound(&self, head: usize, page: usize, q: &[f32]) -> f32 {
        let d = self.cfg.head_dim;
        assert_eq!(q.len(), d, "page_upper_bound: q has the wrong length");
        let store = &self.heads[head];
        let mn = &store.page_min[page * d..(page + 1) * d];
        let mx = &store.page_max[page * d..(page + 1) * d];
        q.iter()
            .zip(mn.iter().zip(mx))
            .map(|(&qi, (&lo, &hi))| (qi * lo).max(qi * hi))
            .sum()
    }

    /// Selects, for every query head (or GQA group when sharing), the `min(k, len())` stored
    /// positions with the largest `q·k`, exactly ([`SelectMode::Exact`]) or among the best
    /// Quest pages ([`SelectMode::Pages`]), and writes them into `out`.
    ///
    /// `q` is `[query_heads, head_dim]`. `k == 0` or an empty index gives empty rows.
    ///
    /// # Errors
    /// [`Error::Shape`](crate::Error::Shape) if `q` has the wrong shape;
    /// [`Error::Core`](crate::Error::Core) if `q` holds NaN or infinity;
    /// [`Error::Config`](crate::Error::Config) if `mode` is `Pages { oversample: 0 }`.
    ///
    /// # Performance
    /// Exact: `S·d` multiply-adds per row plus an `O(S)` selection. Pages: `2·(S/page)·d` per
    /// row for the bounds, plus exact scores for the selected pages' tokens. No allocation once
    /// `out` has been used for a query of the same size.
    pub fn query_into(
        &self,
        q: &ArrayRef2<f32>,
        k: usize,
        mode: SelectMode,
        out: &mut Selection,
    ) -> Result<()> {
        let d = self.cfg.head_dim;
        let (qh, qd) = q.dim();
        if qh != self.cfg.query_heads || qd != d {
            return Err(ShapeError::new(
                "SparseAttnIndex::query_into q [query_heads, head_dim]",
                format!("[{}, {}]", self.cfg.query_heads, d),
                format!("[{qh}, {qd}]"),
            )
            .into());
        }
        if let SelectMode::Pages { oversample: 0 } = mode {
            return Err(ConfigError::new(COMPONENT, "oversample", "must be >= 1", 0).into());
        }
        let group = self.cfg.query_heads / self.cfg.kv_heads;
        let (rows, heads_per_row) = if self.cfg.share_groups {
            (self.cfg.kv_heads, group)
        } else {
            (self.cfg.query_heads, 1)
        };
        // Copy the queries (summed per row when sharing) into contiguous scratch.
        out.query.clear();
        out.query.resize(rows * d, 0.0);
        for (h, qrow) in q.outer_iter().enumerate() {
            let dst = &mut out.query[(h / heads_per_row) * d..(h / heads_per_row + 1) * d];
            // Contiguous rows as slices (the loop vectorises; ndarray's element iterator did
            // not, and cost about 5 % of a query at the seed's size).
            match qrow.as_slice() {
                Some(src) => dst.iter_mut().zip(src).for_each(|(o, &x)| *o += x),
                None => dst.iter_mut().zip(qrow.iter()).for_each(|(o, &x)| *o += x),
            }
        }
        check_finite("SparseAttnIndex query", &out.query)?;
        // (A finite sum can overflow only for inputs near f32::MAX; the check above covers it.)

        let per_row = k.min(self.seq);
        out.rows = rows;
        out.per_row = per_row;
        out.heads_per_row = heads_per_row;
        out.indices.clear();
        if per_row == 0 {
            return Ok(());
        }
        let rows_per_kv = rows / self.cfg.kv_heads;
        // Moved out (not copied) so the rows can be read while `out`'s other buffers are written.
        let query = std::mem::take(&mut out.query);
        for (r, qr) in query.chunks_exact(d).enumerate() {
            let store = &self.heads[r / rows_per_kv];
            match mode {
                SelectMode::Exact => {
                    out.scores.clear();
                    out.scores.resize(self.seq, 0.0);
                    ops::dot_rows_into(qr, &store.keys[..self.seq * d], &mut out.scores);
                    ops::top_k_into(&out.scores, per_row, &mut out.order);
                    out.indices.extend_from_slice(&out.order);
                }
                SelectMode::Pages { oversample } => {
                    select_pages(
                        store,
                        qr,
                        self.cfg.page_size,
                        self.seq,
                        per_row,
                        oversample,
                        out,
                    );
                }
            }
        }
        out.query = query;
        Ok(())
    }
}

/// Quest selection for one row: bounds of every page, the best pages, exact top-k inside them.
/// Appends `per_row` positions to `out.indices`.
fn select_pages(
    store: &HeadStore,
    q: &[f32],
    page: usize,
    seq: usize,
    per_row: usize,
    oversample: usize,
    out: &mut Selection,
) {
    let d = q.len();
    // max(q·lo, q·hi) = q⁺·hi + q⁻·lo with q⁺ = max(q, 0), q⁻ = min(q, 0): two dot products.
    out.q_pos.clear();
    out.q_pos.extend(q.iter().map(|&x| x.max(0.0)));
    out.q_neg.clear();
    out.q_neg.extend(q.iter().map(|&x| x.min(0.0)));
    out.scores.clear();
    out.scores.extend(
        store
            .page_max
            .chunks_exact(d)
            .zip(store.page_min.chunks_exact(d))
            .map(|(hi, lo)| ops::dot(&out.q_pos, hi) + ops::dot(&out.q_neg, lo)),
    );
    let n_pages = out.scores.len();
    let budget = per_row
        .div_ceil(page)
        .saturating_mul(oversample)
        .min(n_pages);
    // One spare page: if the partial last page is among the chosen, the next-best page tops the
    // candidates up to `per_row` (all other pages are full).
    ops::top_k_into(&out.scores, budget + 1, &mut out.pages);
    let mut chosen = budget;
    let tokens_in = |p: usize| (seq - p * page).min(page);
    let mut count: usize = out.pages[..chosen].iter().map(|&p| tokens_in(p)).sum();
    if count < per_row && chosen < out.pages.len() {
        count += tokens_in(out.pages[chosen]);
        chosen += 1;
    }
    debug_assert!(count >= per_row);
    out.pages.truncate(chosen);
    // Ascending page order makes candidate positions ascending, so equal scores keep the lower
    // position first.
    out.pages.sort_unstable();
    out.candidates.clear();
    out.scores.clear();
    for &p in &out.pages {
        let lo = p * page;
        let hi = (lo + page).min(seq);
        out.candidates.extend(lo..hi);
        let at = out.scores.len();
        out.scores.resize(at + (hi - lo), 0.0);
        ops::dot_rows_into(q, &store.keys[lo * d..hi * d], &mut out.scores[at..]);
    }
    ops::top_k_into(&out.scores, per_row, &mut out.order);
    out.indices
        .extend(out.order.iter().map(|&i| out.candidates[i]));
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, Array3};
    use rand::RngExt;
    use squish_testkit::{data, prop};

    use super::*;
    use crate::Error;

    /// Keys with log-normal norms (σ = 1) and random directions, plus a few exact duplicates so
    /// that ties occur.
    fn keys(rng: &mut impl rand::Rng, heads: usize, seq: usize, d: usize) -> Array3<f32> {
        let mut k = data::normal_vec(rng, heads * seq * d, 0.0, 1.0);
        for row in k.chunks_exact_mut(d) {
            let scale = data::lognormal_vec(rng, 1, 0.0, 1.0)[0];
            row.iter_mut().for_each(|x| *x *= scale);
        }
        if seq > 2 {
            for _ in 0..seq / 4 {
                let h = rng.random_range(0..heads);
                let (a, b) = (rng.random_range(0..seq), rng.random_range(0..seq));
                let src: Vec<f32> = k[(h * seq + a) * d..(h * seq + a + 1) * d].to_vec();
                k[(h * seq + b) * d..(h * seq + b + 1) * d].copy_from_slice(&src);
            }
        }
        Array3::from_shape_vec((heads, seq, d), k).unwrap()
    }

    fn query(rng: &mut impl rand::Rng, heads: usize, d: usize) -> Array2<f32> {
        Array2::from_shape_vec((heads, d), data::normal_vec(rng, heads * d, 0.0, 1.0)).unwrap()
    }

    fn cfg(kv: usize, group: usize, d: usize, page: usize, share: bool) -> SparseAttnIndexConfig {
        SparseAttnIndexConfig {
            kv_heads: kv,
            query_heads: kv * group,
            head_dim: d,
            page_size: page,
            share_groups: share,
        }
    }

    /// The row queries as the index forms them: per head, or summed over the group in head
    /// order.
    fn row_queries(c: &SparseAttnIndexConfig, q: &Array2<f32>) -> Vec<Vec<f32>> {
        let group = c.query_heads / c.kv_heads;
        if !c.share_groups {
            return q.outer_iter().map(|r| r.to_vec()).collect();
        }
        (0..c.kv_heads)
            .map(|g| {
                let mut s = vec![0.0f32; c.head_dim];
                for h in g * group..(g + 1) * group {
                    for (o, x) in s.iter_mut().zip(q.row(h)) {
                        *o += x;
                    }
                }
                s
            })
            .collect()
    }

    /// Naive oracle: stable sort of `positions` by descending score (ties: lower position).
    fn naive_top(scores: &[(usize, f32)], k: usize) -> Vec<usize> {
        let mut v = scores.to_vec();
        v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        v.into_iter().take(k).map(|(i, _)| i).collect()
    }

    fn kv_head_of_row(c: &SparseAttnIndexConfig, r: usize) -> usize {
        if c.share_groups {
            r
        } else {
            r / (c.query_heads / c.kv_heads)
        }
    }

    #[test]
    fn exact_mode_equals_a_naive_sort_of_inner_products() {
        prop::check("sparse_exact_equals_naive_sort", 150, |rng| {
            let kv = rng.random_range(1..=2);
            let group = [1, 3][rng.random_range(0..2)];
            let d = [1, 3, 8, 13, 64][rng.random_range(0..5)];
            let seq = rng.random_range(1..80);
            let c = cfg(kv, group, d, rng.random_range(1..20), rng.random_bool(0.5));
            let keys = keys(rng, kv, seq, d);
            let q = query(rng, kv * group, d);
            let mut index = SparseAttnIndex::new(c.clone()).unwrap();
            index.build(&keys).unwrap();
            let k = rng.random_range(0..seq + 5);
            let mut sel = Selection::new();
            index
                .query_into(&q, k, SelectMode::Exact, &mut sel)
                .unwrap();
            let rq = row_queries(&c, &q);
            assert_eq!(sel.rows(), rq.len());
            for (r, qr) in rq.iter().enumerate() {
                let h = kv_head_of_row(&c, r);
                let scored: Vec<(usize, f32)> = (0..seq)
                    .map(|j| {
                        (
                            j,
                            ops::dot(qr, keys.slice(ndarray::s![h, j, ..]).as_slice().unwrap()),
                        )
                    })
                    .collect();
                assert_eq!(sel.row(r), naive_top(&scored, k).as_slice(), "row {r}");
                // Against float64 scores (Σ over the group's heads of q_h·k): the selected
                // set's worst score is no worse than the true k-th best, up to rounding.
                let group_heads: Vec<usize> = if c.share_groups {
                    (r * group..(r + 1) * group).collect()
                } else {
                    vec![r]
                };
                let f64_score = |j: usize| -> f64 {
                    group_heads
                        .iter()
                        .map(|&qh| {
                            q.row(qh)
                                .iter()
                                .zip(keys.slice(ndarray::s![h, j, ..]))
                                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                                .sum::<f64>()
                        })
                        .sum()
                };
                let mut exact: Vec<f64> = (0..seq).map(f64_score).collect();
                exact.sort_by(|a, b| b.partial_cmp(a).unwrap());
                if k.min(seq) > 0 {
                    let worst = sel
                        .row(r)
                        .iter()
                        .map(|&j| f64_score(j))
                        .fold(f64::INFINITY, f64::min);
                    let kth = exact[k.min(seq) - 1];
                    assert!(worst >= kth - 1e-4 * (1.0 + kth.abs()), "{worst} < {kth}");
                }
            }
        });
    }

    #[test]
    fn budget_at_least_seq_returns_every_position_in_both_modes() {
        prop::check("sparse_all_positions", 40, |rng| {
            let seq = rng.random_range(1..60);
            let c = cfg(2, 2, 8, rng.random_range(1..20), false);
            let mut index = SparseAttnIndex::new(c.clone()).unwrap();
            index.build(&keys(rng, 2, seq, 8)).unwrap();
            let q = query(rng, 4, 8);
            let mut sel = Selection::new();
            for mode in [SelectMode::Exact, SelectMode::Pages { oversample: 1 }] {
                index
                    .query_into(&q, seq + rng.random_range(0..3), mode, &mut sel)
                    .unwrap();
                for r in 0..sel.rows() {
                    let mut got = sel.row(r).to_vec();
                    got.sort_unstable();
                    assert_eq!(got, (0..seq).collect::<Vec<_>>());
                }
            }
        });
    }

    #[test]
    fn selection_is_invariant_to_positive_scaling_of_q() {
        // Powers of two scale every product and sum exactly, so the selection must be
        // identical, ties included.
        prop::check("sparse_scale_invariance", 40, |rng| {
            let seq = rng.random_range(1..100);
            let c = cfg(1, 2, 16, 16, rng.random_bool(0.5));
            let mut index = SparseAttnIndex::new(c).unwrap();
            index.build(&keys(rng, 1, seq, 16)).unwrap();
            let q = query(rng, 2, 16);
            let k = rng.random_range(1..seq + 1);
            for mode in [SelectMode::Exact, SelectMode::Pages { oversample: 2 }] {
                let mut a = Selection::new();
                index.query_into(&q, k, mode, &mut a).unwrap();
                for e in [-3, -1, 1, 4] {
                    let scaled = q.mapv(|x| x * 2f32.powi(e));
                    let mut b = Selection::new();
                    index.query_into(&scaled, k, mode, &mut b).unwrap();
                    for r in 0..a.rows() {
                        assert_eq!(a.row(r), b.row(r), "scale 2^{e}");
                    }
                }
            }
        });
    }

    /// Float64 Quest bound of a page from the index's stored min/max.
    fn bound_f64(index: &SparseAttnIndex, head: usize, page: usize, q: &[f32]) -> f64 {
        let d = q.len();
        let s = &index.heads[head];
        (0..d)
            .map(|i| {
                let (lo, hi) = (s.page_min[page * d + i], s.page_max[page * d + i]);
                (f64::from(q[i]) * f64::from(lo)).max(f64::from(q[i]) * f64::from(hi))
            })
            .sum()
    }

    #[test]
    fn page_summaries_are_elementwise_min_max_and_bound_every_key() {
        prop::check("sparse_page_bound", 60, |rng| {
            let (seq, d, page) = (
                rng.random_range(1..70),
                rng.random_range(1..20),
                rng.random_range(1..20),
            );
            let c = cfg(2, 1, d, page, false);
            let keys = keys(rng, 2, seq, d);
            let mut index = SparseAttnIndex::new(c).unwrap();
            index.build(&keys).unwrap();
            let q = data::normal_vec(rng, d, 0.0, 1.0);
            assert_eq!(index.pages(), seq.div_ceil(page));
            for h in 0..2 {
                for p in 0..index.pages() {
                    let toks = p * page..((p + 1) * page).min(seq);
                    for i in 0..d {
                        let col = toks.clone().map(|t| keys[[h, t, i]]);
                        assert_eq!(
                            index.heads[h].page_min[p * d + i],
                            col.clone().fold(f32::INFINITY, f32::min)
                        );
                        assert_eq!(
                            index.heads[h].page_max[p * d + i],
                            col.fold(f32::NEG_INFINITY, f32::max)
                        );
                    }
                    let b64 = bound_f64(&index, h, p, &q);
                    let b32 = f64::from(index.page_upper_bound(h, p, &q));
                    let mag: f64 = (0..d)
                        .map(|i| {
                            f64::from(q[i].abs())
                                * f64::from(
                                    index.heads[h].page_max[p * d + i]
                                        .abs()
                                        .max(index.heads[h].page_min[p * d + i].abs()),
                                )
                        })
                        .sum();
                    for t in toks {
                        let qk: f64 = (0..d)
                            .map(|i| f64::from(q[i]) * f64::from(keys[[h, t, i]]))
                            .sum();
                        assert!(b64 >= qk - 1e-12 * mag, "page {p} token {t}: {b64} < {qk}");
                        assert!(b32 >= qk - 1e-5 * mag, "page {p} token {t}: {b32} < {qk}");
                    }
                }
            }
        });
    }

    #[test]
    fn page_mode_selects_the_best_bounded_pages_then_exact_top_k() {
        prop::check("sparse_page_mode_oracle", 120, |rng| {
            let (seq, d, page) = (
                rng.random_range(1..120),
                [4, 16, 64][rng.random_range(0..3)],
                [4, 16][rng.random_range(0..2)],
            );
            let c = cfg(1, 1, d, page, false);
            let keys = keys(rng, 1, seq, d);
            let mut index = SparseAttnIndex::new(c).unwrap();
            index.build(&keys).unwrap();
            let q = query(rng, 1, d);
            let qr = q.row(0).to_vec();
            let k = rng.random_range(1..seq + 1);
            let oversample = rng.random_range(1..3);
            let mut sel = Selection::new();
            index
                .query_into(&q, k, SelectMode::Pages { oversample }, &mut sel)
                .unwrap();
            // Oracle: pages ranked by float64 bound (ties: lower page), the policy's budget plus
            // the top-up page, then a naive sort of their tokens.
            let n_pages = index.pages();
            let mut ranked: Vec<(usize, f64)> = (0..n_pages)
                .map(|p| (p, bound_f64(&index, 0, p, &qr)))
                .collect();
            ranked.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
            let budget = (k.div_ceil(page) * oversample).min(n_pages);
            // Skip cases whose page choice hinges on a near-tie, which f32 rounding may break
            // either way.
            let near_tie = ranked
                .windows(2)
                .take(budget + 1)
                .any(|w| (w[0].1 - w[1].1).abs() < 1e-3);
            if near_tie {
                return;
            }
            let tokens = |p: usize| p * page..((p + 1) * page).min(seq);
            let mut chosen: Vec<usize> = ranked[..budget].iter().map(|x| x.0).collect();
            if chosen.iter().map(|&p| tokens(p).len()).sum::<usize>() < k {
                chosen.push(ranked[budget].0);
            }
            let scored: Vec<(usize, f32)> = chosen
                .iter()
                .flat_map(|&p| tokens(p))
                .map(|j| {
                    (
                        j,
                        ops::dot(&qr, keys.slice(ndarray::s![0, j, ..]).as_slice().unwrap()),
                    )
                })
                .collect();
            assert_eq!(sel.row(0), naive_top(&scored, k).as_slice());
            // The page holding the true argmax is selected whenever fewer than `budget` pages
            // have a larger bound (always when its bound is the largest).
            let arg = naive_top(
                &(0..seq)
                    .map(|j| {
                        (
                            j,
                            ops::dot(&qr, keys.slice(ndarray::s![0, j, ..]).as_slice().unwrap()),
                        )
                    })
                    .collect::<Vec<_>>(),
                1,
            )[0];
            let arg_bound = bound_f64(&index, 0, arg / page, &qr);
            let above = ranked.iter().filter(|x| x.1 > arg_bound).count();
            if above < budget {
                assert!(chosen.contains(&(arg / page)));
                assert!(sel.row(0).contains(&arg));
            }
        });
    }

    #[test]
    fn page_mode_covering_every_page_equals_exact_mode() {
        prop::check("sparse_pages_cover_all", 40, |rng| {
            let seq = rng.random_range(1..100);
            let c = cfg(2, 3, 8, 16, rng.random_bool(0.5));
            let mut index = SparseAttnIndex::new(c).unwrap();
            index.build(&keys(rng, 2, seq, 8)).unwrap();
            let q = query(rng, 6, 8);
            let k = rng.random_range(1..17);
            let (mut a, mut b) = (Selection::new(), Selection::new());
            index.query_into(&q, k, SelectMode::Exact, &mut a).unwrap();
            index
                .query_into(&q, k, SelectMode::Pages { oversample: 8 }, &mut b)
                .unwrap();
            for r in 0..a.rows() {
                assert_eq!(a.row(r), b.row(r));
            }
        });
    }

    #[test]
    fn append_then_query_equals_build_then_query() {
        prop::check("sparse_append_equals_build", 60, |rng| {
            let seq = rng.random_range(1..90);
            let d = 8;
            let c = cfg(2, 2, d, rng.random_range(1..20), rng.random_bool(0.5));
            let keys = keys(rng, 2, seq, d);
            let mut built = SparseAttnIndex::new(c.clone()).unwrap();
            built.build(&keys).unwrap();
            let mut grown = SparseAttnIndex::new(c).unwrap();
            let mut at = 0;
            while at < seq {
                let n = rng.random_range(0..=(seq - at).min(7));
                grown
                    .append(&keys.slice(ndarray::s![.., at..at + n, ..]).to_owned())
                    .unwrap();
                at += n;
            }
            assert_eq!(grown.len(), seq);
            assert_eq!(grown.bytes_held(), built.bytes_held());
            for h in 0..2 {
                assert_eq!(grown.keys(h), built.keys(h));
                assert_eq!(grown.heads[h].page_min, built.heads[h].page_min);
                assert_eq!(grown.heads[h].page_max, built.heads[h].page_max);
            }
            let q = query(rng, 4, d);
            let k = rng.random_range(0..seq + 2);
            for mode in [SelectMode::Exact, SelectMode::Pages { oversample: 1 }] {
                let (mut a, mut b) = (Selection::new(), Selection::new());
                built.query_into(&q, k, mode, &mut a).unwrap();
                grown.query_into(&q, k, mode, &mut b).unwrap();
                for r in 0..a.rows() {
                    assert_eq!(a.row(r), b.row(r));
                }
            }
        });
    }

    #[test]
    fn a_failed_append_leaves_the_index_bit_for_bit_unchanged() {
        prop::check("sparse_append_rollback", 60, |rng| {
            let (d, page) = (rng.random_range(1..40), rng.random_range(1..20));
            let c = cfg(3, 1, d, page, false);
            let mut index = SparseAttnIndex::new(c).unwrap();
            let seq0 = rng.random_range(0..50);
            index.build(&keys(rng, 3, seq0, d)).unwrap();
            let before: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..3)
                .map(|h| {
                    let s = &index.heads[h];
                    (
                        index.keys(h).to_vec(),
                        s.page_min.clone(),
                        s.page_max.clone(),
                    )
                })
                .collect();
            let n = rng.random_range(1..40);
            let mut bad = keys(rng, 3, n, d);
            let bad_value = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.random_range(0..3)];
            let at = [
                rng.random_range(0..3),
                rng.random_range(0..n),
                rng.random_range(0..d),
            ];
            bad[at] = bad_value;
            let seq = index.len();
            let e = index.append(&bad).unwrap_err();
            assert!(matches!(e, Error::Core(_)), "{e}");
            assert_eq!(index.len(), seq);
            for (hd, (k, lo, hi)) in before.iter().enumerate() {
                assert_eq!(index.keys(hd), k.as_slice());
                let h = &index.heads[hd];
                assert_eq!(h.page_min.len(), lo.len());
                assert!(
                    h.page_min
                        .iter()
                        .zip(lo)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
                assert!(
                    h.page_max
                        .iter()
                        .zip(hi)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                );
            }
        });
    }

    #[test]
    fn strided_inputs_equal_contiguous_ones() {
        let mut rng = squish_testkit::rng(7);
        let keys = keys(&mut rng, 2, 30, 4);
        // A [2, 30, 4] view that is not contiguous: permuted axes of a [4, 30, 2] array.
        let permuted = keys
            .clone()
            .permuted_axes([2, 1, 0])
            .as_standard_layout()
            .to_owned();
        let view = permuted.view().permuted_axes([2, 1, 0]);
        assert!(view.as_slice().is_none());
        let c = cfg(2, 1, 4, 8, false);
        let (mut a, mut b) = (
            SparseAttnIndex::new(c.clone()).unwrap(),
            SparseAttnIndex::new(c).unwrap(),
        );
        a.build(&keys).unwrap();
        b.build(&view).unwrap();
        assert_eq!(a.keys(1), b.keys(1));
        let q = query(&mut rng, 2, 4);
        let qt = q.t().as_standard_layout().to_owned();
        let (mut sa, mut sb) = (Selection::new(), Selection::new());
        a.query_into(&q, 5, SelectMode::Exact, &mut sa).unwrap();
        b.query_into(&qt.t(), 5, SelectMode::Exact, &mut sb)
            .unwrap();
        assert_eq!(sa.row(1), sb.row(1));
    }

    #[test]
    fn empty_index_and_zero_budget_give_empty_rows() {
        let index = SparseAttnIndex::new(cfg(1, 2, 4, 16, false)).unwrap();
        assert!(index.is_empty());
        let mut sel = Selection::new();
        let q = Array2::<f32>::ones((2, 4));
        index
            .query_into(&q, 8, SelectMode::Exact, &mut sel)
            .unwrap();
        assert_eq!((sel.rows(), sel.per_row()), (2, 0));
        assert!(sel.for_query_head(1).is_empty());
    }

    #[test]
    fn gqa_rows_map_query_heads_to_groups() {
        let mut rng = squish_testkit::rng(3);
        let c = cfg(3, 3, 8, 16, true);
        let mut index = SparseAttnIndex::new(c).unwrap();
        index.build(&keys(&mut rng, 3, 40, 8)).unwrap();
        let mut sel = Selection::new();
        index
            .query_into(&query(&mut rng, 9, 8), 4, SelectMode::Exact, &mut sel)
            .unwrap();
        assert_eq!(sel.rows(), 3);
        assert_eq!(sel.for_query_head(7), sel.row(2));
        assert_eq!(sel.for_query_head(3), sel.row(1));
    }

    #[test]
    fn bad_inputs_are_typed_errors_and_change_nothing() {
        let mut index = SparseAttnIndex::new(cfg(2, 1, 4, 16, false)).unwrap();
        let e = index.append(&Array3::<f32>::zeros((3, 5, 4))).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in SparseAttnIndex::append keys [kv_heads, n, head_dim]: expected [2, n, 4], got [3, 5, 4]");
        let e = index.append(&Array3::<f32>::zeros((2, 5, 3))).unwrap_err();
        assert!(matches!(e, Error::Shape(_)));
        let mut bad = Array3::<f32>::zeros((2, 5, 4));
        bad[[1, 3, 2]] = f32::NAN;
        let e = index.append(&bad).unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in SparseAttnIndex keys: element 14 is NaN");
        assert!(index.is_empty() && index.keys(0).is_empty());
        index.append(&Array3::<f32>::ones((2, 5, 4))).unwrap();
        bad[[0, 0, 0]] = f32::INFINITY;
        assert!(matches!(index.build(&bad), Err(Error::Core(_))));
        assert!(index.is_empty());
        index.append(&Array3::<f32>::ones((2, 5, 4))).unwrap();

        let mut sel = Selection::new();
        let e = index
            .query_into(
                &Array2::<f32>::zeros((1, 4)),
                2,
                SelectMode::Exact,
                &mut sel,
            )
            .unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in SparseAttnIndex::query_into q [query_heads, head_dim]: expected [2, 4], got [1, 4]");
        let mut q = Array2::<f32>::zeros((2, 4));
        q[[0, 1]] = f32::NEG_INFINITY;
        let e = index
            .query_into(&q, 2, SelectMode::Exact, &mut sel)
            .unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in SparseAttnIndex query: element 1 is -inf");
        let e = index
            .query_into(
                &Array2::<f32>::zeros((2, 4)),
                2,
                SelectMode::Pages { oversample: 0 },
                &mut sel,
            )
            .unwrap_err();
        insta::assert_snapshot!(e, @"invalid SparseAttnIndex.oversample: must be >= 1, got 0");
    }

    #[test]
    fn config_errors_are_pinned() {
        let base = SparseAttnIndexConfig::default();
        assert_eq!(base.validate(), Ok(()));
        let e = SparseAttnIndexConfig {
            kv_heads: 0,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid SparseAttnIndex.kv_heads: must be >= 1, got 0");
        let e = SparseAttnIndexConfig {
            query_heads: 12,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid SparseAttnIndex.query_heads: must be a positive multiple of kv_heads (8), got 12");
        let e = SparseAttnIndexConfig {
            head_dim: 0,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid SparseAttnIndex.head_dim: must be >= 1, got 0");
        let e = SparseAttnIndexConfig {
            page_size: 0,
            ..base.clone()
        }
        .validate()
        .unwrap_err();
        insta::assert_snapshot!(e, @"invalid SparseAttnIndex.page_size: must be >= 1, got 0");
        assert!(matches!(
            SparseAttnIndex::new(SparseAttnIndexConfig {
                kv_heads: 0,
                ..base
            }),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn index_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SparseAttnIndex>();
        assert_send_sync::<Selection>();
    }
}
