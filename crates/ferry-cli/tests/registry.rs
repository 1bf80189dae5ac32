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
        let mut cmd = ferry();
        cmd.stderr(Stdio::piped());
        Self::start_cmd(cmd, root, extra)
    }

    /// `ferry registry serve` under `ulimit -n <nofile>` (set by bash, then exec'd: the pid is
    /// the server's). Its stderr is discarded, so a chatty server never blocks on a full pipe.
    fn start_with_nofile(root: &Path, extra: &[&str], nofile: u32) -> Served {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_ferry"))
            .env("DOCKER_CONFIG", "/nonexistent-ferry-test")
            .env_remove("RUST_LOG")
            .stderr(Stdio::null());
        Self::start_cmd(cmd, root, extra)
    }

    fn start_cmd(mut cmd: Command, root: &Path, extra: &[&str]) -> Served {
        let mut child = cmd
            .args(["registry", "serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(root)
            .args(extra)
            .stdout(Stdio::piped())
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

    // The install's nodes (a real client, skopeo, standing in for a node runtime): pull what
    // the agent wrote with `node:a`, and never push.
    let node_file = root.join("auth/credentials/node-a");
    let node_secret = std::fs::read_to_string(&node_file).expect("node secret file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&node_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let agent_secret =
        std::fs::read_to_string(root.join("auth/credentials/agent-a")).expect("agent secret");
    let install = format!("docker://{}/installs/a/app:v1", served.host);
    let agent_creds = format!("agent:a:{agent_secret}");
    let (ok, _, err) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &agent_creds,
        &from,
        &install,
    ]);
    assert!(ok, "the agent writes its install: {err}");
    let node_creds = format!("node:a:{node_secret}");
    let (ok, raw, err) = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &node_creds,
        &install,
    ]);
    assert!(ok, "the node pulls its install: {err}");
    assert_eq!(corpus::sha256(raw.as_bytes()), img.manifest.digest);
    let (ok, _, _) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &node_creds,
        &from,
        &format!("docker://{}/installs/a/other:v1", served.host),
    ]);
    assert!(!ok, "a node identity pushed");
    let (ok, _, _) = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &node_creds,
        &dst,
    ]);
    assert!(!ok, "a node identity read the vendor namespace");
    assert!(
        !served.banner.contains(&node_secret),
        "a node secret was printed"
    );

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

#[test]
fn gc_is_refused_while_serve_holds_the_root() {
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("registry");
    let served = Served::start(&root, &["--auth"]);
    let lock = root.join("registry.lock");

    let out = ferry()
        .args(["registry", "gc", "--grace", "0s", "--root"])
        .arg(&root)
        .output()
        .expect("run gc");
    assert_eq!(out.status.code(), Some(1), "gc ran under a live server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&lock.display().to_string())
            && stderr.contains("in use")
            && stderr.contains(&format!("pid {}", served.child.id()))
            && stderr.contains("stop that"),
        "{stderr}"
    );
    // A second server on the same root is refused the same way.
    let out = ferry()
        .args(["registry", "serve", "--addr", "127.0.0.1:0", "--root"])
        .arg(&root)
        .output()
        .expect("run a second serve");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registry.lock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (code, _, stderr) = served.terminate();
    assert_eq!(code, Some(0), "{stderr}");
    let out = ferry()
        .args(["registry", "gc", "--grace", "0s", "--root"])
        .arg(&root)
        .output()
        .expect("run gc");
    assert_eq!(
        out.status.code(),
        Some(0),
        "gc after the server stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        for dir in ["", "blobs", "blobs/sha256", "auth", "auth/credentials"] {
            assert_eq!(mode(&root.join(dir)), 0o700, "{dir}");
        }
        for file in [
            "registry.lock",
            "auth/signing.key",
            "auth/credentials/vendor",
        ] {
            assert_eq!(mode(&root.join(file)), 0o600, "{file}");
        }
    }
}

// ---- availability under attack -----------------------------------------------------------

/// One request on its own connection (`Connection: close`): status and body.
fn http(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use std::io::Write as _;
    let mut conn = std::net::TcpStream::connect(host).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).expect("write head");
    conn.write_all(body).expect("write body");
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {head:?}"));
    (status, raw[split + 4..].to_vec())
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// Pushes a config, a 256 KiB layer and a manifest tagged `v1` into `repo`; returns the
/// (manifest, layer) digests.
fn push_small_image(host: &str, repo: &str) -> (String, String) {
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    for blob in [&config, &layer] {
        let d = format!("sha256:{}", sha256_hex(blob));
        let (status, body) = http(
            host,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[],
            blob,
        );
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        sha256_hex(&config),
        config.len(),
        sha256_hex(&layer),
        layer.len()
    );
    let (status, body) = http(
        host,
        "PUT",
        &format!("/v2/{repo}/manifests/v1"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        manifest.as_bytes(),
    );
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    (
        format!("sha256:{}", sha256_hex(manifest.as_bytes())),
        format!("sha256:{}", sha256_hex(&layer)),
    )
}

/// What a well-behaved client does to pull `repo:v1`: manifest, then the layer, verified.
fn pull(host: &str, repo: &str, manifest: &str, layer: &str) {
    let (status, body) = http(
        host,
        "GET",
        &format!("/v2/{repo}/manifests/v1"),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&body)), manifest);
    let (status, body) = http(host, "GET", &format!("/v2/{repo}/blobs/{layer}"), &[], b"");
    assert_eq!(status, 200);
    assert_eq!(format!("sha256:{}", sha256_hex(&body)), layer);
}

/// The server's resident memory now and at its peak, in KiB (`VmRSS`, `VmHWM`).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const RSS_LIMIT_KIB: u64 = 64 * 1024;
const SLOWLORIS_TARGET: &str = "FERRY_TEST_SLOWLORIS_TARGET";
const SLOWLORIS_CONNECTIONS: usize = 2000;

/// Not a test on its own: the attacker process of `slow_loris_...` (this test binary re-run
/// with its open-file limit raised, so the attack does not depend on the test's own limit).
/// Opens the half-sent requests, prints how many, and holds them until stdin closes.
#[test]
fn slow_loris_attacker_child() {
    let Ok(target) = std::env::var(SLOWLORIS_TARGET) else {
        return;
    };
    use std::io::Write as _;
    let addr: std::net::SocketAddr = target.parse().expect("target address");
    // Eight openers in parallel, so the flood arrives faster than one client could send it.
    let openers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for _ in 0..SLOWLORIS_CONNECTIONS / 8 {
                    if let Ok(mut c) = std::net::TcpStream::connect_timeout(
                        &addr,
                        std::time::Duration::from_secs(5),
                    ) {
                        // A request line and half a header, then nothing: the classic slow-loris.
                        let _ = c.write_all(b"GET /v2/ HTTP/1.1\r\nHost: registry\r\nX-Slow: ");
                        held.push(c);
                    }
                }
                held
            })
        })
        .collect();
    let held: Vec<_> = openers
        .into_iter()
        .flat_map(|t| t.join().expect("opener"))
        .collect();
    println!("open {}", held.len());
    std::io::stdout().flush().expect("flush");
    let mut rest = String::new();
    let _ = std::io::stdin().read_to_string(&mut rest);
}

/// 2,000 half-sent requests against `ferry registry serve <extra>` under `ulimit -n <nofile>`:
/// a real pull still completes within 2 s, and the server stays under 64 MiB.
fn slow_loris(extra: &[&str], nofile: u32) {
    let work = tempfile::tempdir().expect("tempdir");
    let served = Served::start_with_nofile(&work.path().join("registry"), extra, nofile);
    let host = served.host.clone();
    let (manifest, layer) = push_small_image(&host, "vendor/app");

    let mut attacker = Command::new("bash")
        .arg("-c")
        .arg("h=$(ulimit -Hn); [ \"$h\" = unlimited ] && h=65536; ulimit -n \"$h\" 2>/dev/null || ulimit -n 4096 2>/dev/null; exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", "slow_loris_attacker_child", "--nocapture", "--test-threads=1"])
        .env(SLOWLORIS_TARGET, &host)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the attacker");
    let mut attacker_out = BufReader::new(attacker.stdout.take().expect("stdout"));
    let opened = loop {
        let mut line = String::new();
        assert!(
            attacker_out.read_line(&mut line).expect("attacker output") > 0,
            "the attacker exited early"
        );
        // The harness may print "test ... " on the same line before the child's own output.
        if let Some(n) = line.split("open ").nth(1) {
            break n.trim().parse::<usize>().expect("count");
        }
    };
    assert_eq!(
        opened, SLOWLORIS_CONNECTIONS,
        "every attack connection was accepted"
    );

    // While the attack holds: a real pull completes within 2 s.
    let started = std::time::Instant::now();
    pull(&host, "vendor/app", &manifest, &layer);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(2),
        "pull took {took:?}"
    );
    let (rss, peak) = rss_kib(served.child.id());
    eprintln!("slow-loris: pull took {took:?}; server RSS {rss} KiB, peak {peak} KiB");
    assert!(
        peak < RSS_LIMIT_KIB,
        "server RSS {rss} KiB, peak {peak} KiB under attack"
    );

    drop(attacker.stdin.take());
    let _ = attacker.wait();
    // Still serving afterwards.
    pull(&host, "vendor/app", &manifest, &layer);
}

#[test]
fn slow_loris_with_2000_half_open_connections_does_not_lock_out_a_real_client() {
    slow_loris(&[], 1024);
}

#[test]
fn a_connection_cap_above_the_open_file_limit_is_lowered_instead_of_running_out() {
    // 5,000 connections cannot fit in 256 descriptors: the server serves fewer and survives.
    slow_loris(&["--max-connections", "5000"], 256);
}

#[test]
fn two_hundred_stalled_4_mib_manifest_puts_keep_memory_flat() {
    let work = tempfile::tempdir().expect("tempdir");
    let served = Served::start_with_nofile(&work.path().join("registry"), &[], 1024);
    let host = served.host.clone();
    let (manifest, layer) = push_small_image(&host, "vendor/app");

    const STALLED: usize = 200;
    const FOUR_MIB: usize = 4 * 1024 * 1024;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let sent = runtime.block_on(async {
        use tokio::io::AsyncWriteExt as _;
        let mut tasks = Vec::new();
        for i in 0..STALLED {
            let (host, mut stop, done) = (host.clone(), stop_rx.clone(), done_tx.clone());
            tasks.push(tokio::spawn(async move {
                let Ok(mut conn) = tokio::net::TcpStream::connect(&host).await else {
                    let _ = done.send(false);
                    return;
                };
                let head = format!(
                    "PUT /v2/vendor/app/manifests/stall{i} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {FOUR_MIB}\r\n\r\n"
                );
                let body = vec![b' '; FOUR_MIB - 1];
                // One byte short, then stall (a refused PUT is closed by the server: fine).
                let wrote = tokio::time::timeout(std::time::Duration::from_secs(10), async {
                    conn.write_all(head.as_bytes()).await?;
                    conn.write_all(&body).await
                })
                .await;
                let _ = done.send(matches!(wrote, Ok(Ok(()))));
                let _ = stop.changed().await;
                drop(conn);
            }));
        }
        // Every writer has sent its body (admitted) or been refused and cut off.
        let mut admitted = 0;
        for _ in 0..STALLED {
            let wrote = tokio::time::timeout(std::time::Duration::from_secs(30), done_rx.recv())
                .await
                .expect("every writer finishes or is refused")
                .expect("writer result");
            admitted += usize::from(wrote);
        }
        (tasks, admitted)
    });
    // Loopback buffers can swallow a whole body the server never reads, so how many were
    // admitted is not visible here; the server's memory is.
    let (sent, _written) = sent;
    let (rss, peak) = rss_kib(served.child.id());
    eprintln!("stalled manifests: server RSS {rss} KiB, peak {peak} KiB");
    // Other clients are served while the PUTs stall.
    pull(&host, "vendor/app", &manifest, &layer);
    let (status, _) = http(&host, "GET", "/v2/", &[], b"");
    assert_eq!(status, 200);
    assert!(
        peak < RSS_LIMIT_KIB,
        "server RSS {rss} KiB, peak {peak} KiB with {STALLED} stalled manifest PUTs"
    );
    let _ = stop_tx.send(true);
    runtime.block_on(async {
        for t in sent {
            let _ = t.await;
        }
    });
}
