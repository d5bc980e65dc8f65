//! Prometheus' own linter as a judge of a metrics exposition, shared by the tests that scrape
//! one. The original's counters end in `_count` without `_total`; promtool flags those names,
//! and we keep them because users' dashboards query them. Anything else it says is a failure.

use std::io::Write;
use std::process::{Command, Stdio};

/// Counters whose names the original fixed; promtool's naming lint on them is expected.
pub const LEGACY_COUNTERS: [&str; 8] = [
    "aadpodidentity_assigned_identity_addition_count",
    "aadpodidentity_assigned_identity_deletion_count",
    "aadpodidentity_assigned_identity_update_count",
    "aadpodidentity_mic_cycle_count",
    "aadpodidentity_mic_new_leader_election_count",
    "aadpodidentity_cloud_provider_operations_errors_count",
    "aadpodidentity_kubernetes_api_operations_errors_count",
    "aadpodidentity_imds_operations_errors_count",
];

/// Runs `promtool check metrics` on `text` and fails the test on a parse error or on any
/// complaint other than the legacy counter names.
pub fn promtool_accepts(text: &str) {
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
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition to promtool");
    let out = child.wait_with_output().expect("promtool's result");
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
