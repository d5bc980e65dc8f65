//! `spec.type` of an AzureIdentity: an integer on the wire, an enum in code.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What kind of Azure identity an AzureIdentity describes. Serialized as the original's integer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IdentityType {
    /// 0: a user-assigned managed identity, assigned to the node's VM or scale set by MIC.
    #[default]
    UserAssignedMsi,
    /// 1: a service principal whose secret is in the referenced Secret.
    ServicePrincipal,
    /// 2: a service principal whose PKCS#12 certificate is in the referenced Secret.
    ServicePrincipalCertificate,
    /// Any other integer: kept as written so an object is never silently changed, and refused
    /// where a known type is needed.
    Unknown(i64),
}

impl IdentityType {
    /// The wire integer.
    #[must_use]
    pub fn as_i64(self) -> i64 {
        match self {
            Self::UserAssignedMsi => 0,
            Self::ServicePrincipal => 1,
            Self::ServicePrincipalCertificate => 2,
            Self::Unknown(n) => n,
        }
    }

    /// The type for a wire integer.
    #[must_use]
    pub fn from_i64(n: i64) -> Self {
        match n {
            0 => Self::UserAssignedMsi,
            1 => Self::ServicePrincipal,
            2 => Self::ServicePrincipalCertificate,
            n => Self::Unknown(n),
        }
    }
}

impl fmt::Display for IdentityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UserAssignedMsi => f.write_str("user-assigned managed identity (0)"),
            Self::ServicePrincipal => f.write_str("service principal with secret (1)"),
            Self::ServicePrincipalCertificate => {
                f.write_str("service principal with certificate (2)")
            }
            Self::Unknown(n) => write!(f, "unknown identity type ({n})"),
        }
    }
}

impl Serialize for IdentityType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.as_i64())
    }
}

impl<'de> Deserialize<'de> for IdentityType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The original writes an integer; hand-written YAML sometimes quotes it. Both are read,
        // anything else is a precise error.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Int(i64),
            Str(String),
            Null(()),
        }
        match Wire::deserialize(d)? {
            Wire::Int(n) => Ok(Self::from_i64(n)),
            Wire::Null(()) => Ok(Self::UserAssignedMsi),
            Wire::Str(s) => s.trim().parse::<i64>().map(Self::from_i64).map_err(|_| {
                serde::de::Error::custom(format!(
                    "spec.type must be an integer 0, 1 or 2, got {s:?}"
                ))
            }),
        }
    }
}
