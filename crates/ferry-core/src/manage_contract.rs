//! The management port's contract suite (feature `contract`): what every [`Management`]
//! adapter must keep, run by ferry-dev (SQLite state dir) and ferry-aws (moto) against
//! themselves, like the `JobStore` and `Queue` suites in [`crate::contract`].
//!
//! The fixture hands over the adapter and the same backend's `JobStore` and `Queue`: builds,
//! syncs and lineage are seeded through the store (the IMS writes them in production), and a
//! dead letter is made by receiving a message past its queue's receive limit. The suite never
//! sleeps and never reads a clock; it panics with a message naming the broken rule.

use std::fmt::Debug;

use crate::domain::{Build, Component, ComponentKind, LineageRecord, SyncJob};
use crate::id::{AppName, BuildId, ComponentName, Digest, InstallId, Repository, SyncId};
use crate::manage::{
    AppRecord, BuildFilter, InstallRegistration, ManageError, Management, RegistrationOutcome,
    SyncFilter,
};
use crate::ports::{JobStore, Queue, ReceiveOptions};
use crate::seal::AgentKeypair;
use crate::state::{JobError, JobStatus};

/// One fresh, empty backend.
pub struct ManagementFixture<M, S, Q> {
    pub manage: M,
    /// The same backend's job store.
    pub store: S,
    /// The same backend's queues (to make a dead letter).
    pub queue: Q,
    /// Receives an install queue allows before it dead-letters a message.
    pub install_queue_max_receives: u32,
    /// The role ARN to register agents with (`None` on a backend without IAM).
    pub agent_role_arn: fn(&str) -> Option<String>,
}

fn ok<T, E: Debug>(r: Result<T, E>, rule: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("management contract: {rule}: unexpected error {e:?}"),
    }
}

fn id<T, E: Debug>(r: Result<T, E>) -> T {
    ok(r, "building a test id")
}

fn not_found<T: Debug>(r: Result<T, ManageError>, what: &str, rule: &str) {
    match r {
        Err(ManageError::NotFound { what: w, .. }) if w == what => {}
        other => panic!("management contract: {rule}: want NotFound({what}), got {other:?}"),
    }
}

fn component(app: &str, name: &str) -> Component {
    Component {
        app: id(AppName::new(app)),
        name: id(ComponentName::new(name)),
        kind: ComponentKind::Image {
            source: format!("docker.io/library/{name}:1"),
        },
        repository: id(Repository::new(format!("{app}/{name}"))),
        verify: None,
        credentials: None,
    }
}

fn registration(
    install: &str,
    app: &str,
    components: &[&str],
    role: Option<String>,
) -> InstallRegistration {
    let kp = ok(AgentKeypair::generate(), "generating an agent key");
    InstallRegistration {
        id: id(InstallId::new(install)),
        app: id(AppName::new(app)),
        components: components
            .iter()
            .map(|c| id(ComponentName::new(*c)))
            .collect(),
        agent_public_key: kp.public_key_string(),
        agent_report_key: kp.report_key().public_key_string(),
        agent_role_arn: role,
        registry: Some(crate::domain::RegistryTarget {
            endpoint: format!("registry.{install}.test"),
            namespace: "ferry".into(),
        }),
    }
}

fn digest(n: u8) -> Digest {
    id(Digest::new(format!("sha256:{}", hex::encode([n; 32]))))
}

/// The whole suite on one fresh backend.
pub async fn management_contract<M, S, Q>(f: ManagementFixture<M, S, Q>)
where
    M: Management,
    S: JobStore,
    Q: Queue,
{
    let m = &f.manage;
    let shop = id(AppName::new("shop"));

    // Apps.
    not_found(
        m.put_component(&component("shop", "web"), false).await,
        "app",
        "a component of an unknown app is refused",
    );
    for a in ["shop", "blog"] {
        ok(
            m.put_app(&AppRecord {
                name: id(AppName::new(a)),
                source: Some(format!("/src/{a}")),
            })
            .await,
            "adds an app",
        );
    }
    ok(
        m.put_app(&AppRecord {
            name: shop.clone(),
            source: Some("/src/shop2".into()),
        })
        .await,
        "replaces an app",
    );
    let apps = ok(m.list_apps().await, "lists apps");
    assert_eq!(
        apps.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        ["blog", "shop"],
        "management contract: apps are listed once each, by name"
    );
    assert_eq!(
        apps[1].source.as_deref(),
        Some("/src/shop2"),
        "management contract: adding an app again replaces it"
    );

    // Components.
    for c in ["web", "api"] {
        ok(
            m.put_component(&component("shop", c), false).await,
            "adds a component",
        );
    }
    ok(
        m.put_component(&component("blog", "site"), false).await,
        "adds a component",
    );
    let comps = ok(m.list_components(Some(&shop)).await, "lists components");
    assert_eq!(
        comps.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["api", "web"],
        "management contract: components of one app, by name"
    );
    assert_eq!(
        ok(m.list_components(None).await, "lists components").len(),
        3,
        "management contract: all components"
    );

    // Registration.
    let role = |i: &str| (f.agent_role_arn)(i);
    let bad = InstallRegistration {
        agent_public_key: "not-a-key".into(),
        ..registration("acme", "shop", &[], role("acme"))
    };
    match m.register_install(&bad).await {
        Err(ManageError::Invalid(msg)) => assert!(
            msg.contains("--public-key"),
            "management contract: a bad key's error names the flag: {msg}"
        ),
        other => panic!("management contract: a bad public key is Invalid, got {other:?}"),
    }
    not_found(
        m.register_install(&registration("acme", "shop", &["nope"], role("acme")))
            .await,
        "component",
        "an unknown component is refused at registration",
    );
    not_found(
        m.register_install(&registration("acme", "nope", &[], role("acme")))
            .await,
        "app",
        "an unknown app is refused at registration",
    );
    assert!(
        ok(m.list_installs().await, "lists installs").is_empty(),
        "management contract: a refused registration leaves nothing behind"
    );

    let acme = registration("acme", "shop", &[], role("acme"));
    let first = ok(m.register_install(&acme).await, "registers an install");
    assert_eq!(first.outcome, RegistrationOutcome::Created);
    assert_eq!(
        first
            .install
            .components
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>(),
        ["api", "web"],
        "management contract: no components named means all of the app's"
    );
    let again = ok(m.register_install(&acme).await, "registers again");
    assert_eq!(
        again.outcome,
        RegistrationOutcome::Unchanged,
        "management contract: the same registration twice changes nothing"
    );
    assert_eq!(again.install, first.install);
    let narrowed = InstallRegistration {
        components: vec![id(ComponentName::new("web"))],
        ..acme.clone()
    };
    let updated = ok(m.register_install(&narrowed).await, "updates an install");
    assert_eq!(updated.outcome, RegistrationOutcome::Updated);
    assert_eq!(
        updated.install.queue, first.install.queue,
        "management contract: an update keeps the install's queue"
    );
    let globex = ok(
        m.register_install(&registration("globex", "shop", &["web"], role("globex")))
            .await,
        "registers a second install",
    );
    assert_ne!(
        globex.install.queue, first.install.queue,
        "management contract: each install has its own queue"
    );
    let installs = ok(m.list_installs().await, "lists installs");
    assert_eq!(
        installs.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["acme", "globex"]
    );
    // Subscriptions drive fan-out: the store's index must agree with the registration.
    let web = id(ComponentName::new("web"));
    let api = id(ComponentName::new("api"));
    let subs = ok(
        f.store
            .installs_by_component(&shop, &api, &crate::ports::PageRequest::first(10))
            .await,
        "queries subscriptions",
    );
    assert!(
        subs.items.is_empty(),
        "management contract: an update drops subscriptions no longer named"
    );
    let added = ok(
        m.put_component(&component("shop", "api"), true).await,
        "subscribes every install",
    );
    assert_eq!(
        added.iter().map(|i| i.as_str()).collect::<Vec<_>>(),
        ["acme", "globex"],
        "management contract: subscribe_all names the installs it subscribed"
    );

    // Build requests.
    not_found(
        m.request_build(&shop, &id(ComponentName::new("nope")), "main", "contract")
            .await,
        "component",
        "a build of an unknown component is refused",
    );
    let b1 = ok(
        m.request_build(&shop, &web, "main", "contract").await,
        "requests a build",
    );
    let b2 = ok(
        m.request_build(&shop, &web, "main", "contract").await,
        "requests a build",
    );
    assert_ne!(b1, b2, "management contract: each request is a new build");

    // Builds, syncs, lineage: seeded the way the IMS writes them.
    let b = Build::new(
        id(BuildId::new("b-0001")),
        shop.clone(),
        web.clone(),
        "main".into(),
        "contract".into(),
        1_000,
    );
    ok(
        f.store.create_build(&b).await.map_err(|e| format!("{e:?}")),
        "seeds a build",
    );
    let api_build = Build::new(
        id(BuildId::new("b-0002")),
        shop.clone(),
        api.clone(),
        "main".into(),
        "contract".into(),
        2_000,
    );
    ok(
        f.store
            .create_build(&api_build)
            .await
            .map_err(|e| format!("{e:?}")),
        "seeds a build",
    );
    let builds = ok(m.list_builds(&BuildFilter::default()).await, "lists builds");
    let ids: Vec<&str> = builds.items.iter().map(|b| b.id.as_str()).collect();
    assert!(
        ids.iter().position(|i| *i == "b-0002") < ids.iter().position(|i| *i == "b-0001"),
        "management contract: builds are newest first: {ids:?}"
    );
    let only_api = ok(
        m.list_builds(&BuildFilter {
            app: Some(shop.clone()),
            component: Some(api.clone()),
        })
        .await,
        "lists builds of one component",
    );
    assert_eq!(
        only_api
            .items
            .iter()
            .map(|b| b.id.as_str())
            .collect::<Vec<_>>(),
        ["b-0002"],
        "management contract: --component filters"
    );

    let repo = id(Repository::new("shop/web"));
    let mut syncs = Vec::new();
    for (n, install) in [(1u8, "acme"), (2, "globex")] {
        let s = SyncJob::new(
            id(SyncId::new(format!("s-000{n}"))),
            id(BuildId::new("b-0001")),
            id(InstallId::new(install)),
            repo.clone(),
            digest(1),
            3_000 + u64::from(n),
        );
        ok(
            f.store.create_sync(&s).await.map_err(|e| format!("{e:?}")),
            "seeds a sync",
        );
        syncs.push(s);
    }
    // acme's sync ran and succeeded; globex's failed before it started.
    let acme_sync = ok(syncs[0].dispatch(3_100, 900_000), "dispatches");
    ok(
        f.store
            .update_sync(&acme_sync, syncs[0].state.expected())
            .await
            .map_err(|e| format!("{e:?}")),
        "updates a sync",
    );
    let done = ok(
        acme_sync.succeed(
            3_500,
            crate::domain::SyncStats {
                bytes_copied: 10,
                bytes_skipped: 0,
                duration_ms: 5,
            },
        ),
        "succeeds",
    );
    ok(
        f.store
            .update_sync(&done, acme_sync.state.expected())
            .await
            .map_err(|e| format!("{e:?}")),
        "updates a sync",
    );
    let failed = ok(
        syncs[1].fail(3_200, JobError::new("grant_refused", "no role"), None),
        "fails",
    );
    ok(
        f.store
            .update_sync(&failed, syncs[1].state.expected())
            .await
            .map_err(|e| format!("{e:?}")),
        "updates a sync",
    );
    ok(
        f.store
            .record_lineage(&LineageRecord {
                digest: digest(1),
                install_id: id(InstallId::new("acme")),
                repository: repo.clone(),
                build_id: id(BuildId::new("b-0001")),
                sync_id: id(SyncId::new("s-0001")),
                since: 3_500,
            })
            .await,
        "records lineage",
    );
    let all = ok(m.list_syncs(&SyncFilter::default()).await, "lists syncs");
    assert_eq!(
        all.items.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s-0002", "s-0001"],
        "management contract: syncs of every install, newest first"
    );
    let of_acme = ok(
        m.list_syncs(&SyncFilter {
            install: Some(id(InstallId::new("acme"))),
            build: None,
        })
        .await,
        "lists syncs of one install",
    );
    assert_eq!(
        of_acme.items.len(),
        1,
        "management contract: --install filters"
    );
    assert_eq!(of_acme.items[0].status(), JobStatus::Succeeded);
    let of_build = ok(
        m.list_syncs(&SyncFilter {
            install: None,
            build: Some(id(BuildId::new("b-0001"))),
        })
        .await,
        "lists syncs of one build",
    );
    assert_eq!(
        of_build.items.len(),
        2,
        "management contract: --build filters"
    );
    let none = ok(
        m.list_syncs(&SyncFilter {
            install: None,
            build: Some(id(BuildId::new("b-0002"))),
        })
        .await,
        "lists syncs of one build",
    );
    assert!(none.items.is_empty());
    let lineage = ok(m.lineage(&digest(1)).await, "reads lineage");
    assert_eq!(lineage.len(), 1);
    assert_eq!(lineage[0].install_id.as_str(), "acme");
    assert!(ok(m.lineage(&digest(9)).await, "reads lineage").is_empty());

    // Install status.
    let st = ok(
        m.install_status(&id(InstallId::new("acme"))).await,
        "shows an install",
    );
    assert_eq!(
        st.holds.len(),
        1,
        "management contract: acme holds shop/web"
    );
    assert_eq!(st.holds[0].digest, digest(1));
    assert_eq!(
        st.last_seen,
        Some(3_500),
        "management contract: last report time"
    );
    assert_eq!(st.last_sync.as_ref().map(|s| s.id.as_str()), Some("s-0001"));
    let gst = ok(
        m.install_status(&id(InstallId::new("globex"))).await,
        "shows an install",
    );
    assert!(
        gst.holds.is_empty() && gst.last_seen.is_none(),
        "management contract: a sync that failed before it ran is no report and holds nothing"
    );
    // A heartbeat: last-seen and the agent's own words, and the one stale rule over them.
    let beat = crate::telemetry::InstallTelemetry {
        install_id: id(InstallId::new("globex")),
        last_seen: 9_000,
        agent_version: "0.9.0".into(),
        last_poll_at: Some(8_990),
        last_sync_at: None,
        health: "ok".into(),
        sent_at: 8_999,
    };
    ok(f.store.record_heartbeat(&beat).await, "records a heartbeat");
    let gst = ok(
        m.install_status(&id(InstallId::new("globex"))).await,
        "shows an install",
    );
    assert_eq!(
        (gst.last_seen, gst.telemetry.as_ref()),
        (Some(9_000), Some(&beat)),
        "management contract: install status carries the heartbeat and its last-seen"
    );
    assert_eq!(
        gst.liveness(9_000 + 16 * 60_000, 15 * 60_000),
        crate::telemetry::Liveness::Stale,
        "management contract: an agent silent past the threshold is stale"
    );
    not_found(
        m.install_status(&id(InstallId::new("nope"))).await,
        "install",
        "status of an unknown install",
    );

    // Dead letters: a message received past the install queue's limit.
    let queue_name = globex.install.queue.clone();
    let dlq_key = queue_name.to_string();
    let listed = ok(m.dead_letter_queues().await, "lists dead-letter queues");
    let logical = listed
        .iter()
        .find(|q| dlq_key.ends_with(q.as_str()))
        .unwrap_or_else(|| {
            panic!("management contract: the install queue {dlq_key} is listed among {listed:?}")
        })
        .clone();
    assert!(ok(m.dead_letters(&logical).await, "lists dead letters").is_empty());
    not_found(
        m.dead_letters("no-such-queue").await,
        "queue",
        "dead letters of an unknown queue",
    );
    let body = serde_json::json!({"sync_id": "s-0002", "poison": true}).to_string();
    ok(f.queue.send(&queue_name, &body).await, "sends");
    let opts = ok(ReceiveOptions::new(1, 0, 0), "receive options");
    let mut received = 0;
    for _ in 0..=f.install_queue_max_receives + 1 {
        let got = ok(f.queue.receive(&queue_name, &opts).await, "receives");
        received += got.len();
        if got.is_empty() {
            break;
        }
    }
    assert!(
        received > 0,
        "management contract: the poison message was received"
    );
    let dead = ok(m.dead_letters(&logical).await, "lists dead letters");
    assert_eq!(
        dead.len(),
        1,
        "management contract: the message is dead-lettered"
    );
    assert_eq!(dead[0].job.as_deref(), Some("s-0002"));
    assert_eq!(
        dead[0].job_error.as_deref(),
        Some("grant_refused: no role"),
        "management contract: a dead letter shows the error its job recorded"
    );
    assert_eq!(
        ok(m.dead_letters(&logical).await, "lists dead letters").len(),
        1,
        "management contract: listing does not consume dead letters"
    );
    assert_eq!(ok(m.redrive(&logical).await, "redrives"), 1);
    assert!(ok(m.dead_letters(&logical).await, "lists dead letters").is_empty());
    let back = ok(
        f.queue
            .receive(&queue_name, &ok(ReceiveOptions::new(1, 1, 30), "options"))
            .await,
        "receives the redriven message",
    );
    assert_eq!(
        back.first().map(|r| r.body.as_str()),
        Some(body.as_str()),
        "management contract: redrive puts the message back on its queue"
    );

    // Removal.
    let removed = ok(
        m.remove_install(&id(InstallId::new("globex"))).await,
        "removes an install",
    );
    assert!(removed.lineage_kept);
    assert_eq!(
        ok(m.list_installs().await, "lists installs")
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["acme"]
    );
    let subs = ok(
        f.store
            .installs_by_component(&shop, &web, &crate::ports::PageRequest::first(10))
            .await,
        "queries subscriptions",
    );
    assert_eq!(
        subs.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["acme"],
        "management contract: a removed install gets no fan-out"
    );
    assert!(
        f.queue.send(&queue_name, "x").await.is_err(),
        "management contract: a removed install's queue is gone"
    );
    not_found(
        m.remove_install(&id(InstallId::new("globex"))).await,
        "install",
        "removing twice",
    );
    let syncs_kept = ok(
        m.list_syncs(&SyncFilter {
            install: Some(id(InstallId::new("globex"))),
            build: None,
        })
        .await,
        "lists syncs of a removed install",
    );
    assert_eq!(
        syncs_kept.items.len(),
        1,
        "management contract: a removed install's syncs stay"
    );
    let lineage = ok(m.lineage(&digest(1)).await, "reads lineage");
    assert_eq!(lineage.len(), 1, "management contract: lineage stays");
}
