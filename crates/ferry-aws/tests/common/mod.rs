//! Test harness: a moto server on a free loopback port per test (killed on drop), SDK
//! configs pointed at it, and a fault-injecting proxy for retry tests.
//!
//! The harness never touches the process environment: endpoint, region and credentials are
//! passed to the config loader, so tests run in parallel.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::SdkConfig;
use aws_credential_types::Credentials;

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {bin}: {e}; install it with `pip install 'moto[server]'`")
                });
            let mut moto = Moto { child, port };
            match moto.wait_ready().await {
                Ok(()) => return moto,
                Err(e) => last = e,
            }
        }
        panic!("moto server did not come up: {last}")
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let url = format!("{}/moto-api/", self.endpoint());
        // Poll (not a sleep-as-synchronisation): moto answers once its socket is bound.
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("moto exited with {status} (port taken?)"));
            }
            if client.get(&url).send().await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Err("moto did not answer within 15 s".into())
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn config(&self) -> SdkConfig {
        config_for(&self.endpoint()).await
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub async fn config_for(endpoint: &str) -> SdkConfig {
    ferry_aws::config::loader()
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique within this test process (moto state is per server, but tests share one
/// server only within a test).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
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
    pub addr: SocketAddr,
    pub seen: Arc<AtomicUsize>,
    pub bodies: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
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
            let url = format!(
                "{}{}",
                st.upstream,
                parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
            );
            let mut up = st.client.request(parts.method.clone(), url);
            for (k, v) in parts.headers.iter() {
                if k != "host" && k != "content-length" {
                    up = up.header(k, v);
                }
            }
            let resp = up.body(body.to_vec()).send().await.unwrap();
            let mut out = Response::builder().status(resp.status().as_u16());
            for (k, v) in resp.headers() {
                if k != "content-length" && k != "transfer-encoding" {
                    out = out.header(k, v);
                }
            }
            out.body(Body::from(resp.bytes().await.unwrap())).unwrap()
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy {
            addr,
            seen,
            bodies,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
