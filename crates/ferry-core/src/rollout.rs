//! Rolling a release out: creating it, its step timers, each step's fan-out in pages, the end
//! of each sync reported back to its release, and pause/resume/abort.
//!
//! Steps advance by events, never by a sleeping function: a step starts when its
//! `release.step` timer (a message sent with a delay to the release queue, re-sent while the
//! wait is longer than the queue allows) fires; its targets are read one page at a time, each
//! page requesting its syncs and sending the next page's `release.step` at once, so a step of
//! any size resumes at the page a timeout stopped it at; a step ends when a `release.synced`
//! finds every target of the step terminal. Every write is conditional on the record's version
//! and every sync id is derived from (release, build, install, round), so a replayed or
//! duplicated event changes nothing and no install is enqueued twice. This module must never
//! wait on a clock or trust an event's claim about an outcome: outcomes are read from the
//! store.

use std::collections::BTreeMap;

use crate::domain::{Install, SyncJob};
use crate::event::{Event, Payload, ReleaseStep, ReleaseSynced, SyncRequested};
use crate::handlers::{HandlerError, Outcome, Ports};
use crate::id::{AppName, BuildId, EventId, InstallId, ReleaseId};
use crate::ports::{
    Backend, Batch, Clock, Cursor, EventBus as _, JobStore, PageRequest, Queue, WriteError,
    MAX_DELAY_SECONDS, MAX_PAGE,
};
use crate::release::{
    Release, ReleaseBuild, ReleaseError, ReleasePolicy, ReleaseStatus, ReleaseStore, ReleaseTarget,
    StepPhase, StepTally, TargetState, TargetSync,
};
pub use crate::release_port::{Desk, ReleaseDesk, Releases, MAX_RELEASES_LISTED};
use crate::state::{JobError, JobStatus};

/// What the vendor asks for: these builds (one per component) to these installs (all of the
/// app's installs subscribed to a component when `installs` is `None`), in steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRequest {
    /// Chosen by the caller (the CLI generates one), so a resent request is deduplicated.
    pub id: ReleaseId,
    pub app: AppName,
    pub builds: Vec<BuildId>,
    pub installs: Option<Vec<InstallId>>,
    pub policy: ReleasePolicy,
    pub requested_by: String,
}

fn invalid(message: String) -> HandlerError {
    HandlerError::Release(ReleaseError::Invalid(message))
}

fn encode_err(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Encode {
        message: e.to_string(),
    }
}

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

/// The event id of one page of one step of one round: a duplicate of it is the same piece.
pub(crate) fn step_event(
    release: &Release,
    page: u32,
    cursor: Option<Cursor>,
) -> Result<Event, HandlerError> {
    let id = EventId::new(format!(
        "{}.s{}.r{}.p{}",
        release.id, release.step, release.round, page
    ))
    .map_err(encode_err)?;
    Ok(Event::with_id(
        id,
        Payload::ReleaseStep(ReleaseStep {
            release_id: release.id.clone(),
            step: release.step,
            round: release.round,
            page,
            cursor: cursor.map(|c| c.as_str().to_string()),
        }),
    ))
}

pub(crate) async fn send_event<D: Desk>(
    ports: &D,
    event: &Event,
    delay_seconds: u32,
) -> Result<(), HandlerError> {
    let body = event.to_json().map_err(encode_err)?;
    ports
        .queue()
        .send_delayed(
            ports.release_queue(),
            &body,
            delay_seconds.min(MAX_DELAY_SECONDS),
        )
        .await?;
    Ok(())
}

/// Sets the timer the release's state needs, if any (running and waiting): a `release.step`
/// delayed until the step is due, or by the longest delay the queue allows (the handler sends
/// it again until it is due).
pub(crate) async fn send_timer<D: Desk>(ports: &D, release: &Release) -> Result<(), HandlerError> {
    let Some((_, _, due_at)) = release.pending_timer() else {
        return Ok(());
    };
    let wait_ms = due_at.saturating_sub(ports.clock().now_ms());
    let secs = u32::try_from(wait_ms.div_ceil(1000)).unwrap_or(u32::MAX);
    send_event(ports, &step_event(release, 0, None)?, secs).await
}

/// Re-reads and writes `decide(latest)` until a conditional write lands or `decide` says
/// nothing is to be done (`None`); returns the release as stored and whether this call wrote.
async fn update_release<D: Desk>(
    ports: &D,
    mut current: Release,
    decide: impl Fn(&Release) -> Result<Option<Release>, HandlerError>,
) -> Result<(Release, bool), HandlerError> {
    for _ in 0..ports.max_write_tries().max(1) {
        let Some(next) = decide(&current)? else {
            return Ok((current, false));
        };
        if next == current {
            return Ok((current, false));
        }
        match ports.store().update_release(&next, current.version).await {
            Ok(()) => return Ok((next, true)),
            Err(WriteError::Conflict(c)) => match c.current {
                Some(latest) => current = latest,
                None => {
                    return Err(HandlerError::Vanished {
                        what: "release",
                        id: current.id.to_string(),
                    })
                }
            },
            Err(WriteError::Store(e)) => return Err(e.into()),
        }
    }
    Err(HandlerError::Contention {
        what: "release",
        id: current.id.to_string(),
    })
}

async fn update_target<D: Desk>(
    ports: &D,
    mut current: ReleaseTarget,
    decide: impl Fn(&ReleaseTarget) -> Option<ReleaseTarget>,
) -> Result<ReleaseTarget, HandlerError> {
    for _ in 0..ports.max_write_tries().max(1) {
        let Some(next) = decide(&current) else {
            return Ok(current);
        };
        match ports.store().update_target(&next, current.version).await {
            Ok(()) => return Ok(next),
            Err(WriteError::Conflict(c)) => match c.current {
                Some(latest) => current = latest,
                None => {
                    return Err(HandlerError::Vanished {
                        what: "release target",
                        id: current.install_id.to_string(),
                    })
                }
            },
            Err(WriteError::Store(e)) => return Err(e.into()),
        }
    }
    Err(HandlerError::Contention {
        what: "release target",
        id: current.install_id.to_string(),
    })
}

pub(crate) async fn get_release<D: Desk>(
    ports: &D,
    id: &ReleaseId,
) -> Result<Release, HandlerError> {
    ports
        .store()
        .get_release(id)
        .await?
        .ok_or_else(|| HandlerError::UnknownRelease {
            release_id: id.clone(),
        })
}

fn ignored(release: &ReleaseId, reason: impl Into<String>) -> Outcome {
    Outcome::ReleaseIgnored {
        release_id: release.clone(),
        reason: reason.into(),
    }
}

/// `release.step`: starts the step when it is due, then requests the syncs of one page of its
/// targets and sends the next page's event; after the last page, checks whether the step is
/// already done (every target already current).
pub async fn handle_release_step<P: Backend>(
    ports: &Ports<P>,
    ev: &ReleaseStep,
) -> Result<Outcome, HandlerError> {
    let now = ports.clock.now_ms();
    let mut release = get_release(ports, &ev.release_id).await?;
    // The timer of the next step may overtake the write that ends this one (a crash between
    // them, or a zero delay): end it here, from the store, then go on.
    if ev.step == release.step + 1
        && ev.round == release.round
        && release.phase == StepPhase::Syncing
    {
        release = end_step_if_done(ports, release, false).await?;
    }
    if ev.step != release.step || ev.round != release.round {
        return Ok(ignored(
            &release.id,
            "a timer of a step or round that is over",
        ));
    }
    if let StepPhase::Waiting { due_at } = release.phase {
        if release.status != ReleaseStatus::Running {
            return Ok(ignored(
                &release.id,
                format!("release is {}", release.status),
            ));
        }
        if now < due_at {
            // Longer than one queue delay: wait again.
            send_timer(ports, &release).await?;
            return Ok(ignored(&release.id, "step not due yet; timer set again"));
        }
        let (started, _) = update_release(ports, release, |r| Ok(r.start_step(now))).await?;
        release = started;
    }
    if release.phase != StepPhase::Syncing || release.step != ev.step {
        return Ok(ignored(&release.id, "step is not syncing"));
    }
    let page = match &ev.cursor {
        Some(c) => PageRequest::after(MAX_PAGE, Cursor::new(c.clone())),
        None => PageRequest::first(MAX_PAGE),
    };
    let got = ports
        .store
        .targets_by_step(&release.id, release.step, &page)
        .await?;
    // fanout3 (issue 12): the page's targets are started with one batch read and one batch
    // write, and each sync.requested carries what its handler would otherwise read.
    let started = start_targets(ports, &release, got.items).await?;
    let events = page_requests(ports, &release, &started).await?;
    let requested = events.len();
    publish(ports, events).await?;
    match got.next {
        Some(cursor) => {
            let next = step_event(&release, ev.page + 1, Some(cursor))?;
            send_event(ports, &next, 0).await?;
        }
        None => {
            end_step_if_done(ports, release.clone(), true).await?;
        }
    }
    tracing::info!(release_id = %release.id, step = release.step, page = ev.page, requested, "release step page handled");
    Ok(Outcome::ReleaseStepHandled {
        release_id: release.id,
        step: ev.step,
        page: ev.page,
        syncs_requested: requested,
    })
}

// fanout3 (issue 12): from here to `publish`, a page's targets are started in batches.

/// Moves each target's pending components (and, in a retry round, its failed ones) to
/// Syncing with this round's sync ids, or to Current when the install already holds the
/// digest. One batch read of what the installs hold, then one all-or-nothing batch write; if
/// a target changed meanwhile, each is written on its own with re-reads. Returns the targets
/// as stored. An aborted release starts nothing new.
async fn start_targets<P: Backend>(
    ports: &Ports<P>,
    release: &Release,
    targets: Vec<ReleaseTarget>,
) -> Result<Vec<ReleaseTarget>, HandlerError> {
    if release.status == ReleaseStatus::Aborted {
        return Ok(targets);
    }
    // Which digests the installs hold now (read once, outside the write loop).
    let wanted: Vec<(crate::id::Digest, InstallId)> = targets
        .iter()
        .flat_map(|t| {
            t.syncs
                .iter()
                .map(move |s| (s.digest.clone(), t.install_id.clone()))
        })
        .collect();
    let held: Vec<(crate::id::Digest, InstallId)> = ports
        .store
        .get_lineages(&wanted)
        .await?
        .into_iter()
        .map(|l| (l.digest, l.install_id))
        .collect();
    let now = ports.clock.now_ms();
    let decide = |t: &ReleaseTarget| start_decision(ports, release, &held, t, now);
    let writes: Vec<(ReleaseTarget, u64)> = targets
        .iter()
        .filter_map(|t| decide(t).map(|next| (next, t.version)))
        .collect();
    if ports.store.update_targets(&writes).await? {
        let mut written = writes.into_iter().map(|(next, _)| next);
        let mut out = Vec::with_capacity(targets.len());
        let mut next = written.next();
        for t in targets {
            match &next {
                Some(n) if n.install_id == t.install_id => {
                    out.push(next.take().unwrap_or(t));
                    next = written.next();
                }
                _ => out.push(t),
            }
        }
        return Ok(out);
    }
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        out.push(update_target(ports, t, decide).await?);
    }
    Ok(out)
}

/// What starting `t` writes, or `None` when it has nothing to start.
fn start_decision<P: Backend>(
    ports: &Ports<P>,
    release: &Release,
    held: &[(crate::id::Digest, InstallId)],
    t: &ReleaseTarget,
    now: u64,
) -> Option<ReleaseTarget> {
    let mut next = t.bumped(now);
    let mut changed = false;
    for s in &mut next.syncs {
        let retry = s.state == TargetState::Failed && t.round < release.round;
        if s.state != TargetState::Pending && !retry {
            continue;
        }
        changed = true;
        s.error = None;
        if held
            .iter()
            .any(|(d, i)| d == &s.digest && i == &t.install_id)
        {
            s.state = TargetState::Current;
        } else {
            s.state = TargetState::Syncing;
            s.sync_id = Some(ports.vendor_key.release_sync_id(
                &release.id,
                &s.build_id,
                &t.install_id,
                release.round,
            ));
        }
    }
    if t.round != release.round {
        next.round = release.round;
        changed = true;
    }
    changed.then_some(next)
}

/// The `sync.requested` of every sync a page started in this round, each with its dispatch
/// context (the install and the component's verification policy, read once for the page and
/// MAC'd with the vendor key) when the install is registered.
async fn page_requests<P: Backend>(
    ports: &Ports<P>,
    release: &Release,
    started: &[ReleaseTarget],
) -> Result<Vec<Event>, HandlerError> {
    let syncing: Vec<(&ReleaseTarget, &TargetSync, &crate::id::SyncId)> = started
        .iter()
        .filter(|t| t.round == release.round)
        .flat_map(|t| {
            t.syncs
                .iter()
                .filter_map(move |s| match (s.state, &s.sync_id) {
                    (TargetState::Syncing, Some(id)) => Some((t, s, id)),
                    _ => None,
                })
        })
        .collect();
    if syncing.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<InstallId> = started.iter().map(|t| t.install_id.clone()).collect();
    let installs = ports.store.get_installs(&ids).await?;
    let mut policies: BTreeMap<crate::id::ComponentName, Option<crate::domain::VerifyPolicy>> =
        BTreeMap::new();
    let mut events = Vec::with_capacity(syncing.len());
    for (t, s, sync_id) in syncing {
        let mut event = sync_request(release, t, s, sync_id.clone())?;
        let Some(install) = installs.iter().find(|i| i.id == t.install_id) else {
            // Not registered (any more): the handler reads the store and fails the sync.
            events.push(event);
            continue;
        };
        let policy = match policies.get(&s.component) {
            Some(p) => p.clone(),
            None => {
                let p = ports
                    .store
                    .get_component(&release.app, &s.component)
                    .await?
                    .and_then(|c| c.verify);
                policies.insert(s.component.clone(), p.clone());
                p
            }
        };
        if let Payload::SyncRequested(ev) = &mut event.payload {
            ev.context = Some(Box::new(crate::fanout::seal_context(
                &ports.vendor_key,
                ev,
                install.clone(),
                policy,
            )));
        }
        events.push(event);
    }
    Ok(events)
}

fn sync_request(
    release: &Release,
    target: &ReleaseTarget,
    s: &TargetSync,
    sync_id: crate::id::SyncId,
) -> Result<Event, HandlerError> {
    let repository = release
        .builds
        .iter()
        .find(|b| b.component == s.component)
        .map(|b| b.repository.clone())
        .ok_or_else(|| HandlerError::Mismatch {
            message: format!(
                "release {} target {} names component {} that the release does not build",
                release.id, target.install_id, s.component
            ),
        })?;
    let event_id = EventId::new(sync_id.as_str()).map_err(encode_err)?;
    Ok(Event::with_id(
        event_id,
        Payload::SyncRequested(SyncRequested {
            sync_id,
            build_id: s.build_id.clone(),
            install_id: target.install_id.clone(),
            repository,
            digest: s.digest.clone(),
            release_id: Some(release.id.clone()),
            context: None,
        }),
    ))
}

/// Publishes in batches of 10, concurrently (a page is at most 100 events: 10 calls at once).
async fn publish<P: Backend>(ports: &Ports<P>, events: Vec<Event>) -> Result<(), HandlerError> {
    let calls = Batch::chunks(events)
        .into_iter()
        .map(|batch| async move { (ports.bus.put_events(&batch).await, batch) });
    let mut failed = 0;
    let mut first = None;
    for (result, batch) in futures_join_all(calls).await {
        let results = result?;
        for (i, _) in batch.items().iter().enumerate() {
            match results.get(i) {
                Some(Ok(_)) => {}
                Some(Err(f)) => {
                    failed += 1;
                    first.get_or_insert_with(|| f.to_string());
                }
                None => {
                    failed += 1;
                    first.get_or_insert_with(|| "the bus returned no result".to_string());
                }
            }
        }
    }
    if failed > 0 {
        // The page is handled again on redelivery; the derived ids make the repeats no-ops.
        return Err(HandlerError::Publish {
            failed,
            first: first.unwrap_or_default(),
        });
    }
    Ok(())
}

/// Runs futures concurrently on the current task (no runtime needed in the core).
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if out[i].is_some() {
                continue;
            }
            match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => out[i] = Some(v),
                std::task::Poll::Pending => all = false,
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// Tallies the current step from its targets and, when every one is terminal, ends it (halt,
/// complete or move on) with one conditional write; sets the next timer when `timer`.
pub(crate) async fn end_step_if_done<D: Desk>(
    ports: &D,
    release: Release,
    timer: bool,
) -> Result<Release, HandlerError> {
    if release.phase != StepPhase::Syncing {
        return Ok(release);
    }
    let tally = tally_step(ports, &release).await?;
    let now = ports.clock().now_ms();
    let (stored, wrote) = update_release(ports, release, |r| {
        // Another writer may have moved on meanwhile: only end the step that was tallied.
        if r.step != tally.1 || r.round != tally.2 {
            return Ok(None);
        }
        Ok(r.finish_step(tally.0, now))
    })
    .await?;
    if wrote {
        tracing::info!(release_id = %stored.id, status = %stored.status, step = stored.step, "release step ended");
        if timer {
            send_timer(ports, &stored).await?;
        }
    }
    Ok(stored)
}

async fn tally_step<D: Desk>(
    ports: &D,
    release: &Release,
) -> Result<(StepTally, u32, u32), HandlerError> {
    let mut tally = StepTally::default();
    let mut page = PageRequest::first(MAX_PAGE);
    loop {
        let got = ports
            .store()
            .targets_by_step(&release.id, release.step, &page)
            .await?;
        for t in &got.items {
            tally.add(t, release.round);
        }
        match got.next {
            Some(c) => page = PageRequest::after(MAX_PAGE, c),
            None => return Ok((tally, release.step, release.round)),
        }
    }
}

/// Tells the sync's release, if any, that the sync is terminal (a `release.synced` on the
/// release queue). Called by the sync handlers after every terminal write; a failure is the
/// handler's, so the event that made the sync terminal is retried and this is sent again.
/// Over any [`Desk`]: a bundle receipt (`crate::bundle::record_receipt`) tells the release
/// the same way.
pub(crate) async fn sync_finished<D: Desk>(ports: &D, job: &SyncJob) -> Result<(), HandlerError> {
    let Some(release_id) = &job.release_id else {
        return Ok(());
    };
    if !job.status().is_terminal() {
        return Ok(());
    }
    let id = EventId::new(format!("rs.{}", job.id)).map_err(encode_err)?;
    let event = Event::with_id(
        id,
        Payload::ReleaseSynced(ReleaseSynced {
            release_id: release_id.clone(),
            sync_id: job.id.clone(),
        }),
    );
    send_event(ports, &event, 0).await
}

/// `release.synced`: records the sync's outcome (read from the store) on its target, then
/// ends the step if every target of it is terminal.
pub async fn handle_release_synced<P: Backend>(
    ports: &Ports<P>,
    ev: &ReleaseSynced,
) -> Result<Outcome, HandlerError> {
    let Some(job) = ports.store.get_sync(&ev.sync_id).await? else {
        return Ok(ignored(&ev.release_id, "no such sync"));
    };
    if job.release_id.as_ref() != Some(&ev.release_id) || !job.status().is_terminal() {
        return Ok(ignored(
            &ev.release_id,
            "the sync is not a finished sync of this release",
        ));
    }
    let release = get_release(ports, &ev.release_id).await?;
    let Some(stored) = record_outcome(ports, &release, &job).await? else {
        return Ok(ignored(&release.id, "the install is not a target"));
    };
    let release = if stored.step == release.step {
        end_step_if_done(ports, release, true).await?
    } else {
        release
    };
    Ok(Outcome::ReleaseSynced {
        release_id: release.id,
        sync_id: job.id,
        status: release.status,
    })
}

/// Records a terminal sync's outcome (read from the store, never from an event) on its
/// release target; `None` when the install is not a target of `release`. A repeat changes
/// nothing (only an entry still `syncing` under this sync id is written).
pub(crate) async fn record_outcome<D: Desk>(
    ports: &D,
    release: &Release,
    job: &SyncJob,
) -> Result<Option<ReleaseTarget>, HandlerError> {
    let Some(target) = ports
        .store()
        .get_target(&release.id, &job.install_id)
        .await?
    else {
        return Ok(None);
    };
    let (state, error) = match job.status() {
        JobStatus::Succeeded => (TargetState::Succeeded, None),
        _ => (
            TargetState::Failed,
            Some(job.state.error.clone().unwrap_or_else(|| {
                JobError::new(
                    "sync_failed",
                    format!("sync {} ended as {}", job.id, job.status()),
                )
            })),
        ),
    };
    let bytes = job.stats.map(|s| s.bytes_copied).unwrap_or(0);
    let now = ports.clock().now_ms();
    let stored = update_target(ports, target, |t| {
        let mut next = t.bumped(now);
        let entry = next
            .syncs
            .iter_mut()
            .find(|s| s.sync_id.as_ref() == Some(&job.id) && s.state == TargetState::Syncing)?;
        entry.state = state;
        entry.error = error.clone();
        entry.bytes_copied = bytes;
        Some(next)
    })
    .await?;
    Ok(Some(stored))
}

/// Pauses a running release: the step in flight finishes, the next does not start.
pub async fn pause_release<D: Desk>(ports: &D, id: &ReleaseId) -> Result<Release, HandlerError> {
    let now = ports.clock().now_ms();
    let release = get_release(ports, id).await?;
    let (stored, _) = update_release(ports, release, |r| Ok(Some(r.pause(now)?))).await?;
    Ok(stored)
}

/// Resumes a paused release (its waiting step's timer is set again) or a halted one (a new
/// round: the failed installs of the halted step are retried, then the release goes on).
pub async fn resume_release<D: Desk>(ports: &D, id: &ReleaseId) -> Result<Release, HandlerError> {
    let now = ports.clock().now_ms();
    let release = get_release(ports, id).await?;
    let (stored, _) = update_release(ports, release, |r| Ok(Some(r.resume(now)?))).await?;
    // Set even when nothing was written (a resume repeated after a lost timer): a duplicate
    // timer is a no-op.
    send_timer(ports, &stored).await?;
    if stored.status == ReleaseStatus::Running && stored.phase == StepPhase::Syncing {
        // Paused while syncing, and the step ended meanwhile: end it now.
        return end_step_if_done(ports, stored, true).await;
    }
    Ok(stored)
}

/// Aborts a release for good; syncs already enqueued still finish.
pub async fn abort_release<D: Desk>(
    ports: &D,
    id: &ReleaseId,
    by: &str,
) -> Result<Release, HandlerError> {
    let now = ports.clock().now_ms();
    let release = get_release(ports, id).await?;
    let (stored, _) = update_release(ports, release, |r| Ok(Some(r.abort(now, by)?))).await?;
    Ok(stored)
}

/// Every target of a release, step by step (for `release show`).
pub async fn release_targets<D: Desk>(
    ports: &D,
    release: &Release,
) -> Result<Vec<ReleaseTarget>, HandlerError> {
    let mut out = Vec::new();
    for step in 0..release.steps {
        let mut page = PageRequest::first(MAX_PAGE);
        loop {
            let got = ports
                .store()
                .targets_by_step(&release.id, step, &page)
                .await?;
            out.extend(got.items);
            match got.next {
                Some(c) => page = PageRequest::after(MAX_PAGE, c),
                None => break,
            }
        }
    }
    Ok(out)
}
