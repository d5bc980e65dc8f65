//! How MIC and NMI talk to Azure: ARM, the metadata service, Azure AD, and cloud configuration.
//!
//! Every endpoint is configuration (custom clouds, the sandbox's loopback simulator), so nothing
//! here has an address that a test could reach by accident except through its configuration.
//! - [`provider_id`]: a node's `spec.providerID` → the VM or scale set that carries identities.
//! - [`config`]: azure.json / environment; [`config_watch`] reloads azure.json on change.
//! - [`environment`]: the cloud's endpoints by name (sovereign clouds, Azure Stack).
//! - [`arm`]: identity GET/PATCH on VMs and scale sets (delta bodies, LROs, throttling, refusals).
//! - [`throttle`]: the per-subscription `Retry-After` gate shared by every ARM caller.
//! - [`credential`]: bearer tokens for ARM (azure_identity for real clusters, the simulator's
//!   Azure AD for the sandbox) and the pipeline policy that attaches them.
//! - [`imds`]: metadata-service tokens for NMI, passed through byte for byte.
//! - [`aad`]: Azure AD client credentials (secret, certificate) for service-principal identities.
//! - [`authority`]: which Azure AD authorities a service principal's credential may be sent to.

pub mod aad;
pub mod arm;
pub mod authority;
pub mod config;
pub mod config_watch;
pub mod credential;
pub mod environment;
mod error;
pub mod imds;
pub mod pfx;
pub mod provider_id;
pub mod throttle;
pub mod token;
mod transport;

pub use error::{Error, RefusedIdentity};
pub use transport::AppendUserAgent;
pub(crate) use transport::stale_connection;
