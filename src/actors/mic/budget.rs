//! The per-subscription ARM write budget shared by every assigner of that subscription.
//!
//! A token bucket (`--arm-writes-per-minute`, full at start) per subscription, behind the
//! Azure layer's Retry-After gate ([`SubscriptionGate`], the one owner of "closed until" per
//! subscription): any 429's `Retry-After` closes it, so one throttled assigner holds back all of
//! them. MIC builds it [`WriteBudget::sharing`] the ARM client's gate, so a 429 the client saw
//! (on a read too) holds back the next write, and one an assigner reports holds the client.

use crate::cloud::throttle::SubscriptionGate;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Write budgets by subscription.
#[derive(Debug)]
pub struct WriteBudget {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
    gate: SubscriptionGate,
}

impl WriteBudget {
    /// A budget of `per_minute` writes per subscription (0 means unlimited), with a gate of
    /// its own.
    #[must_use]
    pub fn new(per_minute: u32) -> Arc<Self> {
        Self::sharing(per_minute, SubscriptionGate::new())
    }

    /// As [`Self::new`], behind `gate`: the ARM client's, so a `Retry-After` the client saw
    /// holds back writes here and one reported here holds back the client's reads.
    #[must_use]
    pub fn sharing(per_minute: u32, gate: SubscriptionGate) -> Arc<Self> {
        Arc::new(Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
            gate,
        })
    }

    /// Waits until a write to `subscription` is allowed and takes it.
    pub async fn acquire(&self, subscription: &str) {
        loop {
            self.gate.wait_open(subscription).await;
            let wait = self.try_take(subscription, Instant::now());
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Every caller waits until `until` before writing to `subscription` (a 429's Retry-After,
    /// at most [`crate::cloud::throttle::MAX_RETRY_AFTER`] from now).
    pub fn block_until(&self, subscription: &str, until: Instant) {
        self.gate.close_for(
            subscription,
            until.saturating_duration_since(Instant::now()),
        );
    }

    fn full(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(self.per_minute),
            refilled: now,
        }
    }

    /// None when a token was taken, else how long to wait.
    fn try_take(&self, subscription: &str, now: Instant) -> Option<Duration> {
        let mut b = self.buckets.lock().expect("budget lock");
        let bucket = b
            .entry(subscription.to_string())
            .or_insert_with(|| self.full(now));
        if self.per_minute == 0 {
            return None;
        }
        let rate = f64::from(self.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(self.per_minute));
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn writes_beyond_the_budget_wait_for_a_refill() {
        let b = WriteBudget::new(2);
        let t0 = Instant::now();
        b.acquire("s").await;
        b.acquire("s").await;
        assert_eq!(Instant::now(), t0);
        b.acquire("s").await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(30));
        // another subscription has its own budget
        let t1 = Instant::now();
        b.acquire("other").await;
        assert_eq!(Instant::now(), t1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_holds_back_every_writer_of_the_subscription() {
        let b = WriteBudget::new(0);
        let t0 = Instant::now();
        b.block_until("s", t0 + Duration::from_secs(7));
        b.acquire("s").await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(7));
        b.acquire("s").await;
        assert_eq!(Instant::now() - t0, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_is_the_azure_layers_gate_capped_and_without_case() {
        let b = WriteBudget::new(0);
        let t0 = Instant::now();
        b.block_until("SUB", t0 + Duration::from_secs(3 * 24 * 3600));
        b.acquire("sub").await;
        assert_eq!(
            Instant::now() - t0,
            crate::cloud::throttle::MAX_RETRY_AFTER,
            "an absurd Retry-After is capped, and ARM's subscription ids compare without case"
        );
    }
}
