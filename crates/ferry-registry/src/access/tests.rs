//! Unit tests for the policy matrix, token issue and request-time authorization.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::*;

const T0: u64 = 1_700_000_000;

struct Graph(HashMap<String, Vec<String>>);

impl GraphLookup for Graph {
    fn manifest_references(&self, repository: &str, manifest_digest: &str) -> Option<Vec<String>> {
        self.0
            .get(&format!("{repository}@{manifest_digest}"))
            .cloned()
    }
    fn resolve_tag(&self, repository: &str, tag: &str) -> Option<String> {
        self.0
            .get(&format!("tag:{repository}:{tag}"))
            .and_then(|v| v.first().cloned())
    }
    fn referrers_of(&self, repository: &str, digest: &str, limit: usize) -> Vec<String> {
        let mut r = self
            .0
            .get(&format!("referrers:{repository}@{digest}"))
            .cloned()
            .unwrap_or_default();
        r.truncate(limit);
        r
    }
}

fn d(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn graph() -> Graph {
    let mut m = HashMap::new();
    // An index `a` with child manifest `b`, which has config `c` and layer `e`.
    m.insert(
        format!("vendor/app@{}", d('a')),
        vec![d('b'), d('c'), d('e')],
    );
    m.insert(format!("vendor/app@{}", d('b')), vec![d('c'), d('e')]);
    m.insert(format!("vendor/app@{}", d('f')), vec![d('9')]);
    Graph(m)
}

fn policy() -> AccessPolicy {
    let mut p = AccessPolicy::new();
    p.add_identity(Identity::Vendor, "vendor-secret")
        .add_identity(Identity::Agent("a".into()), "agent-a-secret")
        .add_identity(Identity::Agent("b".into()), "agent-b-secret")
        .add_identity(Identity::Node("a".into()), "node-a-secret")
        .add_identity(Identity::Admin, "admin-secret");
    p
}

struct Fixture {
    _dir: tempfile::TempDir,
    ac: AccessControl,
    clock: Arc<AtomicU64>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicU64::new(T0));
    let c = clock.clone();
    let mut cfg = AuthConfig::new("ferry-test", dir.path().join("auth"));
    cfg.realm = "http://127.0.0.1:1/token".into();
    let ac = AccessControl::open(cfg, policy())
        .unwrap()
        .with_clock(move || c.load(Ordering::SeqCst));
    Fixture {
        _dir: dir,
        ac,
        clock,
    }
}

fn scope(s: &str) -> RequestedScope {
    RequestedScope::parse(s).unwrap()
}

fn bearer(t: &IssuedToken) -> String {
    format!("Bearer {}", t.token)
}

fn auth(
    ac: &AccessControl,
    header: Option<&str>,
    repo: &str,
    action: Action,
    target: Target,
) -> Result<Principal, Denied> {
    ac.authorize(header, repo, action, &target, &graph())
}

fn is_401(r: &Result<Principal, Denied>) -> bool {
    matches!(r, Err(Denied::Unauthorized { .. }))
}

fn is_403(r: &Result<Principal, Denied>) -> bool {
    matches!(r, Err(Denied::Forbidden { .. }))
}

#[test]
fn namespace_policy_matrix() {
    use Action::*;
    let p = policy();
    let vendor = Identity::Vendor;
    let a = Identity::Agent("a".into());
    let b = Identity::Agent("b".into());
    let admin = Identity::Admin;
    let node_a = Identity::Node("a".into());
    let node_b = Identity::Node("b".into());
    let stranger = Identity::Agent("zz".into());
    let cases: &[(&Identity, &str, &[Action])] = &[
        (&vendor, "vendor/app", &[Pull, Push]),
        (&vendor, "vendor/team/app", &[Pull, Push]),
        (&vendor, "installs/a/app", &[]),
        (&vendor, "other/app", &[]),
        (&vendor, "vendor", &[]),
        (&a, "installs/a/app", &[Pull, Push]),
        (&a, "installs/a/deep/app", &[Pull, Push]),
        (&a, "installs/b/app", &[]),
        (&a, "installs/a", &[]),
        (&a, "vendor/app", &[]),
        (&b, "installs/b/app", &[Pull, Push]),
        (&b, "installs/a/app", &[]),
        (&admin, "vendor/app", &[Pull, Push, Delete]),
        (&admin, "installs/a/app", &[Pull]),
        (&admin, "other/app", &[]),
        // An install's nodes: pull their own install only, never push or delete.
        (&node_a, "installs/a/app", &[Pull]),
        (&node_a, "installs/a/deep/app", &[Pull]),
        (&node_a, "installs/b/app", &[]),
        (&node_a, "vendor/app", &[]),
        (&node_a, "other/app", &[]),
        // Not registered: nothing.
        (&node_b, "installs/b/app", &[]),
        // Unknown identity: nothing, even in "its" namespace.
        (&stranger, "installs/zz/app", &[]),
        // Invalid names never match.
        (&vendor, "vendor/App", &[]),
        (&vendor, "vendor/../installs/a/x", &[]),
    ];
    for (identity, repo, want) in cases {
        assert_eq!(
            p.allowed_actions(identity, repo),
            want.to_vec(),
            "{identity} on {repo}"
        );
    }
    assert!(p.may_list_catalog(&admin));
    assert!(!p.may_list_catalog(&vendor));
    assert_eq!(p.namespace("installs/a/x"), Namespace::Install("a".into()));
    assert_eq!(p.namespace("vendorx/app"), Namespace::Other);
}

#[test]
fn repository_names_and_digests_are_validated() {
    for ok in ["a", "vendor/app", "a.b/c_d/e__f/g--h", "x0/1y"] {
        assert!(valid_repository(ok), "{ok}");
    }
    for bad in [
        "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a.", "a b", "a:b",
    ] {
        assert!(!valid_repository(bad), "{bad}");
    }
    assert!(is_digest(&d('a')));
    assert!(!is_digest("sha256:ABC"));
    assert!(!is_digest("latest"));
    assert!(!is_digest(&format!("md5:{}", "a".repeat(64))));
}

#[test]
fn scopes_parse_and_issue_intersects_with_policy() {
    let f = fixture();
    assert_eq!(
        RequestedScope::parse("repository:vendor/app:pull,push"),
        Some(RequestedScope {
            kind: "repository".into(),
            name: "vendor/app".into(),
            actions: vec!["pull".into(), "push".into()],
        })
    );
    assert_eq!(RequestedScope::parse("repository:vendor/app"), None);
    let t =
        f.ac.issue(
            &Identity::Vendor,
            &[
                scope("repository:vendor/app:pull,push,delete"),
                scope("repository:installs/a/app:pull,push"),
                scope("registry:catalog:*"),
                scope("repository:vendor/other:*"),
            ],
        )
        .unwrap();
    assert_eq!(
        t.access,
        vec![
            AccessEntry::repository("vendor/app", &["pull", "push"]),
            AccessEntry::repository("vendor/other", &["pull", "push"]),
        ]
    );
    assert_eq!(t.expires_at - t.issued_at, 300);
    let dbg = format!("{t:?}");
    assert!(!dbg.contains(&t.token) && dbg.contains("redacted"));
}

#[test]
fn missing_basic_or_garbage_credentials_get_a_bearer_challenge() {
    let f = fixture();
    for header in [
        None,
        Some("Basic dmVuZG9yOnZlbmRvci1zZWNyZXQ="),
        Some("Bearer "),
        Some("Bearer abc.def.ghi"),
    ] {
        let r = auth(
            &f.ac,
            header,
            "vendor/app",
            Action::Push,
            Target::Repository,
        );
        match r {
            Err(Denied::Unauthorized {
                challenge:
                    Challenge::Bearer {
                        realm,
                        service,
                        scope,
                    },
                message,
            }) => {
                assert_eq!(realm, "http://127.0.0.1:1/token");
                assert_eq!(service, "ferry-test");
                assert_eq!(scope, "repository:vendor/app:pull,push");
                assert!(message.contains("/token"), "{message}");
                assert!(!message.contains("abc.def"));
            }
            other => panic!("{header:?}: {other:?}"),
        }
    }
}

#[test]
fn identity_tokens_follow_token_scope_and_policy() {
    let f = fixture();
    let vendor =
        f.ac.issue(
            &Identity::Vendor,
            &[scope("repository:vendor/app:pull,push")],
        )
        .unwrap();
    let h = bearer(&vendor);
    let ok = auth(
        &f.ac,
        Some(&h),
        "vendor/app",
        Action::Push,
        Target::Repository,
    )
    .unwrap();
    assert_eq!(ok.subject, "vendor");
    // Right identity, repository not in the token.
    assert!(is_403(&auth(
        &f.ac,
        Some(&h),
        "vendor/other",
        Action::Pull,
        Target::Repository
    )));

    let pull_only =
        f.ac.issue(&Identity::Vendor, &[scope("repository:vendor/app:pull")])
            .unwrap();
    let r = auth(
        &f.ac,
        Some(&bearer(&pull_only)),
        "vendor/app",
        Action::Push,
        Target::Repository,
    );
    match &r {
        Err(Denied::Forbidden { message }) => {
            assert!(
                message.contains("repository:vendor/app:pull,push"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }

    let agent_a =
        f.ac.issue(
            &Identity::Agent("a".into()),
            &[
                scope("repository:installs/a/app:pull,push"),
                scope("repository:installs/b/app:pull,push"),
            ],
        )
        .unwrap();
    assert_eq!(agent_a.access.len(), 1, "install b left out");
    let ha = bearer(&agent_a);
    assert!(auth(
        &f.ac,
        Some(&ha),
        "installs/a/app",
        Action::Push,
        Target::Repository
    )
    .is_ok());
    assert!(is_403(&auth(
        &f.ac,
        Some(&ha),
        "installs/b/app",
        Action::Push,
        Target::Repository
    )));
    assert!(is_403(&auth(
        &f.ac,
        Some(&ha),
        "installs/a/app",
        Action::Delete,
        Target::Repository
    )));
}

#[test]
fn a_signed_token_claiming_more_than_policy_is_still_refused() {
    let f = fixture();
    // Signed by the registry's own key, but claims push into an install for the vendor.
    let forged =
        f.ac.sign(
            "vendor".into(),
            vec![AccessEntry::repository("installs/a/app", &["pull", "push"])],
            300,
            None,
        )
        .unwrap();
    let r = auth(
        &f.ac,
        Some(&bearer(&forged)),
        "installs/a/app",
        Action::Push,
        Target::Repository,
    );
    match &r {
        Err(Denied::Forbidden { message }) => {
            assert!(message.contains("only agent:a writes"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn expired_tokens_and_removed_identities_are_refused() {
    let f = fixture();
    let t =
        f.ac.issue(
            &Identity::Agent("a".into()),
            &[scope("repository:installs/a/app:pull")],
        )
        .unwrap();
    let h = bearer(&t);
    assert!(auth(
        &f.ac,
        Some(&h),
        "installs/a/app",
        Action::Pull,
        Target::Repository
    )
    .is_ok());
    f.ac.update_policy(|p| p.remove_identity(&Identity::Agent("a".into())));
    assert!(is_401(&auth(
        &f.ac,
        Some(&h),
        "installs/a/app",
        Action::Pull,
        Target::Repository
    )));
    f.ac.update_policy(|p| {
        p.add_identity(Identity::Agent("a".into()), "new");
    });
    assert!(auth(
        &f.ac,
        Some(&h),
        "installs/a/app",
        Action::Pull,
        Target::Repository
    )
    .is_ok());
    f.clock
        .store(t.expires_at + LEEWAY_SECS + 1, Ordering::SeqCst);
    let r = auth(
        &f.ac,
        Some(&h),
        "installs/a/app",
        Action::Pull,
        Target::Repository,
    );
    match &r {
        Err(Denied::Unauthorized { message, .. }) => assert!(message.contains("expired")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn catalog_is_admin_only() {
    let f = fixture();
    let admin =
        f.ac.issue(&Identity::Admin, &[scope("registry:catalog:*")])
            .unwrap();
    assert!(auth(
        &f.ac,
        Some(&bearer(&admin)),
        "",
        Action::Pull,
        Target::Catalog
    )
    .is_ok());
    let vendor =
        f.ac.issue(&Identity::Vendor, &[scope("registry:catalog:*")])
            .unwrap();
    assert!(vendor.access.is_empty());
    assert!(is_403(&auth(
        &f.ac,
        Some(&bearer(&vendor)),
        "",
        Action::Pull,
        Target::Catalog
    )));
    match auth(&f.ac, None, "", Action::Pull, Target::Catalog) {
        Err(Denied::Unauthorized {
            challenge: Challenge::Bearer { scope, .. },
            ..
        }) => assert_eq!(scope, "registry:catalog:*"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn anonymous_pull_only_when_configured_and_only_vendor() {
    let f = fixture();
    assert!(is_401(&auth(
        &f.ac,
        None,
        "vendor/app",
        Action::Pull,
        Target::Repository
    )));
    f.ac.update_policy(|p| {
        p.allow_anonymous_vendor_pull(true);
    });
    assert!(auth(&f.ac, None, "vendor/app", Action::Pull, Target::Repository).is_ok());
    assert!(is_401(&auth(
        &f.ac,
        None,
        "vendor/app",
        Action::Push,
        Target::Repository
    )));
    assert!(is_401(&auth(
        &f.ac,
        None,
        "installs/a/app",
        Action::Pull,
        Target::Repository
    )));
}

#[test]
fn grant_allows_exactly_its_graph() {
    let f = fixture();
    let g =
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-1",
            Duration::from_secs(600),
        )
        .unwrap();
    let h = bearer(&g);
    let pull = |repo: &str, target: Target| auth(&f.ac, Some(&h), repo, Action::Pull, target);
    assert_eq!(
        pull("vendor/app", Target::Manifest(d('a')))
            .unwrap()
            .subject,
        "grant:job-1"
    );
    assert!(
        pull("vendor/app", Target::Manifest(d('b'))).is_ok(),
        "child manifest"
    );
    assert!(pull("vendor/app", Target::Blob(d('c'))).is_ok());
    assert!(pull("vendor/app", Target::Blob(d('e'))).is_ok());
    // Another artifact's manifest and blobs in the same repository.
    assert!(is_403(&pull("vendor/app", Target::Manifest(d('f')))));
    assert!(is_403(&pull("vendor/app", Target::Blob(d('9')))));
    assert!(
        is_403(&pull("vendor/app", Target::Blob(d('a')))),
        "the root is a manifest, not a blob"
    );
    // By tag, tag list, other repository, install namespace, push.
    assert!(is_403(&pull(
        "vendor/app",
        Target::Manifest("latest".into())
    )));
    assert!(is_403(&pull("vendor/app", Target::Repository)));
    assert!(is_403(&pull("vendor/other", Target::Manifest(d('a')))));
    assert!(is_403(&pull("installs/a/app", Target::Manifest(d('a')))));
    assert!(is_403(&auth(
        &f.ac,
        Some(&h),
        "vendor/app",
        Action::Push,
        Target::Manifest(d('a'))
    )));
    assert!(is_403(&auth(
        &f.ac,
        Some(&h),
        "installs/a/app",
        Action::Push,
        Target::Blob(d('c'))
    )));
}

#[test]
fn grant_minting_is_validated_and_clamped() {
    let f = fixture();
    let g =
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-1",
            Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(g.expires_at - g.issued_at, MAX_TOKEN_TTL_SECS);
    let bad = [
        f.ac.mint_grant("a", "installs/a/app", &d('a'), "j", Duration::from_secs(60)),
        f.ac.mint_grant("a", "vendor/app", "latest", "j", Duration::from_secs(60)),
        f.ac.mint_grant("A/B", "vendor/app", &d('a'), "j", Duration::from_secs(60)),
        f.ac.mint_grant("a", "vendor/app", &d('a'), "", Duration::from_secs(60)),
        f.ac.mint_grant("a", "vendor/app", &d('a'), "a b", Duration::from_secs(60)),
    ];
    for r in bad {
        assert!(r.is_err());
    }
    // Expiry: refused once past exp plus leeway.
    let h = bearer(&g);
    f.clock
        .store(g.expires_at + LEEWAY_SECS + 1, Ordering::SeqCst);
    assert!(is_401(&auth(
        &f.ac,
        Some(&h),
        "vendor/app",
        Action::Pull,
        Target::Manifest(d('a'))
    )));
}

#[test]
fn revoked_grants_stay_refused_across_restart() {
    let f = fixture();
    let g =
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-9",
            Duration::from_secs(600),
        )
        .unwrap();
    let other =
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-10",
            Duration::from_secs(600),
        )
        .unwrap();
    let h = bearer(&g);
    assert!(auth(
        &f.ac,
        Some(&h),
        "vendor/app",
        Action::Pull,
        Target::Manifest(d('a'))
    )
    .is_ok());
    f.ac.revoke_grant("job-9").unwrap();
    let r = auth(
        &f.ac,
        Some(&h),
        "vendor/app",
        Action::Pull,
        Target::Manifest(d('a')),
    );
    match &r {
        Err(Denied::Unauthorized { message, .. }) => assert!(message.contains("revoked")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-9",
            Duration::from_secs(600)
        ),
        Err(AuthError::JobRevoked(_))
    ));
    // Revoking by jti works too.
    f.ac.revoke_grant(&other.jti).unwrap();
    assert!(is_401(&auth(
        &f.ac,
        Some(&bearer(&other)),
        "vendor/app",
        Action::Pull,
        Target::Manifest(d('a'))
    )));

    // A second instance over the same state dir (a restart) verifies with the same key and
    // still refuses.
    let restarted = AccessControl::open(
        AuthConfig::new("ferry-test", f.ac.revocations.path().parent().unwrap()),
        policy(),
    )
    .unwrap()
    .with_clock(move || T0 + 1);
    assert!(is_401(&auth(
        &restarted,
        Some(&h),
        "vendor/app",
        Action::Pull,
        Target::Manifest(d('a'))
    )));
    let fresh =
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-11",
            Duration::from_secs(600),
        )
        .unwrap();
    assert!(auth(
        &restarted,
        Some(&bearer(&fresh)),
        "vendor/app",
        Action::Pull,
        Target::Manifest(d('a'))
    )
    .is_ok());

    // Pruned only once every token it could match has expired.
    assert_eq!(f.ac.prune_revocations().unwrap(), 0);
    f.clock
        .store(T0 + MAX_TOKEN_TTL_SECS + LEEWAY_SECS + 2, Ordering::SeqCst);
    assert_eq!(f.ac.prune_revocations().unwrap(), 2);
}

#[test]
fn refusal_messages_never_contain_the_token() {
    let f = fixture();
    let t =
        f.ac.issue(&Identity::Vendor, &[scope("repository:vendor/app:pull")])
            .unwrap();
    let mut tampered = t.token.clone();
    tampered.insert(5, 'x');
    for header in [bearer(&t), format!("Bearer {tampered}")] {
        for (repo, action) in [("vendor/app", Action::Push), ("installs/a/x", Action::Push)] {
            let r = auth(&f.ac, Some(&header), repo, action, Target::Repository);
            let text = format!("{r:?}");
            assert!(r.is_err());
            assert!(!text.contains(&t.token[10..40]), "{text}");
        }
    }
    assert!(!format!("{:?}", f.ac).contains(&t.token));
}

#[test]
fn revoke_all_refuses_older_grants_even_when_set_by_another_process_and_newer_ones_work() {
    let f = fixture();
    let old =
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-old",
            Duration::from_secs(600),
        )
        .unwrap();
    let h_old = bearer(&old);
    let pull = |h: &str| {
        auth(
            &f.ac,
            Some(h),
            "vendor/app",
            Action::Pull,
            Target::Manifest(d('a')),
        )
    };
    assert!(pull(&h_old).is_ok());
    // Another process (the CLI) moves the moment forward through the state dir only.
    let state_dir = f.ac.revocations.path().parent().unwrap().to_path_buf();
    f.clock.store(T0 + 10, Ordering::SeqCst);
    super::revoke_grants_issued_before(&state_dir, T0 + 10).unwrap();
    match pull(&h_old) {
        Err(Denied::Unauthorized { message, .. }) => assert!(message.contains("revoked")),
        other => panic!("an older grant must be refused: {other:?}"),
    }
    // A grant minted afterwards works; identity tokens are not affected.
    let new =
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-new",
            Duration::from_secs(600),
        )
        .unwrap();
    assert!(pull(&bearer(&new)).is_ok());
    // The server's own method does the same, and never moves the moment backward.
    assert_eq!(f.ac.revoke_grants_issued_before(T0).unwrap(), T0 + 10);
    assert!(pull(&bearer(&new)).is_ok());
}

/// A grant also reads what travels with its artifact: the referrers of its manifest (and of
/// the manifests it references) with their blobs, and the cosign tags of its digest; nothing
/// attached to another artifact.
#[test]
fn grant_allows_the_referrers_and_signature_tags_of_its_digest_only() {
    let mut g = graph();
    // `1` refers to the root `a` (a signature: config `2`, payload `3`); `4` refers to child `b`.
    g.0.insert(format!("referrers:vendor/app@{}", d('a')), vec![d('1')]);
    g.0.insert(format!("vendor/app@{}", d('1')), vec![d('2'), d('3')]);
    g.0.insert(format!("referrers:vendor/app@{}", d('b')), vec![d('4')]);
    g.0.insert(format!("vendor/app@{}", d('4')), vec![d('5')]);
    // Cosign's tag `sha256-<a>.sig` → `6` (payload `7`); `f` (another artifact) has `8`.
    let stem = d('a').replacen(':', "-", 1);
    g.0.insert(format!("tag:vendor/app:{stem}.sig"), vec![d('6')]);
    g.0.insert(format!("vendor/app@{}", d('6')), vec![d('7')]);
    g.0.insert(format!("referrers:vendor/app@{}", d('f')), vec![d('8')]);
    g.0.insert(format!("vendor/app@{}", d('8')), vec![d('0')]);
    let f = fixture();
    let grant =
        f.ac.mint_grant(
            "a",
            "vendor/app",
            &d('a'),
            "job-r",
            Duration::from_secs(600),
        )
        .unwrap();
    let h = bearer(&grant);
    let pull = |target: Target| {
        f.ac.authorize(Some(&h), "vendor/app", Action::Pull, &target, &g)
    };
    for ok in [
        Target::Referrers(d('a')),
        Target::Referrers(d('b')),
        Target::Manifest(d('1')),
        Target::Blob(d('2')),
        Target::Blob(d('3')),
        Target::Manifest(d('4')),
        Target::Blob(d('5')),
        Target::Manifest(format!("{stem}.sig")),
        Target::Manifest(format!("{stem}.att")),
        Target::Manifest(stem.clone()),
        Target::Manifest(d('6')),
        Target::Blob(d('7')),
    ] {
        assert!(
            pull(ok.clone()).is_ok(),
            "{ok:?} travels with the granted artifact"
        );
    }
    let other_stem = d('f').replacen(':', "-", 1);
    for refused in [
        Target::Referrers(d('f')),
        Target::Manifest(d('8')),
        Target::Blob(d('0')),
        Target::Manifest(format!("{other_stem}.sig")),
        Target::Manifest(format!("{stem}.sig.old")),
        Target::Manifest("latest".into()),
        Target::Repository,
    ] {
        assert!(
            is_403(&pull(refused.clone())),
            "{refused:?} is not the grant's"
        );
    }
}
