//! MIC and NMI as the chart runs them: their workloads in the simulated cluster (MIC's
//! Deployment, NMI's DaemonSet) and the settings each replica and node agent of the sandbox
//! parses from those workloads' container arguments.
//!
//! The arguments are the single source of truth, as on a cluster: what `kubectl get deployment
//! aad-pod-identity-mic -o yaml` shows is what the sandbox's MIC replicas run with, so a client
//! that reads a cluster's configuration from its workloads (the e2e suite does) reads the
//! sandbox's the same way. Only what the sandbox must own (addresses, ports, the kubeconfig,
//! the cloud configuration, iptables) is set by the sandbox, and passing it is refused.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use aad_pod_identity::actors::mic::run::MicSettings;
use aad_pod_identity::actors::nmi::federated::Federation;
use aad_pod_identity::config::mic::MicArgs;
use aad_pod_identity::config::nmi::NmiArgs;
use aad_pod_identity::nmi::NmiSettings;

/// Namespace of MIC's and NMI's workloads (and of MIC's leader-election Lease).
pub const NAMESPACE: &str = "default";
/// Name of MIC's Deployment (and the prefix of its pods' names).
pub const MIC_NAME: &str = "aad-pod-identity-mic";
/// Name of NMI's DaemonSet.
pub const NMI_NAME: &str = "aad-pod-identity-nmi";
/// The variable a MIC pod's `--leader-election-instance` names (its pod name, as in the chart).
const MIC_POD_NAME_VAR: &str = "$(MIC_POD_NAME)";
/// The variable an NMI pod's `--node` names (its node, as in the chart).
const NODE_NAME_VAR: &str = "$(NODE_NAME)";

/// MIC flags the sandbox sets itself.
const MIC_OWNED: &[(&str, &str)] = &[
    ("--kubeconfig", "the sandbox's API server"),
    ("--cloudconfig", "the simulated Azure"),
    ("--leader-election-instance", "the pod's name"),
    ("--http-probe-port", "a free port"),
    ("--prometheus-port", "a free port"),
];

/// NMI flags the sandbox sets itself.
const NMI_OWNED: &[(&str, &str)] = &[
    ("--node", "each node's name"),
    ("--kubeconfig", "the sandbox's API server"),
    ("--nmi-listen-address", "the node's address"),
    ("--nmi-port", "the sandbox's --nmi-port"),
    ("--metadata-ip", "the node's simulated metadata service"),
    ("--metadata-port", "the node's simulated metadata service"),
    ("--http-probe-port", "a free port"),
    ("--prometheus-port", "a free port"),
];

/// A flag the sandbox refuses or cannot parse.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The flag is one the sandbox sets itself.
    #[error("{component} flag {flag} is set by the sandbox ({owner})")]
    Owned {
        /// `mic` or `nmi`.
        component: &'static str,
        /// The flag.
        flag: String,
        /// What the sandbox sets it to.
        owner: &'static str,
    },
    /// The component's own parser refused the arguments.
    #[error("{component} arguments {args:?}: {message}")]
    Invalid {
        /// `mic` or `nmi`.
        component: &'static str,
        /// The arguments.
        args: Vec<String>,
        /// The parser's message.
        message: String,
    },
}

fn refuse_owned(
    component: &'static str,
    owned: &[(&str, &'static str)],
    extra: &[String],
) -> Result<(), Error> {
    for arg in extra {
        let flag = arg.split('=').next().unwrap_or(arg);
        if let Some((_, owner)) = owned.iter().find(|(f, _)| *f == flag) {
            return Err(Error::Owned {
                component,
                flag: flag.to_string(),
                owner,
            });
        }
    }
    Ok(())
}

/// Whether `args` set `flag` (as `--flag` or `--flag=value`).
fn sets(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

/// The container arguments of MIC's pods: the sandbox's own, then `extra` (`--mic-arg`).
/// `unassign_grace` is the sandbox's `--unassign-grace-period`, left out when `extra` sets it.
pub fn mic_container_args(
    unassign_grace: Duration,
    extra: &[String],
) -> Result<Vec<String>, Error> {
    refuse_owned("mic", MIC_OWNED, extra)?;
    let mut args = vec![
        "mic".to_string(),
        format!("--leader-election-instance={MIC_POD_NAME_VAR}"),
    ];
    if !sets(extra, "--leader-election-namespace") {
        args.push(format!("--leader-election-namespace={NAMESPACE}"));
    }
    if !sets(extra, "--unassign-grace-period") {
        args.push(format!(
            "--unassign-grace-period={}ms",
            unassign_grace.as_millis()
        ));
    }
    args.extend(extra.iter().cloned());
    // Refused here rather than when the first pod starts.
    parse_mic(&args, "validation")?;
    Ok(args)
}

/// The container arguments of NMI's pods: `nmi`, the node, then `extra` (`--nmi-arg`).
pub fn nmi_container_args(extra: &[String]) -> Result<Vec<String>, Error> {
    refuse_owned("nmi", NMI_OWNED, extra)?;
    let mut args = vec!["nmi".to_string(), format!("--node={NODE_NAME_VAR}")];
    args.extend(extra.iter().cloned());
    parse_nmi(&args, "validation")?;
    Ok(args)
}

/// One component's container arguments (the subcommand first, `var` replaced by `value`, as
/// the kubelet expands `$(VAR)`), parsed as that subcommand's flags.
fn parse_container_args<T: clap::Args + clap::FromArgMatches>(
    component: &'static str,
    container_args: &[String],
    var: &str,
    value: &str,
) -> Result<T, Error> {
    let args: Vec<String> = container_args
        .iter()
        .map(|a| a.replace(var, value))
        .collect();
    T::augment_args(clap::Command::new(component))
        .try_get_matches_from(&args)
        .and_then(|m| T::from_arg_matches(&m))
        .map_err(|e| Error::Invalid {
            component,
            args,
            message: e.to_string(),
        })
}

fn parse_mic(container_args: &[String], pod: &str) -> Result<MicArgs, Error> {
    parse_container_args("mic", container_args, MIC_POD_NAME_VAR, pod)
}

fn parse_nmi(container_args: &[String], node: &str) -> Result<NmiArgs, Error> {
    parse_container_args("nmi", container_args, NODE_NAME_VAR, node)
}

/// The settings of the MIC replica that runs for `pod`, from the pod's container arguments:
/// probes and metrics on free loopback ports, the sandbox's API server through `kubeconfig`.
pub fn mic_settings(
    container_args: &[String],
    pod: &str,
    kubeconfig: &Path,
) -> Result<MicSettings, Error> {
    let args = parse_mic(container_args, pod)?;
    let mut s = MicSettings::from(&args);
    s.kubeconfig = Some(kubeconfig.to_path_buf());
    s.listen_address = IpAddr::from([127, 0, 0, 1]);
    s.http_probe_port = 0;
    s.prometheus_port = 0;
    Ok(s)
}

/// The settings of `node`'s NMI, from NMI's container arguments: it listens on the node's own
/// address `ip` (port `port`, 0 for a free one), probes and metrics on free ports of that
/// address, tokens from the node's simulated metadata service `imds`, no iptables (a pod's
/// request reaches NMI because it is sent from the pod's address), one HTTP worker.
pub fn nmi_settings(
    container_args: &[String],
    node: &str,
    ip: IpAddr,
    port: u16,
    imds: SocketAddr,
) -> Result<NmiSettings, Error> {
    let args = parse_nmi(container_args, node)?;
    let mut s = NmiSettings::from_args(&args);
    s.listen = SocketAddr::new(ip, port);
    // Several sandboxes (tests, load tests) may run at once, and every one of them has nodes
    // at 127.2.0.1, 127.2.0.2, …: free ports only.
    s.probe = SocketAddr::new(ip, 0);
    s.metrics = SocketAddr::new(ip, 0);
    s.metadata = imds;
    s.manage_iptables = false;
    // Many NMIs share this process: one worker each unless `--http-workers` says otherwise.
    if args.http_workers == 0 {
        s.http_workers = 1;
    }
    Ok(s)
}

/// The token source's federation for `node`'s NMI when its container arguments enable it
/// (`--enable-federation`, with `--federation-audience` and `--federation-tenant-id`), as the
/// `nmi` binary builds it.
pub fn nmi_federation(container_args: &[String], node: &str) -> Result<Option<Federation>, Error> {
    let args = parse_nmi(container_args, node)?;
    Ok(args
        .enable_federation
        .then(|| Federation::new(&args.federation_audience, &args.federation_tenant_id)))
}

fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/name": "aad-pod-identity", "app.kubernetes.io/component": component})
}

/// Label selector of a component's pods (`mic` or `nmi`).
#[must_use]
pub fn selector(component: &str) -> String {
    format!("app.kubernetes.io/name=aad-pod-identity,app.kubernetes.io/component={component}")
}

/// NMI's DaemonSet as the chart installs it (host network, tolerating every taint, so the node
/// gate's too), so its pods show where NMI runs, as MIC's coverage report expects. The
/// simulated kubelet marks them Ready at once; the NMIs themselves run in this process.
#[must_use]
pub fn nmi_daemonset(args: &[String]) -> Value {
    json!({
        "metadata": {"name": NMI_NAME, "namespace": NAMESPACE, "labels": labels("nmi")},
        "spec": {
            "selector": {"matchLabels": labels("nmi")},
            "template": {
                "metadata": {"labels": labels("nmi")},
                "spec": {"hostNetwork": true, "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "nmi", "image": "aad-pod-identity:sandbox", "args": args,
                        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]}]},
            },
        },
    })
}

/// MIC's Deployment as the chart installs it: `replicas` pods, each named in its own
/// `--leader-election-instance` through `$(MIC_POD_NAME)`.
#[must_use]
pub fn mic_deployment(replicas: u32, args: &[String]) -> Value {
    json!({
        "metadata": {"name": MIC_NAME, "namespace": NAMESPACE, "labels": labels("mic")},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels("mic")},
            "template": {
                "metadata": {"labels": labels("mic")},
                "spec": {"containers": [{"name": "mic", "image": "aad-pod-identity:sandbox", "args": args,
                    "env": [{"name": "MIC_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]},
            },
        },
    })
}

/// The container arguments of a pod (its first container's).
#[must_use]
pub fn pod_args(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.args.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn mic_replicas_lead_as_their_pod_and_take_extra_flags() {
        let args = mic_container_args(
            Duration::from_secs(2),
            &strings(&["--leader-election-duration=3s", "--forceNamespaced=false"]),
        )
        .unwrap();
        let s = mic_settings(&args, "aad-pod-identity-mic-abc", &PathBuf::from("/k")).unwrap();
        assert_eq!(s.leader.instance, "aad-pod-identity-mic-abc");
        assert_eq!(s.leader.namespace, NAMESPACE);
        assert_eq!(s.leader.duration, Duration::from_secs(3));
        assert_eq!(s.batch.unassign_grace, Duration::from_secs(2));
        assert!(!s.matching.force_namespaced);
        assert_eq!((s.http_probe_port, s.prometheus_port), (0, 0));
        assert_eq!(s.kubeconfig, Some(PathBuf::from("/k")));
    }

    #[test]
    fn an_extra_grace_period_replaces_the_sandboxs() {
        let args = mic_container_args(
            Duration::from_secs(60),
            &strings(&["--unassign-grace-period=1s"]),
        )
        .unwrap();
        let s = mic_settings(&args, "p", &PathBuf::from("/k")).unwrap();
        assert_eq!(s.batch.unassign_grace, Duration::from_secs(1));
    }

    #[test]
    fn flags_the_sandbox_owns_are_refused_with_the_reason() {
        let e = nmi_container_args(&strings(&["--nmi-port=2579"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "nmi flag --nmi-port is set by the sandbox (the sandbox's --nmi-port)"
        );
        let e = mic_container_args(Duration::ZERO, &strings(&["--kubeconfig", "/x"])).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Owned {
                    component: "mic",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn unknown_flags_are_refused_by_the_components_own_parser() {
        let e = nmi_container_args(&strings(&["--no-such-flag"])).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Invalid {
                    component: "nmi",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn nmi_flags_reach_the_node_agent() {
        let args = nmi_container_args(&strings(&[
            "--block-instance-metadata",
            "--set-retry-after-header",
            "--retry-attempts-for-created=2",
            "--retry-attempts-for-assigned=1",
            "--find-identity-retry-interval=1",
        ]))
        .unwrap();
        let imds: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let s = nmi_settings(&args, "node-0", "127.2.0.1".parse().unwrap(), 0, imds).unwrap();
        assert!(s.block_instance_metadata && s.set_retry_after_header);
        assert_eq!(s.assignment_wait, Duration::from_secs(2));
        assert_eq!(s.assigned_grace, Duration::from_secs(1));
        assert_eq!(s.node, "node-0");
        assert_eq!(s.metadata, imds);
        assert!(!s.manage_iptables);
    }

    /// Without extra flags NMI runs exactly as the sandbox ran it before its settings came
    /// from the DaemonSet's arguments.
    #[test]
    fn default_nmi_settings_are_the_sandboxs_former_ones() {
        let imds: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let ip: IpAddr = "127.2.0.1".parse().unwrap();
        let args = nmi_container_args(&[]).unwrap();
        let from_args = nmi_settings(&args, "node-0", ip, 0, imds).unwrap();
        let mut former = NmiSettings::new("node-0", imds);
        former.listen = SocketAddr::new(ip, 0);
        former.probe = SocketAddr::new(ip, 0);
        former.metrics = SocketAddr::new(ip, 0);
        former.manage_iptables = false;
        former.http_workers = 1;
        assert_eq!(format!("{from_args:?}"), format!("{former:?}"));
    }
}
