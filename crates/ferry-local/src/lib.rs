//! ferry-local: the embedded backend. ferry-core's ports implemented on one machine with no
//! cloud account: a SQLite job store and SQLite queues with SQS semantics, an in-process event
//! bus that routes events to those queues (as EventBridge rules feed SQS), queue workers that
//! run the IMS handlers, and a grant minter over the embedded registry.
//!
//! It must never weaken a guarantee the AWS backend gives: conditional writes stay
//! conditional, a received message stays hidden for its visibility timeout, and a poison
//! message reaches the dead-letter queue after N receives.

pub mod bus;
pub mod catalog;
pub mod clock;
pub mod db;
pub mod minter;
pub mod queue;
pub mod releases;
pub mod store;
pub mod worker;
