//! The token broker: the per-request flow from a caller to a token or a precise error.
//!
//! caller IP → pod (waiting briefly for a pod the watch has not announced yet; refused when the
//! address is ambiguous) → exception or MIC? then the node's own token → the pod's identities
//! (waiting, event-driven, for the one asked for to become `Assigned`) → authorization
//! (namespace rules, named identity) → token cache. Authorization always happens before the
//! cache is consulted, and every wait holds a place in a bounded [`WaitGate`].
//!
//! A federated identity's token is the calling pod's service-account token exchanged at Azure
//! AD, so it is cached per subject: the slot is (resource, the pod's service account), and a
//! pod of another service account bound to the same identity never gets a token Azure AD
//! issued for a subject its own federated credentials may not name. With
//! `--enable-federation`, a pod that opted in to workload identity also has the identity its
//! service account names ([`ServiceAccountIndex`]), after those bound to it.

use super::assignments::AssignmentIndex;
use super::cache::{CacheKey, CachedToken, FetchError, Lookup, TokenCache};
use super::exceptions::ExceptionIndex;
use super::identity::{ResolvedIdentity, Wanted, candidates};
use super::managed::ManagedCatalog;
use super::metrics::{NmiMetrics, Rejection};
use super::pods::{IpLookup, PodIndex, PodInfo};
use super::service_accounts::ServiceAccountIndex;
use super::source::{FederatedPod, SourceError, TokenRequest, TokenTarget};
use super::waiters::{Full, WaitGate, WaitKey, WaitPermit};
use crate::crd::AssignedState;
use crate::object_key::ObjectKey;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest any request waits, whatever the flags say (durations are capped before arithmetic,
/// so no setting can overflow a deadline).
pub const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Where a pod's identities come from.
pub enum IdentityFeed {
    /// `--operation-mode standard`: AzureAssignedIdentity objects written by MIC.
    Standard(Arc<AssignmentIndex>),
    /// `--operation-mode managed`: bindings and identities read directly.
    Managed(Arc<ManagedCatalog>),
}

/// The broker's knobs.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    /// This node's name (for messages).
    pub node: String,
    /// Namespace of MIC, whose own pods get the node's token (`--MICNamespace`).
    pub mic_namespace: String,
    /// Service account of MIC's pods in that namespace (`--mic-service-account`); empty means
    /// MIC is recognised only through an AzurePodIdentityException (the chart installs one).
    pub mic_service_account: String,
    /// At most this many requests wait for one pod or address (`--max-waiters-per-pod`).
    pub max_waiters_per_pod: usize,
    /// At most this many requests wait on the node (`--max-waiters`).
    pub max_waiters: usize,
    /// How long a request waits for its identity to become `Assigned`
    /// (`--retry-attempts-for-created` × `--find-identity-retry-interval`).
    pub assignment_wait: Duration,
    /// Extra wait when a matching identity exists but is still `Created` at that deadline
    /// (`--retry-attempts-for-assigned` × `--find-identity-retry-interval`).
    pub assigned_grace: Duration,
    /// How long a request waits for a pod the watch has not announced yet.
    pub pod_arrival_timeout: Duration,
}

/// Why a token request failed. Each variant maps to the original's status code.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// No Pending/Running pod of this node has the caller's IP, even after the arrival wait.
    #[error("no pod found with IP {ip} on node {node}")]
    PodNotFound {
        /// Caller IP.
        ip: IpAddr,
        /// This node.
        node: String,
    },
    /// The pod has no (matching, assigned) identity within the wait.
    #[error(
        "getting assigned identities for pod {pod} in ASSIGNED state failed after {waited:?}: {detail}"
    )]
    IdentityNotFound {
        /// `namespace/name`.
        pod: String,
        /// How long the request waited.
        waited: Duration,
        /// What was missing.
        detail: String,
    },
    /// Several pods hold the caller's address and not exactly one of them is live.
    #[error("failed to match pod IP {ip} with {} pods: {}", pods.len(), pods.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    AmbiguousIp {
        /// Caller IP.
        ip: IpAddr,
        /// `namespace/name` of every pod holding it.
        pods: Arc<[Arc<ObjectKey>]>,
    },
    /// A bound on waiting requests is reached; answered at once.
    #[error("{}", match scope {
        Full::PerPod => format!("too many token requests are already waiting for {waiting_for}"),
        Full::Total => "too many token requests are already waiting on this node".to_string(),
    })]
    Busy {
        /// The pod (or address) the request would have waited for.
        waiting_for: String,
        /// Which bound.
        scope: Full,
    },
    /// The identity's token could not be obtained.
    #[error("failed to get service principal token for pod {pod}: {source}")]
    Token {
        /// `namespace/name`.
        pod: String,
        /// What failed.
        #[source]
        source: FetchError,
    },
}

impl BrokerError {
    /// The HTTP status the original answers with (404 not found, 403 refused, 503 unreachable,
    /// 500 for an address several pods hold); 429 or 503 when a bound on waiting is reached.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::PodNotFound { .. } | Self::IdentityNotFound { .. } => 404,
            Self::AmbiguousIp { .. } => 500,
            Self::Busy {
                scope: Full::PerPod,
                ..
            } => 429,
            Self::Busy {
                scope: Full::Total, ..
            } => 503,
            Self::Token { source, .. } => match source {
                FetchError::Source(SourceError::Unreachable(_)) | FetchError::Timeout(_) => 503,
                _ => 403,
            },
        }
    }

    /// True for "not found" errors, which `--set-retry-after-header` turns into 503 + Retry-After.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::PodNotFound { .. } | Self::IdentityNotFound { .. }
        )
    }

    /// Short label for metrics.
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::PodNotFound { .. } => "pod_not_found",
            Self::IdentityNotFound { .. } => "identity_not_found",
            Self::AmbiguousIp { .. } => "ambiguous_ip",
            Self::Busy {
                scope: Full::PerPod,
                ..
            } => Rejection::WaitersPerPod.label(),
            Self::Busy {
                scope: Full::Total, ..
            } => Rejection::WaitersTotal.label(),
            Self::Token { source, .. } => source.metric_label(),
        }
    }
}

/// A token ready to serve.
#[derive(Debug)]
pub struct Answer {
    /// The token.
    pub token: Arc<CachedToken>,
    /// Client id of the identity that answered ("" for the node's own identity).
    pub client_id: Arc<str>,
    /// Namespace of the calling pod (metrics label).
    pub namespace: Arc<str>,
    /// How the cache served it.
    pub lookup: Lookup,
}

/// The per-request flow, shared by every HTTP worker.
pub struct Broker {
    /// Pods of this node.
    pub pods: Arc<PodIndex>,
    /// Identities per pod.
    pub feed: IdentityFeed,
    /// Exceptions.
    pub exceptions: Arc<ExceptionIndex>,
    /// Tokens.
    pub cache: Arc<TokenCache>,
    /// Places of waiting requests.
    pub waiters: WaitGate,
    /// Service accounts annotated for workload identity (`--enable-federation`).
    pub workload_identities: Option<Arc<ServiceAccountIndex>>,
    settings: BrokerSettings,
    metrics: Option<NmiMetrics>,
}

impl Broker {
    /// A broker over the given indexes.
    #[must_use]
    pub fn new(
        pods: Arc<PodIndex>,
        feed: IdentityFeed,
        exceptions: Arc<ExceptionIndex>,
        cache: Arc<TokenCache>,
        settings: BrokerSettings,
        metrics: Option<NmiMetrics>,
    ) -> Self {
        Self {
            waiters: WaitGate::new(settings.max_waiters_per_pod, settings.max_waiters),
            pods,
            feed,
            exceptions,
            cache,
            workload_identities: None,
            settings,
            metrics,
        }
    }

    /// The same broker also serving pods that opted in to workload identity with the identity
    /// their service account names (`--enable-federation`).
    #[must_use]
    pub fn with_workload_identities(mut self, index: Arc<ServiceAccountIndex>) -> Self {
        self.workload_identities = Some(index);
        self
    }

    /// A place for a request about to wait on `key`, or the error that refuses it.
    fn park(&self, key: WaitKey) -> Result<WaitPermit<'_>, BrokerError> {
        self.waiters.try_park(key.clone()).map_err(|scope| {
            if let Some(m) = &self.metrics {
                m.reject(match scope {
                    Full::PerPod => Rejection::WaitersPerPod,
                    Full::Total => Rejection::WaitersTotal,
                });
            }
            BrokerError::Busy {
                waiting_for: match key {
                    WaitKey::Pod(k) => format!("pod {k}"),
                    WaitKey::Address(ip) => format!("address {ip}"),
                },
                scope,
            }
        })
    }

    /// True once the pod index and the identity feed hold a full list.
    #[must_use]
    pub fn caches_synced(&self) -> bool {
        self.pods.is_synced()
            && self.exceptions.is_synced()
            && match &self.feed {
                IdentityFeed::Standard(a) => a.is_synced(),
                IdentityFeed::Managed(m) => m.is_synced(),
            }
            && self
                .workload_identities
                .as_ref()
                .is_none_or(|w| w.is_synced())
    }

    fn observe_wait(&self, kind: &str, since: Instant) {
        if let Some(m) = &self.metrics {
            m.wait_seconds
                .with_label_values(&[kind])
                .observe(since.elapsed().as_secs_f64());
        }
    }

    /// A token for the pod calling from `ip` (the token endpoint).
    ///
    /// # Errors
    /// [`BrokerError`] with the reason; see [`BrokerError::status`].
    pub async fn token_for_ip(
        &self,
        ip: IpAddr,
        wanted: Wanted<'_>,
        resource: &str,
    ) -> Result<Answer, BrokerError> {
        let found = match self.pods.lookup_ip(ip) {
            IpLookup::Unknown => {
                let _place = self.park(WaitKey::Address(ip))?;
                let started = Instant::now();
                let found = self
                    .pods
                    .wait_for_ip(ip, self.settings.pod_arrival_timeout.min(MAX_WAIT))
                    .await;
                self.observe_wait("pod", started);
                found
            }
            known => known,
        };
        let pod = match found {
            IpLookup::Pod(p) => p,
            IpLookup::Ambiguous(pods) => return Err(BrokerError::AmbiguousIp { ip, pods }),
            IpLookup::Unknown => {
                return Err(BrokerError::PodNotFound {
                    ip,
                    node: self.settings.node.clone(),
                });
            }
        };
        if self.exceptions.excepts(&pod) || self.is_mic(&pod) {
            return self.node_token(&pod, wanted, resource).await;
        }
        self.token_for_pod(&pod.key, &pod.namespace, Some(&pod), wanted, resource)
            .await
    }

    /// Namespace of the pod calling from `ip`, if known (for metrics labels of failures).
    #[must_use]
    pub fn namespace_of(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.pods.by_ip(ip).map(|p| Arc::clone(&p.namespace))
    }

    /// A token for the pod `namespace/name` named by a host-network caller (`/host/token`).
    ///
    /// # Errors
    /// [`BrokerError`] with the reason.
    pub async fn token_for_named_pod(
        &self,
        namespace: &str,
        name: &str,
        wanted: Wanted<'_>,
        resource: &str,
    ) -> Result<Answer, BrokerError> {
        let key = ObjectKey::new(namespace, name);
        let pod = self.pods.by_key(&key);
        let ns: Arc<str> = pod
            .as_ref()
            .map_or_else(|| namespace.into(), |p| Arc::clone(&p.namespace));
        self.token_for_pod(&key, &ns, pod.as_deref(), wanted, resource)
            .await
    }

    /// MIC's own pods get the node's identity. The original recognised them by a ReplicaSet
    /// name starting with `mic` in MIC's namespace, which any workload there can have by
    /// accident; here it takes MIC's service account, which a pod must name deliberately.
    fn is_mic(&self, pod: &PodInfo) -> bool {
        !self.settings.mic_service_account.is_empty()
            && pod
                .namespace
                .eq_ignore_ascii_case(&self.settings.mic_namespace)
            && pod.service_account.as_deref() == Some(self.settings.mic_service_account.as_str())
    }

    async fn node_token(
        &self,
        pod: &PodInfo,
        wanted: Wanted<'_>,
        resource: &str,
    ) -> Result<Answer, BrokerError> {
        // As the original: an excepted pod may name a client id and gets that identity's token
        // from the node's metadata service; otherwise the node's own identity.
        let client_id = match wanted {
            Wanted::ClientId(c) => Some(c.to_string()),
            _ => None,
        };
        let key = CacheKey::node(client_id.as_deref());
        let (token, lookup) = self
            .cache
            .get(&key, resource, || TokenRequest {
                target: TokenTarget::Node {
                    client_id: client_id.clone(),
                },
                resource: resource.to_string(),
            })
            .await
            .map_err(|source| BrokerError::Token {
                pod: pod.key.to_string(),
                source,
            })?;
        Ok(Answer {
            token,
            client_id: client_id.unwrap_or_default().into(),
            namespace: Arc::clone(&pod.namespace),
            lookup,
        })
    }

    async fn token_for_pod(
        &self,
        key: &ObjectKey,
        namespace: &Arc<str>,
        pod: Option<&PodInfo>,
        wanted: Wanted<'_>,
        resource: &str,
    ) -> Result<Answer, BrokerError> {
        let started = Instant::now();
        let mut deadline = started + self.settings.assignment_wait.min(MAX_WAIT);
        let mut graced = false;
        let mut waited = false;
        let mut last_error: Option<FetchError> = None;
        let mut standard_rx: Option<Subscription<'_>> = None;
        let mut managed_rx = None;
        let mut _place: Option<WaitPermit<'_>> = None;
        loop {
            let ids = match &self.feed {
                IdentityFeed::Standard(idx) => match standard_rx.as_mut() {
                    None => idx.current(key).unwrap_or_default(),
                    Some(sub) => Arc::clone(&*sub.rx_mut().borrow_and_update()),
                },
                IdentityFeed::Managed(cat) => {
                    if let Some(rx) = managed_rx.as_mut() {
                        tokio::sync::watch::Receiver::<u64>::borrow_and_update(rx);
                    }
                    Arc::new(pod.map(|p| cat.resolve(p)).unwrap_or_default())
                }
            };
            let ids = match (pod, &self.workload_identities) {
                (Some(p), Some(wi)) => match wi.identity_for(p) {
                    Some(own) => {
                        let mut all = Vec::with_capacity(ids.len() + 1);
                        all.extend(ids.iter().cloned());
                        all.push(own);
                        Arc::new(all)
                    }
                    None => ids,
                },
                _ => ids,
            };
            match wanted {
                Wanted::ObjectId(oid) => {
                    for id in candidates(&ids, namespace, wanted) {
                        match self.fetch(key, namespace, pod, id, resource).await {
                            Ok(a) if a.token.token.object_id.as_deref() == Some(oid) => {
                                if waited {
                                    self.observe_wait("assignment", started);
                                }
                                return Ok(a);
                            }
                            Ok(_) => {}
                            Err(BrokerError::Token { source, .. }) => last_error = Some(source),
                            Err(e) => return Err(e),
                        }
                    }
                }
                _ => {
                    if let Some(id) = candidates(&ids, namespace, wanted).next() {
                        if !waited {
                            return self.fetch(key, namespace, pod, id, resource).await;
                        }
                        self.observe_wait("assignment", started);
                        let woken = Instant::now();
                        let got = self.fetch(key, namespace, pod, id, resource).await;
                        // The wake-up's stages, per pod (docs/performance.md); never the token.
                        tracing::debug!(
                            pod = %key,
                            identity = %id.identity_name,
                            waited_ms = (woken - started).as_secs_f64() * 1e3,
                            fetch_ms = woken.elapsed().as_secs_f64() * 1e3,
                            lookup = ?got.as_ref().map(|a| a.lookup).ok(),
                            "woken by assignment; token ready"
                        );
                        return got;
                    }
                }
            }
            // Not (yet) there: subscribe, then re-check before sleeping so no update is missed.
            if !waited {
                waited = true;
                _place = Some(self.park(WaitKey::Pod(Arc::new(key.clone())))?);
                match &self.feed {
                    IdentityFeed::Standard(idx) => {
                        standard_rx = Some(Subscription {
                            index: idx,
                            key,
                            rx: Some(idx.subscribe(key)),
                        });
                    }
                    IdentityFeed::Managed(cat) => managed_rx = Some(cat.subscribe()),
                }
                continue;
            }
            let changed = match (&mut standard_rx, &mut managed_rx) {
                (Some(sub), _) => tokio::time::timeout_at(deadline, sub.rx_mut().changed())
                    .await
                    .is_ok_and(|r| r.is_ok()),
                (_, Some(rx)) => tokio::time::timeout_at(deadline, rx.changed())
                    .await
                    .is_ok_and(|r| r.is_ok()),
                _ => false,
            };
            if !changed
                && !graced
                && ids.iter().any(|i| {
                    i.state == AssignedState::Created
                        && wanted.names(i)
                        && i.serves_namespace(namespace)
                })
            {
                // As the original's second loop: an identity being assigned gets extra time.
                graced = true;
                deadline += self.settings.assigned_grace.min(MAX_WAIT);
                continue;
            }
            if !changed {
                self.observe_wait("assignment", started);
                let detail = describe_missing(&ids, namespace, wanted, last_error.as_ref());
                return Err(BrokerError::IdentityNotFound {
                    pod: key.to_string(),
                    waited: started.elapsed(),
                    detail,
                });
            }
        }
    }

    async fn fetch(
        &self,
        key: &ObjectKey,
        namespace: &Arc<str>,
        pod: Option<&PodInfo>,
        id: &Arc<ResolvedIdentity>,
        resource: &str,
    ) -> Result<Answer, BrokerError> {
        let got = match (id.federated, pod) {
            (false, _) => {
                self.cache
                    .get(&id.cache_key, resource, || id.token_request(resource))
                    .await
            }
            (true, Some(p)) => {
                let caller = FederatedPod {
                    namespace: p.namespace.to_string(),
                    name: p.name.to_string(),
                    uid: p.uid.to_string(),
                    service_account: p
                        .service_account
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                };
                let slot = federated_slot(resource, &caller);
                self.cache
                    .get(&id.cache_key, &slot, || {
                        id.federated_request(resource, caller)
                    })
                    .await
            }
            // `/host/token` naming a pod this node does not run: there is no pod to bind a
            // service-account token to.
            (true, None) => Err(FetchError::Source(SourceError::Refused(format!(
                "identity {}/{} is federated and pod {key} is not running on node {}",
                id.identity_namespace, id.identity_name, self.settings.node
            )))),
        };
        let (token, lookup) = got.map_err(|source| BrokerError::Token {
            pod: key.to_string(),
            source,
        })?;
        Ok(Answer {
            token,
            client_id: Arc::clone(&id.client_id),
            namespace: Arc::clone(namespace),
            lookup,
        })
    }
}

/// The cache slot of a federated token: the resource and the subject the token was exchanged
/// for. The resource is length-prefixed, so no resource a caller chooses can spell another
/// subject's slot.
fn federated_slot(resource: &str, caller: &FederatedPod) -> String {
    format!("{}:{resource} as {}", resource.len(), caller.subject())
}

/// A request's subscription to a pod's identities; on drop, a channel the request created for a
/// pod nobody reported is removed again.
struct Subscription<'a> {
    index: &'a AssignmentIndex,
    key: &'a ObjectKey,
    rx: Option<tokio::sync::watch::Receiver<super::assignments::PodIdentities>>,
}

impl Subscription<'_> {
    fn rx_mut(&mut self) -> &mut tokio::sync::watch::Receiver<super::assignments::PodIdentities> {
        // Only `drop` takes the receiver.
        self.rx.as_mut().expect("receiver present until drop")
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.index.forget_if_idle(self.key);
    }
}

fn describe_missing(
    ids: &[Arc<ResolvedIdentity>],
    namespace: &str,
    wanted: Wanted<'_>,
    last_error: Option<&FetchError>,
) -> String {
    let named = match wanted {
        Wanted::Any => String::new(),
        Wanted::ClientId(c) => format!(" with client id {c}"),
        Wanted::ResourceId(r) => format!(" with resource id {r}"),
        Wanted::ObjectId(o) => format!(" with object id {o}"),
    };
    if ids.is_empty() {
        return format!("no identity{named} is bound to the pod");
    }
    let matching: Vec<&Arc<ResolvedIdentity>> = ids.iter().filter(|i| wanted.names(i)).collect();
    if matching.is_empty() {
        return format!("no identity{named} is bound to the pod");
    }
    if !matching.iter().any(|i| i.serves_namespace(namespace)) {
        return format!("identity{named} is namespaced and may not serve namespace {namespace}");
    }
    if let Some(e) = last_error {
        return format!("no identity{named} could be confirmed: {e}");
    }
    let states: Vec<String> = matching
        .iter()
        .map(|i| {
            format!(
                "{}/{}={}",
                i.identity_namespace,
                i.identity_name,
                i.state.as_str()
            )
        })
        .collect();
    format!("identity{named} not yet assigned ({})", states.join(", "))
}

#[cfg(test)]
#[path = "broker_tests.rs"]
mod tests;
