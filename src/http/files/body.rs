//! A response body that sends a byte range of a file as large frames cut from a shared,
//! read-only mapping of it ([`FileMap`]), the pages faulted in on the blocking pool one frame
//! ahead of the socket.
//!
//! What was measured (docs/benchmarks.md has the figures): `tokio::fs` + `ReaderStream`
//! reads 8-16 KiB per blocking-pool round trip, far below what the socket takes. 1-4 MiB
//! `pread`s into reused buffers cost two copies per byte (page cache to buffer, buffer to
//! socket). A mapping per frame (`MAP_POPULATE`) saves the first copy but spends as much
//! setting up and tearing down page tables. One mapping per file version, shared by every
//! download of it (and kept [`LINGER`] after the last one) and populated frame by frame,
//! leaves one copy per byte, and the downloads of the same kernel or initrd by a rack of
//! machines booting together pay for the page tables once.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use super::Stats;
use super::map::FileMap;

/// Bytes per frame: large enough that the pool round trip per frame is noise, small enough
/// that hyper (which buffers about one frame ahead) does not hold much of the file.
pub const CHUNK: usize = 1 << 20;

/// How long a mapping outlives the download that used it last: machines of a rack boot a
/// few seconds apart, and the next one's download then finds the page tables built. Bounded,
/// so a replaced or deleted file's old version is released soon after.
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

pub struct FileBody {
    map: Arc<FileMap>,
    /// Offset of the next frame to prepare.
    next: u64,
    end: u64,
    /// Bytes not yet handed out as frames.
    remaining: u64,
    chunk: usize,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    stats: Arc<Stats>,
}

impl FileBody {
    /// The bytes `start..end` of the mapped file.
    pub fn new(map: Arc<FileMap>, start: u64, end: u64, stats: Arc<Stats>) -> FileBody {
        FileBody::with_chunk(map, start, end, CHUNK, stats)
    }

    pub fn with_chunk(
        map: Arc<FileMap>,
        start: u64,
        end: u64,
        chunk: usize,
        stats: Arc<Stats>,
    ) -> FileBody {
        assert!(
            start <= end && end <= map.len() as u64,
            "range within the file"
        );
        FileBody {
            map,
            next: start,
            end,
            remaining: end - start,
            chunk: chunk.max(1),
            reading: None,
            stats,
        }
    }

    fn start_read(&mut self) {
        let len = (self.end - self.next).min(self.chunk as u64) as usize;
        // Within the mapping, hence within usize.
        let offset = self.next as usize;
        self.next += len as u64;
        let map = self.map.clone();
        // A file that shrank after its length was sent cannot be completed: the error
        // aborts the connection, so the client sees a short transfer.
        self.reading = Some(tokio::task::spawn_blocking(move || map.chunk(offset, len)));
    }
}

impl Drop for FileBody {
    fn drop(&mut self) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let map = self.map.clone();
            rt.spawn(async move {
                tokio::time::sleep(LINGER).await;
                // Unmapping a large file takes a moment: not on a worker thread.
                let _ = tokio::task::spawn_blocking(move || drop(map)).await;
            });
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.reading.is_none() {
            if this.next >= this.end {
                return Poll::Ready(None);
            }
            this.start_read();
        }
        let reading = this.reading.as_mut().expect("a read is in flight");
        let done = ready!(Pin::new(reading).poll(cx));
        this.reading = None;
        let buf = match done {
            Ok(Ok(buf)) => buf,
            Ok(Err(e)) => return Poll::Ready(Some(Err(e))),
            Err(e) => return Poll::Ready(Some(Err(io::Error::other(e)))),
        };
        this.remaining -= buf.len() as u64;
        this.stats
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        // Read ahead: the next frame's pages come in while hyper writes this one.
        if this.next < this.end {
            this.start_read();
        }
        Poll::Ready(Some(Ok(Frame::data(buf))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use std::io::Write;

    fn file_of(n: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    fn map(f: &tempfile::NamedTempFile) -> Arc<FileMap> {
        let file = f.reopen().unwrap();
        let meta = file.metadata().unwrap();
        FileMap::shared(file, &meta).unwrap()
    }

    async fn collect(body: FileBody) -> io::Result<Vec<u8>> {
        Ok(body.collect().await?.to_bytes().to_vec())
    }

    #[tokio::test]
    async fn reads_ranges_across_chunk_boundaries() {
        let (f, data) = file_of(10_000);
        for (start, end, chunk) in [
            (0, 10_000, 1000),
            (1, 9_999, 333),
            (500, 501, 64),
            (0, 10_000, 1 << 20),
        ] {
            let stats = Arc::new(Stats::default());
            let body = FileBody::with_chunk(map(&f), start, end, chunk, stats.clone());
            assert_eq!(body.size_hint().exact(), Some(end - start));
            let got = collect(body).await.unwrap();
            assert_eq!(got, &data[start as usize..end as usize]);
            assert_eq!(stats.bytes.load(Ordering::Relaxed), end - start);
        }
    }

    #[tokio::test]
    async fn empty_range_ends_at_once() {
        let (f, _) = file_of(10);
        let body = FileBody::new(map(&f), 10, 10, Arc::default());
        assert!(body.is_end_stream());
        assert!(collect(body).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_that_shrank_fails_the_body() {
        let (f, _) = file_of(10_000);
        let body = FileBody::with_chunk(map(&f), 0, 10_000, 4096, Arc::default());
        f.as_file().set_len(5000).unwrap();
        assert!(collect(body).await.is_err());
    }
}
