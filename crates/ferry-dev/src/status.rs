//! What the dev system has done so far: the builds of this run (and any requested while it
//! runs) with their syncs, read whole from the store, and the questions a caller asks of them
//! (is everything done, what failed). Pure reads: this module must never write the store.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ferry_core::domain::{Build, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, InstallId};
use ferry_core::state::{JobError, JobStatus};
use ferry_local::db::Db;

use crate::error::Result;
use crate::state;

/// The builds of this run with their syncs, at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Oldest first.
    pub builds: Vec<Build>,
    pub syncs: BTreeMap<BuildId, Vec<SyncJob>>,
    /// Installs subscribed per (app, component) right now.
    pub expected: HashMap<(AppName, ComponentName), BTreeSet<InstallId>>,
    /// The kind of each component (`image`, `docker-build`, ...).
    pub kinds: HashMap<(AppName, ComponentName), &'static str>,
    /// The ids of the keys of each component's verification policy (components with one only).
    pub policies: HashMap<(AppName, ComponentName), Vec<String>>,
}

impl Snapshot {
    /// The builds in `requested` or created at or after `since_ms`, with their syncs.
    pub async fn take(db: &Db, since_ms: u64, requested: &[BuildId]) -> Result<Snapshot> {
        let builds: Vec<Build> = state::all_builds(db)
            .await?
            .into_iter()
            .filter(|b| requested.contains(&b.id) || b.state.created_at >= since_ms)
            .collect();
        let ids: HashSet<&BuildId> = builds.iter().map(|b| &b.id).collect();
        let mut syncs: BTreeMap<BuildId, Vec<SyncJob>> = BTreeMap::new();
        for s in state::all_syncs(db).await? {
            if ids.contains(&s.build_id) {
                syncs.entry(s.build_id.clone()).or_default().push(s);
            }
        }
        let mut expected: HashMap<_, BTreeSet<InstallId>> = HashMap::new();
        for i in state::all_installs(db).await? {
            for c in &i.components {
                expected
                    .entry((i.app.clone(), c.clone()))
                    .or_default()
                    .insert(i.id.clone());
            }
        }
        let components = state::all_components(db).await?;
        let policies = components
            .iter()
            .filter_map(|c| {
                let keys = c.verify.as_ref()?.keys.iter().map(|pem| {
                    ferry_oci::cosign::PublicKey::from_pem(pem)
                        .map_or_else(|_| "(unreadable key)".to_string(), |k| k.id().to_string())
                });
                Some(((c.app.clone(), c.name.clone()), keys.collect()))
            })
            .collect();
        let kinds = components
            .into_iter()
            .map(|c| ((c.app, c.name), c.kind.name()))
            .collect();
        Ok(Snapshot {
            builds,
            syncs,
            expected,
            kinds,
            policies,
        })
    }

    /// The keys whose signature was verified for sync `s` of build `b`: the component's policy
    /// keys when the sync succeeded (the build verified the source, and the install's agent
    /// verified again before it tagged anything: a failed check ends the sync `policy_failed`);
    /// `None` when the component has no policy or the sync did not succeed.
    pub fn verified_by(&self, b: &Build, s: &SyncJob) -> Option<&[String]> {
        if s.status() != JobStatus::Succeeded {
            return None;
        }
        self.policies
            .get(&(b.app.clone(), b.component.clone()))
            .map(Vec::as_slice)
    }

    /// The syncs of build `b`.
    pub fn syncs_of(&self, b: &BuildId) -> &[SyncJob] {
        self.syncs.get(b).map(Vec::as_slice).unwrap_or(&[])
    }

    /// How many installs build `b` should reach.
    pub fn expected_of(&self, b: &Build) -> usize {
        self.expected
            .get(&(b.app.clone(), b.component.clone()))
            .map_or(0, BTreeSet::len)
    }

    /// A build is done when it failed, or succeeded and every expected sync is terminal.
    pub fn build_done(&self, b: &Build) -> bool {
        match b.status() {
            JobStatus::Succeeded => {
                let syncs = self.syncs_of(&b.id);
                syncs.len() >= self.expected_of(b) && syncs.iter().all(|s| s.status().is_terminal())
            }
            s => s.is_terminal(),
        }
    }

    /// True when there is a build and every build is done.
    pub fn all_done(&self) -> bool {
        !self.builds.is_empty() && self.builds.iter().all(|b| self.build_done(b))
    }

    /// One line per build or sync that did not succeed, naming it and why; empty when every
    /// build and every sync succeeded.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for b in &self.builds {
            if b.status() != JobStatus::Succeeded {
                failures.push(format!(
                    "build {} of {} {}: {}",
                    b.id,
                    b.component,
                    b.status(),
                    error_text(&b.state.error)
                ));
                continue;
            }
            for s in self.syncs_of(&b.id) {
                if s.status() != JobStatus::Succeeded {
                    failures.push(format!(
                        "sync {} of {} to {} {}: {}",
                        s.id,
                        b.component,
                        s.install_id,
                        s.status(),
                        error_text(&s.state.error)
                    ));
                }
            }
        }
        failures
    }

    /// The builds not done yet, for a timeout message.
    pub fn pending_summary(&self) -> String {
        let pending: Vec<String> = self
            .builds
            .iter()
            .filter(|b| !self.build_done(b))
            .map(|b| format!("{} ({})", b.component, b.status()))
            .collect();
        format!("still pending: {}", pending.join(", "))
    }
}

/// A job's error as one line: `message (code)`.
pub fn error_text(e: &Option<JobError>) -> String {
    match e {
        Some(e) => format!("{} ({})", e.message, e.code),
        None => "no error recorded".into(),
    }
}
