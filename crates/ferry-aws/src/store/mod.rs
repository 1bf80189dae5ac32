//! `DynamoStore`: ferry-core's `JobStore` on one DynamoDB table (design in docs/design/aws.md).
//!
//! Every state change is a conditional `PutItem` on (status, version) with
//! `ReturnValuesOnConditionCheckFailure=ALL_OLD`, so a lost race comes back with the winner's
//! item and needs no second read. Queries page with DynamoDB's `LastEvaluatedKey`, wrapped in
//! an opaque cursor bound to the query that produced it. This module must never store a clear
//! grant (only `SealedGrant` expiries travel inside records) and never scan the table.

use std::collections::HashMap;
use std::fmt::Debug;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use serde::de::DeserializeOwned;

use ferry_core::id::InstallId;
use ferry_core::ports::{Conflict, GrantId, PageRequest, StoreError, WriteError};
use ferry_core::state::Expected;

use crate::error::describe;

use self::items::{revoked_pk, str_attr, unavailable};

// The handle, its settings and table creation live here; attribute and key helpers, cursors
// and queries, the catalog and the `JobStore` implementation each have a file.
mod batch;
mod catalog;
mod items;
mod jobs;
mod pagination;

pub(crate) use batch::{CondPut, MAX_TRANSACT};
pub(crate) use items::{
    decode, encode_err, install_pk, lineage_pk, n, num_attr, record_item, s, ts,
};
pub(crate) use pagination::{Put, QuerySpec};

/// The environment variable that names the table (set by the SAM template).
pub const TABLE_ENV: &str = "FERRY_TABLE";
pub const PK: &str = "pk";
pub const SK: &str = "sk";
pub const GSI1: &str = "gsi1";
pub const GSI1_PK: &str = "gsi1pk";
pub const GSI1_SK: &str = "gsi1sk";
pub const GSI2: &str = "gsi2";
pub const GSI2_PK: &str = "gsi2pk";
pub const GSI2_SK: &str = "gsi2sk";
/// A sparse index of what the reconciler looks at: open (queued or running) syncs, in
/// [`OPEN_SYNC_SHARDS`] partitions `OPEN#SYNC#<n>` sorted by last change, and running releases
/// in `RUNNING#RELEASE`. An item leaves it when it is no longer open (the attributes are
/// dropped), so the index holds only live work.
pub const GSI3: &str = "gsi3";
pub const GSI3_PK: &str = "gsi3pk";
pub const GSI3_SK: &str = "gsi3sk";
/// Open syncs are spread over this many index partitions, so a fan-out of thousands of syncs
/// does not write one hot index key.
pub const OPEN_SYNC_SHARDS: u32 = 8;
/// The syncs of one build are spread over this many GSI2 partitions `BUILD#<id>#<n>` (by a
/// hash of the install id), so a fan-out of one build to thousands of installs does not write
/// one hot index key (issue 12); `syncs_by_build` merges them (and the unsharded `BUILD#<id>`
/// that syncs written before the shards sit in).
pub const BUILD_SYNC_SHARDS: u32 = 8;
/// The index partition of running releases.
pub(crate) const RUNNING_RELEASES_PK: &str = "RUNNING#RELEASE";
/// The table's TTL attribute, in unix seconds.
pub const TTL: &str = "ttl";
/// How long a revocation record is kept: far beyond any grant's 15 minutes.
pub const REVOCATION_KEEP_MS: u64 = 24 * 60 * 60 * 1000;

const IN_PROGRESS: &str = "INPROGRESS";
const COMPLETED: &str = "COMPLETED";
const KEY_ATTRIBUTES: [&str; 8] = [PK, SK, GSI1_PK, GSI1_SK, GSI2_PK, GSI2_SK, GSI3_PK, GSI3_SK];

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB job store. Cheap to clone (the SDK client is shared).
#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    pub fn new(config: &SdkConfig, table: impl Into<String>) -> DynamoStore {
        DynamoStore::from_client(Client::new(config), table)
    }

    pub fn from_client(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
        }
    }

    /// The table named by `FERRY_TABLE`.
    pub fn from_env(config: &SdkConfig) -> Result<DynamoStore, StoreError> {
        let table = std::env::var(TABLE_ENV).map_err(|_| StoreError::Invalid {
            message: format!("{TABLE_ENV} is not set; set it to the job table's name"),
        })?;
        Ok(DynamoStore::new(config, table))
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table exactly as docs/design/aws.md describes, with TTL on `ttl`.
    /// For moto, tests and `ferry dev`; in AWS the SAM template owns the table.
    pub async fn create_table(&self) -> Result<(), StoreError> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
        };
        let key = |name: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(t)
                .build()
        };
        let invalid = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Invalid {
            message: format!("bad table definition: {e}"),
        };
        let gsi = |name: &str, pk: &str, sk: &str| {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(pk, KeyType::Hash).map_err(invalid)?)
                .key_schema(key(sk, KeyType::Range).map_err(invalid)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(invalid)
        };
        let mut req = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key(PK, KeyType::Hash).map_err(invalid)?)
            .key_schema(key(SK, KeyType::Range).map_err(invalid)?)
            .global_secondary_indexes(gsi(GSI1, GSI1_PK, GSI1_SK)?)
            .global_secondary_indexes(gsi(GSI2, GSI2_PK, GSI2_SK)?)
            .global_secondary_indexes(gsi(GSI3, GSI3_PK, GSI3_SK)?);
        for a in KEY_ATTRIBUTES {
            req = req.attribute_definitions(attr(a).map_err(invalid)?);
        }
        req.send()
            .await
            .map_err(|e| unavailable(describe("DynamoDB", "CreateTable", &e)))?;
        self.client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(TTL)
                    .enabled(true)
                    .build()
                    .map_err(invalid)?,
            )
            .send()
            .await
            .map_err(|e| unavailable(describe("DynamoDB", "UpdateTimeToLive", &e)))?;
        Ok(())
    }

    /// Records that the grant of one attempt is revoked: the IMS reads it before it acts on a
    /// report of that attempt or mints for it again (ECR itself cannot revoke a token).
    pub async fn revoke_grant(&self, grant: &GrantId, now_ms: u64) -> Result<(), StoreError> {
        let keep = now_ms.saturating_add(REVOCATION_KEEP_MS);
        let mut item = record_item(revoked_pk(grant), "REVOKED", "revoked", "{}".into());
        item.remove("data");
        item.insert("revoked_at".into(), n(now_ms));
        item.insert(TTL.into(), n(keep.div_ceil(1000)));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable(describe("DynamoDB", "PutItem", &e)))?;
        Ok(())
    }

    /// Whether the grant of this attempt was revoked.
    pub async fn is_grant_revoked(&self, grant: &GrantId) -> Result<bool, StoreError> {
        Ok(self.get(revoked_pk(grant), "REVOKED").await?.is_some())
    }

    pub(crate) async fn get(&self, pk: String, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(sk))
            // Reads follow conditional writes in the handlers: they must see them.
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(describe("DynamoDB", "GetItem", &e)))?;
        Ok(out.item)
    }

    pub(crate) async fn get_decoded<T: DeserializeOwned>(
        &self,
        pk: String,
        sk: &str,
    ) -> Result<Option<T>, StoreError> {
        self.get(pk, sk).await?.as_ref().map(decode).transpose()
    }

    async fn put(&self, item: Item) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| unavailable(describe("DynamoDB", "PutItem", &e)))?;
        Ok(())
    }

    async fn delete(&self, pk: String, sk: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(pk))
            .key(SK, s(sk))
            .send()
            .await
            .map_err(|e| unavailable(describe("DynamoDB", "DeleteItem", &e)))?;
        Ok(())
    }

    pub(crate) async fn put_if(
        &self,
        item: Item,
        condition: &str,
        names: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Put, StoreError> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (k, v) in names {
            req = req.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        match req.send().await {
            Ok(_) => Ok(Put::Written),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(c)) => {
                    Ok(Put::Conflict(c.item().cloned()))
                }
                _ => Err(unavailable(describe("DynamoDB", "PutItem", &e))),
            },
        }
    }

    /// The item that beat a conditional write: from ALL_OLD when DynamoDB sent it, else read.
    pub(crate) async fn current<T: DeserializeOwned>(
        &self,
        returned: Option<Item>,
        pk: String,
        sk: &str,
    ) -> Result<Option<T>, StoreError> {
        match returned {
            Some(item) => decode(&item).map(Some),
            // A missing item returns nothing, and so may an emulator: one read settles both.
            None => self.get_decoded(pk, sk).await,
        }
    }

    async fn create_job<T: DeserializeOwned + Debug>(
        &self,
        item: Item,
        pk: String,
        sk: &str,
    ) -> Result<(), WriteError<T>> {
        let cond = "attribute_not_exists(#pk)";
        match self.put_if(item, cond, &[("#pk", PK)], vec![]).await? {
            Put::Written => Ok(()),
            Put::Conflict(old) => Err(WriteError::Conflict(Conflict {
                current: self.current(old, pk, sk).await?,
            })),
        }
    }

    async fn update_job<T: DeserializeOwned + Debug>(
        &self,
        item: Item,
        pk: String,
        sk: &str,
        expected: Expected,
    ) -> Result<(), WriteError<T>> {
        let cond = "#status = :status AND #version = :version";
        let names = [("#status", "status"), ("#version", "version")];
        let values = vec![
            (":status", s(expected.status.as_str())),
            (":version", n(expected.version)),
        ];
        match self.put_if(item, cond, &names, values).await? {
            Put::Written => Ok(()),
            Put::Conflict(old) => Err(WriteError::Conflict(Conflict {
                current: self.current(old, pk, sk).await?,
            })),
        }
    }

    /// Every subscription sort key an install has now (one page is rarely more than a few).
    async fn subscription_keys(&self, id: &InstallId) -> Result<Vec<String>, StoreError> {
        let spec = QuerySpec {
            name: "subscriptions",
            index: None,
            pk_attr: PK,
            sk_attr: SK,
            partition: install_pk(id),
            sk_prefix: Some("SUB#"),
            forward: true,
        };
        let mut page = PageRequest::first(ferry_core::ports::MAX_PAGE);
        let mut keys = Vec::new();
        loop {
            let (items, next) = self.query_page(&spec, &page).await?;
            for item in &items {
                keys.push(str_attr(item, SK)?.to_owned());
            }
            match next {
                Some(c) => page = PageRequest::after(ferry_core::ports::MAX_PAGE, c),
                None => return Ok(keys),
            }
        }
    }
}
