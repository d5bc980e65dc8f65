//! A Kubernetes simulator with a kubeconfig for the real `kubectl`, in a fresh temporary
//! directory that also holds kubectl's discovery cache, so runs never share state.

use std::path::PathBuf;
use std::time::Duration;

use aad_pod_identity_sim::kube::{KubeSim, KubeSimConfig, KubeSimHandle};
use tokio::process::Command;

/// The simulator, its directory and the kubeconfig in it.
pub struct KubectlEnv {
    pub sim: KubeSimHandle,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

impl KubectlEnv {
    /// Starts a simulator with `config`; `tag` names its temporary directory.
    pub async fn start(config: KubeSimConfig, tag: &str) -> Self {
        let sim = KubeSim::start(config).await.expect("simulator starts");
        let dir = std::env::temp_dir().join(format!("{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        sim.write_kubeconfig(&kubeconfig).unwrap();
        Self {
            sim,
            dir,
            kubeconfig,
        }
    }

    /// `kubectl <args>` against the simulator (killed if dropped).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        c.env("KUBECACHEDIR", self.dir.join("cache"));
        c.kill_on_drop(true);
        c
    }

    /// Runs `kubectl <args>` (90 s at most): whether it succeeded, its stdout (trimmed) and its
    /// stderr.
    pub async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(90), self.cmd(args).output())
            .await
            .expect("kubectl finishes")
            .expect("kubectl must be installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// Stops the simulator and removes the directory.
    pub async fn stop(self) {
        self.sim.shutdown().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
