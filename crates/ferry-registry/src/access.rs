//! Access control: who may do what, where. Every request the server handles is checked here
//! first, before any storage is touched.
//!
//! The server calls [`AccessControl::authorize`] with the request's `Authorization` header
//! and what it is about to do. A refusal is 401 (with a `WWW-Authenticate` challenge naming the
//! scope) or 403, always with an OCI error body that never echoes the token.

/// What a request is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

/// What a request touches, for grants that are limited to one manifest graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A manifest by tag or digest.
    Manifest(String),
    /// A blob by digest.
    Blob(String),
    /// Tag list, referrers, upload sessions: the repository as a whole.
    Repository,
    /// `/v2/_catalog`.
    Catalog,
}
