//! Helpers to drive ferry-oci from the integration tests: clients with fast retries, a
//! recording progress sink, and a one-call copy.
//!
//! Only this module of the harness uses ferry-oci; the rest stays independent of it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_oci::progress::{ProgressEvent, ProgressSink};
use ferry_oci::retry::RetryPolicy;
use ferry_oci::{
    ClientConfig, CopyEngine, CopyOptions, CopyReport, CredentialStore, Reference, RegistryClient,
};

pub fn reference(s: &str) -> Reference {
    s.parse()
        .unwrap_or_else(|e| panic!("test reference {s:?} does not parse: {e}"))
}

/// Retries quick enough for tests, still several attempts.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_secs(2),
    }
}

pub fn client_with(credentials: CredentialStore) -> RegistryClient {
    RegistryClient::new(ClientConfig {
        credentials,
        retry: fast_retry(),
        ..ClientConfig::default()
    })
    .expect("client")
}

#[derive(Default)]
pub struct RecordingSink(Mutex<Vec<ProgressEvent>>);

impl RecordingSink {
    pub fn events(&self) -> Vec<ProgressEvent> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl ProgressSink for RecordingSink {
    fn event(&self, event: ProgressEvent) {
        if let Ok(mut e) = self.0.lock() {
            e.push(event);
        }
    }
}

pub async fn copy_with(
    client: RegistryClient,
    src: &str,
    dsts: &[String],
    options: CopyOptions,
) -> ferry_oci::Result<CopyReport> {
    let engine = CopyEngine::new(client, options);
    let dsts: Vec<Reference> = dsts.iter().map(|d| reference(d)).collect();
    let sink = Arc::new(RecordingSink::default());
    // A copy that hangs is a failure, not a stuck CI run.
    tokio::time::timeout(
        Duration::from_secs(120),
        engine.copy(&reference(src), &dsts, sink),
    )
    .await
    .unwrap_or_else(|_| panic!("copy {src} -> {dsts:?} did not finish within 120s"))
}

/// Anonymous copy with default options.
pub async fn copy(src: &str, dsts: &[String]) -> ferry_oci::Result<CopyReport> {
    copy_with(
        client_with(CredentialStore::new()),
        src,
        dsts,
        CopyOptions::default(),
    )
    .await
}
