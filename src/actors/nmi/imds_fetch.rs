//! NMI's use of its node's metadata service: a bounded number of token fetches in flight, a
//! bounded line for the rest, and retries of the answers Azure says to retry, so that a burst of
//! new pods on one node is spread over the service's limits instead of drawing 429s that reach
//! the pods.
//!
//! Azure throttles the metadata service's identity endpoint per VM (documented: 20 requests per
//! second and 5 concurrent; 429 beyond; the simulator's `imds_limits` module quotes the rule), and
//! NMI is one client among the node's host-network agents. So NMI keeps at most
//! `--max-metadata-fetches` (default 4, one under the limit) of its own fetches in flight, and
//! sends at most `--max-metadata-fetches-per-second` (default 16, four fifths of the limit) in
//! any one-second window; a fetch holds its place only while its request is out (or is about to
//! leave at its paced time), never during a backoff. Pacing is what keeps a burst from drawing
//! 429s at all: unpaced, fifty new identities on one node at four at a time outrun the 20/s limit,
//! the refused fetches come back after 1–2 s, those refused again after 2–4 s more, and the last
//! pods wait several seconds longer than the 50 / 16 ≈ 3 s pacing takes
//! (`tests/imds_limits.rs` has both).
//!
//! Retries follow Azure's guidance for the endpoint: 404, 408, 410, 429 and 5xx answers and
//! transport failures are retried with exponential backoff, 2 s doubling (the documented 2 s
//! delta), so unjittered attempts start at 0, 2, 6, 14 and 30 s as in the guidance's table, at
//! most five attempts in all. Each step is [`jittered`] to between half and all of itself so
//! nodes that failed together do not retry in lockstep (and a 5xx is never retried sooner than
//! the documented second). The original's client (go-autorest `adal`) retried the same answers,
//! five attempts, waiting 2, 6, 14 and 30 s between them without jitter. Every retry ends inside
//! the token fetch timeout, with a reserve ([`retry_deadline`]) so the caller gets the service's
//! last answer (the original's 403 with its text) rather than NMI's own timeout. No
//! `Retry-After` is read: Azure documents none for this endpoint.
//!
//! Fetches waiting for a place are bounded like waiting requests (hostile pods): at most
//! `--max-waiters` on the node and `--max-waiters-per-pod` per identity (a pod can only reach its
//! own identities, so it can only fill its own identities' line); beyond, the fetch fails at once
//! ([`Error::LineFull`], 503 to the pod, counted as `imds_fetch_line` in
//! `aadpodidentity_nmi_rejected_requests_total`). A freed place goes to the next identity in
//! turn (round robin over the identities waiting, first come first served within one), so a pod
//! asking for tokens for ever new resources of its own identity delays another pod's first fetch
//! by at most one fetch per identity ahead of it, not by its whole line. Service principals and
//! federated identities go to Azure AD, not the metadata service, and pass through untouched.

use super::metrics::{NmiMetrics, Rejection};
use super::source::{SourceError, TokenRequest, TokenSource, TokenTarget, UpstreamToken};
use crate::backoff::{exponential, jittered};
use async_trait::async_trait;
use prometheus::{IntCounterVec, IntGauge, Opts};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// `--max-metadata-fetches`' default: one under Azure's 5 concurrent identity requests per VM,
/// leaving a place for the node's other agents.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;

/// `--max-metadata-fetches-per-second`' default: four fifths of Azure's 20 identity requests per
/// second per VM, leaving the rest to the node's other agents.
pub const DEFAULT_MAX_PER_SECOND: usize = 16;

const PACE_WINDOW: Duration = Duration::from_secs(1);

/// Attempts per fetch at most (Azure's guidance and the original's client: 5).
pub const MAX_ATTEMPTS: u32 = 5;

/// Delay before the first retry, doubled per further retry (before jitter).
pub const FIRST_RETRY: Duration = Duration::from_secs(2);

/// Longest single backoff step (Azure's guidance: 60 s).
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// The limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImdsFetchSettings {
    /// Metadata-service fetches in flight at once (`--max-metadata-fetches`); 0: unbounded.
    pub max_in_flight: usize,
    /// Metadata-service fetches sent in any one-second window
    /// (`--max-metadata-fetches-per-second`); 0: unpaced.
    pub max_per_second: usize,
    /// Fetches that may wait for a place on the node (`--max-waiters`).
    pub max_waiting: usize,
    /// Fetches that may wait for a place per identity (`--max-waiters-per-pod`).
    pub max_waiting_per_identity: usize,
    /// The token fetch timeout: retries end inside it.
    pub fetch_timeout: Duration,
}

/// Why a metadata-service fetch was not even attempted.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The line for a place is full (node-wide or for this identity).
    #[error(
        "too many metadata-service token fetches are waiting ({waiting} for {scope}; the node sends at most {in_flight} at once)"
    )]
    LineFull {
        /// Fetches waiting in that scope.
        waiting: usize,
        /// `this node` or `identity <id>`.
        scope: String,
        /// `--max-metadata-fetches`.
        in_flight: usize,
    },
    /// No place became free before the retry deadline.
    #[error(
        "no metadata-service fetch place became free within {waited:?} (the node sends at most {in_flight} at once)"
    )]
    NoPlace {
        /// How long the fetch waited.
        waited: Duration,
        /// `--max-metadata-fetches`.
        in_flight: usize,
    },
}

impl From<Error> for SourceError {
    fn from(e: Error) -> Self {
        // The original answers 503 when the token service cannot be reached.
        SourceError::Unreachable(e.to_string())
    }
}

/// Which metadata-service answers are retried: Azure's guidance (404 while the endpoint updates,
/// 410 likewise, 429 throttled, 5xx transient) and 408 (a timeout, also in the guidance).
#[must_use]
pub fn is_retryable(status: u16) -> bool {
    matches!(status, 404 | 408 | 410 | 429 | 500..=599)
}

/// When retries must be over for a fetch started at `started`: the fetch timeout minus a tenth of
/// it (at most 1 s), so the last answer is returned before the caller's timeout fires.
#[must_use]
pub fn retry_deadline(started: Instant, fetch_timeout: Duration) -> Instant {
    started + fetch_timeout - (fetch_timeout / 10).min(Duration::from_secs(1))
}

/// The delay after failed attempt `attempt` (1-based), jittered by `jitter` in `[0, 1)`.
#[must_use]
pub fn retry_delay(attempt: u32, jitter: f64) -> Duration {
    jittered(exponential(FIRST_RETRY, MAX_RETRY, attempt), jitter)
}

/// Metric handles (registered in the process registry, labelled with the node).
#[derive(Clone, Debug)]
struct FetchMetrics {
    /// `aadpodidentity_nmi_imds_answers_total{status}` for statuses worth watching: `429`,
    /// `404`, `410`, `5xx`, `unreachable`.
    answers: IntCounterVec,
    /// `aadpodidentity_nmi_imds_retries_total{reason}`.
    retries: IntCounterVec,
    /// `aadpodidentity_nmi_imds_fetches_in_flight`.
    in_flight: IntGauge,
    /// `aadpodidentity_nmi_imds_fetches_waiting`.
    waiting: IntGauge,
    nmi: NmiMetrics,
}

/// A reason label for an answer worth counting, or `None` for a success or a plain refusal.
fn reason(outcome: &Result<UpstreamToken, SourceError>) -> Option<&'static str> {
    match outcome {
        Ok(up) => match up.status {
            429 => Some("429"),
            404 => Some("404"),
            408 => Some("408"),
            410 => Some("410"),
            500..=599 => Some("5xx"),
            _ => None,
        },
        Err(SourceError::Unreachable(_)) => Some("unreachable"),
        Err(SourceError::Refused(_)) => None,
    }
}

/// A [`TokenSource`] that bounds and retries the metadata-service fetches of another.
pub struct ImdsFetch {
    inner: Arc<dyn TokenSource>,
    settings: ImdsFetchSettings,
    places: Option<Arc<Places>>,
    /// Send times handed out within the last pacing window (some may lie ahead), oldest first.
    sends: Mutex<std::collections::VecDeque<Instant>>,
    /// Fetches waiting for a place, per identity; the total under the key `""`.
    waiting: Mutex<HashMap<String, usize>>,
    jitter: Arc<dyn Fn() -> f64 + Send + Sync>,
    metrics: Option<FetchMetrics>,
}

impl ImdsFetch {
    /// Bounds and retries `inner`'s metadata-service fetches.
    #[must_use]
    pub fn new(inner: Arc<dyn TokenSource>, settings: ImdsFetchSettings) -> Self {
        Self {
            inner,
            places: (settings.max_in_flight > 0).then(|| Places::new(settings.max_in_flight)),
            settings,
            sends: Mutex::new(std::collections::VecDeque::new()),
            waiting: Mutex::new(HashMap::new()),
            jitter: Arc::new(rand::random::<f64>),
            metrics: None,
        }
    }

    /// Jitter from `f` instead of random numbers (deterministic tests).
    #[must_use]
    pub fn with_jitter(mut self, f: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.jitter = Arc::new(f);
        self
    }

    /// Registers and records this node's metrics.
    ///
    /// # Errors
    /// When they are already registered for this node.
    pub fn with_metrics(
        mut self,
        shared: &crate::metrics::Metrics,
        nmi: NmiMetrics,
        node: &str,
    ) -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .namespace("aadpodidentity")
                .const_label("node", node)
        };
        let answers = IntCounterVec::new(
            opts(
                "nmi_imds_answers_total",
                "Metadata-service token answers NMI received that call for a retry (429 throttled, 404, 408, 410, 5xx, unreachable), retried or not",
            ),
            &["status"],
        )?;
        let retries = IntCounterVec::new(
            opts(
                "nmi_imds_retries_total",
                "Metadata-service token fetches NMI retried after backing off, by the answer retried",
            ),
            &["reason"],
        )?;
        let in_flight = IntGauge::with_opts(opts(
            "nmi_imds_fetches_in_flight",
            "Metadata-service token requests NMI has out now",
        ))?;
        let waiting = IntGauge::with_opts(opts(
            "nmi_imds_fetches_waiting",
            "Metadata-service token fetches waiting for one of NMI's places (--max-metadata-fetches)",
        ))?;
        let registry = shared.registry();
        registry.register(Box::new(answers.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(waiting.clone()))?;
        self.metrics = Some(FetchMetrics {
            answers,
            retries,
            in_flight,
            waiting,
            nmi,
        });
        Ok(self)
    }

    /// Takes a place (waiting in the bounded line until `deadline`), then waits for its paced
    /// send time.
    async fn place(
        &self,
        identity: &str,
        started: Instant,
        deadline: Instant,
    ) -> Result<Option<Place>, Error> {
        let permit = self.in_flight_place(identity, started, deadline).await?;
        let send_at = self.next_send_time(Instant::now());
        if send_at > deadline {
            return Err(Error::NoPlace {
                waited: started.elapsed(),
                in_flight: self.settings.max_in_flight,
            });
        }
        // A send time that is already due goes at once: a timer, even an elapsed one, is
        // registered with the runtime's wheel and fires on its next millisecond tick, which
        // would add a millisecond and a wake-up to every fetch of a burst.
        if send_at > Instant::now() {
            tokio::time::sleep_until(send_at).await;
        }
        Ok(permit)
    }

    /// Reserves the earliest time at or after `now` that keeps sends within
    /// `max_per_second` in every one-second window.
    fn next_send_time(&self, now: Instant) -> Instant {
        let n = self.settings.max_per_second;
        if n == 0 {
            return now;
        }
        let mut sends = self
            .sends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while sends
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= PACE_WINDOW)
        {
            sends.pop_front();
        }
        let mut at = now;
        if sends.len() >= n {
            at = at.max(sends[sends.len() - n] + PACE_WINDOW);
        }
        if let Some(last) = sends.back() {
            at = at.max(*last);
        }
        sends.push_back(at);
        at
    }

    /// Takes one of the `max_in_flight` places, waiting in the bounded line until `deadline`.
    async fn in_flight_place(
        &self,
        identity: &str,
        started: Instant,
        deadline: Instant,
    ) -> Result<Option<Place>, Error> {
        let Some(places) = &self.places else {
            return Ok(None);
        };
        if let Some(place) = places.try_take() {
            return Ok(Some(place));
        }
        let _line = self.join_line(identity)?;
        let waiter = match places.take_or_queue(identity) {
            Ok(place) => return Ok(Some(place)),
            Err(waiter) => waiter,
        };
        tokio::time::timeout_at(deadline, waiter.wait())
            .await
            .map(Some)
            .map_err(|_| Error::NoPlace {
                waited: started.elapsed(),
                in_flight: self.settings.max_in_flight,
            })
    }

    fn join_line(&self, identity: &str) -> Result<InLine<'_>, Error> {
        let mut w = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let total = w.get("").copied().unwrap_or(0);
        let mine = w.get(identity).copied().unwrap_or(0);
        let full = if total >= self.settings.max_waiting {
            Some((total, "this node".to_string()))
        } else if mine >= self.settings.max_waiting_per_identity {
            Some((mine, format!("identity {identity}")))
        } else {
            None
        };
        if let Some((waiting, scope)) = full {
            if let Some(m) = &self.metrics {
                m.nmi.reject(Rejection::ImdsFetchLine);
            }
            return Err(Error::LineFull {
                waiting,
                scope,
                in_flight: self.settings.max_in_flight,
            });
        }
        *w.entry(String::new()).or_default() += 1;
        *w.entry(identity.to_string()).or_default() += 1;
        if let Some(m) = &self.metrics {
            m.waiting.inc();
        }
        Ok(InLine {
            owner: self,
            identity: identity.to_string(),
        })
    }

    /// One attempt under a place: `Err` when no place was had, else the source's outcome.
    async fn attempt(
        &self,
        request: &TokenRequest,
        identity: &str,
        started: Instant,
        deadline: Instant,
    ) -> Result<Result<UpstreamToken, SourceError>, Error> {
        let _place = self.place(identity, started, deadline).await?;
        let _out = self.metrics.as_ref().map(|m| GaugeGuard::inc(&m.in_flight));
        Ok(self.inner.fetch(request).await)
    }
}

/// The `max_in_flight` places, handed out fairly: a freed place goes to the identity that has
/// waited its turn longest among those waiting (round robin over identities, first come first
/// served within one), so one pod asking for many resources of its own identity cannot make
/// every other pod's first fetch wait behind all of its own.
struct Places {
    state: Mutex<PlacesState>,
}

#[derive(Default)]
struct PlacesState {
    free: usize,
    /// Identities with waiters, in the order their turn comes.
    turns: VecDeque<String>,
    waiters: HashMap<String, VecDeque<oneshot::Sender<()>>>,
}

impl Places {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(PlacesState {
                free: n,
                ..PlacesState::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PlacesState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A free place now, if there is one.
    fn try_take(self: &Arc<Self>) -> Option<Place> {
        let mut st = self.lock();
        (st.free > 0).then(|| {
            st.free -= 1;
            Place(Arc::clone(self))
        })
    }

    /// A free place now, or a ticket in `identity`'s queue.
    fn take_or_queue(self: &Arc<Self>, identity: &str) -> Result<Place, Waiter> {
        let mut st = self.lock();
        if st.free > 0 {
            st.free -= 1;
            return Ok(Place(Arc::clone(self)));
        }
        let (tx, rx) = oneshot::channel();
        let st = &mut *st;
        let queue = st.waiters.entry(identity.to_string()).or_default();
        if queue.is_empty() {
            st.turns.push_back(identity.to_string());
        }
        queue.push_back(tx);
        Err(Waiter {
            places: Arc::clone(self),
            identity: identity.to_string(),
            rx: Some(rx),
        })
    }

    /// Drops the tickets of `identity`'s waiters that gave up, so abandoned fetches leave
    /// nothing behind.
    fn forget_closed(&self, identity: &str) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(queue) = st.waiters.get_mut(identity) else {
            return;
        };
        queue.retain(|tx| !tx.is_closed());
        if queue.is_empty() {
            st.waiters.remove(identity);
            st.turns.retain(|i| i != identity);
        }
    }

    /// A place was given back: to the next identity's first live waiter, else freed.
    fn release(&self) {
        let mut st = self.lock();
        while let Some(identity) = st.turns.pop_front() {
            let Some(queue) = st.waiters.get_mut(&identity) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                st.waiters.remove(&identity);
            } else {
                st.turns.push_back(identity);
            }
            // A waiter that gave up (timed out, cancelled) has dropped its receiver.
            if next.is_some_and(|tx| tx.send(()).is_ok()) {
                return;
            }
        }
        st.free += 1;
    }
}

/// One of the places; given back when dropped.
struct Place(Arc<Places>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A ticket for a place.
struct Waiter {
    places: Arc<Places>,
    identity: String,
    rx: Option<oneshot::Receiver<()>>,
}

impl Waiter {
    async fn wait(mut self) -> Place {
        let rx = self.rx.as_mut().expect("present until taken");
        // The sender is dropped only after a send: `release` sends or skips a closed waiter.
        let _ = rx.await;
        self.rx = None;
        Place(Arc::clone(&self.places))
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Gave up: a place handed over in the meantime goes back.
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.places.release();
            } else {
                self.places.forget_closed(&self.identity);
            }
        }
    }
}

/// A fetch's place in the line; leaves it when dropped.
struct InLine<'a> {
    owner: &'a ImdsFetch,
    identity: String,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut w = self
            .owner
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for key in ["", self.identity.as_str()] {
            if let Some(n) = w.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    w.remove(key);
                }
            }
        }
        if let Some(m) = &self.owner.metrics {
            m.waiting.dec();
        }
    }
}

struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn inc(g: &IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The identity a metadata-service fetch is for (the key of its line), or `None` for targets
/// served by Azure AD.
fn metadata_identity(target: &TokenTarget) -> Option<String> {
    match target {
        TokenTarget::Node { client_id } => Some(format!(
            "node/{}",
            client_id.as_deref().unwrap_or("").to_ascii_lowercase()
        )),
        TokenTarget::UserAssigned {
            client_id,
            resource_id,
        } => Some(if client_id.is_empty() {
            resource_id.to_ascii_lowercase()
        } else {
            client_id.to_ascii_lowercase()
        }),
        TokenTarget::ServicePrincipal { .. } | TokenTarget::Federated { .. } => None,
    }
}

#[async_trait]
impl TokenSource for ImdsFetch {
    async fn fetch(&self, request: &TokenRequest) -> Result<UpstreamToken, SourceError> {
        let Some(identity) = metadata_identity(&request.target) else {
            return self.inner.fetch(request).await;
        };
        let started = Instant::now();
        let deadline = retry_deadline(started, self.settings.fetch_timeout);
        let mut attempt = 1;
        let mut last = self.attempt(request, &identity, started, deadline).await?;
        loop {
            let Some(why) = reason(&last) else {
                return last;
            };
            if let Some(m) = &self.metrics {
                m.answers.with_label_values(&[why]).inc();
            }
            let delay = retry_delay(attempt, (self.jitter)());
            if attempt >= MAX_ATTEMPTS || Instant::now() + delay >= deadline {
                tracing::debug!(
                    %identity,
                    resource = %request.resource,
                    answer = why,
                    attempts = attempt,
                    "metadata service still refused; retries over"
                );
                return last;
            }
            tracing::debug!(
                %identity,
                resource = %request.resource,
                answer = why,
                attempt,
                delay_ms = delay.as_millis(),
                "metadata service answered a retryable status; backing off"
            );
            if let Some(m) = &self.metrics {
                m.retries.with_label_values(&[why]).inc();
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
            match tokio::time::timeout_at(
                deadline,
                self.attempt(request, &identity, started, deadline),
            )
            .await
            {
                Ok(Ok(outcome)) => last = outcome,
                // A retry that found no place, or could not finish, in time: the previous
                // answer stands.
                Ok(Err(_)) | Err(_) => return last,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Semaphore;

    /// Answers from a script (the last answer repeats), recording when each call came and how
    /// many were out at once; with a `gate`, each call waits for one permit of it.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<u16>>,
        calls: Mutex<Vec<(String, Instant)>>,
        out: AtomicUsize,
        peak: AtomicUsize,
        gate: Option<Arc<Semaphore>>,
    }

    impl Scripted {
        fn new(answers: &[u16]) -> Arc<Self> {
            Arc::new(Self {
                answers: Mutex::new(answers.iter().copied().collect()),
                ..Self::default()
            })
        }

        fn held(gate: &Arc<Semaphore>) -> Arc<Self> {
            Arc::new(Self {
                answers: Mutex::new([200].into()),
                gate: Some(Arc::clone(gate)),
                ..Self::default()
            })
        }

        fn call_offsets(&self, from: Instant) -> Vec<u64> {
            let calls = self.calls.lock().unwrap();
            calls.iter().map(|(_, t)| (*t - from).as_secs()).collect()
        }
    }

    #[async_trait]
    impl TokenSource for Scripted {
        async fn fetch(&self, r: &TokenRequest) -> Result<UpstreamToken, SourceError> {
            self.calls
                .lock()
                .unwrap()
                .push((format!("{:?}", r.target), Instant::now()));
            let n = self.out.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(n, Ordering::SeqCst);
            if let Some(g) = &self.gate {
                g.acquire().await.unwrap().forget();
            }
            self.out.fetch_sub(1, Ordering::SeqCst);
            let status = {
                let mut a = self.answers.lock().unwrap();
                if a.len() > 1 {
                    a.pop_front().unwrap()
                } else {
                    a[0]
                }
            };
            Ok(UpstreamToken {
                status,
                body: bytes::Bytes::from_static(br#"{"error":"e","error_description":"d"}"#),
            })
        }
    }

    fn settings(max_in_flight: usize) -> ImdsFetchSettings {
        ImdsFetchSettings {
            max_in_flight,
            max_per_second: 0,
            max_waiting: 100,
            max_waiting_per_identity: 100,
            fetch_timeout: Duration::from_secs(30),
        }
    }

    fn for_identity(client_id: &str) -> TokenRequest {
        TokenRequest {
            target: TokenTarget::UserAssigned {
                client_id: client_id.into(),
                resource_id: String::new(),
            },
            resource: "https://vault.azure.net".into(),
        }
    }

    /// A fetch for `client_id` on a task of its own.
    fn spawn_fetch(
        f: &Arc<ImdsFetch>,
        client_id: &str,
    ) -> tokio::task::JoinHandle<Result<UpstreamToken, SourceError>> {
        let (f, request) = (Arc::clone(f), for_identity(client_id));
        tokio::spawn(async move { f.fetch(&request).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttled_fetch_is_retried_on_azures_schedule_and_the_caller_never_sees_the_429() {
        let src = Scripted::new(&[429, 429, 200]);
        let f = ImdsFetch::new(src.clone(), settings(4)).with_jitter(|| 1.0);
        let start = Instant::now();
        let got = f.fetch(&for_identity("a")).await.unwrap();
        assert_eq!(got.status, 200);
        // Without jitter shortening the steps: 2 s, then 4 s (the documented 2 s delta).
        assert_eq!(src.call_offsets(start), [0, 2, 6]);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_shortens_each_step_to_no_less_than_half_so_a_5xx_waits_at_least_a_second() {
        let src = Scripted::new(&[500, 503, 200]);
        let f = ImdsFetch::new(src.clone(), settings(4)).with_jitter(|| 0.0);
        let start = Instant::now();
        assert_eq!(f.fetch(&for_identity("a")).await.unwrap().status, 200);
        assert_eq!(src.call_offsets(start), [0, 1, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_end_inside_the_fetch_timeout_with_the_services_last_answer() {
        // Full steps: attempts at 0, 2, 6, 14; the next (at 30 s) would pass the deadline
        // (27 s for a 30 s timeout), so the fourth answer is returned at 14 s.
        let src = Scripted::new(&[503]);
        let f = ImdsFetch::new(src.clone(), settings(4)).with_jitter(|| 1.0);
        let start = Instant::now();
        let got = f.fetch(&for_identity("a")).await.unwrap();
        assert_eq!(got.status, 503);
        assert_eq!(src.call_offsets(start), [0, 2, 6, 14]);
        assert_eq!(Instant::now() - start, Duration::from_secs(14));
        // Halved steps fit five attempts (0, 1, 3, 7, 15 s): never more than five.
        let src = Scripted::new(&[429]);
        let f = ImdsFetch::new(src.clone(), settings(4)).with_jitter(|| 0.0);
        let start = Instant::now();
        assert_eq!(f.fetch(&for_identity("a")).await.unwrap().status, 429);
        assert_eq!(src.call_offsets(start), [0, 1, 3, 7, 15]);
        assert!(retry_deadline(start, Duration::from_secs(30)) - start == Duration::from_secs(29));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_answers_azure_says_to_retry_are_retried_and_azure_ad_is_left_alone() {
        for (status, calls) in [
            (400, 1),
            (403, 1),
            (404, 5),
            (408, 5),
            (410, 5),
            (429, 5),
            (500, 5),
            (599, 5),
        ] {
            let src = Scripted::new(&[status]);
            let f = ImdsFetch::new(src.clone(), settings(4)).with_jitter(|| 0.0);
            f.fetch(&for_identity("a")).await.unwrap();
            assert_eq!(src.calls.lock().unwrap().len(), calls, "{status}");
        }
        let src = Scripted::new(&[503]);
        let f = ImdsFetch::new(src.clone(), settings(4)).with_jitter(|| 0.0);
        let sp = TokenRequest {
            target: TokenTarget::ServicePrincipal {
                identity: Arc::default(),
                identity_namespace: "ns".into(),
                namespaced: true,
            },
            resource: "r".into(),
        };
        assert_eq!(f.fetch(&sp).await.unwrap().status, 503);
        assert_eq!(src.calls.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_the_bound_is_out_at_once_and_a_backoff_holds_no_place() {
        let gate = Arc::new(Semaphore::new(0));
        let src = Scripted::held(&gate);
        let f = Arc::new(ImdsFetch::new(src.clone(), settings(2)).with_jitter(|| 1.0));
        let tasks: Vec<_> = (0..6)
            .map(|i| spawn_fetch(&f, &format!("id-{i}")))
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(src.calls.lock().unwrap().len(), 2, "two out, four in line");
        gate.add_permits(100);
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().status, 200);
        }
        assert_eq!(src.peak.load(Ordering::SeqCst), 2);

        // One place: a fetch backing off after a 429 lets another through meanwhile.
        let src = Scripted::new(&[429, 200]);
        let f = Arc::new(ImdsFetch::new(src.clone(), settings(1)).with_jitter(|| 1.0));
        let start = Instant::now();
        let first = spawn_fetch(&f, "throttled");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(f.fetch(&for_identity("other")).await.unwrap().status, 200);
        assert_eq!(Instant::now() - start, Duration::from_millis(500));
        assert_eq!(first.await.unwrap().unwrap().status, 200);
        assert_eq!(src.call_offsets(start), [0, 0, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_line_for_a_place_is_bounded_per_identity_and_per_node() {
        let gate = Arc::new(Semaphore::new(0));
        let src = Scripted::held(&gate);
        let f = Arc::new(ImdsFetch::new(
            src.clone(),
            ImdsFetchSettings {
                max_in_flight: 1,
                max_per_second: 0,
                max_waiting: 3,
                max_waiting_per_identity: 2,
                fetch_timeout: Duration::from_secs(30),
            },
        ));
        let spawn = |id: &str| spawn_fetch(&f, id);
        let held = [spawn("out"), spawn("hostile"), spawn("hostile")];
        tokio::time::sleep(Duration::from_millis(1)).await;
        let third = f.fetch(&for_identity("HOSTILE")).await.unwrap_err();
        assert!(
            third.to_string().contains("2 for identity hostile"),
            "{third}"
        );
        let other = spawn("other");
        tokio::time::sleep(Duration::from_millis(1)).await;
        let full = f.fetch(&for_identity("late")).await.unwrap_err();
        assert!(
            matches!(&full, SourceError::Unreachable(m) if m.contains("3 for this node")),
            "{full}"
        );
        gate.add_permits(100);
        for t in held.into_iter().chain([other]) {
            assert_eq!(t.await.unwrap().unwrap().status, 200);
        }
        assert!(
            f.waiting.lock().unwrap().is_empty(),
            "the line is left clean"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_that_finds_no_place_before_the_deadline_says_so() {
        let gate = Arc::new(Semaphore::new(0));
        let src = Scripted::held(&gate);
        let f = Arc::new(ImdsFetch::new(src.clone(), settings(1)));
        let out = spawn_fetch(&f, "slow");
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = Instant::now();
        let e = f.fetch(&for_identity("waiting")).await.unwrap_err();
        assert_eq!(Instant::now() - start, Duration::from_secs(29));
        assert!(
            e.to_string().contains("no metadata-service fetch place"),
            "{e}"
        );
        gate.add_permits(1);
        out.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_answers_and_retries_are_counted() {
        let shared = crate::metrics::Metrics::new();
        let nmi = NmiMetrics::new(&shared, "node-a").unwrap();
        let src = Scripted::new(&[429, 429, 200]);
        let f = ImdsFetch::new(src, settings(4))
            .with_jitter(|| 0.5)
            .with_metrics(&shared, nmi, "node-a")
            .unwrap();
        f.fetch(&for_identity("a")).await.unwrap();
        let text = shared.encode();
        for line in [
            r#"aadpodidentity_nmi_imds_answers_total{node="node-a",status="429"} 2"#,
            r#"aadpodidentity_nmi_imds_retries_total{node="node-a",reason="429"} 2"#,
            r#"aadpodidentity_nmi_imds_fetches_in_flight{node="node-a"} 0"#,
            r#"aadpodidentity_nmi_imds_fetches_waiting{node="node-a"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sends_are_paced_to_the_rate_in_every_one_second_window() {
        let src = Scripted::new(&[200]);
        let f = Arc::new(ImdsFetch::new(
            src.clone(),
            ImdsFetchSettings {
                max_per_second: 3,
                ..settings(2)
            },
        ));
        let start = Instant::now();
        let tasks: Vec<_> = (0..7)
            .map(|i| spawn_fetch(&f, &format!("id-{i}")))
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().status, 200);
        }
        assert_eq!(src.call_offsets(start), [0, 0, 0, 1, 1, 1, 2]);
        // A send time past the retry deadline is refused at once, not waited for.
        let f = ImdsFetch::new(
            src.clone(),
            ImdsFetchSettings {
                max_per_second: 1,
                fetch_timeout: Duration::from_millis(500),
                ..settings(2)
            },
        );
        f.fetch(&for_identity("a")).await.unwrap();
        let e = f.fetch(&for_identity("b")).await.unwrap_err();
        assert!(
            e.to_string().contains("no metadata-service fetch place"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_that_is_due_goes_out_at_once_not_on_the_timers_next_tick() {
        // Half a millisecond into a tick: a timer for "now" would fire only on the next one.
        tokio::time::advance(Duration::from_micros(500)).await;
        let src = Scripted::new(&[200]);
        let f = ImdsFetch::new(
            src.clone(),
            ImdsFetchSettings {
                max_per_second: 16,
                ..settings(4)
            },
        );
        let start = Instant::now();
        for id in ["a", "b", "c"] {
            assert_eq!(f.fetch(&for_identity(id)).await.unwrap().status, 200);
        }
        assert_eq!(Instant::now(), start, "no fetch waited for a timer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_place_goes_to_the_next_identity_in_turn_not_to_the_longest_queue() {
        let gate = Arc::new(Semaphore::new(0));
        let src = Scripted::held(&gate);
        let f = Arc::new(ImdsFetch::new(src.clone(), settings(1)));
        let spawn = |id: &str| spawn_fetch(&f, id);
        let mut tasks = vec![spawn("greedy")];
        tokio::time::sleep(Duration::from_millis(1)).await;
        for _ in 0..4 {
            tasks.push(spawn("greedy"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        tasks.push(spawn("modest"));
        tokio::time::sleep(Duration::from_millis(1)).await;
        // One at a time: the modest identity's fetch is the second out, not the sixth.
        for _ in 0..6 {
            gate.add_permits(1);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let order: Vec<String> = src
            .calls
            .lock()
            .unwrap()
            .iter()
            .map(|(target, _)| {
                if target.contains("modest") {
                    "modest".to_string()
                } else {
                    "greedy".to_string()
                }
            })
            .collect();
        assert_eq!(
            order,
            ["greedy", "greedy", "modest", "greedy", "greedy", "greedy"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_loses_no_place() {
        let gate = Arc::new(Semaphore::new(0));
        let src = Scripted::held(&gate);
        let f = Arc::new(ImdsFetch::new(src.clone(), settings(1)));
        let out = spawn_fetch(&f, "first");
        tokio::time::sleep(Duration::from_millis(1)).await;
        // A fetch that waits and is then abandoned (its request went away).
        let abandoned = spawn_fetch(&f, "gone");
        tokio::time::sleep(Duration::from_millis(1)).await;
        abandoned.abort();
        let _ = abandoned.await;
        gate.add_permits(10);
        out.await.unwrap().unwrap();
        // The place is free again: the next fetch goes at once.
        let start = Instant::now();
        f.fetch(&for_identity("next")).await.unwrap();
        assert_eq!(Instant::now(), start);
        assert_eq!(
            src.calls.lock().unwrap().len(),
            2,
            "the abandoned fetch never went out"
        );
    }
}
