//! The key of a namespaced Kubernetes object: its namespace and name, one type for every index
//! that keys objects (MIC's matcher, writer and Event recorder; NMI's pod, assignment and
//! service-account indexes), so a pod key is never confused with an identity id or a cache key.
//! Displayed as `namespace/name`, as kubectl and the logs spell it.

use std::fmt;

/// Namespace and name of a namespaced object (pod, binding, identity, assigned identity,
/// service account).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    #[must_use]
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of any namespaced object (an absent namespace reads as `default`).
    #[must_use]
    pub fn of<K: kube::Resource>(obj: &K) -> Self {
        Self {
            namespace: obj
                .meta()
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: obj.meta().name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn a_key_reads_namespace_slash_name_and_defaults_the_namespace() {
        assert_eq!(ObjectKey::new("ns", "web").to_string(), "ns/web");
        let mut pod = Pod::default();
        pod.metadata.name = Some("web".into());
        assert_eq!(ObjectKey::of(&pod), ObjectKey::new("default", "web"));
        pod.metadata.namespace = Some("ns".into());
        assert_eq!(ObjectKey::of(&pod), ObjectKey::new("ns", "web"));
    }
}
