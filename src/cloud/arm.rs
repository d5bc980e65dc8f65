//! ARM client for the identities of VMs and scale sets, on the azure_core pipeline.
//!
//! One PATCH changes many identities: the body is a delta (`{"<id>":{}}` adds,
//! `{"<id>":null}` removes) with the identity `type` that results, at most
//! [`MAX_IDENTITIES_PER_PATCH`] entries per request. Long-running operations are followed
//! through `Azure-AsyncOperation` or `Location`. A 429 closes the per-subscription
//! [`SubscriptionGate`] for its `Retry-After`, so no caller sharing the gate sends anything for
//! that subscription inside the window; 5xx and timeouts are retried with [`crate::backoff`]'s
//! jittered exponential backoff (never longer than `backoff_max`).
//! When ARM refuses some identities of a batch (`LinkedAuthorizationFailed`,
//! `FailedIdentityOperation`, an unknown identity), the ids its message names are set aside and
//! the rest of the batch is sent again, so one bad identity never blocks the others.
//!
//! Every PATCH carries `If-Match` with the etag of the state it was computed from, so ARM
//! applies it to exactly that state or refuses it (412 `PreconditionFailed`): an identity
//! reported in [`UpdateOutcome::added`] was put there by this write and by nothing else, which
//! is what lets MIC remove only what it added. A refused precondition means someone changed
//! the resource in between; the client reads it again and recomputes the delta.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use azure_core::credentials::TokenCredential;
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, Request, RetryOptions,
    headers::{HeaderName, Headers},
    policies::Policy,
};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::credential::BearerPolicy;
use super::provider_id::ComputeRef;
use super::throttle::{SubscriptionGate, parse_retry_after};
use super::{Error, RefusedIdentity};
use crate::backoff;

/// Compute API version used for VM and scale-set GET/PATCH.
pub const API_VERSION: &str = "2024-07-01";

/// ARM's limit on user-assigned identities changed by one request.
pub const MAX_IDENTITIES_PER_PATCH: usize = 150;

/// PATCHes refused by their `If-Match` precondition before giving up with [`Error::Conflict`].
pub const MAX_PRECONDITION_RETRIES: u32 = 3;

/// Retry, timeout and polling knobs.
#[derive(Clone, Debug)]
pub struct ArmOptions {
    /// Deadline for one HTTP exchange.
    pub request_timeout: Duration,
    /// Tries per request for 5xx and timeouts (1 = no retry).
    pub max_attempts: u32,
    /// First backoff delay; doubled per retry, then jittered down to between half and all of it.
    pub backoff_base: Duration,
    /// Longest backoff delay (jitter never exceeds it).
    pub backoff_max: Duration,
    /// 429 answers tolerated per request before giving up with [`Error::Throttled`].
    pub max_throttled: u32,
    /// Window assumed for a 429 without a usable `Retry-After`.
    pub default_retry_after: Duration,
    /// Poll interval when an LRO response has no `Retry-After`.
    pub lro_poll_interval: Duration,
    /// Give up following an LRO after this long.
    pub lro_timeout: Duration,
    /// Identities per PATCH (ARM allows 150).
    pub max_per_patch: usize,
    /// Appended to the Azure SDK's `User-Agent` ([`crate::version::user_agent`]).
    pub user_agent: Option<String>,
}

impl Default for ArmOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            max_attempts: 4,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            max_throttled: 10,
            default_retry_after: Duration::from_secs(10),
            lro_poll_interval: Duration::from_secs(5),
            lro_timeout: Duration::from_secs(30 * 60),
            max_per_patch: MAX_IDENTITIES_PER_PATCH,
            user_agent: None,
        }
    }
}

/// One HTTP call to ARM, reported to the [`CallObserver`] (metrics hook).
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// `vmss_get`, `vmss_update`, `vm_get`, `vm_update`, `lro_poll`.
    pub operation: &'static str,
    /// HTTP status, or `None` for a transport error or timeout.
    pub status: Option<u16>,
    /// Time from send to full response.
    pub elapsed: Duration,
}

/// Called once per HTTP call (including retries and polls).
pub type CallObserver = Arc<dyn Fn(&CallRecord) + Send + Sync>;

/// Identity state of a VM or scale set as ARM reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityState {
    /// `identity.type` (`None` when absent).
    pub identity_type: String,
    /// Keys of `identity.userAssignedIdentities`, as ARM returns them.
    pub user_assigned: Vec<String>,
    /// `properties.provisioningState`.
    pub provisioning_state: String,
    /// The resource's `etag` (the model version a PATCH's `If-Match` names), when ARM gave one.
    pub etag: Option<String>,
}

impl IdentityState {
    /// True when the type includes `SystemAssigned`.
    #[must_use]
    pub fn has_system_assigned(&self) -> bool {
        self.identity_type
            .to_ascii_lowercase()
            .contains("systemassigned")
    }

    /// True when `id` is assigned (case-insensitive).
    #[must_use]
    pub fn contains(&self, id: &str) -> bool {
        self.user_assigned
            .iter()
            .any(|x| x.eq_ignore_ascii_case(id))
    }
}

/// What an [`ArmClient::update_identities`] call achieved.
#[derive(Clone, Debug, Default)]
pub struct UpdateOutcome {
    /// Identities now assigned that were not (as the caller wrote them).
    pub added: Vec<String>,
    /// Identities removed.
    pub removed: Vec<String>,
    /// Identities ARM refused, with its reason; the rest went through.
    pub refused: Vec<RefusedIdentity>,
    /// Identities asked for that needed no change (already there / already gone): an identity
    /// to add found here was put there by someone else.
    pub unchanged: Vec<String>,
    /// PATCH requests sent.
    pub patches: u32,
    /// State after the last PATCH (or the initial GET when nothing was sent).
    pub state: IdentityState,
}

/// ARM client for VM and scale-set identities. Cheap to clone; clones share the pipeline,
/// the throttling gate and the observer.
#[derive(Clone)]
pub struct ArmClient {
    pipeline: Pipeline,
    endpoint: url::Url,
    gate: SubscriptionGate,
    options: ArmOptions,
    observer: Option<CallObserver>,
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

struct Received {
    status: u16,
    headers: Headers,
    body: Bytes,
}

impl ArmClient {
    /// A client for the ARM `endpoint` authenticating with `credential` for `resource`
    /// (e.g. `https://management.azure.com/`).
    pub fn new(
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
        resource: &str,
        options: ArmOptions,
    ) -> Result<Self, Error> {
        let endpoint = url::Url::parse(endpoint)
            .map_err(|e| Error::Config(format!("ARM endpoint {endpoint:?}: {e}")))?;
        let client_options = ClientOptions {
            // Retries are ours: the throttling gate must be shared per subscription.
            retry: RetryOptions::none(),
            ..Default::default()
        };
        let auth: Arc<dyn Policy> = Arc::new(BearerPolicy::new(
            credential,
            super::aad::scope_for(resource),
        ));
        let mut per_try = vec![auth];
        if let Some(ua) = &options.user_agent {
            per_try.push(Arc::new(super::AppendUserAgent(ua.clone())));
        }
        let pipeline = Pipeline::new(
            Some("aad-pod-identity"),
            Some(env!("CARGO_PKG_VERSION")),
            client_options,
            Vec::new(),
            per_try,
            None,
        );
        Ok(Self {
            pipeline,
            endpoint,
            gate: SubscriptionGate::new(),
            options,
            observer: None,
        })
    }

    /// Shares `gate` with other clients of the same subscriptions.
    #[must_use]
    pub fn with_gate(mut self, gate: SubscriptionGate) -> Self {
        self.gate = gate;
        self
    }

    /// Reports every HTTP call to `observer` (the metrics registry hooks in here).
    #[must_use]
    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The throttling gate this client honours.
    #[must_use]
    pub fn gate(&self) -> &SubscriptionGate {
        &self.gate
    }

    fn resource_url(&self, target: &ComputeRef) -> url::Url {
        let mut url = self.endpoint.clone();
        let base = self.endpoint.path().trim_end_matches('/');
        url.set_path(&format!("{base}{}", target.resource_path()));
        url.set_query(Some(&format!("api-version={API_VERSION}")));
        url
    }

    /// Reads the identity state of a VM or scale set.
    pub async fn get_identities(&self, target: &ComputeRef) -> Result<IdentityState, Error> {
        let op = if target.is_scale_set() {
            "vmss_get"
        } else {
            "vm_get"
        };
        let got = self
            .send(
                op,
                target.subscription(),
                Method::Get,
                self.resource_url(target),
                None,
            )
            .await?;
        if got.status != 200 {
            return Err(classify(op, target, got.status, &got.body, &[]));
        }
        parse_state(op, &got.body)
    }

    /// Adds and removes user-assigned identities (resource ids) on a VM or scale set.
    ///
    /// Reads the current state (refusing a resource being deleted), sends only real changes in
    /// PATCHes of at most `max_per_patch` entries, each conditional on the state it was
    /// computed from (`If-Match`), and follows each LRO. When the resource changed in between,
    /// it is read again and the delta recomputed (at most [`MAX_PRECONDITION_RETRIES`] times).
    /// Identities ARM refuses are reported in [`UpdateOutcome::refused`] while the rest are
    /// applied.
    pub async fn update_identities(
        &self,
        target: &ComputeRef,
        add: &[String],
        remove: &[String],
    ) -> Result<UpdateOutcome, Error> {
        self.update_identities_from(target, None, add, remove).await
    }

    /// [`Self::update_identities`] on top of a state the caller already holds (the answer of
    /// its last GET or PATCH): with an etag, the first PATCH goes out at once, conditional on
    /// that state, so a caller that keeps the last answer spends one round trip per write. A
    /// stale `known` costs a 412 and a read, never a wrong write; without an etag the resource
    /// is read first, as with `None`.
    pub async fn update_identities_from(
        &self,
        target: &ComputeRef,
        known: Option<IdentityState>,
        add: &[String],
        remove: &[String],
    ) -> Result<UpdateOutcome, Error> {
        let mut outcome = UpdateOutcome::default();
        // Still to classify against the state the next PATCH is based on.
        let mut add: Vec<String> = add.to_vec();
        let mut remove: Vec<String> = remove
            .iter()
            // Asked to add and remove the same identity: adding wins (a pod still wants it).
            .filter(|r| !add.iter().any(|a| a.eq_ignore_ascii_case(r)))
            .cloned()
            .collect();
        let mut state = match known {
            Some(k) if k.etag.is_some() => k,
            _ => self.get_identities(target).await?,
        };
        let per_patch = self
            .options
            .max_per_patch
            .clamp(1, MAX_IDENTITIES_PER_PATCH);
        let mut conflicts = 0u32;
        loop {
            if state.provisioning_state.eq_ignore_ascii_case("deleting") {
                return Err(Error::Deleting {
                    resource: target.key(),
                });
            }
            let mut entries: Vec<(String, bool)> = Vec::new();
            let seen = |entries: &Vec<(String, bool)>, id: &str| {
                entries.iter().any(|(x, _)| x.eq_ignore_ascii_case(id))
            };
            for id in add.drain(..) {
                if state.contains(&id) {
                    outcome.unchanged.push(id);
                } else if !seen(&entries, &id) {
                    entries.push((id, true));
                }
            }
            for id in remove.drain(..) {
                if !state.contains(&id) {
                    outcome.unchanged.push(id);
                } else if !seen(&entries, &id) {
                    entries.push((id, false));
                }
            }
            if entries.is_empty() {
                break;
            }
            let rest = entries.split_off(per_patch.min(entries.len()));
            let mut chunk = entries;
            outcome.patches += 1;
            match self.patch(target, &state, &chunk).await {
                Ok(next) => {
                    for (id, is_add) in chunk.drain(..) {
                        if is_add {
                            outcome.added.push(id);
                        } else {
                            outcome.removed.push(id);
                        }
                    }
                    if rest.is_empty() {
                        state = next;
                        break;
                    }
                    // The next chunk needs the etag of the state it applies to.
                    state = match next.etag {
                        Some(_) => next,
                        None => self.get_identities(target).await?,
                    };
                }
                Err(Error::Arm { status: 412, .. }) => {
                    conflicts += 1;
                    if conflicts > MAX_PRECONDITION_RETRIES {
                        return Err(Error::Conflict {
                            resource: target.key(),
                            attempts: conflicts,
                        });
                    }
                    tracing::debug!(target = %target, "resource changed since it was read; reading it again");
                    state = self.get_identities(target).await?;
                }
                Err(Error::IdentitiesRefused { ids, code, message })
                    if ids
                        .iter()
                        .any(|r| chunk.iter().any(|(c, a)| *a && c.eq_ignore_ascii_case(r))) =>
                {
                    tracing::warn!(
                        target = %target, refused = ?ids, code = %code,
                        "ARM refused identities; sending the rest of the batch again"
                    );
                    chunk.retain(|(c, is_add)| {
                        let refused = *is_add && ids.iter().any(|r| c.eq_ignore_ascii_case(r));
                        if refused {
                            outcome.refused.push(RefusedIdentity {
                                id: c.clone(),
                                code: code.clone(),
                                message: message.clone(),
                            });
                        }
                        !refused
                    });
                }
                Err(e) => return Err(e),
            }
            // Whatever is left is classified again against the state now known.
            for (id, is_add) in chunk.into_iter().chain(rest) {
                if !outcome
                    .added
                    .iter()
                    .chain(&outcome.removed)
                    .any(|x| *x == id)
                {
                    if is_add {
                        add.push(id);
                    } else {
                        remove.push(id);
                    }
                }
            }
        }
        outcome.state = state;
        Ok(outcome)
    }

    /// One PATCH for `chunk` on top of `state`, followed to completion; returns the new state,
    /// with the etag ARM gave the changed resource when its answer carried one.
    async fn patch(
        &self,
        target: &ComputeRef,
        state: &IdentityState,
        chunk: &[(String, bool)],
    ) -> Result<IdentityState, Error> {
        let op = if target.is_scale_set() {
            "vmss_update"
        } else {
            "vm_update"
        };
        let mut after: Vec<String> = state
            .user_assigned
            .iter()
            .filter(|id| !chunk.iter().any(|(c, a)| !*a && c.eq_ignore_ascii_case(id)))
            .cloned()
            .collect();
        for (id, is_add) in chunk {
            if *is_add && !after.iter().any(|x| x.eq_ignore_ascii_case(id)) {
                after.push(id.clone());
            }
        }
        let identity_type = identity_type_for(state.has_system_assigned(), !after.is_empty());
        let body = patch_body(&identity_type, chunk, after.is_empty());
        let requested: Vec<String> = chunk
            .iter()
            .filter(|(_, a)| *a)
            .map(|(id, _)| id.clone())
            .collect();
        let got = self
            .send_with(
                op,
                target.subscription(),
                Method::Patch,
                self.resource_url(target),
                Some(body),
                state.etag.as_deref(),
            )
            .await?;
        let local = IdentityState {
            identity_type: identity_type.clone(),
            user_assigned: after,
            provisioning_state: "Succeeded".into(),
            etag: None,
        };
        match got.status {
            200..=202 => {}
            s => return Err(classify(op, target, s, &got.body, &requested)),
        }
        let async_op = header(&got.headers, "azure-asyncoperation");
        let location = header(&got.headers, "location");
        let body_state = parse_state(op, &got.body).ok();
        let terminal = body_state.as_ref().is_some_and(|s| {
            matches!(
                s.provisioning_state.to_ascii_lowercase().as_str(),
                "succeeded" | "failed" | "canceled" | ""
            )
        });
        if got.status == 200 && terminal {
            let s = body_state.expect("checked above");
            if s.provisioning_state.eq_ignore_ascii_case("failed") {
                return Err(Error::OperationFailed {
                    resource: target.key(),
                    status: "Failed".into(),
                    code: "ProvisioningFailed".into(),
                    message: "the resource reports provisioningState Failed".into(),
                });
            }
            return Ok(s);
        }
        // Once the operation has succeeded, the resource is the one the PATCH answer described
        // (its etag names the model this write produced), if that answer shows exactly the
        // identities this write leads to; otherwise the state computed here, with no etag, so
        // the next write reads first.
        let settled = |s: Option<IdentityState>| match s {
            Some(mut s) if s.etag.is_some() && same_ids(&s.user_assigned, &local.user_assigned) => {
                s.provisioning_state = "Succeeded".into();
                s
            }
            _ => local.clone(),
        };
        if let Some(url) = async_op {
            self.poll_async_operation(target, &url, &got.headers, &requested)
                .await?;
            return Ok(settled(body_state));
        }
        if let Some(url) = location {
            let last = self
                .poll_location(target, &url, &got.headers, &requested)
                .await?;
            return Ok(settled(last.or(body_state)));
        }
        if got.status == 200 {
            // 200 with a non-terminal state and nothing to poll: trust the body.
            return Ok(body_state.unwrap_or(local));
        }
        Err(Error::MalformedResponse {
            operation: op,
            problem: format!(
                "{} without Azure-AsyncOperation or Location header",
                got.status
            ),
        })
    }

    async fn poll_async_operation(
        &self,
        target: &ComputeRef,
        url: &str,
        first: &Headers,
        requested: &[String],
    ) -> Result<(), Error> {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct OpStatus {
            status: String,
            error: Option<ArmErrorBody>,
        }
        let url = url::Url::parse(url).map_err(|e| Error::MalformedResponse {
            operation: "lro_poll",
            problem: format!("Azure-AsyncOperation is not a URL: {e}"),
        })?;
        let deadline = Instant::now() + self.options.lro_timeout;
        let mut wait = self.poll_delay(first);
        loop {
            if Instant::now() + wait > deadline {
                return Err(Error::Timeout {
                    operation: "lro_poll",
                    after: self.options.lro_timeout,
                });
            }
            tokio::time::sleep(wait).await;
            let got = self
                .send(
                    "lro_poll",
                    target.subscription(),
                    Method::Get,
                    url.clone(),
                    None,
                )
                .await?;
            if got.status != 200 {
                return Err(classify(
                    "lro_poll", target, got.status, &got.body, requested,
                ));
            }
            let st: OpStatus =
                serde_json::from_slice(&got.body).map_err(|e| Error::MalformedResponse {
                    operation: "lro_poll",
                    problem: format!("operation status is not JSON: {e}"),
                })?;
            match st.status.to_ascii_lowercase().as_str() {
                "succeeded" => return Ok(()),
                "failed" | "canceled" | "cancelled" => {
                    let e = st.error.unwrap_or_default();
                    return Err(lro_failure(target, &st.status, e, requested));
                }
                _ => wait = self.poll_delay(&got.headers),
            }
        }
    }

    /// Follows a `Location` operation; the resource when the final answer carries it.
    async fn poll_location(
        &self,
        target: &ComputeRef,
        url: &str,
        first: &Headers,
        requested: &[String],
    ) -> Result<Option<IdentityState>, Error> {
        let url = url::Url::parse(url).map_err(|e| Error::MalformedResponse {
            operation: "lro_poll",
            problem: format!("Location is not a URL: {e}"),
        })?;
        let deadline = Instant::now() + self.options.lro_timeout;
        let mut wait = self.poll_delay(first);
        loop {
            if Instant::now() + wait > deadline {
                return Err(Error::Timeout {
                    operation: "lro_poll",
                    after: self.options.lro_timeout,
                });
            }
            tokio::time::sleep(wait).await;
            let got = self
                .send(
                    "lro_poll",
                    target.subscription(),
                    Method::Get,
                    url.clone(),
                    None,
                )
                .await?;
            match got.status {
                202 => wait = self.poll_delay(&got.headers),
                200 => return Ok(parse_state("lro_poll", &got.body).ok()),
                204 => return Ok(None),
                s => {
                    let e = parse_error_body(&got.body);
                    let err = lro_failure(target, "Failed", e, requested);
                    return Err(match err {
                        Error::OperationFailed { .. } if s >= 500 => {
                            classify("lro_poll", target, s, &got.body, requested)
                        }
                        other => other,
                    });
                }
            }
        }
    }

    /// The wait before the next poll of an operation: what the last answer announced
    /// (`retry-after-ms`, `x-ms-retry-after-ms` or `Retry-After`, as Azure SDKs read them),
    /// else [`ArmOptions::lro_poll_interval`] (5 s, the original's polling delay); never less
    /// than [`MIN_POLL_INTERVAL`], so an announced 0 does not make a busy loop. The whole
    /// wait is bounded by [`ArmOptions::lro_timeout`].
    fn poll_delay(&self, headers: &Headers) -> Duration {
        poll_delay(headers, self.options.lro_poll_interval)
    }

    /// Sends one request through the gate, retrying 429 (after its window), 5xx and timeouts.
    async fn send(
        &self,
        operation: &'static str,
        subscription: &str,
        method: Method,
        url: url::Url,
        body: Option<Value>,
    ) -> Result<Received, Error> {
        self.send_with(operation, subscription, method, url, body, None)
            .await
    }

    /// [`Self::send`] with an `If-Match` precondition.
    async fn send_with(
        &self,
        operation: &'static str,
        subscription: &str,
        method: Method,
        url: url::Url,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<Received, Error> {
        let mut failures = 0u32;
        let mut throttled = 0u32;
        loop {
            self.gate.wait_open(subscription).await;
            let mut request = Request::new(url.clone(), method);
            request.insert_header(HeaderName::from_static("accept"), "application/json");
            if let Some(etag) = if_match {
                request.insert_header(HeaderName::from_static("if-match"), etag.to_string());
            }
            if let Some(b) = &body {
                request.insert_header(HeaderName::from_static("content-type"), "application/json");
                request.set_body(serde_json::to_vec(b).expect("json value serializes"));
            }
            let started = Instant::now();
            let result = tokio::time::timeout(self.options.request_timeout, async {
                let ctx = Context::new();
                self.pipeline
                    .send(
                        &ctx,
                        &mut request,
                        Some(PipelineSendOptions {
                            skip_checks: true,
                            ..Default::default()
                        }),
                    )
                    .await
            })
            .await;
            let elapsed = started.elapsed();
            let outcome = match result {
                Err(_) => Err(Error::Timeout {
                    operation,
                    after: self.options.request_timeout,
                }),
                Ok(Err(source)) => Err(Error::Transport { operation, source }),
                Ok(Ok(raw)) => {
                    let (status, headers, body) = raw.deconstruct();
                    Ok(Received {
                        status: u16::from(status),
                        headers,
                        body: body.into(),
                    })
                }
            };
            if let Some(observe) = &self.observer {
                observe(&CallRecord {
                    operation,
                    status: outcome.as_ref().ok().map(|r| r.status),
                    elapsed,
                });
            }
            match outcome {
                Ok(r) if r.status == 429 => {
                    let window =
                        retry_after(&r.headers).unwrap_or(self.options.default_retry_after);
                    self.gate.close_for(subscription, window);
                    throttled += 1;
                    tracing::warn!(operation, subscription, ?window, "ARM throttled (429)");
                    if throttled > self.options.max_throttled {
                        return Err(Error::Throttled {
                            operation,
                            retry_after: window,
                        });
                    }
                }
                Ok(r) if r.status >= 500 && failures + 1 < self.options.max_attempts => {
                    failures += 1;
                    let delay = retry_after(&r.headers)
                        .unwrap_or_else(|| retry_delay(&self.options, failures, rand::random()));
                    tracing::debug!(
                        operation,
                        status = r.status,
                        ?delay,
                        "ARM server error; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(Error::Timeout { .. } | Error::Transport { .. })
                    if failures + 1 < self.options.max_attempts =>
                {
                    failures += 1;
                    let delay = retry_delay(&self.options, failures, rand::random());
                    tracing::debug!(operation, ?delay, "ARM call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }
}

/// The wait before retry `failures` (1 is the first) of a 5xx or timeout without a
/// `Retry-After`: [`crate::backoff`]'s doubling from `backoff_base` up to `backoff_max`,
/// jittered by `jitter` in `[0, 1)` so many assigners do not retry in lockstep.
fn retry_delay(options: &ArmOptions, failures: u32, jitter: f64) -> Duration {
    backoff::jittered(
        backoff::exponential(options.backoff_base, options.backoff_max, failures),
        jitter,
    )
}

fn header(headers: &Headers, name: &'static str) -> Option<String> {
    headers
        .get_optional_str(&HeaderName::from_static(name))
        .map(str::to_string)
}

/// Shortest wait between two polls of one operation, whatever the service announces.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

fn poll_delay(headers: &Headers, default: Duration) -> Duration {
    retry_after(headers)
        .unwrap_or(default)
        .max(MIN_POLL_INTERVAL)
}

/// ARM's wait hints: `Retry-After` (seconds or date) or the millisecond variants.
fn retry_after(headers: &Headers) -> Option<Duration> {
    for name in ["retry-after-ms", "x-ms-retry-after-ms"] {
        if let Some(ms) = header(headers, name).and_then(|v| v.trim().parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms).min(super::throttle::MAX_RETRY_AFTER));
        }
    }
    header(headers, "retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()))
}

/// The same identities, ids compared case-insensitively.
fn same_ids(a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| b.iter().any(|y| x.eq_ignore_ascii_case(y)))
}

/// `None`, `SystemAssigned`, `UserAssigned` or `SystemAssigned, UserAssigned`.
#[must_use]
pub fn identity_type_for(system: bool, user: bool) -> String {
    match (system, user) {
        (false, false) => "None",
        (true, false) => "SystemAssigned",
        (false, true) => "UserAssigned",
        (true, true) => "SystemAssigned, UserAssigned",
    }
    .to_string()
}

/// The PATCH body for one chunk. When no user-assigned identity remains, the type alone
/// removes them all (ARM rejects `UserAssigned` with an empty map).
fn patch_body(identity_type: &str, chunk: &[(String, bool)], none_left: bool) -> Value {
    if none_left {
        return json!({ "identity": { "type": identity_type } });
    }
    let mut map = Map::new();
    for (id, is_add) in chunk {
        map.insert(id.clone(), if *is_add { json!({}) } else { Value::Null });
    }
    json!({ "identity": { "type": identity_type, "userAssignedIdentities": map } })
}

fn parse_state(op: &'static str, body: &[u8]) -> Result<IdentityState, Error> {
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Identity {
        #[serde(rename = "type")]
        kind: Option<String>,
        user_assigned_identities: Option<Map<String, Value>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Props {
        provisioning_state: Option<String>,
    }
    #[derive(Deserialize)]
    struct Resource {
        #[serde(default)]
        identity: Option<Identity>,
        #[serde(default)]
        properties: Option<Props>,
        #[serde(default)]
        etag: Option<String>,
    }
    let r: Resource = serde_json::from_slice(body).map_err(|e| Error::MalformedResponse {
        operation: op,
        problem: format!("resource is not JSON of the documented shape: {e}"),
    })?;
    let identity = r.identity.unwrap_or_default();
    Ok(IdentityState {
        identity_type: identity.kind.unwrap_or_else(|| "None".into()),
        user_assigned: identity
            .user_assigned_identities
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
        provisioning_state: r
            .properties
            .and_then(|p| p.provisioning_state)
            .unwrap_or_default(),
        etag: r.etag.filter(|e| !e.is_empty()),
    })
}

/// ARM's `{"error":{"code","message","details":[...]}}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ArmErrorBody {
    /// Error code.
    pub code: String,
    /// Error message.
    pub message: String,
    /// Nested errors.
    pub details: Vec<ArmErrorBody>,
}

impl ArmErrorBody {
    fn all_text(&self) -> String {
        let mut s = self.message.clone();
        for d in &self.details {
            s.push(' ');
            s.push_str(&d.all_text());
        }
        s
    }
}

/// Parses an ARM error body; a body of another shape becomes code `Unknown` with its start.
#[must_use]
pub fn parse_error_body(body: &[u8]) -> ArmErrorBody {
    #[derive(Deserialize)]
    struct Envelope {
        error: ArmErrorBody,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(e) if !e.error.code.is_empty() => e.error,
        _ => ArmErrorBody {
            code: "Unknown".into(),
            message: String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
            details: Vec::new(),
        },
    }
}

/// Which of `candidates` the text names, as whole ids (so `id-1` does not match `id-10`).
#[must_use]
pub fn ids_named_in(text: &str, candidates: &[String]) -> Vec<String> {
    let hay = text.to_ascii_lowercase();
    candidates
        .iter()
        .filter(|c| {
            let needle = c.to_ascii_lowercase();
            if needle.is_empty() {
                return false;
            }
            hay.match_indices(&needle).any(|(i, _)| {
                let next = hay[i + needle.len()..].chars().next();
                !next.is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            })
        })
        .cloned()
        .collect()
}

/// Turns an ARM error response into the most precise [`Error`].
fn classify(
    op: &'static str,
    target: &ComputeRef,
    status: u16,
    body: &[u8],
    requested: &[String],
) -> Error {
    let e = parse_error_body(body);
    let named = ids_named_in(&e.all_text(), requested);
    let identity_code = matches!(
        e.code.as_str(),
        "LinkedAuthorizationFailed" | "FailedIdentityOperation" | "InvalidIdentityValues"
    );
    if (400..500).contains(&status) && status != 429 && (identity_code || !named.is_empty()) {
        return Error::IdentitiesRefused {
            ids: named,
            code: e.code,
            message: e.message,
        };
    }
    if status == 404 {
        return Error::NotFound {
            resource: target.key(),
            code: e.code,
            message: e.message,
        };
    }
    Error::Arm {
        operation: op,
        status,
        code: e.code,
        message: e.message,
    }
}

fn lro_failure(target: &ComputeRef, status: &str, e: ArmErrorBody, requested: &[String]) -> Error {
    let named = ids_named_in(&e.all_text(), requested);
    if !named.is_empty() {
        return Error::IdentitiesRefused {
            ids: named,
            code: e.code,
            message: e.message,
        };
    }
    Error::OperationFailed {
        resource: target.key(),
        status: status.to_string(),
        code: e.code,
        message: e.message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> Headers {
        let mut h = Headers::new();
        for (k, v) in pairs {
            h.insert(HeaderName::from_static(k), (*v).to_string());
        }
        h
    }

    #[test]
    fn polls_wait_what_the_operation_announces_else_the_interval_and_never_spin() {
        let default = ArmOptions::default().lro_poll_interval;
        assert_eq!(
            default,
            Duration::from_secs(5),
            "the original's polling delay"
        );
        assert_eq!(poll_delay(&headers(&[]), default), default);
        assert_eq!(
            poll_delay(&headers(&[("retry-after", "15")]), default),
            Duration::from_secs(15)
        );
        // The millisecond form wins over the rounded-up seconds beside it.
        assert_eq!(
            poll_delay(
                &headers(&[("retry-after", "1"), ("retry-after-ms", "50")]),
                default
            ),
            Duration::from_millis(50)
        );
        assert_eq!(
            poll_delay(&headers(&[("retry-after", "0")]), default),
            MIN_POLL_INTERVAL
        );
        assert_eq!(
            poll_delay(&headers(&[("retry-after", "86400")]), default),
            super::super::throttle::MAX_RETRY_AFTER
        );
    }

    #[test]
    fn retry_delays_double_from_the_base_jitter_down_and_never_pass_the_cap() {
        let options = ArmOptions::default(); // 1 s doubling, at most 30 s
        let s = Duration::from_secs(1);
        let steps: Vec<Duration> = (1..=7)
            .map(|n| retry_delay(&options, n, 0.999_999))
            .collect();
        for (n, (got, full)) in steps.iter().zip([1u64, 2, 4, 8, 16, 30, 30]).enumerate() {
            let full = Duration::from_secs(full);
            assert!(
                *got <= full && *got > full.mul_f64(0.99),
                "retry {}: {got:?}",
                n + 1
            );
        }
        assert_eq!(retry_delay(&options, 1, 0.0), s / 2);
        assert_eq!(retry_delay(&options, 3, 0.5), Duration::from_secs(3));
        assert_eq!(
            retry_delay(&options, u32::MAX, 1.0),
            options.backoff_max,
            "however many failures, the cap holds"
        );
    }

    fn id(n: &str) -> String {
        format!(
            "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{n}"
        )
    }

    #[test]
    fn refused_ids_are_whole_ids_named_by_the_message() {
        let body = format!(
            r#"{{"error":{{"code":"LinkedAuthorizationFailed","message":"The client 'x' has permission to perform action 'Microsoft.Compute/virtualMachineScaleSets/write' on scope 'vmss'; however, it does not have permission to perform action 'Microsoft.ManagedIdentity/userAssignedIdentities/assign/action' on the linked scope(s) '{}' or the linked scope(s) are invalid."}}}}"#,
            id("ID-10").to_uppercase()
        );
        let t = ComputeRef::scale_set("s", "rg", "v");
        let err = classify(
            "vmss_update",
            &t,
            403,
            body.as_bytes(),
            &[id("id-1"), id("id-10")],
        );
        match err {
            Error::IdentitiesRefused { ids, code, .. } => {
                assert_eq!(ids, vec![id("id-10")]);
                assert_eq!(code, "LinkedAuthorizationFailed");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nested_details_and_other_errors_are_classified() {
        let t = ComputeRef::vm("s", "rg", "v");
        let body = format!(
            r#"{{"error":{{"code":"FailedIdentityOperation","message":"Identity operation failed","details":[{{"code":"BadRequest","message":"Resource '{}' was not found."}}]}}}}"#,
            id("gone")
        );
        assert!(matches!(
            classify("vm_update", &t, 400, body.as_bytes(), &[id("gone"), id("ok")]),
            Error::IdentitiesRefused { ids, .. } if ids == vec![id("gone")]
        ));
        let nf =
            br#"{"error":{"code":"ResourceNotFound","message":"The Resource 'x' was not found."}}"#;
        assert!(matches!(
            classify("vm_get", &t, 404, nf, &[]),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            classify("vm_get", &t, 409, b"<html>oops</html>", &[]),
            Error::Arm { status: 409, code, .. } if code == "Unknown"
        ));
    }

    #[test]
    fn patch_bodies_are_deltas_with_the_resulting_type() {
        let chunk = vec![(id("a"), true), (id("b"), false)];
        let body = patch_body(&identity_type_for(true, true), &chunk, false);
        assert_eq!(body["identity"]["type"], "SystemAssigned, UserAssigned");
        assert_eq!(
            body["identity"]["userAssignedIdentities"][id("a")],
            json!({})
        );
        assert_eq!(
            body["identity"]["userAssignedIdentities"][id("b")],
            Value::Null
        );
        let last = patch_body(&identity_type_for(false, false), &[(id("b"), false)], true);
        assert_eq!(last, json!({"identity": {"type": "None"}}));
    }

    #[test]
    fn state_is_read_from_arm_shapes() {
        let s = parse_state(
            "vmss_get",
            format!(
                r#"{{"identity":{{"type":"SystemAssigned, UserAssigned","principalId":"p","userAssignedIdentities":{{"{}":{{"principalId":"p","clientId":"c"}}}}}},"properties":{{"provisioningState":"Deleting"}}}}"#,
                id("a")
            )
            .as_bytes(),
        )
        .unwrap();
        assert!(s.has_system_assigned());
        assert!(s.contains(&id("A")));
        assert_eq!(s.provisioning_state, "Deleting");
        let none = parse_state("vm_get", br#"{"properties":{}}"#).unwrap();
        assert_eq!(none.identity_type, "None");
        assert!(parse_state("vm_get", b"[1,2]").is_err());
    }
}
