//! The management port: what every `ferry` management command (and, later, the console) asks
//! of a backend — apps, components, installs, build requests, builds, syncs, lineage and dead
//! letters — with one adapter per backend (ferry-dev on the local SQLite state dir, ferry-aws
//! on DynamoDB/SQS/EventBridge).
//!
//! The trait is the contract; the views every backend computes the same way (an install's
//! status, what it holds, a filtered listing over the store's indexes) are free functions here,
//! over [`JobStore`], so there is one definition of each. Release operations are not part of
//! this trait: they live in their own trait beside it.
//!
//! This module must never do I/O itself, and never carry a secret: registration takes only
//! public keys and role ARNs, and nothing returned here holds a credential.

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::domain::{Build, Component, Install, RegistryTarget, SyncJob};
use crate::id::{AppName, BuildId, ComponentName, Digest, InstallId, Repository};
use crate::ports::{JobStore, PageRequest, StoreError};
use crate::state::JobStatus;

/// The most records one listing returns; a listing that stops here says so (`truncated`).
pub const MAX_LISTING: usize = 1000;
/// The most dead letters one `dlq list` or `dlq redrive` handles; run it again for more.
pub const MAX_DEAD_LETTERS: usize = 100;
/// Page size of the store queries behind the listings.
const PAGE: u32 = 100;

/// A vendor product, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    pub name: AppName,
    /// Where its components' sources are: a directory on this machine for `ferry dev`'s
    /// in-process builder, a repository URL (or nothing) on AWS, where CodeBuild's project
    /// names the source.
    pub source: Option<String>,
}

/// One install registration: everything public the vendor learns from the customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallRegistration {
    pub id: InstallId,
    pub app: AppName,
    /// The components it receives; empty means every component the app has now.
    pub components: Vec<ComponentName>,
    /// `ferry-x25519-pub:…`: grants are sealed to it.
    pub agent_public_key: String,
    /// `ferry-agent-ed25519:…`: only reports signed with it are accepted.
    pub agent_report_key: String,
    /// The IAM role the agent runs as (AWS: the only principal its queue admits). `None` on a
    /// backend without IAM.
    pub agent_role_arn: Option<String>,
    /// The install's own registry; `None` takes the backend's default (the dev registry).
    pub registry: Option<RegistryTarget>,
}

/// What a registration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationOutcome {
    /// A new install: its queue and record were created.
    Created,
    /// The install existed with other settings; they were updated in place (same queue).
    Updated,
    /// The install existed with exactly these settings: nothing changed.
    Unchanged,
}

/// The result of a registration: the stored install and what its agent must be told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registration {
    pub install: Install,
    pub outcome: RegistrationOutcome,
    /// The agent's settings, by `ferry-agent` flag name without the dashes (`queue-url`,
    /// `vendor-registry`, `vendor-public-key`, ...). Public values only.
    pub agent_settings: BTreeMap<String, String>,
}

/// What removing an install did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Removal {
    pub install: InstallId,
    /// The queue that was deleted (with its dead-letter queue).
    pub queue_deleted: String,
    /// Lineage records are kept: they say what the install held.
    pub lineage_kept: bool,
}

/// One artifact an install holds: the newest succeeded sync per repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub repository: Repository,
    pub digest: Digest,
    pub build_id: BuildId,
    /// When its sync finished (unix ms).
    pub since: u64,
}

impl Held {
    /// Whether this is an artifact of the component stored at `repository`: the sync wrote the
    /// component's repository itself, or the same path under the vendor registry's prefix
    /// (locally builds land in `vendor/<component repository>`). Whole path segments only, so
    /// `demo/x` never matches `demo/xy` or `otherdemo/x`.
    pub fn is_of(&self, repository: &Repository) -> bool {
        let held = self.repository.as_str();
        let repo = repository.as_str();
        held == repo
            || held
                .strip_suffix(repo)
                .is_some_and(|prefix| prefix.ends_with('/'))
    }
}

/// An install and what is known about it, for `ferry install list|show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstallStatus {
    pub install: Install,
    /// The newest sync of the install, whatever its status.
    pub last_sync: Option<SyncJob>,
    /// When its agent was last heard from (unix ms): its latest heartbeat, or the newest
    /// finish of a sync it reported, whichever is later.
    pub last_seen: Option<u64>,
    /// What it holds, by repository.
    pub holds: Vec<Held>,
    /// Its agent's latest heartbeat (version, last poll and sync, health), if it sent one.
    pub telemetry: Option<crate::telemetry::InstallTelemetry>,
}

impl InstallStatus {
    /// Whether the agent is heard from at `now`, by the one rule
    /// ([`crate::telemetry::liveness`]) over [`InstallStatus::last_seen`].
    pub fn liveness(&self, now: u64, stale_after_ms: u64) -> crate::telemetry::Liveness {
        crate::telemetry::liveness(self.last_seen, now, stale_after_ms)
    }
}

/// Which builds to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildFilter {
    pub app: Option<AppName>,
    pub component: Option<ComponentName>,
}

/// Which syncs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncFilter {
    pub install: Option<InstallId>,
    pub build: Option<BuildId>,
}

/// A listing, newest first, with whether it stopped at [`MAX_LISTING`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub truncated: bool,
}

/// A message in a dead-letter queue, with the error its job recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    /// The job the message is about, when its body names one.
    pub job: Option<String>,
    /// The job's status and recorded error (`code: message`), when the job exists.
    pub job_status: Option<JobStatus>,
    pub job_error: Option<String>,
    /// Receives before it was dead-lettered, when the backend knows.
    pub receive_count: Option<u32>,
}

/// Why a management operation failed. Every message names what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManageError {
    /// A name the backend does not know; `known` lists what it does know (may be empty).
    #[error("unknown {what} {name}; known: {known}; {hint}", known = known_list(.known))]
    NotFound {
        what: &'static str,
        name: String,
        known: Vec<String>,
        hint: String,
    },
    /// Input the operation refuses (a bad key, a missing flag, a component of another app).
    #[error("{0}")]
    Invalid(String),
    /// The operation exists, but not on this backend.
    #[error("{what} is not available on the {backend} backend: {hint}")]
    Unsupported {
        what: &'static str,
        backend: &'static str,
        hint: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another backend call (queue, bus, IAM policy) failed; transient unless it says so.
    #[error("{0}")]
    Backend(String),
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "none".into()
    } else {
        known.join(", ")
    }
}

/// `put_component(.., subscribe_all = true)`'s rule, one definition for every backend: of
/// `installs`, those of the component's app; returns the ones that must be stored again (now
/// subscribed) and the ids of every install of the app (all of them receive it).
pub fn subscribe_all(
    installs: Vec<Install>,
    component: &Component,
) -> (Vec<Install>, Vec<InstallId>) {
    let mut changed = Vec::new();
    let mut subscribed = Vec::new();
    for mut i in installs.into_iter().filter(|i| i.app == component.app) {
        subscribed.push(i.id.clone());
        if !i.components.contains(&component.name) {
            i.components.push(component.name.clone());
            changed.push(i);
        }
    }
    (changed, subscribed)
}

/// The management port. Every method is safe to retry: adding an existing record replaces it,
/// registering an install twice with the same settings changes nothing, removing a removed
/// install is `NotFound`. Listings are bounded by [`MAX_LISTING`], newest first.
pub trait Management: Send + Sync {
    /// The backend's name, for messages (`local`, `aws`).
    fn backend(&self) -> &'static str;

    /// Adds or replaces an app.
    fn put_app(&self, app: &AppRecord) -> impl Future<Output = Result<(), ManageError>> + Send;
    /// Every app, by name.
    fn list_apps(&self) -> impl Future<Output = Result<Vec<AppRecord>, ManageError>> + Send;

    /// Adds or replaces a component of an existing app (`NotFound` for an unknown app). With
    /// `subscribe_all`, every install of the app also receives it; returns those installs.
    fn put_component(
        &self,
        component: &Component,
        subscribe_all: bool,
    ) -> impl Future<Output = Result<Vec<InstallId>, ManageError>> + Send;
    /// Components (of one app, or all), by app then name.
    fn list_components(
        &self,
        app: Option<&AppName>,
    ) -> impl Future<Output = Result<Vec<Component>, ManageError>> + Send;

    /// Registers an install: its queue (with a dead-letter queue, admitting only its agent),
    /// its record and its subscriptions. Idempotent: the same registration again is
    /// `Unchanged`; a changed one updates the record and the queue policy in place.
    fn register_install(
        &self,
        registration: &InstallRegistration,
    ) -> impl Future<Output = Result<Registration, ManageError>> + Send;
    /// Every install, by id.
    fn list_installs(&self) -> impl Future<Output = Result<Vec<Install>, ManageError>> + Send;
    /// One install with its last sync, last report time and what it holds.
    fn install_status(
        &self,
        id: &InstallId,
    ) -> impl Future<Output = Result<InstallStatus, ManageError>> + Send;
    /// Deletes the install's queue (and dead-letter queue) and its record and subscriptions,
    /// so no build fans out to it any more. Its syncs and lineage stay.
    fn remove_install(
        &self,
        id: &InstallId,
    ) -> impl Future<Output = Result<Removal, ManageError>> + Send;

    /// Publishes `build.requested` for a known component; returns the new build's id.
    fn request_build(
        &self,
        app: &AppName,
        component: &ComponentName,
        source_ref: &str,
        requested_by: &str,
    ) -> impl Future<Output = Result<BuildId, ManageError>> + Send;
    /// Builds, newest first.
    fn list_builds(
        &self,
        filter: &BuildFilter,
    ) -> impl Future<Output = Result<Listing<Build>, ManageError>> + Send;
    /// Syncs, newest first.
    fn list_syncs(
        &self,
        filter: &SyncFilter,
    ) -> impl Future<Output = Result<Listing<SyncJob>, ManageError>> + Send;
    /// Which installs hold `digest`, by install id.
    fn lineage(
        &self,
        digest: &Digest,
    ) -> impl Future<Output = Result<Vec<crate::domain::LineageRecord>, ManageError>> + Send;

    /// The queues that have a dead-letter queue, by the names `dlq list|redrive` take.
    fn dead_letter_queues(&self) -> impl Future<Output = Result<Vec<String>, ManageError>> + Send;
    /// Up to [`MAX_DEAD_LETTERS`] messages in the dead-letter queue of `queue`, each with its
    /// job's recorded error. Listing does not consume them.
    fn dead_letters(
        &self,
        queue: &str,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, ManageError>> + Send;
    /// Moves up to [`MAX_DEAD_LETTERS`] dead letters of `queue` back onto it; returns how many.
    fn redrive(&self, queue: &str) -> impl Future<Output = Result<usize, ManageError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// Shared views: one definition, used by every adapter.

/// `NotFound` for an install, listing the known ones.
pub fn unknown_install(id: &InstallId, known: &[Install]) -> ManageError {
    ManageError::NotFound {
        what: "install",
        name: id.to_string(),
        known: known.iter().map(|i| i.id.to_string()).collect(),
        hint: "see `ferry install list`".into(),
    }
}

/// `NotFound` for an app, listing the known ones.
pub fn unknown_app(app: &AppName, known: &[AppRecord]) -> ManageError {
    ManageError::NotFound {
        what: "app",
        name: app.to_string(),
        known: known.iter().map(|a| a.name.to_string()).collect(),
        hint: format!("add it with `ferry app add {app}`"),
    }
}

/// `NotFound` for a component, listing the app's known ones.
pub fn unknown_component(app: &AppName, name: &ComponentName, known: &[Component]) -> ManageError {
    ManageError::NotFound {
        what: "component",
        name: format!("{app}/{name}"),
        known: known
            .iter()
            .map(|c| format!("{}/{}", c.app, c.name))
            .collect(),
        hint: "add it with `ferry component add`".into(),
    }
}

/// The components a registration subscribes to: all of the app's when none are named, else
/// exactly those named, each of which must be the app's.
pub fn resolve_components(
    app: &AppName,
    wanted: &[ComponentName],
    known: &[Component],
) -> Result<Vec<ComponentName>, ManageError> {
    let of_app: Vec<&Component> = known.iter().filter(|c| &c.app == app).collect();
    if wanted.is_empty() {
        return Ok(of_app.iter().map(|c| c.name.clone()).collect());
    }
    let mut out = Vec::new();
    for w in wanted {
        if !of_app.iter().any(|c| &c.name == w) {
            let known: Vec<Component> = of_app.iter().map(|c| (*c).clone()).collect();
            return Err(unknown_component(app, w, &known));
        }
        if !out.contains(w) {
            out.push(w.clone());
        }
    }
    Ok(out)
}

/// Checks a registration's public keys now, not at the first sync or report.
pub fn check_agent_keys(registration: &InstallRegistration) -> Result<(), ManageError> {
    crate::seal::seal(&registration.agent_public_key, b"probe", b"probe").map_err(|_| {
        ManageError::Invalid(
            "--public-key is not an agent public key (want ferry-x25519-pub:…, printed by `ferry-agent keygen`)"
                .into(),
        )
    })?;
    crate::trust::check_agent_report_key(&registration.agent_report_key).map_err(|e| {
        ManageError::Invalid(format!(
            "--report-key is not an agent report key (want ferry-agent-ed25519:…): {e}"
        ))
    })?;
    Ok(())
}

/// The outcome of writing `next` over `previous`.
pub fn outcome(previous: Option<&Install>, next: &Install) -> RegistrationOutcome {
    match previous {
        None => RegistrationOutcome::Created,
        Some(p) if p == next => RegistrationOutcome::Unchanged,
        Some(_) => RegistrationOutcome::Updated,
    }
}

async fn collect_pages<T, F, Fut>(mut query: F) -> Result<Listing<T>, StoreError>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<crate::ports::Page<T>, StoreError>>,
{
    let mut items = Vec::new();
    let mut page = PageRequest::first(PAGE);
    loop {
        let got = query(page).await?;
        items.extend(got.items);
        if items.len() >= MAX_LISTING {
            let truncated = items.len() > MAX_LISTING || got.next.is_some();
            items.truncate(MAX_LISTING);
            return Ok(Listing { items, truncated });
        }
        match got.next {
            Some(c) => page = PageRequest::after(PAGE, c),
            None => {
                return Ok(Listing {
                    items,
                    truncated: false,
                })
            }
        }
    }
}

fn newest_first_builds(items: &mut [Build]) {
    items.sort_by(|a, b| {
        (b.state.created_at, b.id.as_str()).cmp(&(a.state.created_at, a.id.as_str()))
    });
}

fn newest_first_syncs(items: &mut [SyncJob]) {
    items.sort_by(|a, b| {
        (b.state.created_at, b.id.as_str()).cmp(&(a.state.created_at, a.id.as_str()))
    });
}

/// Builds through the store's by-component index: of one component, or of every component in
/// `components` (filtered by app), newest first.
pub async fn list_builds_via<S: JobStore>(
    store: &S,
    components: &[Component],
    filter: &BuildFilter,
) -> Result<Listing<Build>, ManageError> {
    if let Some(name) = &filter.component {
        let matched: Vec<Component> = components
            .iter()
            .filter(|c| filter.app.as_ref().is_none_or(|a| a == &c.app))
            .cloned()
            .collect();
        if !matched.iter().any(|c| &c.name == name) {
            let app = filter
                .app
                .clone()
                .or_else(|| matched.first().map(|c| c.app.clone()));
            return Err(ManageError::NotFound {
                what: "component",
                name: match app {
                    Some(a) if filter.app.is_some() => format!("{a}/{name}"),
                    _ => name.to_string(),
                },
                known: matched
                    .iter()
                    .map(|c| format!("{}/{}", c.app, c.name))
                    .collect(),
                hint: "see `ferry component list`".into(),
            });
        }
    }
    let mut items = Vec::new();
    let mut truncated = false;
    for c in components {
        if filter.app.as_ref().is_some_and(|a| a != &c.app)
            || filter.component.as_ref().is_some_and(|n| n != &c.name)
        {
            continue;
        }
        let got =
            collect_pages(|p| async move { store.builds_by_component(&c.app, &c.name, &p).await })
                .await?;
        truncated |= got.truncated;
        items.extend(got.items);
    }
    newest_first_builds(&mut items);
    truncated |= items.len() > MAX_LISTING;
    items.truncate(MAX_LISTING);
    Ok(Listing { items, truncated })
}

/// Syncs through the store's by-install and by-build indexes: of one build, of one install,
/// or of every install in `installs`, newest first.
pub async fn list_syncs_via<S: JobStore>(
    store: &S,
    installs: &[InstallId],
    filter: &SyncFilter,
) -> Result<Listing<SyncJob>, ManageError> {
    let mut got = if let Some(b) = &filter.build {
        let mut l = collect_pages(|p| async move { store.syncs_by_build(b, &p).await }).await?;
        if let Some(i) = &filter.install {
            l.items.retain(|s| &s.install_id == i);
        }
        l
    } else if let Some(i) = &filter.install {
        let l = collect_pages(|p| async move { store.syncs_by_install(i, &p).await }).await?;
        // A removed install's syncs stay listed; a name that never had any is a typo.
        if l.items.is_empty() && !installs.contains(i) {
            return Err(ManageError::NotFound {
                what: "install",
                name: i.to_string(),
                known: installs.iter().map(|k| k.to_string()).collect(),
                hint: "see `ferry install list`".into(),
            });
        }
        l
    } else {
        let mut all = Listing {
            items: Vec::new(),
            truncated: false,
        };
        for i in installs {
            let l = collect_pages(|p| async move { store.syncs_by_install(i, &p).await }).await?;
            all.truncated |= l.truncated;
            all.items.extend(l.items);
        }
        all
    };
    newest_first_syncs(&mut got.items);
    got.truncated |= got.items.len() > MAX_LISTING;
    got.items.truncate(MAX_LISTING);
    Ok(got)
}

/// Which installs hold `digest`, through the store's lineage index.
pub async fn lineage_via<S: JobStore>(
    store: &S,
    digest: &Digest,
) -> Result<Vec<crate::domain::LineageRecord>, ManageError> {
    Ok(
        collect_pages(|p| async move { store.lineage_by_digest(digest, &p).await })
            .await?
            .items,
    )
}

/// An install's status from its syncs (the newest [`MAX_LISTING`]): the newest sync, the last
/// time its agent reported, and per repository the newest digest it verified.
pub async fn install_status_via<S: JobStore>(
    store: &S,
    install: Install,
) -> Result<InstallStatus, ManageError> {
    let id = install.id.clone();
    let syncs = collect_pages(|p| {
        let id = id.clone();
        async move { store.syncs_by_install(&id, &p).await }
    })
    .await?
    .items;
    let telemetry = store.get_telemetry(&id).await?;
    let mut holds: BTreeMap<Repository, Held> = BTreeMap::new();
    let mut last_seen: Option<u64> = None;
    for s in &syncs {
        // Terminal syncs that ran were reported by the agent (or given up on by the IMS; a
        // sync that never started says nothing about the agent).
        if s.state.status.is_terminal() && s.state.started_at.is_some() {
            if let Some(at) = s.state.finished_at {
                last_seen = Some(last_seen.map_or(at, |l| l.max(at)));
            }
        }
        if s.state.status == JobStatus::Succeeded {
            let since = s.state.finished_at.unwrap_or(s.state.updated_at);
            let newer = holds.get(&s.repository).is_none_or(|h| h.since < since);
            if newer {
                holds.insert(
                    s.repository.clone(),
                    Held {
                        repository: s.repository.clone(),
                        digest: s.digest.clone(),
                        build_id: s.build_id.clone(),
                        since,
                    },
                );
            }
        }
    }
    let mut sorted = syncs;
    newest_first_syncs(&mut sorted);
    Ok(InstallStatus {
        last_sync: sorted.into_iter().next(),
        last_seen: match (last_seen, telemetry.as_ref().map(|t| t.last_seen)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        },
        holds: holds.into_values().collect(),
        telemetry,
        install,
    })
}

/// The job a dead-lettered message is about and that job's status and error, from the store.
/// A body that names no job (or a job the store lacks) gives what it can.
pub async fn describe_dead_letter<S: JobStore>(
    store: &S,
    message_id: String,
    body: &str,
    receive_count: Option<u32>,
) -> Result<DeadLetter, ManageError> {
    // Events name their job; a signed `sync.job` message carries its `sync_id` at the top.
    let job = crate::event::JobRef::from_body(body.as_bytes());
    let (job_status, job_error) = match &job {
        Some(crate::event::JobRef::Sync(id)) => match store.get_sync(id).await? {
            Some(s) => (
                Some(s.state.status),
                s.state.error.map(|e| format!("{}: {}", e.code, e.message)),
            ),
            None => (None, None),
        },
        Some(crate::event::JobRef::Build(id)) => match store.get_build(id).await? {
            Some(b) => (
                Some(b.state.status),
                b.state.error.map(|e| format!("{}: {}", e.code, e.message)),
            ),
            None => (None, None),
        },
        // A release is not a job with a status; `ferry release show` tells where it stands.
        Some(crate::event::JobRef::Release(_) | crate::event::JobRef::Install(_)) | None => {
            (None, None)
        }
    };
    Ok(DeadLetter {
        message_id,
        job: job.map(|j| j.id().to_string()),
        job_status,
        job_error,
        receive_count,
    })
}

#[cfg(test)]
mod held_tests {
    use super::*;

    fn held(repo: &str) -> Held {
        Held {
            repository: Repository::new(repo).unwrap(),
            digest: Digest::new(format!("sha256:{}", "a".repeat(64))).unwrap(),
            build_id: BuildId::new("b-1").unwrap(),
            since: 0,
        }
    }

    #[test]
    fn a_hold_is_of_its_component_with_or_without_the_vendor_prefix() {
        let component = Repository::new("demo/x").unwrap();
        assert!(held("demo/x").is_of(&component));
        assert!(held("vendor/demo/x").is_of(&component));
        assert!(!held("vendor/demo/xy").is_of(&component));
        assert!(!held("vendor/otherdemo/x").is_of(&component));
        assert!(!held("demo/x/y").is_of(&component));
    }
}
