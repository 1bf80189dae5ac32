//! Creating a release: its builds (one per component), its targets in a stable order, then
//! the release itself and its first step's timer. It must never write a release before all of
//! its targets, nor a second release for a request it already holds.

use crate::ports::{Clock as _, JobStore as _};
use crate::release::ReleaseStore as _;
use std::collections::BTreeMap;

use super::{invalid, send_timer, ReleaseRequest};
use crate::domain::Install;
use crate::handlers::HandlerError;
use crate::id::InstallId;
use crate::ports::{PageRequest, WriteError, MAX_PAGE};
use crate::release::{Release, ReleaseBuild, ReleaseTarget, TargetState, TargetSync};
use crate::release_port::Desk;
use crate::state::JobStatus;

/// Creates the release and its targets, then sets its first step's timer (due now). The
/// targets are written before the release, so a release that exists is complete; creating
/// the same request again returns the stored release and writes nothing new.
pub async fn create_release<D: Desk>(
    ports: &D,
    req: &ReleaseRequest,
) -> Result<Release, HandlerError> {
    req.policy.validate().map_err(HandlerError::Release)?;
    let store = ports.store();
    if let Some(existing) = store.get_release(&req.id).await? {
        return same_request(existing, req);
    }
    let builds = release_builds(ports, req).await?;
    let installs = target_installs(ports, req, &builds).await?;
    let now = ports.clock().now_ms();
    let total = u32::try_from(installs.len())
        .map_err(|_| invalid("a release may target at most 4294967295 installs".into()))?;
    let release = Release::new(
        req.id.clone(),
        req.app.clone(),
        builds,
        req.policy,
        req.requested_by.clone(),
        total,
        now,
    );
    // fanout3 (issue 12): the targets are written in batches (targets an earlier try of this
    // same request wrote are left as they are).
    let mut targets = Vec::with_capacity(installs.len());
    for (index, install) in installs.values().enumerate() {
        let syncs: Vec<TargetSync> = release
            .builds
            .iter()
            .filter(|b| install.subscribes_to(&release.app, &b.component))
            .map(|b| TargetSync {
                component: b.component.clone(),
                build_id: b.build_id.clone(),
                digest: b.digest.clone(),
                sync_id: None,
                state: TargetState::Pending,
                error: None,
                bytes_copied: 0,
            })
            .collect();
        targets.push(ReleaseTarget {
            release_id: release.id.clone(),
            install_id: install.id.clone(),
            step: Release::step_of(&release.policy, index as u32),
            round: 0,
            syncs,
            updated_at: now,
            version: 1,
        });
    }
    for chunk in targets.chunks(MAX_PAGE as usize) {
        store.create_targets(chunk).await?;
    }
    let stored = match store.create_release(&release).await {
        Ok(()) => release,
        Err(WriteError::Conflict(c)) => match c.current {
            Some(existing) => return same_request(existing, req),
            None => {
                return Err(invalid(format!(
                    "release {} vanished while created",
                    req.id
                )))
            }
        },
        Err(WriteError::Store(e)) => return Err(e.into()),
    };
    send_timer(ports, &stored).await?;
    tracing::info!(release_id = %stored.id, installs = stored.total_installs, steps = stored.steps, "release created");
    Ok(stored)
}

fn same_request(existing: Release, req: &ReleaseRequest) -> Result<Release, HandlerError> {
    let same_builds = existing.builds.len() == req.builds.len()
        && existing
            .builds
            .iter()
            .all(|b| req.builds.contains(&b.build_id));
    if existing.app == req.app && same_builds && existing.policy == req.policy {
        Ok(existing)
    } else {
        Err(invalid(format!(
            "release id {} is already used by another release; pick another id",
            req.id
        )))
    }
}

async fn release_builds<D: Desk>(
    ports: &D,
    req: &ReleaseRequest,
) -> Result<Vec<ReleaseBuild>, HandlerError> {
    if req.builds.is_empty() {
        return Err(invalid("name at least one build (--build)".into()));
    }
    let mut out: Vec<ReleaseBuild> = Vec::new();
    for id in &req.builds {
        let Some(build) = ports.store().get_build(id).await? else {
            return Err(invalid(format!(
                "build {id} does not exist; `ferry build list` shows the builds"
            )));
        };
        if build.app != req.app {
            return Err(invalid(format!(
                "build {id} is a build of app {}, not {}",
                build.app, req.app
            )));
        }
        let (JobStatus::Succeeded, Some(artifact)) = (build.status(), &build.artifact) else {
            return Err(invalid(format!(
                "build {id} is {}; only a succeeded build can be released",
                build.status()
            )));
        };
        if let Some(other) = out.iter().find(|b| b.component == build.component) {
            return Err(invalid(format!(
                "builds {} and {id} are both of component {}; a release names one build per \
                 component",
                other.build_id, build.component
            )));
        }
        out.push(ReleaseBuild {
            component: build.component.clone(),
            build_id: build.id.clone(),
            repository: artifact.repository.clone(),
            digest: artifact.digest.clone(),
        });
    }
    Ok(out)
}

/// The installs to target, by id (so steps are planned in a stable order).
async fn target_installs<D: Desk>(
    ports: &D,
    req: &ReleaseRequest,
    builds: &[ReleaseBuild],
) -> Result<BTreeMap<InstallId, Install>, HandlerError> {
    let mut out = BTreeMap::new();
    match &req.installs {
        Some(ids) => {
            for id in ids {
                let Some(install) = ports.store().get_install(id).await? else {
                    return Err(invalid(format!(
                        "install {id} is not registered; `ferry install list` shows the installs"
                    )));
                };
                if !builds
                    .iter()
                    .any(|b| install.subscribes_to(&req.app, &b.component))
                {
                    return Err(invalid(format!(
                        "install {id} receives none of the released components of app {}",
                        req.app
                    )));
                }
                out.insert(id.clone(), install);
            }
        }
        None => {
            for b in builds {
                let mut page = PageRequest::first(MAX_PAGE);
                loop {
                    let got = ports
                        .store()
                        .installs_by_component(&req.app, &b.component, &page)
                        .await?;
                    for install in got.items {
                        out.insert(install.id.clone(), install);
                    }
                    match got.next {
                        Some(c) => page = PageRequest::after(MAX_PAGE, c),
                        None => break,
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err(invalid(format!(
            "no install of app {} receives the released components; register installs first",
            req.app
        )));
    }
    Ok(out)
}
