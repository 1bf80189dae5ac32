//! [`Deps`]: every port a handler may use, built once per Lambda execution environment from
//! the variables `template.yaml` sets (docs/deploy.md, "Contract: the functions' environment").
//!
//! Building the SDK clients is the slow part of a cold start, so `main` does it once and every
//! invocation borrows the result. This module must never read credentials itself (the SDK's
//! default chain does) and never log a value it reads, apart from resource names.
//!
//! Read here: `FERRY_TABLE`, `FERRY_EVENT_BUS`, `FERRY_BUILD_PROJECT`, `FERRY_PULL_ROLE_ARN`,
//! `FERRY_VENDOR_REGISTRY`,
//! `FERRY_MAX_RECEIVE_COUNT` (the queues' maxReceiveCount), `FERRY_MINT_RATE_PER_SECOND` and
//! `FERRY_MINT_CONCURRENCY` (optional: the pacing of grant minting), and
//! `FERRY_VENDOR_KEY_SECRET` (the Secrets Manager secret holding the vendor key, read once at
//! cold start; its value is never logged, its public half is). The handlers do
//! not need `FERRY_REPORT_QUEUE_URL`, `FERRY_INSTALL_QUEUE_PREFIX` or
//! `FERRY_REPOSITORY_PREFIX`: an install record names its own queue, and a component its
//! repository.

use ferry_aws::{DynamoStore, EcrGrantSettings, EventBridgeBus, SqsQueue};
use ferry_core::fanout::MintPacer;
use ferry_core::id::QueueName;
use ferry_core::ports::Backend;
use ferry_core::trust::VendorKey;
use ferry_core::{Config, Ports};
use std::sync::Arc;

pub const TABLE_ENV: &str = "FERRY_TABLE";
pub const BUS_ENV: &str = "FERRY_EVENT_BUS";
/// The CodeBuild project's name (the one name for it; ferry-aws's `CodeBuildBuilder` documents
/// it too).
pub const BUILD_PROJECT_ENV: &str = "FERRY_BUILD_PROJECT";
pub const PULL_ROLE_ENV: &str = "FERRY_PULL_ROLE_ARN";
/// `<account>.dkr.ecr.<region>.<suffix>`: grants name this host, account and region.
pub const VENDOR_REGISTRY_ENV: &str = "FERRY_VENDOR_REGISTRY";
/// The id or ARN of the Secrets Manager secret that holds the vendor key.
pub const VENDOR_KEY_SECRET_ENV: &str = "FERRY_VENDOR_KEY_SECRET";
/// The `maxReceiveCount` of the functions' queues (template.yaml sets it from the same
/// parameter): on that receive a failing record's job records its error before the DLQ.
pub const MAX_RECEIVE_COUNT_ENV: &str = "FERRY_MAX_RECEIVE_COUNT";
/// The URL of the release queue (release step timers and the end of each release sync).
/// Optional: without it the queue is looked up by the name [`RELEASE_QUEUE_DEFAULT`], and a
/// stack without that queue refuses `release create` with a "queue does not exist" error.
pub const RELEASE_QUEUE_URL_ENV: &str = "FERRY_RELEASE_QUEUE_URL";
/// `true` (the default) or `false`: whether a successful build is synced at once to every
/// subscribed install (an implicit release, `Config::fan_out_on_build`). `false` leaves every
/// rollout to `ferry release create`. Read by build-completed (template.yaml: FanOutOnBuild).
pub const FAN_OUT_ON_BUILD_ENV: &str = "FERRY_FAN_OUT_ON_BUILD";
/// Optional: grants minted per second across the whole stack (template.yaml:
/// MintRatePerSecond), paced by a token bucket in each sync-requested instance.
pub const MINT_RATE_ENV: &str = "FERRY_MINT_RATE_PER_SECOND";
/// How many sync-requested instances share [`MINT_RATE_ENV`] (template.yaml: SyncConcurrency,
/// the trigger's MaximumConcurrency); 1 when unset.
pub const MINT_CONCURRENCY_ENV: &str = "FERRY_MINT_CONCURRENCY";
/// The release queue's name when [`RELEASE_QUEUE_URL_ENV`] is not set.
pub const RELEASE_QUEUE_DEFAULT: &str = "ferry-release";

/// The configuration could not be read; the function cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set; {hint} (template.yaml sets it for every function)")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name} is {value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("the vendor key in secret {secret} could not be used: {reason}")]
    VendorKey { secret: String, reason: String },
}

/// Resource names and grant settings, as read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub table: String,
    pub event_bus: String,
    pub build_project: String,
    pub grants: EcrGrantSettings,
    /// The secret holding the vendor key.
    pub vendor_key_secret: String,
    /// The queues' `maxReceiveCount`.
    pub max_receive_count: u32,
    /// The release queue's URL, when set.
    pub release_queue_url: Option<String>,
    /// Whether a successful build fans out to every subscribed install at once.
    pub fan_out_on_build: bool,
    /// (grants per second across the stack, instances sharing them), when minting is paced.
    pub mint_pace: Option<(u32, u32)>,
}

fn required(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    hint: &'static str,
) -> Result<String, ConfigError> {
    get(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or(ConfigError::Missing { name, hint })
}

/// The queue name at the end of an SQS queue URL.
fn release_queue_name(url: &str) -> Result<QueueName, ConfigError> {
    url.rsplit('/')
        .next()
        .and_then(|name| QueueName::new(name).ok())
        .ok_or(ConfigError::Invalid {
            name: RELEASE_QUEUE_URL_ENV,
            value: url.chars().take(200).collect(),
            reason: "expected an SQS queue URL such as https://sqs.<region>.amazonaws.com/<account>/<name>",
        })
}

/// Splits `<account>.dkr.ecr.<region>.<suffix>` into (account, region).
fn parse_vendor_registry(host: &str) -> Result<(String, String), ConfigError> {
    let invalid = |reason| ConfigError::Invalid {
        name: VENDOR_REGISTRY_ENV,
        value: host.chars().take(200).collect(),
        reason,
    };
    let mut parts = host.split('.');
    let account = parts.next().unwrap_or_default();
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "expected <12-digit account>.dkr.ecr.<region>.amazonaws.com",
        ));
    }
    if parts.next() != Some("dkr") || parts.next() != Some("ecr") {
        return Err(invalid("expected <account>.dkr.ecr.<region>.amazonaws.com"));
    }
    let region = parts.next().unwrap_or_default();
    let region_ok = !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok || parts.next().is_none() {
        return Err(invalid(
            "expected <account>.dkr.ecr.<region>.amazonaws.com with a region such as us-east-1",
        ));
    }
    Ok((account.to_owned(), region.to_owned()))
}

impl Settings {
    /// From the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// From any lookup (tests pass a map; the process environment is never mutated).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let table = required(&get, TABLE_ENV, "set it to the job table's name")?;
        let event_bus = required(&get, BUS_ENV, "set it to the Ferry event bus's name")?;
        let build_project = required(
            &get,
            BUILD_PROJECT_ENV,
            "set it to the CodeBuild project's name",
        )?;
        let pull_role_arn = required(
            &get,
            PULL_ROLE_ENV,
            "set it to the ARN of the role grants are minted from",
        )?;
        let registry = required(
            &get,
            VENDOR_REGISTRY_ENV,
            "set it to <account>.dkr.ecr.<region>.amazonaws.com",
        )?;
        let (registry_account_id, region) = parse_vendor_registry(&registry)?;
        let vendor_key_secret = required(
            &get,
            VENDOR_KEY_SECRET_ENV,
            "set it to the ARN of the secret holding the vendor key",
        )?;
        let max_receive_count = required(
            &get,
            MAX_RECEIVE_COUNT_ENV,
            "set it to the maxReceiveCount of the functions' queues",
        )?;
        let max_receive_count = max_receive_count
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or(ConfigError::Invalid {
                name: MAX_RECEIVE_COUNT_ENV,
                value: max_receive_count.chars().take(20).collect(),
                reason: "expected a whole number of at least 1 (the queues' maxReceiveCount)",
            })?;
        let release_queue_url = get(RELEASE_QUEUE_URL_ENV)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        if let Some(url) = &release_queue_url {
            release_queue_name(url)?;
        }
        let fan_out_on_build = match get(FAN_OUT_ON_BUILD_ENV).as_deref().map(str::trim) {
            None | Some("") | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: FAN_OUT_ON_BUILD_ENV,
                    value: other.chars().take(20).collect(),
                    reason: "expected true or false",
                })
            }
        };
        let whole = |name: &'static str, v: String| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or(ConfigError::Invalid {
                    name,
                    value: v.chars().take(20).collect(),
                    reason: "expected a whole number of at least 1",
                })
        };
        let mint_pace = match get(MINT_RATE_ENV).filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(rate) => {
                let rate = whole(MINT_RATE_ENV, rate)?;
                let share = match get(MINT_CONCURRENCY_ENV).filter(|v| !v.trim().is_empty()) {
                    None => 1,
                    Some(c) => whole(MINT_CONCURRENCY_ENV, c)?,
                };
                Some((rate, share))
            }
        };
        Ok(Settings {
            mint_pace,
            release_queue_url,
            fan_out_on_build,
            vendor_key_secret,
            max_receive_count,
            table,
            event_bus,
            build_project,
            grants: EcrGrantSettings {
                pull_role_arn,
                registry_account_id,
                region,
                registry_host: Some(registry),
            },
        })
    }
}

/// Where the SDK clients connect, when not where the environment says (tests and the smoke
/// script point them at moto). All plain values, so callers need no SDK crate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsOverrides {
    pub endpoint_url: Option<String>,
    pub region: Option<&'static str>,
    /// Sign with fixed dummy credentials (moto accepts any).
    pub test_credentials: bool,
    /// One SDK call may take this long (each attempt and the whole call), instead of
    /// [`ferry_core::timing`]'s bounds: only for an emulator slower than AWS (moto's
    /// TransactWriteItems copies the whole table, 10 s at 3,000 items). Never set in a function.
    pub call_timeout: Option<std::time::Duration>,
}

/// The system clock and random ids, written once in ferry-clock.
pub use ferry_clock::{RandomIds, SystemClock};

/// The builder port: CodeBuild with the `builder` feature (build-requested), else none.
#[cfg(feature = "builder")]
pub type BuilderPort = ferry_aws::CodeBuildBuilder;
/// The builder port: CodeBuild with the `builder` feature (build-requested), else none.
#[cfg(not(feature = "builder"))]
pub type BuilderPort = crate::absent::NoBuilder;
/// The grant minter: STS + ECR with the `minter` feature (the sync functions), else none.
#[cfg(feature = "minter")]
pub type MinterPort = ferry_aws::EcrGrantMinter;
/// The grant minter: STS + ECR with the `minter` feature (the sync functions), else none.
#[cfg(not(feature = "minter"))]
pub type MinterPort = crate::absent::NoMinter;

/// The AWS backend: DynamoDB, SQS, EventBridge, CodeBuild and STS + ECR grants where this
/// function links them ([`BuilderPort`], [`MinterPort`]), the system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct Aws;

impl Backend for Aws {
    type Store = DynamoStore;
    type Queue = SqsQueue;
    type Bus = EventBridgeBus;
    type Builder = BuilderPort;
    type Minter = MinterPort;
    type Clock = SystemClock;
}

/// The ports on AWS.
pub type AwsPorts = Ports<Aws>;

/// Everything a handler needs: handles over SDK clients built once, borrowed per invocation.
#[derive(Debug)]
pub struct Deps {
    pub ports: AwsPorts,
    pub ids: RandomIds,
    /// The queues' `maxReceiveCount`: a record failing on this receive is dead-lettered.
    pub max_receive_count: u32,
    /// This instance's share of the stack's mint rate, when minting is paced.
    pub pacer: Option<Arc<MintPacer>>,
}

impl Deps {
    /// What every function's `main` calls: settings and SDK config from the environment.
    pub async fn from_env() -> Result<Deps, ConfigError> {
        let settings = Settings::from_env()?;
        Deps::connect(&settings, &AwsOverrides::default()).await
    }

    /// Builds the clients for `settings`, with ferry-aws's HTTP client, retries and timeouts,
    /// and reads the vendor key from its secret.
    pub async fn connect(
        settings: &Settings,
        overrides: &AwsOverrides,
    ) -> Result<Deps, ConfigError> {
        let mut loader = ferry_aws::config::loader();
        if let Some(url) = &overrides.endpoint_url {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some(region) = overrides.region {
            loader = loader.region(region);
        }
        if overrides.test_credentials {
            loader = loader.test_credentials();
        }
        if let Some(limit) = overrides.call_timeout {
            loader = loader.timeout_config(ferry_aws::config::slow_emulator_timeouts(limit));
        }
        let config = loader.load().await;
        let vendor_key_error = |reason: String| ConfigError::VendorKey {
            secret: settings.vendor_key_secret.clone(),
            reason,
        };
        let text = ferry_aws::agent::read_secret_string(&config, &settings.vendor_key_secret)
            .await
            .map_err(|e| vendor_key_error(e.to_string()))?;
        let vendor_key =
            VendorKey::from_secret_string(&text).map_err(|e| vendor_key_error(e.to_string()))?;
        drop(text);
        let store = DynamoStore::new(&config, settings.table.clone());
        let mut queue = SqsQueue::new(&config);
        let release_queue = match &settings.release_queue_url {
            Some(url) => {
                let name = release_queue_name(url)?;
                // Every queue a function sends to (the install queues too) is in the stack's
                // account and region: their URLs are derived, never looked up (issue 12).
                queue = queue
                    .with_url(name.clone(), url.clone())
                    .with_derived_urls(url);
                name
            }
            None => QueueName::new(RELEASE_QUEUE_DEFAULT).map_err(|_| ConfigError::Invalid {
                name: RELEASE_QUEUE_URL_ENV,
                value: RELEASE_QUEUE_DEFAULT.into(),
                reason: "the default release queue name is not a queue name",
            })?,
        };
        tracing::info!(
            table = %settings.table,
            event_bus = %settings.event_bus,
            build_project = %settings.build_project,
            vendor_public_key = %vendor_key.public_key_string(),
            "clients ready"
        );
        Ok(Deps {
            ports: Ports {
                store: store.clone(),
                queue,
                bus: EventBridgeBus::new(&config, settings.event_bus.clone()),
                #[cfg(feature = "builder")]
                builder: ferry_aws::CodeBuildBuilder::new(&config, settings.build_project.clone()),
                #[cfg(not(feature = "builder"))]
                builder: crate::absent::NoBuilder,
                #[cfg(feature = "minter")]
                minter: ferry_aws::EcrGrantMinter::new(&config, settings.grants.clone(), store),
                #[cfg(not(feature = "minter"))]
                minter: crate::absent::NoMinter,
                clock: SystemClock,
                config: Config {
                    fan_out_on_build: settings.fan_out_on_build,
                    ..Config::default()
                },
                vendor_key: Arc::new(vendor_key),
                release_queue,
            },
            ids: RandomIds,
            max_receive_count: settings.max_receive_count,
            pacer: match settings.mint_pace {
                None => None,
                Some((rate, share)) => Some(Arc::new(MintPacer::for_share(rate, share).map_err(
                    |_| ConfigError::Invalid {
                        name: MINT_RATE_ENV,
                        value: rate.to_string(),
                        reason: "expected a whole number of at least 1",
                    },
                )?)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const FULL: &[(&str, &str)] = &[
        ("FERRY_TABLE", "ferry-jobs"),
        ("FERRY_EVENT_BUS", "ferry"),
        ("FERRY_BUILD_PROJECT", "ferry-build"),
        ("FERRY_PULL_ROLE_ARN", "arn:aws:iam::123456789012:role/pull"),
        (
            "FERRY_VENDOR_REGISTRY",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
        ),
        ("FERRY_VENDOR_KEY_SECRET", "ferry-vendor-key"),
        ("FERRY_MAX_RECEIVE_COUNT", "5"),
    ];

    #[test]
    fn mint_pacing_is_read_when_set_and_refused_when_nonsense() {
        assert_eq!(Settings::from_lookup(env(FULL)).unwrap().mint_pace, None);
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut all = FULL.to_vec();
            all.extend_from_slice(pairs);
            Settings::from_lookup(env(&all))
        };
        let s = with(&[
            ("FERRY_MINT_RATE_PER_SECOND", "50"),
            ("FERRY_MINT_CONCURRENCY", "10"),
        ])
        .unwrap();
        assert_eq!(s.mint_pace, Some((50, 10)));
        let s = with(&[("FERRY_MINT_RATE_PER_SECOND", "7")]).unwrap();
        assert_eq!(
            s.mint_pace,
            Some((7, 1)),
            "one instance when the concurrency is unset"
        );
        for (k, v) in [
            ("FERRY_MINT_RATE_PER_SECOND", "0"),
            ("FERRY_MINT_RATE_PER_SECOND", "fast"),
        ] {
            let err = with(&[(k, v)]).unwrap_err().to_string();
            assert!(err.starts_with("FERRY_MINT_RATE_PER_SECOND is"), "{err}");
        }
        let err = with(&[
            ("FERRY_MINT_RATE_PER_SECOND", "5"),
            ("FERRY_MINT_CONCURRENCY", "-1"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("FERRY_MINT_CONCURRENCY is"), "{err}");
    }

    #[test]
    fn reads_the_template_contract() {
        let s = Settings::from_lookup(env(FULL)).unwrap();
        assert_eq!(s.table, "ferry-jobs");
        assert_eq!(s.build_project, "ferry-build");
        assert_eq!(s.grants.registry_account_id, "123456789012");
        assert_eq!(s.grants.region, "eu-west-1");
        assert_eq!(
            s.grants.registry_host.as_deref(),
            Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
        );
    }

    #[test]
    fn a_missing_or_empty_variable_is_named() {
        let pairs: Vec<_> = FULL
            .iter()
            .map(|&(k, v)| if k == "FERRY_TABLE" { (k, " ") } else { (k, v) })
            .collect();
        let err = Settings::from_lookup(env(&pairs)).unwrap_err();
        assert!(
            err.to_string().starts_with("FERRY_TABLE is not set"),
            "{err}"
        );

        let pairs: Vec<_> = FULL
            .iter()
            .copied()
            .filter(|(k, _)| *k != "FERRY_BUILD_PROJECT")
            .collect();
        let err = Settings::from_lookup(env(&pairs)).unwrap_err();
        assert!(err.to_string().contains("FERRY_BUILD_PROJECT"), "{err}");
    }

    #[test]
    fn the_max_receive_count_is_a_positive_number() {
        assert_eq!(
            Settings::from_lookup(env(FULL)).unwrap().max_receive_count,
            5
        );
        for bad in ["0", "five", "-1"] {
            let mut pairs = FULL.to_vec();
            pairs.retain(|(k, _)| *k != "FERRY_MAX_RECEIVE_COUNT");
            pairs.push(("FERRY_MAX_RECEIVE_COUNT", bad));
            let err = Settings::from_lookup(env(&pairs)).unwrap_err();
            assert!(
                err.to_string().starts_with("FERRY_MAX_RECEIVE_COUNT is"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_release_queue_url_is_optional_but_checked() {
        assert_eq!(
            Settings::from_lookup(env(FULL)).unwrap().release_queue_url,
            None
        );
        let mut pairs = FULL.to_vec();
        pairs.push((
            "FERRY_RELEASE_QUEUE_URL",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/ferry-release",
        ));
        let s = Settings::from_lookup(env(&pairs)).unwrap();
        let url = s.release_queue_url.unwrap();
        assert_eq!(release_queue_name(&url).unwrap().as_str(), "ferry-release");
        pairs.pop();
        pairs.push(("FERRY_RELEASE_QUEUE_URL", "https://sqs/bad name!"));
        let err = Settings::from_lookup(env(&pairs)).unwrap_err();
        assert!(
            err.to_string().starts_with("FERRY_RELEASE_QUEUE_URL is"),
            "{err}"
        );
    }

    #[test]
    fn the_implicit_release_is_on_unless_turned_off() {
        assert!(Settings::from_lookup(env(FULL)).unwrap().fan_out_on_build);
        let mut pairs = FULL.to_vec();
        pairs.push(("FERRY_FAN_OUT_ON_BUILD", "false"));
        assert!(!Settings::from_lookup(env(&pairs)).unwrap().fan_out_on_build);
        pairs.pop();
        pairs.push(("FERRY_FAN_OUT_ON_BUILD", "no"));
        let err = Settings::from_lookup(env(&pairs)).unwrap_err();
        assert!(
            err.to_string().starts_with("FERRY_FAN_OUT_ON_BUILD is"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_vendor_registry_is_refused() {
        for bad in [
            "registry.example",
            "12345.dkr.ecr.us-east-1.amazonaws.com",
            "123456789012.dkr.ecr.US_EAST.amazonaws.com",
            "123456789012.dkr.ecr.us-east-1",
        ] {
            let err = parse_vendor_registry(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("FERRY_VENDOR_REGISTRY is"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn clock_and_ids_are_plausible() {
        use ferry_core::ports::{Clock as _, IdGenerator as _};
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
        let (a, b) = (RandomIds.new_id(), RandomIds.new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
    }
}
