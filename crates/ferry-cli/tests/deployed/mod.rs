//! A deployed vendor stack for the `ferry` binary's AWS suites (bundle_aws, release_aws, cli):
//! moto with the job table (ferry-aws's schema) and ferry-testkit's vendor stack in it, the
//! stack's functions run in-process over the AWS adapters (ferry-core's `dispatch` on each
//! received message, as the Lambda runtime would run them), stand-in agents that report
//! success signed with their registered report keys, and the `ferry` binary on a private
//! config directory.
//!
//! It must never check what a test is about (it sets up, and panics when a step fails; the
//! tests check), never let `ferry` read the developer's AWS profile or Ferry contexts, and
//! never sleep as synchronisation.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_core::event::{parse_sync_job, Payload, SyncReportStatus, SyncReported};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, QueueName, Repository};
use ferry_core::ports::{Queue as _, ReceiveOptions, ReceivedMessage};
use ferry_core::trust::VendorKey;
use ferry_core::{Event, Ports};
use ferry_testkit::vendor_stack::{self, StackBuilder, VendorStack};

/// The AWS adapters over moto.
pub struct MotoAws;

impl ferry_core::ports::Backend for MotoAws {
    type Store = ferry_aws::DynamoStore;
    type Queue = ferry_aws::SqsQueue;
    type Bus = ferry_aws::EventBridgeBus;
    type Builder = ferry_aws::CodeBuildBuilder;
    type Minter = ferry_aws::EcrGrantMinter;
    type Clock = ferry_local::clock::SystemClock;
}

/// What [`Deployed::functions`] and [`Deployed::onboard`] need of the stack: the
/// sync-requested route, the release and report queues, the pull role. Add to it what else a
/// test needs.
pub fn base_stack() -> StackBuilder {
    VendorStack::builder()
        .route(vendor_stack::SYNC_REQUESTED, "ferry", "sync.requested")
        .queue(vendor_stack::RELEASE)
        .queue(vendor_stack::SYNC_REPORTED)
        .pull_role()
}

/// moto with what `sam deploy` creates in it; moto is killed on drop.
pub struct Deployed {
    pub moto: ferry_testkit::Moto,
    pub endpoint: String,
    /// Test credentials, [`ferry_testkit::REGION`], moto's endpoint.
    pub config: ferry_aws::SdkConfig,
    /// The job table, [`vendor_stack::TABLE`].
    pub store: ferry_aws::DynamoStore,
    pub stack: VendorStack,
    /// A fresh vendor key; its secret is in [`vendor_stack::VENDOR_KEY_SECRET`].
    pub vendor_key: VendorKey,
}

impl Deployed {
    /// Starts moto (waiting up to 15 s), creates the job table with ferry-aws and `stack` with
    /// a fresh vendor key's secret added.
    pub async fn start(stack: StackBuilder) -> Deployed {
        let moto = ferry_testkit::Moto::start_within(Duration::from_secs(15)).await;
        let endpoint = moto.endpoint();
        let config = ferry_aws::config::loader()
            .endpoint_url(&endpoint)
            .region(ferry_aws::config::Region::new(ferry_testkit::REGION))
            .test_credentials()
            .load()
            .await;
        let store = ferry_aws::DynamoStore::new(&config, vendor_stack::TABLE);
        store.create_table().await.unwrap();
        let vendor_key = VendorKey::generate().unwrap();
        let stack = stack
            .vendor_key(&vendor_key.to_secret_string())
            .create(&endpoint)
            .await;
        Deployed {
            moto,
            endpoint,
            config,
            store,
            stack,
            vendor_key,
        }
    }

    /// The stack's ports over the adapters with `config`, minting grants for
    /// `vendor_registry`; the release queue is known by its URL (FERRY_RELEASE_QUEUE_URL).
    /// The stack needs the release queue and the pull role.
    pub fn ports(&self, vendor_registry: &str, config: ferry_core::Config) -> Ports<MotoAws> {
        let rel = QueueName::new(vendor_stack::RELEASE).unwrap();
        let release_url = self.stack.queue_url(vendor_stack::RELEASE);
        Ports {
            store: self.store.clone(),
            queue: ferry_aws::SqsQueue::new(&self.config).with_url(rel.clone(), release_url),
            bus: ferry_aws::EventBridgeBus::new(&self.config, vendor_stack::BUS),
            builder: ferry_aws::CodeBuildBuilder::new(
                &self.config,
                vendor_stack::CODEBUILD_PROJECT,
            ),
            minter: ferry_aws::EcrGrantMinter::new(
                &self.config,
                ferry_aws::EcrGrantSettings {
                    pull_role_arn: self.stack.pull_role_arn().to_owned(),
                    registry_account_id: ferry_testkit::ACCOUNT.into(),
                    region: ferry_testkit::REGION.into(),
                    registry_host: Some(vendor_registry.into()),
                },
                self.store.clone(),
            ),
            clock: ferry_local::clock::SystemClock,
            config,
            vendor_key: std::sync::Arc::new(
                VendorKey::from_secret_string(&self.vendor_key.to_secret_string()).unwrap(),
            ),
            release_queue: rel,
        }
    }

    /// The stack's functions ([`Deployed::ports`], no implicit release of a build) with
    /// stand-in agents for `agents` (install ids); other installs never read their queues.
    /// The stack needs [`base_stack`]'s parts.
    pub fn functions(&self, vendor_registry: &str, agents: &[&str]) -> Stack {
        let config = ferry_core::Config {
            fan_out_on_build: false,
            ..ferry_core::Config::default()
        };
        Stack {
            ports: self.ports(vendor_registry, config),
            sync_requested: QueueName::new(vendor_stack::SYNC_REQUESTED).unwrap(),
            release: QueueName::new(vendor_stack::RELEASE).unwrap(),
            agents: agents
                .iter()
                .map(|id| {
                    QueueName::new(format!("{}{id}", vendor_stack::INSTALL_QUEUE_PREFIX)).unwrap()
                })
                .collect(),
        }
    }

    /// `ferry context add prod` for this stack (every output as a flag), `vendor_registry`
    /// and the vendor key's public half; then app shop, component shop/web, and `installs`
    /// registered with their test agent keys.
    pub fn onboard(&self, cli: &Cli, vendor_registry: &str, installs: &[&str]) {
        let context = self.stack.context_add_args(
            "prod",
            vendor_registry,
            &self.vendor_key.public_key_string(),
        );
        cli.ok(&context.iter().map(String::as_str).collect::<Vec<_>>());
        add_shop_web(&|args| cli.ok(args));
        for (n, id) in installs.iter().enumerate() {
            let key = ferry_core::testing::test_agent_key(&InstallId::new(*id).unwrap());
            cli.ok(&register_args(
                id,
                &key.public_key_string(),
                &key.report_key().public_key_string(),
                &format!("arn:aws:iam::2109876543{n:02}:role/ferry-agent-{id}"),
                &format!("{id}.registry.test/ferry"),
            ));
        }
    }
}

/// The stack's functions, in-process, and the stand-in agents.
pub struct Stack {
    pub ports: Ports<MotoAws>,
    sync_requested: QueueName,
    release: QueueName,
    /// The queues of the installs whose agents answer.
    agents: Vec<QueueName>,
}

impl Stack {
    /// Drains `queue` once (short polls until empty), dispatching every message; returns how
    /// many were handled.
    pub async fn drain(&self, queue: &QueueName) -> usize {
        let opts = ReceiveOptions::new(10, 0, 30).unwrap();
        let mut handled = 0;
        loop {
            let msgs = self.ports.queue.receive(queue, &opts).await.unwrap();
            if msgs.is_empty() {
                return handled;
            }
            for m in &msgs {
                handle(&self.ports, queue, m).await;
                handled += 1;
            }
        }
    }

    /// Every answering agent takes the jobs on its queue and reports success (signed with its
    /// report key), handled by the sync-reported function. Returns how many jobs were taken.
    pub async fn agents(&self) -> usize {
        let opts = ReceiveOptions::new(10, 0, 30).unwrap();
        let mut taken = 0;
        for q in &self.agents {
            for m in self.ports.queue.receive(q, &opts).await.unwrap() {
                let job = parse_sync_job(m.body.as_bytes()).unwrap();
                let report = Event::new(Payload::SyncReported(
                    ferry_core::testing::signed_by_test_agent(SyncReported {
                        sync_id: job.sync_id.clone(),
                        install_id: job.install_id.clone(),
                        status: SyncReportStatus::Succeeded,
                        digest: job.digest.clone(),
                        bytes_copied: 4096,
                        bytes_skipped: 0,
                        duration_ms: 10,
                        error: None,
                        attempt: job.attempt,
                        signature: String::new(),
                    }),
                ));
                ferry_core::dispatch(&self.ports, &report).await.unwrap();
                self.ports.queue.delete(q, &m.receipt_handle).await.unwrap();
                taken += 1;
            }
        }
        taken
    }

    /// Runs the functions and the agents until nothing moves; returns the jobs agents took.
    /// Panics if it does not settle within 50 rounds or 60 s.
    pub async fn settle(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut taken = 0;
        for _ in 0..50 {
            let moved =
                self.drain(&self.release).await + self.drain(&self.sync_requested).await + {
                    let n = self.agents().await;
                    taken += n;
                    n
                };
            if moved == 0 {
                return taken;
            }
            assert!(
                Instant::now() < deadline,
                "the stack did not settle in 60 s"
            );
        }
        panic!("the stack did not settle in 50 rounds");
    }

    /// A succeeded build of shop/web with `digest`, as build-requested, CodeBuild and
    /// build-completed leave it (no implicit release: the stack runs with FanOutOnBuild=false).
    pub async fn built(&self, id: &str, digest: &str) -> BuildId {
        use ferry_core::event::{BuildCompleted, BuildOutcome, BuildRequested};
        let build_id = BuildId::new(id).unwrap();
        let requested = Event::new(Payload::BuildRequested(BuildRequested {
            build_id: Some(build_id.clone()),
            app: AppName::new("shop").unwrap(),
            component: ComponentName::new("web").unwrap(),
            source_ref: format!("refs/tags/{id}"),
            requested_by: "test".into(),
        }));
        ferry_core::dispatch(&self.ports, &requested).await.unwrap();
        let completed = Event::new(Payload::BuildCompleted(BuildCompleted {
            build_id: build_id.clone(),
            status: BuildOutcome::Succeeded,
            digest: Some(Digest::new(digest).unwrap()),
            repository: Some(Repository::new("shop/web").unwrap()),
            media_type: None,
            error: None,
            revision: None,
        }));
        ferry_core::dispatch(&self.ports, &completed).await.unwrap();
        build_id
    }
}

/// `ferry app add shop` and `ferry component add shop web` (an OpenTofu module) through `ok`,
/// which runs `ferry` with its arguments and panics unless it exits 0.
pub fn add_shop_web(ok: &dyn Fn(&[&str]) -> String) {
    ok(&[
        "app",
        "add",
        "shop",
        "--source",
        "https://git.example/shop.git",
    ]);
    ok(&[
        "component",
        "add",
        "shop",
        "web",
        "--kind",
        "opentofu-module",
        "--dir",
        "module",
    ]);
}

/// The arguments of `ferry install register` for install `id` of app shop: its agent's
/// public and report keys, its agent role and its registry target.
pub fn register_args<'a>(
    id: &'a str,
    public_key: &'a str,
    report_key: &'a str,
    agent_role_arn: &'a str,
    registry: &'a str,
) -> Vec<&'a str> {
    vec![
        "install",
        "register",
        id,
        "--app",
        "shop",
        "--public-key",
        public_key,
        "--report-key",
        report_key,
        "--agent-role-arn",
        agent_role_arn,
        "--registry",
        registry,
    ]
}

/// Handles one message received from `queue` as that queue's function would: parses it,
/// dispatches it to ferry-core's handler, deletes it; returns its event. Panics if any step
/// fails.
pub async fn handle(ports: &Ports<MotoAws>, queue: &QueueName, m: &ReceivedMessage) -> Event {
    let event = ferry_core::parse_event(m.body.as_bytes())
        .unwrap_or_else(|e| panic!("{queue}: {e}: {}", m.body));
    ferry_core::dispatch(ports, &event)
        .await
        .unwrap_or_else(|e| panic!("{queue}: {e}"));
    ports.queue.delete(queue, &m.receipt_handle).await.unwrap();
    event
}

/// The `ferry` binary on its own config directory (removed on drop), with test AWS
/// credentials and no developer context, profile, state dir or log filter.
pub struct Cli {
    config_dir: tempfile::TempDir,
}

impl Cli {
    pub fn new() -> Cli {
        Cli {
            config_dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn config_dir(&self) -> &std::path::Path {
        self.config_dir.path()
    }

    /// `ferry` with that environment, to add arguments to.
    pub fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
        c.env("FERRY_CONFIG_DIR", self.config_dir.path())
            .env_remove("FERRY_CONTEXT")
            .env_remove("FERRY_STATE_DIR")
            .env_remove("RUST_LOG")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", ferry_testkit::REGION)
            .env_remove("AWS_PROFILE");
        c
    }

    /// Runs `ferry args`: exit code, stdout, stderr.
    pub fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.command().args(args).output().expect("run ferry");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Runs `ferry args`, panics unless it exits 0; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(code, Some(0), "ferry {args:?}:\n{stdout}\n{stderr}");
        stdout
    }

    /// Runs `ferry args`, panics unless it exits 0 with JSON on stdout; that JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ferry {args:?}: {e}: {out}"))
    }
}

/// Every install's state in `ferry release show ID --json`, by install id.
pub fn states(show: &serde_json::Value) -> Vec<(String, String)> {
    show["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["install"].as_str().unwrap().to_owned(),
                t["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
