//! `SqsQueue`: ferry-core's `Queue` on SQS, plus the queue-with-DLQ helper that tests and
//! install registration use.
//!
//! Queue names resolve to URLs once and are cached; with [`SqsQueue::with_derived_urls`], the
//! URL of a queue of the same account and region is derived from a known one (no
//! GetQueueUrl: one call less per install in a fan-out). Receives long-poll with an operation
//! timeout longer than the wait, and ask for `ApproximateReceiveCount`, which drives the DLQ
//! redrive. This module must never log a message body (a `sync.job` carries a sealed grant).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use aws_config::SdkConfig;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use aws_sdk_sqs::Client;

use ferry_core::id::QueueName;
use ferry_core::ports::{
    Batch, EntryFailure, MessageId, Queue, QueueError, ReceiptHandle, ReceiveOptions,
    ReceivedMessage,
};

use crate::config::long_poll_timeouts;
use crate::error::{describe, Failure};

/// The SQS queue adapter. Cheap to clone; clones share the URL cache.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: Client,
    urls: Arc<Mutex<HashMap<QueueName, String>>>,
    /// `https://sqs.<region>.amazonaws.com/<account>/`: queue URLs are this plus the name.
    derive_from: Option<Arc<str>>,
}

/// A queue and the dead-letter queue its redrive policy points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueWithDlq {
    pub queue: QueueName,
    pub queue_url: String,
    pub dlq: QueueName,
    pub dlq_url: String,
}

fn missing_queue(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist"))
}

fn bad_receipt(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.contains("ReceiptHandleIsInvalid") || c.contains("InvalidReceiptHandle"))
}

fn queue_error(queue: &QueueName, f: Failure) -> QueueError {
    if missing_queue(f.code.as_deref()) {
        QueueError::NoSuchQueue {
            queue: queue.clone(),
        }
    } else if bad_receipt(f.code.as_deref()) {
        QueueError::InvalidReceiptHandle
    } else if f.transient {
        QueueError::Unavailable { message: f.message }
    } else {
        QueueError::Invalid { message: f.message }
    }
}

fn entry_failure(code: &str, message: Option<&str>, sender_fault: bool) -> EntryFailure {
    EntryFailure {
        code: code.to_owned(),
        message: message.unwrap_or("no message").to_owned(),
        sender_fault,
    }
}

fn unanswered() -> EntryFailure {
    entry_failure(
        "Unanswered",
        Some("SQS answered neither success nor failure for this entry"),
        false,
    )
}

impl SqsQueue {
    pub fn new(config: &SdkConfig) -> SqsQueue {
        SqsQueue::from_client(Client::new(config))
    }

    pub fn from_client(client: Client) -> SqsQueue {
        SqsQueue {
            client,
            urls: Arc::new(Mutex::new(HashMap::new())),
            derive_from: None,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<QueueName, String>> {
        // The map holds plain strings: a panic elsewhere cannot leave it inconsistent.
        self.urls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `queue`'s URL, so it is never looked up by name: a queue in another account
    /// (an install agent's inbound queue lives in the vendor's) has no GetQueueUrl by name.
    pub fn with_url(self, queue: QueueName, url: impl Into<String>) -> SqsQueue {
        self.cache().insert(queue, url.into());
        self
    }

    /// Derives the URL of every queue not recorded with [`SqsQueue::with_url`] from `known`,
    /// the URL of a queue in the same account and region (an SQS URL is
    /// `<endpoint>/<account>/<name>`), instead of asking GetQueueUrl. For the functions,
    /// whose queues (the install queues included) all live in the stack's account and region.
    pub fn with_derived_urls(mut self, known: &str) -> SqsQueue {
        self.derive_from = known
            .rfind('/')
            .filter(|i| *i > 0)
            .map(|i| Arc::from(&known[..=i]));
        self
    }

    /// The queue's URL, from the cache, derived, or from GetQueueUrl.
    pub async fn url(&self, queue: &QueueName) -> Result<String, QueueError> {
        if let Some(u) = self.cache().get(queue) {
            return Ok(u.clone());
        }
        if let Some(base) = &self.derive_from {
            let url = format!("{base}{}", queue.as_str());
            self.cache().insert(queue.clone(), url.clone());
            return Ok(url);
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(queue.as_str())
            .send()
            .await
            .map_err(|e| queue_error(queue, describe("SQS", "GetQueueUrl", &e)))?;
        let url = out.queue_url.ok_or_else(|| QueueError::Unavailable {
            message: "SQS GetQueueUrl answered without a URL".into(),
        })?;
        self.cache().insert(queue.clone(), url.clone());
        Ok(url)
    }

    /// Maps an error and forgets a cached URL whose queue is gone (it may be recreated).
    fn fail(&self, queue: &QueueName, f: Failure) -> QueueError {
        let e = queue_error(queue, f);
        if matches!(e, QueueError::NoSuchQueue { .. }) {
            self.cache().remove(queue);
        }
        e
    }

    /// Creates a standard queue (idempotent when the attributes match) and returns its URL.
    pub async fn create_queue(
        &self,
        queue: &QueueName,
        attributes: HashMap<QueueAttributeName, String>,
    ) -> Result<String, QueueError> {
        let out = self
            .client
            .create_queue()
            .queue_name(queue.as_str())
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| queue_error(queue, describe("SQS", "CreateQueue", &e)))?;
        let url = out.queue_url.ok_or_else(|| QueueError::Unavailable {
            message: "SQS CreateQueue answered without a URL".into(),
        })?;
        self.cache().insert(queue.clone(), url.clone());
        Ok(url)
    }

    /// The queue's ARN (for redrive policies and EventBridge targets).
    pub async fn arn(&self, queue: &QueueName) -> Result<String, QueueError> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| self.fail(queue, describe("SQS", "GetQueueAttributes", &e)))?;
        out.attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| QueueError::Unavailable {
                message: format!("SQS did not return the ARN of queue {queue}"),
            })
    }

    /// Creates `name` with a dead-letter queue `name-dlq`: after `max_receive_count` receives
    /// without a delete, SQS moves a message to the DLQ.
    pub async fn create_queue_with_dlq(
        &self,
        name: &QueueName,
        max_receive_count: u32,
        visibility_timeout: u32,
    ) -> Result<QueueWithDlq, QueueError> {
        let dlq = QueueName::new(format!("{name}-dlq")).map_err(|e| QueueError::Invalid {
            message: format!("cannot name the dead-letter queue of {name}: {e}"),
        })?;
        // 14 days: the longest SQS keeps a message, so a poison message waits for a human.
        let dlq_url = self
            .create_queue(
                &dlq,
                HashMap::from([(QueueAttributeName::MessageRetentionPeriod, "1209600".into())]),
            )
            .await?;
        let dlq_arn = self.arn(&dlq).await?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": max_receive_count,
        })
        .to_string();
        let queue_url = self
            .create_queue(
                name,
                HashMap::from([
                    (QueueAttributeName::RedrivePolicy, redrive),
                    (
                        QueueAttributeName::VisibilityTimeout,
                        visibility_timeout.to_string(),
                    ),
                ]),
            )
            .await?;
        Ok(QueueWithDlq {
            queue: name.clone(),
            queue_url,
            dlq,
            dlq_url,
        })
    }
}

impl Queue for SqsQueue {
    async fn send(&self, queue: &QueueName, body: &str) -> Result<MessageId, QueueError> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| self.fail(queue, describe("SQS", "SendMessage", &e)))?;
        out.message_id
            .map(MessageId)
            .ok_or_else(|| QueueError::Unavailable {
                message: "SQS SendMessage answered without a message id".into(),
            })
    }

    async fn send_delayed(
        &self,
        queue: &QueueName,
        body: &str,
        delay_seconds: u32,
    ) -> Result<MessageId, QueueError> {
        ferry_core::ports::check_delay(delay_seconds)?;
        let url = self.url(queue).await?;
        let out = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(body)
            // Checked above: at most 900, so the cast cannot wrap.
            .delay_seconds(delay_seconds as i32)
            .send()
            .await
            .map_err(|e| self.fail(queue, describe("SQS", "SendMessage", &e)))?;
        out.message_id
            .map(MessageId)
            .ok_or_else(|| QueueError::Unavailable {
                message: "SQS SendMessage answered without a message id".into(),
            })
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        bodies: &Batch<String>,
    ) -> Result<Vec<Result<MessageId, EntryFailure>>, QueueError> {
        let url = self.url(queue).await?;
        let mut req = self.client.send_message_batch().queue_url(url);
        for (i, body) in bodies.items().iter().enumerate() {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .build()
                .map_err(|e| QueueError::Invalid {
                    message: format!("bad batch entry: {e}"),
                })?;
            req = req.entries(entry);
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.fail(queue, describe("SQS", "SendMessageBatch", &e)))?;
        let mut results: Vec<Result<MessageId, EntryFailure>> =
            vec![Err(unanswered()); bodies.len()];
        for ok in out.successful {
            if let Some(slot) = ok.id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                *slot = Ok(MessageId(ok.message_id));
            }
        }
        for bad in out.failed {
            if let Some(slot) = bad
                .id
                .parse::<usize>()
                .ok()
                .and_then(|i| results.get_mut(i))
            {
                *slot = Err(entry_failure(
                    &bad.code,
                    bad.message.as_deref(),
                    bad.sender_fault,
                ));
            }
        }
        Ok(results)
    }

    async fn receive(
        &self,
        queue: &QueueName,
        options: &ReceiveOptions,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let url = self.url(queue).await?;
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(options.max_messages() as i32)
            .wait_time_seconds(options.wait_seconds() as i32)
            .visibility_timeout(options.visibility_seconds() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .customize()
            // The call legitimately hangs for the wait: give it that plus slack.
            .config_override(
                aws_sdk_sqs::config::Builder::default()
                    .timeout_config(long_poll_timeouts(options.wait_seconds())),
            )
            .send()
            .await
            .map_err(|e| self.fail(queue, describe("SQS", "ReceiveMessage", &e)))?;
        let mut got = Vec::new();
        for m in out.messages.unwrap_or_default() {
            let (Some(id), Some(handle)) = (m.message_id, m.receipt_handle) else {
                return Err(QueueError::Unavailable {
                    message: "SQS ReceiveMessage returned a message without id or handle".into(),
                });
            };
            let receive_count = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                .and_then(|c| c.parse().ok())
                .unwrap_or(1);
            got.push(ReceivedMessage {
                message_id: MessageId(id),
                receipt_handle: ReceiptHandle(handle),
                body: m.body.unwrap_or_default(),
                receive_count,
            });
        }
        Ok(got)
    }

    async fn delete(&self, queue: &QueueName, receipt: &ReceiptHandle) -> Result<(), QueueError> {
        let url = self.url(queue).await?;
        self.client
            .delete_message()
            .queue_url(url)
            .receipt_handle(&receipt.0)
            .send()
            .await
            .map_err(|e| self.fail(queue, describe("SQS", "DeleteMessage", &e)))?;
        Ok(())
    }

    async fn delete_batch(
        &self,
        queue: &QueueName,
        receipts: &Batch<ReceiptHandle>,
    ) -> Result<Vec<Result<(), EntryFailure>>, QueueError> {
        let url = self.url(queue).await?;
        let mut req = self.client.delete_message_batch().queue_url(url);
        for (i, r) in receipts.items().iter().enumerate() {
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&r.0)
                .build()
                .map_err(|e| QueueError::Invalid {
                    message: format!("bad batch entry: {e}"),
                })?;
            req = req.entries(entry);
        }
        let out = req
            .send()
            .await
            .map_err(|e| self.fail(queue, describe("SQS", "DeleteMessageBatch", &e)))?;
        let mut results: Vec<Result<(), EntryFailure>> = vec![Err(unanswered()); receipts.len()];
        for ok in out.successful {
            if let Some(slot) = ok.id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                *slot = Ok(());
            }
        }
        for bad in out.failed {
            if let Some(slot) = bad
                .id
                .parse::<usize>()
                .ok()
                .and_then(|i| results.get_mut(i))
            {
                *slot = Err(entry_failure(
                    &bad.code,
                    bad.message.as_deref(),
                    bad.sender_fault,
                ));
            }
        }
        Ok(results)
    }

    async fn change_visibility(
        &self,
        queue: &QueueName,
        receipt: &ReceiptHandle,
        seconds: u32,
    ) -> Result<(), QueueError> {
        if seconds > ferry_core::ports::MAX_VISIBILITY_SECONDS {
            return Err(QueueError::Invalid {
                message: format!(
                    "visibility timeout must be at most {}s, got {seconds}s",
                    ferry_core::ports::MAX_VISIBILITY_SECONDS
                ),
            });
        }
        let url = self.url(queue).await?;
        self.client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(&receipt.0)
            .visibility_timeout(seconds as i32)
            .send()
            .await
            .map_err(|e| self.fail(queue, describe("SQS", "ChangeMessageVisibility", &e)))?;
        Ok(())
    }
}
