//! Tag listing: `GET /v2/<name>/tags/list`, every page followed through `Link`.
//!
//! It must never follow a next page off the registry's origin (the transport's pagination
//! refuses it) and never buffer a page larger than `MAX_LIST_BYTES`.

use crate::error::{Error, Result, Step};
use crate::reference::RepoRef;

use super::RegistryClient;

impl RegistryClient {
    /// Every tag, following `Link` pagination.
    pub async fn list_tags(&self, repo: &RepoRef) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let target = repo.to_string();
        let url = self.url(repo, "tags/list")?;
        let mut tags = Vec::new();
        self.paginate(Step::ListTags, repo, &target, url, None, |body| {
            let page: TagList = serde_json::from_slice(body).map_err(|e| Error::Registry {
                step: Step::ListTags,
                target: target.clone(),
                status: 200,
                message: format!("the tag list is not valid JSON: {e}"),
            })?;
            tags.extend(page.tags.unwrap_or_default());
            Ok(())
        })
        .await?;
        Ok(tags)
    }
}
