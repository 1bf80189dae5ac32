//! ferry-agent: the install agent. It long-polls its install's queue for sync jobs, opens each
//! job's sealed grant with its own key, copies the artifact by digest from the vendor registry
//! into the install registry (which only it writes), verifies it and reports `sync.reported`.
//!
//! It must never log, report or store a clear grant or its own identity secret, never delete
//! a job message before its report was sent, and never make a half-copied artifact visible
//! under a tag (the copy engine writes the tag last). See docs/design/agent.md.

pub mod access;
pub mod agent;
#[cfg(feature = "aws")]
pub mod aws;
pub mod config;
pub mod import;
pub mod in_use;
pub mod inventory;
pub mod report;

pub use access::{AccessError, InstallAccess, StaticIdentity};
pub use agent::{Agent, AgentError, Disposition};
pub use config::{AgentConfig, VendorTrust, DEFAULT_KEEP_LAST};
pub use report::{BusReporter, QueueReporter, ReportError, Reporter, SYNC_REPORTED_QUEUE};
