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
use ferry_oci::chart_bundle::{self, REGISTRY_PLACEHOLDER, REPOSITORY_PLACEHOLDER};
use ferry_oci::media::{Descriptor, HELM_CHART_LAYER};
use ferry_oci::{
    CopyEngine, CopyOptions, Digest as OciDigest, LayoutRef, Reference, RegistryRef, RepoRef,
};
use futures::StreamExt;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use yaml_rust2::{Yaml, YamlLoader};

use crate::error::{io_err, BuildError};
use crate::{ArtifactBuilder, BuiltArtifact};

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

/// Helm's coalescing of values: maps merge key by key, `null` removes a key, anything else
/// replaces.
fn coalesce(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(slot) = b.get_mut(k) {
                    coalesce(slot, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

// ---- where the values name images -------------------------------------------------------------

/// How a value names an image.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// One string: `registry/repository:tag`.
    Ref,
    /// A map with `repository` and some of `registry`, `tag`, `digest`.
    Parts { registry: bool, digest: bool },
}

/// A place in the values that names a listed image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    path: Vec<String>,
    form: Form,
    image: usize,
}

/// An image named in the values: where, how, and as what text.
#[derive(Debug, Clone)]
struct Named {
    path: Vec<String>,
    form: Form,
    text: String,
    /// Whether it sits under a key called `image` (so discovery counts it as a found image).
    under_image_key: bool,
}

fn named_in(values: &Value, path: &mut Vec<String>, out: &mut Vec<Named>) {
    let Value::Object(map) = values else { return };
    for (k, v) in map {
        path.push(k.clone());
        let key_is_image = k == "image" || k.ends_with("Image") || k.ends_with("_image");
        match v {
            Value::String(s) => {
                if key_is_image
                    || ImageKey::parse(s).is_some_and(|_| s.contains(':') || s.contains('/'))
                {
                    out.push(Named {
                        path: path.clone(),
                        form: Form::Ref,
                        text: s.clone(),
                        under_image_key: key_is_image,
                    });
                }
            }
            Value::Object(m) => {
                if let Some(Value::String(repo)) = m.get("repository") {
                    let part = |key: &str| m.get(key).and_then(Value::as_str).unwrap_or("");
                    let mut text = String::new();
                    if !part("registry").is_empty() {
                        text.push_str(part("registry"));
                        text.push('/');
                    }
                    text.push_str(repo);
                    if !part("tag").is_empty() {
                        text.push(':');
                        text.push_str(part("tag"));
                    }
                    if !part("digest").is_empty() {
                        text.push('@');
                        text.push_str(part("digest"));
                    }
                    out.push(Named {
                        path: path.clone(),
                        form: Form::Parts {
                            registry: m.contains_key("registry"),
                            digest: m.contains_key("digest"),
                        },
                        text,
                        under_image_key: key_is_image,
                    });
                } else {
                    named_in(v, path, out);
                }
            }
            _ => {}
        }
        path.pop();
    }
}

/// Whether the values text `named` names the listed image `l`. A map without a tag matches
/// on the repository (its tag then comes from elsewhere, e.g. the chart's appVersion).
fn names(named: &Named, l: &Listed) -> bool {
    let Some(key) = ImageKey::parse(&named.text) else {
        return false;
    };
    match named.form {
        Form::Ref => key == l.key,
        Form::Parts { .. } => {
            let has_tag = named
                .text
                .rsplit('/')
                .next()
                .is_some_and(|s| s.contains(':'));
            key.same_repository(&l.key)
                && (!has_tag || key.tag == l.key.tag)
                && (key.digest.is_none() || key.digest == l.key.digest)
        }
    }
}

/// Every place in `values` naming a listed image; every listed image must be named somewhere,
/// or the override could not point it at the install's registry.
fn locate_all(values: &Value, listed: &[Listed]) -> Result<Vec<Located>, String> {
    let mut named = Vec::new();
    named_in(values, &mut Vec::new(), &mut named);
    let mut out = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        let before = out.len();
        for n in &named {
            if names(n, l) {
                out.push(Located {
                    path: n.path.clone(),
                    form: n.form.clone(),
                    image: i,
                });
            }
        }
        if out.len() == before {
            return Err(format!(
                "listed image {} is not named by any value (values.yaml or the component's \
                 values), so the values override could not point it at the install's registry; \
                 set it as a value (e.g. image: {0}) and use that value in the templates",
                l.name
            ));
        }
    }
    Ok(out)
}

/// The values that point every located image at the install's registry by digest, with the
/// registry and repository left as placeholders.
fn redirects(located: &[Located], listed: &[Listed], images: &[(String, Descriptor)]) -> Value {
    let mut root = Value::Object(Map::new());
    for loc in located {
        let digest = images[loc.image].1.digest.as_str();
        let value = match loc.form {
            Form::Ref => Value::String(format!(
                "{REGISTRY_PLACEHOLDER}/{REPOSITORY_PLACEHOLDER}@{digest}"
            )),
            Form::Parts {
                registry,
                digest: has_digest,
            } => {
                let mut m = Map::new();
                if registry {
                    m.insert("registry".into(), REGISTRY_PLACEHOLDER.into());
                    m.insert("repository".into(), REPOSITORY_PLACEHOLDER.into());
                } else {
                    m.insert(
                        "repository".into(),
                        format!("{REGISTRY_PLACEHOLDER}/{REPOSITORY_PLACEHOLDER}").into(),
                    );
                }
                if has_digest {
                    m.insert("digest".into(), digest.into());
                } else {
                    let tag = listed[loc.image].key.tag.as_deref().unwrap_or("latest");
                    m.insert("tag".into(), format!("{tag}@{digest}").into());
                }
                Value::Object(m)
            }
        };
        set_path(&mut root, &loc.path, value);
    }
    root
}

fn set_path(root: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for p in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        cur = m
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Value::Object(m) = cur {
        match m.get_mut(last) {
            Some(slot) => coalesce(slot, &value),
            None => {
                m.insert(last.clone(), value);
            }
        }
    }
}

// ---- the checks -------------------------------------------------------------------------------

/// An image found in rendered output: the template it came from and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    template: String,
    image: String,
}

fn check_found(found: &[Found], listed: &[Listed]) -> Result<(), String> {
    for f in found {
        let ok = ImageKey::parse(&f.image).is_some_and(|k| listed_index(listed, &k).is_some());
        if !ok {
            return Err(format!(
                "the chart runs image {:?} ({}), which the component does not list; add it to \
                 the component's images so it is copied into every install, or change the chart",
                f.image, f.template
            ));
        }
    }
    Ok(())
}

/// Every image in the probe render must be the probe registry's chart repository, by digest,
/// and one of the bundle's images.
fn check_probe(found: &[Found], images: &[(String, Descriptor)]) -> Result<(), String> {
    let prefix = format!("{PROBE_REGISTRY}/{PROBE_REPOSITORY}");
    for f in found {
        let digest = f.image.rsplit_once('@').map(|(_, d)| d);
        let ok = f.image.starts_with(&prefix)
            && digest.is_some_and(|d| images.iter().any(|(_, i)| i.digest.as_str() == d));
        if !ok {
            return Err(format!(
                "with the values override the chart still renders image {:?} ({}): Ferry \
                 points an image at the install's registry through the value that names it, and \
                 this template does not take its image from such a value (or drops the digest); \
                 make the template use the value as written",
                f.image, f.template
            ));
        }
    }
    Ok(())
}

/// The conservative scan, without a renderer: it fails on anything it cannot follow.
///
/// - every image named under an `image` key in the values must be listed;
/// - subcharts are refused (their values and templates are not followed);
/// - every template line `image: …` must be a template expression whose every `.Values.x.y`
///   path lies within a value that names a listed image; a literal image (which no values
///   override can change), a value on the following lines, or an expression that takes the
///   image from anywhere else fails the build.
fn scan(
    files: &ChartFiles,
    values: &Value,
    listed: &[Listed],
    located: &[Located],
) -> Result<(), String> {
    const NEEDS_RENDERER: &str = "install helm-python-sdk (pip install helm-python-sdk; \
        FERRY_HELM_PYTHON names its interpreter) so the build renders the chart with Helm";
    if files.subcharts {
        return Err(format!(
            "the chart has subcharts, whose images the scan cannot follow; {NEEDS_RENDERER}"
        ));
    }
    let mut named = Vec::new();
    named_in(values, &mut Vec::new(), &mut named);
    for n in named.iter().filter(|n| n.under_image_key) {
        if !listed.iter().any(|l| names(n, l)) {
            return Err(format!(
                "the chart's values name image {:?} (at {}), which the component does not \
                 list; add it to the component's images",
                n.text,
                n.path.join(".")
            ));
        }
    }
    for (file, text) in &files.templates {
        for (i, line) in text.lines().enumerate() {
            let Some(rest) = image_line(line) else {
                continue;
            };
            let at = format!("{file} line {}", i + 1);
            if rest.is_empty() || rest.starts_with('|') || rest.starts_with('>') {
                return Err(format!(
                    "{at}: the image is not on the `image:` line, which the scan cannot follow; \
                     {NEEDS_RENDERER}"
                ));
            }
            if !rest.contains("{{") {
                let literal = rest.trim_matches(|c| c == '"' || c == '\'');
                return Err(format!(
                    "{at}: image {literal:?} is written into the template, so no values \
                     override can point it at the install's registry; take it from a value \
                     (e.g. image: {{{{ .Values.image }}}})"
                ));
            }
            let paths = values_paths(rest);
            if paths.is_empty() {
                return Err(format!(
                    "{at}: the image comes from `{rest}`, which the scan cannot follow; \
                     {NEEDS_RENDERER}"
                ));
            }
            for p in &paths {
                let within = located.iter().any(|l| p.starts_with(&l.path));
                if !within {
                    return Err(format!(
                        "{at}: the image uses .Values.{}, which names none of the listed \
                         images; list the image it holds, or {NEEDS_RENDERER}",
                        p.join(".")
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The value after `image:` when `line` is a YAML `image:` (or `"image":`) entry.
fn image_line(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let t = t.strip_prefix("- ").map(str::trim_start).unwrap_or(t);
    let rest = t
        .strip_prefix("image:")
        .or_else(|| t.strip_prefix("\"image\":"))
        .or_else(|| t.strip_prefix("'image':"))?;
    Some(rest.trim())
}

/// Every `.Values.a.b.c` path in a template expression.
fn values_paths(expr: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find(".Values.") {
        let after = &rest[i + ".Values.".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
            .unwrap_or(after.len());
        let path: Vec<String> = after[..end]
            .split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if !path.is_empty() {
            out.push(path);
        }
        rest = &after[end..];
    }
    out
}

// ---- the renderer -----------------------------------------------------------------------------

/// Renders a chart archive with values, offline, with Helm's own template engine.
const RENDER: &str = r#"
import json, sys
from helm_python import chart
c = chart.Chart.load(sys.argv[1])
values = None
if sys.argv[2]:
    with open(sys.argv[2]) as f:
        values = json.load(f)
print(json.dumps(c.render(values, name="ferry", namespace="default")))
"#;

struct Renderer {
    python: String,
}

impl Renderer {
    /// The renderer `choice` names, `None` for the scan; an explicit interpreter that cannot
    /// import helm-python-sdk is an error.
    async fn pick(choice: &ChartRenderer) -> Result<Option<Renderer>, String> {
        let python = match choice {
            ChartRenderer::ScanOnly => return Ok(None),
            ChartRenderer::HelmPython(p) => p.clone(),
            ChartRenderer::Auto => {
                std::env::var("FERRY_HELM_PYTHON").unwrap_or_else(|_| "python3".into())
            }
        };
        let ok = tokio::process::Command::new(&python)
            .args(["-c", "import helm_python.chart"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .is_ok_and(|o| o.status.success());
        match (ok, choice) {
            (true, _) => Ok(Some(Renderer { python })),
            (false, ChartRenderer::HelmPython(_)) => Err(format!(
                "{python} cannot import helm_python; install helm-python-sdk for it"
            )),
            (false, _) => {
                tracing::info!("helm-python-sdk not found: chart images are found by the scan");
                Ok(None)
            }
        }
    }

    /// Every string under an `image` key in the chart rendered with `values`.
    async fn images(
        &self,
        archive: &Path,
        values: Option<&Value>,
        tmp: &Path,
    ) -> Result<Vec<Found>, String> {
        let values_file = match values {
            Some(v) => {
                let p = tmp.join("render-values.json");
                std::fs::write(&p, v.to_string())
                    .map_err(|e| format!("writing the render values: {e}"))?;
                p.to_string_lossy().into_owned()
            }
            None => String::new(),
        };
        let child = tokio::process::Command::new(&self.python)
            .args(["-c", RENDER])
            .arg(archive)
            .arg(&values_file)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(RENDER_TIMEOUT, child)
            .await
            .map_err(|_| format!("rendering the chart took over {RENDER_TIMEOUT:?}"))?
            .map_err(|e| format!("running {}: {e}", self.python))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(format!("Helm could not render the chart: {tail}"));
        }
        if out.stdout.len() > MAX_RENDERED {
            return Err(format!("the rendered chart is over {MAX_RENDERED} bytes"));
        }
        let rendered: BTreeMap<String, String> = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("the renderer's output is not what was expected: {e}"))?;
        let mut found = Vec::new();
        for (template, text) in &rendered {
            let docs = YamlLoader::load_from_str(text)
                .map_err(|e| format!("{template} renders to invalid YAML: {e}"))?;
            for d in &docs {
                images_in(d, template, &mut found);
            }
        }
        Ok(found)
    }
}

fn images_in(y: &Yaml, template: &str, out: &mut Vec<Found>) {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                if let (Yaml::String(k), Yaml::String(s)) = (k, v) {
                    if k == "image" {
                        out.push(Found {
                            template: template.to_string(),
                            image: s.clone(),
                        });
                        continue;
                    }
                }
                images_in(v, template, out);
            }
        }
        Yaml::Array(a) => a.iter().for_each(|v| images_in(v, template, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str) -> Listed {
        Listed {
            name: name.into(),
            key: ImageKey::parse(name).unwrap(),
            source: name.parse().unwrap(),
        }
    }

    fn files(values: &str, templates: &[(&str, &str)]) -> ChartFiles {
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

    #[test]
    fn docker_hub_names_are_expanded_before_comparing() {
        assert_eq!(
            ImageKey::parse("nginx"),
            ImageKey::parse("docker.io/library/nginx:latest")
        );
        assert_ne!(ImageKey::parse("nginx:1.27"), ImageKey::parse("nginx:1.28"));
        assert!(ImageKey::parse("oci:dir").is_none());
    }

    #[test]
    fn values_locate_string_and_map_forms_and_unnamed_images_fail() {
        let l = vec![
            listed("demo.example/web:v1"),
            listed("demo.example/side:v2"),
        ];
        let v = yaml_to_json(
            "web:\n  image:\n    repository: demo.example/web\n    tag: v1\nside: demo.example/side:v2\n",
        )
        .unwrap();
        let loc = locate_all(&v, &l).unwrap();
        assert_eq!(loc.len(), 2);
        let images: Vec<_> = ["a", "b"]
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    Descriptor {
                        media_type: String::new(),
                        digest: OciDigest::of(s.as_bytes()),
                        size: 1,
                        platform: None,
                        artifact_type: None,
                        annotations: BTreeMap::new(),
                    },
                )
            })
            .collect();
        let r = redirects(&loc, &l, &images);
        let filled = chart_bundle::fill_template(&r, "reg:1", "ns/demo/chart");
        assert_eq!(filled["web"]["image"]["repository"], "reg:1/ns/demo/chart");
        assert_eq!(
            filled["web"]["image"]["tag"],
            format!("v1@{}", images[0].1.digest)
        );
        assert_eq!(
            filled["side"],
            format!("reg:1/ns/demo/chart@{}", images[1].1.digest)
        );

        let e = locate_all(&v, &[listed("demo.example/other:1")]).unwrap_err();
        assert!(e.contains("demo.example/other:1"), "{e}");
    }

    #[test]
    fn the_scan_fails_on_what_it_cannot_follow() {
        let l = vec![listed("demo.example/web:v1")];
        let values = "image: demo.example/web:v1\n";
        let v = yaml_to_json(values).unwrap();
        let loc = locate_all(&v, &l).unwrap();
        let ok = files(
            values,
            &[(
                "templates/d.yaml",
                "    - image: {{ .Values.image | quote }}\n",
            )],
        );
        scan(&ok, &v, &l, &loc).unwrap();

        let literal = files(values, &[("templates/d.yaml", "  image: nginx:1.27\n")]);
        let e = scan(&literal, &v, &l, &loc).unwrap_err();
        assert!(e.contains("\"nginx:1.27\"") && e.contains("line 1"), "{e}");

        let helper = files(
            values,
            &[("templates/d.yaml", "image: {{ include \"img\" . }}\n")],
        );
        assert!(scan(&helper, &v, &l, &loc)
            .unwrap_err()
            .contains("helm-python-sdk"));

        let other = files(
            values,
            &[("templates/d.yaml", "image: {{ .Values.other }}\n")],
        );
        assert!(scan(&other, &v, &l, &loc)
            .unwrap_err()
            .contains(".Values.other"));

        let unlisted_values = "image: demo.example/web:v1\nextra:\n  image: evil.example/x:1\n";
        let v2 = yaml_to_json(unlisted_values).unwrap();
        let e = scan(&files(unlisted_values, &[]), &v2, &l, &loc).unwrap_err();
        assert!(e.contains("evil.example/x:1"), "{e}");

        let mut sub = files(values, &[]);
        sub.subcharts = true;
        assert!(scan(&sub, &v, &l, &loc).unwrap_err().contains("subcharts"));
    }

    #[test]
    fn found_images_must_be_listed_and_probe_images_by_digest() {
        let l = vec![listed("demo.example/web:v1")];
        let found = |s: &str| Found {
            template: "c/templates/d.yaml".into(),
            image: s.into(),
        };
        check_found(&[found("demo.example/web:v1")], &l).unwrap();
        let e = check_found(&[found("demo.example/web:v1"), found("busybox:1")], &l).unwrap_err();
        assert!(
            e.contains("busybox:1") && e.contains("c/templates/d.yaml"),
            "{e}"
        );

        let d = OciDigest::of(b"x");
        let images = vec![(
            "demo.example/web:v1".to_string(),
            Descriptor {
                media_type: String::new(),
                digest: d.clone(),
                size: 1,
                platform: None,
                artifact_type: None,
                annotations: BTreeMap::new(),
            },
        )];
        check_probe(
            &[found(&format!(
                "{PROBE_REGISTRY}/{PROBE_REPOSITORY}:v1@{d}"
            ))],
            &images,
        )
        .unwrap();
        assert!(check_probe(&[found("demo.example/web:v1")], &images).is_err());
        assert!(check_probe(
            &[found(&format!("{PROBE_REGISTRY}/{PROBE_REPOSITORY}:v1"))],
            &images
        )
        .is_err());
    }

    #[test]
    fn values_coalesce_as_helm_does() {
        let mut base = serde_json::json!({"a": {"b": 1, "c": 2}, "d": 3});
        coalesce(
            &mut base,
            &serde_json::json!({"a": {"b": 9, "c": null}, "e": 4}),
        );
        assert_eq!(base, serde_json::json!({"a": {"b": 9}, "d": 3, "e": 4}));
    }
}
