//! The one Prometheus registry and the metrics users of the original already scrape.
//!
//! Names, types and labels follow the Go original (prefix `aadpodidentity_`), because
//! dashboards and alerts are built on them: the `_count` metrics are counters named exactly so,
//! the `_duration_seconds` metrics are histograms. Components register their own additional
//! metrics into [`Metrics::registry`], so one `/metrics` endpoint serves everything.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder, exponential_buckets,
};
use std::time::Instant;

/// Prefix of every metric name.
pub const NAMESPACE: &str = "aadpodidentity";

/// Histogram buckets for operation durations, from 1 ms to about 2 minutes (this system's own
/// histograms).
#[must_use]
pub fn duration_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 18).expect("static bucket parameters are valid")
}

/// The original's buckets for AzureAssignedIdentity writes and upstream token calls (seconds).
pub const ORIGINAL_SHORT_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0,
];

/// The buckets of `nmi_operations_duration_seconds` (seconds): every bound of the original's
/// (0.5 s to 100 s, which dashboards' `le` selectors name) and, below them, bounds down to
/// 0.5 ms. The original fetched every token upstream, so its fastest answer took tens of
/// milliseconds; here a cached token is served in well under a millisecond, and with the
/// original's bounds alone every such request would land in the first bucket.
pub const NMI_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0,
    25.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0,
];

/// The original's buckets for MIC cycles and ARM calls, up to 1200 s (seconds).
pub const ORIGINAL_LONG_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0,
];

/// `kubernetes_api_operations_errors_count` label of NMI's failed pod lists and watches (the
/// original's name).
pub const K8S_GET_POD_LIST: &str = "get_pod_list";
/// `kubernetes_api_operations_errors_count` label of NMI's failed Secret reads.
pub const K8S_GET_SECRET: &str = "get_secret";

/// Every metric of the original, registered in one registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Time to create an AzureAssignedIdentity and assign it (MIC).
    pub assigned_identity_addition_duration_seconds: Histogram,
    /// AzureAssignedIdentity additions (MIC).
    pub assigned_identity_addition_count: IntCounter,
    /// Time to remove an assignment and delete its AzureAssignedIdentity (MIC).
    pub assigned_identity_deletion_duration_seconds: Histogram,
    /// AzureAssignedIdentity deletions (MIC).
    pub assigned_identity_deletion_count: IntCounter,
    /// Time to update an AzureAssignedIdentity (MIC).
    pub assigned_identity_update_duration_seconds: Histogram,
    /// AzureAssignedIdentity updates (MIC).
    pub assigned_identity_update_count: IntCounter,
    /// Duration of NMI's token operations by operation type, status code, namespace, resource.
    pub nmi_operations_duration_seconds: HistogramVec,
    /// Duration of one MIC sync cycle.
    pub mic_cycle_duration_seconds: Histogram,
    /// MIC sync cycles.
    pub mic_cycle_count: IntCounter,
    /// Times this MIC replica became leader.
    pub mic_new_leader_election_count: IntCounter,
    /// Azure Resource Manager errors by operation type.
    pub cloud_provider_operations_errors_count: IntCounterVec,
    /// Azure Resource Manager call durations by operation type.
    pub cloud_provider_operations_duration_seconds: HistogramVec,
    /// Kubernetes API errors by operation type.
    pub kubernetes_api_operations_errors_count: IntCounterVec,
    /// Metadata-service (and Azure AD) token errors by operation type.
    pub imds_operations_errors_count: IntCounterVec,
    /// Metadata-service (and Azure AD) token call durations by operation type.
    pub imds_operations_duration_seconds: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help)
            .namespace(NAMESPACE)
            .buckets(buckets.to_vec()),
        labels,
    )
    .expect("metric definition is valid");
    registry
        .register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

fn histogram_plain(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let h = Histogram::with_opts(
        HistogramOpts::new(name, help)
            .namespace(NAMESPACE)
            .buckets(buckets.to_vec()),
    )
    .expect("metric definition is valid");
    registry
        .register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))
        .expect("metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    /// A fresh registry with every metric of the original registered.
    #[must_use]
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            assigned_identity_addition_duration_seconds: histogram_plain(
                &r,
                "assigned_identity_addition_duration_seconds",
                "Seconds taken to add an assigned identity.",
                ORIGINAL_SHORT_BUCKETS,
            ),
            assigned_identity_addition_count: counter(
                &r,
                "assigned_identity_addition_count",
                "Number of assigned identities added.",
            ),
            assigned_identity_deletion_duration_seconds: histogram_plain(
                &r,
                "assigned_identity_deletion_duration_seconds",
                "Seconds taken to delete an assigned identity.",
                ORIGINAL_SHORT_BUCKETS,
            ),
            assigned_identity_deletion_count: counter(
                &r,
                "assigned_identity_deletion_count",
                "Number of assigned identities deleted.",
            ),
            assigned_identity_update_duration_seconds: histogram_plain(
                &r,
                "assigned_identity_update_duration_seconds",
                "Seconds taken to update an assigned identity.",
                ORIGINAL_SHORT_BUCKETS,
            ),
            assigned_identity_update_count: counter(
                &r,
                "assigned_identity_update_count",
                "Number of assigned identities updated.",
            ),
            nmi_operations_duration_seconds: histogram(
                &r,
                "nmi_operations_duration_seconds",
                "Seconds taken by NMI operations.",
                &["operation_type", "status_code", "namespace", "resource"],
                NMI_BUCKETS,
            ),
            mic_cycle_duration_seconds: histogram_plain(
                &r,
                "mic_cycle_duration_seconds",
                "Seconds taken by one MIC sync cycle.",
                ORIGINAL_LONG_BUCKETS,
            ),
            mic_cycle_count: counter(&r, "mic_cycle_count", "Number of MIC sync cycles."),
            mic_new_leader_election_count: counter(
                &r,
                "mic_new_leader_election_count",
                "Number of times this MIC replica became leader.",
            ),
            cloud_provider_operations_errors_count: counter_vec(
                &r,
                "cloud_provider_operations_errors_count",
                "Number of failed Azure Resource Manager operations.",
                &["operation_type"],
            ),
            cloud_provider_operations_duration_seconds: histogram(
                &r,
                "cloud_provider_operations_duration_seconds",
                "Seconds taken by Azure Resource Manager operations.",
                &["operation_type"],
                ORIGINAL_LONG_BUCKETS,
            ),
            kubernetes_api_operations_errors_count: counter_vec(
                &r,
                "kubernetes_api_operations_errors_count",
                "Number of failed Kubernetes API operations.",
                &["operation_type"],
            ),
            imds_operations_errors_count: counter_vec(
                &r,
                "imds_operations_errors_count",
                "Number of failed token operations against the metadata service or Azure AD.",
                &["operation_type"],
            ),
            imds_operations_duration_seconds: histogram(
                &r,
                "imds_operations_duration_seconds",
                "Seconds taken by token operations against the metadata service or Azure AD.",
                &["operation_type"],
                ORIGINAL_SHORT_BUCKETS,
            ),
            registry: r,
        }
    }

    /// The registry, for components that register metrics of their own.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything registered, in Prometheus' text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding of gathered metrics cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// Observes the seconds since its creation into a histogram when dropped, so every exit path
/// of an operation is timed.
#[must_use = "the timer records when dropped"]
pub struct DropTimer {
    histogram: prometheus::Histogram,
    start: Instant,
}

impl DropTimer {
    /// Starts timing into `histogram`.
    pub fn new(histogram: prometheus::Histogram) -> Self {
        Self {
            histogram,
            start: Instant::now(),
        }
    }
}

impl Drop for DropTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_original_metric_name_is_exposed() {
        let m = Metrics::new();
        // Label-less metrics appear at once; labelled ones once a label set is used.
        m.nmi_operations_duration_seconds
            .with_label_values(&["token", "200", "default", "https://management.azure.com/"])
            .observe(0.01);
        for v in [
            &m.cloud_provider_operations_errors_count,
            &m.kubernetes_api_operations_errors_count,
            &m.imds_operations_errors_count,
        ] {
            v.with_label_values(&["x"]).inc();
        }
        for h in [
            &m.cloud_provider_operations_duration_seconds,
            &m.imds_operations_duration_seconds,
        ] {
            h.with_label_values(&["x"]).observe(0.5);
        }
        for h in [
            &m.assigned_identity_addition_duration_seconds,
            &m.assigned_identity_deletion_duration_seconds,
            &m.assigned_identity_update_duration_seconds,
            &m.mic_cycle_duration_seconds,
        ] {
            h.observe(1.0);
        }
        let text = m.encode();
        for name in [
            "assigned_identity_addition_duration_seconds_bucket",
            "assigned_identity_addition_count",
            "assigned_identity_deletion_duration_seconds_bucket",
            "assigned_identity_deletion_count",
            "assigned_identity_update_duration_seconds_bucket",
            "assigned_identity_update_count",
            "nmi_operations_duration_seconds_bucket",
            "mic_cycle_duration_seconds_bucket",
            "mic_cycle_count",
            "mic_new_leader_election_count",
            "cloud_provider_operations_errors_count",
            "cloud_provider_operations_duration_seconds_bucket",
            "kubernetes_api_operations_errors_count",
            "imds_operations_errors_count",
            "imds_operations_duration_seconds_bucket",
        ] {
            assert!(
                text.contains(&format!("aadpodidentity_{name}")),
                "missing {name}"
            );
        }
        assert!(text.contains(
            r#"aadpodidentity_nmi_operations_duration_seconds_count{namespace="default",operation_type="token",resource="https://management.azure.com/",status_code="200"} 1"#
        ));
        assert!(text.contains("# TYPE aadpodidentity_mic_cycle_count counter"));
    }

    #[test]
    fn buckets_are_the_originals() {
        let m = Metrics::new();
        m.cloud_provider_operations_duration_seconds
            .with_label_values(&["vmss_update"])
            .observe(700.0);
        m.assigned_identity_addition_duration_seconds.observe(0.015);
        let text = m.encode();
        assert!(text.contains(
            r#"aadpodidentity_cloud_provider_operations_duration_seconds_bucket{operation_type="vmss_update",le="1200"} 1"#
        ));
        assert!(text.contains(
            r#"aadpodidentity_cloud_provider_operations_duration_seconds_bucket{operation_type="vmss_update",le="600"} 0"#
        ));
        assert!(text.contains(
            r#"aadpodidentity_assigned_identity_addition_duration_seconds_bucket{le="0.02"} 1"#
        ));
    }

    #[test]
    fn nmi_buckets_keep_every_original_bound_and_resolve_milliseconds() {
        let original = [
            0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 70.0,
            80.0, 90.0, 100.0,
        ];
        for b in original {
            assert!(
                NMI_BUCKETS.contains(&b),
                "{b} s bound of the original missing"
            );
        }
        let m = Metrics::new();
        let h = m.nmi_operations_duration_seconds.with_label_values(&[
            "token",
            "200",
            "default",
            "https://vault.azure.net",
        ]);
        h.observe(0.0003);
        h.observe(0.003);
        let text = m.encode();
        let bucket = |le: &str| {
            format!(
                r#"aadpodidentity_nmi_operations_duration_seconds_bucket{{namespace="default",operation_type="token",resource="https://vault.azure.net",status_code="200",le="{le}"}}"#
            )
        };
        assert!(text.contains(&format!("{} 1", bucket("0.0005"))), "{text}");
        assert!(text.contains(&format!("{} 1", bucket("0.001"))), "{text}");
        assert!(text.contains(&format!("{} 2", bucket("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 2", bucket("0.5"))), "{text}");
    }

    #[test]
    fn drop_timer_records_once() {
        let m = Metrics::new();
        let h = m.mic_cycle_duration_seconds.clone();
        {
            let _t = DropTimer::new(h.clone());
        }
        assert_eq!(h.get_sample_count(), 1);
    }
}
