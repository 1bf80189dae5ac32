//! `release.step`: a step's timer and its fan-out in pages: start the step when due, request
//! one page of syncs, send the next page's event. It must never wait on a clock, nor enqueue an
//! install twice (sync ids are derived, writes are conditional).

use super::{
    encode_err, end_step_if_done, get_release, ignored, send_event, send_timer, step_event,
    update_release, update_target,
};
use std::collections::BTreeMap;

use crate::event::{Event, Payload, ReleaseStep, SyncRequested};
use crate::handlers::{HandlerError, Outcome, Ports};
use crate::id::{EventId, InstallId};
use crate::ports::{Backend, Batch, Cursor, EventBus as _, PageRequest, MAX_PAGE};
use crate::ports::{Clock as _, JobStore as _};
use crate::release::ReleaseStore as _;
use crate::release::{Release, ReleaseStatus, ReleaseTarget, StepPhase, TargetState, TargetSync};

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
