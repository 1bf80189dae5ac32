//! `MemBus`: an event bus fake that records every `put_events` call and can fail some
//! entries once. Tests only.

use std::sync::{Arc, Mutex};

use super::lock;
use crate::event::Event;
use crate::ports::{Batch, BusError, EntryFailure, EventBus};

// ---------------------------------------------------------------------------------------------
// EventBus, Builder, GrantMinter

#[derive(Debug, Default)]
struct BusState {
    calls: Vec<Vec<Event>>,
    fail_entries: usize,
}

/// Records every put_events call; can fail some entries once.
#[derive(Debug, Clone, Default)]
pub struct MemBus(Arc<Mutex<BusState>>);

impl MemBus {
    /// Each call's events, in order (failed entries included).
    pub fn calls(&self) -> Vec<Vec<Event>> {
        lock(&self.0).calls.clone()
    }

    /// All published events that were accepted, in order.
    pub fn accepted(&self) -> Vec<Event> {
        lock(&self.0).calls.iter().flatten().cloned().collect()
    }

    /// Rejects the next `n` entries (as a throttled bus would).
    pub fn fail_next_entries(&self, n: usize) {
        lock(&self.0).fail_entries = n;
    }
}

impl EventBus for MemBus {
    async fn put_events(
        &self,
        events: &Batch<Event>,
    ) -> Result<Vec<Result<String, EntryFailure>>, BusError> {
        let mut s = lock(&self.0);
        let mut accepted = Vec::new();
        let mut results = Vec::new();
        for ev in events.items() {
            if s.fail_entries > 0 {
                s.fail_entries -= 1;
                results.push(Err(EntryFailure {
                    code: "ThrottlingException".into(),
                    message: "injected entry failure".into(),
                    sender_fault: false,
                }));
            } else {
                accepted.push(ev.clone());
                results.push(Ok(format!("bus-{}", s.calls.len())));
            }
        }
        s.calls.push(accepted);
        Ok(results)
    }
}
