//! Injected faults of the simulated API server, each shaped like what a real one does:
//! failed requests answered with a `Status` of the real reason, added latency (on every
//! request or on writes only, as a slow etcd makes writes slow), watches cut, history compacted
//! so resumed watches get 410 `Expired`, and writes of chosen objects refused with 409, 422 or
//! 500. The restart of the whole server (every connection cut, new ones refused) lives with the
//! server in [`super::KubeFaultHandle::restart`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::meta::ApiError;
use super::resources::ResourceInfo;

/// How a refused write is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 409 `Conflict`: "the object has been modified" (a stale resourceVersion), as an
    /// optimistic-concurrency failure reads.
    Conflict,
    /// 422 `Invalid` with a field cause, as validation or a policy refuses an object.
    Invalid,
    /// 500 `InternalError` ("Internal error occurred: …"), as a failing storage answers.
    Internal,
}

impl Refusal {
    /// The refusal for an HTTP status: 409, 422 or 500.
    #[must_use]
    pub fn from_status(status: u16) -> Option<Self> {
        match status {
            409 => Some(Self::Conflict),
            422 => Some(Self::Invalid),
            500 => Some(Self::Internal),
            _ => None,
        }
    }

    /// The error a real API server answers, for an object of `info` named `name`.
    #[must_use]
    pub fn error(self, info: &ResourceInfo, name: &str) -> ApiError {
        match self {
            Self::Conflict => ApiError::conflict(
                &info.group,
                &info.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
            Self::Invalid => ApiError::invalid_all(
                &info.group,
                &info.kind,
                name,
                &[format!(
                    "metadata.name: Invalid value: \"{name}\": refused by an injected fault"
                )],
            ),
            Self::Internal => {
                ApiError::internal(&info.group, &info.plural, name, "injected storage failure")
            }
        }
    }
}

/// Writes (create, update, patch, delete, and their status subresource) of the objects it
/// selects are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRefusal {
    /// The resource's plural (`azureassignedidentities`, `events`, `pods`, …).
    pub plural: String,
    /// Only in this namespace, when set.
    pub namespace: Option<String>,
    /// Only objects whose name starts with this ("" for every object).
    pub name_prefix: String,
    /// How they are refused.
    pub refusal: Refusal,
    /// How many more writes are refused; `None` until cleared.
    pub remaining: Option<u32>,
}

/// Injected faults, shared by every HTTP worker.
#[derive(Debug)]
pub struct Faults {
    fail_remaining: AtomicU32,
    fail_status: AtomicU16,
    latency_micros: AtomicU64,
    write_latency_micros: AtomicU64,
    pub(super) drop_watches: tokio::sync::watch::Sender<u64>,
    refusals: Mutex<Vec<WriteRefusal>>,
    refused: AtomicU64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_remaining: AtomicU32::new(0),
            fail_status: AtomicU16::new(500),
            latency_micros: AtomicU64::new(0),
            write_latency_micros: AtomicU64::new(0),
            drop_watches: tokio::sync::watch::Sender::new(0),
            refusals: Mutex::new(Vec::new()),
            refused: AtomicU64::new(0),
        }
    }
}

impl Faults {
    /// The status to answer this request with, if a failure is still owed.
    pub fn take_failure(&self) -> Option<u16> {
        self.fail_remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|_| self.fail_status.load(Ordering::SeqCst))
    }

    /// Owes the next `n` requests a failure with `status`.
    pub fn fail_next(&self, n: u32, status: u16) {
        self.fail_status.store(status, Ordering::SeqCst);
        self.fail_remaining.store(n, Ordering::SeqCst);
    }

    /// Latency to add to every request.
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_micros.load(Ordering::Relaxed))
    }

    /// Sets the latency of every request.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_micros.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Latency added to writes only (on top of [`Self::latency`]).
    pub fn write_latency(&self) -> Duration {
        Duration::from_micros(self.write_latency_micros.load(Ordering::Relaxed))
    }

    /// Sets the latency of writes.
    pub fn set_write_latency(&self, latency: Duration) {
        self.write_latency_micros.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Receiver that changes whenever every open watch must be dropped.
    pub fn drop_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.drop_watches.subscribe()
    }

    /// Ends every open watch now.
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|g| *g += 1);
    }

    /// Adds a refusal rule (rules are tried in the order added).
    pub fn refuse_writes(&self, rule: WriteRefusal) {
        self.lock_refusals().push(rule);
    }

    /// Removes every refusal rule.
    pub fn clear_refusals(&self) {
        self.lock_refusals().clear();
    }

    /// Writes refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The error for a write of `name` (namespace `ns`, "" when cluster-scoped) of `info`, if
    /// a rule refuses it; counts the refusal and spends one of the rule's `remaining`.
    pub fn refusal(&self, info: &ResourceInfo, ns: &str, name: &str) -> Option<ApiError> {
        let mut rules = self.lock_refusals();
        let idx = rules.iter().position(|r| {
            r.plural == info.plural
                && r.namespace.as_deref().is_none_or(|n| n == ns)
                && name.starts_with(&r.name_prefix)
        })?;
        let rule = &mut rules[idx];
        let refusal = rule.refusal;
        if let Some(n) = rule.remaining.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                rules.remove(idx);
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(refusal.error(info, name))
    }

    fn lock_refusals(&self) -> std::sync::MutexGuard<'_, Vec<WriteRefusal>> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
