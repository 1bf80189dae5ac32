//! EcrGrantMinter refusals and EcrRepositories against moto. (The minting test with captured
//! SDK logs is alone in `minter.rs`; see there why.)

#![allow(clippy::unwrap_used)]

mod common;

use common::{install, unique, Moto, ACCOUNT};
use ferry_aws::{DynamoStore, EcrGrantMinter, EcrGrantSettings, EcrRepositories};
use ferry_core::id::{Digest, Repository, SyncId};
use ferry_core::ports::{GrantError, GrantId, GrantMinter};

#[tokio::test]
async fn a_bad_agent_key_is_refused() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    let store = DynamoStore::new(&config, unique("ferry-jobs"));
    // The minter reads the revocation record before it mints.
    store.create_table().await.unwrap();
    let minter = EcrGrantMinter::new(
        &config,
        EcrGrantSettings {
            pull_role_arn: format!("arn:aws:iam::{ACCOUNT}:role/ferry-pull"),
            registry_account_id: ACCOUNT.into(),
            region: "us-east-1".into(),
            registry_host: Some("registry.test".into()),
        },
        store,
    );
    let err = minter
        .mint(
            &install("not-a-key".into()),
            &Repository::new("shop/web").unwrap(),
            &Digest::new(format!("sha256:{}", "cd".repeat(32))).unwrap(),
            &GrantId::new(SyncId::new("s-1").unwrap(), 1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GrantError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("i-acme"), "{err}");
}

#[tokio::test]
async fn vendor_repositories_are_created_immutable_once() {
    let moto = Moto::start().await;
    let repos = EcrRepositories::new(&moto.config().await);
    let name = Repository::new("shop/api").unwrap();
    let first = repos.ensure_repository(&name).await.unwrap();
    assert!(first.immutable, "{first:?}");
    assert!(first.arn.ends_with(":repository/shop/api"), "{first:?}");
    let again = repos.ensure_repository(&name).await.unwrap();
    assert_eq!(again, first, "ensure_repository is idempotent");
}

/// Every repository the agent writes carries the install's protections (the install stack
/// passes them as FERRY_REPOSITORY_POLICY / FERRY_LIFECYCLE_POLICY): checked with ECR's own
/// GetRepositoryPolicy and GetLifecyclePolicy, for a repository the agent creates and for one
/// that already existed without them.
#[tokio::test]
async fn agent_repositories_get_the_install_policy_lifecycle_and_immutability() {
    use ferry_aws::agent::{InstallEcr, RepositoryProtections};

    let moto = Moto::start().await;
    let config = moto.config().await;
    let agent_role = format!("arn:aws:iam::{ACCOUNT}:role/ferry-agent-acme");
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "OnlyTheAgentPushes", "Effect": "Deny", "Principal": "*",
            "Action": ["ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
                       "ecr:CompleteLayerUpload", "ecr:BatchDeleteImage"],
            "Condition": {"ArnNotEquals": {"aws:PrincipalArn": agent_role}}
        }]
    });
    let lifecycle = r#"{"rules":[{"rulePriority":1,"description":"keep in-use","selection":{"tagStatus":"tagged","tagPrefixList":["in-use-"],"countType":"imageCountMoreThan","countNumber":10000},"action":{"type":"expire"}}]}"#;
    let ecr = InstallEcr::new(&config).with_protections(RepositoryProtections {
        policy: Some(policy.to_string()),
        lifecycle: Some(lifecycle.into()),
    });
    let client = aws_sdk_ecr::Client::new(&config);
    // One that existed before, without any policy (an older agent, or made by hand).
    client
        .create_repository()
        .repository_name("ferry/demo/old")
        .send()
        .await
        .unwrap();
    for name in ["ferry/demo/web", "ferry/demo/old"] {
        ecr.ensure_repository(name).await.unwrap();
        // Twice is fine (another task, a restart).
        ecr.ensure_repository(name).await.unwrap();
        let got = client
            .get_repository_policy()
            .repository_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name} has no repository policy: {e:?}"));
        let got: serde_json::Value =
            serde_json::from_str(got.policy_text().unwrap_or_default()).unwrap();
        assert_eq!(got, policy, "{name}");
        let got = client
            .get_lifecycle_policy()
            .repository_name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name} has no lifecycle policy: {e:?}"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(got.lifecycle_policy_text().unwrap())
                .unwrap(),
            serde_json::from_str::<serde_json::Value>(lifecycle).unwrap(),
            "{name}"
        );
    }
    let created = client
        .describe_repositories()
        .repository_names("ferry/demo/web")
        .send()
        .await
        .unwrap();
    let repo = &created.repositories()[0];
    assert_eq!(
        repo.image_tag_mutability(),
        Some(&aws_sdk_ecr::types::ImageTagMutability::Immutable)
    );

    // Without protections configured nothing is put (the check above could fail).
    InstallEcr::new(&config)
        .ensure_repository("ferry/demo/bare")
        .await
        .unwrap();
    assert!(client
        .get_repository_policy()
        .repository_name("ferry/demo/bare")
        .send()
        .await
        .is_err());
}
