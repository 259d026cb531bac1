//! A response body that reads a byte range of a file in large chunks with `pread` on the
//! blocking pool, one chunk ahead of the socket.
//!
//! Why not `tokio::fs` + `ReaderStream`: its 8-16 KiB reads cost one blocking-pool round trip
//! each, which caps a 300 MiB download far below what the socket takes. Why not mmap: a
//! file truncated while it is being served (`cp new-kernel vmlinuz` rewrites in place)
//! turns into SIGBUS for the whole process. Large preads keep the cost to one memcpy per
//! byte and one pool round trip per chunk; buffers are reused once hyper has written them,
//! so steady state allocates nothing. Measurements are in docs/benchmarks.md.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::task::JoinHandle;

use super::Stats;

const MMAP: bool = true;

/// A read-only, populated mapping of `len` bytes of `file` at `offset`, as `Bytes`.
fn map(file: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let page = 4096u64;
    let aligned = offset & !(page - 1);
    let skip = (offset - aligned) as usize;
    let map_len = len + skip;
    // SAFETY: a fresh read-only shared mapping; nothing else aliases it mutably.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            aligned as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let m = Mapping {
        ptr: ptr.cast(),
        map_len,
        skip,
        len,
    };
    if file.metadata()?.len() < offset + len as u64 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Bytes::from_owner(m))
}

struct Mapping {
    ptr: *mut u8,
    map_len: usize,
    skip: usize,
    len: usize,
}
// SAFETY: the mapping is read-only and owned; it is unmapped once, on drop.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+map_len is mapped for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr.add(self.skip), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the region mmap returned.
        unsafe { libc::munmap(self.ptr.cast(), self.map_len) };
    }
}

/// Bytes per read (and per body frame).
pub const CHUNK: usize = 1 << 20;

/// Buffers handed to hyper that we keep a handle on, to reuse them once hyper drops its own.
const KEEP: usize = 3;

pub struct FileBody {
    file: Arc<File>,
    /// Offset of the next read to start.
    next: u64,
    end: u64,
    /// Bytes not yet handed out as frames.
    remaining: u64,
    chunk: usize,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    sent: VecDeque<Bytes>,
    stats: Arc<Stats>,
}

impl FileBody {
    /// The bytes `start..end` of `file`; `end` must not exceed the file's length at open.
    pub fn new(file: File, start: u64, end: u64, stats: Arc<Stats>) -> FileBody {
        FileBody::with_chunk(file, start, end, CHUNK, stats)
    }

    pub fn with_chunk(
        file: File,
        start: u64,
        end: u64,
        chunk: usize,
        stats: Arc<Stats>,
    ) -> FileBody {
        FileBody {
            file: Arc::new(file),
            next: start,
            end,
            remaining: end - start,
            chunk: chunk.max(1),
            reading: None,
            sent: VecDeque::with_capacity(KEEP),
            stats,
        }
    }

    /// A buffer of `len` bytes: a previously sent one that hyper has released, else a new one.
    fn buffer(&mut self, len: usize) -> BytesMut {
        if (self.sent.len() >= KEEP || self.sent.front().is_some_and(|b| b.is_unique()))
            && let Some(old) = self.sent.pop_front()
            && let Ok(mut buf) = old.try_into_mut()
            && buf.len() >= len
        {
            buf.truncate(len);
            return buf;
        }
        BytesMut::zeroed(len)
    }

    fn start_read(&mut self) {
        let len = (self.end - self.next).min(self.chunk as u64) as usize;
        let (file, offset) = (self.file.clone(), self.next);
        self.next += len as u64;
        if MMAP {
            self.reading = Some(tokio::task::spawn_blocking(move || map(&file, offset, len)));
            return;
        }
        let mut buf = self.buffer(len);
        self.reading = Some(tokio::task::spawn_blocking(move || {
            // A file that shrank after its length was sent cannot be completed: the error
            // aborts the connection, so the client sees a short transfer, never wrong bytes
            // presented as whole.
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf.freeze())
        }));
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
        this.sent.push_back(buf.clone());
        // Read ahead: the next chunk comes off the page cache while hyper writes this one.
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
            let body = FileBody::with_chunk(f.reopen().unwrap(), start, end, chunk, stats.clone());
            assert_eq!(body.size_hint().exact(), Some(end - start));
            let got = collect(body).await.unwrap();
            assert_eq!(got, &data[start as usize..end as usize]);
            assert_eq!(stats.bytes.load(Ordering::Relaxed), end - start);
        }
    }

    #[tokio::test]
    async fn empty_range_ends_at_once() {
        let (f, _) = file_of(10);
        let body = FileBody::new(f.reopen().unwrap(), 10, 10, Arc::default());
        assert!(body.is_end_stream());
        assert!(collect(body).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_file_that_shrank_fails_the_body() {
        let (f, _) = file_of(10_000);
        let body = FileBody::with_chunk(f.reopen().unwrap(), 0, 10_000, 4096, Arc::default());
        f.as_file().set_len(5000).unwrap();
        assert!(collect(body).await.is_err());
    }
}
