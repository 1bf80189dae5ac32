//! The job state machine shared by builds and sync jobs.
//!
//! ```text
//! Queued ──start──▶ Running ──succeed/fail/cancel──▶ Succeeded | Failed | Cancelled
//!   ▲  └───────────succeed/fail/cancel──────────────▶ (a completion may overtake "start")
//!   └──requeue (attempts+1)── Queued | Running
//! ```
//!
//! Transitions are pure: they take `now` from the caller (the core has no clock) and return the
//! next state with `version + 1`, so the caller can write it conditionally on the old
//! `(status, version)`. This module must never mutate a terminal state: every transition out of
//! Succeeded, Failed or Cancelled is a [`TransitionError`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a build or sync job stands; `Succeeded`, `Failed` and `Cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// True for the states nothing leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }

    /// The status as stored and printed (`queued`, `running`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed: a stable machine code plus a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

impl JobError {
    /// An error with a machine-readable `code` and a message for people.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        JobError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The action that was attempted, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Succeed,
    Fail,
    Cancel,
    Requeue,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Start => "start",
            Action::Succeed => "mark succeeded",
            Action::Fail => "mark failed",
            Action::Cancel => "cancel",
            Action::Requeue => "requeue",
        })
    }
}

/// A transition the state machine does not allow (for example, leaving a terminal state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a job that is {from}: {hint}")]
pub struct TransitionError {
    pub from: JobStatus,
    pub action: Action,
    pub hint: &'static str,
}

/// The condition of a conditional write: the status and version the writer last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub status: JobStatus,
    pub version: u64,
}

/// Lifecycle fields common to builds and syncs. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub status: JobStatus,
    /// Attempts started so far; 1 when created, +1 on each requeue.
    pub attempts: u32,
    /// +1 on every change; the condition of every write.
    pub version: u64,
    pub created_at: u64,
    pub updated_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    pub error: Option<JobError>,
}

impl JobState {
    /// A new job: Queued, first attempt, version 1.
    pub fn new(now: u64) -> JobState {
        JobState {
            status: JobStatus::Queued,
            attempts: 1,
            version: 1,
            created_at: now,
            updated_at: now,
            started_at: None,
            finished_at: None,
            error: None,
        }
    }

    /// The write condition that matches this state: its status and version.
    pub fn expected(&self) -> Expected {
        Expected {
            status: self.status,
            version: self.version,
        }
    }

    fn refuse(&self, action: Action) -> TransitionError {
        let hint = if self.status.is_terminal() {
            "a finished job never changes; start a new build or sync instead"
        } else {
            "the job is already running"
        };
        TransitionError {
            from: self.status,
            action,
            hint,
        }
    }

    fn bumped(&self, status: JobStatus, now: u64) -> JobState {
        JobState {
            status,
            version: self.version + 1,
            // Never move backwards if callers' clocks disagree.
            updated_at: now.max(self.updated_at),
            ..self.clone()
        }
    }

    /// Queued → Running.
    pub fn start(&self, now: u64) -> Result<JobState, TransitionError> {
        if self.status != JobStatus::Queued {
            return Err(self.refuse(Action::Start));
        }
        let mut next = self.bumped(JobStatus::Running, now);
        next.started_at = Some(now);
        Ok(next)
    }

    fn finish(
        &self,
        action: Action,
        status: JobStatus,
        now: u64,
        error: Option<JobError>,
    ) -> Result<JobState, TransitionError> {
        if self.status.is_terminal() {
            return Err(self.refuse(action));
        }
        let mut next = self.bumped(status, now);
        next.finished_at = Some(now);
        next.error = error;
        Ok(next)
    }

    /// Queued | Running → Succeeded.
    pub fn succeed(&self, now: u64) -> Result<JobState, TransitionError> {
        self.finish(Action::Succeed, JobStatus::Succeeded, now, None)
    }

    /// Queued | Running → Failed, with the reason.
    pub fn fail(&self, now: u64, error: JobError) -> Result<JobState, TransitionError> {
        self.finish(Action::Fail, JobStatus::Failed, now, Some(error))
    }

    /// Queued | Running → Cancelled.
    pub fn cancel(&self, now: u64) -> Result<JobState, TransitionError> {
        self.finish(Action::Cancel, JobStatus::Cancelled, now, None)
    }

    /// Queued → Queued, version + 1: the same attempt, held by another dispatcher (a job's
    /// idempotency claim taken over after its holder's lock ran out).
    pub fn reclaim(&self, now: u64) -> Result<JobState, TransitionError> {
        if self.status != JobStatus::Queued {
            return Err(self.refuse(Action::Start));
        }
        Ok(self.bumped(JobStatus::Queued, now))
    }

    /// Queued | Running → Queued with attempts + 1: a new try (a sync whose grant expired).
    pub fn requeue(&self, now: u64) -> Result<JobState, TransitionError> {
        if self.status.is_terminal() {
            return Err(self.refuse(Action::Requeue));
        }
        let mut next = self.bumped(JobStatus::Queued, now);
        next.attempts = self.attempts.saturating_add(1);
        next.started_at = None;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_bumps_version_and_times() {
        let s = JobState::new(10);
        let r = s.start(20).unwrap();
        assert_eq!(
            (r.status, r.version, r.started_at),
            (JobStatus::Running, 2, Some(20))
        );
        let d = r.succeed(30).unwrap();
        assert_eq!(
            (d.status, d.version, d.finished_at),
            (JobStatus::Succeeded, 3, Some(30))
        );
        assert_eq!(d.created_at, 10);
        assert_eq!(d.attempts, 1);
    }

    #[test]
    fn terminal_states_refuse_everything() {
        let s = JobState::new(1);
        let done = [
            s.succeed(2).unwrap(),
            s.fail(2, JobError::new("x", "y")).unwrap(),
            s.cancel(2).unwrap(),
        ];
        for d in done {
            assert!(d.start(3).is_err());
            assert!(d.succeed(3).is_err());
            assert!(d.fail(3, JobError::new("x", "y")).is_err());
            assert!(d.cancel(3).is_err());
            let e = d.requeue(3).unwrap_err();
            assert_eq!(e.from, d.status);
            assert!(e.to_string().contains("never changes"), "{e}");
        }
    }

    #[test]
    fn start_twice_is_refused() {
        let r = JobState::new(1).start(2).unwrap();
        let e = r.start(3).unwrap_err();
        assert_eq!((e.from, e.action), (JobStatus::Running, Action::Start));
    }

    #[test]
    fn requeue_adds_an_attempt() {
        let r = JobState::new(1).start(2).unwrap();
        let q = r.requeue(5).unwrap();
        assert_eq!((q.status, q.attempts, q.version), (JobStatus::Queued, 2, 3));
        assert_eq!(q.started_at, None);
        let r2 = q.start(6).unwrap();
        assert_eq!(r2.attempts, 2);
    }

    #[test]
    fn failure_keeps_error_detail() {
        let f = JobState::new(1)
            .fail(2, JobError::new("boom", "it broke"))
            .unwrap();
        assert_eq!(f.error.as_ref().map(|e| e.code.as_str()), Some("boom"));
    }

    #[test]
    fn updated_at_never_goes_backwards() {
        let s = JobState::new(100);
        assert_eq!(s.start(50).unwrap().updated_at, 100);
    }
}
