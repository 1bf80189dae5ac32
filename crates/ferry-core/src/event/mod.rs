//! The wire contract: Ferry events and the agent's job message, and their strict parsers.
//!
//! Every event is one JSON object with a `"version"` (2 for the signed `sync.reported`, 1 for
//! the rest), a `"type"`, an optional producer `"id"`
//! and the type's fields at the top level (samples in `events/`). An EventBridge envelope
//! (`detail-type` + `detail`) is unwrapped first. Parsing is strict and field by field so each
//! error names the field and says what to do. This module must never panic on input, and never
//! accept an unknown type, an unsupported version, a missing field, an unknown field or a digest
//! that is not sha256.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::id::{BuildId, EventId};

mod job;
mod parse;
mod payload;

pub use job::{parse_sync_job, SyncJobMessage};
pub use parse::{parse_event, parse_event_value};
pub use payload::{
    BuildCompleted, BuildOutcome, BuildRequested, InstallHeartbeat, JobRef, Payload, ReleaseStep,
    ReleaseSynced, SyncReportStatus, SyncReported, SyncRequested,
};

/// The schema version of the vendor-side events (build.requested, build.completed,
/// sync.requested).
pub const EVENT_VERSION: u64 = 1;
/// The schema version of the messages that cross the tenant boundary, which are signed:
/// `sync.reported` (by the install's agent) and `sync.job` (by the vendor). Version 1 of
/// these was unsigned and is refused.
pub const SIGNED_VERSION: u64 = 2;
/// Larger input is refused before parsing (the SQS and EventBridge entry limit).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
const MAX_TEXT: usize = 1024;
const MAX_ERROR_TEXT: usize = 8 * 1024;
/// An Ed25519 signature is 86 base64url characters; anything much longer is not one.
const MAX_SIGNATURE_TEXT: usize = 256;

/// The `type` of a build request.
pub const BUILD_REQUESTED: &str = "build.requested";
/// The `type` of a builder's result.
pub const BUILD_COMPLETED: &str = "build.completed";
/// The `type` of a request to sync one artifact into one install.
pub const SYNC_REQUESTED: &str = "sync.requested";
/// The `type` of an agent's signed report on a sync.
pub const SYNC_REPORTED: &str = "sync.reported";
/// The `type` of a release's step timer (and of the continuation of a step's fan-out).
pub const RELEASE_STEP: &str = "release.step";
/// The `type` of "a sync of a release reached a terminal state".
pub const RELEASE_SYNCED: &str = "release.synced";
/// The `type` of the job message on an install's queue (not an event).
pub const SYNC_JOB: &str = "sync.job";
/// The `type` of an agent's signed heartbeat (sent on the report path, like `sync.reported`).
pub const INSTALL_HEARTBEAT: &str = "install.heartbeat";
const KNOWN_TYPES: &str = "build.requested, build.completed, sync.requested, sync.reported, \
                           release.step, release.synced, install.heartbeat";

/// The longest free-text health an agent may send in a heartbeat.
pub const MAX_HEALTH_TEXT: usize = 512;
/// The longest agent version string.
pub const MAX_AGENT_VERSION_TEXT: usize = 64;

/// Why bytes are not a valid event or job message; each variant names the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is larger than {MAX_EVENT_BYTES} bytes ({size}); events carry ids and digests, not payloads")]
    TooLarge { size: usize },
    #[error(
        "event is not valid JSON ({detail}); send one JSON object like the samples in events/"
    )]
    NotJson { detail: String },
    #[error("event must be a JSON object, found {found}; send one JSON object like the samples in events/")]
    NotAnObject { found: &'static str },
    #[error("event has no string \"type\"; set \"type\" to one of: {KNOWN_TYPES}")]
    MissingType,
    #[error("unknown event type {found:?}; expected one of: {KNOWN_TYPES}")]
    UnknownType { found: String },
    #[error("{event_type} event has no \"version\"; add \"version\": {expected}")]
    MissingVersion {
        event_type: &'static str,
        expected: u64,
    },
    #[error("{event_type} has version {found}, but this Ferry reads only version {expected}; send a version {expected} message (an agent or producer older than this IMS must be upgraded) or upgrade Ferry")]
    UnsupportedVersion {
        event_type: &'static str,
        found: String,
        expected: u64,
    },
    #[error("{event_type} event is missing required field \"{field}\"; add it (see events/{event_type}.json)")]
    MissingField {
        event_type: &'static str,
        field: &'static str,
    },
    #[error("{event_type} event field \"{field}\" is invalid: {reason}")]
    InvalidField {
        event_type: &'static str,
        field: &'static str,
        reason: String,
    },
    #[error("{event_type} event has unknown field {field:?}; remove it or fix its spelling (see events/{event_type}.json)")]
    UnknownField {
        event_type: &'static str,
        field: String,
    },
}

/// One parsed event: the producer's id, if any, and the typed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<EventId>,
    pub payload: Payload,
}

#[derive(Serialize)]
struct Wire<'a> {
    version: u64,
    #[serde(rename = "type")]
    event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a EventId>,
    #[serde(flatten)]
    payload: &'a Payload,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            version: self.payload.schema_version(),
            event_type: self.payload.event_type(),
            id: self.id.as_ref(),
            payload: &self.payload,
        }
        .serialize(s)
    }
}

impl Event {
    /// An event without a producer id (its idempotency key is the payload's hash).
    pub fn new(payload: Payload) -> Event {
        Event { id: None, payload }
    }

    /// An event with producer id `id` (its idempotency key).
    pub fn with_id(id: EventId, payload: Payload) -> Event {
        Event {
            id: Some(id),
            payload,
        }
    }

    /// The event type (`build.requested`, ...).
    pub fn event_type(&self) -> &'static str {
        self.payload.event_type()
    }

    /// The key under which handling this event is recorded. A producer id wins; without one,
    /// the hash of the canonical payload, so a byte-identical or reformatted replay matches.
    pub fn idempotency_key(&self) -> String {
        match &self.id {
            Some(id) => format!("{}#{}", self.event_type(), id),
            None => format!("{}#sha256:{}", self.event_type(), self.payload_hash()),
        }
    }

    /// The hex sha256 of the canonical payload (the producer id left out). It is stored with
    /// the idempotency record, so the same key arriving with another payload is refused
    /// loudly instead of being taken for a replay.
    pub fn payload_hash(&self) -> String {
        // Serializing these plain structs cannot fail; fall back to Debug regardless.
        let canonical = serde_json::to_vec(&self.payload)
            .unwrap_or_else(|_| format!("{:?}", self.payload).into_bytes());
        hex::encode(Sha256::digest(&canonical))
    }

    /// The wire form: one JSON object, `version` and `type` first.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// The job this event belongs to: the build id (derived as `build.requested`'s handler
    /// derives it when the request named none) or the sync id.
    pub fn job(&self) -> JobRef {
        match &self.payload {
            Payload::BuildRequested(ev) => JobRef::Build(
                ev.build_id
                    .clone()
                    .unwrap_or_else(|| BuildId::derived_from(&self.idempotency_key())),
            ),
            Payload::BuildCompleted(ev) => JobRef::Build(ev.build_id.clone()),
            Payload::SyncRequested(ev) => JobRef::Sync(ev.sync_id.clone()),
            Payload::SyncReported(ev) => JobRef::Sync(ev.sync_id.clone()),
            Payload::ReleaseStep(ev) => JobRef::Release(ev.release_id.clone()),
            Payload::ReleaseSynced(ev) => JobRef::Release(ev.release_id.clone()),
            Payload::InstallHeartbeat(ev) => JobRef::Install(ev.install_id.clone()),
        }
    }
}

/// The one schema version each type is read and written with.
fn schema_version(event_type: &str) -> u64 {
    match event_type {
        SYNC_REPORTED | SYNC_JOB | INSTALL_HEARTBEAT => SIGNED_VERSION,
        _ => EVENT_VERSION,
    }
}
