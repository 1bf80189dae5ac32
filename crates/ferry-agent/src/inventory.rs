//! `ferry-agent inventory`: what an air-gapped install already holds, written as the `--have`
//! file `ferry bundle export --have` reads (one `sha256:<hex>` a line, `#` comments), so the
//! next bundle carries only blobs the install lacks.
//!
//! It reads the install registry with the agent's own identity (the same credential an import
//! pushes with): every tag of each named repository, and each tagged manifest's whole graph
//! (every platform, configs, layers, referrers and theirs). The embedded registry lets only
//! its admin list the catalog, so the repositories are named: on the command line, or taken
//! from a previous bundle whose signed manifest names them (verified against the vendor key
//! the agent pins).
//!
//! This module must never write to the registry, never list a digest it did not read from the
//! registry, and never put the identity secret into an error or a log line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferry_core::bundle::{BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE};
use ferry_core::id::{InstallId, Repository};
use ferry_oci::bundle::{resolve_graph, BundleReader};
use ferry_oci::{Digest, RegistryClient, RepoRef};

use crate::access::InstallAccess;
use crate::import::{install_client, verified_manifest, ImportError};

/// The most repositories one inventory reads.
pub const MAX_INVENTORY_REPOSITORIES: usize = 1000;
/// The most tags read in one repository.
pub const MAX_INVENTORY_TAGS: usize = 10_000;

/// Why an inventory stopped; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{0}")]
    Config(String),
    #[error("reading {repository} in the install registry: {message}")]
    Registry { repository: String, message: String },
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
}

impl From<ImportError> for InventoryError {
    fn from(e: ImportError) -> Self {
        InventoryError::Config(e.to_string())
    }
}

/// What to read, and as whom.
pub struct InventoryConfig<'a> {
    /// The install registry host (`host[:port]`).
    pub install_registry: String,
    /// `installs/<id>` by default; every repository read must be below it.
    pub install_namespace: String,
    /// The agent's access to the install registry (read with it, never written).
    pub access: &'a dyn InstallAccess,
    /// Repositories in the install registry (`installs/<id>/…`).
    pub repositories: Vec<String>,
}

/// What the install holds.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The repositories read (those that do not exist yet are left out, see `missing`).
    pub repositories: Vec<String>,
    /// Named repositories the registry does not have (nothing imported there yet).
    pub missing: Vec<String>,
    /// Tagged manifests whose graphs were read.
    pub artifacts: usize,
    /// Every manifest and blob digest held.
    pub digests: BTreeSet<Digest>,
}

/// The install-registry repositories a previous bundle wrote: its signed manifest (verified as
/// an import verifies it, against `vendor_public_key` and for `install`) names each artifact's
/// vendor repository, mapped as a sync maps it (`vendor_prefix` → `install_namespace`).
pub async fn repositories_of_bundle(
    vendor_public_key: &str,
    install: &InstallId,
    vendor_prefix: &str,
    install_namespace: &str,
    bundle: &Path,
) -> Result<Vec<String>, InventoryError> {
    let reader = BundleReader::open(bundle, &[BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE])
        .await
        .map_err(|e| InventoryError::Config(format!("--bundle {}: {e}", bundle.display())))?;
    let manifest = verified_manifest(vendor_public_key, install, &reader).await?;
    let mut out = BTreeSet::new();
    for a in &manifest.artifacts {
        let mapped = a
            .repository
            .in_install(vendor_prefix, install_namespace)
            .map_err(|e| InventoryError::Config(format!("--bundle {}: {e}", bundle.display())))?;
        out.insert(mapped.to_string());
    }
    Ok(out.into_iter().collect())
}

/// Reads every named repository's tags and their graphs.
pub async fn take_inventory(config: &InventoryConfig<'_>) -> Result<Inventory, InventoryError> {
    let namespace = config.install_namespace.trim_end_matches('/');
    let mut names = BTreeSet::new();
    for r in &config.repositories {
        let r = r.trim_matches('/');
        Repository::new(r).map_err(|e| {
            InventoryError::Config(format!(
                "repository {r:?}: {e}; name it as the install registry does ({namespace}/…)"
            ))
        })?;
        if !r.starts_with(&format!("{namespace}/")) {
            return Err(InventoryError::Config(format!(
                "repository {r} is not in the install namespace {namespace}/; name the install \
                 registry's repositories ({namespace}/…)"
            )));
        }
        names.insert(r.to_string());
    }
    if names.is_empty() {
        return Err(InventoryError::Config(
            "no repository to read: name them with --repository (install registry names) or \
             --bundle (a bundle imported before)"
                .into(),
        ));
    }
    if names.len() > MAX_INVENTORY_REPOSITORIES {
        return Err(InventoryError::Config(format!(
            "{} repositories is more than one inventory reads ({MAX_INVENTORY_REPOSITORIES})",
            names.len()
        )));
    }
    let client = install_client(
        &config.install_registry,
        &config.install_namespace,
        config.access,
    )
    .await?;
    let mut inv = Inventory::default();
    for name in names {
        let repo = RepoRef::new(config.install_registry.clone(), name.clone());
        if read_repository(&client, &repo, &mut inv).await? {
            inv.repositories.push(name);
        } else {
            inv.missing.push(name);
        }
    }
    Ok(inv)
}

/// Adds `repo`'s digests; false when the repository does not exist.
async fn read_repository(
    client: &RegistryClient,
    repo: &RepoRef,
    inv: &mut Inventory,
) -> Result<bool, InventoryError> {
    let err = |e: ferry_oci::Error| InventoryError::Registry {
        repository: repo.to_string(),
        message: e.to_string(),
    };
    let tags = match client.list_tags(repo).await {
        Ok(t) => t,
        Err(ferry_oci::Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    if tags.len() > MAX_INVENTORY_TAGS {
        return Err(InventoryError::Registry {
            repository: repo.to_string(),
            message: format!("more than {MAX_INVENTORY_TAGS} tags"),
        });
    }
    let mut roots = BTreeSet::new();
    for tag in &tags {
        let m = client.get_manifest(repo, tag).await.map_err(err)?;
        roots.insert(m.digest);
    }
    for root in roots {
        if inv.digests.contains(&root) {
            continue;
        }
        let graph = resolve_graph(client, repo, &root).await.map_err(err)?;
        inv.artifacts += 1;
        inv.digests
            .extend(graph.manifests.iter().map(|m| m.digest.clone()));
        inv.digests.extend(graph.blobs.keys().cloned());
    }
    Ok(true)
}

/// Writes `inv` as a `--have` file (comments, then one digest a line), through a temporary
/// file and a rename.
pub fn write_have(path: &Path, install: &str, inv: &Inventory) -> Result<(), InventoryError> {
    let mut out = format!(
        "# ferry-agent inventory of install {install}: {} digests in {} repositories\n",
        inv.digests.len(),
        inv.repositories.len()
    );
    for r in &inv.repositories {
        out.push_str(&format!("# repository {r}\n"));
    }
    for d in &inv.digests {
        out.push_str(d.as_str());
        out.push('\n');
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let io = |e: std::io::Error| InventoryError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::write(&tmp, out).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
