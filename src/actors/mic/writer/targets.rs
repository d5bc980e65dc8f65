//! The writer's desired objects of user-assigned identities, indexed by the host and identity
//! they put there.
//!
//! A host's report marks that host's objects for planning, an ARM refusal on a host finds the
//! objects whose Events it calls for, and the objects that would be the first record of an
//! identity on a host are found per (host, identity) pair: none of it walks every object. At
//! 100 000 objects, walking them all once per host report (50 reports per matcher pass) held
//! MIC's one actor thread for seconds at a time.

use crate::actors::mic::host::{HostId, IdentityId};
use crate::object_key::ObjectKey;
use std::collections::{BTreeSet, HashMap};

/// Desired object keys by host, then by identity.
#[derive(Debug, Default)]
pub struct ByTarget {
    hosts: HashMap<HostId, HashMap<IdentityId, BTreeSet<ObjectKey>>>,
}

impl ByTarget {
    /// Notes that the desired object `key` puts `id` on `host`.
    pub fn insert(&mut self, host: &HostId, id: &IdentityId, key: ObjectKey) {
        self.hosts
            .entry(host.clone())
            .or_default()
            .entry(id.clone())
            .or_default()
            .insert(key);
    }

    /// Forgets that `key` puts `id` on `host` (empty entries go with it).
    pub fn remove(&mut self, host: &HostId, id: &IdentityId, key: &ObjectKey) {
        let Some(ids) = self.hosts.get_mut(host) else {
            return;
        };
        if let Some(keys) = ids.get_mut(id) {
            keys.remove(key);
            if keys.is_empty() {
                ids.remove(id);
            }
        }
        if ids.is_empty() {
            self.hosts.remove(host);
        }
    }

    /// Every desired object on `host`.
    pub fn of_host<'a>(&'a self, host: &HostId) -> impl Iterator<Item = &'a ObjectKey> + 'a {
        self.hosts
            .get(host)
            .into_iter()
            .flat_map(|ids| ids.values().flatten())
    }

    /// The desired objects that put `id` on `host`, in key order.
    #[must_use]
    pub fn keys(&self, host: &HostId, id: &IdentityId) -> Option<&BTreeSet<ObjectKey>> {
        self.hosts.get(host).and_then(|ids| ids.get(id))
    }

    /// Each host with the identities its desired objects put on it.
    pub fn hosts(
        &self,
    ) -> impl Iterator<Item = (&HostId, &HashMap<IdentityId, BTreeSet<ObjectKey>>)> {
        self.hosts.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::mic::fixtures::{RG, SUB, rid};

    fn ss(name: &str) -> HostId {
        HostId::scale_set(SUB, RG, name)
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    #[test]
    fn keys_are_found_by_host_and_by_host_and_identity_and_empty_entries_go() {
        let (id1, id2) = (IdentityId::new(&rid("id1")), IdentityId::new(&rid("id2")));
        let mut ix = ByTarget::default();
        ix.insert(&ss("ss0"), &id1, key("b"));
        ix.insert(&ss("ss0"), &id1, key("a"));
        ix.insert(&ss("ss0"), &id2, key("c"));
        ix.insert(&ss("ss1"), &id1, key("d"));
        let mut on0: Vec<_> = ix.of_host(&ss("ss0")).cloned().collect();
        on0.sort();
        assert_eq!(on0, vec![key("a"), key("b"), key("c")]);
        assert_eq!(
            ix.keys(&ss("ss0"), &id1)
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            vec![&key("a"), &key("b")],
            "in key order"
        );
        assert_eq!(ix.of_host(&ss("ss9")).count(), 0);

        ix.remove(&ss("ss0"), &id1, &key("a"));
        ix.remove(&ss("ss0"), &id1, &key("b"));
        assert!(
            ix.keys(&ss("ss0"), &id1).is_none(),
            "an emptied identity goes"
        );
        ix.remove(&ss("ss0"), &id2, &key("c"));
        ix.remove(&ss("ss0"), &id2, &key("never-there"));
        assert_eq!(
            ix.hosts().map(|(h, _)| h.clone()).collect::<Vec<_>>(),
            vec![ss("ss1")],
            "an emptied host goes"
        );
        // Removing what is not there changes nothing.
        ix.remove(&ss("ss7"), &id1, &key("d"));
        assert_eq!(ix.keys(&ss("ss1"), &id1).map(BTreeSet::len), Some(1));
    }
}
