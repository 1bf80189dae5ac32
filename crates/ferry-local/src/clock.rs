//! The real `Clock` and `IdGenerator` for the local backend: the system clock and random ids,
//! defined once in ferry-clock (shared with the Lambda functions and the agent) and
//! re-exported here so `ferry_local::clock::*` keeps working.

pub use ferry_clock::{RandomIds, SystemClock};
