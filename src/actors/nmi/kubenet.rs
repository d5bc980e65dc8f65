//! The original's guard against kubenet: NMI refuses to start on a node whose kubelet uses the
//! kubenet network plugin unless `--allow-network-plugin-kubenet` says the operator accepted the
//! risk.
//!
//! On kubenet, pods share a Linux bridge, and a pod with `NET_RAW` can spoof another pod's
//! address (ARP or IP), so NMI, which tells pods apart by source address, could hand it the
//! other pod's token. The original detected kubenet as this module does: the kubelet's defaults
//! file (`--kubelet-config`, `/etc/default/kubelet` on AKS nodes) contains
//! `--network-plugin=kubenet`. A missing file cannot say; NMI then starts and says so.

use std::path::{Path, PathBuf};

/// What the original looks for in the kubelet's defaults file.
pub const KUBENET_FLAG: &str = "--network-plugin=kubenet";

/// Why NMI refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node runs kubenet and the operator did not allow it.
    #[error(
        "the kubelet of this node uses the kubenet network plugin ({path} contains {KUBENET_FLAG}), where a pod with NET_RAW can pose as another pod; \
         drop NET_RAW from workloads and start NMI with --allow-network-plugin-kubenet to run anyway"
    )]
    Kubenet {
        /// The kubelet file read.
        path: PathBuf,
    },
    /// The kubelet file exists but cannot be read.
    #[error(
        "cannot read the kubelet configuration {path} (--kubelet-config) to tell whether the node uses kubenet"
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether the kubelet configuration text selects kubenet.
#[must_use]
pub fn is_kubenet(kubelet_config: &str) -> bool {
    kubelet_config.contains(KUBENET_FLAG)
}

/// Refuses kubenet unless `allow`: reads `path` and fails when it selects kubenet.
///
/// # Errors
/// [`Error::Kubenet`] on a kubenet node, [`Error::Read`] when the file exists but is unreadable.
pub fn check(path: &Path, allow: bool) -> Result<(), Error> {
    if allow {
        return Ok(());
    }
    match std::fs::read_to_string(path) {
        Ok(text) if is_kubenet(&text) => Err(Error::Kubenet {
            path: path.to_path_buf(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "no kubelet configuration file: cannot tell whether this node uses kubenet");
            Ok(())
        }
        Err(source) => Err(Error::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubenet_is_recognised_in_the_kubelet_flags() {
        let aks = "KUBELET_FLAGS=--address=0.0.0.0 --network-plugin=kubenet --node-labels=x\n";
        assert!(is_kubenet(aks));
        assert!(!is_kubenet(
            "KUBELET_FLAGS=--network-plugin=cni --max-pods=30\n"
        ));
        assert!(!is_kubenet(""));
    }

    #[test]
    fn a_kubenet_node_is_refused_unless_allowed_and_a_missing_file_is_not() {
        let dir = std::env::temp_dir().join(format!("kubenet-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kubelet");
        std::fs::write(&file, "KUBELET_FLAGS=--network-plugin=kubenet\n").unwrap();
        let err = check(&file, false).unwrap_err();
        assert!(
            err.to_string().contains("--allow-network-plugin-kubenet"),
            "{err}"
        );
        assert!(check(&file, true).is_ok());
        std::fs::write(&file, "KUBELET_FLAGS=--network-plugin=cni\n").unwrap();
        assert!(check(&file, false).is_ok());
        assert!(check(&dir.join("absent"), false).is_ok());
        // A directory where the file should be cannot be read.
        assert!(matches!(check(&dir, false), Err(Error::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
