//! NMI's own metrics beyond the original's: token latency, waits, cache lookups, upstream
//! fetches, requests refused by a bound, cache evictions.
//!
//! Registered into the one process registry ([`crate::metrics::Metrics::registry`]); the
//! original's `nmi_operations_duration_seconds` is the shared one, recorded by the HTTP layer.
//!
//! Every label value is drawn from a fixed set, never copied from a request: a client choosing
//! paths, resources or client ids must not be able to create series (each histogram label set
//! costs about twenty series, kept until the process ends). Resources outside
//! [`KNOWN_RESOURCES`] are counted as `other` ([`resource_label`]).

use crate::metrics::Metrics;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

/// Token audiences common enough to be worth a label of their own (Azure public, US Government
/// and China clouds). Compared ASCII case-insensitively, ignoring a trailing `/`.
pub const KNOWN_RESOURCES: &[&str] = &[
    "https://management.azure.com/",
    "https://management.core.windows.net/",
    "https://vault.azure.net",
    "https://storage.azure.com/",
    "https://database.windows.net/",
    "https://ossrdbms-aad.database.windows.net",
    "https://graph.microsoft.com",
    "https://graph.windows.net/",
    "https://eventhubs.azure.net",
    "https://servicebus.azure.net",
    "https://cosmos.azure.com",
    "https://monitor.azure.com",
    "https://api.loganalytics.io",
    "https://api.applicationinsights.io",
    "https://cognitiveservices.azure.com",
    "https://redis.azure.com",
    "https://batch.core.windows.net/",
    "https://digitaltwins.azure.net",
    "https://dev.azuresynapse.net",
    "https://management.usgovcloudapi.net/",
    "https://vault.usgovcloudapi.net",
    "https://storage.usgovcloudapi.net/",
    "https://management.chinacloudapi.cn/",
    "https://vault.azure.cn",
    "https://storage.chinacloudapi.cn/",
];

/// The `resource` label for a requested resource: its entry in [`KNOWN_RESOURCES`], else
/// `other`. Empty stays empty (no resource was given).
#[must_use]
pub fn resource_label(resource: &str) -> &'static str {
    if resource.is_empty() {
        return "";
    }
    let want = resource.strip_suffix('/').unwrap_or(resource);
    KNOWN_RESOURCES
        .iter()
        .find(|k| {
            let k = k.strip_suffix('/').unwrap_or(k);
            k.eq_ignore_ascii_case(want)
        })
        .copied()
        .unwrap_or("other")
}

/// Why a request was refused by one of NMI's bounds (the `reason` label of
/// `aadpodidentity_nmi_rejected_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// One pod already has `--max-waiters-per-pod` requests waiting (429).
    WaitersPerPod,
    /// The node already has `--max-waiters` requests waiting (503).
    WaitersTotal,
    /// `--max-pass-through` requests are already being relayed (503).
    PassThroughBusy,
    /// The body of a pass-through request did not arrive within `--pass-through-body-timeout` (408).
    BodyTimeout,
    /// The source address already holds `--max-connections-per-source` connections (429).
    ConnectionsPerSource,
    /// NMI began stopping while the request was in flight (503, `Retry-After: 1`).
    ShuttingDown,
    /// The line for a metadata-service fetch place (`--max-metadata-fetches`) already holds
    /// `--max-waiters` fetches, or `--max-waiters-per-pod` for the identity (503).
    ImdsFetchLine,
}

impl Rejection {
    /// The label value.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::WaitersPerPod => "waiters_per_pod",
            Self::WaitersTotal => "waiters_total",
            Self::PassThroughBusy => "pass_through_busy",
            Self::BodyTimeout => "body_timeout",
            Self::ConnectionsPerSource => "connections_per_source",
            Self::ShuttingDown => "shutting_down",
            Self::ImdsFetchLine => "imds_fetch_line",
        }
    }
}

const NAMESPACE: &str = "aadpodidentity";

/// Handles to NMI's metrics (cheap to clone).
#[derive(Clone, Debug)]
pub struct NmiMetrics {
    /// `aadpodidentity_nmi_token_request_duration_seconds{result}`: whole token request, by outcome.
    pub token_latency: HistogramVec,
    /// `aadpodidentity_nmi_wait_duration_seconds{kind}`: time spent waiting for a pod's arrival
    /// (`kind="pod"`) or an identity's assignment (`kind="assignment"`).
    pub wait_seconds: HistogramVec,
    /// `aadpodidentity_nmi_token_cache_lookups_total{result}`: `hit`, `refreshing`, `miss`.
    pub cache_lookups: IntCounterVec,
    /// `aadpodidentity_nmi_upstream_token_fetch_duration_seconds{result}`: upstream fetches.
    pub upstream_fetch_seconds: HistogramVec,
    /// `aadpodidentity_nmi_operations_duration_seconds{operation_type,status_code,namespace,resource}`:
    /// the original's per-request histogram.
    pub operations: HistogramVec,
    /// `token_latency{result="ok"}`, resolved once so the hot path skips the label lookup.
    pub token_ok: Histogram,
    /// `cache_lookups{result="hit"}`, resolved once for the hot path.
    pub cache_hit: IntCounter,
    /// `aadpodidentity_nmi_rejected_requests_total{reason}`: requests refused at once by a bound
    /// ([`Rejection`]).
    pub rejected: IntCounterVec,
    /// `aadpodidentity_nmi_token_cache_evictions_total`: cache slots evicted to stay within
    /// `--max-token-cache-slots`.
    pub cache_evictions: IntCounter,
}

impl NmiMetrics {
    /// Creates NMI's own metrics, labelled with `node` (the sandbox runs one NMI per simulated
    /// node in one process), and registers them next to the original's in `shared`.
    ///
    /// # Errors
    /// When metrics for this node are already registered.
    pub fn new(shared: &Metrics, node: &str) -> Result<Self, prometheus::Error> {
        let registry = shared.registry();
        let fast = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 80.0,
        ];
        let token_latency = HistogramVec::new(
            HistogramOpts::new(
                "nmi_token_request_duration_seconds",
                "Duration of NMI token requests, by result",
            )
            .namespace(NAMESPACE)
            .const_label("node", node)
            .buckets(fast.clone()),
            &["result"],
        )?;
        let wait_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nmi_wait_duration_seconds",
                "Time token requests waited for their pod or their identity's assignment",
            )
            .namespace(NAMESPACE)
            .const_label("node", node)
            .buckets(fast.clone()),
            &["kind"],
        )?;
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "nmi_token_cache_lookups_total",
                "Token cache lookups, by result",
            )
            .namespace(NAMESPACE)
            .const_label("node", node),
            &["result"],
        )?;
        let upstream_fetch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "nmi_upstream_token_fetch_duration_seconds",
                "Upstream token fetches (metadata service or Azure AD), by result",
            )
            .namespace(NAMESPACE)
            .const_label("node", node)
            .buckets(fast),
            &["result"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "nmi_rejected_requests_total",
                "Requests answered at once because a bound was reached or NMI was stopping, by reason",
            )
            .namespace(NAMESPACE)
            .const_label("node", node),
            &["reason"],
        )?;
        let cache_evictions = IntCounter::with_opts(
            Opts::new(
                "nmi_token_cache_evictions_total",
                "Token cache slots evicted to stay within the slot bound",
            )
            .namespace(NAMESPACE)
            .const_label("node", node),
        )?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(cache_evictions.clone()))?;
        registry.register(Box::new(token_latency.clone()))?;
        registry.register(Box::new(wait_seconds.clone()))?;
        registry.register(Box::new(cache_lookups.clone()))?;
        registry.register(Box::new(upstream_fetch_seconds.clone()))?;
        let token_ok = token_latency.with_label_values(&["ok"]);
        let cache_hit = cache_lookups.with_label_values(&["hit"]);
        Ok(Self {
            token_ok,
            cache_hit,
            token_latency,
            wait_seconds,
            cache_lookups,
            upstream_fetch_seconds,
            operations: shared.nmi_operations_duration_seconds.clone(),
            rejected,
            cache_evictions,
        })
    }

    /// Counts a request refused by a bound.
    pub fn reject(&self, why: Rejection) {
        self.rejected.with_label_values(&[why.label()]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_nodes_register_side_by_side_but_one_node_only_once() {
        let shared = Metrics::new();
        let a = NmiMetrics::new(&shared, "node-a").unwrap();
        NmiMetrics::new(&shared, "node-b").unwrap();
        assert!(NmiMetrics::new(&shared, "node-a").is_err());
        a.cache_hit.inc();
        assert!(shared.encode().contains(
            "aadpodidentity_nmi_token_cache_lookups_total{node=\"node-a\",result=\"hit\"} 1"
        ));
    }

    #[test]
    fn resources_map_to_known_audiences_or_other() {
        assert_eq!(
            resource_label("https://management.azure.com"),
            "https://management.azure.com/"
        );
        assert_eq!(
            resource_label("HTTPS://VAULT.AZURE.NET/"),
            "https://vault.azure.net"
        );
        assert_eq!(resource_label("api://my-app"), "other");
        assert_eq!(resource_label("https://vault.azure.net/x"), "other");
        assert_eq!(resource_label(""), "");
        let distinct: std::collections::HashSet<&str> = (0..10_000)
            .map(|i| resource_label(&format!("r{i}")))
            .collect();
        assert_eq!(distinct.len(), 1);
    }
}
