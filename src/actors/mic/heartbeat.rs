//! Proof that MIC's actor thread still runs, for the leader election that renews from a thread
//! of its own ([`super::leader_thread`]).
//!
//! Renewing from another thread keeps the lease through a long stretch of compute on the actor
//! thread, but it would also keep it for a MIC whose actor thread is wedged for good (a handler
//! that never returns): a leader that does no work and that no other replica may replace. A
//! task on the actor thread therefore beats this heartbeat every [`Heartbeat::period`]; the
//! elector stops renewing, and `/healthz` answers 500 (so the liveness probe restarts the pod),
//! once the last beat is older than the stall limit (`--actor-stall-limit`, far above any
//! stall seen in normal work).

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::warn;

/// When the actor thread last ran, shared with the election thread and the probe.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    last: Arc<Mutex<Instant>>,
    limit: Duration,
}

impl Heartbeat {
    /// A heartbeat beaten now, judged against `limit` (zero: never stalled).
    #[must_use]
    pub fn new(limit: Duration) -> Self {
        Self {
            last: Arc::new(Mutex::new(Instant::now())),
            limit,
        }
    }

    /// The stall limit (zero when the rule is off).
    #[must_use]
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// How often the actor thread beats: often enough that a beat is never mistaken for a
    /// stall, rarely enough to cost nothing.
    #[must_use]
    pub fn period(&self) -> Duration {
        (self.limit / 8).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Records that the actor thread runs now; returns how long it had not.
    pub fn beat(&self) -> Duration {
        let now = Instant::now();
        let mut last = self.last.lock().expect("heartbeat lock");
        let gap = now.saturating_duration_since(*last);
        *last = now;
        gap
    }

    /// How long since the last beat.
    #[must_use]
    pub fn age(&self) -> Duration {
        let last = *self.last.lock().expect("heartbeat lock");
        Instant::now().saturating_duration_since(last)
    }

    /// `Some(age)` when the actor thread has not beaten for longer than the limit.
    #[must_use]
    pub fn stalled(&self) -> Option<Duration> {
        let age = self.age();
        (!self.limit.is_zero() && age > self.limit).then_some(age)
    }

    /// Beats every [`Self::period`] for good; run it on the actor thread. A gap longer than
    /// `report_over` (a stall the old same-thread renewal would not have survived) is logged,
    /// so operators see how long the thread is busy.
    pub async fn run(self, report_over: Duration) {
        let mut tick = tokio::time::interval(self.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let gap = self.beat();
            if gap > report_over {
                warn!(
                    stalled = ?gap,
                    limit = ?self.limit,
                    "MIC's actor thread did not run for a while; the leader lease was renewed from its own thread"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_is_stalled_only_past_its_limit() {
        let hb = Heartbeat::new(Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(hb.stalled(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(hb.stalled(), Some(Duration::from_secs(61)));
        assert_eq!(hb.beat(), Duration::from_secs(61));
        assert_eq!(hb.stalled(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_limit_never_stalls() {
        let hb = Heartbeat::new(Duration::ZERO);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(hb.stalled(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_beating_task_keeps_a_heartbeat_fresh() {
        let hb = Heartbeat::new(Duration::from_secs(8));
        let task = tokio::spawn(hb.clone().run(Duration::from_secs(5)));
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            assert!(hb.age() <= hb.period(), "{:?}", hb.age());
        }
        task.abort();
    }
}
