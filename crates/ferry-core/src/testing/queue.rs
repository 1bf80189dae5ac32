//! `MemQueue`: SQS-like queues in memory (visibility timeouts on a manual clock, receive
//! counts, fresh receipt handles, injected send failures). Tests only: a long poll never
//! waits.

use crate::ports::Clock as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{lock, yield_now, ManualClock};
use crate::id::QueueName;
use crate::ports::{
    Batch, EntryFailure, MessageId, Queue, QueueError, ReceiptHandle, ReceiveOptions,
    ReceivedMessage, MAX_MESSAGE_BYTES,
};

// ---------------------------------------------------------------------------------------------
// Queue

#[derive(Debug, Clone)]
struct StoredMessage {
    id: String,
    body: String,
    receive_count: u32,
    visible_at: u64,
    receipt: Option<String>,
}

#[derive(Debug, Default)]
struct QueueState {
    queues: BTreeMap<QueueName, Vec<StoredMessage>>,
    next_id: u64,
    sends: u64,
    fail_sends: u32,
}

/// SQS-like queues in memory: visibility timeouts on a [`ManualClock`], receive counts, fresh
/// receipt handles per receive. Long polls return at once (there is nothing to wait for).
#[derive(Debug, Clone)]
pub struct MemQueue {
    state: Arc<Mutex<QueueState>>,
    clock: ManualClock,
}

impl MemQueue {
    pub fn new(clock: ManualClock) -> MemQueue {
        MemQueue {
            state: Arc::default(),
            clock,
        }
    }

    pub fn create_queue(&self, name: &QueueName) {
        lock(&self.state).queues.entry(name.clone()).or_default();
    }

    /// Bodies of all messages not yet deleted, visible or not, oldest first.
    pub fn bodies(&self, name: &QueueName) -> Vec<String> {
        lock(&self.state)
            .queues
            .get(name)
            .map(|q| q.iter().map(|m| m.body.clone()).collect())
            .unwrap_or_default()
    }

    /// Messages accepted so far, over all queues and calls.
    pub fn send_count(&self) -> u64 {
        lock(&self.state).sends
    }

    /// Makes the next `n` sends fail as unavailable.
    pub fn fail_next_sends(&self, n: u32) {
        lock(&self.state).fail_sends = n;
    }

    fn push(
        &self,
        s: &mut QueueState,
        queue: &QueueName,
        body: &str,
    ) -> Result<MessageId, QueueError> {
        self.push_delayed(s, queue, body, 0)
    }

    fn push_delayed(
        &self,
        s: &mut QueueState,
        queue: &QueueName,
        body: &str,
        delay_ms: u64,
    ) -> Result<MessageId, QueueError> {
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(QueueError::Invalid {
                message: format!(
                    "message is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                    body.len()
                ),
            });
        }
        if !s.queues.contains_key(queue) {
            return Err(QueueError::NoSuchQueue {
                queue: queue.clone(),
            });
        }
        s.next_id += 1;
        let id = format!("m-{:08}", s.next_id);
        let now = self.clock.now_ms();
        s.sends += 1;
        if let Some(q) = s.queues.get_mut(queue) {
            q.push(StoredMessage {
                id: id.clone(),
                body: body.to_string(),
                receive_count: 0,
                visible_at: now + delay_ms,
                receipt: None,
            });
        }
        Ok(MessageId(id))
    }

    fn find<'a>(
        s: &'a mut QueueState,
        queue: &QueueName,
        receipt: &ReceiptHandle,
    ) -> Result<(&'a mut Vec<StoredMessage>, usize), QueueError> {
        let q = s
            .queues
            .get_mut(queue)
            .ok_or_else(|| QueueError::NoSuchQueue {
                queue: queue.clone(),
            })?;
        let pos = q
            .iter()
            .position(|m| m.receipt.as_deref() == Some(receipt.0.as_str()))
            .ok_or(QueueError::InvalidReceiptHandle)?;
        Ok((q, pos))
    }
}

impl Queue for MemQueue {
    async fn send(&self, queue: &QueueName, body: &str) -> Result<MessageId, QueueError> {
        yield_now().await;
        let mut s = lock(&self.state);
        if s.fail_sends > 0 {
            s.fail_sends -= 1;
            return Err(QueueError::Unavailable {
                message: "injected send failure".into(),
            });
        }
        self.push(&mut s, queue, body)
    }

    async fn send_delayed(
        &self,
        queue: &QueueName,
        body: &str,
        delay_seconds: u32,
    ) -> Result<MessageId, QueueError> {
        crate::ports::check_delay(delay_seconds)?;
        yield_now().await;
        let mut s = lock(&self.state);
        self.push_delayed(&mut s, queue, body, u64::from(delay_seconds) * 1000)
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        bodies: &Batch<String>,
    ) -> Result<Vec<Result<MessageId, EntryFailure>>, QueueError> {
        yield_now().await;
        let mut s = lock(&self.state);
        if !s.queues.contains_key(queue) {
            return Err(QueueError::NoSuchQueue {
                queue: queue.clone(),
            });
        }
        Ok(bodies
            .items()
            .iter()
            .map(|b| {
                self.push(&mut s, queue, b).map_err(|e| EntryFailure {
                    code: "InvalidMessage".into(),
                    message: e.to_string(),
                    sender_fault: true,
                })
            })
            .collect())
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: &ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        yield_now().await;
        let now = self.clock.now_ms();
        let mut s = lock(&self.state);
        s.next_id += 1;
        let nonce = s.next_id;
        let q = s
            .queues
            .get_mut(queue)
            .ok_or_else(|| QueueError::NoSuchQueue {
                queue: queue.clone(),
            })?;
        let mut out = Vec::new();
        for m in q.iter_mut().filter(|m| m.visible_at <= now) {
            if out.len() >= options.max_messages() as usize {
                break;
            }
            m.receive_count += 1;
            m.visible_at = now + u64::from(options.visibility_seconds()) * 1000;
            let receipt = format!("{}:{}:{nonce}", m.id, m.receive_count);
            m.receipt = Some(receipt.clone());
            out.push(ReceivedMessage {
                message_id: MessageId(m.id.clone()),
                receipt_handle: ReceiptHandle(receipt),
                body: m.body.clone(),
                receive_count: m.receive_count,
            });
        }
        Ok(out)
    }

    async fn delete(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<(), QueueError> {
        yield_now().await;
        let mut s = lock(&self.state);
        let (q, pos) = MemQueue::find(&mut s, queue, receipt)?;
        q.remove(pos);
        Ok(())
    }

    async fn delete_batch(
        &self,
        queue: &QueueName,
        receipts: &Batch<ReceiptHandle>,
    ) -> Result<Vec<Result<(), EntryFailure>>, QueueError> {
        yield_now().await;
        let mut s = lock(&self.state);
        if !s.queues.contains_key(queue) {
            return Err(QueueError::NoSuchQueue {
                queue: queue.clone(),
            });
        }
        Ok(receipts
            .items()
            .iter()
            .map(|r| {
                MemQueue::find(&mut s, queue, r)
                    .map(|(q, pos)| {
                        q.remove(pos);
                    })
                    .map_err(|e| EntryFailure {
                        code: "ReceiptHandleIsInvalid".into(),
                        message: e.to_string(),
                        sender_fault: true,
                    })
            })
            .collect())
    }

    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        seconds: u32,
    ) -> Result<(), QueueError> {
        yield_now().await;
        let now = self.clock.now_ms();
        let mut s = lock(&self.state);
        let (q, pos) = MemQueue::find(&mut s, queue, receipt)?;
        q[pos].visible_at = now + u64::from(seconds) * 1000;
        Ok(())
    }
}
