//! Test harness: a moto server per test on a free loopback port (polled until it answers,
//! killed on drop), `Deps` pointed at it, SQS records and batches, raw AWS calls for the
//! resources the functions only use (CodeBuild projects, IAM roles), and a log capture.
//!
//! Nothing here touches the process environment, so tests run in parallel.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_lambda::{
    AwsOverrides, Context, Deps, LambdaEvent, Settings, SqsBatchResponse, SqsEvent, SqsMessage,
};

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    child: Child,
    pub port: u16,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Moto {
    pub async fn start() -> Moto {
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let mut last = String::new();
        // A free port can be taken between probe and bind: try a few.
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
            match moto.ready(Duration::from_secs(20)).await {
                Ok(()) => return moto,
                Err(e) => last = e,
            }
        }
        panic!("moto server did not come up: {last}")
    }

    async fn ready(&mut self, within: Duration) -> Result<(), String> {
        let client = reqwest::Client::new();
        let url = format!("{}/moto-api/", self.endpoint());
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
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
        Err(format!("moto did not answer within {within:?}"))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn auth(service: &str) -> String {
        // moto routes on the credential scope's service; it does not check the signature.
        format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/{service}/aws4_request, SignedHeaders=host, Signature=0"
        )
    }

    /// A JSON-protocol call (CodeBuild, ...), answered as JSON.
    pub async fn json_call(
        &self,
        service: &str,
        target: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let resp = reqwest::Client::new()
            .post(self.endpoint())
            .header("authorization", Moto::auth(service))
            .header("x-amz-target", target)
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{target}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// A query-protocol call (IAM), answered as XML text.
    pub async fn query_call(&self, service: &str, params: &[(&str, &str)]) -> String {
        let resp = reqwest::Client::new()
            .post(self.endpoint())
            .header("authorization", Moto::auth(service))
            .form(params)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{params:?}: {status} {text}");
        text
    }

    /// A CodeBuild project StartBuild can use.
    pub async fn create_codebuild_project(&self, name: &str) {
        self.json_call(
            "codebuild",
            "CodeBuild_20161006.CreateProject",
            serde_json::json!({
                "name": name,
                "source": {"type": "S3", "location": "ferry-sources/source.zip"},
                "artifacts": {"type": "NO_ARTIFACTS"},
                "environment": {
                    "type": "ARM_CONTAINER",
                    "image": "aws/codebuild/amazonlinux2-aarch64-standard:3.0",
                    "computeType": "BUILD_GENERAL1_SMALL"
                },
                "serviceRole": format!("arn:aws:iam::{ACCOUNT}:role/ferry-codebuild"),
            }),
        )
        .await;
    }

    /// How many CodeBuild builds the project has: one per started Ferry build, never more.
    pub async fn codebuild_build_count(&self, project: &str) -> usize {
        let out = self
            .json_call(
                "codebuild",
                "CodeBuild_20161006.ListBuildsForProject",
                serde_json::json!({ "projectName": project }),
            )
            .await;
        out["ids"].as_array().map(Vec::len).unwrap_or(0)
    }

    /// The pull role grants are minted from; returns its ARN.
    pub async fn create_role(&self, name: &str) -> String {
        let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
        let body = self
            .query_call(
                "iam",
                &[
                    ("Action", "CreateRole"),
                    ("Version", "2010-05-08"),
                    ("RoleName", name),
                    ("AssumeRolePolicyDocument", trust),
                ],
            )
            .await;
        let start = body.find("<Arn>").expect("CreateRole answered an ARN") + 5;
        let end = body[start..].find("</Arn>").unwrap() + start;
        body[start..end].to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique within this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The functions' settings as the template would set them, with fresh resource names.
pub fn settings(pull_role_arn: &str) -> Settings {
    let table = unique("ferry-jobs");
    let project = unique("ferry-build");
    let registry = format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com");
    let env: HashMap<&str, String> = HashMap::from([
        ("FERRY_TABLE", table),
        // moto has the default bus; PutEvents with no rule simply drops the events.
        ("FERRY_EVENT_BUS", "default".to_owned()),
        ("FERRY_BUILD_PROJECT", project),
        ("FERRY_PULL_ROLE_ARN", pull_role_arn.to_owned()),
        ("FERRY_VENDOR_REGISTRY", registry),
    ]);
    Settings::from_lookup(|k| env.get(k).cloned()).unwrap()
}

/// `Deps` against moto, with the table and the CodeBuild project created.
pub async fn deps(moto: &Moto) -> (Deps, Settings) {
    let role = moto.create_role(&unique("ferry-pull")).await;
    let settings = settings(&role);
    let overrides = AwsOverrides {
        endpoint_url: Some(moto.endpoint()),
        region: Some(REGION),
        test_credentials: true,
    };
    let deps = Deps::connect(&settings, &overrides).await;
    deps.ports.store.create_table().await.unwrap();
    moto.create_codebuild_project(&settings.build_project).await;
    (deps, settings)
}

/// One SQS record as Lambda delivers it.
pub fn record(message_id: &str, body: &str) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(message_id.to_owned());
    m.receipt_handle = Some(format!("rh-{message_id}"));
    m.body = Some(body.to_owned());
    m.attributes
        .insert("ApproximateReceiveCount".into(), "1".into());
    m.event_source = Some("aws:sqs".into());
    m.aws_region = Some(REGION.into());
    m
}

pub fn batch(records: Vec<SqsMessage>) -> LambdaEvent<SqsEvent> {
    let mut event = SqsEvent::default();
    event.records = records;
    LambdaEvent::new(event, Context::default())
}

/// The failed message ids of a response, sorted.
pub fn failed_ids(response: &SqsBatchResponse) -> Vec<String> {
    let mut ids: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    ids.sort();
    ids
}

/// An in-memory log sink for `json_subscriber`.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}
