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
