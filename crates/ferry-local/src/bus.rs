//! `LocalBus`: ferry-core's `EventBus` in process, routing each event by type to its queue as
//! EventBridge rules feed SQS queues in AWS.
//!
//! The routing is a fixed table (`ROUTES`): one queue per event type, drained by one worker.
//! Each entry of a `put_events` call is routed and sent on its own, so a failure stays with its
//! entry. This module must never drop an event silently: an event without a route, or whose
//! queue refuses it, is a failed entry the caller sees.

use ferry_core::event::{
    Event, BUILD_COMPLETED, BUILD_REQUESTED, INSTALL_HEARTBEAT, RELEASE_STEP, RELEASE_SYNCED,
    SYNC_REPORTED, SYNC_REQUESTED,
};
use ferry_core::id::QueueName;
use ferry_core::ports::{Batch, BusError, EntryFailure, EventBus, Queue};

pub const BUILD_REQUESTED_QUEUE: &str = "build-requested";
pub const BUILD_COMPLETED_QUEUE: &str = "build-completed";
pub const SYNC_REQUESTED_QUEUE: &str = "sync-requested";
pub const SYNC_REPORTED_QUEUE: &str = "sync-reported";
/// Release step timers (sent to it with a delay) and the end of each release sync.
pub const RELEASE_QUEUE: &str = "release";

/// Event type → queue (the EventBridge rules of the AWS stack).
pub const ROUTES: &[(&str, &str)] = &[
    (BUILD_REQUESTED, BUILD_REQUESTED_QUEUE),
    (BUILD_COMPLETED, BUILD_COMPLETED_QUEUE),
    (SYNC_REQUESTED, SYNC_REQUESTED_QUEUE),
    (SYNC_REPORTED, SYNC_REPORTED_QUEUE),
    (RELEASE_STEP, RELEASE_QUEUE),
    (RELEASE_SYNCED, RELEASE_QUEUE),
    // Heartbeats share the agents' report path (and its authentication).
    (INSTALL_HEARTBEAT, SYNC_REPORTED_QUEUE),
];

/// The queue an event type is routed to.
pub fn route(event_type: &str) -> Option<&'static str> {
    ROUTES
        .iter()
        .find(|(t, _)| *t == event_type)
        .map(|(_, q)| *q)
}

/// The IMS queues, in routing order, each once.
pub fn ims_queues() -> Vec<QueueName> {
    let mut out: Vec<QueueName> = Vec::new();
    for q in ROUTES.iter().filter_map(|(_, q)| QueueName::new(*q).ok()) {
        if !out.contains(&q) {
            out.push(q);
        }
    }
    out
}

/// An event bus that delivers into queues of `Q` (cheap to clone when `Q` is).
#[derive(Debug, Clone)]
pub struct LocalBus<Q> {
    queue: Q,
}

impl<Q: Queue> LocalBus<Q> {
    pub fn new(queue: Q) -> LocalBus<Q> {
        LocalBus { queue }
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    async fn put_one(&self, event: &Event) -> Result<String, EntryFailure> {
        let event_type = event.event_type();
        let target = route(event_type)
            .and_then(|q| QueueName::new(q).ok())
            .ok_or_else(|| EntryFailure {
                code: "NoRoute".into(),
                message: format!("no queue is routed for event type {event_type}"),
                sender_fault: true,
            })?;
        let body = event.to_json().map_err(|e| EntryFailure {
            code: "InvalidEvent".into(),
            message: format!("could not encode the {event_type} event: {e}"),
            sender_fault: true,
        })?;
        match self.queue.send(&target, &body).await {
            Ok(id) => Ok(id.0),
            Err(e) => Err(EntryFailure {
                code: "DeliveryFailed".into(),
                message: format!("could not deliver {event_type} to queue {target}: {e}"),
                // A missing queue or an outage may be fixed by starting the IMS; retryable.
                sender_fault: matches!(e, ferry_core::ports::QueueError::Invalid { .. }),
            }),
        }
    }
}

impl<Q: Queue> EventBus for LocalBus<Q> {
    async fn put_events(
        &self,
        events: &Batch<Event>,
    ) -> Result<Vec<Result<String, EntryFailure>>, BusError> {
        let mut out = Vec::with_capacity(events.len());
        for event in events.items() {
            let result = self.put_one(event).await;
            if let Err(f) = &result {
                tracing::warn!(event_type = event.event_type(), code = %f.code, error = %f.message, "event not delivered");
            }
            out.push(result);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::event::{Payload, SyncRequested};
    use ferry_core::id::{BuildId, Digest, InstallId, Repository, SyncId};
    use ferry_core::testing::{ManualClock, MemQueue};

    fn sync_requested(n: u8) -> Event {
        Event::new(Payload::SyncRequested(SyncRequested {
            sync_id: SyncId::new(format!("s-{n}")).unwrap(),
            build_id: BuildId::new("b-1").unwrap(),
            install_id: InstallId::new("i-1").unwrap(),
            repository: Repository::new("shop/web").unwrap(),
            digest: Digest::new(format!("sha256:{}", "a".repeat(64))).unwrap(),
            release_id: None,
            context: None,
        }))
    }

    #[test]
    fn every_event_type_has_a_distinct_route() {
        for t in [
            BUILD_REQUESTED,
            BUILD_COMPLETED,
            SYNC_REQUESTED,
            SYNC_REPORTED,
            RELEASE_STEP,
            RELEASE_SYNCED,
        ] {
            assert!(route(t).is_some(), "{t} has no route");
        }
        let mut qs: Vec<_> = ims_queues();
        qs.sort();
        qs.dedup();
        assert_eq!(qs.len(), 5, "{qs:?}");
        assert_eq!(route("sync.job"), None);
    }

    #[tokio::test]
    async fn events_land_on_their_queue_and_failures_stay_per_entry() {
        let queue = MemQueue::new(ManualClock::new(0));
        let bus = LocalBus::new(queue.clone());
        // Without the queue, the entry fails but the call does not.
        let batch = Batch::new(vec![sync_requested(1)]).unwrap();
        let r = bus.put_events(&batch).await.unwrap();
        assert!(
            matches!(&r[0], Err(f) if f.code == "DeliveryFailed" && f.message.contains("sync-requested"))
        );

        let target = QueueName::new(SYNC_REQUESTED_QUEUE).unwrap();
        queue.create_queue(&target);
        queue.fail_next_sends(1);
        let batch = Batch::new(vec![sync_requested(2), sync_requested(3)]).unwrap();
        let r = bus.put_events(&batch).await.unwrap();
        assert!(
            r[0].is_err(),
            "the injected failure hits the first entry only"
        );
        assert!(r[1].is_ok());
        let bodies = queue.bodies(&target);
        assert_eq!(bodies.len(), 1);
        let ev = ferry_core::parse_event(bodies[0].as_bytes()).unwrap();
        assert_eq!(ev, sync_requested(3));
    }
}
