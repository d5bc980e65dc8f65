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
///
/// Each host has a version (its etag, bumped by every change). A PATCH whose base is not the
/// current version costs a read first, as the real client's 412 does, and is counted in
/// `gets`; one on the current version needs none.
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
    /// Reads received (including those a stale PATCH base costs).
    pub gets: Mutex<u32>,
    /// Version of each host (bumped by every change, also by [`MemoryArm::set_by_hand`]).
    pub versions: Mutex<BTreeMap<HostId, u64>>,
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

    /// Reads received so far.
    #[must_use]
    pub fn get_count(&self) -> u32 {
        *self.gets.lock().expect("lock")
    }

    /// Changes a host's identities outside MIC (someone with the portal), as a new version.
    pub fn set_by_hand(&self, host: &HostId, ids: BTreeSet<IdentityId>) {
        self.hosts.lock().expect("lock").insert(host.clone(), ids);
        self.bump(host);
    }

    fn version(&self, host: &HostId) -> u64 {
        self.versions
            .lock()
            .expect("lock")
            .get(host)
            .copied()
            .unwrap_or(0)
    }

    fn bump(&self, host: &HostId) {
        *self
            .versions
            .lock()
            .expect("lock")
            .entry(host.clone())
            .or_default() += 1;
    }

    fn state(&self, host: &HostId) -> HostIdentities {
        HostIdentities {
            user_assigned: self.on_host(host),
            etag: Some(format!("\"{}\"", self.version(host))),
            ..HostIdentities::default()
        }
    }
}

#[async_trait::async_trait]
impl ArmPort for MemoryArm {
    async fn get(&self, host: &HostId) -> Result<HostIdentities, PortError> {
        tokio::time::sleep(self.latency).await;
        *self.gets.lock().expect("lock") += 1;
        Ok(self.state(host))
    }

    async fn patch(
        &self,
        host: &HostId,
        base: &HostIdentities,
        add: &[IdentityId],
        remove: &[IdentityId],
    ) -> Result<PatchOutcome, PortError> {
        if base.etag != self.state(host).etag {
            // The real client's 412 and read again.
            *self.gets.lock().expect("lock") += 1;
        }
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
            let was = on.clone();
            on.extend(add.iter().cloned());
            for id in remove {
                on.remove(id);
            }
            let changed = *on != was;
            drop(hosts);
            if changed {
                self.bump(host);
            }
            before
        };
        tokio::time::sleep(self.latency).await;
        Ok(PatchOutcome {
            preexisting,
            ..self.state(host).into()
        })
    }
}
