//! `cloud::Error`: everything that can go wrong talking to Azure, one variant per cause.

use std::time::Duration;

/// A JSON parse error as text that never quotes the input: serde's message for a value of
/// the wrong type repeats the value ("invalid type: integer `123`, expected a string"), and in
/// an azure.json or a token answer that value may be a secret. Syntax errors quote nothing and
/// are kept whole.
pub(crate) fn json_problem(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => format!(
            "a value has the wrong type at line {} column {} (the value is not repeated here)",
            e.line(),
            e.column()
        ),
        _ => e.to_string(),
    }
}

/// One identity ARM refused to assign, with ARM's own reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedIdentity {
    /// The identity resource id as the caller asked for it.
    pub id: String,
    /// ARM error code (`LinkedAuthorizationFailed`, `FailedIdentityOperation`, ...).
    pub code: String,
    /// ARM's message, verbatim.
    pub message: String,
}

/// Errors of the Azure clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node's `spec.providerID` is not an Azure VM or scale-set instance id.
    #[error(
        "node {node}: providerID {provider_id:?} is not an Azure VM or scale-set instance: {problem}"
    )]
    InvalidProviderId {
        /// Node name.
        node: String,
        /// The providerID as found.
        provider_id: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The cloud configuration file could not be read.
    #[error("cannot read cloud config {path}")]
    ConfigRead {
        /// Path given with `--cloudconfig`.
        path: String,
        /// I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The cloud configuration is malformed or incomplete.
    #[error("invalid cloud config: {0}")]
    Config(String),
    /// The request could not be sent or its response not read (connection refused, reset, ...).
    #[error("{operation}: transport error")]
    Transport {
        /// Operation label (`vmss_get`, `imds_token`, ...).
        operation: &'static str,
        /// Cause from the HTTP pipeline.
        #[source]
        source: azure_core::Error,
    },
    /// No answer within the per-request timeout, after every retry.
    #[error("{operation}: no response within {after:?}")]
    Timeout {
        /// Operation label.
        operation: &'static str,
        /// Per-request timeout.
        after: Duration,
    },
    /// Still throttled (429) after every retry.
    #[error("{operation}: throttled by ARM (429), last Retry-After {retry_after:?}")]
    Throttled {
        /// Operation label.
        operation: &'static str,
        /// The last window ARM asked for.
        retry_after: Duration,
    },
    /// ARM refused some identities of a PATCH; `ids` are the ones its message names.
    #[error("ARM refused identities {ids:?}: {code}: {message}")]
    IdentitiesRefused {
        /// Identity resource ids named by the error, as the caller wrote them.
        ids: Vec<String>,
        /// ARM error code.
        code: String,
        /// ARM error message.
        message: String,
    },
    /// The VM or scale set does not exist.
    #[error("{resource} not found: {code}: {message}")]
    NotFound {
        /// The compute resource (key form).
        resource: String,
        /// ARM error code (`ResourceNotFound`, `NotFound`).
        code: String,
        /// ARM error message.
        message: String,
    },
    /// The VM or scale set is being deleted; identities are not touched.
    #[error("{resource} is in provisioning state Deleting; refusing to change its identities")]
    Deleting {
        /// The compute resource (key form).
        resource: String,
    },
    /// The resource kept changing between the read a PATCH was based on and the PATCH itself
    /// (412 `PreconditionFailed` on `If-Match`, more times than the client retries).
    #[error(
        "{resource} changed under every attempt to update it (If-Match failed {attempts} times)"
    )]
    Conflict {
        /// The compute resource (key form).
        resource: String,
        /// PATCHes refused by their precondition.
        attempts: u32,
    },
    /// Any other ARM error response.
    #[error("{operation}: ARM answered {status}: {code}: {message}")]
    Arm {
        /// Operation label.
        operation: &'static str,
        /// HTTP status.
        status: u16,
        /// ARM error code (or `Unknown` when the body was not ARM's error format).
        code: String,
        /// ARM error message (or the start of the body).
        message: String,
    },
    /// A long-running operation ended in `Failed` or `Canceled`.
    #[error("{resource}: long-running operation ended {status}: {code}: {message}")]
    OperationFailed {
        /// The compute resource (key form).
        resource: String,
        /// Terminal status (`Failed`, `Canceled`).
        status: String,
        /// Error code from the operation.
        code: String,
        /// Error message from the operation.
        message: String,
    },
    /// A response did not have the shape Azure documents.
    #[error("{operation}: unexpected response: {problem}")]
    MalformedResponse {
        /// Operation label.
        operation: &'static str,
        /// What was wrong.
        problem: String,
    },
    /// A credential could not produce a token.
    #[error("credential could not get a token")]
    Credential(#[source] azure_core::Error),
    /// Azure AD refused a client-credentials request.
    #[error("Azure AD answered {status}: {error}: {description}")]
    Aad {
        /// HTTP status.
        status: u16,
        /// OAuth error (`invalid_client`, `unauthorized_client`, ...).
        error: String,
        /// `error_description`, verbatim (names the AADSTS code).
        description: String,
    },
    /// A PKCS#12 certificate could not be used for a client assertion.
    #[error("certificate: {0}")]
    Certificate(String),
}

impl Error {
    /// Short label for counting errors by kind in metrics.
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidProviderId { .. } => "invalid_provider_id",
            Error::ConfigRead { .. } | Error::Config(_) => "config",
            Error::Transport { .. } => "transport",
            Error::Timeout { .. } => "timeout",
            Error::Throttled { .. } => "throttled",
            Error::IdentitiesRefused { .. } => "identities_refused",
            Error::NotFound { .. } => "not_found",
            Error::Deleting { .. } => "deleting",
            Error::Conflict { .. } => "conflict",
            Error::Arm { .. } => "arm",
            Error::OperationFailed { .. } => "operation_failed",
            Error::MalformedResponse { .. } => "malformed_response",
            Error::Credential(_) => "credential",
            Error::Aad { .. } => "aad",
            Error::Certificate(_) => "certificate",
        }
    }
}
