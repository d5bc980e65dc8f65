//! The per-subscription throttling gate: after ARM answers 429 with `Retry-After`, no request
//! for that subscription leaves this process until the window has passed, whoever the caller.
//!
//! ARM throttles per subscription (and per client identity), so one assigner ignoring another's
//! 429 would only lengthen the window for everyone. Every [`super::arm::ArmClient`] clone shares
//! one gate; separate clients can share one explicitly, and MIC's write budget
//! (`actors::mic::budget`) waits on its ARM client's gate, so reads and writes hold each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// Shared "closed until" instants per subscription (lower-cased).
#[derive(Clone, Debug, Default)]
pub struct SubscriptionGate {
    closed_until: Arc<Mutex<HashMap<String, Instant>>>,
}

impl SubscriptionGate {
    /// An open gate.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// When the gate for `subscription` opens again, if it is closed now.
    #[must_use]
    pub fn closed_until(&self, subscription: &str) -> Option<Instant> {
        let map = self.closed_until.lock().expect("gate lock");
        map.get(&subscription.to_ascii_lowercase())
            .copied()
            .filter(|t| *t > Instant::now())
    }

    /// Closes the gate for `subscription` for `window` from now, at most [`MAX_RETRY_AFTER`]
    /// (never shortens a longer window).
    pub fn close_for(&self, subscription: &str, window: Duration) {
        let until = Instant::now() + window.min(MAX_RETRY_AFTER);
        let mut map = self.closed_until.lock().expect("gate lock");
        let slot = map
            .entry(subscription.to_ascii_lowercase())
            .or_insert(until);
        if *slot < until {
            *slot = until;
        }
    }

    /// Waits until the gate for `subscription` is open. Re-checks after waking, because another
    /// caller may have extended the window meanwhile.
    pub async fn wait_open(&self, subscription: &str) {
        while let Some(until) = self.closed_until(subscription) {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// Longest wait a `Retry-After` (or its millisecond variants) can impose: Azure's throttling
/// windows are seconds to minutes, and a larger number (a bug or a hostile proxy) must neither
/// stall callers for days nor overflow a deadline.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`), capped at
/// [`MAX_RETRY_AFTER`]. A date in the past means "now"; anything else unparseable is `None`.
#[must_use]
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let date = httpdate::parse_http_date(value).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_retry_after_values_are_capped_instead_of_overflowing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        let gate = SubscriptionGate::new();
        let start = Instant::now();
        gate.close_for("s", Duration::MAX);
        gate.wait_open("s").await;
        assert_eq!(Instant::now() - start, MAX_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn every_caller_waits_out_the_window_of_its_subscription_only() {
        let gate = SubscriptionGate::new();
        let start = Instant::now();
        gate.close_for("SUB-A", Duration::from_secs(10));
        // Another subscription is not held back.
        gate.wait_open("sub-b").await;
        assert_eq!(Instant::now(), start);
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move {
            g2.wait_open("sub-a").await;
            Instant::now()
        });
        // A later 429 extends the window for the waiter too.
        tokio::time::advance(Duration::from_secs(5)).await;
        gate.close_for("sub-a", Duration::from_secs(10));
        let opened = waiter.await.unwrap();
        assert_eq!(opened - start, Duration::from_secs(15));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_window_never_shortens_a_longer_one() {
        let gate = SubscriptionGate::new();
        let start = Instant::now();
        gate.close_for("s", Duration::from_secs(20));
        gate.close_for("s", Duration::from_secs(1));
        gate.wait_open("s").await;
        assert_eq!(Instant::now() - start, Duration::from_secs(20));
    }
}
