//! The agent loop: receive a job, open its grant, copy, verify, report, then delete.
//!
//! Queue discipline (SQS semantics): a message is deleted only after its report was sent; a
//! running job's visibility is extended by a heartbeat; a malformed message is left alone so
//! the queue redrives it to its dead-letter queue; on shutdown the in-flight job gets a grace
//! period and is otherwise released (visibility 0) for the next attempt. A crash leaves the
//! message to reappear after its visibility timeout, and the copy engine then skips the blobs
//! already present and writes the tag only at the very end.
//!
//! Trust: a job is acted on only if the vendor key the agent pins signed it, and the agent
//! pulls only from its configured vendor registry, never from a host a message or grant names;
//! an unsigned or forged job is left for the dead-letter queue with nothing fetched or written.
//! Every report is signed with the agent's report key.
//!
//! This module must never log a message body, a clear grant or the identity secret.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_core::domain::{KeyRequirement, VerifyPolicy};
use ferry_core::event::{
    parse_sync_job, Event, InstallHeartbeat, Payload, SyncJobMessage, SyncReportStatus,
    SyncReported, MAX_HEALTH_TEXT,
};
use ferry_core::ports::{Queue, QueueError, ReceivedMessage};
use ferry_core::seal::{AgentKeypair, ClearGrant, GrantScheme};
use ferry_core::trust::{verify_job, ReportKey};
use ferry_oci::{
    cosign, ClientConfig, CopyEngine, CopyOptions, CopyReport, Credential, CredentialStore, Digest,
    ProgressEvent, ProgressSink, Reference, RegistryClient, RegistryRef, RepoRef, Secret,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::access::{InstallAccess, StaticIdentity};
use crate::config::AgentConfig;
use crate::report::Reporter;

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the job queue failed: {0}")]
    Queue(#[from] QueueError),
}

/// What happens to a message once its job is done with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Reported: delete it.
    Delete,
    /// Not ours to judge (malformed, another install's): leave it hidden so the queue
    /// redrives it to the DLQ after N receives.
    Leave,
    /// Try again after this many seconds (a transient failure, or the report was not sent).
    RetryAfter(u32),
    /// Make it visible at once for another attempt (shutdown cut the job short).
    Release,
}

/// Why a copy did not succeed, as the report needs it.
enum CopyFailure {
    /// The registry refused the grant (expired or revoked): the IMS re-mints.
    GrantRefused(String),
    Transient(String),
    Failed(String),
    /// The artifact did not meet the job's verification policy; nothing was written.
    PolicyFailed(String),
}

/// What the next install heartbeat says (agent clock, unix ms).
#[derive(Debug, Default)]
struct Telemetry {
    last_sent: Option<u64>,
    last_poll: Option<u64>,
    last_sync: Option<u64>,
    health: String,
}

/// The agent's version, as heartbeats report it.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct Agent<Q, R> {
    telemetry: std::sync::Mutex<Telemetry>,
    config: AgentConfig,
    queue: Arc<Q>,
    reporter: Arc<R>,
    keypair: Arc<AgentKeypair>,
    report_key: Arc<ReportKey>,
    access: Arc<dyn InstallAccess>,
    clock: Clock,
}

fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl<Q, R> Agent<Q, R>
where
    Q: Queue + 'static,
    R: Reporter + 'static,
{
    pub fn new(
        config: AgentConfig,
        queue: Arc<Q>,
        reporter: Arc<R>,
        keypair: AgentKeypair,
    ) -> Self {
        let access = Arc::new(StaticIdentity {
            username: config.identity(),
            password: config.identity_secret.clone(),
        });
        Agent {
            telemetry: std::sync::Mutex::new(Telemetry::default()),
            config,
            queue,
            reporter,
            report_key: Arc::new(keypair.report_key()),
            keypair: Arc::new(keypair),
            access,
            clock: Arc::new(system_now_ms),
        }
    }

    /// Replaces how the agent writes its install registry (by default the config's
    /// `agent:<install>` identity); AWS mode pushes with the agent role's ECR login.
    pub fn with_install_access(mut self, access: Arc<dyn InstallAccess>) -> Self {
        self.access = access;
        self
    }

    /// Replaces the clock (unix ms) used for grant expiry; for tests.
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Serves until `shutdown` is cancelled. Queue trouble is logged and retried, never fatal.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), AgentError> {
        tracing::info!(install = %self.config.install_id, queue = %self.config.queue, "agent started");
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let received = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = self.queue.receive(&self.config.queue, &self.config.receive) => r,
            };
            self.polled(received.as_ref().err());
            self.heartbeat_if_due().await;
            match received {
                Ok(messages) if messages.is_empty() => {
                    // A queue that does not long-poll answers at once: do not spin.
                    let waited = started.elapsed();
                    if waited < Duration::from_secs(u64::from(self.config.receive.wait_seconds())) {
                        pause(&shutdown, self.config.idle_backoff).await;
                    }
                }
                Ok(messages) => self.handle_batch(messages, &shutdown).await,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed; retrying");
                    pause(&shutdown, Duration::from_secs(2)).await;
                }
            }
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// Receives once (one long poll) and handles what came; returns how many messages.
    pub async fn poll_once(&self, shutdown: &CancellationToken) -> Result<usize, AgentError> {
        let received = self
            .queue
            .receive(&self.config.queue, &self.config.receive)
            .await;
        self.polled(received.as_ref().err());
        self.heartbeat_if_due().await;
        let messages = received?;
        let n = messages.len();
        self.handle_batch(messages, shutdown).await;
        Ok(n)
    }

    fn telemetry(&self) -> std::sync::MutexGuard<'_, Telemetry> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.telemetry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a poll of the job queue and whether it worked (the heartbeat's health line).
    fn polled(&self, error: Option<&QueueError>) {
        if self.config.telemetry_every.is_none() {
            // No heartbeats, so nothing reads it (and the clock is left to grant expiry).
            return;
        }
        let now = (self.clock)();
        let mut t = self.telemetry();
        t.last_poll = Some(now);
        t.health = match error {
            None => "ok".to_string(),
            Some(e) => format!("receiving jobs failed: {e}"),
        };
    }

    /// Sends an install heartbeat if none was sent within `telemetry_every`; returns whether
    /// one was sent. A failed send is logged and tried again after the next poll.
    pub async fn heartbeat_if_due(&self) -> bool {
        let Some(every) = self.config.telemetry_every else {
            return false;
        };
        let now = (self.clock)();
        let mut heartbeat = {
            let t = self.telemetry();
            let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
            if t.last_sent
                .is_some_and(|sent| now.saturating_sub(sent) < every_ms)
            {
                return false;
            }
            InstallHeartbeat {
                install_id: self.config.install_id.clone(),
                agent_version: AGENT_VERSION.to_string(),
                last_poll_at: t.last_poll,
                last_sync_at: t.last_sync,
                health: t.health.chars().take(MAX_HEALTH_TEXT).collect(),
                sent_at: now,
                signature: String::new(),
            }
        };
        self.report_key.sign_heartbeat(&mut heartbeat);
        let event = Event::new(Payload::InstallHeartbeat(heartbeat));
        match self.reporter.report(&event).await {
            Ok(()) => {
                self.telemetry().last_sent = Some(now);
                tracing::debug!("heartbeat sent");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat not sent; retried after the next poll");
                false
            }
        }
    }

    async fn handle_batch(&self, messages: Vec<ReceivedMessage>, shutdown: &CancellationToken) {
        let mut rest = messages.into_iter();
        while let Some(m) = rest.next() {
            if shutdown.is_cancelled() {
                // Not started: hand it straight back, with the rest.
                for m in std::iter::once(m).chain(rest.by_ref()) {
                    self.dispose(&m, Disposition::Release).await;
                }
                break;
            }
            self.handle_one(m, shutdown).await;
        }
    }

    async fn handle_one(&self, m: ReceivedMessage, shutdown: &CancellationToken) {
        let span = tracing::info_span!(
            "job",
            message_id = %m.message_id.0,
            sync_id = tracing::field::Empty,
            receive_count = m.receive_count
        );
        async {
            let stop = CancellationToken::new();
            let heartbeat = tokio::spawn(
                heartbeat(
                    self.queue.clone(),
                    self.config.clone(),
                    m.receipt_handle.clone(),
                    stop.clone(),
                )
                .in_current_span(),
            );
            let work = self.work(&m);
            tokio::pin!(work);
            let disposition = tokio::select! {
                d = &mut work => d,
                _ = shutdown.cancelled() => {
                    let grace = self.config.shutdown_grace;
                    tracing::info!(grace_ms = grace.as_millis() as u64, "shutdown asked; letting the job finish");
                    match tokio::time::timeout(grace, &mut work).await {
                        Ok(d) => d,
                        Err(_) => {
                            tracing::warn!("job did not finish within the grace period; releasing it");
                            Disposition::Release
                        }
                    }
                }
            };
            stop.cancel();
            let _ = heartbeat.await;
            self.dispose(&m, disposition).await;
        }
        .instrument(span)
        .await
    }

    async fn dispose(&self, m: &ReceivedMessage, d: Disposition) {
        let q = &self.config.queue;
        let r = match d {
            Disposition::Delete => self.queue.delete(q, &m.receipt_handle).await,
            Disposition::Leave => Ok(()),
            Disposition::RetryAfter(s) => {
                self.queue.change_visibility(q, &m.receipt_handle, s).await
            }
            Disposition::Release => self.queue.change_visibility(q, &m.receipt_handle, 0).await,
        };
        match r {
            Ok(()) => {
                tracing::debug!(message_id = %m.message_id.0, disposition = ?d, "message disposed")
            }
            Err(e) => tracing::warn!(message_id = %m.message_id.0, disposition = ?d, error = %e,
                "could not dispose of the message; it reappears after its visibility timeout"),
        }
    }

    /// One job, start to report. Never fails: every outcome is a disposition.
    async fn work(&self, m: &ReceivedMessage) -> Disposition {
        let msg = match parse_sync_job(m.body.as_bytes()) {
            Ok(msg) => msg,
            Err(e) => {
                // The body is not logged: it may be anything, of any size.
                tracing::warn!(error = %e, "malformed job message; left for redrive to the dead-letter queue");
                return Disposition::Leave;
            }
        };
        tracing::Span::current().record("sync_id", msg.sync_id.as_str());
        if let Err(e) = verify_job(&self.config.vendor.public_key, &msg) {
            // Nothing is opened, fetched or written for a job the vendor did not sign.
            tracing::warn!(security_event = "job_unauthenticated", error = %e,
                "job refused: not signed by this agent's vendor; left for redrive to the dead-letter queue");
            return Disposition::Leave;
        }
        if msg.install_id != self.config.install_id {
            tracing::warn!(job_install = %msg.install_id, "job is for another install; left for redrive");
            return Disposition::Leave;
        }
        let started = Instant::now();
        let outcome = self.sync(&msg, m.receive_count).await;
        let (status, copy, error) = match outcome {
            Ok(report) => (SyncReportStatus::Succeeded, Some(report), None),
            Err(CopyFailure::GrantRefused(why)) => {
                (SyncReportStatus::GrantExpired, None, Some(why))
            }
            Err(CopyFailure::Transient(why)) => {
                tracing::warn!(error = %why, "transient failure; the job is retried on redelivery");
                return Disposition::RetryAfter(10);
            }
            Err(CopyFailure::Failed(why)) => (SyncReportStatus::Failed, None, Some(why)),
            Err(CopyFailure::PolicyFailed(why)) => {
                tracing::warn!(security_event = "policy_failed", error = %why,
                    "the artifact failed its verification policy; nothing was written");
                (SyncReportStatus::PolicyFailed, None, Some(why))
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let mut report = SyncReported {
            sync_id: msg.sync_id.clone(),
            install_id: msg.install_id.clone(),
            status,
            digest: msg.digest.clone(),
            bytes_copied: copy.as_ref().map_or(0, |r| r.bytes_copied),
            bytes_skipped: copy.as_ref().map_or(0, |r| r.bytes_skipped),
            duration_ms,
            error: error.clone(),
            attempt: msg.attempt,
            signature: String::new(),
        };
        // The IMS keys the report by the authenticated (sync, attempt, status) it carries.
        self.report_key.sign(&mut report);
        let event = Event::new(Payload::SyncReported(report));
        if let Err(e) = self.reporter.report(&event).await {
            tracing::warn!(error = %e, "report not sent; the job is retried on redelivery");
            return Disposition::RetryAfter(5);
        }
        self.telemetry().last_sync = Some((self.clock)());
        tracing::info!(status = ?status, error = error.as_deref().unwrap_or(""), duration_ms,
            bytes_copied = copy.as_ref().map_or(0, |r| r.bytes_copied),
            bytes_skipped = copy.as_ref().map_or(0, |r| r.bytes_skipped), "sync reported");
        Disposition::Delete
    }

    /// Opens the grant, copies and verifies.
    async fn sync(
        &self,
        msg: &SyncJobMessage,
        receive_count: u32,
    ) -> Result<CopyReport, CopyFailure> {
        let grant = self.open_grant(msg)?;
        // One Digest type from the job message to the copy engine (ferry-spec's): no re-parse.
        let digest: Digest = msg.digest.clone();
        // Always the configured vendor registry: a grant's `registry` is informational only.
        let src_registry = self.config.vendor.registry.clone();
        let dst_repo = self
            .config
            .destination_repository(&msg.repository)
            .map_err(|e| CopyFailure::Failed(e.to_string()))?;
        let credentials = self
            .credentials(grant, &src_registry, &dst_repo, receive_count)
            .await?;
        let client = RegistryClient::new(ClientConfig {
            credentials,
            ..ClientConfig::default()
        })
        .map_err(|e| CopyFailure::Failed(e.to_string()))?;
        let source = Reference::Registry(RegistryRef {
            repo: RepoRef::new(src_registry.clone(), msg.repository.as_str()),
            tag: None,
            digest: Some(digest.clone()),
        });
        let src_repo = RepoRef::new(src_registry.clone(), msg.repository.as_str());
        // Verified before anything is written into the install: a failure leaves it untouched.
        if let Some(policy) = &msg.verify {
            self.verify_policy(&client, &src_repo, msg, policy, receive_count)
                .await?;
        }
        let dst_ref = RepoRef::new(self.config.install_registry.clone(), dst_repo);
        let destination = Reference::Registry(RegistryRef {
            repo: dst_ref.clone(),
            tag: self
                .config
                .tag_with_digest
                .then(|| digest.as_str().replacen(':', "-", 1)),
            digest: None,
        });
        tracing::info!(source = %source, destination = %destination, "copy started");
        let engine = CopyEngine::new(client.clone(), CopyOptions::default());
        let report = engine
            .copy(&source, &[destination], Arc::new(LogProgress))
            .await
            .map_err(|e| {
                classify(
                    e,
                    &src_registry,
                    msg,
                    receive_count,
                    self.config.max_receives,
                )
            })?;
        self.verify(&client, &dst_ref, &digest, &report, receive_count)
            .await?;
        self.copy_attachments(&client, &source, &src_repo, &dst_ref, msg, receive_count)
            .await?;
        self.write_values_override(&client, &dst_ref, &digest, receive_count)
            .await?;
        self.apply_retention(&client, &dst_ref).await;
        Ok(report)
    }

    /// A chart bundle gets its values override next to it, before the sync is reported.
    async fn write_values_override(
        &self,
        client: &RegistryClient,
        dst_ref: &RepoRef,
        digest: &Digest,
        receive_count: u32,
    ) -> Result<(), CopyFailure> {
        match ferry_oci::chart_bundle::write_values_override(client, dst_ref, digest).await {
            Ok(Some(w)) => tracing::info!(chart = %w.chart, values = %w.manifest,
                images = w.images, "values override written"),
            Ok(None) => {}
            Err(e) => {
                return Err(transient_or_failed(
                    e,
                    receive_count,
                    self.config.max_receives,
                ))
            }
        }
        Ok(())
    }

    /// Applies the configured retention to the destination repository, if any. The sync has
    /// succeeded whatever retention does: a failure is logged, and the next successful sync of
    /// the repository applies retention again.
    async fn apply_retention(&self, client: &RegistryClient, dst_ref: &RepoRef) {
        if let Some(keep_last) = self.config.keep_last {
            match client.apply_retention(dst_ref, keep_last).await {
                Ok(r) => tracing::info!(repository = %dst_ref, keep_last,
                    in_use = r.in_use.len(), tags_removed = r.tags_removed.len(),
                    manifests_unlinked = r.manifests_unlinked.len(),
                    blobs_removed = r.blobs_removed, "retention applied"),
                Err(e) => tracing::warn!(repository = %dst_ref, error = %e,
                    "retention not applied; the next sync of this repository tries again"),
            }
        }
    }

    /// What travels with the artifact, once it is in the install: its referrers (signatures,
    /// SBOMs, attestations through the OCI 1.1 API or its tag-schema index) and cosign's
    /// `sha256-<hex>.sig`, `.att` and `.sbom` tags. The referrers are carried where the install
    /// registry accepts them (a registry refusing referrer manifests does not fail the sync:
    /// the artifact is what the install runs); the cosign tags are required when the job has a
    /// policy, so the signature that was verified is in the install too.
    async fn copy_attachments(
        &self,
        client: &RegistryClient,
        source: &Reference,
        src_repo: &RepoRef,
        dst_ref: &RepoRef,
        msg: &SyncJobMessage,
        receive_count: u32,
    ) -> Result<(), CopyFailure> {
        let with_referrers = CopyEngine::new(
            client.clone(),
            CopyOptions {
                referrers: true,
                ..CopyOptions::default()
            },
        );
        let by_digest = Reference::Registry(RegistryRef {
            repo: dst_ref.clone(),
            tag: None,
            digest: None,
        });
        if let Err(e) = with_referrers
            .copy(
                source,
                &[by_digest],
                Arc::new(ferry_oci::progress::NoProgress),
            )
            .await
        {
            tracing::warn!(error = %e,
                "the artifact's referrers were not copied; the install holds the artifact without them");
        }
        let plain = CopyEngine::new(client.clone(), CopyOptions::default());
        match cosign::copy_tag_scheme(&plain, client, src_repo, dst_ref, &msg.digest).await {
            Ok(tags) if tags.is_empty() => {}
            Ok(tags) => tracing::info!(?tags, "signature tags copied"),
            Err(e) if msg.verify.is_some() => {
                return Err(classify(
                    e,
                    &self.config.vendor.registry,
                    msg,
                    receive_count,
                    self.config.max_receives,
                ))
            }
            Err(e) => tracing::warn!(error = %e,
                "the artifact's signature tags were not copied; the install holds it without them"),
        }
        Ok(())
    }

    /// Checks the artifact's cosign signatures in the vendor registry against the job's
    /// policy (signed by the vendor with the job, so it cannot have been dropped on the way).
    async fn verify_policy(
        &self,
        client: &RegistryClient,
        src_repo: &RepoRef,
        msg: &SyncJobMessage,
        policy: &VerifyPolicy,
        receive_count: u32,
    ) -> Result<(), CopyFailure> {
        let parsed = cosign::Policy::from_pems(
            policy.keys.iter().map(String::as_str),
            policy.require == KeyRequirement::All,
        )
        .map_err(|e| CopyFailure::PolicyFailed(e.to_string()))?;
        match cosign::verify(client, src_repo, &msg.digest, &parsed).await {
            Ok(v) => {
                tracing::info!(keys = ?v.keys, "signature policy met");
                Ok(())
            }
            Err(cosign::VerifyError::Registry { source, .. }) => Err(classify(
                source,
                &self.config.vendor.registry,
                msg,
                receive_count,
                self.config.max_receives,
            )),
            Err(e) => Err(CopyFailure::PolicyFailed(e.to_string())),
        }
    }

    /// Opens the job's sealed grant and checks it is for this job and not expired.
    fn open_grant(&self, msg: &SyncJobMessage) -> Result<ClearGrant, CopyFailure> {
        let grant = ClearGrant::open(
            &self.keypair,
            msg.grant.ciphertext(),
            &self.config.install_id,
            &msg.sync_id,
        )
        .map_err(|e| {
            CopyFailure::Failed(format!(
                "{e}; check that the install's registered agent public key is this agent's \
                 (`ferry-agent keygen` prints it)"
            ))
        })?;
        if grant.repository != msg.repository.as_str() || grant.digest != msg.digest.as_str() {
            return Err(CopyFailure::Failed(format!(
                "the grant is for {}@{}, not for the job's {}@{}; the job message is inconsistent",
                grant.repository, grant.digest, msg.repository, msg.digest
            )));
        }
        let now = (self.clock)();
        if now >= grant.expires_at {
            return Err(CopyFailure::GrantRefused(format!(
                "the grant expired {} s before the agent picked the job up",
                (now - grant.expires_at) / 1000
            )));
        }
        Ok(grant)
    }

    /// The pull credential (from the grant, which is dropped here) and the push credential
    /// for the install registry, whose destination repository is prepared.
    async fn credentials(
        &self,
        grant: ClearGrant,
        src_registry: &str,
        dst_repo: &str,
        receive_count: u32,
    ) -> Result<CredentialStore, CopyFailure> {
        let mut credentials = CredentialStore::new();
        let pull = match grant.scheme {
            GrantScheme::Bearer => Credential::Bearer(Secret::new(grant.token.as_str())),
            GrantScheme::Basic => Credential::Basic {
                username: grant.username.clone(),
                password: Secret::new(grant.token.as_str()),
            },
        };
        credentials.insert(src_registry, Some(&grant.repository), pull);
        drop(grant);
        let push = self.access.credential().await.map_err(|e| {
            access_failure(
                e,
                "install registry login",
                receive_count,
                self.config.max_receives,
            )
        })?;
        let namespace = self.config.install_namespace.trim_end_matches('/');
        credentials.insert(
            &self.config.install_registry,
            (!namespace.is_empty()).then_some(namespace),
            push,
        );
        self.access
            .prepare_repository(dst_repo)
            .await
            .map_err(|e| {
                access_failure(
                    e,
                    "install repository",
                    receive_count,
                    self.config.max_receives,
                )
            })?;
        Ok(credentials)
    }

    /// The engine verified every byte; checks the copy resolved to the job's digest and the
    /// destination really serves it.
    async fn verify(
        &self,
        client: &RegistryClient,
        dst_ref: &RepoRef,
        digest: &Digest,
        report: &CopyReport,
        receive_count: u32,
    ) -> Result<(), CopyFailure> {
        if report.digest.as_ref() != Some(digest) {
            return Err(CopyFailure::Failed(format!(
                "the copy resolved to {:?}, not the job's digest {digest}",
                report.digest.as_ref().map(|d| d.as_str())
            )));
        }
        match client.head_manifest(dst_ref, digest.as_str()).await {
            Ok(Some(d)) if d.digest == *digest => Ok(()),
            Ok(Some(d)) => Err(CopyFailure::Failed(format!(
                "verification failed: {dst_ref} answers {} for {digest}",
                d.digest
            ))),
            Ok(None) => Err(CopyFailure::Failed(format!(
                "verification failed: {dst_ref}@{digest} is missing after the copy"
            ))),
            Err(e) => Err(transient_or_failed(
                e,
                receive_count,
                self.config.max_receives,
            )),
        }
    }
}

fn transient_or_failed(e: ferry_oci::Error, receive_count: u32, max: u32) -> CopyFailure {
    if e.is_retryable() && receive_count < max {
        CopyFailure::Transient(e.to_string())
    } else {
        CopyFailure::Failed(e.to_string())
    }
}

fn access_failure(
    e: crate::access::AccessError,
    what: &str,
    receive_count: u32,
    max: u32,
) -> CopyFailure {
    let why = format!("{what}: {e}");
    if e.transient && receive_count < max {
        CopyFailure::Transient(why)
    } else {
        CopyFailure::Failed(why)
    }
}

/// A 401 on the vendor side means the grant is no longer good (expired or revoked).
fn classify(
    e: ferry_oci::Error,
    src_registry: &str,
    msg: &SyncJobMessage,
    receive_count: u32,
    max: u32,
) -> CopyFailure {
    let source_prefix = format!("{src_registry}/{}", msg.repository);
    let on_source = |target: &str| target.starts_with(&source_prefix);
    match &e {
        ferry_oci::Error::Auth { target, .. } if on_source(target) => {
            CopyFailure::GrantRefused(e.to_string())
        }
        ferry_oci::Error::Registry {
            target,
            status: 401,
            ..
        } if on_source(target) => CopyFailure::GrantRefused(e.to_string()),
        _ => transient_or_failed(e, receive_count, max),
    }
}

async fn pause(shutdown: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// Extends the message's visibility every `heartbeat_every` until stopped.
async fn heartbeat<Q: Queue>(
    queue: Arc<Q>,
    config: AgentConfig,
    receipt: ferry_core::ports::ReceiptHandle,
    stop: CancellationToken,
) {
    let every = config.heartbeat_every;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let secs = config.receive.visibility_seconds();
                match queue.change_visibility(&config.queue, &receipt, secs).await {
                    Ok(()) => tracing::debug!(visibility_s = secs, "heartbeat: job visibility extended"),
                    Err(e) => tracing::warn!(error = %e, "heartbeat: could not extend the job's visibility"),
                }
            }
        }
    }
}

/// Copy progress as log lines (blob level, not byte level).
struct LogProgress;

impl ProgressSink for LogProgress {
    fn event(&self, event: ProgressEvent) {
        match event {
            ProgressEvent::Plan {
                digest,
                blobs,
                total_bytes,
                ..
            } => {
                tracing::info!(digest = %digest, blobs, total_bytes, "copy planned")
            }
            ProgressEvent::BlobStarted { digest, size } => {
                tracing::info!(blob = %digest, size, "blob started")
            }
            ProgressEvent::BlobFinished {
                digest,
                size,
                outcome,
            } => {
                tracing::info!(blob = %digest, size, outcome = ?outcome, "blob finished")
            }
            ProgressEvent::ManifestWritten {
                destination,
                digest,
                tag,
            } => {
                tracing::info!(destination = %destination, digest = %digest, tag = tag.as_deref().unwrap_or(""), "manifest written")
            }
            ProgressEvent::Retrying {
                what,
                attempt,
                error,
            } => {
                tracing::warn!(what = %what, attempt, error = %error, "retrying")
            }
            ProgressEvent::BlobProgress { .. } => {}
        }
    }
}
