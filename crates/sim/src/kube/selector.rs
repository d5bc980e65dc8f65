//! Label and field selectors, parsed once per request and matched against stored JSON objects.

use serde_json::Value;

use super::meta::{ApiError, is_label_key, is_label_value, labels_of};

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    /// `key=value` / `key==value`.
    Equals(String, String),
    /// `key!=value` (also true when the key is absent).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true when the key is absent).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn bad(selector: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement in \"{selector}\": {why}"
    ))
}

fn check_key(sel: &str, key: &str) -> Result<String, ApiError> {
    if is_label_key(key) {
        Ok(key.to_string())
    } else {
        Err(bad(sel, &format!("invalid label key \"{key}\"")))
    }
}

fn check_value(sel: &str, value: &str) -> Result<String, ApiError> {
    if is_label_value(value) {
        Ok(value.to_string())
    } else {
        Err(bad(sel, &format!("invalid label value \"{value}\"")))
    }
}

fn parse_set(sel: &str, rest: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| bad(sel, "expected a parenthesised set of values"))?;
    inner
        .split(',')
        .map(|v| check_value(sel, v.trim()))
        .collect()
}

impl LabelSelector {
    /// Parses the `labelSelector` query syntax.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in split_top_level(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(bad(s, "empty requirement"));
            }
            let req = if let Some(key) = p.strip_prefix('!') {
                Requirement::DoesNotExist(check_key(s, key.trim())?)
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEquals(check_key(s, k.trim())?, check_value(s, v.trim())?)
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement::Equals(check_key(s, k.trim())?, check_value(s, v.trim())?)
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement::Equals(check_key(s, k.trim())?, check_value(s, v.trim())?)
            } else if let Some((k, rest)) = p.split_once(" notin ") {
                Requirement::NotIn(check_key(s, k.trim())?, parse_set(s, rest)?)
            } else if let Some((k, rest)) = p.split_once(" in ") {
                Requirement::In(check_key(s, k.trim())?, parse_set(s, rest)?)
            } else {
                Requirement::Exists(check_key(s, p)?)
            };
            requirements.push(req);
        }
        Ok(Self { requirements })
    }

    /// A selector from a `matchLabels` map (what controllers use).
    #[must_use]
    pub fn from_match_labels(labels: &serde_json::Map<String, Value>) -> Self {
        Self {
            requirements: labels
                .iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.as_str().unwrap_or("").into()))
                .collect(),
        }
    }

    /// Whether the selector has no requirement.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the object's labels satisfy every requirement.
    #[must_use]
    pub fn matches(&self, obj: &Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        let labels = labels_of(obj);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| vs.iter().all(|v| v != x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// One requirement of a field selector.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    path: Vec<String>,
    value: String,
    negate: bool,
}

/// A parsed field selector (`a.b=c,d!=e`); the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// Field paths the simulator answers; anything else is refused, as the real server does.
const SUPPORTED_FIELDS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "status.phase",
    "status.podIP",
    "spec.unschedulable",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "reason",
    "reportingController",
    "source",
    "type",
];

impl FieldSelector {
    /// Whether the selector has no requirement.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Parses the `fieldSelector` query syntax.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self::default());
        }
        for part in s.split(',') {
            let p = part.trim();
            let (k, v, negate) = if let Some((k, v)) = p.split_once("!=") {
                (k, v, true)
            } else if let Some((k, v)) = p.split_once("==") {
                (k, v, false)
            } else if let Some((k, v)) = p.split_once('=') {
                (k, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{p}'"
                )));
            };
            let k = k.trim();
            if !SUPPORTED_FIELDS.contains(&k) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {k}"
                )));
            }
            requirements.push(FieldRequirement {
                path: k.split('.').map(str::to_string).collect(),
                value: v.trim().to_string(),
                negate,
            });
        }
        Ok(Self { requirements })
    }

    /// The value required for `metadata.name`, if the selector pins it (watch fast path).
    #[must_use]
    pub fn pinned_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| !r.negate && r.path == ["metadata", "name"])
            .map(|r| r.value.as_str())
    }

    /// Whether the object satisfies every requirement. Absent fields compare as "".
    #[must_use]
    pub fn matches(&self, obj: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let mut cur = Some(obj);
            for seg in &r.path {
                cur = cur.and_then(|c| c.get(seg));
            }
            let actual = match cur {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == r.value) != r.negate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": labels},
               "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn every_label_operator_matches_like_kubernetes() {
        let p = pod(json!({"app": "web", "tier": "front"}));
        let yes = [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "app in (web,db)",
            "app notin (db)",
            "missing notin (x)",
            "app",
            "!missing",
            "app=web,tier in (front, back)",
        ];
        for s in yes {
            assert!(LabelSelector::parse(s).unwrap().matches(&p), "{s}");
        }
        let no = [
            "app=db",
            "app!=web",
            "app in (db)",
            "app notin (web)",
            "missing",
            "!app",
        ];
        for s in no {
            assert!(!LabelSelector::parse(s).unwrap().matches(&p), "{s}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_bad_requests() {
        for s in ["app in web", "bad key=x", "a=b,", "a=-x-"] {
            let e = LabelSelector::parse(s).unwrap_err();
            assert_eq!(e.code, 400, "{s}");
        }
    }

    #[test]
    fn field_selectors_cover_pods_and_events() {
        let p = pod(json!({}));
        assert!(
            FieldSelector::parse("spec.nodeName=n1")
                .unwrap()
                .matches(&p)
        );
        assert!(
            FieldSelector::parse("status.phase!=Pending,metadata.namespace=default")
                .unwrap()
                .matches(&p)
        );
        assert!(!FieldSelector::parse("metadata.name=q").unwrap().matches(&p));
        let ev = json!({"involvedObject": {"kind": "Pod", "name": "p", "uid": "u"}});
        let sel = FieldSelector::parse("involvedObject.name=p,involvedObject.kind=Pod").unwrap();
        assert!(sel.matches(&ev));
        assert_eq!(FieldSelector::parse("spec.other=x").unwrap_err().code, 400);
        assert_eq!(
            FieldSelector::parse("metadata.name=x")
                .unwrap()
                .pinned_name(),
            Some("x")
        );
    }
}
