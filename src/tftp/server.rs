//! The TFTP sockets. The listening socket only takes requests; each accepted read runs as
//! its own task on its own socket (bound to the server's address, an ephemeral port, and
//! connected to the client, so the kernel drops datagrams from anyone else). A cap on
//! concurrent transfers keeps each one fast; a request beyond it waits for a slot in a
//! bounded FIFO (see `queue`), and only beyond that gets a "busy" error. Each window is one
//! sendmmsg; its bytes come from a read-ahead buffer refilled with one pread per 128 KiB.
//!
//! The pread runs inline on the runtime: boot files sit in the page cache, where the read
//! takes microseconds, less than a hop to the blocking pool would.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::mmsg;
use super::options::{self, Negotiated};
use super::packet::{self, ErrorCode, Mode, Packet, Request};
use super::path;
use super::queue::{Admit, Slots};
use super::source::{ReadAhead, Source};
use super::transfer::{Step, Transfer, wire_block};
use crate::app::App;
use crate::serve::Shutdown;
use crate::status::NodeState;

/// Concurrent transfers by default (`--tftp-max-transfers`).
pub const DEFAULT_MAX_TRANSFERS: usize = 64;

/// Counters, logged at shutdown (and later exported as metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Read requests received.
    pub requests: AtomicU64,
    pub started: AtomicU64,
    pub completed: AtomicU64,
    /// Transfers that ended early: timeout, client error, I/O error, shutdown.
    pub failed: AtomicU64,
    /// Transfers the client ended after reading the size from the OACK (OVMF does that
    /// before every real download): normal, not a failure.
    pub size_probes: AtomicU64,
    /// Requests answered with an error: missing file, refused path, write request, mode.
    pub refused: AtomicU64,
    /// Requests turned away because every slot was taken and the waiting room full.
    pub busy: AtomicU64,
    /// Requests that waited for a free slot (see `queue`).
    pub waited: AtomicU64,
    /// Waits that ran out before a slot freed (the client's retransmission queues again).
    pub wait_expired: AtomicU64,
    /// Repeats of a request that was still waiting, dropped.
    pub duplicates: AtomicU64,
    /// DATA payload bytes sent, retransmissions included.
    pub bytes_sent: AtomicU64,
    /// Datagrams that were not what the protocol expects there; counted and dropped.
    pub bad_packets: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the server serves and how much at once.
#[derive(Debug, Clone)]
pub struct Config {
    /// Search roots in order (see [`path::roots`]).
    pub roots: Vec<PathBuf>,
    pub max_transfers: usize,
    /// Requests that may wait for a slot, and how long each may wait.
    pub queue: usize,
    pub queue_wait: Duration,
}

/// Binds the listening socket.
pub async fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(addr).await?;
    // A boot storm sends hundreds of requests at once.
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(1 << 20);
    Ok(sock)
}

struct Shared {
    app: Arc<App>,
    config: Config,
    stats: Arc<Stats>,
    local: IpAddr,
    shutdown: Shutdown,
}

/// Serves read requests on the bound socket until `shutdown`; logs the counters at the end.
pub async fn serve(
    sock: UdpSocket,
    app: Arc<App>,
    config: Config,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) -> io::Result<()> {
    let local = sock.local_addr()?.ip();
    let slots = Slots::new(config.max_transfers, config.queue, config.queue_wait);
    let shared = Arc::new(Shared {
        app,
        config,
        stats: stats.clone(),
        local,
        shutdown: shutdown.clone(),
    });
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 2048];
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        while tasks.try_join_next().is_some() {}
        let (len, peer) = tokio::select! {
            biased;
            _ = &mut stop => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors for earlier replies and the like: nothing to do but go on.
                    tracing::debug!(error = %e, "TFTP receive error");
                    continue;
                }
            },
        };
        match packet::parse(&buf[..len]) {
            Ok(Packet::Rrq(req)) => {
                // Every request starts a transfer, as in tftpd-hpa: a client that repeats
                // its request locks onto the first answer and ends the other with error 5,
                // while a client that ends one transfer and asks again at once (OVMF after
                // its size probe) must never be mistaken for a repeat. Only a repeat of a
                // request still waiting for a slot is dropped: nothing has answered it yet.
                bump(&stats.requests);
                match slots.admit(peer) {
                    Admit::Now(permit) => {
                        tasks.spawn(transfer(shared.clone(), req, peer, permit));
                    }
                    Admit::Wait => {
                        bump(&stats.waited);
                        tracing::debug!(%peer, file = %req.display_name(), "TFTP request waits for a slot");
                        tasks.spawn(wait_then_transfer(shared.clone(), slots.clone(), req, peer));
                    }
                    Admit::Duplicate => {
                        bump(&stats.duplicates);
                        tracing::debug!(%peer, "TFTP repeat of a waiting request dropped");
                    }
                    Admit::Busy => {
                        bump(&stats.busy);
                        tracing::info!(%peer, file = %req.display_name(), "TFTP busy: every slot taken and the queue full");
                        send_error(
                            &sock,
                            Some(peer),
                            ErrorCode::NotDefined,
                            "server busy, try again",
                        )
                        .await;
                    }
                }
            }
            Ok(Packet::Wrq(req)) => {
                bump(&stats.refused);
                tracing::info!(%peer, file = %req.display_name(), "TFTP write request refused");
                send_error(
                    &sock,
                    Some(peer),
                    ErrorCode::AccessViolation,
                    "read-only server",
                )
                .await;
            }
            Ok(other) => {
                bump(&stats.bad_packets);
                tracing::debug!(%peer, packet = ?kind(&other), "TFTP packet other than a request on the server port");
            }
            Err(e) => {
                bump(&stats.bad_packets);
                tracing::debug!(%peer, error = %e, "dropped malformed TFTP packet");
            }
        }
    }
    // Transfers see the same shutdown signal and end at once.
    while tasks.join_next().await.is_some() {}
    tracing::info!(?stats, "TFTP stopped");
    Ok(())
}

fn kind(p: &Packet<'_>) -> &'static str {
    match p {
        Packet::Rrq(_) => "RRQ",
        Packet::Wrq(_) => "WRQ",
        Packet::Data { .. } => "DATA",
        Packet::Ack(_) => "ACK",
        Packet::Error { .. } => "ERROR",
        Packet::Oack(_) => "OACK",
    }
}

/// A queued request: its transfer once a slot frees; nothing (no answer) when the wait
/// runs out or the server stops.
async fn wait_then_transfer(
    shared: Arc<Shared>,
    slots: Arc<Slots>,
    req: Request,
    peer: SocketAddr,
) {
    let stop = shared.shutdown.clone().wait();
    let permit = tokio::select! {
        _ = stop => return,
        p = slots.wait(peer) => p,
    };
    match permit {
        Some(permit) => transfer(shared, req, peer, permit).await,
        None => {
            bump(&shared.stats.wait_expired);
            tracing::debug!(%peer, file = %req.display_name(), "TFTP wait for a slot ran out");
        }
    }
}

/// How a transfer ended.
enum Outcome {
    Completed,
    /// The client ended it with error 8 right after the OACK (a size probe).
    Probe,
    ClientError(u16, String),
    TimedOut,
    Io(io::Error),
    Shutdown,
}

/// One accepted read request, from opening the file to the last ACK.
async fn transfer(
    shared: Arc<Shared>,
    req: Request,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let stats = &shared.stats;
    let name = req.display_name();
    let sock = match transfer_socket(shared.local, peer) {
        Ok(s) => s,
        Err(e) => {
            bump(&stats.failed);
            tracing::warn!(%peer, error = %e, "TFTP: cannot open a transfer socket");
            return;
        }
    };
    let refuse = async |code, msg: &str| {
        bump(&stats.refused);
        send_error(&sock, None, code, msg).await;
    };
    if req.mode == Mode::Mail {
        tracing::info!(%peer, file = %name, "TFTP mail mode refused");
        return refuse(ErrorCode::IllegalOperation, "mail mode not supported").await;
    }
    let (roots, filename) = (shared.config.roots.clone(), req.filename.clone());
    let netascii = req.mode == Mode::Netascii;
    let opened = tokio::task::spawn_blocking(move || {
        let o = path::open(&roots, &filename)?;
        if !netascii {
            return Ok(Some(Source::File {
                file: o.file,
                size: o.size,
            }));
        }
        Source::netascii(o.file, o.size).map_err(|_| path::Refusal::Denied)
    })
    .await;
    let source = match opened {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => {
            tracing::info!(%peer, file = %name, "TFTP netascii request for a large file refused");
            return refuse(ErrorCode::NotDefined, "file too large for netascii").await;
        }
        Ok(Err(refusal)) => {
            tracing::info!(%peer, file = %name, ?refusal, "TFTP request refused");
            return refuse(refusal.code(), refusal.message()).await;
        }
        Err(e) => {
            bump(&stats.failed);
            tracing::warn!(%peer, error = %e, "TFTP open task failed");
            return;
        }
    };
    // The description's MTU, or the link's when that is smaller: a block must never
    // need IP fragmentation, which PXE stacks often do not reassemble.
    let plan_mtu = shared.app.plan().network.mtu;
    let mtu = link_mtu(&sock).map_or(plan_mtu, |link| link.min(plan_mtu));
    let limits = options::Limits::from_mtu(mtu);
    let neg = options::negotiate(&req.options, source.size(), limits);
    bump(&stats.started);
    tracing::debug!(%peer, file = %name, size = source.size(), blksize = neg.blksize, windowsize = neg.windowsize, "TFTP transfer started");
    if let IpAddr::V4(ip) = peer.ip() {
        let (app, detail) = (shared.app.clone(), format!("TFTP {name}"));
        tokio::task::spawn_blocking(move || {
            if let Err(e) = app.node_seen(ip, NodeState::Pxe, &detail) {
                tracing::warn!(%ip, error = %e, "could not record the TFTP step");
            }
        });
    }
    let began = Instant::now();
    let outcome = drive(&sock, &source, &neg, stats, shared.shutdown.clone()).await;
    let secs = began.elapsed().as_secs_f64();
    match outcome {
        Outcome::Completed => {
            bump(&stats.completed);
            let mb_s = source.size() as f64 / secs.max(1e-6) / 1e6;
            tracing::info!(%peer, file = %name, bytes = source.size(), secs, mb_s, "TFTP transfer complete");
        }
        Outcome::Probe => {
            bump(&stats.size_probes);
            tracing::debug!(%peer, file = %name, "TFTP size probe ended by the client");
        }
        Outcome::ClientError(code, message) => {
            bump(&stats.failed);
            tracing::info!(%peer, file = %name, code, %message, "TFTP transfer aborted by the client");
        }
        Outcome::TimedOut => {
            bump(&stats.failed);
            tracing::warn!(%peer, file = %name, "TFTP transfer timed out");
            send_error(&sock, None, ErrorCode::NotDefined, "timed out").await;
        }
        Outcome::Io(e) => {
            bump(&stats.failed);
            tracing::warn!(%peer, file = %name, error = %e, "TFTP transfer failed");
            send_error(&sock, None, ErrorCode::NotDefined, "transfer failed").await;
        }
        Outcome::Shutdown => {
            bump(&stats.failed);
            tracing::debug!(%peer, file = %name, "TFTP transfer stopped by shutdown");
            send_error(&sock, None, ErrorCode::NotDefined, "server shutting down").await;
        }
    }
}

/// Sends an error (to `to`, or on a connected socket to its peer); best effort, the client
/// may be gone. Not `try_send`: on a socket just made, tokio does not yet know it is
/// writable and would drop the datagram without trying.
async fn send_error(sock: &UdpSocket, to: Option<SocketAddr>, code: ErrorCode, msg: &str) {
    let mut out = Vec::with_capacity(32 + msg.len());
    packet::encode_error(code, msg, &mut out);
    let wait = Duration::from_millis(200);
    let _ = match to {
        Some(to) => tokio::time::timeout(wait, sock.send_to(&out, to)).await,
        None => tokio::time::timeout(wait, sock.send(&out)).await,
    };
}

/// A socket on the server's address and a fresh port, connected to the client.
fn transfer_socket(local: IpAddr, peer: SocketAddr) -> io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(local, 0))?;
    s.connect(peer)?;
    s.set_nonblocking(true)?;
    // Room for a whole window in the send queue.
    let _ = socket2::SockRef::from(&s).set_send_buffer_size(options::MAX_WINDOW_BYTES * 2);
    UdpSocket::from_std(s)
}

/// The kernel's path MTU for a connected socket: its route's link MTU, or less once a
/// "fragmentation needed" came back. `None` when unknown or beyond 16 bits (loopback).
fn link_mtu(sock: &UdpSocket) -> Option<u16> {
    let (level, name) = match sock.peer_addr().ok()? {
        SocketAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_MTU),
        SocketAddr::V6(_) => (libc::IPPROTO_IPV6, libc::IPV6_MTU),
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is open for the socket's lifetime; `mtu` and `len` are valid for
    // writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    u16::try_from(mtu).ok()
}

/// Runs the state machine against the socket until the transfer ends.
async fn drive(
    sock: &UdpSocket,
    source: &Source,
    neg: &Negotiated,
    stats: &Stats,
    shutdown: Shutdown,
) -> Outcome {
    let size = source.size();
    let (mut t, mut step) = Transfer::start(neg, size, Instant::now());
    let blksize = t.blksize();
    let mut oack = Vec::new();
    packet::encode_oack(&neg.oack, &mut oack);
    let mut headers: Vec<[u8; 4]> = Vec::with_capacity(usize::from(neg.windowsize));
    let mut data = ReadAhead::default();
    let fd = sock.as_raw_fd();
    let mut bufs = [[0u8; mmsg::RECV_BUF]; mmsg::RECV_BATCH];
    let mut lens = [0usize; mmsg::RECV_BATCH];
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        match step {
            Step::Oack => {
                if let Err(e) = sock.send(&oack).await {
                    return Outcome::Io(e);
                }
            }
            Step::Blocks(range) => {
                let (first, last) = (*range.start(), *range.end());
                let (start, _) = t.byte_range(first, size);
                let (end_start, end_len) = t.byte_range(last, size);
                let len = (end_start + end_len as u64 - start) as usize;
                let bytes = match source.read(start, len, &mut data) {
                    Ok(b) => b,
                    Err(e) => return Outcome::Io(e),
                };
                headers.clear();
                headers.extend(range.map(|n| packet::data_header(wire_block(n))));
                if let Err(e) = send_blocks(sock, &headers, bytes, blksize).await {
                    return Outcome::Io(e);
                }
                stats
                    .bytes_sent
                    .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            Step::Wait => {}
            Step::Done => return Outcome::Completed,
            Step::TimedOut => return Outcome::TimedOut,
        }
        let deadline = tokio::time::Instant::from_std(t.deadline());
        let ready = tokio::select! {
            biased;
            _ = &mut stop => return Outcome::Shutdown,
            _ = tokio::time::sleep_until(deadline) => None,
            r = sock.readable() => Some(r),
        };
        step = match ready {
            None => t.on_timeout(Instant::now()),
            Some(Err(e)) => return Outcome::Io(e),
            Some(Ok(())) => {
                let mut got = 0;
                // A short batch proves the queue empty: answering WouldBlock makes tokio
                // clear the readiness it saw before the call (a datagram arriving since
                // sets it again), so the next wait needs no recv that only fails.
                let r = sock.try_io(Interest::READABLE, || {
                    got = mmsg::recv_batch(fd, &mut bufs, &mut lens)?;
                    match got < mmsg::RECV_BATCH {
                        true => Err(io::ErrorKind::WouldBlock.into()),
                        false => Ok(()),
                    }
                });
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // ICMP port unreachable for something we sent: the client closed its
                    // port. The kernel reports that before datagrams already queued, which
                    // may hold the final ACK (a client that quits right after it).
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => loop {
                        let Ok(n) = mmsg::recv_batch(fd, &mut bufs, &mut lens) else {
                            return Outcome::Io(e);
                        };
                        for k in 0..n {
                            match on_packet(&mut t, &bufs[k][..lens[k]], stats) {
                                Ok(Step::Done) => return Outcome::Completed,
                                Ok(_) => {}
                                Err(end) => return end,
                            }
                        }
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "TFTP transfer receive error");
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
                // Several ACKs in one batch: the state machine takes them in order and the
                // last thing it asks for is what to send.
                let mut next = Step::Wait;
                for k in 0..got {
                    match on_packet(&mut t, &bufs[k][..lens[k]], stats) {
                        Ok(Step::Done) => return Outcome::Completed,
                        Ok(Step::Wait) => {}
                        Ok(s) => next = s,
                        Err(end) => return end,
                    }
                }
                next
            }
        };
    }
}

/// One datagram from the client: the next step, or how the transfer ended.
fn on_packet(t: &mut Transfer, bytes: &[u8], stats: &Stats) -> Result<Step, Outcome> {
    match packet::parse(bytes) {
        Ok(Packet::Ack(block)) => Ok(t.on_ack(block, Instant::now())),
        Ok(Packet::Error { code, .. })
            if code == ErrorCode::OptionsRefused as u16 && t.is_awaiting_oack() =>
        {
            Err(Outcome::Probe)
        }
        Ok(Packet::Error { code, message }) => Err(Outcome::ClientError(code, message)),
        _ => {
            bump(&stats.bad_packets);
            Ok(Step::Wait)
        }
    }
}

/// Sends a window, waiting for room in the send queue when it is full.
async fn send_blocks(
    sock: &UdpSocket,
    headers: &[[u8; 4]],
    data: &[u8],
    blksize: usize,
) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    let mut from = 0;
    while from < headers.len() {
        from += sock
            .async_io(Interest::WRITABLE, || {
                mmsg::send_window(fd, headers, data, blksize, from)
            })
            .await?;
    }
    Ok(())
}
