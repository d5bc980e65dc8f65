//! The binding matcher actor: owns the [`BindingIndex`], folds watch events into it and, once
//! every watch has listed, sends each host's assigner its desired identities and the writer
//! the desired AzureAssignedIdentity objects. Recomputation is coalesced: a burst of events
//! costs one pass.
//!
//! Start-up rebuild: the AzureAssignedIdentity objects present at the first list tell which
//! identities MIC put on which host before it (or a previous leader) stopped; each host's
//! assigner adopts them, reads the host from ARM, and only writes what differs. An object names
//! its host ([`crate::crd::IDENTITY_HOST_ANNOTATION`]), so identities on a host whose node was
//! deleted meanwhile are adopted too (a host named only by such objects gets an assigner that
//! removes them, then retires); objects the original wrote are mapped through their node.
//!
//! Write-ahead: the writer tells which identities have a stored record on each host
//! ([`HostRecords`]); the coordinator hands each host's set to its assigner, which adds an
//! identity only once it is recorded.

use super::assigner::{Adopt, Reconcile, Retire, RetirementRequest, SetDesired, SetRecorded};
use super::host::{HostId, IdentityId};
use super::matcher::{BindingIndex, MatchSettings};
use super::metrics::MicMetrics;
use super::watchers::{CatalogEvent, Observed};
use super::writer::{AssignedEvent, DesiredAssignments, HostRecords, RecordedOn, recorded_msi};
use crate::metrics::DropTimer;
use crate::object_key::ObjectKey;
use actix::prelude::*;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

/// The recipients of one host's assigner.
#[derive(Clone)]
pub struct AssignerHandle {
    /// Desired identities.
    pub desired: Recipient<SetDesired>,
    /// Start-up adoption.
    pub adopt: Recipient<Adopt>,
    /// Periodic reconcile.
    pub reconcile: Recipient<Reconcile>,
    /// Retirement.
    pub retire: Recipient<Retire>,
    /// Identities with a stored record on the host.
    pub recorded: Recipient<SetRecorded>,
}

/// Makes the assigner of a host on first need; it asks for retirement through the recipient.
pub type AssignerFactory = Box<dyn FnMut(&HostId, Recipient<RetirementRequest>) -> AssignerHandle>;

const KINDS: usize = 5;

/// The shortest time a host ARM said does not exist is left alone (unless a node on it
/// appears), whatever the reconcile interval.
const MIN_GONE_HOLD: Duration = Duration::from_secs(30);

/// The actor.
pub struct Coordinator {
    index: BindingIndex,
    writer_desired: Recipient<DesiredAssignments>,
    writer_assigned: Recipient<AssignedEvent>,
    make_assigner: AssignerFactory,
    assigners: BTreeMap<HostId, AssignerHandle>,
    /// Hosts ARM said do not exist, and when: no assigner is made for them again until a node
    /// on them appears or the reconcile interval has passed.
    gone: BTreeMap<HostId, Instant>,
    /// Hosts with a node, as of the last pass.
    with_nodes: BTreeSet<HostId>,
    listed: [bool; KINDS],
    /// AzureAssignedIdentity objects of the first list: where MIC put which identity before.
    startup: Option<Vec<(RecordedOn, IdentityId)>>,
    /// Identities with a stored record, per host (from the writer).
    records: BTreeMap<HostId, BTreeSet<IdentityId>>,
    adopted: BTreeSet<HostId>,
    seq: u64,
    scheduled: bool,
    reconcile_interval: Duration,
    metrics: MicMetrics,
    last_pass: Duration,
}

impl Coordinator {
    /// A coordinator feeding `writer`, creating assigners with `make_assigner`.
    #[must_use]
    pub fn new(
        settings: MatchSettings,
        writer_desired: Recipient<DesiredAssignments>,
        writer_assigned: Recipient<AssignedEvent>,
        make_assigner: AssignerFactory,
        reconcile_interval: Duration,
        metrics: MicMetrics,
    ) -> Self {
        Self {
            index: BindingIndex::new(settings),
            writer_desired,
            writer_assigned,
            make_assigner,
            assigners: BTreeMap::new(),
            gone: BTreeMap::new(),
            with_nodes: BTreeSet::new(),
            listed: [false; KINDS],
            startup: None,
            records: BTreeMap::new(),
            adopted: BTreeSet::new(),
            seq: 0,
            scheduled: false,
            reconcile_interval,
            metrics,
            last_pass: Duration::ZERO,
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if !self.scheduled {
            self.scheduled = true;
            // At least 10 ms, and twice the last pass: a large cluster under a storm of events
            // spends at most a third of its time matching.
            let wait = (self.last_pass * 2).max(Duration::from_millis(10));
            ctx.run_later(wait, |act, ctx| {
                act.scheduled = false;
                let t = std::time::Instant::now();
                act.recompute(ctx);
                act.last_pass = t.elapsed();
            });
        }
    }

    /// Identities an object of the first list says MIC put on `host` before it started.
    fn startup_ids(&self, host: &HostId) -> BTreeSet<IdentityId> {
        self.startup
            .iter()
            .flatten()
            .filter(|(on, _)| match on {
                RecordedOn::Host(h) => h == host,
                RecordedOn::Node(node) => self.index.host_of_node(node) == Some(host),
            })
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Hosts the first list names by annotation that have not been adopted yet.
    fn startup_hosts(&self) -> BTreeSet<HostId> {
        self.startup
            .iter()
            .flatten()
            .filter_map(|(on, _)| match on {
                RecordedOn::Host(h) if !self.adopted.contains(h) => Some(h.clone()),
                _ => None,
            })
            .collect()
    }

    fn count_assigners(&self) {
        self.metrics
            .assigners
            .set(i64::try_from(self.assigners.len()).unwrap_or(i64::MAX));
    }

    fn recompute(&mut self, ctx: &mut Context<Self>) {
        if self.listed.iter().any(|l| !l) {
            return;
        }
        let _timer = DropTimer::new(self.metrics.original.mic_cycle_duration_seconds.clone());
        self.metrics.original.mic_cycle_count.inc();
        let d = self.index.desired();
        self.seq += 1;
        let now = Instant::now();
        let forget_after = self.reconcile_interval.max(MIN_GONE_HOLD);
        self.gone.retain(|_, at| now < *at + forget_after);
        // Every host with a node gets an assigner (it reads the host once, so the first pod's
        // write needs no read), except one ARM said is gone; live ones hear the new state.
        let mut hosts: BTreeSet<HostId> = d
            .hosts
            .keys()
            .filter(|h| !self.gone.contains_key(*h))
            .cloned()
            .collect();
        hosts.extend(self.assigners.keys().cloned());
        // Hosts MIC wrote to before it started, even with no node left: what it put there is
        // removed once unused.
        hosts.extend(
            self.startup_hosts()
                .into_iter()
                .filter(|h| !self.gone.contains_key(h)),
        );
        self.with_nodes = d.hosts.keys().cloned().collect();
        for host in hosts {
            let handle = match self.assigners.get(&host) {
                Some(h) => h.clone(),
                None => {
                    let h = (self.make_assigner)(&host, ctx.address().recipient());
                    self.assigners.insert(host.clone(), h.clone());
                    if let Some(ids) = self.records.get(&host) {
                        h.recorded.do_send(SetRecorded { ids: ids.clone() });
                    }
                    h
                }
            };
            if self.adopted.insert(host.clone()) {
                let ids = self.startup_ids(&host);
                if !ids.is_empty() {
                    debug!(vmss = %host.name, count = ids.len(), "adopting identities assigned before start");
                    handle.adopt.do_send(Adopt { ids });
                }
            }
            handle.desired.do_send(SetDesired {
                desired: d.hosts.get(&host).cloned().unwrap_or_default(),
                immutable: d.immutable.clone(),
                seq: self.seq,
            });
        }
        self.count_assigners();
        let nodes = self.index.node_hosts();
        self.writer_desired.do_send(DesiredAssignments {
            assignments: d.assignments,
            nodes,
            rejections: d.rejections,
            seq: self.seq,
        });
    }

    fn fold<K, A, D>(
        &mut self,
        kind: usize,
        ev: Observed<K>,
        apply: A,
        delete: D,
        clear: fn(&mut BindingIndex),
    ) where
        A: Fn(&mut BindingIndex, &K),
        D: Fn(&mut BindingIndex, &K),
    {
        match ev {
            Observed::Applied(o) => apply(&mut self.index, &o),
            Observed::Deleted(o) => delete(&mut self.index, &o),
            Observed::Relisted(all) => {
                clear(&mut self.index);
                for o in &all {
                    apply(&mut self.index, o);
                }
                self.listed[kind] = true;
            }
        }
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if !self.reconcile_interval.is_zero() {
            ctx.run_interval(self.reconcile_interval, |act, _| {
                for h in act.assigners.values() {
                    h.reconcile.do_send(Reconcile);
                }
            });
        }
    }
}

impl Handler<HostRecords> for Coordinator {
    type Result = ();
    fn handle(&mut self, msg: HostRecords, _: &mut Context<Self>) {
        for (host, ids) in msg.0 {
            if let Some(h) = self.assigners.get(&host) {
                h.recorded.do_send(SetRecorded { ids: ids.clone() });
            }
            if ids.is_empty() {
                self.records.remove(&host);
            } else {
                self.records.insert(host, ids);
            }
        }
    }
}

impl Handler<RetirementRequest> for Coordinator {
    type Result = ();
    fn handle(&mut self, msg: RetirementRequest, _: &mut Context<Self>) {
        // A host that does not exist is retired whatever its pods want. An idle one only once
        // no node is on it (an idle assigner costs nothing, and keeps the host's last state
        // for the next pod's write), and not while a newer desired state is on its way to it
        // (it asks again if still idle).
        if !msg.gone && (msg.seq != self.seq || self.with_nodes.contains(&msg.host)) {
            return;
        }
        if let Some(h) = self.assigners.remove(&msg.host) {
            h.retire.do_send(Retire);
        }
        if msg.gone {
            self.gone.insert(msg.host, Instant::now());
        }
        self.count_assigners();
    }
}

impl Handler<CatalogEvent> for Coordinator {
    type Result = ();
    fn handle(&mut self, msg: CatalogEvent, ctx: &mut Context<Self>) {
        match msg {
            CatalogEvent::Pod(ev) => self.fold(
                0,
                ev,
                BindingIndex::apply_pod,
                |ix, p| ix.delete_pod(&ObjectKey::of(p)),
                BindingIndex::clear_pods,
            ),
            CatalogEvent::Identity(ev) => self.fold(
                1,
                ev,
                BindingIndex::apply_identity,
                |ix, i| ix.delete_identity(&ObjectKey::of(i)),
                BindingIndex::clear_identities,
            ),
            CatalogEvent::Binding(ev) => self.fold(
                2,
                ev,
                BindingIndex::apply_binding,
                |ix, b| ix.delete_binding(&ObjectKey::of(b)),
                BindingIndex::clear_bindings,
            ),
            CatalogEvent::Node(ev) => {
                // A node newly on a host ARM said was gone: the host was (re)created.
                let fresh = match &ev {
                    Observed::Applied(n) if !self.gone.is_empty() => {
                        let name = n.name_any();
                        let before = self.index.host_of_node(&name).cloned();
                        Some((name, before))
                    }
                    _ => None,
                };
                self.fold(
                    3,
                    ev,
                    BindingIndex::apply_node,
                    |ix, n| ix.delete_node(&n.name_any()),
                    BindingIndex::clear_nodes,
                );
                if let Some((name, before)) = fresh
                    && let Some(h) = self.index.host_of_node(&name)
                    && before.as_ref() != Some(h)
                {
                    self.gone.remove(h);
                }
            }
            CatalogEvent::Assigned(ev) => {
                // The writer's own objects change nothing the matcher computes: only the first
                // list (start-up adoption, and the last kind to list) calls for a pass.
                let fwd = match ev {
                    Observed::Applied(o) => {
                        self.writer_assigned.do_send(AssignedEvent::Applied(o));
                        return;
                    }
                    Observed::Deleted(o) => {
                        self.writer_assigned
                            .do_send(AssignedEvent::Deleted(ObjectKey::of(o.as_ref())));
                        return;
                    }
                    Observed::Relisted(all) => {
                        if self.startup.is_none() {
                            self.startup = Some(all.iter().filter_map(recorded_msi).collect());
                        }
                        self.listed[4] = true;
                        AssignedEvent::Relisted(all)
                    }
                };
                self.writer_assigned.do_send(fwd);
            }
        }
        self.schedule(ctx);
    }
}

#[cfg(test)]
#[path = "coordinator_tests.rs"]
mod tests;
