//! The verification core shared by [`TreeVerifier`](crate::TreeVerifier) and
//! [`QuantSpecDecoder`](crate::QuantSpecDecoder): lossless speculative sampling over a tree of
//! draft tokens.
//!
//! # The rule
//! At a node `u` whose target distribution (after warping) is `p`, the residual starts as
//! `r = p`. The children of `u` are tested in order: child `x`, drawn from its draft
//! distribution `q`, is accepted with probability `min(1, r(x) / q(x))`; on rejection the
//! residual becomes `r ← norm(max(0, r − q))` and the next child is tested against it. If every
//! child is rejected, the **correction** token is drawn from `r`. Verification descends into an
//! accepted child and repeats; at a node without children the **bonus** token is drawn from the
//! target distribution there.
//!
//! With one child per node this is the speculative sampling of Leviathan et al., "Fast Inference
//! from Transformers via Speculative Decoding" (ICML 2023) and Chen et al., "Accelerating Large
//! Language Model Decoding with Speculative Sampling" (2023); with several it is the multi-step
//! speculative sampling of Miao et al., "SpecInfer: Accelerating Large Language Model Serving
//! with Tree-based Speculative Inference and Verification" (ASPLOS 2024). Each step leaves the
//! distribution of the emitted token equal to `r`, so the emitted sequence follows the target
//! exactly, provided each child's token was drawn independently from the draft distribution
//! the caller names for it (siblings from one draft distribution are drawn **with
//! replacement**: deduplicating them breaks the guarantee; a duplicate sibling is simply
//! rejected, since after rejecting `x` the residual gives `x` probability 0).
//!
//! A token chosen deterministically (a greedy draft, or the i-th best of a top-k expansion) has
//! a one-hot draft distribution ([`GREEDY_DRAFT`]): it is accepted with probability `r(x)` and
//! on rejection `x` is removed from the residual.
//!
//! With temperature 0 the target is greedy: the child equal to the target's argmax is accepted,
//! and the correction / bonus is the argmax.
//!
//! # Lazy rows
//! With plain temperature sampling from logits (no top-k, no top-p) a row is never normalised
//! in full unless it must be. An acceptance `u < p(x) / q(x)` needs the two tokens' weights
//! `exp((l - max) / T)` (one exponential each) and the two softmax totals; each row gets one
//! validating maximum pass, and its total is first only bounded, to within ~6%, by one pass
//! without exponentials ([`ops::softmax_total_bounds`]). When the bounds leave no doubt the
//! decision is the one the exact totals give; otherwise the exact totals
//! (an exponential pass, [`VerifyOutput::exp_passes`]) decide. The bonus token, and the
//! correction after a node's last rejection, are drawn by rejection sampling: candidates from
//! the interpolated exponentials accepted with `w / (C · A)`
//! ([`sampling::propose_softmax`]) give exact draws from `p`, and a candidate `i` from `p`
//! accepted with `max(0, 1 − q(i) / p(i))` is an exact draw from `norm(max(0, p − q))`
//! (decided from the bounds, like the acceptances). After a few failed tries the exact
//! distribution is built and sampled instead, which leaves the outcome exactly distributed.
//! Only a rejection followed by a sibling test builds the residual explicitly. A unit test
//! checks that the lazy path and a path deciding everything from the exact totals give the
//! same outcomes for the same random draws; the exact-enumeration and chi-squared tests of
//! the components cover the rest.

use rand::{Rng, RngExt};
use squish_core::{ConfigError, ShapeError, ops, sampling};

use crate::error::{Error, Result};

/// Marks a draft node whose token was chosen deterministically (its draft distribution is
/// one-hot at the token), in [`DraftTree::draft_rows`](crate::DraftTree::draft_rows).
pub const GREEDY_DRAFT: u32 = u32::MAX;

/// Sentinel for "no node" in the child lists.
const NONE: u32 = u32::MAX;

/// How scores are turned into the distribution tokens are sampled from, applied identically to
/// the target and the draft (the draft must have sampled its tokens from the same warped
/// distribution it passes to the verifier).
///
/// Order (as Hugging Face `generate`): temperature, then top-k, then top-p (nucleus), then
/// renormalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Sampling {
    /// Softmax temperature, `>= 0` and finite. `0` is greedy decoding: the target's argmax is
    /// the only token it can emit. Default 1.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties broken by lower index); `0` disables.
    /// Default 0.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`, in
    /// `(0, 1]`; `1` disables. Default 1.
    pub top_p: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
    }
}

impl Sampling {
    /// Sampling at `temperature`, keeping the `top_k` most likely tokens (`0`: all) and then
    /// the nucleus of mass `top_p` (`1`: all). Checked by [`validate`](Self::validate).
    pub const fn new(temperature: f32, top_k: usize, top_p: f32) -> Self {
        Self {
            temperature,
            top_k,
            top_p,
        }
    }

    /// Plain sampling at `temperature` (no top-k, no top-p).
    pub const fn with_temperature(temperature: f32) -> Self {
        Self {
            temperature,
            top_k: 0,
            top_p: 1.0,
        }
    }

    /// Greedy decoding (temperature 0).
    pub const fn greedy() -> Self {
        Self::with_temperature(0.0)
    }

    /// Whether this is greedy decoding (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks every field, naming `component` in the error.
    ///
    /// # Errors
    /// A [`ConfigError`] if `temperature` is negative or not finite, or `top_p` is not in
    /// `(0, 1]`.
    pub fn validate(&self, component: &'static str) -> Result<(), ConfigError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(ConfigError::new(
                component,
                "sampling.temperature",
                "must be finite and >= 0",
                self.temperature,
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ConfigError::new(
                component,
                "sampling.top_p",
                "must be in (0, 1]",
                self.top_p,
            ));
        }
        Ok(())
    }
}

/// What the rows of the target and draft buffers hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Scores {
    /// Unnormalised logits: finite, or `-inf` for a masked token (a row may not be entirely
    /// `-inf`).
    #[default]
    Logits,
    /// Probabilities: finite, `>= 0`, each row summing to 1 within
    /// [`PROB_SUM_TOLERANCE`].
    Probabilities,
}

/// How far a probability row's sum may be from 1 (absolute), for [`Scores::Probabilities`].
pub const PROB_SUM_TOLERANCE: f64 = 1e-3;

/// Whether the token after the accepted path corrects a rejection or is a bonus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NextKind {
    /// Every child of the last accepted node was rejected: the token was drawn from the
    /// residual (or is the target's argmax, in greedy mode).
    #[default]
    Correction,
    /// The last accepted node has no children: the token was drawn from the target there.
    Bonus,
}

/// Counts at one depth of the draft tree (depth 1 = the children of the root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DepthStats {
    /// Draft tokens at this depth.
    pub drafted: u64,
    /// Draft tokens at this depth that were tested against the target.
    pub tested: u64,
    /// Draft tokens at this depth that were accepted (at most one per verification).
    pub accepted: u64,
}

/// The outcome of one verification: the accepted draft tokens and the one token that follows.
///
/// Reuse one value across calls: its buffers keep their capacity.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct VerifyOutput {
    accepted: Vec<u32>,
    path: Vec<usize>,
    next_token: u32,
    next_kind: NextKind,
    drafted: usize,
    per_depth: Vec<DepthStats>,
    softmaxes: u32,
    exp_passes: u32,
}

impl VerifyOutput {
    /// An empty output (allocates nothing until used).
    pub fn new() -> Self {
        Self::default()
    }

    /// The accepted draft tokens, in order (the correction / bonus token is not among them).
    pub fn accepted(&self) -> &[u32] {
        &self.accepted
    }

    /// The accepted draft nodes (indices into the draft tokens), root to leaf.
    pub fn path(&self) -> &[usize] {
        &self.path
    }

    /// The token emitted after the accepted ones: the correction or the bonus token.
    pub fn next_token(&self) -> u32 {
        self.next_token
    }

    /// Whether [`next_token`](Self::next_token) is a correction or a bonus token.
    pub fn next_kind(&self) -> NextKind {
        self.next_kind
    }

    /// Tokens emitted by this verification: accepted + 1.
    pub fn emitted(&self) -> usize {
        self.accepted.len() + 1
    }

    /// Draft tokens submitted for verification.
    pub fn drafted(&self) -> usize {
        self.drafted
    }

    /// Accepted / drafted for this verification (0 when nothing was drafted).
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.accepted.len() as u64, self.drafted as u64)
    }

    /// Counts per depth: index 0 is depth 1 (the children of the root).
    pub fn per_depth(&self) -> &[DepthStats] {
        &self.per_depth
    }

    /// Rows this verification normalised: one per visited node's target row and one per
    /// distinct draft row tested (a softmax over the vocabulary, or the warping of a
    /// probability row); greedy mode needs none.
    ///
    /// With plain sampling from logits (no top-k / top-p) a row is read lazily: validated with
    /// its maximum, then often only bounded by a pass without exponentials;
    /// [`exp_passes`](Self::exp_passes) counts the rows whose exponentials were computed.
    pub fn softmaxes(&self) -> u32 {
        self.softmaxes
    }

    /// Rows whose exponentials over the whole vocabulary this verification computed (the
    /// expensive part of a softmax): every normalised row with top-k, top-p or probability
    /// scores; with plain sampling from logits only the rows where the cheap bounds could not
    /// decide a comparison, the rows of a residual built for a further sibling test, and the
    /// rows of a bonus / correction draw whose rejection-sampling tries all failed (rare).
    pub fn exp_passes(&self) -> u32 {
        self.exp_passes
    }

    /// Writes the emitted tokens (accepted, then the next token) into `out` after clearing it.
    pub fn emitted_into(&self, out: &mut Vec<u32>) {
        out.clear();
        out.extend_from_slice(&self.accepted);
        out.push(self.next_token);
    }
}

/// Running totals over many verifications.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct VerifyStats {
    /// Verification steps.
    pub steps: u64,
    /// Draft tokens submitted.
    pub drafted: u64,
    /// Draft tokens accepted (correction and bonus tokens are not counted).
    pub accepted: u64,
    /// Correction tokens emitted.
    pub corrections: u64,
    /// Bonus tokens emitted.
    pub bonuses: u64,
    /// Rows normalised (softmaxes or probability-row warps, lazily bounded or exact), as
    /// [`VerifyOutput::softmaxes`].
    pub softmaxes: u64,
    /// Rows whose exponentials were computed, as [`VerifyOutput::exp_passes`].
    pub exp_passes: u64,
    /// Counts per depth: index 0 is depth 1.
    pub per_depth: Vec<DepthStats>,
}

impl VerifyStats {
    /// Accepted / drafted (0 before anything was drafted). Nothing else is called acceptance.
    pub fn acceptance_rate(&self) -> f64 {
        ratio(self.accepted, self.drafted)
    }

    /// Mean accepted draft tokens per verification step.
    pub fn accepted_per_step(&self) -> f64 {
        ratio(self.accepted, self.steps)
    }

    /// Mean tokens emitted per verification step (accepted + 1).
    pub fn emitted_per_step(&self) -> f64 {
        ratio(self.accepted + self.corrections + self.bonuses, self.steps)
    }

    pub(crate) fn record(&mut self, out: &VerifyOutput) {
        self.steps += 1;
        self.drafted += out.drafted as u64;
        self.accepted += out.accepted.len() as u64;
        match out.next_kind {
            NextKind::Correction => self.corrections += 1,
            NextKind::Bonus => self.bonuses += 1,
        }
        self.softmaxes += u64::from(out.softmaxes);
        self.exp_passes += u64::from(out.exp_passes);
        if self.per_depth.len() < out.per_depth.len() {
            self.per_depth
                .resize(out.per_depth.len(), DepthStats::default());
        }
        for (acc, d) in self.per_depth.iter_mut().zip(&out.per_depth) {
            acc.drafted += d.drafted;
            acc.tested += d.tested;
            acc.accepted += d.accepted;
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Where each draft node hangs: explicit parents, or a chain.
#[derive(Clone, Copy)]
pub(crate) enum Parents<'a> {
    /// Draft node `i` is the child of node `i` (the root is node 0, draft `i` is node `i + 1`).
    Chain,
    /// `parents[i]` is the node draft `i` hangs from (0 = root, `j + 1` = draft `j`).
    Explicit(&'a [u32]),
}

/// Which draft row each draft node was sampled from.
#[derive(Clone, Copy)]
pub(crate) enum DraftRows<'a> {
    /// Draft `i` was sampled from row `i`.
    Identity,
    /// Every draft token was chosen deterministically (one-hot draft).
    Greedy,
    /// `rows[i]` is draft `i`'s row, or [`GREEDY_DRAFT`].
    Explicit(&'a [u32]),
}

/// A draft tree as the core sees it.
#[derive(Clone, Copy)]
pub(crate) struct TreeRef<'a> {
    pub(crate) parents: Parents<'a>,
    pub(crate) tokens: &'a [u32],
    pub(crate) rows: DraftRows<'a>,
}

impl TreeRef<'_> {
    fn parent(&self, i: usize) -> usize {
        match self.parents {
            Parents::Chain => i,
            Parents::Explicit(p) => p[i] as usize,
        }
    }

    fn row(&self, i: usize) -> u32 {
        match self.rows {
            DraftRows::Identity => i as u32,
            DraftRows::Greedy => GREEDY_DRAFT,
            DraftRows::Explicit(r) => r[i],
        }
    }
}

/// Which validated settings the core runs with.
#[derive(Clone, Copy)]
pub(crate) struct Params {
    pub(crate) vocab: usize,
    pub(crate) sampling: Sampling,
    pub(crate) scores: Scores,
}

/// Reusable buffers of the verification core: after the first call at a given vocabulary and
/// tree size, verification allocates nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct VerifyScratch {
    /// The residual at the node being verified, unnormalised (its total is tracked in f64).
    r: Vec<f32>,
    /// The weights of the warped draft distribution of `q_row`, unnormalised (their total is
    /// returned by [`weights_into`](Self::weights_into)).
    q: Vec<f32>,
    /// Index buffer for top-k / top-p.
    idx: Vec<usize>,
    /// Kept values for top-k.
    kept: Vec<f32>,
    /// First child of each node (node 0 = root), or NONE.
    first_child: Vec<u32>,
    /// Next sibling of each node, or NONE.
    next_sibling: Vec<u32>,
    /// Depth of each node (root 0).
    depth: Vec<u32>,
    /// Decide every acceptance from the exact totals (tests compare it with the lazy path).
    force_exact: bool,
}

impl VerifyScratch {
    /// Verifies `tree` against `target` (rows `0..=n`: row 0 at the root, row `i + 1` after
    /// draft `i`) with draft rows `draft`, writing the outcome to `out`.
    pub(crate) fn run<R: Rng + ?Sized>(
        &mut self,
        params: &Params,
        tree: TreeRef<'_>,
        target: &[f32],
        draft: &[f32],
        rng: &mut R,
        out: &mut VerifyOutput,
    ) -> Result<()> {
        let vocab = params.vocab;
        let n = tree.tokens.len();
        if target.len() != (n + 1) * vocab {
            return Err(ShapeError::new(
                "verify target rows (draft tokens + 1) x vocab",
                format!("{} = ({n} + 1) x {vocab}", (n + 1) * vocab),
                target.len(),
            )
            .into());
        }
        if !draft.len().is_multiple_of(vocab) {
            return Err(ShapeError::new(
                "verify draft rows x vocab",
                format!("a multiple of {vocab}"),
                draft.len(),
            )
            .into());
        }
        let draft_rows = draft.len() / vocab;
        self.build_children(&tree, vocab, draft_rows)?;

        out.accepted.clear();
        out.path.clear();
        out.drafted = n;
        out.softmaxes = 0;
        out.exp_passes = 0;
        out.per_depth.clear();
        for node in 1..=n {
            let d = self.depth[node] as usize;
            if out.per_depth.len() < d {
                out.per_depth.resize(d, DepthStats::default());
            }
            out.per_depth[d - 1].drafted += 1;
        }
        let s = &params.sampling;
        let plain =
            params.scores == Scores::Logits && !(s.top_k > 0 && s.top_k < vocab) && s.top_p >= 1.0;
        if s.is_greedy() {
            self.run_greedy(params, &tree, target, out)
        } else if plain {
            self.run_lazy(params, &tree, target, draft, rng, out)
        } else {
            self.run_sampled(params, &tree, target, draft, rng, out)
        }
    }

    /// Validates the tree and builds the child lists (children in increasing index order).
    fn build_children(
        &mut self,
        tree: &TreeRef<'_>,
        vocab: usize,
        draft_rows: usize,
    ) -> Result<()> {
        let n = tree.tokens.len();
        if let Parents::Explicit(p) = tree.parents
            && p.len() != n
        {
            return Err(
                ShapeError::new("verify tree parents (one per draft token)", n, p.len()).into(),
            );
        }
        if let DraftRows::Explicit(r) = tree.rows
            && r.len() != n
        {
            return Err(ShapeError::new(
                "verify tree draft_rows (one per draft token)",
                n,
                r.len(),
            )
            .into());
        }
        self.first_child.clear();
        self.first_child.resize(n + 1, NONE);
        self.next_sibling.clear();
        self.next_sibling.resize(n + 1, NONE);
        self.depth.clear();
        self.depth.resize(n + 1, 0);
        for i in 0..n {
            let parent = tree.parent(i);
            if parent > i {
                return Err(Error::InvalidTree {
                    node: i,
                    reason: format!(
                        "parent {parent} must be 0 (the root) or an earlier draft node + 1 (<= {i})"
                    ),
                });
            }
            let token = tree.tokens[i];
            if token as usize >= vocab {
                return Err(Error::InvalidTree {
                    node: i,
                    reason: format!("token {token} is outside the vocabulary of {vocab}"),
                });
            }
            let row = tree.row(i);
            if row != GREEDY_DRAFT && row as usize >= draft_rows {
                return Err(Error::InvalidTree {
                    node: i,
                    reason: format!("draft row {row} does not exist ({draft_rows} draft rows)"),
                });
            }
            self.depth[i + 1] = self.depth[parent] + 1;
        }
        for i in (0..n).rev() {
            let parent = tree.parent(i);
            self.next_sibling[i + 1] = self.first_child[parent];
            self.first_child[parent] = (i + 1) as u32;
        }
        Ok(())
    }

    fn run_greedy(
        &self,
        params: &Params,
        tree: &TreeRef<'_>,
        target: &[f32],
        out: &mut VerifyOutput,
    ) -> Result<()> {
        let vocab = params.vocab;
        let mut node = 0usize;
        loop {
            let row = &target[node * vocab..(node + 1) * vocab];
            validate_row(row, params.scores, "verify target", node)?;
            let best = ops::argmax(row).unwrap_or(0) as u32;
            let mut child = self.first_child[node];
            let mut found = None;
            while child != NONE {
                let c = child as usize;
                out.per_depth[self.depth[c] as usize - 1].tested += 1;
                if tree.tokens[c - 1] == best {
                    found = Some(c);
                    break;
                }
                child = self.next_sibling[c];
            }
            match found {
                Some(c) => {
                    out.per_depth[self.depth[c] as usize - 1].accepted += 1;
                    out.accepted.push(best);
                    out.path.push(c - 1);
                    node = c;
                }
                None => {
                    out.next_token = best;
                    out.next_kind = if self.first_child[node] == NONE {
                        NextKind::Bonus
                    } else {
                        NextKind::Correction
                    };
                    return Ok(());
                }
            }
        }
    }

    /// [`run_sampled`](Self::run_sampled) for plain sampling from logits (temperature only),
    /// reading each row lazily ([`LazyRow`]): an acceptance `u < p(x) / q(x)` needs only the
    /// two tokens' weights and the two totals, and the totals are first only bounded (to within
    /// ~6%, without exponentials). When the bounds decide the comparison, the decision is the
    /// one the exact totals give; otherwise the exact totals are computed and decide it as
    /// [`run_sampled`](Self::run_sampled) would. The bonus and the correction after a node's
    /// last rejection are drawn by exact rejection sampling ([`LazySample`]). Rows are computed
    /// in full only for an undecided comparison, a residual built for a further sibling test,
    /// or a draw whose tries all failed. Same validation as `run_sampled`, and the same
    /// outcome as deciding every comparison from the exact totals, for the same random draws
    /// (a test checks this).
    fn run_lazy<R: Rng + ?Sized>(
        &mut self,
        params: &Params,
        tree: &TreeRef<'_>,
        target: &[f32],
        draft: &[f32],
        rng: &mut R,
        out: &mut VerifyOutput,
    ) -> Result<()> {
        let vocab = params.vocab;
        let t = params.sampling.temperature;
        let mut r = std::mem::take(&mut self.r);
        let mut q = std::mem::take(&mut self.q);
        r.resize(vocab, 0.0);
        q.resize(vocab, 0.0);
        let result = (|| {
            let mut q_row = NONE;
            let mut ql = LazyRow::new(0.0);
            let mut node = 0usize;
            'nodes: loop {
                let row = &target[node * vocab..(node + 1) * vocab];
                let mut pl = LazyRow::new(row_max(row, "verify target", node)?);
                out.softmaxes += 1;
                // Whether `r` holds a residual (after a rejection at this node).
                let mut residual_built = false;
                let mut child = self.first_child[node];
                if child == NONE {
                    let lazy = LazySample {
                        row,
                        t,
                        force_exact: self.force_exact,
                    };
                    out.next_token = lazy.sample(&mut pl, &mut r, None, rng, out) as u32;
                    out.next_kind = NextKind::Bonus;
                    return Ok(());
                }
                while child != NONE {
                    let c = child as usize;
                    let depth = self.depth[c] as usize - 1;
                    out.per_depth[depth].tested += 1;
                    let x = tree.tokens[c - 1] as usize;
                    let qrow = tree.row(c - 1);
                    let greedy = qrow == GREEDY_DRAFT;
                    let qrow_scores = if greedy {
                        &[][..]
                    } else {
                        let start = qrow as usize * vocab;
                        &draft[start..start + vocab]
                    };
                    if !greedy && qrow != q_row {
                        ql = LazyRow::new(row_max(qrow_scores, "verify draft", qrow as usize)?);
                        out.softmaxes += 1;
                        q_row = qrow;
                    }
                    // The tokens' weights: as the full passes store them (the residual's once
                    // a rejection has replaced the row).
                    let qx_w = if greedy {
                        1.0
                    } else {
                        ql.weight(qrow_scores, x, t, &q)
                    };
                    if qx_w <= 0.0 {
                        return Err(Error::ImpossibleDraft {
                            node: c - 1,
                            token: x as u32,
                        });
                    }
                    let rx_w = pl.weight(row, x, t, &r);
                    let u = rng.random::<f64>();
                    // Accept iff u < (rx_w / Zp) / (qx_w / Zq): decided from the bounds on the
                    // totals when they leave no doubt (the 1e-9 margin dwarfs the f64 rounding
                    // of the exact test below).
                    let mut decided = None;
                    if !self.force_exact && (pl.exact.is_none() || (!greedy && ql.exact.is_none()))
                    {
                        let (p_lo, p_hi) = pl.bounds(row, t);
                        let (q_lo, q_hi) = if greedy {
                            (1.0, 1.0)
                        } else {
                            ql.bounds(qrow_scores, t)
                        };
                        let base = f64::from(rx_w) / f64::from(qx_w);
                        if u < base * q_lo / p_hi * (1.0 - 1e-9) {
                            decided = Some(true);
                        } else if u >= base * q_hi / p_lo * (1.0 + 1e-9) {
                            decided = Some(false);
                        }
                    }
                    let accept = match decided {
                        Some(a) => a,
                        None => {
                            // One row exact first: with the other still bounded, the
                            // comparison is often decided (half the uncertainty).
                            let mass = pl.exact_total(row, t, &mut r, out);
                            let mut again = None;
                            if !greedy && ql.exact.is_none() && !self.force_exact {
                                let (q_lo, q_hi) = ql.bounds(qrow_scores, t);
                                let base = f64::from(rx_w) / f64::from(qx_w) / mass;
                                if u < base * q_lo * (1.0 - 1e-9) {
                                    again = Some(true);
                                } else if u >= base * q_hi * (1.0 + 1e-9) {
                                    again = Some(false);
                                }
                            }
                            match again {
                                Some(a) => a,
                                None => {
                                    let qx = if greedy {
                                        1.0
                                    } else {
                                        // The total first: it fills `q`.
                                        let q_mass = ql.exact_total(qrow_scores, t, &mut q, out);
                                        f64::from(q[x]) / q_mass
                                    };
                                    u * qx < f64::from(r[x]) / mass
                                }
                            }
                        }
                    };
                    if accept {
                        out.per_depth[depth].accepted += 1;
                        out.accepted.push(x as u32);
                        out.path.push(c - 1);
                        node = c;
                        continue 'nodes;
                    }
                    if self.next_sibling[c] == NONE && !residual_built {
                        // The only rejection at this node: the correction is drawn from
                        // norm(max(0, p − q)) by rejection from p, without building it.
                        let lazy = LazySample {
                            row,
                            t,
                            force_exact: self.force_exact,
                        };
                        let residual = Residual {
                            x,
                            q: if greedy {
                                None
                            } else {
                                Some((&mut ql, qrow_scores, &mut q[..]))
                            },
                        };
                        out.next_token =
                            lazy.sample(&mut pl, &mut r, Some(residual), rng, out) as u32;
                        out.next_kind = NextKind::Correction;
                        return Ok(());
                    }
                    // Rejected: r ← norm(max(0, r − q)) needs the rows in full.
                    let mut mass = pl.exact_total(row, t, &mut r, out);
                    if greedy {
                        // r(x) < mass here (else u * 1 < r(x) / mass = 1 had accepted).
                        mass -= f64::from(r[x]);
                        r[x] = 0.0;
                    } else {
                        let q_mass = ql.exact_total(qrow_scores, t, &mut q, out);
                        mass = subtract_scaled(&mut r, &q, (mass / q_mass) as f32);
                        if mass <= 0.0 {
                            // As in `run_sampled`: only through rounding.
                            r.copy_from_slice(&q);
                            mass = q_mass;
                        }
                    }
                    // `r` now holds the residual: its weights and total stand for the row.
                    pl.exact = Some(mass);
                    residual_built = true;
                    child = self.next_sibling[c];
                }
                // Every child was rejected, so the residual is exact.
                let mass = pl.exact_total(row, t, &mut r, out);
                out.next_token = sample_weights(&r, mass, rng) as u32;
                out.next_kind = NextKind::Correction;
                return Ok(());
            }
        })();
        self.r = r;
        self.q = q;
        result
    }

    fn run_sampled<R: Rng + ?Sized>(
        &mut self,
        params: &Params,
        tree: &TreeRef<'_>,
        target: &[f32],
        draft: &[f32],
        rng: &mut R,
        out: &mut VerifyOutput,
    ) -> Result<()> {
        let vocab = params.vocab;
        let mut r = std::mem::take(&mut self.r);
        let mut q = std::mem::take(&mut self.q);
        r.resize(vocab, 0.0);
        q.resize(vocab, 0.0);
        let result = (|| {
            let mut q_row = NONE;
            let mut q_mass = 1.0f64;
            let mut node = 0usize;
            'nodes: loop {
                let row = &target[node * vocab..(node + 1) * vocab];
                // `r` holds the target's weights, `mass` their total (the sum of the stored
                // f32 values, in f64): a target that is certain of a token then accepts it
                // with probability exactly 1.
                let mut mass = self.weights_into(params, row, "verify target", node, &mut r)?;
                out.softmaxes += 1;
                out.exp_passes += 1;
                let mut child = self.first_child[node];
                if child == NONE {
                    out.next_token = sample_weights(&r, mass, rng) as u32;
                    out.next_kind = NextKind::Bonus;
                    return Ok(());
                }
                while child != NONE {
                    let c = child as usize;
                    let depth = self.depth[c] as usize - 1;
                    out.per_depth[depth].tested += 1;
                    let x = tree.tokens[c - 1] as usize;
                    let qrow = tree.row(c - 1);
                    let qx = if qrow == GREEDY_DRAFT {
                        1.0
                    } else {
                        if qrow != q_row {
                            let start = qrow as usize * vocab;
                            let row = &draft[start..start + vocab];
                            q_mass = self.weights_into(
                                params,
                                row,
                                "verify draft",
                                qrow as usize,
                                &mut q,
                            )?;
                            out.softmaxes += 1;
                            out.exp_passes += 1;
                            q_row = qrow;
                        }
                        f64::from(q[x]) / q_mass
                    };
                    if qx <= 0.0 {
                        return Err(Error::ImpossibleDraft {
                            node: c - 1,
                            token: x as u32,
                        });
                    }
                    let rx = f64::from(r[x]) / mass;
                    let u = rng.random::<f64>();
                    if u * qx < rx {
                        out.per_depth[depth].accepted += 1;
                        out.accepted.push(x as u32);
                        out.path.push(c - 1);
                        node = c;
                        continue 'nodes;
                    }
                    // Rejected: r ← norm(max(0, r − q)), kept unnormalised with its total.
                    if qrow == GREEDY_DRAFT {
                        // r(x) < mass here (else u * 1 < r(x) / mass = 1 had accepted).
                        mass -= f64::from(r[x]);
                        r[x] = 0.0;
                    } else {
                        // r / mass − q / q_mass, scaled by mass.
                        mass = subtract_scaled(&mut r, &q, (mass / q_mass) as f32);
                        if mass <= 0.0 {
                            // Only reachable through rounding (r / mass == q / q_mass to within
                            // f32 precision, when rejection has probability ~0): r / mass ~ q.
                            r.copy_from_slice(&q);
                            mass = q_mass;
                        }
                    }
                    child = self.next_sibling[c];
                }
                out.next_token = sample_weights(&r, mass, rng) as u32;
                out.next_kind = NextKind::Correction;
                return Ok(());
            }
        })();
        self.r = r;
        self.q = q;
        result
    }

    /// Writes the warped distribution of `row` into `out` and returns its total (the sum of
    /// the stored values, in f64, 1 up to rounding).
    fn weights_into(
        &mut self,
        params: &Params,
        row: &[f32],
        context: &'static str,
        row_index: usize,
        out: &mut [f32],
    ) -> Result<f64> {
        self.warp_into(params, row, context, row_index, out)?;
        Ok(sum_f64(out))
    }

    /// Writes the warped, normalised distribution of `row` into `out`.
    fn warp_into(
        &mut self,
        params: &Params,
        row: &[f32],
        context: &'static str,
        row_index: usize,
        out: &mut [f32],
    ) -> Result<()> {
        validate_row(row, params.scores, context, row_index)?;
        warp_row(
            &params.sampling,
            params.scores,
            row,
            out,
            &mut self.idx,
            &mut self.kept,
        );
        Ok(())
    }
}

/// Turns a row of scores into the distribution tokens are drawn from, exactly as
/// [`TreeVerifier`](crate::TreeVerifier) and [`QuantSpecDecoder`](crate::QuantSpecDecoder) do.
///
/// Verification is lossless only if each draft token was drawn from the distribution the
/// verifier computes for its draft row; with top-k or top-p, drafting with this warper (same
/// [`Sampling`], same [`Scores`]) guarantees that, to the bit. With plain temperature sampling
/// from logits the verifier reads a row as its unnormalised weights over their `f64` total
/// (the same `f32` weights this warper scales by the reciprocal of their `f32` sum), so each
/// probability agrees with this warper's to within one `f32` rounding (relative `2⁻²⁴`).
///
/// # Example
/// ```
/// use squish_spec::{Sampling, Scores, Warper};
/// let mut w = Warper::new(Sampling::new(1.0, 2, 1.0), Scores::Logits).unwrap();
/// let mut p = [0.0f32; 4];
/// w.probs_into(&[0.0, 3.0, 1.0, 2.0], &mut p).unwrap();
/// assert_eq!(p[0], 0.0); // outside the top 2
/// assert_eq!(p[2], 0.0);
/// assert!((p[1] + p[3] - 1.0).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct Warper {
    sampling: Sampling,
    scores: Scores,
    idx: Vec<usize>,
    kept: Vec<f32>,
}

impl Warper {
    /// A warper for `sampling` applied to rows of `scores`.
    ///
    /// # Errors
    /// [`Error::Config`] if [`Sampling::validate`] fails.
    pub fn new(sampling: Sampling, scores: Scores) -> Result<Self> {
        sampling.validate("Warper")?;
        Ok(Self {
            sampling,
            scores,
            idx: Vec::new(),
            kept: Vec::new(),
        })
    }

    /// The sampling settings.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// Writes the distribution of `row` into `out`: temperature, top-k, top-p, renormalised;
    /// one-hot at the argmax (lowest index on ties) when the sampling is greedy.
    ///
    /// # Errors
    /// [`Error::Core`] for NaN / `+inf` logits or a row of only `-inf`; with
    /// [`Scores::Probabilities`], a negative / non-finite entry or a sum off 1 by more than
    /// [`PROB_SUM_TOLERANCE`].
    ///
    /// # Panics
    /// If `out.len() != row.len()`.
    ///
    /// # Performance
    /// One validation pass and a softmax; no allocation once top-k / top-p have run at this
    /// size.
    pub fn probs_into(&mut self, row: &[f32], out: &mut [f32]) -> Result<()> {
        assert_eq!(
            row.len(),
            out.len(),
            "Warper::probs_into: out length differs"
        );
        validate_row(row, self.scores, "Warper row", 0)?;
        if self.sampling.is_greedy() {
            out.fill(0.0);
            if let Some(i) = ops::argmax(row) {
                out[i] = 1.0;
            }
            return Ok(());
        }
        warp_row(
            &self.sampling,
            self.scores,
            row,
            out,
            &mut self.idx,
            &mut self.kept,
        );
        Ok(())
    }
}

/// Temperature, top-k, top-p and renormalisation of a validated row (`s` not greedy).
fn warp_row(
    s: &Sampling,
    scores: Scores,
    row: &[f32],
    out: &mut [f32],
    idx: &mut Vec<usize>,
    kept: &mut Vec<f32>,
) {
    match scores {
        Scores::Logits => ops::softmax_into(row, s.temperature, out),
        Scores::Probabilities => {
            out.copy_from_slice(row);
            if s.temperature != 1.0 {
                let inv_t = f64::from(s.temperature).recip();
                for v in out.iter_mut() {
                    *v = (f64::from(*v).powf(inv_t)) as f32;
                }
            }
            normalize(out);
        }
    }
    let vocab = out.len();
    if s.top_k > 0 && s.top_k < vocab {
        ops::top_k_into(out, s.top_k, idx);
        kept.clear();
        kept.extend(idx.iter().map(|&i| out[i]));
        out.fill(0.0);
        for (&i, &v) in idx.iter().zip(kept.iter()) {
            out[i] = v;
        }
        normalize(out);
    }
    if s.top_p < 1.0 {
        idx.clear();
        idx.extend(0..vocab);
        let o: &[f32] = out;
        idx.sort_unstable_by(|&a, &b| o[b].total_cmp(&o[a]).then(a.cmp(&b)));
        let target = f64::from(s.top_p);
        let mut cum = 0.0f64;
        let mut keep = vocab;
        for (k, &i) in idx.iter().enumerate() {
            cum += f64::from(out[i]);
            if cum >= target {
                keep = k + 1;
                break;
            }
        }
        for &i in &idx[keep..] {
            out[i] = 0.0;
        }
        normalize(out);
    }
}

/// A row of logits read lazily by [`VerifyScratch::run_lazy`]: its maximum, then bounds on
/// its total (computed once, on demand), then its weights in a buffer and their exact total.
struct LazyRow {
    /// The row's maximum (the softmax shift).
    m: f32,
    /// `(lo, hi)` around the exact total, once computed; `(0, inf)` if unavailable.
    bounds: Option<(f64, f64)>,
    /// The exact total of the weights held in the row's buffer, once computed (after a
    /// rejection, the residual's).
    exact: Option<f64>,
}

impl LazyRow {
    fn new(m: f32) -> Self {
        Self {
            m,
            bounds: None,
            exact: None,
        }
    }

    /// The weight of token `x`: from the buffer once it holds the row, else computed alone,
    /// bit for bit the value the full pass stores.
    fn weight(&self, scores: &[f32], x: usize, t: f32, buf: &[f32]) -> f32 {
        if self.exact.is_some() {
            buf[x]
        } else {
            let mut one = [0.0f32];
            ops::softmax_weights_into(&scores[x..=x], self.m, t, &mut one);
            one[0]
        }
    }

    /// Bounds on the total (exact once known).
    fn bounds(&mut self, scores: &[f32], t: f32) -> (f64, f64) {
        if let Some(mass) = self.exact {
            return (mass, mass);
        }
        self.cheap_bounds(scores, t)
    }

    /// The bounds of [`ops::softmax_total_bounds`] on the row's total (computed once).
    fn cheap_bounds(&mut self, scores: &[f32], t: f32) -> (f64, f64) {
        *self.bounds.get_or_insert_with(|| {
            ops::softmax_total_bounds(scores, self.m, t).unwrap_or((0.0, f64::INFINITY))
        })
    }

    /// Writes the weights into `buf` (once) and returns their exact total.
    fn exact_total(
        &mut self,
        scores: &[f32],
        t: f32,
        buf: &mut [f32],
        out: &mut VerifyOutput,
    ) -> f64 {
        if let Some(mass) = self.exact {
            return mass;
        }
        let mass = ops::softmax_weights_into(scores, self.m, t, buf);
        out.exp_passes += 1;
        self.exact = Some(mass);
        mass
    }
}

/// Tries before an exact fallback: proposals per sample from `p`, samples from `p` per
/// residual draw. Each proposal succeeds with probability > 0.93 and each residual candidate
/// with probability `TV(p, q)` (the probability of the rejection that led here), so the
/// fallback is rare; whatever the outcome of the tries, the token drawn follows the
/// distribution exactly (the fallback samples the same distribution exactly).
const PROPOSALS: u32 = 8;
const RESIDUAL_TRIES: u32 = 8;

/// The residual of a rejection: `norm(max(0, p − q))` with `q` one-hot at `x` (greedy draft)
/// or the draft row's softmax.
struct Residual<'a> {
    x: usize,
    q: Option<(&'a mut LazyRow, &'a [f32], &'a mut [f32])>,
}

/// Draws the bonus or a correction token from a row read lazily (its totals bounded, not
/// computed): rejection sampling, so the drawn token follows the distribution exactly.
struct LazySample<'a> {
    row: &'a [f32],
    t: f32,
    force_exact: bool,
}

impl LazySample<'_> {
    /// A token from `p` (the row's softmax), or with `residual` from `norm(max(0, p − q))`:
    /// candidates are drawn from `p` ([`sampling::propose_softmax`]) and accepted with
    /// probability `max(0, 1 − q(i) / p(i))` (1 for `i != x` when `q` is one-hot), decided
    /// from the bounds on the totals when they leave no doubt. After too many tries, the exact
    /// totals and an explicit residual. `r` is the row's buffer.
    fn sample<R: Rng + ?Sized>(
        &self,
        pl: &mut LazyRow,
        r: &mut [f32],
        mut residual: Option<Residual<'_>>,
        rng: &mut R,
        out: &mut VerifyOutput,
    ) -> usize {
        let (row, t) = (self.row, self.t);
        // Proposals need the cheap pass's bound (even where the exact total is known).
        let scan_hi = pl.cheap_bounds(row, t).1;
        if scan_hi.is_finite() {
            'candidates: for _ in 0..RESIDUAL_TRIES {
                let mut proposed = None;
                for _ in 0..PROPOSALS {
                    proposed = sampling::propose_softmax(row, pl.m, t, scan_hi, rng);
                    if proposed.is_some() {
                        break;
                    }
                }
                let Some(i) = proposed else {
                    break 'candidates;
                };
                let Some(res) = residual.as_mut() else {
                    return i;
                };
                let Some((ql, q_scores, q)) = res.q.as_mut() else {
                    // One-hot q: max(0, p − q) is p without x.
                    if i != res.x {
                        return i;
                    }
                    continue;
                };
                let qi_w = ql.weight(q_scores, i, t, q);
                let pi_w = pl.weight(row, i, t, r);
                if qi_w <= 0.0 {
                    return i;
                }
                let u = rng.random::<f64>();
                // Accept iff u < 1 − (qi_w / Zq) / (pi_w / Zp), decided from the bounds when
                // they leave no doubt.
                let base = f64::from(qi_w) / f64::from(pi_w);
                if !self.force_exact {
                    let (p_lo, p_hi) = pl.bounds(row, t);
                    let (q_lo, q_hi) = ql.bounds(q_scores, t);
                    if u + 1e-9 < 1.0 - base * p_hi / q_lo {
                        return i;
                    }
                    if u - 1e-9 >= 1.0 - base * p_lo / q_hi {
                        continue;
                    }
                }
                let p_mass = pl.exact_total(row, t, r, out);
                if !self.force_exact && ql.exact.is_none() {
                    // With `p` exact, `q` still bounded: often decided already.
                    let (q_lo, q_hi) = ql.bounds(q_scores, t);
                    if u + 1e-9 < 1.0 - base * p_mass / q_lo {
                        return i;
                    }
                    if u - 1e-9 >= 1.0 - base * p_mass / q_hi {
                        continue;
                    }
                }
                let q_mass = ql.exact_total(q_scores, t, q, out);
                if u < 1.0 - (f64::from(qi_w) / q_mass) / (f64::from(pi_w) / p_mass) {
                    return i;
                }
                // Keep drawing lazily: the rows are exact now, the weights read from them
                // are the same values.
            }
        }
        // Exact: the row in full (and the residual built), then inverse CDF.
        let mut mass = pl.exact_total(row, t, r, out);
        if let Some(res) = residual {
            match res.q {
                None => {
                    mass -= f64::from(r[res.x]);
                    r[res.x] = 0.0;
                }
                Some((ql, q_scores, q)) => {
                    let q_mass = ql.exact_total(q_scores, t, q, out);
                    mass = subtract_scaled(r, q, (mass / q_mass) as f32);
                    if mass <= 0.0 {
                        r.copy_from_slice(q);
                        mass = q_mass;
                    }
                }
            }
        }
        sample_weights(r, mass, rng)
    }
}

/// The maximum of a row of logits, validated in the same pass; the errors of
/// [`validate_row`] (NaN / `+inf`, only `-inf`).
fn row_max(row: &[f32], context: &'static str, row_index: usize) -> Result<f32> {
    match ops::max_below_inf(row) {
        Some(m) if m > f32::NEG_INFINITY => Ok(m),
        _ => {
            validate_row(row, Scores::Logits, context, row_index)?;
            Err(squish_core::Error::InvalidDistribution {
                context,
                reason: format!("row {row_index} is empty"),
            }
            .into())
        }
    }
}

/// Draws an index `i` with probability `w[i] / total`, where `w` is finite and `>= 0` and
/// `total > 0` is its sum to within f64 rounding (as the verifier tracks it): inverse CDF in
/// f64, one `f64` drawn from `rng` (as [`squish_core::sampling::sample_categorical`], which would validate
/// and sum `w` again). Whole blocks of 64 weights are skipped by their sum; a zero weight is
/// never returned, and if rounding carries `u` past a block's (or the row's) end, the last
/// positive weight there is.
fn sample_weights<R: Rng + ?Sized>(w: &[f32], total: f64, rng: &mut R) -> usize {
    const BLOCK: usize = 64;
    let u = rng.random::<f64>() * total;
    let mut cum = 0.0f64;
    for (bi, b) in w.chunks(BLOCK).enumerate() {
        let next = cum + sum_f64(b);
        if u < next {
            let mut inner = cum;
            let mut last_positive = None;
            for (j, &v) in b.iter().enumerate() {
                if v > 0.0 {
                    inner += f64::from(v);
                    last_positive = Some(j);
                    if u < inner {
                        return bi * BLOCK + j;
                    }
                }
            }
            if let Some(j) = last_positive {
                return bi * BLOCK + j;
            }
        }
        cum = next;
    }
    w.iter().rposition(|&v| v > 0.0).unwrap_or(0)
}

/// `r ← max(0, r − mass · q)`; returns the new total (in f64).
fn subtract_scaled(r: &mut [f32], q: &[f32], mass: f32) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let mut rc = r.chunks_exact_mut(LANES);
    let mut qc = q.chunks_exact(LANES);
    for (a, b) in (&mut rc).zip(&mut qc) {
        for l in 0..LANES {
            let v = a[l] - mass * b[l];
            let v = if v > 0.0 { v } else { 0.0 };
            a[l] = v;
            acc[l] += f64::from(v);
        }
    }
    for (a, &b) in rc.into_remainder().iter_mut().zip(qc.remainder()) {
        let v = *a - mass * b;
        let v = if v > 0.0 { v } else { 0.0 };
        *a = v;
        acc[0] += f64::from(v);
    }
    acc.iter().sum()
}

/// `Σ x` in f64 (8 lanes, so it vectorises).
fn sum_f64(x: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    for (l, &v) in chunks.remainder().iter().enumerate() {
        acc[l] += f64::from(v);
    }
    for c in chunks {
        for l in 0..LANES {
            acc[l] += f64::from(c[l]);
        }
    }
    acc.iter().sum()
}

/// Scales `x` (non-negative, positive sum) to sum to 1.
fn normalize(x: &mut [f32]) {
    let sum = sum_f64(x);
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Checks one row of scores: logits may be finite or `-inf` (not all `-inf`); probabilities
/// are finite, `>= 0` and sum to 1 within [`PROB_SUM_TOLERANCE`].
pub(crate) fn validate_row(
    row: &[f32],
    scores: Scores,
    context: &'static str,
    row_index: usize,
) -> Result<()> {
    let base = row_index * row.len();
    match scores {
        Scores::Logits => {
            // `x < inf` is false for NaN and +inf: one vectorisable pass.
            let ok = row
                .chunks(256)
                .all(|c| c.iter().fold(true, |ok, &x| ok & (x < f32::INFINITY)));
            if !ok {
                let (i, &value) = row
                    .iter()
                    .enumerate()
                    .find(|&(_, &x)| x.is_nan() || x == f32::INFINITY)
                    .unwrap_or((0, &f32::NAN));
                return Err(squish_core::Error::NonFinite {
                    context,
                    index: base + i,
                    value,
                }
                .into());
            }
            if row.iter().all(|&x| x == f32::NEG_INFINITY) {
                return Err(squish_core::Error::InvalidDistribution {
                    context,
                    reason: format!("row {row_index}: every logit is -inf"),
                }
                .into());
            }
        }
        Scores::Probabilities => {
            let ok = row.chunks(256).all(|c| {
                c.iter()
                    .fold(true, |ok, &x| ok & (0.0..f32::INFINITY).contains(&x))
            });
            if !ok {
                let (i, &value) = row
                    .iter()
                    .enumerate()
                    .find(|&(_, &x)| !(0.0..f32::INFINITY).contains(&x))
                    .unwrap_or((0, &f32::NAN));
                return Err(squish_core::Error::InvalidDistribution {
                    context,
                    reason: format!(
                        "row {row_index}: element {} is {value}, must be finite and >= 0",
                        base + i
                    ),
                }
                .into());
            }
            let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
            if (sum - 1.0).abs() > PROB_SUM_TOLERANCE {
                return Err(squish_core::Error::InvalidDistribution {
                    context,
                    reason: format!(
                        "row {row_index} sums to {sum}, must be 1 within {PROB_SUM_TOLERANCE}"
                    ),
                }
                .into());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    /// One random case: a tree of chains hanging from the root (some drafts greedy, draft rows
    /// shared by siblings), logits of a random scale, a random temperature.
    struct Case {
        vocab: usize,
        parents: Vec<u32>,
        tokens: Vec<u32>,
        rows: Vec<u32>,
        target: Vec<f32>,
        draft: Vec<f32>,
        temperature: f32,
    }

    fn case(rng: &mut StdRng) -> Case {
        let vocab = [2, 7, 33, 300, 4099][rng.random_range(0..5)];
        let branches = rng.random_range(1..=3);
        let len = rng.random_range(1..=4);
        let scale = [0.1f32, 1.0, 3.0, 20.0][rng.random_range(0..4)];
        let (mut parents, mut tokens, mut rows) = (Vec::new(), Vec::new(), Vec::new());
        let mut n_rows = 1u32;
        for b in 0..branches {
            for d in 0..len {
                let (parent, row) = if d == 0 {
                    (0, 0)
                } else {
                    n_rows += 1;
                    ((b * len + d) as u32, n_rows - 1)
                };
                parents.push(parent);
                rows.push(if rng.random_bool(0.2) {
                    GREEDY_DRAFT
                } else {
                    row
                });
                tokens.push(0);
            }
        }
        let n = tokens.len();
        let logits = |rng: &mut StdRng, len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    if rng.random_bool(0.05) {
                        f32::NEG_INFINITY
                    } else {
                        rng.random_range(-1.0f32..1.0) * scale
                    }
                })
                .collect()
        };
        let mut target = logits(rng, (n + 1) * vocab);
        let mut draft = logits(rng, n_rows as usize * vocab);
        // Every row keeps a finite logit.
        for row in target.chunks_mut(vocab).chain(draft.chunks_mut(vocab)) {
            row[0] = 0.0;
        }
        // Sometimes the draft equals the target (everything accepted, ratios exactly 1).
        if rng.random_bool(0.2) {
            for (i, &r) in rows.iter().enumerate() {
                if r != GREEDY_DRAFT {
                    let p = parents[i] as usize;
                    let src = target[p * vocab..(p + 1) * vocab].to_vec();
                    draft[r as usize * vocab..(r as usize + 1) * vocab].copy_from_slice(&src);
                }
            }
        }
        let temperature = [0.3f32, 1.0, 2.5][rng.random_range(0..3)];
        // Draft tokens: from the draft row's softmax, or the target's argmax for greedy ones.
        for i in 0..n {
            tokens[i] = if rows[i] == GREEDY_DRAFT {
                rng.random_range(0..vocab as u32)
            } else {
                let r = rows[i] as usize;
                let q = ops::softmax(&draft[r * vocab..(r + 1) * vocab], temperature);
                sampling::sample_categorical(&q, rng).unwrap() as u32
            };
        }
        Case {
            vocab,
            parents,
            tokens,
            rows,
            target,
            draft,
            temperature,
        }
    }

    /// The lazy path (bounds first) and the exact path (every total computed) give the same
    /// outcome for the same random draws, on random trees, vocabularies, scales and
    /// temperatures; the lazy path never computes more exponentials.
    #[test]
    fn lazy_decisions_equal_exact_decisions() {
        let (mut lazy_passes, mut exact_passes, mut decided) = (0u64, 0u64, 0u64);
        squish_testkit::prop::check("verify_lazy_equals_exact", 60, |rng| {
            let c = case(rng);
            let params = Params {
                vocab: c.vocab,
                sampling: Sampling::with_temperature(c.temperature),
                scores: Scores::Logits,
            };
            let tree = TreeRef {
                parents: Parents::Explicit(&c.parents),
                tokens: &c.tokens,
                rows: DraftRows::Explicit(&c.rows),
            };
            let mut lazy = VerifyScratch::default();
            let mut exact = VerifyScratch {
                force_exact: true,
                ..VerifyScratch::default()
            };
            let seed = rng.random::<u64>();
            let (mut rl, mut re) = (StdRng::seed_from_u64(seed), StdRng::seed_from_u64(seed));
            let (mut ol, mut oe) = (VerifyOutput::new(), VerifyOutput::new());
            for _ in 0..50 {
                let a = lazy.run(&params, tree, &c.target, &c.draft, &mut rl, &mut ol);
                let b = exact.run(&params, tree, &c.target, &c.draft, &mut re, &mut oe);
                assert_eq!(a.is_ok(), b.is_ok());
                if a.is_err() {
                    // Only a greedy draft of a token the target masks... or a masked draft.
                    continue;
                }
                assert!(
                    ol.exp_passes <= oe.exp_passes,
                    "{} > {}: {ol:?} {oe:?} {:?}",
                    ol.exp_passes,
                    oe.exp_passes,
                    c.rows
                );
                let exp_passes = ol.exp_passes;
                ol.exp_passes = oe.exp_passes;
                assert_eq!(ol, oe, "vocab {}", c.vocab);
                ol.exp_passes = exp_passes;
                lazy_passes += u64::from(ol.exp_passes);
                exact_passes += u64::from(oe.exp_passes);
                decided += u64::from(oe.softmaxes);
            }
        });
        // The bounds decided most comparisons: far fewer exponential passes.
        assert!(
            2 * lazy_passes < exact_passes,
            "{lazy_passes} vs {exact_passes} ({decided} rows)"
        );
    }
}
