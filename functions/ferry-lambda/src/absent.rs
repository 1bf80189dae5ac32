//! Ports a function is built without: a function links only the SDK clients it uses
//! (ferry-lambda's features `builder` and `minter`), and the ports it has no client for are
//! these, which refuse every call in words.
//!
//! Only another function's events reach these (a record routed to the wrong queue, which
//! `sqs::parse_body` already refuses by type), so they must never act: each answers
//! `Unavailable` (retried, then dead-lettered) naming the function that owns the work.

#[cfg(not(feature = "builder"))]
use ferry_core::ports::{BuildSpec, Builder, BuilderError};
#[cfg(not(feature = "minter"))]
use ferry_core::{
    domain::{Install, SealedGrant},
    id::{Digest, Repository},
    ports::{GrantError, GrantId, GrantMinter},
};

/// The builder of a function built without the CodeBuild client (all but build-requested).
#[cfg(not(feature = "builder"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBuilder;

#[cfg(not(feature = "builder"))]
impl Builder for NoBuilder {
    async fn start(&self, spec: &BuildSpec) -> Result<String, BuilderError> {
        Err(BuilderError::Unavailable {
            message: format!(
                "this function has no CodeBuild client, so it cannot start build {}; \
                 build.requested belongs to the build-requested function's queue",
                spec.build_id
            ),
        })
    }
}

/// The grant minter of a function built without STS and ECR (build-*, release).
#[cfg(not(feature = "minter"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMinter;

#[cfg(not(feature = "minter"))]
fn no_minter() -> GrantError {
    GrantError::Unavailable {
        message: "this function has no STS/ECR client, so it cannot mint or revoke grants; \
                  sync.requested and sync.reported belong to the sync functions' queues"
            .into(),
    }
}

#[cfg(not(feature = "minter"))]
impl GrantMinter for NoMinter {
    async fn mint(
        &self,
        _install: &Install,
        _repository: &Repository,
        _digest: &Digest,
        _grant: &GrantId,
    ) -> Result<SealedGrant, GrantError> {
        Err(no_minter())
    }
    async fn revoke(&self, _grant: &GrantId) -> Result<(), GrantError> {
        Err(no_minter())
    }
    async fn is_revoked(&self, _grant: &GrantId) -> Result<bool, GrantError> {
        Err(no_minter())
    }
}
