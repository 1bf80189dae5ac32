//! ferry-registry: an embedded OCI registry (distribution-spec 1.1) over content-addressed
//! storage on disk, with Ferry's security model enforced for real.
//!
//! One server hosts the vendor registry and many install registries as namespaces (path
//! prefixes). Access is by Ed25519-signed bearer tokens; a one-time grant lets one sync job
//! pull one manifest digest and what it references, until it expires or its sync is reported.
//! Only an install's agent identity may push into that install's namespace.
//!
//! It must never make a partial upload visible, never accept a manifest whose references are
//! missing, and never log or echo a token.

pub mod access;
pub mod authz;
mod body;
pub mod budget;
pub mod errors;
pub mod grant_scope;
mod graph;
pub mod in_use;
pub mod limits;
pub mod listener;
pub mod lock;
pub mod server;
pub mod storage;
pub mod token;
