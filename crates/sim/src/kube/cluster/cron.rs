//! CronJobs: five-field cron schedules (plus `@hourly`-style macros) evaluated on a simulated
//! clock that can run faster than real time, creating one Job per scheduled time with an
//! owner reference, tracking `status.active`/`lastScheduleTime`, and pruning finished Jobs
//! beyond the history limits. Timers are tokio timers, so a paused test clock drives them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration as ChronoDuration, TimeZone, Timelike, Utc};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{Feed, Update, controller_of, info, key_of, owner_ref, terminating};
use crate::kube::Shared;
use crate::kube::meta::{self, name_of, namespace_of, uid_of};
use crate::kube::store::DeleteOptions;

/// A parsed cron schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: [bool; 60],
    hours: [bool; 24],
    days: [bool; 32],
    months: [bool; 13],
    weekdays: [bool; 7],
    dom_any: bool,
    dow_any: bool,
}

fn field<const N: usize>(
    spec: &str,
    lo: u32,
    hi: u32,
    names: &[&str],
) -> Result<([bool; N], bool), String> {
    let mut out = [false; N];
    let lookup = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + lo);
        }
        s.parse::<u32>().map_err(|_| format!("invalid value {s:?}"))
    };
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("invalid step {s:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err("step must be positive".into());
        }
        let (a, b) = if range == "*" || range == "?" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (lookup(a)?, lookup(b)?)
        } else {
            let a = lookup(range)?;
            (a, if part.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(format!("{part:?} is outside {lo}-{hi}"));
        }
        let mut v = a;
        while v <= b {
            out[v as usize] = true;
            v += step;
        }
    }
    Ok((out, spec == "*" || spec == "?"))
}

impl Schedule {
    /// Parses `m h dom mon dow` or a macro (`@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let f: Vec<&str> = expanded.split_whitespace().collect();
        if f.len() != 5 {
            return Err(format!("expected 5 fields, found {}", f.len()));
        }
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let (minutes, _) = field::<60>(f[0], 0, 59, &[])?;
        let (hours, _) = field::<24>(f[1], 0, 23, &[])?;
        let (days, dom_any) = field::<32>(f[2], 1, 31, &[])?;
        let (months, _) = field::<13>(f[3], 1, 12, MONTHS)?;
        // Sunday may be written 0 or 7.
        let (w, dow_any) = field::<8>(f[4], 0, 7, DAYS)?;
        let mut weekdays = [false; 7];
        weekdays.copy_from_slice(&w[..7]);
        weekdays[0] |= w[7];
        Ok(Self {
            minutes,
            hours,
            days,
            months,
            weekdays,
            dom_any,
            dow_any,
        })
    }

    fn day_matches(&self, t: &DateTime<Utc>) -> bool {
        let dom = self.days[t.day() as usize];
        let dow = self.weekdays[t.weekday().num_days_from_sunday() as usize];
        match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (false, true) => dom,
            (true, false) => dow,
            // Both restricted: either may match (cron's rule).
            (false, false) => dom || dow,
        }
    }

    /// The first scheduled time strictly after `after` (within five years).
    #[must_use]
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_second(0)?.with_nanosecond(0)? + ChronoDuration::minutes(1);
        let limit = after + ChronoDuration::days(5 * 366);
        while t <= limit {
            if !self.months[t.month() as usize] {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()?;
                continue;
            }
            if !self.day_matches(&t) {
                t = (t + ChronoDuration::days(1)).with_hour(0)?.with_minute(0)?;
                continue;
            }
            if !self.hours[t.hour() as usize] {
                t = (t + ChronoDuration::hours(1)).with_minute(0)?;
                continue;
            }
            if !self.minutes[t.minute() as usize] {
                t += ChronoDuration::minutes(1);
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// Simulated wall clock: starts at the real time and runs `speedup` times faster, measured on
/// the tokio clock (so a paused test clock controls it).
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    base_wall: DateTime<Utc>,
    base: Instant,
    speedup: u32,
}

impl SimClock {
    /// A clock starting now.
    #[must_use]
    pub fn new(speedup: u32) -> Self {
        Self {
            base_wall: Utc::now(),
            base: Instant::now(),
            speedup: speedup.max(1),
        }
    }

    /// Simulated now.
    #[must_use]
    pub fn now(&self) -> DateTime<Utc> {
        let real = Instant::now() - self.base;
        self.base_wall
            + ChronoDuration::from_std(real * self.speedup).unwrap_or(ChronoDuration::zero())
    }

    /// The tokio instant at which the simulated clock reads `t`.
    #[must_use]
    pub fn instant_at(&self, t: DateTime<Utc>) -> Instant {
        let sim = (t - self.base_wall).to_std().unwrap_or_default();
        self.base + sim / self.speedup
    }
}

struct CronController {
    shared: Arc<Shared>,
    clock: SimClock,
    /// Next firing per CronJob (namespace, name).
    next: BTreeMap<(String, String), DateTime<Utc>>,
}

impl CronController {
    fn plan(&mut self, cj: &Value) {
        let key = key_of(cj);
        if terminating(cj) {
            self.next.remove(&key);
            return;
        }
        let schedule = cj
            .pointer("/spec/schedule")
            .and_then(Value::as_str)
            .unwrap_or("");
        let Ok(s) = Schedule::parse(schedule) else {
            tracing::debug!(cronjob = %key.1, schedule, "unparseable schedule");
            self.next.remove(&key);
            return;
        };
        let now = self.clock.now();
        if let Some(t) = s.next_after(now) {
            // Keep an already planned earlier firing (an edit does not skip a due run).
            let keep = self
                .next
                .get(&key)
                .is_some_and(|cur| *cur <= t && *cur > now);
            if !keep {
                self.next.insert(key, t);
            }
        }
    }

    fn fire(&mut self, key: &(String, String), at: DateTime<Utc>) {
        let cjs = info(&self.shared, "batch", "cronjobs");
        let Ok(cj) = self.shared.store.get(&cjs, &key.0, &key.1) else {
            self.next.remove(key);
            return;
        };
        if let Some(s) = cj
            .pointer("/spec/schedule")
            .and_then(Value::as_str)
            .and_then(|s| Schedule::parse(s).ok())
            && let Some(t) = s.next_after(at)
        {
            self.next.insert(key.clone(), t);
        } else {
            self.next.remove(key);
        }
        if cj.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
            return;
        }
        let policy = cj
            .pointer("/spec/concurrencyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Allow");
        let running = self.active_jobs(&cj);
        if policy == "Forbid" && !running.is_empty() {
            return;
        }
        if policy == "Replace" {
            let jobs = info(&self.shared, "batch", "jobs");
            for j in &running {
                let _ =
                    self.shared
                        .store
                        .delete(&jobs, &key.0, name_of(j), &DeleteOptions::default());
            }
        }
        let template = cj
            .pointer("/spec/jobTemplate")
            .cloned()
            .unwrap_or(json!({}));
        let mut job = json!({
            "metadata": template.get("metadata").cloned().unwrap_or(json!({})),
            "spec": template.get("spec").cloned().unwrap_or(json!({})),
        });
        let m = meta::meta_mut(&mut job);
        m.insert(
            "name".into(),
            json!(format!("{}-{}", key.1, at.timestamp() / 60)),
        );
        m.insert("ownerReferences".into(), json!([owner_ref(&cj)]));
        m.entry("annotations").or_insert(json!({}))["batch.kubernetes.io/cronjob-scheduled-timestamp"] =
            json!(meta::timestamp(at));
        let jobs = info(&self.shared, "batch", "jobs");
        match self.shared.store.create(&jobs, &key.0, job) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => tracing::debug!(cronjob = %key.1, error = %e, "creating a job failed"),
        }
        let uid = uid_of(&cj).to_string();
        let at_s = meta::timestamp(at);
        let _ = self
            .shared
            .store
            .update_with(&cjs, &key.0, &key.1, true, |cur| {
                let mut n = cur.clone();
                if uid_of(cur) == uid {
                    if !n.get("status").is_some_and(Value::is_object) {
                        n["status"] = json!({});
                    }
                    n["status"]["lastScheduleTime"] = json!(at_s);
                }
                Ok(n)
            });
        self.sync_status(&key.0, &key.1);
    }

    fn owned_jobs(&self, cj: &Value) -> Vec<Arc<Value>> {
        let jobs = info(&self.shared, "batch", "jobs");
        let uid = uid_of(cj);
        self.shared
            .store
            .dependents(uid, &jobs.gr())
            .into_iter()
            .filter(|j| namespace_of(j) == namespace_of(cj))
            .filter(|j| controller_of(j).is_some_and(|(_, _, u)| u == uid))
            .collect()
    }

    fn active_jobs(&self, cj: &Value) -> Vec<Arc<Value>> {
        self.owned_jobs(cj)
            .into_iter()
            .filter(|j| finished(j).is_none() && !terminating(j))
            .collect()
    }

    /// Updates `status.active` / `lastSuccessfulTime` and prunes old finished Jobs.
    fn sync_status(&self, ns: &str, name: &str) {
        let cjs = info(&self.shared, "batch", "cronjobs");
        let Ok(cj) = self.shared.store.get(&cjs, ns, name) else {
            return;
        };
        let mut owned = self.owned_jobs(&cj);
        owned.sort_by(|a, b| {
            meta::meta_str(a, "creationTimestamp")
                .cmp(&meta::meta_str(b, "creationTimestamp"))
                .then(name_of(a).cmp(name_of(b)))
        });
        let active: Vec<Value> = owned
            .iter()
            .filter(|j| finished(j).is_none() && !terminating(j))
            .map(|j| json!({"kind": "Job", "namespace": ns, "name": name_of(j), "uid": uid_of(j), "apiVersion": "batch/v1"}))
            .collect();
        let last_success = owned
            .iter()
            .filter(|j| finished(j) == Some(true))
            .filter_map(|j| j.pointer("/status/completionTime").and_then(Value::as_str))
            .max()
            .map(String::from);
        for (ok, limit_field, default) in [
            (true, "successfulJobsHistoryLimit", 3),
            (false, "failedJobsHistoryLimit", 1),
        ] {
            let limit = cj
                .pointer(&format!("/spec/{limit_field}"))
                .and_then(Value::as_i64)
                .unwrap_or(default)
                .max(0) as usize;
            let done: Vec<_> = owned
                .iter()
                .filter(|j| finished(j) == Some(ok) && !terminating(j))
                .collect();
            if done.len() > limit {
                let jobs = info(&self.shared, "batch", "jobs");
                for j in &done[..done.len() - limit] {
                    let _ =
                        self.shared
                            .store
                            .delete(&jobs, ns, name_of(j), &DeleteOptions::default());
                }
            }
        }
        let uid = uid_of(&cj).to_string();
        let _ = self.shared.store.update_with(&cjs, ns, name, true, |cur| {
            let mut n = cur.clone();
            if uid_of(cur) == uid {
                if !n.get("status").is_some_and(Value::is_object) {
                    n["status"] = json!({});
                }
                if active.is_empty() {
                    n["status"].as_object_mut().map(|s| s.remove("active"));
                } else {
                    n["status"]["active"] = json!(active);
                }
                if let Some(t) = &last_success {
                    n["status"]["lastSuccessfulTime"] = json!(t);
                }
            }
            Ok(n)
        });
    }
}

/// `Some(true)` for a complete Job, `Some(false)` for a failed one, `None` while it runs.
fn finished(job: &Value) -> Option<bool> {
    let conds = job.pointer("/status/conditions")?.as_array()?;
    conds.iter().find_map(|c| {
        if c["status"] != "True" {
            return None;
        }
        match c["type"].as_str() {
            Some("Complete") => Some(true),
            Some("Failed") => Some(false),
            _ => None,
        }
    })
}

/// Runs the CronJob controller until shutdown.
pub async fn run(shared: Arc<Shared>) {
    let mut cronjobs = Feed::new(shared.store.clone(), "batch", "cronjobs");
    let mut jobs = Feed::new(shared.store.clone(), "batch", "jobs");
    let mut c = CronController {
        clock: SimClock::new(shared.config.cron_speedup),
        shared: shared.clone(),
        next: BTreeMap::new(),
    };
    let cj_gr = info(&shared, "batch", "cronjobs").gr();
    loop {
        match cronjobs.take() {
            Update::Resync => {
                let (all, _) = shared.store.snapshot(&cj_gr);
                c.next.clear();
                for cj in &all {
                    c.plan(cj);
                }
            }
            Update::Events(es) => {
                for e in es {
                    if e.type_ == crate::kube::store::EventType::Deleted {
                        c.next.remove(&key_of(&e.object));
                    } else {
                        c.plan(&e.object);
                    }
                }
            }
        }
        let mut touched = BTreeSet::new();
        if let Update::Events(es) = jobs.take() {
            for e in es {
                if let Some((kind, name, _)) = controller_of(&e.object)
                    && kind == "CronJob"
                {
                    touched.insert((namespace_of(&e.object).to_string(), name));
                }
            }
        }
        for (ns, name) in touched {
            c.sync_status(&ns, &name);
        }
        let due = c
            .next
            .iter()
            .min_by_key(|(_, t)| **t)
            .map(|(k, t)| (k.clone(), *t));
        let wake = due.as_ref().map(|(_, t)| c.clock.instant_at(*t));
        tokio::select! {
            () = cronjobs.wait() => {}
            () = jobs.wait() => {}
            () = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(w).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some((key, at)) = due {
                    c.fire(&key, at);
                }
            }
            () = shared.shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_minute_fires_on_the_next_minute() {
        let s = Schedule::parse("*/1 * * * *").unwrap();
        assert_eq!(
            s.next_after(t("2026-01-01T10:00:30Z")),
            Some(t("2026-01-01T10:01:00Z"))
        );
    }

    #[test]
    fn ranges_steps_names_and_macros_parse() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        // 2026-01-03 is a Saturday: the next run is Monday 09:00.
        assert_eq!(
            s.next_after(t("2026-01-02T17:50:00Z")),
            Some(t("2026-01-05T09:00:00Z"))
        );
        let h = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            h.next_after(t("2026-01-01T10:00:00Z")),
            Some(t("2026-01-01T11:00:00Z"))
        );
        let m = Schedule::parse("0 0 1 feb *").unwrap();
        assert_eq!(
            m.next_after(t("2026-03-01T00:00:00Z")),
            Some(t("2027-02-01T00:00:00Z"))
        );
        let sunday7 = Schedule::parse("0 12 * * 7").unwrap();
        assert_eq!(
            sunday7.next_after(t("2026-01-01T00:00:00Z")),
            Some(t("2026-01-04T12:00:00Z"))
        );
    }

    #[test]
    fn malformed_schedules_are_rejected() {
        for s in ["", "* * * *", "61 * * * *", "*/0 * * * *", "a b c d e"] {
            assert!(Schedule::parse(s).is_err(), "{s}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sim_clock_runs_faster_on_the_tokio_clock() {
        let c = SimClock::new(60);
        let start = c.now();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let elapsed = c.now() - start;
        assert_eq!(elapsed.num_seconds(), 60);
        let target = start + ChronoDuration::minutes(2);
        let at = c.instant_at(target);
        assert!(at > Instant::now());
    }
}
