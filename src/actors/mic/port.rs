//! What MIC needs from ARM, as a port: read and patch one host's user-assigned identities.
//!
//! The assigners are written against this trait so their batching can be tested with a fake
//! and so the Azure layer (`cloud::arm`) stays free to shape its own client; an adapter maps
//! one onto the other.

use super::host::{HostId, IdentityId};
use crate::cloud::throttle::SubscriptionGate;
use async_trait::async_trait;
use std::collections::BTreeSet;
use std::time::Duration;

/// A host's identity list as ARM reports it, with what a conditional write on top of it needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostIdentities {
    /// User-assigned identities on the host.
    pub user_assigned: BTreeSet<IdentityId>,
    /// The host is being deleted (provisioning state `Deleting`): MIC must not touch it.
    pub deleting: bool,
    /// The host also has its system-assigned identity (kept by every write).
    pub system_assigned: bool,
    /// The version of the host this state describes (ARM's etag), when ARM gave one: a write
    /// based on this state is applied to exactly this version or refused.
    pub etag: Option<String>,
}

/// What a PATCH achieved: the host's identities afterwards, the identities ARM refused while
/// applying the rest (a port may also fail the whole call with [`PortError::Refused`]), and
/// the identities asked for that were already there.
///
/// Ownership rests on the last: an identity to add that the port found on the host, judged
/// against the very state its write was applied to (an ARM precondition), was put there by
/// someone else, and MIC never removes it. A port whose write went unanswered (and was
/// retried) cannot tell its own change from someone else's, and reports none as preexisting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatchOutcome {
    /// The host's identities after the call.
    pub state: HostIdentities,
    /// Identities refused, with ARM's reason.
    pub refused: Vec<(IdentityId, String)>,
    /// Identities asked to be added that the write found already on the host.
    pub preexisting: Vec<IdentityId>,
}

impl From<HostIdentities> for PatchOutcome {
    fn from(state: HostIdentities) -> Self {
        Self {
            state,
            refused: Vec::new(),
            preexisting: Vec::new(),
        }
    }
}

/// Why an ARM call failed, as far as the assigner's decisions go.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// ARM refused some identities of the request (deleted, unauthorized, ...); the rest of the
    /// request may succeed without them.
    #[error("ARM refused identities {ids:?}: {message}")]
    Refused {
        /// The refused identities (empty when ARM did not say which).
        ids: Vec<IdentityId>,
        /// ARM's message.
        message: String,
    },
    /// 429: wait at least this long before the next write to the subscription.
    #[error("ARM throttled the request; retry after {retry_after:?}")]
    Throttled {
        /// From `Retry-After`.
        retry_after: Duration,
    },
    /// The host kept changing between the port's read and its write (ARM precondition
    /// failed): read it again before deciding anything more.
    #[error("the VM or scale set changed under the update: {0}")]
    Conflict(String),
    /// The host is being deleted.
    #[error("the VM or scale set is being deleted")]
    Deleting,
    /// The host does not exist (ARM 404 `ResourceNotFound`): deleted, or never there.
    #[error("the VM or scale set does not exist: {0}")]
    NotFound(String),
    /// Worth retrying soon (timeouts, 5xx, connection errors).
    #[error("transient ARM failure: {0}")]
    Transient(String),
    /// Not worth retrying soon (bad request, host not found, no permission on the host).
    #[error("ARM failure: {0}")]
    Fatal(String),
}

impl PortError {
    /// Label for counting errors by kind.
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::Throttled { .. } => "throttled",
            Self::Conflict(_) => "conflict",
            Self::Deleting => "deleting",
            Self::NotFound(_) => "not_found",
            Self::Transient(_) => "transient",
            Self::Fatal(_) => "fatal",
        }
    }
}

/// Reads and patches the user-assigned identities of VMs and scale sets.
#[async_trait]
pub trait ArmPort: Send + Sync + 'static {
    /// The host's identities now.
    async fn get(&self, host: &HostId) -> Result<HostIdentities, PortError>;
    /// One PATCH adding `add` and removing `remove` on top of `base` (the caller's last answer
    /// for this host), waited to completion; the host's identities afterwards. A port reads
    /// the host first only when `base` cannot be written on (no etag, or the host changed
    /// since: ARM's 412), so a caller that passes its last answer spends one round trip.
    async fn patch(
        &self,
        host: &HostId,
        base: &HostIdentities,
        add: &[IdentityId],
        remove: &[IdentityId],
    ) -> Result<PatchOutcome, PortError>;

    /// The Retry-After gate this port's ARM client honours, so MIC's write budget shares it
    /// (a 429 seen by either holds both); `None` for ports without one (fakes).
    fn throttle_gate(&self) -> Option<SubscriptionGate> {
        None
    }
}
