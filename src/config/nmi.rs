//! Flags of `aad-pod-identity nmi`, the node agent.
//!
//! Names and defaults are the Go original's (REFERENCE.md). Deliberate changes, recorded in
//! docs/migration.md: namespaced matching is on by default, the retry flags set the deadline of
//! an event-driven wait instead of a polling schedule, MIC's pods are recognised by their service
//! account (`--mic-service-account`), and a few new flags (`--manage-iptables`, `--iptables-backend`,
//! `--pod-arrival-timeout`, `--token-refresh-margin`, the bounds on what a client can hold, and
//! `--allowed-ad-endpoints`).

use clap::{ArgAction, Args, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::compat::{CommonCompatArgs, parse_go_bool};
use super::{LogArgs, parse_go_duration, parse_port, parse_seconds};
use crate::cloud::authority::AllowedAuthority;

/// How NMI learns which identities a pod may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OperationMode {
    /// From AzureAssignedIdentity objects written by MIC.
    #[default]
    Standard,
    /// Identities are pre-assigned by the operator; NMI reads bindings and identities directly.
    Managed,
}

/// Configuration of the node agent.
#[derive(Clone, Debug, Args)]
pub struct NmiArgs {
    /// Address NMI listens on for redirected metadata requests.
    #[arg(
        long = "nmi-listen-address",
        env = "NMI_LISTEN_ADDRESS",
        default_value = "127.0.0.1"
    )]
    pub nmi_listen_address: IpAddr,

    /// Port NMI listens on for redirected metadata requests.
    #[arg(long = "nmi-port", env = "NMI_PORT", default_value = "2579", value_parser = parse_port)]
    pub nmi_port: u16,

    /// Address of the instance metadata service (redirected by iptables, and where tokens come from).
    #[arg(
        long = "metadata-ip",
        env = "NMI_METADATA_IP",
        default_value = "169.254.169.254"
    )]
    pub metadata_ip: IpAddr,

    /// Port of the instance metadata service.
    #[arg(long = "metadata-port", env = "NMI_METADATA_PORT", default_value = "80", value_parser = parse_port)]
    pub metadata_port: u16,

    /// Name of the node this agent serves (the chart sets it from the downward API).
    #[arg(long = "node", env = "NODE_NAME", value_parser = parse_node_name)]
    pub node: String,

    /// Seconds between checks that the iptables rules are still in place.
    #[arg(long = "ipt-update-interval-sec", env = "NMI_IPT_UPDATE_INTERVAL_SEC", default_value = "60", value_parser = parse_seconds)]
    pub ipt_update_interval: Duration,

    /// Match pods only with identities in their own namespace. On by default;
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

    /// Namespace MIC runs in (its pods get the node's own token).
    #[arg(
        long = "MICNamespace",
        env = "MIC_NAMESPACE",
        default_value = "default"
    )]
    pub mic_namespace: String,

    /// New: the service account MIC's pods run as in `--MICNamespace`; those pods get the node's
    /// own identity. Empty: MIC is recognised only through an AzurePodIdentityException (the
    /// chart installs one). The original instead trusted any ReplicaSet named `mic…` there.
    #[arg(
        long = "mic-service-account",
        env = "MIC_SERVICE_ACCOUNT",
        default_value = ""
    )]
    pub mic_service_account: String,

    /// Port of `/healthz`.
    #[arg(long = "http-probe-port", env = "NMI_HTTP_PROBE_PORT", default_value = "8080", value_parser = parse_port)]
    pub http_probe_port: u16,

    /// With the interval below, sets how long a token request waits for its identity to be
    /// assigned: attempts × interval (80 s by default). The wait ends the moment it is assigned.
    #[arg(
        long = "retry-attempts-for-created",
        env = "NMI_RETRY_ATTEMPTS_FOR_CREATED",
        default_value_t = 16
    )]
    pub retry_attempts_for_created: u32,

    /// Further attempts × interval allowed for an identity that is Created to become Assigned.
    #[arg(
        long = "retry-attempts-for-assigned",
        env = "NMI_RETRY_ATTEMPTS_FOR_ASSIGNED",
        default_value_t = 4
    )]
    pub retry_attempts_for_assigned: u32,

    /// Seconds per attempt in the wait described above.
    #[arg(long = "find-identity-retry-interval", env = "NMI_FIND_IDENTITY_RETRY_INTERVAL", default_value = "5", value_parser = parse_seconds)]
    pub find_identity_retry_interval: Duration,

    /// Answer 403 to `/metadata/instance` instead of proxying it.
    #[arg(long = "block-instance-metadata", env = "NMI_BLOCK_INSTANCE_METADATA", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub block_instance_metadata: bool,

    /// Require the `Metadata: true` header on token requests.
    #[arg(long = "metadata-header-required", env = "NMI_METADATA_HEADER_REQUIRED", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub metadata_header_required: bool,

    /// Port of the Prometheus `/metrics` endpoint.
    #[arg(long = "prometheus-port", env = "NMI_PROMETHEUS_PORT", default_value = "9090", value_parser = parse_port)]
    pub prometheus_port: u16,

    /// standard (identities from MIC's AzureAssignedIdentity objects) or managed.
    #[arg(long = "operation-mode", env = "NMI_OPERATION_MODE", value_enum, ignore_case = true, default_value_t = OperationMode::Standard)]
    pub operation_mode: OperationMode,

    /// Answer 503 with `Retry-After` instead of 404 when the identity is not assigned in time.
    #[arg(long = "set-retry-after-header", env = "NMI_SET_RETRY_AFTER_HEADER", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub set_retry_after_header: bool,

    /// Delete conntrack entries of connections to the metadata address whenever the rules go
    /// in, so a connection opened before the redirect does not keep bypassing NMI. Default:
    /// false, or true with --node-gate.
    #[arg(long = "enable-conntrack-deletion", env = "NMI_ENABLE_CONNTRACK_DELETION", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub enable_conntrack_deletion: Option<bool>,

    /// New: lift the startup taint (--node-gate-taint) from this node once the caches are synced
    /// and the iptables rules are verified, and put it back when the rules cannot be restored.
    #[arg(long = "node-gate", env = "NMI_NODE_GATE", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true")]
    pub node_gate: bool,

    /// New: key of the startup taint the node gate owns (nodes join with `<key>=true:NoSchedule`).
    #[arg(long = "node-gate-taint", env = "NMI_NODE_GATE_TAINT", default_value = crate::actors::nmi::gate::DEFAULT_TAINT_KEY, value_parser = parse_taint_key)]
    pub node_gate_taint: String,

    /// Start even when the node's kubelet uses the kubenet network plugin (refused by default,
    /// as by the original: a pod with NET_RAW can pose as another pod there).
    #[arg(long = "allow-network-plugin-kubenet", env = "NMI_ALLOW_NETWORK_PLUGIN_KUBENET", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_parser = parse_go_bool)]
    pub allow_network_plugin_kubenet: bool,

    /// The kubelet's defaults file, read to tell whether the node uses kubenet.
    #[arg(
        long = "kubelet-config",
        env = "NMI_KUBELET_CONFIG",
        default_value = "/etc/default/kubelet"
    )]
    pub kubelet_config: PathBuf,

    /// Path to a kubeconfig; in-cluster configuration (or $KUBECONFIG) when absent.
    #[arg(long, env = "KUBECONFIG_PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// New: install and reconcile the iptables redirect (off in the sandbox, where pods are
    /// loopback addresses).
    #[arg(long = "manage-iptables", env = "NMI_MANAGE_IPTABLES", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = true, default_missing_value = "true")]
    pub manage_iptables: bool,

    /// New: which iptables holds the node's rules: `auto` uses the backend (legacy or nft) in
    /// which the kubelet created its canary chains, as Kubernetes' iptables-wrapper does (the
    /// original's image ran that wrapper); `path` uses `iptables` as found on the PATH.
    #[arg(long = "iptables-backend", env = "NMI_IPTABLES_BACKEND", value_enum, default_value_t = crate::actors::nmi::iptables::Backend::Auto)]
    pub iptables_backend: crate::actors::nmi::iptables::Backend,

    /// New: how long a request from an address not yet known waits for its pod to appear in
    /// the watch (the first request can beat the watch event).
    #[arg(long = "pod-arrival-timeout", env = "NMI_POD_ARRIVAL_TIMEOUT", default_value = "2s", value_parser = parse_go_duration)]
    pub pod_arrival_timeout: Duration,

    /// New: cached tokens are refreshed this long before they expire.
    #[arg(long = "token-refresh-margin", env = "NMI_TOKEN_REFRESH_MARGIN", default_value = "5m", value_parser = parse_go_duration)]
    pub token_refresh_margin: Duration,

    /// New: token requests that may wait at once for one pod (or one unknown address); more
    /// are answered 429 at once.
    #[arg(long = "max-waiters-per-pod", env = "NMI_MAX_WAITERS_PER_POD", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waiters_per_pod: u32,

    /// New: token requests that may wait at once on the node; more are answered 503 at once.
    #[arg(long = "max-waiters", env = "NMI_MAX_WAITERS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_waiters: u32,

    /// New: metadata-service token requests NMI has out at once (Azure allows 5 concurrent per
    /// VM; the default leaves one for the node's other agents); 0 for no bound. More wait in a
    /// line bounded by --max-waiters (per identity: --max-waiters-per-pod).
    #[arg(
        long = "max-metadata-fetches",
        env = "NMI_MAX_METADATA_FETCHES",
        default_value_t = 4
    )]
    pub max_metadata_fetches: u32,

    /// New: metadata-service token requests NMI sends in any one second (Azure allows 20 per
    /// VM; the default leaves 4 for the node's other agents); 0 for no pacing.
    #[arg(
        long = "max-metadata-fetches-per-second",
        env = "NMI_MAX_METADATA_FETCHES_PER_SECOND",
        default_value_t = 16
    )]
    pub max_metadata_fetches_per_second: u32,

    /// New: worker threads serving the token endpoint; 0 for one per CPU the process may use
    /// (`std::thread::available_parallelism`: the affinity mask capped by the container's CPU
    /// limit, rounded down, at least 1, so the chart's 200m limit gives one). At most 256.
    #[arg(long = "http-workers", env = "NMI_HTTP_WORKERS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(..=256))]
    pub http_workers: u32,

    /// New: cached (identity, resource) tokens kept at most; beyond, idle ones are evicted.
    #[arg(long = "max-token-cache-slots", env = "NMI_MAX_TOKEN_CACHE_SLOTS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_token_cache_slots: u32,

    /// New: requests relayed to the metadata service at once; more are answered 503 at once.
    #[arg(long = "max-pass-through", env = "NMI_MAX_PASS_THROUGH", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pass_through: u32,

    /// New: time a caller has to send the body of a request relayed to the metadata service
    /// (408 after it).
    #[arg(long = "pass-through-body-timeout", env = "NMI_PASS_THROUGH_BODY_TIMEOUT", default_value = "10s", value_parser = parse_go_duration)]
    pub pass_through_body_timeout: Duration,

    /// New: open connections one source address may hold; requests on more are answered 429
    /// and their connection closed.
    #[arg(long = "max-connections-per-source", env = "NMI_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_source: u32,

    /// New: Azure AD authorities an AzureIdentity's `adEndpoint` may name besides the known
    /// clouds' (`https://login.microsoftonline.com/`, `.us`, `login.chinacloudapi.cn`, …) and
    /// `$AZURE_AUTHORITY_HOST`; comma-separated `https://host[:port]` (plain `http://` only for
    /// loopback hosts, for the sandbox). Other endpoints are refused (403) before any Secret is read.
    #[arg(long = "allowed-ad-endpoints", env = "NMI_ALLOWED_AD_ENDPOINTS", value_delimiter = ',', value_parser = AllowedAuthority::parse)]
    pub allowed_ad_endpoints: Vec<AllowedAuthority>,

    /// New: serve federated identities (an AzureIdentity annotated
    /// `aadpodidentity.k8s.io/federated: "true"`, and pods labelled
    /// `azure.workload.identity/use: "true"` whose service account names a client id) with the
    /// calling pod's service-account token exchanged at Azure AD; needs `create` on
    /// `serviceaccounts/token` and list/watch on `serviceaccounts` (docs/federation.md).
    #[arg(long = "enable-federation", env = "NMI_ENABLE_FEDERATION", action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", value_parser = parse_go_bool)]
    pub enable_federation: bool,

    /// New: tenant of federated identities that name none (no `tenantID`, no
    /// `azure.workload.identity/tenant-id` annotation).
    #[arg(
        long = "federation-tenant-id",
        env = "NMI_FEDERATION_TENANT_ID",
        default_value = ""
    )]
    pub federation_tenant_id: String,

    /// New: audience of the service-account tokens exchanged at Azure AD (the federated
    /// credentials' audience; sovereign clouds use their own).
    #[arg(long = "federation-audience", env = "NMI_FEDERATION_AUDIENCE", default_value = crate::actors::nmi::federated::DEFAULT_AUDIENCE)]
    pub federation_audience: String,

    #[command(flatten)]
    pub log: LogArgs,

    /// The original's switches without an effect here (see `config::compat`).
    #[command(flatten)]
    pub compat: CommonCompatArgs,
}

impl NmiArgs {
    /// Whether conntrack entries are deleted when the rules go in: as asked, else on exactly
    /// when the node gate is.
    #[must_use]
    pub fn conntrack_deletion(&self) -> bool {
        self.enable_conntrack_deletion.unwrap_or(self.node_gate)
    }

    /// How long a request waits for its pod's AzureAssignedIdentity to appear and become
    /// Assigned: the original's polling budget for it, attempts × interval (80 s by default).
    #[must_use]
    pub fn assignment_deadline(&self) -> Duration {
        self.find_identity_retry_interval
            .saturating_mul(self.retry_attempts_for_created)
            .min(crate::actors::nmi::broker::MAX_WAIT)
    }

    /// Extra wait granted when the object exists but is still Created at the deadline (the
    /// original's second polling loop): attempts × interval (20 s by default).
    #[must_use]
    pub fn assigned_grace(&self) -> Duration {
        self.find_identity_retry_interval
            .saturating_mul(self.retry_attempts_for_assigned)
            .min(crate::actors::nmi::broker::MAX_WAIT)
    }
}

/// A taint key: a qualified name (`[prefix/]name`, as label keys).
fn parse_taint_key(s: &str) -> Result<String, String> {
    let (prefix, name) = s.rsplit_once('/').map_or(("", s), |(p, n)| (p, n));
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = !s.contains('/') || parse_node_name(prefix).is_ok();
    if name_ok && prefix_ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected a taint key such as aadpodidentity.k8s.io/nmi-not-ready ([DNS subdomain/]name), got {s:?}"
        ))
    }
}

fn parse_node_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected a Kubernetes node name (lower-case DNS subdomain), got {s:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        nmi: NmiArgs,
    }

    fn parse(args: &[&str]) -> Result<NmiArgs, clap::Error> {
        Cli::try_parse_from(
            ["nmi", "--node=node-0"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .map(|c| c.nmi)
    }

    #[test]
    fn defaults_are_the_originals() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.nmi_listen_address.to_string(), "127.0.0.1");
        assert_eq!(a.nmi_port, 2579);
        assert_eq!(a.metadata_ip.to_string(), "169.254.169.254");
        assert_eq!(a.metadata_port, 80);
        assert_eq!(a.ipt_update_interval, Duration::from_secs(60));
        assert_eq!(a.mic_namespace, "default");
        assert_eq!(a.http_probe_port, 8080);
        assert_eq!(
            (a.retry_attempts_for_created, a.retry_attempts_for_assigned),
            (16, 4)
        );
        assert_eq!(a.find_identity_retry_interval, Duration::from_secs(5));
        assert!(!a.block_instance_metadata);
        assert!(a.metadata_header_required);
        assert_eq!(a.prometheus_port, 9090);
        assert_eq!(a.operation_mode, OperationMode::Standard);
        assert!(!a.set_retry_after_header);
        assert_eq!(a.enable_conntrack_deletion, None);
        assert!(!a.conntrack_deletion());
        assert!(!a.node_gate);
        assert!(!a.allow_network_plugin_kubenet);
        assert_eq!(a.kubelet_config, PathBuf::from("/etc/default/kubelet"));
        assert_eq!(a.assignment_deadline(), Duration::from_secs(80));
        assert_eq!(a.assigned_grace(), Duration::from_secs(20));
        assert_eq!(a.mic_service_account, "");
        assert_eq!((a.max_waiters_per_pod, a.max_waiters), (100, 10_000));
        assert_eq!(a.http_workers, 0, "one per CPU the process may use");
        assert_eq!(
            (a.max_metadata_fetches, a.max_metadata_fetches_per_second),
            (4, 16)
        );
        assert!(a.allowed_ad_endpoints.is_empty());
        assert!(!a.enable_federation);
        assert_eq!(a.federation_audience, "api://AzureADTokenExchange");
        assert_eq!(a.federation_tenant_id, "");
        let f = parse(&["--enable-federation", "--federation-tenant-id=t"]).unwrap();
        assert!(f.enable_federation && f.federation_tenant_id == "t");
    }

    #[test]
    fn huge_retry_settings_are_capped_instead_of_overflowing() {
        let a = parse(&[
            "--find-identity-retry-interval=18446744073709551615",
            "--retry-attempts-for-created=4294967295",
            "--retry-attempts-for-assigned=4294967295",
        ])
        .unwrap();
        assert_eq!(
            a.assignment_deadline(),
            crate::actors::nmi::broker::MAX_WAIT
        );
        assert_eq!(a.assigned_grace(), crate::actors::nmi::broker::MAX_WAIT);
    }

    #[test]
    fn ad_endpoints_must_be_https_or_loopback_http() {
        let a = parse(&["--allowed-ad-endpoints=https://login.example.com/,http://127.0.0.1:8443"])
            .unwrap();
        assert_eq!(a.allowed_ad_endpoints.len(), 2);
        let msg = parse(&["--allowed-ad-endpoints=http://login.example.com/"])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("--allowed-ad-endpoints") && msg.contains("loopback"),
            "{msg}"
        );
    }

    #[test]
    fn go_style_boolean_flags_work() {
        let a = parse(&[
            "--block-instance-metadata",
            "--metadata-header-required=false",
            "--operation-mode=managed",
        ])
        .unwrap();
        assert!(a.block_instance_metadata);
        assert!(!a.metadata_header_required);
        assert_eq!(a.operation_mode, OperationMode::Managed);
    }

    #[test]
    fn conntrack_deletion_is_on_by_default_with_the_node_gate_and_can_be_turned_off() {
        let a = parse(&["--node-gate"]).unwrap();
        assert!(a.node_gate && a.conntrack_deletion());
        assert_eq!(a.node_gate_taint, "aadpodidentity.k8s.io/nmi-not-ready");
        let a = parse(&["--node-gate", "--enable-conntrack-deletion=false"]).unwrap();
        assert!(!a.conntrack_deletion());
        assert!(
            parse(&["--enable-conntrack-deletion"])
                .unwrap()
                .conntrack_deletion()
        );
        let a = parse(&["--node-gate-taint=example.com/guard"]).unwrap();
        assert_eq!(a.node_gate_taint, "example.com/guard");
        for bad in ["", "-x", "a/b/c", "Bad_Prefix/x", "x/"] {
            let msg = parse(&[&format!("--node-gate-taint={bad}")])
                .unwrap_err()
                .to_string();
            assert!(msg.contains("--node-gate-taint"), "{bad}: {msg}");
        }
    }

    #[test]
    fn bad_values_name_the_flag_and_the_expected_form() {
        let err = parse(&["--nmi-port=abc"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--nmi-port"), "{err}");

        // A thread per worker: a typo must not ask for thousands.
        let msg = parse(&["--http-workers=4000"]).unwrap_err().to_string();
        assert!(
            msg.contains("--http-workers") && msg.contains("0..=256"),
            "{msg}"
        );
        assert_eq!(parse(&["--http-workers=256"]).unwrap().http_workers, 256);

        let msg = parse(&["--find-identity-retry-interval=often"])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("--find-identity-retry-interval") && msg.contains("seconds"),
            "{msg}"
        );

        let msg = parse(&["--metadata-ip=not-an-ip"]).unwrap_err().to_string();
        assert!(msg.contains("--metadata-ip"), "{msg}");

        let msg = parse(&["--operation-mode=auto"]).unwrap_err().to_string();
        assert!(msg.contains("standard") && msg.contains("managed"), "{msg}");

        let msg = Cli::try_parse_from(["nmi", "--node=Bad_Node"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("--node") && msg.contains("DNS subdomain"),
            "{msg}"
        );
    }

    #[test]
    fn node_is_required() {
        let err = Cli::try_parse_from(["nmi"]).err().unwrap();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--node"));
    }
}
