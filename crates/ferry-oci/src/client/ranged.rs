//! Parallel ranged reads of one large blob, reassembled in order into one stream.
//!
//! On a long link one TCP connection moves at most its window per round trip, so one large
//! layer read on one connection decides a whole copy. Above [`RangedReads::threshold`] a
//! blob is read as consecutive parts of [`RangedReads::part_size`] bytes, each its own
//! `Range` GET (through the client's one dispatcher: the blob redirect is followed per part
//! and `Authorization` goes only to the registry's own origin), up to
//! [`RangedReads::max_parallel`] at once. The parts are handed out strictly in order, so the
//! caller hashes and uploads exactly as it would one stream (invariant 2 is the caller's
//! `VerifyingStream`, unchanged).
//!
//! Memory is bounded whatever the blob size: a part that is ahead of the one being handed
//! out may buffer at most [`RangedReads::part_buffer`] bytes (plus the chunk in hand), then
//! its connection stalls until its turn; so the reorder buffer is at most
//! `max_parallel × part_buffer` bytes. The first part always runs (on the caller's host
//! permit); further parts run only on host permits that are free when they would start, so
//! ranged reads never exceed the client's per-host limit and never wait for a permit.
//!
//! A source that answers the first range with 200 does not honour `Range`: that answer is
//! read as one (resumable) stream. A later part answered with 200 is read by skipping to its
//! start. A part that fails or ends short is re-requested from where it stopped, under the
//! client's retry policy, alone.
//!
//! It must never hold a whole blob or part in memory, never hand out a byte out of order,
//! and never end the stream early without an error.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::{Response, StatusCode};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::digest::Digest;
use crate::error::{Error, Result, Step};
use crate::reference::RepoRef;
use crate::ByteStream;

use super::{HostPermit, RegistryClient};

const MIB: u64 = 1024 * 1024;
/// Blobs at least this large are read as parallel ranges (0 turns ranged reads off).
pub const DEFAULT_RANGED_THRESHOLD: u64 = 32 * MIB;
/// Bytes per range request: large enough that a request's round trip is small next to its
/// transfer, small enough that a part ahead of its turn mostly fits in the socket and
/// network buffers while it waits.
pub const DEFAULT_RANGED_PART_SIZE: u64 = 8 * MIB;
/// Range requests of one blob in flight at once (also bounded by free host permits).
pub const DEFAULT_RANGED_MAX_PARALLEL: usize = 8;
/// Bytes a part ahead of its turn may hold in memory before its connection stalls. The rest
/// of what it has in flight waits in socket and network buffers, outside the process, so a
/// larger buffer buys little speed for its memory (8 parts × 512 KiB = 4 MiB at most).
pub const DEFAULT_RANGED_PART_BUFFER: usize = 512 * 1024;
/// Chunks a part may queue (a second bound, for sources that send tiny chunks).
const PART_QUEUE_CHUNKS: usize = 64;

/// When and how a blob is read as parallel ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangedReads {
    /// Blobs of at least this many bytes are read in ranges; 0 turns ranged reads off.
    pub threshold: u64,
    /// Bytes per range request.
    pub part_size: u64,
    /// Range requests of one blob in flight at once (at least 2 for ranges to be used).
    pub max_parallel: usize,
    /// Bytes one waiting part may buffer; the reorder buffer is at most
    /// `max_parallel × part_buffer` (plus one chunk per part).
    pub part_buffer: usize,
}

impl Default for RangedReads {
    fn default() -> Self {
        RangedReads {
            threshold: DEFAULT_RANGED_THRESHOLD,
            part_size: DEFAULT_RANGED_PART_SIZE,
            max_parallel: DEFAULT_RANGED_MAX_PARALLEL,
            part_buffer: DEFAULT_RANGED_PART_BUFFER,
        }
    }
}

impl RangedReads {
    /// Ranged reads turned off: every blob is one stream.
    pub fn off() -> Self {
        RangedReads {
            threshold: 0,
            ..Self::default()
        }
    }

    /// Whether a blob of `size` bytes is read in ranges.
    pub(super) fn applies(&self, size: u64) -> bool {
        self.threshold > 0
            && size >= self.threshold
            && self.part_size > 0
            && size > self.part_size
            && self.max_parallel > 1
    }
}

/// A chunk of a part, with the share of the part's buffer budget it holds until handed on.
type PartItem = Result<(Bytes, OwnedSemaphorePermit)>;

struct Part {
    len: u64,
    got: u64,
    rx: mpsc::Receiver<PartItem>,
    /// Runs on the caller's permit rather than one of its own.
    implicit: bool,
}

/// The reassembler: parts in order, the next to start, and the tasks reading them (aborted
/// when the stream is dropped).
struct Ranged {
    client: RegistryClient,
    repo: RepoRef,
    digest: Digest,
    size: u64,
    config: RangedReads,
    next_start: u64,
    parts: VecDeque<Part>,
    tasks: JoinSet<()>,
    implicit_free: bool,
    done: bool,
}

impl Ranged {
    fn launch(&mut self, first: Option<Response>, permit: Option<HostPermit>) {
        let start = self.next_start;
        let end = (start + self.config.part_size).min(self.size);
        self.next_start = end;
        let (tx, rx) = mpsc::channel(PART_QUEUE_CHUNKS);
        let budget = Arc::new(Semaphore::new(self.config.part_buffer.max(1)));
        let implicit = permit.is_none();
        let reader = PartReader {
            client: self.client.clone(),
            repo: self.repo.clone(),
            digest: self.digest.clone(),
            start,
            end,
            budget,
            tx,
            _permit: permit,
        };
        self.tasks.spawn(reader.run(first));
        self.parts.push_back(Part {
            len: end - start,
            got: 0,
            rx,
            implicit,
        });
    }

    /// Starts parts while there is room and a permit (the caller's, or a free one).
    fn top_up(&mut self) {
        while self.parts.len() < self.config.max_parallel && self.next_start < self.size {
            if self.implicit_free || self.parts.is_empty() {
                self.implicit_free = false;
                self.launch(None, None);
            } else if let Some(p) = self.client.try_host_permit(&self.repo.registry) {
                self.launch(None, Some(p));
            } else {
                break;
            }
        }
    }

    async fn next(mut self) -> Option<(Result<Bytes>, Ranged)> {
        if self.done {
            return None;
        }
        loop {
            self.top_up();
            let front = self.parts.front_mut()?;
            match front.rx.recv().await {
                Some(Ok((chunk, _budget))) => {
                    // The budget share is released as the chunk is handed on.
                    front.got += chunk.len() as u64;
                    return Some((Ok(chunk), self));
                }
                Some(Err(e)) => return Some(self.fail(e)),
                None => {
                    if front.got != front.len {
                        let e = Error::Registry {
                            step: Step::GetBlob,
                            target: format!("{}@{}", self.repo, self.digest),
                            status: 206,
                            message: format!(
                                "a range reader stopped after {} of {} bytes",
                                front.got, front.len
                            ),
                        };
                        return Some(self.fail(e));
                    }
                    if let Some(done) = self.parts.pop_front() {
                        self.implicit_free |= done.implicit;
                    }
                }
            }
        }
    }

    fn fail(mut self, e: Error) -> (Result<Bytes>, Ranged) {
        self.done = true;
        self.tasks.abort_all();
        self.parts.clear();
        (Err(e), self)
    }
}

/// How one response's body ended for a part.
enum Pass {
    /// Nothing more to do: the part is complete, or its reader was dropped.
    Finished,
    /// The body failed or ended short; the rest is requested again if the policy allows.
    Failed(Error),
}

/// Reads one part `[start, end)` into its queue, re-requesting what is missing after a
/// failure or a short answer.
struct PartReader {
    client: RegistryClient,
    repo: RepoRef,
    digest: Digest,
    start: u64,
    end: u64,
    budget: Arc<Semaphore>,
    tx: mpsc::Sender<PartItem>,
    /// The host permit this part's connection runs on (none: the caller's).
    _permit: Option<HostPermit>,
}

impl PartReader {
    async fn run(self, first: Option<Response>) {
        let target = format!(
            "{}@{} bytes {}-{}",
            self.repo,
            self.digest,
            self.start,
            self.end - 1
        );
        let policy = self.client.config().retry.clone();
        let mut got = 0u64;
        let mut failures = 0u32;
        let mut opened = first.map(|r| (r, 0u64));
        loop {
            let (resp, skip) = match opened.take() {
                Some(x) => x,
                None => match self.open(got).await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = self.tx.send(Err(e)).await;
                        return;
                    }
                },
            };
            let failure = match self.read(resp, skip, &mut got, &target).await {
                Pass::Finished => return,
                Pass::Failed(failure) => failure,
            };
            failures += 1;
            if !policy.should_retry(failures) {
                let _ = self.tx.send(Err(failure)).await;
                return;
            }
            let delay = policy.delay(failures, None);
            tracing::debug!(target = %target, offset = got, attempt = failures, error = %failure,
                delay_ms = delay.as_millis() as u64, "re-requesting the rest of a range");
            tokio::time::sleep(delay).await;
        }
    }

    /// Requests the rest of the part, from `got` bytes in. Returns the response and how many
    /// leading bytes of its body to drop (a server that ignored the range sends from 0).
    /// The dispatcher retries 429, 5xx and connection errors on the request itself.
    async fn open(&self, got: u64) -> Result<(Response, u64)> {
        let (resp, from_offset) = self
            .client
            .open_blob(
                &self.repo,
                &self.digest,
                self.start + got,
                Some(self.end - 1),
            )
            .await?;
        let skip = if from_offset { 0 } else { self.start + got };
        Ok((resp, skip))
    }

    /// Queues the body's bytes of this part, after dropping `skip` leading bytes, counting
    /// them in `got`.
    async fn read(&self, resp: Response, mut skip: u64, got: &mut u64, target: &str) -> Pass {
        let want = self.end - self.start;
        let cap = self.budget_cap();
        let mut body = resp.bytes_stream();
        loop {
            match body.next().await {
                Some(Ok(mut chunk)) => {
                    if skip > 0 {
                        let n = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
                        chunk = chunk.slice(n..);
                        skip -= n as u64;
                    }
                    let room = usize::try_from(want - *got).unwrap_or(usize::MAX);
                    chunk.truncate(room);
                    if chunk.is_empty() {
                        continue;
                    }
                    let share = u32::try_from(chunk.len().min(cap)).unwrap_or(u32::MAX);
                    let Ok(permit) = self.budget.clone().acquire_many_owned(share).await else {
                        return Pass::Finished;
                    };
                    *got += chunk.len() as u64;
                    if self.tx.send(Ok((chunk, permit))).await.is_err() {
                        return Pass::Finished; // the stream was dropped
                    }
                    if *got == want {
                        return Pass::Finished;
                    }
                }
                Some(Err(e)) => {
                    return Pass::Failed(RegistryClient::transport(Step::GetBlob, target, e))
                }
                None => {
                    return Pass::Failed(Error::Registry {
                        step: Step::GetBlob,
                        target: target.to_string(),
                        status: StatusCode::PARTIAL_CONTENT.as_u16(),
                        message: format!("the range ended after {got} of {want} bytes"),
                    })
                }
            }
        }
    }

    fn budget_cap(&self) -> usize {
        self.budget.available_permits().max(1)
    }
}

impl RegistryClient {
    /// GET a blob of known size as parallel ranges, reassembled in order (see the module
    /// documentation). Raw bytes, unverified, like [`RegistryClient::get_blob`].
    pub(super) async fn get_blob_ranged(
        &self,
        repo: &RepoRef,
        digest: &Digest,
        size: u64,
    ) -> Result<ByteStream> {
        let config = self.inner.config.ranged.clone();
        let first_end = config.part_size.min(size);
        let (resp, _) = self
            .open_blob(repo, digest, 0, Some(first_end.saturating_sub(1)))
            .await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            tracing::debug!(target = %format!("{repo}@{digest}"), status = resp.status().as_u16(),
                "the source does not honour Range: reading the blob as one stream");
            return Ok(self.resumable_stream(repo, digest, Some(size), resp));
        }
        let mut state = Ranged {
            client: self.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            size,
            config,
            next_start: 0,
            parts: VecDeque::new(),
            tasks: JoinSet::new(),
            implicit_free: false,
            done: false,
        };
        state.launch(Some(resp), None);
        Ok(Box::pin(futures::stream::unfold(state, Ranged::next)))
    }
}
