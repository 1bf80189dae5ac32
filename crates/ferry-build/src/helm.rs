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
use ferry_oci::reference::valid_tag;
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
    push_chart(b, spec, chart, None, tmp, repository).await
}

/// A chart's provenance file (`helm package --sign`), carried as its own layer.
pub(crate) struct Provenance {
    pub path: PathBuf,
    pub digest: OciDigest,
    pub size: u64,
}

/// The provenance layer's media type, as Helm's OCI push writes it (defined in ferry-spec).
pub use ferry_oci::media::HELM_PROVENANCE_LAYER;

/// Writes `chart` (and its provenance, if any) as Helm's OCI chart artifact into a layout under
/// `tmp`, and pushes it to `repository` tagged with the build id and the chart version.
pub(crate) async fn push_chart(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    chart: ChartPackage,
    provenance: Option<Provenance>,
    tmp: tempfile::TempDir,
    repository: &ferry_core::id::Repository,
) -> Result<BuiltArtifact, BuildError> {
    let component = &spec.component;
    let oci = |source| BuildError::Oci {
        component: component.name.to_string(),
        source,
    };
    let layout_dir = tmp.path().join("layout");
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
    let mut layers = vec![layer];
    if let Some(p) = provenance {
        package::add_file_blob(&layout, &p.path, &p.digest, p.size)
            .await
            .map_err(oci)?;
        let mut prov = package::descriptor(HELM_PROVENANCE_LAYER, p.digest, p.size);
        prov.annotations.clear();
        layers.push(prov);
    }
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
    annotations.extend(b.source_annotations().clone());
    package::write_manifest(&layout, None, &config, &layers, &annotations)
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

    let ignore = HelmIgnore::load(component, dir)?;
    let files = package::collect_files(component, dir, &|rel, is_dir| ignore.ignored(rel, is_dir))?;
    if !files.iter().any(|f| f.rel == "Chart.yaml") {
        // Helm refuses such a chart too ("Chart.yaml file is missing").
        return Err(invalid(
            ".helmignore excludes Chart.yaml (a `!pattern` line keeps only what matches it), \
             and Helm refuses a chart without it; add `!Chart.yaml` or narrow the pattern"
                .into(),
        ));
    }
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

/// The largest Chart.yaml read out of a downloaded archive; Helm's own limit is far above any
/// real chart's metadata, so a bigger one is a broken or hostile archive.
const MAX_CHART_YAML: u64 = 1024 * 1024;

/// Describes an already packaged chart archive (a `.tgz` from a chart repository) without
/// repacking it: the archive's bytes, and so its digest, stay exactly as the repository
/// served them. Reads `<chart>/Chart.yaml` out of the archive by streaming; refuses an archive
/// whose Chart.yaml is missing or invalid, or names a different chart or version.
pub(crate) fn chart_from_archive(
    component: &Component,
    archive: &Path,
    digest: OciDigest,
    size: u64,
    expect: (&str, &str),
) -> Result<ChartPackage, BuildError> {
    let (want_name, want_version) = expect;
    let invalid = |reason: String| BuildError::InvalidChart {
        component: component.name.to_string(),
        file: archive.to_path_buf(),
        reason,
    };
    let file = File::open(archive).map_err(io_err("open chart archive", archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let mut text = None;
    let entries = tar
        .entries()
        .map_err(|e| invalid(format!("not a gzip'd tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| invalid(format!("unreadable archive entry: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| invalid(format!("bad entry path: {e}")))?
            .into_owned();
        let parts: Vec<_> = path.components().collect();
        if parts.len() == 2 && parts[1].as_os_str() == "Chart.yaml" {
            if entry.size() > MAX_CHART_YAML {
                return Err(invalid(format!(
                    "{} is {} bytes; Chart.yaml is at most {MAX_CHART_YAML} bytes",
                    path.display(),
                    entry.size()
                )));
            }
            let mut buf = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(entry, MAX_CHART_YAML),
                &mut buf,
            )
            .map_err(|e| invalid(format!("{} is not UTF-8 text: {e}", path.display())))?;
            text = Some(buf);
            break;
        }
    }
    let text = text.ok_or_else(|| invalid("the archive holds no <chart>/Chart.yaml".into()))?;
    let meta = parse_chart_yaml(&text).map_err(&invalid)?;
    let text_field = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
    let name = text_field("name").unwrap_or_default();
    let version = text_field("version").unwrap_or_default();
    validate(&meta, &name, &version).map_err(&invalid)?;
    if name != want_name || version != want_version {
        return Err(invalid(format!(
            "the archive is chart {name:?} version {version:?}, but the repository index \
             listed it as {want_name:?} version {want_version:?}"
        )));
    }
    let config = encode_config(&meta).map_err(&invalid)?;
    Ok(ChartPackage {
        description: text_field("description"),
        home: text_field("home"),
        name,
        version,
        archive: archive.to_path_buf(),
        archive_digest: digest,
        archive_size: size,
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

pub(crate) fn to_json(y: Yaml) -> Result<Value, String> {
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

/// `.helmignore`, evaluated exactly as Helm's `pkg/ignore` does, quirks included:
///
/// - blank lines and `#` comments are skipped; a pattern containing `**` is an error (Helm
///   refuses it too);
/// - a trailing `/` makes a rule match directories only; a leading `/` or any `/` inside
///   matches the whole relative path, otherwise only the base name; globs are Go's
///   `filepath.Match` (`*`, `?`, `[...]` with ranges and `^`, `\` escapes; `*` never crosses `/`);
/// - rules are tried in order and the first positive match ignores the path; Helm's default
///   rule `templates/.?*` (hidden files in templates/) comes after the file's own;
/// - a negated rule `!pat` ignores every path that does **not** match it (and every file, when
///   it is directory-only); a path that matches it goes on to the next rule. So `!` does not
///   re-include what an earlier rule ignored: it narrows what is kept, as in Helm.
#[derive(Debug)]
struct HelmIgnore {
    rules: Vec<IgnoreRule>,
}

#[derive(Debug)]
struct IgnoreRule {
    pattern: String,
    negate: bool,
    dir_only: bool,
    /// Match the whole relative path rather than the base name.
    whole_path: bool,
}

impl HelmIgnore {
    fn load(component: &Component, dir: &Path) -> Result<HelmIgnore, BuildError> {
        let path = dir.join(".helmignore");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err("read .helmignore", &path)(e)),
        };
        HelmIgnore::parse(&text).map_err(|reason| BuildError::InvalidChart {
            component: component.name.to_string(),
            file: path.clone(),
            reason,
        })
    }

    fn parse(text: &str) -> Result<HelmIgnore, String> {
        let mut rules = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.contains("**") {
                return Err(format!(
                    "pattern {line:?}: double-star (**) syntax is not supported (as in Helm)"
                ));
            }
            let (negate, rest) = match line.strip_prefix('!') {
                Some(r) => (true, r),
                None => (false, line),
            };
            let (dir_only, rest) = match rest.strip_suffix('/') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            let whole_path = rest.contains('/');
            let pattern = rest.trim_start_matches('/').to_string();
            if glob(pattern.as_bytes(), b"abc").is_err() {
                return Err(format!("pattern {line:?} is not a valid glob"));
            }
            rules.push(IgnoreRule {
                pattern,
                negate,
                dir_only,
                whole_path,
            });
        }
        // Helm's `AddDefaults`, after the file's own rules: hidden files in templates/.
        rules.push(IgnoreRule {
            pattern: "templates/.?*".into(),
            negate: false,
            dir_only: false,
            whole_path: true,
        });
        Ok(HelmIgnore { rules })
    }

    fn ignored(&self, rel: &str, is_dir: bool) -> bool {
        let base = rel.rsplit('/').next().unwrap_or(rel);
        for r in &self.rules {
            let subject = if r.whole_path { rel } else { base };
            let matches = glob(r.pattern.as_bytes(), subject.as_bytes()).unwrap_or(false);
            if r.negate {
                if (r.dir_only && !is_dir) || !matches {
                    return true;
                }
                continue;
            }
            if r.dir_only && !is_dir {
                continue;
            }
            if matches {
                return true;
            }
        }
        false
    }
}

/// Go's `filepath.Match` on `/`-separated paths: `*` any run without `/`, `?` one character
/// other than `/`, `[...]` a class (ranges, leading `^` negates), `\` escapes. `Err` for a
/// malformed pattern (an unclosed class, a trailing `\`).
fn glob(pat: &[u8], s: &[u8]) -> Result<bool, ()> {
    match pat.first() {
        None => Ok(s.is_empty()),
        Some(b'*') => {
            if glob(&pat[1..], s)? {
                return Ok(true);
            }
            Ok(!s.is_empty() && s[0] != b'/' && glob(pat, &s[1..])?)
        }
        Some(b'?') => Ok(matches!(s.first(), Some(c) if *c != b'/') && glob(&pat[1..], &s[1..])?),
        Some(b'[') => {
            let (matched, rest) = class(&pat[1..], s.first().copied())?;
            Ok(matched && glob(rest, &s[1..])?)
        }
        Some(b'\\') => {
            let c = *pat.get(1).ok_or(())?;
            Ok(s.first() == Some(&c) && glob(&pat[2..], &s[1..])?)
        }
        Some(p) => Ok(s.first() == Some(p) && glob(&pat[1..], &s[1..])?),
    }
}

/// One `[...]` class (after the `[`): whether `c` is in it, and the pattern after the `]`.
fn class(pat: &[u8], c: Option<u8>) -> Result<(bool, &[u8]), ()> {
    let (negated, mut p) = match pat.first() {
        Some(b'^') => (true, &pat[1..]),
        _ => (false, pat),
    };
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = match p.first() {
            None => return Err(()),
            Some(b']') if !first => break,
            Some(b'\\') => {
                let v = *p.get(1).ok_or(())?;
                p = &p[2..];
                v
            }
            Some(v) => {
                p = &p[1..];
                *v
            }
        };
        first = false;
        let hi = if p.first() == Some(&b'-') && p.get(1).is_some_and(|b| *b != b']') {
            let v = match p.get(1) {
                Some(b'\\') => *p.get(2).ok_or(())?,
                Some(v) => *v,
                None => return Err(()),
            };
            p = &p[if p.get(1) == Some(&b'\\') { 3 } else { 2 }..];
            v
        } else {
            lo
        };
        if let Some(c) = c {
            if lo <= c && c <= hi {
                hit = true;
            }
        }
    }
    let matched = c.is_some_and(|c| c != b'/') && (hit != negated);
    Ok((matched, &p[1..]))
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
        let ig = HelmIgnore::parse("*.tmp\n.git/\ndocs/*.md\n/top.txt\n").unwrap();
        assert!(ig.ignored("a/b/x.tmp", false));
        assert!(ig.ignored(".git", true));
        assert!(!ig.ignored(".git", false));
        assert!(ig.ignored("docs/a.md", false));
        assert!(!ig.ignored("README.md", false));
        assert!(!ig.ignored("values.yaml", false));
        assert!(ig.ignored("top.txt", false));
    }

    #[test]
    fn helmignore_negations_follow_helm() {
        // A negation first: everything not matching it is ignored ("keep only").
        let ig = HelmIgnore::parse("!*.yaml\n").unwrap();
        assert!(!ig.ignored("values.yaml", false));
        assert!(ig.ignored("README.md", false));
        // A negation after a positive rule cannot re-include what the rule ignored: the first
        // match wins, as in Helm.
        let ig = HelmIgnore::parse("*.txt\n!keep.txt\n").unwrap();
        assert!(ig.ignored("keep.txt", false));
        assert!(ig.ignored("other.md", false), "it does not match !keep.txt");
        // A directory-only negation ignores every file.
        let ig = HelmIgnore::parse("!templates/\n").unwrap();
        assert!(ig.ignored("templates/a.yaml", false));
        assert!(!ig.ignored("templates", true));
        // Helm's default rule: hidden files in templates/ are left out.
        let ig = HelmIgnore::parse("").unwrap();
        assert!(ig.ignored("templates/.hidden.yaml", false));
        assert!(!ig.ignored("templates/cm.yaml", false));
        assert!(!ig.ignored(".helmignore", false));
        // Helm refuses ** and malformed classes.
        assert!(HelmIgnore::parse("a/**/b\n").unwrap_err().contains("**"));
        assert!(HelmIgnore::parse("[abc\n").is_err());
    }

    #[test]
    fn glob_is_go_filepath_match() {
        let m = |p: &str, s: &str| glob(p.as_bytes(), s.as_bytes()).unwrap();
        assert!(m("a[bc]d", "acd"));
        assert!(!m("a[^bc]d", "acd"));
        assert!(m("a[^bc]d", "axd"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[a-c]x", "dx"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
        assert!(!m("a*", "a/b"), "* never crosses /");
        assert!(!m("a?b", "a/b"));
        assert!(!m("[^x]", "/"));
        assert!(glob(b"a\\", b"a").is_err());
    }
}
