//! Runs the built `ferry` binary as a user would: exit codes, error messages, `--json` lines.
//!
//! The corpus is a hand-written OCI layout (shared with ferry-oci's harness), so nothing here
//! assumes what it tests.

#[path = "../../ferry-oci/tests/support/corpus.rs"]
#[allow(dead_code)]
mod corpus;

use std::process::Command;

fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    // Never read the developer's docker credentials.
    c.env("DOCKER_CONFIG", "/nonexistent-ferry-test")
        .env_remove("RUST_LOG");
    c
}

#[test]
fn bad_reference_exits_1_and_names_the_input() {
    let out = ferry()
        .args([
            "copy",
            "127.0.0.1:5000/UPPER/case:v1",
            "oci:/tmp/ferry-never-written:v1",
        ])
        .output()
        .expect("run ferry");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("127.0.0.1:5000/UPPER/case:v1"), "{stderr}");
    assert!(stderr.contains("source"), "{stderr}");
    assert!(!std::path::Path::new("/tmp/ferry-never-written").exists());
}

#[test]
fn bad_credentials_flag_is_not_echoed() {
    let out = ferry()
        .args([
            "copy",
            "--src-creds",
            "nocolon-hunter2",
            "127.0.0.1:1/a:v1",
            "oci:/tmp/x:v1",
        ])
        .output()
        .expect("run ferry");
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("--src-creds"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn layout_to_layout_with_json_lines() {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let mut b = corpus::LayoutBuilder::new(src.path());
    let img = b.add_image(&[11, 12, 13], 32 * 1024, "linux", "amd64");
    b.tag(&img.manifest, Some("v1"));
    b.finish();
    let dst_dir = dst.path().join("out");

    let out = ferry()
        .args([
            "copy",
            "--json",
            &format!("oci:{}:v1", src.path().display()),
            &format!("oci:{}:v1", dst_dir.display()),
        ])
        .output()
        .expect("run ferry");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    let summary = events
        .iter()
        .find(|e| e["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary in {stdout}"));
    assert_eq!(summary["digest"], img.manifest.digest.as_str());
    assert_eq!(summary["blobs_copied"], 4, "3 layers + config: {summary}");
    let expected: u64 = img.layers.iter().map(|l| l.size).sum::<u64>() + img.config.size;
    assert_eq!(summary["bytes_copied"], expected);
    assert!(events.iter().any(|e| e["event"] == "plan"), "{stdout}");
    assert!(
        stderr.contains(&img.manifest.digest),
        "summary line on stderr: {stderr}"
    );

    // The destination holds every byte, under its digest.
    for blob in img.layers.iter().chain([&img.config, &img.manifest]) {
        let p = dst_dir.join("blobs/sha256").join(&blob.digest[7..]);
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(corpus::sha256(&bytes), blob.digest);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst_dir.join("index.json")).expect("index.json"))
            .expect("index json");
    let tagged = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        .unwrap_or_else(|| panic!("v1 not in {index}"));
    assert_eq!(tagged["digest"], img.manifest.digest.as_str());
}
