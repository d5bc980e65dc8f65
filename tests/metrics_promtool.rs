//! Prometheus' own linter judges the metrics exposition.
//!
//! The original's counters end in `_count` without `_total`; promtool flags those names, and we
//! keep them anyway because users' dashboards query them. Every other line of its output is a
//! failure.

use aad_pod_identity::metrics::Metrics;
use std::io::Write;
use std::process::{Command, Stdio};

/// Counters whose names the original fixed; promtool's naming lint on them is expected.
const LEGACY_COUNTERS: [&str; 8] = [
    "aadpodidentity_assigned_identity_addition_count",
    "aadpodidentity_assigned_identity_deletion_count",
    "aadpodidentity_assigned_identity_update_count",
    "aadpodidentity_mic_cycle_count",
    "aadpodidentity_mic_new_leader_election_count",
    "aadpodidentity_cloud_provider_operations_errors_count",
    "aadpodidentity_kubernetes_api_operations_errors_count",
    "aadpodidentity_imds_operations_errors_count",
];

#[test]
fn promtool_finds_nothing_but_the_originals_legacy_counter_names() {
    let m = Metrics::new();
    m.cloud_provider_operations_errors_count
        .with_label_values(&["vmss_patch"])
        .inc();
    m.kubernetes_api_operations_errors_count
        .with_label_values(&["create"])
        .inc();
    m.imds_operations_errors_count
        .with_label_values(&["token"])
        .inc();
    m.nmi_operations_duration_seconds
        .with_label_values(&["token", "200", "default", "https://vault.azure.net"])
        .observe(0.002);
    m.imds_operations_duration_seconds
        .with_label_values(&["token"])
        .observe(0.02);
    m.cloud_provider_operations_duration_seconds
        .with_label_values(&["vmss_patch"])
        .observe(2.0);
    let text = m.encode();

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool must be installed (Debian package `prometheus`; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 1 would be a parse error of the exposition itself.
    assert_ne!(
        out.status.code(),
        Some(1),
        "promtool could not parse:\n{report}"
    );
    let unexpected: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            !LEGACY_COUNTERS
                .iter()
                .any(|name| l.starts_with(&format!("{name} ")))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "promtool complaints:\n{}",
        unexpected.join("\n")
    );
}
