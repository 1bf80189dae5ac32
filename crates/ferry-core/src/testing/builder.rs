//! `MemBuilder`: a builder fake returning `ext-<build id>`, idempotent per build id, that can
//! refuse or be unavailable. Tests only.

use std::sync::{Arc, Mutex};

use super::lock;
use crate::ports::{BuildSpec, Builder, BuilderError};

#[derive(Debug, Default)]
struct BuilderState {
    starts: Vec<BuildSpec>,
    reject: Option<String>,
    unavailable: bool,
}

/// Returns `ext-<build id>` (idempotent per build id, like CodeBuild's idempotency token).
#[derive(Debug, Clone, Default)]
pub struct MemBuilder(Arc<Mutex<BuilderState>>);

impl MemBuilder {
    pub fn starts(&self) -> Vec<BuildSpec> {
        lock(&self.0).starts.clone()
    }

    pub fn reject_with(&self, message: &str) {
        lock(&self.0).reject = Some(message.to_string());
    }

    pub fn set_unavailable(&self, unavailable: bool) {
        lock(&self.0).unavailable = unavailable;
    }
}

impl Builder for MemBuilder {
    async fn start(&self, spec: &BuildSpec) -> Result<String, BuilderError> {
        let mut s = lock(&self.0);
        if s.unavailable {
            return Err(BuilderError::Unavailable {
                message: "injected outage".into(),
            });
        }
        if let Some(message) = &s.reject {
            return Err(BuilderError::Rejected {
                message: message.clone(),
            });
        }
        s.starts.push(spec.clone());
        Ok(format!("ext-{}", spec.build_id))
    }
}
