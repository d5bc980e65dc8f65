//! An identity as NMI sees it for one pod, and the pure rule that picks which one a token
//! request gets.

use super::cache::CacheKey;
use super::source::{TokenRequest, TokenTarget};
use crate::crd::{AssignedState, AzureIdentity, AzureIdentitySpec, IdentityType};
use kube::ResourceExt;
use std::sync::Arc;

/// One identity bound to one pod (from an AzureAssignedIdentity, or in managed mode from a
/// binding and its identity).
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedIdentity {
    /// Name of the AzureIdentity.
    pub identity_name: String,
    /// Namespace of the AzureIdentity.
    pub identity_namespace: String,
    /// Namespace of the binding that matched.
    pub binding_namespace: String,
    /// Where the assignment stands (always `Assigned` in managed mode).
    pub state: AssignedState,
    /// The AzureIdentity's spec.
    pub spec: Arc<AzureIdentitySpec>,
    /// True when this identity may only serve pods of its own namespace.
    pub namespaced: bool,
    /// Key of this identity's tokens in the cache.
    pub cache_key: CacheKey,
    /// Client id, as written in the spec.
    pub client_id: Arc<str>,
}

impl ResolvedIdentity {
    /// Builds the record for `identity`, matched through a binding in `binding_namespace`.
    #[must_use]
    pub fn new(
        identity: &AzureIdentity,
        binding_namespace: &str,
        state: AssignedState,
        force_namespaced: bool,
    ) -> Self {
        let identity_namespace = identity.namespace().unwrap_or_default();
        let identity_name = identity.name_any();
        let spec = &identity.spec;
        let cache_key = match spec.type_ {
            IdentityType::UserAssignedMsi if !spec.client_id.is_empty() => {
                CacheKey::user_assigned(&spec.client_id)
            }
            IdentityType::UserAssignedMsi => CacheKey::user_assigned_by_resource(&spec.resource_id),
            // A service principal's token depends on the Secret the identity points at, so two
            // AzureIdentities never share tokens even with one client id; and on everything
            // else in its spec (tenant, Secret reference, adEndpoint, ...), so an edited
            // identity gets a key of its own and its old tokens are dropped, never served.
            _ => CacheKey::service_principal(
                &identity_namespace,
                &identity_name,
                &spec.client_id,
                spec_fingerprint(spec),
            ),
        };
        Self {
            namespaced: force_namespaced || identity.has_namespaced_annotation(),
            identity_name,
            identity_namespace,
            binding_namespace: binding_namespace.to_string(),
            state,
            client_id: spec.client_id.as_str().into(),
            spec: Arc::new(spec.clone()),
            cache_key,
        }
    }

    /// True when this identity may serve a pod of `pod_namespace`.
    #[must_use]
    pub fn serves_namespace(&self, pod_namespace: &str) -> bool {
        !self.namespaced
            || (self.identity_namespace == pod_namespace && self.binding_namespace == pod_namespace)
    }

    /// The upstream request for this identity's token for `resource`.
    #[must_use]
    pub fn token_request(&self, resource: &str) -> TokenRequest {
        let target = match self.spec.type_ {
            IdentityType::UserAssignedMsi => TokenTarget::UserAssigned {
                client_id: self.spec.client_id.clone(),
                resource_id: self.spec.resource_id.clone(),
            },
            _ => TokenTarget::ServicePrincipal {
                identity: Arc::clone(&self.spec),
                identity_namespace: self.identity_namespace.clone(),
                namespaced: self.namespaced,
            },
        };
        TokenRequest {
            target,
            resource: resource.to_string(),
        }
    }
}

/// A hash of everything in a spec (stable within the process, which is all a cache key needs).
fn spec_fingerprint(spec: &AzureIdentitySpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(spec).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Which identity a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted<'a> {
    /// None named: the first assigned identity by (namespace, name) is chosen. The original
    /// picked an arbitrary one; this choice is deterministic and documented.
    Any,
    /// `client_id` (case-insensitive).
    ClientId(&'a str),
    /// `msi_res_id` / `mi_res_id` (case-insensitive).
    ResourceId(&'a str),
    /// `object_id`: matched against the `oid` claim of the identity's token.
    ObjectId(&'a str),
}

impl Wanted<'_> {
    /// True when `id` is what the request names (always for `Any` and `ObjectId`, whose match is
    /// decided on the token).
    #[must_use]
    pub fn names(&self, id: &ResolvedIdentity) -> bool {
        match self {
            Self::Any | Self::ObjectId(_) => true,
            Self::ClientId(c) => id.spec.client_id.eq_ignore_ascii_case(c),
            Self::ResourceId(r) => id.spec.resource_id.eq_ignore_ascii_case(r),
        }
    }
}

/// The identities, in order, that may answer a request from a pod of `pod_namespace`: named by
/// the request, allowed for the namespace, and `Assigned`. `assignments` must be sorted by
/// (identity namespace, identity name).
pub fn candidates<'a>(
    assignments: &'a [Arc<ResolvedIdentity>],
    pod_namespace: &'a str,
    wanted: Wanted<'a>,
) -> impl Iterator<Item = &'a Arc<ResolvedIdentity>> + 'a {
    assignments.iter().filter(move |id| {
        id.state == AssignedState::Assigned
            && id.serves_namespace(pod_namespace)
            && wanted.names(id)
    })
}

/// Sort order of a pod's identities: (identity namespace, identity name).
pub fn sort_identities(ids: &mut [Arc<ResolvedIdentity>]) {
    ids.sort_by(|a, b| {
        (a.identity_namespace.as_str(), a.identity_name.as_str())
            .cmp(&(b.identity_namespace.as_str(), b.identity_name.as_str()))
    });
}

#[cfg(test)]
pub(crate) mod fixtures {
    use crate::crd::{AzureIdentity, AzureIdentitySpec, BEHAVIOR_ANNOTATION, IdentityType};

    pub fn identity(ns: &str, name: &str, client_id: &str) -> AzureIdentity {
        let mut id = AzureIdentity::new(
            name,
            AzureIdentitySpec {
                type_: IdentityType::UserAssignedMsi,
                client_id: client_id.into(),
                resource_id: format!(
                    "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
                ),
                ..AzureIdentitySpec::default()
            },
        );
        id.metadata.namespace = Some(ns.into());
        id
    }

    pub fn namespaced(mut id: AzureIdentity) -> AzureIdentity {
        id.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(BEHAVIOR_ANNOTATION.into(), "namespaced".into());
        id
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn resolved(ns: &str, name: &str, cid: &str, state: AssignedState) -> Arc<ResolvedIdentity> {
        Arc::new(ResolvedIdentity::new(
            &identity(ns, name, cid),
            ns,
            state,
            false,
        ))
    }

    #[test]
    fn with_nothing_named_the_first_assigned_identity_by_name_answers() {
        let mut ids = vec![
            resolved("ns", "zeta", "c-z", AssignedState::Assigned),
            resolved("ns", "alpha", "c-a", AssignedState::Created),
            resolved("ns", "beta", "c-b", AssignedState::Assigned),
        ];
        sort_identities(&mut ids);
        let first = candidates(&ids, "ns", Wanted::Any).next().unwrap();
        assert_eq!(first.identity_name, "beta");
    }

    #[test]
    fn client_and_resource_ids_match_case_insensitively() {
        let ids = vec![
            resolved("ns", "a", "AAAA", AssignedState::Assigned),
            resolved("ns", "b", "bbbb", AssignedState::Assigned),
        ];
        let c: Vec<_> = candidates(&ids, "ns", Wanted::ClientId("BBBB")).collect();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].identity_name, "b");
        let rid = ids[0].spec.resource_id.to_uppercase();
        let c: Vec<_> = candidates(&ids, "ns", Wanted::ResourceId(&rid)).collect();
        assert_eq!(c[0].identity_name, "a");
        assert_eq!(candidates(&ids, "ns", Wanted::ClientId("nope")).count(), 0);
    }

    #[test]
    fn a_namespaced_identity_serves_only_its_own_namespace() {
        let id = Arc::new(ResolvedIdentity::new(
            &namespaced(identity("team-a", "x", "c")),
            "team-a",
            AssignedState::Assigned,
            false,
        ));
        assert!(id.serves_namespace("team-a"));
        assert!(!id.serves_namespace("team-b"));
        let forced = ResolvedIdentity::new(
            &identity("team-a", "x", "c"),
            "team-b",
            AssignedState::Assigned,
            true,
        );
        assert!(!forced.serves_namespace("team-b"));
        let open = ResolvedIdentity::new(
            &identity("team-a", "x", "c"),
            "team-b",
            AssignedState::Assigned,
            false,
        );
        assert!(open.serves_namespace("team-b"));
    }

    #[test]
    fn service_principals_never_share_cache_keys_across_identities() {
        let mut a = identity("ns", "a", "same");
        a.spec.type_ = IdentityType::ServicePrincipal;
        let mut b = identity("ns", "b", "same");
        b.spec.type_ = IdentityType::ServicePrincipal;
        let ra = ResolvedIdentity::new(&a, "ns", AssignedState::Assigned, false);
        let rb = ResolvedIdentity::new(&b, "ns", AssignedState::Assigned, false);
        assert_ne!(ra.cache_key, rb.cache_key);
        assert!(matches!(
            ra.token_request("r").target,
            TokenTarget::ServicePrincipal { .. }
        ));
        let m1 = ResolvedIdentity::new(
            &identity("ns", "m1", "CID"),
            "ns",
            AssignedState::Assigned,
            false,
        );
        let m2 = ResolvedIdentity::new(
            &identity("other", "m2", "cid"),
            "other",
            AssignedState::Assigned,
            false,
        );
        assert_eq!(m1.cache_key, m2.cache_key);
    }
}
