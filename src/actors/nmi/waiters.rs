//! Bounds on parked requests: a request that has to wait (for its pod to be announced, or for
//! its identity to be assigned) holds a [`WaitPermit`] while it waits. At most
//! `--max-waiters-per-pod` requests wait for one pod (or one unknown address) and at most
//! `--max-waiters` on the whole node; a request over either bound is answered at once (429 or
//! 503) instead of parking, so a flood from one pod cannot hold memory or starve others.

use crate::object_key::ObjectKey;
use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What a parked request waits for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WaitKey {
    /// A known pod's identity (`namespace/name`).
    Pod(Arc<ObjectKey>),
    /// The pod behind an address the watch has not announced yet.
    Address(IpAddr),
}

/// Which bound refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// Too many requests already wait for this pod (or address).
    PerPod,
    /// Too many requests already wait on this node.
    Total,
}

/// Counts parked requests per key and in total.
#[derive(Debug)]
pub struct WaitGate {
    per_key_max: usize,
    total_max: usize,
    total: AtomicUsize,
    by_key: DashMap<WaitKey, usize>,
}

/// A parked request's place; released on drop.
#[derive(Debug)]
#[must_use = "the place is released when the permit is dropped"]
pub struct WaitPermit<'a> {
    gate: &'a WaitGate,
    key: WaitKey,
}

impl WaitGate {
    /// A gate letting `per_key_max` requests wait per key and `total_max` in all.
    #[must_use]
    pub fn new(per_key_max: usize, total_max: usize) -> Self {
        Self {
            per_key_max,
            total_max,
            total: AtomicUsize::new(0),
            by_key: DashMap::new(),
        }
    }

    /// Takes a place for a request waiting on `key`, or says which bound is reached.
    ///
    /// # Errors
    /// [`Full`] when a bound is reached (nothing is taken then).
    pub fn try_park(&self, key: WaitKey) -> Result<WaitPermit<'_>, Full> {
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.total_max).then_some(n + 1)
            })
            .map_err(|_| Full::Total)?;
        let mut slot = self.by_key.entry(key.clone()).or_insert(0);
        if *slot >= self.per_key_max {
            drop(slot);
            self.by_key.remove_if(&key, |_, n| *n == 0);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Full::PerPod);
        }
        *slot += 1;
        drop(slot);
        Ok(WaitPermit { gate: self, key })
    }

    /// Requests waiting now, in total.
    #[must_use]
    pub fn parked(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Keys with at least one waiting request (for tests: nothing is left behind).
    #[must_use]
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }
}

impl Drop for WaitPermit<'_> {
    fn drop(&mut self) {
        if let Some(mut n) = self.gate.by_key.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        self.gate.by_key.remove_if(&self.key, |_, n| *n == 0);
        self.gate.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(k: &str) -> WaitKey {
        WaitKey::Pod(Arc::new(ObjectKey::new("ns", k)))
    }

    #[test]
    fn one_pod_cannot_take_more_than_its_share_nor_the_node_more_than_the_total() {
        let gate = WaitGate::new(2, 3);
        let a1 = gate.try_park(pod("a")).unwrap();
        let _a2 = gate.try_park(pod("a")).unwrap();
        assert_eq!(gate.try_park(pod("a")).unwrap_err(), Full::PerPod);
        let _b1 = gate.try_park(pod("b")).unwrap();
        assert_eq!(gate.try_park(pod("c")).unwrap_err(), Full::Total);
        assert_eq!(gate.parked(), 3);
        drop(a1);
        let _c1 = gate.try_park(pod("c")).unwrap();
        assert_eq!(gate.parked(), 3);
    }

    #[test]
    fn released_places_leave_nothing_behind() {
        let gate = WaitGate::new(1, 10);
        for i in 0..100 {
            let ip: IpAddr = format!("127.0.1.{}", i % 250).parse().unwrap();
            let p = gate.try_park(WaitKey::Address(ip)).unwrap();
            assert!(gate.try_park(WaitKey::Address(ip)).is_err());
            drop(p);
        }
        assert_eq!((gate.parked(), gate.keys()), (0, 0));
    }
}
