//! The `image` kind: copy an external image (a registry reference or an `oci:DIR[:tag]`
//! layout under the app root) into the vendor repository, every platform, digests preserved.
//!
//! The source ref picks the tag or digest when the component's `source` names neither; when
//! `source` pins one, that wins. This module must never re-encode a manifest (that would change
//! the digest) and never read a layout outside the app root.

use ferry_core::ports::BuildSpec;
use ferry_oci::{CopyOptions, LayoutRef, Reference};

use crate::error::BuildError;
use crate::signatures;
use crate::{ArtifactBuilder, BuiltArtifact};

pub(crate) async fn build(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    source: &str,
    repository: &ferry_core::id::Repository,
) -> Result<BuiltArtifact, BuildError> {
    let reference = source_reference(b, spec, source)?;
    let policy = match &spec.component.verify {
        None => None,
        Some(p) => Some(policy_of(&spec.component, p, &reference)?),
    };
    let b = with_source_credential(b, &spec.component, &reference)?;
    build_verified(&b, spec, reference, repository, policy.as_ref()).await
}

/// The builder that reads `reference` with the component's named credential (scoped to that
/// one repository); refused for a layout source, which is read from disk.
pub(crate) fn with_source_credential(
    b: &ArtifactBuilder,
    component: &ferry_core::domain::Component,
    reference: &Reference,
) -> Result<ArtifactBuilder, BuildError> {
    match reference {
        _ if b.source_credential().is_none() => Ok(b.clone()),
        Reference::Registry(r) => b.with_registry_source(&r.repo.registry, &r.repo.repository),
        Reference::Layout(_) => Err(BuildError::InvalidComponent {
            component: component.name.to_string(),
            reason: format!(
                "component {}: {reference} is a local OCI layout, so \"credentials\" has \
                 nothing to unlock; drop it",
                component.name
            ),
        }),
    }
}

/// The component's policy as ferry-oci checks it (for a registry source, or an OCI layout
/// holding the image and its `sha256-<hex>.sig` signature manifest).
fn policy_of(
    component: &ferry_core::domain::Component,
    policy: &ferry_core::domain::VerifyPolicy,
    _reference: &Reference,
) -> Result<ferry_oci::cosign::Policy, BuildError> {
    let failed = |reason: String| BuildError::PolicyFailed {
        component: component.name.to_string(),
        reason,
    };
    ferry_oci::cosign::Policy::from_pems(
        policy.keys.iter().map(String::as_str),
        policy.require == ferry_core::domain::KeyRequirement::All,
    )
    .map_err(|e| failed(e.to_string()))
}

/// Imports `reference` (verified first when `policy` is given) with its referrers and cosign's
/// tag-scheme artifacts, so signatures, SBOMs and attestations travel with the image.
pub(crate) async fn build_verified(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    reference: Reference,
    repository: &ferry_core::id::Repository,
    policy: Option<&ferry_oci::cosign::Policy>,
) -> Result<BuiltArtifact, BuildError> {
    let reference = match policy {
        Some(p) => signatures::verify_source(b, &spec.component, &reference, p).await?,
        None => reference,
    };
    let options = CopyOptions {
        referrers: true,
        ..CopyOptions::default()
    };
    let artifact = b
        .push_with(
            &spec.component,
            &reference,
            repository,
            vec![spec.build_id.to_string()],
            options,
        )
        .await?;
    // One digest type below core and oci (ferry-spec's): no re-parse.
    let digest = artifact.digest.clone();
    let tags =
        signatures::copy_cosign_tags(b, &spec.component, &reference, repository, &digest).await?;
    if !tags.is_empty() {
        tracing::info!(build_id = %spec.build_id, ?tags, "cosign artifacts copied");
    }
    Ok(artifact)
}

/// The reference to copy from: `source`, with the source ref as its tag (or `@digest`) when
/// `source` has neither, and layout directories resolved under the app root.
pub(crate) fn source_reference(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    source: &str,
) -> Result<Reference, BuildError> {
    let component = &spec.component;
    let bad = |input: &str, reason: String| BuildError::InvalidReference {
        component: component.name.to_string(),
        input: input.to_string(),
        reason,
    };
    let parsed: Reference = source
        .parse()
        .map_err(|e: ferry_oci::Error| bad(source, strip_prefix(&e.to_string(), source)))?;
    let pinned = match &parsed {
        Reference::Registry(r) => r.tag.is_some() || r.digest.is_some(),
        Reference::Layout(l) => l.tag.is_some() || l.digest.is_some(),
    };
    let sref = spec.source_ref.trim();
    let parsed = if pinned || sref.is_empty() {
        parsed
    } else {
        let sep = if sref.starts_with("sha256:") {
            "@"
        } else {
            ":"
        };
        let full = format!("{source}{sep}{sref}");
        full.parse().map_err(|e: ferry_oci::Error| {
            bad(
                &full,
                format!(
                    "the source ref {sref:?} is not a valid tag or digest for this image: {}",
                    strip_prefix(&e.to_string(), &full)
                ),
            )
        })?
    };
    Ok(match parsed {
        Reference::Layout(l) => {
            let dir = l.dir.to_string_lossy().into_owned();
            let resolved = b.resolve_dir(component, "image layout directory", &dir)?;
            Reference::Layout(LayoutRef {
                dir: resolved,
                tag: l.tag,
                digest: l.digest,
            })
        }
        r => r,
    })
}

/// ferry-oci's message repeats the input; ours already names it.
fn strip_prefix(msg: &str, input: &str) -> String {
    let prefix = format!("invalid reference {input:?}: ");
    msg.strip_prefix(&prefix).unwrap_or(msg).to_string()
}
