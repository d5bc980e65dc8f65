//! MIC's own metrics, beyond the original's names (which the shared `metrics` module owns):
//! assignment latency, ARM writes by outcome, batch sizes, queue depth, Events recorded and
//! failed AzureAssignedIdentity writes, and writes refused by the leadership fence.
//!
//! Registered once into the process registry by [`MicMetrics::register`].

use crate::metrics::Metrics;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts};

/// MIC's metrics.
#[derive(Clone, Debug)]
pub struct MicMetrics {
    /// The original's metrics (the process registry).
    pub original: Metrics,
    /// Seconds from MIC seeing a pod's assignment to its AzureAssignedIdentity turning Assigned.
    pub assignment_latency: Histogram,
    /// ARM writes (PATCHes) by outcome: `ok`, `refused`, `throttled`, `conflict`, `transient`,
    /// `fatal`, `deleting`, `not_found`.
    pub arm_writes: IntCounterVec,
    /// Identity changes carried by one PATCH.
    pub batch_size: Histogram,
    /// Adds and removes waiting for ARM, by host.
    pub queue_depth: IntGaugeVec,
    /// Recorded Events by what became of them: `created`, `updated`, `merged` (into a queued
    /// write), `spam_filtered`, `queue_full`, `failed`, `fenced` (not sent: not the leader).
    pub events: IntCounterVec,
    /// Failed AzureAssignedIdentity writes, by the original's `operation_type` and by what
    /// the API server said (`conflict`, `invalid`, `forbidden`, `not_found`, `throttled`,
    /// `server_error`, `refused`, `transport`).
    pub write_failures: IntCounterVec,
    /// AzureAssignedIdentity objects whose last write failed, waiting out their backoff.
    pub writes_backing_off: IntGauge,
    /// Live assigners (one per VM or scale set with work on it).
    pub assigners: IntGauge,
    /// Writes refused because this replica did not lead when they were to be sent, by kind
    /// (`arm`, `assigned_identity`, `event`, `other_kubernetes`): see [`super::fence`].
    pub fenced_writes: IntCounterVec,
}

impl MicMetrics {
    /// Creates MIC's metrics and registers them into the registry of `original`.
    pub fn register(original: &Metrics) -> Result<Self, prometheus::Error> {
        let m = Self::build(original.clone())?;
        let registry = original.registry();
        registry.register(Box::new(m.assignment_latency.clone()))?;
        registry.register(Box::new(m.arm_writes.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.queue_depth.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.write_failures.clone()))?;
        registry.register(Box::new(m.writes_backing_off.clone()))?;
        registry.register(Box::new(m.assigners.clone()))?;
        registry.register(Box::new(m.fenced_writes.clone()))?;
        Ok(m)
    }

    /// Metrics in a registry of their own (tests).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        Self::register(&Metrics::new())
    }

    fn build(original: Metrics) -> Result<Self, prometheus::Error> {
        Ok(Self {
            original,
            assignment_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "aadpodidentity_mic_assignment_latency_seconds",
                    "Seconds from MIC seeing a pod's assignment to its AzureAssignedIdentity turning Assigned",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ]),
            )?,
            arm_writes: IntCounterVec::new(
                Opts::new(
                    "aadpodidentity_mic_arm_writes_total",
                    "ARM identity PATCHes sent by MIC, by outcome",
                ),
                &["outcome"],
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "aadpodidentity_mic_arm_batch_size",
                    "Identity additions and removals carried by one ARM PATCH",
                )
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 150.0]),
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "aadpodidentity_mic_queue_depth",
                    "Identity additions and removals waiting for ARM, by VM or scale set",
                ),
                &["host"],
            )?,
            events: IntCounterVec::new(
                Opts::new(
                    "aadpodidentity_mic_events_total",
                    "Kubernetes Events MIC recorded, by what became of them (created, updated, merged into a queued write, spam_filtered, queue_full, failed, fenced: not sent, not the leader)",
                ),
                &["outcome"],
            )?,
            write_failures: IntCounterVec::new(
                Opts::new(
                    "aadpodidentity_mic_assigned_identity_write_failures_total",
                    "Failed AzureAssignedIdentity writes, by operation_type and by the API server's answer (conflict, invalid, forbidden, not_found, throttled, server_error, refused, transport)",
                ),
                &["operation_type", "reason"],
            )?,
            writes_backing_off: IntGauge::new(
                "aadpodidentity_mic_assigned_identity_writes_backing_off",
                "AzureAssignedIdentity objects whose last write failed, waiting out their backoff before the next attempt",
            )?,
            assigners: IntGauge::new(
                "aadpodidentity_mic_assigners",
                "Live assigners: one per VM or scale set with identities wanted or held on it (retired when idle or when ARM says the host does not exist)",
            )?,
            fenced_writes: IntCounterVec::new(
                Opts::new(
                    "aadpodidentity_mic_fenced_writes_total",
                    "Writes not sent because the election thread said this replica no longer (or not yet) leads, by kind (arm, assigned_identity, event, other_kubernetes)",
                ),
                &["kind"],
            )?,
        })
    }
}
