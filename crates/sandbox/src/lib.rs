//! The sandbox: the whole system (Kubernetes simulator, Azure simulator, MIC, one NMI per node)
//! on one machine, on loopback only, and the load tests that run against it.
//!
//! A tool beside the product: it links the product's library (MIC and NMI run in its process)
//! and the simulators, and none of it is in the `aad-pod-identity` binary the chart ships.
//!
//! - [`args`]: the size and weather of the simulated world.
//! - [`federation`]: the `--federated` demonstration (an identity on no scale set).
//! - [`scenario`]: the Kubernetes objects a sandbox starts with.
//! - [`system`]: starting everything, the guide it prints, and its progress line.
//! - [`loadtest`]: load scenarios with reports.

pub mod args;
pub mod federation;
pub mod loadtest;
pub mod scenario;
pub mod system;
