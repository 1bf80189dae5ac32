//! The local grant minter: ferry-core's `GrantMinter` over the embedded registry's
//! [`AccessControl`]. It mints a one-time pull token for one vendor repository and digest,
//! seals it to the install agent's key (bound to the install and sync ids) and hands back only
//! the ciphertext.
//!
//! It must never return, log or store the clear token: the token exists only inside
//! [`ClearGrant`], which is sealed at once and zeroized on drop.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::domain::{Install, SealedGrant};
use ferry_core::id::{Digest, Repository};
use ferry_core::ports::{GrantError, GrantId, GrantMinter};
use ferry_core::seal::{ClearGrant, GrantScheme};
use ferry_registry::access::{AccessControl, AuthError};

/// Grants last at most this long (ARCHITECTURE.md invariant 5).
pub const MAX_GRANT_TTL: Duration = Duration::from_secs(15 * 60);

/// Mints grants on the embedded registry that `registry` (`host:port`) serves.
#[derive(Debug, Clone)]
pub struct LocalGrantMinter {
    access: Arc<AccessControl>,
    registry: String,
    ttl: Duration,
}

impl LocalGrantMinter {
    /// `registry` is the vendor registry host as the agent reaches it (`127.0.0.1:5000`).
    pub fn new(access: Arc<AccessControl>, registry: impl Into<String>) -> LocalGrantMinter {
        LocalGrantMinter {
            access,
            registry: registry.into(),
            ttl: MAX_GRANT_TTL,
        }
    }

    /// A shorter lifetime (clamped to 1 s ..= 15 min).
    pub fn with_ttl(mut self, ttl: Duration) -> LocalGrantMinter {
        self.ttl = ttl.clamp(Duration::from_secs(1), MAX_GRANT_TTL);
        self
    }
}

fn refused(message: impl Into<String>) -> GrantError {
    GrantError::Refused {
        message: message.into(),
    }
}

/// Input the registry refuses is permanent; disk and signing trouble is transient.
fn from_auth(e: AuthError) -> GrantError {
    match e {
        AuthError::Token(_) | AuthError::Revocation(_) => GrantError::Unavailable {
            message: e.to_string(),
        },
        other => refused(other.to_string()),
    }
}

fn join_error(e: tokio::task::JoinError) -> GrantError {
    GrantError::Unavailable {
        message: format!("the grant task did not finish: {e}"),
    }
}

impl GrantMinter for LocalGrantMinter {
    async fn mint(
        &self,
        install: &Install,
        repository: &Repository,
        digest: &Digest,
        grant_id: &GrantId,
    ) -> Result<SealedGrant, GrantError> {
        let access = self.access.clone();
        let sync_id = &grant_id.sync_id;
        // The registry's job id is per attempt, so revoking attempt 1 leaves attempt 2 mintable.
        let (inst, repo, dig, job, ttl) = (
            install.id.as_str().to_string(),
            repository.as_str().to_string(),
            digest.as_str().to_string(),
            grant_id.to_string(),
            self.ttl,
        );
        // Minting reads the revocation list and signs: keep it off the async workers.
        let issued =
            tokio::task::spawn_blocking(move || access.mint_grant(&inst, &repo, &dig, &job, ttl))
                .await
                .map_err(join_error)?
                .map_err(from_auth)?;
        let expires_at = issued.expires_at.saturating_mul(1000);
        let clear = ClearGrant {
            registry: self.registry.clone(),
            repository: repository.as_str().to_string(),
            digest: digest.as_str().to_string(),
            token: issued.token.clone(),
            scheme: GrantScheme::Bearer,
            username: String::new(),
            expires_at,
        };
        drop(issued);
        let ciphertext = clear
            .seal(&install.agent_public_key, &install.id, sync_id)
            .map_err(|e| refused(format!("install {}: {e}", install.id)))?;
        tracing::info!(grant = %grant_id, install = %install.id, expires_at, "grant minted and sealed");
        Ok(SealedGrant::new(ciphertext, expires_at))
    }

    async fn revoke(&self, grant: &GrantId) -> Result<(), GrantError> {
        let access = self.access.clone();
        let job = grant.to_string();
        tokio::task::spawn_blocking(move || access.revoke_grant(&job))
            .await
            .map_err(join_error)?
            .map_err(from_auth)?;
        tracing::info!(grant = %grant, "grant revoked");
        Ok(())
    }

    async fn is_revoked(&self, grant: &GrantId) -> Result<bool, GrantError> {
        Ok(self.access.is_grant_revoked(&grant.to_string()))
    }
}
