//! Write requests the API server received, by object: what a test or load test reads to say
//! how many writes a controller spent per object, and the server's write throughput.
//!
//! Requests are counted as they arrive (creates, updates, patches and deletes, whether or not
//! they succeed or change anything), because each costs the API server a request whatever
//! its outcome; a real server's audit log counts the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// One object as the write log names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteTarget {
    /// The resource's plural (`pods`, `events`, `azureassignedidentities`).
    pub resource: String,
    /// Namespace (empty for cluster-scoped objects).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Counts of write requests by object, and in total.
#[derive(Debug, Default)]
pub struct WriteLog {
    by_object: Mutex<HashMap<WriteTarget, u32>>,
    total: AtomicU64,
}

impl WriteLog {
    /// Counts one write request to `resource` `namespace/name`.
    pub fn record(&self, resource: &str, namespace: &str, name: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let key = WriteTarget {
            resource: resource.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        *self
            .by_object
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default() += 1;
    }

    /// Write requests received so far, of every resource.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Write requests per object of `resource` (plural), keyed by (namespace, name).
    #[must_use]
    pub fn of(&self, resource: &str) -> BTreeMap<(String, String), u32> {
        self.by_object
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(k, _)| k.resource == resource)
            .map(|(k, n)| ((k.namespace.clone(), k.name.clone()), *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_counted_per_object_and_in_total() {
        let log = WriteLog::default();
        log.record("pods", "default", "a");
        log.record("pods", "default", "a");
        log.record("events", "default", "a.1");
        assert_eq!(log.total(), 3);
        assert_eq!(
            log.of("pods"),
            BTreeMap::from([(("default".into(), "a".into()), 2)])
        );
        assert_eq!(log.of("events").len(), 1);
        assert!(log.of("nodes").is_empty());
    }
}
