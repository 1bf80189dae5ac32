//! Reporting `sync.reported` back to the IMS: over the Queue port (the install side in AWS
//! and locally: the IMS's `sync-reported` queue) or over the EventBus port.
//!
//! A report carries ids, a digest, counters and an error text; it must never carry a grant.

use std::future::Future;
use std::sync::Arc;

use ferry_core::event::Event;
use ferry_core::id::QueueName;
use ferry_core::ports::{Batch, BusError, EventBus, Queue, QueueError};

/// The queue the local bus routes `sync.reported` to, and that the IMS handler reads.
pub const SYNC_REPORTED_QUEUE: &str = "sync-reported";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("could not send sync.reported: {0}")]
    Queue(#[from] QueueError),
    #[error("could not send sync.reported: {0}")]
    Bus(#[from] BusError),
    #[error("the event bus refused sync.reported: {0}")]
    Refused(String),
    #[error("could not encode sync.reported: {0}")]
    Encode(String),
}

pub trait Reporter: Send + Sync {
    /// Sends one `sync.reported` event; `Ok` means the IMS will see it.
    fn report(&self, event: &Event) -> impl Future<Output = Result<(), ReportError>> + Send;
}

/// Sends the event JSON as one message to a queue (by default [`SYNC_REPORTED_QUEUE`]).
pub struct QueueReporter<Q> {
    queue: Arc<Q>,
    name: QueueName,
}

impl<Q: Queue> QueueReporter<Q> {
    pub fn new(queue: Arc<Q>, name: QueueName) -> QueueReporter<Q> {
        QueueReporter { queue, name }
    }
}

impl<Q: Queue> Reporter for QueueReporter<Q> {
    async fn report(&self, event: &Event) -> Result<(), ReportError> {
        let body = serde_json::to_string(event).map_err(|e| ReportError::Encode(e.to_string()))?;
        self.queue.send(&self.name, &body).await?;
        Ok(())
    }
}

/// Puts the event on an event bus (EventBridge in AWS, the in-process bus locally).
pub struct BusReporter<B> {
    bus: Arc<B>,
}

impl<B: EventBus> BusReporter<B> {
    pub fn new(bus: Arc<B>) -> BusReporter<B> {
        BusReporter { bus }
    }
}

impl<B: EventBus> Reporter for BusReporter<B> {
    async fn report(&self, event: &Event) -> Result<(), ReportError> {
        let batch =
            Batch::new(vec![event.clone()]).map_err(|e| ReportError::Encode(e.to_string()))?;
        let results = self.bus.put_events(&batch).await?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(()),
            Some(Err(f)) => Err(ReportError::Refused(f.to_string())),
            None => Err(ReportError::Refused("the bus answered no entry".into())),
        }
    }
}
