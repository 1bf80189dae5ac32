//! ferry-oci: everything Ferry needs to move OCI content between registries and OCI image
//! layouts, one verified byte stream at a time.
//!
//! The crate is split the way regclient and ocync split theirs: a small HTTP distribution
//! client ([`client`]) that knows the wire protocol and nothing about graphs, an on-disk
//! OCI image layout ([`layout`]), and a copy engine ([`copy`]) that walks a manifest graph and
//! schedules blob transfers with per-host concurrency.
//!
//! It must never hold a whole blob in memory, never write a manifest whose references are not
//! all present and verified, and never put a credential into an error message or a log line.

pub mod auth;
pub mod bundle;
pub mod chart_bundle;
pub mod client;
pub mod copy;
pub mod cosign;
pub mod digest;
pub mod error;
pub mod layout;
pub mod media;
pub mod progress;
pub mod reference;
pub mod retry;

pub use auth::{Credential, CredentialStore, Secret};
pub use client::{ClientConfig, RegistryClient};
pub use copy::{CopyEngine, CopyOptions, CopyReport};
pub use digest::Digest;
pub use error::{Error, Result, Step};
pub use layout::OciLayout;
pub use media::{Descriptor, Manifest};
pub use progress::{ProgressEvent, ProgressSink};
pub use reference::{LayoutRef, Reference, RegistryRef, RepoRef};

/// A stream of blob bytes. Blobs travel through Ferry only as streams of this type.
pub type ByteStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes>> + Send + 'static>>;
