//! Port contract suites (feature `contract`): the semantics every `JobStore` and `Queue`
//! adapter must keep, as plain async functions the adapters' own tests call.
//!
//! ```ignore
//! #[tokio::test]
//! async fn sqlite_store_keeps_the_contract() {
//!     ferry_core::contract::job_store_contract(|| async { SqliteStore::open_in_memory() }).await;
//! }
//! ```
//!
//! Each suite panics with a message naming the broken rule. The suites never sleep and never
//! depend on wall-clock time: idempotency TTLs use explicit `now` values, and visibility is
//! reset with `change_visibility(.., 0)`. They must never assert what SQS or DynamoDB do not
//! guarantee (message order on a standard queue, exact page sizes before the last page).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::future::Future;

use crate::domain::{
    Build, Component, ComponentKind, Install, LineageRecord, RegistryTarget, SyncJob,
};
use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, QueueName, Repository, SyncId,
};
use crate::ports::{
    Batch, IdempotencyClaim, JobStore, Page, PageRequest, Queue, QueueError, ReceiptHandle,
    ReceiveOptions, ReceivedMessage, StoreError, WriteError,
};
use crate::state::{JobError, JobStatus};

fn ok<T, E: Debug>(r: Result<T, E>, rule: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("contract: {rule}: unexpected error {e:?}"),
    }
}

fn id<T, E: Debug>(r: Result<T, E>) -> T {
    ok(r, "building a test id")
}

fn app(s: &str) -> AppName {
    id(AppName::new(s))
}
fn comp(s: &str) -> ComponentName {
    id(ComponentName::new(s))
}
fn digest(n: u8) -> Digest {
    id(Digest::new(format!("sha256:{}", hex::encode([n; 32]))))
}
fn repo(s: &str) -> Repository {
    id(Repository::new(s))
}

fn build(n: u32, a: &str, c: &str, created_at: u64) -> Build {
    Build::new(
        id(BuildId::new(format!("cb-{n:04}"))),
        app(a),
        comp(c),
        "refs/heads/main".into(),
        "contract".into(),
        created_at,
    )
}

fn sync(n: u32, b: &str, i: &str, created_at: u64) -> SyncJob {
    SyncJob::new(
        id(SyncId::new(format!("cs-{n:04}"))),
        id(BuildId::new(b)),
        id(InstallId::new(i)),
        repo("shop/web"),
        digest(1),
        created_at,
    )
}

fn install(i: &str, a: &str, components: &[&str]) -> Install {
    Install {
        id: id(InstallId::new(i)),
        app: app(a),
        registry: RegistryTarget {
            endpoint: "registry.install.test".into(),
            namespace: "vendor".into(),
        },
        agent_public_key: format!("key-{i}"),
        agent_report_key: format!("report-key-{i}"),
        queue: id(QueueName::new(format!("q-{i}"))),
        components: components.iter().map(|c| comp(c)).collect(),
    }
}

/// Follows cursors to the end (bounded, so a cursor loop fails instead of hanging).
async fn collect<T, F, Fut>(limit: u32, mut query: F) -> Vec<T>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Page<T>, StoreError>>,
{
    let mut out = Vec::new();
    let mut page = PageRequest::first(limit);
    for _ in 0..1000 {
        let got = ok(query(page.clone()).await, "queries page without error");
        assert!(
            got.items.len() <= limit as usize,
            "contract: a page holds at most `limit` items"
        );
        out.extend(got.items);
        match got.next {
            Some(c) => page = PageRequest::after(limit, c),
            None => return out,
        }
    }
    panic!("contract: pagination must terminate")
}

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

async fn store_builds_are_conditional<S: JobStore>(s: &S) {
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

async fn store_syncs_are_conditional<S: JobStore>(s: &S) {
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

async fn store_idempotency<S: JobStore>(s: &S) {
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

async fn store_lineage<S: JobStore>(s: &S) {
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

async fn store_queries_paginate<S: JobStore>(s: &S) {
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

/// Queues for one run of the queue contract: `a` and `b` exist and are empty; `missing`
/// does not exist.
pub struct QueueFixture<Q> {
    pub queue: Q,
    pub a: QueueName,
    pub b: QueueName,
    pub missing: QueueName,
}

fn opts(max: u32, visibility: u32) -> ReceiveOptions {
    // One second of long poll: lets SQS gather messages, costs nothing in memory.
    ok(
        ReceiveOptions::new(max, 1, visibility),
        "valid receive options",
    )
}

/// Receives until `want` messages arrived (SQS may return fewer than asked per call).
async fn receive_n<Q: Queue>(q: &Q, name: &QueueName, want: usize) -> Vec<ReceivedMessage> {
    let mut got = Vec::new();
    for _ in 0..30 {
        if got.len() >= want {
            break;
        }
        got.extend(ok(q.receive(name, &opts(10, 60)).await, "receive"));
    }
    got
}

/// The `Queue` contract. `make` returns a fresh fixture for each call.
pub async fn queue_contract<Q, F, Fut>(make: F)
where
    Q: Queue,
    F: Fn() -> Fut,
    Fut: Future<Output = QueueFixture<Q>>,
{
    queue_visibility_and_receive_count(&make().await).await;
    queue_batches(&make().await).await;
    queue_isolation_and_errors(&make().await).await;
    queue_delays(&make().await).await;
}

/// A delayed message is not received before its delay; a delay past the SQS limit is refused.
async fn queue_delays<Q: Queue>(f: &QueueFixture<Q>) {
    let q = &f.queue;
    let e = q.send_delayed(&f.a, "late", 901).await;
    assert!(
        matches!(e, Err(QueueError::Invalid { .. })),
        "contract: a delay over 900 s is refused as Invalid, got {e:?}"
    );
    ok(
        q.send_delayed(&f.a, "{\"later\":1}", 600).await,
        "send_delayed",
    );
    assert!(
        ok(q.receive(&f.a, &opts(10, 60)).await, "receive").is_empty(),
        "contract: a delayed message stays invisible until its delay has passed"
    );
    ok(
        q.send_delayed(&f.a, "{\"now\":1}", 0).await,
        "send_delayed 0",
    );
    let got = receive_n(q, &f.a, 1).await;
    assert_eq!(got.len(), 1, "contract: a zero delay is an ordinary send");
    assert_eq!(got[0].body, "{\"now\":1}");
}

async fn queue_visibility_and_receive_count<Q: Queue>(f: &QueueFixture<Q>) {
    let q = &f.queue;
    let sent = ok(q.send(&f.a, "{\"hello\":1}").await, "send");
    let first = receive_n(q, &f.a, 1).await;
    assert_eq!(first.len(), 1, "contract: a sent message can be received");
    let m = &first[0];
    assert_eq!(
        m.message_id, sent,
        "contract: receive returns the id send returned"
    );
    assert_eq!(m.body, "{\"hello\":1}", "contract: bodies arrive unchanged");
    assert_eq!(m.receive_count, 1, "contract: the first receive counts 1");
    assert!(
        ok(q.receive(&f.a, &opts(10, 60)).await, "receive").is_empty(),
        "contract: a received message is invisible for its visibility timeout"
    );

    let mut handle = m.receipt_handle.clone();
    for count in 2..=3 {
        ok(
            q.change_visibility(&f.a, &handle, 0).await,
            "change_visibility to 0",
        );
        let again = receive_n(q, &f.a, 1).await;
        assert_eq!(
            again.len(),
            1,
            "contract: visibility 0 makes a message visible again"
        );
        assert_eq!(again[0].message_id, sent);
        assert_eq!(
            again[0].receive_count, count,
            "contract: every receive increments the receive count (it drives the DLQ redrive)"
        );
        assert_ne!(
            again[0].receipt_handle, handle,
            "contract: each receive gets a new receipt handle"
        );
        handle = again[0].receipt_handle.clone();
    }
    ok(
        q.delete(&f.a, &handle).await,
        "delete with the latest handle",
    );
    assert!(
        ok(q.receive(&f.a, &opts(10, 0)).await, "receive").is_empty(),
        "contract: a deleted message never comes back"
    );
}

async fn queue_batches<Q: Queue>(f: &QueueFixture<Q>) {
    let q = &f.queue;
    let bodies: Vec<String> = (0..10).map(|n| format!("{{\"n\":{n}}}")).collect();
    let batch = ok(Batch::new(bodies.clone()), "a batch of 10");
    let results = ok(q.send_batch(&f.a, &batch).await, "send_batch");
    assert_eq!(results.len(), 10, "contract: send_batch answers per entry");
    let ids: BTreeSet<_> = results
        .into_iter()
        .map(|r| ok(r, "every entry of a valid batch is accepted"))
        .collect();
    assert_eq!(ids.len(), 10, "contract: message ids are distinct");

    let few = ok(q.receive(&f.a, &opts(3, 60)).await, "receive");
    assert!(
        few.len() <= 3,
        "contract: receive returns at most max_messages"
    );
    let mut got = few;
    got.extend(receive_n(q, &f.a, 10 - got.len()).await);
    let mut seen: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    seen.sort();
    let mut want = bodies;
    want.sort();
    assert_eq!(
        seen, want,
        "contract: every batched message is received exactly once"
    );

    let handles: Vec<ReceiptHandle> = got.iter().map(|m| m.receipt_handle.clone()).collect();
    let handles = ok(Batch::new(handles), "a batch of 10 handles");
    let deleted = ok(q.delete_batch(&f.a, &handles).await, "delete_batch");
    assert_eq!(
        deleted.len(),
        10,
        "contract: delete_batch answers per entry"
    );
    assert!(
        deleted.iter().all(Result::is_ok),
        "contract: valid handles delete"
    );
    for m in &got {
        // Making deleted messages visible must fail or do nothing; they must not reappear.
        let _ = q.change_visibility(&f.a, &m.receipt_handle, 0).await;
    }
    assert!(
        ok(q.receive(&f.a, &opts(10, 0)).await, "receive").is_empty(),
        "contract: batch-deleted messages never come back"
    );
}

async fn queue_isolation_and_errors<Q: Queue>(f: &QueueFixture<Q>) {
    let q = &f.queue;
    ok(q.send(&f.a, "only-in-a").await, "send");
    assert!(
        ok(q.receive(&f.b, &opts(10, 60)).await, "receive").is_empty(),
        "contract: queues are isolated"
    );
    let got = receive_n(q, &f.a, 1).await;
    assert_eq!(got.len(), 1);
    assert!(
        matches!(
            q.send(&f.missing, "x").await,
            Err(QueueError::NoSuchQueue { .. })
        ),
        "contract: sending to a missing queue is NoSuchQueue"
    );
    assert!(
        q.delete(&f.a, &ReceiptHandle("made-up-handle".into()))
            .await
            .is_err(),
        "contract: a made-up receipt handle is refused"
    );
    assert!(
        ok(q.receive(&f.a, &opts(10, 0)).await, "receive").is_empty(),
        "contract: a refused delete leaves the message in flight, not duplicated"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ManualClock, MemQueue, MemStore};

    #[tokio::test]
    async fn mem_store_keeps_the_job_store_contract() {
        job_store_contract(|| async { MemStore::new() }).await;
    }

    #[tokio::test]
    async fn mem_queue_keeps_the_queue_contract() {
        queue_contract(|| async {
            let queue = MemQueue::new(ManualClock::new(1_000));
            let (a, b) = (QueueName::new("a").unwrap(), QueueName::new("b").unwrap());
            queue.create_queue(&a);
            queue.create_queue(&b);
            QueueFixture {
                queue,
                a,
                b,
                missing: QueueName::new("missing").unwrap(),
            }
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "contract")]
    async fn a_store_that_ignores_conditions_fails_the_contract() {
        job_store_contract(|| async { sloppy::SloppyStore(MemStore::new()) }).await;
    }

    /// A store that writes unconditionally: the suite must catch it.
    mod sloppy {
        use super::*;
        use crate::state::Expected;

        pub struct SloppyStore(pub MemStore);

        impl JobStore for SloppyStore {
            async fn put_component(&self, c: &Component) -> Result<(), StoreError> {
                self.0.put_component(c).await
            }
            async fn get_component(
                &self,
                a: &AppName,
                n: &ComponentName,
            ) -> Result<Option<Component>, StoreError> {
                self.0.get_component(a, n).await
            }
            async fn put_install(&self, i: &Install) -> Result<(), StoreError> {
                self.0.put_install(i).await
            }
            async fn get_install(&self, i: &InstallId) -> Result<Option<Install>, StoreError> {
                self.0.get_install(i).await
            }
            async fn create_build(&self, b: &Build) -> Result<(), WriteError<Build>> {
                self.0.create_build(b).await
            }
            async fn get_build(&self, i: &BuildId) -> Result<Option<Build>, StoreError> {
                self.0.get_build(i).await
            }
            async fn update_build(&self, b: &Build, _: Expected) -> Result<(), WriteError<Build>> {
                // Ignores the condition: reads the current version and writes over it.
                let cur = self.0.get_build(&b.id).await?;
                match cur {
                    Some(c) => self.0.update_build(b, c.state.expected()).await,
                    None => self.0.create_build(b).await,
                }
            }
            async fn create_sync(&self, j: &SyncJob) -> Result<(), WriteError<SyncJob>> {
                self.0.create_sync(j).await
            }
            async fn get_sync(&self, i: &SyncId) -> Result<Option<SyncJob>, StoreError> {
                self.0.get_sync(i).await
            }
            async fn update_sync(
                &self,
                j: &SyncJob,
                e: Expected,
            ) -> Result<(), WriteError<SyncJob>> {
                self.0.update_sync(j, e).await
            }
            async fn record_lineage(&self, r: &LineageRecord) -> Result<LineageRecord, StoreError> {
                self.0.record_lineage(r).await
            }
            async fn idempotency_begin(
                &self,
                k: &str,
                n: u64,
                p: u64,
                e: u64,
            ) -> Result<IdempotencyClaim, StoreError> {
                self.0.idempotency_begin(k, n, p, e).await
            }
            async fn idempotency_complete(
                &self,
                k: &str,
                r: &str,
                e: u64,
            ) -> Result<(), StoreError> {
                self.0.idempotency_complete(k, r, e).await
            }
            async fn idempotency_release(&self, k: &str) -> Result<(), StoreError> {
                self.0.idempotency_release(k).await
            }
            async fn count_security_event(&self, k: &str, now: u64) -> Result<u64, StoreError> {
                self.0.count_security_event(k, now).await
            }
            async fn security_event_count(
                &self,
                k: &str,
            ) -> Result<(u64, Option<u64>), StoreError> {
                self.0.security_event_count(k).await
            }
            async fn record_heartbeat(
                &self,
                t: &crate::telemetry::InstallTelemetry,
            ) -> Result<crate::telemetry::InstallTelemetry, StoreError> {
                self.0.record_heartbeat(t).await
            }
            async fn get_telemetry(
                &self,
                i: &InstallId,
            ) -> Result<Option<crate::telemetry::InstallTelemetry>, StoreError> {
                self.0.get_telemetry(i).await
            }
            async fn stale_syncs(
                &self,
                before: u64,
                p: &PageRequest,
            ) -> Result<Page<SyncJob>, StoreError> {
                self.0.stale_syncs(before, p).await
            }
            async fn builds_by_component(
                &self,
                a: &AppName,
                c: &ComponentName,
                p: &PageRequest,
            ) -> Result<Page<Build>, StoreError> {
                self.0.builds_by_component(a, c, p).await
            }
            async fn syncs_by_install(
                &self,
                i: &InstallId,
                p: &PageRequest,
            ) -> Result<Page<SyncJob>, StoreError> {
                self.0.syncs_by_install(i, p).await
            }
            async fn syncs_by_build(
                &self,
                b: &BuildId,
                p: &PageRequest,
            ) -> Result<Page<SyncJob>, StoreError> {
                self.0.syncs_by_build(b, p).await
            }
            async fn installs_by_component(
                &self,
                a: &AppName,
                c: &ComponentName,
                p: &PageRequest,
            ) -> Result<Page<Install>, StoreError> {
                self.0.installs_by_component(a, c, p).await
            }
            async fn lineage_by_digest(
                &self,
                d: &Digest,
                p: &PageRequest,
            ) -> Result<Page<LineageRecord>, StoreError> {
                self.0.lineage_by_digest(d, p).await
            }
        }
    }
}
