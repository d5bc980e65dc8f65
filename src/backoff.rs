//! Exponential backoff: the one helper for "wait longer after each failure in a row, up to a
//! cap", so every retry in the product grows the same way and is tested once.
//!
//! [`exponential`] is the delay of the n-th attempt as a pure function and [`jittered`] spreads
//! it; [`Backoff`] keeps the count for loops that retry until something works, with optional
//! jitter (the caller supplies the randomness, so tests stay deterministic under a paused
//! clock). Jitter only ever shortens a step (to between half and all of it), so a delay never
//! exceeds its cap.

use std::time::Duration;

/// The delay before attempt `attempt` (1 is the first retry): `first`, doubled per further
/// attempt, at most `max`. Never overflows, whatever `attempt` is.
#[must_use]
pub fn exponential(first: Duration, max: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max)
}

/// `step` jittered into `[half, all]` of itself by `jitter` in `[0, 1)` (clamped), so many
/// clients that failed together do not retry in lockstep.
#[must_use]
pub fn jittered(step: Duration, jitter: f64) -> Duration {
    step.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// Failures in a row and the delays they earn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starting at `first`, doubling up to `max`.
    #[must_use]
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            failures: 0,
        }
    }

    /// Counts a failure and returns the delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        exponential(self.first, self.max, self.failures)
    }

    /// As [`Self::next_delay`], [`jittered`] by `jitter` in `[0, 1)`.
    pub fn next_jittered(&mut self, jitter: f64) -> Duration {
        jittered(self.next_delay(), jitter)
    }

    /// It worked: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn delays_double_from_the_first_up_to_the_cap_and_never_overflow() {
        let max = Duration::from_secs(30);
        let d: Vec<u64> = (1..=7).map(|n| exponential(S, max, n).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(exponential(S, max, 0), S);
        assert_eq!(
            exponential(Duration::MAX, Duration::MAX, u32::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn a_backoff_counts_failures_in_a_row_until_reset() {
        let mut b = Backoff::new(S, 4 * S);
        let d: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        assert_eq!(d, [S, 2 * S, 4 * S, 4 * S]);
        b.reset();
        assert_eq!(b.next_delay(), S);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_step() {
        let mut b = Backoff::new(S, 4 * S);
        assert_eq!(b.next_jittered(0.0), S / 2);
        assert_eq!(b.next_jittered(0.5), Duration::from_millis(1500));
        assert_eq!(
            b.next_jittered(7.0),
            4 * S,
            "out-of-range jitter is clamped"
        );
    }
}
