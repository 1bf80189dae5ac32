//! Manifests as raw bytes, and what they reference.
//!
//! A manifest is kept as the exact bytes the registry served, because its digest is the hash of
//! those bytes; re-serialising would change it. Media types, descriptors, platforms and the
//! parser are ferry-spec's (re-exported here at their old paths); this module only wraps the
//! bytes. Nothing here may re-encode a manifest.

use bytes::Bytes;
use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::error::{Error, Result};

pub use ferry_spec::manifest::{Descriptor, ManifestDoc, Platform};
pub use ferry_spec::media::{
    accept_header, is_index, is_manifest_type, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
    HELM_CHART_LAYER, HELM_CONFIG, HELM_PROVENANCE_LAYER, MANIFEST_MEDIA_TYPES, OCI_EMPTY_CONFIG,
    OCI_IMAGE_CONFIG, OCI_INDEX, OCI_LAYER_TAR_GZIP, OCI_MANIFEST, OPENTOFU_MODULE_ARTIFACT,
    ZIP_LAYER,
};

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
        let shape = parse(&bytes, &digest)?;
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
        let shape = parse(&self.bytes, &self.digest)?;
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

/// ferry-spec's parser, with the error naming the manifest by digest.
fn parse(bytes: &[u8], digest: &Digest) -> Result<ManifestDoc> {
    ManifestDoc::parse(bytes).map_err(|e| Error::InvalidManifest {
        target: digest.to_string(),
        reason: e.reason,
    })
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
}
