//! Tenants against each other, over the fakes: forged reports, pre-claimed idempotency keys,
//! reused keys, and job messages the agent must be able to authenticate.

use super::flow::{
    agent_key, build_requested, build_succeeded, digest, effects, install_id, job_messages, report,
    run, setup, unsigned_report,
};
use crate::event::{Event, Payload, SyncReportStatus};
use crate::handlers::{dispatch, HandlerError, Outcome, SecurityEvent};
use crate::id::{EventId, SyncId};
use crate::ports::JobStore;
use crate::state::JobStatus;
use crate::testing::FakePorts;
use crate::trust::verify_job;

/// Two installs with one running sync each; returns the job messages (victim i-00 first).
async fn two_tenants() -> (FakePorts, Vec<crate::event::SyncJobMessage>) {
    let p = setup(2).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_succeeded("b-1", digest(7))).await;
    for ev in p.bus.accepted() {
        run(&p, &ev).await;
    }
    let msgs = job_messages(&p, 2);
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].install_id, install_id(0));
    (p, msgs)
}

async fn count(p: &FakePorts, e: SecurityEvent) -> u64 {
    p.store.security_event_count(e.as_str()).await.unwrap().0
}

#[tokio::test]
async fn a_forged_report_for_another_install_changes_nothing_and_is_counted() {
    let (p, msgs) = two_tenants().await;
    let (victim, attacker) = (&msgs[0], &msgs[1]);
    let before = effects(&p);
    let attacker_key = agent_key(&attacker.install_id).report_key();

    // 1. The attacker signs with its own key and says who it is.
    let mut honest_liar = unsigned_report(victim, SyncReportStatus::Succeeded, None);
    honest_liar.install_id = attacker.install_id.clone();
    attacker_key.sign(&mut honest_liar);
    // 2. The attacker claims to be the victim, signing with its own key.
    let mut impostor = unsigned_report(victim, SyncReportStatus::Failed, None);
    attacker_key.sign(&mut impostor);
    // 3. No signature at all.
    let unsigned = unsigned_report(victim, SyncReportStatus::Succeeded, None);
    // 4. The victim's real report, altered after signing.
    let mut altered = unsigned_report(victim, SyncReportStatus::Succeeded, None);
    agent_key(&victim.install_id)
        .report_key()
        .sign(&mut altered);
    altered.status = SyncReportStatus::Failed;

    for forged in [honest_liar, impostor, unsigned, altered] {
        let out = run(&p, &Event::new(Payload::SyncReported(forged))).await;
        assert!(
            matches!(
                out,
                Outcome::ReportRefused {
                    event: SecurityEvent::ReportUnauthenticated,
                    ..
                }
            ),
            "{out:?}"
        );
    }
    let mut after = effects(&p);
    // The only write is the counter; everything the victim owns is as it was.
    assert_eq!(
        (after.1, after.2, after.3, after.4, after.5),
        (before.1, before.2, before.3, before.4, before.5),
        "no event, message, build, grant or revocation"
    );
    let victim_job = p.store.get_sync(&victim.sync_id).await.unwrap().unwrap();
    assert_eq!(victim_job.status(), JobStatus::Running);
    assert!(p.store.lineage().is_empty(), "no lineage written");
    assert!(p.minter.revoked().is_empty(), "the victim's grant stands");
    assert_eq!(count(&p, SecurityEvent::ReportUnauthenticated).await, 4);

    // The victim's own report still lands.
    let out = run(&p, &report(victim, SyncReportStatus::Succeeded, None)).await;
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
    after = effects(&p);
    assert_ne!(after.0, before.0);
}

#[tokio::test]
async fn a_pre_sent_victim_key_cannot_swallow_the_victims_report() {
    let (p, msgs) = two_tenants().await;
    let (victim, attacker) = (&msgs[0], &msgs[1]);
    // The key the old agent would have used for the victim's report.
    let stolen_id = EventId::new(format!("r-{}-1-succeeded", victim.sync_id)).unwrap();

    // A forged report under that id first...
    let mut forged = unsigned_report(victim, SyncReportStatus::Succeeded, None);
    agent_key(&attacker.install_id)
        .report_key()
        .sign(&mut forged);
    let out = run(
        &p,
        &Event::with_id(stolen_id.clone(), Payload::SyncReported(forged)),
    )
    .await;
    assert!(matches!(out, Outcome::ReportRefused { .. }), "{out:?}");
    // ...and the attacker's own valid report, also under the victim's id.
    let out = run(
        &p,
        &Event::with_id(
            stolen_id.clone(),
            report(attacker, SyncReportStatus::Succeeded, None).payload,
        ),
    )
    .await;
    assert!(matches!(out, Outcome::SyncRecorded { .. }), "{out:?}");

    // The victim's real report, with the same producer id, is handled, not taken for a replay.
    let real = Event::with_id(
        stolen_id,
        report(victim, SyncReportStatus::Succeeded, None).payload,
    );
    let out = run(&p, &real).await;
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
    let job = p.store.get_sync(&victim.sync_id).await.unwrap().unwrap();
    assert_eq!(job.status(), JobStatus::Succeeded);
}

#[tokio::test]
async fn a_report_for_an_unknown_sync_is_refused_once_not_retried() {
    let (p, msgs) = two_tenants().await;
    let mut r = unsigned_report(&msgs[0], SyncReportStatus::Succeeded, None);
    r.sync_id = SyncId::new("s-guessed").unwrap();
    agent_key(&msgs[0].install_id).report_key().sign(&mut r);
    let out = run(&p, &Event::new(Payload::SyncReported(r))).await;
    assert!(
        matches!(
            out,
            Outcome::ReportRefused {
                event: SecurityEvent::ReportUnknownSync,
                ..
            }
        ),
        "an Ok outcome: the message is deleted, not retried into the DLQ: {out:?}"
    );
    assert_eq!(count(&p, SecurityEvent::ReportUnknownSync).await, 1);
}

#[tokio::test]
async fn an_idempotency_key_reused_with_another_payload_is_refused_loudly() {
    let p = setup(1).await;
    run(&p, &build_requested("b-1")).await;
    run(&p, &build_requested("b-2")).await;
    let id = EventId::new("done-1").unwrap();
    let first = Event::with_id(id.clone(), build_succeeded("b-1", digest(1)).payload);
    run(&p, &first).await;
    let other = Event::with_id(id, build_succeeded("b-2", digest(2)).payload);
    let before = effects(&p);
    let err = dispatch(&p, &other).await.unwrap_err();
    assert!(matches!(err, HandlerError::KeyReused { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("different payload"), "{err}");
    assert_eq!(count(&p, SecurityEvent::IdempotencyKeyReused).await, 1);
    let b2 = p
        .store
        .get_build(&crate::id::BuildId::new("b-2").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b2.status(), JobStatus::Running, "b-2 was not completed");
    assert_eq!(effects(&p).1, before.1, "no fan-out for the refused event");
    // The same payload again is still an ordinary replay.
    assert!(matches!(run(&p, &first).await, Outcome::Replayed { .. }));
}

#[tokio::test]
async fn every_job_message_is_signed_by_the_vendor_key() {
    let (p, msgs) = two_tenants().await;
    let public = p.vendor_key.public_key_string();
    for m in &msgs {
        verify_job(&public, m).unwrap();
        let mut moved = m.clone();
        moved.install_id = install_id(9);
        assert!(verify_job(&public, &moved).is_err(), "redirected job");
    }
    let stranger = crate::trust::VendorKey::generate().unwrap();
    assert!(verify_job(&stranger.public_key_string(), &msgs[0]).is_err());
}
