//! Retry policy: exponential backoff with full jitter on 429, 5xx and connection errors,
//! honouring `Retry-After`.
//!
//! It must never retry a request whose body was a one-shot stream that has already been
//! consumed; callers decide that, this module only decides when.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(20),
        }
    }
}
