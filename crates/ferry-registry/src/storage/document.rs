//! The loose manifest model: the parts of an image manifest or index the registry needs
//! (references, subject, media and artifact types), the per-repository revision link, and the
//! referrer descriptor written for a manifest with a subject. It must never keep a manifest's
//! raw bytes (those stay in the blob store).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::names::digest_hex;
use super::Result;
use crate::errors::StorageError;

/// A descriptor as found in manifests (loose: unknown fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct LooseDescriptor {
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    #[serde(default)]
    pub(super) size: i64,
    #[serde(default)]
    pub(super) urls: Vec<String>,
}

/// The parts of an image manifest or index the registry needs; raw bytes are kept elsewhere.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct LooseManifest {
    #[serde(rename = "schemaVersion")]
    pub(super) schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    pub(super) media_type: Option<String>,
    #[serde(rename = "artifactType")]
    pub(super) artifact_type: Option<String>,
    pub(super) config: Option<LooseDescriptor>,
    #[serde(default)]
    pub(super) layers: Vec<LooseDescriptor>,
    #[serde(default)]
    pub(super) manifests: Vec<LooseDescriptor>,
    pub(super) subject: Option<LooseDescriptor>,
    #[serde(default)]
    pub(super) annotations: Option<BTreeMap<String, String>>,
}

impl LooseManifest {
    pub(super) fn parse(body: &[u8]) -> Result<Self> {
        let doc: LooseManifest = serde_json::from_slice(body).map_err(|e| {
            StorageError::ManifestInvalid(format!("not a valid manifest JSON document: {e}"))
        })?;
        match doc.schema_version {
            Some(2) => {}
            Some(v) => {
                return Err(StorageError::ManifestInvalid(format!(
                    "schemaVersion {v} is not supported; push an OCI or Docker schema 2 manifest"
                )))
            }
            None => {
                return Err(StorageError::ManifestInvalid(
                    "schemaVersion is missing; push an OCI or Docker schema 2 manifest".into(),
                ))
            }
        }
        if doc.config.is_none() && doc.manifests.is_empty() && doc.layers.is_empty() {
            let is_index = doc
                .media_type
                .as_deref()
                .is_some_and(|m| m.contains("index") || m.contains("list"));
            if !is_index {
                return Err(StorageError::ManifestInvalid(
                    "a manifest needs a config (image manifest) or a manifests list (index)".into(),
                ));
            }
        }
        for d in doc
            .config
            .iter()
            .chain(&doc.layers)
            .chain(&doc.manifests)
            .chain(&doc.subject)
        {
            digest_hex(&d.digest).map_err(|e| {
                StorageError::ManifestInvalid(format!("a descriptor has a bad digest: {e}"))
            })?;
            if d.size < 0 {
                return Err(StorageError::ManifestInvalid(format!(
                    "descriptor {} has a negative size",
                    d.digest
                )));
            }
        }
        Ok(doc)
    }

    /// Digests this manifest references directly (children, config, layers; not subject).
    pub(super) fn references(&self) -> impl Iterator<Item = &LooseDescriptor> {
        self.manifests
            .iter()
            .chain(self.config.iter())
            .chain(self.layers.iter())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RevisionLink {
    #[serde(rename = "mediaType")]
    pub(super) media_type: String,
}

pub(super) fn referrer_descriptor(
    doc: &LooseManifest,
    media_type: &str,
    digest: &str,
    size: usize,
) -> Value {
    let artifact_type = doc.artifact_type.clone().or_else(|| {
        doc.config
            .as_ref()
            .map(|c| c.media_type.clone())
            .filter(|m| !m.is_empty())
    });
    let mut d = serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": size,
    });
    if let Some(at) = artifact_type {
        d["artifactType"] = Value::String(at);
    }
    if let Some(annotations) = &doc.annotations {
        if !annotations.is_empty() {
            d["annotations"] = serde_json::json!(annotations);
        }
    }
    d
}
