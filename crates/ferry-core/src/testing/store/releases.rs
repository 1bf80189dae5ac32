//! `impl ReleaseStore for MemStore`: releases and their targets, with the same conditional
//! writes and pages as the job store fake. Tests only.

use std::cmp::Reverse;

use super::{insert_if_absent, paginate, MemStore};
use crate::domain::LineageRecord;
use crate::id::{AppName, Digest, InstallId, ReleaseId};
use crate::ports::{Conflict, Page, PageRequest, StoreError, WriteError};
use crate::release::{Release, ReleaseStore, ReleaseTarget};
use crate::testing::{lock, yield_now};

impl ReleaseStore for MemStore {
    async fn create_release(&self, release: &Release) -> Result<(), WriteError<Release>> {
        yield_now().await;
        let mut s = lock(&self.0);
        insert_if_absent(&mut s.releases, release.id.clone(), release)?;
        s.writes += 1;
        Ok(())
    }

    async fn get_release(&self, id: &ReleaseId) -> Result<Option<Release>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0).releases.get(id).cloned())
    }

    async fn update_release(
        &self,
        next: &Release,
        expected: u64,
    ) -> Result<(), WriteError<Release>> {
        yield_now().await;
        let mut s = lock(&self.0);
        match s.releases.get(&next.id) {
            Some(cur) if cur.version == expected => {
                s.releases.insert(next.id.clone(), next.clone());
                s.writes += 1;
                Ok(())
            }
            cur => Err(WriteError::Conflict(Conflict {
                current: cur.cloned(),
            })),
        }
    }

    async fn releases_by_app(
        &self,
        app: &AppName,
        page: &PageRequest,
    ) -> Result<Page<Release>, StoreError> {
        yield_now().await;
        let items = lock(&self.0)
            .releases
            .values()
            .filter(|r| &r.app == app)
            .map(|r| ((Reverse(r.created_at), Reverse(r.id.clone())), r.clone()))
            .collect();
        paginate(items, page)
    }

    async fn create_target(&self, target: &ReleaseTarget) -> Result<(), WriteError<ReleaseTarget>> {
        yield_now().await;
        let mut s = lock(&self.0);
        let key = (
            target.release_id.clone(),
            target.step,
            target.install_id.clone(),
        );
        // One target per (release, install), whatever its step.
        if let Some(cur) = s
            .targets
            .values()
            .find(|t| t.release_id == target.release_id && t.install_id == target.install_id)
        {
            return Err(WriteError::Conflict(Conflict {
                current: Some(cur.clone()),
            }));
        }
        s.targets.insert(key, target.clone());
        s.writes += 1;
        Ok(())
    }

    async fn get_target(
        &self,
        release: &ReleaseId,
        install: &InstallId,
    ) -> Result<Option<ReleaseTarget>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0)
            .targets
            .values()
            .find(|t| &t.release_id == release && &t.install_id == install)
            .cloned())
    }

    async fn update_target(
        &self,
        next: &ReleaseTarget,
        expected: u64,
    ) -> Result<(), WriteError<ReleaseTarget>> {
        yield_now().await;
        let mut s = lock(&self.0);
        let key = (next.release_id.clone(), next.step, next.install_id.clone());
        match s.targets.get(&key) {
            Some(cur) if cur.version == expected => {
                s.targets.insert(key, next.clone());
                s.writes += 1;
                Ok(())
            }
            cur => Err(WriteError::Conflict(Conflict {
                current: cur.cloned(),
            })),
        }
    }

    async fn targets_by_step(
        &self,
        release: &ReleaseId,
        step: u32,
        page: &PageRequest,
    ) -> Result<Page<ReleaseTarget>, StoreError> {
        yield_now().await;
        let items = lock(&self.0)
            .targets
            .values()
            .filter(|t| &t.release_id == release && t.step == step)
            .map(|t| (t.install_id.clone(), t.clone()))
            .collect();
        paginate(items, page)
    }

    async fn running_releases(&self, page: &PageRequest) -> Result<Page<Release>, StoreError> {
        yield_now().await;
        let items = lock(&self.0)
            .releases
            .values()
            .filter(|r| r.status == crate::release::ReleaseStatus::Running)
            .map(|r| (r.id.clone(), r.clone()))
            .collect();
        paginate(items, page)
    }

    async fn get_lineage(
        &self,
        digest: &Digest,
        install: &InstallId,
    ) -> Result<Option<LineageRecord>, StoreError> {
        yield_now().await;
        Ok(lock(&self.0)
            .lineage
            .get(&(digest.clone(), install.clone()))
            .cloned())
    }
}
