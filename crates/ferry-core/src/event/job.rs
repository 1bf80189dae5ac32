//! The job message the IMS puts on an install's queue, and the agent's parser for it. It must
//! never carry a clear grant, and the parser must never accept another type or version.

use serde::{Deserialize, Serialize};

use super::{EventError, MAX_EVENT_BYTES, SIGNED_VERSION, SYNC_JOB};
use crate::domain::{SealedGrant, VerifyPolicy};
use crate::id::{BuildId, Digest, InstallId, Repository, SyncId};

/// The message the IMS puts on an install's queue for its agent. It carries the grant sealed
/// to that agent's key, never a clear one, and the vendor's signature over every field
/// ([`crate::trust::verify_job`]), so an agent acts only on jobs its vendor sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncJobMessage {
    pub version: u64,
    #[serde(rename = "type")]
    pub message_type: String,
    pub sync_id: SyncId,
    pub build_id: BuildId,
    pub install_id: InstallId,
    pub repository: Repository,
    pub digest: Digest,
    /// Echo this in sync.reported so a late report for an old attempt is ignored.
    pub attempt: u32,
    pub grant: SealedGrant,
    /// The component's verification policy: the agent verifies the artifact's signatures
    /// against it before it writes anything into the install. Signed with the rest, so no one
    /// between the vendor and the agent can drop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyPolicy>,
    /// The vendor's Ed25519 signature (base64url) over [`crate::trust::job_signing_bytes`];
    /// empty until [`crate::trust::VendorKey::sign_job`] sets it.
    pub signature: String,
}

impl SyncJobMessage {
    /// An unsigned job message for one attempt; [`crate::trust::VendorKey::sign_job`] signs it.
    pub fn new(
        sync_id: SyncId,
        build_id: BuildId,
        install_id: InstallId,
        repository: Repository,
        digest: Digest,
        attempt: u32,
        grant: SealedGrant,
    ) -> SyncJobMessage {
        SyncJobMessage {
            version: SIGNED_VERSION,
            message_type: SYNC_JOB.to_string(),
            sync_id,
            build_id,
            install_id,
            repository,
            digest,
            attempt,
            grant,
            verify: None,
            signature: String::new(),
        }
    }

    /// The same message, carrying `policy` for the agent to enforce.
    pub fn with_policy(mut self, policy: Option<VerifyPolicy>) -> SyncJobMessage {
        self.verify = policy;
        self
    }
}

/// Parses a job message from the install queue (the agent's side of the contract).
pub fn parse_sync_job(bytes: &[u8]) -> Result<SyncJobMessage, EventError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge { size: bytes.len() });
    }
    let msg: SyncJobMessage = serde_json::from_slice(bytes).map_err(|e| EventError::NotJson {
        detail: format!("not a sync.job message: {e}"),
    })?;
    if msg.message_type != SYNC_JOB {
        return Err(EventError::UnknownType {
            found: msg.message_type.chars().take(80).collect(),
        });
    }
    if msg.version != SIGNED_VERSION {
        return Err(EventError::UnsupportedVersion {
            event_type: SYNC_JOB,
            found: msg.version.to_string(),
            expected: SIGNED_VERSION,
        });
    }
    Ok(msg)
}
