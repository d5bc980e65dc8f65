//! Shared by the tests that run the sandbox binary as a subprocess: start it with a kubeconfig
//! and an endpoints document in a fresh directory, and stop it (SIGTERM, then kill) and remove
//! the directory when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sandbox binary.
pub struct SandboxProcess {
    child: Child,
    /// Its directory (kubeconfig, endpoints document), removed on drop.
    pub dir: PathBuf,
}

impl Drop for SandboxProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the sandbox with `extra` flags; returns once it announced itself, with its endpoints
/// document.
pub fn start_sandbox(name: &str, extra: &[&str]) -> (SandboxProcess, serde_json::Value) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let endpoints = dir.join("endpoints.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aad-pod-identity-sandbox"))
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .arg("--endpoints-out")
        .arg(&endpoints)
        .args(["--arm-latency=200ms", "--nmi-port=0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The sandbox announces itself once every component is serving.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("sandbox: {line}");
            if line.contains("sandbox is running") {
                let _ = tx.send(());
            }
        }
    });
    let proc = SandboxProcess { child, dir };
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the sandbox did not announce itself within 60 s");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    (proc, doc)
}

/// Runs kubectl with `kubeconfig`; returns (success, stdout, stderr).
#[allow(dead_code)]
pub fn kubectl_raw(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("kubectl must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
