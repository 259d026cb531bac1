//! Serving a blob while it is still being downloaded from the upstream. The download
//! publishes its temporary file and how much of it is written; clients that miss the same
//! blob read the file as it grows instead of waiting for the whole download, so bytes flow
//! to every node at once (a multi-GB layer from a slow upstream would otherwise look stalled
//! to containerd for minutes). The digest is only known at the end: when it does not match,
//! followers' bodies end in an error, which clients see as a failed download, and nothing
//! is stored.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::path::Digest;
use super::writer::BlobWriter;
use super::{Counters, Registry};

/// Followers are woken at most once per this many bytes.
const STEP: u64 = 1 << 20;
const CHUNK: u64 = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Running,
    Done,
    Failed,
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    path: PathBuf,
    /// The upstream's Content-Length.
    total: u64,
    /// Bytes in the file that readers can see.
    written: u64,
    state: State,
}

/// Publishes one download; dropped without `done` it tells followers it failed. Either way
/// the download leaves the registry's table.
pub(crate) struct Publisher {
    reg: Arc<Registry>,
    key: String,
    tx: watch::Sender<Progress>,
    last: u64,
}

impl Publisher {
    pub fn start(reg: Arc<Registry>, d: &Digest, w: &BlobWriter, total: u64) -> Publisher {
        let (tx, rx) = watch::channel(Progress {
            path: w.path().to_path_buf(),
            total,
            written: 0,
            state: State::Running,
        });
        reg.downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.as_str().to_string(), rx);
        reg.download_started.notify_waiters();
        Publisher {
            reg,
            key: d.as_str().to_string(),
            tx,
            last: 0,
        }
    }

    /// Makes what `w` holds visible to followers (every `STEP` bytes).
    pub async fn advance(&mut self, w: &mut BlobWriter) -> std::io::Result<()> {
        if w.len() - self.last >= STEP {
            w.flush().await?;
            self.last = w.len();
            self.tx.send_modify(|p| p.written = self.last);
        }
        Ok(())
    }

    /// The blob is verified and in place.
    pub fn done(self) {
        self.tx.send_modify(|p| {
            p.written = p.total;
            p.state = State::Done;
        });
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.tx.send_if_modified(|p| {
            if p.state == State::Running {
                p.state = State::Failed;
                true
            } else {
                false
            }
        });
        self.reg
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// A body following the download of `d` in progress, with its length; `None` when no
/// download of it is running (the caller then waits for the fetch and serves the file).
pub(crate) async fn follow(reg: &Arc<Registry>, d: &Digest) -> Option<(u64, Body)> {
    let rx = reg
        .downloads
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(d.as_str())
        .cloned()?;
    let p = rx.borrow().clone();
    if p.state == State::Failed {
        return None;
    }
    // Renamed into place already (the download is done): the caller serves the blob file.
    let file = tokio::fs::File::open(&p.path).await.ok()?;
    let total = p.total;
    Counters::add(&reg.counters.followed, 1);
    let state = (file, rx, 0u64, reg.clone());
    let stream =
        futures_util::stream::unfold(state, move |(mut file, mut rx, sent, reg)| async move {
            if sent >= total {
                return None;
            }
            loop {
                let p = rx.borrow_and_update().clone();
                let available = match p.state {
                    // The last byte waits for the digest check: a body that completes
                    // cleanly is always verified content.
                    State::Running => p.written.min(total.saturating_sub(1)),
                    State::Done => total,
                    State::Failed => {
                        let e = std::io::Error::other("upstream download failed");
                        return Some((Err(e), (file, rx, total, reg)));
                    }
                };
                if available > sent {
                    let n = (available - sent).min(CHUNK) as usize;
                    let mut buf = vec![0u8; n];
                    if let Err(e) = file.read_exact(&mut buf).await {
                        return Some((Err(e), (file, rx, total, reg)));
                    }
                    Counters::add(&reg.counters.bytes_served, n as u64);
                    return Some((Ok(Bytes::from(buf)), (file, rx, sent + n as u64, reg)));
                }
                if rx.changed().await.is_err() && rx.borrow().state == State::Running {
                    // The download went away without saying how it ended.
                    let e = std::io::Error::other("upstream download failed");
                    return Some((Err(e), (file, rx, total, reg)));
                }
            }
        });
    Some((total, Body::from_stream(stream)))
}
