//! Validation of a user-assigned identity's ARM resource id.
//!
//! The original rejects a type-0 AzureIdentity whose `resourceID` is not of the form
//! `/subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>`
//! (case-insensitive). We keep that rule and say exactly which part is wrong.

use std::fmt;

/// The parts of a valid user-assigned identity resource id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityResourceId {
    /// Subscription id as written.
    pub subscription: String,
    /// Resource group as written.
    pub resource_group: String,
    /// Identity name as written.
    pub name: String,
}

impl IdentityResourceId {
    /// The canonical lower-case form, used to compare ids written with different casing.
    #[must_use]
    pub fn canonical(&self) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{}/providers/microsoft.managedidentity/userassignedidentities/{}",
            self.subscription, self.resource_group, self.name
        )
        .to_ascii_lowercase()
    }
}

impl fmt::Display for IdentityResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.subscription, self.resource_group, self.name
        )
    }
}

/// Why a resource id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceIdError {
    /// Empty string.
    #[error(
        "resourceID is empty; a user-assigned identity needs /subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>"
    )]
    Empty,
    /// Wrong number of segments or a misplaced keyword.
    #[error(
        "resourceID {id:?} is not of the form /subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>: {problem}"
    )]
    Malformed {
        /// The id as given.
        id: String,
        /// Which part is wrong.
        problem: &'static str,
    },
}

/// Parses and validates a user-assigned identity resource id (case-insensitive keywords).
pub fn parse_identity_resource_id(id: &str) -> Result<IdentityResourceId, ResourceIdError> {
    if id.trim().is_empty() {
        return Err(ResourceIdError::Empty);
    }
    let bad = |problem| ResourceIdError::Malformed {
        id: id.to_string(),
        problem,
    };
    let rest = id
        .strip_prefix('/')
        .ok_or_else(|| bad("it must start with '/'"))?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() != 8 {
        return Err(bad("it must have exactly 8 segments"));
    }
    let expect = [
        (0, "subscriptions"),
        (2, "resourcegroups"),
        (4, "providers"),
        (5, "microsoft.managedidentity"),
        (6, "userassignedidentities"),
    ];
    for (i, word) in expect {
        if !parts[i].eq_ignore_ascii_case(word) {
            return Err(bad(match i {
                0 => "the first segment must be 'subscriptions'",
                2 => "the third segment must be 'resourcegroups'",
                4 => "the fifth segment must be 'providers'",
                5 => "the provider must be 'Microsoft.ManagedIdentity'",
                _ => "the resource type must be 'userAssignedIdentities'",
            }));
        }
    }
    for (i, what) in [
        (1, "subscription"),
        (3, "resource group"),
        (7, "identity name"),
    ] {
        if parts[i].is_empty() {
            return Err(bad(match what {
                "subscription" => "the subscription is empty",
                "resource group" => "the resource group is empty",
                _ => "the identity name is empty",
            }));
        }
    }
    Ok(IdentityResourceId {
        subscription: parts[1].to_string(),
        resource_group: parts[3].to_string(),
        name: parts[7].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_casing_of_the_keywords() {
        let id = parse_identity_resource_id(
            "/subscriptions/s1/resourceGroups/RG/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1",
        )
        .unwrap();
        assert_eq!(id.resource_group, "RG");
        assert_eq!(id.name, "id1");
        assert_eq!(
            id.canonical(),
            "/subscriptions/s1/resourcegroups/rg/providers/microsoft.managedidentity/userassignedidentities/id1"
        );
    }

    #[test]
    fn rejects_wrong_provider_with_a_reason() {
        let err = parse_identity_resource_id(
            "/subscriptions/s1/resourcegroups/rg/providers/Microsoft.Compute/userAssignedIdentities/id1",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("Microsoft.ManagedIdentity"),
            "{err}"
        );
    }

    #[test]
    fn rejects_empty_and_short_ids() {
        assert_eq!(parse_identity_resource_id(""), Err(ResourceIdError::Empty));
        assert!(matches!(
            parse_identity_resource_id("/subscriptions/s1"),
            Err(ResourceIdError::Malformed { .. })
        ));
        assert!(parse_identity_resource_id(
            "/subscriptions//resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/x"
        )
        .unwrap_err()
        .to_string()
        .contains("subscription is empty"));
    }
}
