//! Object-metadata helpers and the API's error type: every failure the simulator answers is a
//! `metav1.Status` with the reason and code a real API server would use.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// A failed API request, rendered as a `Status` object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status code, also the Status's `code`.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `Conflict`, …).
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// `details`, when one object is concerned (boxed: errors travel in every `Result`).
    pub details: Option<Box<Details>>,
}

/// The `details` of a Status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    /// `details.name`.
    pub name: Option<String>,
    /// `details.kind` (the resource's plural for most errors, the kind for Invalid).
    pub kind: Option<String>,
    /// `details.group`.
    pub group: Option<String>,
    /// `details.causes` as (field, message): kubectl prints them after "is invalid:".
    pub causes: Vec<(String, String)>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, group: &str, plural: &str, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            name: Some(name.to_string()),
            kind: Some(plural.to_string()),
            group: Some(group.to_string()),
            causes: Vec::new(),
        }));
        self
    }

    /// 404 for one object.
    #[must_use]
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, plural)),
        )
        .about(group, plural, name)
    }

    /// 404 for a path that names no resource.
    #[must_use]
    pub fn no_route(path: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }

    /// 409 for a create of an existing name.
    #[must_use]
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, plural)),
        )
        .about(group, plural, name)
    }

    /// 409 for a write based on a stale resourceVersion (or a failed uid precondition).
    #[must_use]
    pub fn conflict(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                qualified(group, plural)
            ),
        )
        .about(group, plural, name)
    }

    /// 410 for a resourceVersion older than the kept history.
    #[must_use]
    pub fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// 400 for a body or parameter that cannot be understood.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    /// 422 for an object that parses but is not valid.
    #[must_use]
    pub fn invalid(group: &str, kind: &str, name: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::new(
            422,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {message}"),
        );
        let mut d = Details {
            name: Some(name.to_string()),
            kind: Some(kind.to_string()),
            group: Some(group.to_string()),
            causes: Vec::new(),
        };
        if let Some((field, why)) = message.split_once(": ") {
            d.causes.push((field.to_string(), why.to_string()));
        }
        e.details = Some(Box::new(d));
        e
    }

    /// 422 listing several field errors, one cause each, as the API server aggregates them
    /// (`... is invalid: [a, b]`; a single error is not bracketed).
    #[must_use]
    pub fn invalid_all(group: &str, kind: &str, name: &str, errors: &[String]) -> Self {
        let joined = if errors.len() == 1 {
            errors[0].clone()
        } else {
            format!("[{}]", errors.join(", "))
        };
        let mut e = Self::invalid(group, kind, name, joined);
        if let Some(d) = e.details.as_mut() {
            d.causes = errors
                .iter()
                .map(|m| match m.split_once(": ") {
                    Some((f, why)) => (f.to_string(), why.to_string()),
                    None => (String::new(), m.clone()),
                })
                .collect();
        }
        e
    }

    /// 405 for a verb the resource does not support.
    #[must_use]
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    /// 413 for a body over the size limit.
    #[must_use]
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    /// 415 for a patch type the server does not know.
    #[must_use]
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format ({content_type})"),
        )
    }

    /// 500 `InternalError` for one object, worded as the API server's own
    /// ("Internal error occurred: …").
    #[must_use]
    pub fn internal(group: &str, plural: &str, name: &str, why: &str) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {why}"),
        )
        .about(group, plural, name)
    }

    /// An injected failure (fault hooks) with the reason a real server would give that code.
    #[must_use]
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Expired",
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "InternalError",
        };
        Self::new(code, reason, format!("injected failure ({code})"))
    }

    /// The `Status` object.
    #[must_use]
    pub fn to_status(&self) -> Value {
        let mut details = Map::new();
        let d = self.details.as_deref().cloned().unwrap_or_default();
        if let Some(n) = &d.name {
            details.insert("name".into(), json!(n));
        }
        if let Some(g) = &d.group
            && !g.is_empty()
        {
            details.insert("group".into(), json!(g));
        }
        if let Some(k) = &d.kind {
            details.insert("kind".into(), json!(k));
        }
        if !d.causes.is_empty() {
            let causes: Vec<Value> = d
                .causes
                .iter()
                .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
                .collect();
            details.insert("causes".into(), json!(causes));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

/// `plural.group` as the real server names a resource in messages.
fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// A Kubernetes timestamp (RFC 3339, whole seconds, `Z`).
#[must_use]
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Now as a Kubernetes timestamp.
#[must_use]
pub fn now() -> String {
    timestamp(Utc::now())
}

/// A string field of `metadata`.
#[must_use]
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `metadata.name` or the empty string.
#[must_use]
pub fn name_of(obj: &Value) -> &str {
    meta_str(obj, "name").unwrap_or("")
}

/// `metadata.namespace` or the empty string.
#[must_use]
pub fn namespace_of(obj: &Value) -> &str {
    meta_str(obj, "namespace").unwrap_or("")
}

/// `metadata.uid` or the empty string.
#[must_use]
pub fn uid_of(obj: &Value) -> &str {
    meta_str(obj, "uid").unwrap_or("")
}

/// `metadata`, created when absent (and replaced when not an object).
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("just made an object")
}

/// The labels of an object as (key, value) pairs.
#[must_use]
pub fn labels_of(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata")?.get("labels")?.as_object()
}

/// Whether `name` is a valid DNS-1123 subdomain (the rule for most object names).
#[must_use]
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// Whether `name` is a valid DNS-1123 label (the rule for namespace names).
#[must_use]
pub fn is_dns_label(name: &str) -> bool {
    name.len() <= 63 && !name.contains('.') && is_dns_subdomain(name)
}

fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Whether `key` is a valid label key (`[prefix/]name`).
#[must_use]
pub fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(key),
    }
}

/// Whether `value` is a valid label value (may be empty).
#[must_use]
pub fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_qualified_name_part(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_status_reads_like_the_real_server() {
        let s = ApiError::not_found("", "pods", "demo").to_status();
        assert_eq!(s["message"], "pods \"demo\" not found");
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "pods");
        let s = ApiError::not_found("aadpodidentity.k8s.io", "azureidentities", "x").to_status();
        assert_eq!(
            s["message"],
            "azureidentities.aadpodidentity.k8s.io \"x\" not found"
        );
    }

    #[test]
    fn names_and_labels_are_validated_like_kubernetes() {
        assert!(is_dns_subdomain("az-id-1.binding"));
        assert!(!is_dns_subdomain("Bad_Name"));
        assert!(!is_dns_subdomain("-x"));
        assert!(is_dns_label("kube-system"));
        assert!(!is_dns_label("a.b"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(is_label_key("aadpodidbinding"));
        assert!(!is_label_key("bad key"));
        assert!(is_label_value(""));
        assert!(is_label_value("az-id-combined"));
        assert!(!is_label_value("-x"));
    }
}
