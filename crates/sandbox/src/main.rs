//! The `aad-pod-identity-sandbox` binary: with no subcommand it runs the sandbox; `loadtest`
//! runs a load scenario against it. Exit codes: 2 for bad flags (from clap), 1 for failures.

use aad_pod_identity::config::LogArgs;
use aad_pod_identity::logging;
use aad_pod_identity_sandbox::args::SandboxArgs;
use aad_pod_identity_sandbox::loadtest::LoadtestArgs;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The whole AAD Pod Identity system on this machine, against simulated Kubernetes and Azure.
#[derive(Debug, Parser)]
#[command(
    name = "aad-pod-identity-sandbox",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run something other than the sandbox itself.
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    sandbox: Box<SandboxArgs>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a load scenario against the sandbox and write its report.
    Loadtest(Box<LoadtestArgs>),
    /// The hot-path scenario's baseline: a bare actix-web handler answering every request
    /// with a body of `--body-len` bytes, as a process of its own (prints its address).
    #[command(hide = true)]
    BareTokenServer {
        /// Bytes of the answer's body.
        #[arg(long = "body-len")]
        body_len: usize,
        /// actix-web workers.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The sandbox and the load tests print their own progress; logs default to warnings only.
    logging::init(&LogArgs::text(
        std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
    ))?;
    match cli.command {
        Some(Command::BareTokenServer { body_len, workers }) => {
            aad_pod_identity_sandbox::loadtest::hot_path::serve_bare(body_len, workers)?;
        }
        // MIC's actors need an actix system; everything else runs on it too.
        None => {
            actix::System::new().block_on(aad_pod_identity_sandbox::system::run(*cli.sandbox))?
        }
        Some(Command::Loadtest(args)) => {
            let outcome =
                actix::System::new().block_on(aad_pod_identity_sandbox::loadtest::run(*args))?;
            // The report's path is the last line, for scripts.
            println!("{}", outcome.dir.display());
            if !outcome.violations.is_empty() {
                anyhow::bail!(
                    "{} invariant violation(s); see the report",
                    outcome.violations.len()
                )
            }
        }
    }
    Ok(())
}
