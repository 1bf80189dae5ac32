//! The release port: what `ferry release …` asks of a backend ([`Releases`]), and the
//! [`Desk`] every release operation and handler works through (the store, the release queue,
//! the time). It sits beside the management port ([`crate::manage::Management`]); the rules
//! themselves are in [`crate::release`] and [`crate::rollout`]. This module must never do I/O
//! except through the ports it is given.

use std::future::Future;

use serde::Serialize;

use crate::domain::Install;
use crate::handlers::{HandlerError, Ports};
use crate::id::{AppName, BuildId, ComponentName, Digest, QueueName, ReleaseId};
use crate::manage::Held;
use crate::ports::{Backend, Clock, JobStore, PageRequest, Queue};
use crate::release::{Release, ReleaseStore, ReleaseTarget, TargetState};
use crate::rollout::{
    abort_release, create_release, get_release, pause_release, release_targets, resume_release,
    ReleaseRequest,
};

/// What the vendor-side release operations (create, pause, resume, abort, show) and the
/// release handlers share: the store, the release queue and the time. [`Ports`] is one (the
/// handlers'); [`ReleaseDesk`] is one for a command that holds only these (`ferry release`).
pub trait Desk: Send + Sync {
    type Store: JobStore + ReleaseStore;
    type Queue: Queue;
    type Clock: Clock;
    /// Releases, targets, builds, installs and lineage.
    fn store(&self) -> &Self::Store;
    /// The queue the release queue lives in.
    fn queue(&self) -> &Self::Queue;
    /// The time release changes are stamped with.
    fn clock(&self) -> &Self::Clock;
    /// Where step timers go (the queue the bus routes release events to).
    fn release_queue(&self) -> &QueueName;
    /// Re-reads after a conditional-write conflict before giving up.
    fn max_write_tries(&self) -> u32;
}

impl<P: Backend> Desk for Ports<P> {
    type Store = P::Store;
    type Queue = P::Queue;
    type Clock = P::Clock;
    fn store(&self) -> &P::Store {
        &self.store
    }
    fn queue(&self) -> &P::Queue {
        &self.queue
    }
    fn clock(&self) -> &P::Clock {
        &self.clock
    }
    fn release_queue(&self) -> &QueueName {
        &self.release_queue
    }
    fn max_write_tries(&self) -> u32 {
        self.config.max_write_tries
    }
}

/// The release operations' ports on their own (no builder, minter, bus or vendor key).
#[derive(Debug, Clone)]
pub struct ReleaseDesk<S, Q, C> {
    pub store: S,
    pub queue: Q,
    pub clock: C,
    pub release_queue: QueueName,
    pub max_write_tries: u32,
}

impl<S, Q, C> Desk for ReleaseDesk<S, Q, C>
where
    S: JobStore + ReleaseStore,
    Q: Queue,
    C: Clock,
{
    type Store = S;
    type Queue = Q;
    type Clock = C;
    fn store(&self) -> &S {
        &self.store
    }
    fn queue(&self) -> &Q {
        &self.queue
    }
    fn clock(&self) -> &C {
        &self.clock
    }
    fn release_queue(&self) -> &QueueName {
        &self.release_queue
    }
    fn max_write_tries(&self) -> u32 {
        self.max_write_tries
    }
}

/// The release port: what `ferry release …` (and later the console) asks of a backend, beside
/// the management port ([`crate::manage::Management`]). Implemented once, for every [`Desk`],
/// so the local backend and AWS run the same code over their own store and queue.
pub trait Releases: Send + Sync {
    /// Creates a release (see [`create_release`]).
    fn create(
        &self,
        req: &ReleaseRequest,
    ) -> impl Future<Output = Result<Release, HandlerError>> + Send;
    /// The release and every target, step by step.
    fn show(
        &self,
        id: &ReleaseId,
    ) -> impl Future<Output = Result<(Release, Vec<ReleaseTarget>), HandlerError>> + Send;
    /// The newest releases of `app` (at most [`MAX_RELEASES_LISTED`]).
    fn list(
        &self,
        app: &AppName,
    ) -> impl Future<Output = Result<Vec<Release>, HandlerError>> + Send;
    /// See [`pause_release`].
    fn pause(&self, id: &ReleaseId) -> impl Future<Output = Result<Release, HandlerError>> + Send;
    /// See [`resume_release`].
    fn resume(&self, id: &ReleaseId) -> impl Future<Output = Result<Release, HandlerError>> + Send;
    /// See [`abort_release`].
    fn abort(
        &self,
        id: &ReleaseId,
        by: &str,
    ) -> impl Future<Output = Result<Release, HandlerError>> + Send;
}

/// The most releases `list` returns (newest first).
pub const MAX_RELEASES_LISTED: usize = 100;

impl<D: Desk> Releases for D {
    async fn create(&self, req: &ReleaseRequest) -> Result<Release, HandlerError> {
        create_release(self, req).await
    }
    async fn show(&self, id: &ReleaseId) -> Result<(Release, Vec<ReleaseTarget>), HandlerError> {
        let release = get_release(self, id).await?;
        let targets = release_targets(self, &release).await?;
        Ok((release, targets))
    }
    async fn list(&self, app: &AppName) -> Result<Vec<Release>, HandlerError> {
        let got = self
            .store()
            .releases_by_app(app, &PageRequest::first(MAX_RELEASES_LISTED as u32))
            .await?;
        Ok(got.items)
    }
    async fn pause(&self, id: &ReleaseId) -> Result<Release, HandlerError> {
        pause_release(self, id).await
    }
    async fn resume(&self, id: &ReleaseId) -> Result<Release, HandlerError> {
        resume_release(self, id).await
    }
    async fn abort(&self, id: &ReleaseId, by: &str) -> Result<Release, HandlerError> {
        abort_release(self, id, by).await
    }
}

/// What the vendor released to one component of an install: the newest release naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Desired {
    pub release_id: ReleaseId,
    pub build_id: BuildId,
    pub digest: Digest,
    /// The install's state in that release, for this component.
    pub state: TargetState,
}

/// Desired vs current for one component of an install (`ferry install show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentVersions {
    pub component: ComponentName,
    /// The newest release's build for it; `None` when no release of the app named the install.
    pub desired: Option<Desired>,
    /// What the install's agent verified last in the component's repository.
    pub current: Option<Held>,
    /// The current digest is the desired one (false when either is unknown).
    pub in_sync: bool,
}

/// Desired vs current, per component the install subscribes to. `holds` is what the
/// management port found it holds ([`crate::manage::InstallStatus::holds`]). Desired comes from
/// the app's newest releases (at most [`MAX_RELEASES_LISTED`], newest first, one point read of
/// the install's target each, stopping once every component has one), so it is bounded.
pub async fn install_versions<S: JobStore + ReleaseStore>(
    store: &S,
    install: &Install,
    holds: &[Held],
) -> Result<Vec<ComponentVersions>, HandlerError> {
    let mut rows = Vec::new();
    for name in &install.components {
        let repository = store
            .get_component(&install.app, name)
            .await?
            .map(|c| c.repository);
        let current = repository
            .and_then(|r| holds.iter().find(|h| h.is_of(&r)))
            .cloned();
        rows.push(ComponentVersions {
            component: name.clone(),
            desired: None,
            current,
            in_sync: false,
        });
    }
    let releases = store
        .releases_by_app(
            &install.app,
            &PageRequest::first(MAX_RELEASES_LISTED as u32),
        )
        .await?
        .items;
    for release in releases {
        if rows.iter().all(|r| r.desired.is_some()) {
            break;
        }
        let Some(target) = store.get_target(&release.id, &install.id).await? else {
            continue;
        };
        for s in &target.syncs {
            let Some(row) = rows
                .iter_mut()
                .find(|r| r.component == s.component && r.desired.is_none())
            else {
                continue;
            };
            let state = match s.state {
                // A failure of an earlier round is pending again (as `release show` says).
                TargetState::Failed if target.round < release.round => TargetState::Pending,
                other => other,
            };
            row.desired = Some(Desired {
                release_id: release.id.clone(),
                build_id: s.build_id.clone(),
                digest: s.digest.clone(),
                state,
            });
        }
    }
    for row in &mut rows {
        row.in_sync = match (&row.desired, &row.current) {
            (Some(d), Some(c)) => d.digest == c.digest,
            _ => false,
        };
    }
    Ok(rows)
}
