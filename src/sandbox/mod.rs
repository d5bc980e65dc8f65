//! The sandbox: the whole system (Kubernetes simulator, Azure simulator, MIC, one NMI per node)
//! on one machine, on loopback only.

pub mod args;
pub mod run;
pub mod scenario;
pub mod system;
pub mod topology;
