//! Why a build failed, worded for the vendor who has to fix it.
//!
//! Every variant names what was wrong (the component, the path, the tool, the reference) and
//! what to do about it. It must never carry a credential: registry errors come from ferry-oci,
//! which already scrubs them, and tool output is captured from tools that were given none.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A component path is absolute or climbs out of the app root.
    #[error("component {component}: path {path:?} is not allowed: {reason}")]
    InvalidPath {
        component: String,
        path: String,
        reason: &'static str,
    },

    /// A source directory (chart, module, build context) is missing.
    #[error(
        "component {component}: {what} {path:?} does not exist or is not a directory \
         (looked at {resolved}); fix the path in the component or check out the source"
    )]
    SourceMissing {
        component: String,
        what: &'static str,
        path: String,
        resolved: PathBuf,
    },

    #[error(
        "component {component}: {dir} is not a Helm chart: it has no Chart.yaml; point the \
         component at the chart directory (the one holding Chart.yaml)"
    )]
    NotAChart { component: String, dir: PathBuf },

    #[error("component {component}: {file} is invalid: {reason}")]
    InvalidChart {
        component: String,
        file: PathBuf,
        reason: String,
    },

    #[error("component {component}: invalid image reference {input:?}: {reason}")]
    InvalidReference {
        component: String,
        input: String,
        reason: String,
    },

    /// A file in a source tree that cannot be packaged (a symlink, a special file).
    #[error("component {component}: cannot package {path}: {reason}")]
    Unpackable {
        component: String,
        path: PathBuf,
        reason: String,
    },

    /// The component's spec is inconsistent (a policy on a kind that cannot carry one...).
    #[error("{reason}")]
    InvalidComponent { component: String, reason: String },

    /// The source failed its signature policy; nothing was imported.
    #[error("component {component}: signature policy not met: {reason}; nothing was imported")]
    PolicyFailed { component: String, reason: String },

    /// The component's named credential is missing, unreadable or malformed. The reason names
    /// the file or secret and what to fix, never the secret.
    #[error("component {component}: credential {name:?}: {reason}")]
    Credentials {
        component: String,
        name: String,
        reason: String,
    },

    #[error("component {component}: chart repository {url}: {reason}")]
    ChartRepository {
        component: String,
        url: String,
        reason: String,
    },

    #[error("component {component}: {what} is not supported by this builder: {hint}")]
    Unsupported {
        component: String,
        what: String,
        hint: String,
    },

    #[error(
        "component {component}: the build needs `{tool}`, which is not installed; install it \
         (Debian: apt-get install -y {package})"
    )]
    ToolMissing {
        component: String,
        tool: &'static str,
        package: &'static str,
    },

    #[error("component {component}: `{command}` failed ({status}): {stderr}")]
    ToolFailed {
        component: String,
        command: String,
        status: String,
        stderr: String,
    },

    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Pushing to (or reading from) a registry or an OCI layout failed.
    #[error("component {component}: {source}")]
    Oci {
        component: String,
        #[source]
        source: ferry_oci::Error,
    },

    /// The images a chart runs could not be found, checked or bundled.
    #[error("component {component}: chart images: {reason}")]
    ChartImages { component: String, reason: String },

    #[error("app file {path}: {reason}")]
    InvalidAppFile { path: PathBuf, reason: String },

    #[error("invalid builder configuration: {0}")]
    Config(String),
}

impl BuildError {
    /// Whether running the same build again may succeed (registry trouble, I/O), as opposed to
    /// bad input that needs a fix first.
    pub fn is_retryable(&self) -> bool {
        match self {
            BuildError::Oci { source, .. } => source.is_retryable(),
            BuildError::Io { .. } => true,
            _ => false,
        }
    }
}

pub(crate) fn io_err(
    step: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.into();
    move |source| BuildError::Io { step, path, source }
}
