//! The release port: what `ferry release …` asks of a backend ([`Releases`]), and the
//! [`Desk`] every release operation and handler works through (the store, the release queue,
//! the time). It sits beside the management port ([`crate::manage::Management`]); the rules
//! themselves are in [`crate::release`] and [`crate::rollout`]. This module must never do I/O
//! except through the ports it is given.

use std::future::Future;

use crate::handlers::{HandlerError, Ports};
use crate::id::{AppName, QueueName, ReleaseId};
use crate::ports::{Backend, Clock, JobStore, PageRequest, Queue};
use crate::release::{Release, ReleaseStore, ReleaseTarget};
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
