//! Bearer token auth against docker-registry configured with token auth and the harness's
//! issuer: Basic credentials are exchanged for scoped tokens, tokens are reused, and wrong
//! credentials fail with an error that names the registry and the step but not the password.

mod support;

use ferry_oci::{Credential, CredentialStore, Secret};
use support::ferry::{client_with, copy_with};
use support::skopeo::{push_layout_with_creds, try_skopeo};
use support::*;

const USER: &str = "ferry";
const PASS: &str = "correct-horse-battery";

fn creds(registries: &[&str], password: &str) -> CredentialStore {
    let mut store = CredentialStore::new();
    for r in registries {
        store.insert(
            r,
            None,
            Credential::Basic {
                username: USER.into(),
                password: Secret::new(password),
            },
        );
    }
    store
}

#[tokio::test]
async fn basic_credentials_are_exchanged_for_reused_tokens() {
    let issuer = TokenIssuer::start(USER, PASS);
    let src = DockerRegistry::start_with_token_auth(&issuer);
    let dst = DockerRegistry::start_with_token_auth(&issuer);
    let dir = tempfile::tempdir().expect("tempdir");
    let img = multi_layer_layout(dir.path(), "v1", 70, 64 * 1024);
    push_layout_with_creds(
        dir.path(),
        "v1",
        &format!("{}/secure/app:v1", src.addr()),
        &format!("{USER}:{PASS}"),
    )
    .expect("seed push");

    let before = issuer.tokens_issued();
    let dst_mark = dst.mark();
    let report = copy_with(
        client_with(creds(&[src.addr(), dst.addr()], PASS)),
        &format!("{}/secure/app:v1", src.addr()),
        &[format!("{}/secure/app:v1", dst.addr())],
        Default::default(),
    )
    .await
    .expect("authenticated copy");

    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(img.manifest.digest.clone())
    );
    let issued = issuer.tokens_issued() - before;
    let requests = dst.requests_since(dst_mark).len();
    // One scope at the source (pull), one or two at the destination (pull,push and maybe
    // the registry-wide /v2/ probe): not one token per request.
    assert!(issued >= 2, "tokens were not fetched: {issued}");
    assert!(
        issued <= 4,
        "tokens not reused: {issued} issued for {requests} destination requests; scopes {:?}",
        issuer.scopes_issued()
    );
    assert!(requests > issued as usize);
    let raw = try_skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &format!("{USER}:{PASS}"),
        &format!("docker://{}/secure/app:v1", dst.addr()),
    ])
    .expect("inspect destination");
    assert_eq!(raw, img.manifest_bytes);
}

#[tokio::test]
async fn wrong_credentials_fail_clearly_without_the_password() {
    let issuer = TokenIssuer::start(USER, PASS);
    let src = DockerRegistry::start();
    let dst = DockerRegistry::start_with_token_auth(&issuer);
    push_multi_layer(src.addr(), "secure/app", "v1", 71);
    let wrong = "wrong-password-xyzzy";

    let err = copy_with(
        client_with(creds(&[dst.addr()], wrong)),
        &format!("{}/secure/app:v1", src.addr()),
        &[format!("{}/secure/app:v1", dst.addr())],
        Default::default(),
    )
    .await
    .expect_err("wrong password must fail");

    let msg = format!("{err} / {err:?}");
    assert!(msg.contains(dst.addr()), "registry not named: {msg}");
    assert!(
        msg.contains("authenticat") || msg.contains("401"),
        "step not named: {msg}"
    );
    assert!(!msg.contains(wrong), "password leaked: {msg}");
    assert!(issuer.refusals() >= 1, "the issuer was never asked");
    assert_eq!(issuer.tokens_issued(), 0);
}

/// `ferry copy host/src/app:v1 host/dst/app:v1 --src-creds alice --dest-creds bob` on one
/// registry: alice may only pull the source, bob may only pull and push the destination. The
/// copy works only if each repository is reached as its own identity, and the token service
/// must never see alice asked for the destination or bob for the source.
#[tokio::test]
async fn one_registry_two_repositories_two_identities() {
    let issuer = TokenIssuer::start_with_users(vec![
        User::new("seeder", "seed-pw", &[("src/app", &["pull", "push"])]),
        User::new("alice", "alice-pw", &[("src/app", &["pull"])]),
        User::new("bob", "bob-pw", &[("dst/app", &["pull", "push"])]),
    ]);
    let reg = DockerRegistry::start_with_token_auth(&issuer);
    let dir = tempfile::tempdir().expect("tempdir");
    let img = multi_layer_layout(dir.path(), "v1", 72, 32 * 1024);
    push_layout_with_creds(
        dir.path(),
        "v1",
        &format!("{}/src/app:v1", reg.addr()),
        "seeder:seed-pw",
    )
    .expect("seed push");
    let basic = |u: &str, p: &str| Credential::Basic {
        username: u.into(),
        password: Secret::new(p),
    };
    let src = format!("{}/src/app:v1", reg.addr());
    let dst = format!("{}/dst/app:v1", reg.addr());

    // The old keying (one credential per host, the destination's winning) fails here: bob
    // cannot read the source. This is what makes the ACLs below meaningful.
    let mut per_host = CredentialStore::new();
    per_host.insert(reg.addr(), None, basic("bob", "bob-pw"));
    let err = copy_with(
        client_with(per_host),
        &src,
        std::slice::from_ref(&dst),
        Default::default(),
    )
    .await
    .expect_err("bob alone cannot read the source");
    assert!(!format!("{err} {err:?}").contains("bob-pw"), "{err}");

    // Keyed by repository, as `ferry copy` builds it.
    let mut store = CredentialStore::new();
    store.insert_repository(reg.addr(), "src/app", basic("alice", "alice-pw"));
    store.insert_repository(reg.addr(), "dst/app", basic("bob", "bob-pw"));
    let before = issuer.requests_by_user().len();
    let report = copy_with(
        client_with(store),
        &src,
        std::slice::from_ref(&dst),
        Default::default(),
    )
    .await
    .expect("copy with one identity per repository");
    assert_eq!(
        report.digest.as_ref().map(|d| d.to_string()),
        Some(img.manifest.digest.clone())
    );
    assert_eq!(report.blobs_mounted, 0, "no mount across identities");

    let asked = issuer.requests_by_user()[before..].to_vec();
    let by = |user: &str| -> Vec<String> {
        asked
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, s)| s.clone())
            .collect()
    };
    let (alice, bob) = (by("alice"), by("bob"));
    assert!(!alice.is_empty() && !bob.is_empty(), "asked: {asked:?}");
    for scopes in &alice {
        assert!(
            scopes
                .split(' ')
                .all(|s| s.starts_with("repository:src/app:") && !s.contains("push")),
            "alice asked for {scopes:?}; all: {asked:?}"
        );
    }
    for scopes in &bob {
        assert!(
            scopes
                .split(' ')
                .all(|s| s.starts_with("repository:dst/app:")),
            "bob asked for {scopes:?}; all: {asked:?}"
        );
    }
    assert!(
        asked.iter().all(|(u, _)| u == "alice" || u == "bob"),
        "{asked:?}"
    );

    let raw = try_skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "bob:bob-pw",
        &format!("docker://{dst}"),
    ])
    .expect("inspect destination as bob");
    assert_eq!(raw, img.manifest_bytes);
}
