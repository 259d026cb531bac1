//! Read-only mappings of whole files, shared by the downloads of the same file version: a
//! rack of machines fetching one kernel at once sets up and tears down its page-table
//! entries once, not once per machine.
//!
//! The mapped bytes go to the socket without being touched in user space: hyper writes body
//! frames with `writev` straight from them. That is what makes mapping safe against a file
//! truncated while served: the kernel's copy from a page past the new end fails that
//! `writev` with EFAULT (the connection is closed), where a user-space read would raise
//! SIGBUS and kill the process. So: no layer may read these frames (no compression, no
//! body inspection) on the file routes.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use bytes::Bytes;

pub struct FileMap {
    ptr: *mut libc::c_void,
    len: usize,
    file: File,
}

// SAFETY: the mapping is read-only for its whole life and unmapped once, on drop.
unsafe impl Send for FileMap {}
unsafe impl Sync for FileMap {}

/// One file version: device, inode, length, mtime in nanoseconds.
type Key = (u64, u64, u64, i128);

static MAPS: LazyLock<Mutex<HashMap<Key, Weak<FileMap>>>> = LazyLock::new(Mutex::default);

impl FileMap {
    /// The mapping of `file` (described by `meta`, non-empty), shared while any download of
    /// this version of the file runs. Blocking only briefly (no page is read here). Fails on
    /// file systems that cannot map files.
    pub fn shared(file: File, meta: &Metadata) -> io::Result<Arc<FileMap>> {
        let key = (
            meta.dev(),
            meta.ino(),
            meta.len(),
            i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        );
        let mut maps = MAPS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = maps.get(&key).and_then(Weak::upgrade) {
            return Ok(map);
        }
        let len = usize::try_from(meta.len()).map_err(io::Error::other)?;
        // SAFETY: a new read-only shared mapping of an open file; nothing aliases it mutably.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = Arc::new(FileMap { ptr, len, file });
        maps.retain(|_, m| m.strong_count() > 0);
        maps.insert(key, Arc::downgrade(&map));
        Ok(map)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes `offset..offset + len` as a frame that keeps the mapping alive. Faults the
    /// pages in first (reading from disk if they are not cached): blocking, call it from
    /// the blocking pool. Fails if the file is now shorter than the range.
    pub fn chunk(self: &Arc<Self>, offset: usize, len: usize) -> io::Result<Bytes> {
        assert!(offset + len <= self.len, "chunk within the mapping");
        let page = 4096;
        let start = offset / page * page;
        // SAFETY: the range lies within our mapping.
        let rc = unsafe {
            libc::madvise(
                self.ptr.cast::<u8>().add(start).cast(),
                offset + len - start,
                libc::MADV_POPULATE_READ,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Kernels before 5.14 lack MADV_POPULATE_READ; the copy then faults pages in.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
        if self.file.metadata()?.len() < (offset + len) as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Bytes::from_owner(Window {
            map: self.clone(),
            offset,
            len,
        }))
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: exactly the region mmap returned; no Window outlives its Arc.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A frame's view of a mapping.
struct Window {
    map: Arc<FileMap>,
    offset: usize,
    len: usize,
}

impl AsRef<[u8]> for Window {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: within the mapping, which lives as long as `self.map`.
        unsafe { std::slice::from_raw_parts(self.map.ptr.cast::<u8>().add(self.offset), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(path: &std::path::Path) -> Arc<FileMap> {
        let file = File::open(path).unwrap();
        let meta = file.metadata().unwrap();
        FileMap::shared(file, &meta).unwrap()
    }

    #[test]
    fn downloads_of_one_version_share_a_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let (a, b) = (map_of(&path), map_of(&path));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&a.chunk(9_000, 1_000).unwrap()[..], &[7u8; 1_000][..]);
        // A new version (here: another length) gets its own mapping.
        std::fs::write(&path, vec![8u8; 20_000]).unwrap();
        let c = map_of(&path);
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.len(), 20_000);
        // The old mapping now reaches past the file's end: its chunks fail instead of
        // handing out bytes that are no longer there.
        std::fs::write(&path, b"short").unwrap();
        assert!(a.chunk(9_000, 1_000).is_err());
    }
}
