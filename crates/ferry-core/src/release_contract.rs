//! The `ReleaseStore` contract (feature `contract`): the semantics every release store keeps,
//! run by each adapter's own tests (SQLite in ferry-local, DynamoDB on moto in ferry-aws, the
//! in-memory fake here). It panics with a message naming the broken rule, never sleeps, and
//! never asserts exact page sizes before the last page.

use std::fmt::Debug;
use std::future::Future;

use crate::domain::LineageRecord;
use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, ReleaseId, Repository, SyncId,
};
use crate::ports::{JobStore, PageRequest, WriteError};
use crate::release::{
    FailureBudget, Release, ReleasePolicy, ReleaseStore, ReleaseTarget, TargetState, TargetSync,
};

fn ok<T, E: Debug>(r: Result<T, E>, rule: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("contract: {rule}: unexpected error {e:?}"),
    }
}

fn rid(s: &str) -> ReleaseId {
    ok(ReleaseId::new(s), "release id")
}

fn iid(s: &str) -> InstallId {
    ok(InstallId::new(s), "install id")
}

fn digest() -> Digest {
    ok(Digest::new(format!("sha256:{}", "ab".repeat(32))), "digest")
}

fn release(id: &str, app: &str, created_at: u64) -> Release {
    Release::new(
        rid(id),
        ok(AppName::new(app), "app"),
        vec![],
        ReleasePolicy {
            installs_per_step: 3,
            delay_ms: 0,
            max_failures: FailureBudget::Count(1),
        },
        "contract".into(),
        4,
        created_at,
    )
}

fn target(release: &str, install: &str, step: u32) -> ReleaseTarget {
    ReleaseTarget {
        release_id: rid(release),
        install_id: iid(install),
        step,
        round: 0,
        syncs: vec![TargetSync {
            component: ok(ComponentName::new("web"), "component"),
            build_id: ok(BuildId::new("b-1"), "build id"),
            digest: digest(),
            sync_id: None,
            state: TargetState::Pending,
            error: None,
            bytes_copied: 0,
        }],
        updated_at: 1,
        version: 1,
    }
}

/// The `ReleaseStore` contract. `make` returns a fresh, empty store for each call.
pub async fn release_store_contract<S, F, Fut>(make: F)
where
    S: ReleaseStore + JobStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    releases_are_conditional(&make().await).await;
    targets_are_conditional_and_listed_by_step(&make().await).await;
    lineage_point_reads(&make().await).await;
    running_releases_are_listed(&make().await).await;
    batches_keep_the_point_rules(&make().await, false).await;
}

/// The batch operations (issue 12) on a fresh store: `create_targets` creates what is absent
/// and leaves what exists; `update_targets` writes all or none; `get_installs` and
/// `get_lineages` return exactly what exists. With `atomic`, the store must also write a
/// batch of several targets at once (SQLite, DynamoDB); without, it may decline (the default).
pub async fn release_batch_contract<S: ReleaseStore + JobStore>(s: &S, atomic: bool) {
    batches_keep_the_point_rules(s, atomic).await;
}

async fn batches_keep_the_point_rules<S: ReleaseStore + JobStore>(s: &S, atomic: bool) {
    let first = target("r-b", "i-1", 0);
    ok(s.create_target(&first).await, "create_target");
    let mut again = target("r-b", "i-1", 0);
    again.updated_at = 99;
    let batch = vec![again, target("r-b", "i-2", 0), target("r-b", "i-3", 1)];
    ok(s.create_targets(&batch).await, "create_targets");
    let get = |i: &'static str| async move {
        ok(s.get_target(&rid("r-b"), &iid(i)).await, "get_target")
            .unwrap_or_else(|| panic!("contract: create_targets creates target {i}"))
    };
    assert_eq!(
        get("i-1").await,
        first,
        "contract: create_targets leaves an existing target as it is"
    );
    let step1 = ok(
        s.targets_by_step(&rid("r-b"), 1, &PageRequest::first(10))
            .await,
        "targets_by_step",
    );
    assert_eq!(
        step1
            .items
            .iter()
            .map(|t| t.install_id.to_string())
            .collect::<Vec<_>>(),
        ["i-3"],
        "contract: create_targets puts each target in its step"
    );
    // All or none.
    assert!(
        ok(s.update_targets(&[]).await, "update_targets"),
        "contract: an empty batch is written"
    );
    let (t1, t2) = (get("i-1").await, get("i-2").await);
    let wrote = ok(
        s.update_targets(&[(t1.bumped(200), t1.version), (t2.bumped(200), t2.version)])
            .await,
        "update_targets",
    );
    assert!(
        wrote || !atomic,
        "contract: this store writes a batch at once"
    );
    let (c1, c2) = (get("i-1").await, get("i-2").await);
    if wrote {
        assert_eq!(
            (&c1, &c2),
            (&t1.bumped(200), &t2.bumped(200)),
            "contract: a written batch is stored"
        );
    } else {
        assert_eq!(
            (&c1, &c2),
            (&t1, &t2),
            "contract: a declined batch writes nothing"
        );
    }
    let stale = ok(
        s.update_targets(&[
            (c1.bumped(300), c1.version),
            (c2.bumped(300), c2.version + 7),
        ])
        .await,
        "update_targets",
    );
    assert!(
        !stale,
        "contract: a batch with a stale version is not written"
    );
    assert_eq!(
        (get("i-1").await, get("i-2").await),
        (c1.clone(), c2.clone()),
        "contract: a batch with one stale version writes none of its targets"
    );
    assert!(
        ok(
            s.update_targets(&[(c1.bumped(400), c1.version)]).await,
            "update_targets"
        ),
        "contract: a batch of one current target is written"
    );
    assert_eq!(get("i-1").await, c1.bumped(400));
    // Batch reads.
    let record = LineageRecord {
        digest: digest(),
        install_id: iid("i-1"),
        repository: ok(Repository::new("shop/web"), "repository"),
        build_id: ok(BuildId::new("b-1"), "build id"),
        sync_id: ok(SyncId::new("s-1"), "sync id"),
        since: 7,
    };
    ok(s.record_lineage(&record).await, "record_lineage");
    let pairs = [
        (digest(), iid("i-1")),
        (digest(), iid("i-2")),
        (digest(), iid("i-1")),
    ];
    assert_eq!(
        ok(s.get_lineages(&pairs).await, "get_lineages"),
        vec![record],
        "contract: get_lineages returns each existing record once"
    );
    for i in ["i-1", "i-2"] {
        let install = crate::domain::Install {
            id: iid(i),
            app: ok(AppName::new("shop"), "app"),
            registry: crate::domain::RegistryTarget {
                endpoint: format!("{i}.registry.test"),
                namespace: "ferry".into(),
            },
            agent_public_key: "pk".into(),
            agent_report_key: "rk".into(),
            queue: ok(crate::id::QueueName::new(format!("q-{i}")), "queue"),
            components: vec![ok(ComponentName::new("web"), "component")],
        };
        ok(s.put_install(&install).await, "put_install");
    }
    let mut got: Vec<String> = ok(
        s.get_installs(&[iid("i-2"), iid("i-9"), iid("i-1"), iid("i-2")])
            .await,
        "get_installs",
    )
    .into_iter()
    .map(|i| format!("{}:{}", i.id, i.queue.as_str()))
    .collect();
    got.sort();
    assert_eq!(
        got,
        ["i-1:q-i-1", "i-2:q-i-2"],
        "contract: get_installs returns each existing install once"
    );
}

async fn running_releases_are_listed<S: ReleaseStore>(s: &S) {
    // r-0..r-4 running; r-5 paused, r-6 completed-like (aborted).
    for n in 0..7u32 {
        let r = release(&format!("r-{n}"), "shop", u64::from(n));
        ok(s.create_release(&r).await, "create_release");
        let next = match n {
            5 => Some(r.pause(100).unwrap_or_else(|e| panic!("{e}"))),
            6 => Some(r.abort(100, "x").unwrap_or_else(|e| panic!("{e}"))),
            _ => None,
        };
        if let Some(next) = next {
            ok(s.update_release(&next, r.version).await, "update_release");
        }
    }
    let mut ids = Vec::new();
    let mut page = PageRequest::first(2);
    for _ in 0..20 {
        let got = ok(s.running_releases(&page).await, "running_releases");
        assert!(
            got.items.len() <= 2,
            "contract: a page holds at most `limit`"
        );
        ids.extend(got.items.into_iter().map(|r| r.id.to_string()));
        match got.next {
            Some(c) => page = PageRequest::after(2, c),
            None => break,
        }
    }
    assert_eq!(
        ids,
        ["r-0", "r-1", "r-2", "r-3", "r-4"],
        "contract: running_releases lists the running releases once each, by id"
    );
}

async fn releases_are_conditional<S: ReleaseStore>(s: &S) {
    let r = release("r-1", "shop", 10);
    ok(s.create_release(&r).await, "create_release");
    match s.create_release(&release("r-1", "other", 11)).await {
        Err(WriteError::Conflict(c)) => assert_eq!(
            c.current.as_ref(),
            Some(&r),
            "contract: a second create returns the stored release"
        ),
        other => panic!("contract: create_release is put-if-absent, got {other:?}"),
    }
    let stale = r.pause(20).unwrap_or_else(|e| panic!("{e}"));
    ok(s.update_release(&stale, r.version).await, "update_release");
    let again = r.abort(30, "x").unwrap_or_else(|e| panic!("{e}"));
    match s.update_release(&again, r.version).await {
        Err(WriteError::Conflict(c)) => assert_eq!(
            c.current.as_ref(),
            Some(&stale),
            "contract: a stale version conflicts, returning the current release"
        ),
        other => panic!("contract: update_release is conditional on version, got {other:?}"),
    }
    assert_eq!(
        ok(s.get_release(&r.id).await, "get_release"),
        Some(stale),
        "contract: get_release reads the last write"
    );
    assert_eq!(ok(s.get_release(&rid("r-404")).await, "get_release"), None);

    ok(
        s.create_release(&release("r-2", "shop", 30)).await,
        "create",
    );
    ok(
        s.create_release(&release("r-3", "shop", 20)).await,
        "create",
    );
    ok(
        s.create_release(&release("r-9", "other", 40)).await,
        "create",
    );
    let mut ids = Vec::new();
    let mut page = PageRequest::first(2);
    for _ in 0..10 {
        let got = ok(
            s.releases_by_app(&ok(AppName::new("shop"), "app"), &page)
                .await,
            "releases_by_app",
        );
        ids.extend(got.items.into_iter().map(|r| r.id.to_string()));
        match got.next {
            Some(c) => page = PageRequest::after(2, c),
            None => break,
        }
    }
    assert_eq!(
        ids,
        ["r-2", "r-3", "r-1"],
        "contract: releases_by_app lists one app's releases, newest first, over pages"
    );
}

async fn targets_are_conditional_and_listed_by_step<S: ReleaseStore>(s: &S) {
    for (install, step) in [("i-c", 0), ("i-a", 0), ("i-b", 0), ("i-d", 1)] {
        ok(
            s.create_target(&target("r-1", install, step)).await,
            "create_target",
        );
    }
    match s.create_target(&target("r-1", "i-a", 1)).await {
        Err(WriteError::Conflict(c)) => assert_eq!(
            c.current.map(|t| t.step),
            Some(0),
            "contract: an install is a target of a release once, whatever the step"
        ),
        other => panic!("contract: create_target is put-if-absent, got {other:?}"),
    }
    ok(
        s.create_target(&target("r-2", "i-a", 0)).await,
        "another release's target",
    );

    let t = ok(s.get_target(&rid("r-1"), &iid("i-b")).await, "get_target")
        .unwrap_or_else(|| panic!("contract: get_target finds a created target"));
    let mut next = t.bumped(5);
    next.syncs[0].state = TargetState::Syncing;
    next.syncs[0].sync_id = Some(ok(SyncId::new("s-1"), "sync id"));
    ok(s.update_target(&next, t.version).await, "update_target");
    match s.update_target(&t.bumped(6), t.version).await {
        Err(WriteError::Conflict(c)) => assert_eq!(
            c.current.as_ref(),
            Some(&next),
            "contract: a stale target version conflicts, returning the current target"
        ),
        other => panic!("contract: update_target is conditional on version, got {other:?}"),
    }
    assert_eq!(
        ok(s.get_target(&rid("r-1"), &iid("i-b")).await, "get_target"),
        Some(next)
    );
    assert_eq!(
        ok(s.get_target(&rid("r-1"), &iid("i-z")).await, "get_target"),
        None
    );

    let mut installs = Vec::new();
    let mut page = PageRequest::first(2);
    for _ in 0..10 {
        let got = ok(
            s.targets_by_step(&rid("r-1"), 0, &page).await,
            "targets_by_step",
        );
        installs.extend(got.items.into_iter().map(|t| t.install_id.to_string()));
        match got.next {
            Some(c) => page = PageRequest::after(2, c),
            None => break,
        }
    }
    assert_eq!(
        installs,
        ["i-a", "i-b", "i-c"],
        "contract: targets_by_step lists one step of one release by install id, over pages"
    );
    let step1 = ok(
        s.targets_by_step(&rid("r-1"), 1, &PageRequest::first(10))
            .await,
        "targets_by_step",
    );
    assert_eq!(step1.items.len(), 1);
    assert_eq!(step1.items[0].install_id, iid("i-d"));
}

async fn lineage_point_reads<S: ReleaseStore + JobStore>(s: &S) {
    assert_eq!(
        ok(s.get_lineage(&digest(), &iid("i-a")).await, "get_lineage"),
        None
    );
    let record = LineageRecord {
        digest: digest(),
        install_id: iid("i-a"),
        repository: ok(Repository::new("shop/web"), "repository"),
        build_id: ok(BuildId::new("b-1"), "build id"),
        sync_id: ok(SyncId::new("s-1"), "sync id"),
        since: 7,
    };
    ok(s.record_lineage(&record).await, "record_lineage");
    assert_eq!(
        ok(s.get_lineage(&digest(), &iid("i-a")).await, "get_lineage"),
        Some(record),
        "contract: get_lineage reads what record_lineage wrote"
    );
    assert_eq!(
        ok(s.get_lineage(&digest(), &iid("i-b")).await, "get_lineage"),
        None,
        "contract: lineage is per install"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemStore;

    #[tokio::test]
    async fn the_fake_keeps_the_release_store_contract() {
        release_store_contract(|| async { MemStore::new() }).await;
    }
}
