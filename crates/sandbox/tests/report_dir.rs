//! A run directory holds no secret: with MIC and NMI as processes of the product binary (as
//! the load tests run them), the simulated service principal's client secret, which MIC needs
//! in its azure.json, is written to a private directory outside the run's `components/`, and
//! that directory is gone once the sandbox stops. Every file of the run directory is searched
//! for the secret's value, while the sandbox runs and after.

use std::path::{Path, PathBuf};

use aad_pod_identity_sandbox::args::SandboxArgs;
use aad_pod_identity_sandbox::system::{Placement, Sandbox};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    sandbox: SandboxArgs,
}

fn product_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_aad-pod-identity-sandbox"))
        .with_file_name("aad-pod-identity");
    assert!(
        bin.is_file(),
        "{} missing: build the workspace's binaries",
        bin.display()
    );
    bin
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn a_run_directory_never_holds_the_simulated_client_secret() {
    let run = std::env::temp_dir().join(format!("report-dir-{}", std::process::id()));
    let components = run.join("components");
    std::fs::create_dir_all(&components).unwrap();
    let scenario = run.join("empty.yaml");
    std::fs::write(&scenario, "").unwrap();
    let args = Cli::try_parse_from([
        "sandbox",
        "--nmi-port=0",
        "--nmi-start-delay=0s",
        "--nodes-per-scale-set=1",
        "--arm-latency=50ms",
        &format!("--scenario={}", scenario.display()),
    ])
    .unwrap()
    .sandbox;
    let placement = Placement::Processes {
        bin: product_bin(),
        dir: components.clone(),
        mic_flags: Vec::new(),
    };
    actix::System::new().block_on(async {
        let sandbox = Sandbox::start_with(&args, placement).await.unwrap();
        let (_, _, secret) = sandbox.azure.mic_credentials();
        assert!(secret.len() >= 16, "a real secret to look for: {secret:?}");
        assert!(
            std::fs::read_dir(&components).unwrap().next().is_some(),
            "the components wrote their logs in the run directory"
        );
        assert_eq!(files_containing(&run, &secret), Vec::<PathBuf>::new());
        // MIC's process runs with it (start_with waited for it to serve), from a file that
        // exists, outside the run directory.
        let cloudconfig = sandbox.component_cloudconfig();
        assert!(!cloudconfig.starts_with(&run), "{}", cloudconfig.display());
        let text = std::fs::read_to_string(&cloudconfig).unwrap();
        assert!(text.contains(&secret));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&cloudconfig)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "azure.json readable by others: {mode:o}");
        }
        sandbox.stop().await;
        assert!(
            !cloudconfig.exists(),
            "{} left behind",
            cloudconfig.display()
        );
        assert_eq!(files_containing(&run, &secret), Vec::<PathBuf>::new());
    });
    let _ = std::fs::remove_dir_all(&run);
}
