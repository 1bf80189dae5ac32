//! FROM-scratch, multi-platform OCI images packed from files, with no container daemon: how
//! Ferry ships its own `ferry-agent` image (`scripts/agent-image.sh`, `ferry image pack`).
//!
//! An image is one static binary per platform plus a shared base layer (CA certificates, a
//! non-root user in `/etc/passwd` and `/etc/group`, a sticky `/tmp`), written into an OCI
//! image layout as an index of one manifest per platform. Packing is reproducible: every tar
//! entry has a fixed mtime (0), owner (0:0) and mode, entries are written in a fixed order,
//! gzip carries no name or time, and the configs carry no creation date, so the same inputs
//! always give the same index digest (`docs/design/agent-image.md`).
//!
//! This module must never read a binary or a layer into memory (layers are built in a
//! temporary file and streamed into the layout, hashed on the way), and never unpack a path
//! that climbs out of the destination (the `tar` crate refuses `..` and absolute paths).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_oci::digest::VerifyingStream;
use ferry_oci::media::{Descriptor, Manifest, Platform, OCI_INDEX};
use ferry_oci::{Digest as OciDigest, OciLayout};
use futures::StreamExt;
use serde::Serialize;
use tokio::io::AsyncWriteExt;

use crate::error::{io_err, BuildError};
use crate::package::HashingWriter;
use crate::package::{add_file_blob, add_small_blob, blocking, descriptor, put_manifest};

/// Media types of a gzip-compressed tar layer and of an image config (defined in ferry-spec).
pub use ferry_oci::media::{
    OCI_IMAGE_CONFIG as IMAGE_CONFIG, OCI_LAYER_TAR_GZIP as LAYER_TAR_GZIP,
};
/// Where the CA bundle lands in the image (the path rustls-native-certs and OpenSSL read).
pub const CA_BUNDLE_PATH: &str = "etc/ssl/certs/ca-certificates.crt";

/// The non-root account the image runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Default for ImageUser {
    /// `ferry`, 65532:65532 (the uid distroless images use for "nonroot").
    fn default() -> Self {
        ImageUser {
            name: "ferry".into(),
            uid: 65532,
            gid: 65532,
        }
    }
}

/// One platform's binary.
#[derive(Debug, Clone)]
pub struct PlatformBinary {
    pub platform: Platform,
    /// A static executable for that platform (not checked here: packing is format-agnostic).
    pub path: PathBuf,
}

/// What to pack.
#[derive(Debug, Clone)]
pub struct ScratchImage {
    /// One entry per platform, in the order the index lists them.
    pub binaries: Vec<PlatformBinary>,
    /// Absolute path of the binary inside the image, e.g. `/usr/local/bin/ferry-agent`; it is
    /// the entrypoint.
    pub binary_path: String,
    /// The CA bundle to install at [`CA_BUNDLE_PATH`] (Debian: the ca-certificates package's
    /// `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_bundle: PathBuf,
    pub user: ImageUser,
    /// Image labels (config `Labels`) and index annotations, e.g. the version and source.
    pub labels: BTreeMap<String, String>,
}

/// A packed image: the index, tagged in the layout.
#[derive(Debug, Clone)]
pub struct PackedImage {
    pub index: Manifest,
    /// The per-platform manifests, in index order.
    pub manifests: Vec<(Platform, OciDigest)>,
}

fn bad(what: impl Into<String>) -> BuildError {
    BuildError::Config(what.into())
}

fn oci(component: &str) -> impl FnOnce(ferry_oci::Error) -> BuildError + '_ {
    move |source| BuildError::Oci {
        component: component.to_string(),
        source,
    }
}

/// A path inside the image without its leading `/`, refusing empty, `.` and `..` parts.
fn image_rel(path: &str) -> Result<String, BuildError> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty()
        || rel
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(bad(format!(
            "image path {path:?} must be an absolute path without empty, `.` or `..` parts, \
             e.g. /usr/local/bin/ferry-agent"
        )));
    }
    Ok(rel.to_string())
}

/// One tar entry of a layer. Directories end with `/`.
enum Entry {
    Dir {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Bytes {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    File {
        path: String,
        mode: u32,
        source: PathBuf,
    },
}

/// The parent directories of `rel` (`a/b/c` → `a/`, `a/b/`), root-owned 0755.
fn parents(rel: &str) -> Vec<Entry> {
    let parts: Vec<&str> = rel.split('/').collect();
    (1..parts.len())
        .map(|n| Entry::Dir {
            path: format!("{}/", parts[..n].join("/")),
            mode: 0o755,
            uid: 0,
            gid: 0,
        })
        .collect()
}

fn base_entries(image: &ScratchImage) -> Vec<Entry> {
    let u = &image.user;
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\n{}:x:{}:{}:{}:/home/{}:/sbin/nologin\n",
        u.name, u.uid, u.gid, u.name, u.name
    );
    let group = format!("root:x:0:\n{}:x:{}:\n", u.name, u.gid);
    vec![
        Entry::Dir {
            path: "etc/".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Entry::Bytes {
            path: "etc/group".into(),
            mode: 0o644,
            data: group.into_bytes(),
        },
        Entry::Bytes {
            path: "etc/passwd".into(),
            mode: 0o644,
            data: passwd.into_bytes(),
        },
        Entry::Dir {
            path: "etc/ssl/".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Entry::Dir {
            path: "etc/ssl/certs/".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Entry::File {
            path: CA_BUNDLE_PATH.into(),
            mode: 0o644,
            source: image.ca_bundle.clone(),
        },
        Entry::Dir {
            path: "home/".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Entry::Dir {
            path: format!("home/{}/", u.name),
            mode: 0o700,
            uid: u64::from(u.uid),
            gid: u64::from(u.gid),
        },
        Entry::Dir {
            path: "tmp/".into(),
            mode: 0o1777,
            uid: 0,
            gid: 0,
        },
    ]
}

/// A layer as written: compressed digest and size, and the uncompressed digest (diff id).
struct Layer {
    file: PathBuf,
    digest: OciDigest,
    size: u64,
    diff_id: OciDigest,
}

fn header(kind: tar::EntryType, mode: u32, size: u64, uid: u64, gid: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(uid);
    h.set_gid(gid);
    h
}

/// Writes `entries` as a gzip tar layer at `out` (blocking).
fn write_layer(entries: &[Entry], out: &Path) -> Result<Layer, BuildError> {
    let io = |step| io_err(step, out);
    let file = File::create(out).map_err(io("create layer"))?;
    let compressed = HashingWriter::new(BufWriter::new(file));
    // No name, mtime 0 and a fixed OS byte: the gzip header carries nothing of this machine.
    let gz = flate2::GzBuilder::new()
        .operating_system(255)
        .write(compressed, flate2::Compression::default());
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    for e in entries {
        match e {
            Entry::Dir {
                path,
                mode,
                uid,
                gid,
            } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, *uid, *gid);
                tar.append_data(&mut h, path, std::io::empty())
                    .map_err(io("write layer"))?;
            }
            Entry::Bytes { path, mode, data } => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64, 0, 0);
                tar.append_data(&mut h, path, data.as_slice())
                    .map_err(io("write layer"))?;
            }
            Entry::File { path, mode, source } => {
                let src = File::open(source).map_err(io_err("read", source))?;
                let meta = src.metadata().map_err(io_err("stat", source))?;
                if !meta.is_file() {
                    return Err(bad(format!("{} is not a regular file", source.display())));
                }
                let mut h = header(tar::EntryType::Regular, *mode, meta.len(), 0, 0);
                tar.append_data(&mut h, path, src)
                    .map_err(io_err("archive", source))?;
            }
        }
    }
    let uncompressed = tar.into_inner().map_err(io("finish layer"))?;
    let (diff_id, _, gz) = uncompressed.finish();
    let compressed = gz.finish().map_err(io("finish layer"))?;
    let (digest, size, mut buf) = compressed.finish();
    buf.flush().map_err(io("write layer"))?;
    let file = buf.into_inner().map_err(|e| BuildError::Io {
        step: "write layer",
        path: out.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("sync layer"))?;
    Ok(Layer {
        file: out.to_path_buf(),
        digest,
        size,
        diff_id,
    })
}

/// The image config, field order fixed so its bytes (and digest) are too.
#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: RunConfig<'a>,
    rootfs: RootFs<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig<'a> {
    user: String,
    entrypoint: [&'a str; 1],
    env: Vec<String>,
    working_dir: &'static str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: [&'a str; 2],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index<'a> {
    schema_version: u32,
    media_type: &'static str,
    manifests: &'a [Descriptor],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

/// Packs `image` into the OCI layout at `layout_dir` (created if missing) and tags the index
/// `tag` there. Same inputs, same index digest.
pub async fn pack_scratch_image(
    image: &ScratchImage,
    layout_dir: &Path,
    tag: &str,
) -> Result<PackedImage, BuildError> {
    const WHAT: &str = "scratch image";
    if image.binaries.is_empty() {
        return Err(bad(
            "no binary to pack: give at least one platform=path (e.g. linux/amd64=target/x86_64-unknown-linux-musl/release/ferry-agent)",
        ));
    }
    for (i, b) in image.binaries.iter().enumerate() {
        if image.binaries[..i].iter().any(|o| o.platform == b.platform) {
            return Err(bad(format!(
                "platform {}/{} is given twice; give one binary per platform",
                b.platform.os, b.platform.architecture
            )));
        }
    }
    let binary_rel = image_rel(&image.binary_path)?;
    if image.user.uid == 0 || image.user.name == "root" {
        return Err(bad(
            "the image user must not be root (uid 0): pick a non-root uid such as 65532",
        ));
    }
    let layout = OciLayout::create(layout_dir).await.map_err(oci(WHAT))?;
    let work = tempfile::Builder::new()
        .prefix(".ferry-pack-")
        .tempdir_in(layout_dir)
        .map_err(io_err("create temporary directory in", layout_dir))?;

    let base_entries = base_entries(image);
    let base_out = work.path().join("base.tar.gz");
    let base = blocking(move || write_layer(&base_entries, &base_out)).await?;
    add_file_blob(&layout, &base.file, &base.digest, base.size)
        .await
        .map_err(oci(WHAT))?;

    let env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("SSL_CERT_FILE=/{CA_BUNDLE_PATH}"),
    ];
    let mut children = Vec::new();
    let mut manifests = Vec::new();
    for (n, bin) in image.binaries.iter().enumerate() {
        let mut entries = parents(&binary_rel);
        entries.push(Entry::File {
            path: binary_rel.clone(),
            mode: 0o755,
            source: bin.path.clone(),
        });
        let out = work.path().join(format!("bin-{n}.tar.gz"));
        let layer = blocking(move || write_layer(&entries, &out)).await?;
        add_file_blob(&layout, &layer.file, &layer.digest, layer.size)
            .await
            .map_err(oci(WHAT))?;
        let config = ImageConfig {
            architecture: &bin.platform.architecture,
            os: &bin.platform.os,
            variant: bin.platform.variant.as_deref(),
            config: RunConfig {
                user: format!("{}:{}", image.user.uid, image.user.gid),
                entrypoint: [image.binary_path.as_str()],
                env: env.clone(),
                working_dir: "/",
                labels: &image.labels,
            },
            rootfs: RootFs {
                kind: "layers",
                diff_ids: [base.diff_id.as_str(), layer.diff_id.as_str()],
            },
        };
        let bytes = serde_json::to_vec(&config)
            .map_err(|e| bad(format!("cannot encode the image config: {e}")))?;
        let config = add_small_blob(&layout, IMAGE_CONFIG, bytes)
            .await
            .map_err(oci(WHAT))?;
        let layers = [
            descriptor(LAYER_TAR_GZIP, base.digest.clone(), base.size),
            descriptor(LAYER_TAR_GZIP, layer.digest.clone(), layer.size),
        ];
        let manifest = put_manifest(&layout, None, &config, &layers, &BTreeMap::new())
            .await
            .map_err(oci(WHAT))?;
        let mut child = manifest.descriptor();
        child.platform = Some(bin.platform.clone());
        manifests.push((bin.platform.clone(), manifest.digest.clone()));
        children.push(child);
    }
    let index = Index {
        schema_version: 2,
        media_type: OCI_INDEX,
        manifests: &children,
        annotations: &image.labels,
    };
    let bytes =
        serde_json::to_vec(&index).map_err(|e| bad(format!("cannot encode the index: {e}")))?;
    let index = Manifest::from_bytes(Bytes::from(bytes), OCI_INDEX).map_err(oci(WHAT))?;
    layout.write_manifest(&index).await.map_err(oci(WHAT))?;
    layout
        .tag(Some(tag), &index.descriptor())
        .await
        .map_err(oci(WHAT))?;
    drop(work);
    Ok(PackedImage { index, manifests })
}

/// Unpacks the root filesystem of `platform` from the index tagged `tag` in the layout at
/// `layout_dir` into `dest` (which must be empty or missing). Every layer is verified against
/// its digest while it is read. Whiteouts are not handled: this is for FROM-scratch images.
pub async fn unpack_rootfs(
    layout_dir: &Path,
    tag: &str,
    platform: &Platform,
    dest: &Path,
) -> Result<(), BuildError> {
    const WHAT: &str = "scratch image";
    let layout = OciLayout::open(layout_dir).await.map_err(oci(WHAT))?;
    let top = layout.resolve(Some(tag)).await.map_err(oci(WHAT))?;
    let mut manifest = layout
        .read_manifest(&top.digest, &top.media_type)
        .await
        .map_err(oci(WHAT))?;
    if manifest.is_index() {
        let refs = manifest.references().map_err(oci(WHAT))?;
        let listed: Vec<String> = refs
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| format!("{}/{}", p.os, p.architecture))
            .collect();
        let child = refs
            .manifests
            .into_iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
            .ok_or_else(|| {
                bad(format!(
                    "oci:{}:{tag} has no {}/{} manifest (it has: {})",
                    layout_dir.display(),
                    platform.os,
                    platform.architecture,
                    listed.join(", ")
                ))
            })?;
        manifest = layout
            .read_manifest(&child.digest, &child.media_type)
            .await
            .map_err(oci(WHAT))?;
    }
    tokio::fs::create_dir_all(dest)
        .await
        .map_err(io_err("create", dest))?;
    let work = tempfile::Builder::new()
        .prefix(".ferry-unpack-")
        .tempdir()
        .map_err(io_err(
            "create temporary directory in",
            std::env::temp_dir(),
        ))?;
    for (n, layer) in manifest
        .references()
        .map_err(oci(WHAT))?
        .layers
        .into_iter()
        .enumerate()
    {
        if layer.media_type != LAYER_TAR_GZIP {
            return Err(bad(format!(
                "layer {} is {}; only {LAYER_TAR_GZIP} layers can be unpacked",
                layer.digest, layer.media_type
            )));
        }
        let tmp = work.path().join(format!("layer-{n}"));
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .map_err(io_err("create", &tmp))?;
        let body = layout.read_blob(&layer.digest).await.map_err(oci(WHAT))?;
        let mut verified = VerifyingStream::new(body, layer.digest.clone(), Some(layer.size));
        while let Some(chunk) = verified.next().await {
            let chunk = chunk.map_err(oci(WHAT))?;
            file.write_all(&chunk)
                .await
                .map_err(io_err("write", &tmp))?;
        }
        file.flush().await.map_err(io_err("write", &tmp))?;
        drop(file);
        let dest = dest.to_path_buf();
        blocking(move || {
            let f = File::open(&tmp).map_err(io_err("read", &tmp))?;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(f));
            archive.set_preserve_permissions(true);
            archive.set_overwrite(true);
            archive
                .unpack(&dest)
                .map_err(io_err("unpack layer into", &dest))
        })
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_paths_must_be_plain_absolute_paths() {
        assert_eq!(
            image_rel("/usr/local/bin/ferry-agent").unwrap(),
            "usr/local/bin/ferry-agent"
        );
        for bad in ["/", "", "/usr/../etc/x", "/usr//x", "/./x"] {
            let e = image_rel(bad).unwrap_err().to_string();
            assert!(e.contains("absolute path"), "{bad}: {e}");
        }
        let p: Vec<String> = parents("usr/local/bin/x")
            .into_iter()
            .map(|e| match e {
                Entry::Dir { path, .. } => path,
                _ => String::new(),
            })
            .collect();
        assert_eq!(p, ["usr/", "usr/local/", "usr/local/bin/"]);
    }
}
