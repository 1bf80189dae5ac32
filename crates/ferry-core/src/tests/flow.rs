//! The IMS handlers end to end over the in-memory fakes.

use crate::domain::{Component, ComponentKind, Install, RegistryTarget};
use crate::event::{
    parse_sync_job, BuildCompleted, BuildOutcome, BuildRequested, Event, JobRef, Payload,
    SyncJobMessage, SyncReportStatus, SyncReported,
};
use crate::handlers::{dispatch, request_build, HandlerError, Outcome};
use crate::id::{
    AppName, BuildId, ComponentName, Digest, EventId, InstallId, QueueName, Repository, SyncId,
};
use crate::ports::{Clock, JobStore, PageRequest, WriteError};
use crate::record::{decode_event, handle_record, Record, RecordOutcome, Redrive, DEAD_LETTERED};
use crate::state::JobStatus;
use crate::testing::{fake_ports, FakePorts, SeqIds, FAKE_GRANT_TTL_MS};

const T0: u64 = 1_700_000_000_000;

pub(super) fn digest(n: u8) -> Digest {
    Digest::new(format!("sha256:{}", hex::encode([n; 32]))).unwrap()
}

pub(super) fn install_id(n: usize) -> InstallId {
    InstallId::new(format!("i-{n:02}")).unwrap()
}

pub(super) use crate::testing::test_agent_key as agent_key;

/// shop/web (docker-build) and `n` installs subscribed to it, each with its own queue.
pub(super) async fn setup(n: usize) -> FakePorts {
    let p = fake_ports(T0);
    p.store
        .put_component(&Component {
            app: AppName::new("shop").unwrap(),
            name: ComponentName::new("web").unwrap(),
            kind: ComponentKind::DockerBuild {
                context: ".".into(),
                dockerfile: "Dockerfile".into(),
                source: None,
            },
            repository: Repository::new("shop/web").unwrap(),
            verify: None,
            credentials: None,
        })
        .await
        .unwrap();
    for i in 0..n {
        let id = install_id(i);
        let queue = QueueName::new(format!("agent-{id}")).unwrap();
        p.queue.create_queue(&queue);
        p.store
            .put_install(&Install {
                id: id.clone(),
                app: AppName::new("shop").unwrap(),
                registry: RegistryTarget {
                    endpoint: format!("registry.{id}.test"),
                    namespace: "vendor".into(),
                },
                agent_public_key: format!("agent-key-{id}"),
                agent_report_key: agent_key(&id).report_key().public_key_string(),
                queue,
                components: vec![ComponentName::new("web").unwrap()],
            })
            .await
            .unwrap();
    }
    p
}

pub(super) fn build_requested(build_id: &str) -> Event {
    Event::with_id(
        EventId::new(format!("req-{build_id}")).unwrap(),
        Payload::BuildRequested(BuildRequested {
            build_id: Some(BuildId::new(build_id).unwrap()),
            app: AppName::new("shop").unwrap(),
            component: ComponentName::new("web").unwrap(),
            source_ref: "refs/tags/v1".into(),
            requested_by: "alice".into(),
        }),
    )
}

pub(super) fn build_succeeded(build_id: &str, d: Digest) -> Event {
    Event::new(Payload::BuildCompleted(BuildCompleted {
        build_id: BuildId::new(build_id).unwrap(),
        status: BuildOutcome::Succeeded,
        digest: Some(d),
        repository: Some(Repository::new("shop/web").unwrap()),
        media_type: None,
        error: None,
        revision: None,
    }))
}

fn build_failed(build_id: &str) -> Event {
    Event::new(Payload::BuildCompleted(BuildCompleted {
        build_id: BuildId::new(build_id).unwrap(),
        status: BuildOutcome::Failed,
        digest: None,
        repository: None,
        media_type: None,
        error: Some("compile error in main.rs".into()),
        revision: None,
    }))
}

/// The report the job's own agent would send, signed with its key.
pub(super) fn report(
    msg: &SyncJobMessage,
    status: SyncReportStatus,
    attempt: Option<u32>,
) -> Event {
    let mut r = unsigned_report(msg, status, attempt);
    agent_key(&msg.install_id).report_key().sign(&mut r);
    Event::new(Payload::SyncReported(r))
}

pub(super) fn unsigned_report(
    msg: &SyncJobMessage,
    status: SyncReportStatus,
    attempt: Option<u32>,
) -> SyncReported {
    SyncReported {
        sync_id: msg.sync_id.clone(),
        install_id: msg.install_id.clone(),
        status,
        digest: msg.digest.clone(),
        bytes_copied: 1000,
        bytes_skipped: 10,
        duration_ms: 42,
        error: (status == SyncReportStatus::Failed).then(|| "disk full".to_string()),
        attempt: attempt.unwrap_or(msg.attempt),
        signature: String::new(),
    }
}

/// Every job message on every install queue, parsed, in send order per queue.
pub(super) fn job_messages(p: &FakePorts, n: usize) -> Vec<SyncJobMessage> {
    let mut out = Vec::new();
    for i in 0..n {
        let q = QueueName::new(format!("agent-{}", install_id(i))).unwrap();
        for body in p.queue.bodies(&q) {
            out.push(parse_sync_job(body.as_bytes()).unwrap());
        }
    }
    out
}

pub(super) async fn run(p: &FakePorts, ev: &Event) -> Outcome {
    dispatch(p, ev)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", ev.event_type()))
}

/// Counts of every side effect, for "a replay adds nothing" assertions.
pub(super) fn effects(p: &FakePorts) -> (String, usize, u64, usize, usize, usize) {
    (
        p.store.snapshot(),
        p.bus.accepted().len(),
        p.queue.send_count(),
        p.builder.starts().len(),
        p.minter.minted().len(),
        p.minter.revoked().len(),
    )
}

/// Runs `ev` once, then twice more, asserting the replays change nothing at all.
async fn run_replayed(p: &FakePorts, ev: &Event) -> Outcome {
    let first = run(p, ev).await;
    let after = effects(p);
    for _ in 0..2 {
        p.clock.advance(1_000);
        let again = run(p, ev).await;
        assert!(
            matches!(&again, Outcome::Replayed { first: Some(f) } if **f == first),
            "replay of {} returned {again:?}",
            ev.event_type()
        );
        assert_eq!(
            effects(p),
            after,
            "replaying {} changed state",
            ev.event_type()
        );
    }
    first
}

#[tokio::test]
async fn full_flow_build_to_three_installs_with_every_event_replayed() {
    let p = setup(3).await;

    let out = run_replayed(&p, &build_requested("b-1")).await;
    assert_eq!(
        out,
        Outcome::BuildStarted {
            build_id: BuildId::new("b-1").unwrap(),
            external_id: Some("ext-b-1".into())
        }
    );
    let b = p
        .store
        .get_build(&BuildId::new("b-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((b.status(), b.state.version), (JobStatus::Running, 2));
    assert_eq!(p.builder.starts().len(), 1);

    p.clock.advance(60_000);
    let out = run_replayed(&p, &build_succeeded("b-1", digest(7))).await;
    assert!(
        matches!(
            out,
            Outcome::BuildRecorded {
                status: JobStatus::Succeeded,
                syncs_requested: 3,
                ..
            }
        ),
        "{out:?}"
    );
    let requests = p.bus.accepted();
    assert_eq!(requests.len(), 3);

    for ev in &requests {
        let out = run_replayed(&p, ev).await;
        assert!(
            matches!(out, Outcome::SyncDispatched { attempt: 1, .. }),
            "{out:?}"
        );
    }
    let msgs = job_messages(&p, 3);
    assert_eq!(msgs.len(), 3, "one job message per install, no duplicates");
    let minted = p.minter.minted();
    for m in &msgs {
        assert_eq!(m.digest, digest(7));
        assert_eq!(m.attempt, 1);
        let grant = minted.iter().find(|g| g.sync_id == m.sync_id).unwrap();
        assert_eq!(
            m.grant, grant.grant,
            "the message carries the sealed grant as minted"
        );
        assert_eq!(grant.install, m.install_id);
        assert_eq!(m.sync_id, p.vendor_key.sync_id(&m.build_id, &m.install_id));
    }

    p.clock.advance(5_000);
    for m in &msgs {
        let out = run_replayed(&p, &report(m, SyncReportStatus::Succeeded, Some(1))).await;
        assert!(
            matches!(
                out,
                Outcome::SyncRecorded {
                    status: JobStatus::Succeeded,
                    ..
                }
            ),
            "{out:?}"
        );
    }
    let syncs = p
        .store
        .syncs_by_build(&BuildId::new("b-1").unwrap(), &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    assert_eq!(syncs.len(), 3);
    assert!(syncs.iter().all(
        |s| s.status() == JobStatus::Succeeded && s.stats.map(|x| x.bytes_copied) == Some(1000)
    ));
    let lineage = p
        .store
        .lineage_by_digest(&digest(7), &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    let holders: Vec<InstallId> = lineage.iter().map(|l| l.install_id.clone()).collect();
    assert_eq!(holders, vec![install_id(0), install_id(1), install_id(2)]);
    assert_eq!(
        lineage[0].since,
        T0 + 75_000,
        "since = when the success was recorded"
    );
    let mut revoked = p.minter.revoked();
    revoked.sort();
    let mut ids: Vec<SyncId> = msgs.iter().map(|m| m.sync_id.clone()).collect();
    ids.sort();
    assert_eq!(
        revoked, ids,
        "every grant is revoked once the sync is reported"
    );
}

#[tokio::test]
async fn replays_after_the_idempotency_ttl_still_create_no_duplicate_jobs() {
    let p = setup(2).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(1))).await;
    for ev in p.bus.accepted() {
        run(&p, &ev).await;
    }
    let msgs = job_messages(&p, 2);
    let (builds, syncs, sends, starts) = (
        p.store.builds(),
        p.store.syncs(),
        p.queue.send_count(),
        p.builder.starts().len(),
    );

    // The idempotency records are gone; only conditional writes and derived ids stand guard.
    p.clock.advance(p.config.idempotency_ttl_ms + 1);
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(1))).await;
    for ev in p.bus.accepted() {
        run(&p, &ev).await;
    }
    assert_eq!(p.store.builds(), builds);
    assert_eq!(p.store.syncs(), syncs);
    assert_eq!(p.queue.send_count(), sends, "no second job message");
    assert_eq!(p.builder.starts().len(), starts, "no second build");
    assert_eq!(job_messages(&p, 2), msgs);
}

#[tokio::test]
async fn fan_out_to_25_installs_goes_out_in_3_batches() {
    let p = setup(25).await;
    run(&p, &build_requested("b-1")).await;
    let out = run(&p, &build_succeeded("b-1", digest(2))).await;
    assert!(
        matches!(
            out,
            Outcome::BuildRecorded {
                syncs_requested: 25,
                ..
            }
        ),
        "{out:?}"
    );
    let sizes: Vec<usize> = p.bus.calls().iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![10, 10, 5]);
    let mut ids: Vec<String> = p
        .bus
        .accepted()
        .iter()
        .map(|e| match &e.payload {
            Payload::SyncRequested(s) => s.sync_id.to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25, "one distinct sync per install");
}

#[tokio::test]
async fn failed_bus_entries_are_retried_within_the_handler() {
    let p = setup(3).await;
    run(&p, &build_requested("b-1")).await;
    p.bus.fail_next_entries(2);
    run(&p, &build_succeeded("b-1", digest(2))).await;
    let sizes: Vec<usize> = p.bus.calls().iter().map(Vec::len).collect();
    assert_eq!(
        sizes,
        vec![1, 2],
        "first call lost 2 entries, the retry sent only those"
    );
    assert_eq!(p.bus.accepted().len(), 3);
}

#[tokio::test]
async fn grant_expired_re_mints_and_re_enqueues() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(3))).await;
    run(&p, &p.bus.accepted()[0]).await;
    let first = job_messages(&p, 1).remove(0);

    p.clock.advance(FAKE_GRANT_TTL_MS + 1);
    let out = run_replayed(&p, &report(&first, SyncReportStatus::GrantExpired, Some(1))).await;
    assert_eq!(
        out,
        Outcome::SyncDispatched {
            sync_id: first.sync_id.clone(),
            attempt: 2
        }
    );
    let job = p.store.get_sync(&first.sync_id).await.unwrap().unwrap();
    assert_eq!((job.status(), job.state.attempts), (JobStatus::Running, 2));
    assert_eq!(
        job.grant_expires_at,
        Some(p.clock.now_ms() - 2_000 + FAKE_GRANT_TTL_MS)
    );
    let msgs = job_messages(&p, 1);
    assert_eq!(msgs.len(), 2);
    let second = &msgs[1];
    assert_eq!(second.attempt, 2);
    assert_ne!(
        second.grant, first.grant,
        "a fresh grant, not the expired one"
    );
    assert!(second.grant.expires_at > p.clock.now_ms() - 2_000);
    assert_eq!(p.minter.minted().len(), 2);
    assert!(
        p.minter.revoked().contains(&first.sync_id),
        "the old grant is revoked"
    );

    assert_eq!(
        p.minter.revoked_grants(),
        vec![crate::ports::GrantId::new(first.sync_id.clone(), 1)],
        "only attempt 1's grant is revoked, so attempt 2's could be minted"
    );

    // A late duplicate about attempt 1 (other counters, so not byte-identical) is the same
    // report of the same attempt: a replay, with no second mint.
    let mut late = unsigned_report(&first, SyncReportStatus::GrantExpired, Some(1));
    late.duration_ms = 99;
    agent_key(&first.install_id).report_key().sign(&mut late);
    let out = run(&p, &Event::new(Payload::SyncReported(late))).await;
    assert!(matches!(out, Outcome::Replayed { .. }), "{out:?}");
    assert_eq!(p.minter.minted().len(), 2);

    let out = run(&p, &report(second, SyncReportStatus::Succeeded, Some(2))).await;
    assert!(matches!(
        out,
        Outcome::SyncRecorded {
            status: JobStatus::Succeeded,
            ..
        }
    ));
}

#[tokio::test]
async fn a_sync_whose_grant_keeps_expiring_fails_with_a_clear_error() {
    let mut p = setup(1).await;
    p.config.max_sync_attempts = 2;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(3))).await;
    run(&p, &p.bus.accepted()[0]).await;
    let m1 = job_messages(&p, 1).remove(0);
    run(&p, &report(&m1, SyncReportStatus::GrantExpired, Some(1))).await;
    let m2 = job_messages(&p, 1).remove(1);
    let out = run(&p, &report(&m2, SyncReportStatus::GrantExpired, Some(2))).await;
    assert!(
        matches!(
            out,
            Outcome::SyncRecorded {
                status: JobStatus::Failed,
                ..
            }
        ),
        "{out:?}"
    );
    let job = p.store.get_sync(&m1.sync_id).await.unwrap().unwrap();
    let err = job.state.error.unwrap();
    assert_eq!(err.code, "grant_expired");
    assert!(err.message.contains("agent is running"), "{}", err.message);
}

#[tokio::test]
async fn a_resumed_grant_expired_report_finishes_the_requeue() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(3))).await;
    run(&p, &p.bus.accepted()[0]).await;
    let m1 = job_messages(&p, 1).remove(0);
    // The handler crashes after the requeue write: the send fails.
    p.queue.fail_next_sends(1);
    let err = dispatch(&p, &report(&m1, SyncReportStatus::GrantExpired, Some(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, HandlerError::Queue(_)) && err.is_retryable(),
        "{err:?}"
    );
    let job = p.store.get_sync(&m1.sync_id).await.unwrap().unwrap();
    assert_eq!((job.status(), job.state.attempts), (JobStatus::Queued, 2));
    // The retry of the same event resumes instead of calling itself stale.
    let out = run(&p, &report(&m1, SyncReportStatus::GrantExpired, Some(1))).await;
    assert!(
        matches!(out, Outcome::SyncDispatched { attempt: 2, .. }),
        "{out:?}"
    );
    assert_eq!(job_messages(&p, 1).len(), 2);
}

#[tokio::test]
async fn a_failed_send_is_retried_without_duplicates() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(4))).await;
    let req = p.bus.accepted()[0].clone();
    p.queue.fail_next_sends(1);
    let err = dispatch(&p, &req).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(job_messages(&p, 1).is_empty());
    let out = run(&p, &req).await;
    assert!(
        matches!(out, Outcome::SyncDispatched { attempt: 1, .. }),
        "{out:?}"
    );
    assert_eq!(job_messages(&p, 1).len(), 1);
    assert_eq!(p.store.syncs().len(), 1);
}

#[tokio::test]
async fn racing_completions_leave_exactly_one_winner() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    let (ok_ev, fail_ev) = (build_succeeded("b-1", digest(5)), build_failed("b-1"));
    let (a, b) = futures::join!(dispatch(&p, &ok_ev), dispatch(&p, &fail_ev));
    let (winner, loser) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("exactly one completion must win: {other:?}"),
    };
    assert!(
        matches!(winner, Outcome::BuildRecorded { .. }),
        "{winner:?}"
    );
    assert!(
        matches!(loser, HandlerError::AlreadyFinished { .. }),
        "{loser:?}"
    );
    assert!(loser.to_string().contains("already finished as"), "{loser}");
    let build = p
        .store
        .get_build(&BuildId::new("b-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(build.status().is_terminal());
    assert_eq!(build.state.version, 3, "exactly one terminal write");
}

#[tokio::test]
async fn racing_conditional_writes_in_the_store_have_one_winner() {
    let p = setup(0).await;
    let b = crate::domain::Build::new(
        BuildId::new("b-r").unwrap(),
        AppName::new("shop").unwrap(),
        ComponentName::new("web").unwrap(),
        "main".into(),
        "t".into(),
        T0,
    );
    p.store.create_build(&b).await.unwrap();
    let x = b.start(T0 + 1, "x".into()).unwrap();
    let y = b.cancel(T0 + 1).unwrap();
    let (rx, ry) = futures::join!(
        p.store.update_build(&x, b.state.expected()),
        p.store.update_build(&y, b.state.expected())
    );
    assert_eq!([rx.is_ok(), ry.is_ok()].iter().filter(|w| **w).count(), 1);
    let (won, lost) = if rx.is_ok() { (x, ry) } else { (y, rx) };
    match lost {
        Err(WriteError::Conflict(c)) => assert_eq!(c.current, Some(won)),
        other => panic!("loser should get a conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn the_same_event_handled_concurrently_runs_once() {
    let p = setup(1).await;
    let ev = build_requested("b-1");
    let (a, b) = futures::join!(dispatch(&p, &ev), dispatch(&p, &ev));
    let in_progress = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(HandlerError::InProgress { .. })))
        .count();
    assert_eq!(in_progress, 1, "a: {a:?}, b: {b:?}");
    assert_eq!(p.builder.starts().len(), 1);
}

#[tokio::test]
async fn illegal_transitions_are_rejected_with_useful_errors() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(6))).await;
    // A second success with another digest cannot overwrite the first.
    let err = dispatch(&p, &build_succeeded("b-1", digest(9)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HandlerError::AlreadyFinished {
                status: JobStatus::Succeeded,
                ..
            }
        ),
        "{err:?}"
    );
    let b = p
        .store
        .get_build(&BuildId::new("b-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.artifact.unwrap().digest, digest(6));

    let err = dispatch(&p, &build_succeeded("b-404", digest(1)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("build b-404 does not exist"),
        "{err}"
    );

    run(&p, &p.bus.accepted()[0]).await;
    let m = job_messages(&p, 1).remove(0);
    let mut wrong = unsigned_report(&m, SyncReportStatus::Succeeded, Some(1));
    wrong.install_id = InstallId::new("i-99").unwrap();
    agent_key(&wrong.install_id).report_key().sign(&mut wrong);
    let out = run(&p, &Event::new(Payload::SyncReported(wrong))).await;
    assert!(
        matches!(&out, Outcome::ReportRefused { reason, .. } if reason.contains("belongs to install i-00")),
        "{out:?}"
    );
    run(&p, &report(&m, SyncReportStatus::Failed, Some(1))).await;
    let err = dispatch(&p, &report(&m, SyncReportStatus::Succeeded, Some(1)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already finished as failed"),
        "{err}"
    );
    let job = p.store.get_sync(&m.sync_id).await.unwrap().unwrap();
    assert_eq!(job.state.error.unwrap().message, "disk full");
}

#[tokio::test]
async fn unknown_component_records_a_failed_build_and_starts_nothing() {
    let p = setup(1).await;
    let mut ev = build_requested("b-x");
    if let Payload::BuildRequested(r) = &mut ev.payload {
        r.component = ComponentName::new("nope").unwrap();
    }
    let out = run(&p, &ev).await;
    assert!(
        matches!(&out, Outcome::BuildRejected { reason, .. } if reason.contains("not registered")),
        "{out:?}"
    );
    let b = p
        .store
        .get_build(&BuildId::new("b-x").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.status(), JobStatus::Failed);
    assert_eq!(b.state.error.unwrap().code, "unknown_component");
    assert!(p.builder.starts().is_empty());
}

#[tokio::test]
async fn a_builder_outage_is_retryable_and_the_retry_runs() {
    let p = setup(1).await;
    p.builder.set_unavailable(true);
    let ev = build_requested("b-1");
    let err = dispatch(&p, &ev).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let b = p
        .store
        .get_build(&BuildId::new("b-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.status(),
        JobStatus::Queued,
        "the build waits to be resumed"
    );
    p.builder.set_unavailable(false);
    let out = run(&p, &ev).await;
    assert!(
        matches!(out, Outcome::BuildStarted { .. }),
        "the released record lets the retry run: {out:?}"
    );
}

#[tokio::test]
async fn a_builder_refusal_fails_the_build() {
    let p = setup(1).await;
    p.builder.reject_with("no such project");
    let out = run(&p, &build_requested("b-1")).await;
    assert!(matches!(out, Outcome::BuildRejected { .. }), "{out:?}");
    let b = p
        .store
        .get_build(&BuildId::new("b-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.state.error.unwrap().code, "builder_rejected");
}

#[tokio::test]
async fn a_refused_grant_fails_the_sync() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(8))).await;
    p.minter.refuse_with("agent key is not a valid public key");
    let out = run(&p, &p.bus.accepted()[0]).await;
    assert!(matches!(out, Outcome::SyncRejected { .. }), "{out:?}");
    assert!(
        job_messages(&p, 1).is_empty(),
        "nothing enqueued without a grant"
    );
    assert_eq!(
        p.store.syncs()[0].state.error.as_ref().unwrap().code,
        "grant_refused"
    );
}

#[tokio::test]
async fn build_requests_without_an_id_derive_a_stable_one() {
    let p = setup(0).await;
    let ev = Event::new(Payload::BuildRequested(BuildRequested {
        build_id: None,
        app: AppName::new("shop").unwrap(),
        component: ComponentName::new("web").unwrap(),
        source_ref: "main".into(),
        requested_by: "ci".into(),
    }));
    let a = run(&p, &ev).await;
    p.clock.advance(p.config.idempotency_ttl_ms + 1);
    run(&p, &ev).await;
    assert_eq!(
        p.store.builds().len(),
        1,
        "same request, same derived build"
    );
    assert!(
        matches!(a, Outcome::BuildStarted { build_id, .. } if build_id.as_str().starts_with("b-"))
    );
}

#[tokio::test]
async fn request_build_publishes_a_request_with_a_fresh_id() {
    let p = setup(1).await;
    let ids = SeqIds::default();
    let id = request_build(
        &p.bus,
        &ids,
        AppName::new("shop").unwrap(),
        ComponentName::new("web").unwrap(),
        "main".into(),
        "alice".into(),
    )
    .await
    .unwrap();
    assert_eq!(id.as_str(), "b-000001");
    let ev = p.bus.accepted().remove(0);
    assert_eq!(ev.idempotency_key(), "build.requested#b-000001");
    run(&p, &ev).await;
    assert_eq!(p.store.builds()[0].id, id);
}

#[tokio::test]
async fn one_bad_message_never_sinks_a_batch() {
    let p = setup(1).await;
    let rec = |id: &str, ev: &Event| Record {
        message_id: id.into(),
        body: ev.to_json().unwrap().into_bytes(),
        receive_count: 1,
    };
    let records = vec![
        rec("m1", &build_requested("b-1")),
        Record {
            message_id: "m2".into(),
            body: b"{\"type\":\"build.requested\"".to_vec(),
            receive_count: 3,
        },
        rec("m3", &build_succeeded("b-missing", digest(1))),
        rec("m4", &build_succeeded("b-1", digest(1))),
    ];
    let mut failed = Vec::new();
    for record in &records {
        let outcome = handle_record(&p, record, None, decode_event).await;
        if outcome.failure().is_some() {
            assert!(
                matches!(outcome, RecordOutcome::Retry(_)),
                "no redrive: only retries"
            );
            failed.push(record.message_id.as_str());
        }
    }
    assert_eq!(failed, vec!["m2", "m3"]);
    let b = p
        .store
        .get_build(&BuildId::new("b-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b.status(),
        JobStatus::Succeeded,
        "records after a bad one still ran"
    );
}

#[tokio::test]
async fn a_record_failing_on_its_last_receive_records_the_error_on_its_job() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    let redrive = Redrive {
        max_receive_count: 3,
        dlq: "dead-letter queue q-dlq".into(),
    };
    // Names its build but does not parse (a bad digest).
    let poisoned = |receive_count| {
        Record {
        message_id: "m-poison".into(),
        body: br#"{"version":1,"type":"build.completed","build_id":"b-1","status":"succeeded","digest":"sha256:nothex","repository":"shop/web"}"#.to_vec(),
        receive_count,
    }
    };
    let id = BuildId::new("b-1").unwrap();
    let outcome = handle_record(&p, &poisoned(2), Some(&redrive), decode_event).await;
    assert!(matches!(outcome, RecordOutcome::Retry(_)), "{outcome:?}");
    assert_eq!(
        p.store.get_build(&id).await.unwrap().unwrap().status(),
        JobStatus::Running
    );

    let outcome = handle_record(&p, &poisoned(3), Some(&redrive), decode_event).await;
    assert!(
        matches!(outcome, RecordOutcome::DeadLetter(_)),
        "{outcome:?}"
    );
    let b = p.store.get_build(&id).await.unwrap().unwrap();
    assert_eq!(b.status(), JobStatus::Failed);
    let err = b.state.error.unwrap();
    assert_eq!(err.code, DEAD_LETTERED);
    assert!(
        err.message.contains("q-dlq") && err.message.contains("digest"),
        "{}",
        err.message
    );

    // A body that names no job is dead-lettered all the same.
    let garbage = Record {
        message_id: "m-garbage".into(),
        body: b"not json".to_vec(),
        receive_count: 3,
    };
    let outcome = handle_record(&p, &garbage, Some(&redrive), decode_event).await;
    assert!(
        matches!(outcome, RecordOutcome::DeadLetter(_)),
        "{outcome:?}"
    );
}

#[test]
fn an_event_names_its_job_and_a_broken_body_still_does() {
    let ev = build_requested("b-7");
    assert_eq!(ev.job(), JobRef::Build(BuildId::new("b-7").unwrap()));
    let bad_digest = r#"{"version":1,"type":"build.completed","build_id":"b-7","status":"succeeded","digest":"sha256:nothex","repository":"shop/web"}"#;
    assert!(crate::parse_event(bad_digest.as_bytes()).is_err());
    assert_eq!(
        JobRef::from_body(bad_digest.as_bytes()),
        Some(JobRef::Build(BuildId::new("b-7").unwrap()))
    );
    let wrapped = r#"{"detail-type":"x","detail":{"sync_id":"s-1","build_id":"b-1"}}"#;
    assert_eq!(
        JobRef::from_body(wrapped.as_bytes()),
        Some(JobRef::Sync(SyncId::new("s-1").unwrap()))
    );
    assert_eq!(JobRef::from_body(b"not json"), None);
    assert_eq!(JobRef::from_body(br#"{"build_id":"bad id!"}"#), None);
}

#[tokio::test]
async fn queued_messages_never_hold_a_clear_grant() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(1))).await;
    run(&p, &p.bus.accepted()[0]).await;
    let body = p
        .queue
        .bodies(&QueueName::new("agent-i-00").unwrap())
        .remove(0);
    // The fake's sealed bytes start with "sealed-to:"; on the wire they are only base64.
    assert!(!body.contains("sealed-to:"), "{body}");
    let stored = format!("{:?}", p.store.syncs());
    assert!(
        !stored.contains("sealed-to"),
        "the store keeps only the expiry"
    );
}

#[test]
fn handler_futures_are_send_so_they_run_on_a_multi_threaded_runtime() {
    fn assert_send<T: Send>(_: &T) {}
    let p = fake_ports(T0);
    let ev = build_requested("b-1");
    let fut = dispatch(&p, &ev);
    assert_send(&fut);
    let record = Record {
        message_id: "m".into(),
        body: Vec::new(),
        receive_count: 1,
    };
    let handled = handle_record(&p, &record, None, decode_event);
    assert_send(&handled);
}

/// The component's verification policy rides in the signed job; a `policy_failed` report
/// fails the sync with that code and the agent's reason; a build's revision is recorded.
#[tokio::test]
async fn the_policy_travels_in_the_signed_job_and_policy_failed_is_recorded() {
    use crate::domain::{KeyRequirement, VerifyPolicy};
    let p = setup(1).await;
    let policy = VerifyPolicy {
        keys: vec!["-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into()],
        require: KeyRequirement::All,
    };
    let mut c = p
        .store
        .get_component(
            &AppName::new("shop").unwrap(),
            &ComponentName::new("web").unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    c.verify = Some(policy.clone());
    p.store.put_component(&c).await.unwrap();

    run(&p, &build_requested("b-1")).await;
    let mut done = build_succeeded("b-1", digest(7));
    if let Payload::BuildCompleted(b) = &mut done.payload {
        b.revision = Some("a".repeat(40));
    }
    run(&p, &done).await;
    let b = p
        .store
        .get_build(&BuildId::new("b-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.revision.as_deref(), Some("a".repeat(40).as_str()));

    run(&p, &p.bus.accepted()[0]).await;
    let m = job_messages(&p, 1).remove(0);
    assert_eq!(m.verify.as_ref(), Some(&policy));
    crate::trust::verify_job(&p.vendor_key.public_key_string(), &m).unwrap();

    let mut r = unsigned_report(&m, SyncReportStatus::PolicyFailed, None);
    r.error = Some("no valid signature by a policy key".into());
    agent_key(&m.install_id).report_key().sign(&mut r);
    let out = run(&p, &Event::new(Payload::SyncReported(r))).await;
    assert!(
        matches!(
            &out,
            Outcome::SyncRecorded {
                status: JobStatus::Failed,
                ..
            }
        ),
        "{out:?}"
    );
    let job = p.store.get_sync(&m.sync_id).await.unwrap().unwrap();
    let err = job.state.error.unwrap();
    assert_eq!(err.code, "policy_failed");
    assert!(
        err.message.contains("no valid signature"),
        "{}",
        err.message
    );
}
