//! Registry → OCI layout → registry: digests unchanged, and skopeo reads the layout Ferry
//! wrote (inspect and copy).

mod support;

use support::ferry::copy;
use support::skopeo::{inspect_raw, inspect_raw_layout, skopeo};
use support::*;

#[tokio::test]
async fn index_round_trips_through_a_layout() {
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start();
    let idx = push_multi_platform(src.addr(), "lay/app", "v1", 80);
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = format!("oci:{}:v1", dir.path().join("l").display());

    let report = copy(
        &format!("{}/lay/app:v1", src.addr()),
        std::slice::from_ref(&layout),
    )
    .await
    .expect("registry -> layout");
    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(idx.index.digest.clone())
    );
    assert_eq!(inspect_raw_layout(&layout), idx.index_bytes);

    // skopeo can read all of it.
    let copy_dir = dir.path().join("skopeo-copy");
    skopeo(&[
        "copy",
        "--all",
        &layout,
        &format!("oci:{}:v1", copy_dir.display()),
    ]);
    assert_eq!(
        inspect_raw_layout(&format!("oci:{}:v1", copy_dir.display())),
        idx.index_bytes
    );

    let report = copy(&layout, &[format!("{}/back/app:v1", dst.addr())])
        .await
        .expect("layout -> registry");
    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(idx.index.digest.clone())
    );
    assert_eq!(
        inspect_raw(&format!("{}/back/app:v1", dst.addr())),
        idx.index_bytes
    );
    for child in &idx.children {
        assert_eq!(
            inspect_raw(&format!(
                "{}/back/app@{}",
                dst.addr(),
                child.manifest.digest
            )),
            child.manifest_bytes
        );
    }
}

#[tokio::test]
async fn image_round_trips_and_layout_blobs_are_verified_files() {
    let src = DockerRegistry::start();
    let img = push_multi_layer(src.addr(), "lay/img", "v1", 81);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("l");
    copy(
        &format!("{}/lay/img:v1", src.addr()),
        &[format!("oci:{}:v1", root.display())],
    )
    .await
    .expect("registry -> layout");
    for b in img.layers.iter().chain([&img.config, &img.manifest]) {
        let bytes =
            std::fs::read(root.join("blobs/sha256").join(&b.digest[7..])).expect("blob file");
        assert_eq!(support::corpus::sha256(&bytes), b.digest);
    }
    // No temporary files left beside the blobs.
    let names: Vec<String> = std::fs::read_dir(root.join("blobs/sha256"))
        .expect("blobs dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
}
