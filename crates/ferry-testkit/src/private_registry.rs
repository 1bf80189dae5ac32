//! A private registry for the source-credential tests: the CNCF distribution registry
//! (`/usr/bin/docker-registry`) with htpasswd (Basic) auth, one fixed user, on a free loopback
//! port, killed and its storage removed on drop.
//!
//! It must never listen beyond 127.0.0.1. The user's password is a test constant, so tests can
//! assert it never shows up where it must not.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The registry binary (Debian's `docker-registry` package).
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
/// The one user of [`PrivateRegistry`].
pub const USER: &str = "puller";
/// Its password (a test constant; tests assert it never leaks).
pub const PASSWORD: &str = "src-Secret-7d1f9a";
/// bcrypt of [`PASSWORD`] (cost 5, made once with libxcrypt's `crypt`), as htpasswd holds it.
const PASSWORD_BCRYPT: &str = "$2a$05$ferrytestsaltferryteseGbahcEdtx1PWeTK.fmvX9TMBCYC85NG";

/// A docker-registry that answers only [`USER`]/[`PASSWORD`] (HTTP Basic).
pub struct PrivateRegistry {
    child: Child,
    /// `127.0.0.1:port`.
    pub addr: String,
    dir: std::path::PathBuf,
}

impl PrivateRegistry {
    /// Starts it and waits (polling `/v2/`, up to 20 s) until it answers 401.
    pub async fn start() -> PrivateRegistry {
        let mut last = String::new();
        for _ in 0..5 {
            let dir = std::env::temp_dir().join(crate::unique("ferry-private-registry"));
            std::fs::create_dir_all(&dir).unwrap();
            let port = crate::free_port();
            let addr = format!("127.0.0.1:{port}");
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{USER}:{PASSWORD_BCRYPT}\n")).unwrap();
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n  secret: ferry-test-secret\n\
                 auth:\n  htpasswd:\n    realm: ferry-test\n    path: {}\n",
                dir.join("root").display(),
                htpasswd.display()
            );
            let config_path = dir.join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let mut child = Command::new(DOCKER_REGISTRY)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {DOCKER_REGISTRY}: {e}"));
            let url = format!("http://{addr}/v2/");
            match crate::wait_http(&mut child, &url, "docker-registry", Duration::from_secs(20))
                .await
            {
                Ok(()) => return PrivateRegistry { child, addr, dir },
                Err(e) => {
                    last = e;
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        panic!("docker-registry did not come up: {last}");
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
