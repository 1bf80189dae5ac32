//! An OCI image layout on disk (image-spec `image-layout.md`): `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>`, readable by skopeo and others.
//!
//! Writes are atomic: a blob goes to a temporary file in the layout, is verified and fsynced,
//! then renamed; `index.json` is replaced the same way. It must never leave a partial blob
//! under its final name, and never tag a manifest whose references are not all present.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, VerifyingStream};
use crate::error::{Error, Result, Step};
use crate::media::{Descriptor, Manifest, OCI_INDEX};
use crate::ByteStream;

/// The annotation that carries a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

const OCI_LAYOUT_FILE: &str = "oci-layout";
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_FILE: &str = "index.json";
/// Manifests larger than this are refused (distribution registries use 4 MiB too).
const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
    /// Serialises read-modify-write of `index.json` within this process.
    index_lock: Arc<tokio::sync::Mutex<()>>,
}

fn io_err(step: Step, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        step,
        path: path.display().to_string(),
        source,
    }
}

/// Removes a temporary file unless disarmed, also when the writing future is dropped midway.
struct TempGuard {
    path: Option<PathBuf>,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn temp_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// fsync a directory so a rename inside it survives a crash. Best effort: some filesystems
/// refuse to sync directories, and the data itself is already synced.
async fn sync_dir(dir: &Path) {
    if let Ok(f) = tokio::fs::File::open(dir).await {
        let _ = f.sync_all().await;
    }
}

impl OciLayout {
    fn new(root: PathBuf) -> Self {
        OciLayout {
            root,
            index_lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Opens an existing layout, checking `oci-layout`.
    pub async fn open(dir: &Path) -> Result<Self> {
        let marker = dir.join(OCI_LAYOUT_FILE);
        let raw = match tokio::fs::read(&marker).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    step: Step::ReadLayout,
                    target: format!(
                        "OCI layout oci:{} (no oci-layout file; is this an OCI image layout directory?)",
                        dir.display()
                    ),
                })
            }
            Err(e) => return Err(io_err(Step::ReadLayout, &marker, e)),
        };
        let v: Value = serde_json::from_slice(&raw).map_err(|e| {
            io_err(
                Step::ReadLayout,
                &marker,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        match v.get("imageLayoutVersion").and_then(Value::as_str) {
            Some(ver) if ver.starts_with("1.") => Ok(Self::new(dir.to_path_buf())),
            other => Err(io_err(
                Step::ReadLayout,
                &marker,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unsupported imageLayoutVersion {other:?}; expected 1.0.0"),
                ),
            )),
        }
    }

    /// Opens a layout, creating the directory, `oci-layout` and an empty `index.json` if absent.
    pub async fn create(dir: &Path) -> Result<Self> {
        let shas = dir.join("blobs").join("sha256");
        tokio::fs::create_dir_all(&shas)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &shas, e))?;
        let layout = Self::new(dir.to_path_buf());
        let marker = dir.join(OCI_LAYOUT_FILE);
        if !exists(&marker).await? {
            layout
                .write_atomic(OCI_LAYOUT_FILE, OCI_LAYOUT_CONTENT)
                .await?;
        }
        let _guard = layout.index_lock.lock().await;
        if !exists(&dir.join(INDEX_FILE)).await? {
            layout.write_index(&empty_index()).await?;
        }
        drop(_guard);
        Self::open(dir).await
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    fn display_ref(&self, digest: &Digest) -> String {
        format!("oci:{}@{digest}", self.root.display())
    }

    /// The descriptor `index.json` lists for a tag (`org.opencontainers.image.ref.name`), or
    /// the only manifest when `tag` is `None` and there is exactly one.
    pub async fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        let index = self.read_index().await?;
        let entries = entries(&index);
        let tags: Vec<String> = entries.iter().filter_map(ref_name).collect();
        let pick = match tag {
            Some(t) => entries.iter().find(|e| ref_name(e).as_deref() == Some(t)),
            None if entries.len() == 1 => entries.first(),
            None if entries.is_empty() => None,
            None => {
                return Err(Error::Config(format!(
                    "oci:{} holds {} manifests; name one with oci:{}:<tag> (tags: {})",
                    self.root.display(),
                    entries.len(),
                    self.root.display(),
                    list_or_none(&tags)
                )))
            }
        };
        let Some(entry) = pick else {
            let what = match tag {
                Some(t) => format!("tag {t:?} in oci:{}", self.root.display()),
                None => format!("a manifest in oci:{}", self.root.display()),
            };
            return Err(Error::NotFound {
                step: Step::ReadLayout,
                target: format!("{what} (tags present: {})", list_or_none(&tags)),
            });
        };
        serde_json::from_value(entry.clone()).map_err(|e| Error::InvalidManifest {
            target: format!("oci:{}/index.json", self.root.display()),
            reason: format!("bad descriptor: {e}"),
        })
    }

    pub async fn has_blob(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(Step::ReadLayout, &path, e)),
        }
    }

    /// A blob's bytes as a stream (unverified; the engine verifies).
    pub async fn read_blob(&self, digest: &Digest) -> Result<ByteStream> {
        let path = self.blob_path(digest);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    step: Step::ReadLayout,
                    target: self.display_ref(digest),
                })
            }
            Err(e) => return Err(io_err(Step::ReadLayout, &path, e)),
        };
        #[cfg(test)]
        journal::record(&self.root, format!("read_blob {digest}"));
        let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK)
            .map(move |r| r.map_err(|e| io_err(Step::ReadLayout, &path, e)));
        Ok(Box::pin(stream))
    }

    /// A manifest, verified against its digest.
    pub async fn read_manifest(&self, digest: &Digest, media_type: &str) -> Result<Manifest> {
        let path = self.blob_path(digest);
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    step: Step::ReadLayout,
                    target: self.display_ref(digest),
                })
            }
            Err(e) => return Err(io_err(Step::ReadLayout, &path, e)),
        };
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(Error::InvalidManifest {
                target: self.display_ref(digest),
                reason: format!(
                    "{} bytes is larger than the {MAX_MANIFEST_BYTES}-byte manifest limit",
                    meta.len()
                ),
            });
        }
        let raw = tokio::fs::read(&path)
            .await
            .map_err(|e| io_err(Step::ReadLayout, &path, e))?;
        let actual = Digest::of(&raw);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        Manifest::from_bytes(Bytes::from(raw), media_type)
    }

    /// Streams a blob in, verifying digest and size before it becomes visible.
    pub async fn write_blob(&self, digest: &Digest, size: u64, body: ByteStream) -> Result<()> {
        if self.has_blob(digest).await?.is_some() {
            return Ok(());
        }
        let blobs = self.root.join("blobs");
        let dir = blobs.join(digest.algorithm());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &dir, e))?;
        // The temp file sits in blobs/, outside blobs/sha256/, so that no reader ever lists it
        // as content, yet on the same filesystem so the rename is atomic.
        let tmp = blobs.join(temp_name(".tmp-"));
        let mut guard = TempGuard {
            path: Some(tmp.clone()),
        };
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &tmp, e))?;
        let mut verified = VerifyingStream::new(body, digest.clone(), Some(size));
        while let Some(chunk) = verified.next().await {
            let chunk = chunk?;
            file.write_all(&chunk)
                .await
                .map_err(|e| io_err(Step::WriteLayout, &tmp, e))?;
        }
        file.flush()
            .await
            .map_err(|e| io_err(Step::WriteLayout, &tmp, e))?;
        file.sync_all()
            .await
            .map_err(|e| io_err(Step::WriteLayout, &tmp, e))?;
        drop(file);
        let dest = self.blob_path(digest);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &dest, e))?;
        guard.path = None;
        sync_dir(&dir).await;
        #[cfg(test)]
        journal::record(&self.root, format!("write_blob {digest}"));
        Ok(())
    }

    pub async fn write_manifest(&self, manifest: &Manifest) -> Result<()> {
        let body: ByteStream = Box::pin(futures::stream::iter([Ok(manifest.bytes.clone())]));
        self.write_blob(&manifest.digest, manifest.bytes.len() as u64, body)
            .await?;
        #[cfg(test)]
        journal::record(&self.root, format!("write_manifest {}", manifest.digest));
        Ok(())
    }

    /// Points `tag` (or no tag) at `descriptor` in `index.json`, replacing an older entry
    /// for the same tag.
    pub async fn tag(&self, tag: Option<&str>, descriptor: &Descriptor) -> Result<()> {
        // The index may only name manifests that are here (and, by the engine's order, whose
        // references are here too).
        if self.has_blob(&descriptor.digest).await?.is_none() {
            return Err(Error::NotFound {
                step: Step::WriteLayout,
                target: format!(
                    "{} (tag it only after writing the manifest)",
                    self.display_ref(&descriptor.digest)
                ),
            });
        }
        let _guard = self.index_lock.lock().await;
        let mut index = self.read_index().await?;
        let mut desc = descriptor.clone();
        desc.annotations.remove(REF_NAME);
        let mut list = entries(&index);
        match tag {
            Some(t) => {
                list.retain(|e| ref_name(e).as_deref() != Some(t));
                desc.annotations.insert(REF_NAME.to_string(), t.to_string());
            }
            None => {
                let listed = list.iter().any(|e| {
                    e.get("digest").and_then(Value::as_str) == Some(descriptor.digest.as_str())
                });
                if listed {
                    return Ok(());
                }
            }
        }
        let entry = serde_json::to_value(&desc).map_err(|e| Error::InvalidManifest {
            target: desc.digest.to_string(),
            reason: format!("cannot encode descriptor: {e}"),
        })?;
        list.push(entry);
        if let Some(obj) = index.as_object_mut() {
            obj.insert("manifests".into(), Value::Array(list));
        }
        self.write_index(&index).await?;
        #[cfg(test)]
        journal::record(
            &self.root,
            format!("tag {} {}", tag.unwrap_or("-"), desc.digest),
        );
        Ok(())
    }

    /// The referrers of `digest` found in the layout (manifests whose `subject` is it).
    ///
    /// Looks at every manifest reachable from `index.json`; the copy engine lists the
    /// referrers it writes there, as oras and skopeo do.
    pub async fn referrers(&self, digest: &Digest) -> Result<Vec<Descriptor>> {
        let index = self.read_index().await?;
        let mut queue: Vec<Descriptor> = entries(&index)
            .into_iter()
            .filter_map(|e| serde_json::from_value::<Descriptor>(e).ok())
            .collect();
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        while let Some(desc) = queue.pop() {
            if !seen.insert(desc.digest.clone()) || self.has_blob(&desc.digest).await?.is_none() {
                continue;
            }
            let m = match self.read_manifest(&desc.digest, &desc.media_type).await {
                Ok(m) => m,
                // Non-manifest entries are legal in an index; they refer to nothing.
                Err(Error::InvalidManifest { .. }) => continue,
                Err(e) => return Err(e),
            };
            let Ok(refs) = m.references() else { continue };
            if refs.subject.as_ref().map(|s| &s.digest) == Some(digest) {
                found.push(Descriptor {
                    media_type: m.media_type.clone(),
                    digest: m.digest.clone(),
                    size: m.bytes.len() as u64,
                    platform: None,
                    artifact_type: refs.artifact_type.clone(),
                    annotations: BTreeMap::new(),
                });
            }
            queue.extend(refs.manifests);
        }
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }

    async fn read_index(&self) -> Result<Value> {
        let path = self.root.join(INDEX_FILE);
        let raw = match tokio::fs::read(&path).await {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(empty_index()),
            Err(e) => return Err(io_err(Step::ReadLayout, &path, e)),
        };
        let v: Value = serde_json::from_slice(&raw).map_err(|e| Error::InvalidManifest {
            target: path.display().to_string(),
            reason: format!("not valid JSON: {e}"),
        })?;
        if !v.is_object() {
            return Err(Error::InvalidManifest {
                target: path.display().to_string(),
                reason: "index.json must be a JSON object".into(),
            });
        }
        Ok(v)
    }

    async fn write_index(&self, index: &Value) -> Result<()> {
        let raw = serde_json::to_vec(index).map_err(|e| Error::InvalidManifest {
            target: self.root.join(INDEX_FILE).display().to_string(),
            reason: format!("cannot encode: {e}"),
        })?;
        self.write_atomic(INDEX_FILE, &raw).await
    }

    /// Writes a small file at the layout's top level by temp file, fsync and rename.
    async fn write_atomic(&self, name: &str, content: &[u8]) -> Result<()> {
        let tmp = self.root.join(temp_name(&format!(".{name}.tmp-")));
        let mut guard = TempGuard {
            path: Some(tmp.clone()),
        };
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &tmp, e))?;
        f.write_all(content)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &tmp, e))?;
        f.sync_all()
            .await
            .map_err(|e| io_err(Step::WriteLayout, &tmp, e))?;
        drop(f);
        let dest = self.root.join(name);
        tokio::fs::rename(&tmp, &dest)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &dest, e))?;
        guard.path = None;
        sync_dir(&self.root).await;
        Ok(())
    }
}

async fn exists(path: &Path) -> Result<bool> {
    tokio::fs::try_exists(path)
        .await
        .map_err(|e| io_err(Step::ReadLayout, path, e))
}

fn empty_index() -> Value {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [],
    })
}

fn entries(index: &Value) -> Vec<Value> {
    index
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn ref_name(entry: &Value) -> Option<String> {
    entry
        .get("annotations")
        .and_then(|a| a.get(REF_NAME))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn list_or_none(tags: &[String]) -> String {
    if tags.is_empty() {
        "none".to_string()
    } else {
        tags.join(", ")
    }
}

/// A record of what each layout did, per root, so tests can check order and read counts of
/// layouts the engine opened itself.
#[cfg(test)]
pub(crate) mod journal {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static LOG: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

    pub(crate) fn record(root: &Path, op: String) {
        if let Ok(mut log) = LOG.lock() {
            log.push((root.to_path_buf(), op));
        }
    }

    pub(crate) fn ops(root: &Path) -> Vec<String> {
        LOG.lock()
            .map(|log| {
                log.iter()
                    .filter(|(r, _)| r == root)
                    .map(|(_, op)| op.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::media::{OCI_MANIFEST, ZIP_LAYER};

    pub(crate) fn bytes_stream(data: Vec<u8>) -> ByteStream {
        // Several chunks, so the verifier's hold-back is exercised, but never tiny ones for
        // big data.
        let chunks: Vec<Result<Bytes>> = data
            .chunks((data.len() / 8).max(7))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(chunks))
    }

    async fn collect(mut s: ByteStream) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.expect("chunk"));
        }
        out
    }

    fn manifest_for(config: &[u8], layer: &[u8]) -> Manifest {
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"{ZIP_LAYER}","digest":"{}","size":{}}}]}}"#,
            Digest::of(config),
            config.len(),
            Digest::of(layer),
            layer.len()
        );
        Manifest::from_bytes(Bytes::from(raw), OCI_MANIFEST).expect("manifest")
    }

    #[tokio::test]
    async fn round_trips_blobs_manifests_and_tags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::create(dir.path()).await.expect("create");
        let data = b"some layer content that spans chunks".to_vec();
        let d = Digest::of(&data);
        layout
            .write_blob(&d, data.len() as u64, bytes_stream(data.clone()))
            .await
            .expect("write");
        assert_eq!(
            layout.has_blob(&d).await.expect("has"),
            Some(data.len() as u64)
        );
        assert_eq!(
            collect(layout.read_blob(&d).await.expect("read")).await,
            data
        );

        let m = manifest_for(b"{}", &data);
        layout.write_manifest(&m).await.expect("manifest");
        layout.tag(Some("v1"), &m.descriptor()).await.expect("tag");
        let again = OciLayout::open(dir.path()).await.expect("open");
        let desc = again.resolve(Some("v1")).await.expect("resolve");
        assert_eq!(desc.digest, m.digest);
        assert_eq!(
            again.resolve(None).await.expect("only one").digest,
            m.digest
        );
        let back = again
            .read_manifest(&desc.digest, &desc.media_type)
            .await
            .expect("read manifest");
        assert_eq!(back.bytes, m.bytes);

        // Retagging replaces, a second tag adds, and None with several lists the tags.
        let m2 = manifest_for(b"{ }", &data);
        layout.write_manifest(&m2).await.expect("m2");
        layout
            .tag(Some("v1"), &m2.descriptor())
            .await
            .expect("retag");
        assert_eq!(
            layout.resolve(Some("v1")).await.expect("v1").digest,
            m2.digest
        );
        layout.tag(Some("v2"), &m.descriptor()).await.expect("v2");
        let err = layout
            .resolve(None)
            .await
            .expect_err("ambiguous")
            .to_string();
        assert!(err.contains("v1") && err.contains("v2"), "{err}");
        let err = layout
            .resolve(Some("nope"))
            .await
            .expect_err("missing")
            .to_string();
        assert!(err.contains("nope") && err.contains("v1"), "{err}");

        // An untagged entry is added once.
        layout.tag(None, &m.descriptor()).await.expect("untagged");
        let idx: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).expect("index"))
                .expect("json");
        assert_eq!(idx["manifests"].as_array().map(Vec::len), Some(2));
        assert_eq!(idx["mediaType"], OCI_INDEX);
        assert_eq!(idx["schemaVersion"], 2);
    }

    #[tokio::test]
    async fn a_bad_blob_never_becomes_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::create(dir.path()).await.expect("create");
        let claimed = Digest::of(b"the real thing");
        let err = layout
            .write_blob(&claimed, 14, bytes_stream(b"an impostor!!!".to_vec()))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, Error::DigestMismatch { ref expected, .. } if expected == &claimed));
        assert_eq!(layout.has_blob(&claimed).await.expect("has"), None);
        // No temp file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .expect("blobs")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // A failing body is not committed either.
        let failing: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"the real")),
            Err(Error::Config("source went away".into())),
        ]));
        let err = layout
            .write_blob(&claimed, 14, failing)
            .await
            .expect_err("fail");
        assert!(err.to_string().contains("source went away"));
        assert_eq!(layout.has_blob(&claimed).await.expect("has"), None);
    }

    #[tokio::test]
    async fn present_blobs_consume_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::create(dir.path()).await.expect("create");
        let d = Digest::of(b"x");
        layout
            .write_blob(&d, 1, bytes_stream(b"x".to_vec()))
            .await
            .expect("write");
        let poisoned: ByteStream = Box::pin(futures::stream::iter(vec![Err(Error::Config(
            "must not be read".into(),
        ))]));
        layout
            .write_blob(&d, 1, poisoned)
            .await
            .expect("already there");
    }

    #[tokio::test]
    async fn tagging_needs_the_manifest_and_open_needs_a_layout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = OciLayout::open(dir.path())
            .await
            .expect_err("not a layout")
            .to_string();
        assert!(err.contains("oci-layout"), "{err}");
        let layout = OciLayout::create(dir.path()).await.expect("create");
        let m = manifest_for(b"{}", b"zip");
        let err = layout
            .tag(Some("v1"), &m.descriptor())
            .await
            .expect_err("absent");
        assert!(err.to_string().contains(m.digest.as_str()), "{err}");
        let err = layout.resolve(None).await.expect_err("empty").to_string();
        assert!(err.contains("not found"), "{err}");
    }

    /// A small but real image: an empty tar layer and an image config naming its diff_id.
    pub(crate) async fn write_real_image(layout: &OciLayout, tag: &str) -> Manifest {
        let layer = vec![0u8; 1024];
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{}}}}"#,
            Digest::of(&layer)
        );
        for blob in [layer.clone(), config.clone().into_bytes()] {
            let d = Digest::of(&blob);
            layout
                .write_blob(&d, blob.len() as u64, bytes_stream(blob))
                .await
                .expect("blob");
        }
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
            Digest::of(config.as_bytes()),
            config.len(),
            Digest::of(&layer),
            layer.len()
        );
        let m = Manifest::from_bytes(Bytes::from(raw), OCI_MANIFEST).expect("manifest");
        layout.write_manifest(&m).await.expect("write manifest");
        layout.tag(Some(tag), &m.descriptor()).await.expect("tag");
        m
    }

    fn skopeo(args: &[&str]) -> std::process::Output {
        let out = std::process::Command::new("skopeo")
            .arg("--insecure-policy")
            .args(args)
            .output()
            .expect("skopeo is installed");
        assert!(
            out.status.success(),
            "skopeo {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    #[tokio::test]
    async fn skopeo_reads_what_we_write_and_we_read_what_it_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        let layout = OciLayout::create(&src).await.expect("create");
        let m = write_real_image(&layout, "v1").await;

        let src_ref = format!("oci:{}:v1", src.display());
        let out = skopeo(&["inspect", "--raw", &src_ref]);
        assert_eq!(
            out.stdout,
            m.bytes.to_vec(),
            "skopeo must see our exact bytes"
        );

        let dst_ref = format!("oci:{}:v1", dst.display());
        // Without --preserve-digests skopeo may re-encode the manifest; with it the copy must
        // be byte-exact, which also proves it read every blob of ours intact.
        skopeo(&["copy", "--quiet", "--preserve-digests", &src_ref, &dst_ref]);
        let theirs = OciLayout::open(&dst).await.expect("skopeo wrote a layout");
        let desc = theirs.resolve(Some("v1")).await.expect("tag v1");
        assert_eq!(desc.digest, m.digest);
        let back = theirs
            .read_manifest(&desc.digest, &desc.media_type)
            .await
            .expect("manifest");
        assert_eq!(back.bytes, m.bytes);
        for d in back.references().expect("refs").layers {
            assert_eq!(theirs.has_blob(&d.digest).await.expect("has"), Some(d.size));
        }
    }

    #[tokio::test]
    async fn finds_referrers_listed_in_the_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = OciLayout::create(dir.path()).await.expect("create");
        let subject = manifest_for(b"{}", b"zip");
        layout.write_manifest(&subject).await.expect("subject");
        layout
            .tag(Some("v1"), &subject.descriptor())
            .await
            .expect("tag");
        let raw = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/example.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{}","size":2}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}}}"#,
            Digest::of(b"{}"),
            subject.digest,
            subject.bytes.len()
        );
        let sig = Manifest::from_bytes(Bytes::from(raw), "").expect("sig");
        layout.write_manifest(&sig).await.expect("sig");
        assert!(layout
            .referrers(&subject.digest)
            .await
            .expect("none yet")
            .is_empty());
        layout.tag(None, &sig.descriptor()).await.expect("list sig");
        let refs = layout.referrers(&subject.digest).await.expect("refs");
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].digest, sig.digest);
        assert_eq!(
            refs[0].artifact_type.as_deref(),
            Some("application/example.sig")
        );
    }
}
