//! A real CNCF distribution registry (`/usr/bin/docker-registry`) per test: temp storage, a
//! free loopback port, optional token auth, and its access log for counting requests.
//!
//! It must never outlive the test (the child is killed in Drop) and never listen beyond
//! 127.0.0.1.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::token::TokenIssuer;

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Uploads `bytes` as a blob with curl: POST for a session, then one PUT with `?digest=`.
pub fn curl_put_blob(addr: &str, repo: &str, digest: &str, bytes: &[u8]) {
    let location = curl(&[
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-w",
        "%header{location}",
        &format!("http://{addr}/v2/{repo}/blobs/uploads/"),
    ]);
    let location = String::from_utf8_lossy(&location).trim().to_string();
    let location = if location.starts_with('/') {
        format!("http://{addr}{location}")
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), bytes).expect("write tmp");
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.path().display()),
        &format!("{location}{sep}digest={digest}"),
    ]);
}

/// PUTs a manifest's exact bytes with curl.
pub fn curl_put_manifest(addr: &str, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(file.path(), bytes).expect("write tmp");
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {media_type}"),
        "--data-binary",
        &format!("@{}", file.path().display()),
        &format!("http://{addr}/v2/{repo}/manifests/{reference}"),
    ]);
}

fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--noproxy", "*"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One line of the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
}

impl LoggedRequest {
    pub fn is_blob_write(&self) -> bool {
        (self.method == "PUT" || self.method == "POST" || self.method == "PATCH")
            && self.path.contains("/blobs/uploads")
    }
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.path.contains("/blobs/sha256:")
    }
    pub fn is_manifest_put(&self) -> bool {
        self.method == "PUT" && self.path.contains("/manifests/")
    }
}

pub struct DockerRegistry {
    child: Child,
    addr: String,
    access_log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A loopback port that was free a moment ago. The registry may lose a race for it;
/// [`DockerRegistry::start`] retries with a new one.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// Status code of `GET path` on `addr` over plain HTTP/1.0, or None if nothing answers.
pub fn http_status(addr: &str, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // Every manifest type in Accept: without it docker-registry hides OCI manifests (404).
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {MANIFEST_ACCEPT}\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

impl DockerRegistry {
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// A registry that accepts only bearer tokens from `issuer`.
    pub fn start_with_token_auth(issuer: &TokenIssuer) -> Self {
        Self::start_inner(Some(issuer))
    }

    fn start_inner(issuer: Option<&TokenIssuer>) -> Self {
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: ferry-test-secret\n",
                dir.path().join("root").display()
            );
            if let Some(iss) = issuer {
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    iss.realm(),
                    iss.service(),
                    iss.issuer_name(),
                    iss.cert_path().display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).expect("write config");
            let access_log = dir.path().join("access.log");
            let stderr_log = dir.path().join("stderr.log");
            let child = Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(File::create(&access_log).expect("access log"))
                .stderr(File::create(&stderr_log).expect("stderr log"))
                .spawn()
                .expect("spawn docker-registry");
            let mut reg = DockerRegistry {
                child,
                addr,
                access_log,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = reg.child.try_wait() {
                    last_err = format!(
                        "docker-registry exited with {status}: {}",
                        std::fs::read_to_string(&stderr_log).unwrap_or_default()
                    );
                    break;
                }
                if let Some(code) = http_status(&reg.addr, "GET", "/v2/") {
                    if code == 200 || code == 401 {
                        return reg;
                    }
                }
                if Instant::now() > deadline {
                    panic!("docker-registry on {} did not answer within 20s", reg.addr);
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("docker-registry failed to start: {last_err}");
    }

    /// `127.0.0.1:port`
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Every request in the access log so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// A position in the access log; see [`DockerRegistry::requests_since`].
    pub fn mark(&self) -> usize {
        self.requests().len()
    }

    pub fn requests_since(&self, mark: usize) -> Vec<LoggedRequest> {
        self.requests().into_iter().skip(mark).collect()
    }

    /// Status of `HEAD /v2/<repo>/manifests/<reference>` (anonymous).
    pub fn manifest_status(&self, repo: &str, reference: &str) -> u16 {
        http_status(
            &self.addr,
            "HEAD",
            &format!("/v2/{repo}/manifests/{reference}"),
        )
        .unwrap_or(0)
    }
}

/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "ua"`
fn parse_access_line(line: &str) -> Option<LoggedRequest> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut req = request.split_whitespace();
    let method = req.next()?.to_string();
    let path = req.next()?.to_string();
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(LoggedRequest {
        method,
        path,
        status,
    })
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_access_lines() {
        let l = super::parse_access_line(
            r#"127.0.0.1 - - [23/Nov/2026:13:28:51 +0000] "HEAD /v2/foo/manifests/x HTTP/1.1" 404 91 "" "curl/7.88.1""#,
        )
        .expect("parses");
        assert_eq!(
            (l.method.as_str(), l.path.as_str(), l.status),
            ("HEAD", "/v2/foo/manifests/x", 404)
        );
    }
}
