//! The wire contract: Ferry events and the agent's job message, and their strict parsers.
//!
//! Every event is one JSON object with a `"version"` (2 for the signed `sync.reported`, 1 for
//! the rest), a `"type"`, an optional producer `"id"`
//! and the type's fields at the top level (samples in `events/`). An EventBridge envelope
//! (`detail-type` + `detail`) is unwrapped first. Parsing is strict and field by field so each
//! error names the field and says what to do. This module must never panic on input, and never
//! accept an unknown type, an unsupported version, a missing field, an unknown field or a digest
//! that is not sha256.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::domain::{SealedGrant, VerifyPolicy};
use crate::id::{
    AppName, BuildId, ComponentName, Digest, EventId, IdError, InstallId, ReleaseId, Repository,
    SyncId,
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

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Takes fields out of the object one by one; whatever is left at the end is unknown.
struct Fields {
    ty: &'static str,
    map: Map<String, Value>,
}

impl Fields {
    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> EventError {
        EventError::InvalidField {
            event_type: self.ty,
            field,
            reason: reason.into(),
        }
    }

    /// A present, non-null value.
    fn take(&mut self, field: &'static str) -> Option<Value> {
        self.map.remove(field).filter(|v| !v.is_null())
    }

    fn opt_text(&mut self, field: &'static str, max: usize) -> Result<Option<String>, EventError> {
        let Some(v) = self.take(field) else {
            return Ok(None);
        };
        let Value::String(s) = v else {
            return Err(self.invalid(field, format!("expected a string, found {}", json_kind(&v))));
        };
        if s.trim().is_empty() {
            return Err(self.invalid(field, "it is empty; give a value or leave the field out"));
        }
        if s.len() > max {
            return Err(self.invalid(field, format!("it is longer than {max} bytes")));
        }
        Ok(Some(s))
    }

    fn req_text(&mut self, field: &'static str, max: usize) -> Result<String, EventError> {
        self.opt_text(field, max)?.ok_or(EventError::MissingField {
            event_type: self.ty,
            field,
        })
    }

    fn opt_id<T>(
        &mut self,
        field: &'static str,
        make: fn(String) -> Result<T, IdError>,
    ) -> Result<Option<T>, EventError> {
        match self.opt_text(field, MAX_TEXT)? {
            None => Ok(None),
            Some(s) => make(s)
                .map(Some)
                .map_err(|e| self.invalid(field, e.to_string())),
        }
    }

    fn req_id<T>(
        &mut self,
        field: &'static str,
        make: fn(String) -> Result<T, IdError>,
    ) -> Result<T, EventError> {
        self.opt_id(field, make)?.ok_or(EventError::MissingField {
            event_type: self.ty,
            field,
        })
    }

    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, EventError> {
        let Some(v) = self.take(field) else {
            return Ok(None);
        };
        v.as_u64().map(Some).ok_or_else(|| {
            self.invalid(
                field,
                format!("expected a whole number >= 0, found {}", json_kind(&v)),
            )
        })
    }

    fn req_u64(&mut self, field: &'static str) -> Result<u64, EventError> {
        self.opt_u64(field)?.ok_or(EventError::MissingField {
            event_type: self.ty,
            field,
        })
    }

    fn req_enum<T: for<'de> Deserialize<'de>>(
        &mut self,
        field: &'static str,
        allowed: &str,
    ) -> Result<T, EventError> {
        let v = self.take(field).ok_or(EventError::MissingField {
            event_type: self.ty,
            field,
        })?;
        let shown = match &v {
            Value::String(s) => format!("{:?}", s.chars().take(40).collect::<String>()),
            other => json_kind(other).to_string(),
        };
        serde_json::from_value(v)
            .map_err(|_| self.invalid(field, format!("found {shown}; expected one of: {allowed}")))
    }

    fn finish(self) -> Result<(), EventError> {
        match self.map.into_iter().next() {
            None => Ok(()),
            Some((field, _)) => Err(EventError::UnknownField {
                event_type: self.ty,
                field: field.chars().take(80).collect(),
            }),
        }
    }
}

/// Parses one event (or an EventBridge envelope around one). Never panics.
pub fn parse_event(bytes: &[u8]) -> Result<Event, EventError> {
    if bytes.len() > MAX_EVENT_BYTES {
        return Err(EventError::TooLarge { size: bytes.len() });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| EventError::NotJson {
        detail: e.to_string(),
    })?;
    parse_event_value(value)
}

/// As [`parse_event`], for input that is already JSON (a Lambda payload).
pub fn parse_event_value(value: Value) -> Result<Event, EventError> {
    let mut map = unwrap_envelope(value)?;
    let ty = event_type(&mut map)?;
    check_version(ty, &mut map)?;

    let mut f = Fields { ty, map };
    let id = f.opt_id("id", EventId::new)?;
    let payload = parse_payload(&mut f)?;
    f.finish()?;
    Ok(Event { id, payload })
}

/// The event object itself: `value` when it is one, or the `detail` of an EventBridge
/// envelope (which lends the event its `id` when the detail has none).
fn unwrap_envelope(value: Value) -> Result<Map<String, Value>, EventError> {
    let Value::Object(mut map) = value else {
        return Err(EventError::NotAnObject {
            found: json_kind(&value),
        });
    };
    // EventBridge delivers {"id", "detail-type", "source", "detail": <our event>, ...}.
    if map.contains_key("detail-type") && map.contains_key("detail") {
        let outer_id = map.remove("id");
        let Some(Value::Object(mut detail)) = map.remove("detail") else {
            return Err(EventError::NotAnObject {
                found: "an EventBridge envelope whose \"detail\" is not an object",
            });
        };
        if !detail.contains_key("id") {
            if let Some(id) = outer_id {
                detail.insert("id".into(), id);
            }
        }
        map = detail;
    }
    Ok(map)
}

/// Removes and checks the `type` field: one of the known event types.
fn event_type(map: &mut Map<String, Value>) -> Result<&'static str, EventError> {
    match map.remove("type") {
        Some(Value::String(t)) => match t.as_str() {
            BUILD_REQUESTED => Ok(BUILD_REQUESTED),
            BUILD_COMPLETED => Ok(BUILD_COMPLETED),
            SYNC_REQUESTED => Ok(SYNC_REQUESTED),
            SYNC_REPORTED => Ok(SYNC_REPORTED),
            RELEASE_STEP => Ok(RELEASE_STEP),
            RELEASE_SYNCED => Ok(RELEASE_SYNCED),
            INSTALL_HEARTBEAT => Ok(INSTALL_HEARTBEAT),
            _ => Err(EventError::UnknownType {
                found: t.chars().take(80).collect(),
            }),
        },
        _ => Err(EventError::MissingType),
    }
}

/// Removes and checks the `version` field against the schema version of event type `ty`.
fn check_version(ty: &'static str, map: &mut Map<String, Value>) -> Result<(), EventError> {
    let expected = schema_version(ty);
    match map.remove("version") {
        None | Some(Value::Null) => {
            return Err(EventError::MissingVersion {
                event_type: ty,
                expected,
            })
        }
        Some(v) if v.as_u64() == Some(expected) => {}
        Some(v) => {
            let found: String = v.to_string().chars().take(40).collect();
            return Err(EventError::UnsupportedVersion {
                event_type: ty,
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// The payload of event type `f.ty`, read field by field in the order the fields are checked.
fn parse_payload(f: &mut Fields) -> Result<Payload, EventError> {
    let ty = f.ty;
    Ok(match ty {
        BUILD_REQUESTED => Payload::BuildRequested(BuildRequested {
            build_id: f.opt_id("build_id", BuildId::new)?,
            app: f.req_id("app", AppName::new)?,
            component: f.req_id("component", ComponentName::new)?,
            source_ref: f.req_text("source_ref", MAX_TEXT)?,
            requested_by: f.req_text("requested_by", MAX_TEXT)?,
        }),
        BUILD_COMPLETED => Payload::BuildCompleted(build_completed(f)?),
        SYNC_REQUESTED => {
            Payload::SyncRequested(SyncRequested {
                sync_id: f.req_id("sync_id", SyncId::new)?,
                build_id: f.req_id("build_id", BuildId::new)?,
                install_id: f.req_id("install_id", InstallId::new)?,
                repository: f.req_id("repository", Repository::new)?,
                digest: f.req_id("digest", Digest::new)?,
                release_id: f.opt_id("release_id", ReleaseId::new)?,
                // fanout3 (issue 12): the release step's dispatch context.
                context: match f.take("context") {
                    None => None,
                    Some(v) => Some(serde_json::from_value(v).map_err(|e| {
                        f.invalid("context", format!("not a dispatch context: {e}"))
                    })?),
                },
            })
        }
        RELEASE_STEP => Payload::ReleaseStep(release_step(f)?),
        RELEASE_SYNCED => Payload::ReleaseSynced(ReleaseSynced {
            release_id: f.req_id("release_id", ReleaseId::new)?,
            sync_id: f.req_id("sync_id", SyncId::new)?,
        }),
        INSTALL_HEARTBEAT => Payload::InstallHeartbeat(InstallHeartbeat {
            install_id: f.req_id("install_id", InstallId::new)?,
            agent_version: f.req_text("agent_version", MAX_AGENT_VERSION_TEXT)?,
            last_poll_at: f.opt_u64("last_poll_at")?,
            last_sync_at: f.opt_u64("last_sync_at")?,
            health: f.req_text("health", MAX_HEALTH_TEXT)?,
            sent_at: f.req_u64("sent_at")?,
            signature: f.req_text("signature", MAX_SIGNATURE_TEXT)?,
        }),
        _ => Payload::SyncReported(sync_reported(f)?),
    })
}

/// A `build.completed` payload: a full commit id, a media type, and a digest exactly when it
/// succeeded.
fn build_completed(f: &mut Fields) -> Result<BuildCompleted, EventError> {
    let ev = BuildCompleted {
        build_id: f.req_id("build_id", BuildId::new)?,
        status: f.req_enum("status", "succeeded, failed, cancelled")?,
        digest: f.opt_id("digest", Digest::new)?,
        repository: f.opt_id("repository", Repository::new)?,
        media_type: f.opt_text("media_type", 255)?,
        error: f.opt_text("error", MAX_ERROR_TEXT)?,
        revision: f.opt_text("revision", 64)?,
    };
    if let Some(rev) = &ev.revision {
        if !(rev.len() == 40 || rev.len() == 64) || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(f.invalid(
                "revision",
                format!("{rev:?} is not a full git commit id (40 or 64 hex digits)"),
            ));
        }
    }
    if let Some(mt) = &ev.media_type {
        if !mt.contains('/') {
            return Err(f.invalid(
                "media_type",
                format!("{mt:?} is not a media type; use e.g. application/vnd.oci.image.manifest.v1+json"),
            ));
        }
    }
    if ev.status == BuildOutcome::Succeeded {
        for (field, present) in [
            ("digest", ev.digest.is_some()),
            ("repository", ev.repository.is_some()),
        ] {
            if !present {
                return Err(EventError::MissingField {
                    event_type: f.ty,
                    field,
                });
            }
        }
    } else if ev.digest.is_some() {
        return Err(f.invalid(
            "digest",
            "only a succeeded build has a digest; drop it or set \"status\": \"succeeded\"",
        ));
    }
    Ok(ev)
}

/// A `release.step` payload.
fn release_step(f: &mut Fields) -> Result<ReleaseStep, EventError> {
    let mut small = |field: &'static str| -> Result<u32, EventError> {
        let v = f.req_u64(field)?;
        u32::try_from(v).map_err(|_| f.invalid(field, "expected 0 to 4294967295"))
    };
    let step = small("step")?;
    let round = small("round")?;
    let page = small("page")?;
    Ok(ReleaseStep {
        release_id: f.req_id("release_id", ReleaseId::new)?,
        step,
        round,
        page,
        cursor: f.opt_text("cursor", MAX_TEXT)?,
    })
}

/// A `sync.reported` payload (the attempt is at least 1).
fn sync_reported(f: &mut Fields) -> Result<SyncReported, EventError> {
    Ok(SyncReported {
        sync_id: f.req_id("sync_id", SyncId::new)?,
        install_id: f.req_id("install_id", InstallId::new)?,
        status: f.req_enum("status", "succeeded, failed, grant_expired, policy_failed")?,
        digest: f.req_id("digest", Digest::new)?,
        bytes_copied: f.req_u64("bytes_copied")?,
        bytes_skipped: f.req_u64("bytes_skipped")?,
        duration_ms: f.req_u64("duration_ms")?,
        error: f.opt_text("error", MAX_ERROR_TEXT)?,
        attempt: {
            let a = f.req_u64("attempt")?;
            u32::try_from(a)
                .ok()
                .filter(|a| *a >= 1)
                .ok_or_else(|| f.invalid("attempt", "expected 1 to 4294967295"))?
        },
        signature: f.req_text("signature", MAX_SIGNATURE_TEXT)?,
    })
}

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
