//! The error type of `squish_serving`.

use std::fmt;
use std::time::Duration;

use squish_core::{ConfigError, ShapeError};

use crate::model_pool::ModelId;

/// Errors returned by `squish_serving`.
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
    /// A [`ModelPool`](crate::model_pool::ModelPool) call named a model that is not
    /// registered.
    ModelNotRegistered {
        /// The model.
        model: ModelId,
    },
    /// A model id was registered twice with a [`ModelPool`](crate::model_pool::ModelPool).
    ModelAlreadyRegistered {
        /// The model.
        model: ModelId,
    },
    /// A model is larger than its pool's whole budget.
    ModelTooLarge {
        /// The model.
        model: ModelId,
        /// Its size in bytes.
        size_bytes: u64,
        /// The pool's budget in bytes.
        budget_bytes: u64,
    },
    /// A model pool cannot make room: evicting every idle, unpinned model would not free
    /// enough (nothing was evicted).
    PoolExhausted {
        /// The model being loaded or grown.
        model: ModelId,
        /// Bytes it needs.
        needed_bytes: u64,
        /// Bytes free plus bytes held by evictable models.
        available_bytes: u64,
    },
    /// A model pool caller's wait timed out.
    PoolTimeout {
        /// The model being acquired.
        model: ModelId,
    },
    /// A pool model cannot be unregistered or resized now: it is leased, loading or unloading.
    ModelBusy {
        /// The model.
        model: ModelId,
    },
    /// A pool's loader failed (the message is the loader error's `Display`).
    ModelLoadFailed {
        /// The model.
        model: ModelId,
        /// The loader's error message.
        reason: String,
    },
    /// A model id that the component was not configured with.
    UnknownModel {
        /// Where the id was passed (component and function).
        context: &'static str,
        /// The offending model id.
        model: u32,
    },
    /// A tenant id that the component was not configured with.
    UnknownTenant {
        /// Where the id was passed (component and function).
        context: &'static str,
        /// The offending tenant id.
        tenant: u32,
    },
    /// A request id that is already in the ledger with different usage: a repeat must carry
    /// identical usage (then it is an idempotent no-op), never a correction.
    LedgerConflict {
        /// The request id.
        request: u64,
    },
    /// The ledger holds its configured maximum number of records.
    LedgerFull {
        /// The configured capacity.
        capacity: usize,
    },
    /// Checked integer arithmetic on money or usage overflowed.
    Overflow {
        /// What was being computed.
        context: &'static str,
    },
    /// A caller-supplied value breaks its rule (NaN, infinite, negative, inconsistent counts).
    InvalidInput {
        /// Where the value was passed (function and argument).
        context: &'static str,
        /// What is wrong with it, lowercase, naming the value.
        reason: String,
    },
    /// A request's prompt plus its requested new tokens does not fit the context window
    /// (`TokenBudgetGate::admit`).
    ContextOverflow {
        /// Prompt length, in tokens.
        prompt_tokens: u64,
        /// Requested maximum of new tokens.
        max_new_tokens: u64,
        /// The context window, in tokens.
        context_limit: u64,
    },
    /// A memory pressure that is NaN, negative or above 1 (`FaultHandler::evaluate`).
    InvalidPressure(f64),
    /// An injected clock went backwards: `now` is earlier than a time already seen, by `by`.
    ClockWentBackwards {
        /// The component and call that saw it, e.g. `FaultHandler::evaluate`.
        context: &'static str,
        /// How far before the latest time already seen `now` lies.
        by: Duration,
    },
    /// The same request id appears twice in one call's batch.
    DuplicateRequestId {
        /// The component and call that saw it, e.g. `FaultHandler::select_shed_into`.
        context: &'static str,
        /// The repeated id.
        id: crate::RequestId,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => e.fmt(f),
            Self::Shape(e) => e.fmt(f),
            Self::Core(e) => e.fmt(f),
            Self::ModelNotRegistered { model } => write!(f, "model {model} is not registered"),
            Self::ModelAlreadyRegistered { model } => {
                write!(f, "model {model} is already registered")
            }
            Self::ModelTooLarge {
                model,
                size_bytes,
                budget_bytes,
            } => write!(
                f,
                "model {model} needs {size_bytes} bytes, more than the pool budget of {budget_bytes} bytes"
            ),
            Self::PoolExhausted {
                model,
                needed_bytes,
                available_bytes,
            } => write!(
                f,
                "model pool exhausted: model {model} needs {needed_bytes} bytes but at most \
                 {available_bytes} can be freed (the rest is leased, pinned or reserved)"
            ),
            Self::PoolTimeout { model } => write!(f, "timed out waiting to acquire model {model}"),
            Self::ModelBusy { model } => write!(f, "model {model} is leased, loading or unloading"),
            Self::ModelLoadFailed { model, reason } => {
                write!(f, "model {model} failed to load: {reason}")
            }
            Self::UnknownModel { context, model } => {
                write!(f, "unknown model {model} in {context}")
            }
            Self::UnknownTenant { context, tenant } => {
                write!(f, "unknown tenant {tenant} in {context}")
            }
            Self::LedgerConflict { request } => write!(
                f,
                "ledger conflict: request {request} was already recorded with different usage"
            ),
            Self::LedgerFull { capacity } => {
                write!(f, "ledger full: it already holds {capacity} records")
            }
            Self::Overflow { context } => write!(f, "integer overflow in {context}"),
            Self::InvalidInput { context, reason } => {
                write!(f, "invalid input to {context}: {reason}")
            }
            Self::ContextOverflow {
                prompt_tokens,
                max_new_tokens,
                context_limit,
            } => write!(
                f,
                "request does not fit the context window: {prompt_tokens} prompt + \
                 {max_new_tokens} new tokens > {context_limit}"
            ),
            Self::InvalidPressure(p) => write!(
                f,
                "invalid memory pressure: must be a finite value in [0, 1], got {p}"
            ),
            Self::ClockWentBackwards { context, by } => {
                write!(f, "clock went backwards in {context} by {by:?}")
            }
            Self::DuplicateRequestId { context, id } => {
                write!(f, "duplicate request id {id} in {context}")
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
            Self::ModelNotRegistered { .. }
            | Self::ModelAlreadyRegistered { .. }
            | Self::ModelTooLarge { .. }
            | Self::PoolExhausted { .. }
            | Self::PoolTimeout { .. }
            | Self::ModelBusy { .. }
            | Self::ModelLoadFailed { .. }
            | Self::UnknownModel { .. }
            | Self::UnknownTenant { .. }
            | Self::LedgerConflict { .. }
            | Self::LedgerFull { .. }
            | Self::Overflow { .. }
            | Self::InvalidInput { .. }
            | Self::ContextOverflow { .. }
            | Self::InvalidPressure(_)
            | Self::ClockWentBackwards { .. }
            | Self::DuplicateRequestId { .. } => None,
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
    fn request_lifecycle_errors_display() {
        let e = Error::ContextOverflow {
            prompt_tokens: 4000,
            max_new_tokens: 200,
            context_limit: 4096,
        };
        insta::assert_snapshot!(e, @"request does not fit the context window: 4000 prompt + 200 new tokens > 4096");
        insta::assert_snapshot!(Error::InvalidPressure(f64::NAN), @"invalid memory pressure: must be a finite value in [0, 1], got NaN");
        insta::assert_snapshot!(Error::InvalidPressure(1.5), @"invalid memory pressure: must be a finite value in [0, 1], got 1.5");
        let e = Error::ClockWentBackwards {
            context: "FaultHandler::evaluate",
            by: Duration::from_millis(5),
        };
        insta::assert_snapshot!(e, @"clock went backwards in FaultHandler::evaluate by 5ms");
        let e = Error::DuplicateRequestId {
            context: "FaultHandler::select_shed_into",
            id: crate::RequestId(7),
        };
        insta::assert_snapshot!(e, @"duplicate request id 7 in FaultHandler::select_shed_into");
        assert!(std::error::Error::source(&e).is_none());
    }

    #[test]
    fn error_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
    }

    #[test]
    fn cost_estimator_error_messages() {
        let e = Error::UnknownModel {
            context: "RequestCostEstimator::estimate",
            model: 7,
        };
        insta::assert_snapshot!(e, @"unknown model 7 in RequestCostEstimator::estimate");
        let e = Error::UnknownTenant {
            context: "RequestCostEstimator::estimate",
            tenant: 3,
        };
        insta::assert_snapshot!(e, @"unknown tenant 3 in RequestCostEstimator::estimate");
        let e = Error::LedgerConflict { request: 42 };
        insta::assert_snapshot!(e, @"ledger conflict: request 42 was already recorded with different usage");
        let e = Error::LedgerFull { capacity: 2 };
        insta::assert_snapshot!(e, @"ledger full: it already holds 2 records");
        let e = Error::Overflow {
            context: "RequestCostEstimator kv cost",
        };
        insta::assert_snapshot!(e, @"integer overflow in RequestCostEstimator kv cost");
        let e = Error::InvalidInput {
            context: "KvSegment::from_secs_f64",
            reason: "duration must be finite and >= 0, got NaN".into(),
        };
        insta::assert_snapshot!(e, @"invalid input to KvSegment::from_secs_f64: duration must be finite and >= 0, got NaN");
        assert!(std::error::Error::source(&e).is_none());
    }
}
