//! The typed payload of each event type, and the job an event belongs to. Plain data: this
//! module must never parse or check input (that is `parse`'s job, field by field).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    parse_event, schema_version, BUILD_COMPLETED, BUILD_REQUESTED, INSTALL_HEARTBEAT, RELEASE_STEP,
    RELEASE_SYNCED, SYNC_REPORTED, SYNC_REQUESTED,
};
use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, ReleaseId, Repository, SyncId,
};

/// `build.requested`: build `component` of `app` at `source_ref`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildRequested {
    /// Set by producers that already chose an id; otherwise derived from the event identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_id: Option<BuildId>,
    pub app: AppName,
    pub component: ComponentName,
    pub source_ref: String,
    pub requested_by: String,
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

/// `build.completed`: the builder's result; a digest and repository exactly when it succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildCompleted {
    pub build_id: BuildId,
    pub status: BuildOutcome,
    /// Present exactly when `status` is `succeeded` (checked by the parser).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<Repository>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The commit a build from git resolved its ref to (40 or 64 hex); recorded on the build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// `sync.requested`: copy `digest` of `repository` into install `install_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncRequested {
    pub sync_id: SyncId,
    pub build_id: BuildId,
    pub install_id: InstallId,
    pub repository: Repository,
    pub digest: Digest,
    /// The release that asked for this sync, if one did (absent for the implicit fan-out of a
    /// build): its end is reported back to that release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_id: Option<ReleaseId>,
    // fanout3 (issue 12): the release step's dispatch context.
    /// What the release step read for this sync (the install, the verification policy),
    /// MAC'd with the vendor key, so sync-requested reads nothing (`crate::fanout`). Absent
    /// from the implicit fan-out of a build and from older events: the handler reads the store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Box<crate::fanout::DispatchContext>>,
}

/// `release.step`: start (or continue) step `step` of round `round` of a release. Sent with a
/// delay as the step timer, and again, at once, for each further page of the step's targets
/// (`page` counts pages, `cursor` is the store's position after the previous one), so a step
/// of any size is handled in bounded pieces and a timeout resumes at the page it stopped at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseStep {
    pub release_id: ReleaseId,
    pub step: u32,
    pub round: u32,
    pub page: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `release.synced`: sync `sync_id` of a release is terminal. Only ids: the handler reads the
/// outcome from the store, never from the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseSynced {
    pub release_id: ReleaseId,
    pub sync_id: SyncId,
}

/// What an agent reports about one attempt of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncReportStatus {
    Succeeded,
    Failed,
    /// The agent could not use the grant in time; the IMS re-mints and re-enqueues.
    GrantExpired,
    /// The artifact did not carry the signatures its component's verification policy
    /// requires; the agent promoted nothing, and the error says why.
    PolicyFailed,
}

/// `sync.reported`: an agent's signed report on one attempt of a sync job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncReported {
    pub sync_id: SyncId,
    pub install_id: InstallId,
    pub status: SyncReportStatus,
    pub digest: Digest,
    pub bytes_copied: u64,
    pub bytes_skipped: u64,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The attempt the agent worked on (from the job message): a report is about one attempt,
    /// and a report for an older one is recognised as stale.
    pub attempt: u32,
    /// The agent's Ed25519 signature (base64url) over [`crate::trust::report_signing_bytes`].
    pub signature: String,
}

/// `install.heartbeat`: an agent's signed "alive" report: its version, when it last polled its
/// queue and last finished a sync (its own clock, unix ms), a free-text health line, and when
/// it sent this (`sent_at`, checked against the IMS's clock to bound replays).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallHeartbeat {
    pub install_id: InstallId,
    pub agent_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_poll_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<u64>,
    pub health: String,
    pub sent_at: u64,
    /// The agent's Ed25519 signature (base64url) over
    /// [`crate::trust::heartbeat_signing_bytes`].
    pub signature: String,
}

/// The typed body of one event, one variant per event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Payload {
    BuildRequested(BuildRequested),
    BuildCompleted(BuildCompleted),
    SyncRequested(SyncRequested),
    SyncReported(SyncReported),
    ReleaseStep(ReleaseStep),
    ReleaseSynced(ReleaseSynced),
    InstallHeartbeat(InstallHeartbeat),
}

impl Payload {
    /// The schema version this payload is written with.
    pub fn schema_version(&self) -> u64 {
        schema_version(self.event_type())
    }

    /// The event type this payload is (`build.requested`, ...).
    pub fn event_type(&self) -> &'static str {
        match self {
            Payload::BuildRequested(_) => BUILD_REQUESTED,
            Payload::BuildCompleted(_) => BUILD_COMPLETED,
            Payload::SyncRequested(_) => SYNC_REQUESTED,
            Payload::SyncReported(_) => SYNC_REPORTED,
            Payload::ReleaseStep(_) => RELEASE_STEP,
            Payload::ReleaseSynced(_) => RELEASE_SYNCED,
            Payload::InstallHeartbeat(_) => INSTALL_HEARTBEAT,
        }
    }
}

/// The job an event (or a queue message) is about. One definition, used by both backends'
/// record loops to label logs and to record a dead-lettered message's error on its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    Build(BuildId),
    Sync(SyncId),
    /// A release's own events: a dead-lettered one is logged; the release shows where it
    /// stands, and `ferry release resume` re-drives it.
    Release(ReleaseId),
    /// An agent's heartbeat: not a job; a dead-lettered one is only logged.
    Install(InstallId),
}

impl JobRef {
    /// The job's id, as logged and stored.
    pub fn id(&self) -> &str {
        match self {
            JobRef::Build(b) => b.as_str(),
            JobRef::Sync(s) => s.as_str(),
            JobRef::Release(r) => r.as_str(),
            JobRef::Install(i) => i.as_str(),
        }
    }

    /// Best effort on a body that may not parse as an event: the job of the event if it
    /// parses, else a valid `sync_id`, else a valid `build_id`, at the top level or in an
    /// EventBridge `detail`. A message that is too broken to handle still names its job, so
    /// that job can record why it was given up on.
    pub fn from_body(body: &[u8]) -> Option<JobRef> {
        if let Ok(event) = parse_event(body) {
            return Some(event.job());
        }
        let v: Value = serde_json::from_slice(body).ok()?;
        let v = v.get("detail").filter(|d| d.is_object()).unwrap_or(&v);
        let field = |name: &str| v.get(name).and_then(Value::as_str);
        if let Some(s) = field("sync_id").and_then(|s| SyncId::new(s).ok()) {
            return Some(JobRef::Sync(s));
        }
        field("build_id")
            .and_then(|b| BuildId::new(b).ok())
            .map(JobRef::Build)
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}
