//! The error type of `squish_kv`.

use std::fmt;

use squish_core::{ConfigError, ShapeError};

/// Errors returned by `squish_kv`.
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
    /// A head index is not below the number of heads.
    HeadOutOfRange {
        /// The index asked for.
        head: usize,
        /// The number of heads.
        heads: usize,
    },
    /// A token index is not below the number of tokens a head holds.
    TokenOutOfRange {
        /// The head.
        head: usize,
        /// The index asked for.
        token: usize,
        /// The number of tokens the head holds.
        tokens: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Shape(e) => e.fmt(f),
            Self::Core(e) => e.fmt(f),
            Self::HeadOutOfRange { head, heads } => {
                write!(f, "head {head} out of range: the cache has {heads} heads")
            }
            Self::TokenOutOfRange {
                head,
                token,
                tokens,
            } => write!(
                f,
                "token {token} out of range for head {head}: it holds {tokens} tokens"
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
            Self::HeadOutOfRange { .. } | Self::TokenOutOfRange { .. } => None,
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
    fn index_errors() {
        let e = Error::HeadOutOfRange { head: 9, heads: 8 };
        insta::assert_snapshot!(e, @"head 9 out of range: the cache has 8 heads");
        let e = Error::TokenOutOfRange {
            head: 1,
            token: 5,
            tokens: 5,
        };
        insta::assert_snapshot!(e, @"token 5 out of range for head 1: it holds 5 tokens");
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn error_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }
}
