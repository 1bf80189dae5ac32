//! Parsing of what a user types to name an artifact.
//!
//! `host[:port]/repo[:tag][@sha256:…]` names content in a registry; `oci:DIR[:tag]` or
//! `oci:DIR@sha256:…` names content in an OCI image layout on disk. Parsing is strict and
//! every rejection says what form was expected. It must never guess a registry: a reference
//! without a host (no dot, colon or `localhost` in its first component) gets `docker.io`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// A repository in a registry: `registry/repository`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoRef {
    /// `host[:port]`, as typed (after docker.io normalisation).
    pub registry: String,
    pub repository: String,
}

impl RepoRef {
    pub fn new(registry: impl Into<String>, repository: impl Into<String>) -> Self {
        RepoRef {
            registry: registry.into(),
            repository: repository.into(),
        }
    }

    /// The host name without a port, for loopback checks.
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// Content in a registry, by tag, by digest, or both (the digest wins for reading).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    pub repo: RepoRef,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// What to put in `/v2/<name>/manifests/<here>` to read: the digest if known, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Content in an OCI image layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci:{}", self.dir.display())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Registry(RegistryRef),
    Layout(LayoutRef),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry(r) => r.fmt(f),
            Reference::Layout(l) => l.fmt(f),
        }
    }
}

pub(crate) fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

/// Whether a registry is on this machine, where plain HTTP is allowed without `--insecure`.
pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// The repository rule is ferry-spec's; re-exported at its old path.
pub use ferry_spec::valid_repository;
/// The tag rule is ferry-spec's; re-exported for crates that reach OCI through ferry-oci.
pub use ferry_spec::valid_tag;

fn split_digest(input: &str, s: &str) -> Result<(String, Option<Digest>)> {
    match s.split_once('@') {
        Some((rest, d)) => {
            let digest = d.parse::<Digest>().map_err(|e| Error::InvalidReference {
                input: input.to_string(),
                reason: e.to_string(),
            })?;
            Ok((rest.to_string(), Some(digest)))
        }
        None => Ok((s.to_string(), None)),
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let input_trimmed = input.trim();
        if input_trimmed.is_empty() {
            return Err(bad(
                "empty reference; expected host/repo:tag, host/repo@sha256:… or oci:DIR[:tag]",
            ));
        }
        if let Some(rest) = input_trimmed.strip_prefix("oci:") {
            let (rest, digest) = split_digest(input, rest)?;
            // A tag follows the last ':' only if what follows has no '/'.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => {
                    if !valid_tag(t) {
                        return Err(bad("invalid tag after the layout directory"));
                    }
                    (d.to_string(), Some(t.to_string()))
                }
                _ => (rest, None),
            };
            if dir.is_empty() {
                return Err(bad("oci: needs a directory, e.g. oci:./layout:v1"));
            }
            return Ok(Reference::Layout(LayoutRef {
                dir: PathBuf::from(dir),
                tag,
                digest,
            }));
        }
        let s = input_trimmed
            .strip_prefix("docker://")
            .unwrap_or(input_trimmed);
        let (name_and_tag, digest) = split_digest(input, s)?;
        let (name, tag) = match name_and_tag.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => {
                if !valid_tag(t) {
                    return Err(bad("invalid tag: use [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"));
                }
                (n.to_string(), Some(t.to_string()))
            }
            _ => (name_and_tag.clone(), None),
        };
        let (first, rest) = match name.split_once('/') {
            Some((f, r)) => (f, Some(r)),
            None => (name.as_str(), None),
        };
        let first_is_host =
            rest.is_some() && (first.contains('.') || first.contains(':') || first == "localhost");
        let (registry, repository) = if first_is_host {
            (first.to_string(), rest.unwrap_or_default().to_string())
        } else if rest.is_some() {
            ("docker.io".to_string(), name.clone())
        } else {
            ("docker.io".to_string(), format!("library/{name}"))
        };
        let registry = if registry == "docker.io" || registry == "index.docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            registry
        };
        if !valid_repository(&repository) {
            return Err(bad(
                "invalid repository name: lowercase letters, digits and . _ - separators, components joined by /",
            ));
        }
        Ok(Reference::Registry(RegistryRef {
            repo: RepoRef {
                registry,
                repository,
            },
            tag,
            digest,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reg(s: &str) -> RegistryRef {
        match s.parse::<Reference>() {
            Ok(Reference::Registry(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn parses_registry_references() {
        let r = reg("127.0.0.1:5000/team/app:v1");
        assert_eq!(r.repo.registry, "127.0.0.1:5000");
        assert_eq!(r.repo.repository, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let d = format!("sha256:{}", "0".repeat(64));
        let r = reg(&format!("localhost:5000/app@{d}"));
        assert_eq!(r.digest.map(|d| d.to_string()), Some(d));
        assert_eq!(reg("busybox").repo.repository, "library/busybox");
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("example.com:443"));
    }

    #[test]
    fn parses_layouts() {
        match "oci:/tmp/x:v2".parse::<Reference>() {
            Ok(Reference::Layout(l)) => {
                assert_eq!(l.dir, PathBuf::from("/tmp/x"));
                assert_eq!(l.tag.as_deref(), Some("v2"));
            }
            other => panic!("{other:?}"),
        }
        match "oci:./dir".parse::<Reference>() {
            Ok(Reference::Layout(l)) => assert_eq!(l.tag, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rejects_bad_references_clearly() {
        for bad in [
            "",
            "host.io/UPPER:tag",
            "host.io/app:bad tag",
            "host.io/app@sha256:zz",
            "oci:",
        ] {
            let e = bad.parse::<Reference>().expect_err(bad).to_string();
            assert!(
                e.contains("invalid reference") || e.contains("empty"),
                "{bad}: {e}"
            );
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(repo in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", tag in "[a-z0-9][a-z0-9._-]{0,10}") {
            let s = format!("127.0.0.1:5000/{repo}:{tag}");
            let r = s.parse::<Reference>().expect("valid");
            prop_assert_eq!(r.to_string(), s);
        }

        #[test]
        fn never_panics(s in ".{0,64}") {
            let _ = s.parse::<Reference>();
        }
    }
}
