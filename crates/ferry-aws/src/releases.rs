//! `DynamoStore` as ferry-core's `ReleaseStore`: releases and their targets as items of the one
//! job table (layout in docs/design/releases.md).
//!
//! - release: `pk = RELEASE#<id>`, `sk = RELEASE`, listed per app on GSI1
//!   (`APP#<app>` / `RELEASE#<created>#<id>`, newest first);
//! - target: `pk = RELEASE#<id>#STEP#<step>`, `sk = TARGET#<install>`, so a step's targets are
//!   one strongly consistent query of the base table (never the eventually consistent GSIs:
//!   a step's end is decided from them);
//! - where a target is: `pk = RELEASE#<id>`, `sk = INSTALL#<install>`, holding its step,
//!   written before the target, so a target is found from (release, install) with two reads.
//!
//! Every write is a conditional `PutItem` on `version` (or put-if-absent), or a
//! TransactWriteItems of such puts (a page of targets at once: all or none). This module must
//! never scan the table or write a release or target unconditionally.

use aws_sdk_dynamodb::types::AttributeValue;

use ferry_core::domain::LineageRecord;
use ferry_core::id::{AppName, Digest, InstallId, ReleaseId};
use ferry_core::ports::{Conflict, Page, PageRequest, StoreError, WriteError};
use ferry_core::release::{Release, ReleaseStore, ReleaseTarget};

use crate::store::{
    decode, encode_err, install_pk, lineage_pk, n, num_attr, record_item, s, ts, CondPut,
    DynamoStore, Put, QuerySpec, GSI1, GSI1_PK, GSI1_SK, GSI3, GSI3_PK, GSI3_SK, MAX_TRANSACT, PK,
    RUNNING_RELEASES_PK, SK,
};

fn release_pk(id: &ReleaseId) -> String {
    format!("RELEASE#{id}")
}

fn step_pk(id: &ReleaseId, step: u32) -> String {
    format!("RELEASE#{id}#STEP#{step}")
}

fn target_sk(install: &InstallId) -> String {
    format!("TARGET#{install}")
}

fn where_sk(install: &InstallId) -> String {
    format!("INSTALL#{install}")
}

const RELEASE_SK: &str = "RELEASE";

fn release_item(
    r: &Release,
) -> Result<std::collections::HashMap<String, AttributeValue>, StoreError> {
    let data = serde_json::to_string(r).map_err(|e| encode_err("release", e))?;
    let mut item = record_item(release_pk(&r.id), RELEASE_SK, "release", data);
    item.insert("version".into(), n(r.version));
    item.insert(GSI1_PK.into(), s(format!("APP#{}", r.app)));
    item.insert(
        GSI1_SK.into(),
        s(format!("RELEASE#{}#{}", ts(r.created_at), r.id)),
    );
    if r.status == ferry_core::release::ReleaseStatus::Running {
        // The reconciler's sparse index: only running releases are in it.
        item.insert(GSI3_PK.into(), s(RUNNING_RELEASES_PK));
        item.insert(GSI3_SK.into(), s(r.id.to_string()));
    }
    Ok(item)
}

fn target_item(
    t: &ReleaseTarget,
) -> Result<std::collections::HashMap<String, AttributeValue>, StoreError> {
    let data = serde_json::to_string(t).map_err(|e| encode_err("release target", e))?;
    let mut item = record_item(
        step_pk(&t.release_id, t.step),
        &target_sk(&t.install_id),
        "release_target",
        data,
    );
    item.insert("version".into(), n(t.version));
    Ok(item)
}

impl DynamoStore {
    async fn put_versioned<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        &self,
        item: std::collections::HashMap<String, AttributeValue>,
        pk: String,
        sk: &str,
        expected: Option<u64>,
    ) -> Result<(), WriteError<T>> {
        let put = match expected {
            None => {
                self.put_if(item, "attribute_not_exists(#pk)", &[("#pk", PK)], vec![])
                    .await?
            }
            Some(v) => {
                self.put_if(
                    item,
                    "#version = :version",
                    &[("#version", "version")],
                    vec![(":version", n(v))],
                )
                .await?
            }
        };
        match put {
            Put::Written => Ok(()),
            Put::Conflict(old) => Err(WriteError::Conflict(Conflict {
                current: self.current(old, pk, sk).await?,
            })),
        }
    }

    /// The step of `install`'s target in `release`, from its pointer item.
    async fn target_step(
        &self,
        release: &ReleaseId,
        install: &InstallId,
    ) -> Result<Option<u32>, StoreError> {
        let Some(item) = self.get(release_pk(release), &where_sk(install)).await? else {
            return Ok(None);
        };
        let step = num_attr(&item, "step")?;
        u32::try_from(step)
            .map(Some)
            .map_err(|_| StoreError::Corrupt {
                key: format!("{}/{}", release_pk(release), where_sk(install)),
                message: "step is out of range".into(),
            })
    }
}

impl ReleaseStore for DynamoStore {
    async fn create_release(&self, release: &Release) -> Result<(), WriteError<Release>> {
        self.put_versioned(
            release_item(release)?,
            release_pk(&release.id),
            RELEASE_SK,
            None,
        )
        .await
    }

    async fn get_release(&self, id: &ReleaseId) -> Result<Option<Release>, StoreError> {
        self.get_decoded(release_pk(id), RELEASE_SK).await
    }

    async fn update_release(
        &self,
        next: &Release,
        expected: u64,
    ) -> Result<(), WriteError<Release>> {
        self.put_versioned(
            release_item(next)?,
            release_pk(&next.id),
            RELEASE_SK,
            Some(expected),
        )
        .await
    }

    async fn releases_by_app(
        &self,
        app: &AppName,
        page: &PageRequest,
    ) -> Result<Page<Release>, StoreError> {
        let spec = QuerySpec {
            name: "releases_by_app",
            index: Some(GSI1),
            pk_attr: GSI1_PK,
            sk_attr: GSI1_SK,
            partition: format!("APP#{app}"),
            sk_prefix: Some("RELEASE#"),
            forward: false,
        };
        self.query(spec, page).await
    }

    async fn create_target(&self, target: &ReleaseTarget) -> Result<(), WriteError<ReleaseTarget>> {
        // The pointer first: it claims (release, install), whatever the step.
        let pointer = pointer_item(target);
        let claimed = self
            .put_if(pointer, "attribute_not_exists(#pk)", &[("#pk", PK)], vec![])
            .await?;
        let step = match claimed {
            Put::Written => target.step,
            Put::Conflict(_) => self
                .target_step(&target.release_id, &target.install_id)
                .await?
                .unwrap_or(target.step),
        };
        if step != target.step {
            let current = self
                .get_target(&target.release_id, &target.install_id)
                .await?;
            return Err(WriteError::Conflict(Conflict { current }));
        }
        self.put_versioned(
            target_item(target)?,
            step_pk(&target.release_id, target.step),
            &target_sk(&target.install_id),
            None,
        )
        .await
    }

    async fn get_target(
        &self,
        release: &ReleaseId,
        install: &InstallId,
    ) -> Result<Option<ReleaseTarget>, StoreError> {
        let Some(step) = self.target_step(release, install).await? else {
            return Ok(None);
        };
        self.get_decoded(step_pk(release, step), &target_sk(install))
            .await
    }

    async fn update_target(
        &self,
        next: &ReleaseTarget,
        expected: u64,
    ) -> Result<(), WriteError<ReleaseTarget>> {
        self.put_versioned(
            target_item(next)?,
            step_pk(&next.release_id, next.step),
            &target_sk(&next.install_id),
            Some(expected),
        )
        .await
    }

    async fn targets_by_step(
        &self,
        release: &ReleaseId,
        step: u32,
        page: &PageRequest,
    ) -> Result<Page<ReleaseTarget>, StoreError> {
        let spec = QuerySpec {
            name: "targets_by_step",
            index: None,
            pk_attr: PK,
            sk_attr: SK,
            partition: step_pk(release, step),
            sk_prefix: Some("TARGET#"),
            forward: true,
        };
        self.query(spec, page).await
    }

    async fn running_releases(&self, page: &PageRequest) -> Result<Page<Release>, StoreError> {
        self.query(
            QuerySpec {
                name: "running_releases",
                index: Some(GSI3),
                pk_attr: GSI3_PK,
                sk_attr: GSI3_SK,
                partition: RUNNING_RELEASES_PK.to_owned(),
                sk_prefix: None,
                forward: true,
            },
            page,
        )
        .await
    }

    async fn get_lineage(
        &self,
        digest: &Digest,
        install: &InstallId,
    ) -> Result<Option<LineageRecord>, StoreError> {
        self.get_decoded(lineage_pk(digest), &install_pk(install))
            .await
    }

    async fn get_lineages(
        &self,
        pairs: &[(Digest, InstallId)],
    ) -> Result<Vec<LineageRecord>, StoreError> {
        let keys = pairs
            .iter()
            .map(|(d, i)| (lineage_pk(d), install_pk(i)))
            .collect();
        self.batch_get(keys).await?.iter().map(decode).collect()
    }

    /// Pointer and target of up to 50 targets in one transaction; a chunk in which one
    /// already exists (an earlier try) is written target by target instead.
    async fn create_targets(&self, targets: &[ReleaseTarget]) -> Result<(), StoreError> {
        for chunk in targets.chunks(MAX_TRANSACT / 2) {
            let mut puts = Vec::with_capacity(chunk.len() * 2);
            for t in chunk {
                puts.push(absent(pointer_item(t)));
                puts.push(absent(target_item(t)?));
            }
            if self.transact_put(puts).await? {
                continue;
            }
            for t in chunk {
                match self.create_target(t).await {
                    Ok(()) | Err(WriteError::Conflict(_)) => {}
                    Err(WriteError::Store(e)) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn update_targets(&self, writes: &[(ReleaseTarget, u64)]) -> Result<bool, StoreError> {
        if writes.len() > MAX_TRANSACT {
            return Ok(false);
        }
        let mut puts = Vec::with_capacity(writes.len());
        for (next, expected) in writes {
            puts.push(CondPut {
                item: target_item(next)?,
                condition: "#version = :version",
                names: vec![("#version", "version")],
                values: vec![(":version", n(*expected))],
            });
        }
        self.transact_put(puts).await
    }
}

/// A put-if-absent of `item` in a transaction.
fn absent(item: std::collections::HashMap<String, AttributeValue>) -> CondPut {
    CondPut {
        item,
        condition: "attribute_not_exists(#pk)",
        names: vec![("#pk", PK)],
        values: vec![],
    }
}

/// The item saying which step `t` is in (see the module comment).
fn pointer_item(t: &ReleaseTarget) -> std::collections::HashMap<String, AttributeValue> {
    let mut pointer = record_item(
        release_pk(&t.release_id),
        &where_sk(&t.install_id),
        "release_target_step",
        String::new(),
    );
    pointer.remove("data");
    pointer.insert("step".into(), n(u64::from(t.step)));
    pointer
}

/// The items a release writes decode back (no AWS call).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::decode;
    use ferry_core::release::{FailureBudget, ReleasePolicy};

    #[test]
    fn release_items_carry_their_keys_and_decode() {
        let r = Release::new(
            ReleaseId::new("r-1").unwrap(),
            AppName::new("shop").unwrap(),
            vec![],
            ReleasePolicy {
                installs_per_step: 2,
                delay_ms: 0,
                max_failures: FailureBudget::Count(1),
            },
            "me".into(),
            3,
            7,
        );
        let item = release_item(&r).unwrap();
        assert_eq!(item.get(PK), Some(&s("RELEASE#r-1")));
        assert_eq!(
            item.get(GSI1_SK),
            Some(&s(format!("RELEASE#{}#r-1", ts(7))))
        );
        assert_eq!(decode::<Release>(&item).unwrap(), r);
    }
}
