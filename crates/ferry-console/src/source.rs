//! The port the console reads through. The CLI implements it over the management port (and
//! the release operations), on whichever backend the context selects, so the console works on
//! the local backend and against a deployed AWS stack with the operator's own credentials.
//!
//! Implementations must be cheap to call repeatedly (the live updates poll them) and must never
//! put a secret into a view.

use std::future::Future;

use crate::view::{Action, BuildDetail, Fleet, Lineage, ReleaseDetail, ReleaseSummary};

/// Why the source could not answer; every message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// No such release, build or digest.
    #[error("{0}")]
    NotFound(String),
    /// The request is not acceptable (a malformed digest, an action the release refuses now).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (the store, AWS); the page says so and keeps serving.
    #[error("{0}")]
    Backend(String),
}

/// What the console asks of a backend.
pub trait ConsoleSource: Send + Sync + 'static {
    /// Every install, with health and desired/current versions.
    fn fleet(&self) -> impl Future<Output = Result<Fleet, SourceError>> + Send;
    /// Releases, newest first (bounded by the source).
    fn releases(&self) -> impl Future<Output = Result<Vec<ReleaseSummary>, SourceError>> + Send;
    /// One release in full.
    fn release(&self, id: &str) -> impl Future<Output = Result<ReleaseDetail, SourceError>> + Send;
    /// One build.
    fn build(&self, id: &str) -> impl Future<Output = Result<BuildDetail, SourceError>> + Send;
    /// Where a digest is.
    fn lineage(&self, digest: &str) -> impl Future<Output = Result<Lineage, SourceError>> + Send;
    /// Pauses, resumes or aborts a release, as the CLI does; `by` names the operator.
    fn act(
        &self,
        release: &str,
        action: Action,
        by: &str,
    ) -> impl Future<Output = Result<ReleaseSummary, SourceError>> + Send;
}
