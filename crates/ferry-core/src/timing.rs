//! The one rule that ties the handlers' time limits together: the Lambda function timeout, the
//! queue visibility timeout, the AWS SDK call timeouts and the idempotency lock.
//!
//! - Every function runs at most [`FUNCTION_TIMEOUT_SECS`] (template.yaml's `Timeout`; a test
//!   in ferry-lambda reads the template and compares).
//! - A queue hides a received message for [`VISIBILITY_TIMEOUT_SECS`], six times the function
//!   timeout (what AWS recommends for SQS event sources), so a message is never handed to a
//!   second invocation while the first may still run.
//! - One SDK call, retries and backoff included, takes at most [`SDK_OPERATION_TIMEOUT`], a
//!   third of the function timeout, and one attempt at most [`SDK_ATTEMPT_TIMEOUT`] (half of
//!   that): a handler
//!   always hears how its calls ended (and records it) before Lambda kills it. Before, both
//!   were 30 s, so a StartBuild could succeed unrecorded in a killed invocation.
//! - The idempotency lock (the in-progress record) lasts until the invocation's deadline (the
//!   Lambda context's `deadline`, so exactly the remaining time) plus [`LOCK_MARGIN`] for clock
//!   skew: long enough that no second invocation runs the work while the first may still, and
//!   short enough ([`lock_until`] never exceeds a receive plus the function timeout plus the
//!   margin, well under the visibility timeout) that the redelivery after a crash finds the
//!   lock gone and does the work instead of failing until the dead-letter queue.
//!
//! This module only computes; it must never read a clock or sleep (callers pass the time).

use std::time::Duration;

/// The Lambda timeout of every Ferry function, in seconds (template.yaml `Globals.Function.Timeout`).
pub const FUNCTION_TIMEOUT_SECS: u64 = 60;
/// The Lambda timeout as a duration.
pub const FUNCTION_TIMEOUT: Duration = Duration::from_secs(FUNCTION_TIMEOUT_SECS);
/// The visibility timeout of every queue a function drains, in seconds (six function timeouts).
pub const VISIBILITY_TIMEOUT_SECS: u64 = 6 * FUNCTION_TIMEOUT_SECS;
/// A whole SDK call, retries and backoff included: a third of the function timeout.
pub const SDK_OPERATION_TIMEOUT: Duration = Duration::from_secs(FUNCTION_TIMEOUT_SECS / 3);
/// One attempt of one SDK call: half the operation timeout, so at least two attempts fit in
/// one operation (the operation timeout cuts any further retry).
pub const SDK_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(FUNCTION_TIMEOUT_SECS / 6);
/// Added to the invocation's deadline for the lock: clock skew between Lambda and the store.
pub const LOCK_MARGIN: Duration = Duration::from_secs(5);

/// Until when (ms since the epoch) an idempotency record claimed at `now_ms` blocks others.
///
/// With a deadline (a Lambda invocation's, ms since the epoch): that deadline plus
/// [`LOCK_MARGIN`], but never more than [`FUNCTION_TIMEOUT`] + [`LOCK_MARGIN`] after `now_ms`
/// (a deadline from a confused caller cannot lock a job for long). Without one (ferry dev's
/// worker, tests): `now_ms + fallback_ms`.
pub fn lock_until(now_ms: u64, deadline_ms: Option<u64>, fallback_ms: u64) -> u64 {
    let margin = LOCK_MARGIN.as_millis() as u64;
    match deadline_ms {
        Some(deadline) => {
            let cap = now_ms.saturating_add(FUNCTION_TIMEOUT.as_millis() as u64 + margin);
            deadline.saturating_add(margin).clamp(now_ms, cap)
        }
        None => now_ms.saturating_add(fallback_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_calls_end_well_before_the_function() {
        // A slow first attempt still leaves room for a retry within the operation.
        assert!(SDK_ATTEMPT_TIMEOUT * 2 <= SDK_OPERATION_TIMEOUT);
        // A handler can make two slow calls back to back and still record the outcome.
        assert!(SDK_OPERATION_TIMEOUT * 2 < FUNCTION_TIMEOUT);
        assert!(
            SDK_ATTEMPT_TIMEOUT >= Duration::from_secs(5),
            "room for a slow attempt"
        );
    }

    #[test]
    fn the_lock_outlives_the_invocation_but_not_the_visibility_timeout() {
        let received = 1_000_000_u64;
        let deadline = received + FUNCTION_TIMEOUT.as_millis() as u64;
        // Claimed at any moment of the invocation, the lock covers the rest of it.
        for claimed in [received, received + 10_000, deadline - 1] {
            let until = lock_until(claimed, Some(deadline), 0);
            assert!(until > deadline, "the lock covers the invocation");
            assert_eq!(until, deadline + LOCK_MARGIN.as_millis() as u64);
            // The redelivery after a crash comes a visibility timeout after the receive: the
            // lock is gone by then.
            assert!(until < received + VISIBILITY_TIMEOUT_SECS * 1000);
        }
    }

    #[test]
    fn a_far_deadline_is_capped_and_a_past_one_locks_nothing_long() {
        let now = 5_000_000_u64;
        let cap = now + (FUNCTION_TIMEOUT + LOCK_MARGIN).as_millis() as u64;
        assert_eq!(lock_until(now, Some(now + 3_600_000), 0), cap);
        assert_eq!(lock_until(now, Some(1), 0), now);
        assert_eq!(lock_until(now, None, 300_000), now + 300_000);
    }

    #[test]
    fn the_visibility_timeout_is_six_function_timeouts() {
        assert_eq!(VISIBILITY_TIMEOUT_SECS, 360);
        assert!(
            VISIBILITY_TIMEOUT_SECS * 1000 > (FUNCTION_TIMEOUT + LOCK_MARGIN).as_millis() as u64
        );
    }
}
