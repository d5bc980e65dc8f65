//! The decisions of one host's assigner, as plain data: what the next ARM call is, what is
//! owned, what is being released, what is backing off. No I/O and no clock of its own: every
//! method takes `now`, so tests drive it directly and the actor only executes its answers.
//!
//! Group commit falls out of the shape: at most one call is in flight ([`HostBatch::next`]
//! answers [`Step::Busy`] meanwhile), and whatever changed while it was out is folded into
//! the next single PATCH.
//!
//! Write-ahead: an identity is added only once an AzureAssignedIdentity naming it and the host
//! is stored ([`HostBatch::set_recorded`]), so whenever a leader dies, its successor finds a
//! record of every identity it may have put on the host. An identity already on the host needs
//! no record and no PATCH.
//!
//! One round trip per write: the last answer (a read's, or a PATCH's with the etag ARM gave
//! the result) is the host's state, and the next PATCH is computed from it and conditional on
//! it. The host is read only on first contact, after a call whose outcome is unknown (a
//! failure mid-write), after ARM said the host changed under a write, and for the periodic
//! reconcile.

use super::host::IdentityId;
use super::port::{HostIdentities, PatchOutcome, PortError};
use crate::backoff::exponential;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// ARM accepts at most this many identity changes in one request.
pub const MAX_IDS_PER_PATCH: usize = 150;

/// Timings of an assigner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    /// How long an identity stays on the host after its last pod left.
    pub unassign_grace: Duration,
    /// Refusals of an identity retried after [`Self::refused_retry_interval`] before the
    /// backoff starts (`--update-user-msi-max-retry`: the original retried this often, then
    /// left the identity to its next sync).
    pub refused_retries: u32,
    /// Wait before each of those retries (`--update-user-msi-retry-interval`).
    pub refused_retry_interval: Duration,
    /// First wait before retrying an identity ARM refused once the quick retries are spent;
    /// doubles per refusal.
    pub refused_backoff: Duration,
    /// Longest wait for a refused identity.
    pub refused_backoff_max: Duration,
    /// First wait after a transient failure of the whole host; doubles per failure.
    pub transient_backoff: Duration,
    /// Longest wait after transient failures.
    pub transient_backoff_max: Duration,
    /// How long an idle host waits for the changes to pause before its PATCH goes out, so a
    /// burst (a Deployment scaling up) starts with one PATCH instead of one for the first pod
    /// and one for the rest. Changes arriving while a PATCH is in flight never wait.
    pub linger: Duration,
    /// The longest an idle host waits for a burst to pause; no longer than the host's last ARM
    /// call took (but at least `linger`), since waiting longer than a write costs more than
    /// sending what is there and the rest in the next PATCH.
    pub linger_max: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            unassign_grace: Duration::from_secs(60),
            refused_retries: 0,
            refused_retry_interval: Duration::from_secs(1),
            refused_backoff: Duration::from_secs(10),
            refused_backoff_max: Duration::from_secs(600),
            transient_backoff: Duration::from_secs(1),
            transient_backoff_max: Duration::from_secs(60),
            linger: Duration::from_millis(300),
            linger_max: Duration::from_millis(1500),
        }
    }
}

/// What the assigner should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read the host's identities (first contact, or a reconcile).
    Read,
    /// One PATCH with these changes, on top of the host's last known state.
    Patch {
        /// Identities to add.
        add: Vec<IdentityId>,
        /// Identities to remove.
        remove: Vec<IdentityId>,
        /// The state the changes were computed from (the write is conditional on it).
        base: HostIdentities,
    },
    /// Nothing to do before this instant (a grace period, a backoff, a Retry-After ends).
    WaitUntil(Instant),
    /// A call is in flight; its answer triggers the next step.
    Busy,
    /// Nothing to do until something changes.
    Idle,
}

/// An identity ARM refused, waiting before the next attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// When it may be tried again.
    pub until: Instant,
    /// Refusals in a row.
    pub attempts: u32,
    /// ARM's reason.
    pub reason: String,
}

/// Where the host's calls stand.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Flight {
    /// No call out.
    Idle,
    /// A read is out.
    Reading,
    /// A PATCH with these changes is out.
    Patching {
        add: Vec<IdentityId>,
        remove: Vec<IdentityId>,
    },
}

/// What one call's answer changed, for the writer and the metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Identities newly refused by ARM, with the reason.
    pub refused: BTreeMap<IdentityId, String>,
    /// The call failed as a whole (the host is retried later).
    pub failed: Option<PortError>,
}

/// Changes to the desired set not yet sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Changes {
    first: Instant,
    last: Instant,
    queued_behind_call: bool,
}

/// The pure state of one host's assigner.
#[derive(Debug)]
pub struct HostBatch {
    settings: BatchSettings,
    /// Identities current pods need.
    desired: BTreeSet<IdentityId>,
    /// Identities never to remove.
    immutable: BTreeSet<IdentityId>,
    /// Identities with a stored record naming the host: the only ones that may be added.
    recorded: BTreeSet<IdentityId>,
    /// The host as last read or patched; `None` until the first read.
    known: Option<HostIdentities>,
    /// The host is being deleted: hands off.
    deleting: bool,
    /// ARM says the host does not exist: nothing more is sent (its assigner is retired).
    gone: bool,
    /// Identities MIC put on the host (the only ones it may remove).
    owned: BTreeSet<IdentityId>,
    /// Owned identities no longer desired, and since when.
    released: BTreeMap<IdentityId, Instant>,
    /// Identities a PATCH with an unknown outcome (timeout, lost answer, 5xx) tried to add:
    /// possibly on the host by MIC's own write. The next answer that shows the host settles
    /// them: present, they are owned (so they go once unused: no leak); absent, they are not.
    /// Identities outside MIC's writes never get here, so none is ever wrongly removed.
    maybe_owned: BTreeSet<IdentityId>,
    /// Identities a PATCH with an unknown outcome tried to remove: possibly gone from the host
    /// although the last known state shows them, so they are not reported assigned until the
    /// next answer that shows the host (a pod wanting one again must not be told it is there).
    maybe_removed: BTreeSet<IdentityId>,
    /// Identities ARM refused, waiting.
    refused: BTreeMap<IdentityId, Refusal>,
    /// Host-wide wait after a failure or a 429.
    hold_until: Option<Instant>,
    transient_failures: u32,
    flight: Flight,
    reconcile_requested: bool,
    /// What pods want has not changed since the host's first read: every wish predates it (a
    /// cold start), so no burst is under way and a PATCH carrying every wanted identity need
    /// not wait for one to pause.
    cold: bool,
    /// Changes since the last PATCH went out: first and last, and whether a call was in
    /// flight at the first (such changes go out as soon as it returns).
    changes: Option<Changes>,
    /// When the call in flight went out.
    call_started: Option<Instant>,
    /// How long the host's last answered ARM call took (bounds the linger).
    last_call: Option<Duration>,
}

impl HostBatch {
    /// A host nothing is known of yet.
    #[must_use]
    pub fn new(settings: BatchSettings) -> Self {
        Self {
            settings,
            desired: BTreeSet::new(),
            immutable: BTreeSet::new(),
            recorded: BTreeSet::new(),
            known: None,
            deleting: false,
            gone: false,
            owned: BTreeSet::new(),
            released: BTreeMap::new(),
            maybe_owned: BTreeSet::new(),
            maybe_removed: BTreeSet::new(),
            refused: BTreeMap::new(),
            hold_until: None,
            transient_failures: 0,
            flight: Flight::Idle,
            reconcile_requested: false,
            cold: false,
            changes: None,
            call_started: None,
            last_call: None,
        }
    }

    /// Notes that a call goes out at `now`.
    fn call_out(&mut self, now: Instant) {
        self.call_started = Some(now);
    }

    /// Notes that the call in flight was answered at `now`.
    fn call_back(&mut self, now: Instant) {
        if let Some(t) = self.call_started.take() {
            self.last_call = Some(now.saturating_duration_since(t));
        }
    }

    /// Identities MIC assigned before a restart (from AzureAssignedIdentity objects): owned,
    /// so they are removed once unused.
    pub fn adopt(&mut self, ids: impl IntoIterator<Item = IdentityId>, now: Instant) {
        self.owned.extend(ids);
        self.refresh_released(now);
    }

    /// Notes a change to send at `now` (the wait for a burst to pause counts from it).
    fn note_change(&mut self, now: Instant) {
        let busy = self.flight != Flight::Idle;
        let c = self.changes.get_or_insert(Changes {
            first: now,
            last: now,
            queued_behind_call: busy,
        });
        c.last = now;
    }

    /// True when `id`, wanted, could go out in the next PATCH: it has a record and is not on
    /// the host as last known.
    fn sendable(&self, id: &IdentityId) -> bool {
        self.recorded.contains(id)
            && self
                .known
                .as_ref()
                .is_none_or(|k| !k.user_assigned.contains(id))
    }

    /// Replaces what current pods need and the immutable set.
    ///
    /// The wait for a burst to pause counts from the first change a PATCH could carry: a
    /// newly wanted identity without a record cannot go out, so its record's arrival
    /// ([`Self::set_recorded`]) starts the wait instead. Counting from the wish made a
    /// host's first PATCH leave with the first record alone whenever the wish came before
    /// the host's first read (a cold start: MIC's whole cluster), and every other identity
    /// of the host wait for a second PATCH.
    pub fn set_desired(
        &mut self,
        desired: BTreeSet<IdentityId>,
        immutable: BTreeSet<IdentityId>,
        now: Instant,
    ) {
        let added = desired
            .iter()
            .any(|id| !self.desired.contains(id) && self.sendable(id));
        let dropped = self.desired.iter().any(|id| !desired.contains(id));
        if added || dropped {
            self.note_change(now);
        }
        if desired != self.desired {
            self.cold = false;
        }
        self.desired = desired;
        self.immutable = immutable;
        self.refused
            .retain(|id, _| self.desired.contains(id) || self.owned.contains(id));
        self.refresh_released(now);
    }

    /// Replaces the identities with a stored record naming the host. A newly recorded identity
    /// that is wanted and not on the host counts as a change for the wait for a burst to pause,
    /// so a burst's records arriving one by one still go out in one PATCH.
    pub fn set_recorded(&mut self, recorded: BTreeSet<IdentityId>, now: Instant) {
        let old = std::mem::replace(&mut self.recorded, recorded);
        let news = self
            .recorded
            .iter()
            .any(|id| !old.contains(id) && self.desired.contains(id) && self.sendable(id));
        if news {
            self.note_change(now);
        }
    }

    /// Asks for a fresh read before the next decision (periodic reconcile).
    pub fn request_reconcile(&mut self) {
        self.reconcile_requested = true;
    }

    fn refresh_released(&mut self, now: Instant) {
        let releasable: BTreeSet<IdentityId> = self
            .owned
            .iter()
            .filter(|id| !self.desired.contains(*id) && !self.immutable.contains(*id))
            .cloned()
            .collect();
        self.released.retain(|id, _| releasable.contains(id));
        for id in releasable {
            self.released.entry(id).or_insert(now);
        }
    }

    fn refused_now(&self, id: &IdentityId, now: Instant) -> bool {
        self.refused.get(id).is_some_and(|r| r.until > now)
    }

    /// The next thing to do at `now`. Returning `Read` or `Patch` marks the call as in flight.
    pub fn next(&mut self, now: Instant) -> Step {
        if self.flight != Flight::Idle {
            return Step::Busy;
        }
        if self.gone {
            return Step::Idle;
        }
        // The first read of a host nothing is wanted on or held at failed: it is not worth
        // retrying until a pod needs the host.
        if self.known.is_none()
            && self.transient_failures > 0
            && self.desired.is_empty()
            && self.owned.is_empty()
        {
            return Step::Idle;
        }
        if let Some(h) = self.hold_until {
            if h > now {
                return Step::WaitUntil(h);
            }
            self.hold_until = None;
        }
        let Some(host) = (if self.reconcile_requested {
            None
        } else {
            self.known.as_ref()
        }) else {
            self.reconcile_requested = false;
            self.flight = Flight::Reading;
            self.call_out(now);
            return Step::Read;
        };
        if self.deleting {
            return Step::Idle;
        }
        let known = &host.user_assigned;
        let mut wake: Option<Instant> = None;
        let mut add = Vec::new();
        for id in self.desired.difference(known) {
            if !self.recorded.contains(id) {
                // Its record's arrival asks again.
                continue;
            }
            if let Some(r) = self.refused.get(id).filter(|r| r.until > now) {
                wake = Some(wake.map_or(r.until, |w| w.min(r.until)));
            } else {
                add.push(id.clone());
            }
        }
        let mut remove = Vec::new();
        for (id, since) in &self.released {
            if !known.contains(id) {
                continue;
            }
            let due = *since + self.settings.unassign_grace;
            if due > now {
                wake = Some(wake.map_or(due, |w| w.min(due)));
            } else if let Some(r) = self.refused.get(id).filter(|r| r.until > now) {
                wake = Some(wake.map_or(r.until, |w| w.min(r.until)));
            } else {
                remove.push(id.clone());
            }
        }
        if add.is_empty() && remove.is_empty() {
            return wake.map_or(Step::Idle, Step::WaitUntil);
        }
        // At a cold start, once every wanted identity missing from the host has its record,
        // nothing else is coming: the PATCH goes at once.
        let complete = self.cold
            && self
                .desired
                .difference(known)
                .all(|id| self.recorded.contains(id));
        if let Some(c) = &self.changes
            && !c.queued_behind_call
            && !complete
        {
            let (quiet, most) = (self.settings.linger, self.settings.linger_max);
            let longest = self
                .last_call
                .map_or(most, |d| d.clamp(quiet.min(most), most));
            let go = (c.last + quiet).min(c.first + longest);
            if go > now {
                return Step::WaitUntil(go);
            }
        }
        let base = host.clone();
        self.changes = None;
        add.truncate(MAX_IDS_PER_PATCH);
        remove.truncate(MAX_IDS_PER_PATCH - add.len());
        self.flight = Flight::Patching {
            add: add.clone(),
            remove: remove.clone(),
        };
        self.call_out(now);
        Step::Patch { add, remove, base }
    }

    /// Folds in the answer to a read.
    pub fn on_read(&mut self, result: Result<HostIdentities, PortError>, now: Instant) -> Outcome {
        self.flight = Flight::Idle;
        self.call_back(now);
        match result {
            Ok(state) => {
                self.accept_state(state, now);
                self.transient_failures = 0;
                Outcome::default()
            }
            Err(e) => {
                self.host_failure(&e, now);
                Outcome {
                    failed: Some(e),
                    ..Outcome::default()
                }
            }
        }
    }

    fn accept_state(&mut self, state: HostIdentities, now: Instant) {
        self.deleting = state.deleting;
        let present = &state.user_assigned;
        // A write whose outcome was unknown is settled by what the host shows now.
        self.maybe_removed.clear();
        for id in std::mem::take(&mut self.maybe_owned) {
            if present.contains(&id) {
                self.owned.insert(id);
            }
        }
        // Owned identities someone removed by hand are owned again only if re-added.
        self.owned
            .retain(|id| present.contains(id) || self.desired.contains(id));
        self.released.retain(|id, _| present.contains(id));
        if self.known.is_none() {
            self.cold = true;
        }
        self.known = Some(state);
        self.refresh_released(now);
    }

    /// Identities possibly on the host by a write of MIC's whose outcome is unknown (until
    /// the next read or PATCH answer settles them).
    #[must_use]
    pub fn maybe_owned(&self) -> &BTreeSet<IdentityId> {
        &self.maybe_owned
    }

    /// Folds in the answer to a PATCH.
    pub fn on_patch(&mut self, result: Result<PatchOutcome, PortError>, now: Instant) -> Outcome {
        let Flight::Patching { add, remove } = std::mem::replace(&mut self.flight, Flight::Idle)
        else {
            return Outcome::default();
        };
        self.call_back(now);
        match result {
            Ok(PatchOutcome {
                state,
                refused,
                preexisting,
            }) => {
                self.transient_failures = 0;
                let mut out = Outcome::default();
                for (id, why) in refused {
                    if add.contains(&id) || remove.contains(&id) {
                        out.refused.extend(self.refuse(vec![id], why, now).refused);
                    }
                }
                for id in &add {
                    if state.user_assigned.contains(id) {
                        // Ours only if our write put it there: one that was already on the
                        // host (added by hand or concurrently) is never MIC's to remove.
                        if !preexisting.contains(id) {
                            self.owned.insert(id.clone());
                        }
                        self.refused.remove(id);
                    }
                }
                for id in &remove {
                    if !state.user_assigned.contains(id) {
                        self.owned.remove(id);
                        self.released.remove(id);
                        self.refused.remove(id);
                    }
                }
                self.accept_state(state, now);
                out
            }
            Err(PortError::Refused { ids, message }) => {
                // Nothing was applied: a step never holds more than one request's worth of
                // changes, so the port's call was a single PATCH, refused whole.
                let in_request: Vec<IdentityId> = ids
                    .into_iter()
                    .filter(|id| add.contains(id) || remove.contains(id))
                    .collect();
                if in_request.is_empty() && add.len() + remove.len() == 1 {
                    // ARM did not say which, but there was only one candidate.
                    let only = add.iter().chain(remove.iter()).next().cloned();
                    return self.refuse(only.into_iter().collect(), message, now);
                }
                if in_request.is_empty() {
                    let e = PortError::Refused {
                        ids: Vec::new(),
                        message,
                    };
                    self.host_failure(&e, now);
                    return Outcome {
                        failed: Some(e),
                        ..Outcome::default()
                    };
                }
                self.refuse(in_request, message, now)
            }
            Err(e) => {
                // Whether the write was applied is unknown (a timeout, a 5xx, a failed
                // operation): read before the next decision. A 429 applied nothing itself,
                // but may end the retries of an attempt that went unanswered; either way its
                // additions are possibly MIC's until the host is seen again.
                self.maybe_owned.extend(add.iter().cloned());
                self.maybe_removed.extend(remove.iter().cloned());
                if !matches!(e, PortError::Throttled { .. }) || !remove.is_empty() {
                    self.reconcile_requested = true;
                }
                self.host_failure(&e, now);
                Outcome {
                    failed: Some(e),
                    ..Outcome::default()
                }
            }
        }
    }

    fn refuse(&mut self, ids: Vec<IdentityId>, message: String, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        for id in ids {
            let attempts = self.refused.get(&id).map_or(0, |r| r.attempts) + 1;
            let wait = match attempts.checked_sub(self.settings.refused_retries) {
                Some(beyond) if beyond > 0 => exponential(
                    self.settings.refused_backoff,
                    self.settings.refused_backoff_max,
                    beyond,
                ),
                _ => self.settings.refused_retry_interval,
            };
            self.refused.insert(
                id.clone(),
                Refusal {
                    until: now + wait,
                    attempts,
                    reason: message.clone(),
                },
            );
            out.refused.insert(id, message.clone());
        }
        out
    }

    fn host_failure(&mut self, e: &PortError, now: Instant) {
        if matches!(e, PortError::NotFound(_)) {
            // Retrying a host that is not there would go on for ever: its owner retires the
            // assigner, and a host re-created under the name gets a fresh one.
            self.gone = true;
            return;
        }
        let wait = match e {
            PortError::Throttled { retry_after } => *retry_after,
            PortError::Deleting => {
                self.deleting = true;
                self.settings.transient_backoff_max
            }
            _ => {
                self.transient_failures += 1;
                exponential(
                    self.settings.transient_backoff,
                    self.settings.transient_backoff_max,
                    self.transient_failures,
                )
            }
        };
        if matches!(e, PortError::Deleting | PortError::Conflict(_)) {
            // Look again later: a host being deleted may be replaced by one of the same name.
            self.reconcile_requested = true;
        }
        self.hold_until = Some(now + wait);
    }

    /// Desired identities confirmed on the host: an identity already there is assigned at
    /// once, whatever other write is in flight, unless that write is removing it.
    #[must_use]
    pub fn assigned(&self) -> BTreeSet<IdentityId> {
        let leaving: &[IdentityId] = match &self.flight {
            Flight::Patching { remove, .. } => remove,
            _ => &[],
        };
        match &self.known {
            Some(k) => self
                .desired
                .intersection(&k.user_assigned)
                .filter(|id| !leaving.contains(id) && !self.maybe_removed.contains(*id))
                .cloned()
                .collect(),
            None => BTreeSet::new(),
        }
    }

    /// Desired identities on the host that MIC did not put there (present before, added by
    /// hand or concurrently): MIC never removes them.
    #[must_use]
    pub fn external(&self) -> BTreeSet<IdentityId> {
        self.assigned()
            .into_iter()
            .filter(|id| !self.owned.contains(id))
            .collect()
    }

    /// Identities the PATCH in flight adds.
    fn adding(&self) -> &[IdentityId] {
        match &self.flight {
            Flight::Patching { add, .. } => add,
            _ => &[],
        }
    }

    /// Identities MIC holds on the host that no pod needs any more (their removal is
    /// pending): owned ones still there, and ones a PATCH in flight or of unknown outcome may
    /// have put there. Their records are kept until they go.
    #[must_use]
    pub fn releasing(&self) -> BTreeSet<IdentityId> {
        self.released
            .keys()
            .chain(self.adding())
            .chain(&self.maybe_owned)
            .filter(|id| !self.desired.contains(*id))
            .cloned()
            .collect()
    }

    /// Identities MIC put, may have put, or is to put on the host: owned, added by a PATCH in
    /// flight or of unknown outcome, or wanted and not there yet (the next PATCH may carry them
    /// on the strength of any stored record). A record of one must outlive its write.
    #[must_use]
    pub fn held(&self) -> BTreeSet<IdentityId> {
        let known = self.known.as_ref().map(|k| &k.user_assigned);
        let to_add = self.desired.iter().filter(|id| {
            known.is_none_or(|k| !k.contains(*id) || self.maybe_removed.contains(*id))
        });
        self.owned
            .iter()
            .chain(&self.maybe_owned)
            .chain(self.adding())
            .chain(to_add)
            .cloned()
            .collect()
    }

    /// Identities currently refused, with the reason.
    #[must_use]
    pub fn refusals(&self, now: Instant) -> BTreeMap<IdentityId, String> {
        self.refused
            .iter()
            .filter(|(id, _)| self.refused_now(id, now))
            .map(|(id, r)| (id.clone(), r.reason.clone()))
            .collect()
    }

    /// ARM said the host does not exist; nothing more is sent to it.
    #[must_use]
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// Nothing is left to do on the host, for now or ever: it does not exist, or no pod wants
    /// an identity on it and MIC holds none there (none owned, releasing, or possibly put
    /// there by a write whose outcome is unknown). The assigner may then be retired.
    #[must_use]
    pub fn retirable(&self) -> bool {
        self.flight == Flight::Idle
            && (self.gone
                || (self.desired.is_empty()
                    && self.owned.is_empty()
                    && self.released.is_empty()
                    && self.maybe_owned.is_empty()))
    }

    /// Identities MIC put on the host.
    #[must_use]
    pub fn owned(&self) -> &BTreeSet<IdentityId> {
        &self.owned
    }

    /// Adds and removes not yet on ARM (queue depth).
    #[must_use]
    pub fn pending(&self) -> usize {
        let Some(host) = &self.known else {
            return self.desired.len();
        };
        let known = &host.user_assigned;
        self.desired.difference(known).count()
            + self
                .released
                .keys()
                .filter(|id| known.contains(*id))
                .count()
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
