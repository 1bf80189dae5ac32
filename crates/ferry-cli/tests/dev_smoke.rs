//! `ferry dev --exit-when-synced` end to end through the binary, and a second management
//! process reading the state it left.
#![allow(clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("run ferry")
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("workspace root")
}

#[test]
fn dev_syncs_three_installs_and_management_reads_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();
    let started = std::time::Instant::now();
    let out = ferry(&[
        "dev",
        "--installs",
        "3",
        "--exit-when-synced",
        "--timeout",
        "300",
        "--state-dir",
        state,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ferry dev failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("verified in 3 installs"), "{stdout}");
    eprintln!("ferry dev synced 3 installs in {:?}", started.elapsed());
    // The secret is pointed at, never printed.
    for who in ["agent", "node"] {
        let secret =
            std::fs::read_to_string(dir.path().join(format!("state/keys/{who}-dev-1.secret")))
                .unwrap();
        assert!(
            !stdout.contains(secret.trim()),
            "the {who} secret must not be printed"
        );
    }
    // The signed external image: each install's sync shows the signature it verified.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("signed") && l.contains("signature verified (key "))
            .count(),
        3,
        "{stdout}"
    );
    assert!(
        stdout.contains("signed: cosign signature by key")
            && stdout.contains("dev-1, dev-2, dev-3"),
        "{stdout}"
    );
    // The closing hint pulls as the install's nodes do, with the secret read from its file.
    assert!(stdout.contains("keys/node-dev-1.secret"), "{stdout}");

    // A second process reads what the first left; `install show` names the verified signature.
    let out = ferry(&["install", "show", "dev-2", "--state-dir", state]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.lines().any(|l| l.contains("signature")
            && l.contains("signed")
            && l.contains("verified (key ")),
        "{shown}"
    );
    // Every component's current version is what the install holds (holds name the vendor
    // repository, `vendor/<component repository>`, locally).
    let out = ferry(&["install", "show", "dev-2", "--json", "--state-dir", state]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let versions = shown["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 6, "{shown:#}");
    assert!(
        versions.iter().all(|v| v["current"]["digest"].is_string()),
        "{shown:#}"
    );
    let out = ferry(&["syncs", "--json", "--state-dir", state]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let syncs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let syncs = syncs.as_array().unwrap();
    assert_eq!(syncs.len(), 18, "6 components × 3 installs");
    assert!(
        syncs.iter().all(|s| s["state"]["status"] == "succeeded"),
        "{syncs:?}"
    );

    let out = ferry(&["builds", "--json", "--state-dir", state]);
    let builds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest = builds[0]["artifact"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out = ferry(&["lineage", &digest, "--json", "--state-dir", state]);
    let lineage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lineage.as_array().unwrap().len(), 3, "{lineage}");

    // Bad input: named, exit 1.
    let out = ferry(&["lineage", "sha256:abc", "--state-dir", state]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a digest"));
    let out = ferry(&["build", "request", "demo", "nope", "--state-dir", state]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown component demo/nope"));
    let out = ferry(&["syncs", "--install", "zz", "--state-dir", state]);
    assert_eq!(out.status.code(), Some(1));
    let missing = dir.path().join("missing");
    let out = ferry(&["syncs", "--state-dir", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ferry dev"));

    // An install whose agent runs elsewhere: both its public keys are registered, and it is
    // told what to pin (the vendor key of this state dir and its registry).
    let agent = ferry_core::seal::AgentKeypair::generate().unwrap();
    let (public, report) = (
        agent.public_key_string(),
        agent.report_key().public_key_string(),
    );
    let out = ferry(&[
        "install",
        "add",
        "far-1",
        "--app",
        "demo",
        "--public-key",
        &public,
        "--report-key",
        &report,
        "--json",
        "--state-dir",
        state,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(added["install"]["agent_report_key"], report.as_str());
    let vendor_key = std::fs::read_to_string(dir.path().join("state/keys/vendor.key")).unwrap();
    let vendor_key = ferry_core::trust::VendorKey::from_secret_string(&vendor_key).unwrap();
    assert_eq!(
        added["vendor_public_key"],
        vendor_key.public_key_string().as_str()
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(vendor_key.to_secret_string().as_str()));
    // `install show` tells how the install's nodes pull, and never prints their secret.
    let out = ferry(&["install", "show", "far-1", "--state-dir", state]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains("node:far-1"), "{shown}");
    let node_secret =
        std::fs::read_to_string(dir.path().join("state/keys/node-far-1.secret")).unwrap();
    assert!(!node_secret.trim().is_empty());
    assert!(
        !shown.contains(node_secret.trim()),
        "the node secret must not be printed"
    );
    // A public key without its report key, or a report key of the wrong kind: refused.
    let out = ferry(&[
        "install",
        "add",
        "far-2",
        "--app",
        "demo",
        "--public-key",
        &public,
        "--state-dir",
        state,
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap: --report-key is required with --public-key"
    );
    let out = ferry(&[
        "install",
        "add",
        "far-3",
        "--app",
        "demo",
        "--public-key",
        &public,
        "--report-key",
        &public,
        "--state-dir",
        state,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not an agent report key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Air-gapped: far-1's agent imported a bundle elsewhere; its signed receipt updates the
    // lineage through `ferry receipts import`, once; a forged one is refused (exit 1).
    receipts_update_lineage(dir.path(), state, &agent, &builds[0]);
}

#[allow(clippy::unwrap_used)]
fn receipts_update_lineage(
    dir: &Path,
    state: &str,
    agent: &ferry_core::seal::AgentKeypair,
    build: &serde_json::Value,
) {
    use ferry_core::bundle::{sign_receipt, BundleReceipt, RECEIPT_SCHEMA};
    let digest = build["artifact"]["digest"].as_str().unwrap();
    let mut receipt = BundleReceipt {
        schema: RECEIPT_SCHEMA,
        install_id: ferry_core::id::InstallId::new("far-1").unwrap(),
        bundle_id: "bdl-test".into(),
        build_id: ferry_core::id::BuildId::new(build["id"].as_str().unwrap()).unwrap(),
        repository: ferry_core::id::Repository::new(
            build["artifact"]["repository"].as_str().unwrap(),
        )
        .unwrap(),
        digest: ferry_core::id::Digest::new(digest).unwrap(),
        imported_at: 1,
        bytes_copied: 0,
        bytes_skipped: 0,
        duration_ms: 0,
        signature: String::new(),
    };
    sign_receipt(&agent.report_key(), &mut receipt);
    let file = dir.join("receipts.jsonl");
    std::fs::write(
        &file,
        format!("{}\n", serde_json::to_string(&receipt).unwrap()),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let out = ferry(&["receipts", "import", file, "--state-dir", state]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("recorded (sync"), "{stdout}");
    let out = ferry(&["lineage", digest, "--json", "--state-dir", state]);
    let lineage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lineage = lineage.as_array().unwrap();
    assert_eq!(
        lineage.len(),
        4,
        "three online installs and far-1: {lineage:?}"
    );
    assert!(lineage.iter().any(|l| l["install_id"] == "far-1"));
    let out = ferry(&["receipts", "import", file, "--state-dir", state]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already recorded"));

    let stranger = ferry_core::seal::AgentKeypair::generate().unwrap();
    sign_receipt(&stranger.report_key(), &mut receipt);
    let forged = dir.join("forged.jsonl");
    std::fs::write(&forged, serde_json::to_string(&receipt).unwrap()).unwrap();
    let out = ferry(&[
        "receipts",
        "import",
        forged.to_str().unwrap(),
        "--state-dir",
        state,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("REFUSED"));

    // Export names what is wrong before touching a registry.
    let out = ferry(&[
        "bundle",
        "export",
        "--release",
        "nope",
        "--out",
        "x.tar",
        "--state-dir",
        state,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("release nope does not exist"));
}

/// Stops `ferry dev` when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The vendor console in a real browser (Debian's headless Chromium through Selenium,
/// `tests/browser/console_check.py`) against `ferry dev` with 6 installs and a stepped release:
/// the fleet lists 6 installs, the release page moves without a reload, Pause on the page
/// pauses the release (checked with `ferry release show --json`). Screenshots go to
/// `target/console-shots/`.
#[test]
fn the_console_in_a_browser_shows_the_fleet_and_pauses_a_release() {
    let have_browser = Path::new("/usr/bin/chromium").exists()
        && Path::new("/usr/bin/chromedriver").exists()
        && Command::new("python3")
            .args(["-c", "import selenium"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !have_browser {
        assert!(
            std::env::var_os("FERRY_REQUIRE_BROWSER").is_none(),
            "FERRY_REQUIRE_BROWSER is set but chromium, chromedriver or selenium is missing"
        );
        eprintln!("chromium/chromedriver/selenium not installed (scripts/install-peers.sh): skipping the browser test");
        return;
    }
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state = state.to_str().unwrap().to_string();
    let mut dev = Child(
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args([
                "dev",
                "--installs",
                "6",
                "--releases",
                "--json",
                "--timeout",
                "600",
            ])
            .args(["--console-addr", "127.0.0.1:0", "--state-dir", &state])
            .current_dir(workspace_root())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ferry dev"),
    );
    let mut lines = std::io::BufReader::new(dev.0.stdout.take().unwrap()).lines();
    let started: serde_json::Value = loop {
        let line = lines.next().expect("ferry dev prints its start").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["event"] == "started" {
            break v;
        }
    };
    let console = started["console"]
        .as_str()
        .expect("ferry dev prints the console URL");
    let console = console.trim_end_matches('/').to_string();
    // Keep draining ferry dev's output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});

    // Every build done (in --releases mode nothing syncs until a release says so).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let builds = loop {
        let out = ferry(&["builds", "--json", "--state-dir", &state]);
        let builds: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let all = builds.as_array().cloned().unwrap_or_default();
        let done = all.len() >= 4
            && all.iter().all(|b| {
                let s = b["state"]["status"].as_str().unwrap_or("");
                s == "succeeded" || s == "failed"
            });
        if done {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "builds not done: {all:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let ok: Vec<String> = builds
        .iter()
        .filter(|b| b["state"]["status"] == "succeeded")
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!ok.is_empty(), "no build succeeded: {builds:?}");
    // Three steps of two installs, 20 s apart: long enough to watch it move and pause it.
    let out = ferry(&[
        "release",
        "create",
        "demo",
        "--build",
        &ok.join(","),
        "--all",
        "--per-step",
        "2",
        "--delay",
        "20s",
        "--json",
        "--state-dir",
        &state,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let release: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = release["id"].as_str().expect("release id").to_string();

    let shots = workspace_root().join("target/console-shots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = workspace_root().join("tests/browser/console_check.py");
    let check = Command::new("python3")
        .arg(&script)
        .args([console.as_str(), id.as_str(), "6"])
        .arg(&shots)
        .output()
        .expect("python3 runs");
    assert!(
        check.status.success(),
        "browser check failed:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let out = ferry(&["release", "show", &id, "--json", "--state-dir", &state]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["release"]["status"], "paused", "{shown}");
    assert!(shots.join("release-desktop.png").is_file());
    drop(dev);
}
