//! The `helm-chart` kind from a chart repository (`{"from": "repo", url, chart, version}`):
//! a classic HTTP chart repository (`index.yaml` + `.tgz`) or an `oci://` chart reference.
//!
//! Either way the result is the OCI chart artifact a chart directory gives (Helm's CNCF media
//! types), pushed to the component's vendor repository, so an install never fetches from the
//! chart repository at deploy time.
//!
//! - **HTTP repositories.** The archive is downloaded as the repository serves it (never
//!   repacked, so its digest is the one Helm users know) and must match the `digest` the
//!   repository's `index.yaml` lists for that version; an entry without a digest is refused.
//!   The archive's own Chart.yaml must name the same chart and version. A `.prov` file next to
//!   the archive (a signed chart) travels as a provenance layer. `version` may be an exact
//!   version or a SemVer requirement (`^1.2`); without one the highest stable version is used,
//!   and the build records which (the chart version tag and annotations).
//! - **OCI references.** `url` is `oci://host/path` and the chart is `<url>/<chart>:<version>`;
//!   the manifest is copied byte for byte after checking it is a Helm chart.
//!
//! This module must never keep an archive in memory (it streams to the build's temp dir, with a
//! size bound), never follow a URL scheme other than http(s), and never push anything when a
//! digest or a name does not match.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use ferry_core::ports::BuildSpec;
use ferry_oci::media::HELM_CONFIG;
use ferry_oci::{Reference, RegistryRef, RepoRef};
use futures::StreamExt as _;
use reqwest::Url;
use yaml_rust2::{Yaml, YamlLoader};

use crate::error::BuildError;
use crate::helm::{self, Provenance};
use crate::package::HashingWriter;
use crate::{ArtifactBuilder, BuiltArtifact};

/// The largest `index.yaml` read. Big public repositories publish indexes of tens of MiB.
pub const MAX_INDEX_BYTES: u64 = 64 * 1024 * 1024;
/// The largest chart archive downloaded.
pub const MAX_CHART_BYTES: u64 = 512 * 1024 * 1024;
/// The largest provenance file downloaded.
pub const MAX_PROVENANCE_BYTES: u64 = 1024 * 1024;

/// Builds a chart from a chart repository; see the module docs.
pub(crate) async fn build(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    url: &str,
    chart: &str,
    version: Option<&str>,
    repository: &ferry_core::id::Repository,
) -> Result<BuiltArtifact, BuildError> {
    let component = &spec.component;
    if let Some(rest) = url.strip_prefix("oci://") {
        return build_oci(b, spec, rest, chart, version, repository).await;
    }
    let bad = |reason: String| BuildError::ChartRepository {
        component: component.name.to_string(),
        url: url.to_string(),
        reason,
    };
    let base = repository_base(url).map_err(&bad)?;
    let auth = match b.source_credential() {
        None => None,
        Some(c) => Some(RepoAuth::new(&base, c).map_err(&bad)?),
    };
    let auth = auth.as_ref();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| bad(format!("HTTP client: {e}")))?;
    let index_url = base
        .join("index.yaml")
        .map_err(|e| bad(format!("index URL: {e}")))?;
    let index = get_bytes(&http, &index_url, MAX_INDEX_BYTES, auth)
        .await
        .map_err(&bad)?
        .ok_or_else(|| {
            bad(format!(
                "{index_url} answered 404: is this a chart repository?"
            ))
        })?;
    let entry = {
        let (chart, version) = (chart.to_string(), version.map(str::to_string));
        crate::package::blocking(move || Ok(find_entry(&index, &chart, version.as_deref())))
            .await?
            .map_err(&bad)?
    };
    let archive_url = base
        .join(&entry.url)
        .map_err(|e| bad(format!("chart URL {:?}: {e}", entry.url)))?;
    check_scheme(&archive_url).map_err(&bad)?;

    let tmp = b.temp_dir("ferry-chart-repo-")?;
    let archive = tmp.path().join(format!("{chart}-{}.tgz", entry.version));
    let (digest, size) = download(&http, &archive_url, &archive, MAX_CHART_BYTES, auth)
        .await
        .map_err(&bad)?
        .ok_or_else(|| {
            bad(format!(
                "{archive_url} answered 404 though the index lists it"
            ))
        })?;
    if digest.as_str() != format!("sha256:{}", entry.digest) {
        return Err(bad(format!(
            "{archive_url} has digest {digest}, but the index lists sha256:{}: the archive or \
             the index was changed; nothing was pushed",
            entry.digest
        )));
    }
    let provenance = fetch_provenance(&http, &archive_url, tmp.path(), auth)
        .await
        .map_err(&bad)?;
    let package = {
        let (component, archive) = (component.clone(), archive.clone());
        let (name, version) = (chart.to_string(), entry.version.clone());
        crate::package::blocking(move || {
            helm::chart_from_archive(&component, &archive, digest, size, (&name, &version))
        })
        .await?
    };
    tracing::info!(build_id = %spec.build_id, chart, version = %entry.version,
        digest = %package.archive_digest, provenance = provenance.is_some(),
        "chart downloaded and checked against the repository index");
    helm::push_chart(b, spec, package, provenance, tmp, repository).await
}

/// `oci://host/path` + chart + version: check it is a Helm chart, then copy it as is.
async fn build_oci(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    rest: &str,
    chart: &str,
    version: Option<&str>,
    repository: &ferry_core::id::Repository,
) -> Result<BuiltArtifact, BuildError> {
    let component = &spec.component;
    let url = format!("oci://{rest}");
    let bad = |reason: String| BuildError::ChartRepository {
        component: component.name.to_string(),
        url: url.clone(),
        reason,
    };
    let version = version.filter(|v| !v.trim().is_empty()).ok_or_else(|| {
        bad("an oci:// chart needs an exact \"version\" (the chart's tag in the registry)".into())
    })?;
    let (host, path) = rest
        .trim_end_matches('/')
        .split_once('/')
        .ok_or_else(|| bad("expected oci://host/path".into()))?;
    // Helm pushes version `1.0.0+build` under the tag `1.0.0_build`.
    let tag = version.replace('+', "_");
    let repo = RepoRef::new(host, format!("{path}/{chart}"));
    let b = b.with_registry_source(&repo.registry, &repo.repository)?;
    let b = &b;
    let manifest = b
        .inner
        .client
        .get_manifest(&repo, &tag)
        .await
        .map_err(|e| bad(format!("chart {chart} version {version}: {e}")))?;
    let config_type = serde_json::from_slice::<serde_json::Value>(&manifest.bytes)
        .ok()
        .and_then(|v| v["config"]["mediaType"].as_str().map(str::to_string));
    if config_type.as_deref() != Some(HELM_CONFIG) {
        return Err(bad(format!(
            "{repo}:{tag} is not a Helm chart (config media type {}, expected {HELM_CONFIG})",
            config_type.as_deref().unwrap_or("missing")
        )));
    }
    // Copy by the digest just checked, so a tag moved in between cannot swap the content.
    let source = Reference::Registry(RegistryRef {
        repo,
        tag: None,
        digest: Some(manifest.digest.clone()),
    });
    let mut tags = vec![spec.build_id.to_string()];
    if tag != tags[0] {
        tags.push(tag);
    }
    b.push(component, &source, repository, tags).await
}

/// The repository URL as a base for relative URLs (with a trailing slash), http(s) only.
fn repository_base(url: &str) -> Result<Url, String> {
    let mut base = Url::parse(url.trim())
        .map_err(|e| format!("not a URL ({e}); use https://host/path or oci://host/path"))?;
    check_scheme(&base)?;
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

fn check_scheme(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!(
            "{url}: scheme {other:?} is not supported; chart repositories are http(s) or oci://"
        )),
    }
}

/// One version of one chart, as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IndexEntry {
    version: String,
    /// The archive's URL as written in the index (absolute, or relative to the repository).
    url: String,
    /// Hex sha256 of the archive.
    digest: String,
}

/// Finds `chart` in an `index.yaml`: the exact `version`, the highest version matching it as a
/// SemVer requirement, or (without one) the highest stable version.
fn find_entry(index: &[u8], chart: &str, version: Option<&str>) -> Result<IndexEntry, String> {
    let text = std::str::from_utf8(index).map_err(|_| "index.yaml is not UTF-8".to_string())?;
    let docs = YamlLoader::load_from_str(text).map_err(|e| format!("index.yaml: {e}"))?;
    let doc = docs.first().ok_or("index.yaml is empty")?;
    let versions = match &doc["entries"][chart] {
        Yaml::Array(v) => v,
        _ => return Err(format!("the repository has no chart named {chart:?}")),
    };
    let mut candidates: Vec<(semver::Version, &Yaml)> = Vec::new();
    for v in versions {
        if v["deprecated"].as_bool() == Some(true) && version.is_none() {
            continue;
        }
        let Some(text) = v["version"].as_str() else {
            continue;
        };
        if version == Some(text) {
            return entry_of(chart, text, v);
        }
        if let Ok(parsed) = semver::Version::parse(text.trim_start_matches('v')) {
            candidates.push((parsed, v));
        }
    }
    let chosen = match version {
        Some(req) => {
            let req = semver::VersionReq::parse(req).map_err(|_| {
                format!(
                    "chart {chart:?} has no version {req:?} (and it is not a version \
                     requirement); available: {}",
                    listing(versions)
                )
            })?;
            candidates
                .into_iter()
                .filter(|(v, _)| req.matches(v))
                .max_by(|a, b| a.0.cmp(&b.0))
        }
        None => candidates
            .into_iter()
            .filter(|(v, _)| v.pre.is_empty())
            .max_by(|a, b| a.0.cmp(&b.0)),
    };
    match chosen {
        Some((_, v)) => entry_of(chart, v["version"].as_str().unwrap_or_default(), v),
        None => Err(format!(
            "chart {chart:?} has no version matching {}; available: {}",
            version.unwrap_or("a stable release"),
            listing(versions)
        )),
    }
}

fn entry_of(chart: &str, version: &str, v: &Yaml) -> Result<IndexEntry, String> {
    let url = match &v["urls"] {
        Yaml::Array(urls) => urls.iter().find_map(|u| u.as_str().map(str::to_string)),
        _ => None,
    }
    .ok_or_else(|| format!("chart {chart:?} version {version:?} lists no download URL"))?;
    let digest = v["digest"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if ferry_oci::Digest::new(format!("sha256:{digest}")).is_err() {
        return Err(format!(
            "chart {chart:?} version {version:?} has no sha256 digest in the index; Ferry \
             checks every archive against its index, so it cannot take this one"
        ));
    }
    Ok(IndexEntry {
        version: version.to_string(),
        url,
        digest,
    })
}

/// The versions an index lists, newest first as written, for error messages (at most 10).
fn listing(versions: &[Yaml]) -> String {
    let all: Vec<&str> = versions
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    let shown = all.iter().take(10).copied().collect::<Vec<_>>().join(", ");
    if all.len() > 10 {
        format!("{shown}, … ({} in all)", all.len())
    } else if shown.is_empty() {
        "none".into()
    } else {
        shown
    }
}

/// A small body, bounded; `None` on 404.
async fn get_bytes(
    http: &reqwest::Client,
    url: &Url,
    max: u64,
    auth: Option<&RepoAuth>,
) -> Result<Option<Vec<u8>>, String> {
    let resp = send(http, url, auth).await?;
    let Some(resp) = resp else { return Ok(None) };
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: reading the body: {e}"))?;
        if body.len() as u64 + chunk.len() as u64 > max {
            return Err(format!(
                "{url} is larger than {max} bytes; refusing to read it"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Streams `url` into `path`, hashing as it goes; bounded; `None` on 404.
async fn download(
    http: &reqwest::Client,
    url: &Url,
    path: &Path,
    max: u64,
    auth: Option<&RepoAuth>,
) -> Result<Option<(ferry_oci::Digest, u64)>, String> {
    let Some(resp) = send(http, url, auth).await? else {
        return Ok(None);
    };
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(format!(
            "{url} is larger than {max} bytes; refusing to download it"
        ));
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = HashingWriter::new(std::io::BufWriter::new(file));
    let mut stream = resp.bytes_stream();
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: reading the body: {e}"))?;
        len += chunk.len() as u64;
        if len > max {
            return Err(format!(
                "{url} is larger than {max} bytes; refusing to download it"
            ));
        }
        // Small synchronous writes into a buffered file; the chunk sizes are the network's.
        out.write_all(&chunk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let (digest, size, mut buf) = out.finish();
    buf.flush()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some((digest, size)))
}

/// `<archive>.prov`, if the repository has one.
async fn fetch_provenance(
    http: &reqwest::Client,
    archive_url: &Url,
    dir: &Path,
    auth: Option<&RepoAuth>,
) -> Result<Option<Provenance>, String> {
    let url =
        Url::parse(&format!("{archive_url}.prov")).map_err(|e| format!("provenance URL: {e}"))?;
    let path = dir.join("chart.prov");
    Ok(download(http, &url, &path, MAX_PROVENANCE_BYTES, auth)
        .await?
        .map(|(digest, size)| Provenance { path, digest, size }))
}

/// The component's credential for its chart repository: sent only to the repository's own
/// origin (an index may point archives at another host; like Helm without
/// `--pass-credentials`, they get none), and only over https or to loopback.
pub(crate) struct RepoAuth {
    base: Url,
    header: reqwest::header::HeaderValue,
}

impl RepoAuth {
    fn new(base: &Url, credential: &crate::sources::SourceCredential) -> Result<RepoAuth, String> {
        let host = base.host_str().unwrap_or("");
        let loopback = host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if base.scheme() != "https" && !loopback {
            return Err(
                "the component names a credential, which is sent only over https (or to a \
                 loopback test server); use the repository's https URL"
                    .into(),
            );
        }
        let mut header =
            reqwest::header::HeaderValue::from_str(credential.http_authorization().expose())
                .map_err(|_| "the credential holds characters an HTTP header cannot".to_string())?;
        header.set_sensitive(true);
        Ok(RepoAuth {
            base: base.clone(),
            header,
        })
    }

    /// The header for `url`, when it is on the repository's origin.
    fn header_for(&self, url: &Url) -> Option<&reqwest::header::HeaderValue> {
        (url.origin() == self.base.origin()).then_some(&self.header)
    }
}

/// GET with a clear error for anything but 2xx and 404.
async fn send(
    http: &reqwest::Client,
    url: &Url,
    auth: Option<&RepoAuth>,
) -> Result<Option<reqwest::Response>, String> {
    let mut rb = http.get(url.clone());
    let header = auth.and_then(|a| a.header_for(url));
    if let Some(h) = header {
        rb = rb.header(reqwest::header::AUTHORIZATION, h.clone());
    }
    let resp = rb.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    match resp.status() {
        s if s.is_success() => Ok(Some(resp)),
        reqwest::StatusCode::NOT_FOUND => Ok(None),
        s @ (reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN) => {
            Err(match header {
                Some(_) => format!(
                    "GET {url} answered {s}: the repository refused the component's credential; \
                     check its user and password (or token)"
                ),
                None => format!(
                    "GET {url} answered {s}: the repository is private; name a credential in \
                     the component (\"credentials\": NAME, see docs/design/build.md)"
                ),
            })
        }
        s => Err(format!("GET {url} answered {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"
apiVersion: v1
entries:
  web:
    - version: 1.3.0-rc.1
      urls: [web-1.3.0-rc.1.tgz]
      digest: 1111111111111111111111111111111111111111111111111111111111111abc
    - version: 1.2.0
      urls: [charts/web-1.2.0.tgz]
      digest: 2222222222222222222222222222222222222222222222222222222222222abc
    - version: 1.1.0
      urls: [https://cdn.example/web-1.1.0.tgz]
      digest: 3333333333333333333333333333333333333333333333333333333333333abc
    - version: 0.9.0
      urls: [web-0.9.0.tgz]
  other:
    - version: 2.0.0
"#;

    #[test]
    fn exact_version_requirement_and_latest_stable() {
        let idx = INDEX.as_bytes();
        assert_eq!(
            find_entry(idx, "web", Some("1.1.0")).unwrap().url,
            "https://cdn.example/web-1.1.0.tgz"
        );
        assert_eq!(
            find_entry(idx, "web", Some("^1.1")).unwrap().version,
            "1.2.0"
        );
        assert_eq!(find_entry(idx, "web", None).unwrap().version, "1.2.0");
        assert_eq!(
            find_entry(idx, "web", Some("1.3.0-rc.1")).unwrap().version,
            "1.3.0-rc.1"
        );
    }

    #[test]
    fn refusals_say_what_is_there() {
        let idx = INDEX.as_bytes();
        let e = find_entry(idx, "nope", None).unwrap_err();
        assert!(e.contains("no chart named \"nope\""), "{e}");
        let e = find_entry(idx, "web", Some("7.0.0")).unwrap_err();
        assert!(
            e.contains("available: 1.3.0-rc.1, 1.2.0, 1.1.0, 0.9.0"),
            "{e}"
        );
        let e = find_entry(idx, "web", Some("0.9.0")).unwrap_err();
        assert!(e.contains("no sha256 digest"), "{e}");
        let e = find_entry(b"entries: [", "web", None).unwrap_err();
        assert!(e.contains("index.yaml"), "{e}");
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            repository_base("https://h/charts").unwrap().as_str(),
            "https://h/charts/"
        );
        assert_eq!(
            repository_base("https://h/charts/")
                .unwrap()
                .join("a/b.tgz")
                .unwrap()
                .as_str(),
            "https://h/charts/a/b.tgz"
        );
        assert!(repository_base("file:///etc")
            .unwrap_err()
            .contains("not supported"));
        assert!(repository_base("not a url").is_err());
    }
}
