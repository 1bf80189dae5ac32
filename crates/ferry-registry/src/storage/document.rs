//! What storage writes beside a manifest: the per-repository revision link, and the referrer
//! descriptor recorded for a manifest with a subject. Manifests are parsed by ferry-spec's
//! [`ManifestDoc`]; this module must never parse or re-encode a manifest itself.

use ferry_spec::ManifestDoc;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RevisionLink {
    #[serde(rename = "mediaType")]
    pub(super) media_type: String,
}

/// The descriptor a referrers listing shows for manifest `digest` (`doc`), stored under its
/// subject.
pub(super) fn referrer_descriptor(
    doc: &ManifestDoc,
    media_type: &str,
    digest: &str,
    size: usize,
) -> Value {
    let mut d = serde_json::json!({
        "mediaType": media_type,
        "digest": digest,
        "size": size,
    });
    if let Some(at) = doc.effective_artifact_type() {
        d["artifactType"] = Value::String(at);
    }
    if let Some(annotations) = &doc.annotations {
        if !annotations.is_empty() {
            d["annotations"] = serde_json::json!(annotations);
        }
    }
    d
}
