//! `ferry dev` as a library: the whole Ferry system on one machine, no cloud account, assembled
//! and returned running ([`DevSystem`]) so the `ferry dev` command and tests drive the same
//! thing. The state directory layout and its listings live in [`state`]; what the system has
//! done so far is a [`Snapshot`].
//!
//! It sits above ferry-local (the IMS on SQLite), ferry-build (the in-process builder),
//! ferry-agent (one agent per install) and ferry-registry (the embedded registry), which is
//! why it is its own crate: ferry-local must not depend on the agent or the builder. This crate
//! must never print to the terminal or install a global logger (the CLI does both), and never
//! put a secret into an error or a log line.

mod agents;
mod builder;
pub mod bundle;
mod error;
pub mod manage;
pub mod state;
mod status;
mod system;

pub use builder::DevBuilder;
pub use error::{DevError, Result};
pub use status::{error_text, Snapshot};
pub use system::{DevOptions, DevSystem, POLL};
