//! Prometheus' own linter judges the metrics exposition of every metric family, with the
//! labelled ones observed (see `promtool_support` for what it may say).

use aad_pod_identity::metrics::Metrics;

mod promtool_support;

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

    promtool_support::promtool_accepts(&text);
}
