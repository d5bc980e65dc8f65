//! The end-to-end suite `e2e/run` as CI runs it: every scenario against the sandbox (any failed
//! scenario fails this test); scenarios whose NMI flag is off fail naming the flag; the cluster
//! backend reads an installation (workloads, leader, nodes, scale sets through ARM) from a
//! sandbox's API server with the same kubectl and ARM code it uses on a real cluster; cluster
//! mode refuses to start without the Azure identities it needs; the suite's own unit tests;
//! the real-cluster load-test driver (`loadtest/run burst --kubeconfig`) run against a sandbox.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::start_sandbox;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn e2e(args: &[&str]) -> Output {
    let out = Command::new(repo().join("e2e/run"))
        .args(args)
        .env(
            "AAD_POD_IDENTITY_SANDBOX_BIN",
            env!("CARGO_BIN_EXE_aad-pod-identity-sandbox"),
        )
        .env("RUST_LOG", "warn")
        .env_remove("E2E_IDENTITY_FILE")
        .output()
        .expect("python3 runs e2e/run");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The table's row of `scenario`: (result, rest).
fn row<'a>(table: &'a str, scenario: &str) -> Option<&'a str> {
    table.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some(scenario)).then(|| parts.next().unwrap_or(""))
    })
}

/// Removes the work directory a failed run keeps (`logs: DIR`).
fn remove_kept_logs(out: &str) {
    if let Some(dir) = out.lines().find_map(|l| l.strip_prefix("logs: ")) {
        let _ = std::fs::remove_dir_all(dir.trim());
    }
}

#[test]
fn every_e2e_scenario_passes_against_the_sandbox() {
    let listed = e2e(&["--list"]);
    assert!(listed.status.success());
    let names: Vec<String> = stdout(&listed)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    // The original's e2e list, at least.
    for must in [
        "single-identity",
        "pod-deletion",
        "binding-deletion",
        "identity-deletion",
        "label-change",
        "multiple-identities",
        "same-names-two-namespaces",
        "in-use-protection",
        "invalid-identity-in-batch",
        "node-drain",
        "exception",
        "blocked-instance-metadata",
        "liveness",
        "retry-after",
        "service-principal",
        "leader-change",
        "arm-retry-after",
        "cronjob-churn",
    ] {
        assert!(names.iter().any(|n| n == must), "{must} is not a scenario");
    }

    let run = e2e(&["--sandbox"]);
    let table = stdout(&run);
    remove_kept_logs(&table);
    for name in &names {
        assert_eq!(
            row(&table, name),
            Some("PASS"),
            "scenario {name} did not pass:\n{table}"
        );
    }
    assert!(
        run.status.success(),
        "e2e/run --sandbox exited {}",
        run.status
    );
    assert!(
        table.contains(&format!("{} passed, 0 failed", names.len())),
        "{table}"
    );
}

#[test]
fn scenarios_fail_naming_the_nmi_flag_they_need_when_nmi_runs_without_it() {
    let run = e2e(&[
        "--sandbox",
        "--only=blocked-instance-metadata,retry-after",
        "--sandbox-arg=--nmi-arg=--block-instance-metadata=false",
        "--sandbox-arg=--nmi-arg=--set-retry-after-header=false",
    ]);
    let out = stdout(&run);
    remove_kept_logs(&out);
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert_eq!(row(&out, "blocked-instance-metadata"), Some("FAIL"));
    assert_eq!(row(&out, "retry-after"), Some("FAIL"));
    assert!(
        out.contains("NMI runs without --block-instance-metadata"),
        "{out}"
    );
    assert!(
        out.contains("NMI runs without --set-retry-after-header"),
        "{out}"
    );
}

/// The cluster backend's options for a sandbox started by [`start_sandbox`]: its kubeconfig, an
/// identity file naming its identities and workload service principal, and its ARM and Azure AD.
fn as_a_cluster(sandbox: &support::SandboxProcess, doc: &serde_json::Value) -> Vec<String> {
    let az = &doc["azure"];
    let sp = &az["workloadServicePrincipal"];
    let ids = serde_json::json!({
        "tenantID": az["tenantId"],
        "identities": az["identities"],
        "servicePrincipal": {"clientID": sp["clientID"], "clientSecret": sp["secret"]},
    });
    let ids_path = sandbox.dir.join("identities.json");
    std::fs::write(&ids_path, ids.to_string()).unwrap();
    let arm = az["arm"].as_str().unwrap().to_string();
    vec![
        "--kubeconfig".into(),
        sandbox.dir.join("kubeconfig").display().to_string(),
        "--identity-file".into(),
        ids_path.display().to_string(),
        "--arm-endpoint".into(),
        arm.clone(),
        "--aad-endpoint".into(),
        arm,
    ]
}

/// The cluster backend against a sandbox's API server and Azure simulator: the same discovery
/// (MIC's Deployment and NMI's DaemonSet by their labels, their flags, the leader's Lease), node
/// listing and ARM reads it makes on AKS; a scenario that needs no in-pod request passes whole;
/// one that does reaches its `kubectl exec`, which the simulator does not serve (it has no
/// containers), and fails saying so; one only the sandbox can run is SKIP with the reason.
/// The probe reads (the API server's pod proxy) are not served by the simulator either.
#[test]
fn cluster_mode_runs_against_a_sandbox_up_to_the_in_pod_requests() {
    let (sandbox, doc) = start_sandbox(
        "e2e-cluster-check",
        &[
            "--mic-replicas=2",
            "--nmi-arg=--block-instance-metadata",
            "--mic-arg=--leader-election-duration=4s",
            "--unassign-grace-period=2s",
        ],
    );
    let cluster = as_a_cluster(&sandbox, &doc);
    let args = |more: &[&str]| -> Vec<String> {
        let mut v = cluster.clone();
        v.extend(more.iter().map(|s| (*s).to_string()));
        v
    };
    let e2e_strs = |v: Vec<String>| e2e(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let run = e2e_strs(args(&["--check"]));
    let out = stdout(&run);
    assert!(run.status.success(), "{out}");
    assert!(out.contains("MIC: Deployment in default"), "{out}");
    assert!(out.contains("2 replicas"), "{out}");
    assert!(
        out.contains("lease default/aad-pod-identity-mic (4 s)"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("MIC leader: aad-pod-identity-mic-")),
        "{out}"
    );
    assert!(out.contains("block-instance-metadata=True"), "{out}");
    assert!(out.contains("virtualMachineScaleSets/"), "{out}");
    assert!(out.contains("identities: 5"), "{out}");
    // A token from the simulated Azure AD for the service principal, and an ARM GET with it.
    assert!(
        out.lines().any(|l| l.starts_with("ARM: /subscriptions/")
            && l.contains("/virtualMachineScaleSets/aks-pool0-")
            && l.ends_with("user-assigned identities")),
        "{out}"
    );

    let run = e2e_strs(args(&[
        "--only=pod-deletion,single-identity,arm-retry-after",
    ]));
    let out = stdout(&run);
    remove_kept_logs(&out);
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert_eq!(row(&out, "pod-deletion"), Some("PASS"), "{out}");
    assert_eq!(row(&out, "single-identity"), Some("FAIL"), "{out}");
    assert_eq!(row(&out, "arm-retry-after"), Some("SKIP"), "{out}");
    // It got as far as the token: Assigned, on the scale set (ARM), then `kubectl exec`.
    assert!(out.contains("is on the scale set of aks-pool0-"), "{out}");
    assert!(
        out.contains("kubectl exec … curl exited") && out.contains("/pods/validator/exec"),
        "{out}"
    );
    assert!(out.contains("only readable in the sandbox"), "{out}");
    drop(sandbox);
}

#[test]
fn cluster_mode_refuses_to_start_without_the_azure_identities_it_needs() {
    let dir = std::env::temp_dir().join(format!("e2e-refusals-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig-never-read");
    let kc = kubeconfig.to_str().unwrap();

    let run = e2e(&["--kubeconfig", kc]);
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("--identity-file"), "{err}");

    // Too few identities for the widest scenario, and no service principal.
    let one = dir.join("one.json");
    std::fs::write(
        &one,
        r#"{"identities": [{"name": "e2e-0", "clientID": "11111111-1111-1111-1111-111111111111",
            "resourceID": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/e2e-0"}]}"#,
    )
    .unwrap();
    let run = e2e(&["--kubeconfig", kc, "--identity-file", one.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("service-principal"), "{err}");
    assert!(err.contains("in-use-protection"), "{err}");
    let run = e2e(&[
        "--kubeconfig",
        kc,
        "--identity-file",
        one.to_str().unwrap(),
        "--skip=service-principal,in-use-protection,single-identity",
    ]);
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(
        err.contains("1 identities given, but multiple-identities needs 5"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_suites_own_unit_tests_pass() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s"])
        .arg(repo().join("e2e/tests"))
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("OK"), "{text}");
}

/// `loadtest/run burst --kubeconfig` is `loadtest/cluster.py`; CI runs the same driver against a
/// sandbox (its in-pod requests then leave from the pods' loopback addresses instead of
/// `kubectl exec`): every pod Assigned and answered, ARM writes read from MIC's leader.
#[test]
fn the_cluster_burst_driver_runs_against_the_sandbox() {
    let out_dir = std::env::temp_dir().join(format!("cluster-burst-{}", std::process::id()));
    let run = Command::new("python3")
        .arg(repo().join("loadtest/cluster.py"))
        .args(["burst", "--sandbox", "--pods=24", "--identities=3", "--out"])
        .arg(&out_dir)
        .env(
            "AAD_POD_IDENTITY_SANDBOX_BIN",
            env!("CARGO_BIN_EXE_aad-pod-identity-sandbox"),
        )
        .output()
        .expect("python3");
    let text = stdout(&run);
    println!("{text}{}", String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{text}");
    assert_eq!(text.lines().last(), Some(out_dir.to_str().unwrap()));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["tokens_ok"], 24, "{report}");
    assert_eq!(report["assigned"], 24, "{report}");
    assert_eq!(report["created_to_token_s"]["n"], 24, "{report}");
    // One scale set, three identities created together: a write or two, not one per pod.
    let writes = report["arm_writes"].as_i64().expect("ARM writes measured");
    assert!((1..=3).contains(&writes), "{report}");
    let _ = std::fs::remove_dir_all(&out_dir);

    // The real-cluster entry point refuses to start without identities, before any cluster call.
    let run = Command::new(repo().join("loadtest/run"))
        .args(["burst", "--kubeconfig", "/nonexistent/kubeconfig"])
        .env_remove("E2E_IDENTITY_FILE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("--identity-file"), "{err}");
}

/// `loadtest/run burst --kubeconfig` itself, pointed at a sandbox as if it were a cluster: it
/// creates the pods in a fresh namespace, sees every one Assigned, reaches each pod's in-pod
/// request (`kubectl exec`, which the simulator does not serve: every token is a failure that
/// says so), cannot read the leader's metrics through the pod proxy (reported as not measured),
/// exits 1 and cleans up.
#[test]
fn the_cluster_burst_entry_point_runs_against_a_sandbox_up_to_the_in_pod_requests() {
    let (sandbox, doc) = start_sandbox("cluster-burst-kubeconfig", &["--unassign-grace-period=2s"]);
    let out_dir = sandbox.dir.join("report");
    let run = Command::new(repo().join("loadtest/run"))
        .arg("burst")
        .args(as_a_cluster(&sandbox, &doc))
        .args(["--pods=6", "--identities=2", "--time-limit=120", "--out"])
        .arg(&out_dir)
        .env_remove("E2E_IDENTITY_FILE")
        .output()
        .unwrap();
    let text = stdout(&run);
    println!("{text}{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{text}");
    assert_eq!(text.lines().last(), Some(out_dir.to_str().unwrap()));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(report["backend"], "cluster", "{report}");
    assert_eq!(report["assigned"], 6, "{report}");
    assert_eq!(report["running"], 6, "{report}");
    assert_eq!(report["tokens_ok"], 0, "{report}");
    assert_eq!(report["tokens_failed"], 6, "{report}");
    assert!(
        report["failures"][0]
            .as_str()
            .is_some_and(|f| f.contains("kubectl exec") && f.contains("/exec")),
        "{report}"
    );
    assert!(report["arm_writes"].is_null(), "{report}");
    // Nothing left behind: the run's namespace is being deleted.
    let ns = report["namespace"].as_str().unwrap();
    let kubeconfig = sandbox.dir.join("kubeconfig");
    let left = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "azureassignedidentities", "-A", "-o", "name"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.contains(ns), "{left}");
    drop(sandbox);
}
