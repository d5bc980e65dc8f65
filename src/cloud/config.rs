//! Cloud configuration: the azure.json the original reads with `--cloudconfig`, or the
//! environment variables it falls back to.
//!
//! The endpoints follow from `cloud` ([`CloudEnvironment`]: sovereign clouds by name, Azure
//! Stack from `$AZURE_ENVIRONMENT_FILEPATH`); the sandbox overrides them with
//! `resourceManagerEndpoint` and `activeDirectoryAuthorityHost`. The client secret is kept out
//! of `Debug` output so a config can be logged.

use std::fmt;

use serde::Deserialize;

use super::Error;
use super::environment::CloudEnvironment;
use super::error::json_problem;

/// MIC's view of the cluster's Azure account.
#[derive(Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CloudConfig {
    /// Cloud name (`AzurePublicCloud`, `AzureUSGovernmentCloud`, `AzureChinaCloud`, ...).
    pub cloud: String,
    /// Tenant of the service principal or managed identity.
    pub tenant_id: String,
    /// Service principal client id (when not using managed identity).
    pub aad_client_id: String,
    /// Service principal secret; never printed.
    pub aad_client_secret: String,
    /// Subscription holding the cluster's VMs or scale sets.
    pub subscription_id: String,
    /// Node resource group.
    pub resource_group: String,
    /// `vmss` or `standard`.
    pub vm_type: String,
    /// Authenticate ARM calls with the node's managed identity.
    pub use_managed_identity_extension: bool,
    /// Client id of the user-assigned identity used with `useManagedIdentityExtension`.
    #[serde(rename = "userAssignedIdentityID")]
    pub user_assigned_identity_id: String,
    /// Custom cloud: ARM endpoint (e.g. the simulator's `http://127.0.0.1:port/`).
    pub resource_manager_endpoint: String,
    /// Custom cloud: Azure AD authority host.
    pub active_directory_authority_host: String,
    /// The endpoints `cloud` names, resolved when the configuration is validated.
    #[serde(skip)]
    pub environment: CloudEnvironment,
}

impl fmt::Debug for CloudConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudConfig")
            .field("cloud", &self.cloud)
            .field("tenant_id", &self.tenant_id)
            .field("aad_client_id", &self.aad_client_id)
            .field(
                "aad_client_secret",
                &if self.aad_client_secret.is_empty() {
                    "<empty>"
                } else {
                    "<redacted>"
                },
            )
            .field("subscription_id", &self.subscription_id)
            .field("resource_group", &self.resource_group)
            .field("vm_type", &self.vm_type)
            .field(
                "use_managed_identity_extension",
                &self.use_managed_identity_extension,
            )
            .field("user_assigned_identity_id", &self.user_assigned_identity_id)
            .field("resource_manager_endpoint", &self.resource_manager_endpoint)
            .field(
                "active_directory_authority_host",
                &self.active_directory_authority_host,
            )
            .field("environment", &self.environment.name)
            .finish()
    }
}

impl CloudConfig {
    /// Reads and validates an azure.json file.
    pub fn from_file(path: &str) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses and validates azure.json text.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        Self::from_json_with(text, |k| std::env::var(k).ok())
    }

    /// As [`Self::from_json`], reading the environment (`$AZURE_ENVIRONMENT_FILEPATH`) through
    /// `var`.
    pub fn from_json_with(text: &str, var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let config: CloudConfig = serde_json::from_str(text).map_err(|e| {
            // Never serde's own text for a wrong value: it would quote `aadClientSecret`.
            Error::Config(format!("azure.json is not valid: {}", json_problem(&e)))
        })?;
        config.validate(var)
    }

    /// Reads the original's environment variables through `var` (`std::env::var` in
    /// production; a map in tests).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |k: &str| var(k).unwrap_or_default();
        let use_msi = match get("USE_MSI").to_ascii_lowercase().as_str() {
            "" | "false" | "0" => false,
            "true" | "1" => true,
            other => return Err(Error::Config(format!("USE_MSI={other:?} is not a boolean"))),
        };
        Self {
            cloud: get("CLOUD"),
            tenant_id: get("TENANT_ID"),
            aad_client_id: get("CLIENT_ID"),
            aad_client_secret: get("CLIENT_SECRET"),
            subscription_id: get("SUBSCRIPTION_ID"),
            resource_group: get("RESOURCE_GROUP"),
            vm_type: get("VM_TYPE"),
            use_managed_identity_extension: use_msi,
            user_assigned_identity_id: get("USER_ASSIGNED_MSI_CLIENT_ID"),
            ..Self::default()
        }
        .validate(var)
    }

    /// `--cloudconfig` when given, else the process environment (the original's order).
    pub fn load(path: Option<&str>) -> Result<Self, Error> {
        match path {
            Some(p) if !p.is_empty() => Self::from_file(p),
            _ => Self::from_env(|k| std::env::var(k).ok()),
        }
    }

    fn validate(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        self.environment = CloudEnvironment::from_name(&self.cloud, var)?;
        if self.subscription_id.is_empty() {
            return Err(Error::Config("subscriptionId is required".into()));
        }
        if !self.use_managed_identity_extension {
            if self.tenant_id.is_empty() {
                return Err(Error::Config(
                    "tenantId is required with a service principal".into(),
                ));
            }
            if self.aad_client_id.is_empty() || self.aad_client_secret.is_empty() {
                return Err(Error::Config(
                    "aadClientId and aadClientSecret are required unless useManagedIdentityExtension is true".into(),
                ));
            }
        }
        if self.vm_type.is_empty() {
            self.vm_type = "standard".into();
        }
        for (key, v) in [
            ("resourceManagerEndpoint", &self.resource_manager_endpoint),
            (
                "activeDirectoryAuthorityHost",
                &self.active_directory_authority_host,
            ),
        ] {
            if !v.is_empty() {
                url::Url::parse(v).map_err(|e| Error::Config(format!("{key} {v:?}: {e}")))?;
            }
        }
        Ok(self)
    }

    /// True when nodes are scale-set instances (`vmType: vmss`).
    #[must_use]
    pub fn is_vmss(&self) -> bool {
        self.vm_type.eq_ignore_ascii_case("vmss")
    }

    /// ARM endpoint: the custom one, else the named cloud's.
    #[must_use]
    pub fn arm_endpoint(&self) -> String {
        if self.resource_manager_endpoint.is_empty() {
            self.environment.resource_manager_endpoint.clone()
        } else {
            self.resource_manager_endpoint.clone()
        }
    }

    /// Azure AD authority host: the custom one, else the named cloud's.
    #[must_use]
    pub fn authority_host(&self) -> String {
        if self.active_directory_authority_host.is_empty() {
            self.environment.active_directory_endpoint.clone()
        } else {
            self.active_directory_authority_host.clone()
        }
    }

    /// The audience of MIC's ARM tokens: the named cloud's (its ARM endpoint, as the original
    /// asked for it; the sandbox's custom endpoint keeps the public cloud's audience).
    #[must_use]
    pub fn arm_resource(&self) -> String {
        self.environment.token_audience.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn azure_json_with_custom_endpoints_is_read() {
        let c = CloudConfig::from_json(
            r#"{"cloud":"AzurePublicCloud","tenantId":"t","aadClientId":"c","aadClientSecret":"s3cret",
                "subscriptionId":"sub","resourceGroup":"rg","vmType":"vmss","useManagedIdentityExtension":false,
                "userAssignedIdentityID":"","resourceManagerEndpoint":"http://127.0.0.1:1234/",
                "activeDirectoryAuthorityHost":"http://127.0.0.1:1234/","location":"westeurope"}"#,
        )
        .unwrap();
        assert!(c.is_vmss());
        assert_eq!(c.arm_endpoint(), "http://127.0.0.1:1234/");
        assert_eq!(c.authority_host(), "http://127.0.0.1:1234/");
        assert_eq!(c.arm_resource(), "https://management.azure.com/");
    }

    #[test]
    fn secret_never_appears_in_debug_output() {
        let c = CloudConfig::from_json(
            r#"{"tenantId":"t","aadClientId":"c","aadClientSecret":"s3cret","subscriptionId":"sub"}"#,
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_not_quoted_in_the_error() {
        for secret in ["918273645546372819", "true", "[\"918273645546372819\"]"] {
            let text = format!(
                r#"{{"tenantId":"t","aadClientId":"c",
                    "aadClientSecret":{secret},"subscriptionId":"sub"}}"#
            );
            let e = CloudConfig::from_json(&text).unwrap_err().to_string();
            assert!(!e.contains("918273645546372819"), "{e}");
            assert!(e.contains("wrong type at line 2 column"), "{e}");
        }
        // A syntax error keeps serde's own message (it quotes nothing).
        let e = CloudConfig::from_json(r#"{"aadClientSecret":"s3cret""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("EOF") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn environment_fallback_reads_the_original_names() {
        let env: HashMap<&str, &str> = [
            ("SUBSCRIPTION_ID", "sub"),
            ("RESOURCE_GROUP", "rg"),
            ("VM_TYPE", "vmss"),
            ("USE_MSI", "true"),
            ("USER_ASSIGNED_MSI_CLIENT_ID", "cid"),
        ]
        .into();
        let c = CloudConfig::from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert!(c.use_managed_identity_extension);
        assert_eq!(c.user_assigned_identity_id, "cid");
        assert_eq!(c.arm_endpoint(), "https://management.azure.com/");
    }

    #[test]
    fn incomplete_or_malformed_configs_say_what_is_missing() {
        let e = CloudConfig::from_json(r#"{"tenantId":"t"}"#).unwrap_err();
        assert!(e.to_string().contains("subscriptionId"));
        let e = CloudConfig::from_json(r#"{"subscriptionId":"s","tenantId":"t"}"#).unwrap_err();
        assert!(e.to_string().contains("aadClientSecret"));
        let e = CloudConfig::from_json(r#"{"subscriptionId": 5}"#).unwrap_err();
        assert!(matches!(e, Error::Config(_)));
        let e = CloudConfig::from_env(|k| (k == "USE_MSI").then(|| "maybe".to_string()));
        assert!(e.is_err());
        let e = CloudConfig::from_file("/nonexistent/azure.json").unwrap_err();
        assert!(matches!(e, Error::ConfigRead { .. }));
    }

    #[test]
    fn sovereign_clouds_have_their_endpoints() {
        let c = CloudConfig::from_json(
            r#"{"cloud":"AzureChinaCloud","useManagedIdentityExtension":true,"subscriptionId":"s"}"#,
        )
        .unwrap();
        assert_eq!(c.arm_endpoint(), "https://management.chinacloudapi.cn/");
        assert_eq!(c.authority_host(), "https://login.chinacloudapi.cn/");
        assert_eq!(c.arm_resource(), "https://management.chinacloudapi.cn/");
    }

    #[test]
    fn the_cloud_comes_from_cloud_or_the_cloud_variable_and_unknown_names_are_refused() {
        let env: HashMap<&str, &str> = [
            ("CLOUD", "AzureUSGovernmentCloud"),
            ("SUBSCRIPTION_ID", "sub"),
            ("USE_MSI", "true"),
        ]
        .into();
        let c = CloudConfig::from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.arm_endpoint(), "https://management.usgovcloudapi.net/");
        assert_eq!(c.authority_host(), "https://login.microsoftonline.us/");

        let e = CloudConfig::from_json(
            r#"{"cloud":"AzurePrivateCloud","useManagedIdentityExtension":true,"subscriptionId":"s"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown cloud \"AzurePrivateCloud\""), "{e}");
        let env: HashMap<&str, &str> = [
            ("CLOUD", "nope"),
            ("SUBSCRIPTION_ID", "sub"),
            ("USE_MSI", "true"),
        ]
        .into();
        assert!(CloudConfig::from_env(|k| env.get(k).map(|v| v.to_string())).is_err());
    }
}
