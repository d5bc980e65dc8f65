//! The `aad-pod-identity` binary: parses the command line, sets up logging, hands over to the
//! library, and turns errors into exit codes (2 for bad flags, from clap; 1 for failures).

use aad_pod_identity::actors::{mic, nmi};
use aad_pod_identity::cli::{Cli, Command};
use aad_pod_identity::config::LogArgs;
use aad_pod_identity::metrics::Metrics;
use aad_pod_identity::{crd, logging};
use anyhow::Context as _;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Sandbox(args) => {
            // The sandbox prints its own progress; logs default to warnings only.
            logging::init(&LogArgs::text(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            ))?;
            // MIC's actors need an actix system; everything else runs on it too.
            actix::System::new().block_on(aad_pod_identity::sandbox::system::run(*args))?;
            Ok(())
        }
        Command::Loadtest(args) => {
            logging::init(&LogArgs::text(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            ))?;
            let outcome = actix::System::new().block_on(aad_pod_identity::loadtest::run(*args))?;
            // The report's path is the last line, for scripts.
            println!("{}", outcome.dir.display());
            if outcome.violations.is_empty() {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} invariant violation(s); see the report",
                    outcome.violations.len()
                )
            }
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
