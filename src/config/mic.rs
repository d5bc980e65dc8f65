//! Flags of `aad-pod-identity mic`, the controller.
//!
//! Names and defaults are the Go original's (REFERENCE.md), with two deliberate changes that
//! docs/migration.md records: namespaced matching is on by default (`--forceNamespaced=false`
//! restores cluster-wide matching), and new flags for the unassign grace period and the ARM
//! write budget.

use clap::{ArgAction, Args};
use std::path::PathBuf;
use std::time::Duration;

use super::compat::{CommonCompatArgs, MicCompatArgs};
use super::{CsvList, LogArgs, parse_go_duration, parse_list, parse_port};

/// Configuration of the controller.
#[derive(Clone, Debug, Args)]
pub struct MicArgs {
    /// Path to a kubeconfig; in-cluster configuration (or $KUBECONFIG) when absent.
    #[arg(long, env = "KUBECONFIG_PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Path to the cloud configuration (azure.json); the environment (TENANT_ID, CLIENT_ID, …) when absent.
    #[arg(long, env = "MIC_CLOUDCONFIG")]
    pub cloudconfig: Option<PathBuf>,

    /// Match pods only with identities and bindings in their own namespace. On by default;
    /// `--forceNamespaced=false` restores the original's cluster-wide matching.
    #[arg(
        long = "forceNamespaced",
        env = "FORCENAMESPACED",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true"
    )]
    pub force_namespaced: bool,

    /// How long a failed sync keeps being retried before MIC gives up on it and waits for the
    /// next change (Go duration).
    #[arg(long = "syncRetryDuration", env = "MIC_SYNC_RETRY_DURATION", default_value = "3600s", value_parser = parse_go_duration)]
    pub sync_retry_duration: Duration,

    /// This replica's identity in leader election (defaults to the host name).
    #[arg(long = "leader-election-instance", env = "MIC_LEADER_ELECTION_INSTANCE", default_value_t = default_instance())]
    pub leader_election_instance: String,

    /// Namespace of the leader-election Lease.
    #[arg(
        long = "leader-election-namespace",
        env = "MIC_LEADER_ELECTION_NAMESPACE",
        default_value = "default"
    )]
    pub leader_election_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(
        long = "leader-election-name",
        env = "MIC_LEADER_ELECTION_NAME",
        default_value = "aad-pod-identity-mic"
    )]
    pub leader_election_name: String,

    /// Lease duration: a new leader takes over at most this long after the old one stops renewing.
    #[arg(long = "leader-election-duration", env = "MIC_LEADER_ELECTION_DURATION", default_value = "15s", value_parser = parse_go_duration)]
    pub leader_election_duration: Duration,

    /// New: also hold the original's Endpoints leader lock (same name and namespace), so a Go
    /// MIC still running during a rolling migration never leads at the same time. Turn off
    /// once no Go MIC is left.
    #[arg(
        long = "leader-election-endpoints-lock",
        env = "MIC_LEADER_ELECTION_ENDPOINTS_LOCK",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value_t = true,
        default_missing_value = "true"
    )]
    pub leader_election_endpoints_lock: bool,

    /// New: the longest MIC's actor thread may go without running before this replica stops
    /// renewing the leader lease (another replica takes over) and `/healthz` answers 500 (the
    /// liveness probe restarts it). The lease is renewed from a thread of its own, so busy
    /// work never costs it; this bounds a wedged MIC. `0s` turns the rule off.
    #[arg(long = "actor-stall-limit", env = "MIC_ACTOR_STALL_LIMIT", default_value = "5m", value_parser = parse_go_duration)]
    pub actor_stall_limit: Duration,

    /// Port of `/healthz` (`Active` on the leader, `Not Active` elsewhere; 200 either way) and
    /// `/readyz` (503 unless leading).
    #[arg(long = "http-probe-port", env = "MIC_HTTP_PROBE_PORT", default_value = "8080", value_parser = parse_port)]
    pub http_probe_port: u16,

    /// Port of the Prometheus `/metrics` endpoint.
    #[arg(long = "prometheus-port", env = "MIC_PROMETHEUS_PORT", default_value = "8888", value_parser = parse_port)]
    pub prometheus_port: u16,

    /// Most AzureAssignedIdentity writes (creates, status changes, deletes) in flight at once.
    /// Writes are pipelined, not batched: each answer starts the next pending write at once,
    /// one write per object at a time; retries of failed writes (each object on its own
    /// backoff) hold at most half of them. Events have their own two in flight.
    #[arg(long = "createDeleteBatch", env = "MIC_CREATE_DELETE_BATCH", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub create_delete_batch: u32,

    /// Kubernetes API requests per second MIC's client may send (lists, writes, watch starts;
    /// bursts up to the whole part of the value). 0, the default, sets no client-side limit:
    /// writes are bounded by --createDeleteBatch in flight and the API server's priority and
    /// fairness; the original's 5 would hold a burst of new pods back for minutes.
    #[arg(long = "clientQps", env = "MIC_CLIENT_QPS", default_value_t = 0.0, value_parser = parse_qps)]
    pub client_qps: f32,

    /// Comma-separated client ids of user-assigned identities MIC must never remove.
    #[arg(long = "immutable-user-msis", env = "MIC_IMMUTABLE_USER_MSIS", default_value = "", value_parser = parse_list)]
    pub immutable_user_msis: CsvList,

    /// Retries of a failed identity update before it backs off until the next change.
    #[arg(
        long = "update-user-msi-max-retry",
        env = "MIC_UPDATE_USER_MSI_MAX_RETRY",
        default_value_t = 2
    )]
    pub update_user_msi_max_retry: u32,

    /// First retry interval of a failed identity update (doubles on each retry).
    #[arg(long = "update-user-msi-retry-interval", env = "MIC_UPDATE_USER_MSI_RETRY_INTERVAL", default_value = "1s", value_parser = parse_go_duration)]
    pub update_user_msi_retry_interval: Duration,

    /// How often assigned identities are checked on Azure and re-added if someone removed them.
    #[arg(long = "identity-assignment-reconcile-interval", env = "MIC_IDENTITY_ASSIGNMENT_RECONCILE_INTERVAL", default_value = "3m", value_parser = parse_go_duration)]
    pub identity_assignment_reconcile_interval: Duration,

    /// New: how long an identity stays on a VM or scale set after its last pod there is gone,
    /// so Job and CronJob churn does not cost an ARM write per run. 0 removes at once.
    #[arg(long = "unassign-grace-period", env = "MIC_UNASSIGN_GRACE_PERIOD", default_value = "60s", value_parser = parse_go_duration)]
    pub unassign_grace_period: Duration,

    /// New: ARM writes per minute allowed per subscription, shared by every scale set and VM.
    #[arg(long = "arm-writes-per-minute", env = "MIC_ARM_WRITES_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub arm_writes_per_minute: u32,

    /// Namespace MIC runs in (set by the chart from the downward API); NMI's pods are looked
    /// for there too.
    #[arg(
        long = "mic-namespace",
        env = "MIC_POD_NAMESPACE",
        default_value = "default"
    )]
    pub mic_namespace: String,

    /// New: label selector of the NMI pods (in MIC's namespace). A node that runs pods labelled
    /// aadpodidbinding without a ready NMI pod is reported (metric and Events).
    #[arg(
        long = "nmi-selector",
        env = "MIC_NMI_SELECTOR",
        default_value = "app.kubernetes.io/component=nmi"
    )]
    pub nmi_selector: String,

    /// New: how long a node may run pods labelled aadpodidbinding without a ready NMI before it
    /// is reported.
    #[arg(long = "nmi-absence-grace", env = "MIC_NMI_ABSENCE_GRACE", default_value = "30s", value_parser = parse_go_duration)]
    pub nmi_absence_grace: Duration,

    #[command(flatten)]
    pub log: LogArgs,

    /// The original's switches without an effect here (see `config::compat`).
    #[command(flatten)]
    pub compat: CommonCompatArgs,

    /// The original MIC's type-upgrade switches (accepted and ignored).
    #[command(flatten)]
    pub mic_compat: MicCompatArgs,
}

fn default_instance() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "mic".to_string())
}

fn parse_qps(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "expected a number of requests per second such as 5 or 0.5 (0 for no limit), got {s:?}"
        )),
    }
}

impl MicArgs {
    /// `--clientQps` as a rate, `None` for no client-side limit.
    #[must_use]
    pub fn client_rate(&self) -> Option<f32> {
        (self.client_qps > 0.0).then_some(self.client_qps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mic: MicArgs,
    }

    fn parse(args: &[&str]) -> Result<MicArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("mic").chain(args.iter().copied())).map(|c| c.mic)
    }

    #[test]
    fn defaults_are_the_originals() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.sync_retry_duration, Duration::from_secs(3600));
        assert_eq!(a.leader_election_namespace, "default");
        assert_eq!(a.leader_election_name, "aad-pod-identity-mic");
        assert_eq!(a.leader_election_duration, Duration::from_secs(15));
        assert_eq!(a.actor_stall_limit, Duration::from_secs(300));
        assert_eq!((a.http_probe_port, a.prometheus_port), (8080, 8888));
        assert_eq!(a.create_delete_batch, 20);
        assert_eq!(a.client_rate(), None, "no client-side limit unless asked");
        assert!(a.immutable_user_msis.items().is_empty());
        assert_eq!(a.update_user_msi_max_retry, 2);
        assert_eq!(a.update_user_msi_retry_interval, Duration::from_secs(1));
        assert_eq!(
            a.identity_assignment_reconcile_interval,
            Duration::from_secs(180)
        );
        assert!(
            a.force_namespaced,
            "namespaced matching is the secure default"
        );
    }

    #[test]
    fn the_originals_flag_spellings_are_accepted() {
        let a = parse(&[
            "--forceNamespaced=false",
            "--syncRetryDuration=1h0m0s",
            "--createDeleteBatch=5",
            "--clientQps=2.5",
            "--immutable-user-msis=a,b",
            "--leader-election-duration=30s",
        ])
        .unwrap();
        assert!(!a.force_namespaced);
        assert_eq!(a.create_delete_batch, 5);
        assert_eq!(a.client_rate(), Some(2.5));
        assert_eq!(a.immutable_user_msis.items(), ["a", "b"]);
        assert!(parse(&["--forceNamespaced"]).unwrap().force_namespaced);
    }

    #[test]
    fn bad_values_name_the_flag_and_the_expected_form() {
        let err = parse(&["--leader-election-duration=15"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.contains("--leader-election-duration"), "{msg}");
        assert!(msg.contains("15s"), "{msg}");

        let msg = parse(&["--clientQps=-1"]).unwrap_err().to_string();
        assert!(
            msg.contains("--clientQps") && msg.contains("requests per second"),
            "{msg}"
        );

        let msg = parse(&["--prometheus-port=0"]).unwrap_err().to_string();
        assert!(
            msg.contains("--prometheus-port") && msg.contains("1 to 65535"),
            "{msg}"
        );

        let msg = parse(&["--forceNamespaced=maybe"]).unwrap_err().to_string();
        assert!(msg.contains("--forceNamespaced"), "{msg}");
    }
}
