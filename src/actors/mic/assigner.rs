//! One assigner actor per VM or scale set: executes [`HostBatch`]'s decisions against ARM,
//! one call in flight at a time (group commit), and reports after every answer.

use super::batch::{BatchSettings, HostBatch, Step};
use super::budget::WriteBudget;
use super::host::{HostId, IdentityId};
use super::metrics::MicMetrics;
use super::port::{ArmPort, PortError};
use crate::metrics::DropTimer;
use actix::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Replaces the identities current pods need on the host.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetDesired {
    /// Identities the host's pods need.
    pub desired: BTreeSet<IdentityId>,
    /// Identities never to remove.
    pub immutable: BTreeSet<IdentityId>,
    /// Sequence number of this update (echoed in reports).
    pub seq: u64,
}

/// Identities MIC assigned to the host before a restart (from AzureAssignedIdentity objects).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Adopt {
    /// The identities.
    pub ids: BTreeSet<IdentityId>,
}

/// The identities with a stored AzureAssignedIdentity record naming the host (write-ahead: the
/// assigner adds an identity only once it is recorded, so a successor finds every identity a
/// dead leader's PATCH may have put on the host).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SetRecorded {
    /// The identities.
    pub ids: BTreeSet<IdentityId>,
}

/// Re-reads the host and repairs what changed behind MIC's back.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Reconcile;

/// An assigner has nothing left to do: its host does not exist (`gone`), or no pod wants an
/// identity there and MIC holds none. Its owner retires it ([`Retire`]) unless a newer
/// [`SetDesired`] than `seq` is on its way.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct RetirementRequest {
    /// The host.
    pub host: HostId,
    /// Sequence number of the last [`SetDesired`] the assigner folded in.
    pub seq: u64,
    /// ARM said the host does not exist.
    pub gone: bool,
}

/// The owner retires the assigner: it sends its last report (holding nothing for anyone, so
/// the writer releases objects on the host without waiting) and stops.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Retire;

/// Where a host stands, sent after every change.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct HostReport {
    /// The host.
    pub host: HostId,
    /// Desired identities confirmed on the host.
    pub assigned: BTreeSet<IdentityId>,
    /// Identities MIC holds (or may hold, by a write in flight or of unknown outcome) on the
    /// host that no pod needs any more (removal pending).
    pub releasing: BTreeSet<IdentityId>,
    /// Identities MIC put, may have put, or is to put on the host (see [`HostBatch::held`]):
    /// the last record of one is never deleted before another object records it.
    pub held: BTreeSet<IdentityId>,
    /// Assigned identities MIC did not put on the host (never removed; recorded on their
    /// AzureAssignedIdentity objects so a restarted MIC does not take them for its own).
    pub external: BTreeSet<IdentityId>,
    /// Identities ARM refused, with the reason.
    pub refused: BTreeMap<IdentityId, String>,
    /// The last call failed as a whole (retried later), with the reason.
    pub failure: Option<String>,
    /// The host has been read at least once (so `releasing` is authoritative).
    pub synced: bool,
    /// Sequence number of the last [`SetDesired`] folded in.
    pub seq: u64,
}

/// The actor.
pub struct Assigner {
    host: HostId,
    batch: HostBatch,
    port: Arc<dyn ArmPort>,
    budget: Arc<WriteBudget>,
    reports: Recipient<HostReport>,
    metrics: MicMetrics,
    timer: Option<(Instant, SpawnHandle)>,
    last: Option<HostReport>,
    failure: Option<String>,
    synced: bool,
    seq: u64,
    /// Where to ask for retirement (none: the assigner lives as long as its owner).
    retire_to: Option<Recipient<RetirementRequest>>,
    /// Retirement asked for at this `seq`.
    asked: Option<u64>,
}

impl Assigner {
    /// An assigner for `host`.
    #[must_use]
    pub fn new(
        host: HostId,
        settings: BatchSettings,
        port: Arc<dyn ArmPort>,
        budget: Arc<WriteBudget>,
        reports: Recipient<HostReport>,
        metrics: MicMetrics,
    ) -> Self {
        Self {
            host,
            batch: HostBatch::new(settings),
            port,
            budget,
            reports,
            metrics,
            timer: None,
            last: None,
            failure: None,
            synced: false,
            seq: 0,
            retire_to: None,
            asked: None,
        }
    }

    /// Asks `owner` to retire the assigner whenever it has nothing left to do.
    #[must_use]
    pub fn retiring_to(mut self, owner: Recipient<RetirementRequest>) -> Self {
        self.retire_to = Some(owner);
        self
    }

    fn ask_retirement(&mut self) {
        let Some(owner) = &self.retire_to else { return };
        if self.batch.retirable() && self.asked != Some(self.seq) {
            self.asked = Some(self.seq);
            let gone = self.batch.gone();
            if gone {
                warn!(vmss = %self.host.name, "the VM or scale set does not exist; retiring its assigner");
            } else {
                debug!(vmss = %self.host.name, "nothing left to do on the host; retiring its assigner");
            }
            owner.do_send(RetirementRequest {
                host: self.host.clone(),
                seq: self.seq,
                gone,
            });
        }
    }

    fn report(&mut self) {
        let now = Instant::now();
        let r = HostReport {
            host: self.host.clone(),
            assigned: self.batch.assigned(),
            releasing: self.batch.releasing(),
            held: self.batch.held(),
            external: self.batch.external(),
            refused: self.batch.refusals(now),
            failure: self.failure.clone(),
            synced: self.synced,
            seq: self.seq,
        };
        self.metrics
            .queue_depth
            .with_label_values(&[&self.host.name])
            .set(i64::try_from(self.batch.pending()).unwrap_or(i64::MAX));
        if self.last.as_ref() != Some(&r) {
            self.last = Some(r.clone());
            self.reports.do_send(r);
        }
        self.ask_retirement();
    }

    fn drive(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        match self.batch.next(now) {
            Step::Busy | Step::Idle => {}
            Step::WaitUntil(t) => {
                if self.timer.as_ref().is_some_and(|(at, _)| *at == t) {
                    return;
                }
                if let Some((_, h)) = self.timer.take() {
                    ctx.cancel_future(h);
                }
                let h = ctx.run_later(t - now, |act, ctx| {
                    act.timer = None;
                    act.drive(ctx);
                });
                self.timer = Some((t, h));
            }
            Step::Read => {
                let port = self.port.clone();
                let host = self.host.clone();
                debug!(vmss = %host.name, "reading identities");
                let m = self.metrics.original.clone();
                let f = async move {
                    let _t = DropTimer::new(
                        m.cloud_provider_operations_duration_seconds
                            .with_label_values(&[host.operation("get")]),
                    );
                    let r = port.get(&host).await;
                    if r.is_err() {
                        m.cloud_provider_operations_errors_count
                            .with_label_values(&[host.operation("get")])
                            .inc();
                    }
                    r
                };
                ctx.spawn(f.into_actor(self).map(|res, act, ctx| {
                    if let Err(e) = &res {
                        warn!(vmss = %act.host.name, error = %e, "reading identities failed");
                        act.failure = Some(e.to_string());
                        act.throttle(e);
                    } else {
                        act.failure = None;
                        act.synced = true;
                    }
                    act.batch.on_read(res, Instant::now());
                    act.report();
                    act.drive(ctx);
                }));
            }
            Step::Patch { add, remove, base } => {
                let port = self.port.clone();
                let host = self.host.clone();
                let budget = self.budget.clone();
                #[allow(clippy::cast_precision_loss)]
                self.metrics
                    .batch_size
                    .observe((add.len() + remove.len()) as f64);
                info!(vmss = %host.name, add = add.len(), remove = remove.len(), "patching identities");
                let m = self.metrics.original.clone();
                let f = async move {
                    budget.acquire(&host.subscription).await;
                    let _t = DropTimer::new(
                        m.cloud_provider_operations_duration_seconds
                            .with_label_values(&[host.operation("update")]),
                    );
                    let r = port.patch(&host, &base, &add, &remove).await;
                    if r.is_err() {
                        m.cloud_provider_operations_errors_count
                            .with_label_values(&[host.operation("update")])
                            .inc();
                    }
                    r
                };
                ctx.spawn(f.into_actor(self).map(|res, act, ctx| {
                    let label = match &res {
                        Ok(_) => "ok",
                        Err(e) => e.metric_label(),
                    };
                    act.metrics.arm_writes.with_label_values(&[label]).inc();
                    if let Err(e) = &res {
                        act.throttle(e);
                    }
                    let out = act.batch.on_patch(res, Instant::now());
                    for (id, why) in &out.refused {
                        warn!(vmss = %act.host.name, identity = %id, reason = %why, "ARM refused identity");
                    }
                    act.failure = out.failed.as_ref().map(|e| {
                        warn!(vmss = %act.host.name, error = %e, "patching identities failed");
                        e.to_string()
                    });
                    act.report();
                    act.drive(ctx);
                }));
            }
        }
    }

    fn throttle(&self, e: &PortError) {
        if let PortError::Throttled { retry_after } = e {
            self.budget
                .block_until(&self.host.subscription, Instant::now() + *retry_after);
        }
    }
}

impl Actor for Assigner {
    type Context = Context<Self>;
}

impl Handler<SetDesired> for Assigner {
    type Result = ();
    fn handle(&mut self, msg: SetDesired, ctx: &mut Context<Self>) {
        self.seq = self.seq.max(msg.seq);
        self.batch
            .set_desired(msg.desired, msg.immutable, Instant::now());
        self.report();
        self.drive(ctx);
    }
}

impl Handler<Retire> for Assigner {
    type Result = ();
    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        // From now on the host holds nothing for anyone as far as the writer knows: objects
        // on it are released without waiting for a report that will never come. A fresh
        // assigner for the host reports again from sequence 0 up.
        self.reports.do_send(HostReport {
            host: self.host.clone(),
            assigned: BTreeSet::new(),
            releasing: BTreeSet::new(),
            held: BTreeSet::new(),
            external: BTreeSet::new(),
            refused: BTreeMap::new(),
            failure: self.failure.clone(),
            synced: true,
            seq: u64::MAX,
        });
        self.metrics
            .queue_depth
            .remove_label_values(&[&self.host.name])
            .ok();
        ctx.stop();
    }
}

impl Handler<Adopt> for Assigner {
    type Result = ();
    fn handle(&mut self, msg: Adopt, ctx: &mut Context<Self>) {
        self.batch.adopt(msg.ids, Instant::now());
        self.drive(ctx);
    }
}

impl Handler<SetRecorded> for Assigner {
    type Result = ();
    fn handle(&mut self, msg: SetRecorded, ctx: &mut Context<Self>) {
        self.batch.set_recorded(msg.ids, Instant::now());
        self.drive(ctx);
    }
}

impl Handler<Reconcile> for Assigner {
    type Result = ();
    fn handle(&mut self, _: Reconcile, ctx: &mut Context<Self>) {
        self.batch.request_reconcile();
        self.drive(ctx);
    }
}

#[cfg(test)]
#[path = "assigner_tests.rs"]
mod tests;
