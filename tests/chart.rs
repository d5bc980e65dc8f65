//! The Helm chart in `chart/`, judged by tools nobody here wrote.
//!
//! Each test runs one command of `chart/tests/chart_check.py`, which renders the chart with every
//! value set in `chart/tests/values/` through Helm's own engine (PyPI `helm-python-sdk`), and hands
//! the result to Helm's linter, the Kubernetes OpenAPI schemas (`kubernetes-validate`), our CRDs'
//! schemas (`jsonschema`), `promtool`, and this crate's binary. The Python packages come from
//! `ci/requirements.txt` (`.ci/run` installs them into `.venv` and puts it on PATH); a missing one
//! fails the test with the command that installs it.

use std::path::Path;
use std::process::Command;

/// Runs `chart_check.py <command>` and fails with its whole output unless it succeeds.
fn chart_check(command: &str, extra: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("chart/tests/chart_check.py");
    let python = python();
    let out = Command::new(&python)
        .arg(&script)
        .arg(command)
        .args(extra)
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e}; install Python 3 and `pip install -r ci/requirements.txt`")
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    match out.status.code() {
        Some(0) => {}
        Some(3) => panic!(
            "chart check `{command}` could not run: a tool or Python package is missing.\n{stderr}\n\
             Install them with: python3 -m venv .venv && .venv/bin/pip install -r ci/requirements.txt \
             && export PATH=$PWD/.venv/bin:$PATH (and apt-get install prometheus for promtool)"
        ),
        _ => panic!("chart check `{command}` failed:\n{stderr}"),
    }
}

/// The Python that has the CI requirements: the repository's `.venv` when present (as `.ci/run`
/// makes it), else `python3` from PATH.
fn python() -> String {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    if venv.exists() {
        venv.display().to_string()
    } else {
        "python3".to_string()
    }
}

#[test]
fn helm_lint_passes_for_every_value_set() {
    chart_check("lint", &[]);
}

#[test]
fn every_rendered_object_matches_the_kubernetes_schemas_and_our_crds() {
    chart_check("validate", &[]);
}

#[test]
fn workloads_rbac_and_notes_are_what_the_issue_asks() {
    chart_check("content", &[]);
}

#[test]
fn values_schema_and_templates_refuse_bad_values_naming_the_key() {
    chart_check("schema", &[]);
}

#[test]
fn every_flag_the_chart_passes_is_accepted_by_the_binary() {
    chart_check(
        "flags",
        &["--binary", env!("CARGO_BIN_EXE_aad-pod-identity")],
    );
}

#[test]
fn alert_rules_pass_promtool_and_fire_when_they_should() {
    chart_check("alerts", &[]);
}

#[test]
fn dashboard_is_valid_and_every_query_parses() {
    chart_check("dashboard", &[]);
}

#[test]
fn alerts_and_dashboard_query_only_the_listed_metric_names() {
    chart_check("metric-names", &[]);
}
