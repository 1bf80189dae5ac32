//! Repository and tag names, per the distribution-spec grammar.
//!
//! Repository: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at
//! most 255 characters. Tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`. A valid repository name is
//! also a safe relative path (no `..`, no leading `_` or `/`, no empty component), which the
//! registry's storage relies on. This module must never accept a name outside the grammar.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::SpecError;

/// The longest repository name the distribution spec allows.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// The longest tag.
pub const MAX_TAG_LEN: usize = 128;

/// Checks a repository name against the distribution-spec grammar; the error names the part
/// that is wrong.
pub fn check_repository(name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.len() > MAX_REPOSITORY_LEN {
        return Err(SpecError::new(
            "repository",
            name,
            "it must have 1 to 255 characters",
        ));
    }
    for part in name.split('/') {
        check_component(name, part)?;
    }
    Ok(())
}

/// Whether `name` is a valid repository name ([`check_repository`] without the reason).
pub fn valid_repository(name: &str) -> bool {
    check_repository(name).is_ok()
}

fn check_component(whole: &str, part: &str) -> Result<(), SpecError> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = part.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err(SpecError::new(
            "repository",
            whole,
            "it has an empty path component (leading, trailing or doubled '/')",
        ));
    };
    if !alnum(first) || !alnum(last) {
        return Err(SpecError::new(
            "repository",
            whole,
            format!("path component {part:?} must start and end with a lowercase letter or digit"),
        ));
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-"; the component ends in an
        // alphanumeric, so the run is always followed by one.
        let run_end = bytes[i..]
            .iter()
            .position(|c| alnum(*c))
            .map_or(bytes.len(), |p| i + p);
        let sep = &part[i..run_end];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
        if !ok {
            return Err(SpecError::new(
                "repository",
                whole,
                format!(
                    "separator {sep:?} in {part:?} is not allowed; use lowercase letters, digits, \
                     '.', '_', '__' or '-'"
                ),
            ));
        }
        i = run_end;
    }
    Ok(())
}

/// Checks a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn check_tag(tag: &str) -> Result<(), SpecError> {
    if valid_tag(tag) {
        Ok(())
    } else {
        Err(SpecError::new(
            "tag",
            tag,
            "a tag is 1 to 128 of [A-Za-z0-9_.-] and does not start with '.' or '-'",
        ))
    }
}

/// Whether `tag` is a valid tag ([`check_tag`] without the reason).
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A validated repository name (a path within a registry).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Repository(String);

impl Repository {
    /// Validates `s` against the repository grammar.
    pub fn new(s: impl Into<String>) -> Result<Repository, SpecError> {
        let s = s.into();
        check_repository(&s)?;
        Ok(Repository(s))
    }

    /// The repository name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where this vendor repository lands in an install registry. The one mapping rule
    /// (docs/design/customer-stack.md): `<vendor_prefix>/<path>` becomes
    /// `<install_namespace>/<path>`, so vendor `ferry/demo/web` (prefix `ferry`) lands in
    /// `<namespace>/demo/web` on ECR, and `vendor/demo/web` in `installs/<id>/demo/web` under
    /// `ferry dev`. An empty prefix or namespace adds or strips nothing.
    ///
    /// A repository outside the vendor prefix is refused rather than mapped somewhere
    /// unexpected: the install's protections cover only its namespace.
    pub fn in_install(
        &self,
        vendor_prefix: &str,
        install_namespace: &str,
    ) -> Result<Repository, SpecError> {
        let prefix = vendor_prefix.trim_matches('/');
        let path = if prefix.is_empty() {
            self.as_str()
        } else {
            self.as_str()
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('/'))
                .ok_or_else(|| {
                    SpecError::new(
                        "repository",
                        self.as_str(),
                        format!(
                            "it is not under the vendor repository prefix {prefix}/; check the \
                             agent's --vendor-prefix (the vendor stack's RepositoryPrefix)"
                        ),
                    )
                })?
        };
        match install_namespace.trim_matches('/') {
            "" => Repository::new(path),
            ns => Repository::new(format!("{ns}/{path}")),
        }
    }
}

impl TryFrom<String> for Repository {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        Repository::new(s)
    }
}

impl From<Repository> for String {
    fn from(r: Repository) -> String {
        r.0
    }
}

impl AsRef<str> for Repository {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Repository({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repository_grammar() {
        let long = "a".repeat(300);
        for ok in [
            "a",
            "vendor/app",
            "installs/acme/app/web",
            "a.b_c__d--e/f0",
            "a.b/c__d/e--f",
            "team-1/app_x",
            "x0/1y",
        ] {
            assert!(Repository::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "A", "Shop/web", "../etc", "a//b", "/a", "a/", "a___b", "a.-b", "-a", "_a", "a-",
            "a.", "a/..", "a..b", "a b", "a:b", &long,
        ] {
            let err = check_repository(bad).expect_err(bad);
            assert_eq!(err.kind, "repository");
            assert!(!valid_repository(bad), "{bad}");
        }
    }

    #[test]
    fn tag_grammar() {
        assert!(check_tag("v1.0_rc-1").is_ok());
        assert!(check_tag("_x").is_ok());
        for bad in ["", ".hidden", "-x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(check_tag(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vendor_repositories_map_into_the_install_namespace_by_one_rule() {
        let r = |s: &str| Repository::new(s).unwrap();
        let on = |repo: &str, prefix: &str, ns: &str| {
            r(repo)
                .in_install(prefix, ns)
                .map(|x| x.as_str().to_owned())
        };
        // ECR: the vendor prefix is replaced, not nested (the bug was ferry/ferry/demo/web).
        assert_eq!(
            on("ferry/demo/web", "ferry", "ferry").unwrap(),
            "ferry/demo/web"
        );
        assert_eq!(
            on("ferry/demo/web", "ferry", "acme").unwrap(),
            "acme/demo/web"
        );
        assert_eq!(
            on("vendor/demo/app", "vendor", "installs/a/").unwrap(),
            "installs/a/demo/app"
        );
        assert_eq!(on("demo/app", "", "ns").unwrap(), "ns/demo/app");
        assert_eq!(on("vendor/demo/app", "vendor", "").unwrap(), "demo/app");
        // Outside the prefix, or a prefix that only matches part of a component: refused.
        for (repo, prefix) in [
            ("other/demo", "ferry"),
            ("ferryx/demo", "ferry"),
            ("ferry", "ferry"),
        ] {
            let e = on(repo, prefix, "ns").unwrap_err().to_string();
            assert!(
                e.contains("not under the vendor repository prefix"),
                "{repo}: {e}"
            );
        }
    }

    proptest! {
        /// A valid name is always a safe relative path: no `..`, no empty or `_`-led part.
        #[test]
        fn valid_names_are_safe_paths(s in "[a-z0-9._/-]{1,40}") {
            if valid_repository(&s) {
                prop_assert!(s.split('/').all(|p| !p.is_empty() && p != ".." && !p.starts_with('_')));
            }
        }
    }
}
