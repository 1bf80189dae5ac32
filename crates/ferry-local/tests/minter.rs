//! LocalGrantMinter against the real embedded registry and its AccessControl.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ferry_core::domain::{Install, RegistryTarget};
use ferry_core::id::{AppName, Digest as CoreDigest, InstallId, QueueName, Repository, SyncId};
use ferry_core::ports::{GrantError, GrantId, GrantMinter};
use ferry_core::seal::{AgentKeypair, ClearGrant};
use ferry_local::minter::LocalGrantMinter;
use ferry_oci::{
    ClientConfig, Credential, CredentialStore, Digest, RegistryClient, RepoRef, Secret,
};
use ferry_registry::access::identity::Identity;
use ferry_registry::access::{AccessControl, AccessPolicy, AuthConfig};
use ferry_registry::server::{RegistryServer, RunningRegistry};

struct Env {
    _dir: tempfile::TempDir,
    host: String,
    minter: LocalGrantMinter,
    _running: RunningRegistry,
}

async fn start() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("registry");
    let mut policy = AccessPolicy::new();
    policy
        .add_identity(Identity::Agent("a".into()), "secret-a-0123456789")
        .add_identity(Identity::Agent("b".into()), "secret-b-0123456789");
    let ac = Arc::new(
        AccessControl::open(AuthConfig::new("ferry-test", root.join("auth")), policy).unwrap(),
    );
    let running = RegistryServer::builder(&root)
        .authorizer(ac.clone())
        .build()
        .unwrap()
        .spawn()
        .await
        .unwrap();
    let host = running.host();
    Env {
        _dir: dir,
        minter: LocalGrantMinter::new(ac, host.clone()),
        host,
        _running: running,
    }
}

fn install(id: &str, key: &AgentKeypair) -> Install {
    Install {
        id: InstallId::new(id).unwrap(),
        app: AppName::new("demo").unwrap(),
        registry: RegistryTarget {
            endpoint: "127.0.0.1:1".into(),
            namespace: format!("installs/{id}"),
        },
        agent_public_key: key.public_key_string(),
        agent_report_key: key.report_key().public_key_string(),
        queue: QueueName::new(format!("install-{id}")).unwrap(),
        components: vec![],
    }
}

fn digest() -> CoreDigest {
    CoreDigest::new(Digest::of(b"some manifest").as_str()).unwrap()
}

fn bearer(host: &str, token: &str) -> RegistryClient {
    let mut store = CredentialStore::new();
    store.insert(host, None, Credential::Bearer(Secret::new(token)));
    RegistryClient::new(ClientConfig {
        credentials: store,
        ..ClientConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn sealed_grant_never_holds_the_token_in_clear_and_opens_only_for_its_job() {
    let env = start().await;
    let key = AgentKeypair::generate().unwrap();
    let a = install("a", &key);
    let repo = Repository::new("vendor/demo/app").unwrap();
    let sync = SyncId::new("s-1").unwrap();
    let grant_id = GrantId::new(sync.clone(), 1);
    let sealed = env
        .minter
        .mint(&a, &repo, &digest(), &grant_id)
        .await
        .unwrap();
    let grant = ClearGrant::open(&key, sealed.ciphertext(), &a.id, &sync).unwrap();
    assert_eq!(grant.repository, "vendor/demo/app");
    assert_eq!(grant.digest, digest().as_str());
    assert_eq!(grant.registry, env.host);
    assert_eq!(grant.expires_at, sealed.expires_at);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(sealed.expires_at > now_ms && sealed.expires_at <= now_ms + 15 * 60 * 1000 + 1000);
    let token = grant.token.clone();
    assert!(token.len() > 20);
    let ct = sealed.ciphertext();
    assert!(!ct.windows(token.len()).any(|w| w == token.as_bytes()));
    // Nor any long piece of it (the JWT's header or claims).
    for piece in token.split('.') {
        assert!(!ct.windows(piece.len()).any(|w| w == piece.as_bytes()));
    }
    let dbg = format!("{sealed:?} {grant:?}");
    let json = serde_json::to_string(&sealed).unwrap();
    assert!(!dbg.contains(&token) && !json.contains(&token));
    // Another job's associated data cannot open it.
    assert!(ClearGrant::open(&key, ct, &a.id, &SyncId::new("s-2").unwrap()).is_err());
}

#[tokio::test]
async fn a_revoked_grant_is_refused_by_the_registry() {
    let env = start().await;
    let key = AgentKeypair::generate().unwrap();
    let a = install("a", &key);
    let repo = Repository::new("vendor/demo/app").unwrap();
    let sync = SyncId::new("s-rev").unwrap();
    let grant_id = GrantId::new(sync.clone(), 1);
    let sealed = env
        .minter
        .mint(&a, &repo, &digest(), &grant_id)
        .await
        .unwrap();
    let token = ClearGrant::open(&key, sealed.ciphertext(), &a.id, &sync)
        .unwrap()
        .token
        .clone();
    let c = bearer(&env.host, &token);
    let r = RepoRef::new(env.host.clone(), "vendor/demo/app");
    // Authorized (the manifest simply is not there): 404, not 401/403.
    let before = c.get_manifest(&r, digest().as_str()).await.unwrap_err();
    assert!(
        matches!(before, ferry_oci::Error::NotFound { .. }),
        "{before}"
    );
    env.minter.revoke(&grant_id).await.unwrap();
    env.minter.revoke(&grant_id).await.unwrap();
    let after = c.get_manifest(&r, digest().as_str()).await.unwrap_err();
    assert!(matches!(after, ferry_oci::Error::Auth { .. }), "{after}");
    assert!(!after.to_string().contains(&token));
    // And no new grant is minted for a revoked attempt...
    let again = env
        .minter
        .mint(&a, &repo, &digest(), &grant_id)
        .await
        .unwrap_err();
    assert!(matches!(again, GrantError::Refused { .. }), "{again}");
    assert!(env.minter.is_revoked(&grant_id).await.unwrap());
    // ...but the sync's next attempt gets a fresh one (the re-mint after grant_expired).
    let next = GrantId::new(sync.clone(), 2);
    assert!(!env.minter.is_revoked(&next).await.unwrap());
    let fresh = env.minter.mint(&a, &repo, &digest(), &next).await.unwrap();
    let token2 = ClearGrant::open(&key, fresh.ciphertext(), &a.id, &sync)
        .unwrap()
        .token
        .clone();
    let c2 = bearer(&env.host, &token2);
    let ok = c2.get_manifest(&r, digest().as_str()).await.unwrap_err();
    assert!(matches!(ok, ferry_oci::Error::NotFound { .. }), "{ok}");
}

#[tokio::test]
async fn install_b_cannot_open_a_grant_nor_push_with_a_stolen_token() {
    let env = start().await;
    let key_a = AgentKeypair::generate().unwrap();
    let key_b = AgentKeypair::generate().unwrap();
    let a = install("a", &key_a);
    let repo = Repository::new("vendor/demo/app").unwrap();
    let sync = SyncId::new("s-iso").unwrap();
    let grant_id = GrantId::new(sync.clone(), 1);
    let sealed = env
        .minter
        .mint(&a, &repo, &digest(), &grant_id)
        .await
        .unwrap();
    for id in ["a", "b"] {
        let id = InstallId::new(id).unwrap();
        assert!(ClearGrant::open(&key_b, sealed.ciphertext(), &id, &sync).is_err());
    }
    let token = ClearGrant::open(&key_a, sealed.ciphertext(), &a.id, &sync)
        .unwrap()
        .token
        .clone();
    let c = bearer(&env.host, &token);
    let empty = Digest::of(b"");
    for target in [
        "installs/b/demo/app",
        "installs/a/demo/app",
        "vendor/demo/app",
        "vendor/demo/other",
    ] {
        let r = RepoRef::new(env.host.clone(), target);
        let e = c
            .upload_blob(&r, &empty, 0, Box::pin(futures::stream::empty()))
            .await
            .expect_err("a grant is pull-only");
        assert!(!e.to_string().contains(&token), "{e}");
    }
    // Pulling another repository with it is refused too.
    let other = RepoRef::new(env.host.clone(), "vendor/demo/other");
    let e = c.get_manifest(&other, digest().as_str()).await.unwrap_err();
    assert!(!matches!(e, ferry_oci::Error::NotFound { .. }), "{e}");
}

#[tokio::test]
async fn a_bad_agent_key_or_a_non_vendor_repository_is_refused() {
    let env = start().await;
    let key = AgentKeypair::generate().unwrap();
    let mut a = install("a", &key);
    let sync = SyncId::new("s-bad").unwrap();
    let grant_id = GrantId::new(sync.clone(), 1);
    let installs_repo = Repository::new("installs/a/demo/app").unwrap();
    let e = env
        .minter
        .mint(&a, &installs_repo, &digest(), &grant_id)
        .await
        .unwrap_err();
    assert!(matches!(e, GrantError::Refused { .. }), "{e}");
    a.agent_public_key = "not-a-key".into();
    let repo = Repository::new("vendor/demo/app").unwrap();
    let e = env
        .minter
        .mint(&a, &repo, &digest(), &grant_id)
        .await
        .unwrap_err();
    assert!(matches!(e, GrantError::Refused { .. }), "{e}");
}
