//! The agent against the real embedded registry (real AccessControl), the local minter and
//! the SQLite queue.
#![allow(clippy::unwrap_used)]

mod agent_image;
mod agent_policy;
mod common;

use std::time::Duration;

use common::*;
use ferry_core::id::{InstallId, SyncId};
use ferry_core::ports::{GrantId, GrantMinter};
use ferry_core::seal::{AgentKeypair, ClearGrant};
use ferry_oci::{Credential, Digest, Secret};

#[tokio::test]
async fn install_b_can_neither_open_nor_use_a_grant_of_install_a() {
    let env = start().await;
    let digest = env.push(VENDOR_REPO, "v1", &[data(3, 10_000)]).await;
    let key_a = AgentKeypair::generate().unwrap();
    let key_b = AgentKeypair::generate().unwrap();
    let install_a = env.install("a", &key_a);
    let msg = env.job(&install_a, &digest, "s-iso", 1).await;

    // B's key cannot open A's grant, under either install's associated data.
    for install in ["a", "b"] {
        assert!(ClearGrant::open(
            &key_b,
            msg.grant.ciphertext(),
            &InstallId::new(install).unwrap(),
            &msg.sync_id
        )
        .is_err());
    }

    // A job the vendor (wrongly) addressed to install b but sealed for a is reported failed
    // by B, and B writes nothing.
    let mut forged = msg.clone();
    forged.install_id = InstallId::new("b").unwrap();
    env.vendor_key.sign_job(&mut forged);
    env.send("install-b", &forged).await;
    // A's own job delivered to B's queue is not B's: left alone for redrive.
    env.send("install-b", &msg).await;
    let (s, h) = spawn(agent(&env, "b", AGENT_B_SECRET, &key_b));
    let report = env.next_report(30).await;
    assert_eq!(report["status"], "failed", "{report}");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("could not be opened"),
        "{report}"
    );
    // Wait until B has received A's job too (it stays in flight, not deleted).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = env.queue.approximate_depth(&qn("install-b")).await.unwrap();
        if d.visible == 0 && d.in_flight == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never took A's job: {d:?}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(s, h).await;
    let b = env.agent_client("b", AGENT_B_SECRET);
    assert!(b
        .head_manifest(&env.repo("installs/b/demo/app"), digest.as_str())
        .await
        .unwrap()
        .is_none());

    // A stolen clear token of A: pull-only on the vendor repository, useless for pushes.
    let token = open_token(&key_a, &msg);
    let thief = client(vec![(
        env.host.clone(),
        None,
        Credential::Bearer(Secret::new(token.clone())),
    )]);
    let blob = data(9, 100);
    let d = Digest::of(&blob);
    for repo in ["installs/b/demo/app", "installs/a/demo/app", VENDOR_REPO] {
        let chunks = vec![Ok(bytes::Bytes::from(blob.clone()))];
        let r = thief
            .upload_blob(
                &env.repo(repo),
                &d,
                blob.len() as u64,
                Box::pin(futures::stream::iter(chunks)),
            )
            .await;
        let e = r.expect_err("a grant must not push");
        assert!(!e.to_string().contains(&token), "{e}");
    }
    // B's own identity cannot write A's namespace, and the vendor cannot write any install.
    for (who, c) in [
        ("agent:b", env.agent_client("b", AGENT_B_SECRET)),
        ("vendor", env.vendor()),
    ] {
        let chunks = vec![Ok(bytes::Bytes::from(blob.clone()))];
        let r = c
            .upload_blob(
                &env.repo("installs/a/demo/app"),
                &d,
                blob.len() as u64,
                Box::pin(futures::stream::iter(chunks)),
            )
            .await;
        assert!(r.is_err(), "{who} pushed into installs/a");
    }
}

#[tokio::test]
async fn an_expired_grant_is_reported_grant_expired_and_the_message_deleted() {
    let env = start().await;
    let digest = env.push(VENDOR_REPO, "v1", &[data(4, 10_000)]).await;
    let key_a = AgentKeypair::generate().unwrap();
    let msg = env
        .job(&env.install("a", &key_a), &digest, "s-exp", 2)
        .await;
    env.send("install-a", &msg).await;
    let late = msg.grant.expires_at + 1_000;
    let (s, h) = spawn(agent(&env, "a", AGENT_A_SECRET, &key_a).with_clock(move || late));
    let report = env.next_report(30).await;
    stop(s, h).await;
    assert_eq!(report["status"], "grant_expired", "{report}");
    assert_eq!(report["attempt"], 2);
    assert_eq!(env.depth("install-a").await, 0);
}

#[tokio::test]
async fn a_revoked_grant_is_refused_by_the_registry() {
    let env = start().await;
    let digest = env.push(VENDOR_REPO, "v1", &[data(5, 10_000)]).await;
    let key_a = AgentKeypair::generate().unwrap();
    let msg = env
        .job(&env.install("a", &key_a), &digest, "s-rev", 1)
        .await;
    env.minter
        .revoke(&GrantId::new(SyncId::new("s-rev").unwrap(), 1))
        .await
        .unwrap();
    env.minter
        .revoke(&GrantId::new(SyncId::new("s-rev").unwrap(), 1))
        .await
        .unwrap(); // twice is fine
    env.send("install-a", &msg).await;
    let (s, h) = spawn(agent(&env, "a", AGENT_A_SECRET, &key_a));
    let report = env.next_report(30).await;
    stop(s, h).await;
    assert_eq!(report["status"], "grant_expired", "{report}");
    assert!(
        report["error"].as_str().unwrap().contains("refused"),
        "{report}"
    );
    let reader = env.agent_client("a", AGENT_A_SECRET);
    assert!(reader
        .head_manifest(&env.repo("installs/a/demo/app"), digest.as_str())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn shutdown_while_idle_exits_promptly() {
    let env = start().await;
    let key = AgentKeypair::generate().unwrap();
    let mut a = agent(&env, "a", AGENT_A_SECRET, &key);
    let _ = &mut a;
    let (s, h) = spawn(a);
    tokio::task::yield_now().await;
    let t = tokio::time::Instant::now();
    stop(s, h).await;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

/// A listener that counts the connections made to it: the "attacker's registry".
async fn counting_listener() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            drop(sock);
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn a_forged_job_is_refused_and_nothing_is_fetched_or_written() {
    use std::sync::atomic::Ordering;
    let env = start().await;
    let digest = env.push(VENDOR_REPO, "v1", &[data(11, 10_000)]).await;
    let key_a = AgentKeypair::generate().unwrap();
    let install_a = env.install("a", &key_a);
    let (evil, hits) = counting_listener().await;

    // A validly sealed grant (anyone can seal to a public key), in a job that is unsigned,
    // signed by another key, or signed and then altered.
    let good = env.job(&install_a, &digest, "s-forged", 1).await;
    let mut unsigned = good.clone();
    unsigned.signature = String::new();
    let mut stranger = good.clone();
    ferry_core::trust::VendorKey::generate()
        .unwrap()
        .sign_job(&mut stranger);
    let mut altered = good.clone();
    altered.attempt = 7;
    for m in [&unsigned, &stranger, &altered] {
        env.send("install-a", m).await;
    }
    let (s, h) = spawn(agent(&env, "a", AGENT_A_SECRET, &key_a));
    // All three are received and left in flight for the dead-letter queue, none reported.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = env.queue.approximate_depth(&qn("install-a")).await.unwrap();
        if d.visible == 0 && d.in_flight == 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs not taken: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(s, h).await;
    assert_eq!(
        env.depth("sync-reported").await,
        0,
        "no report for a forged job"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing fetched elsewhere");
    let a = env.agent_client("a", AGENT_A_SECRET);
    assert!(
        a.head_manifest(&env.repo("installs/a/demo/app"), digest.as_str())
            .await
            .unwrap()
            .is_none(),
        "nothing written into the install"
    );
    let _ = evil;
}

#[tokio::test]
async fn a_signed_job_pulls_from_the_configured_registry_only_and_its_report_is_signed() {
    use std::sync::atomic::Ordering;
    let env = start().await;
    let digest = env.push(VENDOR_REPO, "v1", &[data(12, 10_000)]).await;
    let key_a = AgentKeypair::generate().unwrap();
    let install_a = env.install("a", &key_a);
    let (evil, hits) = counting_listener().await;
    // A vendor-signed job whose sealed grant names another registry (as a compromised or buggy
    // minter might): the agent still pulls from its configured vendor registry.
    let mut msg = env.job(&install_a, &digest, "s-pinned", 1).await;
    let mut grant =
        ClearGrant::open(&key_a, msg.grant.ciphertext(), &install_a.id, &msg.sync_id).unwrap();
    grant.registry = evil.clone();
    let sealed = grant
        .seal(&install_a.agent_public_key, &install_a.id, &msg.sync_id)
        .unwrap();
    msg.grant = ferry_core::domain::SealedGrant::new(sealed, msg.grant.expires_at);
    env.vendor_key.sign_job(&mut msg);
    env.send("install-a", &msg).await;
    let (s, h) = spawn(agent(&env, "a", AGENT_A_SECRET, &key_a));
    let report = env.next_report(30).await;
    stop(s, h).await;
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "the host in the grant was never contacted"
    );
    let parsed = ferry_core::parse_event(report.to_string().as_bytes()).unwrap();
    let ferry_core::Payload::SyncReported(r) = parsed.payload else {
        panic!("not a report: {report}")
    };
    ferry_core::trust::verify_report(&install_a.agent_report_key, &r).unwrap();
}

#[tokio::test]
async fn after_each_sync_the_agent_applies_retention_and_never_removes_what_is_marked_in_use() {
    let env = start().await;
    let v1 = env.push(VENDOR_REPO, "v1", &[data(11, 2_000)]).await;
    let v2 = env.push(VENDOR_REPO, "v2", &[data(12, 2_000)]).await;
    let v3 = env.push(VENDOR_REPO, "v3", &[data(13, 2_000)]).await;
    let key_a = AgentKeypair::generate().unwrap();
    let install_a = env.install("a", &key_a);
    let (s, h) = spawn(agent_with(&env, "a", AGENT_A_SECRET, &key_a, |c| {
        c.keep_last = Some(1);
    }));

    let msg = env.job(&install_a, &v1, "s-ret-1", 1).await;
    env.send("install-a", &msg).await;
    assert_eq!(env.next_report(30).await["status"], "succeeded");

    // The deployer marks v1 in use with the real command, as `agent:a`.
    let secret_file = env.dir.path().join("agent-a.secret");
    std::fs::write(&secret_file, AGENT_A_SECRET).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-agent"))
        .args(["in-use", "mark", &format!("demo/app@{v1}")])
        .args(["--install", "a", "--install-registry", &env.host])
        .arg("--identity-secret-file")
        .arg(&secret_file)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("installs/a/demo/app@{v1} marked in use")
    );
    assert!(!stdout.contains(AGENT_A_SECRET));

    for (n, d) in [(2, &v2), (3, &v3)] {
        let msg = env.job(&install_a, d, &format!("s-ret-{n}"), 1).await;
        env.send("install-a", &msg).await;
        assert_eq!(env.next_report(30).await["status"], "succeeded");
    }
    stop(s, h).await;

    // keep_last = 1 keeps v3 (the newest) and v1 (in use); v2 went after the third sync.
    let reader = env.agent_client("a", AGENT_A_SECRET);
    let dst = env.repo("installs/a/demo/app");
    assert!(reader
        .head_manifest(&dst, v1.as_str())
        .await
        .unwrap()
        .is_some());
    assert!(reader
        .head_manifest(&dst, v3.as_str())
        .await
        .unwrap()
        .is_some());
    assert!(reader
        .head_manifest(&dst, v2.as_str())
        .await
        .unwrap()
        .is_none());
    let mut tags = reader.list_tags(&dst).await.unwrap();
    tags.sort();
    let mut want = vec![
        v1.as_str().replacen(':', "-", 1),
        v3.as_str().replacen(':', "-", 1),
    ];
    want.sort();
    assert_eq!(tags, want);
    assert_eq!(reader.list_in_use(&dst).await.unwrap(), [v1.to_string()]);
}
