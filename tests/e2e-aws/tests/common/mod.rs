//! Harness of the AWS end-to-end suite: moto on a free loopback port, docker-registry
//! instances standing in for the ECR data plane, a fault-injecting proxy in front of moto that
//! also records every body it forwards, raw JSON/query calls for the provisioning the ferry-aws
//! adapters do not do (this crate names no SDK type), and a log buffer. The moto process, the
//! proxy's forwarding, IAM roles and the log buffer come from ferry-testkit.
//!
//! Every child process is killed in Drop; readiness is polled with deadlines, never slept on.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use ferry_testkit::{create_role, free_port, Logs, Moto, ACCOUNT, REGION};
use ferry_testkit::{wait_http, Served};

/// `/usr/bin/docker-registry` without auth: it accepts any Authorization header, so it plays
/// the ECR data plane behind moto's GetAuthorizationToken.
pub struct DockerRegistry {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    pub async fn start() -> DockerRegistry {
        let bin =
            std::env::var("DOCKER_REGISTRY").unwrap_or_else(|_| "/usr/bin/docker-registry".into());
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    dir.path().join("data").display()
                ),
            )
            .unwrap();
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .env("OTEL_TRACES_EXPORTER", "none")
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {bin}: {e}; apt-get install docker-registry")
                });
            let url = format!("http://127.0.0.1:{port}/v2/");
            match wait_http(&mut child, &url, "docker-registry", Duration::from_secs(20)).await {
                Ok(()) => {
                    return DockerRegistry {
                        child,
                        port,
                        _dir: dir,
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = e;
                }
            }
        }
        panic!("docker-registry did not come up: {last}")
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// HEAD `<repo>@<digest>`: the digest the registry serves for it, if any.
    pub async fn head_digest(&self, repo: &str, digest: &str) -> Option<String> {
        let resp = reqwest::Client::new()
            .head(format!("http://{}/v2/{repo}/manifests/{digest}", self.host()))
            .header(
                "accept",
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .unwrap();
        if !resp.status().is_success() {
            return None;
        }
        resp.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One exchange the proxy forwarded.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `X-Amz-Target` (JSON protocols) or the query `Action`.
    pub operation: String,
    pub request: String,
    pub response: String,
}

/// A proxy in front of moto: answers every `every`-th request with a fault (429 throttling and
/// 503 in turn) instead of forwarding it, and records every exchange it forwards.
pub struct FaultProxy {
    pub addr: std::net::SocketAddr,
    pub faults: Arc<AtomicUsize>,
    pub exchanges: Arc<Mutex<Vec<Exchange>>>,
    server: Served,
}

impl FaultProxy {
    pub async fn start(upstream: String, every: usize) -> FaultProxy {
        use axum::body::Body;
        use axum::extract::{Request, State};
        use axum::response::Response;

        #[derive(Clone)]
        struct St {
            upstream: String,
            every: usize,
            seen: Arc<AtomicUsize>,
            faults: Arc<AtomicUsize>,
            exchanges: Arc<Mutex<Vec<Exchange>>>,
            client: reqwest::Client,
        }

        async fn handle(State(st): State<St>, req: Request) -> Response {
            let n = st.seen.fetch_add(1, Ordering::SeqCst) + 1;
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 64 << 20).await.unwrap();
            let text = String::from_utf8_lossy(&body).into_owned();
            let target = parts
                .headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if st.every > 0 && n % st.every == 0 {
                let k = st.faults.fetch_add(1, Ordering::SeqCst);
                // 429 only where the error code is read from a JSON body; 503 everywhere.
                let (status, code) = if k % 2 == 0 && target.is_some() {
                    (429, "ThrottlingException")
                } else {
                    (503, "ServiceUnavailable")
                };
                return Response::builder()
                    .status(status)
                    .header("content-type", "application/x-amz-json-1.0")
                    .header("x-amzn-errortype", code)
                    .body(Body::from(format!(
                        r#"{{"__type":"{code}","message":"injected fault"}}"#
                    )))
                    .unwrap();
            }
            let operation = target.unwrap_or_else(|| {
                text.split('&')
                    .find_map(|kv| kv.strip_prefix("Action="))
                    .unwrap_or("?")
                    .to_owned()
            });
            let (out, bytes) = ferry_testkit::forward(&st.client, &st.upstream, &parts, body).await;
            st.exchanges.lock().unwrap().push(Exchange {
                operation,
                request: text,
                response: String::from_utf8_lossy(&bytes).into_owned(),
            });
            out.body(Body::from(bytes)).unwrap()
        }

        let faults = Arc::new(AtomicUsize::new(0));
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let st = St {
            upstream,
            every,
            seen: Arc::new(AtomicUsize::new(0)),
            faults: faults.clone(),
            exchanges: exchanges.clone(),
            client: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(handle).with_state(st);
        let server = Served::start(app).await;
        FaultProxy {
            addr: server.addr,
            faults,
            exchanges,
            server,
        }
    }

    pub fn endpoint(&self) -> String {
        self.server.endpoint()
    }

    pub fn faults(&self) -> usize {
        self.faults.load(Ordering::SeqCst)
    }
}

/// One call of an AWS JSON-protocol API, straight to moto (no faults: provisioning): the
/// testkit's, the one definition.
pub use ferry_testkit::aws_json;
