//! Temporary directories removed on drop, also while a test panics.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::unique;

/// A directory that is removed, with everything in it, on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory `podrouter-test-<tag>-<pid>-<n>` under the
    /// system temp dir.
    #[track_caller]
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(&format!("podrouter-test-{tag}-")));
        TempDir::create(p).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An empty directory at exactly `path`; whatever was there before (left
    /// by an earlier run of the same name) is removed first.
    pub fn create(path: impl Into<PathBuf>) -> io::Result<TempDir> {
        let p = path.into();
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p)
            .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", p.display())))?;
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_empty_and_removed_on_drop() {
        let d = TempDir::new("kit");
        let p = d.path().to_path_buf();
        assert!(p.is_dir());
        assert!(p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("podrouter-test-kit-"));
        fs::write(d.join("f"), "x").unwrap();
        let again = TempDir::create(&p).unwrap();
        assert!(!again.join("f").exists(), "create empties what was there");
        drop(again);
        assert!(!p.exists());
        drop(d);
        assert!(!p.exists());
    }
}
