//! MIC, the controller: watches pods, identities, bindings and nodes, assigns user-assigned
//! identities to the VM or scale set under each pod's node, and records each assignment as an
//! AzureAssignedIdentity.
//!
//! - [`matcher`]: the pure index pods × bindings × identities → desired assignments.
//! - [`host`]: ids of VMs/scale sets and of identities.
//! - [`nmi_coverage`]: nodes that run pod-identity pods without a ready NMI (metric, Events).

pub mod host;
pub mod matcher;

pub mod assigner;
pub mod batch;
pub mod budget;
pub mod coordinator;
#[cfg(test)]
mod fixtures;
pub mod leader;
pub mod metrics;
pub mod nmi_coverage;
pub mod port;
pub mod run;
pub mod supervised;
pub mod watchers;
pub mod writer;

pub use run::{
    Error, MicDeps, MicHandle, MicSettings, StartError, run, run_blocking, run_from_args, spawn,
};
pub mod cloud_port;
pub mod testing;
