//! `ferry copy SRC DST...`: builds a client and a copy engine from the flags, runs the copy
//! with the chosen progress display, and prints the closing summary.
//!
//! It must never echo a credential (flags are parsed here and go straight into the
//! credential store), and never report success for a copy that failed.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_oci::client::{HostLimits, RangedReads};
use ferry_oci::media::Platform;
use ferry_oci::progress::{NoProgress, ProgressSink};
use ferry_oci::{
    ClientConfig, CopyEngine, CopyOptions, CopyReport, Credential, CredentialStore, Reference,
    RegistryClient, Secret,
};

use crate::progress::{JsonProgress, TerminalProgress};

/// Flags of `ferry copy`. No `Debug`: it holds credentials.
#[derive(Args)]
pub struct CopyArgs {
    /// Copy only this platform of an index: os/arch[/variant], e.g. linux/arm64.
    #[arg(long)]
    platform: Option<String>,
    /// Copy referrers (signatures, SBOMs, attestations) too.
    #[arg(long)]
    referrers: bool,
    /// Concurrent blob transfers per registry host to start with on a short link; a host
    /// whose fastest answer takes 10 ms or more starts at this many more per 10 ms of round
    /// trip. The limit then adapts to the link (halved on 429/503, grown while saturated) up
    /// to --max-per-host-ceiling.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_per_host: u16,
    /// The most concurrent requests per registry host the adaptive limit may reach.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_per_host_ceiling: u16,
    /// Blobs of at least this many MiB are read as parallel Range requests (0: never).
    #[arg(long, default_value_t = 32, value_name = "MIB")]
    range_threshold_mib: u64,
    /// MiB per Range request of a ranged read.
    #[arg(long, default_value_t = 8, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1024))]
    range_part_mib: u64,
    /// Range requests of one blob in flight at once (also bounded by the host limit).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(2..=64))]
    range_parallel: u16,
    /// Allow plain HTTP and unverified TLS for every registry (loopback is always allowed).
    #[arg(long)]
    insecure: bool,
    /// One JSON object per progress event on stdout, then a summary object.
    #[arg(long)]
    json: bool,
    /// user:password for the source repository (only that repository: another repository
    /// on the same registry keeps its own credentials).
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "FERRY_SRC_CREDS",
        hide_env_values = true
    )]
    src_creds: Option<String>,
    /// user:password for every destination repository (only those repositories).
    #[arg(
        long,
        value_name = "USER:PASS",
        env = "FERRY_DEST_CREDS",
        hide_env_values = true
    )]
    dest_creds: Option<String>,
    /// A docker config.json to read credentials from (default: $DOCKER_CONFIG or ~/.docker).
    #[arg(long, value_name = "PATH")]
    authfile: Option<PathBuf>,
    /// Tag to write at every destination (default: each destination's own tag).
    #[arg(long)]
    tag: Option<String>,
    /// Source: host/repo[:tag][@digest] or oci:DIR[:tag].
    #[arg(value_name = "SRC")]
    source: String,
    /// One or more destinations, same forms as SRC.
    #[arg(value_name = "DST", required = true, num_args = 1..)]
    destinations: Vec<String>,
}

/// `user:password` into a Basic credential; the error never quotes the value.
fn parse_creds(flag: &str, value: &str) -> Result<Credential> {
    match value.split_once(':') {
        Some((user, pass)) if !user.is_empty() => Ok(Credential::Basic {
            username: user.to_string(),
            password: Secret::new(pass),
        }),
        _ => bail!("{flag} must be USER:PASSWORD (the value given has no user or no ':')"),
    }
}

fn parse_reference(input: &str, role: &str) -> Result<Reference> {
    input
        .parse::<Reference>()
        .with_context(|| format!("bad {role} reference"))
}

/// The credential store of one copy: docker `config.json` (per registry host, by nature),
/// then `--src-creds` for the source repository and `--dest-creds` for each destination
/// repository. The flags are keyed by (registry, repository), not by host, so a copy between
/// two repositories of one registry pulls as the source identity and pushes as the
/// destination identity; neither replaces the other.
fn credentials(
    args: &CopyArgs,
    source: &Reference,
    dests: &[Reference],
) -> Result<CredentialStore> {
    let mut store = match &args.authfile {
        Some(path) => CredentialStore::from_docker_config(path)
            .with_context(|| format!("reading credentials from {}", path.display()))?,
        None => CredentialStore::load_default().context("reading docker credentials")?,
    };
    let src = match &args.src_creds {
        Some(c) => {
            let cred = parse_creds("--src-creds", c)?;
            match source {
                Reference::Registry(r) => {
                    store.insert_repository(&r.repo.registry, &r.repo.repository, cred.clone());
                    Some((&r.repo, cred))
                }
                Reference::Layout(_) => {
                    bail!("--src-creds given but the source is an OCI layout")
                }
            }
        }
        None => None,
    };
    if let Some(c) = &args.dest_creds {
        let cred = parse_creds("--dest-creds", c)?;
        let mut any = false;
        for d in dests {
            if let Reference::Registry(r) = d {
                // One repository is reached as one identity for the whole copy; two
                // different ones for the same repository would silently pick one.
                if let Some((src_repo, src_cred)) = &src {
                    if *src_repo == &r.repo && *src_cred != cred {
                        bail!(
                            "--src-creds and --dest-creds name different users for the same \
                             repository {}; a copy within one repository uses one identity: \
                             pass only --dest-creds (pushing needs pull as well)",
                            r.repo
                        );
                    }
                }
                store.insert_repository(&r.repo.registry, &r.repo.repository, cred.clone());
                any = true;
            }
        }
        if !any {
            bail!("--dest-creds given but every destination is an OCI layout");
        }
    }
    Ok(store)
}

pub async fn run(args: CopyArgs) -> Result<()> {
    let source = parse_reference(&args.source, "source")?;
    let destinations = args
        .destinations
        .iter()
        .map(|d| parse_reference(d, "destination"))
        .collect::<Result<Vec<_>>>()?;
    let platform = match &args.platform {
        Some(p) => Some(Platform::parse(p)?),
        None => None,
    };
    let config = ClientConfig {
        insecure: args.insecure,
        credentials: credentials(&args, &source, &destinations)?,
        per_host: HostLimits {
            initial: usize::from(args.max_per_host),
            max: usize::from(args.max_per_host_ceiling.max(args.max_per_host)),
            ..HostLimits::default()
        },
        ranged: RangedReads {
            threshold: args.range_threshold_mib.saturating_mul(1024 * 1024),
            part_size: args.range_part_mib.saturating_mul(1024 * 1024),
            max_parallel: usize::from(args.range_parallel),
            ..RangedReads::default()
        },
        ..ClientConfig::default()
    };
    let client = RegistryClient::new(config).context("setting up the registry client")?;
    let options = CopyOptions {
        platform,
        referrers: args.referrers,
        max_per_host: usize::from(args.max_per_host),
        tag_override: args.tag.clone(),
    };
    let engine = CopyEngine::new(client, options);

    let terminal = std::io::stderr().is_terminal();
    let (sink, bars): (Arc<dyn ProgressSink>, Option<Arc<TerminalProgress>>) = if args.json {
        (Arc::new(JsonProgress), None)
    } else if terminal {
        let t = Arc::new(TerminalProgress::new());
        (t.clone(), Some(t))
    } else {
        (Arc::new(NoProgress), None)
    };

    let result = engine.copy(&source, &destinations, sink).await;
    if let Some(b) = &bars {
        b.finish();
    }
    let report = result.with_context(|| format!("copy {source} failed"))?;
    if args.json {
        println!("{}", summary_json(&report)?);
    }
    eprintln!("{}", summary_line(&report, &destinations));
    Ok(())
}

fn throughput_mib_s(report: &CopyReport) -> f64 {
    let secs = report.duration.as_secs_f64();
    if secs > 0.0 {
        report.bytes_copied as f64 / (1024.0 * 1024.0) / secs
    } else {
        0.0
    }
}

/// The `--json` closing object: the report plus `"event": "summary"` and the throughput.
pub fn summary_json(report: &CopyReport) -> Result<String> {
    let mut v = serde_json::to_value(report).context("serialising the copy report")?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("event".into(), "summary".into());
        obj.insert("throughput_mib_s".into(), throughput_mib_s(report).into());
    }
    Ok(v.to_string())
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn summary_line(report: &CopyReport, destinations: &[Reference]) -> String {
    let digest = report
        .digest
        .as_ref()
        .map(|d| d.to_string())
        .unwrap_or_else(|| "(no digest)".into());
    format!(
        "copied {digest} to {} destination(s): {} copied, {} skipped; blobs {} copied, {} skipped, {} mounted; {:.2}s, {:.1} MiB/s",
        destinations.len(),
        human_bytes(report.bytes_copied),
        human_bytes(report.bytes_skipped),
        report.blobs_copied,
        report.blobs_skipped,
        report.blobs_mounted,
        report.duration.as_secs_f64(),
        throughput_mib_s(report),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_errors_never_quote_the_value() {
        let err = parse_creds("--src-creds", "no-colon-s3cret").expect_err("no colon");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let c = parse_creds("--src-creds", "bob:pa:ss").expect("valid");
        assert!(
            matches!(c, Credential::Basic { ref username, ref password } if username == "bob" && password.expose() == "pa:ss")
        );
    }

    fn copy_args(src: &str, dsts: &[&str], src_creds: &str, dest_creds: &str) -> CopyArgs {
        CopyArgs {
            platform: None,
            referrers: false,
            max_per_host: 4,
            max_per_host_ceiling: 16,
            range_threshold_mib: 32,
            range_part_mib: 8,
            range_parallel: 8,
            insecure: false,
            json: false,
            src_creds: Some(src_creds.into()),
            dest_creds: Some(dest_creds.into()),
            authfile: None,
            tag: None,
            source: src.into(),
            destinations: dsts.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn user_of(store: &CredentialStore, reference: &str) -> String {
        let Ok(Reference::Registry(r)) = reference.parse::<Reference>() else {
            panic!("{reference} is not a registry reference");
        };
        match store.lookup(&r.repo.registry, &r.repo.repository) {
            Credential::Basic { username, .. } => username,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn src_and_dest_creds_on_one_registry_stay_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let authfile = dir.path().join("config.json");
        std::fs::write(
            &authfile,
            r#"{"auths":{"reg.example":{"username":"from-config","password":"c"}}}"#,
        )
        .expect("write config");
        let mut args = copy_args(
            "reg.example/team/a:1",
            &["reg.example/team/b:1", "oci:/tmp/x:1"],
            "alice:a-pw",
            "bob:b-pw",
        );
        args.authfile = Some(authfile);
        let source = parse_reference(&args.source, "source").expect("src");
        let dests: Vec<Reference> = args
            .destinations
            .iter()
            .map(|d| parse_reference(d, "destination").expect("dst"))
            .collect();
        let store = credentials(&args, &source, &dests).expect("store");
        assert_eq!(user_of(&store, "reg.example/team/a:1"), "alice");
        assert_eq!(user_of(&store, "reg.example/team/b:1"), "bob");
        assert_eq!(
            user_of(&store, "reg.example/team/c:1"),
            "from-config",
            "other repositories keep the docker config.json entry"
        );

        // The same repository with two identities is refused, without quoting either.
        let same = copy_args(
            "reg.example/team/a:1",
            &["reg.example/team/a:2"],
            "alice:a-pw",
            "bob:b-pw",
        );
        let source = parse_reference(&same.source, "source").expect("src");
        let dests = vec![parse_reference(&same.destinations[0], "destination").expect("dst")];
        let err =
            credentials(&same, &source, &dests).expect_err("two identities for one repository");
        let text = format!("{err:#}");
        assert!(text.contains("reg.example/team/a"), "{text}");
        assert!(!text.contains("a-pw") && !text.contains("b-pw"), "{text}");
        // The same identity twice is fine.
        let twice = copy_args(
            "reg.example/team/a:1",
            &["reg.example/team/a:2"],
            "bob:b-pw",
            "bob:b-pw",
        );
        let store = credentials(&twice, &source, &dests).expect("same identity");
        assert_eq!(user_of(&store, "reg.example/team/a:1"), "bob");
    }

    #[test]
    fn summary_has_event_and_throughput() {
        let report = CopyReport {
            bytes_copied: 2 * 1024 * 1024,
            duration: std::time::Duration::from_secs(2),
            blobs_copied: 3,
            ..CopyReport::default()
        };
        let v: serde_json::Value =
            serde_json::from_str(&summary_json(&report).expect("json")).expect("parse");
        assert_eq!(v["event"], "summary");
        assert_eq!(v["blobs_copied"], 3);
        assert!((v["throughput_mib_s"].as_f64().unwrap_or(0.0) - 1.0).abs() < 1e-9);
        let line = summary_line(&report, &[]);
        assert!(
            line.contains("2.0 MiB copied") && line.contains("1.0 MiB/s"),
            "{line}"
        );
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
