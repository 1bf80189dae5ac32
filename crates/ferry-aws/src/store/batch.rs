//! Batched reads and all-or-nothing conditional writes (issue 12: a fan-out's calls per
//! install): `BatchGetItem` of up to 100 keys, strongly consistent, with its unprocessed keys
//! read again a bounded number of times; and `TransactWriteItems` of up to 100 conditional
//! puts, which either all land or none does. This module must never write unconditionally and
//! never retry without a bound.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem};

use ferry_core::ports::StoreError;

use crate::error::describe;

use super::items::unavailable;
use super::{DynamoStore, Item, PK, SK};

/// The most keys one BatchGetItem reads.
pub(crate) const MAX_BATCH_GET: usize = 100;
/// The most items one TransactWriteItems writes.
pub(crate) const MAX_TRANSACT: usize = 100;
/// How many times unprocessed keys (throttling) are asked for again before giving up.
const UNPROCESSED_ROUNDS: usize = 5;

/// One conditional put of a transaction.
pub(crate) struct CondPut {
    pub item: Item,
    pub condition: &'static str,
    pub names: Vec<(&'static str, &'static str)>,
    pub values: Vec<(&'static str, AttributeValue)>,
}

fn build_err(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Invalid {
        message: format!("bad DynamoDB request: {e}"),
    }
}

impl DynamoStore {
    /// The items of `keys` (pk, sk) that exist, in any order; duplicate keys are read once.
    pub(crate) async fn batch_get(
        &self,
        keys: Vec<(String, String)>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut unique: Vec<(String, String)> = Vec::with_capacity(keys.len());
        for k in keys {
            if !unique.contains(&k) {
                unique.push(k);
            }
        }
        let mut out = Vec::with_capacity(unique.len());
        for chunk in unique.chunks(MAX_BATCH_GET) {
            let mut pending: Vec<Item> = chunk
                .iter()
                .map(|(pk, sk)| {
                    HashMap::from([
                        (PK.to_owned(), AttributeValue::S(pk.clone())),
                        (SK.to_owned(), AttributeValue::S(sk.clone())),
                    ])
                })
                .collect();
            for _ in 0..UNPROCESSED_ROUNDS {
                if pending.is_empty() {
                    break;
                }
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut pending)))
                    // Reads follow conditional writes in the handlers: they must see them.
                    .consistent_read(true)
                    .build()
                    .map_err(build_err)?;
                let got = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| unavailable(describe("DynamoDB", "BatchGetItem", &e)))?;
                if let Some(mut responses) = got.responses {
                    out.extend(responses.remove(&self.table).unwrap_or_default());
                }
                pending = got
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
            if !pending.is_empty() {
                return Err(StoreError::Unavailable {
                    message: format!(
                        "DynamoDB left {} keys of a BatchGetItem unprocessed {UNPROCESSED_ROUNDS} times (throttled); the event will be retried",
                        pending.len()
                    ),
                });
            }
        }
        Ok(out)
    }

    /// Writes every put of `puts` (at most [`MAX_TRANSACT`]) if each one's condition holds, or
    /// none: `Ok(true)` when written, `Ok(false)` when the transaction was cancelled (a
    /// condition failed, or a concurrent transaction touched one of the items).
    pub(crate) async fn transact_put(&self, puts: Vec<CondPut>) -> Result<bool, StoreError> {
        if puts.is_empty() {
            return Ok(true);
        }
        if puts.len() > MAX_TRANSACT {
            return Err(StoreError::Invalid {
                message: format!(
                    "a transaction writes at most {MAX_TRANSACT} items, not {}",
                    puts.len()
                ),
            });
        }
        let mut items = Vec::with_capacity(puts.len());
        for p in puts {
            let mut put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(p.item))
                .condition_expression(p.condition);
            for (k, v) in p.names {
                put = put.expression_attribute_names(k, v);
            }
            for (k, v) in p.values {
                put = put.expression_attribute_values(k, v);
            }
            items.push(
                TransactWriteItem::builder()
                    .put(put.build().map_err(build_err)?)
                    .build(),
            );
        }
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(_))
                | Some(TransactWriteItemsError::TransactionInProgressException(_)) => Ok(false),
                _ => Err(unavailable(describe("DynamoDB", "TransactWriteItems", &e))),
            },
        }
    }
}
