//! `ferry-agent in-use mark|unmark|list`: the deployer declares which synced digests run, so
//! retention never removes them. The marks live in the install registry (the embedded
//! registry's in-use records), written with the agent's own identity: the agent is the only
//! writer of its registry, and a mark is not a tag, so it never takes a slot in the keep-last
//! window and works with immutable tags.
//!
//! This module must never guess what is in use, never accept a tag for a digest (a mark names
//! exactly one manifest), and never put the identity secret into an error.

use ferry_oci::{
    ClientConfig, Credential, CredentialStore, Digest, RegistryClient, RepoRef, Secret,
};

/// A `REPO@sha256:…` the deployer named, resolved to the install registry's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InUseTarget {
    /// The repository in the install registry (`<namespace>/<repo>`).
    pub repository: String,
    pub digest: Digest,
}

/// Why a mark could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InUseError {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Registry(#[from] ferry_oci::Error),
}

impl InUseTarget {
    /// Parses `REPO@sha256:<hex>`. `REPO` is as deployed: either the full path in the install
    /// registry (`installs/<install>/demo/web`) or the path inside the namespace (`demo/web`).
    pub fn parse(text: &str, namespace: &str) -> Result<InUseTarget, InUseError> {
        let Some((repo, digest)) = text.trim().rsplit_once('@') else {
            return Err(InUseError::Input(format!(
                "{text:?} has no digest; give REPO@sha256:<64 hex> (a tag is not enough: \
                 a mark names exactly one manifest)"
            )));
        };
        let digest: Digest = digest.parse().map_err(|e: ferry_core::id::IdError| {
            InUseError::Input(format!("{text:?}: {e}; give REPO@sha256:<64 hex>"))
        })?;
        let repo = repo.trim_matches('/');
        if repo.is_empty() {
            return Err(InUseError::Input(format!(
                "{text:?} names no repository; give REPO@sha256:<64 hex>"
            )));
        }
        Ok(InUseTarget {
            repository: in_namespace(repo, namespace),
            digest,
        })
    }
}

/// `repo` as a path in the install registry: kept if it already starts with `namespace/`,
/// otherwise put under it.
pub fn in_namespace(repo: &str, namespace: &str) -> String {
    let repo = repo.trim_matches('/');
    let ns = namespace.trim_end_matches('/');
    if ns.is_empty() || repo.starts_with(&format!("{ns}/")) {
        repo.to_string()
    } else {
        format!("{ns}/{repo}")
    }
}

/// A client that writes to `registry` as `agent:<install>`.
pub fn agent_client(
    registry: &str,
    install: &str,
    secret: Secret,
) -> Result<RegistryClient, InUseError> {
    let mut credentials = CredentialStore::new();
    credentials.insert(
        registry,
        None,
        Credential::Basic {
            username: format!("agent:{install}"),
            password: secret,
        },
    );
    Ok(RegistryClient::new(ClientConfig {
        credentials,
        ..ClientConfig::default()
    })?)
}

/// Marks (`in_use`) or unmarks the target on `registry`.
pub async fn set(
    client: &RegistryClient,
    registry: &str,
    target: &InUseTarget,
    in_use: bool,
) -> Result<(), InUseError> {
    let repo = RepoRef::new(registry, target.repository.as_str());
    client.set_in_use(&repo, &target.digest, in_use).await?;
    Ok(())
}

/// The digests marked in use in `repository` (full path in the install registry).
pub async fn list(
    client: &RegistryClient,
    registry: &str,
    repository: &str,
) -> Result<Vec<String>, InUseError> {
    Ok(client
        .list_in_use(&RepoRef::new(registry, repository))
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn repositories_resolve_into_the_namespace_once() {
        let t = InUseTarget::parse(&format!("demo/web@{D}"), "installs/acme").unwrap();
        assert_eq!(t.repository, "installs/acme/demo/web");
        assert_eq!(t.digest.as_str(), D);
        let t =
            InUseTarget::parse(&format!("installs/acme/demo/web@{D}"), "installs/acme").unwrap();
        assert_eq!(t.repository, "installs/acme/demo/web");
    }

    #[test]
    fn tags_and_bad_digests_are_refused_with_what_to_give() {
        for bad in ["demo/web:v1", "demo/web@latest", &format!("@{D}")] {
            let e = InUseTarget::parse(bad, "installs/acme").unwrap_err();
            assert!(e.to_string().contains("REPO@sha256:<64 hex>"), "{bad}: {e}");
        }
    }
}
