//! Queue workers: the local stand-in for the SQS-triggered Lambda functions of the IMS.
//!
//! `run_queue_worker` long-polls one IMS queue in batches of up to 10 and hands each record to
//! ferry-core's `process_batch` + `handlers::dispatch`. Succeeded records are deleted; failed ones
//! are left to reappear after the visibility timeout (partial batch failure), with their error
//! noted on the message, so a poison message reaches the dead-letter queue after N receives. On
//! the last receive the job the message names, if any, records a `dead_lettered` error.
//! `LocalIms` bundles the ports and runs one worker per queue. This module must never delete a
//! message whose handling failed, and never let one record's failure stop the others.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use ferry_core::event::{Event, Payload};
use ferry_core::handlers::{self, Config, HandlerError, Ports};
use ferry_core::id::{AppName, BuildId, ComponentName, QueueName, SyncId};
use ferry_core::ports::{
    Batch, Builder, Clock, GrantMinter, IdGenerator, JobStore, Queue, QueueError, ReceiptHandle,
    ReceiveOptions, ReceivedMessage, WriteError, MAX_BATCH, MAX_WAIT_SECONDS,
};
use ferry_core::state::JobError;
use ferry_core::trust::VendorKey;
use ferry_core::{process_batch, Record};

use crate::bus::{ims_queues, LocalBus};
use crate::clock::{RandomIds, SystemClock};
use crate::db::Db;
use crate::queue::{QueueConfig, SqliteQueue};
use crate::store::SqliteStore;

/// The handlers' ports on the local backend.
pub type ImsPorts<B, G, C> = Ports<SqliteStore, SqliteQueue, LocalBus<SqliteQueue>, B, G, C>;

/// The code a job's error gets when its message was given up on.
pub const DEAD_LETTERED: &str = "dead_lettered";

/// The dead-letter queue of an IMS queue.
pub fn dlq_name(queue: &QueueName) -> Result<QueueName, QueueError> {
    QueueName::new(format!("{queue}-dlq")).map_err(|e| QueueError::Invalid {
        message: e.to_string(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerOptions {
    /// Long-poll wait per receive (≤ 20 s); shutdown interrupts it.
    pub wait_seconds: u32,
    pub max_messages: u32,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            wait_seconds: MAX_WAIT_SECONDS,
            max_messages: MAX_BATCH as u32,
        }
    }
}

/// What one worker did before it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStats {
    pub received: u64,
    pub succeeded: u64,
    pub failed: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs until `shutdown` turns true. Returns an error only when the queue cannot be served at
/// all (it does not exist, or its settings are invalid); outages are logged and retried.
pub async fn run_queue_worker<B, G, C>(
    queue: QueueName,
    ports: Arc<ImsPorts<B, G, C>>,
    options: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<WorkerStats, QueueError>
where
    B: Builder,
    G: GrantMinter,
    C: Clock,
{
    let config = ports.queue.queue_config(&queue).await?;
    let visibility = u32::try_from(config.visibility_timeout.as_secs().max(1)).unwrap_or(u32::MAX);
    let receive = ReceiveOptions::new(
        options.max_messages.clamp(1, MAX_BATCH as u32),
        options.wait_seconds.min(MAX_WAIT_SECONDS),
        visibility,
    )?;
    let mut stats = WorkerStats::default();
    tracing::info!(queue = %queue, visibility_s = visibility, max_receive_count = config.max_receive_count, "queue worker started");
    // A dropped sender counts as shutdown, so an orphaned worker cannot spin.
    while !*shutdown.borrow() && shutdown.has_changed().is_ok() {
        let messages = match ports
            .queue
            .receive_until(&queue, &receive, Some(shutdown.clone()))
            .await
        {
            Ok(m) => m,
            Err(e @ QueueError::Unavailable { .. }) => {
                tracing::warn!(queue = %queue, error = %e, "receive failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if messages.is_empty() {
            continue;
        }
        stats.received += messages.len() as u64;
        let (ok, failed) = process_messages(&ports, &queue, &config, messages).await;
        stats.succeeded += ok;
        stats.failed += failed;
    }
    tracing::info!(queue = %queue, ?stats, "queue worker stopped");
    Ok(stats)
}

/// Handles one received batch; returns (succeeded, failed).
async fn process_messages<B, G, C>(
    ports: &ImsPorts<B, G, C>,
    queue: &QueueName,
    config: &QueueConfig,
    messages: Vec<ReceivedMessage>,
) -> (u64, u64)
where
    B: Builder,
    G: GrantMinter,
    C: Clock,
{
    let mut done: Vec<ReceiptHandle> = Vec::new();
    let mut failed = 0u64;
    for msg in messages {
        let span = tracing::info_span!(
            "ims.message",
            queue = %queue,
            message_id = %msg.message_id.0,
            receive_count = msg.receive_count,
            event_type = tracing::field::Empty,
            job_id = tracing::field::Empty,
        );
        let outcome = handle_one(ports, &msg, span.clone())
            .instrument(span.clone())
            .await;
        match outcome {
            Ok(()) => done.push(msg.receipt_handle),
            Err(failure) => {
                failed += 1;
                give_back(ports, queue, config, &msg, &failure)
                    .instrument(span)
                    .await;
            }
        }
    }
    let succeeded = done.len() as u64;
    for batch in Batch::chunks(done) {
        match ports.queue.delete_batch(queue, &batch).await {
            Ok(results) => {
                for r in results.iter().filter_map(|r| r.as_ref().err()) {
                    // The message will be redelivered; the handlers make that a no-op.
                    tracing::warn!(queue = %queue, error = %r, "could not delete a handled message");
                }
            }
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, "could not delete handled messages")
            }
        }
    }
    (succeeded, failed)
}

/// Why one record failed.
struct Failure {
    message: String,
    /// False when the record itself is suspect (it contradicts the job), so its failure must
    /// not be pinned on the job it names.
    blames_job: bool,
}

async fn handle_one<B, G, C>(
    ports: &ImsPorts<B, G, C>,
    msg: &ReceivedMessage,
    span: tracing::Span,
) -> Result<(), Failure>
where
    B: Builder,
    G: GrantMinter,
    C: Clock,
{
    let record = Record {
        message_id: msg.message_id.0.clone(),
        body: msg.body.clone().into_bytes(),
        receive_count: msg.receive_count,
    };
    let error: Mutex<Option<Failure>> = Mutex::new(None);
    let result = process_batch(std::slice::from_ref(&record), |event: Event| {
        span.record("event_type", event.event_type());
        if let Some(job) = job_of_event(&event) {
            span.record("job_id", job.id());
        }
        let error = &error;
        async move {
            let r = handlers::dispatch(ports, &event).await;
            if let Err(e) = &r {
                *lock(error) = Some(Failure {
                    message: e.to_string(),
                    blames_job: !matches!(e, HandlerError::Mismatch { .. }),
                });
            }
            r
        }
    })
    .await;
    if result.failed_message_ids.is_empty() {
        return Ok(());
    }
    let handler_error = lock(&error).take();
    Err(handler_error.unwrap_or_else(|| Failure {
        // The handler never ran, so the record did not parse: say why.
        message: ferry_core::parse_event(&record.body)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "the record could not be handled".into()),
        blames_job: true,
    }))
}

/// Leaves a failed message for redelivery, noting why; on its last allowed receive, records the
/// error on the job it names.
async fn give_back<B, G, C>(
    ports: &ImsPorts<B, G, C>,
    queue: &QueueName,
    config: &QueueConfig,
    msg: &ReceivedMessage,
    failure: &Failure,
) where
    B: Builder,
    G: GrantMinter,
    C: Clock,
{
    if let Err(e) = ports
        .queue
        .note_failure(queue, &msg.receipt_handle, &failure.message)
        .await
    {
        tracing::warn!(error = %e, "could not note the failure on the message");
    }
    let last_receive = config.dlq.is_some() && msg.receive_count >= config.max_receive_count;
    if !last_receive || !failure.blames_job {
        return;
    }
    let Some(job) = job_of_body(&msg.body) else {
        tracing::error!(error = %failure.message, "message will be dead-lettered; it names no job");
        return;
    };
    let dlq = config
        .dlq
        .as_ref()
        .map(|q| q.to_string())
        .unwrap_or_default();
    let error = JobError::new(
        DEAD_LETTERED,
        format!(
            "a message for this job failed {} times and was moved to dead-letter queue {dlq}: {}; \
             fix the cause, then resend the event (see `dlq_messages`)",
            msg.receive_count, failure.message
        ),
    );
    tracing::error!(job_id = job.id(), error = %failure.message, "message will be dead-lettered; recording the error on its job");
    if let Err(e) = fail_job(&ports.store, ports.clock.now_ms(), &job, &error).await {
        tracing::warn!(job_id = job.id(), error = %e, "could not record the dead-letter error on the job");
    }
}

/// The job a message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
enum JobRef {
    Build(BuildId),
    Sync(SyncId),
}

impl JobRef {
    fn id(&self) -> &str {
        match self {
            JobRef::Build(b) => b.as_str(),
            JobRef::Sync(s) => s.as_str(),
        }
    }
}

fn job_of_event(event: &Event) -> Option<JobRef> {
    Some(match &event.payload {
        Payload::BuildRequested(ev) => JobRef::Build(
            ev.build_id
                .clone()
                .unwrap_or_else(|| BuildId::derived_from(&event.idempotency_key())),
        ),
        Payload::BuildCompleted(ev) => JobRef::Build(ev.build_id.clone()),
        Payload::SyncRequested(ev) => JobRef::Sync(ev.sync_id.clone()),
        Payload::SyncReported(ev) => JobRef::Sync(ev.sync_id.clone()),
    })
}

/// Best effort on a body that may not parse: a valid `sync_id`, else a valid `build_id`, at the
/// top level or in an EventBridge `detail`.
fn job_of_body(body: &str) -> Option<JobRef> {
    if let Ok(event) = ferry_core::parse_event(body.as_bytes()) {
        return job_of_event(&event);
    }
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let v = v.get("detail").filter(|d| d.is_object()).unwrap_or(&v);
    let field = |name: &str| v.get(name).and_then(serde_json::Value::as_str);
    if let Some(s) = field("sync_id").and_then(|s| SyncId::new(s).ok()) {
        return Some(JobRef::Sync(s));
    }
    field("build_id")
        .and_then(|b| BuildId::new(b).ok())
        .map(JobRef::Build)
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
        };
        match r {
            Ok(()) => return Ok(()),
            Err(true) => continue,
            Err(false) => {
                return Err(HandlerError::Contention {
                    what: "job",
                    id: job.id().to_string(),
                })
            }
        }
    }
    Err(HandlerError::Contention {
        what: "job",
        id: job.id().to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// LocalIms

/// Settings of the local IMS queues and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImsOptions {
    /// Per IMS queue; at least six times a handler's run time (the Lambda rule).
    pub visibility_timeout: Duration,
    /// Receives before a message is redriven to `<queue>-dlq`.
    pub max_receive_count: u32,
    pub worker: WorkerOptions,
    pub handlers: Config,
}

impl Default for ImsOptions {
    fn default() -> Self {
        ImsOptions {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: crate::queue::DEFAULT_MAX_RECEIVE_COUNT,
            worker: WorkerOptions::default(),
            handlers: Config::default(),
        }
    }
}

/// The whole IMS on one machine: SQLite store and queues, the in-process bus, and a worker per
/// IMS queue running ferry-core's handlers with builder `B` and grant minter `G`.
pub struct LocalIms<B, G, C = SystemClock, I = RandomIds> {
    ports: Arc<ImsPorts<B, G, C>>,
    ids: I,
    options: ImsOptions,
}

impl<B, G, C, I> LocalIms<B, G, C, I>
where
    B: Builder + 'static,
    G: GrantMinter + 'static,
    C: Clock + 'static,
    I: IdGenerator,
{
    /// Wires the ports over `db` and creates the IMS queues and their dead-letter queues.
    /// `vendor_key` signs the job messages and keys the sync ids (see `ferry_core::trust`).
    pub async fn new(
        db: Db,
        builder: B,
        minter: G,
        clock: C,
        ids: I,
        options: ImsOptions,
        vendor_key: Arc<VendorKey>,
    ) -> Result<Self, QueueError> {
        let queue = SqliteQueue::new(db.clone());
        for name in ims_queues() {
            let dlq = dlq_name(&name)?;
            queue
                .create_queue(
                    &dlq,
                    QueueConfig {
                        visibility_timeout: options.visibility_timeout,
                        ..QueueConfig::default()
                    },
                )
                .await?;
            queue
                .create_queue(
                    &name,
                    QueueConfig {
                        visibility_timeout: options.visibility_timeout,
                        max_receive_count: options.max_receive_count,
                        dlq: Some(dlq),
                    },
                )
                .await?;
        }
        let ports = Ports {
            store: SqliteStore::new(db),
            bus: LocalBus::new(queue.clone()),
            queue,
            builder,
            minter,
            clock,
            config: options.handlers,
            vendor_key,
        };
        Ok(LocalIms {
            ports: Arc::new(ports),
            ids,
            options,
        })
    }

    pub fn ports(&self) -> &Arc<ImsPorts<B, G, C>> {
        &self.ports
    }

    pub fn store(&self) -> &SqliteStore {
        &self.ports.store
    }

    pub fn queue(&self) -> &SqliteQueue {
        &self.ports.queue
    }

    pub fn bus(&self) -> &LocalBus<SqliteQueue> {
        &self.ports.bus
    }

    /// Publishes build.requested with a fresh build id (see `handlers::request_build`).
    pub async fn request_build(
        &self,
        app: AppName,
        component: ComponentName,
        source_ref: String,
        requested_by: String,
    ) -> Result<BuildId, HandlerError> {
        handlers::request_build(
            &self.ports.bus,
            &self.ids,
            app,
            component,
            source_ref,
            requested_by,
        )
        .await
    }

    /// Starts one worker per IMS queue on the current runtime.
    pub fn spawn(&self) -> RunningIms {
        let (tx, rx) = watch::channel(false);
        let workers = ims_queues()
            .into_iter()
            .map(|name| {
                let handle = tokio::spawn(run_queue_worker(
                    name.clone(),
                    self.ports.clone(),
                    self.options.worker,
                    rx.clone(),
                ));
                (name, handle)
            })
            .collect();
        RunningIms {
            shutdown: tx,
            workers,
        }
    }
}

/// Running workers; `shutdown` stops them between batches.
pub struct RunningIms {
    shutdown: watch::Sender<bool>,
    workers: Vec<(QueueName, JoinHandle<Result<WorkerStats, QueueError>>)>,
}

impl RunningIms {
    /// Stops every worker (an in-progress batch finishes first) and returns what each did.
    pub async fn shutdown(self) -> Vec<(QueueName, Result<WorkerStats, QueueError>)> {
        // Only fails when every receiver is gone, i.e. the workers already stopped.
        let _ = self.shutdown.send(true);
        let mut out = Vec::new();
        for (name, handle) in self.workers {
            let r = handle.await.unwrap_or_else(|e| {
                Err(QueueError::Unavailable {
                    message: format!("worker task failed: {e}"),
                })
            });
            out.push((name, r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_found_in_bodies_that_do_not_parse() {
        let bad_digest = r#"{"version":1,"type":"build.completed","build_id":"b-7","status":"succeeded","digest":"sha256:nothex","repository":"shop/web"}"#;
        assert!(ferry_core::parse_event(bad_digest.as_bytes()).is_err());
        assert_eq!(
            job_of_body(bad_digest),
            Some(JobRef::Build(BuildId::new("b-7").unwrap()))
        );
        let wrapped = r#"{"detail-type":"x","detail":{"sync_id":"s-1","build_id":"b-1"}}"#;
        assert_eq!(
            job_of_body(wrapped),
            Some(JobRef::Sync(SyncId::new("s-1").unwrap()))
        );
        assert_eq!(job_of_body("not json"), None);
        assert_eq!(job_of_body(r#"{"build_id":"bad id!"}"#), None);
    }
}
