//! Two OS processes receiving from one queue file at once: every message is delivered exactly
//! once among them. The test binary re-runs itself as the consumers (env var selects the mode).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::id::QueueName;
use ferry_core::ports::{Batch, Queue, ReceiveOptions};
use ferry_local::queue::{QueueConfig, SqliteQueue};

const CHILD_ENV: &str = "FERRY_LOCAL_TEST_CONSUMER_DB";
const TEST_NAME: &str = "two_processes_receive_each_message_exactly_once";
const MESSAGES: usize = 200;
const STOP: &str = "STOP";

fn jobs() -> QueueName {
    QueueName::new("jobs").unwrap()
}

/// Consumer mode: print every body received as `GOT <body>`, delete it, stop at a STOP message.
async fn consume(db: &str) {
    let q = SqliteQueue::open(db).unwrap();
    let mut n: u32 = std::process::id();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut stopped = false;
    while !stopped && tokio::time::Instant::now() < deadline {
        // Vary the batch size so the two consumers' claims interleave differently.
        n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let max = (n >> 16) % 10 + 1;
        // Visibility far longer than the run: any redelivery would be a duplicate claim.
        let got = q
            .receive(&jobs(), &ReceiveOptions::new(max, 1, 120).unwrap())
            .await
            .unwrap();
        for m in got {
            if m.body == STOP {
                if stopped {
                    // A second STOP is the other consumer's: hand it back.
                    q.change_visibility(&jobs(), &m.receipt_handle, 0)
                        .await
                        .unwrap();
                    continue;
                }
                stopped = true;
            } else {
                println!("GOT {}", m.body);
            }
            q.delete(&jobs(), &m.receipt_handle).await.unwrap();
        }
    }
    assert!(stopped, "consumer timed out before its STOP message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_receive_each_message_exactly_once() {
    if let Ok(db) = std::env::var(CHILD_ENV) {
        consume(&db).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let q = SqliteQueue::open(&path).unwrap();
    q.create_queue(&jobs(), QueueConfig::default())
        .await
        .unwrap();

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            tokio::process::Command::new(&exe)
                .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &path)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .collect();

    // Send while the consumers are already polling.
    let bodies: Vec<String> = (0..MESSAGES).map(|n| format!("msg-{n:03}")).collect();
    for batch in Batch::chunks(bodies.clone()) {
        for r in q.send_batch(&jobs(), &batch).await.unwrap() {
            r.unwrap();
        }
    }
    q.send_batch(
        &jobs(),
        &Batch::new(vec![STOP.to_string(), STOP.to_string()]).unwrap(),
    )
    .await
    .unwrap();

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_child = Vec::new();
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .expect("consumer finished in time")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "consumer failed: {stdout}");
        let mut count = 0;
        // libtest may print "test … " on the same line before the first of ours.
        let bodies = stdout
            .lines()
            .filter_map(|l| l.find("GOT ").map(|i| &l[i + 4..]));
        for body in bodies {
            *seen.entry(body.to_string()).or_default() += 1;
            count += 1;
        }
        per_child.push(count);
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "delivered twice: {dups:?} (per consumer {per_child:?})"
    );
    let missing: Vec<_> = bodies.iter().filter(|b| !seen.contains_key(*b)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert_eq!(per_child.iter().sum::<usize>(), MESSAGES);
    assert_eq!(q.approximate_depth(&jobs()).await.unwrap().total(), 0);
    eprintln!("per consumer: {per_child:?}");
}
