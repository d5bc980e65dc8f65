//! Scenarios: Kubernetes YAML loaded into the simulated cluster at start.
//!
//! The default scenario is the seed guide's: two identities bound through one selector
//! (`az-id-combined`), and a Deployment, a DaemonSet, a Job and a CronJob whose pods carry it.
//! The guide's placeholders (`<ResourceID of az-id-1>`, `<ClientID of az-id-2>`, …) are filled
//! with identities that exist in the simulated Azure. A scenario file may use the same
//! placeholders, and `${IDENTITY_<n>_RESOURCE_ID}` / `${IDENTITY_<n>_CLIENT_ID}` for the n-th
//! identity of the sandbox.

use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::{Discovery, Scope};
use serde::Deserialize as _;

use aad_pod_identity_sim::azure::IdentityRecord;

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A document is not valid YAML or not a Kubernetes object.
    #[error("scenario document {index}: {message}")]
    Document {
        /// 1-based position in the file.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The simulated API server refused an object.
    #[error("creating {kind} {name}")]
    Create {
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// API discovery failed.
    #[error("API discovery")]
    Discovery(#[source] kube::Error),
    /// The scenario names more identities than the sandbox has.
    #[error(
        "the scenario uses identity {index}, but the sandbox has {available} (raise --identities)"
    )]
    NotEnoughIdentities {
        /// Index used.
        index: usize,
        /// Identities available.
        available: usize,
    },
}

const SEED_IDENTITIES: &str = include_str!("../../../tests/fixtures/seed/identities.yaml");
const SEED_WORKLOADS: [&str; 4] = [
    include_str!("../../../tests/fixtures/seed/deployment.yaml"),
    include_str!("../../../tests/fixtures/seed/daemonset.yaml"),
    include_str!("../../../tests/fixtures/seed/job.yaml"),
    include_str!("../../../tests/fixtures/seed/cronjob.yaml"),
];

/// The seed guide's scenario, with its placeholders filled from `identities`.
pub fn default_scenario(identities: &[IdentityRecord]) -> Result<String, Error> {
    let mut text = SEED_IDENTITIES.to_string();
    for w in SEED_WORKLOADS {
        text.push_str("\n---\n");
        text.push_str(w);
    }
    fill_placeholders(&text, identities)
}

/// Replaces the seed's and the sandbox's identity placeholders.
pub fn fill_placeholders(text: &str, identities: &[IdentityRecord]) -> Result<String, Error> {
    let mut out = text.to_string();
    for (i, seed_name) in ["az-id-1", "az-id-2"].iter().enumerate() {
        if out.contains(&format!("of {seed_name}>")) {
            let id = identities.get(i).ok_or(Error::NotEnoughIdentities {
                index: i,
                available: identities.len(),
            })?;
            out = out
                .replace(&format!("<ResourceID of {seed_name}>"), &id.resource_id)
                .replace(&format!("<ClientID of {seed_name}>"), &id.client_id);
        }
    }
    while let Some(start) = out.find("${IDENTITY_") {
        let rest = &out[start + 11..];
        let end = rest.find('}').ok_or(Error::Document {
            index: 0,
            message: "unterminated ${IDENTITY_…} placeholder".into(),
        })?;
        let inner = &rest[..end];
        let (num, field) = inner.split_once('_').ok_or(Error::Document {
            index: 0,
            message: format!("bad placeholder ${{IDENTITY_{inner}}}"),
        })?;
        let index: usize = num.parse().map_err(|_| Error::Document {
            index: 0,
            message: format!("bad identity number in ${{IDENTITY_{inner}}}"),
        })?;
        let id = identities.get(index).ok_or(Error::NotEnoughIdentities {
            index,
            available: identities.len(),
        })?;
        let value = match field {
            "RESOURCE_ID" => id.resource_id.clone(),
            "CLIENT_ID" => id.client_id.clone(),
            "NAME" => id.name.clone(),
            other => {
                return Err(Error::Document {
                    index: 0,
                    message: format!(
                        "unknown placeholder field {other} (RESOURCE_ID, CLIENT_ID or NAME)"
                    ),
                });
            }
        };
        out.replace_range(start..start + 11 + end + 1, &value);
    }
    Ok(out)
}

/// Parses multi-document YAML into objects, refusing anything that is not a Kubernetes object.
pub fn parse_documents(text: &str) -> Result<Vec<DynamicObject>, Error> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| Error::Document {
            index: i + 1,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_json::from_value(value).map_err(|e| Error::Document {
            index: i + 1,
            message: format!("not a Kubernetes object: {e}"),
        })?;
        if obj.types.is_none()
            || obj.metadata.name.is_none() && obj.metadata.generate_name.is_none()
        {
            return Err(Error::Document {
                index: i + 1,
                message: "apiVersion, kind and metadata.name are required".into(),
            });
        }
        objects.push(obj);
    }
    Ok(objects)
}

/// Creates every object (namespaced ones in their namespace, else `default`); returns
/// `kind/name` of each.
pub async fn apply(client: &Client, objects: Vec<DynamicObject>) -> Result<Vec<String>, Error> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(Error::Discovery)?;
    let mut created = Vec::new();
    for (i, obj) in objects.into_iter().enumerate() {
        let types = obj.types.clone().unwrap_or_default();
        let gvk = kube::api::GroupVersionKind::try_from(&types).map_err(|e| Error::Document {
            index: i + 1,
            message: e.to_string(),
        })?;
        let (resource, caps) = discovery.resolve_gvk(&gvk).ok_or_else(|| Error::Document {
            index: i + 1,
            message: format!("unknown kind {} in {}", gvk.kind, types.api_version),
        })?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            Api::namespaced_with(client.clone(), &ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let name = obj.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &obj)
            .await
            .map_err(|source| Error::Create {
                kind: gvk.kind.clone(),
                name: name.clone(),
                source,
            })?;
        created.push(format!("{}/{}", gvk.kind, name));
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<IdentityRecord> {
        (0..n)
            .map(|i| IdentityRecord {
                name: format!("identity-{i}"),
                resource_id: format!("/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/identity-{i}"),
                client_id: format!("client-{i}"),
                principal_id: format!("principal-{i}"),
                assignable: true,
            })
            .collect()
    }

    #[test]
    fn the_default_scenario_binds_two_real_identities_through_one_selector() {
        let text = default_scenario(&ids(2)).unwrap();
        assert!(!text.contains("<ResourceID"));
        let objects = parse_documents(&text).unwrap();
        let kinds: Vec<_> = objects
            .iter()
            .map(|o| o.types.as_ref().unwrap().kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            [
                "AzureIdentity",
                "AzureIdentity",
                "AzureIdentityBinding",
                "AzureIdentityBinding",
                "Deployment",
                "DaemonSet",
                "Job",
                "CronJob"
            ]
        );
        assert_eq!(objects[0].data["spec"]["clientID"], "client-0");
        assert_eq!(objects[1].data["spec"]["clientID"], "client-1");
        assert_eq!(objects[2].data["spec"]["selector"], "az-id-combined");
    }

    #[test]
    fn numbered_placeholders_are_filled_and_bad_ones_refused() {
        let filled =
            fill_placeholders("a: ${IDENTITY_1_CLIENT_ID} b: ${IDENTITY_0_NAME}", &ids(2)).unwrap();
        assert_eq!(filled, "a: client-1 b: identity-0");
        assert!(matches!(
            fill_placeholders("${IDENTITY_5_CLIENT_ID}", &ids(2)),
            Err(Error::NotEnoughIdentities {
                index: 5,
                available: 2
            })
        ));
        assert!(fill_placeholders("${IDENTITY_0_SECRET}", &ids(1)).is_err());
        assert!(
            default_scenario(&ids(1)).is_err(),
            "the seed needs two identities"
        );
    }

    #[test]
    fn documents_that_are_not_objects_are_refused_with_their_position() {
        let err = parse_documents(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n---\n- just\n- a list\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("document 2"), "{err}");
        let err = parse_documents("kind: Pod\nmetadata: {name: a}\n").unwrap_err();
        assert!(err.to_string().contains("document 1"), "{err}");
    }
}
