//! The writer's retries, as plain data: each object whose last write failed waits out its own
//! backoff (jittered, capped, from [`crate::backoff`]), and retries together hold at most half
//! of the writer's slots. So objects that always fail (a policy refusing them with 422, a
//! webhook down for one namespace) neither hammer the API server nor take the
//! `--createDeleteBatch` slots that new pods need.
//!
//! No clock of its own and no randomness: every method takes `now`, the jitter is passed in,
//! and tests drive it under a paused clock.

use crate::backoff::Backoff;
use crate::object_key::ObjectKey;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// First wait after a failed write (jittered into its upper half).
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest wait between two attempts of one object.
pub const MAX_RETRY: Duration = Duration::from_secs(300);

/// One failing object.
#[derive(Debug)]
struct Failing {
    backoff: Backoff,
    /// Not to be tried again before.
    until: Instant,
    /// A retry of it is out now.
    in_flight: bool,
}

/// Whether an object with a write to make may start it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Start it.
    Go,
    /// Its backoff runs until then (the writer's timer marks it again).
    Backoff(Instant),
    /// It is a retry and the retries' share of the slots is taken: try again when a slot frees.
    NoRoom,
}

/// What a failure earned the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Wait before the next attempt.
    pub retry_in: Duration,
    /// The first failure in a row (the one worth an Event).
    pub first: bool,
}

/// The objects whose last write failed.
#[derive(Debug)]
pub struct WriteRetries {
    first: Duration,
    max: Duration,
    failing: HashMap<ObjectKey, Failing>,
    in_flight: usize,
}

impl Default for WriteRetries {
    fn default() -> Self {
        Self::new(FIRST_RETRY, MAX_RETRY)
    }
}

impl WriteRetries {
    /// Backoff from `first`, doubling up to `max`.
    #[must_use]
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failing: HashMap::new(),
            in_flight: 0,
        }
    }

    /// Whether `key` may start a write at `now`, the writer having `slots` in all. Fresh work
    /// always may; a retry only after its backoff and while retries hold fewer than half of
    /// the slots (at least one).
    pub fn admit(&mut self, key: &ObjectKey, now: Instant, slots: usize) -> Admit {
        let Some(f) = self.failing.get_mut(key) else {
            return Admit::Go;
        };
        if f.until > now {
            return Admit::Backoff(f.until);
        }
        if self.in_flight >= (slots / 2).max(1) {
            return Admit::NoRoom;
        }
        f.in_flight = true;
        self.in_flight += 1;
        Admit::Go
    }

    /// The object's write went through, or it needs none any more: its backoff is over.
    /// True when it had been failing.
    pub fn settled(&mut self, key: &ObjectKey) -> bool {
        match self.failing.remove(key) {
            Some(f) => {
                if f.in_flight {
                    self.in_flight -= 1;
                }
                true
            }
            None => false,
        }
    }

    /// The object's write failed at `now`; `jitter` in `[0, 1)` spreads the retries of
    /// objects that failed together.
    pub fn failed(&mut self, key: &ObjectKey, now: Instant, jitter: f64) -> Failure {
        let mut first = false;
        let f = self.failing.entry(key.clone()).or_insert_with(|| {
            first = true;
            Failing {
                backoff: Backoff::new(self.first, self.max),
                until: now,
                in_flight: false,
            }
        });
        if f.in_flight {
            f.in_flight = false;
            self.in_flight -= 1;
        }
        let retry_in = f.backoff.next_jittered(jitter);
        f.until = now + retry_in;
        Failure { retry_in, first }
    }

    /// Objects waiting to retry a failed write.
    #[must_use]
    pub fn backing_off(&self) -> usize {
        self.failing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> ObjectKey {
        ObjectKey::new("default", n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_object_waits_longer_after_each_failure_up_to_the_cap() {
        let mut r = WriteRetries::new(Duration::from_secs(1), Duration::from_secs(8));
        let k = key("bad");
        let mut waits = Vec::new();
        for n in 0..6 {
            let now = Instant::now();
            assert_eq!(r.admit(&k, now, 20), Admit::Go, "attempt {n}");
            let f = r.failed(&k, now, 0.999_999);
            assert_eq!(f.first, n == 0);
            waits.push(f.retry_in.as_secs_f64().round());
            // Not a moment before its backoff ends.
            assert_eq!(r.admit(&k, now, 20), Admit::Backoff(now + f.retry_in));
            tokio::time::advance(f.retry_in - Duration::from_millis(1)).await;
            assert!(matches!(r.admit(&k, Instant::now(), 20), Admit::Backoff(_)));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(waits, [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]);
        // It went through: the next failure starts from the first wait again.
        assert!(r.settled(&k));
        assert_eq!(r.backing_off(), 0);
        let f = r.failed(&k, Instant::now(), 0.0);
        assert!(f.first);
        assert_eq!(
            f.retry_in,
            Duration::from_millis(500),
            "jitter: half of the step"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_never_hold_more_than_half_of_the_slots_and_fresh_work_always_goes() {
        let mut r = WriteRetries::default();
        let t0 = Instant::now();
        let bad: Vec<ObjectKey> = (0..20).map(|i| key(&format!("bad-{i:02}"))).collect();
        for k in &bad {
            assert_eq!(r.admit(k, t0, 20), Admit::Go);
            r.failed(k, t0, 0.5);
        }
        assert_eq!(r.backing_off(), 20);
        tokio::time::advance(MAX_RETRY).await;
        let now = Instant::now();
        let admitted: Vec<Admit> = bad.iter().map(|k| r.admit(k, now, 20)).collect();
        assert_eq!(admitted.iter().filter(|a| **a == Admit::Go).count(), 10);
        assert_eq!(admitted.iter().filter(|a| **a == Admit::NoRoom).count(), 10);
        // New pods' objects are never held back by the failing ones.
        assert_eq!(r.admit(&key("good"), now, 20), Admit::Go);
        // A retry that fails again frees its slot for the next one.
        r.failed(&bad[0], now, 0.5);
        assert_eq!(r.admit(&bad[10], now, 20), Admit::Go);
        assert_eq!(r.admit(&bad[11], now, 20), Admit::NoRoom);
        // With a single slot, one retry may still go.
        let mut one = WriteRetries::default();
        one.failed(&bad[0], t0, 0.5);
        assert_eq!(one.admit(&bad[0], now, 1), Admit::Go);
    }
}
