//! The `helm-chart` kind: package a chart directory the way `helm package` + `helm push` do,
//! but deterministically, so the same source always gives the same digest.
//!
//! The layer is a gzip'd tar whose entries sit under `<chart name>/`, sorted, with mtime 0,
//! uid/gid 0, no owner names and no gzip timestamp. The config blob is the Chart.yaml metadata
//! as JSON, in the field order Helm writes it. The manifest follows Helm's OCI layout (no
//! artifactType). This module must never load the archive into memory, and never accept a
//! Chart.yaml that Helm itself would refuse (no name, no version, a bad apiVersion).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use ferry_core::domain::Component;
use ferry_core::ports::BuildSpec;
use ferry_oci::media::{HELM_CHART_LAYER, HELM_CONFIG};
use ferry_oci::{Digest as OciDigest, OciLayout};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use crate::error::{io_err, BuildError};
use crate::package::{self, HashingWriter, SourceFile};
use crate::{ArtifactBuilder, BuiltArtifact};

/// Chart.yaml fields Helm's `chart.Metadata` knows, in the order Helm marshals them, and
/// whether each is a plain string.
const METADATA_FIELDS: &[(&str, FieldKind)] = &[
    ("name", FieldKind::Text),
    ("home", FieldKind::Text),
    ("sources", FieldKind::Any),
    ("version", FieldKind::Text),
    ("description", FieldKind::Text),
    ("keywords", FieldKind::Any),
    ("maintainers", FieldKind::Any),
    ("icon", FieldKind::Text),
    ("apiVersion", FieldKind::Text),
    ("condition", FieldKind::Text),
    ("tags", FieldKind::Text),
    ("appVersion", FieldKind::Text),
    ("deprecated", FieldKind::Any),
    ("annotations", FieldKind::Any),
    ("kubeVersion", FieldKind::Text),
    ("dependencies", FieldKind::Any),
    ("type", FieldKind::Text),
];

#[derive(Clone, Copy)]
enum FieldKind {
    Text,
    Any,
}

/// A packaged chart: the archive on disk and its config.
#[derive(Debug, Clone)]
pub struct ChartPackage {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub home: Option<String>,
    /// The `.tgz`, written under the output directory.
    pub archive: PathBuf,
    pub archive_digest: OciDigest,
    pub archive_size: u64,
    /// The config blob: Chart.yaml metadata as JSON.
    pub config: Vec<u8>,
}

pub(crate) async fn build(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    path: &str,
    repository: &ferry_core::id::Repository,
) -> Result<BuiltArtifact, BuildError> {
    let component = &spec.component;
    let dir = b.resolve_dir(component, "chart directory", path)?;
    let tmp = b.temp_dir("ferry-chart-")?;
    let out = tmp.path().to_path_buf();
    let chart = {
        let component = component.clone();
        let out = out.clone();
        package::blocking(move || package_chart(&component, &dir, &out)).await?
    };
    let oci = |source| BuildError::Oci {
        component: component.name.to_string(),
        source,
    };
    let layout_dir = out.join("layout");
    let layout = OciLayout::create(&layout_dir).await.map_err(oci)?;
    package::add_file_blob(
        &layout,
        &chart.archive,
        &chart.archive_digest,
        chart.archive_size,
    )
    .await
    .map_err(oci)?;
    let config = package::add_small_blob(&layout, HELM_CONFIG, chart.config.clone())
        .await
        .map_err(oci)?;
    let mut layer = package::descriptor(
        HELM_CHART_LAYER,
        chart.archive_digest.clone(),
        chart.archive_size,
    );
    // Helm itself leaves layer annotations out; keep the layer descriptor plain.
    layer.annotations.clear();
    let mut annotations = BTreeMap::new();
    annotations.insert("org.opencontainers.image.title".into(), chart.name.clone());
    annotations.insert(
        "org.opencontainers.image.version".into(),
        chart.version.clone(),
    );
    if let Some(d) = chart.description.as_ref().filter(|d| !d.is_empty()) {
        annotations.insert("org.opencontainers.image.description".into(), d.clone());
    }
    if let Some(h) = chart.home.as_ref().filter(|h| !h.is_empty()) {
        annotations.insert("org.opencontainers.image.url".into(), h.clone());
    }
    package::write_manifest(&layout, None, &config, &[layer], &annotations)
        .await
        .map_err(oci)?;

    let mut tags = vec![spec.build_id.to_string()];
    // Helm addresses charts by version; OCI tags cannot hold '+', so Helm writes '_'.
    let version_tag = chart.version.replace('+', "_");
    if version_tag != tags[0] && valid_tag(&version_tag) {
        tags.push(version_tag);
    }
    b.push_layout(component, layout_dir, repository, tags, tmp)
        .await
}

fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && t.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Packages the chart in `dir` into `<out>/<name>-<version>.tgz`.
pub fn package_chart(
    component: &Component,
    dir: &Path,
    out: &Path,
) -> Result<ChartPackage, BuildError> {
    let chart_yaml = dir.join("Chart.yaml");
    if !chart_yaml.is_file() {
        return Err(BuildError::NotAChart {
            component: component.name.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    let invalid = |reason: String| BuildError::InvalidChart {
        component: component.name.to_string(),
        file: chart_yaml.clone(),
        reason,
    };
    let text =
        std::fs::read_to_string(&chart_yaml).map_err(io_err("read Chart.yaml", &chart_yaml))?;
    let meta = parse_chart_yaml(&text).map_err(&invalid)?;
    let text_field = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
    let name = text_field("name").unwrap_or_default();
    let version = text_field("version").unwrap_or_default();
    validate(&meta, &name, &version).map_err(&invalid)?;
    let config = encode_config(&meta).map_err(&invalid)?;

    let ignore = HelmIgnore::load(dir)?;
    let files = package::collect_files(component, dir, &|rel, is_dir| ignore.ignored(rel, is_dir))?;
    let archive = out.join(format!("{name}-{version}.tgz"));
    let (archive_digest, archive_size) = write_tgz(&name, &files, &archive)?;
    Ok(ChartPackage {
        description: text_field("description"),
        home: text_field("home"),
        name,
        version,
        archive,
        archive_digest,
        archive_size,
        config,
    })
}

fn write_tgz(
    name: &str,
    files: &[SourceFile],
    archive: &Path,
) -> Result<(OciDigest, u64), BuildError> {
    let io = |step| io_err(step, archive);
    let file = File::create(archive).map_err(io("create archive"))?;
    let hashing = HashingWriter::new(BufWriter::new(file));
    // GzBuilder writes mtime 0 and no file name unless told otherwise: no timestamp leaks in.
    let gz = flate2::GzBuilder::new()
        .operating_system(255)
        .write(hashing, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for f in files {
        let src = File::open(&f.abs).map_err(io_err("read", &f.abs))?;
        let size = src.metadata().map_err(io_err("stat", &f.abs))?.len();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(size);
        header.set_mode(if f.executable { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, format!("{name}/{}", f.rel), src)
            .map_err(io_err("archive", &f.abs))?;
    }
    let gz = tar.into_inner().map_err(io("finish archive"))?;
    let hashing = gz.finish().map_err(io("finish archive"))?;
    let (digest, size, mut buf) = hashing.finish();
    buf.flush().map_err(io("write archive"))?;
    let file = buf.into_inner().map_err(|e| BuildError::Io {
        step: "write archive",
        path: archive.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("sync archive"))?;
    Ok((digest, size))
}

/// Chart.yaml as a JSON object (the subset of YAML charts use: mappings, lists, scalars).
fn parse_chart_yaml(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    match docs.into_iter().next().map(to_json).transpose()? {
        Some(Value::Object(map)) => Ok(map),
        None | Some(Value::Null) => {
            Err("it is empty; it needs at least apiVersion, name and version".into())
        }
        Some(_) => Err("it must be a YAML mapping (name: ..., version: ...)".into()),
    }
}

fn to_json(y: Yaml) -> Result<Value, String> {
    Ok(match y {
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::from(i),
        // Kept as written: a float like 1.10 is a version string in charts, not a number.
        Yaml::Real(s) => Value::String(s),
        Yaml::String(s) => Value::String(s),
        Yaml::Array(items) => {
            Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Hash(h) => {
            let mut map = serde_json::Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) | Yaml::Real(s) => s,
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                map.insert(key, to_json(v)?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) => return Err("YAML aliases are not supported in Chart.yaml".into()),
    })
}

/// The checks `helm package` makes before it writes anything.
fn validate(
    meta: &serde_json::Map<String, Value>,
    name: &str,
    version: &str,
) -> Result<(), String> {
    match meta.get("apiVersion").and_then(Value::as_str) {
        Some("v1") | Some("v2") => {}
        Some(other) => {
            return Err(format!(
                "apiVersion {other:?} is not supported; use \"v2\" (Helm 3) or \"v1\""
            ))
        }
        None => return Err("apiVersion is required; add `apiVersion: v2`".into()),
    }
    if name.is_empty() {
        return Err("name is required".into());
    }
    if name.contains('/') || name.contains('\\') || name.contains("..") || name.starts_with('.') {
        return Err(format!(
            "chart name {name:?} is not allowed: it becomes a directory in the archive"
        ));
    }
    if version.is_empty() {
        return Err("version is required (a SemVer 2 version, e.g. 0.1.0)".into());
    }
    let core = version.trim_start_matches('v');
    let numeric = core.split(['-', '+']).next().unwrap_or("");
    if numeric.is_empty()
        || numeric.split('.').count() > 3
        || !numeric
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        || version.chars().any(|c| c.is_whitespace() || c == '/')
    {
        return Err(format!(
            "version {version:?} is not a SemVer 2 version (e.g. 0.1.0)"
        ));
    }
    if let Some(t) = meta.get("type").and_then(Value::as_str) {
        if !t.is_empty() && t != "application" && t != "library" {
            return Err(format!(
                "type {t:?} is invalid; use \"application\" or \"library\""
            ));
        }
    }
    Ok(())
}

/// The config blob: known metadata fields in Helm's order, empty ones left out, as Go's
/// `omitempty` does; text fields written as strings even when YAML typed them otherwise.
fn encode_config(meta: &serde_json::Map<String, Value>) -> Result<Vec<u8>, String> {
    let mut out = String::from("{");
    let mut first = true;
    for (key, kind) in METADATA_FIELDS {
        let Some(v) = meta.get(*key) else { continue };
        let v = match (kind, v) {
            (_, Value::Null) => continue,
            (FieldKind::Text, Value::String(s)) if s.is_empty() => continue,
            (FieldKind::Text, Value::String(_)) => v.clone(),
            (FieldKind::Text, Value::Number(n)) => Value::String(n.to_string()),
            (FieldKind::Text, Value::Bool(b)) => Value::String(b.to_string()),
            (FieldKind::Text, _) => return Err(format!("{key} must be a string")),
            (FieldKind::Any, Value::Array(a)) if a.is_empty() => continue,
            (FieldKind::Any, Value::Object(o)) if o.is_empty() => continue,
            (FieldKind::Any, Value::Bool(false)) => continue,
            (FieldKind::Any, _) => v.clone(),
        };
        if !first {
            out.push(',');
        }
        first = false;
        let k = serde_json::to_string(key).map_err(|e| e.to_string())?;
        let val = serde_json::to_string(&v).map_err(|e| e.to_string())?;
        out.push_str(&k);
        out.push(':');
        out.push_str(&val);
    }
    out.push('}');
    Ok(out.into_bytes())
}

/// `.helmignore`: comments, blank lines, `*`/`?` globs matched against the base name (or the
/// whole relative path when the pattern has a `/`), and a trailing `/` for directories only.
/// Negations (`!`) are not supported and are skipped with a warning.
struct HelmIgnore {
    rules: Vec<(String, bool)>,
}

impl HelmIgnore {
    fn load(dir: &Path) -> Result<HelmIgnore, BuildError> {
        let path = dir.join(".helmignore");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("read .helmignore", &path)(e)),
        };
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('!') {
                tracing::warn!(
                    pattern = line,
                    "negated .helmignore patterns are not supported; skipped"
                );
                continue;
            }
            let dir_only = line.ends_with('/');
            let pat = line.trim_end_matches('/').trim_start_matches('/');
            if !pat.is_empty() {
                rules.push((pat.to_string(), dir_only));
            }
        }
        Ok(HelmIgnore { rules })
    }

    fn ignored(&self, rel: &str, is_dir: bool) -> bool {
        let base = rel.rsplit('/').next().unwrap_or(rel);
        self.rules.iter().any(|(pat, dir_only)| {
            if *dir_only && !is_dir {
                return false;
            }
            let subject = if pat.contains('/') { rel } else { base };
            glob(pat.as_bytes(), subject.as_bytes())
        })
    }
}

/// `*` matches any run without `/`, `?` one character other than `/`.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pat[1..], s) || (!s.is_empty() && s[0] != b'/' && glob(pat, &s[1..]))
        }
        (Some(b'?'), Some(c)) if *c != b'/' => glob(&pat[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => glob(&pat[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_helm_field_order_and_drops_empties() {
        let meta = parse_chart_yaml(
            "apiVersion: v2\nname: demo\nversion: 0.1.0\nappVersion: 1.10\ndescription: \"\"\nkeywords: []\ntype: application\n",
        )
        .unwrap();
        let json = String::from_utf8(encode_config(&meta).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"name":"demo","version":"0.1.0","apiVersion":"v2","appVersion":"1.10","type":"application"}"#
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let m = parse_chart_yaml("name: x\nversion: 1.0.0\n").unwrap();
        assert!(validate(&m, "x", "1.0.0")
            .unwrap_err()
            .contains("apiVersion is required"));
        let m = parse_chart_yaml("apiVersion: v2\nname: x\nversion: banana\n").unwrap();
        assert!(validate(&m, "x", "banana").unwrap_err().contains("SemVer"));
        let m = parse_chart_yaml("apiVersion: v2\nname: ../x\nversion: 1.0.0\n").unwrap();
        assert!(validate(&m, "../x", "1.0.0")
            .unwrap_err()
            .contains("not allowed"));
        assert!(parse_chart_yaml("- a\n- b\n")
            .unwrap_err()
            .contains("mapping"));
        assert!(parse_chart_yaml("a: [\n")
            .unwrap_err()
            .contains("not valid YAML"));
    }

    #[test]
    fn helmignore_globs() {
        let ig = HelmIgnore {
            rules: vec![
                ("*.tmp".into(), false),
                (".git".into(), true),
                ("docs/*.md".into(), false),
            ],
        };
        assert!(ig.ignored("a/b/x.tmp", false));
        assert!(ig.ignored(".git", true));
        assert!(!ig.ignored(".git", false));
        assert!(ig.ignored("docs/a.md", false));
        assert!(!ig.ignored("README.md", false));
        assert!(!ig.ignored("values.yaml", false));
    }
}
