//! The app file (`ferry.json`): an app and its components, as a vendor checks it into the
//! root of the app's source tree. Component paths in it are relative to that directory.
//!
//! ```json
//! {"app": "demo",
//!  "components": [{"name": "web", "kind": "docker-build", "context": "web",
//!                  "dockerfile": "Dockerfile", "repository": "demo/web"}]}
//! ```
//! Each component is a ferry-core `Component` without its `app` field (the file gives it).
//! Parsing is strict; this module must never accept an unknown field or a duplicate name.

use std::path::{Path, PathBuf};

use ferry_core::domain::Component;
use ferry_core::id::AppName;
use serde::Deserialize;
use serde_json::Value;

use crate::error::BuildError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFile {
    pub app: AppName,
    pub components: Vec<Component>,
    /// The directory holding the file: the app root for builds.
    pub root: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    app: AppName,
    components: Vec<serde_json::Map<String, Value>>,
}

impl AppFile {
    pub fn load(path: &Path) -> Result<AppFile, BuildError> {
        let bad = |reason: String| BuildError::InvalidAppFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
        let raw: Raw = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut components: Vec<Component> = Vec::with_capacity(raw.components.len());
        for (i, mut c) in raw.components.into_iter().enumerate() {
            if c.contains_key("app") {
                return Err(bad(format!(
                    "component #{i} sets \"app\"; the file's \"app\" applies to every component"
                )));
            }
            c.insert("app".into(), Value::String(raw.app.to_string()));
            let comp: Component = serde_json::from_value(Value::Object(c))
                .map_err(|e| bad(format!("component #{i}: {e}")))?;
            if components.iter().any(|o| o.name == comp.name) {
                return Err(bad(format!("component {} is listed twice", comp.name)));
            }
            components.push(comp);
        }
        let root = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(AppFile {
            app: raw.app,
            components,
            root,
        })
    }

    pub fn component(&self, name: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.name.as_str() == name)
    }
}
