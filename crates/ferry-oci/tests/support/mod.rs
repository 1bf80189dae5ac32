//! The real-peer test harness of ferry-oci: docker-registry instances, a token issuer for
//! their token auth, a fault-injecting proxy, skopeo wrappers and a hand-built corpus.
//!
//! Nothing here uses ferry-oci, so the tests never assume what they test. It must never
//! reach beyond loopback and never leave a process behind (everything stops in Drop).

#![allow(dead_code, unused_imports)]

pub mod corpus;
pub mod ferry;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod skopeo;
pub mod token;

pub use corpus::{BuiltImage, BuiltIndex, LayoutBuilder};
pub use proxy::{Fault, FaultProxy};
pub use registry::{DockerRegistry, LoggedRequest};
pub use token::{TokenIssuer, User};

use std::path::Path;

/// Builds a layout at `dir` with a 5-layer image tagged `tag` (layers from `seed`).
pub fn multi_layer_layout(dir: &Path, tag: &str, seed: u64, layer_size: usize) -> BuiltImage {
    let mut b = LayoutBuilder::new(dir);
    let seeds: Vec<u64> = (0..5).map(|i| seed * 100 + i).collect();
    let img = b.add_image(&seeds, layer_size, "linux", "amd64");
    b.tag(&img.manifest, Some(tag));
    b.finish();
    img
}

/// Pushes a 5-layer image to `<registry>/<repo>:<tag>` through skopeo.
pub fn push_multi_layer(registry: &str, repo: &str, tag: &str, seed: u64) -> BuiltImage {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = multi_layer_layout(dir.path(), tag, seed, 300 * 1024);
    skopeo::push_layout(dir.path(), tag, &format!("{registry}/{repo}:{tag}"));
    img
}

/// Pushes an image whose layers are made from exactly `layer_seeds`.
pub fn push_image_with_layers(
    registry: &str,
    repo: &str,
    tag: &str,
    layer_seeds: &[u64],
) -> BuiltImage {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = LayoutBuilder::new(dir.path());
    let img = b.add_image(layer_seeds, 200 * 1024, "linux", "amd64");
    b.tag(&img.manifest, Some(tag));
    b.finish();
    skopeo::push_layout(dir.path(), tag, &format!("{registry}/{repo}:{tag}"));
    img
}

/// Pushes a linux/amd64 + linux/arm64 index.
pub fn push_multi_platform(registry: &str, repo: &str, tag: &str, seed: u64) -> BuiltIndex {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = LayoutBuilder::new(dir.path());
    let idx = b.add_index(seed, &[("linux", "amd64"), ("linux", "arm64")], 100 * 1024);
    b.tag(&idx.index, Some(tag));
    b.finish();
    skopeo::push_layout(dir.path(), tag, &format!("{registry}/{repo}:{tag}"));
    idx
}

/// An image tagged `tag` plus one referrer (an SBOM artifact with `subject`), and the
/// tag-schema index `sha256-<hex>` listing it, as OCI clients push to a registry without
/// the referrers API.
pub struct WithReferrer {
    pub image: BuiltImage,
    pub referrer: corpus::Blob,
    pub referrer_bytes: Vec<u8>,
    pub referrers_index: corpus::Blob,
    pub referrers_index_bytes: Vec<u8>,
}

pub fn push_with_referrer(registry: &str, repo: &str, tag: &str, seed: u64) -> WithReferrer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = LayoutBuilder::new(dir.path());
    let image = b.add_image(&[seed * 100, seed * 100 + 1], 64 * 1024, "linux", "amd64");
    b.tag(&image.manifest, Some(tag));
    b.finish();
    skopeo::push_layout(dir.path(), tag, &format!("{registry}/{repo}:{tag}"));
    // skopeo 1.9 cannot push artifacts or this index with digests preserved, so the
    // referrer goes up with plain curl, as an OCI client without the referrers API does.
    let (referrer, referrer_bytes) = b.add_referrer(&image.manifest, seed);
    let (referrers_index, referrers_index_bytes) =
        b.add_referrers_index(std::slice::from_ref(&referrer));
    let blobs = dir.path().join("blobs/sha256");
    let referrer_json: serde_json::Value =
        serde_json::from_slice(&referrer_bytes).expect("referrer json");
    for d in [&referrer_json["config"], &referrer_json["layers"][0]] {
        let digest = d["digest"].as_str().expect("digest");
        let bytes = std::fs::read(blobs.join(&digest[7..])).expect("blob");
        registry::curl_put_blob(registry, repo, digest, &bytes);
    }
    registry::curl_put_manifest(
        registry,
        repo,
        &referrer.digest,
        corpus::OCI_MANIFEST,
        &referrer_bytes,
    );
    let fallback_tag = corpus::referrers_tag(&image.manifest.digest);
    registry::curl_put_manifest(
        registry,
        repo,
        &fallback_tag,
        corpus::OCI_INDEX,
        &referrers_index_bytes,
    );
    WithReferrer {
        image,
        referrer,
        referrer_bytes,
        referrers_index,
        referrers_index_bytes,
    }
}
