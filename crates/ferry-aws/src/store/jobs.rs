//! `JobStore` for `DynamoStore`: components, installs, builds, syncs, lineage, idempotency,
//! security counters, telemetry and the paginated queries. Must never store a clear grant.

use ferry_core::domain::{Build, Component, Install, LineageRecord, SyncJob};
use ferry_core::id::{AppName, BuildId, ComponentName, Digest, InstallId, SyncId};
use ferry_core::ports::{
    Cursor, IdempotencyClaim, JobStore, Page, PageRequest, StoreError, WriteError,
};
use ferry_core::state::Expected;
use ferry_core::telemetry::InstallTelemetry;

use crate::error::describe;

use super::items::{
    build_item, build_pk, catalog_component_sk, catalog_install_sk, component_pk, decode,
    encode_err, idem_pk, install_pk, lineage_pk, n, num_attr, open_sync_pk, record_item, s,
    security_pk, str_attr, sub_key, sync_item, sync_pk, telemetry_item, ts, unavailable,
    CATALOG_PK, TELEMETRY_SK,
};
use super::pagination::{decode_cursor, encode_cursor, foreign_cursor, Put, QuerySpec};
use super::{
    DynamoStore, BUILD_SYNC_SHARDS, COMPLETED, GSI1, GSI1_PK, GSI1_SK, GSI2, GSI2_PK, GSI2_SK,
    GSI3, GSI3_PK, GSI3_SK, IN_PROGRESS, OPEN_SYNC_SHARDS, PK, SK, TTL,
};

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

    async fn get_installs(&self, ids: &[InstallId]) -> Result<Vec<Install>, StoreError> {
        let keys = ids
            .iter()
            .map(|id| (install_pk(id), "INSTALL".to_owned()))
            .collect();
        self.batch_get(keys).await?.iter().map(decode).collect()
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
        // One item per kind: the set of items never grows with input. A read and a put
        // conditional on the count read (the function roles allow GetItem and PutItem, not
        // UpdateItem), again on a lost race.
        const TRIES: usize = 8;
        let pk = security_pk(kind);
        for _ in 0..TRIES {
            let current = self.get(pk.clone(), "SECURITY").await?;
            let count = match &current {
                Some(item) => num_attr(item, "count")?,
                None => 0,
            };
            let mut item = record_item(pk.clone(), "SECURITY", "security", String::new());
            item.remove("data");
            item.insert("count".into(), n(count + 1));
            item.insert("last_at".into(), n(now));
            let put = match current {
                None => {
                    self.put_if(item, "attribute_not_exists(#pk)", &[("#pk", PK)], vec![])
                        .await?
                }
                Some(_) => {
                    self.put_if(
                        item,
                        "#count = :count",
                        &[("#count", "count")],
                        vec![(":count", n(count))],
                    )
                    .await?
                }
            };
            if let Put::Written = put {
                return Ok(count + 1);
            }
        }
        Err(StoreError::Unavailable {
            message: format!(
                "security counter {kind} kept changing under concurrent writers ({TRIES} tries)"
            ),
        })
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
        // Every shard (and the unsharded partition of older syncs) from just after the last
        // sort key returned, merged by sort key (`SYNC#<install>#<sync>`: install id order).
        // The cursor is that sort key.
        const Q: &str = "syncs_by_build";
        let base = build_pk(build);
        let after = match &page.cursor {
            None => None,
            Some(c) => Some(str_attr(&decode_cursor(Q, &base, c)?, GSI2_SK)?.to_owned()),
        };
        let limit = page.limit() as usize;
        let partitions = (0..BUILD_SYNC_SHARDS)
            .map(|n| format!("{base}#{n}"))
            .chain(std::iter::once(base.clone()));
        let mut found: Vec<(String, SyncJob)> = Vec::new();
        let mut more = false;
        for partition in partitions {
            let req = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(GSI2)
                .expression_attribute_names("#pk", GSI2_PK)
                .expression_attribute_names("#sk", GSI2_SK)
                .expression_attribute_values(":pk", s(partition))
                .limit(i32::try_from(limit).unwrap_or(i32::MAX));
            let req = match &after {
                Some(a) => req
                    .key_condition_expression("#pk = :pk AND #sk > :after")
                    .expression_attribute_values(":after", s(a.clone())),
                None => req
                    .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                    .expression_attribute_values(":prefix", s("SYNC#")),
            };
            let out = req
                .send()
                .await
                .map_err(|e| unavailable(describe("DynamoDB", "Query", &e)))?;
            more |= out
                .last_evaluated_key
                .as_ref()
                .is_some_and(|k| !k.is_empty());
            for item in out.items.unwrap_or_default() {
                let sk = str_attr(&item, GSI2_SK)?.to_owned();
                if sk.starts_with("SYNC#") {
                    found.push((sk, decode(&item)?));
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        if found.len() > limit {
            found.truncate(limit);
            more = true;
        }
        let next = match found.last() {
            Some((sk, _)) if more => {
                let key = std::collections::HashMap::from([(GSI2_SK.to_owned(), s(sk.clone()))]);
                Some(encode_cursor(Q, &base, &key)?)
            }
            _ => None,
        };
        Ok(Page {
            items: found.into_iter().map(|(_, j)| j).collect(),
            next,
        })
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
