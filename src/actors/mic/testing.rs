//! An in-memory [`ArmPort`] for tests and demos without the Azure simulator: PATCH counts,
//! latency and refusals under control. Not used by the `mic` command.

use super::host::{HostId, IdentityId};
use super::port::{ArmPort, HostIdentities, PatchOutcome, PortError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// One PATCH the in-memory ARM received.
#[derive(Clone, Debug)]
pub struct PatchCall {
    /// The host.
    pub host: HostId,
    /// Identities added.
    pub add: Vec<IdentityId>,
    /// Identities removed.
    pub remove: Vec<IdentityId>,
    /// When it arrived.
    pub at: Instant,
}

/// An in-memory ARM with a fixed latency per call; identities in `refuse` are refused the way
/// ARM refuses a deleted identity, naming it. A PATCH takes effect when it arrives and is
/// answered after the latency, as ARM applies a request even if its caller goes away.
#[derive(Default)]
pub struct MemoryArm {
    /// Latency of every call.
    pub latency: Duration,
    /// Identities on each host.
    pub hosts: Mutex<BTreeMap<HostId, BTreeSet<IdentityId>>>,
    /// Identities refused when added.
    pub refuse: Mutex<BTreeSet<IdentityId>>,
    /// Every PATCH received.
    pub patches: Mutex<Vec<PatchCall>>,
    /// Reads received.
    pub gets: Mutex<u32>,
}

impl MemoryArm {
    /// An empty ARM answering after `latency`.
    #[must_use]
    pub fn new(latency: Duration) -> Arc<Self> {
        Arc::new(Self {
            latency,
            ..Self::default()
        })
    }
    /// Identities on `host` now.
    #[must_use]
    pub fn on_host(&self, host: &HostId) -> BTreeSet<IdentityId> {
        self.hosts
            .lock()
            .unwrap()
            .get(host)
            .cloned()
            .unwrap_or_default()
    }
    /// PATCHes received so far.
    #[must_use]
    pub fn patch_count(&self) -> usize {
        self.patches.lock().expect("lock").len()
    }
}

#[async_trait::async_trait]
impl ArmPort for MemoryArm {
    async fn get(&self, host: &HostId) -> Result<HostIdentities, PortError> {
        tokio::time::sleep(self.latency).await;
        *self.gets.lock().expect("lock") += 1;
        Ok(HostIdentities {
            user_assigned: self.on_host(host),
            deleting: false,
        })
    }

    async fn patch(
        &self,
        host: &HostId,
        add: &[IdentityId],
        remove: &[IdentityId],
    ) -> Result<PatchOutcome, PortError> {
        self.patches.lock().expect("lock").push(PatchCall {
            host: host.clone(),
            add: add.to_vec(),
            remove: remove.to_vec(),
            at: Instant::now(),
        });
        let bad: Vec<IdentityId> = {
            let refuse = self.refuse.lock().expect("lock");
            add.iter()
                .filter(|id| refuse.contains(*id))
                .cloned()
                .collect()
        };
        if !bad.is_empty() {
            tokio::time::sleep(self.latency).await;
            return Err(PortError::Refused {
                ids: bad,
                message: "FailedIdentityOperation: identity not found".into(),
            });
        }
        let preexisting = {
            let mut hosts = self.hosts.lock().expect("lock");
            let on = hosts.entry(host.clone()).or_default();
            let before: Vec<IdentityId> =
                add.iter().filter(|id| on.contains(*id)).cloned().collect();
            on.extend(add.iter().cloned());
            for id in remove {
                on.remove(id);
            }
            before
        };
        tokio::time::sleep(self.latency).await;
        Ok(PatchOutcome {
            preexisting,
            ..HostIdentities {
                user_assigned: self.on_host(host),
                deleting: false,
            }
            .into()
        })
    }
}
