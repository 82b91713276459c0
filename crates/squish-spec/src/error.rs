//! The error type of `squish_spec`.

use std::fmt;

use squish_core::{ConfigError, ShapeError};

/// Errors returned by `squish_spec`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A configuration or parameter breaks its rule.
    Config(ConfigError),
    /// A buffer or array has the wrong shape.
    Shape(ShapeError),
    /// Any other error raised by a `squish_core` primitive (non-finite data, an invalid
    /// distribution).
    Core(squish_core::Error),
    /// `BudgetSpecDecoder::step` was told a round emitted 0 tokens or more than its draft
    /// length + 1 (accepted drafts plus one correction or bonus token).
    EmittedCount {
        /// The count passed to `step`.
        n_emitted: usize,
        /// The round's draft length.
        draft_len: usize,
    },
    /// `BudgetSpecDecoder::step` was told a round emitted more tokens than the budget has left.
    OverBudget {
        /// The count passed to `step`.
        n_emitted: usize,
        /// Tokens the budget had left.
        remaining: usize,
    },
    /// A draft tree is malformed: a parent that is not an earlier node, a token outside the
    /// vocabulary, or a draft row that does not exist.
    InvalidTree {
        /// Index of the offending draft node.
        node: usize,
        /// What is wrong with it, lowercase.
        reason: String,
    },
    /// A draft token has probability 0 under the draft distribution it is said to be sampled
    /// from, so it cannot have been sampled from it (verifying it would not be lossless).
    ImpossibleDraft {
        /// Index of the draft node.
        node: usize,
        /// Its token.
        token: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Shape(e) => e.fmt(f),
            Self::Core(e) => e.fmt(f),
            Self::EmittedCount {
                n_emitted,
                draft_len,
            } => write!(
                f,
                "invalid emitted count: a round with {draft_len} draft tokens emits 1 to {} tokens, got {n_emitted}",
                draft_len + 1
            ),
            Self::OverBudget {
                n_emitted,
                remaining,
            } => write!(
                f,
                "token budget overrun: a round emitted {n_emitted} tokens with {remaining} remaining"
            ),
            Self::InvalidTree { node, reason } => {
                write!(f, "invalid draft tree: draft node {node}: {reason}")
            }
            Self::ImpossibleDraft { node, token } => write!(
                f,
                "draft node {node}: token {token} has probability 0 under its draft \
                 distribution, so it cannot have been sampled from it"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Shape(e) => Some(e),
            Self::Core(e) => Some(e),
            Self::EmittedCount { .. }
            | Self::OverBudget { .. }
            | Self::InvalidTree { .. }
            | Self::ImpossibleDraft { .. } => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<ShapeError> for Error {
    fn from(e: ShapeError) -> Self {
        Self::Shape(e)
    }
}

impl From<squish_core::Error> for Error {
    /// Keeps configuration and shape errors in their own variants, so callers match one place.
    fn from(e: squish_core::Error) -> Self {
        match e {
            squish_core::Error::Config(c) => Self::Config(c),
            squish_core::Error::Shape(s) => Self::Shape(s),
            other => Self::Core(other),
        }
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_keep_their_kind() {
        let c = ConfigError::new("Example", "bits", "must be one of 2, 4, 8", 3);
        assert_eq!(
            Error::from(squish_core::Error::from(c.clone())),
            Error::Config(c)
        );
        let s = ShapeError::new("example", 4, 3);
        assert_eq!(
            Error::from(squish_core::Error::from(s.clone())),
            Error::Shape(s)
        );
        let nf = squish_core::check_finite("example data", &[f32::INFINITY]).unwrap_err();
        let e = Error::from(nf);
        assert!(matches!(e, Error::Core(_)));
        insta::assert_snapshot!(e, @"non-finite value in example data: element 0 is inf");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn budget_spec_messages() {
        let e = Error::EmittedCount {
            n_emitted: 6,
            draft_len: 4,
        };
        insta::assert_snapshot!(e, @"invalid emitted count: a round with 4 draft tokens emits 1 to 5 tokens, got 6");
        assert!(std::error::Error::source(&e).is_none());
        let e = Error::OverBudget {
            n_emitted: 1,
            remaining: 0,
        };
        insta::assert_snapshot!(e, @"token budget overrun: a round emitted 1 tokens with 0 remaining");
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn verification_errors_display() {
        let e = Error::InvalidTree {
            node: 2,
            reason: "token 9 is outside the vocabulary of 8".into(),
        };
        insta::assert_snapshot!(e, @"invalid draft tree: draft node 2: token 9 is outside the vocabulary of 8");
        assert!(std::error::Error::source(&e).is_none());
        let e = Error::ImpossibleDraft { node: 1, token: 3 };
        insta::assert_snapshot!(e, @"draft node 1: token 3 has probability 0 under its draft distribution, so it cannot have been sampled from it");
    }

    #[test]
    fn error_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }
}
