//! What the console shows: plain, serializable views, computed by a [`crate::ConsoleSource`]
//! from the management port. The JSON API returns exactly these; the pages render them.
//!
//! A view must never carry a secret or a grant: there is no field for one, and adapters fill
//! these from records that hold none (public keys and role names at most).

use serde::{Deserialize, Serialize};

/// Every install with its agent's health and what it should hold versus what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// When the view was computed (unix ms), the reference for "ago" and staleness.
    pub now: u64,
    /// An agent not heard from for this long is stale.
    pub stale_after_ms: u64,
    pub installs: Vec<InstallRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRow {
    pub id: String,
    pub app: String,
    /// When its agent last reported or sent a heartbeat (unix ms).
    pub last_seen: Option<u64>,
    pub agent_version: Option<String>,
    /// The agent's own words about its health, if it said any.
    pub health: Option<String>,
    pub stale: bool,
    pub components: Vec<ComponentVersions>,
}

/// One component of an install: what the vendor released to it and what its agent verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentVersions {
    pub component: String,
    pub desired: Option<VersionRef>,
    pub current: Option<VersionRef>,
}

impl ComponentVersions {
    /// Desired and current agree (or nothing is desired).
    pub fn in_sync(&self) -> bool {
        match (&self.desired, &self.current) {
            (Some(d), Some(c)) => d.digest == c.digest,
            (None, _) => true,
            (Some(_), None) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    pub build_id: String,
    pub digest: String,
}

/// A release in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSummary {
    pub id: String,
    pub app: String,
    /// `running`, `waiting`, `paused`, `halted`, `completed`, `aborted`, ...
    pub status: String,
    pub created: u64,
    /// Steps started so far, and in all.
    pub step: u32,
    pub steps: u32,
    pub targets: u32,
    pub succeeded: u32,
    pub failed: u32,
}

/// One release in full: its builds, policy, steps and every target install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseDetail {
    pub summary: ReleaseSummary,
    pub builds: Vec<ReleasedBuild>,
    pub per_step: u32,
    pub delay_secs: u64,
    /// As given (`1`, `5%`).
    pub max_failures: String,
    /// Why it halted, in words, when it did.
    pub halted_because: Option<String>,
    pub steps: Vec<StepRow>,
    /// The manual actions the release accepts now.
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedBuild {
    pub component: String,
    pub build_id: String,
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRow {
    pub index: u32,
    /// `pending`, `running`, `done`, `halted`.
    pub state: String,
    pub started: Option<u64>,
    pub finished: Option<u64>,
    pub targets: Vec<TargetRow>,
}

/// One install in a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRow {
    pub install: String,
    /// `pending`, `syncing`, `succeeded`, `failed`, `skipped`, ...
    pub state: String,
    pub bytes_moved: u64,
    pub bytes_total: Option<u64>,
    /// Seconds left at the current rate, when the agent reported enough to say.
    pub eta_secs: Option<u64>,
    /// What went wrong, in words.
    pub error: Option<String>,
}

/// A build: what went in, what came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildDetail {
    pub id: String,
    pub app: String,
    pub component: String,
    pub status: String,
    pub source_ref: String,
    /// The commit the source ref resolved to, when the builder recorded it.
    pub revision: Option<String>,
    pub repository: Option<String>,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    /// Every artifact of the build's set (a chart and its images), the main one first.
    pub artifacts: Vec<String>,
    /// Signatures, SBOMs and attestations attached to the artifact.
    pub referrers: Vec<String>,
    /// Where the builder's logs are (a CodeBuild console link, a local file).
    pub logs: Option<String>,
    pub error: Option<String>,
    pub created: u64,
}

/// Where a digest is: every install that holds it, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub digest: String,
    pub entries: Vec<LineageRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageRow {
    pub install: String,
    pub repository: String,
    pub build_id: String,
    pub since: u64,
}

/// A manual release action: the same operations as `ferry release pause|resume|abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Abort,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "abort" => Some(Action::Abort),
            _ => None,
        }
    }

    /// What the confirmation asks.
    pub fn question(self) -> &'static str {
        match self {
            Action::Pause => "Pause this release? Syncs already sent finish; no new step starts.",
            Action::Resume => {
                "Resume this release? Failed installs of the halted step are retried."
            }
            Action::Abort => "Abort this release? No further step starts; what was synced stays.",
        }
    }
}
