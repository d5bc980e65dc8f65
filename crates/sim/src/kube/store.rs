//! The object store: every object of every resource as JSON, one global resourceVersion
//! counter, and per-resource event history for watches.
//!
//! One `RwLock` guards everything, so each write gets the next resourceVersion and lands in
//! history in that order; readers (lists, watchers catching up) share the lock. Objects are
//! `Arc<Value>` so a list or a watch event never copies an object while the lock is held.
//! Watchers are woken through a per-resource `tokio::sync::watch` channel carrying the latest
//! resourceVersion; each watcher then reads the history after its own cursor, so a write costs
//! the same however many watchers there are, and a slow watcher catches up in one batch.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, OnceLock, RwLock};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::meta::{
    self, ApiError, is_dns_label, is_dns_subdomain, is_label_key, is_label_value, labels_of,
    meta_mut, meta_str, name_of, namespace_of, uid_of,
};
use super::resources::{GroupResource, Registry, ResourceInfo};
use super::selector::{FieldSelector, LabelSelector};

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch protocol's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in history (behind an `Arc`: every watcher reads the same one).
#[derive(Debug)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// What happened.
    pub type_: EventType,
    /// The object's namespace (empty for cluster-scoped objects), kept apart so that watchers
    /// of one namespace filter without looking into the object.
    pub namespace: Box<str>,
    /// The object after the change (for a delete: the last state, with the delete's resourceVersion).
    pub object: Arc<Value>,
    /// The object before the change (for selector transitions).
    pub prev: Option<Arc<Value>>,
    /// The object serialized once, shared by every watcher that sends it.
    pub encoded: Arc<OnceLock<bytes::Bytes>>,
    /// The whole watch line for this event's own type, framed once and shared.
    line: OnceLock<bytes::Bytes>,
}

impl Event {
    /// The object as JSON, serialized on first use and then shared.
    #[must_use]
    pub fn encoded(&self) -> &bytes::Bytes {
        encode_cached(&self.encoded, &self.object)
    }

    /// `{"type":"<type>","object":<encoded>}` and a newline, built on first use and then
    /// shared: a watcher that sends the event as it happened sends these bytes without
    /// copying them.
    #[must_use]
    pub fn line(&self) -> &bytes::Bytes {
        self.line.get_or_init(|| {
            let obj = self.encoded();
            let type_ = self.type_.as_str();
            let mut out = Vec::with_capacity(obj.len() + type_.len() + 24);
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(type_.as_bytes());
            out.extend_from_slice(b"\",\"object\":");
            out.extend_from_slice(obj);
            out.extend_from_slice(b"}\n");
            bytes::Bytes::from(out)
        })
    }
}

/// The JSON of `obj`, from `cell` or serialized into it.
pub fn encode_cached<'a>(cell: &'a OnceLock<bytes::Bytes>, obj: &Value) -> &'a bytes::Bytes {
    cell.get_or_init(|| bytes::Bytes::from(serde_json::to_vec(obj).unwrap_or_default()))
}

/// How dependents are treated when their owner is deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Delete dependents after the owner (the default for most resources).
    #[default]
    Background,
    /// Treated as background: the simulator does not hold the owner back.
    Foreground,
    /// Leave dependents, removing their owner reference.
    Orphan,
}

/// Options of a delete.
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    /// Only delete if the object has this uid.
    pub uid: Option<String>,
    /// Only delete if the object has this resourceVersion.
    pub resource_version: Option<String>,
    /// Dependents' fate.
    pub propagation: Propagation,
}

/// The result of a list.
#[derive(Clone, Debug)]
pub struct ListResult {
    /// Matching objects, ordered by namespace and name.
    pub items: Vec<Arc<Value>>,
    /// Their shared serializations (see [`encode_cached`]), index for index.
    pub encodings: Vec<Arc<OnceLock<bytes::Bytes>>>,
    /// The list's resourceVersion (the snapshot's, for every page of a paged list).
    pub resource_version: u64,
    /// Token for the next page, when `limit` cut the list.
    pub continue_token: Option<String>,
    /// Objects left after this page.
    pub remaining: Option<usize>,
}

type Key = (String, String);

struct Shard {
    objects: BTreeMap<Key, Arc<Value>>,
    /// The serialization of each current object (same keys as `objects`), shared with the
    /// event that produced it, so lists and watches serialize an object version once.
    encodings: BTreeMap<Key, Arc<OnceLock<bytes::Bytes>>>,
    history: VecDeque<Arc<Event>>,
    /// Every event of this resource with rv > `compacted` is in `history`.
    compacted: u64,
    notify: watch::Sender<u64>,
}

impl Shard {
    /// A shard for a resource with no events yet: nothing has been compacted away.
    fn new(rv: u64) -> Self {
        Self {
            objects: BTreeMap::new(),
            encodings: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            notify: watch::Sender::new(rv),
        }
    }
}

struct Inner {
    rv: u64,
    shards: HashMap<GroupResource, Shard>,
    /// owner uid → dependents, for garbage collection.
    dependents: HashMap<String, HashSet<(GroupResource, String, String)>>,
}

/// The in-memory store of every object.
pub struct Store {
    inner: RwLock<Inner>,
    history_limit: usize,
    registry: Arc<Registry>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("history_limit", &self.history_limit)
            .finish_non_exhaustive()
    }
}

const GENERATE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| GENERATE_ALPHABET[rng.random_range(0..GENERATE_ALPHABET.len())] as char)
        .collect()
}

fn owner_uids(obj: &Value) -> Vec<String> {
    obj.get("metadata")
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn finalizers_of(obj: &Value) -> usize {
    obj.get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

fn rv_of(obj: &Value) -> Option<&str> {
    meta_str(obj, "resourceVersion").filter(|s| !s.is_empty())
}

/// Everything but `metadata` and `status`: a change here bumps `metadata.generation`.
fn spec_part(obj: &Value) -> Vec<(&String, &Value)> {
    obj.as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status"))
                .collect()
        })
        .unwrap_or_default()
}

/// Field validation beyond metadata, for the fields the simulator acts on: Node taints, pod
/// (template) tolerations and CronJob schedules.
fn validate_spec(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    use super::taints::{validate_taints, validate_tolerations};
    let invalid = |m: String| ApiError::invalid(&info.group, &info.kind, name_of(obj), m);
    let spec = |path: &str| obj.pointer(path).cloned().unwrap_or(Value::Null);
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "nodes") => validate_taints(obj).map_err(invalid),
        ("", "pods") => validate_tolerations(&spec("/spec"), "spec").map_err(invalid),
        ("apps", "deployments" | "daemonsets" | "replicasets" | "statefulsets")
        | ("batch", "jobs")
        | ("", "replicationcontrollers") => {
            validate_tolerations(&spec("/spec/template/spec"), "spec.template.spec")
                .map_err(invalid)
        }
        ("batch", "cronjobs") => {
            super::schedule::Schedule::of(obj).map_err(invalid)?;
            validate_tolerations(
                &spec("/spec/jobTemplate/spec/template/spec"),
                "spec.jobTemplate.spec.template.spec",
            )
            .map_err(invalid)
        }
        _ => Ok(()),
    }
}

fn validate_meta(info: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let name = name_of(obj);
    let valid_name = if info.plural == "namespaces" {
        is_dns_label(name)
    } else {
        is_dns_subdomain(name)
    };
    if !valid_name {
        return Err(ApiError::invalid(
            &info.group,
            &info.kind,
            name,
            format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-' or '.'",
                if info.plural == "namespaces" {
                    "label"
                } else {
                    "subdomain"
                }
            ),
        ));
    }
    if let Some(labels) = obj.get("metadata").and_then(|m| m.get("labels")) {
        let Some(labels) = labels.as_object() else {
            return Err(ApiError::bad_request(
                "metadata.labels must be a map of strings",
            ));
        };
        for (k, v) in labels {
            let Some(v) = v.as_str() else {
                return Err(ApiError::bad_request(format!(
                    "metadata.labels.{k}: the value must be a string"
                )));
            };
            if !is_label_key(k) {
                return Err(ApiError::invalid(
                    &info.group,
                    &info.kind,
                    name,
                    format!(
                        "metadata.labels: Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'"
                    ),
                ));
            }
            if !is_label_value(v) {
                return Err(ApiError::invalid(
                    &info.group,
                    &info.kind,
                    name,
                    format!(
                        "metadata.labels: Invalid value: \"{v}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"
                    ),
                ));
            }
        }
    }
    if let Some(a) = obj.get("metadata").and_then(|m| m.get("annotations"))
        && !a
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string))
    {
        return Err(ApiError::bad_request(
            "metadata.annotations must be a map of strings",
        ));
    }
    Ok(())
}

/// Refuses a CRD a real API server would not store (see `schema::admit_crd`), and one this
/// simulator cannot serve.
fn admit_crd(info: &ResourceInfo, crd: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let errs = super::schema::admit_crd(crd, old);
    if !errs.is_empty() {
        return Err(ApiError::invalid_all(
            &info.group,
            &info.kind,
            name_of(crd),
            &errs,
        ));
    }
    super::resources::from_crd(crd)
        .map(|_| ())
        .map_err(|m| ApiError::invalid(&info.group, &info.kind, name_of(crd), m))
}

/// Prunes a custom object to its schema and refuses it when it does not validate.
fn check_schema(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    let Some(schema) = &info.schema else {
        return Ok(());
    };
    super::schema::prune(schema, obj);
    let errs = super::schema::validate(schema, obj);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid_all(
            &info.group,
            &info.kind,
            name_of(obj),
            &errs,
        ))
    }
}

/// Kind-specific checks of the spec the real API server makes on create and update.
/// A Job's generated selector and pod labels, derived from its uid as the real server does.
fn job_selector(obj: &mut Value) {
    let uid = uid_of(obj).to_string();
    let name = name_of(obj).to_string();
    if obj["spec"].get("selector").is_none_or(Value::is_null) {
        obj["spec"]["selector"] =
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    }
    if !obj["spec"].get("template").is_some_and(Value::is_object) {
        obj["spec"]["template"] = json!({});
    }
    let t = &mut obj["spec"]["template"];
    if !t.get("metadata").is_some_and(Value::is_object) {
        t["metadata"] = json!({});
    }
    if !t["metadata"].get("labels").is_some_and(Value::is_object) {
        t["metadata"]["labels"] = json!({});
    }
    let labels = &mut t["metadata"]["labels"];
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[k] = json!(v);
    }
}

/// Spec defaults of workload resources, as the real API server's defaulting sets them.
fn workload_defaults(info: &ResourceInfo, obj: &mut Value) {
    let defaults: &[(&str, Value)] = match (info.group.as_str(), info.plural.as_str()) {
        ("apps", "deployments") => &[
            ("replicas", json!(1)),
            ("revisionHistoryLimit", json!(10)),
            ("progressDeadlineSeconds", json!(600)),
            (
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            ),
        ],
        ("apps", "daemonsets") => &[
            ("revisionHistoryLimit", json!(10)),
            (
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            ),
        ],
        ("apps", "replicasets") => &[("replicas", json!(1))],
        ("batch", "jobs") => &[
            ("completions", json!(1)),
            ("parallelism", json!(1)),
            ("backoffLimit", json!(6)),
        ],
        ("batch", "cronjobs") => &[
            ("suspend", json!(false)),
            ("concurrencyPolicy", json!("Allow")),
            ("successfulJobsHistoryLimit", json!(3)),
            ("failedJobsHistoryLimit", json!(1)),
        ],
        _ => return,
    };
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    for (k, v) in defaults {
        if obj["spec"].get(*k).is_none_or(Value::is_null) {
            obj["spec"][*k] = v.clone();
        }
    }
}

/// A Secret's `stringData` is write-only, as on the real API server: its entries are merged
/// into `data` (base64), replacing entries of the same key, and the field itself is dropped.
/// Values that are not strings are refused, as the real server's decoding refuses them.
fn merge_string_data(info: &ResourceInfo, obj: &mut Value) -> Result<(), ApiError> {
    use base64::Engine as _;
    if (info.group.as_str(), info.plural.as_str()) != ("", "secrets") {
        return Ok(());
    }
    let Some(string_data) = obj.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return Ok(());
    };
    let entries = match string_data {
        Value::Null => return Ok(()),
        Value::Object(m) => m,
        _ => {
            return Err(ApiError::bad_request(
                "json: cannot unmarshal into Go struct field Secret.stringData of type map[string]string",
            ));
        }
    };
    if !obj.get("data").is_some_and(Value::is_object) {
        obj["data"] = json!({});
    }
    for (k, v) in entries {
        let Some(text) = v.as_str() else {
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {v} into Go struct field Secret.stringData of type string (key {k})"
            )));
        };
        obj["data"][k.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(text));
    }
    Ok(())
}

/// Fields the server fills in on create, per resource.
fn defaults_on_create(info: &ResourceInfo, obj: &mut Value) {
    workload_defaults(info, obj);
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            let status = obj.get("status").cloned().unwrap_or(json!({}));
            let mut status = if status.is_object() {
                status
            } else {
                json!({})
            };
            if status.get("phase").is_none() {
                status["phase"] = json!("Pending");
            }
            status["qosClass"] = json!("BestEffort");
            obj["status"] = status;
            if !obj.get("spec").is_some_and(Value::is_object) {
                obj["spec"] = json!({});
            }
            let spec = &mut obj["spec"];
            for (k, v) in [
                ("restartPolicy", json!("Always")),
                ("schedulerName", json!("default-scheduler")),
                ("dnsPolicy", json!("ClusterFirst")),
                ("serviceAccountName", json!("default")),
                ("terminationGracePeriodSeconds", json!(30)),
            ] {
                if spec.get(k).is_none() {
                    spec[k] = v;
                }
            }
            // The DefaultTolerationSeconds admission plugin, on by default.
            super::taints::add_default_toleration_seconds(spec);
        }
        ("", "namespaces") => {
            obj["status"] = json!({"phase": "Active"});
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            let name = name_of(obj).to_string();
            meta_mut(obj)
                .entry("labels")
                .or_insert(json!({}))
                .as_object_mut()
                .map(|l| l.insert("kubernetes.io/metadata.name".into(), json!(name)));
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let names = obj
                .get("spec")
                .and_then(|s| s.get("names"))
                .cloned()
                .unwrap_or(json!({}));
            let now = meta::now();
            obj["status"] = json!({
                "acceptedNames": names,
                "storedVersions": obj.get("spec").and_then(|s| s.get("versions")).and_then(Value::as_array)
                    .map(|vs| vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                        .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now}
                ]
            });
        }
        (_, _) if info.status_subresource && info.plural != "nodes" => {
            // Status is written through /status only.
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        _ => {}
    }
}

impl Store {
    /// An empty store serving `registry`'s resources; `history_limit` events kept per resource.
    #[must_use]
    pub fn new(registry: Arc<Registry>, history_limit: usize) -> Self {
        Self {
            inner: RwLock::new(Inner {
                rv: 1,
                shards: HashMap::new(),
                dependents: HashMap::new(),
            }),
            history_limit: history_limit.max(1),
            registry,
        }
    }

    // A panic while the lock is held cannot leave a half-written object (every write is
    // prepared first and then committed in place), so a poisoned lock is still consistent:
    // keep serving rather than failing every later request.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The registry this store serves.
    #[must_use]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The latest resourceVersion handed out.
    #[must_use]
    pub fn current_rv(&self) -> u64 {
        self.read().rv
    }

    /// A receiver woken on every change of `gr` (carries the latest resourceVersion).
    pub fn subscribe(&self, gr: &GroupResource) -> watch::Receiver<u64> {
        if let Some(s) = self.read().shards.get(gr) {
            return s.notify.subscribe();
        }
        let mut inner = self.write();
        let rv = inner.rv;
        inner
            .shards
            .entry(gr.clone())
            .or_insert_with(|| Shard::new(rv))
            .notify
            .subscribe()
    }

    fn commit(
        &self,
        inner: &mut Inner,
        gr: &GroupResource,
        type_: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
        rv: u64,
    ) {
        let key = (
            namespace_of(&object).to_string(),
            name_of(&object).to_string(),
        );
        // Keep the owner index in step with ownerReferences.
        let old_owners = prev.as_deref().map(owner_uids).unwrap_or_default();
        let new_owners = if type_ == EventType::Deleted {
            Vec::new()
        } else {
            owner_uids(&object)
        };
        if old_owners != new_owners {
            let dep = (gr.clone(), key.0.clone(), key.1.clone());
            for o in &old_owners {
                if let Some(set) = inner.dependents.get_mut(o) {
                    set.remove(&dep);
                    if set.is_empty() {
                        inner.dependents.remove(o);
                    }
                }
            }
            for o in new_owners {
                inner.dependents.entry(o).or_default().insert(dep.clone());
            }
        }
        let shard = inner
            .shards
            .entry(gr.clone())
            .or_insert_with(|| Shard::new(rv - 1));
        let encoded = Arc::new(OnceLock::new());
        let namespace = key.0.clone().into_boxed_str();
        match type_ {
            EventType::Deleted => {
                shard.objects.remove(&key);
                shard.encodings.remove(&key);
            }
            _ => {
                shard.encodings.insert(key.clone(), encoded.clone());
                shard.objects.insert(key, object.clone());
            }
        }
        shard.history.push_back(Arc::new(Event {
            rv,
            type_,
            namespace,
            object,
            prev,
            encoded,
            line: OnceLock::new(),
        }));
        while shard.history.len() > self.history_limit {
            if let Some(e) = shard.history.pop_front() {
                shard.compacted = e.rv;
            }
        }
        shard.notify.send_replace(rv);
    }

    fn next_rv(inner: &mut Inner) -> u64 {
        inner.rv += 1;
        inner.rv
    }

    /// Creates an object in namespace `ns` (ignored for cluster-scoped resources).
    pub fn create(
        &self,
        info: &ResourceInfo,
        ns: &str,
        mut obj: Value,
    ) -> Result<Arc<Value>, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(kind) = obj.get("kind").and_then(Value::as_str)
            && kind != info.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the body ({kind}) does not match the resource's kind ({})",
                info.kind
            )));
        }
        obj["apiVersion"] = json!(info.api_version());
        obj["kind"] = json!(info.kind);
        let body_ns = namespace_of(&obj).to_string();
        if info.namespaced {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta_mut(&mut obj).insert("namespace".into(), json!(ns));
        } else {
            meta_mut(&mut obj).remove("namespace");
        }
        if name_of(&obj).is_empty() {
            match meta_str(&obj, "generateName").filter(|g| !g.is_empty()) {
                Some(prefix) => {
                    let name = format!("{prefix}{}", random_suffix());
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                }
                None => {
                    return Err(ApiError::invalid(
                        &info.group,
                        &info.kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            }
        }
        validate_meta(info, &obj)?;
        validate_spec(info, &obj)?;
        let is_crd = info.group == "apiextensions.k8s.io";
        if is_crd {
            admit_crd(info, &obj, None)?;
        }
        check_schema(info, &mut obj)?;
        merge_string_data(info, &mut obj)?;
        defaults_on_create(info, &mut obj);
        let name = name_of(&obj).to_string();
        let gr = info.gr();
        let mut inner = self.write();
        if info.namespaced {
            let ns_gr = GroupResource::new("", "namespaces");
            let ns_obj = inner
                .shards
                .get(&ns_gr)
                .and_then(|s| s.objects.get(&(String::new(), ns.to_string())));
            match ns_obj {
                None => return Err(ApiError::not_found("", "namespaces", ns)),
                Some(n)
                    if n.get("metadata")
                        .and_then(|m| m.get("deletionTimestamp"))
                        .is_some() =>
                {
                    let mut e = ApiError::bad_request(format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ));
                    e.code = 403;
                    e.reason = "Forbidden";
                    return Err(e);
                }
                Some(_) => {}
            }
        }
        let key_ns = if info.namespaced { ns } else { "" };
        if inner
            .shards
            .get(&gr)
            .is_some_and(|s| s.objects.contains_key(&(key_ns.to_string(), name.clone())))
        {
            return Err(ApiError::already_exists(&info.group, &info.plural, &name));
        }
        let rv = Self::next_rv(&mut inner);
        let m = meta_mut(&mut obj);
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(meta::now()));
        m.insert("resourceVersion".into(), json!(rv.to_string()));
        m.insert("generation".into(), json!(1));
        m.remove("deletionTimestamp");
        m.remove("deletionGracePeriodSeconds");
        m.remove("selfLink");
        if gr.group == "batch" && gr.plural == "jobs" {
            job_selector(&mut obj);
        }
        let obj = Arc::new(obj);
        self.commit(&mut inner, &gr, EventType::Added, obj.clone(), None, rv);
        drop(inner);
        if is_crd {
            // Validated above, so installing cannot fail.
            let _ = self.registry.install_crd(&obj);
        }
        Ok(obj)
    }

    /// One object.
    pub fn get(&self, info: &ResourceInfo, ns: &str, name: &str) -> Result<Arc<Value>, ApiError> {
        let ns = if info.namespaced { ns } else { "" };
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .shards
            .get(&info.gr())
            .and_then(|s| s.objects.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&info.group, &info.plural, name))
    }

    /// Objects of a resource, in one namespace or all, filtered by selectors, optionally paged.
    pub fn list(
        &self,
        info: &ResourceInfo,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        continue_token: Option<&str>,
    ) -> Result<ListResult, ApiError> {
        let (snapshot_rv, start_after) = match continue_token {
            Some(t) if !t.is_empty() => {
                let (rv, key) = decode_continue(t)?;
                (Some(rv), Some(key))
            }
            _ => (None, None),
        };
        let inner = self.read();
        let gr = info.gr();
        let shard = inner.shards.get(&gr);
        if let (Some(rv), Some(s)) = (snapshot_rv, shard)
            && rv < s.compacted
        {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
            ));
        }
        let rv = snapshot_rv.unwrap_or(inner.rv);
        let Some(shard) = shard else {
            return Ok(ListResult {
                items: Vec::new(),
                encodings: Vec::new(),
                resource_version: rv,
                continue_token: None,
                remaining: None,
            });
        };
        let ns = ns.filter(|n| !n.is_empty() && info.namespaced);
        use std::ops::Bound;
        let lower = match (&start_after, ns) {
            (Some(k), _) => Bound::Excluded(k.clone()),
            (None, Some(n)) => Bound::Included((n.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let mut items = Vec::new();
        let mut encodings = Vec::new();
        let mut iter = shard.objects.range((lower.clone(), Bound::Unbounded)).zip(
            shard
                .encodings
                .range((lower, Bound::Unbounded))
                .map(|(_, e)| e),
        );
        let mut last_key = None;
        let limit = limit.filter(|l| *l > 0);
        let mut more = false;
        let mut remaining = 0usize;
        for ((k, v), enc) in iter.by_ref() {
            if let Some(n) = ns
                && k.0 != n
            {
                break;
            }
            if !labels.matches(v) || !fields.matches(v) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                more = true;
                remaining += 1;
                continue;
            }
            items.push(v.clone());
            encodings.push(enc.clone());
            last_key = Some(k.clone());
        }
        let continue_token = if more {
            last_key.map(|k| encode_continue(rv, &k))
        } else {
            None
        };
        Ok(ListResult {
            items,
            encodings,
            resource_version: rv,
            remaining: more.then_some(remaining),
            continue_token,
        })
    }

    /// Replaces an object (PUT). `status_only` is the `/status` subresource.
    pub fn update(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        body: Value,
        status_only: bool,
    ) -> Result<Arc<Value>, ApiError> {
        self.update_with(info, ns, name, status_only, |_| Ok(body))
    }

    /// Replaces an object with what `f` makes of the current one, atomically (PATCH and
    /// controllers). The result is checked like a PUT body.
    pub fn update_with(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        status_only: bool,
        f: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Arc<Value>, ApiError> {
        let ns = if info.namespaced { ns } else { "" };
        let gr = info.gr();
        let mut inner = self.write();
        let existing = inner
            .shards
            .get(&gr)
            .and_then(|s| s.objects.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&info.group, &info.plural, name))?;
        let mut body = f(&existing)?;
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if let Some(kind) = body.get("kind").and_then(Value::as_str)
            && kind != info.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the body ({kind}) does not match the resource's kind ({})",
                info.kind
            )));
        }
        let body_name = name_of(&body);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = namespace_of(&body);
        if info.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(rv) = rv_of(&body)
            && Some(rv) != rv_of(&existing)
        {
            return Err(ApiError::conflict(
                &info.group,
                &info.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if let Some(uid) = meta_str(&body, "uid").filter(|u| !u.is_empty())
            && uid != uid_of(&existing)
        {
            return Err(ApiError::conflict(
                &info.group,
                &info.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    uid_of(&existing)
                ),
            ));
        }
        let mut new = if status_only {
            let mut n = (*existing).clone();
            match body.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(m) = n.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            n
        } else {
            if info.status_subresource {
                match existing.get("status") {
                    Some(s) => body["status"] = s.clone(),
                    None => {
                        if let Some(m) = body.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            body
        };
        new["apiVersion"] = existing["apiVersion"].clone();
        new["kind"] = json!(info.kind);
        {
            let old_meta = existing.get("metadata").cloned().unwrap_or(json!({}));
            let m = meta_mut(&mut new);
            m.insert("name".into(), json!(name));
            if info.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.insert(
                "resourceVersion".into(),
                old_meta
                    .get("resourceVersion")
                    .cloned()
                    .unwrap_or(json!("")),
            );
        }
        validate_meta(info, &new)?;
        if !status_only {
            validate_spec(info, &new)?;
        }
        if info.group == "apiextensions.k8s.io" && !status_only {
            admit_crd(info, &new, Some(&existing))?;
        }
        check_schema(info, &mut new)?;
        if !status_only {
            merge_string_data(info, &mut new)?;
        }
        if new == *existing {
            // A no-op write changes nothing and produces no event, as on a real server.
            return Ok(existing);
        }
        if spec_part(&new) != spec_part(&existing) {
            let g = existing
                .get("metadata")
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        let rv = Self::next_rv(&mut inner);
        meta_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
        let terminating = new
            .get("metadata")
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some();
        let new = Arc::new(new);
        if terminating && finalizers_of(&new) == 0 {
            // The last finalizer is gone: the object goes away now.
            self.commit(
                &mut inner,
                &gr,
                EventType::Modified,
                new.clone(),
                Some(existing),
                rv,
            );
            let mut pending = Vec::new();
            self.remove_locked(
                &mut inner,
                info,
                &new,
                Propagation::Background,
                &mut pending,
            );
            self.collect_garbage(&mut inner, pending);
        } else {
            self.commit(
                &mut inner,
                &gr,
                EventType::Modified,
                new.clone(),
                Some(existing),
                rv,
            );
        }
        drop(inner);
        if info.group == "apiextensions.k8s.io" && info.plural == "customresourcedefinitions" {
            let _ = self.registry.install_crd(&new);
        }
        Ok(new)
    }

    /// Removes `obj` for good (DELETED event) and queues its dependents.
    fn remove_locked(
        &self,
        inner: &mut Inner,
        info: &ResourceInfo,
        obj: &Arc<Value>,
        propagation: Propagation,
        pending: &mut Vec<(GroupResource, String, String, Propagation)>,
    ) {
        let rv = Self::next_rv(inner);
        let mut gone = (**obj).clone();
        meta_mut(&mut gone).insert("resourceVersion".into(), json!(rv.to_string()));
        let gone = Arc::new(gone);
        let gr = info.gr();
        self.commit(inner, &gr, EventType::Deleted, gone, Some(obj.clone()), rv);
        let uid = uid_of(obj).to_string();
        if let Some(deps) = inner.dependents.remove(&uid) {
            for (dgr, dns, dname) in deps {
                pending.push((dgr, dns, dname, propagation));
            }
        }
        if gr.group.is_empty() && gr.plural == "namespaces" {
            // Everything in a deleted namespace goes with it.
            let ns = name_of(obj).to_string();
            for (sgr, shard) in &inner.shards {
                for (k, _) in shard
                    .objects
                    .range((ns.clone(), String::new())..)
                    .take_while(|(k, _)| k.0 == ns)
                {
                    pending.push((
                        sgr.clone(),
                        k.0.clone(),
                        k.1.clone(),
                        Propagation::Background,
                    ));
                }
            }
        }
        if gr.group == "apiextensions.k8s.io"
            && gr.plural == "customresourcedefinitions"
            && let Ok(infos) = super::resources::from_crd(obj)
            && let Some(first) = infos.first()
        {
            let cgr = first.gr();
            if let Some(shard) = inner.shards.get(&cgr) {
                for k in shard.objects.keys() {
                    pending.push((
                        cgr.clone(),
                        k.0.clone(),
                        k.1.clone(),
                        Propagation::Background,
                    ));
                }
            }
        }
    }

    /// Deletes queued dependents (or orphans them), cascading further.
    fn collect_garbage(
        &self,
        inner: &mut Inner,
        mut pending: Vec<(GroupResource, String, String, Propagation)>,
    ) {
        while let Some((gr, ns, name, propagation)) = pending.pop() {
            let Some(info) = self.registry.preferred(&gr.group, &gr.plural).or_else(|| {
                // A custom resource whose CRD is already unregistered: minimal info suffices.
                Some(Arc::new(ResourceInfo {
                    group: gr.group.clone(),
                    version: String::new(),
                    plural: gr.plural.clone(),
                    singular: String::new(),
                    kind: String::new(),
                    namespaced: !ns.is_empty(),
                    short_names: Vec::new(),
                    categories: Vec::new(),
                    status_subresource: false,
                    columns: Vec::new(),
                    custom: true,
                    storage_group: gr.group.clone(),
                    schema: None,
                }))
            }) else {
                continue;
            };
            let Some(obj) = inner
                .shards
                .get(&gr)
                .and_then(|s| s.objects.get(&(ns.clone(), name.clone())))
                .cloned()
            else {
                continue;
            };
            if propagation == Propagation::Orphan {
                continue;
            }
            if finalizers_of(&obj) > 0 {
                if obj
                    .get("metadata")
                    .and_then(|m| m.get("deletionTimestamp"))
                    .is_none()
                {
                    let rv = Self::next_rv(inner);
                    let mut n = (*obj).clone();
                    let m = meta_mut(&mut n);
                    m.insert("deletionTimestamp".into(), json!(meta::now()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                    m.insert("resourceVersion".into(), json!(rv.to_string()));
                    self.commit(inner, &gr, EventType::Modified, Arc::new(n), Some(obj), rv);
                }
                continue;
            }
            self.remove_locked(inner, &info, &obj, Propagation::Background, &mut pending);
        }
    }

    /// Deletes an object: marks it (deletionTimestamp) while finalizers remain, else removes it.
    /// Returns the object as it is after the call.
    pub fn delete(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Arc<Value>, ApiError> {
        let ns = if info.namespaced { ns } else { "" };
        let gr = info.gr();
        let mut inner = self.write();
        let existing = inner
            .shards
            .get(&gr)
            .and_then(|s| s.objects.get(&(ns.to_string(), name.to_string())))
            .cloned()
            .ok_or_else(|| ApiError::not_found(&info.group, &info.plural, name))?;
        if let Some(uid) = &opts.uid
            && uid != uid_of(&existing)
        {
            return Err(ApiError::conflict(
                &info.group,
                &info.plural,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    uid_of(&existing)
                ),
            ));
        }
        if let Some(rv) = &opts.resource_version
            && Some(rv.as_str()) != rv_of(&existing)
        {
            return Err(ApiError::conflict(
                &info.group,
                &info.plural,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ));
        }
        if finalizers_of(&existing) > 0 {
            if existing
                .get("metadata")
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some()
            {
                return Ok(existing);
            }
            let rv = Self::next_rv(&mut inner);
            let mut n = (*existing).clone();
            let m = meta_mut(&mut n);
            m.insert("deletionTimestamp".into(), json!(meta::now()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            m.insert("resourceVersion".into(), json!(rv.to_string()));
            let n = Arc::new(n);
            self.commit(
                &mut inner,
                &gr,
                EventType::Modified,
                n.clone(),
                Some(existing),
                rv,
            );
            return Ok(n);
        }
        if opts.propagation == Propagation::Orphan {
            self.orphan_dependents(&mut inner, &existing);
        }
        let mut pending = Vec::new();
        self.remove_locked(&mut inner, info, &existing, opts.propagation, &mut pending);
        self.collect_garbage(&mut inner, pending);
        drop(inner);
        if info.group == "apiextensions.k8s.io"
            && info.plural == "customresourcedefinitions"
            && let Ok(infos) = super::resources::from_crd(&existing)
            && let Some(first) = infos.first()
        {
            self.registry.remove_custom(&first.group, &first.plural);
        }
        Ok(existing)
    }

    fn orphan_dependents(&self, inner: &mut Inner, owner: &Value) {
        let uid = uid_of(owner).to_string();
        let Some(deps) = inner.dependents.get(&uid).cloned() else {
            return;
        };
        for (gr, ns, name) in deps {
            let Some(obj) = inner
                .shards
                .get(&gr)
                .and_then(|s| s.objects.get(&(ns.clone(), name.clone())))
                .cloned()
            else {
                continue;
            };
            let rv = Self::next_rv(inner);
            let mut n = (*obj).clone();
            if let Some(refs) = n
                .get_mut("metadata")
                .and_then(|m| m.get_mut("ownerReferences"))
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
            }
            meta_mut(&mut n).insert("resourceVersion".into(), json!(rv.to_string()));
            self.commit(inner, &gr, EventType::Modified, Arc::new(n), Some(obj), rv);
        }
        inner.dependents.remove(&uid);
    }

    /// Forgets every event kept for watches, as an etcd compaction (or a restarted API server's
    /// fresh watch cache) does: from now on a watch resumed from any resourceVersion handed out
    /// so far gets 410 `Expired` ("too old resource version") and its client must list again.
    /// The resourceVersion moves on by one (as the cluster's steady lease writes move it), so
    /// a list taken afterwards is a valid place to resume from. Objects are untouched.
    pub fn compact(&self) {
        let mut inner = self.write();
        let rv = Self::next_rv(&mut inner);
        for shard in inner.shards.values_mut() {
            shard.history.clear();
            shard.compacted = rv;
        }
    }

    /// Events of `gr` after resourceVersion `after`, and the resourceVersion up to which the
    /// answer is complete (for bookmarks). 410 when `after` is older than the kept history.
    pub fn events_since(
        &self,
        gr: &GroupResource,
        after: u64,
    ) -> Result<(Vec<Arc<Event>>, u64), ApiError> {
        let inner = self.read();
        let Some(shard) = inner.shards.get(gr) else {
            return Ok((Vec::new(), inner.rv));
        };
        if after < shard.compacted {
            return Err(ApiError::expired(format!(
                "too old resource version: {after} ({})",
                shard.compacted + 1
            )));
        }
        let start = shard.history.partition_point(|e| e.rv <= after);
        Ok((shard.history.range(start..).cloned().collect(), inner.rv))
    }

    /// Every object of `gr` (any namespace) and the resourceVersion of that snapshot.
    #[must_use]
    pub fn snapshot(&self, gr: &GroupResource) -> (Vec<Arc<Value>>, u64) {
        let inner = self.read();
        let items = inner
            .shards
            .get(gr)
            .map(|s| s.objects.values().cloned().collect())
            .unwrap_or_default();
        (items, inner.rv)
    }

    /// Objects of `gr` that name `owner_uid` in their ownerReferences (from the owner index,
    /// so the cost is the number of dependents, not the number of objects).
    #[must_use]
    pub fn dependents(&self, owner_uid: &str, gr: &GroupResource) -> Vec<Arc<Value>> {
        let inner = self.read();
        let Some(deps) = inner.dependents.get(owner_uid) else {
            return Vec::new();
        };
        let Some(shard) = inner.shards.get(gr) else {
            return Vec::new();
        };
        let mut out: Vec<Arc<Value>> = deps
            .iter()
            .filter(|(dgr, _, _)| dgr == gr)
            .filter_map(|(_, ns, name)| shard.objects.get(&(ns.clone(), name.clone())).cloned())
            .collect();
        out.sort_by(|a, b| name_of(a).cmp(name_of(b)));
        out
    }

    /// Number of objects of `gr`.
    #[must_use]
    pub fn count(&self, gr: &GroupResource) -> usize {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .shards
            .get(gr)
            .map_or(0, |s| s.objects.len())
    }
}

fn encode_continue(rv: u64, key: &Key) -> String {
    use base64::Engine;
    let raw = json!({"rv": rv, "ns": key.0, "name": key.1}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("invalid continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let ns = v.get("ns").and_then(Value::as_str).ok_or_else(bad)?;
    let name = v.get("name").and_then(Value::as_str).ok_or_else(bad)?;
    Ok((rv, (ns.to_string(), name.to_string())))
}

/// Whether labels of `obj` match (helper for controllers).
#[must_use]
pub fn has_label(obj: &Value, key: &str, value: &str) -> bool {
    labels_of(obj)
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
        == Some(value)
}

#[cfg(test)]
mod tests;
