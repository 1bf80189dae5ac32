//! Attribute helpers, key layout (partition and sort keys of every record kind) and the items
//! written for builds, syncs and telemetry. Pure functions: must never call DynamoDB.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::DeserializeOwned;

use ferry_core::domain::{Build, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, SyncId};
use ferry_core::ports::{GrantId, StoreError};
use ferry_core::telemetry::InstallTelemetry;

use crate::error::Failure;

use super::{
    Item, BUILD_SYNC_SHARDS, GSI1_PK, GSI1_SK, GSI2_PK, GSI2_SK, GSI3_PK, GSI3_SK,
    OPEN_SYNC_SHARDS, PK, SK,
};

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

pub(super) fn unavailable(f: Failure) -> StoreError {
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

pub(super) fn key_text(item: &Item) -> String {
    let get = |k: &str| match item.get(k) {
        Some(AttributeValue::S(v)) => v.as_str(),
        _ => "?",
    };
    format!("{}/{}", get(PK), get(SK))
}

pub(super) fn str_attr<'a>(item: &'a Item, name: &str) -> Result<&'a str, StoreError> {
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

pub(super) fn component_pk(app: &AppName, name: &ComponentName) -> String {
    format!("COMPONENT#{app}#{name}")
}
pub(crate) fn install_pk(id: &InstallId) -> String {
    format!("INSTALL#{id}")
}
pub(super) fn sub_key(app: &AppName, component: &ComponentName) -> String {
    format!("SUB#{app}#{component}")
}
pub(super) fn build_pk(id: &BuildId) -> String {
    format!("BUILD#{id}")
}
pub(super) fn sync_pk(id: &SyncId) -> String {
    format!("SYNC#{id}")
}
pub(crate) fn lineage_pk(d: &Digest) -> String {
    format!("LINEAGE#{d}")
}
pub(super) fn idem_pk(key: &str) -> String {
    format!("IDEMP#{key}")
}
pub(super) fn revoked_pk(grant: &GrantId) -> String {
    format!("REVOKED#{grant}")
}
pub(super) fn security_pk(kind: &str) -> String {
    format!("SECURITY#{kind}")
}
/// The catalog partition: one item per app, component and install, so the management port
/// lists them with a Query (never a Scan). A vendor's catalog is small (hundreds of items).
pub(super) const CATALOG_PK: &str = "CATALOG";
pub(super) fn catalog_app_sk(app: &AppName) -> String {
    format!("APP#{app}")
}
pub(super) fn catalog_component_sk(app: &AppName, name: &ComponentName) -> String {
    format!("COMPONENT#{app}#{name}")
}
pub(super) fn catalog_install_sk(id: &InstallId) -> String {
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

pub(super) fn build_item(b: &Build) -> Result<Item, StoreError> {
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

pub(super) fn sync_item(j: &SyncJob) -> Result<Item, StoreError> {
    let data = serde_json::to_string(j).map_err(|e| encode_err("sync job", e))?;
    let mut item = record_item(sync_pk(&j.id), "SYNC", "sync", data);
    item.insert("status".into(), s(j.state.status.as_str()));
    item.insert("version".into(), n(j.state.version));
    item.insert(GSI1_PK.into(), s(install_pk(&j.install_id)));
    item.insert(
        GSI1_SK.into(),
        s(format!("SYNC#{}#{}", ts(j.state.created_at), j.id)),
    );
    item.insert(GSI2_PK.into(), s(build_sync_pk(&j.build_id, &j.install_id)));
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

/// FNV-1a of `text`: a stable spread over index shards.
fn fnv1a(text: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// The index partition of open sync `id` (FNV-1a of the id, so it never changes).
pub(super) fn open_sync_shard(id: &SyncId) -> u32 {
    fnv1a(id.as_str()) % OPEN_SYNC_SHARDS
}

/// The GSI2 partition of a sync of `build` into `install`: one of [`BUILD_SYNC_SHARDS`].
pub(super) fn build_sync_pk(build: &BuildId, install: &InstallId) -> String {
    format!(
        "{}#{}",
        build_pk(build),
        fnv1a(install.as_str()) % BUILD_SYNC_SHARDS
    )
}

pub(super) fn open_sync_pk(shard: u32) -> String {
    format!("OPEN#SYNC#{shard}")
}

pub(super) fn telemetry_item(t: &InstallTelemetry) -> Result<Item, StoreError> {
    let data = serde_json::to_string(t).map_err(|e| encode_err("install telemetry", e))?;
    let mut item = record_item(install_pk(&t.install_id), TELEMETRY_SK, "telemetry", data);
    item.insert("last_seen".into(), n(t.last_seen));
    Ok(item)
}

pub(super) const TELEMETRY_SK: &str = "TELEMETRY";
