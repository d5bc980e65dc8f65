//! The token cache: one slot per (identity, resource), refreshed before expiry, with at most one
//! upstream fetch in flight per slot however many requests ask at once (single flight).
//!
//! The cache never decides who may have a token: the broker authorizes every request first and
//! only then asks here. Slots for an identity are dropped when the identity is no longer
//! assigned to any pod on the node ([`TokenCache::drop_identity`]).
//!
//! Resources are chosen by callers, so the number of slots is bounded (`--max-token-cache-slots`):
//! a new slot beyond the bound evicts an idle one (no fetch in flight), preferring the asking
//! identity's own. A token's lifetime is taken from its `expires_on`, capped at
//! [`MAX_TOKEN_LIFE`] before any clock arithmetic, so no upstream number can overflow a deadline.
//!
//! Hot path: two concurrent-map reads and one short, uncontended-by-design mutex section that is
//! never held across an await.

use super::metrics::NmiMetrics;
use super::source::{RenderedToken, SourceError, TokenRequest, TokenSource, unix_now};
use dashmap::DashMap;
use futures::FutureExt as _;
use futures::future::{BoxFuture, Shared};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Key of one identity's tokens. Built only by the named constructors, so a user-assigned
/// identity, a service principal and the node's own identity never share (or are mistaken for)
/// one another's tokens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// A user-assigned identity by client id (compared without case, as Azure does).
    #[must_use]
    pub fn user_assigned(client_id: &str) -> Self {
        Self(format!("msi/{}", client_id.to_ascii_lowercase()).into())
    }

    /// A user-assigned identity named only by its resource id.
    #[must_use]
    pub fn user_assigned_by_resource(resource_id: &str) -> Self {
        Self(format!("msi-rid/{}", resource_id.to_ascii_lowercase()).into())
    }

    /// A service principal: per AzureIdentity and per version of its spec (`fingerprint`), so
    /// an edited identity never gets the tokens of its previous Secret or tenant.
    #[must_use]
    pub fn service_principal(
        namespace: &str,
        name: &str,
        client_id: &str,
        fingerprint: u64,
    ) -> Self {
        Self(format!("sp/{namespace}/{name}/{client_id}/{fingerprint:016x}").into())
    }

    /// A federated identity (its tokens are the calling pod's service-account token exchanged
    /// at Azure AD): per identity (`namespace`/`name`: an AzureIdentity, or
    /// `serviceaccount/<sa>` for workload identity's own opt-in) and per what Azure AD issues
    /// to (client id, tenant, authority), so an edited identity never gets its old tokens. The
    /// subject a token was exchanged for is part of the slot, not the key (the broker's
    /// `federated_slot`), so one identity's tokens for every subject go together when it goes.
    #[must_use]
    pub fn federated(
        namespace: &str,
        name: &str,
        client_id: &str,
        tenant_id: &str,
        ad_endpoint: &str,
    ) -> Self {
        // Namespaces and names hold no `/` past the `serviceaccount/` prefix; the quoted fields
        // cannot run into each other.
        Self(
            format!(
                "fed/{namespace}/{name}/{:?}",
                (client_id, tenant_id, ad_endpoint)
            )
            .into(),
        )
    }

    /// The node's own identity (excepted pods), or the one its `client_id` names.
    #[must_use]
    pub fn node(client_id: Option<&str>) -> Self {
        Self(format!("node/{}", client_id.unwrap_or("")).into())
    }

    /// The key as text (for logs and tests).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for CacheKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
impl From<&str> for CacheKey {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

/// Longest a token is kept, whatever its `expires_on` says.
pub const MAX_TOKEN_LIFE: Duration = crate::cloud::token::MAX_LIFETIME;

/// Why the cache could not produce a token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    /// The source could not get an answer.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The token service answered with an error status (its body is relayed to the caller).
    #[error("token service answered {status}: {}", excerpt(body))]
    Upstream {
        /// Status of the token service.
        status: u16,
        /// Body of the token service (an error document, never a token).
        body: bytes::Bytes,
    },
    /// The token service answered 200 but not with a token.
    #[error("{0}")]
    Malformed(String),
    /// The upstream fetch took longer than the configured bound.
    #[error("token service did not answer within {0:?}")]
    Timeout(Duration),
}

/// The start of an upstream error document, for messages (error documents hold no tokens).
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(512)])
        .trim()
        .to_string()
}

impl FetchError {
    /// Short label for metrics.
    #[must_use]
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Source(SourceError::Unreachable(_)) => "unreachable",
            Self::Source(SourceError::Refused(_)) => "refused",
            Self::Upstream { .. } => "upstream_status",
            Self::Malformed(_) => "malformed",
            Self::Timeout(_) => "timeout",
        }
    }
}

/// A token held by the cache.
#[derive(Debug)]
pub struct CachedToken {
    /// The token, ready to render.
    pub token: RenderedToken,
    /// When to start refreshing (expiry minus the refresh margin).
    refresh_at: Instant,
    /// When the token must no longer be served.
    expires_at: Instant,
}

/// How a lookup was served, for metrics and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Fresh token from the cache.
    Hit,
    /// Token still valid but in its refresh window: served, refresh started in the background.
    Refreshing,
    /// Waited for an upstream fetch (started by this or another request).
    Miss,
}

type Inflight = Shared<BoxFuture<'static, Result<Arc<CachedToken>, FetchError>>>;

#[derive(Default)]
struct SlotState {
    token: Option<Arc<CachedToken>>,
    inflight: Option<Inflight>,
}

#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct IdentitySlots {
    by_resource: DashMap<Box<str>, Arc<Slot>>,
    /// Set once the identity is dropped: a slot added to it afterwards removes itself.
    dropped: AtomicBool,
}

/// Token cache keyed by identity cache key, then resource.
pub struct TokenCache {
    identities: DashMap<CacheKey, Arc<IdentitySlots>>,
    /// Slots in all identities: incremented by each insert, decremented by each removal.
    slots: AtomicUsize,
    max_slots: usize,
    source: Arc<dyn TokenSource>,
    refresh_margin: Duration,
    fetch_timeout: Duration,
    metrics: Option<NmiMetrics>,
}

impl TokenCache {
    /// A cache fetching from `source`, refreshing `refresh_margin` before expiry and giving up
    /// on an upstream fetch after `fetch_timeout`, with at most [`DEFAULT_MAX_SLOTS`] slots
    /// (see [`Self::with_max_slots`]).
    #[must_use]
    pub fn new(
        source: Arc<dyn TokenSource>,
        refresh_margin: Duration,
        fetch_timeout: Duration,
        metrics: Option<NmiMetrics>,
    ) -> Self {
        Self {
            identities: DashMap::new(),
            slots: AtomicUsize::new(0),
            max_slots: DEFAULT_MAX_SLOTS,
            source,
            refresh_margin,
            fetch_timeout,
            metrics,
        }
    }

    /// The same cache holding at most `max_slots` (identity, resource) slots (at least one).
    #[must_use]
    pub fn with_max_slots(mut self, max_slots: usize) -> Self {
        self.max_slots = max_slots.max(1);
        self
    }

    /// The slot for `resource` in `slots`, created (and the bound enforced) when missing.
    fn slot(
        &self,
        identity_key: &CacheKey,
        slots: &Arc<IdentitySlots>,
        resource: &str,
    ) -> Arc<Slot> {
        if let Some(s) = slots.by_resource.get(resource) {
            return Arc::clone(&s);
        }
        let (slot, created) = match slots.by_resource.entry(resource.into()) {
            dashmap::Entry::Occupied(e) => (Arc::clone(e.get()), false),
            dashmap::Entry::Vacant(v) => {
                let s = Arc::new(Slot::default());
                v.insert(Arc::clone(&s));
                (s, true)
            }
        };
        if created {
            let n = self.slots.fetch_add(1, Ordering::AcqRel) + 1;
            if slots.dropped.load(Ordering::Acquire) {
                // The identity was dropped meanwhile: this slot must not outlive it uncounted.
                self.remove_slot(slots, resource, &slot);
            } else if n > self.max_slots {
                self.evict_one(identity_key, &slot);
            }
        }
        slot
    }

    /// Removes `resource`'s slot from `slots` if it is still `slot`; true when removed.
    fn remove_slot(&self, slots: &IdentitySlots, resource: &str, slot: &Arc<Slot>) -> bool {
        let removed = slots
            .by_resource
            .remove_if(resource, |_, s| Arc::ptr_eq(s, slot))
            .is_some();
        if removed {
            self.slots.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Evicts one idle slot other than `keep`, looking in `prefer`'s identity first. Another
    /// creator may evict the same victim at the same moment; then this one picks again.
    fn evict_one(&self, prefer: &CacheKey, keep: &Arc<Slot>) {
        let idle = |s: &Arc<Slot>| {
            !Arc::ptr_eq(s, keep) && s.state.try_lock().is_ok_and(|st| st.inflight.is_none())
        };
        let pick = |ids: &IdentitySlots| {
            ids.by_resource
                .iter()
                .find(|e| idle(e.value()))
                .map(|e| (e.key().clone(), Arc::clone(e.value())))
        };
        for _ in 0..16 {
            let mut victim = self
                .identities
                .get(prefer)
                .map(|ids| Arc::clone(&ids))
                .and_then(|ids| pick(&ids).map(|v| (prefer.clone(), ids, v)));
            if victim.is_none() {
                victim = self.identities.iter().find_map(|e| {
                    pick(e.value()).map(|v| (e.key().clone(), Arc::clone(e.value()), v))
                });
            }
            let Some((key, ids, (resource, slot))) = victim else {
                return;
            };
            if self.remove_slot(&ids, &resource, &slot) {
                if let Some(m) = &self.metrics {
                    m.cache_evictions.inc();
                }
                if let Some((_, gone)) = self.identities.remove_if(&key, |_, v| {
                    Arc::ptr_eq(v, &ids) && v.by_resource.is_empty()
                }) {
                    self.retire(&gone);
                }
                return;
            }
        }
    }

    /// The token for (`identity_key`, `resource`); `request` builds the upstream request if one
    /// is needed. The caller must have authorized the request already.
    ///
    /// # Errors
    /// [`FetchError`] when no valid token is cached and the upstream fetch fails.
    pub async fn get(
        &self,
        identity_key: &CacheKey,
        resource: &str,
        request: impl FnOnce() -> TokenRequest,
    ) -> Result<(Arc<CachedToken>, Lookup), FetchError> {
        let slots = match self.identities.get(identity_key) {
            Some(s) => Arc::clone(&s),
            None => Arc::clone(&self.identities.entry(identity_key.clone()).or_default()),
        };
        let slot = self.slot(identity_key, &slots, resource);
        let now = Instant::now();
        let fut = {
            let mut st = slot
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(t) = &st.token {
                if now < t.refresh_at {
                    let t = Arc::clone(t);
                    drop(st);
                    self.count("hit");
                    return Ok((t, Lookup::Hit));
                }
                if now < t.expires_at {
                    let t = Arc::clone(t);
                    if st.inflight.is_none() {
                        let f = self.start_fetch(identity_key, &slot, request());
                        st.inflight = Some(f.clone());
                        // Nobody waits on a background refresh; drive it on its own task.
                        tokio::spawn(f);
                    }
                    drop(st);
                    self.count("refreshing");
                    return Ok((t, Lookup::Refreshing));
                }
                st.token = None;
            }
            match &st.inflight {
                Some(f) => f.clone(),
                None => {
                    let f = self.start_fetch(identity_key, &slot, request());
                    st.inflight = Some(f.clone());
                    f
                }
            }
        };
        self.count("miss");
        fut.await.map(|t| (t, Lookup::Miss))
    }

    fn count(&self, result: &str) {
        if let Some(m) = &self.metrics {
            if result == "hit" {
                m.cache_hit.inc();
            } else {
                m.cache_lookups.with_label_values(&[result]).inc();
            }
        }
    }

    fn start_fetch(
        &self,
        identity_key: &CacheKey,
        slot: &Arc<Slot>,
        request: TokenRequest,
    ) -> Inflight {
        let identity = identity_key.clone();
        let source = Arc::clone(&self.source);
        let slot = Arc::clone(slot);
        let margin = self.refresh_margin;
        let timeout = self.fetch_timeout;
        let metrics = self.metrics.clone();
        async move {
            let started = Instant::now();
            let outcome = match tokio::time::timeout(timeout, source.fetch(&request)).await {
                Err(_) => Err(FetchError::Timeout(timeout)),
                Ok(Err(e)) => Err(FetchError::Source(e)),
                Ok(Ok(up)) if up.status == 200 => {
                    RenderedToken::parse(&up.body).map_err(|e| FetchError::Malformed(e.to_string()))
                }
                Ok(Ok(up)) => Err(FetchError::Upstream {
                    status: up.status,
                    body: up.body,
                }),
            };
            let label = outcome
                .as_ref()
                .map_or_else(FetchError::metric_label, |_| "ok");
            if let Some(m) = &metrics {
                m.upstream_fetch_seconds
                    .with_label_values(&[label])
                    .observe(started.elapsed().as_secs_f64());
            }
            tracing::debug!(
                %identity,
                resource = %request.resource,
                fetch_ms = started.elapsed().as_secs_f64() * 1e3,
                outcome = label,
                "upstream token fetch"
            );
            let outcome = outcome.map(|token| {
                let now = Instant::now();
                let life = Duration::from_secs(token.expires_on.saturating_sub(unix_now()))
                    .min(MAX_TOKEN_LIFE);
                Arc::new(CachedToken {
                    token,
                    refresh_at: now + life.saturating_sub(margin),
                    expires_at: now + life,
                })
            });
            let mut st = slot
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            st.inflight = None;
            if let Ok(t) = &outcome {
                st.token = Some(Arc::clone(t));
            }
            outcome
        }
        .boxed()
        .shared()
    }

    /// Forgets every token of an identity (it is no longer assigned to any pod on this node).
    pub fn drop_identity(&self, identity_key: &CacheKey) {
        if let Some((_, ids)) = self.identities.remove(identity_key) {
            self.retire(&ids);
        }
    }

    /// Empties slots already taken out of the map: marks them dropped (so a request still
    /// holding them removes what it adds) and uncounts every slot.
    fn retire(&self, ids: &IdentitySlots) {
        ids.dropped.store(true, Ordering::Release);
        let all: Vec<(Box<str>, Arc<Slot>)> = ids
            .by_resource
            .iter()
            .map(|e| (e.key().clone(), Arc::clone(e.value())))
            .collect();
        for (resource, slot) in all {
            self.remove_slot(ids, &resource, &slot);
        }
    }

    /// Number of identities with at least one slot (for tests and metrics).
    #[must_use]
    pub fn identity_count(&self) -> usize {
        self.identities.len()
    }

    /// Number of (identity, resource) slots held (for tests and metrics).
    #[must_use]
    pub fn slot_count(&self) -> usize {
        self.slots.load(Ordering::Acquire)
    }
}

/// Default bound of cached (identity, resource) slots.
pub const DEFAULT_MAX_SLOTS: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::nmi::source::{TokenTarget, UpstreamToken};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers with a token valid for `life` seconds after a 10 ms upstream delay.
    struct Fake {
        calls: AtomicUsize,
        life: u64,
        status: u16,
    }

    #[async_trait]
    impl TokenSource for Fake {
        async fn fetch(&self, req: &TokenRequest) -> Result<UpstreamToken, SourceError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            let body = format!(
                r#"{{"access_token":"tok-{n}","expires_on":"{}","resource":"{}","token_type":"Bearer"}}"#,
                unix_now() + self.life,
                req.resource
            );
            Ok(UpstreamToken {
                status: self.status,
                body: body.into(),
            })
        }
    }

    fn fake(life: u64, status: u16) -> Arc<Fake> {
        Arc::new(Fake {
            calls: AtomicUsize::new(0),
            life,
            status,
        })
    }

    fn req() -> TokenRequest {
        TokenRequest {
            target: TokenTarget::Node { client_id: None },
            resource: "r".into(),
        }
    }

    fn access_token(t: &CachedToken) -> String {
        let v: serde_json::Value = serde_json::from_slice(&t.token.render(0)).unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_askers_share_one_upstream_fetch() {
        let src = fake(3600, 200);
        let cache = Arc::new(TokenCache::new(
            src.clone(),
            Duration::from_secs(300),
            Duration::from_secs(30),
            None,
        ));
        let key = CacheKey::from("id");
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let cache = Arc::clone(&cache);
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                cache
                    .get(&key, "r", req)
                    .await
                    .map(|(t, _)| access_token(&t))
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "tok-0");
        }
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        let (_, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(how, Lookup::Hit);
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_in_its_refresh_window_is_served_while_one_refresh_runs() {
        let src = fake(600, 200);
        let cache = TokenCache::new(
            src.clone(),
            Duration::from_secs(300),
            Duration::from_secs(30),
            None,
        );
        let key = CacheKey::from("id");
        let (first, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(how, Lookup::Miss);
        tokio::time::advance(Duration::from_secs(301)).await;
        let (again, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(how, Lookup::Refreshing);
        assert!(Arc::ptr_eq(&first, &again));
        let (_, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(how, Lookup::Refreshing);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (fresh, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(how, Lookup::Hit);
        assert_eq!(access_token(&fresh), "tok-1");
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_token_is_never_served() {
        let src = fake(600, 200);
        let cache = TokenCache::new(
            src.clone(),
            Duration::from_secs(300),
            Duration::from_secs(30),
            None,
        );
        let key = CacheKey::from("id");
        cache.get(&key, "r", req).await.unwrap();
        tokio::time::advance(Duration::from_secs(601)).await;
        let (t, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(how, Lookup::Miss);
        assert_eq!(access_token(&t), "tok-1");
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_errors_reach_every_waiter_and_are_not_cached() {
        let src = fake(600, 400);
        let cache = Arc::new(TokenCache::new(
            src.clone(),
            Duration::from_secs(300),
            Duration::from_secs(30),
            None,
        ));
        let key = CacheKey::from("id");
        let a = {
            let (c, k) = (Arc::clone(&cache), key.clone());
            tokio::spawn(async move { c.get(&k, "r", req).await.map(|_| ()) })
        };
        let b = cache.get(&key, "r", req).await.map(|_| ());
        assert!(matches!(b, Err(FetchError::Upstream { status: 400, .. })));
        assert!(matches!(
            a.await.unwrap(),
            Err(FetchError::Upstream { status: 400, .. })
        ));
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        let _ = cache.get(&key, "r", req).await;
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_an_identity_forgets_its_tokens() {
        let src = fake(3600, 200);
        let cache = TokenCache::new(
            src.clone(),
            Duration::from_secs(300),
            Duration::from_secs(30),
            None,
        );
        let key = CacheKey::from("id");
        cache.get(&key, "r", req).await.unwrap();
        cache.drop_identity(&key);
        assert_eq!(cache.identity_count(), 0);
        let (_, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(how, Lookup::Miss);
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_bounded_and_idle_ones_evicted() {
        let src = fake(3600, 200);
        let cache = TokenCache::new(
            src.clone(),
            Duration::from_secs(300),
            Duration::from_secs(30),
            None,
        )
        .with_max_slots(8);
        let key = CacheKey::from("id");
        for i in 0..1000 {
            cache.get(&key, &format!("r{i}"), req).await.unwrap();
            assert!(cache.slot_count() <= 8, "{} slots", cache.slot_count());
        }
        let other = CacheKey::from("other");
        cache.get(&other, "r", req).await.unwrap();
        assert!(cache.slot_count() <= 8);
        cache.drop_identity(&key);
        cache.drop_identity(&other);
        assert_eq!((cache.slot_count(), cache.identity_count()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_claiming_to_live_forever_is_kept_no_longer_than_a_day() {
        struct Forever;
        #[async_trait]
        impl TokenSource for Forever {
            async fn fetch(&self, _: &TokenRequest) -> Result<UpstreamToken, SourceError> {
                Ok(UpstreamToken {
                    status: 200,
                    body: format!(
                        r#"{{"access_token":"a","expires_on":"{}","token_type":"Bearer"}}"#,
                        u64::MAX
                    )
                    .into(),
                })
            }
        }
        let cache = TokenCache::new(
            Arc::new(Forever),
            Duration::from_secs(300),
            Duration::from_secs(30),
            None,
        );
        let key = CacheKey::from("id");
        let (_, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(how, Lookup::Miss);
        tokio::time::advance(MAX_TOKEN_LIFE + Duration::from_secs(1)).await;
        let (_, how) = cache.get(&key, "r", req).await.unwrap();
        assert_eq!(
            how,
            Lookup::Miss,
            "an expired (capped) token is fetched again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_slower_than_the_bound_times_out() {
        struct Never;
        #[async_trait]
        impl TokenSource for Never {
            async fn fetch(&self, _: &TokenRequest) -> Result<UpstreamToken, SourceError> {
                futures::future::pending().await
            }
        }
        let cache = TokenCache::new(
            Arc::new(Never),
            Duration::from_secs(300),
            Duration::from_secs(5),
            None,
        );
        let r = cache.get(&CacheKey::from("id"), "r", req).await;
        assert!(matches!(r, Err(FetchError::Timeout(_))));
    }
}
