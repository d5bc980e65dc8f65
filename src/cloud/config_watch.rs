//! azure.json reloaded when it changes, as the original did: credentials rotate (and a cloud
//! name is corrected) without restarting MIC.
//!
//! Both the file and the directory holding it are watched (inotify through `notify`): a rewrite
//! in place shows up on the file, which is what a single-file hostPath mount (the chart's
//! `mic.cloudConfig`) sees, and an atomic replace or a Kubernetes volume's symlink swap shows up
//! on the directory. Each event re-reads the file; a content that differs from the one in force and
//! validates is handed on, one that does not validate is logged and the configuration in force
//! stays, so a half-written file changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use notify::Watcher as _;

use super::Error;
use super::config::CloudConfig;

/// Keeps watching while alive.
pub struct ConfigWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for ConfigWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigWatch")
    }
}

impl ConfigWatch {
    /// Watches `path`, whose content now is `current`, calling `on_change` (on the watcher's
    /// thread) with each new valid configuration.
    ///
    /// # Errors
    /// [`Error::Config`] when the directory cannot be watched.
    pub fn start(
        path: &Path,
        current: Vec<u8>,
        on_change: impl Fn(CloudConfig) + Send + 'static,
    ) -> Result<Self, Error> {
        let file: PathBuf = path.to_path_buf();
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        let file_watched = file.clone();
        let in_force = Mutex::new(current);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(e) if e.kind.is_access() => {}
                Ok(_) => reread(&file, &in_force, &on_change),
                Err(e) => tracing::warn!(error = %e, "watching azure.json failed"),
            })
            .map_err(|e| Error::Config(format!("cannot watch {}: {e}", dir.display())))?;
        for target in [&dir, &file_watched] {
            watcher
                .watch(target, notify::RecursiveMode::NonRecursive)
                .map_err(|e| Error::Config(format!("cannot watch {}: {e}", target.display())))?;
        }
        Ok(Self { _watcher: watcher })
    }
}

fn reread(file: &Path, in_force: &Mutex<Vec<u8>>, on_change: &impl Fn(CloudConfig)) {
    let Ok(bytes) = std::fs::read(file) else {
        return; // replaced right now; the next event reads the new one
    };
    let mut now = in_force
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *now == bytes {
        return;
    }
    match CloudConfig::from_json(&String::from_utf8_lossy(&bytes)) {
        Ok(config) => {
            *now = bytes;
            drop(now);
            tracing::info!(path = %file.display(), cloud = %config.environment.name, "azure.json changed; cloud configuration reloaded");
            on_change(config);
        }
        Err(e) => tracing::warn!(
            path = %file.display(),
            error = %e,
            "azure.json changed but is not usable; keeping the configuration in force"
        ),
    }
}
