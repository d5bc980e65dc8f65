//! Load tests: `aad-pod-identity-sandbox loadtest <scenario>` runs a scenario against the in-process
//! sandbox, checks the invariants users rely on, and writes a report (JSON, HTML with SVG
//! charts, a one-screen text table).
//!
//! The driver runs in the simulators' process because their counters (PATCHes, GETs, 429s,
//! tokens issued, Kubernetes writes per object) are only reachable there; MIC and each NMI
//! run as processes of the product binary (`--product-bin`), as in a cluster, so the report
//! gives each one's CPU time and peak RSS (`--in-process` runs them in the driver's process). Assignment latency is read back from a
//! real Prometheus server (started by `loadtest/run`) that scrapes MIC's and every NMI's
//! `/metrics`; the driver writes Prometheus' file-based target list and queries its HTTP API.
//! All traffic stays on loopback, and every loop is bounded in count and time.

mod chaos;
mod chaos_check;
pub mod engine;
mod figures;
pub mod hot_path;
mod params;
pub mod prom;
pub mod report;
pub mod scale;
mod timeline;
mod tokens;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use aad_pod_identity::config::parse_go_duration;

/// Why a load test could not run (an invariant violation is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sandbox failed to start.
    #[error("sandbox: {0}")]
    Sandbox(#[from] crate::system::Error),
    /// A Kubernetes call of the driver failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: &'static str,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A report file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Prometheus did not answer as expected.
    #[error("Prometheus: {0}")]
    Prometheus(String),
    /// The load generator could not be set up.
    #[error("load generator: {0}")]
    Load(String),
}

/// The scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N pods with K identities on M nodes in S scale sets appear at once.
    Burst,
    /// Many pods ask for tokens concurrently, part of them before their identity is assigned.
    TokenStorm,
    /// Token requests for assigned, cached identities at maximum rate, against a bare
    /// actix-web handler measured in the same run.
    HotPath,
    /// Jobs and CronJobs starting and finishing continuously.
    Churn,
    /// MIC alone converging a large cluster (10k pods by default), then restarting on it.
    Scale,
    /// A steady workload while faults strike (simulator faults, MIC leader killed, NMI
    /// restarted, node deleted), with the invariants checked throughout.
    Chaos,
}

impl Scenario {
    /// The name used on the command line and in report paths.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Burst => "burst",
            Self::TokenStorm => "token-storm",
            Self::HotPath => "hot-path",
            Self::Churn => "churn",
            Self::Scale => "scale",
            Self::Chaos => "chaos",
        }
    }
}

/// Options of `aad-pod-identity-sandbox loadtest`.
#[derive(Clone, Debug, Args)]
pub struct LoadtestArgs {
    /// Which scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// The small version (CI): each scenario well under a minute on two cores.
    #[arg(long)]
    pub quick: bool,

    /// Reports are written to `<out>/<timestamp>-<scenario>/`.
    #[arg(long = "out", default_value = "loadtest/reports")]
    pub out: PathBuf,

    /// Base URL of a Prometheus server (loopback) scraping the targets this run writes.
    #[arg(long = "prometheus")]
    pub prometheus: Option<String>,

    /// File-based service discovery file the run writes MIC's and NMIs' metrics targets to.
    #[arg(long = "prometheus-targets")]
    pub prometheus_targets: Option<PathBuf>,

    /// Pods (burst, token-storm, hot-path); the scenario's default when absent.
    #[arg(long)]
    pub pods: Option<u32>,

    /// Identities.
    #[arg(long)]
    pub identities: Option<u32>,

    /// Nodes in total (spread over the scale sets).
    #[arg(long)]
    pub nodes: Option<u32>,

    /// Scale sets.
    #[arg(long = "scale-sets")]
    pub scale_sets: Option<u32>,

    /// Real scale sets take 40 to 60 s per write; the simulated ARM takes that divided by this.
    #[arg(long = "clock-factor", default_value_t = 100)]
    pub clock_factor: u32,

    /// Port of every NMI of the sandbox (on each node's loopback address); 0, the default, picks
    /// a free one per NMI so that runs never collide.
    #[arg(long = "nmi-port", default_value_t = 0)]
    pub nmi_port: u16,

    /// Upper bound on the whole scenario (after the sandbox is up).
    #[arg(long = "time-limit", value_parser = parse_go_duration)]
    pub time_limit: Option<Duration>,

    /// The product binary (`aad-pod-identity`) whose `mic` and `nmi` subcommands run as
    /// processes of their own; by default the one beside this binary.
    #[arg(long = "product-bin", env = "AAD_POD_IDENTITY_BIN")]
    pub product_bin: Option<PathBuf>,

    /// Runs MIC and the NMIs in this process instead (no per-component figures).
    #[arg(long = "in-process")]
    pub in_process: bool,
}

/// Where MIC and the NMIs of a run go: processes of the product binary (logs in
/// `<report>/components/`), unless `--in-process`.
///
/// # Errors
/// [`Error::Load`] when no product binary is given or found beside this one.
pub fn components(
    args: &LoadtestArgs,
    dir: &std::path::Path,
    mic_flags: &[String],
) -> Result<crate::system::Placement, Error> {
    if args.in_process {
        return Ok(crate::system::Placement::InProcess);
    }
    let bin = match &args.product_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| Error::Load(format!("locating this binary: {e}")))?
            .with_file_name("aad-pod-identity"),
    };
    if !bin.is_file() {
        return Err(Error::Load(format!(
            "{} is not the product binary (build it, pass --product-bin or AAD_POD_IDENTITY_BIN, or run --in-process)",
            bin.display()
        )));
    }
    let dir = dir.join("components");
    std::fs::create_dir_all(&dir).map_err(|source| Error::File {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(crate::system::Placement::Processes {
        bin,
        dir,
        mic_flags: mic_flags.to_vec(),
    })
}

/// The components' flags in load tests that run NMI as the chart deploys it: one worker thread
/// for the token endpoint (`--http-workers=1`). Under the chart's CPU limit (200m) NMI's default
/// (`0`: one per CPU the container may use) resolves to one; the load tests run NMI as plain
/// processes outside any CPU limit, where the default would give one per CPU of this machine.
/// (hot-path compares NMI with a bare handler at equal worker counts and does not use this.)
pub fn components_as_deployed() -> crate::args::ComponentArgs {
    crate::args::ComponentArgs {
        nmi_args: vec!["--http-workers=1".into()],
        ..crate::args::ComponentArgs::default()
    }
}

/// What a run concluded.
#[derive(Debug)]
pub struct Outcome {
    /// The report directory.
    pub dir: PathBuf,
    /// Invariant violations and lost requests (empty when the run passed).
    pub violations: Vec<String>,
}

/// Runs the scenario and writes its report. Must run on an actix system (MIC needs one).
///
/// # Errors
/// [`Error`] when the run could not be carried out at all.
pub async fn run(args: LoadtestArgs) -> Result<Outcome, Error> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let dir = args.out.join(format!("{stamp}-{}", args.scenario.name()));
    std::fs::create_dir_all(&dir).map_err(|source| Error::File {
        path: dir.display().to_string(),
        source,
    })?;
    let result = match args.scenario {
        Scenario::HotPath => hot_path::run(&args, &dir).await?,
        Scenario::Scale => scale::run(&args, &dir).await?,
        Scenario::Chaos => chaos::run(&args, &dir).await?,
        Scenario::Burst | Scenario::TokenStorm | Scenario::Churn => {
            engine::run(&args, &dir).await?
        }
    };
    report::write(&dir, &result)?;
    println!("{}", report::table(&result));
    Ok(Outcome {
        dir,
        violations: result.violations.clone(),
    })
}
