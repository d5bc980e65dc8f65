//! Which Azure cloud MIC talks to: the original's names (`cloud` in azure.json, or `$CLOUD`),
//! read as go-autorest's `EnvironmentFromName` reads them, with `AzureStackCloud` described
//! by the JSON file at `$AZURE_ENVIRONMENT_FILEPATH` (the chart's `mic.customCloud`).
//!
//! Names are matched case-insensitively. An unknown name is refused naming the known ones; an
//! empty name means the public cloud (the original refused it, see docs/migration.md).

use serde::Deserialize;

use super::Error;

/// The environment variable naming the Azure Stack environment file (the original's).
pub const ENVIRONMENT_FILEPATH: &str = "AZURE_ENVIRONMENT_FILEPATH";

/// The name that takes its endpoints from [`ENVIRONMENT_FILEPATH`].
pub const AZURE_STACK_CLOUD: &str = "AzureStackCloud";

/// The endpoints MIC needs from a cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEnvironment {
    /// Canonical name (`AzurePublicCloud`, ...; an Azure Stack file's own `name`).
    pub name: String,
    /// ARM endpoint, e.g. `https://management.azure.com/`.
    pub resource_manager_endpoint: String,
    /// Audience of MIC's ARM tokens: the ARM endpoint for every public cloud (what the original
    /// asked for); an Azure Stack file's `tokenAudience` when it has one.
    pub token_audience: String,
    /// Azure AD authority host, e.g. `https://login.microsoftonline.com/`.
    pub active_directory_endpoint: String,
}

/// The public sovereign clouds: accepted names (upper case) and endpoints.
const CLOUDS: &[(&[&str], &str, &str, &str)] = &[
    (
        &["AZUREPUBLICCLOUD", "AZURECLOUD"],
        "AzurePublicCloud",
        "https://management.azure.com/",
        "https://login.microsoftonline.com/",
    ),
    (
        &["AZUREUSGOVERNMENTCLOUD", "AZUREUSGOVERNMENT"],
        "AzureUSGovernmentCloud",
        "https://management.usgovcloudapi.net/",
        "https://login.microsoftonline.us/",
    ),
    (
        &["AZURECHINACLOUD"],
        "AzureChinaCloud",
        "https://management.chinacloudapi.cn/",
        "https://login.chinacloudapi.cn/",
    ),
    (
        &["AZUREGERMANCLOUD"],
        "AzureGermanCloud",
        "https://management.microsoftazure.de/",
        "https://login.microsoftonline.de/",
    ),
];

/// The fields of an Azure Stack environment file MIC uses (the file is go-autorest's
/// `Environment` JSON; other fields are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvironmentFile {
    #[serde(default)]
    name: String,
    #[serde(default)]
    resource_manager_endpoint: String,
    #[serde(default)]
    active_directory_endpoint: String,
    #[serde(default)]
    token_audience: String,
}

impl Default for CloudEnvironment {
    fn default() -> Self {
        Self::public()
    }
}

impl CloudEnvironment {
    /// The public cloud.
    #[must_use]
    pub fn public() -> Self {
        let (_, name, arm, aad) = CLOUDS[0];
        Self {
            name: name.into(),
            resource_manager_endpoint: arm.into(),
            token_audience: arm.into(),
            active_directory_endpoint: aad.into(),
        }
    }

    /// The cloud called `name`; `var` reads the environment (`std::env::var` in production) for
    /// [`ENVIRONMENT_FILEPATH`].
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown name, or an Azure Stack file that is missing,
    /// unreadable, not JSON, or lacks an endpoint.
    pub fn from_name(name: &str, var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let name = name.trim();
        if name.is_empty() {
            return Ok(Self::public());
        }
        if name.eq_ignore_ascii_case(AZURE_STACK_CLOUD) {
            return Self::from_file(var(ENVIRONMENT_FILEPATH).as_deref().unwrap_or_default());
        }
        let upper = name.to_ascii_uppercase();
        CLOUDS
            .iter()
            .find(|(names, ..)| names.contains(&upper.as_str()))
            .map(|(_, canonical, arm, aad)| Self {
                name: (*canonical).into(),
                resource_manager_endpoint: (*arm).into(),
                token_audience: (*arm).into(),
                active_directory_endpoint: (*aad).into(),
            })
            .ok_or_else(|| {
                Error::Config(format!(
                    "unknown cloud {name:?}: expected AzurePublicCloud, AzureUSGovernmentCloud, \
                     AzureChinaCloud, AzureGermanCloud, or {AZURE_STACK_CLOUD} with \
                     ${ENVIRONMENT_FILEPATH} naming its environment file"
                ))
            })
    }

    fn from_file(path: &str) -> Result<Self, Error> {
        if path.is_empty() {
            return Err(Error::Config(format!(
                "cloud {AZURE_STACK_CLOUD} needs ${ENVIRONMENT_FILEPATH} to name its environment file (the chart's mic.customCloud)"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_string(),
            source,
        })?;
        let f: EnvironmentFile = serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!("{AZURE_STACK_CLOUD} environment file {path}: {e}"))
        })?;
        for (key, v) in [
            ("resourceManagerEndpoint", &f.resource_manager_endpoint),
            ("activeDirectoryEndpoint", &f.active_directory_endpoint),
        ] {
            url::Url::parse(v).map_err(|e| {
                Error::Config(format!(
                    "{AZURE_STACK_CLOUD} environment file {path}: {key} {v:?} is not a URL: {e}"
                ))
            })?;
        }
        Ok(Self {
            name: if f.name.is_empty() {
                AZURE_STACK_CLOUD.into()
            } else {
                f.name
            },
            token_audience: if f.token_audience.is_empty() {
                f.resource_manager_endpoint.clone()
            } else {
                f.token_audience
            },
            resource_manager_endpoint: f.resource_manager_endpoint,
            active_directory_endpoint: f.active_directory_endpoint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn every_public_sovereign_cloud_is_known_by_each_of_its_names_in_any_case() {
        for (name, arm, aad) in [
            (
                "AzurePublicCloud",
                "https://management.azure.com/",
                "https://login.microsoftonline.com/",
            ),
            (
                "azurecloud",
                "https://management.azure.com/",
                "https://login.microsoftonline.com/",
            ),
            (
                "AzureUSGovernmentCloud",
                "https://management.usgovcloudapi.net/",
                "https://login.microsoftonline.us/",
            ),
            (
                "AZUREUSGOVERNMENT",
                "https://management.usgovcloudapi.net/",
                "https://login.microsoftonline.us/",
            ),
            (
                "AzureChinaCloud",
                "https://management.chinacloudapi.cn/",
                "https://login.chinacloudapi.cn/",
            ),
            (
                "AzureGermanCloud",
                "https://management.microsoftazure.de/",
                "https://login.microsoftonline.de/",
            ),
        ] {
            let e = CloudEnvironment::from_name(name, none).unwrap();
            assert_eq!(
                (
                    e.resource_manager_endpoint.as_str(),
                    e.active_directory_endpoint.as_str()
                ),
                (arm, aad),
                "{name}"
            );
        }
        assert_eq!(
            CloudEnvironment::from_name("", none).unwrap(),
            CloudEnvironment::public()
        );
    }

    #[test]
    fn an_unknown_cloud_is_refused_naming_the_known_ones() {
        let e = CloudEnvironment::from_name("AzureMoonCloud", none)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"AzureMoonCloud\"")
                && e.contains("AzureChinaCloud")
                && e.contains("AZURE_ENVIRONMENT_FILEPATH"),
            "{e}"
        );
    }

    #[test]
    fn azure_stack_reads_its_endpoints_from_the_environment_file() {
        let dir = std::env::temp_dir().join(format!(
            "cloud-env-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("akscustom.json");
        std::fs::write(
            &file,
            r#"{"name":"AzureStackCloud","resourceManagerEndpoint":"https://management.local.azurestack.external/",
                "activeDirectoryEndpoint":"https://adfs.local.azurestack.external/adfs/","tokenAudience":"https://management.adfs.azurestack.local/x"}"#,
        )
        .unwrap();
        let path = file.display().to_string();
        let var = |k: &str| (k == ENVIRONMENT_FILEPATH).then(|| path.clone());
        let e = CloudEnvironment::from_name("azurestackcloud", var).unwrap();
        assert_eq!(
            e.resource_manager_endpoint,
            "https://management.local.azurestack.external/"
        );
        assert_eq!(
            e.active_directory_endpoint,
            "https://adfs.local.azurestack.external/adfs/"
        );
        assert_eq!(
            e.token_audience,
            "https://management.adfs.azurestack.local/x"
        );

        let e = CloudEnvironment::from_name("AzureStackCloud", none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("AZURE_ENVIRONMENT_FILEPATH"), "{e}");
        std::fs::write(
            &file,
            r#"{"name":"x","resourceManagerEndpoint":"not a url"}"#,
        )
        .unwrap();
        let e = CloudEnvironment::from_name("AzureStackCloud", var)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resourceManagerEndpoint"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = CloudEnvironment::from_name("AzureStackCloud", var).unwrap_err();
        assert!(matches!(e, Error::ConfigRead { .. }), "{e}");
    }
}
