//! The manifest model: descriptors, platforms, and [`ManifestDoc`], the parsed view of an
//! image manifest or index, with the one parser every crate uses.
//!
//! A manifest travels as its exact bytes (its digest is the hash of those bytes); parsing is
//! only for finding what it references and what it declares. Unknown fields are ignored.
//! Nothing here may re-encode a manifest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::SpecError;

/// A platform, as in an index entry.
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
    pub fn parse(input: &str) -> Result<Platform, SpecError> {
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
            _ => Err(SpecError::new(
                "platform",
                input,
                "expected os/arch[/variant], e.g. linux/amd64",
            )),
        }
    }

    /// Whether `self` (what was asked for) matches a descriptor's platform.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

/// An OCI content descriptor. Unknown fields are ignored; a missing `mediaType` reads as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    /// Missing reads as 0 (the registry has always accepted that); negative is refused.
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A descriptor as read from a manifest, with the `urls` of non-distributable layers.
#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(flatten)]
    descriptor: Descriptor,
    #[serde(default)]
    urls: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Vec<RawDescriptor>,
    #[serde(default)]
    manifests: Vec<RawDescriptor>,
    #[serde(default)]
    subject: Option<RawDescriptor>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// The parsed view of an image manifest or index: what it declares and what it references.
/// The bytes it came from are kept by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestDoc {
    /// `schemaVersion` (2 for every manifest Ferry accepts), if present.
    pub schema_version: Option<i64>,
    /// The manifest's own `mediaType` field, if present.
    pub media_type: Option<String>,
    /// `artifactType`, if present.
    pub artifact_type: Option<String>,
    /// The config blob of an image manifest.
    pub config: Option<Descriptor>,
    /// Layer blobs of an image manifest.
    pub layers: Vec<Descriptor>,
    /// Child manifests of an index.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (signatures, SBOMs, attestations).
    pub subject: Option<Descriptor>,
    /// Annotations, if present.
    pub annotations: Option<BTreeMap<String, String>>,
    /// Layers (or config) with `urls`: non-distributable, their bytes live elsewhere.
    pub foreign: Vec<Digest>,
}

impl ManifestDoc {
    /// Parses a manifest or index loosely: any JSON object with the manifest shape, every
    /// descriptor's digest valid. The reason says what to fix.
    pub fn parse(bytes: &[u8]) -> Result<ManifestDoc, SpecError> {
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| SpecError::new("manifest", "", format!("not valid manifest JSON: {e}")))?;
        let mut foreign = Vec::new();
        let mut take = |d: RawDescriptor| {
            if !d.urls.is_empty() {
                foreign.push(d.descriptor.digest.clone());
            }
            d.descriptor
        };
        let config = raw.config.map(&mut take);
        let layers = raw.layers.into_iter().map(&mut take).collect();
        let manifests = raw.manifests.into_iter().map(&mut take).collect();
        let subject = raw.subject.map(|d| d.descriptor);
        Ok(ManifestDoc {
            schema_version: raw.schema_version,
            media_type: raw.media_type,
            artifact_type: raw.artifact_type,
            config,
            layers,
            manifests,
            subject,
            annotations: raw.annotations,
            foreign,
        })
    }

    /// [`ManifestDoc::parse`], then what a registry must refuse: a `schemaVersion` other than
    /// 2, and a document that is neither an image manifest (config or layers) nor an index
    /// (manifests, or an index/list media type).
    pub fn parse_strict(bytes: &[u8]) -> Result<ManifestDoc, SpecError> {
        let doc = ManifestDoc::parse(bytes)?;
        let refuse = |reason: String| Err(SpecError::new("manifest", "", reason));
        match doc.schema_version {
            Some(2) => {}
            Some(v) => {
                return refuse(format!(
                    "schemaVersion {v} is not supported; push an OCI or Docker schema 2 manifest"
                ))
            }
            None => {
                return refuse(
                    "schemaVersion is missing; push an OCI or Docker schema 2 manifest".into(),
                )
            }
        }
        if doc.config.is_none() && doc.manifests.is_empty() && doc.layers.is_empty() {
            let is_index = doc
                .media_type
                .as_deref()
                .is_some_and(|m| m.contains("index") || m.contains("list"));
            if !is_index {
                return refuse(
                    "a manifest needs a config (image manifest) or a manifests list (index)".into(),
                );
            }
        }
        Ok(doc)
    }

    /// What this manifest references directly: children, config, layers (not the subject).
    pub fn references(&self) -> impl Iterator<Item = &Descriptor> {
        self.manifests
            .iter()
            .chain(self.config.iter())
            .chain(self.layers.iter())
    }

    /// Whether a referenced blob is non-distributable (has `urls`): a registry does not
    /// require it to be present.
    pub fn is_foreign(&self, digest: &Digest) -> bool {
        self.foreign.contains(digest)
    }

    /// The artifact type a referrers listing shows: `artifactType`, else the config's media
    /// type when it has one.
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type.clone().or_else(|| {
            self.config
                .as_ref()
                .map(|c| c.media_type.clone())
                .filter(|m| !m.is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{OCI_EMPTY_CONFIG, OCI_MANIFEST, ZIP_LAYER};

    fn image(extra_layer: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_EMPTY_CONFIG}","digest":"{}","size":2}},"layers":[{{"mediaType":"{ZIP_LAYER}","digest":"{}","size":3}}{extra_layer}],"unknown":1}}"#,
            Digest::of(b"{}"),
            Digest::of(b"zip")
        )
    }

    #[test]
    fn finds_references_and_foreign_layers() {
        let foreign = format!(
            r#",{{"mediaType":"x","digest":"{}","size":1,"urls":["https://example.invalid/x"]}}"#,
            Digest::of(b"far")
        );
        let doc = ManifestDoc::parse_strict(image(&foreign).as_bytes()).expect("valid");
        assert_eq!(doc.layers.len(), 2);
        assert_eq!(doc.layers[0].digest, Digest::of(b"zip"));
        assert_eq!(doc.references().count(), 3);
        assert!(doc.is_foreign(&Digest::of(b"far")));
        assert!(!doc.is_foreign(&Digest::of(b"zip")));
        assert_eq!(
            doc.effective_artifact_type().as_deref(),
            Some(OCI_EMPTY_CONFIG)
        );
    }

    #[test]
    fn refuses_with_a_reason() {
        let cases = [
            ("nope", "not valid manifest JSON"),
            (r#"{"schemaVersion":1,"config":null}"#, "schemaVersion 1"),
            (r#"{"layers":[]}"#, "schemaVersion is missing"),
            (r#"{"schemaVersion":2}"#, "needs a config"),
            (
                r#"{"schemaVersion":2,"layers":[{"mediaType":"x","digest":"sha256:zz","size":1}]}"#,
                "64 hex",
            ),
            (
                r#"{"schemaVersion":2,"layers":[{"mediaType":"x","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":-1}]}"#,
                "not valid manifest JSON",
            ),
        ];
        for (body, want) in cases {
            let err = ManifestDoc::parse_strict(body.as_bytes()).expect_err(body);
            assert!(err.to_string().contains(want), "{body}: {err}");
        }
        let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#;
        assert!(ManifestDoc::parse_strict(index.as_bytes()).is_ok());
    }

    #[test]
    fn parses_platforms() {
        let p = Platform::parse("linux/arm64/v8").expect("ok");
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert!(Platform::parse("linux").is_err());
    }
}
