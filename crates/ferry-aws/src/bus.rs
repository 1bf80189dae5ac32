//! `EventBridgeBus`: ferry-core's `EventBus` on EventBridge `PutEvents`.
//!
//! Each event goes out with source `ferry` (or the source given to
//! [`EventBridgeBus::with_source`]: `ferry-build` posts under [`crate::builder::BUILD_SOURCE`]),
//! detail-type = the event type and detail = the
//! event's JSON, so rules can match on the type and handlers parse the detail with
//! `ferry_core::parse_event`. This module must never put a grant into an event: events carry
//! ids and digests only.

use aws_config::SdkConfig;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;

use ferry_core::ports::{Batch, BusError, EntryFailure, EventBus};
use ferry_core::Event;

use crate::error::describe;

/// The `source` of every event Ferry publishes.
pub const SOURCE: &str = "ferry";
/// The environment variable that names the bus (set by the SAM template).
pub const BUS_ENV: &str = "FERRY_EVENT_BUS";

/// Entry error codes EventBridge documents as retryable; anything else is the sender's fault.
const RETRYABLE_ENTRY_CODES: &[&str] = &[
    "InternalFailure",
    "ThrottlingException",
    "InternalException",
];

#[derive(Clone, Debug)]
pub struct EventBridgeBus {
    client: Client,
    bus: String,
    source: &'static str,
}

impl EventBridgeBus {
    /// `bus` is the bus name or ARN (`default` for the account's default bus).
    pub fn new(config: &SdkConfig, bus: impl Into<String>) -> EventBridgeBus {
        EventBridgeBus::from_client(Client::new(config), bus)
    }

    pub fn from_client(client: Client, bus: impl Into<String>) -> EventBridgeBus {
        EventBridgeBus {
            client,
            bus: bus.into(),
            source: SOURCE,
        }
    }

    /// The same bus, publishing under another `source` (rules and the bus policy match on it).
    pub fn with_source(mut self, source: &'static str) -> EventBridgeBus {
        self.source = source;
        self
    }

    /// The `source` every event goes out with.
    pub fn source(&self) -> &'static str {
        self.source
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bus(&self) -> &str {
        &self.bus
    }
}

impl EventBus for EventBridgeBus {
    async fn put_events(
        &self,
        events: &Batch<Event>,
    ) -> Result<Vec<Result<String, EntryFailure>>, BusError> {
        // A Batch holds at most 10 entries, the PutEvents limit, so one call per batch.
        let mut req = self.client.put_events();
        for e in events.items() {
            let detail = e.to_json().map_err(|err| BusError::Invalid {
                message: format!("{} event does not encode: {err}", e.event_type()),
            })?;
            req = req.entries(
                PutEventsRequestEntry::builder()
                    .source(self.source)
                    .detail_type(e.event_type())
                    .detail(detail)
                    .event_bus_name(&self.bus)
                    .build(),
            );
        }
        let out = req.send().await.map_err(|e| {
            let f = describe("EventBridge", "PutEvents", &e);
            if f.transient {
                BusError::Unavailable { message: f.message }
            } else {
                BusError::Invalid { message: f.message }
            }
        })?;
        let entries = out.entries.unwrap_or_default();
        if entries.len() != events.len() {
            return Err(BusError::Unavailable {
                message: format!(
                    "EventBridge PutEvents answered {} entries for {} events",
                    entries.len(),
                    events.len()
                ),
            });
        }
        Ok(entries
            .into_iter()
            .map(|entry| match (entry.event_id, entry.error_code) {
                (Some(id), None) => Ok(id),
                (_, code) => {
                    let code = code.unwrap_or_else(|| "Unknown".into());
                    Err(EntryFailure {
                        sender_fault: !RETRYABLE_ENTRY_CODES.contains(&code.as_str()),
                        message: entry
                            .error_message
                            .unwrap_or_else(|| "EventBridge gave no reason".into()),
                        code,
                    })
                }
            })
            .collect())
    }
}
