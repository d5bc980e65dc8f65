//! The sandbox: the whole system (Kubernetes simulator, Azure simulator, MIC, one NMI per node)
//! on one machine, on loopback only, and the load tests that run against it.
//!
//! A tool beside the product: it links the product's library (MIC and NMI run in its process,
//! or as processes of the product binary for load tests) and the simulators, and none of it is in the `aad-pod-identity` binary the chart ships.
//!
//! - [`args`]: the size and weather of the simulated world.
//! - [`component_files`]: the kubeconfig and azure.json the component processes read, kept out
//!   of report directories.
//! - [`components`]: MIC's and NMI's workloads, and the settings parsed from their arguments.
//! - [`control`]: faults injected at run time and ARM's request log, for the e2e suite.
//! - [`federation`]: the `--federated` demonstration (an identity on no scale set).
//! - [`mic_replicas`]: MIC replicas that follow MIC's pods (leader changes, drains).
//! - [`scenario`]: the Kubernetes objects a sandbox starts with.
//! - [`system`]: starting everything, the guide it prints, and its progress line.
//! - [`weather`]: faults injected on a schedule (`--faults`).
//! - [`processes`]: MIC and NMIs as processes of the product binary, with their CPU and memory.
//! - [`loadtest`]: load scenarios with reports.

pub mod args;
pub mod component_files;
pub mod components;
pub mod control;
pub mod federation;
pub mod loadtest;
pub mod mic_replicas;
pub mod processes;
pub mod scenario;
pub mod system;
pub mod weather;
