//! What an AzureAssignedIdentity records of MIC's writes to ARM, and the index of those
//! records per host that makes MIC's additions write-ahead.
//!
//! An unmarked object of a user-assigned identity says "MIC put (or is putting) this identity
//! on this host": a restarted MIC adopts it ([`recorded_msi`]), so the identity goes once no
//! pod needs it. For that to hold whatever instant a leader dies at, a host's assigner adds an
//! identity only once the API server has stored such an object naming both
//! ([`RecordIndex`], sent as [`HostRecords`]): the record is written before the PATCH, never
//! after it.

use crate::actors::mic::host::{HostId, IdentityId};
use crate::crd::{
    AzureAssignedIdentity, FEDERATED_ANNOTATION, IDENTITY_OWNER_ANNOTATION, IdentityType,
};
use crate::object_key::ObjectKey;
use actix::prelude::*;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where an object says its identity went.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordedOn {
    /// The host named by its `aadpodidentity.k8s.io/identity-host` annotation.
    Host(HostId),
    /// The host of this node (objects written before the annotation existed, e.g. by the
    /// original): found only while the node exists.
    Node(String),
}

/// The identity an object says MIC put (or was putting) on a host, and where: a user-assigned
/// identity not marked external. A `Created` object counts too, since it is written before its
/// PATCH. A federated identity's object records no write at all (it is Assigned without one),
/// so it never makes MIC adopt, and later remove, an identity someone else put on the host.
#[must_use]
pub fn recorded_msi(aai: &AzureAssignedIdentity) -> Option<(RecordedOn, IdentityId)> {
    if aai.identity_is_external() {
        return None;
    }
    let i = aai.spec.azure_identity_ref.as_ref()?;
    if i.is_federated() || i.spec.type_ != IdentityType::UserAssignedMsi {
        return None;
    }
    if i.spec.resource_id.is_empty() {
        return None;
    }
    let on = match aai.identity_host().and_then(HostId::from_resource_id) {
        Some(h) => RecordedOn::Host(h),
        None => RecordedOn::Node(aai.spec.node_name.clone()),
    };
    Some((on, IdentityId::new(&i.spec.resource_id)))
}

/// The host and identity an object is a write-ahead record of: [`recorded_msi`] with the host
/// annotation (the writer puts it on every object it writes).
fn record_of(aai: &AzureAssignedIdentity) -> Option<(HostId, IdentityId)> {
    match recorded_msi(aai)? {
        (RecordedOn::Host(h), id) => Some((h, id)),
        (RecordedOn::Node(_), _) => None,
    }
}

/// True when two copies of an object are the same record (or both none) as far as
/// [`record_of`] can tell, compared as written: a status write leaves all of it alone, so
/// most copies need no parse of the host annotation at all.
fn same_record_inputs(a: &AzureAssignedIdentity, b: &AzureAssignedIdentity) -> bool {
    fn owner(o: &AzureAssignedIdentity) -> Option<&String> {
        o.annotations().get(IDENTITY_OWNER_ANNOTATION)
    }
    fn identity(o: &AzureAssignedIdentity) -> Option<(&IdentityType, &str, Option<&String>)> {
        o.spec.azure_identity_ref.as_deref().map(|i| {
            (
                &i.spec.type_,
                i.spec.resource_id.as_str(),
                i.annotations().get(FEDERATED_ANNOTATION),
            )
        })
    }
    a.identity_host() == b.identity_host() && owner(a) == owner(b) && identity(a) == identity(b)
}

/// True when the object is a write-ahead record (see [`RecordIndex`]).
#[must_use]
pub fn is_record(aai: &AzureAssignedIdentity) -> bool {
    record_of(aai).is_some()
}

/// Identities with a stored record, for each host whose set changed.
#[derive(Message, Debug, Clone, Default, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct HostRecords(pub BTreeMap<HostId, BTreeSet<IdentityId>>);

/// The stored records per host and identity (the objects' keys), kept as objects come and go,
/// and the hosts whose set of recorded identities changed since the last
/// [`RecordIndex::take_changes`].
#[derive(Debug, Default)]
pub struct RecordIndex {
    keys: HashMap<HostId, BTreeMap<IdentityId, BTreeSet<ObjectKey>>>,
    changed: BTreeSet<HostId>,
}

impl RecordIndex {
    /// Folds in that the stored copy of object `key` went from `old` to `new`.
    pub fn replace(
        &mut self,
        key: &ObjectKey,
        old: Option<&AzureAssignedIdentity>,
        new: Option<&AzureAssignedIdentity>,
    ) {
        if let (Some(o), Some(n)) = (old, new)
            && same_record_inputs(o, n)
        {
            debug_assert_eq!(record_of(o), record_of(n));
            return;
        }
        let (old, new) = (old.and_then(record_of), new.and_then(record_of));
        if old == new {
            return;
        }
        if let Some((h, id)) = old
            && let Some(ids) = self.keys.get_mut(&h)
        {
            if let Some(keys) = ids.get_mut(&id) {
                keys.remove(key);
                if keys.is_empty() {
                    ids.remove(&id);
                    self.changed.insert(h.clone());
                }
            }
            if ids.is_empty() {
                self.keys.remove(&h);
            }
        }
        if let Some((h, id)) = new {
            let keys = self
                .keys
                .entry(h.clone())
                .or_default()
                .entry(id)
                .or_default();
            if keys.insert(key.clone()) && keys.len() == 1 {
                self.changed.insert(h);
            }
        }
    }

    /// Starts again from `all`, the objects that exist (every host it touches changes).
    pub fn rebuild<'a>(
        &mut self,
        all: impl IntoIterator<Item = (&'a ObjectKey, &'a AzureAssignedIdentity)>,
    ) {
        self.changed.extend(self.keys.keys().cloned());
        self.keys.clear();
        for (k, o) in all {
            self.replace(k, None, Some(o));
        }
    }

    /// Identities recorded on `host`.
    #[must_use]
    pub fn on(&self, host: &HostId) -> BTreeSet<IdentityId> {
        self.keys
            .get(host)
            .map(|ids| ids.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The identities recorded on `host`, each with the objects recording it.
    #[must_use]
    pub fn on_host(&self, host: &HostId) -> Option<&BTreeMap<IdentityId, BTreeSet<ObjectKey>>> {
        self.keys.get(host)
    }

    /// The objects recording `id` on `host`.
    #[must_use]
    pub fn keys(&self, host: &HostId, id: &IdentityId) -> Option<&BTreeSet<ObjectKey>> {
        self.keys.get(host).and_then(|ids| ids.get(id))
    }

    /// How many stored objects record `id` on `host`.
    #[must_use]
    pub fn count(&self, host: &HostId, id: &IdentityId) -> usize {
        self.keys(host, id).map_or(0, BTreeSet::len)
    }

    /// The recorded identities of every host that changed since the last call.
    pub fn take_changes(&mut self) -> Option<HostRecords> {
        if self.changed.is_empty() {
            return None;
        }
        let hosts = std::mem::take(&mut self.changed);
        Some(HostRecords(
            hosts
                .into_iter()
                .map(|h| {
                    let ids = self.on(&h);
                    (h, ids)
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::mic::fixtures::*;
    use crate::crd::{
        AzureAssignedIdentitySpec, IDENTITY_HOST_ANNOTATION, IDENTITY_OWNER_ANNOTATION,
    };

    fn object(name: &str, identity_name: &str, host: Option<&HostId>) -> AzureAssignedIdentity {
        let mut o = AzureAssignedIdentity::new(
            name,
            AzureAssignedIdentitySpec {
                azure_identity_ref: Some(Box::new(identity(identity_name).build())),
                azure_binding_ref: None,
                pod: name.into(),
                pod_namespace: "default".into(),
                node_name: "ss0-0".into(),
                replicas: None,
            },
        );
        if let Some(h) = host {
            o.metadata.annotations =
                Some([(IDENTITY_HOST_ANNOTATION.to_string(), h.to_string())].into());
        }
        o
    }

    fn ss(name: &str) -> HostId {
        HostId::scale_set(SUB, RG, name)
    }

    #[test]
    fn an_object_records_its_annotated_host_or_else_its_node() {
        let on = |o: &AzureAssignedIdentity| recorded_msi(o).map(|(on, _)| on);
        assert_eq!(
            on(&object("p", "id1", Some(&ss("ss0")))),
            Some(RecordedOn::Host(ss("ss0")))
        );
        assert_eq!(
            on(&object("p", "id1", None)),
            Some(RecordedOn::Node("ss0-0".into()))
        );
        let mut external = object("p", "id1", Some(&ss("ss0")));
        external
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(IDENTITY_OWNER_ANNOTATION.into(), "external".into());
        assert_eq!(on(&external), None, "not MIC's");
    }

    #[test]
    fn the_index_reports_a_host_when_its_first_record_comes_or_its_last_goes() {
        let mut ix = RecordIndex::default();
        let (a, b) = (
            object("a", "id1", Some(&ss("ss0"))),
            object("b", "id1", Some(&ss("ss0"))),
        );
        let (ka, kb) = (
            ObjectKey::new("default", "a"),
            ObjectKey::new("default", "b"),
        );
        ix.replace(&ka, None, Some(&a));
        let HostRecords(first) = ix.take_changes().unwrap();
        assert_eq!(first[&ss("ss0")].len(), 1);
        ix.replace(&kb, None, Some(&b));
        assert_eq!(ix.take_changes(), None, "a second record changes nothing");
        assert_eq!(ix.count(&ss("ss0"), &IdentityId::new(&rid("id1"))), 2);
        ix.replace(&ka, Some(&a), None);
        assert_eq!(ix.take_changes(), None);
        ix.replace(&kb, Some(&b), None);
        let HostRecords(last) = ix.take_changes().unwrap();
        assert!(last[&ss("ss0")].is_empty());
        // Objects without the annotation are adopted through their node but are no record.
        ix.replace(
            &ObjectKey::new("default", "c"),
            None,
            Some(&object("c", "id1", None)),
        );
        assert_eq!(ix.take_changes(), None);
    }
}
