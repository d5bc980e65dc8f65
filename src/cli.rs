//! The command line of the `aad-pod-identity` binary: one subcommand per component.
//!
//! Kept in the library so tests (and the docs check) can read the same definitions the binary
//! parses.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use crate::config::{mic::MicArgs, nmi::NmiArgs};

/// AAD Pod Identity: Azure AD tokens for pods, without secrets.
#[derive(Debug, Parser)]
#[command(name = "aad-pod-identity", version = crate::version::LONG, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller (MIC): assigns identities to VMs and scale sets.
    Mic(Box<MicArgs>),
    /// Run the node agent (NMI): answers pods' token requests.
    Nmi(Box<NmiArgs>),
    /// Write the CustomResourceDefinitions (or check the committed ones).
    Crdgen(CrdgenArgs),
}

/// Options of `crdgen`.
#[derive(Debug, clap::Args)]
pub struct CrdgenArgs {
    /// Directory the CRD manifests are written to.
    #[arg(long = "out-dir", default_value = "chart/crds")]
    pub out_dir: PathBuf,

    /// Do not write: exit 1 when a file in the directory differs from what would be written.
    #[arg(long)]
    pub check: bool,
}
