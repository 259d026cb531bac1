//! Durable file writes for key material. A crash at any point leaves either the old file or
//! the new one, never a torn one: the bytes go to a temporary file in the same directory,
//! are fsynced, renamed over the target, and the directory is fsynced so the rename itself
//! survives a power cut.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of private keys and anything embedding one (kubeconfigs, the token record).
pub const SECRET_MODE: u32 = 0o600;
/// Mode of certificates and public keys: readable, they are not secret.
pub const PUBLIC_MODE: u32 = 0o644;
/// Mode of every PKI directory.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents with mode 0700, and tightens an existing one to
/// 0700: a key directory other users can list leaks which keys exist and when they changed.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    let existed = dir.is_dir();
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| with_path(e, "creating", dir))?;
    if !existed && let Some(parent) = dir.parent() {
        // The new directory's entry must be durable before files in it are relied on.
        File::open(parent)
            .and_then(|p| p.sync_all())
            .map_err(|e| with_path(e, "syncing", parent))?;
    }
    let meta = fs::metadata(dir).map_err(|e| with_path(e, "reading", dir))?;
    if meta.permissions().mode() & 0o777 != DIR_MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| with_path(e, "setting mode of", dir))?;
    }
    Ok(())
}

/// Writes `data` to `path` atomically with `mode` (see the module doc).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover from a crashed run of a process with our pid would make create_new fail.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // Exactly `mode`, whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| with_path(e, "writing", path))
}

/// Reads a text file; `Ok(None)` when it does not exist.
pub fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(with_path(e, "reading", path)),
    }
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content_and_sets_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        ensure_dir(&sub).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), DIR_MODE);
        assert_eq!(mode(&dir.path().join("a")), DIR_MODE);
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&sub).unwrap();
        assert_eq!(mode(&sub), DIR_MODE, "an existing directory is tightened");

        let f = sub.join("k.key");
        write_atomic(&f, b"one", PUBLIC_MODE).unwrap();
        assert_eq!(mode(&f), PUBLIC_MODE);
        write_atomic(&f, b"two", SECRET_MODE).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(mode(&f), SECRET_MODE);
        assert_eq!(
            fs::read_dir(&sub).unwrap().count(),
            1,
            "no temporary file left"
        );
        assert_eq!(read_optional(&sub.join("none")).unwrap(), None);
        assert!(write_atomic(&dir.path().join("missing/x"), b"", SECRET_MODE).is_err());
    }
}
