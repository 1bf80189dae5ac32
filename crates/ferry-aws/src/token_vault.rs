//! Keeps ECR's authorization token out of the SDK's own TRACE logs.
//!
//! ECR's model does not mark `authorizationToken` sensitive, and the SDK orchestrator logs the
//! `Debug` of every deserialized output at TRACE (`output_or_error = ...`), whatever
//! `SensitiveOutput` says (that only hides the raw body). So a GetAuthorizationToken call goes
//! through [`TokenVault::http_client`]: the connector reads the answer, moves each token into a
//! zeroizing slot and hands the SDK the same JSON with [`PLACEHOLDER`] instead. The caller
//! takes the real token from the vault. This module must never log or print what it holds.

use std::sync::{Arc, Mutex, PoisonError};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use zeroize::Zeroizing;

/// What the SDK sees instead of a token.
pub(crate) const PLACEHOLDER: &str = "ferry-token-in-vault";

type Slot = Arc<Mutex<Vec<Zeroizing<String>>>>;

/// One vault per GetAuthorizationToken call.
#[derive(Clone, Default)]
pub(crate) struct TokenVault {
    slot: Slot,
}

impl std::fmt::Debug for TokenVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVault(<redacted>)")
    }
}

impl TokenVault {
    /// The token of the last successful answer (a retried call may have seen several).
    pub(crate) fn take(&self) -> Option<Zeroizing<String>> {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// `inner` with every successful answer's tokens moved into this vault.
    pub(crate) fn http_client(&self, inner: SharedHttpClient) -> VaultClient {
        VaultClient {
            inner,
            slot: self.slot.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct VaultClient {
    inner: SharedHttpClient,
    slot: Slot,
}

impl std::fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultClient")
    }
}

impl HttpClient for VaultClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(VaultConnector {
            inner: self.inner.http_connector(settings, components),
            slot: self.slot.clone(),
        })
    }
}

struct VaultConnector {
    inner: SharedHttpConnector,
    slot: Slot,
}

impl std::fmt::Debug for VaultConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultConnector")
    }
}

impl HttpConnector for VaultConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let answer = self.inner.call(request);
        let slot = self.slot.clone();
        HttpConnectorFuture::new(async move {
            let mut response = answer.await?;
            if !response.status().is_success() {
                return Ok(response);
            }
            let body = ByteStream::new(response.take_body())
                .collect()
                .await
                .map_err(|e| ConnectorError::io(e.into()))?
                .into_bytes();
            let raw = Zeroizing::new(body.to_vec());
            let rewritten = match serde_json::from_slice::<serde_json::Value>(&raw) {
                Ok(mut v) => {
                    if let Some(data) = v
                        .get_mut("authorizationData")
                        .and_then(|d| d.as_array_mut())
                    {
                        for d in data {
                            if let Some(t) = d.get_mut("authorizationToken") {
                                if let Some(s) = t.as_str() {
                                    slot.lock()
                                        .unwrap_or_else(PoisonError::into_inner)
                                        .push(Zeroizing::new(s.to_owned()));
                                }
                                *t = serde_json::Value::String(PLACEHOLDER.into());
                            }
                        }
                    }
                    v.to_string().into_bytes()
                }
                // Not JSON: let the SDK report it; it carries no token we could recognise.
                Err(_) => raw.to_vec(),
            };
            response.headers_mut().remove("content-length");
            *response.body_mut() = SdkBody::from(rewritten);
            Ok(response)
        })
    }
}
