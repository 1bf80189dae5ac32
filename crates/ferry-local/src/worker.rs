//! Queue workers: the local stand-in for the SQS-triggered Lambda functions of the IMS.
//!
//! `run_queue_worker` long-polls one IMS queue in batches of up to 10 and hands each record to
//! ferry-core's `handle_record` (the same record path the Lambda functions use). Succeeded
//! records are deleted; failed ones are left to reappear after the visibility timeout (partial
//! batch failure), with their error noted on the message, so a poison message reaches the
//! dead-letter queue after N receives. On the last receive `handle_record` has the job the
//! message names, if any, record a `dead_lettered` error.
//! `LocalIms` bundles the ports and runs one worker per queue. This module must never delete a
//! message whose handling failed, and never let one record's failure stop the others.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use ferry_core::handlers::{self, Config, HandlerError, Ports};
use ferry_core::id::{AppName, BuildId, ComponentName, QueueName};
use ferry_core::ports::{
    Backend, Batch, Builder, Clock, GrantMinter, IdGenerator, Queue, QueueError, ReceiptHandle,
    ReceiveOptions, ReceivedMessage, MAX_BATCH, MAX_WAIT_SECONDS,
};
use ferry_core::reconcile::{reconcile, ReconcileConfig, ReconcileReport};
use ferry_core::record::{
    decode_event, handle_record, Record, RecordError, RecordOutcome, Redrive,
};
use ferry_core::trust::VendorKey;
use ferry_core::EventError;

use crate::bus::{ims_queues, LocalBus};
use crate::clock::{RandomIds, SystemClock};
use crate::db::Db;
use crate::queue::{QueueConfig, SqliteQueue};
use crate::store::SqliteStore;

/// The local backend: SQLite store and queues and the in-process bus, with builder `B`, grant
/// minter `G` and clock `C` chosen by the caller (`ferry dev`, tests).
pub struct Local<B, G, C>(PhantomData<Markers<B, G, C>>);

/// `fn() -> ..`: the marker owns none of its parameters, so it is always `Send + Sync`.
type Markers<B, G, C> = fn() -> (B, G, C);

impl<B: Builder, G: GrantMinter, C: Clock> Backend for Local<B, G, C> {
    type Store = SqliteStore;
    type Queue = SqliteQueue;
    type Bus = LocalBus<SqliteQueue>;
    type Builder = B;
    type Minter = G;
    type Clock = C;
}

/// The handlers' ports on the local backend.
pub type ImsPorts<B, G, C> = Ports<Local<B, G, C>>;

/// The code a job's error gets when its message was given up on (defined in ferry-core).
pub use ferry_core::record::DEAD_LETTERED;

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

/// Creates (idempotently) the IMS queues and their dead-letter queues, as `LocalIms::new` does.
pub async fn create_ims_queues(
    queue: &SqliteQueue,
    visibility_timeout: std::time::Duration,
    max_receive_count: u32,
) -> Result<(), QueueError> {
    for name in ims_queues() {
        let dlq = dlq_name(&name)?;
        queue
            .create_queue(
                &dlq,
                QueueConfig {
                    visibility_timeout,
                    ..QueueConfig::default()
                },
            )
            .await?;
        queue
            .create_queue(
                &name,
                QueueConfig {
                    visibility_timeout,
                    max_receive_count,
                    dlq: Some(dlq),
                },
            )
            .await?;
    }
    Ok(())
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

/// Handles one received batch through ferry-core's `handle_record`; returns (succeeded, failed).
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
    let redrive = config.dlq.as_ref().map(|dlq| Redrive {
        max_receive_count: config.max_receive_count,
        dlq: format!("dead-letter queue {dlq}"),
    });
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
        let record = Record {
            message_id: msg.message_id.0.clone(),
            body: msg.body.clone().into_bytes(),
            receive_count: msg.receive_count,
        };
        let outcome = handle_record(ports, &record, redrive.as_ref(), decode_event)
            .instrument(span.clone())
            .await;
        match outcome {
            RecordOutcome::Done(outcome) => {
                let _entered = span.enter();
                tracing::info!(?outcome, "handled event");
                done.push(msg.receipt_handle);
            }
            RecordOutcome::Retry(error) | RecordOutcome::DeadLetter(error) => {
                failed += 1;
                give_back(ports, queue, &msg, &error).instrument(span).await;
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

/// Leaves a failed message for redelivery (or the dead-letter queue), noting why on it.
async fn give_back<B, G, C>(
    ports: &ImsPorts<B, G, C>,
    queue: &QueueName,
    msg: &ReceivedMessage,
    error: &RecordError<EventError>,
) where
    B: Builder,
    G: GrantMinter,
    C: Clock,
{
    tracing::warn!(
        error = %error,
        retryable = matches!(error, RecordError::Handler(e) if e.is_retryable()),
        "event handling failed"
    );
    if let Err(e) = ports
        .queue
        .note_failure(queue, &msg.receipt_handle, &error.to_string())
        .await
    {
        tracing::warn!(error = %e, "could not note the failure on the message");
    }
}

// ---------------------------------------------------------------------------------------------
// LocalIms

/// How often `ferry dev`'s reconciler runs unless told otherwise (the AWS schedule's rate).
pub const DEFAULT_RECONCILE_EVERY: Duration = Duration::from_secs(5 * 60);

/// Settings of the local IMS queues and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImsOptions {
    /// Per IMS queue; at least six times a handler's run time (the Lambda rule).
    pub visibility_timeout: Duration,
    /// Receives before a message is redriven to `<queue>-dlq`.
    pub max_receive_count: u32,
    pub worker: WorkerOptions,
    pub handlers: Config,
    /// How often the reconciler runs (`None`: never; the local stand-in for the AWS stack's
    /// EventBridge schedule). Its deadlines are measured with the IMS's clock.
    pub reconcile_every: Option<Duration>,
    /// The reconciler's deadlines and bounds per pass.
    pub reconcile: ReconcileConfig,
}

impl Default for ImsOptions {
    fn default() -> Self {
        ImsOptions {
            visibility_timeout: Duration::from_secs(30),
            max_receive_count: crate::queue::DEFAULT_MAX_RECEIVE_COUNT,
            worker: WorkerOptions::default(),
            handlers: Config::default(),
            reconcile_every: Some(DEFAULT_RECONCILE_EVERY),
            reconcile: ReconcileConfig::default(),
        }
    }
}

/// The whole IMS on one machine: SQLite store and queues, the in-process bus, and a worker per
/// IMS queue running ferry-core's handlers with builder `B` and grant minter `G`.
pub struct LocalIms<B: Builder, G: GrantMinter, C: Clock = SystemClock, I = RandomIds> {
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
        create_ims_queues(
            &queue,
            options.visibility_timeout,
            options.max_receive_count,
        )
        .await?;
        let ports: ImsPorts<B, G, C> = Ports {
            store: SqliteStore::new(db),
            bus: LocalBus::new(queue.clone()),
            queue,
            builder,
            minter,
            clock,
            config: options.handlers,
            vendor_key,
            release_queue: QueueName::new(crate::bus::RELEASE_QUEUE).map_err(|e| {
                QueueError::Invalid {
                    message: e.to_string(),
                }
            })?,
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

    /// One reconciler pass now (what the timer runs): stuck syncs re-driven or failed, stuck
    /// release steps re-tallied (see `ferry_core::reconcile`).
    pub async fn reconcile_once(&self) -> Result<ReconcileReport, HandlerError> {
        reconcile(&self.ports, &self.options.reconcile).await
    }

    /// Starts one worker per IMS queue on the current runtime, and the reconciler's timer
    /// when `reconcile_every` is set.
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
        let reconciler = self.options.reconcile_every.map(|every| {
            tokio::spawn(run_reconciler(
                self.ports.clone(),
                self.options.reconcile,
                every,
                rx.clone(),
            ))
        });
        RunningIms {
            shutdown: tx,
            workers,
            reconciler,
        }
    }
}

/// Runs a reconciler pass every `every` until shutdown; a failed pass is logged and the next
/// one tries again (every action of a pass is idempotent).
async fn run_reconciler<B, G, C>(
    ports: Arc<ImsPorts<B, G, C>>,
    config: ReconcileConfig,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) where
    B: Builder + 'static,
    G: GrantMinter + 'static,
    C: Clock + 'static,
{
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticks.tick() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = reconcile(&ports, &config)
            .instrument(tracing::info_span!("reconcile"))
            .await
        {
            tracing::warn!(error = %e, "reconciler pass failed; the next one retries");
        }
    }
}

/// Running workers; `shutdown` stops them between batches.
pub struct RunningIms {
    shutdown: watch::Sender<bool>,
    workers: Vec<(QueueName, JoinHandle<Result<WorkerStats, QueueError>>)>,
    reconciler: Option<JoinHandle<()>>,
}

impl RunningIms {
    /// Stops every worker (an in-progress batch finishes first) and returns what each did.
    pub async fn shutdown(self) -> Vec<(QueueName, Result<WorkerStats, QueueError>)> {
        // Only fails when every receiver is gone, i.e. the workers already stopped.
        let _ = self.shutdown.send(true);
        if let Some(r) = self.reconciler {
            // A panicked pass has nothing left to clean up.
            let _ = r.await;
        }
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
