//! MIC's Kubernetes Events, recorded the way client-go's event recorder records them, so a
//! burst of assignments costs a handful of Event writes per binding instead of one per pod,
//! and never holds up an AzureAssignedIdentity write.
//!
//! [`Correlator`] is the decision-maker, plain data with the clock passed in, with client-go's
//! keys and limits (`tools/record`'s `EventCorrelator`):
//! - an Event identical to one already written (same object, type, reason and message) bumps
//!   that Event's `count` instead of creating another;
//! - from the [`AGGREGATE_MAX_EVENTS`]th distinct message with the same object, type and reason
//!   within [`AGGREGATE_INTERVAL`], they go into one Event whose message starts with
//!   [`COMBINED_PREFIX`] and whose `count` grows;
//! - each object has a token bucket of [`SPAM_BURST`] writes refilled one per [`SPAM_REFILL`];
//!   an Event with no token left is dropped (its count still grows, so the next write of the
//!   same Event carries it).
//!
//! Two deliberate differences make the same objects cheaper: a count increment for an Event
//! whose write is still queued merges into that write (one PATCH for many increments), and
//! the spam bucket is charged per write rather than per increment, so merged increments are
//! never lost.
//!
//! [`Recorder`] is the actor that writes: a queue of at most [`MAX_QUEUED`] pending writes
//! (client-go drops Events past 1000 queued, so does this), [`WRITES_IN_FLIGHT`] at a time,
//! on the same client (and so under the same `--clientQps`) as every other MIC request.

use super::fence::NotLeading;
use super::metrics::MicMetrics;
use crate::object_key::ObjectKey;
use actix::prelude::*;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Source component of every Event MIC writes (the original's).
pub const EVENT_SOURCE: &str = "aadpodidentity.k8s.io";
/// Event reason when an identity is assigned for a pod.
pub const REASON_APPLIED: &str = "binding applied";
/// Event reason when a binding could not be applied to a pod.
pub const REASON_APPLY_ERROR: &str = "binding apply error";

/// Distinct messages with the same object, type and reason before they are combined
/// (client-go's `defaultAggregateMaxEvents`).
pub const AGGREGATE_MAX_EVENTS: usize = 10;
/// How long similar Events are remembered for combining (`defaultAggregateIntervalInSeconds`).
pub const AGGREGATE_INTERVAL: Duration = Duration::from_secs(600);
/// Message prefix of a combined Event (client-go's `EventAggregatorByReasonMessageFunc`).
pub const COMBINED_PREFIX: &str = "(combined from similar events): ";
/// Writes about one object allowed at once (`defaultSpamBurst`).
pub const SPAM_BURST: u32 = 25;
/// One more write about an object per this long (`defaultSpamQPS` = 1/300).
pub const SPAM_REFILL: Duration = Duration::from_secs(300);
/// Entries each of the correlator's caches keeps (`maxLruCacheEntries`).
pub const CACHE_ENTRIES: usize = 4096;
/// Pending Event writes kept before new ones are dropped (`maxQueuedEvents`).
pub const MAX_QUEUED: usize = 1000;
/// Event writes sent at a time.
pub const WRITES_IN_FLIGHT: usize = 2;

/// A Kubernetes Event to record about a pod or a binding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserEvent {
    /// Kind of the object (`Pod` or `AzureIdentityBinding`).
    pub kind: &'static str,
    /// Its apiVersion.
    pub api_version: &'static str,
    /// The object.
    pub object: ObjectKey,
    /// Its uid (empty when unknown).
    pub uid: String,
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    /// [`REASON_APPLIED`] or [`REASON_APPLY_ERROR`].
    pub reason: &'static str,
    /// What happened, for `kubectl describe`.
    pub message: String,
}

impl UserEvent {
    /// An Event about a pod.
    #[must_use]
    pub fn on_pod(
        pod: &ObjectKey,
        uid: &str,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) -> Self {
        Self {
            kind: "Pod",
            api_version: "v1",
            object: pod.clone(),
            uid: uid.to_string(),
            type_,
            reason,
            message,
        }
    }

    /// An Event about an AzureIdentityBinding.
    #[must_use]
    pub fn on_binding(
        binding: ObjectKey,
        uid: &str,
        type_: &'static str,
        reason: &'static str,
        message: String,
    ) -> Self {
        Self {
            kind: "AzureIdentityBinding",
            api_version: "aadpodidentity.k8s.io/v1",
            object: binding,
            uid: uid.to_string(),
            type_,
            reason,
            message,
        }
    }

    /// The object, type and reason: what similar Events share.
    fn similar(&self) -> SimilarKey {
        SimilarKey {
            kind: self.kind,
            object: self.object.clone(),
            uid: self.uid.clone(),
            type_: self.type_,
            reason: self.reason,
        }
    }
}

/// Object, type and reason (client-go's aggregate key; the source is always MIC).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SimilarKey {
    kind: &'static str,
    object: ObjectKey,
    uid: String,
    type_: &'static str,
    reason: &'static str,
}

/// One Event object: the similar key plus its message, or `None` for the combined one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventKey {
    similar: SimilarKey,
    message: Option<String>,
}

/// The object an Event is about (client-go's spam key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjectRef {
    kind: &'static str,
    object: ObjectKey,
    uid: String,
}

/// A map of at most `cap` entries that forgets the least recently used first.
#[derive(Debug)]
struct Lru<K, V> {
    cap: usize,
    tick: u64,
    map: HashMap<K, (u64, V)>,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            tick: 0,
            map: HashMap::new(),
        }
    }

    fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V {
        self.tick += 1;
        let tick = self.tick;
        if !self.map.contains_key(key) && self.map.len() >= self.cap {
            // Forget the oldest eighth at once, so a full cache costs one scan per cap/8 inserts.
            let mut ticks: Vec<u64> = self.map.values().map(|(t, _)| *t).collect();
            let cut = ticks.len() / 8;
            ticks.select_nth_unstable(cut);
            let below = ticks[cut];
            self.map.retain(|_, (t, _)| *t > below);
        }
        let entry = self
            .map
            .entry(key.clone())
            .or_insert_with(|| (tick, make()));
        entry.0 = tick;
        &mut entry.1
    }

    fn get(&mut self, key: &K) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|e| {
            e.0 = tick;
            &mut e.1
        })
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Distinct messages seen lately for one object, type and reason.
#[derive(Debug)]
struct Similar {
    messages: HashSet<String>,
    last: Instant,
}

/// What was last written (or is being written) for one Event object.
#[derive(Debug, Clone)]
struct Logged {
    name: String,
    count: i32,
    first: Timestamp,
}

/// A token bucket of writes about one object.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One Event write the correlator decided on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventWrite {
    /// The Event object's name (`<object>.<hex nanoseconds>`, as client-go names them).
    pub name: String,
    /// The Event as recorded (the message carries [`COMBINED_PREFIX`] once combined).
    pub event: UserEvent,
    /// How often it happened.
    pub count: i32,
    /// When it first happened.
    pub first: Timestamp,
    /// When it last happened.
    pub last: Timestamp,
    /// The Event exists (or its creation is under way): bump it rather than create it.
    pub update: bool,
}

impl EventWrite {
    /// The object this writes about (the spam filter's key).
    fn about(&self) -> ObjectRef {
        ObjectRef {
            kind: self.event.kind,
            object: self.event.object.clone(),
            uid: self.event.uid.clone(),
        }
    }
}

/// client-go's event correlation as plain data; see the module documentation.
#[derive(Debug)]
pub struct Correlator {
    similar: Lru<SimilarKey, Similar>,
    logged: Lru<EventKey, Logged>,
    spam: Lru<ObjectRef, Bucket>,
    names: u64,
}

impl Default for Correlator {
    fn default() -> Self {
        Self::new()
    }
}

impl Correlator {
    /// A correlator that has seen nothing.
    #[must_use]
    pub fn new() -> Self {
        Self {
            similar: Lru::new(CACHE_ENTRIES),
            logged: Lru::new(CACHE_ENTRIES),
            spam: Lru::new(CACHE_ENTRIES),
            names: 0,
        }
    }

    /// Folds one occurrence of `ev` in at `now` (`wall` for the Event's timestamps) and says
    /// what the Event object it belongs to should now look like.
    pub fn observe(&mut self, ev: &UserEvent, now: Instant, wall: Timestamp) -> EventWrite {
        let similar = ev.similar();
        let group = self.similar.get_or_insert_with(&similar, || Similar {
            messages: HashSet::new(),
            last: now,
        });
        if now.saturating_duration_since(group.last) > AGGREGATE_INTERVAL {
            group.messages.clear();
        }
        group.last = now;
        group.messages.insert(ev.message.clone());
        let (key, event) = if group.messages.len() < AGGREGATE_MAX_EVENTS {
            let key = EventKey {
                similar,
                message: Some(ev.message.clone()),
            };
            (key, ev.clone())
        } else {
            // Keep the set at its limit, as client-go does, and combine.
            group.messages.remove(&ev.message);
            let key = EventKey {
                similar,
                message: None,
            };
            let mut combined = ev.clone();
            combined.message = format!("{COMBINED_PREFIX}{}", ev.message);
            (key, combined)
        };
        if let Some(l) = self.logged.get(&key) {
            l.count = l.count.saturating_add(1);
            return EventWrite {
                name: l.name.clone(),
                event,
                count: l.count,
                first: l.first,
                last: wall,
                update: true,
            };
        }
        self.names += 1;
        // Nanoseconds as client-go, plus a sequence so two Events in one nanosecond differ.
        let nanos = u128::try_from(wall.as_nanosecond()).unwrap_or(0) + u128::from(self.names);
        let name = format!("{}.{nanos:x}", ev.object.name);
        let logged = Logged {
            name: name.clone(),
            count: 1,
            first: wall,
        };
        self.logged.get_or_insert_with(&key, || logged);
        EventWrite {
            name,
            event,
            count: 1,
            first: wall,
            last: wall,
            update: false,
        }
    }

    /// Takes a write token for the object `w` is about; false when its bucket is empty.
    pub fn allow(&mut self, w: &EventWrite, now: Instant) -> bool {
        let b = self.spam.get_or_insert_with(&w.about(), || Bucket {
            tokens: f64::from(SPAM_BURST),
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() / SPAM_REFILL.as_secs_f64();
        b.tokens = (b.tokens + refill).min(f64::from(SPAM_BURST));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Entries held (for tests of the bound).
    #[must_use]
    pub fn cached(&self) -> usize {
        self.similar.len() + self.logged.len() + self.spam.len()
    }
}

/// Why a recorded Event was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Its object's write bucket is empty.
    SpamFiltered,
    /// [`MAX_QUEUED`] writes are already pending.
    QueueFull,
}

/// The recorder's queue as plain data: pending writes by Event name, oldest first, at most
/// [`WRITES_IN_FLIGHT`] out, at most one per Event.
#[derive(Debug, Default)]
pub struct Queue {
    order: VecDeque<String>,
    pending: HashMap<String, EventWrite>,
    in_flight: HashSet<String>,
}

impl Queue {
    /// Queues `w`, folding it into a pending write of the same Event. `Ok(true)` when it
    /// merged (no new write), `Ok(false)` when it is a new write.
    pub fn push(
        &mut self,
        w: EventWrite,
        allow: impl FnOnce(&EventWrite) -> bool,
    ) -> Result<bool, Dropped> {
        if let Some(p) = self.pending.get_mut(&w.name) {
            // A create not sent yet stays a create, now with the latest count and message.
            let update = p.update;
            *p = EventWrite { update, ..w };
            return Ok(true);
        }
        if self.pending.len() >= MAX_QUEUED {
            return Err(Dropped::QueueFull);
        }
        if !allow(&w) {
            return Err(Dropped::SpamFiltered);
        }
        self.order.push_back(w.name.clone());
        self.pending.insert(w.name.clone(), w);
        Ok(false)
    }

    /// The next write to send, if one may go out now.
    pub fn next_write(&mut self) -> Option<EventWrite> {
        if self.in_flight.len() >= WRITES_IN_FLIGHT {
            return None;
        }
        let i = self
            .order
            .iter()
            .position(|n| !self.in_flight.contains(n))?;
        let name = self.order.remove(i)?;
        let w = self.pending.remove(&name)?;
        self.in_flight.insert(name);
        Some(w)
    }

    /// A write sent by [`Queue::next`] is done; later increments of that Event were queued
    /// behind it as an update.
    pub fn done(&mut self, name: &str) {
        self.in_flight.remove(name);
        if let Some(p) = self.pending.get_mut(name) {
            p.update = true;
        }
    }

    /// Writes pending or out.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pending.len() + self.in_flight.len()
    }

    /// Nothing pending or out.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Records one Event (the caller never waits for its write).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Record(pub UserEvent);

/// The actor that correlates and writes MIC's Events.
pub struct Recorder {
    client: Client,
    metrics: MicMetrics,
    correlator: Correlator,
    queue: Queue,
}

impl Recorder {
    /// A recorder writing through `client`.
    #[must_use]
    pub fn new(client: Client, metrics: MicMetrics) -> Self {
        Self {
            client,
            metrics,
            correlator: Correlator::new(),
            queue: Queue::default(),
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics.events.with_label_values(&[outcome]).inc();
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        while let Some(w) = self.queue.next_write() {
            let client = self.client.clone();
            let name = w.name.clone();
            let errors = self
                .metrics
                .original
                .kubernetes_api_operations_errors_count
                .clone();
            let f = async move {
                let update = w.update;
                match write(&client, &w).await {
                    Ok(()) if update => "updated",
                    Ok(()) => "created",
                    // Not sent: this replica no longer leads (counted by the fence).
                    Err(e) if NotLeading::is(&e) => "fenced",
                    Err(e) => {
                        errors.with_label_values(&["create event"]).inc();
                        warn!(object = %w.event.object, kind = w.event.kind, reason = w.event.reason, error = %e, "writing Event failed");
                        "failed"
                    }
                }
            };
            ctx.spawn(f.into_actor(self).map(move |outcome, act, ctx| {
                act.queue.done(&name);
                act.count(outcome);
                act.pump(ctx);
            }));
        }
    }
}

/// Creates the Event, or bumps it (merge patch of count, message and lastTimestamp, as
/// client-go's patch); a bump of an Event that is gone creates it again, a create of one that
/// exists bumps it.
async fn write(client: &Client, w: &EventWrite) -> Result<(), kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), &w.event.object.namespace);
    let bump = || async {
        let patch = serde_json::json!({
            "count": w.count,
            "message": w.event.message,
            "lastTimestamp": Time(w.last),
        });
        api.patch(&w.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
    };
    if w.update {
        match bump().await {
            Err(kube::Error::Api(s)) if s.code == 404 => {
                debug!(name = %w.name, "Event gone; creating it again");
            }
            other => return other.map(drop),
        }
    }
    match api.create(&PostParams::default(), &event_object(w)).await {
        Err(kube::Error::Api(s)) if s.code == 409 => bump().await.map(drop),
        other => other.map(drop),
    }
}

/// The Event object for a write.
#[must_use]
pub fn event_object(w: &EventWrite) -> Event {
    let ev = &w.event;
    Event {
        metadata: kube::api::ObjectMeta {
            name: Some(w.name.clone()),
            namespace: Some(ev.object.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(ev.api_version.into()),
            kind: Some(ev.kind.into()),
            name: Some(ev.object.name.clone()),
            namespace: Some(ev.object.namespace.clone()),
            uid: Some(ev.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        },
        reason: Some(ev.reason.to_string()),
        message: Some(ev.message.clone()),
        type_: Some(ev.type_.to_string()),
        source: Some(EventSource {
            component: Some(EVENT_SOURCE.to_string()),
            host: None,
        }),
        reporting_component: Some(EVENT_SOURCE.to_string()),
        reporting_instance: Some(EVENT_SOURCE.to_string()),
        first_timestamp: Some(Time(w.first)),
        last_timestamp: Some(Time(w.last)),
        event_time: Some(MicroTime(w.first)),
        count: Some(w.count),
        action: Some(ev.reason.to_string()),
        ..Default::default()
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<Record> for Recorder {
    type Result = ();
    fn handle(&mut self, Record(ev): Record, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let w = self.correlator.observe(&ev, now, Timestamp::now());
        let correlator = &mut self.correlator;
        match self.queue.push(w, |w| correlator.allow(w, now)) {
            Ok(true) => self.count("merged"),
            Ok(false) => {}
            Err(Dropped::SpamFiltered) => self.count("spam_filtered"),
            Err(Dropped::QueueFull) => self.count("queue_full"),
        }
        self.pump(ctx);
    }
}

#[cfg(test)]
#[path = "recorder_tests.rs"]
mod tests;
