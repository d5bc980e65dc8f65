//! CustomResourceDefinition admission and custom-object schemas, as a real API server applies
//! them (apiextensions-apiserver), so that nothing passes here that a cluster would refuse.
//!
//! - [`admit_crd`]: what a `apiextensions.k8s.io/v1` CRD must satisfy to be stored: the
//!   approval annotation in protected groups (`k8s.io`, `kubernetes.io` and their subdomains),
//!   `metadata.name` = `<plural>.<group>`, one storage version, an `openAPIV3Schema` per
//!   version, and the structural-schema rules (a type on every specified node unless it
//!   preserves unknown fields or is int-or-string, no `$ref`, `additionalProperties` not beside
//!   `properties` nor `false`, no `uniqueItems: true`, only name restrictions on root
//!   `metadata`, no types or defaults inside `allOf`/`anyOf`/`oneOf`/`not`).
//! - [`prune`] and [`validate`]: what a create or update of a custom object goes through:
//!   unknown fields dropped (except under `x-kubernetes-preserve-unknown-fields`, and
//!   ObjectMeta fields inside embedded resources), `null` dropped where the schema does not say
//!   `nullable`, then types, `enum` and `required` checked with the server's messages.
//!
//! Not enforced (accepted as written): formats, numeric and length bounds, patterns, CEL
//! rules, defaults.

use serde_json::{Map, Value};

/// The annotation a CRD in a protected group must carry.
pub const API_APPROVED: &str = "api-approved.kubernetes.io";

const APPROVAL_LINK: &str = "see https://github.com/kubernetes/enhancements/pull/1111";

/// Fields an embedded resource's `metadata` keeps (ObjectMeta's).
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// True for groups that need the approval annotation.
#[must_use]
pub fn is_protected_group(group: &str) -> bool {
    group == "k8s.io"
        || group == "kubernetes.io"
        || group.ends_with(".k8s.io")
        || group.ends_with(".kubernetes.io")
}

fn approval_of(crd: &Value) -> &str {
    crd.pointer("/metadata/annotations")
        .and_then(|a| a.get(API_APPROVED))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn approval_error(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some(format!(
            "metadata.annotations[{API_APPROVED}]: Required value: protected groups must have approval annotation \"{API_APPROVED}\", {APPROVAL_LINK}"
        ));
    }
    if value.starts_with("unapproved") {
        return None;
    }
    match url::Url::parse(value) {
        Ok(u) if u.host_str().is_some_and(|h| !h.is_empty()) => None,
        _ => Some(format!(
            "metadata.annotations[{API_APPROVED}]: Invalid value: \"{value}\": protected groups must have approval annotation \"{API_APPROVED}\" with either a URL or a reason starting with \"unapproved\", {APPROVAL_LINK}"
        )),
    }
}

/// Every reason the API server would refuse to store `crd` (empty when it is admitted).
/// `old` is the stored CRD on an update: an approval value that did not change is not
/// checked again, as on a real server.
#[must_use]
pub fn admit_crd(crd: &Value, old: Option<&Value>) -> Vec<String> {
    let mut errs = Vec::new();
    let spec = crd.get("spec").cloned().unwrap_or(Value::Null);
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).unwrap_or("");
    let group = s("/group");
    let plural = s("/names/plural");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name != format!("{plural}.{group}") {
        errs.push(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    if is_protected_group(group) {
        let value = approval_of(crd);
        let unchanged = old.is_some_and(|o| approval_of(o) == value);
        if !unchanged && let Some(e) = approval_error(value) {
            errs.push(e);
        }
    }
    if spec.get("preserveUnknownFields").and_then(Value::as_bool) == Some(true) {
        errs.push("spec.preserveUnknownFields: Invalid value: true: must be false in order to use defaults in the schema".into());
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push("spec.versions: Invalid value: []: must have exactly one version marked as storage version".into());
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.push(format!(
            "spec.versions: Invalid value: {}: must have exactly one version marked as storage version",
            serde_json::to_string(&versions).unwrap_or_default()
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}].schema.openAPIV3Schema");
        match v.pointer("/schema/openAPIV3Schema") {
            None => errs.push(format!("{at}: Required value: schemas are required")),
            Some(schema) => structural(schema, &at, Node::Root, &mut errs),
        }
        if let Some(sr) = v.get("subresources")
            && !sr.is_object()
        {
            errs.push(format!(
                "spec.versions[{i}].subresources: Invalid value: must be an object"
            ));
        }
    }
    errs
}

/// Where a schema node sits, for the rules that depend on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Node {
    /// The root of `openAPIV3Schema`.
    Root,
    /// The root's `metadata`.
    RootMetadata,
    /// Any other specified node.
    Field,
    /// Inside `allOf`, `anyOf`, `oneOf` or `not` (value validation only).
    Junctor,
}

fn is_true(s: &Value, key: &str) -> bool {
    s.get(key).and_then(Value::as_bool) == Some(true)
}

fn structural(s: &Value, at: &str, node: Node, errs: &mut Vec<String>) {
    let Some(m) = s.as_object() else {
        errs.push(format!("{at}: Invalid value: must be a schema object"));
        return;
    };
    if m.contains_key("$ref") {
        errs.push(format!("{at}.$ref: Forbidden: $ref is not supported"));
    }
    let ty = m.get("type").and_then(Value::as_str).unwrap_or("");
    let int_or_string = is_true(s, "x-kubernetes-int-or-string");
    let preserve = is_true(s, "x-kubernetes-preserve-unknown-fields");
    if m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(false)) {
        errs.push(format!(
            "{at}.x-kubernetes-preserve-unknown-fields: Invalid value: false: must be true or undefined"
        ));
    }
    if node == Node::Junctor {
        for k in [
            "type",
            "default",
            "additionalProperties",
            "nullable",
            "description",
        ] {
            if m.contains_key(k) {
                errs.push(format!(
                    "{at}.{k}: Forbidden: must be empty to be structural"
                ));
            }
        }
    } else if ty.is_empty() && !int_or_string && !preserve {
        errs.push(format!(
            "{at}.type: Required value: must not be empty for specified object fields"
        ));
    }
    if !ty.is_empty()
        && !matches!(
            ty,
            "object" | "array" | "string" | "integer" | "number" | "boolean"
        )
    {
        errs.push(format!(
            "{at}.type: Unsupported value: \"{ty}\": supported values: \"array\", \"boolean\", \"integer\", \"number\", \"object\", \"string\""
        ));
    }
    if node == Node::Root && ty != "object" {
        errs.push(format!(
            "{at}.type: Invalid value: \"{ty}\": must be object at the root"
        ));
    }
    if is_true(s, "x-kubernetes-embedded-resource") && ty != "object" {
        errs.push(format!(
            "{at}.type: Invalid value: \"{ty}\": must be object if x-kubernetes-embedded-resource is true"
        ));
    }
    if is_true(s, "uniqueItems") {
        errs.push(format!(
            "{at}.uniqueItems: Forbidden: uniqueItems cannot be set to true since the runtime complexity becomes quadratic"
        ));
    }
    if let Some(ap) = m.get("additionalProperties") {
        if ap == &Value::Bool(false) {
            errs.push(format!(
                "{at}.additionalProperties: Forbidden: additionalProperties cannot be set to false"
            ));
        }
        if m.contains_key("properties") {
            errs.push(format!(
                "{at}.additionalProperties: Forbidden: additionalProperties and properties are mutual exclusive"
            ));
        }
        if ap.is_object() {
            structural(ap, &format!("{at}.additionalProperties"), child(node), errs);
        }
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let sub = if node == Node::Root && k == "metadata" {
                Node::RootMetadata
            } else {
                child(node)
            };
            structural(v, &format!("{at}.properties[{k}]"), sub, errs);
        }
    }
    if node == Node::RootMetadata {
        let allowed = ["type", "description", "properties"];
        if m.keys().any(|k| !allowed.contains(&k.as_str()))
            || m.get("properties")
                .and_then(Value::as_object)
                .is_some_and(|p| {
                    p.keys()
                        .any(|k| !matches!(k.as_str(), "name" | "generateName"))
                })
        {
            errs.push(format!(
                "{at}: Forbidden: must not specify anything other than name and generateName, but metadata is implicitly specified"
            ));
        }
    }
    if let Some(items) = m.get("items") {
        if items.is_array() {
            errs.push(format!(
                "{at}.items: Forbidden: items must be a schema object and not an array"
            ));
        } else {
            structural(items, &format!("{at}.items"), child(node), errs);
        }
    }
    if ty == "array" && !m.contains_key("items") {
        errs.push(format!("{at}.items: Required value: must be specified"));
    }
    for j in ["allOf", "anyOf", "oneOf"] {
        if let Some(list) = m.get(j).and_then(Value::as_array) {
            for (i, sub) in list.iter().enumerate() {
                structural(sub, &format!("{at}.{j}[{i}]"), Node::Junctor, errs);
            }
        }
    }
    if let Some(not) = m.get("not") {
        structural(not, &format!("{at}.not"), Node::Junctor, errs);
    }
}

fn child(node: Node) -> Node {
    if node == Node::Junctor {
        Node::Junctor
    } else {
        Node::Field
    }
}

/// Drops what the API server drops from a custom object before validating it: fields the
/// schema does not specify (unless it preserves unknown fields), and `null` where the schema
/// does not allow it. `apiVersion`, `kind` and `metadata` at the root are the store's.
pub fn prune(schema: &Value, obj: &mut Value) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let preserve = is_true(schema, "x-kubernetes-preserve-unknown-fields");
    m.retain(|k, v| {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            return true;
        }
        match props.and_then(|p| p.get(k)) {
            Some(sub) => prune_value(sub, v),
            None => preserve,
        }
    });
}

/// Prunes `v` against `s`; false when `v` itself is to be dropped.
fn prune_value(s: &Value, v: &mut Value) -> bool {
    if v.is_null() {
        return is_true(s, "nullable");
    }
    if is_true(s, "x-kubernetes-preserve-unknown-fields")
        && !s.get("properties").is_some_and(Value::is_object)
        && !s.get("additionalProperties").is_some_and(Value::is_object)
        && !s.get("items").is_some_and(Value::is_object)
    {
        return true;
    }
    match v {
        Value::Object(m) => prune_object(s, m),
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                items.retain_mut(|x| prune_value(item, x) || x.is_null());
            }
        }
        _ => {}
    }
    true
}

fn prune_object(s: &Value, m: &mut Map<String, Value>) {
    let props = s.get("properties").and_then(Value::as_object);
    let additional = s.get("additionalProperties");
    let preserve = is_true(s, "x-kubernetes-preserve-unknown-fields");
    let embedded = is_true(s, "x-kubernetes-embedded-resource");
    m.retain(|k, v| {
        if embedded {
            match k.as_str() {
                "apiVersion" | "kind" if v.is_string() => return true,
                "metadata" => {
                    if let Some(meta) = v.as_object_mut() {
                        meta.retain(|mk, _| OBJECT_META_FIELDS.contains(&mk.as_str()));
                    }
                    return true;
                }
                _ => {}
            }
        }
        if let Some(sub) = props.and_then(|p| p.get(k)) {
            return prune_value(sub, v);
        }
        match additional {
            Some(a) if a.is_object() => prune_value(a, v),
            Some(Value::Bool(true)) => true,
            _ => preserve,
        }
    });
}

/// Validation errors of a (pruned) custom object against its schema, worded as the API
/// server words them (`spec.pod: Invalid value: "integer": spec.pod in body must be of type
/// string: "integer"`).
#[must_use]
pub fn validate(schema: &Value, obj: &Value) -> Vec<String> {
    let mut errs = Vec::new();
    if let (Some(props), Some(m)) = (
        schema.get("properties").and_then(Value::as_object),
        obj.as_object(),
    ) {
        for (k, v) in m {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(sub) = props.get(k) {
                check(sub, v, k, &mut errs);
            }
        }
    }
    required(schema, obj, "", &mut errs);
    errs
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if v.is_null() {
        // Pruning removed nulls the schema does not allow; what is left is nullable.
        return;
    }
    let got = json_type(v);
    if is_true(s, "x-kubernetes-int-or-string") {
        if !matches!(got, "integer" | "string") {
            errs.push(format!(
                "{at}: Invalid value: \"{got}\": {at} in body must be of type integer,string: \"{got}\""
            ));
        }
        return;
    }
    if let Some(want) = s.get("type").and_then(Value::as_str) {
        let ok = want == got || (want == "number" && got == "integer");
        if !ok {
            errs.push(format!(
                "{at}: Invalid value: \"{got}\": {at} in body must be of type {want}: \"{got}\""
            ));
            return;
        }
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errs.push(format!(
            "{at}: Unsupported value: {v}: supported values: {}",
            list.join(", ")
        ));
    }
    if is_true(s, "x-kubernetes-embedded-resource") {
        for k in ["apiVersion", "kind"] {
            if let Some(x) = v.get(k)
                && !x.is_string()
            {
                errs.push(format!("{at}.{k}: Invalid value: must be a string"));
            }
        }
        if let Some(meta) = v.get("metadata")
            && !meta.is_object()
        {
            errs.push(format!("{at}.metadata: Invalid value: must be an object"));
        }
    }
    match v {
        Value::Object(m) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            for (k, x) in m {
                if let Some(sub) = props.and_then(|p| p.get(k)) {
                    check(sub, x, &format!("{at}.{k}"), errs);
                } else if let Some(a) = additional {
                    check(a, x, &format!("{at}.{k}"), errs);
                }
            }
            required(s, v, at, errs);
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    check(item, x, &format!("{at}[{i}]"), errs);
                }
            }
        }
        _ => {}
    }
}

fn required(s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    let Some(req) = s.get("required").and_then(Value::as_array) else {
        return;
    };
    for r in req.iter().filter_map(Value::as_str) {
        if v.get(r).is_none() {
            let path = if at.is_empty() {
                r.to_string()
            } else {
                format!("{at}.{r}")
            };
            errs.push(format!("{path}: Required value"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd(group: &str, annotations: Value, schema: Value) -> Value {
        json!({
            "metadata": {"name": format!("widgets.{group}"), "annotations": annotations},
            "spec": {"group": group, "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": schema}}]}
        })
    }

    fn object_schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object",
            "properties": {"size": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "ref": {"type": "object", "x-kubernetes-embedded-resource": true, "properties": {"spec": {"type": "object"}}},
                "maybe": {"type": "string", "nullable": true}}}}})
    }

    #[test]
    fn protected_groups_need_the_approval_annotation() {
        let errs = admit_crd(&crd("example.k8s.io", json!({}), object_schema()), None);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("Required value: protected groups must have approval annotation"));
        let bad = admit_crd(
            &crd(
                "x.kubernetes.io",
                json!({API_APPROVED: "maybe later"}),
                object_schema(),
            ),
            None,
        );
        assert!(bad[0].contains("with either a URL or a reason starting with \"unapproved\""));
        for ok in [
            "unapproved",
            "unapproved, legacy",
            "https://github.com/kubernetes/kubernetes/pull/1",
        ] {
            assert!(
                admit_crd(
                    &crd("example.k8s.io", json!({API_APPROVED: ok}), object_schema()),
                    None
                )
                .is_empty(),
                "{ok}"
            );
        }
        // Other groups need nothing; an unchanged bad value is not checked again on update.
        assert!(admit_crd(&crd("example.com", json!({}), object_schema()), None).is_empty());
        let old = crd("x.k8s.io", json!({API_APPROVED: "bad"}), object_schema());
        assert!(admit_crd(&old, Some(&old)).is_empty());
    }

    #[test]
    fn schemas_must_be_structural() {
        let cases = [
            (
                json!({"type": "object", "properties": {"spec": {"properties": {}}}}),
                "spec].type: Required value",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "array"}}}),
                "items: Required value",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}}}),
                "mutual exclusive",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "object", "additionalProperties": false}}}),
                "cannot be set to false",
            ),
            (
                json!({"type": "object", "properties": {"metadata": {"type": "object", "properties": {"labels": {"type": "object"}}}}}),
                "other than name and generateName",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#/x"}}}),
                "$ref is not supported",
            ),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "anyOf": [{"type": "integer"}]}}}),
                "must be empty to be structural",
            ),
            (json!({"type": "string"}), "must be object at the root"),
        ];
        for (schema, want) in cases {
            let errs = admit_crd(&crd("example.com", json!({}), schema.clone()), None);
            assert!(errs.iter().any(|e| e.contains(want)), "{schema}: {errs:?}");
        }
        let mut no_schema = crd("example.com", json!({}), json!({}));
        no_schema["spec"]["versions"][0]
            .as_object_mut()
            .unwrap()
            .remove("schema");
        assert!(admit_crd(&no_schema, None)[0].contains("schemas are required"));
        let mut wrong_name = crd("example.com", json!({}), object_schema());
        wrong_name["metadata"]["name"] = json!("widgets");
        assert!(
            admit_crd(&wrong_name, None)[0].contains("must be spec.names.plural+\".\"+spec.group")
        );
    }

    #[test]
    fn unknown_fields_and_disallowed_nulls_are_pruned_and_types_checked() {
        let s = object_schema();
        let mut o = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 3, "junk": 1, "tags": ["a"], "extra": {"anything": {"goes": 1}},
                "ref": {"apiVersion": "v1", "kind": "X", "metadata": {"name": "n", "bogus": 1}, "spec": {"x": 1}},
                "maybe": null},
            "status": {"ignored": true}, "odd": null});
        prune(&s, &mut o);
        assert_eq!(
            o,
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                "spec": {"size": 3, "tags": ["a"], "extra": {"anything": {"goes": 1}},
                    "ref": {"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}, "spec": {}},
                    "maybe": null}})
        );
        assert!(validate(&s, &o).is_empty());
        let bad = json!({"spec": {"size": "three", "tags": [1]}});
        let errs = validate(&s, &bad);
        assert_eq!(
            errs,
            [
                "spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\"",
                "spec.tags[0]: Invalid value: \"integer\": spec.tags[0] in body must be of type string: \"integer\""
            ]
        );
        let mut null_size = json!({"spec": {"size": null}});
        prune(&s, &mut null_size);
        assert_eq!(null_size, json!({"spec": {}}));
    }
}
