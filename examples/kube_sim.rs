//! Runs the Kubernetes simulator alone (what `aad-pod-identity sandbox` does for now):
//! `cargo run --example kube_sim -- /tmp/kubeconfig /tmp/endpoints.json`.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(std::path::PathBuf::from);
    aad_pod_identity::sandbox::run::run_kube_only(
        args.next(),
        args.next(),
        aad_pod_identity::sandbox::topology::Topology::default(),
    )
    .await?;
    Ok(())
}
