//! The binary's command line, run as a subprocess: generated files, `--help`, exit codes.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aad-pod-identity"))
}

fn help(sub: &str) -> String {
    let out = bin().args([sub, "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Asserts that `--help` lists `--flag` and, on the lines that follow it, `[default: value]`.
fn assert_flag(help: &str, flag: &str, default: Option<&str>) {
    let start = help
        .find(&format!("--{flag}"))
        .unwrap_or_else(|| panic!("--{flag} missing from help:\n{help}"));
    let rest = &help[start..];
    let end = rest[2..].find("\n  -").map_or(rest.len(), |i| i + 2);
    let entry = &rest[..end];
    if let Some(d) = default {
        assert!(
            entry.contains(&format!("[default: {d}]")),
            "--{flag} should show default {d:?}:\n{entry}"
        );
    }
}

#[test]
fn committed_crds_match_what_crdgen_generates() {
    let out = bin()
        .args(["crdgen", "--check", "--out-dir"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/chart/crds"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chart/crds drifted from the types; run `cargo run -- crdgen`:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn crdgen_check_fails_on_a_changed_file() {
    let dir = std::env::temp_dir().join(format!("crdgen-drift-{}", std::process::id()));
    let status = bin()
        .args(["crdgen", "--out-dir"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let victim = dir.join("aadpodidentity.k8s.io_azureidentities.yaml");
    let text = std::fs::read_to_string(&victim).unwrap();
    std::fs::write(&victim, text.replace("ClientID", "ClientId")).unwrap();
    let out = bin()
        .args(["crdgen", "--check", "--out-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("azureidentities.yaml differs"));
}

#[test]
fn mic_help_lists_every_flag_of_the_original_with_its_default() {
    let h = help("mic");
    for (flag, default) in [
        ("kubeconfig", None),
        ("cloudconfig", None),
        ("forceNamespaced", Some("true")),
        ("syncRetryDuration", Some("3600s")),
        ("leader-election-instance", None),
        ("leader-election-namespace", Some("default")),
        ("leader-election-name", Some("aad-pod-identity-mic")),
        ("leader-election-duration", Some("15s")),
        ("http-probe-port", Some("8080")),
        ("prometheus-port", Some("8888")),
        ("createDeleteBatch", Some("20")),
        ("clientQps", Some("0")),
        ("immutable-user-msis", None), // default is the empty list, which clap does not print
        ("update-user-msi-max-retry", Some("2")),
        ("update-user-msi-retry-interval", Some("1s")),
        ("identity-assignment-reconcile-interval", Some("3m")),
        ("log-format", Some("text")),
        ("unassign-grace-period", Some("60s")),
        ("arm-writes-per-minute", Some("60")),
    ] {
        assert_flag(&h, flag, default);
    }
    assert!(
        h.contains("MIC_POD_NAMESPACE"),
        "env equivalent of the MIC namespace"
    );
}

#[test]
fn nmi_help_lists_every_flag_of_the_original_with_its_default() {
    let h = help("nmi");
    for (flag, default) in [
        ("nmi-listen-address", Some("127.0.0.1")),
        ("nmi-port", Some("2579")),
        ("metadata-ip", Some("169.254.169.254")),
        ("metadata-port", Some("80")),
        ("node", None),
        ("ipt-update-interval-sec", Some("60")),
        ("forceNamespaced", Some("true")),
        ("MICNamespace", Some("default")),
        ("http-probe-port", Some("8080")),
        ("retry-attempts-for-created", Some("16")),
        ("retry-attempts-for-assigned", Some("4")),
        ("find-identity-retry-interval", Some("5")),
        ("block-instance-metadata", Some("false")),
        ("metadata-header-required", Some("true")),
        ("prometheus-port", Some("9090")),
        ("operation-mode", Some("standard")),
        ("set-retry-after-header", Some("false")),
        ("enable-conntrack-deletion", Some("false")),
        ("log-format", Some("text")),
    ] {
        assert_flag(&h, flag, default);
    }
}

#[test]
fn a_bad_flag_value_exits_2_naming_the_flag_and_the_expected_form() {
    let out = bin()
        .args(["mic", "--leader-election-duration=fifteen"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--leader-election-duration"), "{err}");
    assert!(err.contains("such as 15s"), "{err}");

    let out = bin()
        .args(["nmi", "--node=n0", "--log-format=xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log-format") && err.contains("json"),
        "{err}"
    );
}

#[test]
fn nmi_refuses_a_kubenet_node_unless_allowed_as_the_original_did() {
    let dir = std::env::temp_dir().join(format!("nmi-netplugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubelet = dir.join("kubelet");
    std::fs::write(
        &kubelet,
        "KUBELET_FLAGS=--address=0.0.0.0 --network-plugin=kubenet --max-pods=110\n",
    )
    .unwrap();
    // No cluster is reachable: a kubeconfig that does not exist makes the first step after
    // the kubenet check fail, so how far NMI got shows in its error.
    let run = |extra: &[&str]| {
        let out = bin()
            .args(["nmi", "--node=node-0", "--manage-iptables=false"])
            .arg(format!("--kubelet-config={}", kubelet.display()))
            .arg(format!("--kubeconfig={}", dir.join("absent").display()))
            .args(extra)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = run(&[]);
    assert!(!ok);
    assert!(
        err.contains("kubenet") && err.contains("--allow-network-plugin-kubenet"),
        "{err}"
    );
    let (ok, err) = run(&["--allow-network-plugin-kubenet"]);
    assert!(!ok, "fails later, on the missing kubeconfig");
    assert!(!err.contains("kubenet"), "allowed, yet refused: {err}");
    std::fs::write(&kubelet, "KUBELET_FLAGS=--network-plugin=cni\n").unwrap();
    let (_, err) = run(&[]);
    assert!(!err.contains("kubenet"), "not kubenet, yet refused: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The argument lists the original v1.8.17 passes: its Helm chart with default values and
/// `deploy/infra/*.yaml` (MIC with azure.json, NMI in standard and managed mode), and the
/// chart's optional flags as a value file can turn them on. Each must parse; the process then
/// fails for want of a cluster (exit 1), never with a usage error (exit 2).
const ORIGINAL_MIC_ARGS: &[&[&str]] = &[
    &[
        "--cloudconfig=/nonexistent/azure.json",
        "--logtostderr",
        "--log-format=text",
        "-v=0",
        "--leader-election-instance=mic-0",
        "--leader-election-namespace=default",
        "--leader-election-name=aad-pod-identity-mic",
        "--leader-election-duration=15s",
        "--http-probe-port=8080",
        "--createDeleteBatch=20",
        "--clientQps=5",
        "--immutable-user-msis=a,b",
        "--prometheus-port=8888",
        "--syncRetryDuration=3600s",
        "--update-user-msi-max-retry=2",
        "--update-user-msi-retry-interval=1s",
        "--identity-assignment-reconcile-interval=3m",
        "--custom-user-agent=operator",
    ],
    &[
        "--kubeconfig=/nonexistent/kubeconfig",
        "--cloudconfig=/nonexistent/azure.json",
        "--logtostderr",
    ],
    &[
        "--logtostderr",
        "--alsologtostderr=false",
        "--v=4",
        "--vmodule=mic=5",
        "--log_dir=/tmp",
        "--log_file=/tmp/mic.log",
        "--log_file_max_size=1800",
        "--skip_headers",
        "--skip_log_headers=false",
        "--add_dir_header=false",
        "--stderrthreshold=2",
        "--log_backtrace_at=mic.go:1",
        "--one_output=true",
        "--forceNamespaced=false",
        "--enableScaleFeatures=false",
        "--enableProfile=false",
        "--config-map-name=aad-pod-identity-config",
        "--type-upgrade-status-key=type-upgrade-status",
        "--enable-type-upgrade=true",
        "--cloudconfig=/nonexistent/azure.json",
    ],
    // Go's flag package reads `-name` as `--name`; manifests written for the original use both.
    &[
        "-logtostderr",
        "-v=2",
        "-cloudconfig=/nonexistent/azure.json",
        "-leader-election-duration=15s",
        "-forceNamespaced=false",
        "-enableScaleFeatures=true",
    ],
];

const ORIGINAL_NMI_ARGS: &[&[&str]] = &[
    &[
        "--node=aks-nodepool1-0",
        "--http-probe-port=8085",
        "--ipt-update-interval-sec=60",
        "--MICNamespace=default",
        "--retry-attempts-for-created=16",
        "--retry-attempts-for-assigned=4",
        "--find-identity-retry-interval=5",
        "--enableScaleFeatures=true",
        "--prometheus-port=9090",
        "--block-instance-metadata=true",
        "--metadata-header-required=true",
        "--log-format=json",
        "-v=2",
        "--operation-mode=standard",
        "--allow-network-plugin-kubenet=false",
        "--kubelet-config=/etc/default/kubelet",
        "--custom-user-agent=operator",
        "--set-retry-after-header=false",
        "--enable-conntrack-deletion=false",
        "--kubeconfig=/nonexistent/kubeconfig",
    ],
    &[
        "--node=aks-nodepool1-0",
        "--operation-mode=managed",
        "--forceNamespaced",
        "--http-probe-port=8085",
        "--enableScaleFeatures=true",
        "--metadata-header-required=true",
        "--logtostderr",
        "--enableProfile",
        "--kubeconfig=/nonexistent/kubeconfig",
    ],
    &[
        "-node=aks-nodepool1-0",
        "-logtostderr",
        "-v=2",
        "-enableScaleFeatures=true",
        "-http-probe-port=8085",
        "-kubeconfig=/nonexistent/kubeconfig",
    ],
];

fn assert_starts_without_usage_error(sub: &str, args: &[&str]) {
    let out = bin()
        .arg(sub)
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("MIC_POD_NAMESPACE", "default")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(2),
        "{sub} {args:?} was refused as a usage error:\n{stderr}"
    );
    assert!(
        !stderr.contains("unexpected argument") && !stderr.contains("invalid value"),
        "{sub} {args:?}:\n{stderr}"
    );
    // It got past the command line: it failed on the missing cluster or cloud configuration.
    assert_eq!(out.status.code(), Some(1), "{sub} {args:?}:\n{stderr}");
}

#[test]
fn the_originals_argument_lists_start_mic_and_nmi_without_a_usage_error() {
    for args in ORIGINAL_MIC_ARGS {
        assert_starts_without_usage_error("mic", args);
    }
    for args in ORIGINAL_NMI_ARGS {
        assert_starts_without_usage_error("nmi", args);
    }
}

/// A cloud name the original does not know is refused at start, naming the known ones; MIC
/// does not fall back to the public cloud.
#[test]
fn mic_refuses_an_unknown_cloud_name_clearly() {
    let dir = std::env::temp_dir().join(format!("cli-cloud-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("azure.json");
    std::fs::write(
        &file,
        r#"{"cloud":"AzureMoonCloud","subscriptionId":"s","useManagedIdentityExtension":true}"#,
    )
    .unwrap();
    let out = bin()
        .arg("mic")
        .arg(format!("--cloudconfig={}", file.display()))
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"unknown cloud "AzureMoonCloud""#)
            && stderr.contains("AzureUSGovernmentCloud"),
        "{stderr}"
    );
}
