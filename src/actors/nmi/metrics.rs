//! NMI's own metrics beyond the original's: token latency, waits, cache lookups, upstream fetches.
//!
//! Registered into the one process registry ([`crate::metrics::Metrics::registry`]); the
//! original's `nmi_operations_duration_seconds` is the shared one, recorded by the HTTP layer.

use crate::metrics::Metrics;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts};

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
        })
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
}
