//! `.helmignore` as Helm evaluates it, negations included: the same chart directory is packaged
//! by Helm itself (`helm package`, through helm-python-sdk) and by Ferry, for several ignore
//! files, and the two archives must hold exactly the same files (or both refuse the chart).
//!
//! Needs `pip install helm-python-sdk`; FERRY_HELM_PYTHON names the interpreter (default
//! `python3`). Without it the test says so and checks nothing more.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use ferry_core::domain::{ChartSource, Component, ComponentKind};
use ferry_core::id::{AppName, ComponentName, Repository};

fn python() -> String {
    std::env::var("FERRY_HELM_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn helm_sdk_available() -> bool {
    std::process::Command::new(python())
        .args(["-c", "import helm_python.chart"])
        .output()
        .is_ok_and(|o| o.status.success())
}

const FILES: &[&str] = &[
    "Chart.yaml",
    "values.yaml",
    "keep.txt",
    "drop.txt",
    "README.md",
    "a.md",
    "d.md",
    "top.txt",
    "docs/keep.md",
    "docs/other.md",
    "templates/cm.yaml",
    "templates/.hidden.yaml",
    "templates/NOTES.txt",
    "sub/x.tmp",
    "sub/y.yaml",
    "sub/deeper/z.txt",
];

/// The cases: each a `.helmignore`. Negations first, then the rest of Helm's rules. In Helm a
/// `!pattern` line does not re-include what an earlier line ignored: every path that does not
/// match it is ignored (so most of these leave out Chart.yaml, and Helm refuses the chart).
const CASES: &[&str] = &[
    "*.txt\n!keep.txt\n",
    "!keep.txt\n*.txt\n",
    "!*.yaml\n",
    "docs/\n!docs/keep.md\n",
    "!docs/\n",
    "# comment\n\n/top.txt\nsub/*.tmp\n[a-c].md\n",
    "sub/\n!sub/y.yaml\n*.md\n",
    "*.md\n!README.md\n!a.md\n",
    "!*.*\n",
    "*.txt\n!*a*\n",
    "",
];

/// The file list of a chart archive, without the leading `<chart>/`.
fn entries(archive: &Path) -> BTreeSet<String> {
    let f = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = BTreeSet::new();
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let (_, rel) = p.split_once('/').unwrap();
        let mut sink = Vec::new();
        e.read_to_end(&mut sink).unwrap();
        out.insert(rel.to_string());
    }
    out
}

fn component() -> Component {
    Component {
        app: AppName::new("t").unwrap(),
        name: ComponentName::new("chart").unwrap(),
        kind: ComponentKind::helm_chart(ChartSource::Dir { path: "c".into() }),
        repository: Repository::new("t/chart").unwrap(),
        verify: None,
        credentials: None,
    }
}

#[test]
fn ferry_keeps_exactly_the_files_helm_package_keeps() {
    if !helm_sdk_available() {
        assert!(
            std::env::var_os("FERRY_HELM_PYTHON").is_none(),
            "FERRY_HELM_PYTHON is set but cannot import helm_python"
        );
        eprintln!("helm-python-sdk not installed: skipping the .helmignore comparison");
        return;
    }
    let mut problems = Vec::new();
    for (i, ignore) in CASES.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let chart = tmp.path().join("c");
        for f in FILES {
            let p = chart.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let body = if *f == "Chart.yaml" {
                "apiVersion: v2\nname: c\nversion: 0.1.0\n".to_string()
            } else {
                format!("# {f}\n")
            };
            std::fs::write(p, body).unwrap();
        }
        std::fs::write(chart.join(".helmignore"), ignore).unwrap();

        let helm_out = tmp.path().join("helm");
        std::fs::create_dir_all(&helm_out).unwrap();
        let helm = std::process::Command::new(python())
            .args([
                "-c",
                "import sys\nfrom helm_python import chart\nprint(chart.package(sys.argv[1], destination=sys.argv[2]))",
            ])
            .arg(&chart)
            .arg(&helm_out)
            .output()
            .unwrap();
        let ferry_out = tmp.path().join("ferry");
        std::fs::create_dir_all(&ferry_out).unwrap();
        let ferry = ferry_build::package_chart(&component(), &chart, &ferry_out);

        let case = format!("case {i}: .helmignore {ignore:?}");
        if !helm.status.success() {
            let helm_err = String::from_utf8_lossy(&helm.stderr);
            let helm_err = helm_err.lines().last().unwrap_or_default().to_string();
            match ferry {
                Err(_) => {}
                Ok(p) => problems.push(format!(
                    "{case}: Helm refused the chart ({helm_err}) but Ferry packaged {:?}",
                    entries(&p.archive)
                )),
            }
            continue;
        }
        let helm_archive = String::from_utf8(helm.stdout).unwrap();
        let helm_files = entries(Path::new(helm_archive.trim()));
        match ferry {
            Err(e) => problems.push(format!(
                "{case}: Helm packaged {helm_files:?}, Ferry refused: {e}"
            )),
            Ok(p) => {
                let ferry_files = entries(&p.archive);
                if ferry_files != helm_files {
                    problems.push(format!(
                        "{case}: Helm {helm_files:?}, Ferry {ferry_files:?}"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
