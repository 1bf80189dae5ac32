//! How the agent writes to its install registry: which credential it pushes with, and what
//! must happen to a repository before the first push. Locally that is the fixed
//! `agent:<install>` identity of the embedded registry; in AWS it is the agent role's own,
//! refreshed ECR login, and the repository must exist (see `aws.rs`).
//!
//! Implementations must never log or put into an error the credential they hand out.

use futures::future::BoxFuture;

use ferry_oci::{Credential, Secret};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AccessError {
    /// Another attempt later may work (throttling, a network error).
    pub transient: bool,
    pub message: String,
}

/// The agent's write access to its install registry.
pub trait InstallAccess: Send + Sync {
    /// The credential for pushes to the install namespace, valid for at least a copy.
    fn credential(&self) -> BoxFuture<'_, Result<Credential, AccessError>>;

    /// Called before a copy into `repository` (a path in the install registry).
    fn prepare_repository<'a>(
        &'a self,
        repository: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>>;
}

/// A fixed Basic identity (the embedded registry's `agent:<install>`); nothing to prepare.
pub struct StaticIdentity {
    pub username: String,
    pub password: Secret,
}

impl InstallAccess for StaticIdentity {
    fn credential(&self) -> BoxFuture<'_, Result<Credential, AccessError>> {
        let c = Credential::Basic {
            username: self.username.clone(),
            password: self.password.clone(),
        };
        Box::pin(async move { Ok(c) })
    }

    fn prepare_repository<'a>(
        &'a self,
        _repository: &'a str,
    ) -> BoxFuture<'a, Result<(), AccessError>> {
        Box::pin(async { Ok(()) })
    }
}
