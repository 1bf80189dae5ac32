//! Content digests, and the streaming verifier that every blob and manifest passes through.
//!
//! Only sha256 is accepted for content Ferry writes; sha512 parses so that foreign
//! references give a clear error instead of a parse failure. The verifier must never release
//! the final bytes of a stream whose digest does not match: a destination that never sees the
//! end of a body can never commit it.

use std::fmt;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A `sha256:<64 lowercase hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest of a byte slice (manifests, configs: small things).
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(bytes))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, without the algorithm.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map(|(_, h)| h).unwrap_or(&self.0)
    }

    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or("sha256")
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self> {
        let bad = |reason: &str| Error::InvalidDigest {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (alg, hex) = input
            .split_once(':')
            .ok_or_else(|| bad("expected <algorithm>:<hex>, e.g. sha256:…"))?;
        let want = match alg {
            "sha256" => 64,
            "sha512" => return Err(bad("sha512 digests are not supported; use sha256")),
            _ => return Err(bad("unknown algorithm; only sha256 is supported")),
        };
        if hex.len() != want {
            return Err(bad(&format!(
                "sha256 needs {want} hex characters, got {}",
                hex.len()
            )));
        }
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the hex part must be lowercase 0-9a-f"));
        }
        Ok(Digest(input.to_string()))
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental sha256 over a stream.
#[derive(Clone, Default)]
pub struct DigestHasher {
    hasher: Sha256,
    len: u64,
}

impl DigestHasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.len += chunk.len() as u64;
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn finish(self) -> Digest {
        Digest(format!("sha256:{}", hex::encode(self.hasher.finalize())))
    }
}

/// Wraps a byte stream and checks it against an expected digest and size while it flows.
///
/// It holds back one chunk: the last chunk is released only after the whole stream has hashed
/// to `expected`. On a mismatch the stream ends with [`Error::DigestMismatch`] (or
/// [`Error::SizeMismatch`]) instead, so an HTTP body or file fed from it is never complete.
pub struct VerifyingStream<S> {
    inner: S,
    expected: Digest,
    expected_size: Option<u64>,
    hasher: Option<DigestHasher>,
    held: Option<Bytes>,
    done: bool,
}

impl<S> VerifyingStream<S> {
    pub fn new(inner: S, expected: Digest, expected_size: Option<u64>) -> Self {
        Self {
            inner,
            expected,
            expected_size,
            hasher: Some(DigestHasher::new()),
            held: None,
            done: false,
        }
    }
}

impl<S> Stream for VerifyingStream<S>
where
    S: Stream<Item = Result<Bytes>> + Unpin,
{
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    let Some(hasher) = this.hasher.as_mut() else {
                        this.done = true;
                        return Poll::Ready(None);
                    };
                    hasher.update(&chunk);
                    if let Some(limit) = this.expected_size {
                        if hasher.len() > limit {
                            let actual = hasher.len();
                            this.done = true;
                            return Poll::Ready(Some(Err(Error::SizeMismatch {
                                digest: this.expected.clone(),
                                expected: limit,
                                actual,
                            })));
                        }
                    }
                    if let Some(prev) = this.held.replace(chunk) {
                        return Poll::Ready(Some(Ok(prev)));
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let Some(hasher) = this.hasher.take() else {
                        return Poll::Ready(None);
                    };
                    let len = hasher.len();
                    if let Some(expected) = this.expected_size {
                        if len != expected {
                            return Poll::Ready(Some(Err(Error::SizeMismatch {
                                digest: this.expected.clone(),
                                expected,
                                actual: len,
                            })));
                        }
                    }
                    let actual = hasher.finish();
                    if actual != this.expected {
                        return Poll::Ready(Some(Err(Error::DigestMismatch {
                            expected: this.expected.clone(),
                            actual,
                        })));
                    }
                    return Poll::Ready(this.held.take().map(Ok));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn passes_matching_content_through_unchanged() {
        let d = Digest::of(b"hello world");
        let s = VerifyingStream::new(chunks(&[b"hello", b" ", b"world"]), d, Some(11));
        let out: Vec<_> = s.collect().await;
        let bytes: Vec<u8> = out
            .into_iter()
            .flat_map(|c| c.expect("ok").to_vec())
            .collect();
        assert_eq!(bytes, b"hello world");
    }

    #[tokio::test]
    async fn withholds_the_last_chunk_on_mismatch() {
        let d = Digest::of(b"something else");
        let s = VerifyingStream::new(chunks(&[b"hello", b" ", b"world"]), d.clone(), None);
        let out: Vec<_> = s.collect().await;
        let released: usize = out
            .iter()
            .filter_map(|c| c.as_ref().ok())
            .map(|b| b.len())
            .sum();
        assert!(released < 11, "the final chunk must never be released");
        match out.last() {
            Some(Err(Error::DigestMismatch { expected, .. })) => assert_eq!(expected, &d),
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn rejects_oversized_content_early() {
        let d = Digest::of(b"hello");
        let s = VerifyingStream::new(chunks(&[b"hello", b"more"]), d, Some(5));
        let out: Vec<_> = s.collect().await;
        assert!(matches!(out.last(), Some(Err(Error::SizeMismatch { .. }))));
    }

    #[test]
    fn parses_and_rejects_digests() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(good.parse::<Digest>().is_ok());
        for bad in [
            "sha256:abc",
            "md5:00",
            "nocolon",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            let err = bad.parse::<Digest>().expect_err(bad).to_string();
            assert!(err.contains(bad), "error must name the input: {err}");
        }
    }
}
