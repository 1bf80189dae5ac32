//! The `JobStore` contract's rules on jobs: conditional build and sync writes, idempotency
//! records, lineage, and paginated queries. It must never assert an exact page size before the
//! last page.

use super::{app, build, collect, comp, digest, id, install, ok, repo, sync};
use crate::domain::LineageRecord;
use crate::id::{BuildId, InstallId, SyncId};
use crate::ports::{IdempotencyClaim, JobStore, PageRequest, WriteError};
use crate::state::{JobError, JobStatus};

pub(super) async fn store_builds_are_conditional<S: JobStore>(s: &S) {
    let b = build(1, "shop", "web", 1_000);
    assert_eq!(ok(s.get_build(&b.id).await, "get_build"), None);
    ok(
        s.create_build(&b).await,
        "create_build on an absent id succeeds",
    );
    match s.create_build(&build(1, "shop", "other", 2_000)).await {
        Err(WriteError::Conflict(c)) => assert_eq!(
            c.current,
            Some(b.clone()),
            "contract: a create conflict carries the existing item"
        ),
        other => panic!("contract: create_build on an existing id must conflict, got {other:?}"),
    }
    let running = ok(b.start(1_100, "ext-1".into()), "start");
    ok(
        s.update_build(&running, b.state.expected()).await,
        "update_build with the current status and version succeeds",
    );
    assert_eq!(
        ok(s.get_build(&b.id).await, "get_build"),
        Some(running.clone())
    );

    // A second writer that read the same version loses and learns the current item.
    let failed = ok(b.fail(1_200, JobError::new("x", "y")), "fail");
    match s.update_build(&failed, b.state.expected()).await {
        Err(WriteError::Conflict(c)) => assert_eq!(
            c.current,
            Some(running.clone()),
            "contract: an update conflict carries the current item (ALL_OLD)"
        ),
        other => panic!("contract: a stale update must conflict, got {other:?}"),
    }
    // Right version, wrong status also loses.
    let mut wrong = running.state.expected();
    wrong.status = JobStatus::Queued;
    let done = ok(running.cancel(1_300), "cancel");
    assert!(
        matches!(
            s.update_build(&done, wrong).await,
            Err(WriteError::Conflict(_))
        ),
        "contract: the condition checks the status as well as the version"
    );
    let ghost = build(99, "shop", "web", 1);
    match s.update_build(&ghost, ghost.state.expected()).await {
        Err(WriteError::Conflict(c)) => assert_eq!(
            c.current, None,
            "contract: updating a missing item conflicts with no current item"
        ),
        other => panic!("contract: updating a missing build must conflict, got {other:?}"),
    }
    assert_eq!(
        ok(s.get_build(&b.id).await, "get_build"),
        Some(running),
        "contract: failed writes change nothing"
    );
}

pub(super) async fn store_syncs_are_conditional<S: JobStore>(s: &S) {
    let j = sync(1, "cb-0001", "i-1", 1_000);
    ok(s.create_sync(&j).await, "create_sync");
    assert!(
        matches!(s.create_sync(&j).await, Err(WriteError::Conflict(c)) if c.current.as_ref() == Some(&j)),
        "contract: create_sync is put-if-absent and returns the existing item"
    );
    let d = ok(j.dispatch(1_100, 9_999), "dispatch");
    ok(s.update_sync(&d, j.state.expected()).await, "update_sync");
    let q = ok(d.requeue(1_200), "requeue");
    assert!(
        matches!(s.update_sync(&q, j.state.expected()).await, Err(WriteError::Conflict(c)) if c.current.as_ref() == Some(&d)),
        "contract: a stale update_sync conflicts and carries the current item"
    );
    ok(s.update_sync(&q, d.state.expected()).await, "update_sync");
    let got = ok(s.get_sync(&j.id).await, "get_sync");
    assert_eq!(got.as_ref().map(|g| g.state.attempts), Some(2));
    assert_eq!(got, Some(q));
}

pub(super) async fn store_idempotency<S: JobStore>(s: &S) {
    let k = "build.requested#contract-1";
    let begin = |now: u64| s.idempotency_begin(k, now, now + 100, now + 10_000);
    assert_eq!(ok(begin(1_000).await, "begin"), IdempotencyClaim::Acquired);
    assert_eq!(
        ok(begin(1_050).await, "begin"),
        IdempotencyClaim::InProgress { until: 1_100 },
        "contract: a live in-progress record blocks a second claim"
    );
    assert_eq!(
        ok(begin(1_101).await, "begin"),
        IdempotencyClaim::Acquired,
        "contract: an expired in-progress record (crashed handler) can be claimed again"
    );
    ok(
        s.idempotency_complete(k, "{\"done\":1}", 20_000).await,
        "complete",
    );
    assert_eq!(
        ok(begin(5_000).await, "begin"),
        IdempotencyClaim::Completed {
            result: "{\"done\":1}".into()
        },
        "contract: a completed record answers with its stored result"
    );
    assert_eq!(
        ok(begin(20_001).await, "begin"),
        IdempotencyClaim::Acquired,
        "contract: a record past its TTL is gone even if not yet deleted"
    );
    ok(s.idempotency_release(k).await, "release");
    assert_eq!(
        ok(begin(20_002).await, "begin"),
        IdempotencyClaim::Acquired,
        "contract: a released in-progress record can be claimed at once"
    );
    let other = "build.requested#contract-2";
    assert_eq!(
        ok(
            s.idempotency_begin(other, 20_003, 20_100, 30_000).await,
            "begin"
        ),
        IdempotencyClaim::Acquired,
        "contract: keys are independent"
    );
}

pub(super) async fn store_lineage<S: JobStore>(s: &S) {
    let rec = |i: &str, d: u8, since: u64| LineageRecord {
        digest: digest(d),
        install_id: id(InstallId::new(i)),
        repository: repo("shop/web"),
        build_id: id(BuildId::new("cb-0001")),
        sync_id: id(SyncId::new(format!("cs-{i}"))),
        since,
    };
    let first = rec("i-2", 1, 100);
    assert_eq!(ok(s.record_lineage(&first).await, "record_lineage"), first);
    assert_eq!(
        ok(
            s.record_lineage(&rec("i-2", 1, 500)).await,
            "record_lineage"
        ),
        first,
        "contract: lineage keeps the first `since` for a (digest, install)"
    );
    ok(
        s.record_lineage(&rec("i-1", 1, 200)).await,
        "record_lineage",
    );
    ok(
        s.record_lineage(&rec("i-3", 1, 300)).await,
        "record_lineage",
    );
    ok(
        s.record_lineage(&rec("i-1", 2, 300)).await,
        "record_lineage",
    );
    let d1 = digest(1);
    let got = collect(2, |p| {
        let d1 = &d1;
        async move { s.lineage_by_digest(d1, &p).await }
    })
    .await;
    let installs: Vec<&str> = got.iter().map(|r| r.install_id.as_str()).collect();
    assert_eq!(
        installs,
        vec!["i-1", "i-2", "i-3"],
        "contract: lineage_by_digest lists each holder once, by install id"
    );
    assert_eq!(got[1].since, 100);
}

pub(super) async fn store_queries_paginate<S: JobStore>(s: &S) {
    for n in 0..7 {
        ok(
            s.create_build(&build(n, "shop", "web", 1_000 + u64::from(n) * 10))
                .await,
            "create_build",
        );
    }
    ok(
        s.create_build(&build(50, "shop", "api", 5_000)).await,
        "create_build",
    );
    ok(
        s.create_build(&build(51, "other", "web", 5_000)).await,
        "create_build",
    );
    let (a, c) = (app("shop"), comp("web"));
    let got = collect(3, |p| {
        let (a, c) = (&a, &c);
        async move { s.builds_by_component(a, c, &p).await }
    })
    .await;
    let ids: Vec<String> = got.iter().map(|b| b.id.to_string()).collect();
    let want: Vec<String> = (0..7).rev().map(|n| format!("cb-{n:04}")).collect();
    assert_eq!(
        ids, want,
        "contract: builds_by_component returns that component's builds once each, newest first"
    );

    for (n, (b, i)) in [
        ("cb-0001", "i-1"),
        ("cb-0001", "i-2"),
        ("cb-0001", "i-3"),
        ("cb-0002", "i-1"),
        ("cb-0003", "i-1"),
    ]
    .iter()
    .enumerate()
    {
        let n = n as u32;
        ok(
            s.create_sync(&sync(n, b, i, 2_000 + u64::from(n))).await,
            "create_sync",
        );
    }
    let b1 = id(BuildId::new("cb-0001"));
    let by_build = collect(2, |p| {
        let b1 = &b1;
        async move { s.syncs_by_build(b1, &p).await }
    })
    .await;
    let installs: Vec<&str> = by_build.iter().map(|j| j.install_id.as_str()).collect();
    assert_eq!(
        installs,
        vec!["i-1", "i-2", "i-3"],
        "contract: syncs_by_build, by install id"
    );
    let i1 = id(InstallId::new("i-1"));
    let by_install = collect(2, |p| {
        let i1 = &i1;
        async move { s.syncs_by_install(i1, &p).await }
    })
    .await;
    let builds: Vec<&str> = by_install.iter().map(|j| j.build_id.as_str()).collect();
    assert_eq!(
        builds,
        vec!["cb-0003", "cb-0002", "cb-0001"],
        "contract: syncs_by_install, newest first"
    );

    for i in ["i-5", "i-3", "i-4", "i-1"] {
        ok(
            s.put_install(&install(i, "shop", &["web", "api"])).await,
            "put_install",
        );
    }
    ok(
        s.put_install(&install("i-2", "shop", &["api"])).await,
        "put_install",
    );
    ok(
        s.put_install(&install("i-6", "other", &["web"])).await,
        "put_install",
    );
    let subscribed = collect(2, |p| {
        let (a, c) = (&a, &c);
        async move { s.installs_by_component(a, c, &p).await }
    })
    .await;
    let ids: Vec<&str> = subscribed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["i-1", "i-3", "i-4", "i-5"],
        "contract: installs_by_component lists installs of that app subscribed to it, by id"
    );

    let bogus = PageRequest::after(2, crate::ports::Cursor::new("not-a-cursor-from-here"));
    assert!(
        s.builds_by_component(&a, &c, &bogus).await.is_err(),
        "contract: a foreign cursor is an error, not a silent restart"
    );
}
