//! Content digests, and the streaming verifier that every blob and manifest passes through.
//!
//! [`Digest`] and [`DigestHasher`] are defined once in ferry-spec (sha256 only) and
//! re-exported here. The verifier must never release
//! the final bytes of a stream whose digest does not match: a destination that never sees the
//! end of a body can never commit it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;

use crate::error::{Error, Result};

pub use ferry_spec::{Digest, DigestHasher};

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
}
