//! ferry-spec: the OCI vocabulary every other Ferry crate shares, written once.
//!
//! - [`Digest`] and [`DigestHasher`]: `sha256:<64 lowercase hex>`, the only digest Ferry
//!   accepts; [`is_digest`] and [`is_digest_reference`].
//! - [`names`]: repository and tag rules ([`check_repository`], [`check_tag`]) and the
//!   validated [`Repository`] name.
//! - [`media`]: media-type constants and the `Accept` list.
//! - [`manifest`]: the descriptor / manifest / index model and its parser ([`ManifestDoc`]).
//! - [`SpecError`]: the one error type, naming what was refused and why.
//!
//! Everything here is a pure function of its input: it must never do I/O, never log, and
//! never re-encode a manifest (a manifest's digest is the hash of the exact bytes it came in).
//! ferry-core, ferry-oci and ferry-registry re-export these items at the paths they exposed
//! before this crate existed.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod media;
pub mod names;

pub use digest::{
    is_digest, is_digest_hex, is_digest_reference, short_digest, Digest, DigestHasher,
};
pub use error::SpecError;
pub use manifest::{Descriptor, ManifestDoc, Platform};
pub use names::{check_repository, check_tag, valid_repository, valid_tag, Repository};
