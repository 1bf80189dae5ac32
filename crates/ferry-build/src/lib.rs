//! ferry-build: the build step. It turns one component at a source ref into one OCI artifact
//! in the vendor registry, at `<registry>/<prefix>/<component.repository>:<build id>`.
//!
//! Four kinds: `image` (copy an external image, every platform, digests preserved),
//! `helm-chart` (package a chart directory as Helm does, deterministically), `opentofu-module`
//! (a deterministic zip as an OpenTofu module package) and `docker-build` (buildah, then copy).
//! Packaged content is written into a private OCI layout on disk and copied to the registry
//! with the ferry-oci engine, so pushes get its verification and ordering (blobs, manifest,
//! tag last). This crate must never hold a whole blob in memory, never read outside the app
//! root, and never put a credential into an error, a log line or its output.
//! See docs/design/build.md.

pub mod app;
mod chart_images;
mod chart_repo;
pub mod completion;
mod docker;
pub mod error;
pub mod git;
mod helm;
mod image;
pub mod inprocess;
mod package;
pub mod scratch;
mod signatures;
pub mod sources;
mod tofu;

use std::path::{Component as PathComponent, Path, PathBuf};
use std::sync::Arc;

use ferry_core::domain::{ChartSource, Component, ComponentKind};
use ferry_core::event::{BuildCompleted, BuildOutcome};
use ferry_core::id::{BuildId, Digest, Repository};
use ferry_core::ports::BuildSpec;
use ferry_oci::{
    ClientConfig, CopyEngine, CopyOptions, CredentialStore, LayoutRef, Reference, RegistryClient,
    RegistryRef, RepoRef,
};
use serde::Serialize;

pub use app::AppFile;
pub use chart_images::ChartRenderer;
pub use error::BuildError;
pub use helm::{package_chart, ChartPackage};
pub use inprocess::InProcessBuilder;
pub use sources::{SourceCredential, SourceCredentials};
pub use tofu::package_module;

/// The OCI annotation naming the commit a packaged artifact was built from.
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
/// The OCI annotation naming the repository a packaged artifact was built from.
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";

/// Longest error text put into a build.completed event (the event schema allows 8 KiB).
const MAX_EVENT_ERROR: usize = 4000;

/// Where builds go and where their sources are.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    /// The vendor registry, `host[:port]`.
    pub registry: String,
    /// Repository prefix inside the vendor registry (e.g. `vendor` for the embedded
    /// registry's vendor namespace); empty for none.
    pub repository_prefix: String,
    /// Credentials for the vendor registry and for private image sources.
    pub credentials: CredentialStore,
    /// Allow plain HTTP to non-loopback registries.
    pub insecure: bool,
    /// Component paths (chart dirs, module dirs, build contexts, `oci:` layouts) are relative
    /// to this directory and may not leave it.
    pub app_root: PathBuf,
    /// Parent of the temporary directories a build writes; `None` for the system default.
    pub work_dir: Option<PathBuf>,
    /// How charts are rendered to find the images they run (`discover_images`).
    pub chart_renderer: ChartRenderer,
    /// Set when `app_root` already is the checkout of the component's git source (CodeBuild
    /// checked it out as a source override): the commit it is at. The build then records this
    /// commit instead of fetching the repository itself.
    pub checked_out: Option<String>,
    /// Where the credentials that components name (`"credentials": NAME`) are found.
    pub sources: SourceCredentials,
}

impl BuildConfig {
    pub fn new(registry: impl Into<String>, app_root: impl Into<PathBuf>) -> BuildConfig {
        BuildConfig {
            registry: registry.into(),
            repository_prefix: String::new(),
            credentials: CredentialStore::new(),
            insecure: false,
            app_root: app_root.into(),
            work_dir: None,
            chart_renderer: ChartRenderer::default(),
            checked_out: None,
            sources: SourceCredentials::local_default(),
        }
    }

    pub fn with_prefix(mut self, prefix: impl Into<String>) -> BuildConfig {
        self.repository_prefix = prefix.into();
        self
    }

    pub fn with_credentials(mut self, credentials: CredentialStore) -> BuildConfig {
        self.credentials = credentials;
        self
    }

    /// Where the credentials components name come from.
    pub fn with_sources(mut self, sources: SourceCredentials) -> BuildConfig {
        self.sources = sources;
        self
    }
}

/// A build's result: the manifest (or index) now in the vendor registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuiltArtifact {
    /// The full repository path in the vendor registry, prefix included.
    pub repository: Repository,
    pub digest: Digest,
    pub media_type: String,
    /// Size of the root manifest in bytes.
    pub size: u64,
    /// Tags written, the build id first.
    pub tags: Vec<String>,
    /// The commit a build from git built (also the `org.opencontainers.image.revision`
    /// annotation of a packaged artifact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

impl BuiltArtifact {
    /// The build.completed payload for a build's outcome.
    pub fn completed(
        build_id: &BuildId,
        result: &Result<BuiltArtifact, BuildError>,
    ) -> BuildCompleted {
        match result {
            Ok(a) => BuildCompleted {
                build_id: build_id.clone(),
                status: BuildOutcome::Succeeded,
                digest: Some(a.digest.clone()),
                repository: Some(a.repository.clone()),
                media_type: Some(a.media_type.clone()),
                error: None,
                revision: a.revision.clone(),
            },
            Err(e) => BuildCompleted {
                build_id: build_id.clone(),
                status: BuildOutcome::Failed,
                digest: None,
                repository: None,
                media_type: None,
                error: Some(truncate(&e.to_string(), MAX_EVENT_ERROR)),
                revision: None,
            },
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Runs builds against one vendor registry. Cheap to clone.
#[derive(Clone)]
pub struct ArtifactBuilder {
    inner: Arc<Inner>,
}

struct Inner {
    config: BuildConfig,
    client: RegistryClient,
    /// Annotations every packaged manifest of this build carries (the git revision and
    /// source of a build from git); empty otherwise.
    annotations: std::collections::BTreeMap<String, String>,
    /// The credential the component being built names, once resolved for its build.
    source_credential: Option<SourceCredential>,
}

impl std::fmt::Debug for ArtifactBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The config's credentials print redacted, but there is no need to print them at all.
        f.debug_struct("ArtifactBuilder")
            .field("registry", &self.inner.config.registry)
            .field("repository_prefix", &self.inner.config.repository_prefix)
            .field("app_root", &self.inner.config.app_root)
            .finish()
    }
}

impl ArtifactBuilder {
    pub fn new(config: BuildConfig) -> Result<ArtifactBuilder, BuildError> {
        if config.registry.trim().is_empty() || config.registry.contains('/') {
            return Err(BuildError::Config(format!(
                "vendor registry {:?} must be host[:port], e.g. 127.0.0.1:5000",
                config.registry
            )));
        }
        let prefix = config.repository_prefix.trim_matches('/');
        if !prefix.is_empty() {
            Repository::new(prefix)
                .map_err(|e| BuildError::Config(format!("repository prefix {prefix:?}: {e}")))?;
        }
        let client = RegistryClient::new(ClientConfig {
            insecure: config.insecure,
            credentials: config.credentials.clone(),
            ..ClientConfig::default()
        })
        .map_err(|e| BuildError::Config(format!("registry client: {e}")))?;
        Ok(ArtifactBuilder {
            inner: Arc::new(Inner {
                config,
                client,
                annotations: Default::default(),
                source_credential: None,
            }),
        })
    }

    /// The same builder (and registry client) over another app root, with annotations for
    /// every manifest it packages: one build from a git checkout.
    fn for_checkout(
        &self,
        app_root: PathBuf,
        annotations: std::collections::BTreeMap<String, String>,
    ) -> ArtifactBuilder {
        let mut config = self.inner.config.clone();
        config.app_root = app_root;
        ArtifactBuilder {
            inner: Arc::new(Inner {
                config,
                client: self.inner.client.clone(),
                annotations,
                source_credential: self.inner.source_credential.clone(),
            }),
        }
    }

    /// The same builder holding the credential `component` names (resolved from
    /// [`BuildConfig::sources`]); itself when it names none.
    fn for_component(&self, component: &Component) -> Result<ArtifactBuilder, BuildError> {
        let Some(name) = &component.credentials else {
            return Ok(self.clone());
        };
        let credential = self
            .inner
            .config
            .sources
            .resolve(component.name.as_str(), name)?;
        tracing::info!(component = %component.name, credential = %name,
            "source credential resolved");
        Ok(ArtifactBuilder {
            inner: Arc::new(Inner {
                config: self.inner.config.clone(),
                client: self.inner.client.clone(),
                annotations: self.inner.annotations.clone(),
                source_credential: Some(credential),
            }),
        })
    }

    /// The credential of the component being built, if it names one.
    pub(crate) fn source_credential(&self) -> Option<&SourceCredential> {
        self.inner.source_credential.as_ref()
    }

    /// The same builder whose registry client also authenticates to exactly `repository` of
    /// `registry` (the component's private source) with its credential; itself when the
    /// component names none. Other repositories, the vendor registry's included, keep their
    /// own credentials.
    pub(crate) fn with_registry_source(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<ArtifactBuilder, BuildError> {
        let Some(credential) = self.source_credential() else {
            return Ok(self.clone());
        };
        let mut config = self.inner.config.clone();
        config
            .credentials
            .insert_repository(registry, repository, credential.registry());
        let client = RegistryClient::new(ClientConfig {
            insecure: config.insecure,
            credentials: config.credentials.clone(),
            ..ClientConfig::default()
        })
        .map_err(|e| BuildError::Config(format!("registry client: {e}")))?;
        Ok(ArtifactBuilder {
            inner: Arc::new(Inner {
                config,
                client,
                annotations: self.inner.annotations.clone(),
                source_credential: Some(credential.clone()),
            }),
        })
    }

    /// Annotations every packaged manifest of this build carries.
    pub(crate) fn source_annotations(&self) -> &std::collections::BTreeMap<String, String> {
        &self.inner.annotations
    }

    pub fn config(&self) -> &BuildConfig {
        &self.inner.config
    }

    /// The repository builds of `component` push to: `<prefix>/<component.repository>`.
    pub fn target_repository(&self, component: &Component) -> Result<Repository, BuildError> {
        let prefix = self.inner.config.repository_prefix.trim_matches('/');
        let full = if prefix.is_empty() {
            component.repository.as_str().to_string()
        } else {
            format!("{prefix}/{}", component.repository)
        };
        Repository::new(full).map_err(|e| BuildError::Config(format!("target repository: {e}")))
    }

    /// Builds `spec` and pushes the artifact, tagged with the build id.
    pub async fn build(&self, spec: &BuildSpec) -> Result<BuiltArtifact, BuildError> {
        let component = &spec.component;
        let repository = self.target_repository(component)?;
        tracing::info!(build_id = %spec.build_id, component = %component.name,
            kind = component.kind.name(), repository = %repository, "build started");
        let result = match component.check() {
            Err(reason) => Err(BuildError::InvalidComponent {
                component: component.name.to_string(),
                reason,
            }),
            Ok(()) => match self.for_component(component) {
                Err(e) => Err(e),
                Ok(b) => match component.kind.git_source() {
                    Some(git) => b.build_from_git(spec, git, &repository).await,
                    None => b.build_kind(spec, &repository).await,
                },
            },
        };
        match &result {
            Ok(a) => tracing::info!(build_id = %spec.build_id, digest = %a.digest,
                repository = %a.repository, "build succeeded"),
            Err(e) => tracing::warn!(build_id = %spec.build_id, error = %e, "build failed"),
        }
        result
    }

    /// The kind's build over this builder's app root.
    async fn build_kind(
        &self,
        spec: &BuildSpec,
        repository: &Repository,
    ) -> Result<BuiltArtifact, BuildError> {
        match &spec.component.kind {
            ComponentKind::Image { source } => image::build(self, spec, source, repository).await,
            ComponentKind::HelmChart {
                chart,
                images,
                discover_images,
                values,
                ..
            } => {
                let built = match chart {
                    ChartSource::Dir { path } => helm::build(self, spec, path, repository).await,
                    ChartSource::Repo {
                        url,
                        chart,
                        version,
                    } => {
                        chart_repo::build(self, spec, url, chart, version.as_deref(), repository)
                            .await
                    }
                };
                let want = chart_images::ImagesSpec {
                    images,
                    discover: *discover_images,
                    values: values.as_ref(),
                };
                chart_images::bundle(self, spec, built?, want).await
            }
            ComponentKind::OpentofuModule { dir, .. } => {
                tofu::build(self, spec, dir, repository).await
            }
            ComponentKind::DockerBuild {
                context,
                dockerfile,
                ..
            } => docker::build(self, spec, context, dockerfile, repository).await,
        }
    }

    /// A build of a component with its own git source: the ref (the request's, else the
    /// component's) is checked out into a temp dir (unless `checked_out` says the app root
    /// already is that checkout), `path` inside it becomes the app root, and the artifact
    /// records the commit (build record and `org.opencontainers.image.revision`/`.source`).
    async fn build_from_git(
        &self,
        spec: &BuildSpec,
        git_source: &ferry_core::domain::GitSource,
        repository: &Repository,
    ) -> Result<BuiltArtifact, BuildError> {
        let component = &spec.component;
        let mut tmp = None;
        let (root, commit) = match &self.inner.config.checked_out {
            Some(commit) => (self.inner.config.app_root.clone(), commit.clone()),
            None => {
                let dir = self.temp_dir("ferry-git-")?;
                let reference = git_source.effective_ref(&spec.source_ref);
                let checkout = git::checkout(
                    component.name.as_str(),
                    &git_source.git,
                    reference,
                    &dir.path().join("src"),
                    self.source_credential(),
                )
                .await?;
                tracing::info!(build_id = %spec.build_id, reference, commit = %checkout.commit,
                    "source checked out");
                tmp = Some(dir);
                (checkout.dir, checkout.commit)
            }
        };
        let root_builder = self.for_checkout(root, Default::default());
        let app_root = match git_source.path.as_deref().map(str::trim) {
            None | Some("") | Some(".") => root_builder.config().app_root.clone(),
            Some(p) => root_builder.resolve_dir(component, "source path", p)?,
        };
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(ANNOTATION_REVISION.to_string(), commit.clone());
        annotations.insert(
            ANNOTATION_SOURCE.to_string(),
            git::redact(&git_source.git).replace("***@", ""),
        );
        let b = self.for_checkout(app_root, annotations);
        let result = b.build_kind(spec, repository).await;
        drop(tmp);
        result.map(|mut a| {
            a.revision = Some(commit);
            a
        })
    }

    /// A component path resolved under the app root; absolute paths and `..` are refused so a
    /// component spec can never make the builder read elsewhere.
    pub(crate) fn resolve(&self, component: &Component, path: &str) -> Result<PathBuf, BuildError> {
        let bad = |reason| BuildError::InvalidPath {
            component: component.name.to_string(),
            path: path.to_string(),
            reason,
        };
        if path.is_empty() {
            return Err(bad("it is empty; use \".\" for the app root"));
        }
        let p = Path::new(path);
        let mut out = self.inner.config.app_root.clone();
        for c in p.components() {
            match c {
                PathComponent::Normal(part) => out.push(part),
                PathComponent::CurDir => {}
                PathComponent::ParentDir => {
                    return Err(bad("it contains '..'; paths stay inside the app root"))
                }
                PathComponent::RootDir | PathComponent::Prefix(_) => {
                    return Err(bad("it is absolute; give it relative to the app root"))
                }
            }
        }
        Ok(out)
    }

    /// `resolve`, then require a directory.
    pub(crate) fn resolve_dir(
        &self,
        component: &Component,
        what: &'static str,
        path: &str,
    ) -> Result<PathBuf, BuildError> {
        let resolved = self.resolve(component, path)?;
        if !resolved.is_dir() {
            return Err(BuildError::SourceMissing {
                component: component.name.to_string(),
                what,
                path: path.to_string(),
                resolved,
            });
        }
        Ok(resolved)
    }

    pub(crate) fn temp_dir(&self, label: &str) -> Result<tempfile::TempDir, BuildError> {
        let mut b = tempfile::Builder::new();
        b.prefix(label);
        match &self.inner.config.work_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(error::io_err("create work dir", dir))?;
                b.tempdir_in(dir)
                    .map_err(error::io_err("create temp dir", dir))
            }
            None => b
                .tempdir()
                .map_err(error::io_err("create temp dir", std::env::temp_dir())),
        }
    }

    /// Pushes the OCI layout in `layout_dir` (tagged [`package::LAYOUT_TAG`]) to `repository`
    /// under each of `tags`, then removes `tmp`, the temporary directory holding it.
    pub(crate) async fn push_layout(
        &self,
        component: &Component,
        layout_dir: PathBuf,
        repository: &Repository,
        tags: Vec<String>,
        tmp: tempfile::TempDir,
    ) -> Result<BuiltArtifact, BuildError> {
        let source = Reference::Layout(LayoutRef {
            dir: layout_dir,
            tag: Some(package::LAYOUT_TAG.into()),
            digest: None,
        });
        let artifact = self.push(component, &source, repository, tags).await;
        drop(tmp);
        artifact
    }

    /// Copies `source` to `repository` under each of `tags` (in order; the first is the build
    /// id), then reads back the manifest descriptor from the registry.
    pub(crate) async fn push(
        &self,
        component: &Component,
        source: &Reference,
        repository: &Repository,
        tags: Vec<String>,
    ) -> Result<BuiltArtifact, BuildError> {
        self.push_with(component, source, repository, tags, CopyOptions::default())
            .await
    }

    /// [`push`](Self::push) with the copy engine's options (referrers, for imported images).
    pub(crate) async fn push_with(
        &self,
        component: &Component,
        source: &Reference,
        repository: &Repository,
        tags: Vec<String>,
        options: CopyOptions,
    ) -> Result<BuiltArtifact, BuildError> {
        let oci = |source| BuildError::Oci {
            component: component.name.to_string(),
            source,
        };
        let engine = CopyEngine::new(self.inner.client.clone(), options);
        let repo = RepoRef::new(self.inner.config.registry.clone(), repository.as_str());
        let mut digest = None;
        for tag in &tags {
            let dest = Reference::Registry(RegistryRef {
                repo: repo.clone(),
                tag: Some(tag.clone()),
                digest: None,
            });
            let report = engine
                .copy(source, &[dest], Arc::new(ferry_oci::progress::NoProgress))
                .await
                .map_err(oci)?;
            tracing::debug!(%source, %tag, bytes = report.bytes_copied, "pushed");
            digest = digest.or(report.digest);
        }
        let digest = digest
            .ok_or_else(|| BuildError::Config(format!("copy of {source} reported no digest")))?;
        let desc = self
            .inner
            .client
            .head_manifest(&repo, digest.as_str())
            .await
            .map_err(oci)?
            .ok_or_else(|| BuildError::Oci {
                component: component.name.to_string(),
                source: ferry_oci::Error::NotFound {
                    step: ferry_oci::Step::HeadManifest,
                    target: format!("{repo}@{digest} (just pushed)"),
                },
            })?;
        let digest = Digest::new(digest.as_str())
            .map_err(|e| BuildError::Config(format!("registry digest: {e}")))?;
        Ok(BuiltArtifact {
            repository: repository.clone(),
            digest,
            media_type: desc.media_type,
            size: desc.size,
            tags,
            revision: None,
        })
    }
}
