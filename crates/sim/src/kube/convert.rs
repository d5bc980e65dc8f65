//! Conversion between the two Event APIs, which share one storage as on a real server:
//! objects are stored in core/v1 form, and `events.k8s.io/v1` reads and writes are converted,
//! so an Event recorded through either API (kube-rs's `Recorder` uses the new one) shows up in
//! the other, e.g. under `kubectl describe`.

use serde_json::{Map, Value, json};

/// (core/v1 field, events.k8s.io/v1 field) pairs that differ only in name.
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

fn rename(obj: &Value, to_core: bool) -> Value {
    let Some(m) = obj.as_object() else {
        return obj.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        let renamed = RENAMES.iter().find_map(|(core, new)| {
            if to_core && k == new {
                Some(*core)
            } else if !to_core && k == core {
                Some(*new)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    Value::Object(out)
}

/// An `events.k8s.io/v1` Event in core/v1 form (what is stored).
#[must_use]
pub fn event_to_core(obj: &Value) -> Value {
    let mut v = rename(obj, true);
    if v.is_object() {
        v["apiVersion"] = json!("v1");
        v["kind"] = json!("Event");
    }
    v
}

/// A stored core/v1 Event in `events.k8s.io/v1` form.
#[must_use]
pub fn event_from_core(obj: &Value) -> Value {
    let mut v = rename(obj, false);
    if v.is_object() {
        v["apiVersion"] = json!("events.k8s.io/v1");
        v["kind"] = json!("Event");
    }
    v
}

/// A field selector written against `events.k8s.io/v1` names, in core/v1 names.
#[must_use]
pub fn event_field_selector_to_core(selector: &str) -> String {
    selector
        .split(',')
        .map(|req| {
            let mut r = req.to_string();
            for (core, new) in RENAMES {
                if let Some(rest) = r.strip_prefix(&format!("{new}.")) {
                    r = format!("{core}.{rest}");
                } else if let Some(rest) = r.strip_prefix(new)
                    && (rest.starts_with('=') || rest.starts_with("!="))
                {
                    r = format!("{core}{rest}");
                }
            }
            r
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_between_the_two_apis() {
        let new = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e"}, "regarding": {"kind": "Pod", "name": "demo"},
            "note": "binding applied", "reason": "BindingApplied", "type": "Normal",
            "reportingController": "aadpodidentity.k8s.io", "series": {"count": 2}});
        let core = event_to_core(&new);
        assert_eq!(core["involvedObject"]["name"], "demo");
        assert_eq!(core["message"], "binding applied");
        assert_eq!(core["reportingComponent"], "aadpodidentity.k8s.io");
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(event_from_core(&core), new);
    }

    #[test]
    fn field_selectors_use_core_names() {
        assert_eq!(
            event_field_selector_to_core("regarding.name=demo,reason=X,reportingController=c"),
            "involvedObject.name=demo,reason=X,reportingComponent=c"
        );
    }
}
