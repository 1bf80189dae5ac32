//! The `opentofu-module` kind: a module directory as an OpenTofu module package: one
//! `archive/zip` layer, `artifactType: application/vnd.opentofu.modulepkg` and the OCI empty
//! config.
//!
//! The zip is deterministic (sorted entries, the 1980-01-01 DOS epoch for every timestamp,
//! fixed permissions) so the same source gives the same digest. `.git` and `.terraform`
//! directories are left out: they are local state, not module source. This module must never
//! load the archive into memory.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use ferry_core::domain::Component;
use ferry_core::ports::BuildSpec;
use ferry_oci::media::{OCI_EMPTY_CONFIG, OPENTOFU_MODULE_ARTIFACT, ZIP_LAYER};
use ferry_oci::{Digest as OciDigest, OciLayout};
use sha2::{Digest as _, Sha256};
use zip::write::SimpleFileOptions;

use crate::error::{io_err, BuildError};
use crate::package;
use crate::{ArtifactBuilder, BuiltArtifact};

/// The OCI empty descriptor's content, `{}`.
pub const EMPTY_CONFIG: &[u8] = b"{}";

pub(crate) async fn build(
    b: &ArtifactBuilder,
    spec: &BuildSpec,
    dir: &str,
    repository: &ferry_core::id::Repository,
) -> Result<BuiltArtifact, BuildError> {
    let component = &spec.component;
    let src = b.resolve_dir(component, "module directory", dir)?;
    let tmp = b.temp_dir("ferry-module-")?;
    let archive = tmp.path().join("module.zip");
    let (digest, size) = {
        let component = component.clone();
        let archive = archive.clone();
        package::blocking(move || package_module(&component, &src, &archive)).await?
    };
    let oci = |source| BuildError::Oci {
        component: component.name.to_string(),
        source,
    };
    let layout_dir = tmp.path().join("layout");
    let layout = OciLayout::create(&layout_dir).await.map_err(oci)?;
    package::add_file_blob(&layout, &archive, &digest, size)
        .await
        .map_err(oci)?;
    let config = package::add_small_blob(&layout, OCI_EMPTY_CONFIG, EMPTY_CONFIG.to_vec())
        .await
        .map_err(oci)?;
    let layer = package::descriptor(ZIP_LAYER, digest, size);
    package::write_manifest(
        &layout,
        Some(OPENTOFU_MODULE_ARTIFACT),
        &config,
        &[layer],
        b.source_annotations(),
    )
    .await
    .map_err(oci)?;
    b.push_layout(
        component,
        layout_dir,
        repository,
        vec![spec.build_id.to_string()],
        tmp,
    )
    .await
}

/// Zips the module in `dir` into `archive`; returns the archive's digest and size.
pub fn package_module(
    component: &Component,
    dir: &Path,
    archive: &Path,
) -> Result<(OciDigest, u64), BuildError> {
    let files = package::collect_files(component, dir, &|rel, is_dir| {
        is_dir && matches!(rel.rsplit('/').next(), Some(".git" | ".terraform"))
    })?;
    if files.is_empty() {
        return Err(BuildError::Unpackable {
            component: component.name.to_string(),
            path: dir.to_path_buf(),
            reason: "the module directory holds no files".into(),
        });
    }
    let io = |step| io_err(step, archive);
    let file = File::create(archive).map_err(io("create archive"))?;
    let mut zip = zip::ZipWriter::new(file);
    for f in &files {
        let mut src = File::open(&f.abs).map_err(io_err("read", &f.abs))?;
        let len = src.metadata().map_err(io_err("stat", &f.abs))?.len();
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(if f.executable { 0o755 } else { 0o644 })
            .large_file(len > u64::from(u32::MAX));
        zip.start_file(f.rel.as_str(), options)
            .map_err(|e| zip_err(archive, e))?;
        std::io::copy(&mut src, &mut zip).map_err(io_err("archive", &f.abs))?;
    }
    let file = zip.finish().map_err(|e| zip_err(archive, e))?;
    file.sync_all().map_err(io("sync archive"))?;
    drop(file);
    hash_file(archive)
}

fn zip_err(archive: &Path, e: zip::result::ZipError) -> BuildError {
    BuildError::Io {
        step: "write zip",
        path: archive.to_path_buf(),
        source: std::io::Error::other(e),
    }
}

/// The zip writer seeks back to patch headers, so the digest is taken after, in one pass.
fn hash_file(path: &Path) -> Result<(OciDigest, u64), BuildError> {
    let mut f = File::open(path).map_err(io_err("read archive", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("read archive", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()))
        .parse::<OciDigest>()
        .map_err(|e| BuildError::Config(format!("digest of {}: {e}", path.display())))?;
    Ok((digest, size))
}
