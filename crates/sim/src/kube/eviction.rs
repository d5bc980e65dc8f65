//! The `pods/eviction` subresource (policy/v1 Eviction), as `kubectl drain` uses it: a pod is
//! deleted unless a PodDisruptionBudget covering it would be violated, in which case the
//! answer is 429 with the API server's message, and kubectl retries.
//!
//! As on a real server: a pod that is Pending, Succeeded, Failed or already terminating is
//! evicted without looking at budgets; more than one budget matching the pod is a 500; an
//! unknown pod is a 404; a dry run deletes nothing. Allowed disruptions are computed at the
//! time of the request from the pods the budget selects (healthy = Running and not
//! terminating, expected = all selected pods) instead of from a disruption controller's
//! status, and one lock makes concurrent evictions see each other's deletions.

use std::sync::Mutex;

use serde_json::{Value, json};

use super::Shared;
use super::meta::{ApiError, name_of};
use super::selector::{FieldSelector, LabelSelector};
use super::store::DeleteOptions;

/// Serializes budget checks with their deletes, as the budget's status update does on a
/// real server.
static EVICTIONS: Mutex<()> = Mutex::new(());

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
}

fn terminating(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_some()
}

/// An integer or percentage of `total` (percentages rounded up, as the disruption controller).
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let p: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            Some((p * total + 99) / 100)
        }
        _ => None,
    }
}

fn too_many(pdb: &str, message: String) -> ApiError {
    let mut e =
        ApiError::bad_request("Cannot evict pod as it would violate the pod's disruption budget.");
    e.code = 429;
    e.reason = "TooManyRequests";
    e.details = Some(Box::new(super::meta::Details {
        causes: vec![(
            "DisruptionBudget".into(),
            format!("The disruption budget {pdb} {message}"),
        )],
        ..Default::default()
    }));
    e
}

/// Handles `POST .../pods/{name}/eviction` with an Eviction body (JSON or protobuf, already
/// parsed); the Status object to answer with (201 Success) or the refusal.
pub fn evict(shared: &Shared, ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
    if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str)
        && !n.is_empty()
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "name in URL does not match name in Eviction object: {name} != {n}"
        )));
    }
    let registry = shared.store.registry();
    let pods = registry.get("", "v1", "pods").expect("pods are built in");
    let opts_json = body.get("deleteOptions").cloned().unwrap_or(json!({}));
    let opts = delete_options(&opts_json)?;
    let dry_run = opts_json
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|x| x == "All"));
    let _serial = EVICTIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let pod = shared.store.get(&pods, ns, name)?;
    let ignores_budgets =
        matches!(phase(&pod), "Pending" | "Succeeded" | "Failed") || terminating(&pod);
    if !ignores_budgets {
        check_budgets(shared, ns, &pod)?;
    }
    if !dry_run {
        shared.store.delete(&pods, ns, name, &opts)?;
    }
    Ok(json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Success", "code": 201,
    }))
}

fn check_budgets(shared: &Shared, ns: &str, pod: &Value) -> Result<(), ApiError> {
    let registry = shared.store.registry();
    let Some(pdbs) = registry.get("policy", "v1", "poddisruptionbudgets") else {
        return Ok(());
    };
    let pods = registry.get("", "v1", "pods").expect("pods are built in");
    let all = LabelSelector::default();
    let none = FieldSelector::default();
    let budgets: Vec<(String, Value, LabelSelector)> = shared
        .store
        .list(&pdbs, Some(ns), &all, &none, None, None)?
        .items
        .iter()
        .filter_map(|b| {
            // A null selector selects nothing; an empty one selects every pod (policy/v1).
            let sel = b.pointer("/spec/selector").filter(|s| !s.is_null())?;
            let sel = LabelSelector::from_object(sel)?;
            sel.matches(pod)
                .then(|| (name_of(b).to_string(), b["spec"].clone(), sel))
        })
        .collect();
    match budgets.len() {
        0 => Ok(()),
        1 => {
            let (pdb, spec, sel) = &budgets[0];
            let selected: Vec<_> = shared
                .store
                .list(&pods, Some(ns), &sel.clone(), &none, None, None)?
                .items
                .into_iter()
                .filter(|p| !terminating(p))
                .collect();
            let expected = selected.len() as i64;
            let healthy = selected.iter().filter(|p| phase(p) == "Running").count() as i64;
            let desired = if let Some(min) =
                spec.get("minAvailable").and_then(|v| scaled(v, expected))
            {
                min
            } else if let Some(max) = spec.get("maxUnavailable").and_then(|v| scaled(v, expected)) {
                expected - max
            } else {
                expected
            };
            if healthy - desired <= 0 {
                return Err(too_many(
                    pdb,
                    format!("needs {desired} healthy pods and has {healthy} currently"),
                ));
            }
            Ok(())
        }
        _ => {
            let mut e = ApiError::bad_request(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            );
            e.code = 500;
            e.reason = "InternalError";
            Err(e)
        }
    }
}

/// The options of a DELETE (its body, JSON or decoded protobuf; query parameters as fallback).
pub fn delete_options(body: &Value) -> Result<DeleteOptions, ApiError> {
    use super::store::Propagation;
    let mut opts = DeleteOptions {
        propagation: Propagation::Background,
        ..DeleteOptions::default()
    };
    opts.propagation = match body.get("propagationPolicy").and_then(Value::as_str) {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid propagationPolicy: {other}"
            )));
        }
    };
    if body.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
        opts.propagation = Propagation::Orphan;
    }
    if let Some(p) = body.get("preconditions") {
        opts.uid = p.get("uid").and_then(Value::as_str).map(String::from);
        opts.resource_version = p
            .get("resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
    }
    Ok(opts)
}
