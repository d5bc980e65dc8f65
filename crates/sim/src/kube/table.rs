//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for, with the
//! columns kubectl users know for built-ins and the declared printer columns for custom
//! resources.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::meta::{meta_str, name_of};
use super::resources::ResourceInfo;
use super::wire::Query;

/// What the client asked a Table to contain.
#[derive(Clone, Debug)]
pub struct TableOptions {
    /// `includeObject=Object` embeds whole objects, else metadata only.
    pub full_object: bool,
    /// `includeObject=None` embeds nothing.
    pub no_object: bool,
}

impl TableOptions {
    /// Options when the Accept header asks for a Table, else `None`.
    #[must_use]
    pub fn from_request(accept: &str, q: &Query) -> Option<Self> {
        if !accept.contains("as=Table") {
            return None;
        }
        let inc = q.get("includeObject").map(String::as_str);
        Some(Self {
            full_object: inc == Some("Object"),
            no_object: inc == Some("None"),
        })
    }
}

/// A human age as kubectl prints it (`45s`, `12m`, `3h5m`, `2d`).
#[must_use]
pub fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let secs = (Utc::now() - t.with_timezone(&Utc)).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn path<'a>(obj: &'a Value, json_path: &str) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in json_path.trim_start_matches('.').split('.') {
        if seg.is_empty() {
            continue;
        }
        cur = cur.get(seg)?;
    }
    Some(cur)
}

fn s(obj: &Value, p: &str) -> String {
    match path(obj, p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

fn n(obj: &Value, p: &str) -> i64 {
    path(obj, p).and_then(Value::as_i64).unwrap_or(0)
}

fn col(name: &str, type_: &str, priority: i64) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": type_, "format": format, "description": name, "priority": priority})
}

fn created(obj: &Value) -> String {
    age(meta_str(obj, "creationTimestamp"))
}

fn pod_row(o: &Value) -> Vec<Value> {
    let statuses = path(o, ".status.containerStatuses").and_then(Value::as_array);
    let total = path(o, ".spec.containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.map_or(0, |s| {
        s.iter()
            .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
            .count()
    });
    let restarts: i64 = statuses.map_or(0, |s| {
        s.iter()
            .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
            .sum()
    });
    let mut status = s(o, ".status.phase");
    if status == "Succeeded" {
        status = "Completed".into();
    }
    if meta_str(o, "deletionTimestamp").is_some() {
        status = "Terminating".into();
    }
    let ip = s(o, ".status.podIP");
    let node = s(o, ".spec.nodeName");
    vec![
        json!(name_of(o)),
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts),
        json!(created(o)),
        json!(if ip.is_empty() { "<none>".into() } else { ip }),
        json!(if node.is_empty() {
            "<none>".into()
        } else {
            node
        }),
    ]
}

fn node_row(o: &Value) -> Vec<Value> {
    let ready = path(o, ".status.conditions")
        .and_then(Value::as_array)
        .and_then(|c| {
            c.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .and_then(|c| c.get("status").and_then(Value::as_str))
        == Some("True");
    let mut status = if ready { "Ready" } else { "NotReady" }.to_string();
    if path(o, ".spec.unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    vec![
        json!(name_of(o)),
        json!(status),
        json!("<none>"),
        json!(created(o)),
        json!(s(o, ".status.nodeInfo.kubeletVersion")),
    ]
}

/// Columns and cells for a set of objects of one resource.
fn columns_and_rows(info: &ResourceInfo, items: &[Arc<Value>]) -> (Vec<Value>, Vec<Vec<Value>>) {
    let name_age = || vec![col("Name", "string", 0), col("Age", "string", 0)];
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "string", 0),
                col("Age", "string", 0),
                col("IP", "string", 1),
                col("Node", "string", 1),
            ],
            items.iter().map(|o| pod_row(o)).collect(),
        ),
        ("", "nodes") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Roles", "string", 0),
                col("Age", "string", 0),
                col("Version", "string", 0),
            ],
            items.iter().map(|o| node_row(o)).collect(),
        ),
        ("", "namespaces") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Age", "string", 0),
            ],
            items
                .iter()
                .map(|o| {
                    vec![
                        json!(name_of(o)),
                        json!(s(o, ".status.phase")),
                        json!(created(o)),
                    ]
                })
                .collect(),
        ),
        ("apps", "deployments") => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Up-to-date", "integer", 0),
                col("Available", "integer", 0),
                col("Age", "string", 0),
            ],
            items
                .iter()
                .map(|o| {
                    vec![
                        json!(name_of(o)),
                        json!(format!(
                            "{}/{}",
                            n(o, ".status.readyReplicas"),
                            n(o, ".spec.replicas")
                        )),
                        json!(n(o, ".status.updatedReplicas")),
                        json!(n(o, ".status.availableReplicas")),
                        json!(created(o)),
                    ]
                })
                .collect(),
        ),
        ("apps", "daemonsets") => (
            vec![
                col("Name", "string", 0),
                col("Desired", "integer", 0),
                col("Current", "integer", 0),
                col("Ready", "integer", 0),
                col("Up-to-date", "integer", 0),
                col("Available", "integer", 0),
                col("Age", "string", 0),
            ],
            items
                .iter()
                .map(|o| {
                    vec![
                        json!(name_of(o)),
                        json!(n(o, ".status.desiredNumberScheduled")),
                        json!(n(o, ".status.currentNumberScheduled")),
                        json!(n(o, ".status.numberReady")),
                        json!(n(o, ".status.updatedNumberScheduled")),
                        json!(n(o, ".status.numberAvailable")),
                        json!(created(o)),
                    ]
                })
                .collect(),
        ),
        ("batch", "jobs") => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Completions", "string", 0),
                col("Age", "string", 0),
            ],
            items
                .iter()
                .map(|o| {
                    let done = n(o, ".status.succeeded");
                    let want = path(o, ".spec.completions")
                        .and_then(Value::as_i64)
                        .unwrap_or(1);
                    let status = if done >= want { "Complete" } else { "Running" };
                    vec![
                        json!(name_of(o)),
                        json!(status),
                        json!(format!("{done}/{want}")),
                        json!(created(o)),
                    ]
                })
                .collect(),
        ),
        ("batch", "cronjobs") => (
            vec![
                col("Name", "string", 0),
                col("Schedule", "string", 0),
                col("Suspend", "boolean", 0),
                col("Active", "integer", 0),
                col("Last Schedule", "string", 0),
                col("Age", "string", 0),
            ],
            items
                .iter()
                .map(|o| {
                    let last = meta_last(o);
                    vec![
                        json!(name_of(o)),
                        json!(s(o, ".spec.schedule")),
                        json!(
                            path(o, ".spec.suspend")
                                .and_then(Value::as_bool)
                                .unwrap_or(false)
                        ),
                        json!(
                            path(o, ".status.active")
                                .and_then(Value::as_array)
                                .map_or(0, Vec::len)
                        ),
                        json!(last),
                        json!(created(o)),
                    ]
                })
                .collect(),
        ),
        ("", "events") => (
            vec![
                col("Last Seen", "string", 0),
                col("Type", "string", 0),
                col("Reason", "string", 0),
                col("Object", "string", 0),
                col("Message", "string", 0),
            ],
            items
                .iter()
                .map(|o| {
                    let last = path(o, ".lastTimestamp")
                        .and_then(Value::as_str)
                        .or_else(|| path(o, ".eventTime").and_then(Value::as_str))
                        .or_else(|| meta_str(o, "creationTimestamp"));
                    vec![
                        json!(age(last)),
                        json!(s(o, ".type")),
                        json!(s(o, ".reason")),
                        json!(format!(
                            "{}/{}",
                            s(o, ".involvedObject.kind").to_lowercase(),
                            s(o, ".involvedObject.name")
                        )),
                        json!(s(o, ".message")),
                    ]
                })
                .collect(),
        ),
        _ if info.custom && !info.columns.is_empty() => {
            let mut cols = vec![col("Name", "string", 0)];
            cols.extend(info.columns.iter().map(|c| {
                let t = if c.type_ == "date" {
                    "string"
                } else {
                    c.type_.as_str()
                };
                let mut v = col(&c.name, t, c.priority);
                v["format"] = json!(if c.type_ == "date" { "date" } else { "" });
                v
            }));
            let rows = items
                .iter()
                .map(|o| {
                    let mut r = vec![json!(name_of(o))];
                    r.extend(info.columns.iter().map(|c| match path(o, &c.json_path) {
                        None | Some(Value::Null) => Value::Null,
                        Some(Value::String(t)) if c.type_ == "date" => json!(age(Some(t))),
                        Some(v) => v.clone(),
                    }));
                    r
                })
                .collect();
            (cols, rows)
        }
        _ => (
            name_age(),
            items
                .iter()
                .map(|o| vec![json!(name_of(o)), json!(created(o))])
                .collect(),
        ),
    }
}

fn meta_last(o: &Value) -> String {
    match path(o, ".status.lastScheduleTime").and_then(Value::as_str) {
        Some(t) => age(Some(t)),
        None => "<none>".into(),
    }
}

/// A `meta.k8s.io/v1` Table of `items`.
#[must_use]
pub fn table(
    info: &ResourceInfo,
    items: &[Arc<Value>],
    opts: &TableOptions,
    resource_version: Option<u64>,
    continue_token: Option<&str>,
) -> Value {
    let (columns, cells) = columns_and_rows(info, items);
    let rows: Vec<Value> = items
        .iter()
        .zip(cells)
        .map(|(o, cells)| {
            let mut row = json!({"cells": cells});
            if !opts.no_object {
                let object = if opts.full_object {
                    let mut full = (**o).clone();
                    full["apiVersion"] = json!(info.api_version());
                    full
                } else {
                    json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                };
                row["object"] = object;
            }
            row
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv.to_string());
    }
    if let Some(c) = continue_token {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::resources::Registry;

    #[test]
    fn ages_read_like_kubectl() {
        let ts =
            |secs: i64| super::super::meta::timestamp(Utc::now() - chrono::Duration::seconds(secs));
        assert_eq!(age(Some(&ts(5))), "5s");
        assert_eq!(age(Some(&ts(200))), "3m20s");
        assert_eq!(age(Some(&ts(3 * 86400))), "3d");
        assert_eq!(age(None), "<unknown>");
    }

    #[test]
    fn custom_resources_get_their_printer_columns() {
        let r = Registry::default();
        r.install_crd(&json!({"metadata": {"name": "ws.x.io"}, "spec": {"group": "x.io", "scope": "Namespaced",
            "names": {"plural": "ws", "kind": "W"}, "versions": [{"name": "v1",
            "additionalPrinterColumns": [{"name": "ClientID", "type": "string", "jsonPath": ".spec.clientID"}]}]}}))
            .unwrap();
        let info = r.get("x.io", "v1", "ws").unwrap();
        let o = Arc::new(json!({"metadata": {"name": "a"}, "spec": {"clientID": "abc"}}));
        let t = table(
            &info,
            &[o],
            &TableOptions {
                full_object: false,
                no_object: false,
            },
            Some(3),
            None,
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "ClientID");
        assert_eq!(t["rows"][0]["cells"], json!(["a", "abc"]));
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
