//! Releases: the vendor's decision to move a target set of installs to one build per component,
//! rolled out in steps. The records here are what [`ReleaseStore`] keeps, and the rules that
//! move them are pure functions (planning steps, the failure budget, pause/resume/abort, the end
//! of a step), so the handlers in [`crate::rollout`] only read, decide with these, and write
//! conditionally.
//!
//! Desired vs current: a target's entries are what the vendor released to that install (its
//! desired version per component); the current version is what the install's agent verified,
//! which the store's lineage records (a digest is current in an install once a sync of it
//! succeeded there). A step syncs only what differs, so releasing the same build to the same
//! installs again syncs nothing. This module must never do I/O or read a clock: `now` is passed.

use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::domain::LineageRecord;
use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, ReleaseId, Repository, SyncId,
};
use crate::ports::{Page, PageRequest, StoreError, WriteError};
use crate::state::JobError;

/// The most installs one step may hold. A step is evaluated by reading its targets, so the
/// bound keeps that read (and one step's burst of grants) small; a release to more installs
/// uses more steps.
pub const MAX_INSTALLS_PER_STEP: u32 = 1000;

/// When a release halts: after a step that brings the failed installs to this many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum FailureBudget {
    /// Halt once this many installs failed (at least 1).
    Count(u32),
    /// Halt once this percentage (1..=100) of the release's installs failed, rounded up.
    Percent(u32),
}

/// Why a release request is not valid; each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("invalid release: {0}")]
    Invalid(String),
}

impl FailureBudget {
    /// Parses `5` (a count) or `5%` (a percentage).
    pub fn parse(s: &str) -> Result<FailureBudget, ReleaseError> {
        let bad = || {
            ReleaseError::Invalid(format!(
                "max failures {s:?} is neither a count (e.g. 1) nor a percentage (e.g. 5%)"
            ))
        };
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            if !(1..=100).contains(&p) {
                return Err(ReleaseError::Invalid(format!(
                    "max failures {p}% must be 1% to 100%"
                )));
            }
            Ok(FailureBudget::Percent(p))
        } else {
            let n: u32 = s.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(ReleaseError::Invalid(
                    "max failures 0 would halt before anything ran; use 1 or more".into(),
                ));
            }
            Ok(FailureBudget::Count(n))
        }
    }

    /// How many failed installs halt a release of `total` installs (always at least 1).
    pub fn limit(self, total: u32) -> u32 {
        match self {
            FailureBudget::Count(n) => n.max(1),
            FailureBudget::Percent(p) => (u64::from(total) * u64::from(p))
                .div_ceil(100)
                .clamp(1, u64::from(u32::MAX)) as u32,
        }
    }
}

impl fmt::Display for FailureBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureBudget::Count(n) => write!(f, "{n}"),
            FailureBudget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How a release moves through its installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePolicy {
    /// Installs per step (1..=[`MAX_INSTALLS_PER_STEP`]).
    pub installs_per_step: u32,
    /// Wait between the end of one step and the start of the next.
    pub delay_ms: u64,
    pub max_failures: FailureBudget,
}

impl ReleasePolicy {
    /// Checks the bounds.
    pub fn validate(&self) -> Result<(), ReleaseError> {
        if !(1..=MAX_INSTALLS_PER_STEP).contains(&self.installs_per_step) {
            return Err(ReleaseError::Invalid(format!(
                "installs per step must be 1 to {MAX_INSTALLS_PER_STEP}, got {}",
                self.installs_per_step
            )));
        }
        Ok(())
    }
}

/// One build of a release: what every target subscribed to its component should hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseBuild {
    pub component: ComponentName,
    pub build_id: BuildId,
    pub repository: Repository,
    pub digest: Digest,
}

/// Where a release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    Running,
    /// Paused by hand: the step in flight finishes, the next does not start.
    Paused,
    /// The failure budget was spent: synced installs keep what they got; `resume` retries the
    /// failed installs of the halted step, then goes on.
    Halted,
    /// Stopped by hand for good: no further step starts (syncs already enqueued still finish).
    Aborted,
    Completed,
}

impl ReleaseStatus {
    /// The status as shown and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Running => "running",
            ReleaseStatus::Paused => "paused",
            ReleaseStatus::Halted => "halted",
            ReleaseStatus::Aborted => "aborted",
            ReleaseStatus::Completed => "completed",
        }
    }

    /// Aborted or completed: nothing changes any more.
    pub fn is_final(self) -> bool {
        matches!(self, ReleaseStatus::Aborted | ReleaseStatus::Completed)
    }
}

impl fmt::Display for ReleaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the current step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum StepPhase {
    /// Starts when the step timer fires at or after `due_at` (unix ms).
    Waiting { due_at: u64 },
    /// Its syncs are requested; it ends when every target of the step is terminal.
    Syncing,
    /// Ended (the release halted, completed or was aborted here).
    Done,
}

/// A release and where it stands. Changed only through the methods here, each of which bumps
/// `version`, the condition of every write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub id: ReleaseId,
    pub app: AppName,
    pub builds: Vec<ReleaseBuild>,
    pub policy: ReleasePolicy,
    pub requested_by: String,
    /// Installs targeted.
    pub total_installs: u32,
    /// Steps planned (at least 1).
    pub steps: u32,
    /// The current step (0-based).
    pub step: u32,
    pub phase: StepPhase,
    /// +1 on each `resume` of a halted release: failed installs of the step are retried as
    /// new sync jobs of this round.
    pub round: u32,
    pub status: ReleaseStatus,
    /// Failed installs of the steps before the current one.
    pub failed_before: u32,
    /// Why it halted (or was aborted), when it did.
    pub reason: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    pub version: u64,
}

/// A pause/resume/abort that does not apply to the release's status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} release {id}: it is {status}; {hint}")]
pub struct ReleaseTransitionError {
    pub id: ReleaseId,
    pub action: &'static str,
    pub status: ReleaseStatus,
    pub hint: &'static str,
}

/// What a step's targets add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepTally {
    pub targets: u32,
    /// Terminal in this round: succeeded, already current, or failed.
    pub finished: u32,
    pub failed: u32,
}

impl StepTally {
    /// Adds one target.
    pub fn add(&mut self, target: &ReleaseTarget, round: u32) {
        self.targets += 1;
        match target.state(round) {
            TargetState::Succeeded | TargetState::Current => self.finished += 1,
            TargetState::Failed => {
                self.finished += 1;
                self.failed += 1;
            }
            TargetState::Pending | TargetState::Syncing => {}
        }
    }

    /// Every target of the step is terminal.
    pub fn done(&self) -> bool {
        self.finished >= self.targets
    }
}

impl Release {
    /// A new release, Running, its first step due at `now`.
    pub fn new(
        id: ReleaseId,
        app: AppName,
        builds: Vec<ReleaseBuild>,
        policy: ReleasePolicy,
        requested_by: String,
        total_installs: u32,
        now: u64,
    ) -> Release {
        Release {
            id,
            app,
            builds,
            policy,
            requested_by,
            total_installs,
            steps: total_installs
                .div_ceil(policy.installs_per_step.max(1))
                .max(1),
            step: 0,
            phase: StepPhase::Waiting { due_at: now },
            round: 0,
            status: ReleaseStatus::Running,
            failed_before: 0,
            reason: None,
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }

    /// The step an install at position `index` (sorted by install id) belongs to.
    pub fn step_of(policy: &ReleasePolicy, index: u32) -> u32 {
        index / policy.installs_per_step.max(1)
    }

    fn bumped(&self, now: u64) -> Release {
        Release {
            version: self.version + 1,
            updated_at: now.max(self.updated_at),
            ..self.clone()
        }
    }

    fn refuse(&self, action: &'static str, hint: &'static str) -> ReleaseTransitionError {
        ReleaseTransitionError {
            id: self.id.clone(),
            action,
            status: self.status,
            hint,
        }
    }

    /// The step timer fired: Waiting → Syncing, if it is due and the release runs.
    pub fn start_step(&self, now: u64) -> Option<Release> {
        match (self.status, self.phase) {
            (ReleaseStatus::Running, StepPhase::Waiting { due_at }) if now >= due_at => {
                let mut next = self.bumped(now);
                next.phase = StepPhase::Syncing;
                Some(next)
            }
            _ => None,
        }
    }

    /// The current step's tally says every target is terminal: halt when the failures reach
    /// the budget, complete after the last step, else move to the next step, due after the
    /// delay (a paused release moves too, but its timer is set only on resume). `None` when
    /// the step is not syncing (already ended) or not done.
    pub fn finish_step(&self, tally: StepTally, now: u64) -> Option<Release> {
        if self.phase != StepPhase::Syncing || !tally.done() {
            return None;
        }
        let mut next = self.bumped(now);
        let failed = self.failed_before.saturating_add(tally.failed);
        let limit = self.policy.max_failures.limit(self.total_installs);
        if self.status == ReleaseStatus::Aborted {
            next.phase = StepPhase::Done;
        } else if failed >= limit {
            next.status = ReleaseStatus::Halted;
            next.phase = StepPhase::Done;
            next.reason = Some(format!(
                "{failed} install(s) failed, reaching the failure budget of {} ({limit} of {} \
                 installs) in step {} of {}; fix them and run `ferry release resume {}` to \
                 retry the failed installs of this step and go on",
                self.policy.max_failures,
                self.total_installs,
                self.step + 1,
                self.steps,
                self.id
            ));
        } else if self.step + 1 >= self.steps {
            next.status = ReleaseStatus::Completed;
            next.phase = StepPhase::Done;
            next.failed_before = failed;
        } else {
            next.step += 1;
            next.failed_before = failed;
            next.phase = StepPhase::Waiting {
                due_at: now.saturating_add(self.policy.delay_ms),
            };
        }
        Some(next)
    }

    /// Running → Paused.
    pub fn pause(&self, now: u64) -> Result<Release, ReleaseTransitionError> {
        match self.status {
            ReleaseStatus::Running => {
                let mut next = self.bumped(now);
                next.status = ReleaseStatus::Paused;
                Ok(next)
            }
            ReleaseStatus::Paused => Ok(self.clone()),
            _ => Err(self.refuse("pause", "only a running release can be paused")),
        }
    }

    /// Paused → Running (the waiting step's timer must be set again); Halted → Running with a
    /// new round, the halted step due now (its failed installs are retried).
    pub fn resume(&self, now: u64) -> Result<Release, ReleaseTransitionError> {
        match self.status {
            ReleaseStatus::Paused => {
                let mut next = self.bumped(now);
                next.status = ReleaseStatus::Running;
                Ok(next)
            }
            ReleaseStatus::Halted => {
                let mut next = self.bumped(now);
                next.status = ReleaseStatus::Running;
                next.round += 1;
                next.reason = None;
                next.phase = StepPhase::Waiting { due_at: now };
                Ok(next)
            }
            ReleaseStatus::Running => Ok(self.clone()),
            _ => Err(self.refuse(
                "resume",
                "an aborted or completed release never moves again; create a new release",
            )),
        }
    }

    /// Running | Paused | Halted → Aborted. Syncs already enqueued still finish.
    pub fn abort(&self, now: u64, by: &str) -> Result<Release, ReleaseTransitionError> {
        match self.status {
            ReleaseStatus::Aborted => Ok(self.clone()),
            ReleaseStatus::Completed => Err(self.refuse("abort", "it already completed")),
            _ => {
                let mut next = self.bumped(now);
                next.status = ReleaseStatus::Aborted;
                if next.phase != StepPhase::Syncing {
                    next.phase = StepPhase::Done;
                }
                next.reason = Some(format!("aborted by {by} in step {}", self.step + 1));
                Ok(next)
            }
        }
    }

    /// The timer this state needs: `Some((step, round, due_at))` while running and waiting.
    pub fn pending_timer(&self) -> Option<(u32, u32, u64)> {
        match (self.status, self.phase) {
            (ReleaseStatus::Running, StepPhase::Waiting { due_at }) => {
                Some((self.step, self.round, due_at))
            }
            _ => None,
        }
    }
}

/// Where one install of a release stands (over all its components).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    /// Its step has not requested its syncs yet (or a resume will retry it).
    Pending,
    Syncing,
    Succeeded,
    /// It already held every build: nothing was synced.
    Current,
    Failed,
}

impl TargetState {
    /// The state as shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Syncing => "syncing",
            TargetState::Succeeded => "succeeded",
            TargetState::Current => "current",
            TargetState::Failed => "failed",
        }
    }
}

/// One component of one target: the desired build, the sync that moves it, and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSync {
    pub component: ComponentName,
    pub build_id: BuildId,
    pub digest: Digest,
    /// The sync job of the latest round that requested one.
    pub sync_id: Option<SyncId>,
    pub state: TargetState,
    pub error: Option<JobError>,
    pub bytes_copied: u64,
}

/// One install in a release: its step and, per component, desired build and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseTarget {
    pub release_id: ReleaseId,
    pub install_id: InstallId,
    pub step: u32,
    /// The round its syncs were last requested in.
    pub round: u32,
    pub syncs: Vec<TargetSync>,
    pub updated_at: u64,
    pub version: u64,
}

impl ReleaseTarget {
    /// The install's state in release round `round`: a failure of an earlier round is
    /// pending again (a resume retries it).
    pub fn state(&self, round: u32) -> TargetState {
        let mut any_syncing = false;
        let mut any_pending = false;
        let mut all_current = true;
        let mut any_failed = false;
        for s in &self.syncs {
            match s.state {
                TargetState::Failed if self.round < round => any_pending = true,
                TargetState::Failed => any_failed = true,
                TargetState::Pending => any_pending = true,
                TargetState::Syncing => any_syncing = true,
                TargetState::Succeeded => all_current = false,
                TargetState::Current => {}
            }
        }
        if any_pending {
            TargetState::Pending
        } else if any_syncing {
            TargetState::Syncing
        } else if any_failed {
            TargetState::Failed
        } else if all_current {
            TargetState::Current
        } else {
            TargetState::Succeeded
        }
    }

    /// The first error among its components, for `release show`.
    pub fn error(&self) -> Option<&JobError> {
        self.syncs.iter().find_map(|s| s.error.as_ref())
    }

    /// The same target, one version on.
    pub fn bumped(&self, now: u64) -> ReleaseTarget {
        ReleaseTarget {
            version: self.version + 1,
            updated_at: now.max(self.updated_at),
            ..self.clone()
        }
    }
}

/// When a running release should complete (unix ms), estimated from what it did so far: each
/// step still to come takes the mean duration of the finished steps (their syncing time, the
/// delays between them taken out), and each waits the delay first; a waiting step starts at
/// its due time. `None` when the release is not running, or no step has finished yet (nothing
/// to estimate from). Time spent paused counts as syncing time, so a pause lengthens the
/// estimate.
pub fn estimate_completion(release: &Release, targets: &[ReleaseTarget], now: u64) -> Option<u64> {
    if release.status != ReleaseStatus::Running || release.step == 0 {
        return None;
    }
    let finished = u64::from(release.step);
    let last_finished_at = targets
        .iter()
        .filter(|t| t.step < release.step)
        .map(|t| t.updated_at)
        .max()?;
    let delay = release.policy.delay_ms;
    let busy = last_finished_at
        .saturating_sub(release.created_at)
        .saturating_sub((finished - 1).saturating_mul(delay));
    let per_step = busy / finished;
    let after_current = u64::from(release.steps.saturating_sub(release.step + 1));
    let rest = after_current.saturating_mul(per_step.saturating_add(delay));
    let current = match release.phase {
        StepPhase::Waiting { due_at } => due_at.saturating_sub(now).saturating_add(per_step),
        StepPhase::Syncing => {
            let started = last_finished_at.saturating_add(delay);
            per_step.saturating_sub(now.saturating_sub(started))
        }
        StepPhase::Done => return None,
    };
    Some(now.saturating_add(current).saturating_add(rest))
}

/// The release store port (DynamoDB items in the job table, or SQLite tables): releases, their
/// targets and the lineage point reads a step needs. Writes are conditional on `version`.
pub trait ReleaseStore: Send + Sync {
    /// Put-if-absent; `Conflict.current` is the existing release.
    fn create_release(
        &self,
        release: &Release,
    ) -> impl Future<Output = Result<(), WriteError<Release>>> + Send;
    /// The release, if it exists.
    fn get_release(
        &self,
        id: &ReleaseId,
    ) -> impl Future<Output = Result<Option<Release>, StoreError>> + Send;
    /// Writes `next` only if the stored release has version `expected`.
    fn update_release(
        &self,
        next: &Release,
        expected: u64,
    ) -> impl Future<Output = Result<(), WriteError<Release>>> + Send;
    /// Releases of `app`, newest first (created_at descending, then id descending).
    fn releases_by_app(
        &self,
        app: &AppName,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<Release>, StoreError>> + Send;

    /// Put-if-absent; `Conflict.current` is the existing target.
    fn create_target(
        &self,
        target: &ReleaseTarget,
    ) -> impl Future<Output = Result<(), WriteError<ReleaseTarget>>> + Send;
    /// The target of `install` in `release`, if any.
    fn get_target(
        &self,
        release: &ReleaseId,
        install: &InstallId,
    ) -> impl Future<Output = Result<Option<ReleaseTarget>, StoreError>> + Send;
    /// Writes `next` only if the stored target has version `expected`.
    fn update_target(
        &self,
        next: &ReleaseTarget,
        expected: u64,
    ) -> impl Future<Output = Result<(), WriteError<ReleaseTarget>>> + Send;
    /// The targets of one step, by install id ascending.
    fn targets_by_step(
        &self,
        release: &ReleaseId,
        step: u32,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<ReleaseTarget>, StoreError>> + Send;

    /// Releases whose status is `running`, by id ascending (what the reconciler checks).
    fn running_releases(
        &self,
        page: &PageRequest,
    ) -> impl Future<Output = Result<Page<Release>, StoreError>> + Send;

    /// Whether `install` holds `digest` (its agent verified it), and since when.
    fn get_lineage(
        &self,
        digest: &Digest,
        install: &InstallId,
    ) -> impl Future<Output = Result<Option<LineageRecord>, StoreError>> + Send;

    // Batches (issue 12: a fan-out's calls per install). Each has a default built on the
    // point operations above; a store overrides it where it can do better.

    /// The lineage records of those `(digest, install)` pairs that exist, in any order. By
    /// default one [`ReleaseStore::get_lineage`] per pair (DynamoDB: BatchGetItem).
    fn get_lineages(
        &self,
        pairs: &[(Digest, InstallId)],
    ) -> impl Future<Output = Result<Vec<LineageRecord>, StoreError>> + Send {
        async move {
            let mut out = Vec::new();
            for (digest, install) in pairs {
                if let Some(record) = self.get_lineage(digest, install).await? {
                    if !out.contains(&record) {
                        out.push(record);
                    }
                }
            }
            Ok(out)
        }
    }

    /// Creates each of `targets` that does not exist yet; one that does (an earlier try of
    /// the same release) is left as it is. By default one [`ReleaseStore::create_target`]
    /// each (DynamoDB: TransactWriteItems of up to 50 targets).
    fn create_targets(
        &self,
        targets: &[ReleaseTarget],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            for target in targets {
                match self.create_target(target).await {
                    Ok(()) | Err(WriteError::Conflict(_)) => {}
                    Err(WriteError::Store(e)) => return Err(e),
                }
            }
            Ok(())
        }
    }

    /// All or nothing: writes every `(next, expected)` when every stored target has version
    /// `expected`, and returns `Ok(true)`; otherwise writes none and returns `Ok(false)` (the
    /// caller then writes them one by one with [`ReleaseStore::update_target`]). By default
    /// only a single write is attempted (more return `Ok(false)` unwritten); SQLite does it in
    /// one transaction, DynamoDB in one TransactWriteItems (up to [`MAX_TARGET_BATCH`]).
    fn update_targets(
        &self,
        writes: &[(ReleaseTarget, u64)],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        async move {
            match writes {
                [] => Ok(true),
                [(next, expected)] => match self.update_target(next, *expected).await {
                    Ok(()) => Ok(true),
                    Err(WriteError::Conflict(_)) => Ok(false),
                    Err(WriteError::Store(e)) => Err(e),
                },
                _ => Ok(false),
            }
        }
    }
}

/// The most targets [`ReleaseStore::update_targets`] writes at once (a page of a step).
pub const MAX_TARGET_BATCH: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;

    fn release(total: u32, per_step: u32, budget: FailureBudget) -> Release {
        Release::new(
            ReleaseId::new("r-1").unwrap(),
            AppName::new("shop").unwrap(),
            vec![],
            ReleasePolicy {
                installs_per_step: per_step,
                delay_ms: 600_000,
                max_failures: budget,
            },
            "me".into(),
            total,
            1000,
        )
    }

    fn tally(targets: u32, finished: u32, failed: u32) -> StepTally {
        StepTally {
            targets,
            finished,
            failed,
        }
    }

    #[test]
    fn budgets_parse_and_round_up() {
        assert_eq!(
            FailureBudget::parse("5%").unwrap(),
            FailureBudget::Percent(5)
        );
        assert_eq!(FailureBudget::parse("2").unwrap(), FailureBudget::Count(2));
        for bad in ["0", "0%", "101%", "x", "-1", ""] {
            let e = FailureBudget::parse(bad).unwrap_err().to_string();
            assert!(e.contains("max failures"), "{bad}: {e}");
        }
        assert_eq!(FailureBudget::Percent(5).limit(10_000), 500);
        assert_eq!(FailureBudget::Percent(5).limit(6), 1);
        assert_eq!(FailureBudget::Percent(50).limit(3), 2);
        assert_eq!(FailureBudget::Count(3).limit(1), 3);
    }

    #[test]
    fn steps_advance_with_the_delay_and_complete() {
        let r = release(6, 2, FailureBudget::Count(1));
        assert_eq!(r.steps, 3);
        assert!(r.start_step(999).is_none(), "not due yet");
        let r = r.start_step(1000).unwrap();
        assert!(r.finish_step(tally(2, 1, 0), 2000).is_none(), "not done");
        let r = r.finish_step(tally(2, 2, 0), 2000).unwrap();
        assert_eq!(
            (r.step, r.phase),
            (1, StepPhase::Waiting { due_at: 602_000 })
        );
        assert_eq!(r.pending_timer(), Some((1, 0, 602_000)));
        let r = r.start_step(602_000).unwrap();
        let r = r.finish_step(tally(2, 2, 0), 603_000).unwrap();
        let r = r.start_step(1_300_000).unwrap();
        let r = r.finish_step(tally(2, 2, 0), 1_300_001).unwrap();
        assert_eq!(r.status, ReleaseStatus::Completed);
        assert!(r.finish_step(tally(2, 2, 0), 1_300_002).is_none());
    }

    #[test]
    fn the_budget_halts_after_the_step_and_resume_retries_it() {
        let r = release(6, 2, FailureBudget::Count(1));
        let r = r.start_step(1000).unwrap();
        let r = r.finish_step(tally(2, 2, 1), 2000).unwrap();
        assert_eq!(
            (r.status, r.step, r.phase),
            (ReleaseStatus::Halted, 0, StepPhase::Done)
        );
        assert!(r
            .reason
            .as_deref()
            .unwrap()
            .contains("ferry release resume r-1"));
        assert!(r.pending_timer().is_none());
        let r = r.resume(5000).unwrap();
        assert_eq!((r.status, r.round), (ReleaseStatus::Running, 1));
        assert_eq!(r.pending_timer(), Some((0, 1, 5000)));
    }

    #[test]
    fn pause_keeps_the_timer_off_until_resume() {
        let r = release(4, 2, FailureBudget::Percent(50))
            .start_step(1000)
            .unwrap();
        let p = r.pause(1500).unwrap();
        let p = p.finish_step(tally(2, 2, 0), 2000).unwrap();
        assert_eq!((p.status, p.step), (ReleaseStatus::Paused, 1));
        assert!(p.pending_timer().is_none(), "paused: no timer");
        let r = p.resume(3000).unwrap();
        assert_eq!(r.pending_timer(), Some((1, 0, 602_000)));
        let a = r.abort(3001, "ops").unwrap();
        assert_eq!(
            (a.status, a.phase),
            (ReleaseStatus::Aborted, StepPhase::Done)
        );
        assert!(a
            .resume(3002)
            .unwrap_err()
            .to_string()
            .contains("create a new release"));
        assert!(a.pause(3002).is_err());
    }

    #[test]
    fn the_estimate_follows_the_finished_steps_and_the_delays() {
        // 6 installs, 2 per step, 10 minute delay; step 1 took 4 minutes.
        let r = release(6, 2, FailureBudget::Count(1))
            .start_step(1000)
            .unwrap();
        let mut t = ReleaseTarget {
            release_id: r.id.clone(),
            install_id: InstallId::new("i-1").unwrap(),
            step: 0,
            round: 0,
            syncs: vec![],
            updated_at: 1000 + 240_000,
            version: 1,
        };
        assert_eq!(
            estimate_completion(&r, &[t.clone()], 2000),
            None,
            "no step finished"
        );
        let r = r.finish_step(tally(2, 2, 0), 241_000).unwrap();
        // Waiting for step 2 (due at 841_000): then 4 min, 10 min delay, 4 min.
        let eta = estimate_completion(&r, &[t.clone()], 300_000).unwrap();
        assert_eq!(eta, 841_000 + 240_000 + 600_000 + 240_000);
        // Step 2 syncing for 1 minute: 3 minutes of it left, then delay + one step.
        let r = r.start_step(841_000).unwrap();
        t.step = 0;
        let eta = estimate_completion(&r, &[t], 901_000).unwrap();
        assert_eq!(eta, 901_000 + 180_000 + 600_000 + 240_000);
        assert_eq!(estimate_completion(&r.pause(1).unwrap(), &[], 1), None);
    }

    #[test]
    fn a_target_failed_in_an_earlier_round_is_pending_again() {
        let t = ReleaseTarget {
            release_id: ReleaseId::new("r-1").unwrap(),
            install_id: InstallId::new("i-1").unwrap(),
            step: 0,
            round: 0,
            syncs: vec![TargetSync {
                component: ComponentName::new("web").unwrap(),
                build_id: BuildId::new("b-1").unwrap(),
                digest: Digest::new(format!("sha256:{}", "a".repeat(64))).unwrap(),
                sync_id: None,
                state: TargetState::Failed,
                error: None,
                bytes_copied: 0,
            }],
            updated_at: 0,
            version: 1,
        };
        assert_eq!(t.state(0), TargetState::Failed);
        assert_eq!(t.state(1), TargetState::Pending);
        let mut tally = StepTally::default();
        tally.add(&t, 0);
        assert_eq!(
            tally,
            StepTally {
                targets: 1,
                finished: 1,
                failed: 1
            }
        );
    }
}
