//! The sizes of an assignment scenario and the objects it starts with: identities, bindings,
//! the churn scenario's CronJobs, and the pods the driver creates.

use serde_json::{Value, json};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

use super::{Error, LoadtestArgs, Scenario};
use aad_pod_identity::crd::POD_LABEL;

/// The original NMI's retry interval, the baseline's polling period.
pub(super) const POLL_INTERVAL: f64 = 5.0;
pub(super) const RESOURCES: [&str; 4] = [
    "https://management.azure.com/",
    "https://vault.azure.net",
    "https://storage.azure.com/",
    "https://graph.microsoft.com/",
];
/// Pods with a selector no binding matches: a token for them is a violation.
pub(super) const UNBOUND_PODS: u32 = 2;

/// The sizes of one run.
#[derive(Clone, Debug)]
pub(super) struct Params {
    pub(super) pods: u32,
    pub(super) identities: u32,
    pub(super) scale_sets: u32,
    pub(super) nodes_per_scale_set: u32,
    pub(super) arm_latency: Duration,
    pub(super) assignment_wait: Duration,
    pub(super) requests_per_pod: usize,
    pub(super) time_limit: Duration,
    /// CronJobs (churn only), how long to let them run, a Job pod's run time, cron speed-up.
    pub(super) churn: Option<(u32, Duration, Duration, u32)>,
}

impl Params {
    pub(super) fn from(args: &LoadtestArgs) -> Self {
        let q = args.quick;
        let (pods, ids, nodes, ss) = match (args.scenario, q) {
            (Scenario::Churn, true) => (0, 4, 4, 2),
            (Scenario::Churn, false) => (0, 10, 20, 4),
            (_, true) => (120, 10, 8, 2),
            (_, false) => (1000, 50, 100, 4),
        };
        let scale_sets = args.scale_sets.unwrap_or(ss).max(1);
        let nodes = args.nodes.unwrap_or(nodes).max(scale_sets);
        let identities = args.identities.unwrap_or(ids).max(1);
        // Real scale-set writes take 40 to 60 s; the simulator answers in 0.8-1.2 × this.
        let arm_latency = Duration::from_secs(50) / args.clock_factor.max(1);
        Self {
            pods: args.pods.unwrap_or(pods),
            identities,
            scale_sets,
            nodes_per_scale_set: nodes.div_ceil(scale_sets),
            arm_latency,
            // The original's default (16 × 5 s) in full runs: a burst of 1000 may take longer than 30 s.
            assignment_wait: Duration::from_secs(if q { 10 } else { 80 }),
            requests_per_pod: if args.scenario == Scenario::TokenStorm {
                RESOURCES.len()
            } else {
                1
            },
            time_limit: args
                .time_limit
                .unwrap_or(Duration::from_secs(if q { 40 } else { 300 })),
            churn: (args.scenario == Scenario::Churn).then(|| {
                if q {
                    (
                        identities,
                        Duration::from_secs(20),
                        Duration::from_secs(3),
                        30,
                    )
                } else {
                    (
                        identities,
                        Duration::from_secs(120),
                        Duration::from_secs(5),
                        20,
                    )
                }
            }),
        }
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "pods": self.pods,
            "unbound_probe_pods": UNBOUND_PODS,
            "identities": self.identities,
            "scale_sets": self.scale_sets,
            "nodes": self.scale_sets * self.nodes_per_scale_set,
            "arm_latency_ms": self.arm_latency.as_millis() as u64,
            "nmi_assignment_wait_s": self.assignment_wait.as_secs(),
            "token_requests_per_pod": self.requests_per_pod,
            "time_limit_s": self.time_limit.as_secs(),
            "baseline_poll_interval_s": POLL_INTERVAL,
            "churn": self.churn.map(|(cj, run, job, speed)| json!({
                "cronjobs": cj, "run_for_s": run.as_secs(), "job_pod_run_time_s": job.as_secs(),
                "cron_speedup": speed, "unassign_grace_period_s": 60,
            })),
        })
    }
}

pub(super) fn selector_index(label: &str) -> Option<usize> {
    label.strip_prefix("sel-")?.parse().ok()
}

pub(super) fn scenario_yaml(p: &Params) -> String {
    let mut y = String::new();
    for k in 0..p.identities {
        y.push_str(&format!(
            "apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentity\nmetadata: {{name: id-{k}}}\n\
             spec: {{type: 0, resourceID: \"${{IDENTITY_{k}_RESOURCE_ID}}\", clientID: \"${{IDENTITY_{k}_CLIENT_ID}}\"}}\n---\n\
             apiVersion: aadpodidentity.k8s.io/v1\nkind: AzureIdentityBinding\nmetadata: {{name: binding-{k}}}\n\
             spec: {{azureIdentity: id-{k}, selector: sel-{k}}}\n---\n"
        ));
    }
    if let Some((cronjobs, ..)) = p.churn {
        for k in 0..cronjobs {
            y.push_str(&format!(
                "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: churn-{k}}}\nspec:\n  schedule: \"* * * * *\"\n\
                 \x20 jobTemplate:\n    spec:\n      template:\n        metadata: {{labels: {{aadpodidbinding: sel-{k}}}}}\n\
                 \x20       spec:\n          restartPolicy: OnFailure\n          containers: [{{name: job, image: busybox}}]\n---\n"
            ));
        }
    }
    y
}

pub(super) fn pod_object(name: &str, selector: &str) -> Result<Pod, Error> {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {POD_LABEL: selector}},
        "spec": {"containers": [{"name": "app", "image": "app"}]},
    }))
    .map_err(|e| Error::Load(format!("pod object: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scenario_binds_each_identity_through_its_own_selector() {
        let args = LoadtestArgs {
            scenario: Scenario::Churn,
            quick: true,
            out: "x".into(),
            prometheus: None,
            prometheus_targets: None,
            pods: None,
            identities: Some(3),
            nodes: None,
            scale_sets: None,
            clock_factor: 100,
            nmi_port: 2579,
            time_limit: None,
            product_bin: None,
            in_process: false,
        };
        let p = Params::from(&args);
        let docs = crate::scenario::parse_documents(&scenario_yaml(&p)).unwrap();
        let kinds: Vec<_> = docs
            .iter()
            .map(|d| d.types.as_ref().unwrap().kind.clone())
            .collect();
        assert_eq!(
            kinds
                .iter()
                .filter(|k| *k == "AzureIdentityBinding")
                .count(),
            3
        );
        assert_eq!(kinds.iter().filter(|k| *k == "CronJob").count(), 3);
        assert_eq!(docs[1].data["spec"]["selector"], "sel-0");
        assert_eq!(selector_index("sel-12"), Some(12));
        assert_eq!(p.arm_latency, Duration::from_millis(500));
    }
}
