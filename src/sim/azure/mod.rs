//! An Azure simulator: ARM identity state for VMs and scale sets, the metadata service per node,
//! and Azure AD client credentials, speaking the real wire formats.
