//! The metadata service's per-VM throttling of its managed-identity endpoint, as Azure documents
//! it, so a client that floods one node's metadata service is refused here as it would be there.
//!
//! What the documentation says (checked 2026-11; "Azure Instance Metadata Service", section
//! "Rate limiting", and "How to use managed identities for Azure resources on an Azure VM to
//! acquire an access token", sections "Error handling" and "Retry guidance"):
//! - requests to the Managed Identity category are limited to 20 per second and 5 concurrent,
//!   per VM (IMDS in general: 5 per second per VM); beyond that the service answers
//!   `429 Too Many Requests` while the throttle is in effect;
//! - clients should retry 404, 429 and 5xx with exponential backoff (a 5xx no sooner than one
//!   second later) and treat 410 as "updating, available within 70 s";
//! - error bodies are JSON with `error` and `error_description` (descriptions may change; no
//!   client should branch on them). The throttled answer's exact strings are not documented,
//!   and no `Retry-After` is documented for it, so none is sent here: a client must not rely on
//!   one.
//!
//! How the documentation's words are read here: "concurrent" counts requests the service is
//! still answering; "per second" is any sliding one-second window of requests it accepted
//! (refused ones do not count, so a client that backs off gets through once the window moves).
//! Each simulated node is one VM (a scale-set instance is a VM of its own), so each node's
//! listener has its own budget. Only the identity endpoint is limited (the general 5/s limit of
//! the other categories is not simulated).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The per-VM limits of the identity endpoint; a zero switches that limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImdsLimits {
    /// Requests answered at once (Azure: 5).
    pub concurrent: u32,
    /// Requests accepted in any one-second window (Azure: 20).
    pub per_second: u32,
}

impl ImdsLimits {
    /// Azure's documented limits for the Managed Identity category: 5 concurrent, 20 per second.
    pub const AZURE: Self = Self {
        concurrent: 5,
        per_second: 20,
    };

    /// No throttling at all (for tests that measure something else).
    pub const OFF: Self = Self {
        concurrent: 0,
        per_second: 0,
    };
}

impl Default for ImdsLimits {
    fn default() -> Self {
        Self::AZURE
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Already answering `concurrent` requests.
    Concurrency,
    /// `per_second` requests accepted within the last second.
    Rate,
}

/// What one node's metadata service has seen, for tests and load tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImdsLoad {
    /// Most identity requests in the service at once, counting each arrival with those still
    /// being answered (so a refused arrival counts too: this is what clients attempted).
    pub peak_concurrent: u32,
    /// Requests refused (429) because `concurrent` were being answered.
    pub refused_concurrency: u64,
    /// Requests refused (429) because `per_second` were accepted within the last second.
    pub refused_rate: u64,
    /// Requests accepted.
    pub accepted: u64,
}

const WINDOW: Duration = Duration::from_secs(1);

/// One VM's throttle state. Plain data with the clock passed in.
#[derive(Debug, Default)]
pub(crate) struct NodeThrottle {
    in_flight: u32,
    /// Acceptance times within the last window, oldest first.
    accepted_at: VecDeque<Instant>,
    load: ImdsLoad,
}

impl NodeThrottle {
    /// Admits a request arriving at `now` or says which limit refuses it. An admitted request
    /// must be [`Self::release`]d when answered.
    pub(crate) fn admit(&mut self, limits: ImdsLimits, now: Instant) -> Result<(), Refusal> {
        self.load.peak_concurrent = self.load.peak_concurrent.max(self.in_flight + 1);
        if limits.concurrent > 0 && self.in_flight >= limits.concurrent {
            self.load.refused_concurrency += 1;
            return Err(Refusal::Concurrency);
        }
        while self
            .accepted_at
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.accepted_at.pop_front();
        }
        if limits.per_second > 0 && self.accepted_at.len() >= limits.per_second as usize {
            self.load.refused_rate += 1;
            return Err(Refusal::Rate);
        }
        if limits.per_second > 0 {
            self.accepted_at.push_back(now);
        }
        self.in_flight += 1;
        self.load.accepted += 1;
        Ok(())
    }

    /// An admitted request has been answered (or its client went away).
    pub(crate) fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub(crate) fn load(&self) -> ImdsLoad {
        self.load
    }

    /// Zeroes what [`Self::load`] reports (requests in the service stay counted as such).
    pub(crate) fn reset_load(&mut self) {
        self.load = ImdsLoad::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sixth_concurrent_request_is_refused_until_one_is_answered() {
        let mut t = NodeThrottle::default();
        let now = Instant::now();
        for _ in 0..5 {
            t.admit(ImdsLimits::AZURE, now).unwrap();
        }
        assert_eq!(t.admit(ImdsLimits::AZURE, now), Err(Refusal::Concurrency));
        t.release();
        t.admit(ImdsLimits::AZURE, now).unwrap();
        assert_eq!(t.load().peak_concurrent, 6);
        assert_eq!(t.load().refused_concurrency, 1);
    }

    #[test]
    fn the_twenty_first_request_within_a_second_is_refused_and_the_window_slides() {
        let mut t = NodeThrottle::default();
        let start = Instant::now();
        for i in 0..20u32 {
            t.admit(
                ImdsLimits::AZURE,
                start + Duration::from_millis(u64::from(i) * 10),
            )
            .unwrap();
            t.release();
        }
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(t.admit(ImdsLimits::AZURE, at(500)), Err(Refusal::Rate));
        // Refusals do not count: one second after the first acceptance one place is free again.
        assert_eq!(t.admit(ImdsLimits::AZURE, at(999)), Err(Refusal::Rate));
        t.admit(ImdsLimits::AZURE, at(1000)).unwrap();
        assert_eq!(t.admit(ImdsLimits::AZURE, at(1005)), Err(Refusal::Rate));
        assert_eq!(t.load().refused_rate, 3);
        assert_eq!(t.load().accepted, 21);
    }

    #[test]
    fn zero_switches_a_limit_off() {
        let mut t = NodeThrottle::default();
        let now = Instant::now();
        for _ in 0..1000 {
            t.admit(ImdsLimits::OFF, now).unwrap();
        }
        let rate_only = ImdsLimits {
            concurrent: 0,
            per_second: 20,
        };
        let mut t = NodeThrottle::default();
        for _ in 0..20 {
            t.admit(rate_only, now).unwrap();
        }
        assert_eq!(t.admit(rate_only, now), Err(Refusal::Rate));
    }
}
