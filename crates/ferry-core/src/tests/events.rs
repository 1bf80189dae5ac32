//! Event parsing: the samples in events/, malformed input and arbitrary bytes.

use proptest::prelude::*;
use serde_json::{json, Value};

use crate::event::{
    parse_event, parse_sync_job, BuildOutcome, EventError, Payload, SyncReportStatus,
};

const SAMPLES: [&str; 7] = [
    "build.requested",
    "build.completed",
    "sync.requested",
    "sync.reported",
    "release.step",
    "release.synced",
    "install.heartbeat",
];
const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

fn sample_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/../../events/{name}.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn sample(name: &str) -> Value {
    serde_json::from_slice(&sample_bytes(name)).unwrap()
}

fn err_of(v: Value) -> EventError {
    parse_event(v.to_string().as_bytes()).unwrap_err()
}

#[test]
fn every_sample_parses_and_round_trips() {
    for name in SAMPLES {
        let ev = parse_event(&sample_bytes(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ev.event_type(), name);
        let again = parse_event(ev.to_json().unwrap().as_bytes()).unwrap();
        assert_eq!(again, ev, "{name} must survive serialize + parse");
    }
}

#[test]
fn samples_carry_the_documented_fields() {
    let Payload::BuildCompleted(c) = parse_event(&sample_bytes("build.completed"))
        .unwrap()
        .payload
    else {
        panic!("build.completed sample parsed as another type")
    };
    assert_eq!(c.status, BuildOutcome::Succeeded);
    assert_eq!(c.digest.as_ref().map(|d| d.as_str()), Some(DIGEST));
    let Payload::SyncReported(r) = parse_event(&sample_bytes("sync.reported")).unwrap().payload
    else {
        panic!("sync.reported sample parsed as another type")
    };
    assert_eq!((r.status, r.attempt), (SyncReportStatus::Succeeded, 1));
    assert_eq!(r.bytes_copied, 48_213_771);
}

#[test]
fn sync_job_sample_parses_and_never_shows_its_grant() {
    let msg = parse_sync_job(&sample_bytes("sync.job")).unwrap();
    assert_eq!(msg.attempt, 1);
    assert!(!msg.grant.ciphertext().is_empty());
    let dbg = format!("{msg:?}");
    assert!(!dbg.contains("c2VhbGVk"), "{dbg}");
    assert!(dbg.contains("redacted"), "{dbg}");
    let mut v = sample("sync.job");
    v["type"] = json!("sync.other");
    assert!(matches!(
        parse_sync_job(v.to_string().as_bytes()),
        Err(EventError::UnknownType { .. })
    ));
}

#[test]
fn eventbridge_envelope_is_unwrapped_and_lends_its_id() {
    let mut detail = sample("build.completed");
    let env = json!({
        "version": "0", "id": "eb-123", "detail-type": "build.completed",
        "source": "ferry", "detail": detail.clone()
    });
    let ev = parse_event(env.to_string().as_bytes()).unwrap();
    assert_eq!(ev.id.as_ref().map(|i| i.as_str()), Some("eb-123"));
    detail["id"] = json!("own-id");
    let env = json!({"id": "eb-123", "detail-type": "x", "detail": detail});
    let ev = parse_event(env.to_string().as_bytes()).unwrap();
    assert_eq!(ev.id.as_ref().map(|i| i.as_str()), Some("own-id"));
}

#[test]
fn idempotency_key_prefers_the_id_and_ignores_formatting() {
    let with_id = parse_event(&sample_bytes("build.requested")).unwrap();
    assert_eq!(with_id.idempotency_key(), "build.requested#req-2024-0001");
    let mut v = sample("build.completed");
    let a = parse_event(v.to_string().as_bytes()).unwrap();
    let b = parse_event(serde_json::to_string_pretty(&v).unwrap().as_bytes()).unwrap();
    assert_eq!(a.idempotency_key(), b.idempotency_key());
    v["media_type"] = json!("application/vnd.oci.image.index.v1+json");
    let c = parse_event(v.to_string().as_bytes()).unwrap();
    assert_ne!(a.idempotency_key(), c.idempotency_key());
}

#[test]
fn malformed_events_get_errors_that_say_what_to_do() {
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (b"{not json".to_vec(), &["not valid JSON", "events/"]),
        (b"[1,2]".to_vec(), &["must be a JSON object", "an array"]),
        (
            br#"{"version":1}"#.to_vec(),
            &["no string \"type\"", "build.requested"],
        ),
        (
            br#"{"version":1,"type":"build.exploded"}"#.to_vec(),
            &["unknown event type \"build.exploded\"", "sync.reported"],
        ),
        (
            br#"{"type":"build.requested"}"#.to_vec(),
            &["no \"version\"", "add \"version\": 1"],
        ),
        (
            br#"{"type":"build.requested","version":2}"#.to_vec(),
            &["version 2", "only version 1"],
        ),
        (
            vec![b' '; crate::event::MAX_EVENT_BYTES + 1],
            &["larger than"],
        ),
    ];
    for (input, needles) in cases {
        let msg = parse_event(&input).unwrap_err().to_string();
        for n in needles {
            assert!(msg.contains(n), "{msg:?} should mention {n:?}");
        }
    }
}

#[test]
fn field_errors_name_the_field() {
    let mut v = sample("build.requested");
    v.as_object_mut().unwrap().remove("component");
    let msg = err_of(v).to_string();
    assert!(
        msg.contains("missing required field \"component\""),
        "{msg}"
    );
    assert!(msg.contains("events/build.requested.json"), "{msg}");

    let mut v = sample("sync.requested");
    v["digest"] = json!("sha256:1234");
    let e = err_of(v);
    assert!(
        matches!(
            &e,
            EventError::InvalidField {
                field: "digest",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("64 hex characters"), "{e}");

    let mut v = sample("sync.requested");
    v["digest"] = json!("latest");
    assert!(err_of(v).to_string().contains("never by tag"));

    let mut v = sample("sync.reported");
    v["sttus"] = json!("succeeded");
    let msg = err_of(v).to_string();
    assert!(msg.contains("unknown field \"sttus\""), "{msg}");

    let mut v = sample("sync.reported");
    v["status"] = json!("done");
    let msg = err_of(v).to_string();
    assert!(
        msg.contains("\"done\"") && msg.contains("succeeded, failed, grant_expired"),
        "{msg}"
    );

    let mut v = sample("sync.reported");
    v["bytes_copied"] = json!(-5);
    assert!(err_of(v).to_string().contains("whole number"));

    let mut v = sample("build.requested");
    v["app"] = json!("shop/web");
    assert!(err_of(v).to_string().contains("field \"app\" is invalid"));

    let mut v = sample("build.requested");
    v["source_ref"] = json!(42);
    assert!(err_of(v)
        .to_string()
        .contains("expected a string, found a number"));
}

/// The samples are really signed: the report by the sample agent of install `acme-prod-eu`
/// (its secret is public, in this test, so the samples can be re-signed), the job by the test
/// vendor key.
const SAMPLE_AGENT_SECRET: &str =
    "FERRY-X25519-SECRET-1:bALPian7OSN4gCpB-1zHIEZwXH1Ea71GwiQKkRmK1zw";
pub(crate) const SAMPLE_REPORT_KEY: &str =
    "ferry-agent-ed25519:cB0RifRyi8qCWC7Lp4f-ir2MTcztUGI58XHOSk1wH08";

#[test]
fn the_signed_samples_verify_and_version_1_is_refused() {
    let agent = crate::seal::AgentKeypair::from_secret_string(SAMPLE_AGENT_SECRET).unwrap();
    assert_eq!(agent.report_key().public_key_string(), SAMPLE_REPORT_KEY);
    let Payload::SyncReported(r) = parse_event(&sample_bytes("sync.reported")).unwrap().payload
    else {
        panic!("sync.reported sample parsed as another type")
    };
    crate::trust::verify_report(SAMPLE_REPORT_KEY, &r).unwrap();
    let job = parse_sync_job(&sample_bytes("sync.job")).unwrap();
    crate::trust::verify_job(&crate::testing::test_vendor_key().public_key_string(), &job).unwrap();

    let mut v = sample("sync.reported");
    v["version"] = json!(1);
    let msg = err_of(v).to_string();
    assert!(msg.contains("reads only version 2"), "{msg}");
    let mut v = sample("sync.reported");
    v.as_object_mut().unwrap().remove("signature");
    assert!(err_of(v).to_string().contains("\"signature\""));
    let mut v = sample("sync.job");
    v["version"] = json!(1);
    assert!(parse_sync_job(v.to_string().as_bytes()).is_err());
}

#[test]
fn build_completed_digest_rules() {
    let mut v = sample("build.completed");
    v.as_object_mut().unwrap().remove("digest");
    let e = err_of(v);
    assert!(
        matches!(
            e,
            EventError::MissingField {
                field: "digest",
                ..
            }
        ),
        "a succeeded build needs a digest: {e:?}"
    );
    let mut v = sample("build.completed");
    v["status"] = json!("failed");
    let msg = err_of(v).to_string();
    assert!(msg.contains("only a succeeded build has a digest"), "{msg}");
    let v = json!({"version":1,"type":"build.completed","build_id":"b1","status":"failed","error":"compile error"});
    assert!(parse_event(v.to_string().as_bytes()).is_ok());
    let mut v = sample("build.completed");
    v["media_type"] = json!("manifest");
    assert!(err_of(v).to_string().contains("not a media type"));
}

#[test]
fn null_optional_fields_count_as_absent() {
    let mut v = sample("build.requested");
    v["build_id"] = Value::Null;
    let Payload::BuildRequested(r) = parse_event(v.to_string().as_bytes()).unwrap().payload else {
        panic!("wrong type")
    };
    assert_eq!(r.build_id, None);
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_event(&bytes);
        let _ = parse_sync_job(&bytes);
    }

    #[test]
    fn parse_never_panics_on_json_shaped_noise(s in r#"\{("[a-z_]{1,12}":("[ -~]{0,20}"|-?[0-9]{1,20}|null|true|\[\]|\{\}),?){0,8}\}"#) {
        let _ = parse_event(s.as_bytes());
    }

    #[test]
    fn dropping_any_field_is_ok_only_if_it_was_optional(which in 0usize..SAMPLES.len(), pick in 0usize..16) {
        let name = SAMPLES[which];
        let v = sample(name);
        let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        let key = &keys[pick % keys.len()];
        let mut cut = v.clone();
        cut.as_object_mut().unwrap().remove(key);
        let optional = ["id", "build_id", "media_type", "error", "last_poll_at", "last_sync_at"];
        match parse_event(cut.to_string().as_bytes()) {
            Ok(_) => prop_assert!(
                optional.contains(&key.as_str()) && !(name == "sync.requested" && key == "build_id")
                    && !(name == "build.completed" && key == "build_id"),
                "dropping {} from {} should fail", key, name
            ),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains(key.as_str()), "{}: error {:?} should name {}", name, msg, key);
            }
        }
    }
}
