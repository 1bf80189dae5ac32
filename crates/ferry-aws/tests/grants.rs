//! The grants kill switch against moto's IAM: the "revoke older sessions" policy lands on the
//! pull role, with the moment it was asked for, and moving it forward replaces it.
#![cfg(feature = "iam")]
#![allow(clippy::unwrap_used)]

mod common;

use common::{unique, Moto};
use ferry_aws::grants::{revoke_grants_issued_before, RevokeError, REVOKE_POLICY_NAME};
use ferry_testkit::create_role;

async fn policy_of(config: &ferry_aws::SdkConfig, role: &str) -> serde_json::Value {
    let iam = aws_sdk_iam::Client::new(config);
    let got = iam
        .get_role_policy()
        .role_name(role)
        .policy_name(REVOKE_POLICY_NAME)
        .send()
        .await
        .unwrap();
    // IAM answers the document URL-encoded.
    let raw = got.policy_document();
    let text = url_decode(raw);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn revoke_all_denies_older_sessions_of_the_pull_role_and_moves_forward() {
    let moto = Moto::start().await;
    let config = moto.config().await;
    let name = unique("ferry-pull");
    let arn = create_role(&moto.endpoint(), &name).await;

    let got = revoke_grants_issued_before(&config, &arn, 1_767_225_600_000)
        .await
        .unwrap();
    assert_eq!(got, name, "the ARN names the role");
    let doc = policy_of(&config, &name).await;
    let st = &doc["Statement"][0];
    assert_eq!(st["Effect"], "Deny", "{doc}");
    assert_eq!(st["Action"][0], "*");
    assert_eq!(
        st["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
        "2026-01-01T00:00:00Z"
    );

    // Again, later: the one policy now names the later moment.
    revoke_grants_issued_before(&config, &name, 1_767_225_660_000)
        .await
        .unwrap();
    let doc = policy_of(&config, &name).await;
    assert_eq!(
        doc["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"],
        "2026-01-01T00:01:00Z"
    );

    // A role that does not exist: a clear refusal, nothing changed.
    let err = revoke_grants_issued_before(&config, "no-such-role", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, RevokeError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("iam:PutRolePolicy"), "{err}");
}
