//! The catalog: what the management port lists and removes beyond the `JobStore` port. Must
//! never scan the table: one Query on the catalog partition.

use serde::de::DeserializeOwned;

use ferry_core::domain::{Component, Install};
use ferry_core::id::{AppName, InstallId};
use ferry_core::ports::{Page, PageRequest, StoreError};

use super::items::{
    catalog_app_sk, catalog_install_sk, encode_err, install_pk, record_item, CATALOG_PK,
    TELEMETRY_SK,
};
use super::pagination::QuerySpec;
use super::{DynamoStore, PK, SK};

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
