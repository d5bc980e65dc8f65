//! The `aad-pod-identity` binary: parses the command line, sets up logging, hands over to the
//! library, and turns errors into exit codes (2 for bad flags, from clap; 1 for failures).

use aad_pod_identity::actors::mic;
use aad_pod_identity::cli::{Cli, Command};
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity::nmi;
use aad_pod_identity::{crd, logging};
use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args =
        aad_pod_identity::config::compat::go_style_args(std::env::args_os(), &Cli::command());
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crdgen(args) => {
            if args.check {
                crd::write::check_all(&args.out_dir)?;
                println!("CRDs in {} are up to date", args.out_dir.display());
            } else {
                for path in crd::write::write_all(&args.out_dir).context("writing CRDs")? {
                    println!("wrote {}", path.display());
                }
            }
            Ok(())
        }
        Command::Mic(args) => {
            logging::init(&args.log)?;
            mic::run::run_from_args(&args, Metrics::new())?;
            Ok(())
        }
        Command::Nmi(args) => {
            logging::init(&args.log)?;
            actix::System::new().block_on(nmi::run_with_args(&args, Metrics::new()))?;
            Ok(())
        }
    }
}
