//! Media types, descriptors and manifests as raw bytes.
//!
//! A manifest is kept as the exact bytes the registry served, because its digest is the hash of
//! those bytes; re-serialising would change it. Parsing (with oci-spec's shapes, loosely) is
//! only for finding what a manifest references. Nothing here may re-encode a manifest.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::error::{Error, Result};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
pub const HELM_CONFIG: &str = "application/vnd.cncf.helm.config.v1+json";
pub const HELM_CHART_LAYER: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
pub const OPENTOFU_MODULE_ARTIFACT: &str = "application/vnd.opentofu.modulepkg";
pub const ZIP_LAYER: &str = "archive/zip";

/// Every manifest media type Ferry understands, in the order sent in `Accept`.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
];

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

pub fn is_manifest_type(media_type: &str) -> bool {
    MANIFEST_MEDIA_TYPES.contains(&media_type)
}

/// The `Accept` header value listing every manifest media type.
pub fn accept_header() -> String {
    MANIFEST_MEDIA_TYPES.join(", ")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`, e.g. `linux/arm64/v8`.
    pub fn parse(input: &str) -> Result<Platform> {
        let parts: Vec<&str> = input.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
                os_version: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: os.to_string(),
                    architecture: arch.to_string(),
                    variant: Some(variant.to_string()),
                    os_version: None,
                })
            }
            _ => Err(Error::Config(format!(
                "invalid platform {input:?}: expected os/arch[/variant], e.g. linux/amd64"
            ))),
        }
    }

    /// Whether `self` (what was asked for) matches a descriptor's platform.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

/// An OCI content descriptor. Unknown fields are ignored; this is for reading references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestShape {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

/// A manifest or index: its exact bytes, its media type and its digest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// What a manifest references, parsed from its bytes.
#[derive(Debug, Clone, Default)]
pub struct References {
    /// Child manifests of an index (each with its platform, if any).
    pub manifests: Vec<Descriptor>,
    /// The config blob of an image manifest.
    pub config: Option<Descriptor>,
    /// Layer blobs of an image manifest.
    pub layers: Vec<Descriptor>,
    /// The subject this manifest refers to (signatures, SBOMs, attestations).
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
}

impl Manifest {
    /// Wraps raw bytes. `media_type` is the Content-Type the registry sent, or empty; the
    /// manifest's own `mediaType` field fills in when the header is missing or generic.
    pub fn from_bytes(bytes: Bytes, media_type: &str) -> Result<Manifest> {
        let digest = Digest::of(&bytes);
        let shape: ManifestShape =
            serde_json::from_slice(&bytes).map_err(|e| Error::InvalidManifest {
                target: digest.to_string(),
                reason: format!("not valid manifest JSON: {e}"),
            })?;
        let header = media_type.split(';').next().unwrap_or("").trim();
        let media_type = if is_manifest_type(header) {
            header.to_string()
        } else if let Some(mt) = shape.media_type.filter(|m| is_manifest_type(m)) {
            mt
        } else if !shape.manifests.is_empty() {
            OCI_INDEX.to_string()
        } else if shape.config.is_some() {
            OCI_MANIFEST.to_string()
        } else {
            return Err(Error::InvalidManifest {
                target: digest.to_string(),
                reason: format!("unknown manifest media type {header:?}"),
            });
        };
        Ok(Manifest {
            bytes,
            media_type,
            digest,
        })
    }

    pub fn is_index(&self) -> bool {
        is_index(&self.media_type)
    }

    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as u64,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    /// Everything this manifest points at.
    pub fn references(&self) -> Result<References> {
        let shape: ManifestShape =
            serde_json::from_slice(&self.bytes).map_err(|e| Error::InvalidManifest {
                target: self.digest.to_string(),
                reason: format!("not valid manifest JSON: {e}"),
            })?;
        if !self.is_index() && shape.config.is_none() {
            return Err(Error::InvalidManifest {
                target: self.digest.to_string(),
                reason: "an image manifest must have a config descriptor".into(),
            });
        }
        let artifact_type = shape
            .artifact_type
            .or_else(|| shape.config.as_ref().map(|c| c.media_type.clone()));
        Ok(References {
            manifests: shape.manifests,
            config: shape.config,
            layers: shape.layers,
            subject: shape.subject,
            artifact_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_bytes_and_finds_references() {
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_EMPTY_CONFIG}","digest":"{}","size":2}},"layers":[{{"mediaType":"{ZIP_LAYER}","digest":"{}","size":3}}]}}"#,
            Digest::of(b"{}"),
            Digest::of(b"zip")
        );
        let m = Manifest::from_bytes(Bytes::from(raw.clone()), "").expect("valid");
        assert_eq!(m.bytes, raw.as_bytes());
        assert_eq!(m.digest, Digest::of(raw.as_bytes()));
        assert_eq!(m.media_type, OCI_MANIFEST);
        let r = m.references().expect("refs");
        assert_eq!(r.layers.len(), 1);
        assert_eq!(r.layers[0].digest, Digest::of(b"zip"));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        let err = Manifest::from_bytes(Bytes::from_static(b"nope"), OCI_MANIFEST).expect_err("bad");
        assert!(err.to_string().contains("not valid manifest JSON"));
    }

    #[test]
    fn parses_platforms() {
        let p = Platform::parse("linux/arm64/v8").expect("ok");
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert!(Platform::parse("linux").is_err());
    }
}
