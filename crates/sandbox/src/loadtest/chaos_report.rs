//! The chaos scenario's report: every token answer judged against the documented ones, each
//! fault with the recovery after it and the ARM writes during it, figures per fault kind, the
//! table, and the charts with the faults marked. A child of [`super`], so it reads the run's log
//! as the driver wrote it.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::super::chaos_check::{self, Answer};
use super::super::figures::{self, usage_json};
use super::super::prom::Prometheus;
use super::super::report::{Chart, RunResult};
use super::super::{Error, LoadtestArgs};
use super::{Fault, Plan, Req, Sample, St};
use crate::processes::Usage;

/// What the run measured besides its log.
pub(super) struct Measured {
    pub(super) startup_s: f64,
    pub(super) warm_s: f64,
    pub(super) calm_from: f64,
    pub(super) end_s: f64,
    pub(super) patches: u64,
    pub(super) gets: u64,
    pub(super) throttled: u64,
    /// Every ARM PATCH: (time since start, status).
    pub(super) arm_patches: Vec<(f64, u16)>,
    pub(super) mic_usage: Vec<(String, Usage)>,
    pub(super) components: crate::system::ComponentUsage,
    pub(super) self0: Usage,
    pub(super) self1: Usage,
    pub(super) mic_starts: usize,
    pub(super) prom: Option<Value>,
}

pub(super) async fn prom_figures(pr: &Prometheus, wall0: f64) -> Value {
    let secs = (figures::unix_now() - wall0).ceil().max(1.0) as u64;
    let by = |v: Result<Vec<(Value, f64)>, Error>, label: &str| match v {
        Ok(v) => json!(
            v.into_iter()
                .map(|(m, x)| (
                    m[label].as_str().unwrap_or("").to_string(),
                    json!(x.round())
                ))
                .collect::<serde_json::Map<_, _>>()
        ),
        Err(e) => json!({"error": e.to_string()}),
    };
    // Counters of processes that were killed or restarted: increase() over the run adds
    // every process's share across resets.
    json!({
        "mic_arm_writes_by_outcome": by(pr.query(&format!("sum by (outcome) (increase(aadpodidentity_mic_arm_writes_total[{secs}s]))")).await, "outcome"),
        "nmi_token_requests_by_result": by(pr.query(&format!("sum by (result) (increase(aadpodidentity_nmi_token_request_duration_seconds_count[{secs}s]))")).await, "result"),
        "mic_leader_elections": by(pr.query("sum by (instance) (aadpodidentity_mic_new_leader_election_count)").await, "instance"),
    })
}

/// How a request ended, for the report.
fn judge(r: &Req, st: &St) -> Result<&'static str, String> {
    let pod = st.pods.get(&r.pod);
    let node = st.nodes.get(&r.node);
    let what = match (
        r.answered,
        chaos_check::classify(r.status, r.body.as_deref()),
    ) {
        (None, _) => return Ok("unanswered at the end (timed out in the driver)"),
        (_, Answer::Token) if !r.bound => {
            return Err(format!(
                "a token was served to unbound pod {} (node {}) at {:.2}s",
                r.pod, r.node, r.sent
            ));
        }
        (_, Answer::Token) => "200 token",
        (_, Answer::Documented(label)) => label,
        (Some(at), Answer::Undocumented) => {
            let gone = node.is_some_and(|n| n.gone && n.epoch > r.epoch);
            let ended = pod.and_then(|p| p.finished).is_some_and(|f| f <= at + 0.5);
            if r.status == 0 && gone {
                "no answer: the pod's node was deleted"
            } else if r.status == 0 && ended {
                "no answer: the pod ended first"
            } else {
                let restarted = node.is_some_and(|n| n.epoch > r.epoch);
                return Err(format!(
                    "pod {} on {}: token request sent at {:.2}s answered {} ({}){}",
                    r.pod,
                    r.node,
                    r.sent,
                    r.status,
                    r.body.as_deref().unwrap_or("no body"),
                    if restarted {
                        " while its NMI restarted"
                    } else {
                        ""
                    }
                ));
            }
        }
    };
    Ok(what)
}

pub(super) fn report(
    args: &LoadtestArgs,
    plan: &Plan,
    st: &St,
    m: &Measured,
    usage_series: Vec<figures::Series>,
) -> RunResult {
    let mut violations = st.violations.clone();
    for (kind, n) in &st.violation_counts {
        if *n > 5 {
            violations.push(format!("{kind}: {n} violations in total (first 5 above)"));
        }
    }
    // Every answer judged.
    let mut answers: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut bad = 0;
    for r in &st.reqs {
        match judge(r, st) {
            Ok(k) => *answers.entry(k).or_default() += 1,
            Err(e) => {
                bad += 1;
                if bad <= 5 {
                    violations.push(e);
                }
            }
        }
    }
    if bad > 5 {
        violations.push(format!("{bad} token answers broke the rules in total"));
    }
    // A bound pod Assigned over the whole request that still got "no Assigned identity".
    let mut refused_assigned = 0;
    for r in st.reqs.iter().filter(|r| r.bound && r.status == 404) {
        let Some(p) = st.pods.get(&r.pod) else {
            continue;
        };
        let Some(at) = r.answered else { continue };
        let steady = chaos_check::assigned_at(&p.assigned, r.sent)
            && !p
                .assigned
                .iter()
                .any(|(t, a)| *t > r.sent && *t <= at && !a);
        if steady && p.finished.is_none_or(|f| f > at + 0.5) {
            refused_assigned += 1;
            if refused_assigned <= 5 {
                violations.push(format!(
                    "pod {} was Assigned from before its request at {:.2}s until the answer, yet got 404 ({})",
                    r.pod,
                    r.sent,
                    r.body.as_deref().unwrap_or("")
                ));
            }
        }
    }

    // Each fault: its recovery, its ARM writes.
    let patches_in = |a: f64, b: f64| {
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        for (t, s) in &m.arm_patches {
            if *t >= a && *t <= b {
                *by.entry(if *s == 0 {
                    "lost".into()
                } else {
                    s.to_string()
                })
                .or_default() += 1;
            }
        }
        by
    };
    let mut fault_rows = Vec::new();
    let mut per_kind: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    let mut markers = Vec::new();
    let mut windows = Vec::new();
    for (i, f) in st.faults.iter().enumerate() {
        let end = f.end.unwrap_or(m.end_s);
        let next = st.faults.get(i + 1).map_or(m.calm_from, |n| n.start);
        let running_at_end = st.pods.values().filter(|p| {
            p.identity.is_some()
                && p.running.is_some_and(|r| r <= end)
                && p.finished.is_none_or(|x| x > end)
        });
        let (after, unassigned) =
            chaos_check::recovery(running_at_end.map(|p| (&p.assigned[..], p.finished)), end);
        let node_filter = matches!(f.fault, Fault::RestartNmi).then_some(f.target.as_str());
        let tokens_after = st
            .reqs
            .iter()
            .filter(|r| r.status == 200 && r.sent >= end)
            .filter(|r| node_filter.is_none_or(|n| r.node == n))
            .filter_map(|r| r.answered)
            .fold(f64::INFINITY, f64::min);
        // An ARM strike waits for the next ARM request: its writes are those until the next
        // fault (or until the pods were whole again, if later).
        let window_end = (end + after).max(next);
        let arm = patches_in(f.start, window_end);
        windows.push((f.start, window_end));
        let v = json!({
            "kind": f.fault.label(),
            "at_s": f.start,
            "duration_s": end - f.start,
            "target": f.target,
            "note": f.note,
            "assigned_again_after_end_s": (unassigned == 0).then_some(after),
            "pods_never_assigned": unassigned,
            "first_token_after_end_s": tokens_after.is_finite().then_some(tokens_after - end),
            "arm_patches_by_status": arm,
        });
        markers.push((f.start, f.fault.label().to_string()));
        per_kind.entry(f.fault.label()).or_default().push(v.clone());
        fault_rows.push(v);
    }
    // Each PATCH once, however many fault windows (injection to recovery) it falls in.
    let in_faults = m
        .arm_patches
        .iter()
        .filter(|(t, _)| windows.iter().any(|(a, b)| t >= a && t <= b))
        .count();
    let kinds = per_kind.len();
    let kind_json: serde_json::Map<String, Value> = per_kind
        .iter()
        .map(|(k, v)| {
            let rec: Vec<f64> = v
                .iter()
                .filter_map(|x| x["assigned_again_after_end_s"].as_f64())
                .collect();
            let dur: Vec<f64> = v.iter().filter_map(|x| x["duration_s"].as_f64()).collect();
            let patches: u64 = v
                .iter()
                .filter_map(|x| x["arm_patches_by_status"].as_object())
                .flat_map(|o| o.values().filter_map(Value::as_u64))
                .sum();
            (
                (*k).to_string(),
                json!({
                    "count": v.len(),
                    "duration_s_max": dur.iter().copied().fold(0.0, f64::max),
                    "recovery_s_max": rec.iter().copied().fold(0.0, f64::max),
                    "recovered": rec.len(),
                    "arm_patches": patches,
                }),
            )
        })
        .collect();

    let bound_pods = st.pods.values().filter(|p| p.identity.is_some()).count();
    let ok = answers.get("200 token").copied().unwrap_or(0);
    let mut mic_rows = serde_json::Map::new();
    for (n, u) in &m.mic_usage {
        mic_rows.insert(n.clone(), usage_json(u));
    }
    let figures = json!({
        "startup_s": m.startup_s,
        "warm_s": m.warm_s,
        "faults_stopped_s": m.calm_from,
        "run_s": m.end_s,
        "fault_kinds_injected": kinds,
        "faults_injected": st.faults.len(),
        "faults_by_kind": kind_json,
        "faults": fault_rows,
        "pods_seen": st.pods.len(),
        "bound_pods_seen": bound_pods,
        "tokens": {
            "requests": st.reqs.len(),
            "answers": answers,
            "broke_the_rules": bad,
            "refused_while_assigned": refused_assigned,
            "not_sent_nmi_down": st.not_sent_nmi_down,
        },
        "leaders": {
            "max_active_at_once": st.max_leaders,
            "mic_processes_started": m.mic_starts,
            "exited_by_themselves": st.mic_exits.iter().map(|(t, n)| json!({"at_s": t, "replica": n})).collect::<Vec<_>>(),
        },
        "arm": {
            "patch_requests": m.arm_patches.len(),
            "patches_applied": m.patches,
            "patches_during_faults": in_faults,
            "gets": m.gets,
            "throttled_429": m.throttled,
        },
        "invariant_violations": st.violation_counts,
        "scale_set_identity_changes": st.on_changes.iter().map(|(t, v, a, r)| json!({
            "at_s": t, "scale_set": v,
            "added": a.iter().map(|k| format!("id-{k}")).collect::<Vec<_>>(),
            "removed": r.iter().map(|k| format!("id-{k}")).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "deployment_scale_errors": st.scale_errors,
        "prometheus": m.prom,
        "process": {
            "mic": mic_rows,
            "nmi": figures::components_json(&m.components, &m.self0, &m.self1)["nmi"].clone(),
            "driver_and_simulators": {
                "cpu_s": m.self1.cpu_s - m.self0.cpu_s,
                "peak_rss_kb": m.self1.peak_rss_kb,
            },
        },
    });

    let mut table = vec![
        (
            "nodes / scale sets / identities".to_string(),
            format!(
                "{} / {} / {} (ARM {:?} per write)",
                plan.scale_sets * plan.nodes_per_scale_set,
                plan.scale_sets,
                plan.identities,
                plan.arm_latency
            ),
        ),
        (
            "pods seen (bound) / tokens ok / requests".into(),
            format!(
                "{} ({bound_pods}) / {ok} / {}",
                st.pods.len(),
                st.reqs.len()
            ),
        ),
        (
            "faults injected / kinds".into(),
            format!(
                "{} / {kinds} (from {:.1}s to {:.1}s)",
                st.faults.len(),
                m.warm_s,
                m.calm_from
            ),
        ),
        (
            "ARM PATCH requests (applied) / during faults / GET / 429".into(),
            format!(
                "{} ({}) / {in_faults} / {} / {}",
                m.arm_patches.len(),
                m.patches,
                m.gets,
                m.throttled
            ),
        ),
        (
            "MIC leaders at once (max); exits after a lost lease".into(),
            format!("{}; {}", st.max_leaders, st.mic_exits.len()),
        ),
    ];
    for (k, v) in &kind_json {
        table.push((
            format!("fault {k}"),
            format!(
                "x{}: lasted <= {:.1}s, all Assigned again <= {:.1}s after ({} of {}), {} PATCHes",
                v["count"],
                v["duration_s_max"].as_f64().unwrap_or(0.0),
                v["recovery_s_max"].as_f64().unwrap_or(0.0),
                v["recovered"],
                v["count"],
                v["arm_patches"]
            ),
        ));
    }
    for (k, n) in &answers {
        table.push((format!("answers: {k}"), n.to_string()));
    }
    for (n, u) in &m.mic_usage {
        table.push((
            format!("MIC {n}: CPU / peak RSS"),
            format!(
                "{:.2} s / {:.1} MiB",
                u.cpu_s,
                u.peak_rss_kb as f64 / 1024.0
            ),
        ));
    }

    let series =
        |f: &dyn Fn(&Sample) -> f64| st.samples.iter().map(|s| (s.t, f(s))).collect::<Vec<_>>();
    let mut charts = vec![
        Chart::Timeline {
            id: "timeline".into(),
            title: "chaos: bound pods, assignments and leaders, faults marked".into(),
            x_label: "seconds since start".into(),
            y_label: "count".into(),
            series: vec![
                ("running bound pods".into(), series(&|s| s.running as f64)),
                ("Assigned".into(), series(&|s| s.assigned as f64)),
                (
                    "identities on scale sets".into(),
                    series(&|s| s.identities_on_scale_sets as f64),
                ),
                (
                    "MIC processes leading".into(),
                    series(&|s| s.leaders as f64),
                ),
            ],
            markers: markers.clone(),
        },
        Chart::Timeline {
            id: "tokens".into(),
            title: "token answers (cumulative), faults marked".into(),
            x_label: "seconds since start".into(),
            y_label: "answers".into(),
            series: vec![
                ("200 token".into(), series(&|s| s.tokens_ok as f64)),
                ("error answers".into(), series(&|s| s.token_errors as f64)),
            ],
            markers: markers.clone(),
        },
        Chart::Timeline {
            id: "arm-writes".into(),
            title: "ARM PATCHes (Azure simulator, cumulative), faults marked".into(),
            x_label: "seconds since start".into(),
            y_label: "PATCHes".into(),
            series: vec![("PATCHes".into(), series(&|s| s.patches as f64))],
            markers,
        },
        Chart::Histogram {
            id: "recovery".into(),
            title: "recovery after each fault: all running bound pods Assigned again".into(),
            x_label: "milliseconds after the fault's end (log scale)".into(),
            series: vec![(
                "recovery".into(),
                st.faults
                    .iter()
                    .filter_map(|f| {
                        let end = f.end?;
                        let pods = st.pods.values().filter(|p| {
                            p.identity.is_some()
                                && p.running.is_some_and(|r| r <= end)
                                && p.finished.is_none_or(|x| x > end)
                        });
                        let (a, n) =
                            chaos_check::recovery(pods.map(|p| (&p.assigned[..], p.finished)), end);
                        (n == 0).then_some(a * 1000.0)
                    })
                    .collect(),
            )],
        },
    ];
    charts.extend(figures::usage_charts(usage_series));
    RunResult {
        scenario: args.scenario.name().to_string(),
        quick: args.quick,
        parameters: plan.json(),
        figures,
        table,
        charts,
        violations,
    }
}
