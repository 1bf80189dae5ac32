//! The one error type of the dev system. Its messages name the file, the install or the step
//! that failed and, where they can, what to do; they must never hold a secret (key files are
//! pointed at by path, never read into a message).

use std::fmt;

/// Why the dev system (or its state directory) could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A management command ran against a directory `ferry dev` never set up.
    #[error(
        "no Ferry state in {root} (no ferry.db); start `ferry dev --state-dir {root}` first, or pass the --state-dir it uses"
    )]
    NoState { root: String },
    /// Anything else, with what was being done as the message's prefix.
    #[error("{0}")]
    Failed(String),
}

/// Results of this crate.
pub type Result<T, E = DevError> = std::result::Result<T, E>;

/// Adds what was being done to an error, as its message's prefix (the error's own text
/// follows, so one line says everything).
pub(crate) trait Context<T> {
    fn with_context<F: FnOnce() -> String>(self, what: F) -> Result<T>;
    fn context(self, what: &str) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn with_context<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| DevError::Failed(format!("{}: {e}", what())))
    }
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| DevError::Failed(format!("{what}: {e}")))
    }
}

/// Returns a `DevError::Failed` with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::DevError::Failed(format!($($arg)*)))
    };
}
pub(crate) use bail;

macro_rules! dev_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for DevError {
            fn from(e: $t) -> DevError {
                DevError::Failed(e.to_string())
            }
        }
    )*};
}
dev_error_from!(
    std::io::Error,
    serde_json::Error,
    ferry_core::id::IdError,
    ferry_core::ports::QueueError,
    ferry_core::ports::StoreError,
    ferry_core::HandlerError,
    ferry_local::db::DbError,
    ferry_oci::Error
);
