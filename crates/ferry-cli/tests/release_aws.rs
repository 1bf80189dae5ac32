//! Releases on a deployed stack (moto) through the `ferry` binary: `ferry release
//! create|show|list|pause|resume|abort` and `ferry install show` on an AWS context.
//!
//! What `sam deploy` creates is made by hand (table, bus + the sync-requested rule and queue,
//! the release queue, the report queue, the vendor key, the pull role, the CodeBuild project);
//! the stack's functions run in-process over the AWS adapters, as the Lambda runtime would run
//! them (ferry-core's `dispatch` on each received message); each install's agent is stood in
//! for by a report signed with that install's registered report key.

#![cfg(feature = "aws")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod deployed;

use deployed::{states, Cli, Deployed};
use ferry_core::id::QueueName;
use ferry_testkit::vendor_stack;

const INSTALLS: [&str; 4] = ["a0", "a1", "a2", "a3"];

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_on_a_deployed_stack_through_the_cli() {
    // ---- what `sam deploy` creates.
    let aws = Deployed::start(deployed::base_stack().codebuild_project()).await;
    let rel = QueueName::new(vendor_stack::RELEASE).unwrap();
    let stack = aws.functions(vendor_stack::ECR_REGISTRY, &INSTALLS);

    // ---- the vendor's CLI: context, app, component, four installs.
    let cli = Cli::new();
    let run = |args: &[&str]| cli.run(args);
    let ok = |args: &[&str]| cli.ok(args);
    let json = |args: &[&str]| cli.json(args);
    aws.onboard(&cli, vendor_stack::ECR_REGISTRY, &INSTALLS);

    // ---- a release in steps of 2, paused after its first step, resumed.
    let b1 = stack.built("b-rel-1", D1).await;
    assert_eq!(stack.settle().await, 0, "no implicit release of a build");
    let created = json(&[
        "release",
        "create",
        "shop",
        "--build",
        b1.as_str(),
        "--all",
        "--per-step",
        "2",
        "--json",
    ]);
    let r1 = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "running", "{created}");
    assert_eq!(created["steps"], 2, "{created}");
    // The first step's timer is on the release queue; the release function takes it.
    assert_eq!(stack.drain(&rel).await, 1, "one step timer");
    let paused = json(&["release", "pause", &r1, "--json"]);
    assert_eq!(paused["status"], "paused", "{paused}");
    assert_eq!(
        stack.settle().await,
        2,
        "the step in flight finishes: 2 installs"
    );
    let show = json(&["release", "show", &r1, "--json"]);
    assert_eq!(show["release"]["status"], "paused", "{show}");
    assert_eq!(
        states(&show),
        [
            ("a0", "succeeded"),
            ("a1", "succeeded"),
            ("a2", "pending"),
            ("a3", "pending")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{show}"
    );
    let table_out = ok(&["release", "show", &r1]);
    assert!(
        table_out.contains("paused") && table_out.contains("a2"),
        "{table_out}"
    );
    let resumed = json(&["release", "resume", &r1, "--json"]);
    assert_eq!(resumed["status"], "running", "{resumed}");
    assert_eq!(stack.settle().await, 2, "the second step: 2 installs");
    let show = json(&["release", "show", &r1, "--json"]);
    assert_eq!(show["release"]["status"], "completed", "{show}");
    assert!(
        states(&show).iter().all(|(_, s)| s == "succeeded"),
        "{show}"
    );

    // ---- desired vs current on the install.
    let a0 = json(&["install", "show", "a0", "--json"]);
    let v = &a0["versions"][0];
    assert_eq!(v["component"], "web", "{a0}");
    assert_eq!(v["desired"]["build_id"], b1.as_str(), "{a0}");
    assert_eq!(v["desired"]["release_id"], r1.as_str(), "{a0}");
    assert_eq!(v["current"]["digest"], D1, "{a0}");
    assert_eq!(v["in_sync"], true, "{a0}");

    // ---- the same build to the same installs again: nothing is synced.
    let again = json(&[
        "release",
        "create",
        "shop",
        "--build",
        b1.as_str(),
        "--all",
        "--per-step",
        "2",
        "--json",
    ]);
    let r2 = again["id"].as_str().unwrap().to_owned();
    assert_ne!(r2, r1);
    assert_eq!(stack.settle().await, 0, "a re-release syncs nothing");
    let show = json(&["release", "show", &r2, "--json"]);
    assert_eq!(show["release"]["status"], "completed", "{show}");
    assert!(states(&show).iter().all(|(_, s)| s == "current"), "{show}");

    // ---- a new build, an hour between steps, aborted while the second step waits.
    let b2 = stack.built("b-rel-2", D2).await;
    let r3 = json(&[
        "release",
        "create",
        "shop",
        "--build",
        b2.as_str(),
        "--all",
        "--per-step",
        "2",
        "--delay",
        "1h",
        "--max-failures",
        "50%",
        "--json",
    ])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(stack.settle().await, 2, "the first step runs at once");
    let show = json(&["release", "show", &r3, "--json"]);
    assert_eq!(show["release"]["status"], "running", "{show}");
    assert_eq!(show["release"]["step"], 1, "{show}");
    let aborted = json(&["release", "abort", &r3, "--json"]);
    assert_eq!(aborted["status"], "aborted", "{aborted}");
    assert_eq!(stack.settle().await, 0, "nothing new starts");
    let (code, _, stderr) = run(&["release", "resume", &r3]);
    assert_eq!(code, Some(1), "an aborted release cannot resume");
    assert!(stderr.contains("aborted"), "{stderr}");
    let a3 = json(&["install", "show", "a3", "--json"]);
    let v = &a3["versions"][0];
    assert_eq!(v["desired"]["build_id"], b2.as_str(), "{a3}");
    assert_eq!(v["desired"]["state"], "pending", "{a3}");
    assert_eq!(v["current"]["digest"], D1, "{a3}");
    assert_eq!(v["in_sync"], false, "{a3}");
    let shown = ok(&["install", "show", "a3"]);
    assert!(
        shown.contains("COMPONENT") && shown.contains("b-rel-2") && shown.contains("no"),
        "{shown}"
    );

    // ---- list: newest first.
    let listed = json(&["release", "list", "shop", "--json"]);
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{listed}");
    assert_eq!(ids[0], r3, "{listed}");
    let (code, _, stderr) = run(&["release", "show", "r-nope"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("does not exist"), "{stderr}");
}
