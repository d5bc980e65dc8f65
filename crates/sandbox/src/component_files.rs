//! The files MIC's and NMI's processes read: the simulated API server's kubeconfig and the
//! simulated Azure's azure.json, which holds a service principal's client secret.
//!
//! They live in a private directory of their own under the system's temporary directory
//! (mode 0700, files 0600), never in a report or run directory: a report is copied and
//! committed as it is, and must hold no secret without anyone remembering to leave a file out.
//! The directory is removed when this value is dropped.

use aad_pod_identity_sim::azure::AzureSimHandle;
use aad_pod_identity_sim::kube::KubeSimHandle;
use std::path::{Path, PathBuf};

/// A private directory holding the components' kubeconfig and (for MIC processes) azure.json.
#[derive(Debug)]
pub struct ComponentFiles {
    dir: PathBuf,
}

impl ComponentFiles {
    /// Creates the directory (named for `what` and this process) and writes the kubeconfig.
    ///
    /// # Errors
    /// The path and cause when the directory or the kubeconfig cannot be written.
    pub fn create(what: &str, kube: &KubeSimHandle) -> Result<Self, (PathBuf, std::io::Error)> {
        let dir = std::env::temp_dir().join(format!(
            "aadpi-{what}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        private_dir(&dir).map_err(|e| (dir.clone(), e))?;
        let files = Self { dir };
        let kubeconfig = files.kubeconfig();
        write_private(&kubeconfig, kube.kubeconfig_yaml().as_bytes())
            .map_err(|e| (kubeconfig, e))?;
        Ok(files)
    }

    /// Writes the simulator's azure.json (with its client secret) and returns its path.
    ///
    /// # Errors
    /// The path and cause when the file cannot be written.
    pub fn write_cloudconfig(
        &self,
        azure: &AzureSimHandle,
    ) -> Result<PathBuf, (PathBuf, std::io::Error)> {
        let path = self.cloudconfig();
        write_private(&path, azure.azure_json().to_string().as_bytes())
            .map_err(|e| (path.clone(), e))?;
        Ok(path)
    }

    /// The kubeconfig of the simulated API server.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Where [`Self::write_cloudconfig`] writes azure.json.
    #[must_use]
    pub fn cloudconfig(&self) -> PathBuf {
        self.dir.join("azure.json")
    }

    /// The directory itself.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ComponentFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)?.write_all(bytes)
}
