//! Crate-level tests: event parsing against events/, and the handlers over the fakes.

mod events;
mod fanout;
mod flow;
mod receipts;
mod reconcile;
mod releases;
mod trust;
