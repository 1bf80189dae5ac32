//! What travels with an imported image, and the check before it is imported.
//!
//! - **Referrers** (OCI 1.1 signatures, SBOMs, attestations, through the referrers API or its
//!   `sha256-<hex>` tag-schema index) are copied by the copy engine with the image
//!   ([`ferry_oci::CopyOptions::referrers`]).
//! - **Cosign's tag scheme**: `sha256-<hex>.sig`, `.att` and `.sbom` in the image's repository
//!   (cosign's default, and the only one on registries without the referrers API, ECR
//!   included) are copied to the same tags in the vendor repository.
//! - **Verification**: with a [`ferry_oci::cosign::Policy`], the source is resolved to a digest,
//!   its signatures are verified, and only then is that digest (never the tag again) copied.
//!
//! This module must never import an image whose verification failed, and never treat a missing
//! signature artifact as an error when no policy asks for one.

use ferry_core::domain::Component;
use ferry_core::id::Repository;
use ferry_oci::cosign::{self, Policy};
use ferry_oci::{
    CopyEngine, CopyOptions, Digest, LayoutRef, OciLayout, Reference, RegistryRef, RepoRef,
};

use crate::error::BuildError;
use crate::ArtifactBuilder;

/// Resolves `source` (a registry reference, or an OCI layout holding the image and its
/// signature manifest under `sha256-<hex>.sig`) to its digest and verifies it against `policy`;
/// returns the source pinned to that digest.
pub(crate) async fn verify_source(
    b: &ArtifactBuilder,
    component: &Component,
    source: &Reference,
    policy: &Policy,
) -> Result<Reference, BuildError> {
    let oci = |e| BuildError::Oci {
        component: component.name.to_string(),
        source: e,
    };
    let r = match source {
        Reference::Registry(r) => r,
        Reference::Layout(l) => {
            let layout = OciLayout::open(&l.dir).await.map_err(oci)?;
            let digest = match &l.digest {
                Some(d) => d.clone(),
                None => layout.resolve(l.tag.as_deref()).await.map_err(oci)?.digest,
            };
            let verified = cosign::verify_layout(&layout, &digest, policy)
                .await
                .map_err(|e| BuildError::PolicyFailed {
                    component: component.name.to_string(),
                    reason: e.to_string(),
                })?;
            tracing::info!(component = %component.name, %digest, keys = ?verified.keys,
                "source signature verified");
            return Ok(Reference::Layout(LayoutRef {
                dir: l.dir.clone(),
                tag: None,
                digest: Some(digest),
            }));
        }
    };
    let digest = match &r.digest {
        Some(d) => d.clone(),
        None => {
            let tag = r.tag.as_deref().unwrap_or("latest");
            b.inner
                .client
                .head_manifest(&r.repo, tag)
                .await
                .map_err(oci)?
                .ok_or_else(|| BuildError::Oci {
                    component: component.name.to_string(),
                    source: ferry_oci::Error::NotFound {
                        step: ferry_oci::Step::HeadManifest,
                        target: format!("{}:{tag}", r.repo),
                    },
                })?
                .digest
        }
    };
    let verified = cosign::verify(&b.inner.client, &r.repo, &digest, policy)
        .await
        .map_err(|e| BuildError::PolicyFailed {
            component: component.name.to_string(),
            reason: e.to_string(),
        })?;
    tracing::info!(component = %component.name, %digest, keys = ?verified.keys,
        "source signature verified");
    Ok(Reference::Registry(RegistryRef {
        repo: r.repo.clone(),
        tag: None,
        digest: Some(digest),
    }))
}

/// Copies cosign's tag-scheme artifacts of `digest` from a registry `source`'s repository to
/// the same tags in `repository`; returns the tags copied. Missing ones are skipped.
pub(crate) async fn copy_cosign_tags(
    b: &ArtifactBuilder,
    component: &Component,
    source: &Reference,
    repository: &Repository,
    digest: &Digest,
) -> Result<Vec<String>, BuildError> {
    let dest_repo = RepoRef::new(b.inner.config.registry.clone(), repository.as_str());
    let engine = CopyEngine::new(b.inner.client.clone(), CopyOptions::default());
    let r = match source {
        Reference::Registry(r) => r,
        Reference::Layout(l) => {
            return copy_layout_tags(&engine, component, &l.dir, &dest_repo, digest).await
        }
    };
    cosign::copy_tag_scheme(&engine, &b.inner.client, &r.repo, &dest_repo, digest)
        .await
        .map_err(|e| BuildError::Oci {
            component: component.name.to_string(),
            source: e,
        })
}

/// [`copy_cosign_tags`] from an OCI layout: each `sha256-<hex>.sig/.att/.sbom` its index
/// tags is copied to the same tag in `dest`.
async fn copy_layout_tags(
    engine: &CopyEngine,
    component: &Component,
    dir: &std::path::Path,
    dest: &RepoRef,
    digest: &Digest,
) -> Result<Vec<String>, BuildError> {
    let oci = |e| BuildError::Oci {
        component: component.name.to_string(),
        source: e,
    };
    let layout = OciLayout::open(dir).await.map_err(oci)?;
    let stem = digest.as_str().replacen(':', "-", 1);
    let mut copied = Vec::new();
    for suffix in cosign::TAG_SUFFIXES {
        let tag = format!("{stem}.{suffix}");
        match layout.resolve(Some(&tag)).await {
            Ok(_) => {}
            Err(ferry_oci::Error::NotFound { .. }) => continue,
            Err(e) => return Err(oci(e)),
        }
        let from = Reference::Layout(LayoutRef {
            dir: dir.to_path_buf(),
            tag: Some(tag.clone()),
            digest: None,
        });
        let to = Reference::Registry(RegistryRef {
            repo: dest.clone(),
            tag: Some(tag.clone()),
            digest: None,
        });
        engine
            .copy(
                &from,
                &[to],
                std::sync::Arc::new(ferry_oci::progress::NoProgress),
            )
            .await
            .map_err(oci)?;
        copied.push(tag);
    }
    Ok(copied)
}
