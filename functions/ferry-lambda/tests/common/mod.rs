//! Test harness: a moto server per test on a free loopback port (polled until it answers,
//! killed on drop), `Deps` pointed at it, SQS records and batches, raw AWS calls for the
//! resources the functions only use (CodeBuild projects, IAM roles). The moto process, IAM
//! role and log sink come from ferry-testkit.
//!
//! Nothing here touches the process environment, so tests run in parallel.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use ferry_lambda::{
    AwsOverrides, Context, Deps, LambdaEvent, Settings, SqsBatchResponse, SqsEvent, SqsMessage,
};
pub use ferry_testkit::{unique, ACCOUNT, REGION};

/// The shared moto launcher (20 s to answer), with raw calls for what the functions only use.
pub struct Moto(ferry_testkit::Moto);

impl Moto {
    pub async fn start() -> Moto {
        Moto(ferry_testkit::Moto::start().await)
    }

    pub fn endpoint(&self) -> String {
        self.0.endpoint()
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
            .header("authorization", ferry_testkit::moto_auth(service))
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
        ferry_testkit::create_role(&self.endpoint(), name).await
    }
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
        ("FERRY_VENDOR_KEY_SECRET", unique("ferry-vendor-key")),
        ("FERRY_MAX_RECEIVE_COUNT", "5".to_owned()),
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
        ..AwsOverrides::default()
    };
    ferry_testkit::create_secret(
        &moto.endpoint(),
        &settings.vendor_key_secret,
        &ferry_core::testing::test_vendor_key().to_secret_string(),
    )
    .await;
    let deps = Deps::connect(&settings, &overrides).await.unwrap();
    deps.ports.store.create_table().await.unwrap();
    moto.create_codebuild_project(&settings.build_project).await;
    (deps, settings)
}

/// One SQS record as Lambda delivers it, on its first receive.
pub fn record(message_id: &str, body: &str) -> SqsMessage {
    record_received(message_id, body, 1)
}

/// One SQS record as Lambda delivers it on its `receive_count`th receive.
pub fn record_received(message_id: &str, body: &str, receive_count: u32) -> SqsMessage {
    let mut m = SqsMessage::default();
    m.message_id = Some(message_id.to_owned());
    m.receipt_handle = Some(format!("rh-{message_id}"));
    m.body = Some(body.to_owned());
    m.attributes
        .insert("ApproximateReceiveCount".into(), receive_count.to_string());
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
