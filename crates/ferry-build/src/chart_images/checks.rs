//! The checks on the images a chart runs: what a render found must be listed, a probe render
//! with the override must give only by-digest references into the probe registry, and without
//! a renderer a conservative scan that fails on anything it cannot follow. The renderer is
//! Helm's own template engine through helm-python-sdk, run offline with bounds.
//!
//! This module must never pass a chart it could not fully check when discovery asked for it.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_oci::media::Descriptor;
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::values::{named_in, names, Located};
use super::{
    listed_index, ChartFiles, ChartRenderer, ImageKey, Listed, MAX_RENDERED, PROBE_REGISTRY,
    PROBE_REPOSITORY, RENDER_TIMEOUT,
};

// ---- the checks -------------------------------------------------------------------------------

/// An image found in rendered output: the template it came from and the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found {
    pub(super) template: String,
    pub(super) image: String,
}

pub(super) fn check_found(found: &[Found], listed: &[Listed]) -> Result<(), String> {
    for f in found {
        let ok = ImageKey::parse(&f.image).is_some_and(|k| listed_index(listed, &k).is_some());
        if !ok {
            return Err(format!(
                "the chart runs image {:?} ({}), which the component does not list; add it to \
                 the component's images so it is copied into every install, or change the chart",
                f.image, f.template
            ));
        }
    }
    Ok(())
}

/// Every image in the probe render must be the probe registry's chart repository, by digest,
/// and one of the bundle's images.
pub(super) fn check_probe(found: &[Found], images: &[(String, Descriptor)]) -> Result<(), String> {
    let prefix = format!("{PROBE_REGISTRY}/{PROBE_REPOSITORY}");
    for f in found {
        let digest = f.image.rsplit_once('@').map(|(_, d)| d);
        let ok = f.image.starts_with(&prefix)
            && digest.is_some_and(|d| images.iter().any(|(_, i)| i.digest.as_str() == d));
        if !ok {
            return Err(format!(
                "with the values override the chart still renders image {:?} ({}): Ferry \
                 points an image at the install's registry through the value that names it, and \
                 this template does not take its image from such a value (or drops the digest); \
                 make the template use the value as written",
                f.image, f.template
            ));
        }
    }
    Ok(())
}

/// The conservative scan, without a renderer: it fails on anything it cannot follow.
///
/// - every image named under an `image` key in the values must be listed;
/// - subcharts are refused (their values and templates are not followed);
/// - every template line `image: …` must be a template expression whose every `.Values.x.y`
///   path lies within a value that names a listed image; a literal image (which no values
///   override can change), a value on the following lines, or an expression that takes the
///   image from anywhere else fails the build.
pub(super) fn scan(
    files: &ChartFiles,
    values: &Value,
    listed: &[Listed],
    located: &[Located],
) -> Result<(), String> {
    const NEEDS_RENDERER: &str = "install helm-python-sdk (pip install helm-python-sdk; \
        FERRY_HELM_PYTHON names its interpreter) so the build renders the chart with Helm";
    if files.subcharts {
        return Err(format!(
            "the chart has subcharts, whose images the scan cannot follow; {NEEDS_RENDERER}"
        ));
    }
    let mut named = Vec::new();
    named_in(values, &mut Vec::new(), &mut named);
    for n in named.iter().filter(|n| n.under_image_key) {
        if !listed.iter().any(|l| names(n, l)) {
            return Err(format!(
                "the chart's values name image {:?} (at {}), which the component does not \
                 list; add it to the component's images",
                n.text,
                n.path.join(".")
            ));
        }
    }
    for (file, text) in &files.templates {
        for (i, line) in text.lines().enumerate() {
            let Some(rest) = image_line(line) else {
                continue;
            };
            let at = format!("{file} line {}", i + 1);
            if rest.is_empty() || rest.starts_with('|') || rest.starts_with('>') {
                return Err(format!(
                    "{at}: the image is not on the `image:` line, which the scan cannot follow; \
                     {NEEDS_RENDERER}"
                ));
            }
            if !rest.contains("{{") {
                let literal = rest.trim_matches(|c| c == '"' || c == '\'');
                return Err(format!(
                    "{at}: image {literal:?} is written into the template, so no values \
                     override can point it at the install's registry; take it from a value \
                     (e.g. image: {{{{ .Values.image }}}})"
                ));
            }
            let paths = values_paths(rest);
            if paths.is_empty() {
                return Err(format!(
                    "{at}: the image comes from `{rest}`, which the scan cannot follow; \
                     {NEEDS_RENDERER}"
                ));
            }
            for p in &paths {
                let within = located.iter().any(|l| p.starts_with(&l.path));
                if !within {
                    return Err(format!(
                        "{at}: the image uses .Values.{}, which names none of the listed \
                         images; list the image it holds, or {NEEDS_RENDERER}",
                        p.join(".")
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The value after `image:` when `line` is a YAML `image:` (or `"image":`) entry.
pub(super) fn image_line(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let t = t.strip_prefix("- ").map(str::trim_start).unwrap_or(t);
    let rest = t
        .strip_prefix("image:")
        .or_else(|| t.strip_prefix("\"image\":"))
        .or_else(|| t.strip_prefix("'image':"))?;
    Some(rest.trim())
}

/// Every `.Values.a.b.c` path in a template expression.
pub(super) fn values_paths(expr: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find(".Values.") {
        let after = &rest[i + ".Values.".len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
            .unwrap_or(after.len());
        let path: Vec<String> = after[..end]
            .split('.')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if !path.is_empty() {
            out.push(path);
        }
        rest = &after[end..];
    }
    out
}

// ---- the renderer -----------------------------------------------------------------------------

/// Renders a chart archive with values, offline, with Helm's own template engine.
pub(super) const RENDER: &str = r#"
import json, sys
from helm_python import chart
c = chart.Chart.load(sys.argv[1])
values = None
if sys.argv[2]:
    with open(sys.argv[2]) as f:
        values = json.load(f)
print(json.dumps(c.render(values, name="ferry", namespace="default")))
"#;

pub(super) struct Renderer {
    pub(super) python: String,
}

impl Renderer {
    /// The renderer `choice` names, `None` for the scan; an explicit interpreter that cannot
    /// import helm-python-sdk is an error.
    pub(super) async fn pick(choice: &ChartRenderer) -> Result<Option<Renderer>, String> {
        let python = match choice {
            ChartRenderer::ScanOnly => return Ok(None),
            ChartRenderer::HelmPython(p) => p.clone(),
            ChartRenderer::Auto => {
                std::env::var("FERRY_HELM_PYTHON").unwrap_or_else(|_| "python3".into())
            }
        };
        let ok = tokio::process::Command::new(&python)
            .args(["-c", "import helm_python.chart"])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .is_ok_and(|o| o.status.success());
        match (ok, choice) {
            (true, _) => Ok(Some(Renderer { python })),
            (false, ChartRenderer::HelmPython(_)) => Err(format!(
                "{python} cannot import helm_python; install helm-python-sdk for it"
            )),
            (false, _) => {
                tracing::info!("helm-python-sdk not found: chart images are found by the scan");
                Ok(None)
            }
        }
    }

    /// Every string under an `image` key in the chart rendered with `values`.
    pub(super) async fn images(
        &self,
        archive: &Path,
        values: Option<&Value>,
        tmp: &Path,
    ) -> Result<Vec<Found>, String> {
        let values_file = match values {
            Some(v) => {
                let p = tmp.join("render-values.json");
                std::fs::write(&p, v.to_string())
                    .map_err(|e| format!("writing the render values: {e}"))?;
                p.to_string_lossy().into_owned()
            }
            None => String::new(),
        };
        let child = tokio::process::Command::new(&self.python)
            .args(["-c", RENDER])
            .arg(archive)
            .arg(&values_file)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(RENDER_TIMEOUT, child)
            .await
            .map_err(|_| format!("rendering the chart took over {RENDER_TIMEOUT:?}"))?
            .map_err(|e| format!("running {}: {e}", self.python))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(format!("Helm could not render the chart: {tail}"));
        }
        if out.stdout.len() > MAX_RENDERED {
            return Err(format!("the rendered chart is over {MAX_RENDERED} bytes"));
        }
        let rendered: BTreeMap<String, String> = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("the renderer's output is not what was expected: {e}"))?;
        let mut found = Vec::new();
        for (template, text) in &rendered {
            let docs = YamlLoader::load_from_str(text)
                .map_err(|e| format!("{template} renders to invalid YAML: {e}"))?;
            for d in &docs {
                images_in(d, template, &mut found);
            }
        }
        Ok(found)
    }
}

pub(super) fn images_in(y: &Yaml, template: &str, out: &mut Vec<Found>) {
    match y {
        Yaml::Hash(h) => {
            for (k, v) in h {
                if let (Yaml::String(k), Yaml::String(s)) = (k, v) {
                    if k == "image" {
                        out.push(Found {
                            template: template.to_string(),
                            image: s.clone(),
                        });
                        continue;
                    }
                }
                images_in(v, template, out);
            }
        }
        Yaml::Array(a) => a.iter().for_each(|v| images_in(v, template, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chart_images::test_support::{files, listed};
    use crate::chart_images::values::locate_all;
    use crate::chart_images::yaml_to_json;
    use ferry_oci::Digest as OciDigest;

    #[test]
    fn the_scan_fails_on_what_it_cannot_follow() {
        let l = vec![listed("demo.example/web:v1")];
        let values = "image: demo.example/web:v1\n";
        let v = yaml_to_json(values).unwrap();
        let loc = locate_all(&v, &l).unwrap();
        let ok = files(
            values,
            &[(
                "templates/d.yaml",
                "    - image: {{ .Values.image | quote }}\n",
            )],
        );
        scan(&ok, &v, &l, &loc).unwrap();

        let literal = files(values, &[("templates/d.yaml", "  image: nginx:1.27\n")]);
        let e = scan(&literal, &v, &l, &loc).unwrap_err();
        assert!(e.contains("\"nginx:1.27\"") && e.contains("line 1"), "{e}");

        let helper = files(
            values,
            &[("templates/d.yaml", "image: {{ include \"img\" . }}\n")],
        );
        assert!(scan(&helper, &v, &l, &loc)
            .unwrap_err()
            .contains("helm-python-sdk"));

        let other = files(
            values,
            &[("templates/d.yaml", "image: {{ .Values.other }}\n")],
        );
        assert!(scan(&other, &v, &l, &loc)
            .unwrap_err()
            .contains(".Values.other"));

        let unlisted_values = "image: demo.example/web:v1\nextra:\n  image: evil.example/x:1\n";
        let v2 = yaml_to_json(unlisted_values).unwrap();
        let e = scan(&files(unlisted_values, &[]), &v2, &l, &loc).unwrap_err();
        assert!(e.contains("evil.example/x:1"), "{e}");

        let mut sub = files(values, &[]);
        sub.subcharts = true;
        assert!(scan(&sub, &v, &l, &loc).unwrap_err().contains("subcharts"));
    }

    #[test]
    fn found_images_must_be_listed_and_probe_images_by_digest() {
        let l = vec![listed("demo.example/web:v1")];
        let found = |s: &str| Found {
            template: "c/templates/d.yaml".into(),
            image: s.into(),
        };
        check_found(&[found("demo.example/web:v1")], &l).unwrap();
        let e = check_found(&[found("demo.example/web:v1"), found("busybox:1")], &l).unwrap_err();
        assert!(
            e.contains("busybox:1") && e.contains("c/templates/d.yaml"),
            "{e}"
        );

        let d = OciDigest::of(b"x");
        let images = vec![(
            "demo.example/web:v1".to_string(),
            Descriptor {
                media_type: String::new(),
                digest: d.clone(),
                size: 1,
                platform: None,
                artifact_type: None,
                annotations: BTreeMap::new(),
            },
        )];
        check_probe(
            &[found(&format!(
                "{PROBE_REGISTRY}/{PROBE_REPOSITORY}:v1@{d}"
            ))],
            &images,
        )
        .unwrap();
        assert!(check_probe(&[found("demo.example/web:v1")], &images).is_err());
        assert!(check_probe(
            &[found(&format!("{PROBE_REGISTRY}/{PROBE_REPOSITORY}:v1"))],
            &images
        )
        .is_err());
    }
}
