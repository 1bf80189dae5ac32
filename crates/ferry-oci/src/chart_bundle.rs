//! A chart with the images it runs, as one OCI artifact (a "chart bundle"), and the values
//! override an install writes next to it.
//!
//! The build writes the bundle: an OCI index (`artifactType` [`BUNDLE_ARTIFACT_TYPE`]) in the
//! chart's own repository whose children are the chart manifest and every image (each
//! annotated with its role and, for images, the name the chart's values give it), and whose
//! annotation [`VALUES_TEMPLATE`] holds the values override with the install's registry left
//! as the placeholders [`REGISTRY_PLACEHOLDER`] and [`REPOSITORY_PLACEHOLDER`]. Because every
//! child lives in the one repository, a sync copies the bundle by digest like any artifact, and
//! a grant for that repository covers all of it.
//!
//! The agent, once the bundle is copied and verified, fills in the placeholders with its own
//! registry and repository and writes the override as an OCI artifact whose `subject` is the
//! chart, tagged `sha256-<bundle hex>.values`, and tags the chart `sha256-<bundle hex>.chart`.
//!
//! This module must never write anything but into the repository it is given, and never act
//! on a bundle it cannot parse fully (a malformed bundle is an error, not a skipped step).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;

use crate::client::RegistryClient;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::media::{Descriptor, Manifest, ManifestDoc, OCI_EMPTY_CONFIG, OCI_INDEX, OCI_MANIFEST};
use crate::reference::RepoRef;
use crate::ByteStream;

/// `artifactType` of a chart bundle index.
pub const BUNDLE_ARTIFACT_TYPE: &str = "application/vnd.ferry.chart.bundle.v1";
/// `artifactType` of the values override an install writes.
pub const VALUES_ARTIFACT_TYPE: &str = "application/vnd.ferry.helm.values.v1";
/// Media type of the override's one layer: JSON, which Helm reads as YAML (`helm -f`).
pub const VALUES_LAYER: &str = "application/vnd.ferry.helm.values.v1+json";
/// Annotation on each child of a bundle: [`ROLE_CHART`] or [`ROLE_IMAGE`].
pub const ROLE: &str = "dev.ferry.bundle.role";
pub const ROLE_CHART: &str = "chart";
pub const ROLE_IMAGE: &str = "image";
/// Annotation on an image child: the reference as the chart's values write it.
pub const IMAGE_NAME: &str = "dev.ferry.bundle.image.name";
/// Annotation on the bundle: the values override as JSON, with placeholders.
pub const VALUES_TEMPLATE: &str = "dev.ferry.chart.values-template";
/// Annotation on the override: the bundle it was made from.
pub const BUNDLE_DIGEST: &str = "dev.ferry.bundle.digest";
/// Stands for the install registry's host in a values template.
pub const REGISTRY_PLACEHOLDER: &str = "$FERRY_REGISTRY";
/// Stands for the chart's repository in the install registry in a values template.
pub const REPOSITORY_PLACEHOLDER: &str = "$FERRY_REPOSITORY";
/// The largest values template a bundle may carry.
pub const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
/// The most images one bundle may list.
pub const MAX_IMAGES: usize = 256;

/// What a bundle holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub chart: Descriptor,
    /// (name as the chart's values write it, the image's descriptor).
    pub images: Vec<(String, Descriptor)>,
    /// The values override, placeholders unfilled.
    pub template: Value,
}

fn invalid(target: &Digest, reason: impl Into<String>) -> Error {
    Error::InvalidManifest {
        target: target.to_string(),
        reason: reason.into(),
    }
}

/// The bundle index over `chart` and `images`, with `template` as its values template and
/// `annotations` (title, version…) added. Bytes are fixed by field order, so the same inputs
/// give the same digest.
pub fn bundle_index(
    chart: &Descriptor,
    images: &[(String, Descriptor)],
    template: &Value,
    annotations: &BTreeMap<String, String>,
) -> Result<Manifest> {
    if images.len() > MAX_IMAGES {
        return Err(Error::InvalidManifest {
            target: "chart bundle".into(),
            reason: format!(
                "{} images; a bundle holds at most {MAX_IMAGES}",
                images.len()
            ),
        });
    }
    let mut children = Vec::with_capacity(images.len() + 1);
    let mut c = strip(chart);
    c.annotations.insert(ROLE.into(), ROLE_CHART.into());
    children.push(c);
    for (name, d) in images {
        let mut i = strip(d);
        i.annotations.insert(ROLE.into(), ROLE_IMAGE.into());
        i.annotations.insert(IMAGE_NAME.into(), name.clone());
        children.push(i);
    }
    let template_text = serde_json::to_string(template).map_err(|e| Error::InvalidManifest {
        target: "chart bundle".into(),
        reason: format!("values template: {e}"),
    })?;
    if template_text.len() > MAX_TEMPLATE_BYTES {
        return Err(Error::InvalidManifest {
            target: "chart bundle".into(),
            reason: format!(
                "the values template is {} bytes; at most {MAX_TEMPLATE_BYTES}",
                template_text.len()
            ),
        });
    }
    let mut ann = annotations.clone();
    ann.insert(VALUES_TEMPLATE.into(), template_text);
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": BUNDLE_ARTIFACT_TYPE,
        "manifests": children,
        "annotations": ann,
    });
    let bytes = serde_json::to_vec(&doc).map_err(|e| Error::InvalidManifest {
        target: "chart bundle".into(),
        reason: format!("cannot encode: {e}"),
    })?;
    Manifest::from_bytes(Bytes::from(bytes), OCI_INDEX)
}

fn strip(d: &Descriptor) -> Descriptor {
    Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        platform: None,
        artifact_type: None,
        annotations: BTreeMap::new(),
    }
}

/// The bundle `m` is, or `None` when it is no bundle (any other artifact). A manifest that
/// says it is a bundle but is malformed is an error.
pub fn parse_bundle(m: &Manifest) -> Result<Option<Bundle>> {
    if !m.is_index() {
        return Ok(None);
    }
    let doc = ManifestDoc::parse(&m.bytes).map_err(|e| invalid(&m.digest, e.to_string()))?;
    if doc.artifact_type.as_deref() != Some(BUNDLE_ARTIFACT_TYPE) {
        return Ok(None);
    }
    let mut chart = None;
    let mut images = Vec::new();
    for d in &doc.manifests {
        match d.annotations.get(ROLE).map(String::as_str) {
            Some(ROLE_CHART) if chart.is_none() => chart = Some(d.clone()),
            Some(ROLE_CHART) => return Err(invalid(&m.digest, "the bundle lists two charts")),
            Some(ROLE_IMAGE) => {
                let name = d.annotations.get(IMAGE_NAME).ok_or_else(|| {
                    invalid(&m.digest, format!("image {} has no {IMAGE_NAME}", d.digest))
                })?;
                images.push((name.clone(), d.clone()));
            }
            other => {
                return Err(invalid(
                    &m.digest,
                    format!(
                        "child {} has role {other:?}; expected chart or image",
                        d.digest
                    ),
                ))
            }
        }
    }
    if images.len() > MAX_IMAGES {
        return Err(invalid(&m.digest, format!("more than {MAX_IMAGES} images")));
    }
    let chart = chart.ok_or_else(|| invalid(&m.digest, "the bundle lists no chart"))?;
    let text = doc
        .annotations
        .as_ref()
        .and_then(|a| a.get(VALUES_TEMPLATE))
        .ok_or_else(|| invalid(&m.digest, format!("no {VALUES_TEMPLATE} annotation")))?;
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(invalid(&m.digest, "the values template is too large"));
    }
    let template: Value = serde_json::from_str(text)
        .map_err(|e| invalid(&m.digest, format!("the values template is not JSON: {e}")))?;
    if !template.is_object() {
        return Err(invalid(
            &m.digest,
            "the values template is not a JSON object",
        ));
    }
    Ok(Some(Bundle {
        chart,
        images,
        template,
    }))
}

/// `template` with the placeholders in every string replaced: `registry` (`host[:port]`) and
/// `repository` (the chart's repository there).
pub fn fill_template(template: &Value, registry: &str, repository: &str) -> Value {
    match template {
        Value::String(s) => Value::String(
            s.replace(REGISTRY_PLACEHOLDER, registry)
                .replace(REPOSITORY_PLACEHOLDER, repository),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| fill_template(v, registry, repository))
                .collect(),
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), fill_template(v, registry, repository)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The tag the override gets next to the bundle `digest`: `sha256-<hex>.values`.
pub fn values_tag(bundle: &Digest) -> String {
    format!("{}.values", bundle.as_str().replacen(':', "-", 1))
}

/// The tag the chart gets next to the bundle `digest`: `sha256-<hex>.chart`.
pub fn chart_tag(bundle: &Digest) -> String {
    format!("{}.chart", bundle.as_str().replacen(':', "-", 1))
}

/// What [`write_values_override`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenOverride {
    /// The override manifest (tagged [`values_tag`]).
    pub manifest: Digest,
    /// The chart manifest (tagged [`chart_tag`]).
    pub chart: Digest,
    pub images: usize,
}

/// If `bundle` in `repo` is a chart bundle, writes its values override (filled with `repo`'s
/// registry and repository) and the chart's tag; `None` for any other artifact. Blobs first,
/// then the override manifest, then the chart tag.
pub async fn write_values_override(
    client: &RegistryClient,
    repo: &RepoRef,
    bundle: &Digest,
) -> Result<Option<WrittenOverride>> {
    let manifest = client.get_manifest(repo, bundle.as_str()).await?;
    let Some(b) = parse_bundle(&manifest)? else {
        return Ok(None);
    };
    let values = fill_template(&b.template, &repo.registry, &repo.repository);
    let values = Bytes::from(
        serde_json::to_vec_pretty(&values)
            .map_err(|e| invalid(bundle, format!("cannot encode the values override: {e}")))?,
    );
    let config = Bytes::from_static(b"{}");
    let config_desc = put_blob(client, repo, OCI_EMPTY_CONFIG, config).await?;
    let mut layer = put_blob(client, repo, VALUES_LAYER, values).await?;
    layer.annotations.insert(
        "org.opencontainers.image.title".into(),
        "values.json".into(),
    );
    let doc = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": VALUES_ARTIFACT_TYPE,
        "config": config_desc,
        "layers": [layer],
        "subject": strip(&b.chart),
        "annotations": {BUNDLE_DIGEST: bundle.as_str()},
    });
    let bytes = serde_json::to_vec(&doc)
        .map_err(|e| invalid(bundle, format!("cannot encode the override manifest: {e}")))?;
    let values_manifest = Manifest::from_bytes(Bytes::from(bytes), OCI_MANIFEST)?;
    put_tag(client, repo, &values_tag(bundle), &values_manifest).await?;
    let chart = client.get_manifest(repo, b.chart.digest.as_str()).await?;
    put_tag(client, repo, &chart_tag(bundle), &chart).await?;
    Ok(Some(WrittenOverride {
        manifest: values_manifest.digest,
        chart: b.chart.digest,
        images: b.images.len(),
    }))
}

/// Tags `manifest` as `tag`, unless the tag already holds exactly it (an immutable tag on ECR
/// must not be rewritten, and a redelivered job writes the same bytes again).
async fn put_tag(
    client: &RegistryClient,
    repo: &RepoRef,
    tag: &str,
    manifest: &Manifest,
) -> Result<()> {
    if let Some(held) = client.head_manifest(repo, tag).await? {
        if held.digest == manifest.digest {
            return Ok(());
        }
    }
    client.put_manifest(repo, tag, manifest).await?;
    Ok(())
}

async fn put_blob(
    client: &RegistryClient,
    repo: &RepoRef,
    media_type: &str,
    bytes: Bytes,
) -> Result<Descriptor> {
    let digest = Digest::of(&bytes);
    let size = bytes.len() as u64;
    if client.blob_exists(repo, &digest).await?.is_none() {
        let body: ByteStream = Box::pin(futures::stream::iter([Ok(bytes)]));
        client.upload_blob(repo, &digest, size, body).await?;
    }
    Ok(Descriptor {
        media_type: media_type.into(),
        digest,
        size,
        platform: None,
        artifact_type: None,
        annotations: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, fill: char) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: Digest::of(fill.to_string().as_bytes()),
            size: 10,
            platform: None,
            artifact_type: None,
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn a_bundle_round_trips_and_other_indexes_are_not_bundles() {
        let chart = desc(OCI_MANIFEST, 'c');
        let images = vec![("nginx:1.27".to_string(), desc(OCI_INDEX, 'i'))];
        let template = serde_json::json!({"image": format!("{REGISTRY_PLACEHOLDER}/{REPOSITORY_PLACEHOLDER}@sha256:x")});
        let m = bundle_index(&chart, &images, &template, &BTreeMap::new()).unwrap();
        let again = bundle_index(&chart, &images, &template, &BTreeMap::new()).unwrap();
        assert_eq!(m.digest, again.digest, "deterministic");
        let b = parse_bundle(&m).unwrap().unwrap();
        assert_eq!(b.chart.digest, chart.digest);
        assert_eq!(b.images[0].0, "nginx:1.27");
        assert_eq!(b.template, template);
        let filled = fill_template(&b.template, "reg:5000", "installs/a/demo/chart");
        assert_eq!(filled["image"], "reg:5000/installs/a/demo/chart@sha256:x");

        let plain = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [desc(OCI_MANIFEST, 'c')]});
        let plain = Manifest::from_bytes(Bytes::from(plain.to_string()), OCI_INDEX).unwrap();
        assert!(parse_bundle(&plain).unwrap().is_none());
    }

    #[test]
    fn a_malformed_bundle_is_an_error() {
        let no_chart = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "artifactType": BUNDLE_ARTIFACT_TYPE, "manifests": [],
            "annotations": {VALUES_TEMPLATE: "{}"}});
        let m = Manifest::from_bytes(Bytes::from(no_chart.to_string()), OCI_INDEX).unwrap();
        assert!(parse_bundle(&m)
            .unwrap_err()
            .to_string()
            .contains("no chart"));
        let mut d = desc(OCI_MANIFEST, 'c');
        d.annotations.insert(ROLE.into(), ROLE_CHART.into());
        let bad_template = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "artifactType": BUNDLE_ARTIFACT_TYPE, "manifests": [d],
            "annotations": {VALUES_TEMPLATE: "[1]"}});
        let m = Manifest::from_bytes(Bytes::from(bad_template.to_string()), OCI_INDEX).unwrap();
        assert!(parse_bundle(&m)
            .unwrap_err()
            .to_string()
            .contains("not a JSON object"));
    }

    #[test]
    fn tags_sit_next_to_the_bundle_digest() {
        let d = Digest::of(b"x");
        assert_eq!(
            values_tag(&d),
            format!("sha256-{}.values", &d.as_str()[7..])
        );
        assert!(ferry_spec::valid_tag(&values_tag(&d)));
        assert!(ferry_spec::valid_tag(&chart_tag(&d)));
    }
}
