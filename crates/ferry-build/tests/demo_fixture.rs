//! The demo's checked-in base image is exactly what the generator makes, so its digest is
//! stable. Regenerate with `FERRY_REGENERATE_DEMO=1 cargo test -p ferry-build --test demo_fixture`.

#![allow(clippy::unwrap_used)]

mod common;

#[test]
fn checked_in_base_image_matches_the_generator() {
    check_layout("base-image", common::base_image_files());
}

#[test]
fn checked_in_sidecar_image_matches_the_generator() {
    check_layout("sidecar-image", common::sidecar_image_files());
}

fn check_layout(name: &str, files: Vec<(String, Vec<u8>)>) {
    let dir = common::demo_root().join(name);
    if std::env::var_os("FERRY_REGENERATE_DEMO").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        for (rel, bytes) in &files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
    }
    let mut on_disk = Vec::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
                on_disk.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    on_disk.sort();
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&on_disk),
        names(&files),
        "regenerate: FERRY_REGENERATE_DEMO=1"
    );
    assert_eq!(on_disk, files, "regenerate: FERRY_REGENERATE_DEMO=1");
    let layer_total: usize = files
        .iter()
        .filter(|(n, _)| n.starts_with("blobs/"))
        .map(|(_, b)| b.len())
        .sum();
    assert!(
        layer_total < 4096,
        "the demo image stays tiny: {layer_total} bytes"
    );
}

#[test]
fn demo_app_file_lists_one_component_of_each_kind() {
    let app = common::demo();
    let mut kinds: Vec<&str> = app.components.iter().map(|c| c.kind.name()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "docker-build",
            "helm-chart",
            "helm-chart",
            "image",
            "opentofu-module"
        ]
    );
    assert_eq!(app.app.as_str(), "demo");
}
