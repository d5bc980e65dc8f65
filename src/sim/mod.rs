//! Simulators that stand in for a Kubernetes API server and for Azure, on loopback only.
//!
//! They are the backbone of the sandbox, the integration tests and the load tests.

pub mod azure;
pub mod kube;
