//! The AzureAssignedIdentity writer: owns the objects, their status and finalizer, and
//! decides the Events users read on their pods and bindings (the [`super::recorder`] writes
//! them).
//!
//! Decisions are the pure [`plan`] ([`plan`] module): existing objects × desired assignments ×
//! host reports → operations. The actor (here) executes them through [`io`] (a bounded number
//! at a time, one per object), folds the answers back into its copy of the objects, and plans
//! again; [`object`] builds what it sends, [`events`] the Warning Events the state calls for. Lifecycle of one object:
//! created with the finalizer and status `Created`; `Assigned` once its host reports the
//! identity on ARM (at once for service principals); when no longer desired, `Unassigned`,
//! and deleted (finalizer removed) once its host no longer holds the identity for it, so an
//! identity in its grace period stays owned across a restart. An object whose write fails
//! waits out its own backoff ([`retry`]) while the others go on.
//!
//! The objects are also MIC's write-ahead log of its ARM writes ([`record`]): each names its
//! host, an identity is added to a host only once an unmarked object naming both is stored,
//! and such an object outlives what it records, so a leader killed at any instant leaves its
//! successor a record of every identity it put anywhere.

mod events;
mod io;
mod object;
mod plan;
mod record;
mod retry;
mod targets;

pub use super::recorder::{EVENT_SOURCE, REASON_APPLIED, REASON_APPLY_ERROR, UserEvent};
pub use events::error_events;
use events::error_events_among;
pub use io::Error;
pub use object::object_for;
pub use plan::{WriteOp, plan, plan_key, plan_some};
pub use record::{HostRecords, RecordIndex, RecordedOn, recorded_msi};
use retry::{Admit, WriteRetries};
use targets::ByTarget;

use super::assigner::HostReport;
use super::host::{HostId, IdentityId};
use super::matcher::{Assignment, Rejection, Target};
use super::metrics::MicMetrics;
use super::recorder::Record;
use crate::crd::{AssignedState, AzureAssignedIdentity};
use crate::object_key::ObjectKey;
use actix::prelude::*;
use kube::{Client, ResourceExt};
use plan::status_of;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use tokio::time::Instant;
use tracing::{info, warn};

/// What the matcher says should exist (sent after every change).
#[derive(Message, Debug, Clone, Default)]
#[rtype(result = "()")]
pub struct DesiredAssignments {
    /// Assignments by AzureAssignedIdentity key.
    pub assignments: BTreeMap<ObjectKey, Assignment>,
    /// Host of every known node.
    pub nodes: BTreeMap<String, HostId>,
    /// Refused matches (each becomes one Event).
    pub rejections: Vec<Rejection>,
    /// Sequence number of the host updates sent with this state; a host's report at or past
    /// it reflects this state.
    pub seq: u64,
}

/// An AzureAssignedIdentity watch event.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum AssignedEvent {
    /// Added or modified.
    Applied(Box<AzureAssignedIdentity>),
    /// Deleted.
    Deleted(ObjectKey),
    /// A relist finished: these are all objects that exist.
    Relisted(Vec<AzureAssignedIdentity>),
}

/// Where the writer sends the identities each host has a stored record of (the coordinator,
/// which hands them to the hosts' assigners): sent once the coordinator exists.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordsTo(pub Recipient<HostRecords>);

/// The writer actor.
///
/// Work is driven by a set of dirty keys: whatever changes for an object (its desired
/// assignment, its host's report, its copy from the watch, the answer to its last write)
/// marks it, and only marked objects are planned again, so a write costs the same in a
/// cluster of ten pods and of a hundred thousand. At most `max_in_flight` writes are out (one
/// per object); each answer starts the next at once, so writes are pipelined, never batched
/// behind their slowest member.
pub struct Writer {
    client: Client,
    events: Recipient<Record>,
    metrics: MicMetrics,
    max_in_flight: usize,
    existing: BTreeMap<ObjectKey, AzureAssignedIdentity>,
    /// The write-ahead records among `existing`.
    records: RecordIndex,
    /// Where changes to `records` go.
    records_to: Option<Recipient<HostRecords>>,
    desired: DesiredAssignments,
    /// Desired objects by the host and identity they put there.
    by_host: ByTarget,
    /// Existing objects no longer desired (being released).
    orphans: BTreeSet<ObjectKey>,
    hosts: BTreeMap<HostId, HostReport>,
    in_flight: BTreeSet<ObjectKey>,
    /// Objects whose last write failed, each on its own backoff.
    retries: WriteRetries,
    /// Assignments moved off a name another pod's object holds: the matcher's name, the pod,
    /// and the name used instead ([`crate::crd::unique_assigned_identity_name`]).
    renamed: BTreeMap<ObjectKey, (ObjectKey, ObjectKey)>,
    /// Objects to plan again.
    dirty: BTreeSet<ObjectKey>,
    /// Of those, objects that would be the first record of their identity on their host:
    /// written first, since the host's PATCH waits for them; a host's together, so its
    /// records arrive within one round of writes and its PATCH carries them all.
    urgent: VecDeque<ObjectKey>,
    /// The desired state or a host's report changed since `urgent` was computed.
    urgent_stale: bool,
    /// Warning Events written and still true (each is written once while it holds).
    events_sent: BTreeSet<UserEvent>,
    /// The desired state or a host report changed since the Warning Events were computed.
    events_stale: bool,
    /// When each assignment was first seen (for the latency histogram).
    first_seen: HashMap<ObjectKey, Instant>,
    /// The AzureAssignedIdentity watch has listed once.
    synced: bool,
    /// The matcher has said what should exist at least once; planning before that would
    /// take every existing object for stale.
    told: bool,
}

/// The host an assignment's identity goes on (none for service principals and federated ones).
pub(super) fn host_of(a: &Assignment) -> Option<&HostId> {
    target_of(a).map(|(host, _)| host)
}

/// The host and user-assigned identity an assignment puts there.
fn target_of(a: &Assignment) -> Option<(&HostId, &IdentityId)> {
    match &a.target {
        Target::Msi { host, id } => Some((host, id)),
        Target::ServicePrincipal | Target::Federated => None,
    }
}

impl Writer {
    /// A writer using `client`, at most `max_in_flight` writes at a time, recording Events
    /// through `events`.
    #[must_use]
    pub fn new(
        client: Client,
        events: Recipient<Record>,
        metrics: MicMetrics,
        max_in_flight: usize,
    ) -> Self {
        Self {
            client,
            events,
            metrics,
            max_in_flight: max_in_flight.max(1),
            existing: BTreeMap::new(),
            records: RecordIndex::default(),
            records_to: None,
            desired: DesiredAssignments::default(),
            by_host: ByTarget::default(),
            orphans: BTreeSet::new(),
            hosts: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            retries: WriteRetries::default(),
            renamed: BTreeMap::new(),
            dirty: BTreeSet::new(),
            urgent: VecDeque::new(),
            urgent_stale: false,
            events_sent: BTreeSet::new(),
            events_stale: false,
            first_seen: HashMap::new(),
            synced: false,
            told: false,
        }
    }

    /// Applies the renames still true (same name, same pod) to a new desired state.
    fn with_renames(&mut self, mut next: DesiredAssignments) -> DesiredAssignments {
        self.renamed
            .retain(|k, (pod, _)| next.assignments.get(k).is_some_and(|a| &a.pod == pod));
        for (k, (_, new)) in &self.renamed {
            if let Some(mut a) = next.assignments.remove(k) {
                a.key = new.clone();
                next.assignments.insert(new.clone(), a);
            }
        }
        next
    }

    /// Moves the assignment at `key` to a name no other pod's object can hold: the object
    /// there is another pod's. The object there is released like any other not desired.
    fn rename(&mut self, key: &ObjectKey) {
        let Some(a) = self.desired.assignments.remove(key) else {
            return;
        };
        let a = a.with_unique_name();
        if a.key == *key {
            self.desired.assignments.insert(key.clone(), a);
            return;
        }
        warn!(key = %key, pod = %a.pod, name = %a.key.name, "AzureAssignedIdentity name is another pod's; using a name of its own");
        self.renamed
            .insert(key.clone(), (a.pod.clone(), a.key.clone()));
        if let Some((h, id)) = target_of(&a) {
            self.by_host.remove(h, id, key);
            self.by_host.insert(h, id, a.key.clone());
        }
        if let Some(t) = self.first_seen.remove(key) {
            self.first_seen.insert(a.key.clone(), t);
        }
        if self.existing.contains_key(key) {
            self.orphans.insert(key.clone());
        }
        self.dirty.insert(key.clone());
        self.dirty.insert(a.key.clone());
        self.desired.assignments.insert(a.key.clone(), a);
    }

    /// Takes in a new desired state: marks what changed.
    fn set_desired(&mut self, next: DesiredAssignments) {
        let next = self.with_renames(next);
        let now = Instant::now();
        let mut old = std::mem::replace(&mut self.desired, next);
        for (key, a) in &self.desired.assignments {
            match old.assignments.remove(key) {
                Some(was) if was.same_as(a) => continue,
                Some(was) => {
                    if let Some((h, id)) = target_of(&was) {
                        self.by_host.remove(h, id, key);
                    }
                }
                None => {
                    self.first_seen.insert(key.clone(), now);
                    self.orphans.remove(key);
                }
            }
            if let Some((h, id)) = target_of(a) {
                self.by_host.insert(h, id, key.clone());
            }
            self.dirty.insert(key.clone());
        }
        // What is left of the old state is no longer desired.
        for (key, was) in old.assignments {
            if let Some((h, id)) = target_of(&was) {
                self.by_host.remove(h, id, &key);
            }
            self.first_seen.remove(&key);
            if self.existing.contains_key(&key) {
                self.orphans.insert(key.clone());
            }
            self.dirty.insert(key);
        }
        // Releases wait for reports at the new sequence number.
        self.dirty.extend(self.orphans.iter().cloned());
        self.events_stale = true;
        self.urgent_stale = true;
    }

    fn set_existing(&mut self, key: &ObjectKey, obj: Option<AzureAssignedIdentity>) {
        let old = self.existing.get(key);
        // An object released may wait for another record of its identity (checked only when
        // there is one: parsing the host annotation of every copy cost a tenth of MIC's time
        // converging 100 000 pods, where nothing is released).
        if !self.orphans.is_empty()
            && (old.is_some_and(record::is_record) || obj.as_ref().is_some_and(record::is_record))
        {
            self.dirty.extend(self.orphans.iter().cloned());
        }
        self.records.replace(key, old, obj.as_ref());
        match obj {
            Some(o) => {
                self.existing.insert(key.clone(), o);
                if !self.desired.assignments.contains_key(key) {
                    self.orphans.insert(key.clone());
                }
            }
            None => {
                self.existing.remove(key);
                self.orphans.remove(key);
            }
        }
        self.dirty.insert(key.clone());
    }

    /// Tells the assigners (through the coordinator) which identities now have a record.
    fn send_records(&mut self) {
        if let Some(to) = &self.records_to
            && let Some(changes) = self.records.take_changes()
        {
            to.do_send(changes);
        }
    }

    /// Starts writes for marked objects while there is room.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        self.send_records();
        if !self.synced || !self.told {
            return;
        }
        if self.events_stale {
            self.events_stale = false;
            let events = self.error_events();
            for ev in events.difference(&self.events_sent) {
                self.events.do_send(Record(ev.clone()));
            }
            self.events_sent = events;
        }
        let now = Instant::now();
        // Retries with no slot left to them: planned again when a slot frees.
        let mut no_room = Vec::new();
        self.find_urgent();
        while self.in_flight.len() < self.max_in_flight {
            let Some(key) = std::iter::from_fn(|| self.urgent.pop_front())
                .find(|k| self.dirty.remove(k))
                .or_else(|| self.dirty.pop_first())
            else {
                break;
            };
            // An object with a write out is planned again when that write answers.
            if self.in_flight.contains(&key) {
                continue;
            }
            let (wanted, stored) = (self.desired.assignments.get(&key), self.existing.get(&key));
            if let (Some(a), Some(e)) = (wanted, stored)
                && plan::records_other_pod(e, a)
            {
                self.rename(&key);
                continue;
            }
            let planned = plan::plan_found(
                &key,
                wanted,
                stored,
                &self.desired,
                &self.hosts,
                &self.records,
            );
            let Some(op) = planned else {
                // Nothing to write: whatever failed before no longer matters.
                if self.retries.settled(&key) {
                    self.backing_off_changed();
                }
                continue;
            };
            match self.retries.admit(&key, now, self.max_in_flight) {
                Admit::Go => {
                    self.in_flight.insert(key);
                    self.spawn_op(op, ctx);
                }
                // Its backoff timer marks it again.
                Admit::Backoff(_) => {}
                Admit::NoRoom => no_room.push(key),
            }
        }
        self.dirty.extend(no_room);
    }

    /// The Warning Events the state calls for ([`error_events`]), looking for refusals only
    /// among the refusing hosts' objects.
    fn error_events(&self) -> BTreeSet<UserEvent> {
        let candidates = self
            .hosts
            .iter()
            .flat_map(|(h, r)| {
                r.refused
                    .keys()
                    .filter_map(move |id| self.by_host.keys(h, id))
            })
            .flatten()
            .filter_map(|k| self.desired.assignments.get(k));
        let events = error_events_among(&self.desired, &self.hosts, candidates);
        debug_assert_eq!(events, error_events(&self.desired, &self.hosts));
        events
    }

    /// Picks, among the objects to write, one per identity and host that has no record yet:
    /// the first in key order that is marked, neither stored nor being written.
    fn find_urgent(&mut self) {
        if !std::mem::take(&mut self.urgent_stale) || self.dirty.len() <= self.max_in_flight {
            // Every one of them goes out now anyway.
            return;
        }
        let found = self.first_records_to_write();
        debug_assert_eq!(
            found.iter().cloned().collect::<BTreeSet<_>>(),
            self.first_records_to_write_by_scan()
        );
        self.urgent = found.into();
    }

    /// Per (host, identity) pair without a record, walking the pairs, not the objects; one
    /// host's after another.
    fn first_records_to_write(&self) -> Vec<ObjectKey> {
        let mut found = Vec::new();
        for (host, ids) in self.by_host.hosts() {
            let recorded = self.records.on_host(host);
            for (id, keys) in ids {
                if recorded.is_some_and(|r| r.contains_key(id)) {
                    continue;
                }
                if let Some(k) = keys.iter().find(|k| {
                    self.dirty.contains(*k)
                        && !self.existing.contains_key(*k)
                        && !self.in_flight.contains(*k)
                }) {
                    found.push(k.clone());
                }
            }
        }
        found
    }

    /// What [`Self::first_records_to_write`] finds, by walking every marked object (the
    /// definition; debug builds check the index against it).
    fn first_records_to_write_by_scan(&self) -> BTreeSet<ObjectKey> {
        let mut seen = BTreeSet::new();
        let mut found = BTreeSet::new();
        for key in &self.dirty {
            if self.existing.contains_key(key) || self.in_flight.contains(key) {
                continue;
            }
            if let Some(Target::Msi { host, id }) =
                self.desired.assignments.get(key).map(|a| &a.target)
                && self.records.count(host, id) == 0
                && seen.insert((host, id))
            {
                found.insert(key.clone());
            }
        }
        found
    }

    /// Debug builds: every wanted object a report did not mark plans the same under the old
    /// report as under the new one (the definition [`plan::report_changes`] stands for).
    #[cfg(debug_assertions)]
    fn check_unmarked_plan_alike(
        &self,
        before: &BTreeMap<HostId, HostReport>,
        marked: &BTreeSet<IdentityId>,
    ) {
        for (host, ids) in self.by_host.hosts() {
            for (id, keys) in ids {
                if marked.contains(id) || before.get(host) == self.hosts.get(host) {
                    continue;
                }
                for key in keys {
                    let plan_with = |hosts| {
                        plan::plan_found(
                            key,
                            self.desired.assignments.get(key),
                            self.existing.get(key),
                            &self.desired,
                            hosts,
                            &self.records,
                        )
                    };
                    debug_assert_eq!(plan_with(before), plan_with(&self.hosts), "{key}");
                }
            }
        }
    }

    fn backing_off_changed(&self) {
        self.metrics
            .writes_backing_off
            .set(i64::try_from(self.retries.backing_off()).unwrap_or(i64::MAX));
    }

    /// A write of `key` failed: the object waits out its backoff (the first failure in a row
    /// is reported on its pod and binding), and the others go on meanwhile.
    fn write_failed(&mut self, key: ObjectKey, e: &Error, ctx: &mut Context<Self>) {
        let f = self
            .retries
            .failed(&key, Instant::now(), rand::random::<f64>());
        self.backing_off_changed();
        warn!(key = %key, error = %e, retry_in = ?f.retry_in, "AzureAssignedIdentity write failed");
        if f.first {
            for ev in events::write_failure_events(
                &key,
                self.desired.assignments.get(&key),
                self.existing.get(&key),
                e,
                f.retry_in,
            ) {
                self.events.do_send(Record(ev));
            }
        }
        // The watch may bring a newer copy meanwhile; the retry plans from whatever is known.
        ctx.run_later(f.retry_in, move |act, ctx| {
            act.dirty.insert(key);
            act.pump(ctx);
        });
    }

    fn spawn_op(&self, op: WriteOp, ctx: &mut Context<Self>) {
        let client = self.client.clone();
        let key = op.key().clone();
        // Only a delete reads the stored copy (its finalizers); cloning a whole object (it
        // embeds its identity and binding) for every status write cost MIC's thread for nothing.
        let existing = match op {
            WriteOp::Delete { .. } => self.existing.get(&key).cloned(),
            _ => None,
        };
        let f = io::execute_counted(client, op, existing, self.metrics.clone());
        ctx.spawn(f.into_actor(self).map(move |res, act, ctx| {
            act.in_flight.remove(&key);
            match res {
                Ok((op, obj)) => {
                    if act.retries.settled(&key) {
                        info!(key = %key, "AzureAssignedIdentity write went through after failures");
                        act.backing_off_changed();
                    }
                    act.applied(op, obj);
                }
                Err(Error::NameTaken { .. }) => act.rename(&key),
                // This replica no longer leads: the write is not retried, nor reported on
                // the pod (that Event would be refused too); MIC is stepping down.
                Err(e) if e.fenced() => {
                    info!(key = %key, "AzureAssignedIdentity write not sent: not the leader any more");
                }
                Err(e) => act.write_failed(key, &e, ctx),
            }
            act.pump(ctx);
        }));
    }

    fn applied(&mut self, op: WriteOp, obj: Option<AzureAssignedIdentity>) {
        let key = op.key().clone();
        let became_assigned = match &op {
            WriteOp::Create { status, .. }
            | WriteOp::UpdateSpec { status, .. }
            | WriteOp::SetStatus { status, .. } => {
                *status == AssignedState::Assigned
                    && self
                        .existing
                        .get(&key)
                        .is_none_or(|e| status_of(e) != AssignedState::Assigned)
            }
            WriteOp::Delete { .. } => false,
        };
        self.set_existing(&key, obj);
        if became_assigned && let Some(a) = self.desired.assignments.get(&key) {
            if let Some(t0) = self.first_seen.get(&key) {
                self.metrics
                    .assignment_latency
                    .observe(t0.elapsed().as_secs_f64());
            }
            info!(pod = %a.pod, identity = %a.identity.name_any(), node = %a.node, "identity assigned");
            // On the binding, as the original records it: a burst of pods on one binding
            // then costs a few Event writes (see the recorder), not one per pod.
            let ev = UserEvent::on_binding(
                ObjectKey::of(a.binding.as_ref()),
                a.binding.metadata.uid.as_deref().unwrap_or_default(),
                "Normal",
                REASON_APPLIED,
                format!(
                    "Binding {} applied on node {} for pod {}",
                    a.binding.name_any(),
                    a.node,
                    a.pod
                ),
            );
            self.events.do_send(Record(ev));
        }
    }

    /// True when a watched copy is news: a later version than the stored one. The watch's
    /// echo of the writer's own write carries the version its answer already stored, and is
    /// skipped (at 100k pods, one object copy, index update and planning pass less per write).
    fn newer(old: Option<&AzureAssignedIdentity>, new: &AzureAssignedIdentity) -> bool {
        let rv = |o: &AzureAssignedIdentity| {
            o.metadata
                .resource_version
                .as_deref()
                .and_then(|v| v.parse::<u64>().ok())
        };
        match (old.and_then(rv), rv(new)) {
            (Some(a), Some(b)) => b > a,
            _ => true,
        }
    }
}

impl Actor for Writer {
    type Context = Context<Self>;
}

impl Handler<DesiredAssignments> for Writer {
    type Result = ();
    fn handle(&mut self, msg: DesiredAssignments, ctx: &mut Context<Self>) {
        self.set_desired(msg);
        self.told = true;
        self.pump(ctx);
    }
}

impl Handler<RecordsTo> for Writer {
    type Result = ();
    fn handle(&mut self, msg: RecordsTo, ctx: &mut Context<Self>) {
        self.records_to = Some(msg.0);
        self.pump(ctx);
    }
}

impl Handler<HostReport> for Writer {
    type Result = ();
    fn handle(&mut self, msg: HostReport, ctx: &mut Context<Self>) {
        // Only the objects the report may plan differently are marked: a host reports after
        // every call and every change, and marking its 2000 objects each time was most of
        // the writer's planning at 100k pods.
        let changed = self
            .hosts
            .get(&msg.host)
            .and_then(|old| plan::report_changes(old, &msg));
        match &changed {
            None => self.dirty.extend(self.by_host.of_host(&msg.host).cloned()),
            Some(ids) => {
                for id in ids {
                    if let Some(keys) = self.by_host.keys(&msg.host, id) {
                        self.dirty.extend(keys.iter().cloned());
                    }
                }
            }
        }
        self.dirty.extend(self.orphans.iter().cloned());
        #[cfg(debug_assertions)]
        let before = self.hosts.clone();
        self.hosts.insert(msg.host.clone(), msg);
        #[cfg(debug_assertions)]
        if let Some(ids) = &changed {
            self.check_unmarked_plan_alike(&before, ids);
        }
        self.events_stale = true;
        self.urgent_stale = true;
        self.pump(ctx);
    }
}

impl Handler<AssignedEvent> for Writer {
    type Result = ();
    fn handle(&mut self, msg: AssignedEvent, ctx: &mut Context<Self>) {
        match msg {
            AssignedEvent::Applied(o) => {
                let key = ObjectKey::of(o.as_ref());
                if Self::newer(self.existing.get(&key), &o) {
                    self.set_existing(&key, Some(*o));
                }
            }
            AssignedEvent::Deleted(key) => self.set_existing(&key, None),
            AssignedEvent::Relisted(all) => {
                self.existing = all.into_iter().map(|o| (ObjectKey::of(&o), o)).collect();
                self.records.rebuild(&self.existing);
                self.orphans = self
                    .existing
                    .keys()
                    .filter(|k| !self.desired.assignments.contains_key(*k))
                    .cloned()
                    .collect();
                self.dirty.extend(self.existing.keys().cloned());
                self.dirty.extend(self.desired.assignments.keys().cloned());
                self.synced = true;
            }
        }
        self.pump(ctx);
    }
}

#[cfg(test)]
mod tests;
