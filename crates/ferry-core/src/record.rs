//! One queue record, handled the one way both backends handle it: decode the body, dispatch the
//! event, and say what the queue should do with the message: [`RecordOutcome::Done`] (delete
//! it), [`RecordOutcome::Retry`] (leave it for redelivery) or [`RecordOutcome::DeadLetter`]
//! (this was its last allowed receive; the queue moves it to its dead-letter queue, and the job
//! it names has already recorded a `dead_lettered` error, invariant 7).
//!
//! The loops around it (ferry-local's queue worker, the Lambda functions' batch handler) only
//! receive, delete or report failures. This module must never fail or skip another record,
//! never pin a failure on a job the record contradicts, and never log a record's body.

use std::fmt;

use crate::event::{parse_event, Event, EventError, JobRef};
use crate::handlers::{dispatch, HandlerError, Outcome, Ports};
use crate::ports::{Backend, Clock as _, JobStore, WriteError};
use crate::state::JobError;

/// The code a job's error gets when its message was given up on.
pub const DEAD_LETTERED: &str = "dead_lettered";

/// One queue record as the entry point received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The queue's id of the message (logged, never the body).
    pub message_id: String,
    /// The message body: one event, raw or in an EventBridge envelope.
    pub body: Vec<u8>,
    /// SQS ApproximateReceiveCount (1 on the first receive).
    pub receive_count: u32,
}

/// The redrive policy of the queue a record came from, as its consumer knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// Receives before the queue moves a message to its dead-letter queue.
    pub max_receive_count: u32,
    /// The dead-letter queue as the job's error names it, e.g. `dead-letter queue q-dlq` or
    /// `the sync-requested function's dead-letter queue`.
    pub dlq: String,
}

impl Redrive {
    /// True when a failure now sends the record to the dead-letter queue.
    pub fn is_last_receive(&self, record: &Record) -> bool {
        record.receive_count >= self.max_receive_count
    }
}

/// Why a record failed: its body could not be decoded (`D`, the entry point's decode error),
/// or the handler failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError<D> {
    #[error(transparent)]
    Decode(D),
    #[error(transparent)]
    Handler(#[from] HandlerError),
}

impl<D> RecordError<D> {
    /// False when the record itself is suspect (it contradicts the job it names), so its
    /// failure must not be pinned on that job.
    pub fn blames_job(&self) -> bool {
        !matches!(self, RecordError::Handler(HandlerError::Mismatch { .. }))
    }
}

/// What the queue should do with a record's message.
#[derive(Debug)]
pub enum RecordOutcome<E> {
    /// Handled (or nothing to do): delete the message. `None` when the body needed no action.
    Done(Option<Outcome>),
    /// Failed; leave the message for redelivery.
    Retry(E),
    /// Failed on its last allowed receive: the queue dead-letters it, and the job it names
    /// (unless the record contradicted that job) has recorded a `dead_lettered` error.
    DeadLetter(E),
}

impl<E> RecordOutcome<E> {
    /// The failure, if the message must not be deleted.
    pub fn failure(&self) -> Option<&E> {
        match self {
            RecordOutcome::Done(_) => None,
            RecordOutcome::Retry(e) | RecordOutcome::DeadLetter(e) => Some(e),
        }
    }
}

/// The plain decoder: one Ferry event per body, raw or in an EventBridge envelope.
pub fn decode_event(body: &[u8]) -> Result<Option<Event>, EventError> {
    parse_event(body).map(Some)
}

/// Handles one record: `decode` turns its body into an event (`Ok(None)`: nothing to do),
/// then the event is dispatched. On a failure at the record's last receive under `redrive`
/// (`None`: the queue has no dead-letter queue), the job the record names is failed with a
/// `dead_lettered` error before the outcome is returned. The current span gets `event_type`
/// and `job_id` recorded, if it has those fields.
pub async fn handle_record<P: Backend, F, D>(
    ports: &Ports<P>,
    record: &Record,
    redrive: Option<&Redrive>,
    decode: F,
) -> RecordOutcome<RecordError<D>>
where
    F: FnOnce(&[u8]) -> Result<Option<Event>, D>,
    D: fmt::Display,
{
    let error = match decode(&record.body) {
        Ok(None) => return RecordOutcome::Done(None),
        Ok(Some(event)) => {
            let span = tracing::Span::current();
            span.record("event_type", event.event_type());
            span.record("job_id", event.job().id());
            // Boxed: the handlers' futures are deep, and an unboxed chain overflows rustc's
            // layout recursion limit in the binaries.
            match Box::pin(dispatch(ports, &event)).await {
                Ok(outcome) => return RecordOutcome::Done(Some(outcome)),
                Err(e) => RecordError::Handler(e),
            }
        }
        Err(e) => RecordError::Decode(e),
    };
    match redrive {
        Some(redrive) if redrive.is_last_receive(record) => {
            if error.blames_job() {
                dead_letter_job(ports, record, redrive, &error).await;
            }
            RecordOutcome::DeadLetter(error)
        }
        _ => RecordOutcome::Retry(error),
    }
}

/// Records why the record's job is given up on, so the job shows a clear error rather than
/// staying Queued or Running forever. Best effort: the message is dead-lettered regardless.
async fn dead_letter_job<P: Backend, D>(
    ports: &Ports<P>,
    record: &Record,
    redrive: &Redrive,
    failure: &RecordError<D>,
) where
    D: fmt::Display,
{
    let Some(job) = JobRef::from_body(&record.body) else {
        tracing::error!(error = %failure, "message will be dead-lettered; it names no job");
        return;
    };
    let error = JobError::new(
        DEAD_LETTERED,
        format!(
            "a message for this job failed {} times and was moved to {}: \
             {failure}; fix the cause, then resend the event (see `dlq_messages`)",
            record.receive_count, redrive.dlq
        ),
    );
    tracing::error!(job_id = job.id(), error = %failure, "message will be dead-lettered; recording the error on its job");
    if let Err(e) = fail_job(&ports.store, ports.clock.now_ms(), &job, &error).await {
        tracing::warn!(job_id = job.id(), error = %e, "could not record the dead-letter error on the job");
    }
}

/// Marks an existing, unfinished job Failed (conditionally; a few tries under contention).
async fn fail_job<S: JobStore>(
    store: &S,
    now: u64,
    job: &JobRef,
    error: &JobError,
) -> Result<(), HandlerError> {
    for _ in 0..5 {
        let r = match job {
            JobRef::Build(id) => {
                let Some(b) = store.get_build(id).await? else {
                    return Ok(());
                };
                if b.status().is_terminal() {
                    return Ok(());
                }
                store
                    .update_build(&b.fail(now, error.clone())?, b.state.expected())
                    .await
                    .map_err(|e| matches!(e, WriteError::Conflict(_)))
            }
            JobRef::Sync(id) => {
                let Some(s) = store.get_sync(id).await? else {
                    return Ok(());
                };
                if s.status().is_terminal() {
                    return Ok(());
                }
                store
                    .update_sync(&s.fail(now, error.clone(), None)?, s.state.expected())
                    .await
                    .map_err(|e| matches!(e, WriteError::Conflict(_)))
            }
            // A release is not a job that fails: it keeps its state, which `release show`
            // prints, and `release resume` re-drives it.
            JobRef::Release(_) | JobRef::Install(_) => return Ok(()),
        };
        match r {
            Ok(()) => return Ok(()),
            // A conflict: someone else wrote the job; re-read and re-decide.
            Err(true) => continue,
            Err(false) => break,
        }
    }
    Err(HandlerError::Contention {
        what: "job",
        id: job.id().to_string(),
    })
}
