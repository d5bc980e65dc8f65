//! NMI, the node agent: answers pods' token requests in the metadata service's own format.
//!
//! Owners, one per module:
//! - [`pods`] — this node's pods by IP (pod watcher is the only writer);
//! - [`assignments`] — per-pod identities from AzureAssignedIdentities, one `watch` per pod;
//! - [`managed`] — bindings and identities for `--operation-mode managed`;
//! - [`exceptions`] — AzurePodIdentityExceptions;
//! - [`cache`] — tokens per (identity, resource), single flight, refresh before expiry;
//! - [`imds_fetch`] — the node's metadata-service fetches: places in flight, a bounded line,
//!   retries with backoff inside the fetch timeout;
//! - [`broker`] — the per-request flow (pod → identity → authorization → cache);
//! - [`federated`] — service-account tokens for federated identities (`--enable-federation`);
//! - [`service_accounts`] — service accounts annotated for workload identity;
//! - [`watchers`] — the Kubernetes watch loops feeding the indexes;
//! - [`waiters`] — the bound on requests parked while they wait;
//! - [`iptables`] — the `aad-metadata` redirect;
//! - [`gate`] — the startup taint NMI lifts from its node once it guards it (`--node-gate`);
//! - [`kubenet`] — the original's refusal to run on kubenet nodes.
//!
//! The watch loops are plain tasks that each own one index; HTTP workers read the indexes
//! directly, so a token request costs no mailbox hop. The process that wires these owners to
//! NMI's HTTP surface ([`crate::http`]) and supervises them is [`crate::nmi`], so the HTTP
//! surface depends on these modules and never the other way round.

pub mod assignments;
pub mod broker;
pub mod cache;
pub mod cloud_source;
pub mod exceptions;
pub mod federated;
pub mod gate;
pub mod identity;
pub mod imds_fetch;
pub mod iptables;
pub mod kubenet;
pub mod managed;
pub mod metrics;
pub mod pods;
pub mod service_accounts;
pub mod source;
pub mod upstream_metrics;
pub mod waiters;
pub mod watchers;
