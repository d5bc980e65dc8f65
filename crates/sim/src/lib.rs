//! Simulators that stand in for a Kubernetes API server and for Azure, on loopback only.
//!
//! They are the backbone of the sandbox, the integration tests and the load tests, and live in a
//! crate of their own so that nothing of them ships in the product binary. They depend on no
//! product code: a judge that shared the product's code could not catch its mistakes.
//!
//! - [`kube`]: a Kubernetes API server (REST, watch, CRDs, a small scheduler and kubelet).
//! - [`azure`]: ARM for VMs and scale sets, the metadata service per node, and Azure AD.
//! - [`topology`]: the shape of a simulated cluster, shared by both so they always agree.

pub mod azure;
pub mod kube;
pub mod topology;
