//! Leader election on a `coordination.k8s.io/v1` Lease, so only one MIC replica writes.
//!
//! Expiry is judged on this replica's own clock: a lease whose record (holder, renew time)
//! has not changed for one lease duration since this replica first saw it is free, whatever
//! the holder's clock says. The leader renews every retry period and steps down when it could
//! not renew for the renew deadline (two thirds of the duration), before anyone may take over.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This replica could not renew the lease in time and is no longer leader.
    #[error("lost the leader lease {namespace}/{name}: not renewed within {deadline:?}")]
    Lost {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The renew deadline.
        deadline: Duration,
    },
}

/// Where and as whom to take part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderSettings {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity.
    pub instance: String,
    /// Lease duration.
    pub duration: Duration,
}

impl LeaderSettings {
    /// How often the leader renews and candidates retry.
    #[must_use]
    pub fn retry_period(&self) -> Duration {
        (self.duration / 7).max(Duration::from_millis(50))
    }

    /// How long the leader may fail to renew before stepping down.
    #[must_use]
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// A lease record (holder, renew time) and when this replica first saw it.
type Observation = ((String, Option<MicroTime>), Instant);

/// A participant in the election.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaderSettings,
    /// The last lease record seen (holder, renew time) and when it was first seen.
    observed: Mutex<Option<Observation>>,
}

impl LeaderElector {
    /// A participant using `client`.
    #[must_use]
    pub fn new(client: Client, settings: LeaderSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: Mutex::new(None),
        }
    }

    fn lease_body(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.settings.instance.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to become or stay leader; true when this replica holds the lease now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let existing = self.api.get_opt(&self.settings.name).await?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.lease_body(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (holder.clone(), spec.renew_time.clone());
        let now = Instant::now();
        let expired = {
            let mut obs = self.observed.lock().expect("observed lock");
            match obs.as_ref() {
                Some((r, since)) if *r == record => {
                    let dur = spec
                        .lease_duration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .map_or(self.settings.duration, Duration::from_secs);
                    now.duration_since(*since) >= dur
                }
                _ => {
                    *obs = Some((record, now));
                    false
                }
            }
        };
        let mine = holder == self.settings.instance;
        if !(mine || holder.is_empty() || expired) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.lease_body(transitions, acquired));
        // The resourceVersion in `lease` makes this a compare-and-swap: two candidates taking
        // over the same expired lease cannot both succeed.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !mine {
                    info!(lease = %self.settings.name, instance = %self.settings.instance, previous = %holder, "became leader");
                }
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica is leader.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.settings.retry_period()).await;
        }
    }

    /// Renews the lease until it cannot; returns when leadership is lost.
    pub async fn hold(&self) -> Error {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    return self.lost();
                }
                Err(e) => warn!(error = %e, "renewing the leader lease failed"),
            }
            if renewed.elapsed() > self.settings.renew_deadline() {
                return self.lost();
            }
        }
    }

    fn lost(&self) -> Error {
        Error::Lost {
            namespace: self.settings.namespace.clone(),
            name: self.settings.name.clone(),
            deadline: self.settings.renew_deadline(),
        }
    }
}
