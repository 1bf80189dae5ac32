//! What a sync grant may read besides its manifest's own graph: the artifacts that travel with
//! it. Those are the **referrers** of the granted manifest and of the manifests it references
//! (OCI 1.1 signatures, SBOMs, attestations; and theirs, two levels deep), and the artifacts
//! under **cosign's tag scheme** for the granted digest (`sha256-<hex>.sig`, `.att`, `.sbom`, and
//! the `sha256-<hex>` referrers index of registries without the API), each with its own graph.
//!
//! This module must never widen a grant to anything not attached to its digest: another
//! artifact in the same repository (even one with a similar tag) stays refused, and every
//! walk is bounded ([`MAX_ATTACHED`], [`MAX_REFERRERS_PER_SUBJECT`], [`REFERRER_DEPTH`]).

use std::collections::HashSet;

use crate::authz::GraphLookup;

/// Referrers taken per subject.
pub const MAX_REFERRERS_PER_SUBJECT: usize = 64;
/// Most digests a grant's attachments add (referrer manifests and everything they reference).
pub const MAX_ATTACHED: usize = 4096;
/// Levels of referrers followed (a signature of the image, a signature of that SBOM).
pub const REFERRER_DEPTH: usize = 2;

/// Cosign's tag-scheme suffixes that travel with an artifact.
const TAG_SUFFIXES: [&str; 3] = ["sig", "att", "sbom"];

/// The tags attached to `digest` (`sha256:<hex>`): the referrers tag-schema index
/// `sha256-<hex>` and cosign's `sha256-<hex>.sig`, `.att`, `.sbom`.
pub fn attached_tags(digest: &str) -> Vec<String> {
    let stem = digest.replacen(':', "-", 1);
    std::iter::once(stem.clone())
        .chain(TAG_SUFFIXES.iter().map(|s| format!("{stem}.{s}")))
        .collect()
}

/// True when `tag` is one of [`attached_tags`] of `digest`.
pub fn is_attached_tag(digest: &str, tag: &str) -> bool {
    attached_tags(digest).iter().any(|t| t == tag)
}

/// Every digest attached to the grant for `root` in `repository` (see the module doc), given
/// `base`, the root's own references. Excludes what `base` already holds.
pub fn attached(
    graph: &dyn GraphLookup,
    repository: &str,
    root: &str,
    base: Option<&[String]>,
) -> HashSet<String> {
    let mut known: HashSet<String> = base.unwrap_or_default().iter().cloned().collect();
    known.insert(root.to_string());
    let mut out: HashSet<String> = HashSet::new();
    let add = |d: String, out: &mut HashSet<String>, next: &mut Vec<String>| {
        if out.len() >= MAX_ATTACHED || known.contains(&d) || !out.insert(d.clone()) {
            return;
        }
        for r in graph
            .manifest_references(repository, &d)
            .unwrap_or_default()
        {
            if out.len() >= MAX_ATTACHED {
                break;
            }
            if !known.contains(&r) {
                out.insert(r);
            }
        }
        next.push(d);
    };
    let mut next = Vec::new();
    for tag in attached_tags(root) {
        if let Some(d) = graph.resolve_tag(repository, &tag) {
            add(d, &mut out, &mut next);
        }
    }
    let mut subjects: Vec<String> = std::iter::once(root.to_string())
        .chain(base.unwrap_or_default().iter().cloned())
        .collect();
    for _ in 0..REFERRER_DEPTH {
        let mut found = Vec::new();
        for s in &subjects {
            for r in graph.referrers_of(repository, s, MAX_REFERRERS_PER_SUBJECT) {
                add(r, &mut out, &mut found);
            }
        }
        if found.is_empty() {
            break;
        }
        subjects = found;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_tags_are_the_digests_own() {
        let d = format!("sha256:{}", "a".repeat(64));
        let stem = format!("sha256-{}", "a".repeat(64));
        assert!(is_attached_tag(&d, &format!("{stem}.sig")));
        assert!(is_attached_tag(&d, &stem));
        assert!(!is_attached_tag(&d, &format!("{stem}.sig2")));
        assert!(!is_attached_tag(
            &d,
            &format!("sha256-{}.sig", "b".repeat(64))
        ));
        assert!(!is_attached_tag(&d, "latest"));
    }
}
