//! Helpers for the unit tests.

use std::path::{Path, PathBuf};

/// A temporary directory for configuration files.
pub(crate) struct TempConfig {
    dir: tempfile::TempDir,
}

impl TempConfig {
    pub(crate) fn new() -> TempConfig {
        TempConfig {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` in the directory and returns its path.
    pub(crate) fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        write(&path, text);
        path
    }

    /// `text` with the directory prefix removed from paths.
    pub(crate) fn strip(&self, text: &str) -> String {
        text.replace(&format!("{}/", self.dir.path().display()), "")
    }
}

pub(crate) fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write test file");
}
