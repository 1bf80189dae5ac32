//! The management port on a deployed vendor stack: apps, components and installs in the
//! DynamoDB table (a catalog partition for the listings), install queues in SQS, build
//! requests on EventBridge, builds/syncs/lineage through the table's indexes, and dead letters
//! from each queue's DLQ.
//!
//! Registration creates `<prefix><id>` and `<prefix><id>-dlq` (SSE, 14 days, redrive) with a
//! queue policy that admits exactly the install's agent role, and only to receive, delete and
//! change visibility ([`install_queue_policy`]). Reports need no per-customer change to the
//! vendor stack: every report is signed with the install's registered report key and bound to
//! one attempt, so the report queue admits agent roles by name pattern (template.yaml).
//!
//! This module must never read, store or print a secret: it handles public keys, role ARNs and
//! queue URLs only.

use std::collections::{BTreeMap, HashMap};

use aws_config::SdkConfig;
use aws_sdk_sqs::types::MessageSystemAttributeName;
pub use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::json;

use ferry_core::domain::{Build, Component, Install, LineageRecord, RegistryTarget, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, QueueName};
use ferry_core::manage::{
    self, AppRecord, BuildFilter, DeadLetter, InstallRegistration, InstallStatus, Listing,
    ManageError, Management, Registration, RegistrationOutcome, Removal, SyncFilter,
    MAX_DEAD_LETTERS,
};
use ferry_core::ports::{JobStore as _, Queue as _, QueueError};
use ferry_core::release_port::ReleaseDesk;

use crate::error::describe;

/// SDK types that tests of the management commands name (callers never depend on the SDK).
pub use aws_sdk_eventbridge::types::Target;

use crate::{DynamoStore, EventBridgeBus, SqsQueue};

/// Receives an install queue allows before SQS dead-letters a message: above the agent's own
/// retry limit (5), so the agent reports a failing job itself first.
pub const INSTALL_QUEUE_MAX_RECEIVES: u32 = 10;
/// The install queue's visibility timeout (the agent extends it while it copies).
pub const INSTALL_QUEUE_VISIBILITY_SECONDS: u32 = 60;
/// 14 days: the longest SQS keeps a message, so a job or a dead letter waits for a human.
pub const RETENTION_SECONDS: u32 = 1_209_600;
/// The only actions an install's agent role gets on its queue.
pub const AGENT_QUEUE_ACTIONS: [&str; 3] = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
];
/// The IMS queues of the vendor stack (`<name prefix>-<queue>`), each with a `-dlq`.
pub const IMS_QUEUES: [&str; 4] = [
    "build-requested",
    "build-completed",
    "sync-requested",
    "sync-reported",
];

/// What the management port needs to know about one deployed vendor stack (its outputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSettings {
    /// `JobTableName`.
    pub table: String,
    /// `EventBusName`.
    pub bus: String,
    /// `InstallQueuePrefix` (`<NamePrefix>-install-`).
    pub install_queue_prefix: String,
    /// `ReportQueueUrl`: agents send sync.reported there.
    pub report_queue_url: String,
    /// `VendorRegistry`: the only registry agents pull from.
    pub vendor_registry: String,
    /// The vendor's job-signing public key (`ferry-vendor-ed25519:…`), when known: agents pin it.
    pub vendor_public_key: Option<String>,
}

impl StackSettings {
    /// The stack's `NamePrefix` with its dash (`ferry-`), from the install queue prefix.
    fn name_prefix(&self) -> &str {
        self.install_queue_prefix
            .strip_suffix("install-")
            .unwrap_or(&self.install_queue_prefix)
    }
}

/// The queue policy of an install queue: exactly `agent_role_arn` may receive, delete and
/// change visibility; nothing over plain HTTP. The vendor's own functions send through their
/// IAM policies (same account), so the queue policy names no one else.
pub fn install_queue_policy(queue_arn: &str, agent_role_arn: &str) -> serde_json::Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "InstallAgentReceives",
                "Effect": "Allow",
                "Principal": { "AWS": agent_role_arn },
                "Action": AGENT_QUEUE_ACTIONS,
                "Resource": queue_arn,
            },
            {
                "Sid": "TlsOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:*",
                "Resource": queue_arn,
                "Condition": { "Bool": { "aws:SecureTransport": "false" } },
            }
        ]
    })
}

/// Checks an IAM role ARN (`arn:<partition>:iam::<12 digits>:role/<path/name>`).
pub fn check_role_arn(arn: &str) -> Result<(), ManageError> {
    let bad = || {
        ManageError::Invalid(format!(
            "--agent-role-arn {arn:?} is not an IAM role ARN (want arn:aws:iam::<account>:role/<name>, the customer stack's AgentRoleArn output)"
        ))
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6
        || parts[0] != "arn"
        || !parts[1].starts_with("aws")
        || parts[2] != "iam"
        || !parts[3].is_empty()
        || parts[4].len() != 12
        || !parts[4].bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let name = parts[5].strip_prefix("role/").ok_or_else(bad)?;
    if name.is_empty()
        || name.len() > 512
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
    {
        return Err(bad());
    }
    Ok(())
}

fn queue_err(e: QueueError) -> ManageError {
    match e {
        QueueError::NoSuchQueue { queue } => ManageError::NotFound {
            what: "queue",
            name: queue.to_string(),
            known: Vec::new(),
            hint: "see `ferry dlq list`".into(),
        },
        other => ManageError::Backend(other.to_string()),
    }
}

fn sqs_err(op: &str, f: crate::error::Failure) -> ManageError {
    ManageError::Backend(format!("{op}: {}", f.message))
}

/// The AWS backend of the management port.
#[derive(Clone, Debug)]
pub struct AwsManagement {
    store: DynamoStore,
    queue: SqsQueue,
    bus: EventBridgeBus,
    settings: StackSettings,
}

impl AwsManagement {
    /// Over the stack described by `settings`, with the credentials and region of `config`.
    pub fn new(config: &SdkConfig, settings: StackSettings) -> AwsManagement {
        AwsManagement {
            store: DynamoStore::new(config, settings.table.clone()),
            queue: SqsQueue::new(config),
            bus: EventBridgeBus::new(config, settings.bus.clone()),
            settings,
        }
    }

    /// The job store (`ferry install show` reads the install's release targets from it).
    pub fn store(&self) -> &DynamoStore {
        &self.store
    }

    /// The release queue: `<NamePrefix>-release` (template.yaml's `ReleaseQueue`), its URL
    /// looked up by name (GetQueueUrl) on first use.
    pub fn release_queue(&self) -> Result<QueueName, ManageError> {
        let name = self.physical("release");
        QueueName::new(name.as_str())
            .map_err(|e| ManageError::Invalid(format!("release queue {name}: {e}")))
    }

    /// The release port over this stack (`ferry release …`): releases and targets in the job
    /// table, step timers on the release queue, which the stack's release function drains.
    pub fn release_desk(
        &self,
    ) -> Result<ReleaseDesk<DynamoStore, SqsQueue, ferry_clock::SystemClock>, ManageError> {
        Ok(ReleaseDesk {
            store: self.store.clone(),
            queue: self.queue.clone(),
            clock: ferry_clock::SystemClock,
            release_queue: self.release_queue()?,
            max_write_tries: ferry_core::Config::default().max_write_tries,
        })
    }

    /// The queues (for tests).
    pub fn queue(&self) -> &SqsQueue {
        &self.queue
    }

    fn install_queue_name(&self, id: &InstallId) -> Result<QueueName, ManageError> {
        let name = format!("{}{id}", self.settings.install_queue_prefix);
        // SQS: 80 characters, and `-dlq` must still fit.
        if name.len() + 4 > 80 {
            return Err(ManageError::Invalid(format!(
                "install id {id} is too long: its queue name {name}-dlq would exceed SQS's 80 characters"
            )));
        }
        QueueName::new(name).map_err(|e| ManageError::Invalid(format!("install id {id}: {e}")))
    }

    /// The queue name behind a `dlq` argument: an install queue (`install-<id>`), an IMS
    /// queue (`build-requested`, ...), or a full queue name.
    fn physical(&self, queue: &str) -> String {
        let prefix = self.settings.name_prefix();
        if queue.starts_with(prefix) {
            queue.to_string()
        } else {
            format!("{prefix}{queue}")
        }
    }

    async fn require_app(&self, app: &AppName) -> Result<AppRecord, ManageError> {
        match self.store.get_app(app).await? {
            Some(a) => Ok(a),
            None => Err(manage::unknown_app(app, &self.store.apps().await?)),
        }
    }

    async fn attributes(
        &self,
        url: &str,
        names: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, String>, ManageError> {
        let out = self
            .queue
            .client()
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| {
                sqs_err(
                    "SQS GetQueueAttributes",
                    describe("SQS", "GetQueueAttributes", &e),
                )
            })?;
        Ok(out.attributes.unwrap_or_default())
    }

    /// Creates the queue if it is missing (CreateQueue refuses different attributes on an
    /// existing queue), then sets `attributes` on it: re-running converges, never duplicates.
    async fn ensure_queue(
        &self,
        name: &QueueName,
        attributes: HashMap<QueueAttributeName, String>,
    ) -> Result<String, ManageError> {
        let url = match self.queue.url(name).await {
            Ok(u) => u,
            Err(QueueError::NoSuchQueue { .. }) => self
                .queue
                .create_queue(name, attributes.clone())
                .await
                .map_err(queue_err)?,
            Err(e) => return Err(queue_err(e)),
        };
        self.queue
            .client()
            .set_queue_attributes()
            .queue_url(&url)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| {
                sqs_err(
                    "SQS SetQueueAttributes",
                    describe("SQS", "SetQueueAttributes", &e),
                )
            })?;
        Ok(url)
    }

    async fn queue_arn(&self, url: &str) -> Result<String, ManageError> {
        self.attributes(url, &[QueueAttributeName::QueueArn])
            .await?
            .remove(&QueueAttributeName::QueueArn)
            .ok_or_else(|| ManageError::Backend("SQS did not return a queue ARN".into()))
    }

    /// Creates or converges an install's queue and DLQ; returns the queue's URL.
    async fn ensure_install_queue(
        &self,
        name: &QueueName,
        agent_role_arn: &str,
    ) -> Result<String, ManageError> {
        let dlq = QueueName::new(format!("{name}-dlq"))
            .map_err(|e| ManageError::Invalid(e.to_string()))?;
        let sse = (QueueAttributeName::SqsManagedSseEnabled, "true".to_string());
        let retention = (
            QueueAttributeName::MessageRetentionPeriod,
            RETENTION_SECONDS.to_string(),
        );
        let dlq_url = self
            .ensure_queue(&dlq, HashMap::from([sse.clone(), retention.clone()]))
            .await?;
        let dlq_arn = self.queue_arn(&dlq_url).await?;
        let redrive = json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": INSTALL_QUEUE_MAX_RECEIVES,
        })
        .to_string();
        let base = HashMap::from([
            sse,
            retention,
            (QueueAttributeName::RedrivePolicy, redrive),
            (
                QueueAttributeName::VisibilityTimeout,
                INSTALL_QUEUE_VISIBILITY_SECONDS.to_string(),
            ),
        ]);
        let url = self.ensure_queue(name, base).await?;
        // The policy names the queue's own ARN, known only once it exists.
        let arn = self.queue_arn(&url).await?;
        let policy = install_queue_policy(&arn, agent_role_arn).to_string();
        self.ensure_queue(name, HashMap::from([(QueueAttributeName::Policy, policy)]))
            .await
    }

    /// The install queue's policy document as SQS holds it (for `install show` and tests).
    pub async fn install_queue_policy_of(
        &self,
        id: &InstallId,
    ) -> Result<Option<serde_json::Value>, ManageError> {
        let name = self.install_queue_name(id)?;
        let url = self.queue.url(&name).await.map_err(queue_err)?;
        let policy = self
            .attributes(&url, &[QueueAttributeName::Policy])
            .await?
            .remove(&QueueAttributeName::Policy);
        policy
            .map(|p| {
                serde_json::from_str(&p)
                    .map_err(|e| ManageError::Backend(format!("queue policy does not parse: {e}")))
            })
            .transpose()
    }

    async fn require_dlq(&self, queue: &str) -> Result<(QueueName, QueueName), ManageError> {
        let known = self.dead_letter_queues().await?;
        if !known.iter().any(|q| q == queue) {
            return Err(ManageError::NotFound {
                what: "queue",
                name: queue.to_string(),
                known,
                hint: "give a queue that has a dead-letter queue".into(),
            });
        }
        let main = QueueName::new(self.physical(queue))
            .map_err(|e| ManageError::Invalid(e.to_string()))?;
        let dlq = QueueName::new(format!("{main}-dlq"))
            .map_err(|e| ManageError::Invalid(e.to_string()))?;
        Ok((main, dlq))
    }

    /// Receives up to [`MAX_DEAD_LETTERS`] distinct messages from `dlq`, hidden for
    /// `visibility` seconds.
    async fn peek(
        &self,
        dlq: &QueueName,
        visibility: i32,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>, ManageError> {
        let url = self.queue.url(dlq).await.map_err(queue_err)?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        while out.len() < MAX_DEAD_LETTERS {
            let got = self
                .queue
                .client()
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .visibility_timeout(visibility)
                .wait_time_seconds(0)
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .send()
                .await
                .map_err(|e| {
                    sqs_err("SQS ReceiveMessage", describe("SQS", "ReceiveMessage", &e))
                })?;
            let msgs = got.messages.unwrap_or_default();
            if msgs.is_empty() {
                break;
            }
            for m in msgs {
                if let Some(id) = m.message_id.clone() {
                    if seen.insert(id) {
                        out.push(m);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Management for AwsManagement {
    fn backend(&self) -> &'static str {
        "aws"
    }

    async fn put_app(&self, app: &AppRecord) -> Result<(), ManageError> {
        Ok(self.store.put_app(app).await?)
    }

    async fn list_apps(&self) -> Result<Vec<AppRecord>, ManageError> {
        Ok(self.store.apps().await?)
    }

    async fn put_component(
        &self,
        component: &Component,
        subscribe_all: bool,
    ) -> Result<Vec<InstallId>, ManageError> {
        self.require_app(&component.app).await?;
        self.store.put_component(component).await?;
        if !subscribe_all {
            return Ok(Vec::new());
        }
        let (changed, subscribed) = manage::subscribe_all(self.store.installs().await?, component);
        for i in &changed {
            self.store.put_install(i).await?;
        }
        Ok(subscribed)
    }

    async fn list_components(&self, app: Option<&AppName>) -> Result<Vec<Component>, ManageError> {
        let mut all = self.store.components().await?;
        if let Some(a) = app {
            all.retain(|c| &c.app == a);
        }
        Ok(all)
    }

    async fn register_install(&self, r: &InstallRegistration) -> Result<Registration, ManageError> {
        let role = r.agent_role_arn.as_deref().ok_or_else(|| {
            ManageError::Invalid(
                "an AWS install needs --agent-role-arn (the customer stack's AgentRoleArn output): only that role may read its queue"
                    .into(),
            )
        })?;
        check_role_arn(role)?;
        let queue_name = self.install_queue_name(&r.id)?;
        self.require_app(&r.app).await?;
        let components =
            manage::resolve_components(&r.app, &r.components, &self.store.components().await?)?;
        manage::check_agent_keys(r)?;
        let previous = self.store.get_install(&r.id).await?;
        let registry = match (&r.registry, &previous) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) => p.registry.clone(),
            (None, None) => {
                return Err(ManageError::Invalid(
                    "an AWS install needs --registry HOST[/NAMESPACE] (the customer's ECR registry, the customer stack's RegistryHost output)"
                        .into(),
                ))
            }
        };
        let url = self.ensure_install_queue(&queue_name, role).await?;
        let install = Install {
            id: r.id.clone(),
            app: r.app.clone(),
            registry: RegistryTarget {
                endpoint: registry.endpoint.clone(),
                namespace: registry.namespace.clone(),
            },
            agent_public_key: r.agent_public_key.clone(),
            agent_report_key: r.agent_report_key.clone(),
            queue: queue_name,
            components,
        };
        // The role lives in the queue policy, not the record: compare the policy too, so a
        // changed role is an update.
        let mut outcome = manage::outcome(previous.as_ref(), &install);
        if outcome == RegistrationOutcome::Unchanged {
            let policy = self.install_queue_policy_of(&r.id).await?;
            let role_now = policy.as_ref().and_then(|p| {
                p["Statement"][0]["Principal"]["AWS"]
                    .as_str()
                    .map(str::to_owned)
            });
            if role_now.as_deref() != Some(role) {
                outcome = RegistrationOutcome::Updated;
            }
        }
        if outcome != RegistrationOutcome::Unchanged {
            self.store.put_install(&install).await?;
        }
        let mut agent_settings = BTreeMap::new();
        agent_settings.insert("install".into(), r.id.to_string());
        agent_settings.insert("queue".into(), url);
        agent_settings.insert(
            "report-queue".into(),
            self.settings.report_queue_url.clone(),
        );
        agent_settings.insert(
            "vendor-registry".into(),
            self.settings.vendor_registry.clone(),
        );
        if let Some(k) = &self.settings.vendor_public_key {
            agent_settings.insert("vendor-public-key".into(), k.clone());
        }
        agent_settings.insert("install-registry".into(), registry.endpoint);
        agent_settings.insert("install-namespace".into(), registry.namespace);
        Ok(Registration {
            install,
            outcome,
            agent_settings,
        })
    }

    async fn list_installs(&self) -> Result<Vec<Install>, ManageError> {
        Ok(self.store.installs().await?)
    }

    async fn install_status(&self, id: &InstallId) -> Result<InstallStatus, ManageError> {
        let Some(install) = self.store.get_install(id).await? else {
            return Err(manage::unknown_install(id, &self.store.installs().await?));
        };
        manage::install_status_via(&self.store, install).await
    }

    async fn remove_install(&self, id: &InstallId) -> Result<Removal, ManageError> {
        let Some(install) = self.store.get_install(id).await? else {
            return Err(manage::unknown_install(id, &self.store.installs().await?));
        };
        // Subscriptions and record first: nothing fans out to the queue once they are gone.
        self.store.delete_install(id).await?;
        for name in [install.queue.to_string(), format!("{}-dlq", install.queue)] {
            let q = QueueName::new(name).map_err(|e| ManageError::Invalid(e.to_string()))?;
            let url = match self.queue.url(&q).await {
                Ok(u) => u,
                Err(QueueError::NoSuchQueue { .. }) => continue,
                Err(e) => return Err(queue_err(e)),
            };
            self.queue
                .client()
                .delete_queue()
                .queue_url(url)
                .send()
                .await
                .map_err(|e| sqs_err("SQS DeleteQueue", describe("SQS", "DeleteQueue", &e)))?;
        }
        Ok(Removal {
            install: id.clone(),
            queue_deleted: install.queue.to_string(),
            lineage_kept: true,
        })
    }

    async fn request_build(
        &self,
        app: &AppName,
        component: &ComponentName,
        source_ref: &str,
        requested_by: &str,
    ) -> Result<BuildId, ManageError> {
        if self.store.get_component(app, component).await?.is_none() {
            return Err(manage::unknown_component(
                app,
                component,
                &self.store.components().await?,
            ));
        }
        ferry_core::handlers::request_build(
            &self.bus,
            &ferry_clock::RandomIds,
            app.clone(),
            component.clone(),
            source_ref.to_string(),
            requested_by.to_string(),
        )
        .await
        .map_err(|e| ManageError::Backend(format!("publishing build.requested: {e}")))
    }

    async fn list_builds(&self, filter: &BuildFilter) -> Result<Listing<Build>, ManageError> {
        let comps = self.store.components().await?;
        manage::list_builds_via(&self.store, &comps, filter).await
    }

    async fn list_syncs(&self, filter: &SyncFilter) -> Result<Listing<SyncJob>, ManageError> {
        let installs: Vec<InstallId> = self
            .store
            .installs()
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect();
        manage::list_syncs_via(&self.store, &installs, filter).await
    }

    async fn lineage(&self, digest: &Digest) -> Result<Vec<LineageRecord>, ManageError> {
        manage::lineage_via(&self.store, digest).await
    }

    async fn dead_letter_queues(&self) -> Result<Vec<String>, ManageError> {
        let mut out: Vec<String> = IMS_QUEUES.iter().map(|q| (*q).to_string()).collect();
        for i in self.store.installs().await? {
            out.push(format!("install-{}", i.id));
        }
        out.sort();
        Ok(out)
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>, ManageError> {
        let (_, dlq) = self.require_dlq(queue).await?;
        // Hidden briefly while read, then made visible again: listing consumes nothing.
        let msgs = self.peek(&dlq, 30).await?;
        let url = self.queue.url(&dlq).await.map_err(queue_err)?;
        let mut out = Vec::new();
        for m in &msgs {
            let receives = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|n| n.parse::<u32>().ok())
                // This listing's receive is one of them.
                .map(|n| n.saturating_sub(1));
            out.push(
                manage::describe_dead_letter(
                    &self.store,
                    m.message_id.clone().unwrap_or_default(),
                    m.body.as_deref().unwrap_or_default(),
                    receives,
                )
                .await?,
            );
            if let Some(h) = &m.receipt_handle {
                let _ = self
                    .queue
                    .client()
                    .change_message_visibility()
                    .queue_url(&url)
                    .receipt_handle(h)
                    .visibility_timeout(0)
                    .send()
                    .await;
            }
        }
        Ok(out)
    }

    async fn redrive(&self, queue: &str) -> Result<usize, ManageError> {
        let (main, dlq) = self.require_dlq(queue).await?;
        let msgs = self.peek(&dlq, 60).await?;
        let dlq_url = self.queue.url(&dlq).await.map_err(queue_err)?;
        let mut moved = 0;
        for m in msgs {
            let (Some(body), Some(handle)) = (m.body, m.receipt_handle) else {
                continue;
            };
            // Send first, then delete: a crash in between duplicates (handlers are
            // idempotent), never loses.
            self.queue.send(&main, &body).await.map_err(queue_err)?;
            self.queue
                .client()
                .delete_message()
                .queue_url(&dlq_url)
                .receipt_handle(handle)
                .send()
                .await
                .map_err(|e| sqs_err("SQS DeleteMessage", describe("SQS", "DeleteMessage", &e)))?;
            moved += 1;
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_queue_admits_exactly_its_agent_role_to_receive() {
        let arn = "arn:aws:sqs:eu-west-1:123456789012:ferry-install-acme";
        let role = "arn:aws:iam::210987654321:role/ferry-agent-acme";
        let p = install_queue_policy(arn, role);
        let statements = p["Statement"].as_array().unwrap();
        let allows: Vec<&serde_json::Value> = statements
            .iter()
            .filter(|s| s["Effect"] == "Allow")
            .collect();
        assert_eq!(allows.len(), 1, "one allow: {p}");
        assert_eq!(allows[0]["Principal"], json!({ "AWS": role }));
        assert_eq!(allows[0]["Resource"], arn);
        assert_eq!(
            allows[0]["Action"],
            json!([
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility"
            ]),
            "no send, no purge, no attribute changes"
        );
        let deny = statements.iter().find(|s| s["Effect"] == "Deny").unwrap();
        assert_eq!(
            deny["Condition"]["Bool"]["aws:SecureTransport"], "false",
            "TLS only"
        );
    }

    #[test]
    fn role_arns_are_checked() {
        assert!(check_role_arn("arn:aws:iam::210987654321:role/ferry-agent-acme").is_ok());
        assert!(check_role_arn("arn:aws-us-gov:iam::210987654321:role/path/ferry-agent").is_ok());
        for bad in [
            "",
            "*",
            "arn:aws:iam::*:role/ferry-agent-acme",
            "arn:aws:iam::210987654321:user/alice",
            "arn:aws:iam::21098765432:role/x",
            "arn:aws:sts::210987654321:assumed-role/x/y",
            "arn:aws:iam::210987654321:role/",
            "arn:aws:iam::210987654321:role/a b",
        ] {
            let e = check_role_arn(bad).unwrap_err();
            assert!(e.to_string().contains("--agent-role-arn"), "{bad}: {e}");
        }
    }
}
