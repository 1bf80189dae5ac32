//! Domain records: apps, components, builds, artifacts, installs, sync jobs, lineage and grants.
//!
//! These are the items the [`crate::ports::JobStore`] keeps, so they are plain serde data.
//! Changes to builds and syncs go only through the transition methods here (which wrap
//! [`crate::state::JobState`]), never by editing `state` by hand. This module must never hold a
//! clear grant: [`SealedGrant`] is ciphertext for the install agent, and its `Debug` is redacted.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::id::{
    AppName, BuildId, ComponentName, Digest, InstallId, QueueName, ReleaseId, Repository, SyncId,
};
use crate::state::{JobError, JobState, JobStatus, TransitionError};

/// The media type recorded when a builder does not report one.
pub const OCI_MANIFEST_MEDIA_TYPE: &str = ferry_spec::media::OCI_MANIFEST;

/// A vendor product: a name and its components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    pub name: AppName,
    pub components: Vec<ComponentName>,
}

/// Where a helm chart comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum ChartSource {
    /// A chart directory in the source tree.
    Dir { path: String },
    /// A chart in a chart repository.
    Repo {
        url: String,
        chart: String,
        version: Option<String>,
    },
}

/// One image a chart runs: the name the chart's values give it, and where the build copies it
/// from when that is not the name itself (a mirror, or an `oci:DIR[:tag]` layout in the source).
///
/// In the app file either a string (`"nginx:1.27"`) or `{"name": …, "source": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChartImage {
    /// Copied from where the name points.
    Name(String),
    /// Named `name` in the chart, copied from `source`.
    Mirrored { name: String, source: String },
}

impl ChartImage {
    /// The reference as the chart's values write it.
    pub fn name(&self) -> &str {
        match self {
            ChartImage::Name(n) | ChartImage::Mirrored { name: n, .. } => n,
        }
    }

    /// Where the build copies the image from.
    pub fn source(&self) -> &str {
        match self {
            ChartImage::Name(n) => n,
            ChartImage::Mirrored { source, .. } => source,
        }
    }
}

/// A buildable component's own git repository: `{"git": URL, "ref": REF, "path": DIR}`.
///
/// The build checks out `ref` (a branch, tag or commit id; `HEAD` when absent, and a build
/// request's source ref overrides it) and treats `path` (default the repository root) as the
/// app root: the component's paths are relative to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// The repository URL (https, http, ssh, git or file). Never with a password in it:
    /// credentials come from the builder's credential store.
    pub git: String,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl GitSource {
    /// The ref to build: a non-empty build request ref wins over the component's.
    pub fn effective_ref<'a>(&'a self, requested: &'a str) -> &'a str {
        match requested.trim() {
            "" => self.reference.as_deref().unwrap_or("HEAD"),
            r => r,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What a component is built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ComponentKind {
    /// An external image, copied as is (the build's source ref picks the tag or digest).
    Image { source: String },
    /// A Dockerfile built from source.
    DockerBuild {
        context: String,
        dockerfile: String,
        /// Its own git repository; without one, the builder's app root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<GitSource>,
    },
    HelmChart {
        chart: ChartSource,
        /// The images the chart runs (like Zarf's `images:`): each is copied into the vendor
        /// registry by digest with the chart, and synced with it as one unit.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        images: Vec<ChartImage>,
        /// Also find the images the chart's templates use, and fail the build when one is not
        /// in `images` (docs/design/build.md says how they are found).
        #[serde(default, skip_serializing_if = "is_false")]
        discover_images: bool,
        /// Values the vendor sets for every install (merged over the chart's `values.yaml`);
        /// they go into the values override the agent writes next to the chart.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        values: Option<serde_json::Value>,
        /// Its own git repository (for a chart directory); without one, the builder's app root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<GitSource>,
    },
    /// An OpenTofu/Terraform module directory.
    OpentofuModule {
        dir: String,
        /// Its own git repository; without one, the builder's app root.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<GitSource>,
    },
}

impl ComponentKind {
    /// A `helm-chart` kind from `chart`, with no images listed, none discovered and no values.
    pub fn helm_chart(chart: ChartSource) -> ComponentKind {
        ComponentKind::HelmChart {
            chart,
            images: Vec::new(),
            discover_images: false,
            values: None,
            source: None,
        }
    }

    /// The kind's name as the app file and the events spell it (`image`, `docker-build`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ComponentKind::Image { .. } => "image",
            ComponentKind::DockerBuild { .. } => "docker-build",
            ComponentKind::HelmChart { .. } => "helm-chart",
            ComponentKind::OpentofuModule { .. } => "opentofu-module",
        }
    }

    /// The component's own git repository, for the kinds built from files.
    pub fn git_source(&self) -> Option<&GitSource> {
        match self {
            ComponentKind::DockerBuild { source, .. }
            | ComponentKind::HelmChart { source, .. }
            | ComponentKind::OpentofuModule { source, .. } => source.as_ref(),
            ComponentKind::Image { .. } => None,
        }
    }
}

/// Most keys a verification policy may list.
pub const MAX_POLICY_KEYS: usize = 8;
/// Longest PEM text of one policy key (a P-256 `cosign.pub` is 178 bytes).
pub const MAX_POLICY_KEY_BYTES: usize = 4096;

/// Whether one or every key of a [`VerifyPolicy`] must have signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyRequirement {
    /// A valid signature by any one of the keys.
    #[default]
    Any,
    /// A valid signature by every key.
    All,
}

impl KeyRequirement {
    /// `any` / `all`, as the app file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRequirement::Any => "any",
            KeyRequirement::All => "all",
        }
    }
}

/// Signatures an `image` component must carry before it is imported by a build or promoted
/// into an install by its agent: cosign key-based signatures (ECDSA P-256) by `keys`.
///
/// Plain data here; the keys are parsed and the signatures checked by `ferry_oci::cosign`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyPolicy {
    /// PEM `PUBLIC KEY` blocks (cosign's `cosign.pub`). Public, so safe to store and show.
    pub keys: Vec<String>,
    #[serde(default)]
    pub require: KeyRequirement,
}

impl VerifyPolicy {
    /// Checks the bounds (1 to [`MAX_POLICY_KEYS`] keys, each a PEM public key of at most
    /// [`MAX_POLICY_KEY_BYTES`]). Whether a key is a usable P-256 key is ferry-oci's check.
    pub fn check(&self) -> Result<(), String> {
        if self.keys.is_empty() || self.keys.len() > MAX_POLICY_KEYS {
            return Err(format!(
                "a verification policy lists 1 to {MAX_POLICY_KEYS} public keys, not {}",
                self.keys.len()
            ));
        }
        for (i, k) in self.keys.iter().enumerate() {
            if k.len() > MAX_POLICY_KEY_BYTES || !k.contains("-----BEGIN PUBLIC KEY-----") {
                return Err(format!(
                    "policy key #{i} is not a PEM public key of at most {MAX_POLICY_KEY_BYTES} \
                     bytes; give the cosign.pub file"
                ));
            }
        }
        Ok(())
    }
}

/// One deployable part of an app: how it is built and the vendor repository it lands in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    pub app: AppName,
    pub name: ComponentName,
    #[serde(flatten)]
    pub kind: ComponentKind,
    /// The repository in the vendor registry that builds of this component push to.
    pub repository: Repository,
    /// Signatures the artifact must carry before it is imported and before an agent promotes
    /// it into an install (`image` components only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyPolicy>,
    /// The name of the credential the build uses to read this component's private source (the
    /// image's registry, the chart repository, the git repository). Only the name: the secret
    /// lives in the builder's credentials file locally and in the Secrets Manager secret
    /// `ferry/sources/<name>` on AWS, never in this record (docs/design/build.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}

/// Longest credential name.
pub const MAX_CREDENTIAL_NAME: usize = 64;

/// Checks a credential name: 1 to [`MAX_CREDENTIAL_NAME`] characters of `a-z`, `0-9`, `.`,
/// `_` and `-`, starting with a letter or digit (it becomes part of a secret name on AWS).
pub fn check_credential_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CREDENTIAL_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "credential name {name:?} is not valid: use 1 to {MAX_CREDENTIAL_NAME} characters of \
             a-z, 0-9, '.', '_' and '-', starting with a letter or digit (e.g. \"acme-registry\")"
        ))
    }
}

/// Whether `url` carries a password or token in its user part (`https://user:pw@host/…`,
/// `https://token@host/…` over http(s)): secrets belong in a named credential, not in a URL
/// that is stored, shown and recorded.
pub fn url_has_secret(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    match authority.rsplit_once('@') {
        None => false,
        // ssh://git@host is a user name, not a secret; a password after ':' is.
        Some((user, _)) => user.contains(':') || matches!(scheme, "http" | "https"),
    }
}

impl Component {
    /// Checks what the type system does not: a policy's bounds, a policy only where it can be
    /// met (an `image`: what Ferry builds itself carries no external signature), a git
    /// source only where the chart is a directory.
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = &self.verify {
            if !matches!(self.kind, ComponentKind::Image { .. }) {
                return Err(format!(
                    "component {}: a verification policy applies to image components only (a {} \
                     is built by Ferry and carries no external signature)",
                    self.name,
                    self.kind.name()
                ));
            }
            p.check()
                .map_err(|e| format!("component {}: {e}", self.name))?;
        }
        if let ComponentKind::HelmChart {
            chart: ChartSource::Repo { .. },
            source: Some(_),
            ..
        } = &self.kind
        {
            return Err(format!(
                "component {}: a chart from a chart repository has no git source; drop \"source\" \
                 or use {{\"from\": \"dir\"}}",
                self.name
            ));
        }
        if let Some(g) = self.kind.git_source() {
            if g.git.trim().is_empty() || g.git.starts_with('-') {
                return Err(format!(
                    "component {}: source.git {:?} is not a repository URL",
                    self.name, g.git
                ));
            }
        }
        let url = match &self.kind {
            ComponentKind::Image { source } => Some(source.as_str()),
            ComponentKind::HelmChart {
                chart: ChartSource::Repo { url, .. },
                ..
            } => Some(url.as_str()),
            kind => kind.git_source().map(|g| g.git.as_str()),
        };
        if let Some(name) = &self.credentials {
            check_credential_name(name).map_err(|e| format!("component {}: {e}", self.name))?;
            if url.is_none() {
                return Err(format!(
                    "component {}: \"credentials\" is for a private source (an image, a chart \
                     repository or a git source), and this {} is built from the local source \
                     tree; drop \"credentials\" or give it a git source",
                    self.name,
                    self.kind.name()
                ));
            }
        }
        if url.is_some_and(url_has_secret) {
            // The URL itself is not repeated: it holds the secret.
            return Err(format!(
                "component {}: its source URL carries a password or token; remove it from the \
                 URL and name a credential instead (\"credentials\": NAME, see \
                 docs/design/build.md)",
                self.name
            ));
        }
        Ok(())
    }
}

/// A build's result in the vendor registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub repository: Repository,
    pub digest: Digest,
    pub media_type: String,
}

/// One attempt to turn a component at a source ref into an artifact, with its job state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub id: BuildId,
    pub app: AppName,
    pub component: ComponentName,
    pub source_ref: String,
    pub requested_by: String,
    /// The builder's own id (a CodeBuild build id), once started.
    pub external_id: Option<String>,
    pub artifact: Option<Artifact>,
    pub state: JobState,
    /// The commit a build from git resolved its ref to, once it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

impl Build {
    /// A new build, Queued, created at `now` (unix ms).
    pub fn new(
        id: BuildId,
        app: AppName,
        component: ComponentName,
        source_ref: String,
        requested_by: String,
        now: u64,
    ) -> Build {
        Build {
            id,
            app,
            component,
            source_ref,
            requested_by,
            external_id: None,
            artifact: None,
            state: JobState::new(now),
            revision: None,
        }
    }

    /// Where the build's state machine stands.
    pub fn status(&self) -> JobStatus {
        self.state.status
    }

    fn with_state(&self, state: JobState) -> Build {
        Build {
            state,
            ..self.clone()
        }
    }

    /// Running on the builder, which knows it as `external_id`.
    pub fn start(&self, now: u64, external_id: String) -> Result<Build, TransitionError> {
        let mut next = self.with_state(self.state.start(now)?);
        next.external_id = Some(external_id);
        Ok(next)
    }

    /// Succeeded with `artifact`.
    pub fn succeed(&self, now: u64, artifact: Artifact) -> Result<Build, TransitionError> {
        let mut next = self.with_state(self.state.succeed(now)?);
        next.artifact = Some(artifact);
        Ok(next)
    }

    /// Failed, with why.
    pub fn fail(&self, now: u64, error: JobError) -> Result<Build, TransitionError> {
        Ok(self.with_state(self.state.fail(now, error)?))
    }

    /// Cancelled.
    pub fn cancel(&self, now: u64) -> Result<Build, TransitionError> {
        Ok(self.with_state(self.state.cancel(now)?))
    }
}

/// The install's own registry, which only its agent writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryTarget {
    pub endpoint: String,
    /// Repository prefix inside the install registry.
    pub namespace: String,
}

/// One customer deployment of an app: its registry, its agent's keys and its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    pub id: InstallId,
    pub app: AppName,
    pub registry: RegistryTarget,
    /// The agent's public key; grants are sealed to it. Public, so safe to show.
    pub agent_public_key: String,
    /// The agent's report-signing key (`ferry-agent-ed25519:…`, printed by `ferry-agent keygen`):
    /// a `sync.reported` counts only if it verifies against this. Public, so safe to show. An
    /// install stored before the field existed has it empty, and its reports are refused until
    /// it is registered again with the key.
    #[serde(default)]
    pub agent_report_key: String,
    /// The install's agent queue.
    pub queue: QueueName,
    /// Components this install receives.
    pub components: Vec<ComponentName>,
}

impl Install {
    /// True when this install receives `app`'s `component`.
    pub fn subscribes_to(&self, app: &AppName, component: &ComponentName) -> bool {
        &self.app == app && self.components.contains(component)
    }
}

/// What the agent reported about a finished copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncStats {
    pub bytes_copied: u64,
    pub bytes_skipped: u64,
    pub duration_ms: u64,
}

/// The job that copies one artifact (by digest) into one install, with its job state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncJob {
    pub id: SyncId,
    pub build_id: BuildId,
    pub install_id: InstallId,
    pub repository: Repository,
    pub digest: Digest,
    /// Expiry of the grant of the current attempt; the grant itself is never stored.
    pub grant_expires_at: Option<u64>,
    pub stats: Option<SyncStats>,
    pub state: JobState,
    /// The release that asked for it; its end is reported to that release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<ReleaseId>,
    /// While Queued: until when (unix ms) the sync-requested handler that created the job
    /// holds it to mint and enqueue (the job is its own idempotency claim); a later delivery
    /// of the same event takes it over only after this. `None` once dispatched, and on a job
    /// re-queued by a report or the reconciler (whose own handler dispatches it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_until: Option<u64>,
}

impl SyncJob {
    /// A new sync job, Queued, created at `now` (unix ms).
    pub fn new(
        id: SyncId,
        build_id: BuildId,
        install_id: InstallId,
        repository: Repository,
        digest: Digest,
        now: u64,
    ) -> SyncJob {
        SyncJob {
            id,
            build_id,
            install_id,
            repository,
            digest,
            grant_expires_at: None,
            stats: None,
            state: JobState::new(now),
            release_id: None,
            dispatch_until: None,
        }
    }

    /// The same job, held by its dispatcher until `until` (see [`SyncJob::dispatch_until`]).
    pub fn claimed_until(mut self, until: Option<u64>) -> SyncJob {
        self.dispatch_until = until;
        self
    }

    /// The same job, asked for by release `release`.
    pub fn for_release(mut self, release: Option<ReleaseId>) -> SyncJob {
        self.release_id = release;
        self
    }

    /// Where the sync's state machine stands.
    pub fn status(&self) -> JobStatus {
        self.state.status
    }

    fn with_state(&self, state: JobState) -> SyncJob {
        SyncJob {
            state,
            ..self.clone()
        }
    }

    /// Queued → Running: the job message, with its grant, is on the install's queue.
    pub fn dispatch(&self, now: u64, grant_expires_at: u64) -> Result<SyncJob, TransitionError> {
        let mut next = self.with_state(self.state.start(now)?);
        next.grant_expires_at = Some(grant_expires_at);
        next.dispatch_until = None;
        Ok(next)
    }

    /// Still Queued (same attempt, version + 1), held by a dispatcher until `until`: a claim
    /// taken over, or handed back (`until` = now) after a failed dispatch.
    pub fn reclaim(&self, now: u64, until: u64) -> Result<SyncJob, TransitionError> {
        let mut next = self.with_state(self.state.reclaim(now)?);
        next.dispatch_until = Some(until);
        Ok(next)
    }

    /// Succeeded, with the agent's transfer statistics.
    pub fn succeed(&self, now: u64, stats: SyncStats) -> Result<SyncJob, TransitionError> {
        let mut next = self.with_state(self.state.succeed(now)?);
        next.stats = Some(stats);
        Ok(next)
    }

    /// Failed, with why and, if the agent got that far, its statistics.
    pub fn fail(
        &self,
        now: u64,
        error: JobError,
        stats: Option<SyncStats>,
    ) -> Result<SyncJob, TransitionError> {
        let mut next = self.with_state(self.state.fail(now, error)?);
        next.stats = stats;
        Ok(next)
    }

    /// Back to Queued with attempts + 1, for a fresh grant.
    pub fn requeue(&self, now: u64) -> Result<SyncJob, TransitionError> {
        let mut next = self.with_state(self.state.requeue(now)?);
        next.grant_expires_at = None;
        next.dispatch_until = None;
        Ok(next)
    }
}

/// "This install holds this digest, since then": written once per (digest, install).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageRecord {
    pub digest: Digest,
    pub install_id: InstallId,
    pub repository: Repository,
    pub build_id: BuildId,
    pub sync_id: SyncId,
    pub since: u64,
}

/// A pull credential encrypted to one install agent's key. The core only carries it.
///
/// Serialized as `{"ciphertext": "<base64>", "expires_at": <ms>}` so it can travel in a queue
/// message; it is ciphertext, so that is not a leak. `Debug` never prints the bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedGrant {
    #[serde(with = "b64")]
    ciphertext: Vec<u8>,
    pub expires_at: u64,
}

impl SealedGrant {
    /// Wraps ciphertext the minter sealed to one agent's key; valid until `expires_at` (unix ms).
    pub fn new(ciphertext: Vec<u8>, expires_at: u64) -> SealedGrant {
        SealedGrant {
            ciphertext,
            expires_at,
        }
    }

    /// The sealed bytes, for the agent to open.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }
}

impl fmt::Debug for SealedGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedGrant")
            .field(
                "ciphertext",
                &format_args!("<redacted {} bytes>", self.ciphertext.len()),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

mod b64 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|_| serde::de::Error::custom("grant ciphertext is not valid base64"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_grant_debug_is_redacted() {
        let g = SealedGrant::new(b"secret-token-bytes".to_vec(), 99);
        let dbg = format!("{g:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
        assert!(dbg.contains("redacted 18 bytes"), "{dbg}");
        let json = serde_json::to_string(&g).unwrap();
        assert!(!json.contains("secret"), "{json}");
        let back: SealedGrant = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn component_kinds_serialize_with_kind_tag() {
        let c = Component {
            app: AppName::new("shop").unwrap(),
            name: ComponentName::new("chart").unwrap(),
            kind: ComponentKind::HelmChart {
                chart: ChartSource::Dir {
                    path: "deploy/chart".into(),
                },
                images: vec![],
                discover_images: false,
                values: None,
                source: None,
            },
            repository: Repository::new("shop/chart").unwrap(),
            verify: None,
            credentials: None,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["kind"], "helm-chart");
        let back: Component = serde_json::from_value(v).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.kind.name(), "helm-chart");
    }

    #[test]
    fn credential_names_are_checked_and_secrets_stay_out_of_urls() {
        let v = serde_json::json!({"app": "shop", "name": "web", "kind": "image",
            "source": "registry.example/acme/web", "repository": "shop/web",
            "credentials": "acme-registry"});
        let c: Component = serde_json::from_value(v).unwrap();
        assert_eq!(c.credentials.as_deref(), Some("acme-registry"));
        assert_eq!(c.check(), Ok(()));
        for bad in ["", "Acme", "-x", "a/b", &"x".repeat(65)] {
            let mut c = c.clone();
            c.credentials = Some(bad.to_string());
            let err = c.check().unwrap_err();
            assert!(err.contains("credential name"), "{bad:?}: {err}");
        }
        let mut leaky = c.clone();
        leaky.kind = ComponentKind::DockerBuild {
            context: ".".into(),
            dockerfile: "Dockerfile".into(),
            source: Some(GitSource {
                git: "https://x-access-token:ghp-hunter2@git.example/acme/app.git".into(),
                reference: None,
                path: None,
            }),
        };
        let err = leaky.check().unwrap_err();
        assert!(err.contains("name a credential"), "{err}");
        assert!(
            !err.contains("hunter2"),
            "the error never repeats the secret: {err}"
        );
        assert!(url_has_secret("https://tok@git.example/a.git"));
        assert!(!url_has_secret("ssh://git@git.example/a.git"));
        assert!(!url_has_secret("git@git.example:a.git"));
        assert!(!url_has_secret("registry.example/acme/web@sha256:00"));
        // Without credentials, the record does not name the field at all.
        let mut plain = c.clone();
        plain.credentials = None;
        assert!(serde_json::to_value(&plain)
            .unwrap()
            .get("credentials")
            .is_none());
    }

    #[test]
    fn chart_images_are_optional_and_take_two_shapes() {
        let v = serde_json::json!({"app": "shop", "name": "chart", "kind": "helm-chart",
            "chart": {"from": "dir", "path": "c"}, "repository": "shop/chart",
            "images": ["nginx:1.27", {"name": "demo.example/x:1", "source": "oci:x:1"}],
            "discover_images": true, "values": {"replicas": 2}});
        let c: Component = serde_json::from_value(v.clone()).unwrap();
        let ComponentKind::HelmChart {
            images,
            discover_images,
            ..
        } = &c.kind
        else {
            panic!("{c:?}")
        };
        assert!(*discover_images);
        assert_eq!(images[0].source(), "nginx:1.27");
        assert_eq!(
            (images[1].name(), images[1].source()),
            ("demo.example/x:1", "oci:x:1")
        );
        assert_eq!(serde_json::to_value(&c).unwrap(), v);
        // Without them, the JSON is what it was before the fields existed.
        let plain = serde_json::json!({"app": "shop", "name": "chart", "kind": "helm-chart",
            "chart": {"from": "dir", "path": "c"}, "repository": "shop/chart"});
        let c: Component = serde_json::from_value(plain.clone()).unwrap();
        assert_eq!(serde_json::to_value(&c).unwrap(), plain);
    }

    #[test]
    fn sync_requeue_clears_grant_expiry() {
        let s = SyncJob::new(
            SyncId::new("s1").unwrap(),
            BuildId::new("b1").unwrap(),
            InstallId::new("i1").unwrap(),
            Repository::new("shop/web").unwrap(),
            Digest::new(format!("sha256:{}", "a".repeat(64))).unwrap(),
            1,
        );
        let d = s.dispatch(2, 100).unwrap();
        assert_eq!(d.grant_expires_at, Some(100));
        let q = d.requeue(3).unwrap();
        assert_eq!((q.grant_expires_at, q.state.attempts), (None, 2));
    }
}
