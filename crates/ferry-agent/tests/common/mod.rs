//! Test harness: a real embedded registry with the real `AccessControl` (vendor, agent:a,
//! agent:b), the local grant minter, a SQLite queue, and helpers to push artifacts and build
//! job messages.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_agent::{Agent, AgentConfig, QueueReporter, VendorTrust};
use ferry_core::domain::{Install, RegistryTarget};
use ferry_core::event::SyncJobMessage;
use ferry_core::id::{
    AppName, BuildId, Digest as CoreDigest, InstallId, QueueName, Repository, SyncId,
};
use ferry_core::ports::{GrantId, GrantMinter, Queue, ReceiveOptions};
use ferry_core::seal::{AgentKeypair, ClearGrant};
use ferry_core::trust::VendorKey;
use ferry_local::minter::LocalGrantMinter;
use ferry_local::queue::{QueueConfig, SqliteQueue};
use ferry_oci::{
    ClientConfig, Credential, CredentialStore, Digest, Manifest, RegistryClient, RepoRef, Secret,
};
use ferry_registry::access::endpoint::token_router;
use ferry_registry::access::identity::Identity;
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};
use ferry_registry::server::{RegistryServer, RunningRegistry};
use tokio_util::sync::CancellationToken;

pub const VENDOR_SECRET: &str = "vendor-secret-0123456789abcdef";
pub const AGENT_A_SECRET: &str = "agent-a-secret-0123456789abcdef";
pub const AGENT_B_SECRET: &str = "agent-b-secret-0123456789abcdef";
pub const VENDOR_REPO: &str = "vendor/demo/app";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub struct Env {
    pub dir: tempfile::TempDir,
    /// Signs the job messages, as the IMS would; agents pin its public key.
    pub vendor_key: Arc<VendorKey>,
    pub ac: Arc<AccessControl>,
    pub host: String,
    pub minter: LocalGrantMinter,
    pub queue: Arc<SqliteQueue>,
    pub db_path: std::path::PathBuf,
    pub running: RunningRegistry,
}

pub fn qn(s: &str) -> QueueName {
    QueueName::new(s).unwrap()
}

pub async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry");
    let mut policy = AccessPolicy::new();
    policy
        .add_identity(Identity::Vendor, VENDOR_SECRET)
        .add_identity(Identity::Agent("a".into()), AGENT_A_SECRET)
        .add_identity(Identity::Agent("b".into()), AGENT_B_SECRET);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = AuthConfig::new("ferry-test", root.join("auth"));
    cfg.realm = format!("http://{addr}/token");
    let ac = Arc::new(AccessControl::open(cfg, policy).unwrap());
    let server = RegistryServer::builder(&root)
        .authorizer(ac.clone())
        .extra_routes(token_router(ac.clone()))
        .build()
        .unwrap();
    let running = server.spawn_on(listener).unwrap();
    let host = addr.to_string();
    let db_path = dir.path().join("queues.db");
    let queue = Arc::new(SqliteQueue::open(&db_path).unwrap());
    for name in ["install-a", "install-b", "sync-reported"] {
        queue
            .create_queue(
                &qn(name),
                QueueConfig {
                    visibility_timeout: Duration::from_secs(60),
                    ..QueueConfig::default()
                },
            )
            .await
            .unwrap();
    }
    Env {
        minter: LocalGrantMinter::new(ac.clone(), host.clone()),
        vendor_key: Arc::new(ferry_core::testing::test_vendor_key()),
        dir,
        ac,
        host,
        queue,
        db_path,
        running,
    }
}

pub fn client(creds: Vec<(String, Option<String>, Credential)>) -> RegistryClient {
    let mut store = CredentialStore::new();
    for (r, p, c) in creds {
        store.insert(&r, p.as_deref(), c);
    }
    RegistryClient::new(ClientConfig {
        credentials: store,
        ..ClientConfig::default()
    })
    .unwrap()
}

pub fn basic(user: &str, secret: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: Secret::new(secret),
    }
}

impl Env {
    pub fn vendor(&self) -> RegistryClient {
        client(vec![(
            self.host.clone(),
            None,
            basic("vendor", VENDOR_SECRET),
        )])
    }

    pub fn agent_client(&self, id: &str, secret: &str) -> RegistryClient {
        client(vec![(
            self.host.clone(),
            None,
            basic(&format!("agent:{id}"), secret),
        )])
    }

    pub fn repo(&self, name: &str) -> RepoRef {
        RepoRef::new(self.host.clone(), name)
    }

    /// Pushes an image (a small config and `layers`) to `repo:tag`; returns its digest.
    pub async fn push(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> Digest {
        let c = self.vendor();
        let r = self.repo(repo);
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let mut descs = Vec::new();
        for blob in std::iter::once(&config).chain(layers.iter()) {
            let d = Digest::of(blob);
            let chunks: Vec<ferry_oci::Result<Bytes>> = blob
                .chunks(1 << 20)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            c.upload_blob(
                &r,
                &d,
                blob.len() as u64,
                Box::pin(futures::stream::iter(chunks)),
            )
            .await
            .unwrap();
            descs.push(serde_json::json!({"mediaType": "application/octet-stream", "digest": d.as_str(), "size": blob.len()}));
        }
        let config_desc = {
            let mut d = descs.remove(0);
            d["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
            d
        };
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": descs
        });
        let m = Manifest::from_bytes(
            Bytes::from(serde_json::to_vec(&manifest).unwrap()),
            OCI_MANIFEST,
        )
        .unwrap();
        c.put_manifest(&r, tag, &m).await.unwrap();
        m.digest
    }

    pub fn install(&self, id: &str, key: &AgentKeypair) -> Install {
        Install {
            id: InstallId::new(id).unwrap(),
            app: AppName::new("demo").unwrap(),
            registry: RegistryTarget {
                endpoint: self.host.clone(),
                namespace: format!("installs/{id}"),
            },
            agent_public_key: key.public_key_string(),
            agent_report_key: key.report_key().public_key_string(),
            queue: qn(&format!("install-{id}")),
            components: vec![],
        }
    }

    /// Mints a grant for `install` and builds its job message.
    pub async fn job(
        &self,
        install: &Install,
        digest: &Digest,
        sync: &str,
        attempt: u32,
    ) -> SyncJobMessage {
        let repo = Repository::new(VENDOR_REPO).unwrap();
        let d = CoreDigest::new(digest.as_str()).unwrap();
        let sync = SyncId::new(sync).unwrap();
        let grant_id = GrantId::new(sync.clone(), attempt);
        let grant = self
            .minter
            .mint(install, &repo, &d, &grant_id)
            .await
            .unwrap();
        let mut msg = SyncJobMessage::new(
            sync,
            BuildId::new("b-1").unwrap(),
            install.id.clone(),
            repo,
            d,
            attempt,
            grant,
        );
        self.vendor_key.sign_job(&mut msg);
        msg
    }

    /// What every test agent trusts: this registry and the test vendor key.
    pub fn vendor_trust(&self) -> VendorTrust {
        VendorTrust {
            registry: self.host.clone(),
            public_key: self.vendor_key.public_key_string(),
        }
    }

    pub async fn send(&self, queue: &str, msg: &SyncJobMessage) {
        self.queue
            .send(&qn(queue), &serde_json::to_string(msg).unwrap())
            .await
            .unwrap();
    }

    /// Waits (long polls, up to `secs`) for one report on `sync-reported` and deletes it.
    pub async fn next_report(&self, secs: u64) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self
                .queue
                .receive(
                    &qn("sync-reported"),
                    &ReceiveOptions::new(1, 2, 30).unwrap(),
                )
                .await
                .unwrap();
            if let Some(m) = got.into_iter().next() {
                self.queue
                    .delete(&qn("sync-reported"), &m.receipt_handle)
                    .await
                    .unwrap();
                let v: serde_json::Value = serde_json::from_str(&m.body).unwrap();
                // Install heartbeats share the report queue; these tests want the reports.
                if v["type"] != "install.heartbeat" {
                    return v;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no report within {secs}s"
            );
        }
    }

    /// The sync reports waiting on the report queue. Install heartbeats, which share it (an
    /// agent run as a binary sends them), are drained and not counted.
    pub async fn pending_reports(&self) -> u64 {
        let mut reports = 0;
        loop {
            let got = self
                .queue
                .receive(
                    &qn("sync-reported"),
                    &ReceiveOptions::new(10, 0, 30).unwrap(),
                )
                .await
                .unwrap();
            if got.is_empty() {
                return reports;
            }
            for m in got {
                let v: serde_json::Value = serde_json::from_str(&m.body).unwrap();
                if v["type"] == "install.heartbeat" {
                    self.queue
                        .delete(&qn("sync-reported"), &m.receipt_handle)
                        .await
                        .unwrap();
                } else {
                    reports += 1;
                }
            }
        }
    }

    pub async fn depth(&self, queue: &str) -> u64 {
        self.queue
            .approximate_depth(&qn(queue))
            .await
            .unwrap()
            .total()
    }
}

/// Deterministic, incompressible-looking bytes.
pub fn data(seed: u8, len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A tracing writer into a shared buffer, to check what the logs hold.
#[derive(Clone, Default)]
pub struct LogBuf(pub Arc<Mutex<Vec<u8>>>);

impl LogBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

/// The agent type these tests run: SQLite queue, reports sent back over the queue.
pub type TestAgent = Agent<SqliteQueue, QueueReporter<SqliteQueue>>;

/// A second handle on the same keypair.
pub fn clone_key(k: &AgentKeypair) -> AgentKeypair {
    AgentKeypair::from_secret_string(&k.to_secret_string()).unwrap()
}

/// An agent for install `id`, one message at a time, with a 10 s shutdown grace.
pub fn agent(env: &Env, id: &str, secret: &str, key: &AgentKeypair) -> TestAgent {
    agent_with(env, id, secret, key, |_| {})
}

/// [`agent`] with its configuration adjusted by `adjust` (e.g. retention).
#[allow(dead_code)] // Not every test binary adjusts.
pub fn agent_with(
    env: &Env,
    id: &str,
    secret: &str,
    key: &AgentKeypair,
    adjust: impl FnOnce(&mut AgentConfig),
) -> TestAgent {
    let mut config = AgentConfig::new(
        InstallId::new(id).unwrap(),
        qn(&format!("install-{id}")),
        env.vendor_trust(),
        env.host.clone(),
        Secret::new(secret),
    )
    .with_receive(ReceiveOptions::new(1, 1, 30).unwrap());
    config.shutdown_grace = Duration::from_secs(10);
    // These tests read the report queue message by message: no install heartbeats there
    // (tests/heartbeat.rs covers them).
    config.telemetry_every = None;
    adjust(&mut config);
    let reporter = Arc::new(QueueReporter::new(env.queue.clone(), qn("sync-reported")));
    Agent::new(config, env.queue.clone(), reporter, clone_key(key))
}

/// Runs `agent` until the returned token is cancelled.
pub fn spawn(agent: TestAgent) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let h = tokio::spawn(async move { agent.run(s).await.unwrap() });
    (stop, h)
}

/// Cancels the agent and waits (at most 15 s) for it to finish cleanly.
pub async fn stop(stop: CancellationToken, h: tokio::task::JoinHandle<()>) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), h)
        .await
        .unwrap()
        .unwrap();
}

/// The clear registry token of a job message's grant, opened with `key`.
pub fn open_token(key: &AgentKeypair, msg: &SyncJobMessage) -> String {
    ClearGrant::open(key, msg.grant.ciphertext(), &msg.install_id, &msg.sync_id)
        .unwrap()
        .token
        .clone()
}
