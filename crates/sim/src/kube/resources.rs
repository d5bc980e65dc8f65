//! The resource registry: which group/version/plural the server serves, their kinds, scope,
//! short names and subresources. Built-in resources are fixed; custom resources come and go
//! with their CustomResourceDefinitions.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

/// A printer column of a custom resource (`additionalPrinterColumns`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type (`string`, `integer`, `date`, …).
    pub type_: String,
    /// Simple JSONPath such as `.spec.clientID`.
    pub json_path: String,
    /// 0 shows by default, higher only with `-o wide`.
    pub priority: i64,
}

/// Where objects of a resource are stored: one storage per group and plural, shared by every
/// version served (the simulator does no conversion between versions).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    /// API group, empty for core.
    pub group: String,
    /// Plural resource name.
    pub plural: String,
}

impl GroupResource {
    /// Builds a key.
    #[must_use]
    pub fn new(group: &str, plural: &str) -> Self {
        Self {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

/// Everything the server knows about one served resource version.
#[derive(Clone, Debug)]
pub struct ResourceInfo {
    /// API group ("" for core).
    pub group: String,
    /// Version served at this entry.
    pub version: String,
    /// Plural name used in paths.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`po`, `deploy`, …).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Whether a `/status` subresource exists (status-only writes there, ignored on the main endpoint).
    pub status_subresource: bool,
    /// Printer columns (custom resources only; built-ins have theirs in `table`).
    pub columns: Vec<PrinterColumn>,
    /// Whether this entry came from a CRD.
    pub custom: bool,
    /// Group whose storage holds the objects (differs only for `events.k8s.io`, stored as core Events).
    pub storage_group: String,
    /// The version's `openAPIV3Schema` (custom resources): objects are pruned and validated
    /// against it on every write (see `schema`).
    pub schema: Option<Arc<Value>>,
}

impl ResourceInfo {
    /// The storage key.
    #[must_use]
    pub fn gr(&self) -> GroupResource {
        GroupResource::new(&self.storage_group, &self.plural)
    }

    /// Whether a `/scale` subresource exists (autoscaling/v1 Scale over `spec.replicas`).
    #[must_use]
    pub fn has_scale(&self) -> bool {
        !self.custom
            && self.group == "apps"
            && matches!(self.plural.as_str(), "deployments" | "replicasets")
    }

    /// Whether a `/eviction` subresource exists (pods: policy/v1 Eviction, honouring
    /// PodDisruptionBudgets).
    #[must_use]
    pub fn has_eviction(&self) -> bool {
        !self.custom && self.group.is_empty() && self.plural == "pods"
    }

    /// Whether a `/token` subresource exists (serviceaccounts: authentication.k8s.io/v1
    /// TokenRequest).
    #[must_use]
    pub fn has_token(&self) -> bool {
        !self.custom && self.group.is_empty() && self.plural == "serviceaccounts"
    }

    /// Whether objects are converted on the way in and out (stored in another group's form).
    #[must_use]
    pub fn converted(&self) -> bool {
        self.group != self.storage_group
    }

    /// `apiVersion` of objects served here.
    #[must_use]
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `group/version`, as used in discovery paths.
    #[must_use]
    pub fn group_version(&self) -> String {
        self.api_version()
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    singular: &str,
    kind: &str,
    namespaced: bool,
    short_names: &[&str],
    status: bool,
    all: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: singular.into(),
        kind: kind.into(),
        namespaced,
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: if all { vec!["all".into()] } else { Vec::new() },
        status_subresource: status,
        columns: Vec::new(),
        custom: false,
        storage_group: if group == "events.k8s.io" {
            String::new()
        } else {
            group.into()
        },
        schema: None,
    }
}

/// The built-in resources.
#[must_use]
pub fn builtins() -> Vec<ResourceInfo> {
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            &["ns"],
            true,
            false,
        ),
        builtin("", "v1", "pods", "pod", "Pod", true, &["po"], true, true),
        builtin(
            "",
            "v1",
            "nodes",
            "node",
            "Node",
            false,
            &["no"],
            true,
            false,
        ),
        builtin(
            "",
            "v1",
            "secrets",
            "secret",
            "Secret",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "configmaps",
            "configmap",
            "ConfigMap",
            true,
            &["cm"],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            true,
            &["sa"],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "services",
            "service",
            "Service",
            true,
            &["svc"],
            true,
            true,
        ),
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "event",
            "Event",
            true,
            &["ev"],
            false,
            false,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "lease",
            "Lease",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "apps",
            "v1",
            "deployments",
            "deployment",
            "Deployment",
            true,
            &["deploy"],
            true,
            true,
        ),
        builtin(
            "apps",
            "v1",
            "daemonsets",
            "daemonset",
            "DaemonSet",
            true,
            &["ds"],
            true,
            true,
        ),
        builtin(
            "apps",
            "v1",
            "replicasets",
            "replicaset",
            "ReplicaSet",
            true,
            &["rs"],
            true,
            true,
        ),
        builtin("batch", "v1", "jobs", "job", "Job", true, &[], true, true),
        builtin(
            "batch",
            "v1",
            "cronjobs",
            "cronjob",
            "CronJob",
            true,
            &["cj"],
            true,
            true,
        ),
        builtin(
            "batch",
            "v1beta1",
            "cronjobs",
            "cronjob",
            "CronJob",
            true,
            &["cj"],
            true,
            true,
        ),
        builtin(
            "",
            "v1",
            "endpoints",
            "endpoints",
            "Endpoints",
            true,
            &["ep"],
            false,
            false,
        ),
        builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "poddisruptionbudget",
            "PodDisruptionBudget",
            true,
            &["pdb"],
            true,
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "customresourcedefinition",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            false,
        ),
    ]
}

/// Reads the served versions of a CRD object into registry entries. Returns an error message
/// for a CRD that does not say enough to serve it.
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceInfo>, String> {
    let spec = crd.get("spec").ok_or("spec is required")?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let group = s(spec.get("group")).ok_or("spec.group is required")?;
    let names = spec.get("names").ok_or("spec.names is required")?;
    let plural = s(names.get("plural")).ok_or("spec.names.plural is required")?;
    let kind = s(names.get("kind")).ok_or("spec.names.kind is required")?;
    let singular = s(names.get("singular")).unwrap_or_else(|| kind.to_lowercase());
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let short_names = strs(names.get("shortNames"));
    let categories = strs(names.get("categories"));
    let namespaced = match spec.get("scope").and_then(Value::as_str) {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err("spec.scope must be Namespaced or Cluster".into()),
    };
    let name = crd
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name must be spec.names.plural+\".\"+spec.group ({plural}.{group})"
        ));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or("spec.versions must have at least one version")?;
    let mut out = Vec::new();
    for v in versions {
        let version = s(v.get("name")).ok_or("spec.versions[].name is required")?;
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let status_subresource = v
            .get("subresources")
            .and_then(|sr| sr.get("status"))
            .is_some();
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .filter_map(|c| {
                        Some(PrinterColumn {
                            name: s(c.get("name"))?,
                            type_: s(c.get("type")).unwrap_or_else(|| "string".into()),
                            json_path: s(c.get("jsonPath"))?,
                            priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ResourceInfo {
            group: group.clone(),
            version,
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status_subresource,
            columns,
            custom: true,
            storage_group: group.clone(),
            schema: v.pointer("/schema/openAPIV3Schema").cloned().map(Arc::new),
        });
    }
    Ok(out)
}

/// Served resources by (group, version, plural).
#[derive(Debug)]
pub struct Registry {
    entries: RwLock<BTreeMap<(String, String, String), Arc<ResourceInfo>>>,
}

impl Default for Registry {
    fn default() -> Self {
        let r = Self {
            entries: RwLock::new(BTreeMap::new()),
        };
        for info in builtins() {
            r.insert(info);
        }
        r
    }
}

impl Registry {
    fn insert(&self, info: ResourceInfo) {
        let key = (
            info.group.clone(),
            info.version.clone(),
            info.plural.clone(),
        );
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, Arc::new(info));
    }

    /// The entry for a path's group, version and plural.
    #[must_use]
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
            .cloned()
    }

    /// The first served version of a group/plural (what in-process controllers write through).
    #[must_use]
    pub fn preferred(&self, group: &str, plural: &str) -> Option<Arc<ResourceInfo>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .find(|i| i.group == group && i.plural == plural)
            .cloned()
    }

    /// Every entry, ordered by group, version, plural.
    #[must_use]
    pub fn all(&self) -> Vec<Arc<ResourceInfo>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Serves a CRD's resources (replacing what an earlier version of the same CRD served).
    pub fn install_crd(&self, crd: &Value) -> Result<(), String> {
        let infos = from_crd(crd)?;
        if let Some(first) = infos.first() {
            self.remove_custom(&first.group, &first.plural);
        }
        for i in infos {
            self.insert(i);
        }
        Ok(())
    }

    /// Stops serving a custom resource.
    pub fn remove_custom(&self, group: &str, plural: &str) {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(g, _, p), info| !(info.custom && g == group && p == plural));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_versions_become_served_resources_with_status_and_columns() {
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "subresources": {"status": {}},
                     "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}]},
                    {"name": "v0", "served": false}
                ]}
        });
        let r = Registry::default();
        r.install_crd(&crd).unwrap();
        let w = r.get("example.com", "v1", "widgets").unwrap();
        assert!(w.status_subresource && w.namespaced && w.custom);
        assert_eq!(w.columns[0].json_path, ".spec.size");
        assert_eq!(w.singular, "widget");
        assert!(r.get("example.com", "v0", "widgets").is_none());
        r.remove_custom("example.com", "widgets");
        assert!(r.get("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn crd_with_mismatched_name_is_refused() {
        let crd = json!({"metadata": {"name": "x"}, "spec": {"group": "g.io", "scope": "Cluster",
            "names": {"plural": "ps", "kind": "P"}, "versions": [{"name": "v1"}]}});
        assert!(from_crd(&crd).is_err());
    }
}
