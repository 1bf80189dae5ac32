//! Test corpus: OCI image layouts written by hand, byte by byte, without Ferry.
//!
//! Tests must not assume what they test, so nothing here calls ferry-oci: digests are computed
//! with sha2 directly and layers are real (stored, uncompressed-deflate) gzip streams, so that
//! skopeo pushes them as they are. It must never depend on wall-clock time or an unseeded RNG:
//! the same seed always gives the same digests.

use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const SBOM_ARTIFACT: &str = "application/vnd.example.sbom.v1";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One blob or manifest written to a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

impl Blob {
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An image manifest and what it references.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Blob,
    pub manifest_bytes: Vec<u8>,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub index: Blob,
    pub index_bytes: Vec<u8>,
    pub children: Vec<BuiltImage>,
}

/// Random bytes from a seed: the same seed gives the same layer everywhere.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// A valid gzip member holding `data` in stored deflate blocks: real gzip (skopeo sniffs
/// the format and would recompress anything else), without a compression library.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// Writes an OCI image layout by hand: `oci-layout`, `blobs/sha256/*` and, on
/// [`LayoutBuilder::finish`], `index.json`.
pub struct LayoutBuilder {
    dir: PathBuf,
    entries: Vec<Value>,
}

impl LayoutBuilder {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout dirs");
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("write oci-layout");
        LayoutBuilder {
            dir: dir.to_path_buf(),
            entries: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn add_blob(&mut self, bytes: &[u8], media_type: &str) -> Blob {
        let digest = sha256(bytes);
        let path = self.dir.join("blobs/sha256").join(&digest[7..]);
        std::fs::write(path, bytes).expect("write blob");
        Blob {
            digest,
            size: bytes.len() as u64,
            media_type: media_type.to_string(),
        }
    }

    /// A gzip layer of `size` seeded random bytes. Returns the blob and its diff id.
    pub fn add_layer(&mut self, seed: u64, size: usize) -> (Blob, String) {
        let raw = seeded_bytes(seed, size);
        let gz = gzip_stored(&raw);
        (self.add_blob(&gz, OCI_LAYER_GZIP), sha256(&raw))
    }

    /// An image whose layer `i` is made from `layer_seeds[i]`.
    pub fn add_image(
        &mut self,
        layer_seeds: &[u64],
        layer_size: usize,
        os: &str,
        arch: &str,
    ) -> BuiltImage {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for &seed in layer_seeds {
            let (blob, diff_id) = self.add_layer(seed, layer_size);
            layers.push(blob);
            diff_ids.push(diff_id);
        }
        let config = json!({
            "architecture": arch,
            "os": os,
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.add_blob(
            &serde_json::to_vec(&config).expect("config json"),
            OCI_CONFIG,
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest json");
        let manifest = self.add_blob(&manifest_bytes, OCI_MANIFEST);
        BuiltImage {
            manifest,
            manifest_bytes,
            config,
            layers,
        }
    }

    /// An index over `platforms` (`(os, arch)`), each child with its own layers.
    pub fn add_index(
        &mut self,
        seed: u64,
        platforms: &[(&str, &str)],
        layer_size: usize,
    ) -> BuiltIndex {
        let mut children = Vec::new();
        let mut descs = Vec::new();
        for (i, (os, arch)) in platforms.iter().enumerate() {
            let base = seed * 1000 + (i as u64) * 10;
            let child = self.add_image(&[base, base + 1], layer_size, os, arch);
            let mut d = child.manifest.descriptor();
            d["platform"] = json!({"os": os, "architecture": arch});
            descs.push(d);
            children.push(child);
        }
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs});
        let index_bytes = serde_json::to_vec(&index).expect("index json");
        let index = self.add_blob(&index_bytes, OCI_INDEX);
        BuiltIndex {
            index,
            index_bytes,
            children,
        }
    }

    /// An SBOM-like artifact manifest whose `subject` is `subject`.
    pub fn add_referrer(&mut self, subject: &Blob, seed: u64) -> (Blob, Vec<u8>) {
        let empty = self.add_blob(b"{}", OCI_EMPTY);
        let body = format!("{{\"sbom\":\"seed {seed}\"}}");
        let layer = self.add_blob(body.as_bytes(), "application/vnd.example.sbom.v1+json");
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": SBOM_ARTIFACT,
            "config": empty.descriptor(),
            "layers": [layer.descriptor()],
            "subject": subject.descriptor(),
            "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
        });
        let bytes = serde_json::to_vec(&manifest).expect("artifact json");
        (self.add_blob(&bytes, OCI_MANIFEST), bytes)
    }

    /// The tag-schema fallback index (`sha256-<hex>`) listing `referrers` of a subject.
    pub fn add_referrers_index(&mut self, referrers: &[Blob]) -> (Blob, Vec<u8>) {
        let manifests: Vec<Value> = referrers
            .iter()
            .map(|r| {
                let mut d = r.descriptor();
                d["artifactType"] = json!(SBOM_ARTIFACT);
                d
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        let bytes = serde_json::to_vec(&index).expect("index json");
        (self.add_blob(&bytes, OCI_INDEX), bytes)
    }

    /// Lists `blob` in `index.json`, under `tag` if given.
    pub fn tag(&mut self, blob: &Blob, tag: Option<&str>) {
        let mut d = blob.descriptor();
        if let Some(t) = tag {
            d["annotations"] = json!({"org.opencontainers.image.ref.name": t});
        }
        self.entries.push(d);
    }

    pub fn finish(&self) {
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).expect("index.json"),
        )
        .expect("write index.json");
    }
}

/// The tag-schema fallback tag of a digest: `sha256-<hex>`.
pub fn referrers_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}
