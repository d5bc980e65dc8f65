//! PATCH semantics: JSON merge patch (RFC 7386), JSON patch (RFC 6902, via `json-patch`), a
//! strategic merge patch that knows the merge keys of the lists kubectl patches, and
//! server-side apply approximated as a merge (no field ownership is tracked).

use serde_json::{Map, Value};

use super::meta::ApiError;

/// The patch formats the server accepts, from the request's Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply, approximated).
    Apply,
}

impl PatchKind {
    /// The kind for a Content-Type header value, if it is a patch type.
    #[must_use]
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Applies `patch` (already parsed) of `kind` to `target`.
pub fn apply(kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    match kind {
        PatchKind::Merge | PatchKind::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(target, &ops).map_err(|e| {
                ApiError::new_invalid_patch(format!("the JSON patch could not be applied: {e}"))
            })
        }
        PatchKind::Strategic => {
            let p = patch.as_object().ok_or_else(|| {
                ApiError::bad_request("a strategic merge patch must be a JSON object")
            })?;
            strategic_object(target, p, "");
            Ok(())
        }
    }
}

impl ApiError {
    fn new_invalid_patch(message: String) -> Self {
        // The real server answers an unappliable JSON patch with 422 Invalid.
        let mut e = Self::bad_request(message);
        e.code = 422;
        e.reason = "Invalid";
        e
    }
}

/// Merge key of list fields that strategic merge patch merges rather than replaces.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "hostAliases" => Some(match field {
            "hostAliases" => "ip",
            _ => "name",
        }),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "addresses" => Some("type"),
        _ => None,
    }
}

/// Lists of scalars that strategic merge patch unions rather than replaces.
fn is_primitive_merge_list(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_object(target: &mut Value, patch: &Map<String, Value>, _field: &str) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = patch.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> = patch.get("$retainKeys").and_then(|v| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
    });
    let obj = target.as_object_mut().expect("made an object above");
    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let _ = field;
            continue;
        }
        match v {
            Value::Null => {
                obj.remove(k);
            }
            Value::Object(p) => {
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    obj.remove(k);
                    continue;
                }
                let slot = obj.entry(k.clone()).or_insert(Value::Null);
                strategic_object(slot, p, k);
            }
            Value::Array(items) => {
                let existing = obj.get_mut(k);
                match (merge_key(k), existing) {
                    (Some(key), Some(Value::Array(cur))) => merge_list(cur, items, key),
                    (None, Some(Value::Array(cur))) if is_primitive_merge_list(k) => {
                        for it in items {
                            if !cur.contains(it) {
                                cur.push(it.clone());
                            }
                        }
                    }
                    _ => {
                        let cleaned: Vec<Value> = items
                            .iter()
                            .filter(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"))
                            .map(strip_directives)
                            .collect();
                        obj.insert(k.clone(), Value::Array(cleaned));
                    }
                }
            }
            other => {
                obj.insert(k.clone(), other.clone());
            }
        }
    }
    // `$deleteFromPrimitiveList/<field>` removes scalars from a merged scalar list.
    for (k, v) in patch {
        if let (Some(field), Some(del)) =
            (k.strip_prefix("$deleteFromPrimitiveList/"), v.as_array())
            && let Some(Value::Array(cur)) = obj.get_mut(field)
        {
            cur.retain(|x| !del.contains(x));
        }
    }
    if let Some(keep) = retain {
        obj.retain(|k, _| keep.contains(k));
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_list(cur: &mut Vec<Value>, patch: &[Value], key: &str) {
    for item in patch {
        let Some(id) = item.get(key) else {
            cur.push(strip_directives(item));
            continue;
        };
        let pos = cur.iter().position(|c| c.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                cur.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => {
                if let Some(p) = item.as_object() {
                    strategic_object(&mut cur[i], p, key);
                }
            }
            (None, false) => cur.push(strip_directives(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_removes_fields() {
        let mut o = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        apply(
            PatchKind::Merge,
            &mut o,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        )
        .unwrap();
        assert_eq!(o["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        assert_eq!(o["spec"]["x"], 1);
    }

    #[test]
    fn json_patch_applies_operations_and_reports_failures() {
        let mut o = json!({"metadata": {"finalizers": ["a", "b"]}});
        apply(
            PatchKind::Json,
            &mut o,
            &json!([{"op": "remove", "path": "/metadata/finalizers/0"}]),
        )
        .unwrap();
        assert_eq!(o["metadata"]["finalizers"], json!(["b"]));
        let e = apply(
            PatchKind::Json,
            &mut o,
            &json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "z"}]),
        )
        .unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            apply(PatchKind::Json, &mut o, &json!({"op": "x"}))
                .unwrap_err()
                .code,
            400
        );
    }

    #[test]
    fn strategic_patch_merges_containers_by_name() {
        let mut o = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        apply(
            PatchKind::Strategic,
            &mut o,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                    "containers": [{"name": "b", "image": "b:2"}]}}),
        )
        .unwrap();
        assert_eq!(o["spec"]["containers"][0]["image"], "a:1");
        assert_eq!(o["spec"]["containers"][1]["image"], "b:2");
        assert!(o["spec"].get("$setElementOrder/containers").is_none());
        apply(
            PatchKind::Strategic,
            &mut o,
            &json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        )
        .unwrap();
        assert_eq!(o["spec"]["containers"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn strategic_patch_replaces_plain_lists_and_unions_finalizers() {
        let mut o = json!({"metadata": {"finalizers": ["x"]}, "spec": {"args": ["1", "2"]}});
        apply(
            PatchKind::Strategic,
            &mut o,
            &json!({"metadata": {"finalizers": ["y"]}, "spec": {"args": ["3"]}}),
        )
        .unwrap();
        assert_eq!(o["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(o["spec"]["args"], json!(["3"]));
    }
}
