//! Lossless verification of a token tree: [`TreeVerifier`], implementing the seed's
//! `TreeVerifier` ("batched rejection-sampling acceptance").
//!
//! Follows the multi-step speculative sampling of Miao et al., "SpecInfer: Accelerating Large
//! Language Model Serving with Tree-based Speculative Inference and Verification" (ASPLOS
//! 2024), which reduces to Leviathan et al. (ICML 2023) / Chen et al. (2023) on a chain. The
//! seed verified each branch independently against the same target and kept the longest, which
//! is not lossless; here the children of a node are tested in turn against a residual that is
//! updated after every rejection, so the emitted tokens follow the target exactly (see the
//! [rule](crate::verify)).

use rand::Rng;
use squish_core::ConfigError;

use crate::error::Result;
use crate::verify::{
    DraftRows, Params, Parents, Sampling, Scores, TreeRef, VerifyOutput, VerifyScratch, VerifyStats,
};

/// Configuration of a [`TreeVerifier`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TreeVerifierConfig {
    /// Vocabulary size: the length of every target and draft row, `>= 1`. Default 32 000.
    pub vocab: usize,
    /// Temperature / top-k / top-p, applied identically to target and draft rows. Default:
    /// temperature 1, no top-k, no top-p.
    pub sampling: Sampling,
    /// Whether rows hold logits or probabilities. Default logits.
    pub scores: Scores,
}

impl Default for TreeVerifierConfig {
    fn default() -> Self {
        Self {
            vocab: 32_000,
            sampling: Sampling::default(),
            scores: Scores::Logits,
        }
    }
}

impl TreeVerifierConfig {
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
    /// A [`ConfigError`] if `vocab` is 0, `vocab` exceeds `u32::MAX` (tokens are `u32`), or
    /// [`Sampling::validate`] fails.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vocab == 0 || self.vocab as u64 >= u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "TreeVerifier",
                "vocab",
                "must be in [1, 2^32 - 1)",
                self.vocab,
            ));
        }
        self.sampling.validate("TreeVerifier")
    }
}

/// A tree of draft tokens in flat buffers.
///
/// Nodes are numbered with the **root as node 0** (the context already verified; it has no
/// token) and draft token `i` as node `i + 1`. Rows of the target buffer follow the node
/// numbering: row 0 is the target's distribution at the root, row `i + 1` its distribution
/// after draft token `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DraftTree<'a> {
    /// For each draft token, the node it follows: `0` for the root, `j + 1` for draft token
    /// `j`. Must be `<= i` for draft token `i` (parents come first).
    pub parents: &'a [u32],
    /// Each draft token's id, `< vocab`.
    pub tokens: &'a [u32],
    /// For each draft token, the row of the draft buffer holding the distribution it was
    /// sampled from (siblings drawn from one draft distribution share a row and must have been
    /// drawn independently, with replacement), or [`GREEDY_DRAFT`](crate::GREEDY_DRAFT) for a
    /// token chosen deterministically.
    pub draft_rows: &'a [u32],
}

impl<'a> DraftTree<'a> {
    /// A tree from its three per-token buffers (checked when verified).
    pub fn new(parents: &'a [u32], tokens: &'a [u32], draft_rows: &'a [u32]) -> Self {
        Self {
            parents,
            tokens,
            draft_rows,
        }
    }

    /// Number of draft tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the tree has no draft tokens (verification then just samples one token).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Verifies a tree of draft tokens against the target model, losslessly. Implements the
/// seed's `TreeVerifier`.
///
/// One call verifies one speculative step: it walks down the tree accepting children by
/// multi-step speculative sampling, and returns the accepted tokens and the correction or
/// bonus token that follows them ([`VerifyOutput`]). Running statistics (acceptance per depth)
/// accumulate in [`stats`](Self::stats).
///
/// # Example
/// ```
/// use rand::{SeedableRng, rngs::StdRng};
/// use squish_spec::{DraftTree, Sampling, TreeVerifier, TreeVerifierConfig};
///
/// let vocab = 4;
/// let mut v = TreeVerifier::new(TreeVerifierConfig::new(vocab, Sampling::default())).unwrap();
/// // The root has two children (tokens 1 and 2, both drawn from draft row 0); token 1 has one
/// // child (token 3, drawn from draft row 1).
/// let tree = DraftTree::new(&[0, 0, 1], &[1, 2, 3], &[0, 0, 1]);
/// let target = [0.0f32; 4 * 4]; // logits at the root and after each draft token
/// let draft = [0.0f32; 2 * 4]; // the draft's logits at the root and after token 1
/// let out = v.verify(&tree, &target, &draft, &mut StdRng::seed_from_u64(1)).unwrap();
/// // p == q: every tested child is accepted, so the path is 1 then 3, then a bonus token.
/// assert_eq!(out.accepted(), &[1, 3]);
/// assert_eq!(out.emitted(), 3);
/// assert_eq!(v.stats().acceptance_rate(), 2.0 / 3.0);
/// ```
#[derive(Debug, Clone)]
pub struct TreeVerifier {
    cfg: TreeVerifierConfig,
    scratch: VerifyScratch,
    stats: VerifyStats,
}

impl TreeVerifier {
    /// A verifier for `cfg`.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) if [`TreeVerifierConfig::validate`] fails.
    pub fn new(cfg: TreeVerifierConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            scratch: VerifyScratch::default(),
            stats: VerifyStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TreeVerifierConfig {
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

    /// [`verify_into`](Self::verify_into) into a new [`VerifyOutput`].
    ///
    /// # Errors
    /// As [`verify_into`](Self::verify_into).
    pub fn verify<R: Rng + ?Sized>(
        &mut self,
        tree: &DraftTree<'_>,
        target: &[f32],
        draft: &[f32],
        rng: &mut R,
    ) -> Result<VerifyOutput> {
        let mut out = VerifyOutput::new();
        self.verify_into(tree, target, draft, rng, &mut out)?;
        Ok(out)
    }

    /// Verifies `tree`: `target` holds `tree.len() + 1` rows of `vocab` scores (row 0 at the
    /// root, row `i + 1` after draft token `i`), `draft` the draft distributions the tokens were
    /// sampled from (`tree.draft_rows` indexes its rows; it may be empty when every token is
    /// [`GREEDY_DRAFT`](crate::GREEDY_DRAFT) or the sampling is greedy). Randomness comes from
    /// `rng` only (one `f64` per tested child, one draw for the final token).
    ///
    /// Only the rows the walk reads are validated and warped: a branch that is never reached
    /// costs nothing (and a NaN in it cannot change the result).
    ///
    /// # Errors
    /// - [`Error::Shape`](crate::Error::Shape) if `target` is not `(tree.len() + 1) × vocab`,
    ///   `draft` is not a multiple of `vocab`, or `parents` / `draft_rows` differ in length
    ///   from `tokens`.
    /// - [`Error::InvalidTree`](crate::Error::InvalidTree) for a parent that is not an earlier
    ///   node, a token `>= vocab`, or a draft row that does not exist.
    /// - [`Error::Core`](crate::Error::Core) for a row read that holds NaN or `+inf` logits (or
    ///   only `-inf`), or, with [`Scores::Probabilities`], a negative / non-finite probability or
    ///   a sum off 1 by more than [`PROB_SUM_TOLERANCE`](crate::PROB_SUM_TOLERANCE).
    /// - [`Error::ImpossibleDraft`](crate::Error::ImpossibleDraft) if a tested token has draft
    ///   probability 0 (after warping).
    ///
    /// On error `out` is unspecified and the statistics are unchanged.
    ///
    /// # Performance
    /// No allocation once `out` and the verifier have seen a tree of this size. Work is
    /// proportional to the rows visited: one row normalised per visited node's target row and
    /// one each time the tested child's draft row differs from the previous tested child's (so
    /// once per node when siblings share a row; counted in [`VerifyOutput::softmaxes`]).
    /// Greedy mode does one argmax per visited node and no softmax.
    ///
    /// With plain temperature sampling from logits (no top-k / top-p) rows are read lazily: a
    /// validating maximum pass and a pass bounding the softmax total without exponentials
    /// decide almost every acceptance exactly (the decision the exact totals give); a row's
    /// exponentials are computed ([`VerifyOutput::exp_passes`]) only where the bounds cannot
    /// decide, or to build the residual after a rejection that has further siblings to test.
    /// The bonus and the correction after a node's last rejection are drawn by exact rejection
    /// sampling from the bounded rows. The seed's 3 × 4 tree over 4096 tokens (6.5 rows, 2.0
    /// with exponentials) took 12.9-15.6 µs on a shared 2-core VM (29-33 µs before). With top-k,
    /// top-p or probability rows, every row read is warped in full (a softmax, plus the top-k /
    /// top-p selection), one `O(vocab)` pass per rejection and one sampling pass for the final
    /// token.
    pub fn verify_into<R: Rng + ?Sized>(
        &mut self,
        tree: &DraftTree<'_>,
        target: &[f32],
        draft: &[f32],
        rng: &mut R,
        out: &mut VerifyOutput,
    ) -> Result<()> {
        let params = Params {
            vocab: self.cfg.vocab,
            sampling: self.cfg.sampling,
            scores: self.cfg.scores,
        };
        let tree = TreeRef {
            parents: Parents::Explicit(tree.parents),
            tokens: tree.tokens,
            rows: DraftRows::Explicit(tree.draft_rows),
        };
        self.scratch.run(&params, tree, target, draft, rng, out)?;
        self.stats.record(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn verifier(vocab: usize, sampling: Sampling) -> TreeVerifier {
        TreeVerifier::new(TreeVerifierConfig::new(vocab, sampling)).unwrap()
    }

    #[test]
    fn config_errors() {
        let e = TreeVerifier::new(TreeVerifierConfig::new(0, Sampling::default())).unwrap_err();
        insta::assert_snapshot!(e, @"invalid TreeVerifier.vocab: must be in [1, 2^32 - 1), got 0");
        let e = TreeVerifier::new(TreeVerifierConfig::new(4, Sampling::with_temperature(-1.0)))
            .unwrap_err();
        insta::assert_snapshot!(e, @"invalid TreeVerifier.sampling.temperature: must be finite and >= 0, got -1");
        let s = Sampling::new(1.0, 0, 0.0);
        let e = TreeVerifier::new(TreeVerifierConfig::new(4, s)).unwrap_err();
        insta::assert_snapshot!(e, @"invalid TreeVerifier.sampling.top_p: must be in (0, 1], got 0");
        let e = TreeVerifier::new(TreeVerifierConfig::new(
            4,
            Sampling::with_temperature(f32::NAN),
        ))
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)));
    }

    #[test]
    fn shape_and_tree_errors() {
        let mut v = verifier(4, Sampling::default());
        let mut rng = StdRng::seed_from_u64(0);
        let t = [0.0f32; 12];
        let d = [0.0f32; 8];
        let tree = DraftTree::new(&[0, 1], &[1, 2], &[0, 1]);
        let e = v.verify(&tree, &t[..8], &d, &mut rng).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in verify target rows (draft tokens + 1) x vocab: expected 12 = (2 + 1) x 4, got 8");
        let e = v.verify(&tree, &t, &d[..7], &mut rng).unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in verify draft rows x vocab: expected a multiple of 4, got 7");
        let e = v
            .verify(&DraftTree::new(&[0], &[1, 2], &[0, 1]), &t, &d, &mut rng)
            .unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in verify tree parents (one per draft token): expected 2, got 1");
        let e = v
            .verify(&DraftTree::new(&[0, 1], &[1, 2], &[0]), &t, &d, &mut rng)
            .unwrap_err();
        insta::assert_snapshot!(e, @"shape mismatch in verify tree draft_rows (one per draft token): expected 2, got 1");
        let e = v
            .verify(&DraftTree::new(&[0, 2], &[1, 2], &[0, 1]), &t, &d, &mut rng)
            .unwrap_err();
        insta::assert_snapshot!(e, @"invalid draft tree: draft node 1: parent 2 must be 0 (the root) or an earlier draft node + 1 (<= 1)");
        let e = v
            .verify(&DraftTree::new(&[0, 1], &[1, 4], &[0, 1]), &t, &d, &mut rng)
            .unwrap_err();
        insta::assert_snapshot!(e, @"invalid draft tree: draft node 1: token 4 is outside the vocabulary of 4");
        let e = v
            .verify(&DraftTree::new(&[0, 1], &[1, 2], &[0, 2]), &t, &d, &mut rng)
            .unwrap_err();
        insta::assert_snapshot!(e, @"invalid draft tree: draft node 1: draft row 2 does not exist (2 draft rows)");
        assert_eq!(v.stats().steps, 0);
    }

    #[test]
    fn value_errors() {
        let mut v = verifier(4, Sampling::default());
        let mut rng = StdRng::seed_from_u64(0);
        let tree = DraftTree::new(&[0], &[1], &[0]);
        let mut t = [0.0f32; 8];
        t[5] = f32::NAN;
        let d = [0.0f32; 4];
        // Row 1 is read only if token 1 is accepted: with p == q it always is.
        let e = v.verify(&tree, &t, &d, &mut rng).unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in verify target: element 5 is NaN");
        let t = [0.0f32; 8];
        let mut d = [0.0f32; 4];
        d[0] = f32::INFINITY;
        let e = v.verify(&tree, &t, &d, &mut rng).unwrap_err();
        insta::assert_snapshot!(e, @"non-finite value in verify draft: element 0 is inf");
        let d = [0.0, f32::NEG_INFINITY, 0.0, 0.0];
        let e = v.verify(&tree, &t, &d, &mut rng).unwrap_err();
        insta::assert_snapshot!(e, @"draft node 0: token 1 has probability 0 under its draft distribution, so it cannot have been sampled from it");
        let t = [f32::NEG_INFINITY; 8];
        let e = v.verify(&tree, &t, &d, &mut rng).unwrap_err();
        insta::assert_snapshot!(e, @"invalid distribution in verify target: row 0: every logit is -inf");

        let mut cfg = TreeVerifierConfig::new(4, Sampling::default());
        cfg.scores = Scores::Probabilities;
        let mut v = TreeVerifier::new(cfg).unwrap();
        let t = [0.25f32; 8];
        let d = [0.5, 0.5, 0.1, 0.0];
        let e = v.verify(&tree, &t, &d, &mut rng).unwrap_err();
        insta::assert_snapshot!(e, @"invalid distribution in verify draft: row 0 sums to 1.1000000014901161, must be 1 within 0.001");
        let d = [0.5, 0.5, -0.0001, 0.0];
        let e = v.verify(&tree, &t, &d, &mut rng).unwrap_err();
        insta::assert_snapshot!(e, @"invalid distribution in verify draft: row 0: element 2 is -0.0001, must be finite and >= 0");
    }

    #[test]
    fn masked_target_tokens_are_never_emitted() {
        // Token 1 is masked (-inf) in the target: a draft of it is always rejected and the
        // correction is never 1; the other tokens remain possible.
        let mut v = verifier(3, Sampling::default());
        let target = [0.0, f32::NEG_INFINITY, 0.0, 0.0, 0.0, 0.0];
        let draft = [0.0f32; 3];
        let mut rng = StdRng::seed_from_u64(9);
        let mut seen = [0u32; 3];
        for _ in 0..2000 {
            let out = v
                .verify(&DraftTree::new(&[0], &[1], &[0]), &target, &draft, &mut rng)
                .unwrap();
            assert!(out.accepted().is_empty());
            seen[out.next_token() as usize] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 800 && seen[2] > 800, "{seen:?}");
    }

    /// An RNG whose every word is `u64::MAX`: `random::<f64>()` is the largest value below 1.
    struct AlmostOne;
    impl rand::TryRng for AlmostOne {
        type Error = std::convert::Infallible;
        fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
            Ok(u32::MAX)
        }
        fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
            Ok(u64::MAX)
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
            dst.fill(u8::MAX);
            Ok(())
        }
    }

    #[test]
    fn a_certain_target_always_accepts_its_token() {
        // The row sums to 1 only up to f32 rounding; the target is certain of token 0, so even
        // the largest uniform draw accepts it (the residual would be empty).
        let mut cfg = TreeVerifierConfig::new(3, Sampling::default());
        cfg.scores = Scores::Probabilities;
        let mut v = TreeVerifier::new(cfg).unwrap();
        let row = [1.000_712f32, 0.0, 0.0]; // normalised to 1 - 2^-24
        let target = [row, row].concat();
        for draft_rows in [[crate::GREEDY_DRAFT], [0]] {
            let out = v
                .verify(
                    &DraftTree::new(&[0], &[0], &draft_rows),
                    &target,
                    &row,
                    &mut AlmostOne,
                )
                .unwrap();
            assert_eq!(out.accepted(), &[0]);
            assert_eq!(out.next_token(), 0);
        }
    }

    #[test]
    fn components_are_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<TreeVerifier>();
        check::<crate::QuantSpecDecoder>();
        check::<crate::HierarchicalKvCache>();
        check::<VerifyOutput>();
    }

    #[test]
    fn empty_tree_samples_one_token_from_the_target() {
        let mut v = verifier(3, Sampling::default());
        let target = [0.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        let out = v
            .verify(
                &DraftTree::new(&[], &[], &[]),
                &target,
                &[],
                &mut StdRng::seed_from_u64(3),
            )
            .unwrap();
        assert_eq!(out.accepted(), &[] as &[u32]);
        assert_eq!(out.next_token(), 0);
        assert_eq!(out.next_kind(), crate::NextKind::Bonus);
        assert_eq!(out.acceptance_rate(), 0.0);
        assert_eq!(out.softmaxes(), 1);
    }
}
