//! Bundle receipts count as online reports: a release whose step includes an air-gapped
//! install (its agent never polls its queue) advances only when that install's receipt is
//! recorded, through the same rule as an online `sync.reported`; replaying the receipt changes
//! nothing.

use std::collections::BTreeSet;

use super::flow::{digest, install_id};
use super::releases::{ready, release, request, states, Pump};
use crate::bundle::{record_receipt, sign_receipt, BundleReceipt, ReceiptOutcome, RECEIPT_SCHEMA};
use crate::id::{BuildId, Repository};
use crate::ports::Clock as _;
use crate::release::{ReleaseStatus, StepPhase, TargetState};
use crate::rollout::create_release;
use crate::state::JobStatus;
use crate::testing::{test_agent_key, FakePorts};

/// The receipt `ferry-agent import` writes for install `i` holding build b-1 (digest 1).
fn receipt(p: &FakePorts, i: usize) -> BundleReceipt {
    let install = install_id(i);
    let mut r = BundleReceipt {
        schema: RECEIPT_SCHEMA,
        install_id: install.clone(),
        bundle_id: "bdl-1".into(),
        build_id: BuildId::new("b-1").unwrap(),
        repository: Repository::new("shop/web").unwrap(),
        digest: digest(1),
        imported_at: p.clock.now_ms(),
        bytes_copied: 10,
        bytes_skipped: 0,
        duration_ms: 1,
        signature: String::new(),
    };
    sign_receipt(&test_agent_key(&install).report_key(), &mut r);
    r
}

#[tokio::test]
async fn a_release_step_waits_for_the_air_gapped_install_and_its_receipt_completes_it() {
    // Three installs; i-02 is air-gapped: the pump never reads its queue.
    let p = ready(3, "b-1", 1).await;
    create_release(&p, &request("r-1", "b-1", 3, 0, "1"))
        .await
        .unwrap();
    let mut pump = Pump::new();
    pump.run(&p, 2, &BTreeSet::new()).await;

    let r = release(&p, "r-1").await;
    assert_eq!(r.status, ReleaseStatus::Running, "{r:?}");
    assert_eq!((r.step, r.phase), (0, StepPhase::Syncing));
    let got = states(&p, &r).await;
    assert_eq!(
        got,
        vec![
            ("i-00".to_string(), TargetState::Succeeded),
            ("i-01".to_string(), TargetState::Succeeded),
            ("i-02".to_string(), TargetState::Syncing),
        ]
    );

    // The vendor imports the air-gapped agent's receipt: the release's own sync is completed
    // (not a second one), and the release hears of it through its queue, as online.
    p.clock.advance(60_000);
    let air = receipt(&p, 2);
    let out = record_receipt(&p, &p.vendor_key, &air).await.unwrap();
    let release_sync = p
        .vendor_key
        .release_sync_id(&r.id, &air.build_id, &air.install_id, r.round);
    assert_eq!(
        out,
        ReceiptOutcome::Recorded {
            sync_id: release_sync.clone()
        }
    );
    let syncs: Vec<_> = p
        .store
        .syncs()
        .into_iter()
        .filter(|s| s.install_id == air.install_id)
        .collect();
    assert_eq!(syncs.len(), 1, "{syncs:?}");
    assert_eq!(syncs[0].id, release_sync);
    assert_eq!(syncs[0].status(), JobStatus::Succeeded);
    // Not advanced yet: the release step is told by a `release.synced` on the release queue.
    assert_eq!(release(&p, "r-1").await.status, ReleaseStatus::Running);
    pump.run(&p, 2, &BTreeSet::new()).await;
    let r = release(&p, "r-1").await;
    assert_eq!(r.status, ReleaseStatus::Completed, "{r:?}");
    assert!(states(&p, &r)
        .await
        .iter()
        .all(|(_, s)| *s == TargetState::Succeeded));
    assert!(p
        .store
        .lineage()
        .iter()
        .any(|l| l.install_id == air.install_id && l.sync_id == release_sync));

    // A replay (the same file imported again) changes nothing.
    let writes = p.store.write_count();
    let again = record_receipt(&p, &p.vendor_key, &air).await.unwrap();
    assert_eq!(
        again,
        ReceiptOutcome::Replayed {
            sync_id: release_sync
        }
    );
    pump.run(&p, 2, &BTreeSet::new()).await;
    assert_eq!(p.store.write_count(), writes, "a replay writes nothing");
    assert_eq!(release(&p, "r-1").await.status, ReleaseStatus::Completed);
}

#[tokio::test]
async fn a_receipt_before_the_step_starts_makes_the_install_current() {
    // The air-gapped install imported the build before the release reached it: its step
    // finds the lineage and marks it current without dispatching anything.
    let p = ready(2, "b-1", 1).await;
    let air = receipt(&p, 1);
    let out = record_receipt(&p, &p.vendor_key, &air).await.unwrap();
    assert!(matches!(out, ReceiptOutcome::Recorded { .. }), "{out:?}");
    create_release(&p, &request("r-2", "b-1", 2, 0, "1"))
        .await
        .unwrap();
    let mut pump = Pump::new();
    pump.run(&p, 1, &BTreeSet::new()).await;
    let r = release(&p, "r-2").await;
    assert_eq!(r.status, ReleaseStatus::Completed, "{r:?}");
    assert_eq!(
        states(&p, &r).await,
        vec![
            ("i-00".to_string(), TargetState::Succeeded),
            ("i-01".to_string(), TargetState::Current),
        ]
    );
}
