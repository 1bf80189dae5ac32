//! EcrGrantMinter against moto (STS, ECR, IAM, DynamoDB), with the SDK's TRACE logs captured
//! to prove the clear token never reaches them.
//!
//! This test is alone in its binary on purpose: it captures logs with a thread-local
//! subscriber, and tracing caches each callsite's interest process-wide, so another test
//! hitting the same SDK callsites at the same time without a subscriber could turn the capture
//! off and make the "logs were captured" check fail at random. The minter's other tests are in
//! `minter_refusals.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::{install, unique, Fault, FaultProxy, Moto, ACCOUNT};
use ferry_aws::{DynamoStore, EcrGrantMinter, EcrGrantSettings};
use ferry_core::id::{Digest, Repository, SyncId};
use ferry_core::ports::{GrantId, GrantMinter};
use ferry_core::seal::{AgentKeypair, ClearGrant, GrantScheme};
// The pull role is created through moto's IAM query API (no IAM SDK crate just for a test).
use ferry_testkit::{create_role, Logs};

#[tokio::test(flavor = "current_thread")]
async fn a_minted_grant_opens_to_an_ecr_credential_scoped_to_one_repository() {
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let moto = Moto::start().await;
    let role = create_role(&moto.endpoint(), "ferry-pull").await;
    assert!(role.ends_with(":role/ferry-pull"), "{role}");
    let proxy = FaultProxy::start(moto.endpoint(), 0, Fault::Throttle429).await;
    let config = common::config_for(&proxy.endpoint()).await;
    let store = DynamoStore::new(&config, unique("ferry-jobs"));
    store.create_table().await.unwrap();
    let settings = EcrGrantSettings {
        pull_role_arn: role,
        registry_account_id: ACCOUNT.into(),
        region: "us-east-1".into(),
        registry_host: None,
    };
    let minter = EcrGrantMinter::new(&config, settings.clone(), store);

    let agent = AgentKeypair::generate().unwrap();
    let inst = install(agent.public_key_string());
    let repo = Repository::new("shop/web").unwrap();
    let digest = Digest::new(format!("sha256:{}", "cd".repeat(32))).unwrap();
    let sync = SyncId::new("s-grant-1").unwrap();
    let grant_id = GrantId::new(sync.clone(), 1);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let sealed = minter.mint(&inst, &repo, &digest, &grant_id).await.unwrap();

    // Opens with the agent's key, for this job only.
    let grant = ClearGrant::open(&agent, sealed.ciphertext(), &inst.id, &sync).unwrap();
    let other = SyncId::new("s-other").unwrap();
    assert!(ClearGrant::open(&agent, sealed.ciphertext(), &inst.id, &other).is_err());
    let stranger = AgentKeypair::generate().unwrap();
    assert!(ClearGrant::open(&stranger, sealed.ciphertext(), &inst.id, &sync).is_err());

    // ECR's token arrives split into a Basic credential: user `AWS`, the password.
    assert_eq!(grant.scheme, GrantScheme::Basic);
    assert_eq!(grant.username, "AWS");
    let password = grant.token.as_str();
    assert!(!password.is_empty());
    let wire = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{password}"));
    assert_eq!(
        grant.registry,
        format!("{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com")
    );
    assert_eq!(grant.repository, "shop/web");
    assert_eq!(grant.digest, digest.as_str());
    // moto's token claims to expire in 2015: the grant lasts 15 minutes instead, no more.
    assert_eq!(grant.expires_at, sealed.expires_at);
    assert!(sealed.expires_at > before);
    assert!(sealed.expires_at <= before + 15 * 60 * 1000 + 5_000);

    // The session policy on the wire names exactly one repository ARN.
    let bodies = proxy.bodies.lock().unwrap().clone();
    let assume = bodies
        .iter()
        .find(|b| b.contains("Action=AssumeRole"))
        .expect("an AssumeRole call");
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(assume.as_bytes())
            .into_owned()
            .collect();
    assert_eq!(form["DurationSeconds"], "900");
    assert_eq!(form["RoleArn"], settings.pull_role_arn);
    let policy: serde_json::Value = serde_json::from_str(&form["Policy"]).unwrap();
    let mut resources = Vec::new();
    for st in policy["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow");
        let actions: Vec<String> = match &st["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            v => v
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().into())
                .collect(),
        };
        if st["Resource"] == "*" {
            assert_eq!(
                actions,
                vec!["ecr:GetAuthorizationToken"],
                "only the token call is unscoped"
            );
        } else {
            resources.push(st["Resource"].as_str().unwrap().to_owned());
            for a in &actions {
                assert!(
                    ferry_aws::minter::PULL_ACTIONS.contains(&a.as_str()),
                    "{a} is not a pull action"
                );
            }
        }
    }
    assert_eq!(resources, vec![settings.repository_arn(&repo)]);
    assert_eq!(
        resources[0],
        format!("arn:aws:ecr:us-east-1:{ACCOUNT}:repository/shop/web")
    );

    // The clear token is nowhere: not in the sealed grant's JSON or Debug, not in the logs.
    let json = serde_json::to_string(&sealed).unwrap();
    let dbg = format!("{sealed:?} {grant:?}");
    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("minted a sealed ECR pull grant"),
        "{logged}"
    );
    // The SDK's own TRACE body logging ran, so the check below is not vacuous.
    assert!(
        logged.contains("read HTTP response body"),
        "SDK trace logs were captured"
    );
    for secret in [wire.as_str(), password] {
        assert!(!json.contains(secret), "token in the sealed grant's JSON");
        assert!(!dbg.contains(secret), "token in Debug output");
        if let Some(line) = logged.lines().find(|l| l.contains(secret)) {
            panic!("token in the logs: {}", &line[..line.len().min(600)]);
        }
    }

    // Revocation is recorded per attempt and read back; revoking twice is fine; a revoked
    // attempt is never minted again, the next attempt is.
    assert!(!minter.is_revoked(&grant_id).await.unwrap());
    minter.revoke(&grant_id).await.unwrap();
    minter.revoke(&grant_id).await.unwrap();
    assert!(minter.is_revoked(&grant_id).await.unwrap());
    let again = minter
        .mint(&inst, &repo, &digest, &grant_id)
        .await
        .unwrap_err();
    assert!(again.to_string().contains("was revoked"), "{again}");
    let next = GrantId::new(sync.clone(), 2);
    assert!(!minter.is_revoked(&next).await.unwrap());
    minter.mint(&inst, &repo, &digest, &next).await.unwrap();
}
