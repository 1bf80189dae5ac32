//! `MemMinter`: mints fake "sealed" grants (opaque bytes naming the agent key and a counter,
//! no secret) and records revocations. It must never mint anything usable as a credential.

use crate::ports::Clock as _;
use std::sync::{Arc, Mutex};

use super::{lock, ManualClock};
use crate::domain::{Install, SealedGrant};
use crate::id::{Digest, InstallId, Repository, SyncId};
use crate::ports::{GrantError, GrantId, GrantMinter};

/// The lifetime of fake grants: the 15 minute ceiling.
pub const FAKE_GRANT_TTL_MS: u64 = 15 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    pub install: InstallId,
    pub repository: Repository,
    pub digest: Digest,
    pub sync_id: SyncId,
    pub attempt: u32,
    pub grant: SealedGrant,
}

#[derive(Debug, Default)]
struct MinterState {
    minted: Vec<Minted>,
    revoked: Vec<GrantId>,
    refuse: Option<String>,
    // fanout3 (issue 12): transient minter outages.
    unavailable: u32,
}

/// Mints fake "sealed" grants: opaque bytes naming the agent key and a counter, no secret.
#[derive(Debug, Clone)]
pub struct MemMinter {
    state: Arc<Mutex<MinterState>>,
    clock: ManualClock,
}

impl MemMinter {
    pub fn new(clock: ManualClock) -> MemMinter {
        MemMinter {
            state: Arc::default(),
            clock,
        }
    }

    pub fn minted(&self) -> Vec<Minted> {
        lock(&self.state).minted.clone()
    }

    /// The syncs whose grants were revoked (any attempt), in order.
    pub fn revoked(&self) -> Vec<SyncId> {
        lock(&self.state)
            .revoked
            .iter()
            .map(|g| g.sync_id.clone())
            .collect()
    }

    /// The grants revoked, per attempt, in order.
    pub fn revoked_grants(&self) -> Vec<GrantId> {
        lock(&self.state).revoked.clone()
    }

    pub fn refuse_with(&self, message: &str) {
        lock(&self.state).refuse = Some(message.to_string());
    }

    // fanout3 (issue 12): transient minter outages.
    /// The next `n` mints fail as unavailable (STS or ECR throttling), then they work again.
    pub fn fail_next_mints(&self, n: u32) {
        lock(&self.state).unavailable = n;
    }
}

impl GrantMinter for MemMinter {
    async fn mint(
        &self,
        install: &Install,
        repository: &Repository,
        digest: &Digest,
        grant_id: &GrantId,
    ) -> Result<SealedGrant, GrantError> {
        let mut s = lock(&self.state);
        if s.unavailable > 0 {
            s.unavailable -= 1;
            return Err(GrantError::Unavailable {
                message: "injected outage".into(),
            });
        }
        if let Some(message) = &s.refuse {
            return Err(GrantError::Refused {
                message: message.clone(),
            });
        }
        if s.revoked.contains(grant_id) {
            return Err(GrantError::Refused {
                message: format!("grant {grant_id} was revoked"),
            });
        }
        let n = s.minted.len() + 1;
        let ciphertext = format!("sealed-to:{}:grant-{n}", install.agent_public_key).into_bytes();
        let grant = SealedGrant::new(ciphertext, self.clock.now_ms() + FAKE_GRANT_TTL_MS);
        s.minted.push(Minted {
            install: install.id.clone(),
            repository: repository.clone(),
            digest: digest.clone(),
            sync_id: grant_id.sync_id.clone(),
            attempt: grant_id.attempt,
            grant: grant.clone(),
        });
        Ok(grant)
    }

    async fn revoke(&self, grant: &GrantId) -> Result<(), GrantError> {
        lock(&self.state).revoked.push(grant.clone());
        Ok(())
    }

    async fn is_revoked(&self, grant: &GrantId) -> Result<bool, GrantError> {
        Ok(lock(&self.state).revoked.contains(grant))
    }
}
