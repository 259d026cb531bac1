//! The registry's files under its storage directory:
//!
//! ```text
//! blobs/sha256/ab/<hex>                                  content-addressed, immutable
//! repositories/<name>/_manifests/revisions/sha256/<hex>  a manifest in this repository
//!                                                        (the file holds its media type)
//! repositories/<name>/_manifests/tags/<tag>              the tag's manifest digest
//! uploads/<kind>-<random>                                bytes being received
//! .lock                                                  flock: serve/import shared, gc exclusive
//! ```
//!
//! Every blob is written to `uploads/` (same file system), hashed while written, fsynced,
//! checked against the digest it claims and only then renamed into `blobs/`: a blob that is
//! visible is complete and correct. Two writers of the same blob each write their own
//! temporary file and the second rename replaces identical bytes, so concurrent uploads are
//! safe. Links and tags are small files replaced by rename, so each change is atomic. Names,
//! tags and digests reaching this module were validated by `path`, so they cannot leave the
//! directory.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::manifest;
use super::path::{self, Digest};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("content does not match digest {expected} (got {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Clone, Debug)]
pub struct Storage {
    root: PathBuf,
}

/// Holds the storage lock until dropped.
pub struct StorageLock(#[allow(dead_code)] File);

/// A random hex id (upload sessions, temporary files).
pub fn random_id() -> String {
    let mut raw = [0u8; 16];
    if getrandom::fill(&mut raw).is_err() {
        // Only uniqueness matters here; fall back to time and a counter.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        raw[..8].copy_from_slice(&t.to_le_bytes());
        raw[8..].copy_from_slice(
            &N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes(),
        );
    }
    path::hex(&raw)
}

impl Storage {
    /// Creates the directory layout when missing.
    pub fn open(root: &Path) -> io::Result<Storage> {
        for d in ["blobs/sha256", "repositories", "uploads"] {
            fs::create_dir_all(root.join(d))?;
        }
        Ok(Storage {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `flock` on `.lock`: `serve` and `import` hold it shared, `gc` exclusive, so garbage
    /// collection never runs while anything may be uploading or linking. Never waits.
    pub fn lock(&self, exclusive: bool) -> io::Result<StorageLock> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".lock"))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        } | libc::LOCK_NB;
        if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(StorageLock(f))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// The blob's size, if stored.
    pub fn blob_size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(d))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// A new temporary file in `uploads/` (`kind` tells whose it is after a crash).
    pub fn temp_path(&self, kind: &str) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{kind}-{}", random_id()))
    }

    /// Removes leftovers of a previous run's uploads and fetches (`kind-*` files).
    pub fn clean_temp(&self, kinds: &[&str]) -> io::Result<usize> {
        let mut n = 0;
        for e in fs::read_dir(self.root.join("uploads"))? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if kinds.iter().any(|k| name.starts_with(&format!("{k}-"))) {
                fs::remove_file(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Moves a fully written, fsynced temporary file into place as blob `actual`, after
    /// checking it is the `expected` one. A mismatch removes the file: nothing is stored.
    pub fn commit_blob(
        &self,
        tmp: &Path,
        actual: &Digest,
        expected: Option<&Digest>,
    ) -> Result<(), StorageError> {
        if let Some(expected) = expected
            && expected != actual
        {
            let _ = fs::remove_file(tmp);
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            });
        }
        let dest = self.blob_path(actual);
        if dest.is_file() {
            fs::remove_file(tmp)?;
            return Ok(());
        }
        let dir = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir)?;
        fs::rename(tmp, &dest)?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// Stores bytes held in memory (manifests).
    pub fn put_blob_bytes(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<Digest, StorageError> {
        self.put_blob_reader(&mut &bytes[..], expected, "mem")
            .map(|(d, _)| d)
    }

    /// Stores what `r` yields, hashing as it goes.
    pub fn put_blob_reader(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
        kind: &str,
    ) -> Result<(Digest, u64), StorageError> {
        let tmp = TempFile(self.temp_path(kind));
        let mut f = File::create(&tmp.0)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut len = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n])?;
            len += n as u64;
        }
        f.sync_all()?;
        drop(f);
        let actual = Digest::from_sha256(&hasher.finalize());
        self.commit_blob(&tmp.0, &actual, expected)?;
        std::mem::forget(tmp);
        Ok((actual, len))
    }

    pub fn read_blob(&self, d: &Digest) -> io::Result<Vec<u8>> {
        fs::read(self.blob_path(d))
    }

    fn manifests_dir(&self, repo: &str) -> PathBuf {
        self.root.join("repositories").join(repo).join("_manifests")
    }

    /// Records that `repo` holds manifest `d` of `media_type`.
    pub fn link_manifest(&self, repo: &str, d: &Digest, media_type: &str) -> io::Result<()> {
        let dir = self.manifests_dir(repo).join("revisions/sha256");
        write_atomic(&dir, d.hex(), media_type.as_bytes())
    }

    /// The media type of manifest `d` in `repo`, if linked there and its blob is present.
    pub fn manifest(&self, repo: &str, d: &Digest) -> Option<String> {
        let link = self
            .manifests_dir(repo)
            .join("revisions/sha256")
            .join(d.hex());
        let mt = fs::read_to_string(link).ok()?;
        self.blob_size(d).map(|_| mt)
    }

    pub fn set_tag(&self, repo: &str, tag: &str, d: &Digest) -> io::Result<()> {
        write_atomic(
            &self.manifests_dir(repo).join("tags"),
            tag,
            d.as_str().as_bytes(),
        )
    }

    pub fn tag(&self, repo: &str, tag: &str) -> Option<Digest> {
        let s = fs::read_to_string(self.manifests_dir(repo).join("tags").join(tag)).ok()?;
        Digest::parse(s.trim()).ok()
    }

    /// Sorted tags, or `None` when the repository does not exist.
    pub fn tags(&self, repo: &str) -> Option<Vec<String>> {
        let dir = self.manifests_dir(repo);
        if !dir.is_dir() {
            return None;
        }
        let mut tags: Vec<String> = fs::read_dir(dir.join("tags"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|t| path::valid_tag(t))
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        Some(tags)
    }

    /// Removes a tag; `false` when it did not exist.
    pub fn delete_tag(&self, repo: &str, tag: &str) -> io::Result<bool> {
        match fs::remove_file(self.manifests_dir(repo).join("tags").join(tag)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Unlinks manifest `d` from `repo` with the tags pointing at it; the blob itself goes at
    /// the next garbage collection. `false` when it was not linked.
    pub fn delete_manifest(&self, repo: &str, d: &Digest) -> io::Result<bool> {
        let dir = self.manifests_dir(repo);
        for tag in self.tags(repo).unwrap_or_default() {
            if self.tag(repo, &tag).as_ref() == Some(d) {
                self.delete_tag(repo, &tag)?;
            }
        }
        match fs::remove_file(dir.join("revisions/sha256").join(d.hex())) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every repository, sorted.
    pub fn repositories(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        walk_repos(&self.root.join("repositories"), "", &mut out)?;
        out.sort();
        Ok(out)
    }

    /// Manifests linked in `repo`: (digest, media type).
    pub fn revisions(&self, repo: &str) -> io::Result<Vec<(Digest, String)>> {
        let dir = self.manifests_dir(repo).join("revisions/sha256");
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(d) = Digest::parse(&format!("sha256:{name}")) {
                out.push((d, fs::read_to_string(e.path()).unwrap_or_default()));
            }
        }
        Ok(out)
    }

    /// Removes every blob no linked manifest references (and leftover temporary files).
    /// Call it only under the exclusive lock (`lock(true)`): then no upload, fetch or import
    /// is in progress, so nothing about to be referenced can be removed.
    pub fn gc(&self, dry_run: bool) -> io::Result<GcReport> {
        let mut keep = std::collections::HashSet::new();
        for repo in self.repositories()? {
            for (d, mt) in self.revisions(&repo)? {
                keep.insert(d.hex().to_string());
                let Ok(bytes) = self.read_blob(&d) else {
                    continue;
                };
                if let Ok(p) = manifest::parse(&bytes, Some(&mt)) {
                    keep.extend(p.blobs.iter().map(|b| b.hex().to_string()));
                    keep.extend(p.manifests.iter().map(|(b, _)| b.hex().to_string()));
                }
            }
        }
        let mut report = GcReport::default();
        for shard in fs::read_dir(self.root.join("blobs/sha256"))? {
            let shard = shard?.path();
            if !shard.is_dir() {
                continue;
            }
            for e in fs::read_dir(&shard)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    report.kept += 1;
                    continue;
                }
                report.removed += 1;
                report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                if !dry_run {
                    fs::remove_file(e.path())?;
                }
            }
        }
        if !dry_run {
            report.temp_files = self.clean_temp(&["up", "pt", "mem", "imp"])?;
        }
        Ok(report)
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub kept: usize,
    pub removed: usize,
    pub bytes: u64,
    pub temp_files: usize,
}

fn walk_repos(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "_manifests" {
            if !prefix.is_empty() {
                out.push(prefix.to_string());
            }
            continue;
        }
        if !path::valid_component(&name) {
            continue;
        }
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        walk_repos(&e.path(), &full, out)?;
    }
    Ok(())
}

/// Replaces `dir/name` with `bytes` by writing a temporary file and renaming it.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = TempFile(dir.join(format!(".{name}.{}", random_id())));
    let mut f = File::create(&tmp.0)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp.0, dir.join(name))?;
    std::mem::forget(tmp);
    File::open(dir)?.sync_all()
}

/// Removes the file on drop unless forgotten (an error path leaves nothing behind).
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_links_tags_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let layer = s.put_blob_bytes(b"layer", None).unwrap();
        let orphan = s.put_blob_bytes(b"orphan", None).unwrap();
        assert_eq!(s.blob_size(&layer), Some(5));
        let wrong = Digest::parse(&format!("sha256:{}", "0".repeat(64))).unwrap();
        assert!(matches!(
            s.put_blob_bytes(b"x", Some(&wrong)),
            Err(StorageError::DigestMismatch { .. })
        ));
        assert_eq!(s.blob_size(&wrong), None);
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"digest":"{layer}","size":5}},"layers":[]}}"#,
            manifest::OCI_MANIFEST
        );
        let md = s.put_blob_bytes(m.as_bytes(), None).unwrap();
        s.link_manifest("a/b", &md, manifest::OCI_MANIFEST).unwrap();
        s.set_tag("a/b", "v1", &md).unwrap();
        assert_eq!(s.tag("a/b", "v1"), Some(md.clone()));
        assert_eq!(s.tags("a/b"), Some(vec!["v1".to_string()]));
        assert_eq!(s.tags("a"), None);
        assert_eq!(s.repositories().unwrap(), vec!["a/b".to_string()]);
        assert_eq!(
            s.manifest("a/b", &md).as_deref(),
            Some(manifest::OCI_MANIFEST)
        );
        // No temporary files remain after writes, failed or not.
        assert_eq!(fs::read_dir(dir.path().join("uploads")).unwrap().count(), 0);

        let _lock = s.lock(true).unwrap();
        let r = s.gc(false).unwrap();
        assert_eq!((r.removed, r.kept), (1, 2));
        assert_eq!(s.blob_size(&orphan), None);
        assert_eq!(s.blob_size(&layer), Some(5));
        // Unlinking the manifest frees everything.
        assert!(s.delete_manifest("a/b", &md).unwrap());
        assert_eq!(s.tags("a/b"), Some(vec![]));
        assert_eq!(s.gc(false).unwrap().removed, 2);
    }

    #[test]
    fn concurrent_writers_of_one_blob() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let digests: Vec<Digest> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| s.put_blob_reader(&mut &data[..], None, "up").unwrap().0))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(digests.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(s.read_blob(&digests[0]).unwrap(), data);
        assert_eq!(fs::read_dir(dir.path().join("uploads")).unwrap().count(), 0);
    }

    #[test]
    fn gc_lock_excludes_serve() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path()).unwrap();
        let shared = s.lock(false).unwrap();
        let _also_shared = s.lock(false).unwrap();
        assert!(s.lock(true).is_err());
        drop(shared);
        drop(_also_shared);
        let _ex = s.lock(true).unwrap();
        assert!(s.lock(false).is_err());
    }
}
