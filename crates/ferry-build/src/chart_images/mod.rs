//! The images a `helm-chart` component runs: found, checked against the component's list,
//! copied into the chart's vendor repository by digest, and bundled with the chart as one
//! artifact (`ferry_oci::chart_bundle`) whose values template points every image at the
//! install's own registry.
//!
//! Finding images: with a renderer (Helm's own code, through helm-python-sdk) the chart is
//! rendered with its default values and the component's values, and every string under an
//! `image` key in the output is a found image; the chart is then rendered again with the
//! override (a probe registry filled in) and every image must come out as a probe reference by
//! digest. Without a renderer a conservative scan reads `values.yaml` and the templates line by
//! line and fails on anything it cannot follow (see docs/design/build.md). A found image that
//! is not listed fails the build, naming it.
//!
//! This module must never let an image slip through unlisted when discovery is on, never read
//! more of the chart than its bounds, and never put a credential into an error.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_core::domain::ChartImage;
use ferry_core::ports::BuildSpec;
use ferry_oci::chart_bundle;
use ferry_oci::media::{Descriptor, HELM_CHART_LAYER};
use ferry_oci::{
    CopyEngine, CopyOptions, Digest as OciDigest, LayoutRef, Reference, RegistryRef, RepoRef,
};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use yaml_rust2::{Yaml, YamlLoader};

use crate::error::{io_err, BuildError};

mod checks;
mod values;

use crate::{ArtifactBuilder, BuiltArtifact};
use checks::{check_found, check_probe, scan, Renderer};
use values::{coalesce, locate_all, redirects};

/// The largest chart archive read back for scanning.
const MAX_ARCHIVE: u64 = 512 * 1024 * 1024;
/// The largest single file (values.yaml, a template) read from the archive.
const MAX_FILE: u64 = 1024 * 1024;
/// All files read from the archive together.
const MAX_TOTAL: u64 = 16 * 1024 * 1024;
/// Entries in the archive.
const MAX_ENTRIES: usize = 10_000;
/// The renderer's output, all manifests together.
const MAX_RENDERED: usize = 64 * 1024 * 1024;
/// How long one render may take.
const RENDER_TIMEOUT: Duration = Duration::from_secs(120);
/// The registry the probe render fills in.
const PROBE_REGISTRY: &str = "ferry-probe.invalid";
const PROBE_REPOSITORY: &str = "probe/chart";

/// How the build renders charts to find their images.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ChartRenderer {
    /// `FERRY_HELM_PYTHON` (or `python3`) when it can import helm-python-sdk; otherwise the
    /// conservative scan.
    #[default]
    Auto,
    /// This Python interpreter, which must import helm-python-sdk.
    HelmPython(String),
    /// Only the conservative scan.
    ScanOnly,
}

/// What the component asks for.
pub(crate) struct ImagesSpec<'a> {
    pub images: &'a [ChartImage],
    pub discover: bool,
    pub values: Option<&'a Value>,
}

fn fail(spec: &BuildSpec, reason: impl Into<String>) -> BuildError {
    BuildError::ChartImages {
        component: spec.component.name.to_string(),
        reason: reason.into(),
    }
}

/// Turns the pushed `chart` into a bundle with its images when the component lists or
/// discovers any; otherwise returns it unchanged.
pub(crate) async fn bundle(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    chart: BuiltArtifact,
    want: ImagesSpec<'_>,
) -> Result<BuiltArtifact, BuildError> {
    if want.images.is_empty() && !want.discover {
        return Ok(chart);
    }
    let component = &spec.component;
    if let Some(v) = want.values {
        if !v.is_object() {
            return Err(fail(spec, "values must be a JSON object (a map of values)"));
        }
    }
    let listed = want
        .images
        .iter()
        .map(|i| Listed::parse(b, spec, i))
        .collect::<Result<Vec<_>, _>>()?;
    let repo = RepoRef::new(b.inner.config.registry.clone(), chart.repository.as_str());
    let tmp = b.temp_dir("ferry-chart-images-")?;
    let archive = fetch_chart(b, spec, &repo, &chart.digest, tmp.path()).await?;
    let files = {
        let archive = archive.clone();
        let name = component.name.to_string();
        crate::package::blocking(move || ChartFiles::read(&archive, &name)).await?
    };
    let mut values = files.values.clone();
    if let Some(v) = want.values {
        coalesce(&mut values, v);
    }
    let located = locate_all(&values, &listed).map_err(|r| fail(spec, r))?;

    let renderer = match want.discover {
        true => Renderer::pick(&b.inner.config.chart_renderer)
            .await
            .map_err(|r| fail(spec, r))?,
        false => None,
    };
    if want.discover {
        match &renderer {
            Some(r) => {
                let found = r
                    .images(&archive, want.values, tmp.path())
                    .await
                    .map_err(|e| fail(spec, e))?;
                check_found(&found, &listed).map_err(|r| fail(spec, r))?;
            }
            None => scan(&files, &values, &listed, &located).map_err(|r| fail(spec, r))?,
        }
    }

    // Copy every image into the chart's repository, by digest, untagged (the bundle holds it).
    let mut images = Vec::with_capacity(listed.len());
    for l in &listed {
        let d = import(b, spec, l, &repo).await?;
        images.push((l.name.clone(), d));
    }
    let redirects = redirects(&located, &listed, &images);
    let mut template = want
        .values
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    coalesce(&mut template, &redirects);

    if let Some(r) = &renderer {
        let probe = chart_bundle::fill_template(&template, PROBE_REGISTRY, PROBE_REPOSITORY);
        let found = r
            .images(&archive, Some(&probe), tmp.path())
            .await
            .map_err(|e| fail(spec, e))?;
        check_probe(&found, &images).map_err(|r| fail(spec, r))?;
    }

    let chart_desc = Descriptor {
        media_type: chart.media_type.clone(),
        digest: chart.digest.clone(),
        size: chart.size,
        platform: None,
        artifact_type: None,
        annotations: BTreeMap::new(),
    };
    let mut ann = BTreeMap::new();
    ann.insert(
        "org.opencontainers.image.title".to_string(),
        files.name.clone(),
    );
    ann.insert(
        "org.opencontainers.image.version".to_string(),
        files.version.clone(),
    );
    let index = chart_bundle::bundle_index(&chart_desc, &images, &template, &ann).map_err(|e| {
        BuildError::Oci {
            component: component.name.to_string(),
            source: e,
        }
    })?;
    let oci = |source| BuildError::Oci {
        component: component.name.to_string(),
        source,
    };
    let tag = spec.build_id.to_string();
    b.inner
        .client
        .put_manifest(&repo, &tag, &index)
        .await
        .map_err(oci)?;
    tracing::info!(build_id = %spec.build_id, bundle = %index.digest, chart = %chart.digest,
        images = images.len(), rendered = renderer.is_some(), "chart bundled with its images");
    drop(tmp);
    Ok(BuiltArtifact {
        repository: chart.repository,
        digest: index.digest.clone(),
        media_type: index.media_type.clone(),
        size: index.bytes.len() as u64,
        tags: vec![tag],
        revision: chart.revision.clone(),
    })
}

// ---- the listed images ------------------------------------------------------------------------

/// One listed image: its name (as the chart writes it), parsed, and where to copy it from.
struct Listed {
    name: String,
    key: ImageKey,
    source: Reference,
}

/// A registry reference reduced to what identifies an image: Docker Hub names are expanded,
/// a missing tag is `latest` (unless a digest is given).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageKey {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageKey {
    fn parse(text: &str) -> Option<ImageKey> {
        let text = text.trim();
        if text.is_empty() || text.starts_with("oci:") || text.contains(char::is_whitespace) {
            return None;
        }
        match text.parse::<Reference>().ok()? {
            Reference::Registry(r) => {
                let tag = match (&r.tag, &r.digest) {
                    (None, None) => Some("latest".to_string()),
                    (t, _) => t.clone(),
                };
                Some(ImageKey {
                    registry: r.repo.registry,
                    repository: r.repo.repository,
                    tag,
                    digest: r.digest.map(|d| d.to_string()),
                })
            }
            Reference::Layout(_) => None,
        }
    }

    fn same_repository(&self, other: &ImageKey) -> bool {
        self.registry == other.registry && self.repository == other.repository
    }
}

impl Listed {
    fn parse(
        b: &ArtifactBuilder,
        spec: &BuildSpec,
        image: &ChartImage,
    ) -> Result<Listed, BuildError> {
        let name = image.name().trim().to_string();
        let key = ImageKey::parse(&name).ok_or_else(|| {
            fail(
                spec,
                format!(
                    "listed image {name:?} is not an image reference (host/repository:tag or \
                     @sha256:…) as the chart's values would write it"
                ),
            )
        })?;
        let bad = |reason: String| BuildError::InvalidReference {
            component: spec.component.name.to_string(),
            input: image.source().to_string(),
            reason,
        };
        let source = match image
            .source()
            .parse::<Reference>()
            .map_err(|e| bad(e.to_string()))?
        {
            Reference::Layout(l) => {
                let dir = l.dir.to_string_lossy().into_owned();
                let resolved = b.resolve_dir(&spec.component, "image layout directory", &dir)?;
                Reference::Layout(LayoutRef {
                    dir: resolved,
                    tag: l.tag,
                    digest: l.digest,
                })
            }
            r => r,
        };
        Ok(Listed { name, key, source })
    }
}

fn listed_index(listed: &[Listed], key: &ImageKey) -> Option<usize> {
    listed.iter().position(|l| &l.key == key)
}

/// Copies one image (every platform, its referrers too) into `repo`, untagged; returns its
/// descriptor there. A name pinned to a digest must get exactly that digest.
async fn import(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    l: &Listed,
    repo: &RepoRef,
) -> Result<Descriptor, BuildError> {
    let oci = |source| BuildError::Oci {
        component: spec.component.name.to_string(),
        source,
    };
    let engine = CopyEngine::new(
        b.inner.client.clone(),
        CopyOptions {
            referrers: true,
            ..CopyOptions::default()
        },
    );
    let dest = Reference::Registry(RegistryRef {
        repo: repo.clone(),
        tag: None,
        digest: None,
    });
    let report = engine
        .copy(
            &l.source,
            &[dest],
            Arc::new(ferry_oci::progress::NoProgress),
        )
        .await
        .map_err(oci)?;
    let digest = report
        .digest
        .ok_or_else(|| fail(spec, format!("copying {} reported no digest", l.source)))?;
    if let Some(pinned) = &l.key.digest {
        if pinned != digest.as_str() {
            return Err(fail(
                spec,
                format!(
                    "image {} is pinned to {pinned} but its source {} gave {digest}; point the \
                     source at that digest",
                    l.name, l.source
                ),
            ));
        }
    }
    let desc = b
        .inner
        .client
        .head_manifest(repo, digest.as_str())
        .await
        .map_err(oci)?
        .ok_or_else(|| {
            fail(
                spec,
                format!("image {} is missing right after its copy", l.name),
            )
        })?;
    tracing::info!(build_id = %spec.build_id, image = %l.name, digest = %digest,
        bytes = report.bytes_copied, "chart image copied");
    Ok(Descriptor {
        media_type: desc.media_type,
        digest,
        size: desc.size,
        platform: None,
        artifact_type: None,
        annotations: BTreeMap::new(),
    })
}

// ---- the chart's files ------------------------------------------------------------------------

/// Streams the chart layer of the pushed chart manifest into `dir/chart.tgz`, verified.
async fn fetch_chart(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    repo: &RepoRef,
    digest: &OciDigest,
    dir: &Path,
) -> Result<PathBuf, BuildError> {
    let oci = |source| BuildError::Oci {
        component: spec.component.name.to_string(),
        source,
    };
    let client = &b.inner.client;
    let m = client
        .get_manifest(repo, digest.as_str())
        .await
        .map_err(oci)?;
    let refs = m.references().map_err(oci)?;
    let layer = refs
        .layers
        .iter()
        .find(|l| l.media_type == HELM_CHART_LAYER)
        .ok_or_else(|| {
            fail(
                spec,
                format!("chart {digest} has no {HELM_CHART_LAYER} layer"),
            )
        })?;
    if layer.size > MAX_ARCHIVE {
        return Err(fail(
            spec,
            format!(
                "the chart archive is {} bytes; at most {MAX_ARCHIVE} are scanned",
                layer.size
            ),
        ));
    }
    let path = dir.join("chart.tgz");
    let stream = client
        .get_blob(repo, &layer.digest, Some(layer.size))
        .await
        .map_err(oci)?;
    let mut stream =
        ferry_oci::digest::VerifyingStream::new(stream, layer.digest.clone(), Some(layer.size));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(io_err("create", &path))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(oci)?;
        file.write_all(&chunk)
            .await
            .map_err(io_err("write", &path))?;
    }
    file.flush().await.map_err(io_err("write", &path))?;
    Ok(path)
}

/// What the scan needs from a chart archive.
#[derive(Debug, Default)]
struct ChartFiles {
    name: String,
    version: String,
    /// values.yaml as JSON (an empty object when there is none).
    values: Value,
    /// (path inside the chart, text) of every file under `templates/`.
    templates: Vec<(String, String)>,
    /// Whether the archive holds subcharts (`charts/`).
    subcharts: bool,
}

impl ChartFiles {
    fn read(archive: &Path, component: &str) -> Result<ChartFiles, BuildError> {
        let bad = |reason: String| BuildError::InvalidChart {
            component: component.to_string(),
            file: archive.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(archive).map_err(io_err("open", archive))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut out = ChartFiles {
            values: Value::Object(Map::new()),
            ..ChartFiles::default()
        };
        let mut total = 0u64;
        let mut chart_yaml = None;
        for (n, entry) in tar.entries().map_err(io_err("read", archive))?.enumerate() {
            if n >= MAX_ENTRIES {
                return Err(bad(format!("more than {MAX_ENTRIES} entries")));
            }
            let mut entry = entry.map_err(io_err("read", archive))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry.path().map_err(io_err("read", archive))?;
            let path = path.to_string_lossy().replace('\\', "/");
            let Some((_, rel)) = path.split_once('/') else {
                continue;
            };
            let rel = rel.to_string();
            if rel.starts_with("charts/") {
                out.subcharts = true;
                continue;
            }
            let wanted =
                rel == "values.yaml" || rel == "Chart.yaml" || rel.starts_with("templates/");
            if !wanted {
                continue;
            }
            let size = entry.header().size().map_err(io_err("read", archive))?;
            total += size;
            if size > MAX_FILE || total > MAX_TOTAL {
                return Err(bad(format!(
                    "{rel} is {size} bytes; files scanned for images are at most {MAX_FILE} \
                     bytes ({MAX_TOTAL} together)"
                )));
            }
            let mut text = String::new();
            entry
                .by_ref()
                .take(MAX_FILE)
                .read_to_string(&mut text)
                .map_err(|e| bad(format!("{rel} is not UTF-8 text: {e}")))?;
            match rel.as_str() {
                "values.yaml" => {
                    out.values =
                        yaml_to_json(&text).map_err(|e| bad(format!("values.yaml: {e}")))?
                }
                "Chart.yaml" => chart_yaml = Some(text),
                _ => out.templates.push((rel, text)),
            }
        }
        let meta = chart_yaml
            .map(|t| yaml_to_json(&t))
            .transpose()
            .map_err(|e| bad(format!("Chart.yaml: {e}")))?
            .ok_or_else(|| bad("it has no Chart.yaml".into()))?;
        out.name = meta["name"].as_str().unwrap_or_default().to_string();
        out.version = match &meta["version"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok(out)
    }
}

fn yaml_to_json(text: &str) -> Result<Value, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    match docs.into_iter().next() {
        None | Some(Yaml::Null) => Ok(Value::Object(Map::new())),
        Some(y) => {
            let v = crate::helm::to_json(y)?;
            if v.is_object() {
                Ok(v)
            } else {
                Err("it must be a YAML mapping".into())
            }
        }
    }
}

#[cfg(test)]
mod test_support {
    use super::*;

    pub(super) fn listed(name: &str) -> Listed {
        Listed {
            name: name.into(),
            key: ImageKey::parse(name).unwrap(),
            source: name.parse().unwrap(),
        }
    }

    pub(super) fn files(values: &str, templates: &[(&str, &str)]) -> ChartFiles {
        ChartFiles {
            name: "c".into(),
            version: "0.1.0".into(),
            values: yaml_to_json(values).unwrap(),
            templates: templates
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            subcharts: false,
        }
    }
}
