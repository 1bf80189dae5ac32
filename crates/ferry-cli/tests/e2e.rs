//! End-to-end suites against a real `ferry dev` process: every component kind to three
//! installs checked byte for byte with skopeo, token hygiene, replayed events, and a load run.
//!
//! Each test pre-creates the state dir's SQLite file with a trigger that copies every queue
//! message ever sent into `msg_log`, so the tests see every event and job body (handled
//! messages are deleted from the queue).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::event::{parse_event, parse_sync_job};
use ferry_core::id::QueueName;
use ferry_core::ports::{Batch, EventBus as _};
use ferry_core::seal::{AgentKeypair, ClearGrant};
use ferry_local::bus::{ims_queues, LocalBus};
use ferry_local::queue::SqliteQueue;
use ferry_local::store::SqliteStore;
use sha2::Digest as _;

const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
const HELM_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const TOFU_ARTIFACT: &str = "application/vnd.opentofu.modulepkg";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .expect("workspace root")
        .to_path_buf()
}

/// A running `ferry dev`, killed on drop.
struct Dev {
    child: Child,
    state: PathBuf,
    host: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prepare_db(state: &Path) {
    std::fs::create_dir_all(state).unwrap();
    let db = state.join("ferry.db");
    drop(ferry_local::db::Db::open(&db).unwrap());
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE msg_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT, body TEXT);
         CREATE TRIGGER log_messages AFTER INSERT ON messages
         BEGIN INSERT INTO msg_log (queue, body) VALUES (NEW.queue, NEW.body); END;",
    )
    .unwrap();
}

fn start_dev(state: &Path, app: &Path, installs: u32, extra: &[&str]) -> Dev {
    start_dev_with_env(state, app, installs, extra, &[])
}

fn start_dev_with_env(
    state: &Path,
    app: &Path,
    installs: u32,
    extra: &[&str],
    envs: &[(&str, &Path)],
) -> Dev {
    prepare_db(state);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .envs(envs.iter().copied())
        .args(["dev", "--json", "--installs", &installs.to_string()])
        .arg("--state-dir")
        .arg(state)
        .arg("--app")
        .arg(app)
        .args(extra)
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ferry dev");
    let stdout = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            match line {
                Ok(l) => sink.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
    let mut dev = Dev {
        child,
        state: state.to_path_buf(),
        host: String::new(),
        lines,
    };
    let started = dev.wait_event("started", Duration::from_secs(120));
    dev.host = started["registry"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    dev
}

impl Dev {
    fn wait_event(&mut self, event: &str, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == event);
            if let Some(v) = found {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "ferry dev exited ({status}) before {event}: {:?}",
                    self.lines.lock().unwrap()
                );
            }
            assert!(Instant::now() < deadline, "no {event} within {limit:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stdout(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn secret(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join("keys").join(name))
            .unwrap()
            .trim()
            .to_string()
    }
}

async fn store(state: &Path) -> SqliteStore {
    SqliteStore::open(state.join("ferry.db")).unwrap()
}

/// The messages sent to the queues matching `queue_like`, in order. Install heartbeats (which
/// share the report queue, one a minute per agent, so their number depends on timing) are left
/// out: these tests count the messages of the sync flow.
fn logged(state: &Path, queue_like: &str) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(state.join("ferry.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT queue, body FROM msg_log WHERE queue LIKE ?1 ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([queue_like], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    rows.map(Result::unwrap)
        .filter(|(_, body): &(String, String)| {
            serde_json::from_str::<serde_json::Value>(body)
                .map(|v| v["type"] != "install.heartbeat")
                .unwrap_or(true)
        })
        .collect()
}

fn table_bodies(state: &Path, sql: &str) -> Vec<String> {
    let conn = rusqlite::Connection::open(state.join("ferry.db")).unwrap();
    let mut stmt = conn.prepare(sql).unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// Polls until every queue (IMS and install queues) is empty.
async fn wait_queues_empty(state: &Path, limit: Duration) {
    let queue = SqliteQueue::open(state.join("ferry.db")).unwrap();
    let names: Vec<String> = table_bodies(state, "SELECT name FROM queues");
    let deadline = Instant::now() + limit;
    loop {
        let mut total = 0;
        for n in &names {
            total += queue
                .approximate_depth(&QueueName::new(n.as_str()).unwrap())
                .await
                .unwrap()
                .total();
        }
        // Dead-letter queues count too: nothing may end up there.
        if total == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{total} messages still queued");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn skopeo_raw(creds: &str, reference: &str) -> Vec<u8> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", creds])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo inspect {reference} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_every_kind_reaches_three_installs_verified_and_no_secret_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut dev = start_dev(&state, &workspace_root().join("examples/demo"), 3, &[]);
    let summary = dev.wait_event("summary", Duration::from_secs(300));
    assert_eq!(summary["synced"], true, "{summary}");
    assert_eq!(summary["verified_installs"], 3, "{summary}");

    let builds = table_bodies(&state, "SELECT body FROM builds");
    assert_eq!(builds.len(), 6, "one build per component");
    let vendor = format!("vendor:{}", dev.secret("vendor.secret"));
    let mut kinds_seen = Vec::new();
    for b in &builds {
        let b: serde_json::Value = serde_json::from_str(b).unwrap();
        assert_eq!(b["state"]["status"], "succeeded", "{b}");
        let repo = b["artifact"]["repository"].as_str().unwrap();
        let digest = b["artifact"]["digest"].as_str().unwrap();
        let vendor_raw = skopeo_raw(&vendor, &format!("{}/{repo}@{digest}", dev.host));
        assert_eq!(
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&vendor_raw))),
            digest,
            "the vendor manifest hashes to the build's digest"
        );
        let dest = repo.strip_prefix("vendor/").unwrap();
        for i in ["dev-1", "dev-2", "dev-3"] {
            let creds = format!("agent:{i}:{}", dev.secret(&format!("agent-{i}.secret")));
            let raw = skopeo_raw(
                &creds,
                &format!("{}/installs/{i}/{dest}@{digest}", dev.host),
            );
            assert_eq!(raw, vendor_raw, "{i} holds {repo} byte for byte");
        }
        let m: serde_json::Value = serde_json::from_slice(&vendor_raw).unwrap();
        match b["component"].as_str().unwrap() {
            "chart" => {
                assert_eq!(m["config"]["mediaType"], HELM_CONFIG, "{m}");
                assert_eq!(m["layers"][0]["mediaType"], HELM_LAYER, "{m}");
                kinds_seen.push("helm-chart");
            }
            "module" => {
                assert_eq!(m["artifactType"], TOFU_ARTIFACT, "{m}");
                assert_eq!(m["layers"].as_array().unwrap().len(), 1, "{m}");
                assert_eq!(m["layers"][0]["mediaType"], "archive/zip", "{m}");
                kinds_seen.push("opentofu-module");
            }
            "shop" => {
                // The chart with the images it runs: one bundle, synced as one unit.
                assert_eq!(
                    m["artifactType"],
                    ferry_oci::chart_bundle::BUNDLE_ARTIFACT_TYPE,
                    "{m}"
                );
                assert_eq!(m["manifests"].as_array().unwrap().len(), 3, "{m}");
                kinds_seen.push("helm-chart");
            }
            "web" => kinds_seen.push("docker-build"),
            "base" => kinds_seen.push("image"),
            "signed" => {
                // The signed external image: its signature travelled into every install.
                let digest: ferry_oci::Digest = digest.parse().unwrap();
                let tag = ferry_oci::cosign::signature_tag(&digest);
                for i in ["dev-1", "dev-2", "dev-3"] {
                    let creds = format!("agent:{i}:{}", dev.secret(&format!("agent-{i}.secret")));
                    skopeo_raw(&creds, &format!("{}/installs/{i}/{dest}:{tag}", dev.host));
                }
                kinds_seen.push("image");
            }
            other => panic!("unexpected component {other}"),
        }
    }
    kinds_seen.sort_unstable();
    assert_eq!(
        kinds_seen,
        [
            "docker-build",
            "helm-chart",
            "helm-chart",
            "image",
            "image",
            "opentofu-module"
        ]
    );
    // An agent cannot read another install's namespace.
    let creds = format!("agent:dev-1:{}", dev.secret("agent-dev-1.secret"));
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", &creds])
        .arg(format!(
            "docker://{}/installs/dev-2/demo/base:latest",
            dev.host
        ))
        .output()
        .unwrap();
    assert!(!out.status.success(), "dev-1 must not read dev-2's copies");

    // Token hygiene: open every grant that went through a queue, then look for the clear
    // tokens and the secrets in the logs, every queue body ever sent, the store and stdout.
    let mut tokens = Vec::new();
    for (_, body) in logged(&state, "install-%") {
        let job = parse_sync_job(body.as_bytes()).unwrap();
        let key_text =
            std::fs::read_to_string(state.join(format!("keys/agent-{}.key", job.install_id)))
                .unwrap();
        let key = AgentKeypair::from_secret_string(key_text.trim()).unwrap();
        let grant =
            ClearGrant::open(&key, job.grant.ciphertext(), &job.install_id, &job.sync_id).unwrap();
        tokens.push(grant.token.clone());
    }
    assert_eq!(tokens.len(), 18, "one grant per sync job");
    let mut secrets: Vec<String> = tokens;
    secrets.push(dev.secret("vendor.secret"));
    for i in ["dev-1", "dev-2", "dev-3"] {
        secrets.push(dev.secret(&format!("agent-{i}.secret")));
        let key = std::fs::read_to_string(state.join(format!("keys/agent-{i}.key"))).unwrap();
        secrets.push(key.trim().to_string());
    }
    let logs = std::fs::read_to_string(state.join("logs/ferry-dev.log")).unwrap();
    assert!(logs.contains("grant minted"), "the logs cover the grants");
    let queue_bodies: String = logged(&state, "%")
        .into_iter()
        .map(|(_, b)| b)
        .collect::<Vec<_>>()
        .join("\n");
    let export = store(&state).await.export_json().await.unwrap();
    let stdout = dev.stdout();
    for s in &secrets {
        assert!(s.len() >= 16);
        for (what, hay) in [
            ("the logs", &logs),
            ("a queue body", &queue_bodies),
            ("the store", &export),
            ("stdout", &stdout),
        ] {
            assert!(
                !hay.contains(s.as_str()),
                "a secret or grant token is in {what}"
            );
        }
    }
}

/// Source-credential hygiene: an app whose one image sits in a private registry (htpasswd)
/// and names the credential `acme`, held in a 0600 credentials file. The build and the syncs
/// succeed, and the secret (and its Basic form) is in no log line, queue body, store item or
/// line of output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_private_source_builds_and_its_secret_stays_out_of_logs_queues_and_store() {
    use ferry_testkit::private_registry::{PrivateRegistry, PASSWORD, USER};
    use std::os::unix::fs::PermissionsExt as _;
    let reg = PrivateRegistry::start().await;
    let out = Command::new("skopeo")
        .args(["copy", "--all", "--dest-tls-verify=false", "--dest-creds"])
        .arg(format!("{USER}:{PASSWORD}"))
        .arg(format!(
            "oci:{}:v1",
            workspace_root().join("examples/demo/base-image").display()
        ))
        .arg(format!("docker://{}/acme/private:v1", reg.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("ferry.json"),
        serde_json::json!({"app": "acme", "components": [{
            "name": "private", "kind": "image", "repository": "acme/private",
            "source": format!("{}/acme/private:v1", reg.addr), "credentials": "acme"}]})
        .to_string(),
    )
    .unwrap();
    let creds = dir.path().join("credentials.json");
    std::fs::write(
        &creds,
        serde_json::json!({"credentials": {"acme": {"username": USER, "password": PASSWORD}}})
            .to_string(),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();

    let state = dir.path().join("state");
    let mut dev = start_dev_with_env(
        &state,
        &app,
        2,
        &[],
        &[("FERRY_CREDENTIALS_FILE", creds.as_path())],
    );
    let summary = dev.wait_event("summary", Duration::from_secs(300));
    assert_eq!(summary["synced"], true, "{summary}");
    assert_eq!(summary["verified_installs"], 2, "{summary}");
    let builds = table_bodies(&state, "SELECT body FROM builds");
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert!(builds[0].contains("succeeded"), "{}", builds[0]);

    // Every form the secret could take on a wire (the password, the Basic header's base64).
    let forms = ferry_build::SourceCredential::Basic {
        username: USER.into(),
        password: ferry_oci::Secret::new(PASSWORD),
    }
    .secret_forms();
    assert_eq!(forms.len(), 2);
    let logs = std::fs::read_to_string(state.join("logs/ferry-dev.log")).unwrap();
    assert!(
        logs.contains("source credential resolved"),
        "the logs cover the credential's use (by name)"
    );
    let queue_bodies: String = logged(&state, "%")
        .into_iter()
        .map(|(_, b)| b)
        .collect::<Vec<_>>()
        .join("\n");
    let export = store(&state).await.export_json().await.unwrap();
    let db = std::fs::read(state.join("ferry.db")).unwrap();
    let db = String::from_utf8_lossy(&db);
    let stdout = dev.stdout();
    for s in &forms {
        for (what, hay) in [
            ("the logs", &logs),
            ("a queue body", &queue_bodies),
            ("the store", &export),
            ("the database file", &db.to_string()),
            ("stdout", &stdout),
        ] {
            assert!(!hay.contains(s.as_str()), "the source secret is in {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_replaying_every_event_three_times_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut dev = start_dev(&state, &workspace_root().join("examples/demo"), 3, &[]);
    let summary = dev.wait_event("summary", Duration::from_secs(300));
    assert_eq!(summary["synced"], true, "{summary}");
    wait_queues_empty(&state, Duration::from_secs(60)).await;

    let before = store(&state).await.export_json().await.unwrap();
    let jobs_before = logged(&state, "install-%").len();
    let reports_before = logged(&state, "sync-reported").len();
    assert_eq!(jobs_before, 18);

    let ims: Vec<String> = ims_queues().iter().map(|q| q.to_string()).collect();
    let events: Vec<String> = logged(&state, "%")
        .into_iter()
        .filter(|(q, _)| ims.contains(q))
        .map(|(_, b)| b)
        .collect();
    // build.requested ×6, build.completed ×6, sync.requested ×18, sync.reported ×18.
    assert_eq!(events.len(), 48, "{events:?}");
    let bus = LocalBus::new(SqliteQueue::open(state.join("ferry.db")).unwrap());
    for _ in 0..3 {
        for body in &events {
            let event = parse_event(body.as_bytes()).unwrap();
            let r = bus
                .put_events(&Batch::new(vec![event]).unwrap())
                .await
                .unwrap();
            assert!(r[0].is_ok(), "{r:?}");
        }
    }
    // 144 replays were sent; wait for the workers to drain them all.
    assert_eq!(
        logged(&state, "%")
            .into_iter()
            .filter(|(q, _)| ims.contains(q))
            .count(),
        48 * 4
    );
    wait_queues_empty(&state, Duration::from_secs(120)).await;

    let after = store(&state).await.export_json().await.unwrap();
    assert_eq!(after, before, "replays changed the store");
    assert_eq!(
        logged(&state, "install-%").len(),
        jobs_before,
        "replays enqueued sync jobs again"
    );
    assert_eq!(
        logged(&state, "sync-reported").len(),
        reports_before + 18 * 3,
        "only the replayed reports themselves, no new agent reports"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_load_200_syncs_across_20_installs_each_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    // Ten small, distinct OpenTofu modules: ten digests.
    let app = dir.path().join("app");
    let mut components = Vec::new();
    for n in 0..10 {
        let m = app.join(format!("m{n}"));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(
            m.join("main.tf"),
            format!("output \"n\" {{\n  value = {n}\n}}\n"),
        )
        .unwrap();
        components.push(
            serde_json::json!({"name": format!("m{n}"), "kind": "opentofu-module",
            "dir": format!("m{n}"), "repository": format!("load/m{n}")}),
        );
    }
    std::fs::write(
        app.join("ferry.json"),
        serde_json::json!({"app": "load", "components": components}).to_string(),
    )
    .unwrap();
    let state = dir.path().join("state");
    let started = Instant::now();
    let mut dev = start_dev(
        &state,
        &app,
        20,
        &["--exit-when-synced", "--timeout", "600"],
    );
    let summary = dev.wait_event("summary", Duration::from_secs(600));
    eprintln!("200 syncs in {:?}", started.elapsed());
    assert_eq!(summary["synced"], true, "{summary}");
    let status = dev.child.wait().unwrap();
    assert!(status.success(), "ferry dev exited {status}");

    let syncs = table_bodies(&state, "SELECT body FROM syncs");
    assert_eq!(syncs.len(), 200);
    let mut pairs = std::collections::HashSet::new();
    for s in &syncs {
        let s: serde_json::Value = serde_json::from_str(s).unwrap();
        assert_eq!(s["state"]["status"], "succeeded", "{s}");
        assert!(pairs.insert((
            s["digest"].as_str().unwrap().to_string(),
            s["install_id"].as_str().unwrap().to_string()
        )));
    }
    let lineage = table_bodies(&state, "SELECT body FROM lineage");
    assert_eq!(lineage.len(), 200, "one lineage row per (digest, install)");
    let digests: std::collections::HashSet<_> = pairs.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(digests.len(), 10);
    // Exactly one job message and one agent report per sync: nothing lost or duplicated.
    assert_eq!(logged(&state, "install-%").len(), 200);
    assert_eq!(logged(&state, "sync-reported").len(), 200);
}

// ---------------------------------------------------------------------------------------------
// A release halted by an install whose registry refuses pushes, with real agents

/// Runs `ferry ARGS --state-dir STATE` and returns its stdout; panics with stderr on failure.
fn ferry_ok(state: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .current_dir(workspace_root())
        .output()
        .expect("run ferry");
    assert!(
        out.status.success(),
        "ferry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real CNCF registry (`docker-registry`) on `addr`, storing under `root`; with `readonly`
/// its maintenance mode refuses every push (uploads and manifest PUTs answer 405) while
/// reads still work: an install registry that refuses pushes.
fn docker_registry(dir: &Path, addr: &str, readonly: bool) -> Killed {
    let config = dir.join(format!("config-{readonly}.yml"));
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    readonly:\n      enabled: {readonly}\nhttp:\n  addr: {addr}\n  secret: ferry-test-secret\n",
            dir.join("root").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("stderr-{readonly}.log"))).unwrap())
        .spawn()
        .expect("spawn docker-registry");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "docker-registry exited with {status}: {}",
                std::fs::read_to_string(dir.join(format!("stderr-{readonly}.log")))
                    .unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(addr).is_ok() {
            return Killed(child);
        }
        assert!(
            Instant::now() < deadline,
            "docker-registry on {addr} did not start"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `GET http://addr/path` over plain HTTP/1.0: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// `ferry release show ID --json`, polled until the release's status is `want`.
fn release_until(state: &Path, id: &str, want: &str, limit: Duration) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let shown: serde_json::Value =
            serde_json::from_str(&ferry_ok(state, &["release", "show", id, "--json"])).unwrap();
        if shown["release"]["status"] == want {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "release {id} not {want} within {limit:?}: {shown}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each target's install, state and sync ids, from a `release show --json`.
fn targets_of(shown: &serde_json::Value) -> Vec<(String, String, Vec<String>)> {
    shown["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let syncs = t["syncs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["sync_id"].as_str().unwrap_or("").to_string())
                .collect();
            (
                t["install"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap().to_string(),
                syncs,
            )
        })
        .collect()
}

/// Issue 12: `--per-step 2 --max-failures 1` over six installs, every one with a real agent
/// (five run by `ferry dev` into its embedded registry, one `ferry-agent run` process into
/// its own docker-registry in read-only mode). The release halts after the step holding the
/// refusing install; `release show` names it and why; the installs synced before the halt
/// keep their syncs; `resume` after the registry accepts pushes again finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_release_halts_on_a_registry_refusing_pushes_and_resume_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    // Two small OpenTofu modules: quick builds, two syncs per install.
    let app = dir.path().join("app");
    let mut components = Vec::new();
    for n in 0..2 {
        let m = app.join(format!("m{n}"));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(
            m.join("main.tf"),
            format!("output \"n\" {{\n  value = {n}\n}}\n"),
        )
        .unwrap();
        components.push(
            serde_json::json!({"name": format!("m{n}"), "kind": "opentofu-module",
            "dir": format!("m{n}"), "repository": format!("halt/m{n}")}),
        );
    }
    std::fs::write(
        app.join("ferry.json"),
        serde_json::json!({"app": "halt", "components": components}).to_string(),
    )
    .unwrap();
    let state = dir.path().join("state");
    let dev = start_dev(
        &state,
        &app,
        5,
        &["--releases", "--no-console", "--timeout", "900"],
    );

    // The sixth install: its agent runs outside `ferry dev`, into a registry refusing pushes.
    let reg_dir = dir.path().join("refusing");
    std::fs::create_dir_all(&reg_dir).unwrap();
    let reg_addr = format!("127.0.0.1:{}", ferry_testkit::free_port());
    let refusing = docker_registry(&reg_dir, &reg_addr, true);
    let agent_bin =
        ferry_testkit::workspace_bin("ferry-agent", "ferry-agent", env!("CARGO_BIN_EXE_ferry"));
    let key_file = dir.path().join("dev-3x.key");
    let out = Command::new(&agent_bin)
        .arg("keygen")
        .arg("--out")
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = String::from_utf8(out.stdout).unwrap();
    let key_of = |label: &str| {
        keys.lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap()
            .trim()
            .to_string()
    };
    let added: serde_json::Value = serde_json::from_str(&ferry_ok(
        &state,
        &[
            "install",
            "add",
            "dev-3x",
            "--app",
            "halt",
            "--public-key",
            &key_of("public key:"),
            "--report-key",
            &key_of("report key:"),
            "--json",
        ],
    ))
    .unwrap();
    let _agent = Killed(
        Command::new(&agent_bin)
            .args(["run", "--install", "dev-3x", "--keep-last", "0"])
            .args(["--wait-seconds", "1", "--grace-seconds", "1"])
            .arg("--queue-db")
            .arg(state.join("ferry.db"))
            .args(["--queue", added["install"]["queue"].as_str().unwrap()])
            .args([
                "--vendor-registry",
                added["vendor_registry"].as_str().unwrap(),
            ])
            .args([
                "--vendor-public-key",
                added["vendor_public_key"].as_str().unwrap(),
            ])
            .args(["--install-registry", &reg_addr])
            .arg("--key-file")
            .arg(&key_file)
            .arg("--identity-secret-file")
            .arg(added["identity_secret_file"].as_str().unwrap())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent-dev-3x.log")).unwrap())
            .spawn()
            .expect("spawn ferry-agent"),
    );

    // Both builds done (with --releases nothing syncs until a release says so).
    let deadline = Instant::now() + Duration::from_secs(300);
    let builds: Vec<String> = loop {
        let all: serde_json::Value =
            serde_json::from_str(&ferry_ok(&state, &["builds", "--json"])).unwrap();
        let all = all.as_array().cloned().unwrap_or_default();
        if all.len() == 2 && all.iter().all(|b| b["state"]["status"] == "succeeded") {
            break all
                .iter()
                .map(|b| b["id"].as_str().unwrap().to_string())
                .collect();
        }
        assert!(Instant::now() < deadline, "builds not done: {all:?}");
        std::thread::sleep(Duration::from_millis(200));
    };

    // Steps (installs by id): dev-1 dev-2 | dev-3 dev-3x | dev-4 dev-5.
    let created: serde_json::Value = serde_json::from_str(&ferry_ok(
        &state,
        &[
            "release",
            "create",
            "halt",
            "--build",
            &builds.join(","),
            "--all",
            "--per-step",
            "2",
            "--max-failures",
            "1",
            "--json",
        ],
    ))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let halted = release_until(&state, &id, "halted", Duration::from_secs(300));
    assert_eq!(halted["release"]["step"], 1, "halted in step 2: {halted}");
    let reason = halted["release"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("ferry release resume"), "{reason}");
    let before = targets_of(&halted);
    let states: Vec<(&str, &str)> = before
        .iter()
        .map(|(i, s, _)| (i.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            ("dev-1", "succeeded"),
            ("dev-2", "succeeded"),
            ("dev-3", "succeeded"),
            ("dev-3x", "failed"),
            ("dev-4", "pending"),
            ("dev-5", "pending"),
        ],
        "{halted}"
    );
    // Why: the install registry's own refusal, as the agent reported it.
    let failed = halted["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["install"] == "dev-3x")
        .unwrap();
    let errors: Vec<&str> = failed["syncs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["error"]["message"].as_str())
        .collect();
    assert!(!errors.is_empty(), "{failed}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains(&reg_addr) && e.contains("405")),
        "each failed sync names the refusing registry and its answer: {errors:?}"
    );
    // The table a vendor reads says the same.
    let table = ferry_ok(&state, &["release", "show", &id]);
    let row = table
        .lines()
        .find(|l| l.contains("dev-3x"))
        .unwrap_or_else(|| panic!("no dev-3x row: {table}"));
    assert!(row.contains("failed") && row.contains("405"), "{row}");
    // Nothing reached the refusing registry; the installs before the halt hold their copies.
    let (_, catalog) = http_get(&reg_addr, "/v2/_catalog");
    assert!(!catalog.contains("installs/dev-3x"), "{catalog}");
    let creds = format!("agent:dev-1:{}", dev.secret("agent-dev-1.secret"));
    let all: serde_json::Value =
        serde_json::from_str(&ferry_ok(&state, &["builds", "--json"])).unwrap();
    let artifacts: Vec<(String, String)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["artifact"]["repository"].as_str().unwrap().to_string(),
                b["artifact"]["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let dev1_holds = || {
        for (repo, digest) in &artifacts {
            let dest = repo.strip_prefix("vendor/").unwrap();
            let raw = skopeo_raw(
                &creds,
                &format!("{}/installs/dev-1/{dest}@{digest}", dev.host),
            );
            assert_eq!(
                format!("sha256:{}", hex::encode(sha2::Sha256::digest(&raw))),
                *digest
            );
        }
    };
    dev1_holds();

    // The fix: the same registry, same storage, accepting pushes again. Then resume.
    drop(refusing);
    let _fixed = docker_registry(&reg_dir, &reg_addr, false);
    ferry_ok(&state, &["release", "resume", &id]);
    let done = release_until(&state, &id, "completed", Duration::from_secs(300));
    let after = targets_of(&done);
    assert!(
        after.iter().all(|(_, s, _)| s == "succeeded"),
        "every install synced: {done}"
    );
    // Installs synced before the halt were not synced again: same sync ids, still held.
    for (b, a) in before.iter().zip(&after) {
        if b.1 == "succeeded" {
            assert_eq!(b, a, "{} kept its syncs", b.0);
        }
    }
    dev1_holds();
    let (status, catalog) = http_get(&reg_addr, "/v2/_catalog");
    assert_eq!(status, 200);
    for n in 0..2 {
        assert!(
            catalog.contains(&format!("installs/dev-3x/halt/m{n}")),
            "dev-3x holds m{n} after the resume: {catalog}"
        );
    }
    let syncs: Vec<serde_json::Value> = table_bodies(&state, "SELECT body FROM syncs")
        .iter()
        .map(|s| serde_json::from_str(s).unwrap())
        .collect();
    // Two syncs per install, plus dev-3x's two failed ones retried in round 1.
    assert_eq!(syncs.len(), 14, "{syncs:?}");
}
