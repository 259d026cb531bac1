//! Writing a blob that arrives over the network: bytes go to a temporary file in `uploads/`
//! and through SHA-256 as they arrive; `finish` fsyncs, checks the digest and renames the
//! file into place. Dropping an unfinished writer (client gone, wrong digest, error)
//! deletes the temporary file, so nothing partial remains.

use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::path::Digest;
use super::storage::{Storage, StorageError, TempFile};

pub struct BlobWriter {
    file: BufWriter<tokio::fs::File>,
    tmp: TempFile,
    hasher: Sha256,
    len: u64,
}

impl BlobWriter {
    /// A new temporary file named `<kind>-<random>`.
    pub async fn create(storage: &Storage, kind: &str) -> std::io::Result<BlobWriter> {
        let tmp = TempFile(storage.temp_path(kind));
        let file = tokio::fs::File::create(&tmp.0).await?;
        Ok(BlobWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            tmp,
            hasher: Sha256::new(),
            len: 0,
        })
    }

    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.file.write_all(chunk).await?;
        self.len += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The temporary file (readers may follow it while it grows).
    pub fn path(&self) -> &std::path::Path {
        &self.tmp.0
    }

    /// Hands what is buffered to the file, so readers of the file see it.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().await
    }

    /// Makes the blob visible if its content matches `expected`; returns its digest and
    /// size. On any error the temporary file is gone.
    pub async fn finish(
        mut self,
        storage: &Storage,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StorageError> {
        self.file.flush().await?;
        let file = self.file.into_inner();
        file.sync_all().await?;
        drop(file);
        let actual = Digest::from_sha256(&self.hasher.finalize());
        let (storage, tmp, expected_owned) = (storage.clone(), self.tmp, expected.cloned());
        let d = actual.clone();
        tokio::task::spawn_blocking(move || {
            let r = storage.commit_blob(&tmp.0, &d, expected_owned.as_ref());
            if r.is_ok() {
                std::mem::forget(tmp);
            }
            r
        })
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
        Ok((actual, self.len))
    }
}
