//! Bundles: one OCI image layout packed as one tar file, written and read as a stream.
//!
//! A bundle carries artifacts to an install that cannot reach the vendor registry. This module
//! knows the OCI side only: it resolves an artifact's graph from a registry (index, every
//! platform, configs, layers, referrers and theirs: [`resolve_graph`]), writes tar entries
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>` and a few named files) with each blob
//! streamed from the registry straight into the tar, its size known from its descriptor
//! ([`BundleWriter`]), and reads a bundle back: the entries' places are found from their
//! headers without reading their data, and a blob is extracted into an [`OciLayout`], whose
//! `write_blob` verifies its digest and size before it is visible ([`BundleReader`]). What a
//! bundle means (which builds, the signed manifest, receipts) is the caller's.
//!
//! It must never hold a blob in memory (manifests, at most 4 MiB each, are the exception),
//! never leave a partial bundle under its final name, and never treat a truncated or malformed
//! tar as anything but a refusal.

use std::collections::{BTreeMap, HashSet};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::client::RegistryClient;
use crate::digest::{Digest, VerifyingStream};
use crate::error::{Error, Result, Step};
use crate::layout::OciLayout;
use crate::media::{is_manifest_type, Descriptor, Manifest, OCI_INDEX};
use crate::reference::RepoRef;
use crate::ByteStream;

/// The most manifests (all platforms and referrers) one artifact's graph may have.
pub const MAX_GRAPH_MANIFESTS: usize = 10_000;
/// The most tar entries a bundle may have.
pub const MAX_ENTRIES: usize = 200_000;
const BLOCK: u64 = 512;
const WRITE_BUFFER: usize = 256 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// The resolved graph of one artifact.
#[derive(Debug, Clone)]
pub struct ArtifactGraph {
    pub root: Manifest,
    /// Every manifest: the root, its children, referrers and their children.
    pub manifests: Vec<Manifest>,
    /// Every blob (configs, layers, non-manifest entries of an index) and its size.
    pub blobs: BTreeMap<Digest, u64>,
    /// Each referrer's descriptor, with the digest of its subject.
    pub referrers: Vec<(Digest, Descriptor)>,
}

impl ArtifactGraph {
    fn add_blob(&mut self, owner: &Digest, d: &Descriptor) -> Result<()> {
        match self.blobs.get(&d.digest) {
            Some(size) if *size != d.size => Err(Error::InvalidManifest {
                target: owner.to_string(),
                reason: format!(
                    "blob {} is listed with sizes {size} and {}",
                    d.digest, d.size
                ),
            }),
            _ => {
                self.blobs.insert(d.digest.clone(), d.size);
                Ok(())
            }
        }
    }
}

/// Resolves `repo@digest` and everything below it, then the referrers of every manifest (and
/// theirs). Manifests are fetched by digest and verified by the client; blobs are only listed.
pub async fn resolve_graph(
    client: &RegistryClient,
    repo: &RepoRef,
    digest: &Digest,
) -> Result<ArtifactGraph> {
    let root = client.get_manifest(repo, digest.as_str()).await?;
    let mut graph = ArtifactGraph {
        root: root.clone(),
        manifests: Vec::new(),
        blobs: BTreeMap::new(),
        referrers: Vec::new(),
    };
    let mut seen = HashSet::new();
    add_tree(client, repo, &mut graph, &mut seen, root).await?;
    let mut i = 0;
    while i < graph.manifests.len() {
        let subject = graph.manifests[i].digest.clone();
        for desc in client.referrers(repo, &subject).await? {
            if seen.contains(&desc.digest) || !is_manifest_type(&desc.media_type) {
                continue;
            }
            let m = client.get_manifest(repo, desc.digest.as_str()).await?;
            graph.referrers.push((subject.clone(), desc));
            add_tree(client, repo, &mut graph, &mut seen, m).await?;
        }
        i += 1;
    }
    Ok(graph)
}

async fn add_tree(
    client: &RegistryClient,
    repo: &RepoRef,
    graph: &mut ArtifactGraph,
    seen: &mut HashSet<Digest>,
    top: Manifest,
) -> Result<()> {
    let mut stack = vec![top];
    while let Some(m) = stack.pop() {
        if !seen.insert(m.digest.clone()) {
            continue;
        }
        if seen.len() > MAX_GRAPH_MANIFESTS {
            return Err(Error::InvalidManifest {
                target: format!(
                    "{}/{}@{}",
                    repo.registry, repo.repository, graph.root.digest
                ),
                reason: format!("its graph has more than {MAX_GRAPH_MANIFESTS} manifests"),
            });
        }
        let refs = m.references()?;
        for d in refs.config.iter().chain(refs.layers.iter()) {
            graph.add_blob(&m.digest, d)?;
        }
        for child in &refs.manifests {
            if !is_manifest_type(&child.media_type) {
                graph.add_blob(&m.digest, child)?;
            } else if !seen.contains(&child.digest) {
                stack.push(client.get_manifest(repo, child.digest.as_str()).await?);
            }
        }
        graph.manifests.push(m);
    }
    Ok(())
}

/// The tar path of a blob or manifest.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

fn bundle_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Config(format!("bundle {}: {what}", path.display()))
}

fn io_err(step: Step, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        step,
        path: path.display().to_string(),
        source,
    }
}

/// Removes the partial file unless the bundle was finished.
struct PartialGuard(Option<PathBuf>);

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes a bundle tar to `<out>.partial`, renamed to `out` by [`BundleWriter::finish`].
pub struct BundleWriter {
    out: PathBuf,
    tmp: PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
    names: HashSet<String>,
    bytes: u64,
    guard: PartialGuard,
}

impl BundleWriter {
    /// Starts a bundle; nothing appears under `out` until [`BundleWriter::finish`].
    pub async fn create(out: &Path) -> Result<BundleWriter> {
        let mut tmp = out.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &tmp, e))?;
        Ok(BundleWriter {
            out: out.to_path_buf(),
            guard: PartialGuard(Some(tmp.clone())),
            tmp,
            file: tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file),
            names: HashSet::new(),
            bytes: 0,
        })
    }

    /// Whether an entry of that name was written.
    pub fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    async fn header(&mut self, name: &str, size: u64) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            return Err(bundle_err(&self.out, format!("entry {name} written twice")));
        }
        if self.names.len() > MAX_ENTRIES {
            return Err(bundle_err(
                &self.out,
                format!("more than {MAX_ENTRIES} entries"),
            ));
        }
        let mut h = tar::Header::new_ustar();
        h.set_path(name)
            .map_err(|e| io_err(Step::WriteLayout, &self.tmp, e))?;
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        self.write(h.as_bytes()).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &self.tmp, e))?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    async fn pad(&mut self, size: u64) -> Result<()> {
        let rest = (BLOCK - size % BLOCK) % BLOCK;
        if rest > 0 {
            self.write(&[0u8; BLOCK as usize][..rest as usize]).await?;
        }
        Ok(())
    }

    /// A small named file (the signed manifest, its signature).
    pub async fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.header(name, bytes.len() as u64).await?;
        self.write(bytes).await?;
        self.pad(bytes.len() as u64).await
    }

    /// A manifest, under `blobs/sha256/<hex>`.
    pub async fn add_manifest(&mut self, m: &Manifest) -> Result<()> {
        let name = blob_path(&m.digest);
        if self.contains(&name) {
            return Ok(());
        }
        self.add_file(&name, &m.bytes).await
    }

    /// A blob streamed from `body`: the header is written from `size` first, then every chunk
    /// as it arrives, hashed on the way; a digest or size mismatch fails the whole bundle.
    pub async fn add_blob(&mut self, digest: &Digest, size: u64, body: ByteStream) -> Result<()> {
        let name = blob_path(digest);
        if self.contains(&name) {
            return Ok(());
        }
        self.header(&name, size).await?;
        let mut verified = VerifyingStream::new(body, digest.clone(), Some(size));
        let mut seen = 0u64;
        while let Some(chunk) = verified.next().await {
            let chunk = chunk?;
            seen += chunk.len() as u64;
            if seen > size {
                return Err(Error::SizeMismatch {
                    digest: digest.clone(),
                    expected: size,
                    actual: seen,
                });
            }
            self.write(&chunk).await?;
        }
        if seen != size {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: seen,
            });
        }
        self.pad(size).await
    }

    /// Writes `oci-layout` and an `index.json` listing `index` (the artifacts' roots and their
    /// referrers, so the unpacked tar is an image layout skopeo and the copy engine read), the
    /// end-of-archive blocks, syncs the file and renames it to its final name. Returns its size.
    pub async fn finish(mut self, index: &[Descriptor]) -> Result<u64> {
        self.add_file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
            .await?;
        let doc = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index});
        let raw = serde_json::to_vec(&doc).map_err(|e| bundle_err(&self.out, e))?;
        self.add_file("index.json", &raw).await?;
        self.write(&[0u8; 2 * BLOCK as usize]).await?;
        self.file
            .flush()
            .await
            .map_err(|e| io_err(Step::WriteLayout, &self.tmp, e))?;
        self.file
            .get_ref()
            .sync_all()
            .await
            .map_err(|e| io_err(Step::WriteLayout, &self.tmp, e))?;
        tokio::fs::rename(&self.tmp, &self.out)
            .await
            .map_err(|e| io_err(Step::WriteLayout, &self.out, e))?;
        self.guard.0 = None;
        Ok(self.bytes)
    }
}

/// Where one entry's data sits in the tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPlace {
    pub offset: u64,
    pub size: u64,
}

/// A bundle tar whose entries were located (headers checked, nothing past the end, no
/// duplicate, only the names a bundle may hold); data is read on demand.
#[derive(Debug, Clone)]
pub struct BundleReader {
    path: PathBuf,
    entries: BTreeMap<String, EntryPlace>,
}

/// Whether `name` may appear in a bundle: the layout files, `blobs/sha256/<64 hex>`, or one
/// of `named` (the caller's small files).
fn allowed(name: &str, named: &[&str]) -> bool {
    if name == "oci-layout" || name == "index.json" || named.contains(&name) {
        return true;
    }
    name.strip_prefix("blobs/sha256/")
        .is_some_and(ferry_spec::is_digest_hex)
}

fn checksum_ok(block: &[u8; BLOCK as usize]) -> bool {
    let stored = std::str::from_utf8(&block[148..156])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u64::from_str_radix(s, 8).ok());
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    stored == Some(sum)
}

impl BundleReader {
    /// Locates every entry of the tar at `path`. `named`: the extra file names the caller's
    /// bundle format has. A truncated file, a bad header, an entry of another type or name, or
    /// a duplicate is refused.
    pub async fn open(path: &Path, named: &[&str]) -> Result<BundleReader> {
        let mut file = tokio::fs::File::open(path)
            .await
            .map_err(|e| io_err(Step::ReadLayout, path, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| io_err(Step::ReadLayout, path, e))?
            .len();
        let truncated = || {
            bundle_err(
                path,
                "the file ends before the tar does: it is truncated; copy the bundle again",
            )
        };
        let mut entries = BTreeMap::new();
        let mut pos = 0u64;
        let mut block = [0u8; BLOCK as usize];
        loop {
            if pos + BLOCK > len {
                return Err(truncated());
            }
            file.seek(SeekFrom::Start(pos))
                .await
                .map_err(|e| io_err(Step::ReadLayout, path, e))?;
            file.read_exact(&mut block)
                .await
                .map_err(|e| io_err(Step::ReadLayout, path, e))?;
            if block.iter().all(|b| *b == 0) {
                // End of archive: two zero blocks.
                if pos + 2 * BLOCK > len {
                    return Err(truncated());
                }
                break;
            }
            if !checksum_ok(&block) {
                return Err(bundle_err(
                    path,
                    format!("the tar header at byte {pos} is corrupt (bad checksum)"),
                ));
            }
            let header = tar::Header::from_byte_slice(&block);
            let kind = header.entry_type();
            let size = header
                .entry_size()
                .map_err(|e| io_err(Step::ReadLayout, path, e))?;
            let name = header
                .path()
                .map_err(|e| io_err(Step::ReadLayout, path, e))?
                .to_string_lossy()
                .into_owned();
            if kind == tar::EntryType::Directory && size == 0 {
                pos += BLOCK;
                continue;
            }
            if kind != tar::EntryType::Regular || !allowed(&name, named) {
                return Err(bundle_err(
                    path,
                    format!("unexpected entry {name:?} ({kind:?}); this is not a Ferry bundle"),
                ));
            }
            let data = pos + BLOCK;
            let end = data
                .checked_add(size.div_ceil(BLOCK) * BLOCK)
                .ok_or_else(truncated)?;
            if end > len {
                return Err(truncated());
            }
            if entries
                .insert(name.clone(), EntryPlace { offset: data, size })
                .is_some()
            {
                return Err(bundle_err(path, format!("entry {name} appears twice")));
            }
            if entries.len() > MAX_ENTRIES {
                return Err(bundle_err(path, format!("more than {MAX_ENTRIES} entries")));
            }
            pos = end;
        }
        Ok(BundleReader {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The bundle's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where entry `name` is, if the bundle has it.
    pub fn entry(&self, name: &str) -> Option<EntryPlace> {
        self.entries.get(name).copied()
    }

    /// Every `blobs/sha256/<hex>` entry, as digest and size.
    pub fn blobs(&self) -> Result<Vec<(Digest, u64)>> {
        self.entries
            .iter()
            .filter_map(|(name, place)| {
                name.strip_prefix("blobs/sha256/")
                    .map(|hex| Ok((format!("sha256:{hex}").parse::<Digest>()?, place.size)))
            })
            .collect()
    }

    /// Reads a small entry whole; refused above `max` bytes.
    pub async fn read_file(&self, name: &str, max: u64) -> Result<Vec<u8>> {
        let place = self.entry(name).ok_or_else(|| {
            bundle_err(
                &self.path,
                format!("it has no {name}: it is truncated or not a Ferry bundle"),
            )
        })?;
        if place.size > max {
            return Err(bundle_err(
                &self.path,
                format!("{name} is {} bytes, more than {max}", place.size),
            ));
        }
        let mut file = self.open_at(place).await?;
        let mut buf = Vec::with_capacity(place.size as usize);
        (&mut file)
            .take(place.size)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| io_err(Step::ReadLayout, &self.path, e))?;
        Ok(buf)
    }

    async fn open_at(&self, place: EntryPlace) -> Result<tokio::fs::File> {
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|e| io_err(Step::ReadLayout, &self.path, e))?;
        file.seek(SeekFrom::Start(place.offset))
            .await
            .map_err(|e| io_err(Step::ReadLayout, &self.path, e))?;
        Ok(file)
    }

    /// Streams blob `digest` into `layout`, which verifies its digest and `size` before the
    /// blob becomes visible there.
    pub async fn extract_blob(&self, digest: &Digest, size: u64, layout: &OciLayout) -> Result<()> {
        let name = blob_path(digest);
        let place = self
            .entry(&name)
            .ok_or_else(|| bundle_err(&self.path, format!("it has no {name}")))?;
        if place.size != size {
            return Err(Error::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: place.size,
            });
        }
        let file = self.open_at(place).await?;
        let path = self.path.clone();
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(size), READ_CHUNK)
            .map(move |r| r.map_err(|e| io_err(Step::ReadLayout, &path, e)));
        layout.write_blob(digest, size, Box::pin(stream)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stream(data: Vec<u8>) -> ByteStream {
        Box::pin(futures::stream::iter(
            data.chunks(1000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        ))
    }

    #[tokio::test]
    async fn a_written_bundle_reads_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.tar");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::of(&data);
        let mut w = BundleWriter::create(&out).await.unwrap();
        w.add_file("x.json", b"{}").await.unwrap();
        w.add_blob(&digest, data.len() as u64, stream(data.clone()))
            .await
            .unwrap();
        assert!(!out.exists(), "nothing under the final name before finish");
        w.finish(&[]).await.unwrap();

        let r = BundleReader::open(&out, &["x.json"]).await.unwrap();
        assert_eq!(r.blobs().unwrap(), vec![(digest.clone(), 5000)]);
        assert_eq!(r.read_file("x.json", 10).await.unwrap(), b"{}");
        let layout = OciLayout::create(&dir.path().join("l")).await.unwrap();
        r.extract_blob(&digest, 5000, &layout).await.unwrap();
        assert_eq!(layout.has_blob(&digest).await.unwrap(), Some(5000));

        // An unknown name is refused; so is a truncated copy.
        assert!(BundleReader::open(&out, &[]).await.is_err());
        let raw = std::fs::read(&out).unwrap();
        let cut = dir.path().join("cut.tar");
        std::fs::write(&cut, &raw[..raw.len() - 1500]).unwrap();
        let err = BundleReader::open(&cut, &["x.json"]).await.unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        // A flipped byte in the blob is found when it is extracted.
        let mut bad = raw.clone();
        let place = r.entry(&blob_path(&digest)).unwrap();
        bad[place.offset as usize + 10] ^= 1;
        let evil = dir.path().join("evil.tar");
        std::fs::write(&evil, &bad).unwrap();
        let r2 = BundleReader::open(&evil, &["x.json"]).await.unwrap();
        let l2 = OciLayout::create(&dir.path().join("l2")).await.unwrap();
        let err = r2.extract_blob(&digest, 5000, &l2).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert_eq!(l2.has_blob(&digest).await.unwrap(), None);

        // A stream that lies about its content fails the bundle, and leaves no file.
        let out2 = dir.path().join("c.tar");
        let mut w = BundleWriter::create(&out2).await.unwrap();
        let err = w
            .add_blob(&digest, 5000, stream(vec![7u8; 5000]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        drop(w);
        assert!(!out2.exists());
        assert!(!dir.path().join("c.tar.partial").exists());
    }
}
