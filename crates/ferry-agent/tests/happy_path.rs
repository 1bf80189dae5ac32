//! Happy path and token hygiene. One test per binary: it installs the global log capture.

mod common;

use common::*;
use ferry_core::seal::AgentKeypair;

#[tokio::test(flavor = "current_thread")]
async fn happy_path_copies_verifies_reports_and_deletes_without_leaking_the_token() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let env = start().await;
    let digest = env
        .push(VENDOR_REPO, "v1", &[data(1, 300_000), data(2, 5_000)])
        .await;
    let key_a = AgentKeypair::generate().unwrap();
    let install_a = env.install("a", &key_a);
    let msg = env.job(&install_a, &digest, "s-1", 1).await;
    let token = open_token(&key_a, &msg);
    env.send("install-a", &msg).await;

    let (s, h) = spawn(agent(&env, "a", AGENT_A_SECRET, &key_a));
    let report = env.next_report(30).await;
    stop(s, h).await;

    assert_eq!(report["type"], "sync.reported");
    assert_eq!(report["status"], "succeeded", "{report}");
    assert_eq!(report["sync_id"], "s-1");
    assert_eq!(report["install_id"], "a");
    assert_eq!(report["digest"], digest.as_str());
    assert_eq!(report["attempt"], 1);
    assert!(
        report["bytes_copied"].as_u64().unwrap() >= 305_000,
        "{report}"
    );
    assert_eq!(
        env.depth("install-a").await,
        0,
        "the job message was deleted"
    );

    // The install registry holds exactly that digest, under the digest tag too.
    let reader = env.agent_client("a", AGENT_A_SECRET);
    let dst = env.repo("installs/a/demo/app");
    let head = reader
        .head_manifest(&dst, digest.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.digest, digest);
    let tag = digest.as_str().replacen(':', "-", 1);
    let by_tag = reader.head_manifest(&dst, &tag).await.unwrap().unwrap();
    assert_eq!(by_tag.digest, digest);

    // Token hygiene: not in any log line, queue body or byte of the queue database.
    let text = logs.text();
    assert!(
        text.contains("sync reported") && text.contains("s-1"),
        "logs carry the sync id"
    );
    assert!(
        !text.contains(&token),
        "the grant token leaked into the logs"
    );
    assert!(
        !text.contains(AGENT_A_SECRET),
        "the identity secret leaked into the logs"
    );
    let body = serde_json::to_string(&msg).unwrap();
    assert!(!body.contains(&token));
    let report_text = report.to_string();
    assert!(!report_text.contains(&token));
    // Every file under the test root: the queue database (and its WAL) and the registry.
    let mut stack = vec![env.dir.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                scanned += 1;
                assert!(
                    !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                    "the token is in {}",
                    p.display()
                );
            }
        }
    }
    assert!(scanned > 3, "scanned {scanned} files");
}
