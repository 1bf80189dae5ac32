//! The `JobStore` contract's entry point and its catalog, telemetry, stale-sync and
//! security-counter rules. It must never assert what DynamoDB does not guarantee.

use std::collections::BTreeSet;
use std::future::Future;

use super::store_jobs::{
    store_builds_are_conditional, store_idempotency, store_lineage, store_queries_paginate,
    store_syncs_are_conditional,
};
use super::{app, collect, comp, id, install, ok, repo, sync};
use crate::domain::{Component, ComponentKind, SyncJob};
use crate::id::InstallId;
use crate::ports::JobStore;
use crate::state::JobError;

/// The `JobStore` contract. `make` returns a fresh, empty store for each call.
pub async fn job_store_contract<S, F, Fut>(make: F)
where
    S: JobStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    store_catalog(&make().await).await;
    store_builds_are_conditional(&make().await).await;
    store_syncs_are_conditional(&make().await).await;
    store_idempotency(&make().await).await;
    store_lineage(&make().await).await;
    store_queries_paginate(&make().await).await;
    store_security_counters(&make().await).await;
    store_telemetry(&make().await).await;
    store_stale_syncs(&make().await).await;
}

fn telemetry(i: &str, last_seen: u64, health: &str) -> crate::telemetry::InstallTelemetry {
    crate::telemetry::InstallTelemetry {
        install_id: id(InstallId::new(i)),
        last_seen,
        agent_version: "0.1.0".into(),
        last_poll_at: Some(last_seen - 5),
        last_sync_at: None,
        health: health.into(),
        sent_at: last_seen - 1,
    }
}

async fn store_telemetry<S: JobStore>(s: &S) {
    let i1 = id(InstallId::new("i-1"));
    assert_eq!(
        ok(s.get_telemetry(&i1).await, "get_telemetry"),
        None,
        "contract: an install that never sent a heartbeat has no telemetry"
    );
    let first = telemetry("i-1", 10_000, "ok");
    assert_eq!(
        ok(s.record_heartbeat(&first).await, "record_heartbeat"),
        first
    );
    let later = telemetry("i-1", 20_000, "disk 91% full");
    assert_eq!(
        ok(s.record_heartbeat(&later).await, "record_heartbeat"),
        later
    );
    let older = telemetry("i-1", 15_000, "replayed");
    assert_eq!(
        ok(s.record_heartbeat(&older).await, "record_heartbeat"),
        later,
        "contract: last-seen never moves backwards (an older heartbeat returns the stored one)"
    );
    assert_eq!(ok(s.get_telemetry(&i1).await, "get_telemetry"), Some(later));
    let other = telemetry("i-2", 5_000, "ok");
    ok(s.record_heartbeat(&other).await, "record_heartbeat");
    assert_eq!(
        ok(s.get_telemetry(&i1).await, "get_telemetry").map(|t| t.health),
        Some("disk 91% full".to_string()),
        "contract: one install's heartbeat never changes another's telemetry"
    );
}

async fn store_stale_syncs<S: JobStore>(s: &S) {
    // 30 open syncs changed at 1_000.. and one each of running, succeeded and failed.
    let mut open = BTreeSet::new();
    for n in 0..30u32 {
        let j = sync(n, "cb-0001", &format!("i-{n:02}"), 1_000 + u64::from(n));
        ok(s.create_sync(&j).await, "create_sync");
        open.insert(j.id.clone());
    }
    let running = sync(40, "cb-0001", "i-40", 1_000);
    ok(s.create_sync(&running).await, "create_sync");
    let r = ok(running.dispatch(1_500, 9_999), "dispatch");
    ok(
        s.update_sync(&r, running.state.expected()).await,
        "update_sync",
    );
    let done = sync(41, "cb-0001", "i-41", 1_000);
    ok(s.create_sync(&done).await, "create_sync");
    let d = ok(
        done.succeed(1_100, crate::domain::SyncStats::default()),
        "succeed",
    );
    ok(
        s.update_sync(&d, done.state.expected()).await,
        "update_sync",
    );
    let failed = sync(42, "cb-0001", "i-42", 1_000);
    ok(s.create_sync(&failed).await, "create_sync");
    let f = ok(failed.fail(1_100, JobError::new("x", "y"), None), "fail");
    ok(
        s.update_sync(&f, failed.state.expected()).await,
        "update_sync",
    );

    let ids = |v: Vec<SyncJob>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let before_all = ids(collect(7, |p| async move { s.stale_syncs(2_000, &p).await }).await);
    let unique: BTreeSet<_> = before_all.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        before_all.len(),
        "contract: stale_syncs lists each job once over its pages"
    );
    let mut want = open.clone();
    want.insert(running.id.clone());
    assert_eq!(
        unique, want,
        "contract: stale_syncs lists exactly the queued and running jobs changed before `before`"
    );
    let early = ids(collect(100, |p| async move { s.stale_syncs(1_010, &p).await }).await);
    assert_eq!(
        early.len(),
        10,
        "contract: stale_syncs excludes jobs changed at or after `before` ({early:?})"
    );
    assert!(
        !early.contains(&running.id),
        "contract: a job's last change (updated_at), not its creation, decides"
    );
}

async fn store_security_counters<S: JobStore>(s: &S) {
    assert_eq!(
        ok(
            s.security_event_count("report_unauthenticated").await,
            "security_event_count"
        ),
        (0, None),
        "contract: a fresh store has counted nothing"
    );
    assert_eq!(
        ok(
            s.count_security_event("report_unauthenticated", 10).await,
            "count_security_event"
        ),
        1
    );
    assert_eq!(
        ok(
            s.count_security_event("report_unauthenticated", 20).await,
            "count_security_event"
        ),
        2,
        "contract: each call adds one"
    );
    assert_eq!(
        ok(
            s.security_event_count("report_unauthenticated").await,
            "security_event_count"
        ),
        (2, Some(20)),
        "contract: the count and the last time read back"
    );
    assert_eq!(
        ok(
            s.security_event_count("report_unknown_sync").await,
            "security_event_count"
        ),
        (0, None),
        "contract: counters of different kinds are apart"
    );
}

async fn store_catalog<S: JobStore>(s: &S) {
    let c = Component {
        app: app("shop"),
        name: comp("web"),
        kind: ComponentKind::DockerBuild {
            context: ".".into(),
            dockerfile: "Dockerfile".into(),
            source: None,
        },
        repository: repo("shop/web"),
        verify: None,
        credentials: None,
    };
    assert_eq!(
        ok(s.get_component(&c.app, &c.name).await, "get_component"),
        None,
        "contract: a fresh store has no components"
    );
    ok(s.put_component(&c).await, "put_component");
    assert_eq!(
        ok(s.get_component(&c.app, &c.name).await, "get_component"),
        Some(c.clone()),
        "contract: a component reads back as written"
    );
    let mut i = install("i-1", "shop", &["web"]);
    ok(s.put_install(&i).await, "put_install");
    i.components.push(comp("api"));
    ok(s.put_install(&i).await, "put_install upserts");
    assert_eq!(
        ok(s.get_install(&i.id).await, "get_install"),
        Some(i.clone()),
        "contract: put_install overwrites (last write wins)"
    );
}
