//! Retention as the install agent runs it: 25 syncs of one repository (each a two-platform
//! index tagged `sha256-<hex>`, as the agent tags), two digests marked in use, then
//! `POST /v2/<name>/_ferry/retention?keep_last=20` through ferry-oci's client as `agent:a`.
//! Only the agent may mark or run retention; everyone else is refused and changes nothing.

use ferry_oci::{
    ClientConfig, Credential, CredentialStore, Digest, RegistryClient, RepoRef, Secret,
};

use super::*;

const REPO: &str = "installs/a/app";

/// One sync's artifact: an index over two platform images that share a base layer.
struct Synced {
    index: Vec<u8>,
    children: Vec<Image>,
}

impl Synced {
    fn new(i: usize, base: &[u8]) -> Synced {
        let children: Vec<Image> = ["amd64", "arm64"]
            .iter()
            .map(|arch| {
                let own = format!("layer of sync {i} {arch}").into_bytes();
                let layers = vec![base.to_vec(), own];
                let config = json!({"architecture": arch, "os": "linux", "sync": i})
                    .to_string()
                    .into_bytes();
                let manifest = manifest_json(&config, &layers);
                Image {
                    config,
                    layers,
                    manifest,
                }
            })
            .collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children.iter().zip(["amd64", "arm64"]).map(|(c, arch)| json!({
                "mediaType": OCI_MANIFEST, "digest": c.digest(), "size": c.manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            })).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes();
        Synced { index, children }
    }

    fn digest(&self) -> String {
        digest(&self.index)
    }

    fn tag(&self) -> String {
        self.digest().replacen(':', "-", 1)
    }

    /// As a sync writes it: blobs, child manifests by digest, the index's tag last.
    async fn push(&self, env: &Env, token: &str) {
        for child in &self.children {
            child.push(env, token, REPO, &child.digest()).await;
        }
        let r = env
            .put_manifest(Some(token), REPO, &self.tag(), OCI_INDEX, &self.index)
            .await;
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{}",
            r.text().await.unwrap()
        );
    }

    /// Every digest the index holds: itself, its children, their configs and layers.
    fn graph(&self) -> Vec<String> {
        let mut out = vec![self.digest()];
        for c in &self.children {
            out.push(c.digest());
            out.push(digest(&c.config));
            out.extend(c.layers.iter().map(|l| digest(l)));
        }
        out
    }
}

fn agent_client(env: &Env, user: &str, secret: &str) -> RegistryClient {
    let mut credentials = CredentialStore::new();
    credentials.insert(
        &env.host,
        None,
        Credential::Basic {
            username: user.to_string(),
            password: Secret::new(secret),
        },
    );
    RegistryClient::new(ClientConfig {
        credentials,
        ..ClientConfig::default()
    })
    .unwrap()
}

fn on_disk(env: &Env, d: &str) -> bool {
    env.root.join("blobs/sha256").join(&d[7..]).exists()
}

async fn status_of(env: &Env, d: &str, token: &str, accept: &str) -> StatusCode {
    env.req(
        Method::GET,
        &format!("/v2/{REPO}/manifests/{d}"),
        Some(token),
    )
    .header("accept", accept)
    .send()
    .await
    .unwrap()
    .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_retention_keeps_the_newest_n_and_everything_in_use_with_their_graphs() {
    let env = start_with_retention_grace(Duration::ZERO).await;
    let agent = env
        .token(
            "agent:a",
            AGENT_A,
            &[&format!("repository:{REPO}:pull,push")],
        )
        .await;
    let base = b"base layer shared by every sync".to_vec();
    let mut syncs = Vec::new();
    for i in 1..=25 {
        let s = Synced::new(i, &base);
        s.push(&env, &agent).await;
        syncs.push(s);
    }
    let client = agent_client(&env, "agent:a", AGENT_A);
    let repo = RepoRef::new(env.host.clone(), REPO);
    // In use: sync 3 (older than the window of 20) and sync 22 (inside it).
    let old = syncs[2].digest().parse::<Digest>().unwrap();
    let recent = syncs[21].digest().parse::<Digest>().unwrap();
    client.set_in_use(&repo, &old, true).await.unwrap();
    client.set_in_use(&repo, &recent, true).await.unwrap();
    client.set_in_use(&repo, &recent, true).await.unwrap(); // idempotent
    let mut marked = vec![old.to_string(), recent.to_string()];
    marked.sort();
    assert_eq!(client.list_in_use(&repo).await.unwrap(), marked);

    // A digest the repository does not hold cannot be marked: it is a typo, said so.
    let stranger = digest(b"not here").parse::<Digest>().unwrap();
    let e = client.set_in_use(&repo, &stranger, true).await.unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");

    let summary = client.apply_retention(&repo, 20).await.unwrap();
    let expect_removed: Vec<String> = [0, 1, 3, 4].iter().map(|&i| syncs[i].tag()).collect();
    let mut removed = summary.tags_removed.clone();
    removed.sort();
    let mut want_removed = expect_removed.clone();
    want_removed.sort();
    assert_eq!(removed, want_removed, "{summary:?}");
    assert_eq!(summary.tags_kept.len(), 21, "the 20 newest plus sync 3");
    // Each removed sync: its index and its two children.
    assert_eq!(summary.manifests_unlinked.len(), 4 * 3, "{summary:?}");

    let tags: Value = env
        .req(Method::GET, &format!("/v2/{REPO}/tags/list"), Some(&agent))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut have: Vec<String> = serde_json::from_value(tags["tags"].clone()).unwrap();
    have.sort();
    let mut want: Vec<String> = syncs[5..].iter().map(Synced::tag).collect();
    want.push(syncs[2].tag());
    want.sort();
    assert_eq!(have, want, "exactly the 20 newest plus the old one in use");

    // Kept: every manifest readable, every blob of every kept graph on disk (the shared base
    // layer too, though removed syncs referenced it).
    for (i, s) in syncs.iter().enumerate() {
        let kept = i >= 5 || i == 2;
        for d in s.graph() {
            if kept {
                assert!(on_disk(&env, &d), "sync {}: {d} must be kept", i + 1);
            }
        }
        let st = status_of(&env, &s.digest(), &agent, OCI_INDEX).await;
        if kept {
            assert_eq!(st, StatusCode::OK, "sync {}", i + 1);
            for c in &s.children {
                assert_eq!(
                    status_of(&env, &c.digest(), &agent, OCI_MANIFEST).await,
                    StatusCode::OK
                );
            }
        } else {
            assert_eq!(st, StatusCode::NOT_FOUND, "sync {} is gone", i + 1);
            // Its own blobs are gone (grace zero); the shared base layer is not.
            for c in &s.children {
                assert!(!on_disk(&env, &digest(&c.layers[1])), "sync {}", i + 1);
                assert!(!on_disk(&env, &c.digest()), "sync {}", i + 1);
            }
        }
    }
    assert!(on_disk(&env, &digest(&base)));

    // A second run changes nothing, not a byte on disk.
    let before = snapshot(&env.root);
    let again = client.apply_retention(&repo, 20).await.unwrap();
    assert!(again.tags_removed.is_empty(), "{again:?}");
    assert!(again.manifests_unlinked.is_empty(), "{again:?}");
    assert_eq!(again.blobs_removed, 0);
    assert_eq!(snapshot(&env.root), before);

    // Unmarking sync 3 makes it ordinary: the next run removes it, and only it.
    client.set_in_use(&repo, &old, false).await.unwrap();
    let third = client.apply_retention(&repo, 20).await.unwrap();
    assert_eq!(third.tags_removed, [syncs[2].tag()]);
    assert_eq!(
        client.list_in_use(&repo).await.unwrap(),
        [recent.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_installs_agent_may_mark_or_run_retention() {
    let env = start_with_retention_grace(Duration::ZERO).await;
    let agent = env
        .token(
            "agent:a",
            AGENT_A,
            &[&format!("repository:{REPO}:pull,push")],
        )
        .await;
    let base = b"base".to_vec();
    let first = Synced::new(1, &base);
    first.push(&env, &agent).await;
    Synced::new(2, &base).push(&env, &agent).await;
    let vendor = env
        .token("vendor", VENDOR, &["repository:vendor/app:pull,push"])
        .await;
    Image::new("vendor")
        .push(&env, &vendor, "vendor/app", "v1")
        .await;
    let node = env
        .token(
            "node:a",
            NODE_A,
            &[&format!("repository:{REPO}:pull,push,delete")],
        )
        .await;
    let agent_b = env
        .token(
            "agent:b",
            AGENT_B,
            &[&format!("repository:{REPO}:pull,push")],
        )
        .await;
    let before = snapshot(&env.root);
    let mark_path = format!("/v2/{REPO}/_ferry/in-use/{}", first.digest());
    let retain_path = format!("/v2/{REPO}/_ferry/retention?keep_last=1");
    let cases: Vec<(&str, Method, String, Option<&str>)> = vec![
        ("unauthenticated mark", Method::PUT, mark_path.clone(), None),
        (
            "unauthenticated retention",
            Method::POST,
            retain_path.clone(),
            None,
        ),
        ("node marks", Method::PUT, mark_path.clone(), Some(&node)),
        (
            "node runs retention",
            Method::POST,
            retain_path.clone(),
            Some(&node),
        ),
        (
            "another install's agent",
            Method::POST,
            retain_path.clone(),
            Some(&agent_b),
        ),
        (
            "another install's agent marks",
            Method::PUT,
            mark_path.clone(),
            Some(&agent_b),
        ),
        (
            "vendor on its own namespace",
            Method::POST,
            "/v2/vendor/app/_ferry/retention?keep_last=1".to_string(),
            Some(&vendor),
        ),
    ];
    for (case, method, path, token) in cases {
        let r = env.req(method, &path, token).send().await.unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
            "{case}: {status} {body}"
        );
        for t in [&node, &agent_b, &vendor] {
            assert!(!body.contains(t.as_str()), "{case}: the token is echoed");
        }
    }
    // Bad input from the agent itself: a clear 400, nothing changed.
    for (q, want) in [
        ("", "keep_last must be"),
        ("?keep_last=0", "from 1 to"),
        ("?keep_last=x", "whole number"),
    ] {
        let r = env
            .req(
                Method::POST,
                &format!("/v2/{REPO}/_ferry/retention{q}"),
                Some(&agent),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = r.text().await.unwrap();
        assert!(body.contains(want), "{q}: {body}");
    }
    let r = env
        .req(
            Method::PUT,
            &format!("/v2/{REPO}/_ferry/in-use/latest"),
            Some(&agent),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        snapshot(&env.root),
        before,
        "every refusal left the root unchanged"
    );

    // The agent itself may.
    let r = env
        .req(Method::PUT, &mark_path, Some(&agent))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = env
        .req(Method::POST, &retain_path, Some(&agent))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report: Value = r.json().await.unwrap();
    // keep_last=1 keeps sync 2; sync 1 is in use: nothing removed.
    assert_eq!(report["tags_removed"], json!([]), "{report}");
}
