//! The original's `imds_operations_duration_seconds` and `imds_operations_errors_count`: every
//! upstream token fetch (metadata service or Azure AD) timed and, when it fails, counted, under
//! the original's operation names, so its dashboards keep working.
//!
//! A decorator around the [`TokenSource`] NMI is given; the label is chosen from the request's
//! target, never from request input, so the series stay bounded.

use super::source::{SourceError, TokenRequest, TokenSource, TokenTarget, UpstreamToken};
use crate::metrics::{DropTimer, Metrics};
use async_trait::async_trait;
use std::sync::Arc;

/// The original's operation name for a fetch: the node's own identity (`adal_token_msi`), a
/// user-assigned identity from the metadata service (`adal_token_msi_userassignedid`), or a
/// service principal from Azure AD (`adal_token`); new here, a federated identity's exchange
/// (`federated_token`).
#[must_use]
pub fn operation(target: &TokenTarget) -> &'static str {
    match target {
        TokenTarget::Node { client_id: None } => "adal_token_msi",
        TokenTarget::Node { client_id: Some(_) } | TokenTarget::UserAssigned { .. } => {
            "adal_token_msi_userassignedid"
        }
        TokenTarget::ServicePrincipal { .. } => "adal_token",
        // New: no counterpart in the original.
        TokenTarget::Federated { .. } => "federated_token",
    }
}

/// A [`TokenSource`] that records the original's upstream metrics around another.
pub struct Metered {
    inner: Arc<dyn TokenSource>,
    metrics: Metrics,
}

impl Metered {
    /// Wraps `inner`.
    #[must_use]
    pub fn new(inner: Arc<dyn TokenSource>, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }
}

#[async_trait]
impl TokenSource for Metered {
    async fn fetch(&self, request: &TokenRequest) -> Result<UpstreamToken, SourceError> {
        let op = operation(&request.target);
        let _timer = DropTimer::new(
            self.metrics
                .imds_operations_duration_seconds
                .with_label_values(&[op]),
        );
        let r = self.inner.fetch(request).await;
        if !matches!(&r, Ok(t) if (200..300).contains(&t.status)) {
            self.metrics
                .imds_operations_errors_count
                .with_label_values(&[op])
                .inc();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Answer(u16);

    #[async_trait]
    impl TokenSource for Answer {
        async fn fetch(&self, _: &TokenRequest) -> Result<UpstreamToken, SourceError> {
            Ok(UpstreamToken {
                status: self.0,
                body: bytes::Bytes::new(),
            })
        }
    }

    fn request(target: TokenTarget) -> TokenRequest {
        TokenRequest {
            resource: "https://management.azure.com/".into(),
            target,
        }
    }

    #[tokio::test]
    async fn fetches_are_timed_and_failures_counted_under_the_originals_names() {
        let m = Metrics::new();
        let ok = Metered::new(Arc::new(Answer(200)), m.clone());
        ok.fetch(&request(TokenTarget::Node { client_id: None }))
            .await
            .unwrap();
        let refused = Metered::new(Arc::new(Answer(400)), m.clone());
        refused
            .fetch(&request(TokenTarget::UserAssigned {
                client_id: "c".into(),
                resource_id: String::new(),
            }))
            .await
            .unwrap();
        let text = m.encode();
        assert!(text.contains(
            r#"aadpodidentity_imds_operations_duration_seconds_count{operation_type="adal_token_msi"} 1"#
        ));
        assert!(text.contains(
            r#"aadpodidentity_imds_operations_errors_count{operation_type="adal_token_msi_userassignedid"} 1"#
        ));
        assert!(!text.contains(r#"errors_count{operation_type="adal_token_msi"}"#));
    }
}
