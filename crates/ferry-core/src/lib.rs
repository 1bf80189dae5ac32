//! Ferry's core: domain types, job state machines, event schemas, port traits and the IMS
//! handlers as plain async functions over those ports.
//!
//! Entry points (Lambda functions, `ferry dev`) parse input, call a handler here and answer;
//! adapters (ferry-local, ferry-aws) implement the ports. This crate must never do I/O, read a
//! clock or name an AWS type, so the same logic runs on both backends and in tests.

pub mod bundle;
pub mod domain;
pub mod event;
pub mod fanout;
pub mod handlers;
pub mod id;
pub mod manage;
pub mod ports;
pub mod reconcile;
pub mod record;
pub mod release;
pub mod release_port;
pub mod rollout;
pub mod seal;
pub mod state;
pub mod telemetry;
pub mod timing;
pub mod trust;

#[cfg(any(test, feature = "contract"))]
pub mod contract;
#[cfg(any(test, feature = "contract"))]
pub mod manage_contract;
#[cfg(any(test, all(feature = "contract", feature = "testing")))]
pub mod reconcile_contract;
pub mod release_contract;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use event::{parse_event, Event, EventError, JobRef, Payload};
pub use handlers::{dispatch, Config, HandlerError, Outcome, Ports};
pub use record::{handle_record, Record, RecordError, RecordOutcome, Redrive};
