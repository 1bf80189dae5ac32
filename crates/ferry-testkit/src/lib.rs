//! Test harness shared by ferry-aws, ferry-lambda and the AWS end-to-end suite: a moto server
//! on a free loopback port (readiness polled, killed on drop), the forwarding half and the
//! serving task of a fault-injecting proxy, raw IAM calls, unique names, a log sink, and a
//! docker-registry standing in for an ECR registry endpoint behind moto's ECR login.
//!
//! Nothing here touches the process environment (beyond reading `MOTO_SERVER`), so tests run
//! in parallel. This crate is a dev-dependency only and names no AWS SDK type.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::request::Parts;
use axum::response::Response;

pub mod private_registry;
pub mod vendor_stack;

/// The account moto answers for.
pub const ACCOUNT: &str = "123456789012";
/// The region the harnesses sign for.
pub const REGION: &str = "us-east-1";

/// A free loopback port (it can be taken between probe and bind: callers retry).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Polls `url` until it answers, the child exits, or `within` passes.
pub async fn wait_http(
    child: &mut Child,
    url: &str,
    what: &str,
    within: Duration,
) -> Result<(), String> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + within;
    // Poll (not a sleep-as-synchronisation): the server answers once its socket is bound.
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status} (port taken?)"));
        }
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{what} did not answer within {within:?}"))
}

/// A moto server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    /// Starts moto and waits up to 20 s for it to answer.
    pub async fn start() -> Moto {
        Moto::start_within(Duration::from_secs(20)).await
    }

    /// Starts moto (`$MOTO_SERVER`, else `moto_server`) and waits up to `within` for it.
    pub async fn start_within(within: Duration) -> Moto {
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let mut last = String::new();
        // A free port can be taken between probe and bind: try a few.
        for _ in 0..3 {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start {bin}: {e}; install it with `pip install 'moto[server]'`")
                });
            let url = format!("http://127.0.0.1:{port}/moto-api/");
            match wait_http(&mut child, &url, "moto", within).await {
                Ok(()) => return Moto { child, port },
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = e;
                }
            }
        }
        panic!("moto server did not come up: {last}")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Basic user moto's ECR GetAuthorizationToken hands out.
pub const ECR_USER: &str = "AWS";
/// The password moto's ECR GetAuthorizationToken hands out for [`ACCOUNT`].
pub const ECR_PASSWORD: &str = "123456789012-auth-token";
/// `AWS:<bcrypt of ECR_PASSWORD>`, the htpasswd line of [`EcrStandIn`].
const ECR_HTPASSWD: &str = "AWS:$2b$12$lGIEkplK2Z8nK0QfstjDdOfxV1mIjOMaapo/yBva6QVludcF4bhdi\n";

/// A CNCF distribution registry (`/usr/bin/docker-registry`) standing in for an ECR registry
/// endpoint (moto serves ECR's API, not its registry): loopback, a free port, temp storage,
/// and Basic auth that accepts only moto's ECR login ([`ECR_USER`]:[`ECR_PASSWORD`]), so a
/// client that did not log in with GetAuthorizationToken is refused. Killed (and its storage
/// removed) on drop.
pub struct EcrStandIn {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    dir: std::path::PathBuf,
}

impl EcrStandIn {
    /// Starts one and waits up to 20 s for it to answer.
    pub async fn start() -> EcrStandIn {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = std::env::temp_dir().join(unique("ferry-ecr-stand-in"));
            std::fs::create_dir_all(&dir).unwrap();
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, ECR_HTPASSWD).unwrap();
            let addr = format!("127.0.0.1:{}", free_port());
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n  secret: ferry-test-secret\n\
                 auth:\n  htpasswd:\n    realm: ecr\n    path: {}\n",
                dir.join("root").display(),
                htpasswd.display()
            );
            let config_path = dir.join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn /usr/bin/docker-registry");
            let url = format!("http://{addr}/v2/");
            match wait_http(&mut child, &url, "docker-registry", Duration::from_secs(20)).await {
                Ok(()) => return EcrStandIn { child, addr, dir },
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                    last = e;
                }
            }
        }
        panic!("docker-registry did not come up: {last}")
    }
}

impl Drop for EcrStandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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

/// An Authorization header moto accepts: it routes on the credential scope's service and does
/// not check the signature.
pub fn moto_auth(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/{service}/aws4_request, \
         SignedHeaders=host, Signature=0"
    )
}

/// Creates an IAM role (trusted by Lambda) through moto's query API; returns its ARN.
pub async fn create_role(endpoint: &str, name: &str) -> String {
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let params = [
        ("Action", "CreateRole"),
        ("Version", "2010-05-08"),
        ("RoleName", name),
        ("AssumeRolePolicyDocument", trust),
    ];
    let resp = reqwest::Client::new()
        .post(endpoint)
        .header("authorization", moto_auth("iam"))
        .form(&params)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(status.is_success(), "{params:?}: {status} {body}");
    let start = body.find("<Arn>").expect("CreateRole answered an ARN") + 5;
    let end = body[start..].find("</Arn>").unwrap() + start;
    body[start..end].to_owned()
}

/// Creates CloudFormation stack `name` from `template` (JSON or YAML text) in moto and waits
/// (bounded, 30 s) until it is CREATE_COMPLETE, as `sam deploy` would leave the vendor stack.
pub async fn create_stack(endpoint: &str, name: &str, template: &str) {
    let client = reqwest::Client::new();
    let call = |params: Vec<(&'static str, String)>| {
        let client = client.clone();
        async move {
            let resp = client
                .post(endpoint)
                .header("authorization", moto_auth("cloudformation"))
                .form(&params)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.text().await.unwrap();
            assert!(status.is_success(), "{params:?}: {status} {body}");
            body
        }
    };
    call(vec![
        ("Action", "CreateStack".into()),
        ("Version", "2010-05-15".into()),
        ("StackName", name.into()),
        ("TemplateBody", template.into()),
    ])
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = call(vec![
            ("Action", "DescribeStacks".into()),
            ("Version", "2010-05-15".into()),
            ("StackName", name.into()),
        ])
        .await;
        if body.contains("<StackStatus>CREATE_COMPLETE</StackStatus>") {
            return;
        }
        assert!(
            !body.contains("FAILED") && !body.contains("ROLLBACK"),
            "stack {name} did not create: {body}"
        );
        assert!(std::time::Instant::now() < deadline, "stack {name}: {body}");
        tokio::task::yield_now().await;
    }
}

/// Creates a Secrets Manager secret `name` holding `text` in moto (the vendor key, an agent
/// key), as the stacks' `AWS::SecretsManager::Secret` would.
pub async fn create_secret(endpoint: &str, name: &str, text: &str) {
    let resp = reqwest::Client::new()
        .post(endpoint)
        .header("authorization", moto_auth("secretsmanager"))
        .header("x-amz-target", "secretsmanager.CreateSecret")
        .header("content-type", "application/x-amz-json-1.1")
        .body(serde_json::json!({"Name": name, "SecretString": text}).to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert!(status.is_success(), "CreateSecret {name}: {status} {body}");
}

/// Forwards one request (its parts and body) to `upstream`, keeping method, path, query and
/// headers (but `host` and `content-length`). Returns the response head to answer with (all
/// upstream headers but `content-length` and `transfer-encoding`) and the upstream body.
pub async fn forward(
    client: &reqwest::Client,
    upstream: &str,
    parts: &Parts,
    body: Bytes,
) -> (axum::http::response::Builder, Bytes) {
    let url = format!(
        "{}{}",
        upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut up = client.request(parts.method.clone(), url);
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
    (out, resp.bytes().await.unwrap())
}

/// An axum app served on a free loopback port by a task aborted on drop.
pub struct Served {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    pub async fn start(app: axum::Router) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Served { addr, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An in-memory log sink for a tracing subscriber's writer.
#[derive(Clone, Default)]
pub struct Logs(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Everything written so far (tracing writes UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// One call of an AWS JSON-protocol API (CodeBuild, EventBridge, Secrets Manager, DynamoDB)
/// on moto, for resources a test creates as a stack would; panics on an error answer.
pub async fn aws_json(
    endpoint: &str,
    service: &str,
    target: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let content_type = if service == "dynamodb" {
        "application/x-amz-json-1.0"
    } else {
        "application/x-amz-json-1.1"
    };
    let resp = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("authorization", moto_auth(service))
        .header("x-amz-target", target)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{target}: {status}: {text}");
    if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    }
}

/// The path of another workspace package's binary `bin` (for a test of one crate that runs a
/// binary of another, which `CARGO_BIN_EXE_*` cannot name), in the same target directory as
/// `sibling` (a binary of the calling test, e.g. `env!("CARGO_BIN_EXE_ferry")`).
///
/// `cargo test --workspace` builds it fresh; when it is missing (one crate's tests alone) it
/// is built here with `cargo build -p package --bin bin`. It is not rebuilt when present:
/// building it from a test of another crate resolves features differently, so every run
/// would recompile it (about a minute). After changing that package, run
/// `cargo build -p package` before one crate's tests.
pub fn workspace_bin(package: &str, bin: &str, sibling: &str) -> std::path::PathBuf {
    let sibling = std::path::Path::new(sibling);
    // <target>/<profile>/<bin>
    let profile_dir = sibling.parent().expect("a binary path has a directory");
    let target_dir = profile_dir
        .parent()
        .expect("a profile directory has a parent");
    let path = profile_dir.join(bin);
    if path.exists() {
        return path;
    }
    let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()));
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p {package} --bin {bin}: {status}"
    );
    assert!(path.exists(), "{} was not built", path.display());
    path
}
