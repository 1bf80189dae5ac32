//! The vendor stack's messaging and secrets in moto, made by hand as `sam deploy` would leave
//! them (template.yaml's names): the Ferry bus, rules routing events to queues, the queues
//! (each with its dead-letter queue), the pull role, the CodeBuild project and the vendor key
//! secret; and the `ferry context add` arguments that point the CLI at that stack. One
//! definition for every suite that stands a deployed stack up (ferry-cli's, ferry-build's).
//!
//! It must never create the job table (its schema belongs to ferry-aws's
//! `DynamoStore::create_table`: the caller creates [`TABLE`] with it), never name an AWS SDK
//! type (this crate has no SDK dependency; everything is a raw moto call through
//! [`crate::aws_json`]), never run a binary, and never talk to anything but the moto endpoint
//! it is given. Like the rest of this crate it panics on any failed call: it is test support.

use crate::{aws_json, create_role, create_secret, ACCOUNT, REGION};

/// The stack's name (`ferry context add --stack`).
pub const STACK: &str = "ferry";
/// The Ferry event bus.
pub const BUS: &str = "ferry";
/// The job table's name; the caller creates it (see the module documentation).
pub const TABLE: &str = "ferry-jobs";
/// The prefix of every install's queue (`ferry-install-<install>`).
pub const INSTALL_QUEUE_PREFIX: &str = "ferry-install-";
/// The queue of the build-requested function.
pub const BUILD_REQUESTED: &str = "ferry-build-requested";
/// The queue of the build-completed function.
pub const BUILD_COMPLETED: &str = "ferry-build-completed";
/// The queue of the sync-requested function.
pub const SYNC_REQUESTED: &str = "ferry-sync-requested";
/// The queue agents report to (the context's `--report-queue-url`).
pub const SYNC_REPORTED: &str = "ferry-sync-reported";
/// The release function's queue (its step timers and release.synced).
pub const RELEASE: &str = "ferry-release";
/// The CodeBuild project builds run in.
pub const CODEBUILD_PROJECT: &str = "ferry-build";
/// The IAM role agents' pull grants are minted from.
pub const PULL_ROLE: &str = "ferry-pull";
/// The Secrets Manager secret holding the vendor key (its name serves as its ARN in moto).
pub const VENDOR_KEY_SECRET: &str = "ferry-vendor-key";
/// The vendor's ECR registry host in moto's account and [`REGION`].
pub const ECR_REGISTRY: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
/// How many receives move a message to its queue's dead-letter queue (template.yaml's).
pub const MAX_RECEIVE_COUNT: u32 = 5;
/// Every queue's visibility timeout, in seconds.
pub const VISIBILITY_TIMEOUT: u32 = 30;

/// What to create: start from [`VendorStack::builder`], name the parts a test needs, then
/// [`StackBuilder::create`]. Nothing is created before `create`.
#[derive(Debug, Default)]
#[must_use = "nothing is created until `create`"]
pub struct StackBuilder {
    /// (queue, event source, detail-type), in order.
    routes: Vec<(String, String, String)>,
    queues: Vec<String>,
    codebuild_project: bool,
    pull_role: bool,
    vendor_key: Option<String>,
}

impl StackBuilder {
    /// A queue (with its dead-letter queue) and a rule of the same name on [`BUS`] delivering
    /// every event of `source` and `detail_type` to it.
    pub fn route(mut self, queue: &str, source: &str, detail_type: &str) -> StackBuilder {
        self.routes
            .push((queue.to_owned(), source.to_owned(), detail_type.to_owned()));
        self
    }

    /// A queue (with its dead-letter queue) no rule feeds.
    pub fn queue(mut self, queue: &str) -> StackBuilder {
        self.queues.push(queue.to_owned());
        self
    }

    /// The CodeBuild project [`CODEBUILD_PROJECT`].
    pub fn codebuild_project(mut self) -> StackBuilder {
        self.codebuild_project = true;
        self
    }

    /// The IAM role [`PULL_ROLE`] (its ARN is [`VendorStack::pull_role_arn`]).
    pub fn pull_role(mut self) -> StackBuilder {
        self.pull_role = true;
        self
    }

    /// The secret [`VENDOR_KEY_SECRET`] holding `secret` (a vendor key's secret string).
    pub fn vendor_key(mut self, secret: &str) -> StackBuilder {
        self.vendor_key = Some(secret.to_owned());
        self
    }

    /// Creates the bus, then every queue and rule, the project, the role and the secret in
    /// the moto at `endpoint`; panics on any failed call. Names are fixed, so one moto server
    /// holds one stack.
    pub async fn create(self, endpoint: &str) -> VendorStack {
        aws_json(
            endpoint,
            "events",
            "AWSEvents.CreateEventBus",
            serde_json::json!({ "Name": BUS }),
        )
        .await;
        let mut queue_urls = Vec::new();
        for (queue, source, detail_type) in &self.routes {
            let (url, arn) = create_queue_with_dlq(endpoint, queue).await;
            queue_urls.push((queue.clone(), url));
            let pattern = serde_json::json!({"source": [source], "detail-type": [detail_type]});
            aws_json(
                endpoint,
                "events",
                "AWSEvents.PutRule",
                serde_json::json!({
                    "Name": queue,
                    "EventBusName": BUS,
                    "EventPattern": pattern.to_string(),
                }),
            )
            .await;
            let put = aws_json(
                endpoint,
                "events",
                "AWSEvents.PutTargets",
                serde_json::json!({
                    "Rule": queue,
                    "EventBusName": BUS,
                    "Targets": [{"Id": queue, "Arn": arn}],
                }),
            )
            .await;
            assert_eq!(put["FailedEntryCount"], 0, "PutTargets {queue}: {put}");
        }
        for queue in &self.queues {
            let (url, _) = create_queue_with_dlq(endpoint, queue).await;
            queue_urls.push((queue.clone(), url));
        }
        if self.codebuild_project {
            aws_json(
                endpoint,
                "codebuild",
                "CodeBuild_20161006.CreateProject",
                serde_json::json!({
                    "name": CODEBUILD_PROJECT,
                    "source": {"type": "S3", "location": "ferry-sources/source.zip"},
                    "artifacts": {"type": "NO_ARTIFACTS"},
                    "environment": {"type": "ARM_CONTAINER", "computeType": "BUILD_GENERAL1_SMALL",
                        "image": "aws/codebuild/amazonlinux2-aarch64-standard:3.0"},
                    "serviceRole": format!("arn:aws:iam::{ACCOUNT}:role/ferry-codebuild"),
                }),
            )
            .await;
        }
        let pull_role_arn = if self.pull_role {
            Some(create_role(endpoint, PULL_ROLE).await)
        } else {
            None
        };
        if let Some(secret) = &self.vendor_key {
            create_secret(endpoint, VENDOR_KEY_SECRET, secret).await;
        }
        VendorStack {
            endpoint: endpoint.to_owned(),
            queue_urls,
            pull_role_arn,
        }
    }
}

/// Creates `<queue>-dlq` (kept 14 days) and `queue` redriving to it, as ferry-aws's
/// `SqsQueue::create_queue_with_dlq(queue, MAX_RECEIVE_COUNT, VISIBILITY_TIMEOUT)` does;
/// returns `queue`'s URL and ARN.
async fn create_queue_with_dlq(endpoint: &str, queue: &str) -> (String, String) {
    let dlq = format!("{queue}-dlq");
    let dlq_url = create_queue(
        endpoint,
        &dlq,
        serde_json::json!({"MessageRetentionPeriod": "1209600"}),
    )
    .await;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": queue_arn(endpoint, &dlq_url).await,
        "maxReceiveCount": MAX_RECEIVE_COUNT,
    });
    let url = create_queue(
        endpoint,
        queue,
        serde_json::json!({
            "RedrivePolicy": redrive.to_string(),
            "VisibilityTimeout": VISIBILITY_TIMEOUT.to_string(),
        }),
    )
    .await;
    let arn = queue_arn(endpoint, &url).await;
    (url, arn)
}

async fn create_queue(endpoint: &str, queue: &str, attributes: serde_json::Value) -> String {
    let out = aws_json(
        endpoint,
        "sqs",
        "AmazonSQS.CreateQueue",
        serde_json::json!({"QueueName": queue, "Attributes": attributes}),
    )
    .await;
    out["QueueUrl"]
        .as_str()
        .unwrap_or_else(|| panic!("CreateQueue {queue} answered no URL: {out}"))
        .to_owned()
}

async fn queue_arn(endpoint: &str, url: &str) -> String {
    let out = aws_json(
        endpoint,
        "sqs",
        "AmazonSQS.GetQueueAttributes",
        serde_json::json!({"QueueUrl": url, "AttributeNames": ["QueueArn"]}),
    )
    .await;
    out["Attributes"]["QueueArn"]
        .as_str()
        .unwrap_or_else(|| panic!("GetQueueAttributes {url} answered no ARN: {out}"))
        .to_owned()
}

/// What [`StackBuilder::create`] made: where it is and the URLs and ARNs a test needs.
#[derive(Debug)]
pub struct VendorStack {
    endpoint: String,
    /// (queue name, URL), for every queue the builder named.
    queue_urls: Vec<(String, String)>,
    pull_role_arn: Option<String>,
}

impl VendorStack {
    /// A builder of nothing but the bus.
    pub fn builder() -> StackBuilder {
        StackBuilder::default()
    }

    /// The moto endpoint the stack lives in.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The URL of `queue`; panics if the builder did not name it.
    pub fn queue_url(&self, queue: &str) -> &str {
        self.queue_urls
            .iter()
            .find(|(name, _)| name == queue)
            .map(|(_, url)| url.as_str())
            .unwrap_or_else(|| panic!("the stack has no queue {queue}"))
    }

    /// The ARN of [`PULL_ROLE`]; panics if the builder did not ask for it.
    pub fn pull_role_arn(&self) -> &str {
        self.pull_role_arn
            .as_deref()
            .expect("the stack was built without the pull role")
    }

    /// The arguments of `ferry context add <name>` for this stack, every output given as a
    /// flag (no CloudFormation stack need exist): [`TABLE`], [`BUS`],
    /// [`INSTALL_QUEUE_PREFIX`], the [`SYNC_REPORTED`] queue's URL (so the builder must have
    /// named it), `vendor_registry` and `vendor_public_key`.
    pub fn context_add_args(
        &self,
        name: &str,
        vendor_registry: &str,
        vendor_public_key: &str,
    ) -> Vec<String> {
        [
            "context",
            "add",
            name,
            "--aws",
            "--stack",
            STACK,
            "--endpoint-url",
            &self.endpoint,
            "--region",
            REGION,
            "--table",
            TABLE,
            "--bus",
            BUS,
            "--queue-prefix",
            INSTALL_QUEUE_PREFIX,
            "--report-queue-url",
            self.queue_url(SYNC_REPORTED),
            "--vendor-registry",
            vendor_registry,
            "--vendor-public-key",
            vendor_public_key,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}
