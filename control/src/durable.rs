//! Replacing a state file so that a crash leaves either the old or the new
//! content, never a mix: write a temporary file beside it, flush it to
//! disk, rename it over the old one, then flush the directory (the rename).
//!
//! Invariant: the temporary file is `NAME.tmp` in the same directory (so
//! the rename stays within one filesystem); uninstall knows these names.
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Replaces `dir/name` with `body`, durably.
pub fn replace_file(dir: &Path, name: &str, body: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("podrouter-durable-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        replace_file(&dir, "x.json", b"one").unwrap();
        replace_file(&dir, "x.json", b"two").unwrap();
        assert_eq!(fs::read(dir.join("x.json")).unwrap(), b"two");
        assert!(!dir.join("x.json.tmp").exists());
        assert!(replace_file(&dir.join("missing"), "x.json", b"three").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
