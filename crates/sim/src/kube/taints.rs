//! Taints and tolerations with the real API server's rules: validation of `spec.taints` on
//! Nodes and `spec.tolerations` on Pods (and pod templates), the default tolerations the
//! `DefaultTolerationSeconds` admission plugin and the DaemonSet controller add, and the
//! matching the scheduler (NoSchedule, NoExecute), the kubelet's admission (NoExecute) and the
//! taint-eviction controller (NoExecute with `tolerationSeconds`) use. Plain data on JSON
//! objects; the cluster tasks call it.

use serde_json::{Value, json};
use std::time::Duration;

/// The three taint effects.
pub const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A taint as the matching needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (empty when absent).
    pub value: String,
    /// Effect.
    pub effect: String,
}

impl Taint {
    /// `{key: value}` or `{key}`, as the scheduler's messages write a taint.
    #[must_use]
    pub fn describe(&self) -> String {
        if self.value.is_empty() {
            format!("{{{}}}", self.key)
        } else {
            format!("{{{}: {}}}", self.key, self.value)
        }
    }
}

/// A toleration as the matching needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    /// Key (empty: every key).
    pub key: String,
    /// `Equal` (also when empty) or `Exists`.
    pub operator: String,
    /// Value.
    pub value: String,
    /// Effect (empty: every effect).
    pub effect: String,
    /// How long a NoExecute taint is tolerated (`None`: forever).
    pub seconds: Option<i64>,
}

impl Toleration {
    /// Whether this toleration tolerates `taint` (the rule of `Toleration.ToleratesTaint`).
    #[must_use]
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator.as_str() {
            "" | "Equal" => self.value == taint.value,
            "Exists" => true,
            _ => false,
        }
    }
}

fn s(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The taints of a Node object.
#[must_use]
pub fn taints_of(node: &Value) -> Vec<Taint> {
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|t| Taint {
                    key: s(t, "key"),
                    value: s(t, "value"),
                    effect: s(t, "effect"),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The tolerations of a pod spec.
#[must_use]
pub fn tolerations_of(spec: &Value) -> Vec<Toleration> {
    spec.get("tolerations")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|t| Toleration {
                    key: s(t, "key"),
                    operator: s(t, "operator"),
                    value: s(t, "value"),
                    effect: s(t, "effect"),
                    seconds: t.get("tolerationSeconds").and_then(Value::as_i64),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first of `taints` with one of `effects` that no toleration tolerates.
#[must_use]
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints.iter().find(|t| {
        effects.contains(&t.effect.as_str()) && !tolerations.iter().any(|tol| tol.tolerates(t))
    })
}

/// What the taint-eviction controller does with a pod on a node with NoExecute taints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    /// Every NoExecute taint is tolerated forever (or there is none).
    Never,
    /// A NoExecute taint is not tolerated (or only for zero seconds): evict now.
    Now,
    /// Every NoExecute taint is tolerated, the shortest for this long.
    After(Duration),
}

/// The eviction rule: an untolerated NoExecute taint evicts at once; otherwise the smallest
/// `tolerationSeconds` among the tolerations used for NoExecute taints decides (absent means
/// forever, zero or negative means now).
#[must_use]
pub fn eviction(taints: &[Taint], tolerations: &[Toleration]) -> Eviction {
    let mut shortest: Option<i64> = None;
    for t in taints.iter().filter(|t| t.effect == "NoExecute") {
        let used: Vec<&Toleration> = tolerations.iter().filter(|tol| tol.tolerates(t)).collect();
        if used.is_empty() {
            return Eviction::Now;
        }
        for tol in used {
            if let Some(secs) = tol.seconds {
                shortest = Some(shortest.map_or(secs, |m| m.min(secs)));
            }
        }
    }
    match shortest {
        None => Eviction::Never,
        Some(s) if s <= 0 => Eviction::Now,
        Some(s) => Eviction::After(Duration::from_secs(s.unsigned_abs())),
    }
}

/// Why a taint or toleration list is invalid: the field path and the message, as the API
/// server's field errors read.
pub type FieldError = String;

/// Validates a Node's `spec.taints` as the API server does.
///
/// # Errors
/// The first problem found.
pub fn validate_taints(node: &Value) -> Result<(), FieldError> {
    let Some(list) = node.pointer("/spec/taints").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let Some(list) = list.as_array() else {
        return Err("spec.taints: Invalid value: must be a list".into());
    };
    let mut seen: Vec<(String, String)> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let at = format!("spec.taints[{i}]");
        let key = s(t, "key");
        if key.is_empty() {
            return Err(format!("{at}.key: Required value"));
        }
        if let Err(m) = qualified_name(&key) {
            return Err(format!("{at}.key: Invalid value: \"{key}\": {m}"));
        }
        let value = s(t, "value");
        if let Err(m) = label_value(&value) {
            return Err(format!("{at}.value: Invalid value: \"{value}\": {m}"));
        }
        let effect = s(t, "effect");
        if effect.is_empty() {
            return Err(format!("{at}.effect: Required value"));
        }
        if !EFFECTS.contains(&effect.as_str()) {
            return Err(format!(
                "{at}.effect: Unsupported value: \"{effect}\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
            ));
        }
        if seen.contains(&(key.clone(), effect.clone())) {
            return Err(format!(
                "spec.taints: Duplicate value: core.Taint{{Key:\"{key}\", Value:\"{value}\", Effect:\"{effect}\"}}: taints must be unique by key and effect pair"
            ));
        }
        seen.push((key, effect));
    }
    Ok(())
}

/// Validates the `tolerations` of a pod spec found at `path` (e.g. `spec` or
/// `spec.template.spec`) as the API server does.
///
/// # Errors
/// The first problem found.
pub fn validate_tolerations(spec: &Value, path: &str) -> Result<(), FieldError> {
    let Some(list) = spec.get("tolerations").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let Some(list) = list.as_array() else {
        return Err(format!("{path}.tolerations: Invalid value: must be a list"));
    };
    for (i, t) in list.iter().enumerate() {
        let at = format!("{path}.tolerations[{i}]");
        let key = s(t, "key");
        let operator = s(t, "operator");
        let value = s(t, "value");
        let effect = s(t, "effect");
        if !key.is_empty()
            && let Err(m) = qualified_name(&key)
        {
            return Err(format!("{at}.key: Invalid value: \"{key}\": {m}"));
        }
        if key.is_empty() && operator != "Exists" {
            return Err(format!(
                "{at}.operator: Invalid value: \"{operator}\": operator must be Exists when `key` is empty, which means \"match all values and all keys\""
            ));
        }
        if t.get("tolerationSeconds").is_some_and(|v| !v.is_null()) && effect != "NoExecute" {
            return Err(format!(
                "{at}.effect: Invalid value: \"{effect}\": effect must be 'NoExecute' when `tolerationSeconds` is set"
            ));
        }
        match operator.as_str() {
            "" | "Equal" => {
                if let Err(m) = label_value(&value) {
                    return Err(format!("{at}.operator: Invalid value: \"{value}\": {m}"));
                }
            }
            "Exists" => {
                if !value.is_empty() {
                    return Err(format!(
                        "{at}.operator: Invalid value: \"{value}\": value must be empty when `operator` is 'Exists'"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "{at}.operator: Unsupported value: \"{other}\": supported values: \"Equal\", \"Exists\""
                ));
            }
        }
        if !effect.is_empty() && !EFFECTS.contains(&effect.as_str()) {
            return Err(format!(
                "{at}.effect: Unsupported value: \"{effect}\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
            ));
        }
    }
    Ok(())
}

/// The tolerations the `DefaultTolerationSeconds` admission plugin adds to every new pod that
/// does not already tolerate these NoExecute taints: `not-ready` and `unreachable` for 300 s.
pub fn add_default_toleration_seconds(spec: &mut Value) {
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let probe = Taint {
            key: key.into(),
            value: String::new(),
            effect: "NoExecute".into(),
        };
        if tolerations_of(spec).iter().any(|t| t.tolerates(&probe)) {
            continue;
        }
        push_toleration(
            spec,
            json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
        );
    }
}

/// The tolerations the DaemonSet controller adds to the pods it creates (and assumes when it
/// decides which nodes should run one).
pub fn add_daemon_pod_tolerations(spec: &mut Value) {
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if host_network {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    for (key, effect) in wanted {
        let present = tolerations_of(spec)
            .iter()
            .any(|t| t.key == key && t.effect == effect && t.operator == "Exists");
        if !present {
            push_toleration(
                spec,
                json!({"key": key, "operator": "Exists", "effect": effect}),
            );
        }
    }
}

fn push_toleration(spec: &mut Value, t: Value) {
    if !spec.is_object() {
        return;
    }
    let list = spec
        .as_object_mut()
        .expect("checked above")
        .entry("tolerations")
        .or_insert_with(|| json!([]));
    if !list.is_array() {
        *list = json!([]);
    }
    list.as_array_mut().expect("made a list above").push(t);
}

fn qualified_name(s: &str) -> Result<(), &'static str> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !name_ok {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(
                "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            );
        }
    }
    Ok(())
}

fn label_value(s: &str) -> Result<(), &'static str> {
    let ok = s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
        }
    }

    fn tol(key: &str, op: &str, value: &str, effect: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op.into(),
            value: value.into(),
            effect: effect.into(),
            seconds,
        }
    }

    #[test]
    fn tolerations_match_as_the_api_types_define() {
        let t = taint("k", "v", "NoSchedule");
        assert!(tol("k", "Equal", "v", "NoSchedule", None).tolerates(&t));
        assert!(
            tol("k", "", "v", "", None).tolerates(&t),
            "empty operator is Equal, empty effect is any"
        );
        assert!(!tol("k", "Equal", "w", "NoSchedule", None).tolerates(&t));
        assert!(tol("k", "Exists", "", "NoSchedule", None).tolerates(&t));
        assert!(!tol("k", "Exists", "", "NoExecute", None).tolerates(&t));
        assert!(!tol("other", "Exists", "", "", None).tolerates(&t));
        assert!(
            tol("", "Exists", "", "", None).tolerates(&t),
            "empty key with Exists tolerates everything"
        );
        assert!(!tol("k", "Gt", "v", "", None).tolerates(&t));
        let no_value = taint("k", "", "NoSchedule");
        assert!(tol("k", "Equal", "", "", None).tolerates(&no_value));
    }

    #[test]
    fn only_the_given_effects_block() {
        let taints = [
            taint("soft", "", "PreferNoSchedule"),
            taint("hard", "x", "NoSchedule"),
        ];
        assert_eq!(
            untolerated(&taints, &[], &["NoSchedule", "NoExecute"]).map(Taint::describe),
            Some("{hard: x}".into())
        );
        assert_eq!(untolerated(&taints, &[], &["NoExecute"]), None);
        let all = [tol("hard", "Exists", "", "", None)];
        assert_eq!(
            untolerated(&taints, &all, &["NoSchedule", "NoExecute"]),
            None
        );
    }

    #[test]
    fn no_execute_evicts_at_once_after_the_shortest_toleration_or_never() {
        let ne = [taint("a", "", "NoExecute"), taint("b", "", "NoExecute")];
        assert_eq!(
            eviction(&[taint("a", "", "NoSchedule")], &[]),
            Eviction::Never
        );
        assert_eq!(
            eviction(&ne, &[tol("a", "Exists", "", "", None)]),
            Eviction::Now
        );
        assert_eq!(
            eviction(
                &ne,
                &[
                    tol("a", "Exists", "", "NoExecute", Some(60)),
                    tol("b", "Exists", "", "", None)
                ]
            ),
            Eviction::After(Duration::from_secs(60))
        );
        assert_eq!(
            eviction(
                &ne,
                &[
                    tol("a", "Exists", "", "NoExecute", Some(60)),
                    tol("b", "Exists", "", "NoExecute", Some(30))
                ]
            ),
            Eviction::After(Duration::from_secs(30))
        );
        assert_eq!(
            eviction(&ne, &[tol("", "Exists", "", "", None)]),
            Eviction::Never
        );
        assert_eq!(
            eviction(&ne, &[tol("", "Exists", "", "NoExecute", Some(0))]),
            Eviction::Now
        );
    }

    #[test]
    fn invalid_taints_are_refused_with_the_api_servers_words() {
        let node = |t: Value| json!({"spec": {"taints": t}});
        assert!(
            validate_taints(&node(
                json!([{"key": "a/b", "value": "v", "effect": "NoSchedule"}])
            ))
            .is_ok()
        );
        let e = validate_taints(&node(json!([{"key": "k", "effect": "Sometimes"}]))).unwrap_err();
        assert!(
            e.contains("spec.taints[0].effect: Unsupported value"),
            "{e}"
        );
        let e = validate_taints(&node(json!([{"key": "k"}]))).unwrap_err();
        assert!(e.contains("effect: Required value"), "{e}");
        let e =
            validate_taints(&node(json!([{"value": "v", "effect": "NoSchedule"}]))).unwrap_err();
        assert!(e.contains("key: Required value"), "{e}");
        let e = validate_taints(&node(json!([{"key": "bad key", "effect": "NoSchedule"}])))
            .unwrap_err();
        assert!(e.contains("key: Invalid value"), "{e}");
        let dup = json!([{"key": "k", "effect": "NoSchedule"}, {"key": "k", "value": "x", "effect": "NoSchedule"}]);
        let e = validate_taints(&node(dup)).unwrap_err();
        assert!(e.contains("unique by key and effect"), "{e}");
        let same_key =
            json!([{"key": "k", "effect": "NoSchedule"}, {"key": "k", "effect": "NoExecute"}]);
        assert!(validate_taints(&node(same_key)).is_ok());
    }

    #[test]
    fn invalid_tolerations_are_refused_with_the_api_servers_words() {
        let spec = |t: Value| json!({"tolerations": [t]});
        let ok = [
            json!({"operator": "Exists"}),
            json!({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}),
            json!({"key": "k", "value": "v"}),
            json!({"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}),
        ];
        for t in ok {
            assert!(
                validate_tolerations(&spec(t.clone()), "spec").is_ok(),
                "{t}"
            );
        }
        let bad = [
            (
                json!({"operator": "Equal", "value": "v"}),
                "operator must be Exists when `key` is empty",
            ),
            (
                json!({"key": "k", "operator": "Exists", "value": "v"}),
                "value must be empty when `operator` is 'Exists'",
            ),
            (
                json!({"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}),
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ),
            (
                json!({"key": "k", "operator": "Maybe"}),
                "Unsupported value: \"Maybe\"",
            ),
            (
                json!({"key": "k", "operator": "Exists", "effect": "Later"}),
                "Unsupported value: \"Later\"",
            ),
        ];
        for (t, msg) in bad {
            let e = validate_tolerations(&spec(t.clone()), "spec").unwrap_err();
            assert!(
                e.starts_with("spec.tolerations[0]") && e.contains(msg),
                "{t}: {e}"
            );
        }
    }

    #[test]
    fn default_tolerations_are_added_once_and_not_over_the_pods_own() {
        let mut spec = json!({"containers": []});
        add_default_toleration_seconds(&mut spec);
        add_default_toleration_seconds(&mut spec);
        assert_eq!(tolerations_of(&spec).len(), 2);
        assert!(tolerations_of(&spec).iter().all(|t| t.seconds == Some(300)));
        let mut own = json!({"tolerations": [{"operator": "Exists"}]});
        add_default_toleration_seconds(&mut own);
        assert_eq!(
            tolerations_of(&own).len(),
            1,
            "tolerating everything already covers them"
        );

        let mut ds = json!({"hostNetwork": true});
        add_daemon_pod_tolerations(&mut ds);
        let keys: Vec<String> = tolerations_of(&ds).into_iter().map(|t| t.key).collect();
        assert!(keys.contains(&"node.kubernetes.io/unschedulable".to_string()));
        assert!(keys.contains(&"node.kubernetes.io/network-unavailable".to_string()));
        let mut plain = json!({});
        add_daemon_pod_tolerations(&mut plain);
        assert_eq!(tolerations_of(&plain).len(), 6);
    }
}
