//! One SQS batch, record by record: each goes through ferry-core's `handle_record` (the same
//! record path ferry-local's worker uses) with this function's decoder (parse the body, check
//! it is this function's event type), and the answer lists the records that failed
//! (`batchItemFailures`, for `ReportBatchItemFailures`), so SQS redelivers only those and,
//! after the queue's receive limit (`FERRY_MAX_RECEIVE_COUNT`), moves them to the dead-letter
//! queue. On that last receive `handle_record` has the record's job record a `dead_lettered`
//! error first, so a poisoned job shows why it stopped.
//!
//! Bodies: the build-completed function reads the `build.completed` that `ferry-build` posts
//! (source `ferry.build` on the Ferry bus) and CodeBuild "Build State Change" events for
//! builds that ended without it (FAILED, FAULT, STOPPED, TIMED_OUT), mapped by ferry-aws to a
//! failed or cancelled `build.completed`. A state change never overrides a result already
//! recorded (ferry-build's completion may arrive before or after it): that conflict is a
//! no-op, not a failure. The other functions read a Ferry event, raw or in an EventBridge
//! envelope (`ferry_core::parse_event` unwraps it).
//!
//! This module must never let one record's failure (bad JSON, wrong type, handler error)
//! fail or skip another record, never return an error for the whole batch, and never log a
//! record's body.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{Error, LambdaEvent};
use serde::Deserialize;
use tracing::field::Empty;
use tracing::Instrument as _;

use ferry_aws::builder::StateChangeError;
use ferry_aws::CodeBuildStateChange;
use ferry_core::event::{
    BUILD_COMPLETED, BUILD_REQUESTED, INSTALL_HEARTBEAT, RELEASE_STEP, RELEASE_SYNCED,
    SYNC_REPORTED, SYNC_REQUESTED,
};
use ferry_core::{
    handle_record, parse_event, Event, EventError, HandlerError, Outcome, Record, RecordOutcome,
    Redrive,
};

use crate::deps::{AwsPorts, Deps};

/// Which of the five functions is running; each accepts its own event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BuildRequested,
    BuildCompleted,
    SyncRequested,
    SyncReported,
    /// The release queue: step timers (`release.step`) and the end of each release sync
    /// (`release.synced`).
    Release,
}

impl Kind {
    /// The Ferry event types this function handles.
    pub fn event_types(self) -> &'static [&'static str] {
        match self {
            Kind::BuildRequested => &[BUILD_REQUESTED],
            Kind::BuildCompleted => &[BUILD_COMPLETED],
            Kind::SyncRequested => &[SYNC_REQUESTED],
            // Heartbeats share the agents' report queue (and its authentication).
            Kind::SyncReported => &[SYNC_REPORTED, INSTALL_HEARTBEAT],
            Kind::Release => &[RELEASE_STEP, RELEASE_SYNCED],
        }
    }

    /// The function's name (and its binary's).
    pub fn function_name(self) -> &'static str {
        match self {
            Kind::BuildRequested => "build-requested",
            Kind::BuildCompleted => "build-completed",
            Kind::SyncRequested => "sync-requested",
            Kind::SyncReported => "sync-reported",
            Kind::Release => "release",
        }
    }

    fn accepts(self) -> &'static str {
        match self {
            Kind::BuildCompleted => {
                "CodeBuild \"Build State Change\" events (or build.completed events)"
            }
            Kind::BuildRequested => "build.requested events",
            Kind::SyncRequested => "sync.requested events",
            Kind::SyncReported => "sync.reported and install.heartbeat events",
            Kind::Release => "release.step and release.synced events",
        }
    }
}

/// Why one record failed. Each message says what was wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the SQS record has no body; send one JSON event per message (see events/)")]
    NoBody,
    #[error(transparent)]
    Malformed(#[from] EventError),
    #[error(transparent)]
    StateChange(#[from] StateChangeError),
    #[error(
        "the {function} function handles only {accepts}, but this record is a {found} event; \
         check which EventBridge rule or producer sends to this function's queue"
    )]
    WrongType {
        function: &'static str,
        accepts: &'static str,
        found: &'static str,
    },
    #[error(transparent)]
    Handler(#[from] HandlerError),
    #[error(
        "grant minting is paced (FERRY_MINT_RATE_PER_SECOND) and the next grant is due in {wait_ms} ms, after this invocation's deadline; SQS will redeliver the record"
    )]
    Paced { wait_ms: u64 },
}

impl RecordError {
    /// True when a redelivery may succeed (the rest only wait for the dead-letter queue).
    pub fn is_retryable(&self) -> bool {
        match self {
            RecordError::Handler(e) => e.is_retryable(),
            RecordError::Paced { .. } => true,
            _ => false,
        }
    }
}

/// One failed record: its SQS message id (empty if SQS sent none) and the reason.
#[derive(Debug)]
pub struct RecordFailure {
    pub message_id: String,
    pub error: RecordError,
}

/// Just enough of an EventBridge envelope to tell a CodeBuild state change from a Ferry event.
#[derive(Deserialize)]
struct Probe {
    source: Option<String>,
    #[serde(rename = "detail-type")]
    detail_type: Option<String>,
}

fn is_codebuild_state_change(body: &[u8]) -> bool {
    serde_json::from_slice::<Probe>(body).is_ok_and(|p| {
        p.source.as_deref() == Some("aws.codebuild")
            || p.detail_type.as_deref() == Some("CodeBuild Build State Change")
    })
}

/// The event in `body`, or `None` for a state change that needs no action (still running).
fn parse_body(kind: Kind, body: impl AsRef<[u8]>) -> Result<Option<Event>, RecordError> {
    let body = body.as_ref();
    if kind == Kind::BuildCompleted && is_codebuild_state_change(body) {
        let change = CodeBuildStateChange::parse(body)?;
        return Ok(change.to_build_completed()?);
    }
    let event = parse_event(body)?;
    if !kind.event_types().contains(&event.event_type()) {
        return Err(RecordError::WrongType {
            function: kind.function_name(),
            accepts: kind.accepts(),
            found: event.event_type(),
        });
    }
    Ok(Some(event))
}

/// One record through ferry-core's `handle_record`, with this function's decoder and the
/// queue's redrive policy (so the last receive records the job's error, as locally).
async fn handle_one(
    deps: &Deps,
    ports: &AwsPorts,
    kind: Kind,
    record: &SqsMessage,
    receive_count: u32,
) -> Result<Option<Outcome>, RecordError> {
    let body = record.body.as_deref().ok_or(RecordError::NoBody)?;
    let record = Record {
        message_id: record.message_id.clone().unwrap_or_default(),
        body: body.as_bytes().to_vec(),
        receive_count,
    };
    let redrive = Redrive {
        max_receive_count: deps.max_receive_count,
        dlq: format!("the {} function's dead-letter queue", kind.function_name()),
    };
    let state_change = kind == Kind::BuildCompleted && is_codebuild_state_change(body.as_bytes());
    let outcome = handle_record(ports, &record, Some(&redrive), |body: &[u8]| {
        parse_body(kind, body)
    })
    .await;
    match outcome {
        // The build already has its result (usually ferry-build's own completion, which came
        // first): CodeBuild's later view of it changes nothing.
        RecordOutcome::Retry(ferry_core::RecordError::Handler(HandlerError::AlreadyFinished {
            status,
            ..
        })) if state_change => {
            tracing::info!(%status, "build already finished; the CodeBuild state change changes nothing");
            Ok(None)
        }
        RecordOutcome::Done(None) => {
            tracing::info!("build still in progress; nothing to record");
            Ok(None)
        }
        RecordOutcome::Done(Some(outcome)) => Ok(Some(outcome)),
        RecordOutcome::Retry(e) => Err(e.into()),
        RecordOutcome::DeadLetter(e) => {
            tracing::error!(error = %e, "last allowed receive: SQS moves this record to the dead-letter queue");
            Err(e.into())
        }
    }
}

impl From<ferry_core::RecordError<RecordError>> for RecordError {
    fn from(e: ferry_core::RecordError<RecordError>) -> RecordError {
        match e {
            ferry_core::RecordError::Decode(e) => e,
            ferry_core::RecordError::Handler(e) => RecordError::Handler(e),
        }
    }
}

/// Handles every record of `records` in order and returns the failures; never stops early.
/// With no invocation deadline: the idempotency lock lasts `Config::in_progress_ms`.
pub async fn process_records(
    deps: &Deps,
    kind: Kind,
    records: &[SqsMessage],
) -> Vec<RecordFailure> {
    process_records_until(deps, kind, records, None).await
}

/// [`process_records`] within an invocation that Lambda stops at `deadline_ms` (ms since the
/// epoch): each record's idempotency lock lasts until then ([`ferry_core::timing::lock_until`]).
pub async fn process_records_until(
    deps: &Deps,
    kind: Kind,
    records: &[SqsMessage],
    deadline_ms: Option<u64>,
) -> Vec<RecordFailure> {
    let with_deadline;
    let ports = match deadline_ms {
        Some(deadline) => {
            let mut p = deps.ports.clone();
            p.config.deadline_ms = Some(deadline);
            with_deadline = p;
            &with_deadline
        }
        None => &deps.ports,
    };
    let mut failures = Vec::new();
    for record in records {
        let message_id = record.message_id.clone().unwrap_or_default();
        let receive_count: u32 = record
            .attributes
            .get("ApproximateReceiveCount")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let span = tracing::info_span!(
            "sqs_record",
            function = kind.function_name(),
            message_id = %message_id,
            receive_count,
            event_type = Empty,
            job_id = Empty,
        );
        let result = match pace(deps, kind, deadline_ms).await {
            Ok(()) => {
                handle_one(deps, ports, kind, record, receive_count)
                    .instrument(span.clone())
                    .await
            }
            Err(e) => Err(e),
        };
        let _entered = span.enter();
        match result {
            Ok(Some(outcome)) => tracing::info!(?outcome, "record handled"),
            Ok(None) => {}
            Err(error) => {
                if message_id.is_empty() {
                    // An empty itemIdentifier makes Lambda retry the whole batch: the only
                    // safe answer for a record that cannot be named.
                    tracing::error!(error = %error, "SQS record without a messageId; the whole batch will be retried");
                } else {
                    tracing::warn!(
                        error = %error,
                        retryable = error.is_retryable(),
                        "record failed; SQS will redeliver it"
                    );
                }
                failures.push(RecordFailure { message_id, error });
            }
        }
    }
    failures
}

/// Waits for the mint pacer's next token before a sync-requested record (issue 12: grants stay
/// under the STS and ECR quotas), or refuses the record (redelivered) when the token would
/// come after the invocation's deadline less a margin. Other functions are not paced.
async fn pace(deps: &Deps, kind: Kind, deadline_ms: Option<u64>) -> Result<(), RecordError> {
    const MARGIN_MS: u64 = 5_000;
    let Some(pacer) = deps.pacer.as_ref().filter(|_| kind == Kind::SyncRequested) else {
        return Ok(());
    };
    loop {
        let now = ferry_core::ports::Clock::now_ms(&deps.ports.clock);
        let wait_ms = match pacer.try_take(now) {
            Ok(()) => return Ok(()),
            Err(wait_ms) => wait_ms,
        };
        if deadline_ms.is_some_and(|d| now + wait_ms + MARGIN_MS > d) {
            return Err(RecordError::Paced { wait_ms });
        }
        tracing::debug!(wait_ms, "mint paced");
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
    }
}

/// The Lambda handler body shared by the five functions.
pub async fn handle_sqs_batch(
    event: LambdaEvent<SqsEvent>,
    deps: &Deps,
    kind: Kind,
) -> Result<SqsBatchResponse, Error> {
    let records = &event.payload.records;
    // Lambda's deadline: the idempotency locks taken below last until it (plus a margin).
    let deadline = Some(event.context.deadline).filter(|d| *d > 0);
    let failures = process_records_until(deps, kind, records, deadline).await;
    tracing::info!(
        function = kind.function_name(),
        records = records.len(),
        failed = failures.len(),
        "batch done"
    );
    let mut response = SqsBatchResponse::default();
    response.set_failures(failures.into_iter().map(|f| f.message_id));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUESTED: &str = r#"{"version":1,"type":"build.requested","app":"shop","component":"web","source_ref":"v1","requested_by":"t"}"#;

    #[test]
    fn a_wrong_type_names_the_function_and_what_it_takes() {
        let err = parse_body(Kind::SyncReported, REQUESTED).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RecordError::WrongType { .. }));
        assert!(
            text.contains(
                "sync-reported function handles only sync.reported and install.heartbeat events"
            ) && text.contains("this record is a build.requested event"),
            "{text}"
        );
    }

    #[test]
    fn an_eventbridge_envelope_is_unwrapped() {
        let body = format!(
            r#"{{"version":"0","id":"e-1","source":"ferry","detail-type":"build.requested","detail":{REQUESTED}}}"#
        );
        let event = parse_body(Kind::BuildRequested, &body).unwrap().unwrap();
        assert_eq!(event.event_type(), BUILD_REQUESTED);
        assert_eq!(event.id.as_ref().map(|i| i.as_str()), Some("e-1"));
        // Derived the way the handler derives it.
        assert!(event.job().to_string().starts_with("b-"));
        assert_eq!(event.job(), event.clone().job());
    }

    #[test]
    fn codebuild_state_changes_go_to_build_completed_only() {
        let running = r#"{"id":"x","source":"aws.codebuild","detail-type":"CodeBuild Build State Change","detail":{"build-status":"IN_PROGRESS"}}"#;
        assert!(parse_body(Kind::BuildCompleted, running).unwrap().is_none());
        // Not a Ferry event for the others: a clear parse error, not a panic.
        let err = parse_body(Kind::BuildRequested, running).unwrap_err();
        assert!(matches!(err, RecordError::Malformed(_)), "{err}");
        // SUCCEEDED: ferry-build posted the result itself; nothing to do.
        let succeeded = r#"{"source":"aws.codebuild","detail":{"build-status":"SUCCEEDED"}}"#;
        assert!(parse_body(Kind::BuildCompleted, succeeded)
            .unwrap()
            .is_none());
        let no_id = r#"{"source":"aws.codebuild","detail":{"build-status":"FAILED"}}"#;
        let err = parse_body(Kind::BuildCompleted, no_id).unwrap_err();
        assert!(err.to_string().contains("FERRY_BUILD_ID"), "{err}");
    }

    #[test]
    fn the_sqs_samples_parse_in_their_function() {
        for (kind, file) in [
            (Kind::BuildRequested, "build-requested"),
            (Kind::BuildCompleted, "build-completed"),
            (Kind::SyncRequested, "sync-requested"),
            (Kind::SyncReported, "sync-reported"),
            (Kind::Release, "release"),
        ] {
            let path = format!(
                "{}/../../events/sqs/{file}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read_to_string(&path).unwrap();
            let event: SqsEvent = serde_json::from_str(&text).unwrap();
            let want_records = if kind == Kind::Release { 2 } else { 1 };
            assert_eq!(event.records.len(), want_records, "{file}");
            for (i, record) in event.records.iter().enumerate() {
                let body = record.body.as_deref().unwrap();
                let parsed = parse_body(kind, body).unwrap().unwrap();
                assert_eq!(parsed.event_type(), kind.event_types()[i], "{file}");
                // The samples form one flow: build b-000001, then its sync (in release r-000001).
                let want = match file {
                    "build-requested" | "build-completed" => "b-000001",
                    "release" => "r-000001",
                    _ => "s-3f1c2a9d0b7e4c15a8e2d6f4b9c01e7a",
                };
                assert_eq!(parsed.job().to_string(), want, "{file}");
            }
        }
    }

    #[test]
    fn the_release_function_takes_both_release_events_and_nothing_else() {
        let step =
            r#"{"version":1,"type":"release.step","release_id":"r-1","step":0,"round":0,"page":0}"#;
        assert!(parse_body(Kind::Release, step).is_ok());
        let err = parse_body(Kind::Release, REQUESTED).unwrap_err();
        assert!(
            err.to_string()
                .contains("release function handles only release.step and release.synced"),
            "{err}"
        );
        assert!(matches!(
            parse_body(Kind::SyncReported, step),
            Err(RecordError::WrongType { .. })
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for body in ["", "not json", "[]", "{\"type\":\"build.requested\"}"] {
            for kind in [
                Kind::BuildRequested,
                Kind::BuildCompleted,
                Kind::SyncRequested,
                Kind::SyncReported,
                Kind::Release,
            ] {
                assert!(parse_body(kind, body).is_err(), "{kind:?} {body:?}");
            }
        }
    }
}
