//! Air-gapped installs end to end: the dev system builds the demo app (all four kinds, a
//! multi-platform image), the vendor exports bundles, an install agent imports them into a
//! fresh registry of its own that has no route to the vendor registry, the bytes are compared
//! with skopeo on both sides, and the receipts update the vendor's lineage. Damaged bundles
//! (truncated, a blob or manifest altered, the signed manifest altered, signed by another key)
//! are refused with nothing tagged.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_agent::import::{import_bundle, write_receipts, ImportConfig, ImportError};
use ferry_agent::inventory::{repositories_of_bundle, take_inventory, write_have, InventoryConfig};
use ferry_agent::StaticIdentity;
use ferry_core::bundle::{
    sign_bundle, sign_receipt, BundleManifest, ReceiptOutcome, BUNDLE_MANIFEST_FILE,
    BUNDLE_SIGNATURE_FILE,
};
use ferry_core::id::{BuildId, Digest, InstallId, Repository};
use ferry_core::manage::{lineage_via, InstallRegistration, Management};
use ferry_core::seal::AgentKeypair;
use ferry_core::trust::VendorKey;
use ferry_dev::bundle::{
    export_bundle, import_receipts, read_receipts, ExportRequest, VendorSource,
};
use ferry_dev::manage::LocalManagement;
use ferry_dev::{state, DevOptions, DevSystem};
use ferry_oci::bundle::{blob_path, BundleReader};
use ferry_oci::{ClientConfig, Credential, CredentialStore, RegistryClient, RepoRef, Secret};
use ferry_registry::access::endpoint::token_router;
use ferry_registry::access::identity::Identity;
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};
use ferry_registry::server::{RegistryServer, RunningRegistry};

const AIR: &str = "air";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
const AIR_SECRET: &str = "air-agent-secret-0123456789abcdef";

fn client(registry: &str, prefix: &str, user: &str, secret: &str) -> RegistryClient {
    let mut credentials = CredentialStore::new();
    credentials.insert(
        registry,
        Some(prefix),
        Credential::Basic {
            username: user.into(),
            password: Secret::new(secret),
        },
    );
    RegistryClient::new(ClientConfig {
        credentials,
        ..ClientConfig::default()
    })
    .unwrap()
}

/// The install's own registry: only `agent:air` exists on it; it knows nothing of the vendor.
async fn install_registry(root: &Path) -> (RunningRegistry, String) {
    let mut policy = AccessPolicy::new();
    policy.add_identity(Identity::Agent(AIR.into()), AIR_SECRET);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = AuthConfig::new("ferry-air", root.join("auth"));
    cfg.realm = format!("http://{addr}/token");
    let ac = Arc::new(AccessControl::open(cfg, policy).unwrap());
    let server = RegistryServer::builder(root)
        .authorizer(ac.clone())
        .extra_routes(token_router(ac.clone()))
        .immutable_tags("installs/")
        .build()
        .unwrap();
    (server.spawn_on(listener).unwrap(), addr.to_string())
}

fn skopeo_raw(reference: &str, creds: &str) -> Vec<u8> {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--creds", creds])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo runs");
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

struct Air {
    host: String,
    keypair: AgentKeypair,
    access: StaticIdentity,
    vendor_public_key: String,
    work: PathBuf,
}

impl Air {
    fn config(&self) -> ImportConfig<'_> {
        ImportConfig {
            install_id: InstallId::new(AIR).unwrap(),
            vendor_public_key: self.vendor_public_key.clone(),
            install_registry: self.host.clone(),
            install_namespace: format!("installs/{AIR}"),
            vendor_prefix: "vendor".into(),
            access: &self.access,
            keypair: &self.keypair,
            keep_last: Some(20),
            work_dir: self.work.clone(),
            now_ms,
        }
    }

    /// Tags in every repository the bundle would write: none may exist after a refusal.
    async fn tags(&self, repos: &[String]) -> usize {
        let c = client(
            &self.host,
            "installs/air",
            &format!("agent:{AIR}"),
            AIR_SECRET,
        );
        let mut n = 0;
        for r in repos {
            n += c
                .list_tags(&RepoRef::new(self.host.clone(), r.clone()))
                .await
                .unwrap_or_default()
                .len();
        }
        n
    }
}

fn manifest_of(path: &Path) -> BundleManifest {
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        rt.block_on(async {
            let r = BundleReader::open(path, &[BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE])
                .await
                .unwrap();
            BundleManifest::parse(&r.read_file(BUNDLE_MANIFEST_FILE, 1 << 24).await.unwrap())
                .unwrap()
        })
    })
}

/// A copy of `src` with `edit` applied to its bytes.
fn damaged(src: &Path, dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut raw = std::fs::read(src).unwrap();
    edit(&mut raw);
    let out = dir.join(name);
    std::fs::write(&out, raw).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bundles_carry_the_demo_app_into_an_air_gapped_install_and_receipts_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo");
    let system = DevSystem::start(DevOptions {
        state_dir: dir.path().join("state"),
        app_dir: demo,
        installs: 1,
        registry_addr: "127.0.0.1:0".parse().unwrap(),
        manual_releases: false,
    })
    .await
    .unwrap();
    let requested = system.request_builds("test").await.unwrap();
    let snap = system
        .wait_until_done(&requested, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(snap.failures().is_empty(), "{:#?}", snap.failures());
    let base = snap
        .builds
        .iter()
        .find(|b| b.component.as_str() == "base")
        .unwrap()
        .clone();
    // The chart bundle runs the base image (its layers again, in the chart's repository).
    let shop = snap
        .builds
        .iter()
        .find(|b| b.component.as_str() == "shop")
        .unwrap()
        .clone();
    let all: Vec<BuildId> = snap.builds.iter().map(|b| b.id.clone()).collect();
    // The demo app: image (twice: a plain one and a signed one), docker-build, helm-chart
    // (twice: a plain chart and one with its images), opentofu-module.
    assert_eq!(all.len(), 6, "all four kinds");

    // The vendor registers the air-gapped install (its agent's public keys only).
    let m = LocalManagement::open(system.state()).unwrap();
    let keypair = AgentKeypair::generate().unwrap();
    m.register_install(&InstallRegistration {
        id: InstallId::new(AIR).unwrap(),
        app: system.app().0.clone(),
        components: vec![],
        agent_public_key: keypair.public_key_string(),
        agent_report_key: keypair.report_key().public_key_string(),
        agent_role_arn: None,
        registry: None,
    })
    .await
    .unwrap();
    let vendor_key = state::load_or_create_vendor_key(&system.state().vendor_key_path()).unwrap();
    let vendor_secret = state::read_secret(&system.state().vendor_secret_path()).unwrap();
    let vendor_host = system.registry_host().to_string();
    let vendor = client(&vendor_host, "vendor", "vendor", &vendor_secret);
    let source = VendorSource {
        client: &vendor,
        registry: vendor_host.clone(),
    };
    let export = |builds: Vec<BuildId>, out: &str, since: Option<PathBuf>| ExportRequest {
        release: None,
        builds,
        install: Some(InstallId::new(AIR).unwrap()),
        out: dir.path().join(out),
        since,
        have: None,
    };

    // 1. A bundle of the multi-platform base image and the chart that runs it.
    let first = export_bundle(
        m.store(),
        &vendor_key,
        &source,
        &export(vec![base.id.clone(), shop.id.clone()], "first.tar", None),
        now_ms(),
    )
    .await
    .unwrap();
    assert!(first.manifests >= 3, "index and its platforms: {first:?}");
    let first_manifest = manifest_of(&first.out);

    let (_running, air_host) = install_registry(&dir.path().join("air-registry")).await;
    let air = Air {
        host: air_host.clone(),
        access: StaticIdentity {
            username: format!("agent:{AIR}"),
            password: Secret::new(AIR_SECRET),
        },
        keypair: AgentKeypair::from_secret_string(&keypair.to_secret_string()).unwrap(),
        vendor_public_key: vendor_key.public_key_string(),
        work: dir.path().join("work"),
    };
    let repos: Vec<String> = snap
        .builds
        .iter()
        .map(|b| {
            b.artifact
                .as_ref()
                .unwrap()
                .repository
                .in_install("vendor", "installs/air")
                .unwrap()
                .to_string()
        })
        .collect();

    // 2. Damaged bundles are refused, with nothing tagged.
    let reader = BundleReader::open(&first.out, &[BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE])
        .await
        .unwrap();
    // The largest layer or config (not a manifest) of the base image.
    let base_art = base.artifact.as_ref().unwrap();
    let graph = ferry_oci::bundle::resolve_graph(
        &vendor,
        &RepoRef::new(vendor_host.clone(), base_art.repository.as_str()),
        &base_art.digest,
    )
    .await
    .unwrap();
    let (largest, largest_size) = graph.blobs.iter().max_by_key(|(_, s)| **s).unwrap();
    assert!(first_manifest.blobs.iter().any(|b| &b.digest == largest));
    let a_manifest = first_manifest.artifacts[0].digest.clone();
    let at = |d: &Digest| reader.entry(&blob_path(d)).unwrap().offset as usize;
    let (blob_at, manifest_at) = (at(largest), at(&a_manifest));
    let signed_at = reader.entry(BUNDLE_MANIFEST_FILE).unwrap().offset as usize;
    let sig = reader.entry(BUNDLE_SIGNATURE_FILE).unwrap();
    let manifest_bytes = reader
        .read_file(BUNDLE_MANIFEST_FILE, 1 << 24)
        .await
        .unwrap();
    let other = VendorKey::generate().unwrap();
    let forged = sign_bundle(&other, &manifest_bytes);
    assert_eq!(forged.len() as u64, sig.size);
    let cases = [
        damaged(&first.out, dir.path(), "truncated.tar", |b| {
            b.truncate(b.len() / 2)
        }),
        damaged(&first.out, dir.path(), "blob.tar", |b| {
            b[blob_at + (*largest_size / 2) as usize] ^= 1
        }),
        damaged(&first.out, dir.path(), "manifest.tar", |b| {
            b[manifest_at + 2] ^= 1
        }),
        damaged(&first.out, dir.path(), "signed.tar", |b| {
            b[signed_at + 20] ^= 1
        }),
        damaged(&first.out, dir.path(), "wrong-key.tar", |b| {
            let s = sig.offset as usize;
            b[s..s + forged.len()].copy_from_slice(forged.as_bytes());
        }),
    ];
    for case in &cases {
        let err = import_bundle(&air.config(), case).await.unwrap_err();
        assert!(
            matches!(err, ImportError::Refused(_)),
            "{}: {err}",
            case.display()
        );
        eprintln!("{}: {err}", case.file_name().unwrap().to_string_lossy());
        assert_eq!(
            air.tags(&repos).await,
            0,
            "{}: nothing tagged",
            case.display()
        );
    }
    // A bundle for another install is refused too.
    let mut elsewhere = air.config();
    elsewhere.install_id = InstallId::new("dev-1").unwrap();
    let err = import_bundle(&elsewhere, &first.out).await.unwrap_err();
    assert!(
        err.to_string().contains("exported for install air"),
        "{err}"
    );

    // 3. The real one imports.
    let one = import_bundle(&air.config(), &first.out).await.unwrap();
    assert_eq!(one.artifacts.len(), 2);

    // 3b. The install's inventory (read with agent:air) as a --have file: an export of every
    // build with it carries no blob the install holds (manifests always travel), and imports.
    let inventory = take_inventory(&InventoryConfig {
        install_registry: air_host.clone(),
        install_namespace: format!("installs/{AIR}"),
        access: &air.access,
        repositories: repositories_of_bundle(
            &air.vendor_public_key,
            &InstallId::new(AIR).unwrap(),
            "vendor",
            &format!("installs/{AIR}"),
            &first.out,
        )
        .await
        .unwrap(),
    })
    .await
    .unwrap();
    assert_eq!(inventory.repositories.len(), 2, "{inventory:?}");
    assert!(inventory.missing.is_empty());
    for b in &first_manifest.blobs {
        assert!(
            inventory.digests.contains(&b.digest),
            "{} was imported but is not in the inventory",
            b.digest
        );
    }
    let have_file = dir.path().join("have.txt");
    write_have(&have_file, AIR, &inventory).unwrap();
    let mut with_have = export(all.clone(), "have.tar", None);
    with_have.have = Some(have_file.clone());
    let have_bundle = export_bundle(m.store(), &vendor_key, &source, &with_have, now_ms())
        .await
        .unwrap();
    let have_manifest = manifest_of(&have_bundle.out);
    let have_reader = BundleReader::open(
        &have_bundle.out,
        &[BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE],
    )
    .await
    .unwrap();
    let mut carried_held = 0;
    for b in &have_manifest.blobs {
        let d = &b.digest;
        if inventory.digests.contains(d) {
            let bytes = have_reader.read_file(&blob_path(d), 4 << 20).await.unwrap();
            assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .is_ok_and(|v| v.get("schemaVersion").is_some()),
                "{d} is held by the install but was carried, and is not a manifest"
            );
            carried_held += 1;
        }
    }
    assert!(carried_held > 0, "the held manifests travel again");
    assert!(have_bundle.blobs_left_out > 0, "{have_bundle:?}");
    let have_import = import_bundle(&air.config(), &have_bundle.out)
        .await
        .unwrap();
    assert_eq!(have_import.artifacts.len(), all.len());

    // 4. An incremental bundle of all four builds holds no blob the first carried for the same repository.
    let second = export_bundle(
        m.store(),
        &vendor_key,
        &source,
        &export(all.clone(), "second.tar", Some(first.out.clone())),
        now_ms(),
    )
    .await
    .unwrap();
    let second_manifest = manifest_of(&second.out);
    let first_blobs: BTreeSet<&Digest> = first_manifest.blobs.iter().map(|b| &b.digest).collect();
    let manifests: BTreeSet<Digest> = second_manifest
        .artifacts
        .iter()
        .flat_map(|a| a.requires.iter())
        .filter(|b| first_blobs.contains(&b.digest))
        .map(|b| b.digest.clone())
        .collect();
    // What the first bundle put where: a blob is held per (repository, digest), so a layer the
    // first bundle carried for one repository travels again for another (the demo's chart
    // bundle runs the base image, in the chart's repository).
    let first_pairs: BTreeSet<(&Repository, &Digest)> = first_manifest
        .artifacts
        .iter()
        .flat_map(|a| a.requires.iter().map(move |r| (&a.repository, &r.digest)))
        .collect();
    let needed_elsewhere = |d: &Digest| {
        second_manifest.artifacts.iter().any(|a| {
            a.requires.iter().any(|r| &r.digest == d) && !first_pairs.contains(&(&a.repository, d))
        })
    };
    for b in &second_manifest.blobs {
        if first_blobs.contains(&b.digest) && !needed_elsewhere(&b.digest) {
            // Only manifests travel again.
            let r = BundleReader::open(&second.out, &[BUNDLE_MANIFEST_FILE, BUNDLE_SIGNATURE_FILE])
                .await
                .unwrap();
            let bytes = r.read_file(&blob_path(&b.digest), 4 << 20).await.unwrap();
            assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .is_ok_and(|v| v.get("schemaVersion").is_some()),
                "{} was carried again but is not a manifest",
                b.digest
            );
        }
    }
    assert!(second.blobs_left_out > 0, "{second:?}");
    assert!(!manifests.is_empty());
    assert_eq!(
        second_manifest.since.as_deref(),
        Some(first.bundle_id.as_str())
    );
    let two = import_bundle(&air.config(), &second.out).await.unwrap();
    assert_eq!(two.artifacts.len(), all.len());

    // 5. Byte-identical by digest, read with skopeo on both sides (every platform too).
    let vendor_creds = format!("vendor:{}", vendor_secret.as_str());
    let air_creds = format!("agent:{AIR}:{AIR_SECRET}");
    let mut compared = 0;
    for (b, repo) in snap.builds.iter().zip(&repos) {
        let a = b.artifact.as_ref().unwrap();
        let mut queue = vec![a.digest.clone()];
        while let Some(d) = queue.pop() {
            let theirs = skopeo_raw(
                &format!("{vendor_host}/{}@{d}", a.repository),
                &vendor_creds,
            );
            let ours = skopeo_raw(&format!("{air_host}/{repo}@{d}"), &air_creds);
            assert_eq!(theirs, ours, "{repo}@{d}");
            assert_eq!(Digest::of(&ours), d);
            compared += 1;
            let doc: serde_json::Value = serde_json::from_slice(&ours).unwrap();
            if let Some(children) = doc.get("manifests").and_then(|m| m.as_array()) {
                for c in children {
                    queue.push(Digest::new(c["digest"].as_str().unwrap()).unwrap());
                }
            }
        }
        // Tagged as a sync tags it.
        let tag = a.digest.as_str().replacen(':', "-", 1);
        let tagged = skopeo_raw(&format!("{air_host}/{repo}:{tag}"), &air_creds);
        assert_eq!(Digest::of(&tagged), a.digest);
    }
    assert!(
        compared >= 6,
        "four artifacts and the platforms: {compared}"
    );
    // Referrers the vendor has travelled too.
    let air_client = client(
        &air_host,
        "installs/air",
        &format!("agent:{AIR}"),
        AIR_SECRET,
    );
    for art in &second_manifest.artifacts {
        let dst = art.repository.in_install("vendor", "installs/air").unwrap();
        for r in &art.referrers {
            let found = air_client
                .referrers(&RepoRef::new(air_host.clone(), dst.to_string()), &r.subject)
                .await
                .unwrap();
            assert!(
                found.iter().any(|d| d.digest == r.digest),
                "referrer {}",
                r.digest
            );
        }
    }

    // 6. Receipts: the vendor records them; lineage shows the air-gapped install.
    let receipts_file = dir.path().join("receipts.jsonl");
    let mut receipts = one.receipts.clone();
    receipts.extend(two.receipts.clone());
    write_receipts(&receipts_file, &receipts).unwrap();
    let read = read_receipts(&receipts_file).unwrap();
    assert_eq!(read, receipts);
    let desk = m.release_desk().unwrap();
    let outcomes = import_receipts(&desk, &vendor_key, &read).await.unwrap();
    let recorded = outcomes
        .iter()
        .filter(|o| matches!(o, ReceiptOutcome::Recorded { .. }))
        .count();
    assert_eq!(recorded, all.len(), "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| !matches!(o, ReceiptOutcome::Refused { .. })));
    for b in &snap.builds {
        let digest = &b.artifact.as_ref().unwrap().digest;
        let lineage = lineage_via(m.store(), digest).await.unwrap();
        let held = lineage.iter().find(|l| l.install_id.as_str() == AIR);
        assert!(held.is_some_and(|l| l.build_id == b.id), "{lineage:?}");
    }
    let status = m
        .install_status(&InstallId::new(AIR).unwrap())
        .await
        .unwrap();
    assert_eq!(
        status.holds.len(),
        all.len(),
        "current versions: {status:?}"
    );
    // Replays are no-ops.
    let again = import_receipts(&desk, &vendor_key, &read).await.unwrap();
    assert!(again
        .iter()
        .all(|o| matches!(o, ReceiptOutcome::Replayed { .. })));
    // A receipt for air signed by another key, or naming another install, is refused.
    let stranger = AgentKeypair::generate().unwrap().report_key();
    let mut forged = read[0].clone();
    sign_receipt(&stranger, &mut forged);
    let mut other_install = read[0].clone();
    other_install.install_id = InstallId::new("dev-1").unwrap();
    sign_receipt(&keypair.report_key(), &mut other_install);
    let refused = import_receipts(&desk, &vendor_key, &[forged, other_install])
        .await
        .unwrap();
    assert!(
        refused
            .iter()
            .all(|o| matches!(o, ReceiptOutcome::Refused { .. })),
        "{refused:?}"
    );
    let lineage = lineage_via(m.store(), &base.artifact.as_ref().unwrap().digest)
        .await
        .unwrap();
    assert_eq!(
        lineage
            .iter()
            .filter(|l| l.install_id.as_str() == "dev-1")
            .count(),
        1,
        "dev-1's lineage is its own online sync, untouched"
    );

    system.shutdown().await;
}
