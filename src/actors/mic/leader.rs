//! Leader election on a `coordination.k8s.io/v1` Lease, so only one MIC replica writes; and,
//! while a Go MIC may still run (a rolling migration), on the original's Endpoints lock too:
//! an Endpoints object of the same name whose `control-plane.alpha.kubernetes.io/leader`
//! annotation holds client-go's record. A replica leads only while it holds both, so neither
//! implementation takes over while the other renews.
//!
//! Expiry is judged on this replica's own clock: a lease whose record (holder, renew time)
//! has not changed for one lease duration since this replica first saw it is free, whatever
//! the holder's clock says. The leader renews every retry period and steps down when it could
//! not renew for the renew deadline (two thirds of the duration), before anyone may take over.
//!
//! MIC runs the elector on a thread of its own ([`super::leader_thread`]), so compute on the
//! actor thread cannot starve a renewal; a [`Heartbeat`] from the actor thread keeps that from
//! holding the lease for a MIC whose actor thread is wedged for good.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

use super::heartbeat::Heartbeat;

/// Errors of leader election.
#[derive(Clone, Debug, thiserror::Error)]
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
    /// MIC's actor thread has not run for longer than the stall limit: this replica stopped
    /// renewing (it would hold the lease while doing no work) and is no longer leader.
    #[error(
        "gave up the leader lease: MIC's actor thread has not run for {stalled:?} (--actor-stall-limit {limit:?})"
    )]
    Stalled {
        /// How long the actor thread had not run.
        stalled: Duration,
        /// The stall limit.
        limit: Duration,
    },
    /// The election thread could not start (its runtime or its Kubernetes client) or ended.
    #[error("leader election thread: {0}")]
    Thread(String),
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
    /// Also hold the original's Endpoints lock of the same name and namespace, so a Go MIC
    /// still running during a rolling migration never leads at the same time as this one.
    pub endpoints_lock: bool,
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

/// What both locks record (client-go's `LeaderElectionRecord`, which the original's Endpoints
/// lock stores as JSON in an annotation).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Record {
    holder_identity: String,
    lease_duration_seconds: i32,
    acquire_time: Option<Time>,
    renew_time: Option<Time>,
    leader_transitions: i32,
}

/// The annotation of the original's Endpoints lock (client-go's `LeaderElectionRecordAnnotationKey`).
pub const ENDPOINTS_LOCK_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

/// The two locks a replica holds: its own Lease, and (while a Go MIC may still run) the
/// original's Endpoints lock of the same name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lease,
    Endpoints,
}

/// A lock as read: its record and the object to write back (for its resourceVersion).
enum Read {
    Lease(Option<Lease>),
    Endpoints(Option<Endpoints>),
}

/// A lock record (holder, renew time) and when this replica first saw it.
type Observation = ((String, Option<Time>), Instant);

/// A participant in the election.
pub struct LeaderElector {
    leases: Api<Lease>,
    endpoints: Api<Endpoints>,
    settings: LeaderSettings,
    /// The last record seen on each lock and when it was first seen.
    observed: Mutex<[Option<Observation>; 2]>,
    /// When the last attempt that left this replica holding every lock began: the renew
    /// deadline counts from there, however long ago [`Self::hold`] was called.
    renewed: Mutex<Option<Instant>>,
    /// The actor thread's heartbeat: no attempt is made while it is stalled.
    heartbeat: Option<Heartbeat>,
}

impl LeaderElector {
    /// A participant using `client`.
    #[must_use]
    pub fn new(client: Client, settings: LeaderSettings) -> Self {
        Self {
            leases: Api::namespaced(client.clone(), &settings.namespace),
            endpoints: Api::namespaced(client, &settings.namespace),
            settings,
            observed: Mutex::new([None, None]),
            renewed: Mutex::new(None),
            heartbeat: None,
        }
    }

    /// Makes no attempt (so a leader steps down) while `heartbeat` is stalled.
    #[must_use]
    pub fn watching(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// `Some(error)` when the watched heartbeat is stalled.
    fn stalled(&self) -> Option<Error> {
        let hb = self.heartbeat.as_ref()?;
        hb.stalled().map(|stalled| Error::Stalled {
            stalled,
            limit: hb.limit(),
        })
    }

    fn kinds(&self) -> &'static [Kind] {
        if self.settings.endpoints_lock {
            &[Kind::Lease, Kind::Endpoints]
        } else {
            &[Kind::Lease]
        }
    }

    fn meta(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.settings.name.clone()),
            namespace: Some(self.settings.namespace.clone()),
            ..ObjectMeta::default()
        }
    }

    async fn read(&self, kind: Kind) -> Result<(Option<Record>, Read), kube::Error> {
        Ok(match kind {
            Kind::Lease => {
                let lease = self.leases.get_opt(&self.settings.name).await?;
                let record = lease.as_ref().map(|l| {
                    let spec = l.spec.clone().unwrap_or_default();
                    Record {
                        holder_identity: spec.holder_identity.unwrap_or_default(),
                        lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
                        acquire_time: spec.acquire_time.map(|t| Time(t.0)),
                        renew_time: spec.renew_time.map(|t| Time(t.0)),
                        leader_transitions: spec.lease_transitions.unwrap_or(0),
                    }
                });
                (record, Read::Lease(lease))
            }
            Kind::Endpoints => {
                let ep = self.endpoints.get_opt(&self.settings.name).await?;
                // An Endpoints object without (or with an unreadable) record holds no lock.
                let record = ep.as_ref().and_then(|e| {
                    e.metadata
                        .annotations
                        .as_ref()?
                        .get(ENDPOINTS_LOCK_ANNOTATION)
                        .and_then(|raw| serde_json::from_str::<Record>(raw).ok())
                });
                (record, Read::Endpoints(ep))
            }
        })
    }

    /// Writes `record` to the lock read as `read`; false when someone else wrote first.
    async fn write(&self, read: Read, record: &Record) -> Result<bool, kube::Error> {
        let pp = PostParams::default();
        let result = match read {
            Read::Lease(existing) => {
                let spec = LeaseSpec {
                    holder_identity: Some(record.holder_identity.clone()),
                    lease_duration_seconds: Some(record.lease_duration_seconds),
                    acquire_time: record.acquire_time.as_ref().map(|t| MicroTime(t.0)),
                    renew_time: record.renew_time.as_ref().map(|t| MicroTime(t.0)),
                    lease_transitions: Some(record.leader_transitions),
                    ..LeaseSpec::default()
                };
                match existing {
                    None => self
                        .leases
                        .create(
                            &pp,
                            &Lease {
                                metadata: self.meta(),
                                spec: Some(spec),
                            },
                        )
                        .await
                        .map(drop),
                    // The resourceVersion makes this a compare-and-swap: two candidates taking
                    // over the same expired lock cannot both succeed.
                    Some(mut lease) => {
                        lease.spec = Some(spec);
                        self.leases
                            .replace(&self.settings.name, &pp, &lease)
                            .await
                            .map(drop)
                    }
                }
            }
            Read::Endpoints(existing) => {
                let raw = serde_json::to_string(record).expect("a record serializes");
                let exists = existing.is_some();
                let mut ep = existing.unwrap_or_else(|| Endpoints {
                    metadata: self.meta(),
                    ..Endpoints::default()
                });
                ep.metadata
                    .annotations
                    .get_or_insert_default()
                    .insert(ENDPOINTS_LOCK_ANNOTATION.to_string(), raw);
                if exists {
                    self.endpoints
                        .replace(&self.settings.name, &pp, &ep)
                        .await
                        .map(drop)
                } else {
                    self.endpoints.create(&pp, &ep).await.map(drop)
                }
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether `record` on lock `kind` has gone unrenewed for its lease duration, judged on this
    /// replica's clock from when it first saw the record.
    fn expired(&self, kind: Kind, record: &Record, now: Instant) -> bool {
        let key = (record.holder_identity.clone(), record.renew_time.clone());
        let mut obs = self.observed.lock().expect("observed lock");
        let slot = &mut obs[kind as usize];
        match slot.as_ref() {
            Some((r, since)) if *r == key => {
                let dur = u64::try_from(record.lease_duration_seconds)
                    .ok()
                    .filter(|s| *s > 0)
                    .map_or(self.settings.duration, Duration::from_secs);
                now.duration_since(*since) >= dur
            }
            _ => {
                *slot = Some((key, now));
                false
            }
        }
    }

    /// One attempt to become or stay leader; true when this replica holds every lock now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        // Taken before the first read: the other replicas' expiry clocks start only after our
        // write lands, so counting from here is on the safe side.
        let began = Instant::now();
        let mut reads = Vec::new();
        for kind in self.kinds() {
            reads.push((*kind, self.read(*kind).await?));
        }
        let now = Instant::now();
        let me = &self.settings.instance;
        let mut free = true;
        let mut was_mine = true;
        let mut transitions = 0;
        let mut acquired = None;
        for (kind, (record, _)) in &reads {
            let Some(r) = record else {
                was_mine = false;
                continue;
            };
            let mine = r.holder_identity == *me;
            // Evaluated for every lock, so each one's observation stays current.
            let expired = self.expired(*kind, r, now);
            free &= mine || r.holder_identity.is_empty() || expired;
            was_mine &= mine;
            transitions = transitions.max(r.leader_transitions + i32::from(!mine));
            if mine && acquired.is_none() {
                acquired.clone_from(&r.acquire_time);
            }
        }
        if !free {
            return Ok(false);
        }
        let stamp = Time(k8s_openapi::jiff::Timestamp::now());
        let record = Record {
            holder_identity: me.clone(),
            lease_duration_seconds: i32::try_from(self.settings.duration.as_secs().max(1))
                .unwrap_or(i32::MAX),
            acquire_time: Some(acquired.unwrap_or_else(|| stamp.clone())),
            renew_time: Some(stamp),
            leader_transitions: transitions,
        };
        for (_, (_, read)) in reads {
            if !self.write(read, &record).await? {
                return Ok(false);
            }
        }
        *self.renewed.lock().expect("renewed lock") = Some(began);
        if !was_mine {
            info!(lock = %self.settings.name, instance = %me, endpoints_lock = self.settings.endpoints_lock, "became leader");
        }
        Ok(true)
    }

    /// Waits until this replica is leader. An attempt that hangs (a stalled API connection) is
    /// abandoned after the renew deadline and tried again, so a candidate never waits on a dead
    /// connection for good.
    pub async fn acquire(&self) {
        loop {
            if let Some(e) = self.stalled() {
                warn!(error = %e, "not taking part in leader election");
                tokio::time::sleep(self.settings.retry_period()).await;
                continue;
            }
            match tokio::time::timeout(self.settings.renew_deadline(), self.try_acquire_or_renew())
                .await
            {
                Ok(Ok(true)) => return,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(error = %e, "leader election attempt failed"),
                Err(_) => warn!(
                    deadline = ?self.settings.renew_deadline(),
                    "leader election attempt did not finish in time"
                ),
            }
            tokio::time::sleep(self.settings.retry_period()).await;
        }
    }

    /// Renews the lease until it cannot, or until the watched heartbeat stalls; returns when
    /// leadership is lost.
    ///
    /// The renew deadline is a deadline on the clock, not a check after each call returns: a
    /// renewal still in flight when it passes is abandoned and this replica steps down, because
    /// from then on another replica may take the lease (it waits a whole lease duration, which
    /// is longer) and two leaders would write at once.
    pub async fn hold(&self) -> Error {
        loop {
            let Some(renewed) = *self.renewed.lock().expect("renewed lock") else {
                // Never led: nothing to hold.
                return self.lost();
            };
            let deadline = renewed + self.settings.renew_deadline();
            let next = (Instant::now() + self.settings.retry_period()).min(deadline);
            tokio::time::sleep_until(next).await;
            if Instant::now() >= deadline {
                return self.lost();
            }
            if let Some(e) = self.stalled() {
                warn!(error = %e, "stepping down");
                return e;
            }
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return self.lost(),
                Ok(Err(e)) => warn!(error = %e, "renewing the leader lease failed"),
                Err(_) => {
                    warn!(deadline = ?self.settings.renew_deadline(), "renewing the leader lease did not finish before the renew deadline");
                    return self.lost();
                }
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

#[cfg(test)]
#[path = "leader_tests.rs"]
mod tests;
