//! MIC, the controller: watches pods, identities, bindings and nodes, assigns user-assigned
//! identities to the VM or scale set under each pod's node, and records each assignment as an
//! AzureAssignedIdentity.
//!
//! Actix actors (messages only, `Recipient<M>` between them):
//! - [`coordinator`]: owns the [`matcher`] index (pure data: pods × bindings × identities →
//!   desired assignments), fed by the watchers, telling assigners and the writer what is desired;
//! - [`assigner`]: one per VM or scale set, around the [`batch`] state machine (group commit,
//!   one ARM write in flight), sharing the per-subscription [`budget`];
//! - [`writer`]: AzureAssignedIdentity objects, their status and Events.
//!
//! Tasks: [`watchers`] (the [`crate::kube_watch`] streams turned into messages), [`leader`]
//! election (on a thread of its own, [`leader_thread`], watching the actor thread's
//! [`heartbeat`]; every write is [`fence`]d on its word), and [`nmi_coverage`] (nodes that run pod-identity pods without a ready NMI).
//! [`pod_facts`] is what MIC keeps of a pod; [`host`] holds the assigners' keys; [`port`] and [`cloud_port`] are the ARM port; [`mod@run`]
//! wires it all together, with the probe and metrics servers of [`crate::http::probes`].

pub mod host;
pub mod matcher;

pub mod assigner;
pub mod batch;
pub mod budget;
pub mod coordinator;
pub mod fence;
#[cfg(test)]
mod fixtures;
pub mod heartbeat;
pub mod leader;
pub mod leader_thread;
pub mod metrics;
pub mod nmi_coverage;
pub mod pod_facts;
pub mod port;
pub mod recorder;
pub mod run;
pub mod supervised;
pub mod watchers;
pub mod writer;

pub use run::{
    Error, MicDeps, MicHandle, MicSettings, StartError, run, run_blocking, run_from_args, spawn,
};
pub mod cloud_port;
pub mod testing;
