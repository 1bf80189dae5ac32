//! `ferry registry serve` and `ferry registry gc` as a user runs them: the server on a port the
//! OS picks (read back from the printed URL), skopeo pushing and inspecting, SIGTERM for a
//! graceful stop, and the token flow with the generated vendor secret.
//!
//! Every child is killed on drop; nothing listens beyond 127.0.0.1.

#[path = "../../ferry-oci/tests/support/corpus.rs"]
#[allow(dead_code)]
mod corpus;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

fn ferry() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferry"));
    c.env("DOCKER_CONFIG", "/nonexistent-ferry-test")
        .env_remove("RUST_LOG");
    c
}

/// A running `ferry registry serve`; killed on drop if still running.
struct Served {
    child: Child,
    stdout: BufReader<ChildStdout>,
    host: String,
    banner: String,
}

impl Served {
    fn start(root: &Path, extra: &[&str]) -> Served {
        let mut child = ferry()
            .args(["registry", "serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferry registry serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read the URL line");
        let url = first
            .trim()
            .strip_prefix("ferry registry listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        let host = url
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("not an http URL: {url}"))
            .to_string();
        assert!(
            host.starts_with("127.0.0.1:") && !host.ends_with(":0"),
            "{host}"
        );
        // With --auth the banner has a few more lines, all printed before serving starts.
        let mut banner = first;
        if extra.contains(&"--auth") {
            loop {
                let mut line = String::new();
                if stdout.read_line(&mut line).expect("read") == 0 {
                    break;
                }
                banner.push_str(&line);
                if line.contains("e.g. skopeo") {
                    break;
                }
            }
        }
        Served {
            child,
            stdout,
            host,
            banner,
        }
    }

    /// SIGTERM, then waits: returns (exit code, rest of stdout, stderr).
    fn terminate(mut self) -> (Option<i32>, String, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let code = self.child.wait().expect("wait").code();
        let mut out = String::new();
        let _ = self.stdout.read_to_string(&mut out);
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (code, out, err)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn skopeo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn layout(dir: &Path) -> corpus::BuiltImage {
    let mut b = corpus::LayoutBuilder::new(dir);
    let img = b.add_image(&[21, 22], 64 * 1024, "linux", "amd64");
    b.tag(&img.manifest, Some("v1"));
    b.finish();
    img
}

#[test]
fn serve_push_inspect_stop_then_gc() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("registry");
    let src = work.path().join("src");
    let img = layout(&src);
    let served = Served::start(&root, &["--immutable-tags", "vendor/"]);

    let dst = format!("docker://{}/vendor/app:v1", served.host);
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.display()),
        &dst,
    ]);
    assert!(ok, "skopeo push: {err}");
    let (ok, raw, err) = skopeo(&["inspect", "--raw", "--tls-verify=false", &dst]);
    assert!(ok, "skopeo inspect: {err}");
    assert_eq!(corpus::sha256(raw.as_bytes()), img.manifest.digest);

    // Immutable tags: the same tag cannot be pointed elsewhere.
    let other = work.path().join("other");
    let _ = {
        let mut b = corpus::LayoutBuilder::new(&other);
        let i = b.add_image(&[31], 1024, "linux", "amd64");
        b.tag(&i.manifest, Some("v1"));
        b.finish();
        i
    };
    let (ok, _, _) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", other.display()),
        &dst,
    ]);
    assert!(!ok, "an immutable tag was rewritten");

    let (code, _, stderr) = served.terminate();
    assert_eq!(code, Some(0), "graceful stop: {stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");

    // Offline GC keeps everything the tag references.
    let out = ferry()
        .args(["registry", "gc", "--grace", "0s", "--root"])
        .arg(&root)
        .output()
        .expect("run gc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("gc: "), "{stdout}");
    for blob in img.layers.iter().chain([&img.config]) {
        assert!(
            root.join("blobs/sha256").join(&blob.digest[7..]).exists(),
            "gc removed a referenced blob {}",
            blob.digest
        );
    }
}

#[test]
fn gc_refuses_a_directory_that_is_not_a_registry() {
    let work = tempfile::tempdir().expect("tempdir");
    let out = ferry()
        .args(["registry", "gc", "--root"])
        .arg(work.path())
        .output()
        .expect("run gc");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a registry root"), "{stderr}");
    assert!(
        !work.path().join("blobs").exists(),
        "gc must not create a layout"
    );
}

#[test]
fn auth_writes_secrets_to_0600_files_and_never_prints_them() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("registry");
    let src = work.path().join("src");
    let img = layout(&src);
    let served = Served::start(&root, &["--auth", "--agent", "a"]);

    let vendor_file = root.join("auth/credentials/vendor");
    let secret = std::fs::read_to_string(&vendor_file).expect("vendor secret file");
    assert_eq!(secret.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&vendor_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(root.join("auth/credentials/agent-a").exists());
    assert!(
        served.banner.contains(&vendor_file.display().to_string()),
        "{}",
        served.banner
    );
    assert!(!served.banner.contains(&secret), "a secret was printed");

    let dst = format!("docker://{}/vendor/app:v1", served.host);
    let from = format!("oci:{}:v1", src.display());
    let (ok, _, _) = skopeo(&["copy", "--dest-tls-verify=false", &from, &dst]);
    assert!(!ok, "an anonymous push was accepted");
    let creds = format!("vendor:{secret}");
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &from,
        &dst,
    ]);
    assert!(ok, "vendor push through /token: {err}");
    let (ok, raw, err) = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &dst,
    ]);
    assert!(ok, "{err}");
    assert_eq!(corpus::sha256(raw.as_bytes()), img.manifest.digest);

    let (code, rest, stderr) = served.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!rest.contains(&secret) && !stderr.contains(&secret));

    // A restart loads the same secret instead of minting a new one.
    let again = Served::start(&root, &["--auth"]);
    assert!(!again.banner.contains("(new)"), "{}", again.banner);
    assert_eq!(
        std::fs::read_to_string(&vendor_file).expect("secret"),
        secret
    );
}
