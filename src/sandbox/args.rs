//! Flags of `aad-pod-identity sandbox`: the size and the weather of the simulated world.

use clap::Args;
use std::path::PathBuf;

use super::topology::Topology;

/// Options of the sandbox.
#[derive(Clone, Debug, Args)]
pub struct SandboxArgs {
    /// Write a kubeconfig for kubectl and kube-rs clients here.
    #[arg(long = "kubeconfig-out", env = "SANDBOX_KUBECONFIG_OUT")]
    pub kubeconfig_out: Option<PathBuf>,

    /// Write a JSON document naming every simulated endpoint here.
    #[arg(long = "endpoints-out", env = "SANDBOX_ENDPOINTS_OUT")]
    pub endpoints_out: Option<PathBuf>,

    /// Number of VM scale sets.
    #[arg(long = "scale-sets", default_value_t = 1)]
    pub scale_sets: u32,

    /// Nodes (instances) per scale set.
    #[arg(long = "nodes-per-scale-set", default_value_t = 2)]
    pub nodes_per_scale_set: u32,

    /// Standalone VMs (availability-set nodes), in addition to the scale sets.
    #[arg(long = "vms", default_value_t = 0)]
    pub vms: u32,

    /// User-assigned identities that exist in the simulated Azure.
    #[arg(long = "identities", default_value_t = 5)]
    pub identities: u32,
}

impl SandboxArgs {
    /// The simulated world these flags describe.
    #[must_use]
    pub fn topology(&self) -> Topology {
        Topology::sized(
            self.scale_sets,
            self.nodes_per_scale_set,
            self.vms,
            self.identities,
        )
    }
}
