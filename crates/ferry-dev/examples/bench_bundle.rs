//! Benchmark of `ferry bundle export`'s path (`ferry_dev::bundle::export_bundle`, the function
//! the command calls): one image with one layer of N MiB in an embedded registry (in this
//! process, on loopback), exported to a bundle tar. Prints one JSON line: the export's wall
//! time and its peak RSS (the kernel's high-water mark, reset just before the export through
//! `/proc/self/clear_refs`, so the setup's upload does not count).
//!
//! Run through `scripts/bench-bundle.sh`. It must never hold the layer in memory itself: the
//! layer is generated, hashed and uploaded as a stream.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use bytes::Bytes;
use ferry_core::domain::{Artifact, Build};
use ferry_core::id::{AppName, BuildId, ComponentName, Repository};
use ferry_core::ports::JobStore as _;
use ferry_core::trust::VendorKey;
use ferry_dev::bundle::{export_bundle, ExportRequest, VendorSource};
use ferry_local::store::SqliteStore;
use ferry_oci::digest::DigestHasher;
use ferry_oci::{ByteStream, ClientConfig, Manifest, RegistryClient, RepoRef};
use ferry_registry::server::RegistryServer;

const CHUNK: usize = 1 << 20;

/// Deterministic pseudo-random chunks (xorshift), `mib` of them, as a stream.
fn layer(mib: usize) -> ByteStream {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    Box::pin(futures::stream::iter((0..mib).map(move |_| {
        let mut buf = vec![0u8; CHUNK];
        for w in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            w.copy_from_slice(&state.to_le_bytes()[..w.len()]);
        }
        Ok(Bytes::from(buf))
    })))
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: bench_bundle <layer MiB> [work dir]");
    let work = std::env::args().nth(2).map(std::path::PathBuf::from);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(mib, work));
}

async fn run(mib: usize, work: Option<std::path::PathBuf>) {
    let dir = match work {
        Some(w) => tempfile::tempdir_in(w).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let server = RegistryServer::builder(dir.path().join("registry"))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let _running = server.spawn_on(listener).unwrap();
    let client = RegistryClient::new(ClientConfig::default()).unwrap();
    let repo = RepoRef::new(host.clone(), "vendor/bench");

    // Setup: the layer (hashed in a first streaming pass), a config, a manifest.
    let mut hasher = DigestHasher::new();
    let mut s = layer(mib);
    while let Some(chunk) = futures::StreamExt::next(&mut s).await {
        hasher.update(&chunk.unwrap());
    }
    let layer_digest = hasher.finish();
    let size = (mib * CHUNK) as u64;
    client
        .upload_blob(&repo, &layer_digest, size, layer(mib))
        .await
        .unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = ferry_oci::Digest::of(config);
    client
        .upload_blob(
            &repo,
            &config_digest,
            config.len() as u64,
            Box::pin(futures::stream::iter([Ok(Bytes::from_static(config))])),
        )
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest.as_str(), "size": size}],
    });
    let m = Manifest::from_bytes(
        Bytes::from(serde_json::to_vec(&manifest).unwrap()),
        "application/vnd.oci.image.manifest.v1+json",
    )
    .unwrap();
    client.put_manifest(&repo, "v1", &m).await.unwrap();

    let store = SqliteStore::open_in_memory().unwrap();
    let id = BuildId::new("b-bench").unwrap();
    let build = Build::new(
        id.clone(),
        AppName::new("bench").unwrap(),
        ComponentName::new("layer").unwrap(),
        "main".into(),
        "bench".into(),
        0,
    )
    .start(1, "x".into())
    .unwrap()
    .succeed(
        2,
        Artifact {
            repository: Repository::new("vendor/bench").unwrap(),
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
        },
    )
    .unwrap();
    store.create_build(&build).await.unwrap();
    let key = VendorKey::generate().unwrap();
    let out = dir.path().join("bundle.tar");

    // The measured part.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = vm_hwm_kib();
    let started = Instant::now();
    let summary = export_bundle(
        &store,
        &key,
        &VendorSource {
            client: &client,
            registry: host.clone(),
        },
        &ExportRequest {
            release: None,
            builds: vec![id],
            install: None,
            out: out.clone(),
            since: None,
            have: None,
        },
        3,
    )
    .await
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let peak = vm_hwm_kib();
    println!(
        "{}",
        serde_json::json!({
            "layer_mib": mib,
            "bundle_bytes": summary.bytes,
            "export_s": (secs * 1000.0).round() / 1000.0,
            "rss_before_export_mib": before / 1024,
            "export_peak_rss_mib": peak / 1024,
            "peak_reset": reset,
        })
    );
}
