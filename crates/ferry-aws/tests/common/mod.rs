//! Test harness: a moto server on a free loopback port per test (killed on drop), SDK
//! configs pointed at it, and a fault-injecting proxy for retry tests.
//!
//! The harness never touches the process environment: endpoint, region and credentials are
//! passed to the config loader, so tests run in parallel.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use ferry_core::domain::{Install, RegistryTarget};
use ferry_core::id::{AppName, ComponentName, InstallId, QueueName};
pub use ferry_testkit::unique;
use ferry_testkit::Served;

/// The shared moto launcher, with SDK configs pointed at it.
pub struct Moto(ferry_testkit::Moto);

impl Moto {
    /// Waits up to 15 s for moto to answer.
    pub async fn start() -> Moto {
        Moto(ferry_testkit::Moto::start_within(Duration::from_secs(15)).await)
    }

    pub fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    pub async fn config(&self) -> SdkConfig {
        config_for(&self.endpoint()).await
    }
}

pub async fn config_for(endpoint: &str) -> SdkConfig {
    ferry_aws::config::loader()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(ferry_testkit::REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await
}

/// How the proxy answers a request it chose to fail.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    Throttle429,
    Unavailable503,
}

/// A forwarding proxy in front of moto that fails the first `fail_first` requests, and records
/// every request body it forwards.
pub struct FaultProxy {
    pub addr: std::net::SocketAddr,
    pub seen: Arc<AtomicUsize>,
    pub bodies: Arc<Mutex<Vec<String>>>,
    server: Served,
}

impl FaultProxy {
    pub async fn start(upstream: String, fail_first: usize, fault: Fault) -> FaultProxy {
        use axum::body::Body;
        use axum::extract::{Request, State};
        use axum::response::Response;

        #[derive(Clone)]
        struct St {
            upstream: String,
            fail_first: usize,
            fault: Fault,
            seen: Arc<AtomicUsize>,
            bodies: Arc<Mutex<Vec<String>>>,
            client: reqwest::Client,
        }

        async fn handle(State(st): State<St>, req: Request) -> Response {
            let n = st.seen.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 16 << 20).await.unwrap();
            if n < st.fail_first {
                let (status, json) = match st.fault {
                    Fault::Throttle429 => (
                        429,
                        r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded (injected)"}"#,
                    ),
                    Fault::Unavailable503 => (
                        503,
                        r#"{"__type":"ServiceUnavailable","message":"try again (injected)"}"#,
                    ),
                };
                return Response::builder()
                    .status(status)
                    .header("content-type", "application/x-amz-json-1.0")
                    .header(
                        "x-amzn-errortype",
                        if status == 429 {
                            "ThrottlingException"
                        } else {
                            "ServiceUnavailable"
                        },
                    )
                    .body(Body::from(json))
                    .unwrap();
            }
            st.bodies
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let (out, bytes) = ferry_testkit::forward(&st.client, &st.upstream, &parts, body).await;
            out.body(Body::from(bytes)).unwrap()
        }

        let seen = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let st = St {
            upstream,
            fail_first,
            fault,
            seen: seen.clone(),
            bodies: bodies.clone(),
            client: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(handle).with_state(st);
        let server = Served::start(app).await;
        FaultProxy {
            addr: server.addr,
            seen,
            bodies,
            server,
        }
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    pub fn requests(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

/// The vendor account the minter tests mint in.
pub const ACCOUNT: &str = "123456789012";

/// An install of app `shop` subscribed to `web`, whose agent's public key is `key`.
pub fn install(key: String) -> Install {
    Install {
        id: InstallId::new("i-acme").unwrap(),
        app: AppName::new("shop").unwrap(),
        registry: RegistryTarget {
            endpoint: "111122223333.dkr.ecr.eu-west-1.amazonaws.com".into(),
            namespace: "vendor".into(),
        },
        agent_public_key: key,
        agent_report_key: String::new(),
        queue: QueueName::new("ferry-agent-i-acme").unwrap(),
        components: vec![ComponentName::new("web").unwrap()],
    }
}
