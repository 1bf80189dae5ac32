//! Where a chart's values name the images it runs, and the values that point those at the
//! install's registry by digest (with the registry left as placeholders). Pure: no I/O.
//!
//! This module must never drop a listed image silently: one that no value names is an error.

use serde_json::{Map, Value};

use ferry_oci::chart_bundle::{REGISTRY_PLACEHOLDER, REPOSITORY_PLACEHOLDER};
use ferry_oci::media::Descriptor;

use super::{ImageKey, Listed};

/// Helm's coalescing of values: maps merge key by key, `null` removes a key, anything else
/// replaces.
pub(super) fn coalesce(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(slot) = b.get_mut(k) {
                    coalesce(slot, v);
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

// ---- where the values name images -------------------------------------------------------------

/// How a value names an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Form {
    /// One string: `registry/repository:tag`.
    Ref,
    /// A map with `repository` and some of `registry`, `tag`, `digest`.
    Parts { registry: bool, digest: bool },
}

/// A place in the values that names a listed image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Located {
    pub(super) path: Vec<String>,
    pub(super) form: Form,
    pub(super) image: usize,
}

/// An image named in the values: where, how, and as what text.
#[derive(Debug, Clone)]
pub(super) struct Named {
    pub(super) path: Vec<String>,
    pub(super) form: Form,
    pub(super) text: String,
    /// Whether it sits under a key called `image` (so discovery counts it as a found image).
    pub(super) under_image_key: bool,
}

pub(super) fn named_in(values: &Value, path: &mut Vec<String>, out: &mut Vec<Named>) {
    let Value::Object(map) = values else { return };
    for (k, v) in map {
        path.push(k.clone());
        let key_is_image = k == "image" || k.ends_with("Image") || k.ends_with("_image");
        match v {
            Value::String(s)
                if key_is_image
                    || ImageKey::parse(s).is_some_and(|_| s.contains(':') || s.contains('/')) =>
            {
                out.push(Named {
                    path: path.clone(),
                    form: Form::Ref,
                    text: s.clone(),
                    under_image_key: key_is_image,
                });
            }
            Value::Object(m) => {
                if let Some(Value::String(repo)) = m.get("repository") {
                    let part = |key: &str| m.get(key).and_then(Value::as_str).unwrap_or("");
                    let mut text = String::new();
                    if !part("registry").is_empty() {
                        text.push_str(part("registry"));
                        text.push('/');
                    }
                    text.push_str(repo);
                    if !part("tag").is_empty() {
                        text.push(':');
                        text.push_str(part("tag"));
                    }
                    if !part("digest").is_empty() {
                        text.push('@');
                        text.push_str(part("digest"));
                    }
                    out.push(Named {
                        path: path.clone(),
                        form: Form::Parts {
                            registry: m.contains_key("registry"),
                            digest: m.contains_key("digest"),
                        },
                        text,
                        under_image_key: key_is_image,
                    });
                } else {
                    named_in(v, path, out);
                }
            }
            _ => {}
        }
        path.pop();
    }
}

/// Whether the values text `named` names the listed image `l`. A map without a tag matches
/// on the repository (its tag then comes from elsewhere, e.g. the chart's appVersion).
pub(super) fn names(named: &Named, l: &Listed) -> bool {
    let Some(key) = ImageKey::parse(&named.text) else {
        return false;
    };
    match named.form {
        Form::Ref => key == l.key,
        Form::Parts { .. } => {
            let has_tag = named
                .text
                .rsplit('/')
                .next()
                .is_some_and(|s| s.contains(':'));
            key.same_repository(&l.key)
                && (!has_tag || key.tag == l.key.tag)
                && (key.digest.is_none() || key.digest == l.key.digest)
        }
    }
}

/// Every place in `values` naming a listed image; every listed image must be named somewhere,
/// or the override could not point it at the install's registry.
pub(super) fn locate_all(values: &Value, listed: &[Listed]) -> Result<Vec<Located>, String> {
    let mut named = Vec::new();
    named_in(values, &mut Vec::new(), &mut named);
    let mut out = Vec::new();
    for (i, l) in listed.iter().enumerate() {
        let before = out.len();
        for n in &named {
            if names(n, l) {
                out.push(Located {
                    path: n.path.clone(),
                    form: n.form.clone(),
                    image: i,
                });
            }
        }
        if out.len() == before {
            return Err(format!(
                "listed image {} is not named by any value (values.yaml or the component's \
                 values), so the values override could not point it at the install's registry; \
                 set it as a value (e.g. image: {0}) and use that value in the templates",
                l.name
            ));
        }
    }
    Ok(out)
}

/// The values that point every located image at the install's registry by digest, with the
/// registry and repository left as placeholders.
pub(super) fn redirects(
    located: &[Located],
    listed: &[Listed],
    images: &[(String, Descriptor)],
) -> Value {
    let mut root = Value::Object(Map::new());
    for loc in located {
        let digest = images[loc.image].1.digest.as_str();
        let value = match loc.form {
            Form::Ref => Value::String(format!(
                "{REGISTRY_PLACEHOLDER}/{REPOSITORY_PLACEHOLDER}@{digest}"
            )),
            Form::Parts {
                registry,
                digest: has_digest,
            } => {
                let mut m = Map::new();
                if registry {
                    m.insert("registry".into(), REGISTRY_PLACEHOLDER.into());
                    m.insert("repository".into(), REPOSITORY_PLACEHOLDER.into());
                } else {
                    m.insert(
                        "repository".into(),
                        format!("{REGISTRY_PLACEHOLDER}/{REPOSITORY_PLACEHOLDER}").into(),
                    );
                }
                if has_digest {
                    m.insert("digest".into(), digest.into());
                } else {
                    let tag = listed[loc.image].key.tag.as_deref().unwrap_or("latest");
                    m.insert("tag".into(), format!("{tag}@{digest}").into());
                }
                Value::Object(m)
            }
        };
        set_path(&mut root, &loc.path, value);
    }
    root
}

pub(super) fn set_path(root: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for p in parents {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        cur = m
            .entry(p.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Value::Object(m) = cur {
        match m.get_mut(last) {
            Some(slot) => coalesce(slot, &value),
            None => {
                m.insert(last.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::chart_images::test_support::listed;
    use crate::chart_images::yaml_to_json;
    use ferry_oci::chart_bundle;
    use ferry_oci::Digest as OciDigest;

    #[test]
    fn docker_hub_names_are_expanded_before_comparing() {
        assert_eq!(
            ImageKey::parse("nginx"),
            ImageKey::parse("docker.io/library/nginx:latest")
        );
        assert_ne!(ImageKey::parse("nginx:1.27"), ImageKey::parse("nginx:1.28"));
        assert!(ImageKey::parse("oci:dir").is_none());
    }

    #[test]
    fn values_locate_string_and_map_forms_and_unnamed_images_fail() {
        let l = vec![
            listed("demo.example/web:v1"),
            listed("demo.example/side:v2"),
        ];
        let v = yaml_to_json(
            "web:\n  image:\n    repository: demo.example/web\n    tag: v1\nside: demo.example/side:v2\n",
        )
        .unwrap();
        let loc = locate_all(&v, &l).unwrap();
        assert_eq!(loc.len(), 2);
        let images: Vec<_> = ["a", "b"]
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    Descriptor {
                        media_type: String::new(),
                        digest: OciDigest::of(s.as_bytes()),
                        size: 1,
                        platform: None,
                        artifact_type: None,
                        annotations: BTreeMap::new(),
                    },
                )
            })
            .collect();
        let r = redirects(&loc, &l, &images);
        let filled = chart_bundle::fill_template(&r, "reg:1", "ns/demo/chart");
        assert_eq!(filled["web"]["image"]["repository"], "reg:1/ns/demo/chart");
        assert_eq!(
            filled["web"]["image"]["tag"],
            format!("v1@{}", images[0].1.digest)
        );
        assert_eq!(
            filled["side"],
            format!("reg:1/ns/demo/chart@{}", images[1].1.digest)
        );

        let e = locate_all(&v, &[listed("demo.example/other:1")]).unwrap_err();
        assert!(e.contains("demo.example/other:1"), "{e}");
    }

    #[test]
    fn values_coalesce_as_helm_does() {
        let mut base = serde_json::json!({"a": {"b": 1, "c": 2}, "d": 3});
        coalesce(
            &mut base,
            &serde_json::json!({"a": {"b": 9, "c": null}, "e": 4}),
        );
        assert_eq!(base, serde_json::json!({"a": {"b": 9}, "d": 3, "e": 4}));
    }
}
