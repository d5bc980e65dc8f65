//! Writing the generated CRDs to a directory, or checking a directory against them.

use std::path::{Path, PathBuf};

use super::{all_crds, render_crd_yaml};

/// What went wrong writing or checking the CRD files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Committed files differ from the generated ones.
    #[error("CRDs in {dir} are out of date (run `aad-pod-identity crdgen`): {files:?}")]
    Drift {
        /// The directory checked.
        dir: PathBuf,
        /// Files missing or different.
        files: Vec<String>,
    },
}

/// Writes every CRD into `dir` (created if missing); returns the paths written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    all_crds()
        .iter()
        .map(|f| {
            let path = dir.join(&f.file_name);
            std::fs::write(&path, render_crd_yaml(f)).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

/// Checks that every generated CRD is in `dir` with exactly the generated content.
pub fn check_all(dir: &Path) -> Result<(), Error> {
    let mut files = Vec::new();
    for f in all_crds() {
        let path = dir.join(&f.file_name);
        match std::fs::read_to_string(&path) {
            Ok(text) if text == render_crd_yaml(&f) => {}
            Ok(_) => files.push(format!("{} differs", f.file_name)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                files.push(format!("{} is missing", f.file_name));
            }
            Err(source) => return Err(Error::Io { path, source }),
        }
    }
    if files.is_empty() {
        Ok(())
    } else {
        Err(Error::Drift {
            dir: dir.to_path_buf(),
            files,
        })
    }
}
