//! From the run's log to the report: the invariants (every pod Assigned, no token for an
//! unbound pod, no request lost), the latencies and the 5-second polling baseline computed on
//! the same log, the figures read from Prometheus, the simulators' counters, each component's
//! CPU and memory, and the table and charts.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::params::{POLL_INTERVAL, Params};
use super::prom::Prometheus;
use super::report::{Chart, RunResult, ms_line, summary};
use super::timeline::{PodLog, State};
use super::{Error, LoadtestArgs};
use crate::processes::Usage;
use crate::system::ComponentUsage;

/// A time series for a line chart: (name, points).
pub(super) type Series = (String, Vec<(f64, f64)>);

/// What Prometheus says about the run (MIC's and the NMIs' own metrics).
pub(super) struct PromFigures {
    pub(super) json: Value,
    pub(super) series: Vec<Series>,
}

/// Queries Prometheus once its next scrape has seen the end state.
pub(super) async fn prometheus(
    pr: &Prometheus,
    assigned_now: usize,
    wall0: f64,
) -> Result<PromFigures, Error> {
    let count_q = "sum(aadpodidentity_mic_assignment_latency_seconds_count)";
    let ended = unix_now();
    let seen = pr
        .wait_for(
            count_q,
            assigned_now as f64,
            std::time::Duration::from_secs(15),
        )
        .await;
    // NMIs are scraped less often than MIC (`loadtest/run`): their totals are read once every
    // NMI has been scraped after the run ended.
    let nmis_scraped = pr
        .wait_for(
            &format!("min(timestamp(up{{component=\"nmi\"}})) - {ended}"),
            0.0,
            std::time::Duration::from_secs(15),
        )
        .await;
    let q = |x: f64| {
        format!(
            "histogram_quantile({x}, sum by (le) (aadpodidentity_mic_assignment_latency_seconds_bucket))"
        )
    };
    let by = |v: Vec<(Value, f64)>, label: &str| {
        v.into_iter()
            .map(|(m, x)| (m[label].as_str().unwrap_or("").to_string(), json!(x)))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut json = json!({
        "assignments_observed": seen.as_ref().ok(),
        "mic_assignment_latency_s": {
            "p50": pr.scalar(&q(0.5)).await?,
            "p95": pr.scalar(&q(0.95)).await?,
            "p99": pr.scalar(&q(0.99)).await?,
        },
        "mic_arm_writes": by(pr.query("sum by (outcome) (aadpodidentity_mic_arm_writes_total)").await?, "outcome"),
        "nmi_waits": by(pr.query("sum by (kind) (aadpodidentity_nmi_wait_duration_seconds_count)").await?, "kind"),
        "nmi_cache_lookups": by(pr.query("sum by (result) (aadpodidentity_nmi_token_cache_lookups_total)").await?, "result"),
        "nmi_token_requests": by(pr.query("sum by (result) (aadpodidentity_nmi_token_request_duration_seconds_count)").await?, "result"),
        "nmi_token_request_p99_s": pr.scalar("histogram_quantile(0.99, sum by (le) (aadpodidentity_nmi_token_request_duration_seconds_bucket))").await?,
        "targets_up": pr.scalar("count(up{component=~\"mic|nmi\"} == 1)").await?,
    });
    if let Some(e) = seen.as_ref().err().or(nmis_scraped.as_ref().err()) {
        json["scrape_warning"] = json!(e.to_string());
    }
    let wall1 = unix_now() + 1.0;
    let mut series = Vec::new();
    for (name, query) in [
        ("assignments (MIC histogram count, Prometheus)", count_q),
        (
            "ARM writes (Prometheus)",
            "sum(aadpodidentity_mic_arm_writes_total)",
        ),
    ] {
        let points = pr.range(query, wall0, wall1, 1.0).await?;
        series.push((
            name.to_string(),
            points.iter().map(|(t, v)| (t - wall0, *v)).collect(),
        ));
    }
    Ok(PromFigures { json, series })
}

/// Seconds since the Unix epoch (Prometheus' time axis).
pub(super) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Invariant violations and the requests that got no token.
struct Invariants {
    violations: Vec<String>,
    lost: usize,
    ended_first: usize,
}

fn invariants(st: &State, p: &Params, timed_out: bool) -> Invariants {
    let run_for = p.churn.map(|c| c.1);
    let mut violations = st.violations.clone();
    violations.truncate(50);
    let bound = bound(st);
    // Every pod ends Assigned (burst, token-storm).
    let unassigned: Vec<&String> = bound
        .iter()
        .filter(|(_, p)| p.assigned.is_none() && (run_for.is_none() || p.finished.is_none()))
        .map(|(n, _)| *n)
        .collect();
    if !unassigned.is_empty() && run_for.is_none() {
        violations.push(format!(
            "{} pod(s) never became Assigned (e.g. {})",
            unassigned.len(),
            unassigned
                .iter()
                .take(5)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if timed_out && run_for.is_none() {
        violations.push(format!("the run hit its time limit of {:?}", p.time_limit));
    }
    // No token for a pod not bound to the identity.
    for (name, pl) in st.pods.iter().filter(|(n, _)| n.starts_with("unbound-")) {
        for r in &pl.requests {
            if r.status == 200 {
                violations.push(format!("a token was served to unbound pod {name}"));
            }
        }
        if pl.requests.is_empty() {
            violations.push(format!("unbound probe {name} never sent its request"));
        }
    }
    // A bound pod's request must get a token, unless its pod ended first.
    let (mut lost, mut ended_first) = (0, 0);
    for (name, pl) in &bound {
        for r in &pl.requests {
            if r.status == 200 {
                continue;
            }
            if pl
                .finished
                .is_some_and(|f| r.answered.is_none_or(|a| f <= a + 0.5))
            {
                ended_first += 1;
                continue;
            }
            lost += 1;
            if lost <= 5 {
                violations.push(format!(
                    "pod {name}: token request answered {} ({})",
                    r.status,
                    r.error.as_deref().unwrap_or("no answer")
                ));
            }
        }
    }
    if lost > 5 {
        violations.push(format!("{lost} token requests lost in total"));
    }
    Invariants {
        violations,
        lost,
        ended_first,
    }
}

fn bound(st: &State) -> Vec<(&String, &PodLog)> {
    st.pods
        .iter()
        .filter(|(n, _)| !n.starts_with("unbound-"))
        .collect()
}

/// Latencies (ms) from the log, and the same waits under the original's 5 s polling.
#[derive(Default)]
struct Waits {
    to_assigned: Vec<f64>,
    running_to_assigned: Vec<f64>,
    token: Vec<f64>,
    event_wait: Vec<f64>,
    poll_wait: Vec<f64>,
    event_late: Vec<f64>,
    poll_late: Vec<f64>,
    by_event: usize,
    after_assignment: usize,
}

fn waits(bound: &[(&String, &PodLog)]) -> Waits {
    let ms = |v: f64| v * 1000.0;
    let mut w = Waits {
        to_assigned: bound
            .iter()
            .filter_map(|(_, p)| Some(ms(p.assigned? - p.created?)))
            .collect(),
        running_to_assigned: bound
            .iter()
            .filter_map(|(_, p)| Some(ms((p.assigned? - p.running?).max(0.0))))
            .collect(),
        ..Waits::default()
    };
    for (_, pl) in bound {
        for r in pl.requests.iter().filter(|r| r.status == 200) {
            let Some(ans) = r.answered else { continue };
            w.token.push(ms(ans - r.sent));
            let Some(asg) = pl.assigned else { continue };
            if asg <= r.sent {
                w.after_assignment += 1;
                continue;
            }
            w.by_event += 1;
            // The same work after noticing, but noticed at the poller's next check.
            let work_after = (ans - asg).max(0.0);
            let checks = ((asg - r.sent) / POLL_INTERVAL).ceil();
            let poll_answer = r.sent + checks * POLL_INTERVAL + work_after;
            w.event_wait.push(ms(ans - r.sent));
            w.poll_wait.push(ms(poll_answer - r.sent));
            w.event_late.push(ms(work_after));
            w.poll_late.push(ms(poll_answer - asg));
        }
    }
    w
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Usage of one process as report JSON.
pub(super) fn usage_json(u: &Usage) -> Value {
    json!({"cpu_s": u.cpu_s, "rss_kb_end": u.rss_kb, "peak_rss_kb": u.peak_rss_kb})
}

/// Each component's CPU and memory: MIC, the NMIs (the largest and the median), and this
/// process (simulators, driver, and whatever runs in it), with CPU since `self0`.
pub(super) fn components_json(c: &ComponentUsage, self0: &Usage, self1: &Usage) -> Value {
    let mut nmis: Vec<&Usage> = c.nmis.values().collect();
    nmis.sort_by_key(|a| a.peak_rss_kb);
    let median = nmis.get(nmis.len() / 2).map(|u| usage_json(u));
    let largest = nmis.last().map(|u| usage_json(u));
    let nmi_cpu: f64 = nmis.iter().map(|u| u.cpu_s).sum();
    let in_process = c.mic.is_none();
    json!({
        "separate_processes": !in_process,
        "mic": c.mic.as_ref().map(usage_json),
        "nmi": {
            "processes": nmis.len(),
            "largest_peak_rss": largest,
            "median_peak_rss": median,
            "cpu_s_all": nmi_cpu,
        },
        "driver_and_simulators": {
            "note": if in_process {
                "one process holds MIC, every NMI, both simulators and the driver"
            } else {
                "the Kubernetes and Azure simulators, the driver and its watches"
            },
            "cpu_s": self1.cpu_s - self0.cpu_s,
            "rss_kb_end": self1.rss_kb,
            "peak_rss_kb": self1.peak_rss_kb,
        },
    })
}

/// Table rows for [`components_json`].
pub(super) fn components_rows(
    c: &ComponentUsage,
    self0: &Usage,
    self1: &Usage,
) -> Vec<(String, String)> {
    let mib = |kb: u64| kb as f64 / 1024.0;
    let mut rows = Vec::new();
    if let Some(m) = &c.mic {
        rows.push((
            "MIC process: CPU / peak RSS".to_string(),
            format!("{:.2} s / {:.1} MiB", m.cpu_s, mib(m.peak_rss_kb)),
        ));
    }
    if let Some(n) = c.nmis.values().max_by_key(|u| u.peak_rss_kb) {
        let cpu: f64 = c.nmis.values().map(|u| u.cpu_s).sum();
        rows.push((
            format!(
                "NMI processes ({}): largest peak RSS / CPU all",
                c.nmis.len()
            ),
            format!("{:.1} MiB / {cpu:.2} s", mib(n.peak_rss_kb)),
        ));
    }
    let what = if c.mic.is_some() {
        "simulators + driver"
    } else {
        "MIC+NMIs+simulators+driver"
    };
    rows.push((
        format!("{what}: CPU / peak RSS"),
        format!(
            "{:.1} s / {:.0} MiB",
            self1.cpu_s - self0.cpu_s,
            mib(self1.peak_rss_kb)
        ),
    ));
    rows
}

/// Writes the Kubernetes simulator received during the run: per AzureAssignedIdentity,
/// Events, and in total (a rate over `window_s`).
pub(super) fn kube_writes_json(
    kube: &aad_pod_identity_sim::kube::KubeSimHandle,
    total0: u64,
    window_s: f64,
) -> Value {
    let w = kube.writes();
    let per: Vec<f64> = w
        .of("azureassignedidentities")
        .values()
        .map(|n| f64::from(*n))
        .collect();
    let events: u32 = w.of("events").values().sum();
    let total = w.total() - total0;
    json!({
        "assigned_identity_objects": per.len(),
        "writes_per_assigned_identity": {
            "mean": mean(&per),
            "max": per.iter().copied().fold(0.0, f64::max),
        },
        "event_writes": events,
        "write_requests": total,
        "write_requests_per_s": total as f64 / window_s.max(1e-3),
    })
}

/// Everything the run measured apart from the log itself.
pub(super) struct Measured {
    pub(super) startup_s: f64,
    /// The run's start (time 0 of `pods.csv` and `imds.csv`) as Unix time, to line the
    /// driver's times up with the components' log timestamps.
    pub(super) t0_unix_s: f64,
    pub(super) created_s: f64,
    pub(super) finished_s: f64,
    pub(super) timed_out: bool,
    pub(super) prom: Option<PromFigures>,
    pub(super) arm: Value,
    pub(super) patches: u64,
    pub(super) gets: u64,
    pub(super) throttled: u64,
    pub(super) kube_writes: Value,
    pub(super) components: Value,
    pub(super) component_rows: Vec<(String, String)>,
    pub(super) usage_series: Vec<Series>,
    pub(super) patch_series: Vec<(f64, f64)>,
}

/// The report of an assignment scenario.
pub(super) fn result(args: &LoadtestArgs, p: &Params, st: &State, m: Measured) -> RunResult {
    let inv = invariants(st, p, m.timed_out);
    let mut violations = inv.violations;
    let bound = bound(st);
    let w = waits(&bound);
    let wait_ratio = ratio(mean(&w.poll_wait), mean(&w.event_wait));
    // An NMI often answers before the driver's own watch sees `Assigned` (it is one more
    // watcher on a busy machine), which counts as no lateness at all; below the driver's
    // resolution (1 ms) the ratio is a lower bound.
    let late_ratio = ratio(mean(&w.poll_late), mean(&w.event_late).map(|m| m.max(1.0)));
    let total_requests: usize = st.pods.values().map(|p| p.requests.len()).sum();
    let ok_requests = bound
        .iter()
        .map(|(_, p)| p.requests.iter().filter(|r| r.status == 200).count())
        .sum::<usize>();
    let window = (m.finished_s - m.created_s).max(1e-3);
    let job_pods = bound.len();
    let run_for = p.churn.map(|c| c.1);
    let prom_json = m.prom.as_ref().map_or(Value::Null, |p| p.json.clone());

    let figures = json!({
        "startup_s": m.startup_s,
        "t0_unix_s": m.t0_unix_s,
        "pods_seen": bound.len(),
        "pods_assigned": bound.iter().filter(|(_, p)| p.assigned.is_some()).count(),
        "run_s": m.finished_s,
        "creation_to_assigned_ms": summary(&w.to_assigned),
        "running_to_assigned_ms": summary(&w.running_to_assigned),
        "prometheus": prom_json,
        "arm": m.arm,
        "kubernetes_writes": m.kube_writes,
        "tokens": {
            "requests": total_requests,
            "ok": ok_requests,
            "lost": inv.lost,
            "pod_ended_before_answer": inv.ended_first,
            "latency_ms": summary(&w.token),
            "throughput_per_s": ok_requests as f64 / window,
        },
        "wait": {
            "answered_by_assignment_event": w.by_event,
            "asked_after_assignment": w.after_assignment,
            "event_driven_wait_ms": summary(&w.event_wait),
            "poll_5s_wait_ms": summary(&w.poll_wait),
            "event_driven_after_assignment_ms": summary(&w.event_late),
            "poll_5s_after_assignment_ms": summary(&w.poll_late),
            "wait_ratio_poll_over_event": wait_ratio,
            "lateness_ratio_poll_over_event": late_ratio,
        },
        "process": m.components,
        "churn": run_for.map(|_| json!({
            "job_pods": job_pods,
            "patches_per_job_pod": if job_pods > 0 { m.patches as f64 / job_pods as f64 } else { 0.0 },
        })),
    });
    if let Some((cronjobs, ..)) = p.churn {
        // With the grace period, each identity is written to each scale set about once.
        let bound_patches = u64::from(cronjobs * p.scale_sets) * 2 + 2;
        if m.patches > bound_patches {
            violations.push(format!(
                "churn cost {} PATCHes for {job_pods} job pods (more than {bound_patches})",
                m.patches
            ));
        }
        if job_pods == 0 {
            violations.push("churn: no job pod ran".into());
        }
    }

    let f1 = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.1}"));
    let mut table = vec![
        (
            "pods / identities / nodes / scale sets".to_string(),
            format!(
                "{} / {} / {} / {} (ARM {:?} per write, 1/{} of real)",
                bound.len(),
                p.identities,
                p.scale_sets * p.nodes_per_scale_set,
                p.scale_sets,
                p.arm_latency,
                args.clock_factor
            ),
        ),
        (
            "pod created -> Assigned (driver)".into(),
            ms_line(&w.to_assigned),
        ),
    ];
    if let Some(pf) = &m.prom {
        let l = &pf.json["mic_assignment_latency_s"];
        let s = |k: &str| {
            l[k].as_f64()
                .map_or("-".into(), |v| format!("{:.1}", v * 1000.0))
        };
        table.push((
            "MIC assignment latency (Prometheus)".into(),
            format!("p50 {} / p95 {} / p99 {} ms", s("p50"), s("p95"), s("p99")),
        ));
        table.push((
            "NMI waits / cache lookups (Prometheus)".into(),
            format!(
                "{} / {}",
                pf.json["nmi_waits"], pf.json["nmi_cache_lookups"]
            ),
        ));
    }
    let kw = &figures["kubernetes_writes"];
    table.extend([
        (
            "ARM PATCH / GET / 429".into(),
            format!("{} / {} / {}", m.patches, m.gets, m.throttled),
        ),
        (
            "Kubernetes writes per AzureAssignedIdentity (mean / max); Events".into(),
            format!(
                "{} / {}; {}",
                f1(kw["writes_per_assigned_identity"]["mean"].as_f64()),
                f1(kw["writes_per_assigned_identity"]["max"].as_f64()),
                kw["event_writes"]
            ),
        ),
        (
            "token requests ok / sent / lost".into(),
            format!("{ok_requests} / {total_requests} / {}", inv.lost),
        ),
        ("token latency (request -> token)".into(), ms_line(&w.token)),
        (
            "waits answered by assignment event".into(),
            format!(
                "{} ({} asked after assignment)",
                w.by_event, w.after_assignment
            ),
        ),
        (
            "after assignment: event vs 5 s poll".into(),
            format!(
                "mean {} vs {} ms ({}x)",
                f1(mean(&w.event_late)),
                f1(mean(&w.poll_late)),
                f1(late_ratio)
            ),
        ),
        (
            "whole wait: event vs 5 s poll".into(),
            format!(
                "mean {} vs {} ms ({}x)",
                f1(mean(&w.event_wait)),
                f1(mean(&w.poll_wait)),
                f1(wait_ratio)
            ),
        ),
    ]);
    table.extend(m.component_rows.iter().cloned());
    if run_for.is_some() {
        table.push((
            "churn: job pods / PATCHes".into(),
            format!("{job_pods} / {}", m.patches),
        ));
    }
    let charts = charts(args, st, &w, m.prom, m.usage_series, m.patch_series);
    RunResult {
        scenario: args.scenario.name().to_string(),
        quick: args.quick,
        parameters: p.json(),
        figures,
        table,
        charts,
        violations,
    }
}

fn charts(
    args: &LoadtestArgs,
    st: &State,
    w: &Waits,
    prom: Option<PromFigures>,
    usage_series: Vec<Series>,
    patch_series: Vec<(f64, f64)>,
) -> Vec<Chart> {
    let series = &st.series;
    let mut lines = vec![
        (
            "Running pods".to_string(),
            series.iter().map(|s| (s.0, s.1 as f64)).collect::<Vec<_>>(),
        ),
        (
            "Assigned pods".to_string(),
            series.iter().map(|s| (s.0, s.2 as f64)).collect(),
        ),
        (
            "tokens served".to_string(),
            series.iter().map(|s| (s.0, s.3 as f64)).collect(),
        ),
    ];
    lines.extend(prom.map(|p| p.series).unwrap_or_default());
    let mut charts = vec![
        Chart::Lines {
            id: "timeline".into(),
            title: format!(
                "{}: pods, assignments and tokens over time",
                args.scenario.name()
            ),
            x_label: "seconds since start".into(),
            y_label: "count".into(),
            series: lines,
        },
        Chart::Lines {
            id: "arm-writes".into(),
            title: "ARM PATCHes (Azure simulator)".into(),
            x_label: "seconds since start".into(),
            y_label: "PATCHes".into(),
            series: vec![("PATCHes".into(), patch_series)],
        },
        Chart::Histogram {
            id: "assignment-latency".into(),
            title: "pod created -> Assigned".into(),
            x_label: "milliseconds (log scale)".into(),
            series: vec![("created -> Assigned".into(), w.to_assigned.clone())],
        },
        Chart::Histogram {
            id: "token-wait".into(),
            title: "token wait: event-driven NMI vs the original's 5 s polling (same log)".into(),
            x_label: "milliseconds from request to token (log scale)".into(),
            series: vec![
                ("event-driven (measured)".into(), w.event_wait.clone()),
                ("5 s polling (same log)".into(), w.poll_wait.clone()),
            ],
        },
    ];
    charts.extend(usage_charts(usage_series));
    charts
}

/// CPU (cores, from successive samples) and RSS charts of each component over time.
pub(super) fn usage_charts(usage_series: Vec<Series>) -> Vec<Chart> {
    if usage_series.is_empty() {
        return Vec::new();
    }
    let (cpu, rss): (Vec<Series>, Vec<Series>) = usage_series
        .into_iter()
        .partition(|(name, _)| name.ends_with("CPU"));
    // CPU seconds → cores used between samples.
    let cpu = cpu
        .into_iter()
        .map(|(name, pts)| {
            let cores = pts
                .windows(2)
                .map(|w| (w[1].0, (w[1].1 - w[0].1) / (w[1].0 - w[0].0).max(1e-3)))
                .collect();
            (name.replace(" CPU", ""), cores)
        })
        .collect();
    vec![
        Chart::Lines {
            id: "component-cpu".into(),
            title: "CPU of each component (cores)".into(),
            x_label: "seconds since start".into(),
            y_label: "cores".into(),
            series: cpu,
        },
        Chart::Lines {
            id: "component-rss".into(),
            title: "resident memory of each component".into(),
            x_label: "seconds since start".into(),
            y_label: "MiB".into(),
            series: rss,
        },
    ]
}

/// Samples of every component's usage, turned into chart series: "<name> CPU" (cumulative
/// seconds) and "<name> RSS" (MiB) per component.
#[derive(Default)]
pub(super) struct UsageSeries {
    points: BTreeMap<String, Vec<(f64, f64)>>,
}

impl UsageSeries {
    /// Adds one sample of `name` at `t`.
    pub(super) fn push(&mut self, t: f64, name: &str, u: &Usage) {
        self.points
            .entry(format!("{name} CPU"))
            .or_default()
            .push((t, u.cpu_s));
        self.points
            .entry(format!("{name} RSS"))
            .or_default()
            .push((t, u.rss_kb as f64 / 1024.0));
    }

    /// Adds a sample of every component of `c` (MIC, the largest NMI) and of this process.
    pub(super) fn push_all(&mut self, t: f64, c: &ComponentUsage, this: &Usage) {
        if let Some(m) = &c.mic {
            self.push(t, "MIC", m);
        }
        if let Some(n) = c.nmis.values().max_by_key(|u| u.rss_kb) {
            self.push(t, "largest NMI", n);
        }
        let name = if c.mic.is_some() {
            "simulators + driver"
        } else {
            "whole process"
        };
        self.push(t, name, this);
    }

    /// The series.
    pub(super) fn into_series(self) -> Vec<Series> {
        self.points.into_iter().collect()
    }
}
