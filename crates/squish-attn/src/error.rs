//! The error type of `squish_attn`.

use std::fmt;

use squish_core::{ConfigError, ShapeError};

/// Errors returned by `squish_attn`.
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
    /// An `AttentionDeduplicator` slot `(layer, head)` outside the configured ranges.
    UnknownSlot {
        /// The layer asked for.
        layer: usize,
        /// The head asked for.
        head: usize,
        /// Configured layers.
        layers: usize,
        /// Configured heads per layer.
        heads: usize,
    },
    /// An `AttnContext` reused a slot's version with different statistics: the keys or values
    /// changed without a version bump.
    ContextMismatch {
        /// The reused version.
        version: u64,
    },
    /// Finite inputs whose attention overflows f32: scaled logits (`scale·q·k`) or a weighted
    /// sum of values beyond the f32 range, so that row has no f32 result.
    AttentionOverflow {
        /// Query head of the first affected row.
        head: usize,
        /// Query row (within the call) of the first affected row.
        row: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Shape(e) => e.fmt(f),
            Self::Core(e) => e.fmt(f),
            Self::UnknownSlot {
                layer,
                head,
                layers,
                heads,
            } => write!(
                f,
                "unknown attention slot (layer {layer}, head {head}): have {layers} layers x {heads} heads"
            ),
            Self::ContextMismatch { version } => write!(
                f,
                "context version {version} reused with a different scale or norm bound: bump the version when keys or values change"
            ),
            Self::AttentionOverflow { head, row } => {
                write!(f, "attention overflows f32 at head {head}, row {row}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Config(e) => Some(e),
            Self::Shape(e) => Some(e),
            Self::Core(e) => Some(e),
            Self::UnknownSlot { .. }
            | Self::ContextMismatch { .. }
            | Self::AttentionOverflow { .. } => None,
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
    fn dedup_errors_display() {
        let e = Error::UnknownSlot {
            layer: 3,
            head: 1,
            layers: 2,
            heads: 4,
        };
        insta::assert_snapshot!(e, @"unknown attention slot (layer 3, head 1): have 2 layers x 4 heads");
        assert!(std::error::Error::source(&e).is_none());
        let e = Error::ContextMismatch { version: 7 };
        insta::assert_snapshot!(e, @"context version 7 reused with a different scale or norm bound: bump the version when keys or values change");
    }

    #[test]
    fn attention_overflow_message() {
        let e = Error::AttentionOverflow { head: 2, row: 7 };
        insta::assert_snapshot!(e, @"attention overflows f32 at head 2, row 7");
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn error_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }
}
