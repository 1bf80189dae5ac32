//! `DynamoStore`: ferry-core's `JobStore` on one DynamoDB table (design in docs/design/aws.md).
//!
//! Every state change is a conditional `PutItem` on (status, version) with
//! `ReturnValuesOnConditionCheckFailure=ALL_OLD`, so a lost race comes back with the winner's
//! item and needs no second read. Queries page with DynamoDB's `LastEvaluatedKey`, wrapped in
//! an opaque cursor bound to the query that produced it. This module must never store a clear
//! grant (only `SealedGrant` expiries travel inside records) and never scan the table.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_dynamodb::Client;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use ferry_core::domain::{Build, Component, Install, LineageRecord, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, SyncId};
use ferry_core::ports::{
    Conflict, Cursor, GrantId, IdempotencyClaim, JobStore, Page, PageRequest, StoreError,
    WriteError,
};
use ferry_core::state::Expected;
use ferry_core::telemetry::InstallTelemetry;

use crate::error::{describe, Failure};

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

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn ts(ms: u64) -> String {
    // Zero-padded so that string order is time order.
    format!("{ms:020}")
}

fn unavailable(f: Failure) -> StoreError {
    if f.transient {
        StoreError::Unavailable { message: f.message }
    } else {
        StoreError::Invalid { message: f.message }
    }
}

pub(crate) fn encode_err(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Invalid {
        message: format!("cannot encode {what}: {e}"),
    }
}

fn key_text(item: &Item) -> String {
    let get = |k: &str| match item.get(k) {
        Some(AttributeValue::S(v)) => v.as_str(),
        _ => "?",
    };
    format!("{}/{}", get(PK), get(SK))
}

fn str_attr<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Corrupt {
            key: key_text(item),
            message: format!("attribute {name} is missing or not a string"),
        }),
    }
}

pub(crate) fn num_attr(item: &Item, name: &str) -> Result<u64, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().map_err(|_| StoreError::Corrupt {
            key: key_text(item),
            message: format!("attribute {name} is not an unsigned integer"),
        }),
        _ => Err(StoreError::Corrupt {
            key: key_text(item),
            message: format!("attribute {name} is missing or not a number"),
        }),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    let data = str_attr(item, "data")?;
    serde_json::from_str(data).map_err(|e| StoreError::Corrupt {
        key: key_text(item),
        message: format!("data does not decode: {e}"),
    })
}

fn component_pk(app: &AppName, name: &ComponentName) -> String {
    format!("COMPONENT#{app}#{name}")
}
pub(crate) fn install_pk(id: &InstallId) -> String {
    format!("INSTALL#{id}")
}
fn sub_key(app: &AppName, component: &ComponentName) -> String {
    format!("SUB#{app}#{component}")
}
fn build_pk(id: &BuildId) -> String {
    format!("BUILD#{id}")
}
fn sync_pk(id: &SyncId) -> String {
    format!("SYNC#{id}")
}
pub(crate) fn lineage_pk(d: &Digest) -> String {
    format!("LINEAGE#{d}")
}
fn idem_pk(key: &str) -> String {
    format!("IDEMP#{key}")
}
fn revoked_pk(grant: &GrantId) -> String {
    format!("REVOKED#{grant}")
}
fn security_pk(kind: &str) -> String {
    format!("SECURITY#{kind}")
}
/// The catalog partition: one item per app, component and install, so the management port
/// lists them with a Query (never a Scan). A vendor's catalog is small (hundreds of items).
const CATALOG_PK: &str = "CATALOG";
fn catalog_app_sk(app: &AppName) -> String {
    format!("APP#{app}")
}
fn catalog_component_sk(app: &AppName, name: &ComponentName) -> String {
    format!("COMPONENT#{app}#{name}")
}
fn catalog_install_sk(id: &InstallId) -> String {
    format!("INSTALL#{id}")
}

pub(crate) fn record_item(pk: String, sk: &str, kind: &str, data: String) -> Item {
    HashMap::from([
        (PK.to_owned(), s(pk)),
        (SK.to_owned(), s(sk)),
        ("kind".to_owned(), s(kind)),
        ("data".to_owned(), s(data)),
    ])
}

fn build_item(b: &Build) -> Result<Item, StoreError> {
    let data = serde_json::to_string(b).map_err(|e| encode_err("build", e))?;
    let mut item = record_item(build_pk(&b.id), "BUILD", "build", data);
    item.insert("status".into(), s(b.state.status.as_str()));
    item.insert("version".into(), n(b.state.version));
    item.insert(GSI1_PK.into(), s(component_pk(&b.app, &b.component)));
    item.insert(
        GSI1_SK.into(),
        s(format!("BUILD#{}#{}", ts(b.state.created_at), b.id)),
    );
    Ok(item)
}

fn sync_item(j: &SyncJob) -> Result<Item, StoreError> {
    let data = serde_json::to_string(j).map_err(|e| encode_err("sync job", e))?;
    let mut item = record_item(sync_pk(&j.id), "SYNC", "sync", data);
    item.insert("status".into(), s(j.state.status.as_str()));
    item.insert("version".into(), n(j.state.version));
    item.insert(GSI1_PK.into(), s(install_pk(&j.install_id)));
    item.insert(
        GSI1_SK.into(),
        s(format!("SYNC#{}#{}", ts(j.state.created_at), j.id)),
    );
    item.insert(GSI2_PK.into(), s(build_pk(&j.build_id)));
    item.insert(GSI2_SK.into(), s(format!("SYNC#{}#{}", j.install_id, j.id)));
    if !j.status().is_terminal() {
        item.insert(GSI3_PK.into(), s(open_sync_pk(open_sync_shard(&j.id))));
        item.insert(
            GSI3_SK.into(),
            s(format!("{}#{}", ts(j.state.updated_at), j.id)),
        );
    }
    Ok(item)
}

/// The index partition of open sync `id` (FNV-1a of the id, so it never changes).
fn open_sync_shard(id: &SyncId) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.as_str().bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h % OPEN_SYNC_SHARDS
}

fn open_sync_pk(shard: u32) -> String {
    format!("OPEN#SYNC#{shard}")
}

fn telemetry_item(t: &InstallTelemetry) -> Result<Item, StoreError> {
    let data = serde_json::to_string(t).map_err(|e| encode_err("install telemetry", e))?;
    let mut item = record_item(install_pk(&t.install_id), TELEMETRY_SK, "telemetry", data);
    item.insert("last_seen".into(), n(t.last_seen));
    Ok(item)
}

const TELEMETRY_SK: &str = "TELEMETRY";

/// What a page cursor holds: the query it belongs to and DynamoDB's `LastEvaluatedKey`.
#[derive(Serialize, Deserialize)]
struct CursorBody {
    q: String,
    p: String,
    k: BTreeMap<String, String>,
}

fn foreign_cursor() -> StoreError {
    StoreError::Invalid {
        message: "the page cursor does not belong to this query; pass back exactly the cursor \
                  the previous page of the same query returned"
            .into(),
    }
}

fn encode_cursor(query: &str, partition: &str, key: &Item) -> Result<Cursor, StoreError> {
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

fn decode_cursor(query: &str, partition: &str, cursor: &Cursor) -> Result<Item, StoreError> {
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

    async fn query_page(
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

/// The catalog: what the management port lists and removes beyond the `JobStore` port.
impl DynamoStore {
    async fn catalog<T: DeserializeOwned>(
        &self,
        prefix: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let spec = |_: ()| QuerySpec {
            name: "catalog",
            index: None,
            pk_attr: PK,
            sk_attr: SK,
            partition: CATALOG_PK.to_owned(),
            sk_prefix: Some(prefix),
            forward: true,
        };
        let mut page = PageRequest::first(ferry_core::ports::MAX_PAGE);
        let mut out = Vec::new();
        loop {
            let got: Page<T> = self.query(spec(()), &page).await?;
            out.extend(got.items);
            match got.next {
                Some(c) => page = PageRequest::after(ferry_core::ports::MAX_PAGE, c),
                None => return Ok(out),
            }
        }
    }

    /// Adds or replaces an app.
    pub async fn put_app(&self, app: &ferry_core::manage::AppRecord) -> Result<(), StoreError> {
        let data = serde_json::to_string(app).map_err(|e| encode_err("app", e))?;
        self.put(record_item(
            CATALOG_PK.to_owned(),
            &catalog_app_sk(&app.name),
            "app",
            data,
        ))
        .await
    }

    /// One app, if it exists.
    pub async fn get_app(
        &self,
        app: &AppName,
    ) -> Result<Option<ferry_core::manage::AppRecord>, StoreError> {
        self.get_decoded(CATALOG_PK.to_owned(), &catalog_app_sk(app))
            .await
    }

    /// Every app, by name.
    pub async fn apps(&self) -> Result<Vec<ferry_core::manage::AppRecord>, StoreError> {
        self.catalog("APP#").await
    }

    /// Every component, by app then name.
    pub async fn components(&self) -> Result<Vec<Component>, StoreError> {
        self.catalog("COMPONENT#").await
    }

    /// Every install, by id.
    pub async fn installs(&self) -> Result<Vec<Install>, StoreError> {
        self.catalog("INSTALL#").await
    }

    /// Deletes an install's record, subscriptions and catalog entry (its syncs and lineage
    /// stay); returns whether it existed. Subscriptions go first, so fan-out stops before the
    /// record disappears.
    pub async fn delete_install(&self, id: &InstallId) -> Result<bool, StoreError> {
        let existed = self.get(install_pk(id), "INSTALL").await?.is_some();
        for sk in self.subscription_keys(id).await? {
            self.delete(install_pk(id), &sk).await?;
        }
        self.delete(install_pk(id), TELEMETRY_SK).await?;
        self.delete(install_pk(id), "INSTALL").await?;
        self.delete(CATALOG_PK.to_owned(), &catalog_install_sk(id))
            .await?;
        Ok(existed)
    }
}

impl JobStore for DynamoStore {
    async fn put_component(&self, component: &Component) -> Result<(), StoreError> {
        let data = serde_json::to_string(component).map_err(|e| encode_err("component", e))?;
        self.put(record_item(
            component_pk(&component.app, &component.name),
            "COMPONENT",
            "component",
            data.clone(),
        ))
        .await?;
        self.put(record_item(
            CATALOG_PK.to_owned(),
            &catalog_component_sk(&component.app, &component.name),
            "component",
            data,
        ))
        .await
    }

    async fn get_component(
        &self,
        app: &AppName,
        name: &ComponentName,
    ) -> Result<Option<Component>, StoreError> {
        self.get_decoded(component_pk(app, name), "COMPONENT").await
    }

    /// Last write wins. Not atomic across the subscription items: a concurrent query may
    /// briefly see the old subscription list, which the fan-out tolerates (catalog data).
    async fn put_install(&self, install: &Install) -> Result<(), StoreError> {
        let data = serde_json::to_string(install).map_err(|e| encode_err("install", e))?;
        let old = self.subscription_keys(&install.id).await?;
        let pk = install_pk(&install.id);
        self.put(record_item(pk.clone(), "INSTALL", "install", data.clone()))
            .await?;
        let mut wanted = Vec::with_capacity(install.components.len());
        for c in &install.components {
            let sk = sub_key(&install.app, c);
            let mut item = record_item(pk.clone(), &sk, "subscription", data.clone());
            item.insert(GSI1_PK.into(), s(sk.clone()));
            item.insert(GSI1_SK.into(), s(pk.clone()));
            self.put(item).await?;
            wanted.push(sk);
        }
        for sk in old.iter().filter(|k| !wanted.contains(k)) {
            self.delete(pk.clone(), sk).await?;
        }
        self.put(record_item(
            CATALOG_PK.to_owned(),
            &catalog_install_sk(&install.id),
            "install",
            data,
        ))
        .await
    }

    async fn get_install(&self, id: &InstallId) -> Result<Option<Install>, StoreError> {
        self.get_decoded(install_pk(id), "INSTALL").await
    }

    async fn create_build(&self, build: &Build) -> Result<(), WriteError<Build>> {
        self.create_job(build_item(build)?, build_pk(&build.id), "BUILD")
            .await
    }

    async fn get_build(&self, id: &BuildId) -> Result<Option<Build>, StoreError> {
        self.get_decoded(build_pk(id), "BUILD").await
    }

    async fn update_build(
        &self,
        next: &Build,
        expected: Expected,
    ) -> Result<(), WriteError<Build>> {
        self.update_job(build_item(next)?, build_pk(&next.id), "BUILD", expected)
            .await
    }

    async fn create_sync(&self, sync: &SyncJob) -> Result<(), WriteError<SyncJob>> {
        self.create_job(sync_item(sync)?, sync_pk(&sync.id), "SYNC")
            .await
    }

    async fn get_sync(&self, id: &SyncId) -> Result<Option<SyncJob>, StoreError> {
        self.get_decoded(sync_pk(id), "SYNC").await
    }

    async fn update_sync(
        &self,
        next: &SyncJob,
        expected: Expected,
    ) -> Result<(), WriteError<SyncJob>> {
        self.update_job(sync_item(next)?, sync_pk(&next.id), "SYNC", expected)
            .await
    }

    async fn record_lineage(&self, record: &LineageRecord) -> Result<LineageRecord, StoreError> {
        let data = serde_json::to_string(record).map_err(|e| encode_err("lineage", e))?;
        let pk = lineage_pk(&record.digest);
        let sk = install_pk(&record.install_id);
        let item = record_item(pk.clone(), &sk, "lineage", data);
        match self
            .put_if(item, "attribute_not_exists(#pk)", &[("#pk", PK)], vec![])
            .await?
        {
            Put::Written => Ok(record.clone()),
            Put::Conflict(old) => match self.current(old, pk, &sk).await? {
                Some(first) => Ok(first),
                // Deleted between the two calls: nothing else deletes lineage, so corrupt.
                None => Err(StoreError::Corrupt {
                    key: format!("{}/{}", lineage_pk(&record.digest), sk),
                    message: "lineage item vanished after a conflicting write".into(),
                }),
            },
        }
    }

    async fn idempotency_begin(
        &self,
        key: &str,
        now: u64,
        in_progress_until: u64,
        expires_at: u64,
    ) -> Result<IdempotencyClaim, StoreError> {
        let pk = idem_pk(key);
        let mut item = record_item(pk.clone(), "IDEMP", "idempotency", String::new());
        item.remove("data");
        item.insert("status".into(), s(IN_PROGRESS));
        item.insert("in_progress_until".into(), n(in_progress_until));
        item.insert("expires_at".into(), n(expires_at));
        item.insert(TTL.into(), n(expires_at.div_ceil(1000)));
        // TTL deletion is lazy (up to days late), so expiry is also checked here.
        let cond = "attribute_not_exists(#pk) OR #exp <= :now \
                    OR (#status = :inprogress AND #until <= :now)";
        let names = [
            ("#pk", PK),
            ("#exp", "expires_at"),
            ("#status", "status"),
            ("#until", "in_progress_until"),
        ];
        let values = vec![(":now", n(now)), (":inprogress", s(IN_PROGRESS))];
        let old = match self.put_if(item, cond, &names, values).await? {
            Put::Written => return Ok(IdempotencyClaim::Acquired),
            Put::Conflict(Some(old)) => old,
            Put::Conflict(None) => match self.get(pk, "IDEMP").await? {
                Some(old) => old,
                // Released in between: the caller may simply try again.
                None => {
                    return Err(StoreError::Unavailable {
                        message: format!("idempotency record {key} changed during the claim"),
                    })
                }
            },
        };
        if str_attr(&old, "status")? == COMPLETED {
            Ok(IdempotencyClaim::Completed {
                result: str_attr(&old, "result")?.to_owned(),
            })
        } else {
            Ok(IdempotencyClaim::InProgress {
                until: num_attr(&old, "in_progress_until")?,
            })
        }
    }

    async fn idempotency_complete(
        &self,
        key: &str,
        result: &str,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let mut item = record_item(idem_pk(key), "IDEMP", "idempotency", String::new());
        item.remove("data");
        item.insert("status".into(), s(COMPLETED));
        item.insert("result".into(), s(result));
        item.insert("in_progress_until".into(), n(0));
        item.insert("expires_at".into(), n(expires_at));
        item.insert(TTL.into(), n(expires_at.div_ceil(1000)));
        self.put(item).await
    }

    async fn count_security_event(&self, kind: &str, now: u64) -> Result<u64, StoreError> {
        // One item per kind, updated atomically: the set of items never grows with input.
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, s(security_pk(kind)))
            .key(SK, s("SECURITY"))
            .update_expression("ADD #count :one SET last_at = :now, kind = :kind")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":kind", s("security"))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| unavailable(describe("DynamoDB", "UpdateItem", &e)))?;
        Ok(out
            .attributes
            .as_ref()
            .and_then(|a| a.get("count"))
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0))
    }

    async fn security_event_count(&self, kind: &str) -> Result<(u64, Option<u64>), StoreError> {
        let Some(item) = self.get(security_pk(kind), "SECURITY").await? else {
            return Ok((0, None));
        };
        let num = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        Ok((num("count").unwrap_or(0), num("last_at")))
    }

    async fn record_heartbeat(
        &self,
        telemetry: &InstallTelemetry,
    ) -> Result<InstallTelemetry, StoreError> {
        let item = telemetry_item(telemetry)?;
        // Last-seen only moves forward: an older heartbeat loses the condition.
        let cond = "attribute_not_exists(#pk) OR #last_seen <= :last_seen";
        match self
            .put_if(
                item,
                cond,
                &[("#pk", PK), ("#last_seen", "last_seen")],
                vec![(":last_seen", n(telemetry.last_seen))],
            )
            .await?
        {
            Put::Written => Ok(telemetry.clone()),
            Put::Conflict(old) => Ok(self
                .current(old, install_pk(&telemetry.install_id), TELEMETRY_SK)
                .await?
                .unwrap_or_else(|| telemetry.clone())),
        }
    }

    async fn get_telemetry(
        &self,
        install: &InstallId,
    ) -> Result<Option<InstallTelemetry>, StoreError> {
        self.get_decoded(install_pk(install), TELEMETRY_SK).await
    }

    /// One shard of the open-sync index after another; the cursor is `<shard>|<the shard's
    /// DynamoDB cursor>` (empty: the shard's start). The index is eventually consistent: the
    /// reconciler writes conditionally on the version it read, so a stale entry changes nothing.
    async fn stale_syncs(
        &self,
        before: u64,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        const Q: &str = "stale_syncs";
        let (mut shard, mut start) = match &page.cursor {
            None => (0, None),
            Some(c) => {
                let (shard, inner) = c.as_str().split_once('|').ok_or_else(foreign_cursor)?;
                let shard: u32 = shard.parse().map_err(|_| foreign_cursor())?;
                if shard >= OPEN_SYNC_SHARDS {
                    return Err(foreign_cursor());
                }
                let start = (!inner.is_empty())
                    .then(|| decode_cursor(Q, &open_sync_pk(shard), &Cursor::new(inner)))
                    .transpose()?;
                (shard, start)
            }
        };
        let limit = i32::try_from(page.limit()).unwrap_or(i32::MAX);
        let mut items = Vec::new();
        // Empty shards are skipped within one call, so a page is empty only at the end.
        loop {
            let partition = open_sync_pk(shard);
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI3)
                .key_condition_expression("#pk = :pk AND #sk < :before")
                .expression_attribute_names("#pk", GSI3_PK)
                .expression_attribute_names("#sk", GSI3_SK)
                .expression_attribute_values(":pk", s(partition.clone()))
                .expression_attribute_values(":before", s(ts(before)))
                .limit(limit)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| unavailable(describe("DynamoDB", "Query", &e)))?;
            for item in out.items.unwrap_or_default() {
                items.push(decode::<SyncJob>(&item)?);
            }
            let next = match out.last_evaluated_key.as_ref() {
                Some(k) if !k.is_empty() => Some(encode_cursor(Q, &partition, k)?),
                _ => None,
            };
            match next {
                Some(c) => {
                    return Ok(Page {
                        items,
                        next: Some(Cursor::new(format!("{shard}|{}", c.as_str()))),
                    })
                }
                None if shard + 1 >= OPEN_SYNC_SHARDS => return Ok(Page { items, next: None }),
                None => {
                    shard += 1;
                    if !items.is_empty() {
                        return Ok(Page {
                            items,
                            next: Some(Cursor::new(format!("{shard}|"))),
                        });
                    }
                }
            }
        }
    }

    async fn idempotency_release(&self, key: &str) -> Result<(), StoreError> {
        // Only an in-progress record: a completed result must survive a late release.
        let res = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(PK, s(idem_pk(key)))
            .key(SK, s("IDEMP"))
            .condition_expression("#status = :inprogress")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":inprogress", s(IN_PROGRESS))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable(describe("DynamoDB", "DeleteItem", &e))),
        }
    }

    async fn builds_by_component(
        &self,
        app: &AppName,
        component: &ComponentName,
        page: &PageRequest,
    ) -> Result<Page<Build>, StoreError> {
        let spec = QuerySpec {
            name: "builds_by_component",
            index: Some(GSI1),
            pk_attr: GSI1_PK,
            sk_attr: GSI1_SK,
            partition: component_pk(app, component),
            sk_prefix: Some("BUILD#"),
            forward: false,
        };
        self.query(spec, page).await
    }

    async fn syncs_by_install(
        &self,
        install: &InstallId,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        let spec = QuerySpec {
            name: "syncs_by_install",
            index: Some(GSI1),
            pk_attr: GSI1_PK,
            sk_attr: GSI1_SK,
            partition: install_pk(install),
            sk_prefix: Some("SYNC#"),
            forward: false,
        };
        self.query(spec, page).await
    }

    async fn syncs_by_build(
        &self,
        build: &BuildId,
        page: &PageRequest,
    ) -> Result<Page<SyncJob>, StoreError> {
        let spec = QuerySpec {
            name: "syncs_by_build",
            index: Some(GSI2),
            pk_attr: GSI2_PK,
            sk_attr: GSI2_SK,
            partition: build_pk(build),
            sk_prefix: Some("SYNC#"),
            forward: true,
        };
        self.query(spec, page).await
    }

    async fn installs_by_component(
        &self,
        app: &AppName,
        component: &ComponentName,
        page: &PageRequest,
    ) -> Result<Page<Install>, StoreError> {
        let spec = QuerySpec {
            name: "installs_by_component",
            index: Some(GSI1),
            pk_attr: GSI1_PK,
            sk_attr: GSI1_SK,
            partition: sub_key(app, component),
            sk_prefix: None,
            forward: true,
        };
        self.query(spec, page).await
    }

    async fn lineage_by_digest(
        &self,
        digest: &Digest,
        page: &PageRequest,
    ) -> Result<Page<LineageRecord>, StoreError> {
        let spec = QuerySpec {
            name: "lineage_by_digest",
            index: None,
            pk_attr: PK,
            sk_attr: SK,
            partition: lineage_pk(digest),
            sk_prefix: Some("INSTALL#"),
            forward: true,
        };
        self.query(spec, page).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
