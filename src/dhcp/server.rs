//! The DHCP server loop. Sockets are bound by `bind` (or by a test) and handed in. One thread
//! receives, decides and answers; a writer thread makes lease changes durable in batches
//! (group commit: one fsync for every ACK that arrived meanwhile) and sends those ACKs only
//! after their leases are on disk, so a crash can never hand one address to two machines.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::boot::BootFiles;
use super::engine::{self, Ctx, Port};
use super::leases::LeaseTable;
use super::packet::{self, Destination};
use crate::app::App;
use crate::serve::Shutdown;
use crate::store::{Op, Store, now_millis};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PROXY_PORT: u16 = 4011;
/// How often blocked threads look at the shutdown flag.
const TICK: Duration = Duration::from_millis(200);
/// Most ACKs waiting for the disk at once; beyond that requests are dropped (clients retry).
const WRITE_QUEUE: usize = 16_384;

/// Packet counters (exported as metrics by the status module).
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub malformed: AtomicU64,
    pub ignored: AtomicU64,
    pub offers: AtomicU64,
    pub acks: AtomicU64,
    pub naks: AtomicU64,
    pub dropped_overload: AtomicU64,
    pub commit_failures: AtomicU64,
}

impl Stats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Sockets {
    /// Port 67 on every address of the interface (broadcasts included).
    pub server: UdpSocket,
    /// Port 4011 on the bootstrapper address, in ProxyDHCP mode.
    pub proxy: Option<UdpSocket>,
}

/// Binds the DHCP sockets to `interface` only (SO_BINDTODEVICE): on a multi-homed host we
/// never answer on, or hear from, another network.
pub fn bind(interface: &str, address: Ipv4Addr, proxy: bool) -> io::Result<Sockets> {
    let server = udp_socket(
        interface,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT),
    )?;
    let proxy = if proxy {
        Some(udp_socket(
            interface,
            SocketAddrV4::new(address, PROXY_PORT),
        )?)
    } else {
        None
    };
    Ok(Sockets { server, proxy })
}

fn udp_socket(interface: &str, addr: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("binding to interface {interface}: {e}")))?;
    // Bursts of hundreds of booting machines: a larger receive buffer rides them out.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&SocketAddr::V4(addr).into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("binding DHCP on {addr} ({interface}): {e}"),
        )
    })?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(TICK))?;
    Ok(s)
}

pub struct Handle {
    pub stats: Arc<Stats>,
    threads: Vec<JoinHandle<()>>,
}

impl Handle {
    /// Waits for the threads to finish (after shutdown was requested).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A reply waiting for its store writes.
struct Job {
    ops: Vec<Op>,
    reply: Option<(Vec<u8>, SocketAddr)>,
}

/// Starts the server threads on already-bound sockets.
pub fn spawn(
    sockets: Sockets,
    app: Arc<App>,
    boot: BootFiles,
    shutdown: Shutdown,
) -> io::Result<Handle> {
    let stats = Arc::new(Stats::default());
    let mut table = LeaseTable::new(app.plan().network.pool);
    table.load(app.store.leases().map_err(io::Error::other)?);
    tracing::info!(leases = table.len(), "DHCP lease table loaded");

    let (tx, rx) = sync_channel::<Job>(WRITE_QUEUE);
    let mut threads = Vec::new();
    let writer_sock = sockets.server.try_clone()?;
    {
        let (store, stats, shutdown) = (app.store.clone(), stats.clone(), shutdown.clone());
        threads.push(
            std::thread::Builder::new()
                .name("dhcp-writer".into())
                .spawn(move || writer(rx, store, writer_sock, stats, shutdown))?,
        );
    }
    if let Some(proxy) = sockets.proxy {
        let (app, stats, shutdown, tx) = (app.clone(), stats.clone(), shutdown.clone(), tx.clone());
        threads.push(
            std::thread::Builder::new()
                .name("dhcp-proxy".into())
                .spawn(move || {
                    receiver(
                        proxy,
                        Port::Proxy,
                        app,
                        LeaseTable::default(),
                        boot,
                        tx,
                        stats,
                        shutdown,
                    )
                })?,
        );
    }
    {
        let (stats, server) = (stats.clone(), sockets.server);
        threads.push(
            std::thread::Builder::new()
                .name("dhcp".into())
                .spawn(move || {
                    receiver(server, Port::Server, app, table, boot, tx, stats, shutdown)
                })?,
        );
    }
    Ok(Handle { stats, threads })
}

#[allow(clippy::too_many_arguments)]
fn receiver(
    sock: UdpSocket,
    port: Port,
    app: Arc<App>,
    mut table: LeaseTable,
    boot: BootFiles,
    tx: SyncSender<Job>,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    let mut buf = [0u8; 1500];
    let mut generation = app.generation();
    let mut names_dirty = true;
    let mut names_published = Instant::now();
    while !shutdown.is_requested() {
        if names_dirty && names_published.elapsed() >= Duration::from_secs(1) {
            let hosts = table.dynamic_hosts(now_millis() / 1000);
            if *app.dynamic_hosts() != hosts {
                app.set_dynamic_hosts(hosts);
            }
            names_dirty = false;
            names_published = Instant::now();
        }
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "DHCP receive failed");
                std::thread::sleep(TICK);
                continue;
            }
        };
        Stats::bump(&stats.received);
        let req = match packet::parse(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                Stats::bump(&stats.malformed);
                tracing::debug!(%src, error = %e, "dropped DHCP packet");
                continue;
            }
        };
        let plan = app.plan();
        if app.generation() != generation {
            generation = app.generation();
            table.set_pool(plan.network.pool);
        }
        let now_ms = now_millis();
        let ctx = Ctx {
            plan: &plan,
            boot,
            now: now_ms / 1000,
            now_millis: now_ms,
        };
        let out = engine::handle(&ctx, &mut table, &req, port);
        if let Some(why) = out.silence {
            Stats::bump(&stats.ignored);
            tracing::debug!(mac = %req.mac, kind = ?req.kind, ?why, "no DHCP reply");
        }
        names_dirty |= out.ops.iter().any(|op| {
            matches!(op, Op::PutLease(l) if l.hostname.is_some())
                || matches!(op, Op::DeleteLease(_))
        });
        let reply = out.reply.map(|(reply, dest)| {
            match reply.kind {
                dhcproto::v4::MessageType::Offer => Stats::bump(&stats.offers),
                dhcproto::v4::MessageType::Ack => Stats::bump(&stats.acks),
                dhcproto::v4::MessageType::Nak => Stats::bump(&stats.naks),
                _ => {}
            }
            tracing::debug!(mac = %req.mac, kind = ?reply.kind, yiaddr = %reply.yiaddr, ?dest, "DHCP reply");
            (packet::encode(&req, &reply), address(dest, src))
        });
        match (reply, out.commit_first) {
            (Some((bytes, to)), false) => {
                send(&sock, &bytes, to);
                if !out.ops.is_empty() {
                    queue(
                        &tx,
                        Job {
                            ops: out.ops,
                            reply: None,
                        },
                        &stats,
                    );
                }
            }
            (reply, _) if !out.ops.is_empty() => queue(
                &tx,
                Job {
                    ops: out.ops,
                    reply,
                },
                &stats,
            ),
            (Some((bytes, to)), true) => send(&sock, &bytes, to),
            (None, _) => {}
        }
    }
}

fn queue(tx: &SyncSender<Job>, job: Job, stats: &Stats) {
    match tx.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => Stats::bump(&stats.dropped_overload),
        Err(TrySendError::Disconnected(_)) => {}
    }
}

fn address(dest: Destination, src: SocketAddr) -> SocketAddr {
    match dest {
        Destination::Relay(ip) => SocketAddrV4::new(ip, SERVER_PORT).into(),
        Destination::Unicast(ip) => SocketAddrV4::new(ip, CLIENT_PORT).into(),
        Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT).into(),
        Destination::Source => src,
    }
}

fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if bytes.is_empty() {
        return;
    }
    if let Err(e) = sock.send_to(bytes, to) {
        tracing::warn!(%to, error = %e, "DHCP send failed");
    }
}

/// Drains queued jobs into one store transaction, then sends the replies whose writes all
/// committed. A failed write withholds its ACK: the client retries and gets a fresh decision.
fn writer(
    rx: Receiver<Job>,
    store: Arc<dyn Store>,
    sock: UdpSocket,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    const MAX_BATCH: usize = 65_536;
    loop {
        let first = match rx.recv_timeout(TICK) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) if shutdown.is_requested() => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let ops: Vec<Op> = jobs.iter().flat_map(|j| j.ops.iter().cloned()).collect();
        let results = match store.apply(&ops) {
            Ok(r) => r,
            Err(e) => {
                stats
                    .commit_failures
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                tracing::error!(error = %e, jobs = jobs.len(), "could not persist DHCP leases; withholding replies");
                continue;
            }
        };
        let mut at = 0;
        for job in jobs {
            let ok = results[at..at + job.ops.len()].iter().all(Result::is_ok);
            for r in results[at..at + job.ops.len()]
                .iter()
                .filter_map(|r| r.as_ref().err())
            {
                tracing::error!(error = %r, "DHCP store write refused");
            }
            at += job.ops.len();
            match (ok, job.reply) {
                (true, Some((bytes, to))) => send(&sock, &bytes, to),
                (false, Some(_)) => Stats::bump(&stats.commit_failures),
                _ => {}
            }
        }
    }
}
