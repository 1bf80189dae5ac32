//! The strict event parser: the envelope, the type, the version, then each payload field by
//! field, so every error names its field and the fix. It must never panic on input, and never
//! accept an unknown type, version or field, or a digest that is not sha256.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::payload::{
    BuildCompleted, BuildOutcome, BuildRequested, InstallHeartbeat, Payload, ReleaseStep,
    ReleaseSynced, SyncReported, SyncRequested,
};
use super::{
    schema_version, Event, EventError, BUILD_COMPLETED, BUILD_REQUESTED, INSTALL_HEARTBEAT,
    MAX_AGENT_VERSION_TEXT, MAX_ERROR_TEXT, MAX_EVENT_BYTES, MAX_HEALTH_TEXT, MAX_SIGNATURE_TEXT,
    MAX_TEXT, RELEASE_STEP, RELEASE_SYNCED, SYNC_REPORTED, SYNC_REQUESTED,
};
use crate::id::{
    AppName, BuildId, ComponentName, Digest, EventId, IdError, InstallId, ReleaseId, Repository,
    SyncId,
};

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
