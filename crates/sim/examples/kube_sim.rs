//! Runs the Kubernetes API simulator alone, as a process: writes a kubeconfig kubectl uses as is
//! and an endpoints document, and serves until Ctrl-C or SIGTERM.
//! `cargo run -p aad-pod-identity-sim --example kube_sim -- /tmp/kubeconfig /tmp/endpoints.json`.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use aad_pod_identity_sim::kube::{self, KubeSim, KubeSimConfig};
use aad_pod_identity_sim::topology::Topology;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(std::path::PathBuf::from);
    run_kube_only(args.next(), args.next(), Topology::default()).await?;
    Ok(())
}

/// Starts the Kubernetes simulator for `topology`, writes the kubeconfig and the endpoints
/// JSON (`{"kubernetes": {"server": …, "kubeconfig": …}}`), prints both, and serves until
/// Ctrl-C or SIGTERM, then shuts down cleanly.
async fn run_kube_only(
    kubeconfig_out: Option<PathBuf>,
    endpoints_out: Option<PathBuf>,
    topology: Topology,
) -> Result<(), kube::Error> {
    // Listen for SIGTERM before announcing anything, so a quick stop is still a clean one.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(kube::Error::Signal)?;
    let sim = KubeSim::start(KubeSimConfig {
        topology,
        ..KubeSimConfig::default()
    })
    .await?;
    let kubeconfig_path = match &kubeconfig_out {
        Some(p) => {
            sim.write_kubeconfig(p)?;
            Some(p.display().to_string())
        }
        None => None,
    };
    let endpoints = json!({
        "kubernetes": {"server": sim.base_url(), "kubeconfig": kubeconfig_path}
    });
    let endpoints_text = serde_json::to_string_pretty(&endpoints).unwrap_or_default();
    if let Some(p) = &endpoints_out {
        std::fs::write(p, format!("{endpoints_text}\n")).map_err(|source| kube::Error::Write {
            path: p.display().to_string(),
            source,
        })?;
    }
    println!("Kubernetes API simulator: {}", sim.base_url());
    match &kubeconfig_out {
        Some(p) => println!(
            "kubeconfig written to {} (export KUBECONFIG={})",
            p.display(),
            p.display()
        ),
        None => print!("{}", sim.kubeconfig_yaml()),
    }
    println!("{endpoints_text}");
    let _ = std::io::stdout().flush();
    wait_for_signal(&mut term).await?;
    println!("shutting down");
    sim.shutdown().await;
    Ok(())
}

async fn wait_for_signal(term: &mut tokio::signal::unix::Signal) -> Result<(), kube::Error> {
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map_err(kube::Error::Signal),
        _ = term.recv() => Ok(()),
    }
}
