//! Per-record processing of an SQS batch with partial failures (ReportBatchItemFailures).
//!
//! Records are parsed and handled one by one; a record that does not parse or whose handler
//! fails is reported by message id and the others still go through. This module must never let
//! one bad record fail or skip the rest of the batch.

use std::future::Future;

use serde::Serialize;

use crate::event::{parse_event, Event};
use crate::handlers::{HandlerError, Outcome};

/// One queue record as the entry point received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub message_id: String,
    pub body: Vec<u8>,
    /// SQS ApproximateReceiveCount: past the queue's limit the record goes to the DLQ.
    pub receive_count: u32,
}

/// The ids to hand back to SQS for redelivery (and, after N receives, the DLQ).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BatchResult {
    pub failed_message_ids: Vec<String>,
}

impl BatchResult {
    /// The Lambda SQS response: `{"batchItemFailures": [{"itemIdentifier": id}, ...]}`.
    pub fn to_sqs_response(&self) -> serde_json::Value {
        let items: Vec<serde_json::Value> = self
            .failed_message_ids
            .iter()
            .map(|id| serde_json::json!({ "itemIdentifier": id }))
            .collect();
        serde_json::json!({ "batchItemFailures": items })
    }
}

/// Parses and handles each record in order; failures are collected, never propagated.
pub async fn process_batch<F, Fut>(records: &[Record], mut handler: F) -> BatchResult
where
    F: FnMut(Event) -> Fut,
    Fut: Future<Output = Result<Outcome, HandlerError>>,
{
    let mut result = BatchResult::default();
    for record in records {
        let event = match parse_event(&record.body) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(message_id = %record.message_id, receive_count = record.receive_count, error = %e, "rejected malformed event");
                result.failed_message_ids.push(record.message_id.clone());
                continue;
            }
        };
        let event_type = event.event_type();
        match handler(event).await {
            Ok(outcome) => {
                tracing::info!(message_id = %record.message_id, event_type, ?outcome, "handled event");
            }
            Err(e) => {
                tracing::warn!(
                    message_id = %record.message_id,
                    receive_count = record.receive_count,
                    event_type,
                    error = %e,
                    retryable = e.is_retryable(),
                    "event handling failed"
                );
                result.failed_message_ids.push(record.message_id.clone());
            }
        }
    }
    result
}
