//! The real [`ArmPort`]: MIC's port onto the Azure layer's [`ArmClient`].
//!
//! The client does the wire work (delta bodies, long-running operations, `Retry-After`,
//! refusing a host in `Deleting`, naming refused identities); this adapter only translates
//! ids and sorts `cloud::Error` into what the assigner decides on. Its client's throttling gate
//! is the one MIC's write budget waits on ([`ArmPort::throttle_gate`]).

use super::host::{HostId, HostKind, IdentityId};
use super::port::{ArmPort, HostIdentities, PatchOutcome, PortError};
use crate::cloud::arm::{ArmClient, ArmOptions, IdentityState};
use crate::cloud::config::CloudConfig;
use crate::cloud::config_watch::ConfigWatch;
use crate::cloud::credential::arm_credential;
use crate::cloud::provider_id::ComputeRef;
use crate::cloud::throttle::SubscriptionGate;
use async_trait::async_trait;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

tokio::task_local! {
    /// Set while one [`CloudArm::patch`] runs: raised when a write of that call went
    /// unanswered (the client may have retried it and found its own change already there).
    static UNANSWERED_WRITE: Arc<AtomicBool>;
}

/// The client's call observer: notes, for the [`CloudArm::patch`] running in this task, a
/// write whose outcome is unknown (no answer, or a 5xx after which ARM may still apply it).
fn note_unanswered_write(r: &crate::cloud::arm::CallRecord) {
    let write = matches!(r.operation, "vmss_update" | "vm_update" | "lro_poll");
    if write && r.status.is_none_or(|s| s >= 500) {
        let _ = UNANSWERED_WRITE.try_with(|f| f.store(true, Ordering::Relaxed));
    }
}

/// [`ArmPort`] over an [`ArmClient`]; the client is replaced when azure.json changes
/// ([`CloudArm::watching`]).
#[derive(Clone, Debug)]
pub struct CloudArm {
    client: Arc<RwLock<ArmClient>>,
    _watch: Option<Arc<ConfigWatch>>,
}

impl CloudArm {
    /// Wraps a client.
    #[must_use]
    pub fn new(client: ArmClient) -> Self {
        Self {
            client: Arc::new(RwLock::new(client)),
            _watch: None,
        }
    }

    /// A client for the azure.json at `path`, rebuilt (credential, endpoints) whenever the file
    /// changes to another valid configuration, as the original re-initialised its cloud client;
    /// also returns the configuration read now.
    ///
    /// # Errors
    /// When the file cannot be read or validated now, or its directory cannot be watched.
    pub fn watching(
        path: &Path,
        user_agent: &str,
    ) -> Result<(Self, CloudConfig), crate::cloud::Error> {
        let bytes = std::fs::read(path).map_err(|source| crate::cloud::Error::ConfigRead {
            path: path.display().to_string(),
            source,
        })?;
        let config = CloudConfig::from_json(&String::from_utf8_lossy(&bytes))?;
        let mut arm = Self::from_config_as(&config, user_agent)?;
        let slot = Arc::clone(&arm.client);
        let ua = user_agent.to_string();
        let watch = ConfigWatch::start(path, bytes, move |next| {
            match Self::from_config_as(&next, &ua) {
                Ok(fresh) => {
                    let mut current = slot.write().unwrap_or_else(PoisonError::into_inner);
                    // One throttling gate across the swap: a Retry-After still holds.
                    let gate = current.gate().clone();
                    let fresh = fresh.current().with_gate(gate);
                    *current = fresh;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the new azure.json gives no usable ARM client; keeping the old one")
                }
            }
        })?;
        arm._watch = Some(Arc::new(watch));
        Ok((arm, config))
    }

    fn current(&self) -> ArmClient {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A client for the ARM endpoint and credentials of a cloud configuration (azure.json),
    /// with MIC's default User-Agent.
    pub fn from_config(config: &CloudConfig) -> Result<Self, crate::cloud::Error> {
        Self::from_config_as(
            config,
            &crate::version::user_agent(crate::version::Component::Mic, None),
        )
    }

    /// As [`Self::from_config`], every ARM and Azure AD request carrying `user_agent`. The
    /// client notes writes whose outcome is unknown, so [`ArmPort::patch`] never reports an
    /// identity its own unanswered write may have put on the host as found there.
    pub fn from_config_as(
        config: &CloudConfig,
        user_agent: &str,
    ) -> Result<Self, crate::cloud::Error> {
        let credential = arm_credential(config, user_agent)?;
        let client = ArmClient::new(
            &config.arm_endpoint(),
            credential,
            &config.arm_resource(),
            ArmOptions {
                user_agent: Some(user_agent.to_string()),
                ..ArmOptions::default()
            },
        )?
        .with_observer(Arc::new(note_unanswered_write));
        Ok(Self::new(client))
    }
}

fn compute_ref(host: &HostId) -> ComputeRef {
    match host.kind {
        HostKind::ScaleSet => {
            ComputeRef::scale_set(&host.subscription, &host.resource_group, &host.name)
        }
        HostKind::Vm => ComputeRef::vm(&host.subscription, &host.resource_group, &host.name),
    }
}

fn host_identities(state: &IdentityState) -> HostIdentities {
    HostIdentities {
        user_assigned: state
            .user_assigned
            .iter()
            .map(|id| IdentityId::new(id))
            .collect(),
        deleting: state.provisioning_state.eq_ignore_ascii_case("deleting"),
        system_assigned: state.has_system_assigned(),
        etag: state.etag.clone(),
    }
}

/// The client's view of a state the assigner holds: what a conditional PATCH is computed from.
fn identity_state(known: &HostIdentities) -> IdentityState {
    IdentityState {
        identity_type: crate::cloud::arm::identity_type_for(
            known.system_assigned,
            !known.user_assigned.is_empty(),
        ),
        user_assigned: known
            .user_assigned
            .iter()
            .map(|id| id.as_str().to_string())
            .collect(),
        provisioning_state: if known.deleting {
            "Deleting".into()
        } else {
            "Succeeded".into()
        },
        etag: known.etag.clone(),
    }
}

fn port_error(e: crate::cloud::Error) -> PortError {
    use crate::cloud::Error as E;
    match e {
        E::Throttled { retry_after, .. } => PortError::Throttled { retry_after },
        E::Deleting { .. } => PortError::Deleting,
        E::NotFound { .. } => PortError::NotFound(e.to_string()),
        E::Conflict { .. } => PortError::Conflict(e.to_string()),
        E::IdentitiesRefused { ids, code, message } => PortError::Refused {
            ids: ids.iter().map(|id| IdentityId::new(id)).collect(),
            message: format!("{code}: {message}"),
        },
        E::Transport { .. } | E::Timeout { .. } | E::OperationFailed { .. } | E::Credential(_) => {
            PortError::Transient(e.to_string())
        }
        E::Arm { status, .. } if status >= 500 || status == 409 => {
            PortError::Transient(e.to_string())
        }
        other => PortError::Fatal(other.to_string()),
    }
}

#[async_trait]
impl ArmPort for CloudArm {
    async fn get(&self, host: &HostId) -> Result<HostIdentities, PortError> {
        self.current()
            .get_identities(&compute_ref(host))
            .await
            .map(|s| host_identities(&s))
            .map_err(port_error)
    }

    async fn patch(
        &self,
        host: &HostId,
        base: &HostIdentities,
        add: &[IdentityId],
        remove: &[IdentityId],
    ) -> Result<PatchOutcome, PortError> {
        let add: Vec<String> = add.iter().map(|i| i.as_str().to_string()).collect();
        let remove: Vec<String> = remove.iter().map(|i| i.as_str().to_string()).collect();
        let unanswered = Arc::new(AtomicBool::new(false));
        let out = UNANSWERED_WRITE
            .scope(
                unanswered.clone(),
                self.current().update_identities_from(
                    &compute_ref(host),
                    Some(identity_state(base)),
                    &add,
                    &remove,
                ),
            )
            .await
            .map_err(port_error)?;
        // After an unanswered write, an identity to add that the retry found on the host may
        // be that write's own doing: none of them is someone else's for sure (issue 15).
        let preexisting = if unanswered.load(Ordering::Relaxed) {
            Vec::new()
        } else {
            out.unchanged
                .iter()
                .filter(|u| add.iter().any(|a| a.eq_ignore_ascii_case(u)))
                .map(|id| IdentityId::new(id))
                .collect()
        };
        Ok(PatchOutcome {
            state: host_identities(&out.state),
            preexisting,
            refused: out
                .refused
                .into_iter()
                .map(|r| (IdentityId::new(&r.id), format!("{}: {}", r.code, r.message)))
                .collect(),
        })
    }

    fn throttle_gate(&self) -> Option<SubscriptionGate> {
        // Kept across azure.json reloads (see `watching`), so one gate for MIC's lifetime.
        Some(
            self.client
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .gate()
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn errors_are_sorted_into_what_the_assigner_decides_on() {
        use crate::cloud::Error as E;
        assert_eq!(
            port_error(E::Throttled {
                operation: "vmss_update",
                retry_after: Duration::from_secs(7)
            }),
            PortError::Throttled {
                retry_after: Duration::from_secs(7)
            }
        );
        assert_eq!(
            port_error(E::Deleting {
                resource: "x".into()
            }),
            PortError::Deleting
        );
        let refused = port_error(E::IdentitiesRefused {
            ids: vec!["/A".into()],
            code: "LinkedAuthorizationFailed".into(),
            message: "no".into(),
        });
        assert!(
            matches!(refused, PortError::Refused { ref ids, .. } if ids == &[IdentityId::new("/a")])
        );
        assert!(matches!(
            port_error(E::Arm {
                operation: "vmss_update",
                status: 503,
                code: "x".into(),
                message: "y".into()
            }),
            PortError::Transient(_)
        ));
        assert!(matches!(
            port_error(E::NotFound {
                resource: "x".into(),
                code: "ResourceNotFound".into(),
                message: "y".into()
            }),
            PortError::NotFound(_)
        ));
    }
}
