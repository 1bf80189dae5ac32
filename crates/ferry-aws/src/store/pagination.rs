//! Page cursors: DynamoDB's `LastEvaluatedKey` wrapped in an opaque cursor bound to the query
//! and partition that produced it, and the one paginated query every listing uses. Must never
//! accept a cursor from another query, nor scan the table.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use ferry_core::ports::{Cursor, Page, PageRequest, StoreError};

use crate::error::describe;

use super::items::{decode, encode_err, key_text, s, unavailable};
use super::{DynamoStore, Item, KEY_ATTRIBUTES};

/// What a page cursor holds: the query it belongs to and DynamoDB's `LastEvaluatedKey`.
#[derive(Serialize, Deserialize)]
pub(super) struct CursorBody {
    q: String,
    p: String,
    k: BTreeMap<String, String>,
}

pub(super) fn foreign_cursor() -> StoreError {
    StoreError::Invalid {
        message: "the page cursor does not belong to this query; pass back exactly the cursor \
                  the previous page of the same query returned"
            .into(),
    }
}

pub(super) fn encode_cursor(
    query: &str,
    partition: &str,
    key: &Item,
) -> Result<Cursor, StoreError> {
    let mut k = BTreeMap::new();
    for (name, v) in key {
        match v {
            AttributeValue::S(v) => {
                k.insert(name.clone(), v.clone());
            }
            _ => {
                return Err(StoreError::Corrupt {
                    key: key_text(key),
                    message: format!("key attribute {name} is not a string"),
                })
            }
        }
    }
    let body = CursorBody {
        q: query.into(),
        p: partition.into(),
        k,
    };
    let json = serde_json::to_vec(&body).map_err(|e| encode_err("cursor", e))?;
    Ok(Cursor::new(URL_SAFE_NO_PAD.encode(json)))
}

pub(super) fn decode_cursor(
    query: &str,
    partition: &str,
    cursor: &Cursor,
) -> Result<Item, StoreError> {
    let raw = URL_SAFE_NO_PAD
        .decode(cursor.as_str().as_bytes())
        .map_err(|_| foreign_cursor())?;
    let body: CursorBody = serde_json::from_slice(&raw).map_err(|_| foreign_cursor())?;
    if body.q != query || body.p != partition || body.k.is_empty() {
        return Err(foreign_cursor());
    }
    let mut item = Item::new();
    for (name, v) in body.k {
        if !KEY_ATTRIBUTES.contains(&name.as_str()) {
            return Err(foreign_cursor());
        }
        item.insert(name, s(v));
    }
    Ok(item)
}

/// One paginated query: which index, which partition, which sort-key prefix, which order.
pub(crate) struct QuerySpec {
    pub(crate) name: &'static str,
    pub(crate) index: Option<&'static str>,
    pub(crate) pk_attr: &'static str,
    pub(crate) sk_attr: &'static str,
    pub(crate) partition: String,
    pub(crate) sk_prefix: Option<&'static str>,
    pub(crate) forward: bool,
}

pub(crate) enum Put {
    Written,
    /// The condition failed; the item as it was, when DynamoDB returned it.
    Conflict(Option<Item>),
}

impl DynamoStore {
    pub(super) async fn query_page(
        &self,
        spec: &QuerySpec,
        page: &PageRequest,
    ) -> Result<(Vec<Item>, Option<Cursor>), StoreError> {
        let start = page
            .cursor
            .as_ref()
            .map(|c| decode_cursor(spec.name, &spec.partition, c))
            .transpose()?;
        let limit = i32::try_from(page.limit()).unwrap_or(i32::MAX);
        let mut req = self
            .client
            .query()
            .table_name(&self.table)
            .set_index_name(spec.index.map(str::to_owned))
            .expression_attribute_names("#pk", spec.pk_attr)
            .expression_attribute_values(":pk", s(spec.partition.clone()))
            .scan_index_forward(spec.forward)
            .limit(limit)
            .set_exclusive_start_key(start);
        req = match spec.sk_prefix {
            Some(prefix) => req
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .expression_attribute_names("#sk", spec.sk_attr)
                .expression_attribute_values(":prefix", s(prefix)),
            None => req.key_condition_expression("#pk = :pk"),
        };
        let out = req
            .send()
            .await
            .map_err(|e| unavailable(describe("DynamoDB", "Query", &e)))?;
        let next = match out.last_evaluated_key.as_ref() {
            Some(k) if !k.is_empty() => Some(encode_cursor(spec.name, &spec.partition, k)?),
            _ => None,
        };
        Ok((out.items.unwrap_or_default(), next))
    }

    pub(crate) async fn query<T: DeserializeOwned>(
        &self,
        spec: QuerySpec,
        page: &PageRequest,
    ) -> Result<Page<T>, StoreError> {
        let (items, next) = self.query_page(&spec, page).await?;
        let items = items.iter().map(decode).collect::<Result<Vec<T>, _>>()?;
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::store::{ts, PK, SK};

    #[test]
    fn cursors_are_bound_to_their_query() {
        let key = HashMap::from([(PK.to_owned(), s("BUILD#b1")), (SK.to_owned(), s("BUILD"))]);
        let c = encode_cursor("builds_by_component", "COMPONENT#a#b", &key).unwrap();
        assert_eq!(
            decode_cursor("builds_by_component", "COMPONENT#a#b", &c).unwrap(),
            key
        );
        assert!(decode_cursor("syncs_by_build", "COMPONENT#a#b", &c).is_err());
        assert!(decode_cursor("builds_by_component", "COMPONENT#a#c", &c).is_err());
        assert!(decode_cursor("q", "p", &Cursor::new("not base64!")).is_err());
    }

    #[test]
    fn timestamps_sort_as_strings() {
        assert!(ts(999) < ts(1_000));
        assert_eq!(ts(1).len(), 20);
    }
}
