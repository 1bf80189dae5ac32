//! An install's nodes pull with their own identity, `node:<install>`, following the recipe
//! `ferry_dev::state::node_pull_recipe` renders, run through a shell as an operator would.
//!
//! The pull is done by a real node runtime when this machine has one: containerd, started here
//! as root on a private socket and root directory with the native snapshotter, and
//! `ctr images pull`, which also unpacks the image. Without containerd (or without root) the
//! same pull goes through skopeo, and the layer is unpacked with tar (`FERRY_TEST_NODE_RUNTIME=skopeo`
//! forces that path). The test prints which ran.
//! The refusals (push, delete, another install) are checked with skopeo, a real client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_core::id::InstallId;
use ferry_dev::state::node_pull_recipe;
use ferry_dev::DevSystem;

/// Which runtime did the pull.
#[derive(Debug, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    Skopeo,
}

fn sh(line: &str, envs: &[(&str, &Path)]) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(line);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("sh runs")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A containerd on a private socket and root; killed (by its pid) when dropped.
struct Containerd {
    child: Child,
    socket: PathBuf,
    root: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        let root = dir.join("root");
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.overlayfs\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\"]\n\
             [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = {ttrpc:?}\n",
            state = dir.join("state"),
            sock = socket,
            ttrpc = dir.join("containerd.sock.ttrpc"),
        );
        std::fs::write(dir.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let mut me = Containerd {
            child,
            socket,
            root,
        };
        // Ready when `ctr version` answers on the socket (a readiness probe, not a sleep).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new("ctr")
                .arg("-a")
                .arg(&me.socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                return me;
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                panic!(
                    "containerd exited ({status}): {}",
                    std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer in 30 s"
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every regular file under `dir` whose name is `name`.
fn find_files(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            find_files(&p, name, out);
        } else if ft.is_file() && e.file_name() == name {
            out.push(p);
        }
    }
}

/// Pulls the multi-platform image `repo@digest` of install `install` with its node identity,
/// unpacks it, checks the node identity's refusals, and returns which runtime pulled.
pub fn check(system: &DevSystem, install: &str, other: &str, repo: &str, digest: &str) -> Runtime {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = InstallId::new(install).expect("install id");
    let host = system.registry_host();
    let recipe = node_pull_recipe(system.state(), &id, host).expect("node recipe");
    let secret_file = system.state().node_secret_path(&id);
    let secret = std::fs::read_to_string(&secret_file).expect("node secret");
    assert!(
        !recipe.render().contains(secret.trim()),
        "the recipe never holds the secret"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the node secret file is 0600");
    }
    let reference = format!("@{digest}");

    // FERRY_TEST_NODE_RUNTIME=skopeo runs the fallback on a machine that has containerd.
    let forced_skopeo = std::env::var("FERRY_TEST_NODE_RUNTIME").is_ok_and(|v| v == "skopeo");
    let runtime = if !forced_skopeo && on_path("containerd") && on_path("ctr") && is_root() {
        let ctrd = Containerd::start(dir.path());
        // The recipe's own line, with the runtime's socket, namespace and snapshotter from the
        // environment.
        let line = recipe.ctr_pull(repo, &reference).replacen(
            "ctr images pull",
            "ctr images pull --all-platforms",
            1,
        );
        let out = sh(
            &line,
            &[
                ("CONTAINERD_ADDRESS", &ctrd.socket),
                ("CONTAINERD_NAMESPACE", Path::new("ferry-node-test")),
                ("CONTAINERD_SNAPSHOTTER", Path::new("native")),
            ],
        );
        assert!(
            out.status.success(),
            "ctr pull as {install}'s node: {}",
            text(&out)
        );
        // Unpacked by the native snapshotter: the layer's file is on disk.
        let mut found = Vec::new();
        find_files(
            &ctrd.root.join("io.containerd.snapshotter.v1.native"),
            "hello.txt",
            &mut found,
        );
        assert!(
            !found.is_empty(),
            "ctr unpacked no hello.txt under {:?}",
            ctrd.root
        );
        Runtime::Containerd
    } else {
        let layout = dir.path().join("layout");
        let line = format!(
            "skopeo copy --all {} docker://{host}/installs/{install}/{repo}{reference} oci:{}",
            recipe.skopeo_flags(),
            layout.display()
        );
        let out = sh(&line, &[]);
        assert!(
            out.status.success(),
            "skopeo copy as {install}'s node: {}",
            text(&out)
        );
        // Unpack every layer blob of the layout (the demo image's layers are tar+gzip).
        let mut unpacked = 0;
        for entry in std::fs::read_dir(layout.join("blobs/sha256")).expect("blobs") {
            let p = entry.expect("entry").path();
            let to = dir.path().join("rootfs");
            std::fs::create_dir_all(&to).expect("rootfs");
            let o = Command::new("tar")
                .arg("-xzf")
                .arg(&p)
                .arg("-C")
                .arg(&to)
                .output()
                .expect("tar");
            if o.status.success() {
                unpacked += 1;
            }
        }
        assert!(unpacked > 0, "no layer of the pulled image unpacked");
        assert!(dir.path().join("rootfs/hello.txt").is_file());
        Runtime::Skopeo
    };
    eprintln!("node identity pull checked with {runtime:?}");

    let creds = recipe.creds_expr();
    let tls = if recipe.plain_http {
        "--tls-verify=false"
    } else {
        ""
    };
    // The node identity reads the image with skopeo too (the refusals below are not a typo).
    let ok = sh(
        &format!("skopeo inspect --raw {tls} --creds {creds} docker://{host}/installs/{install}/{repo}{reference}"),
        &[],
    );
    assert!(ok.status.success(), "node reads its install: {}", text(&ok));

    // Another install's repository: refused.
    let other_read = sh(
        &format!("skopeo inspect --raw {tls} --creds {creds} docker://{host}/installs/{other}/{repo}{reference}"),
        &[],
    );
    assert!(
        !other_read.status.success(),
        "node read another install: {}",
        text(&other_read)
    );

    // Push into its own install: refused, nothing written under the tag.
    let src = dir.path().join("src");
    let copy_in = sh(
        &format!(
            "skopeo copy --all {} docker://{host}/installs/{install}/{repo}{reference} oci:{}:v1",
            recipe.skopeo_flags(),
            src.display()
        ),
        &[],
    );
    assert!(copy_in.status.success(), "{}", text(&copy_in));
    let push = sh(
        &format!(
            "skopeo copy --all --dest-tls-verify=false --dest-creds {creds} oci:{}:v1 docker://{host}/installs/{install}/{repo}:pushed-by-node",
            src.display()
        ),
        &[],
    );
    assert!(!push.status.success(), "node pushed: {}", text(&push));
    let tag = sh(
        &format!("skopeo inspect --raw {tls} --creds {creds} docker://{host}/installs/{install}/{repo}:pushed-by-node"),
        &[],
    );
    assert!(
        !tag.status.success(),
        "the refused push left a tag: {}",
        text(&tag)
    );

    // Delete: refused, the manifest is still there.
    let delete = sh(
        &format!("skopeo delete {tls} --creds {creds} docker://{host}/installs/{install}/{repo}{reference}"),
        &[],
    );
    assert!(!delete.status.success(), "node deleted: {}", text(&delete));
    let still = sh(
        &format!("skopeo inspect --raw {tls} --creds {creds} docker://{host}/installs/{install}/{repo}{reference}"),
        &[],
    );
    assert!(
        still.status.success(),
        "after the refused delete: {}",
        text(&still)
    );
    runtime
}
