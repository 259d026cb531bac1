//! The DHCP server loop. Sockets are bound by `bind` (or by a test) and handed in. One thread
//! per socket receives requests in batches (recvmmsg), decides and answers them (sendmmsg);
//! a writer thread makes their lease changes durable (group commit: one fdatasync for every
//! request queued meanwhile) and sends those ACKs only after their leases are on disk, so a
//! crash can never hand one address to two machines.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::boot::BootFiles;
use super::engine::{self, Ctx, Port};
use super::leases::LeaseTable;
use super::mmsg::{self, RecvBatch, SendBatch};
use super::packet::{self, Destination};
use crate::app::App;
use crate::serve::Shutdown;
use crate::store::{Op, Store, now_millis};

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
pub const PROXY_PORT: u16 = 4011;
/// How often blocked threads look at the shutdown flag.
const TICK: Duration = Duration::from_millis(200);
/// Receive-queue memory (kernel accounting, ~1-2 KiB per queued request) beyond which new
/// DISCOVERs are dropped in favour of REQUESTs.
const SHED_QUEUE: usize = 2 << 20;
/// Requests waiting for the writer beyond which new DISCOVERs are shed.
const WRITE_SHED: usize = 8_192;
/// Requests waiting for the writer beyond which new store writes are dropped (the client
/// retries).
const WRITE_MAX: usize = 32_768;
/// Most requests in one commit.
const MAX_COMMIT: usize = 16_384;

/// Packet counters (exported as metrics by the status module).
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub malformed: AtomicU64,
    pub ignored: AtomicU64,
    pub offers: AtomicU64,
    pub acks: AtomicU64,
    pub naks: AtomicU64,
    /// Requests dropped unanswered under overload: DISCOVERs when the receive or write queue
    /// was long, any write when the write queue was full.
    pub dropped_overload: AtomicU64,
    pub commit_failures: AtomicU64,
    /// Parsed requests by message type (`REQUEST_KINDS`) and `Outcome`: what operators ask
    /// when machines do not come up ("did it DISCOVER? was it answered?").
    pub by_kind: [[AtomicU64; Outcome::ALL.len()]; REQUEST_KINDS.len()],
}

/// Client message types counted apart; anything else is `other`.
pub const REQUEST_KINDS: [&str; 6] = [
    "discover", "request", "decline", "release", "inform", "other",
];

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A reply was sent (or queued behind its lease write).
    Answered,
    /// Deliberately not answered (unknown MAC, another server's, not ours to serve).
    Ignored,
    /// Acted on without a reply (RELEASE, DECLINE).
    Accepted,
    /// Dropped under overload.
    Shed,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::Answered,
        Outcome::Ignored,
        Outcome::Accepted,
        Outcome::Shed,
    ];

    /// RELEASE and DECLINE never get a reply (the engine says `NoReplyNeeded`): one that
    /// changed the lease table was acted on, one that named no lease of the client's was not.
    pub fn of(decided: &engine::Outcome) -> Outcome {
        match (&decided.silence, &decided.reply) {
            (_, Some(_)) => Outcome::Answered,
            (Some(engine::Silence::NoReplyNeeded), None) if !decided.ops.is_empty() => {
                Outcome::Accepted
            }
            (Some(_), None) => Outcome::Ignored,
            (None, None) => Outcome::Accepted,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Ignored => "ignored",
            Outcome::Accepted => "accepted",
            Outcome::Shed => "shed",
        }
    }
}

impl Stats {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request of DHCP message type `kind` (option 53's code).
    pub fn count(&self, kind: u8, outcome: Outcome) {
        let i = match kind {
            1 => 0,
            3 => 1,
            4 => 2,
            7 => 3,
            8 => 4,
            _ => 5,
        };
        Self::bump(&self.by_kind[i][outcome as usize]);
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

    let (tx, rx) = channel::<Pending>();
    let queue = Queue {
        tx,
        depth: Arc::new(AtomicUsize::new(0)),
    };
    let mut threads = Vec::new();
    let ntp = Arc::new(super::ntp::Resolved::default());
    {
        // Not joined: a system resolver lookup may outlast shutdown by seconds.
        let (app, ntp, shutdown) = (app.clone(), ntp.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("dhcp-ntp".into())
            .spawn(move || super::ntp::run(&app, &ntp, &shutdown))?;
    }
    {
        let writer_sock = sockets.server.try_clone()?;
        let (store, stats, shutdown) = (app.store.clone(), stats.clone(), shutdown.clone());
        let depth = queue.depth.clone();
        threads.push(
            std::thread::Builder::new()
                .name("dhcp-writer".into())
                .spawn(move || writer(rx, depth, &*store, &writer_sock, &stats, &shutdown))?,
        );
    }
    if let Some(proxy) = sockets.proxy {
        let (app, stats, shutdown) = (app.clone(), stats.clone(), shutdown.clone());
        let (queue, ntp) = (queue.clone(), ntp.clone());
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
                        ntp,
                        queue,
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
                    receiver(
                        server,
                        Port::Server,
                        app,
                        table,
                        boot,
                        ntp,
                        queue,
                        stats,
                        shutdown,
                    )
                })?,
        );
    }
    Ok(Handle { stats, threads })
}

/// An encoded reply and where it goes.
type Outgoing = (Vec<u8>, SocketAddr);

/// Store writes of one receive batch and the replies that wait for them: one message to the
/// writer per batch.
#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    /// Per request: its ops (`ops[start..end]`) and the reply sent once they are durable.
    jobs: Vec<(usize, usize, Option<Outgoing>)>,
}

/// The way to the writer, with the number of requests waiting in it.
#[derive(Clone)]
struct Queue {
    tx: Sender<Pending>,
    depth: Arc<AtomicUsize>,
}

/// One thread per socket: receives a batch of datagrams (whatever queued up, up to
/// `mmsg::N`), decides each, sends the replies that need no disk write at once, and hands
/// the batch's store writes with the ACKs that wait for them to the writer. It never waits
/// for the disk, so OFFERs keep flowing while the writer syncs.
#[allow(clippy::too_many_arguments)]
fn receiver(
    sock: UdpSocket,
    port: Port,
    app: Arc<App>,
    mut table: LeaseTable,
    boot: BootFiles,
    ntp: Arc<super::ntp::Resolved>,
    queue: Queue,
    stats: Arc<Stats>,
    shutdown: Shutdown,
) {
    let fd = sock.as_raw_fd();
    let mut batch = RecvBatch::new();
    let mut out = SendBatch::default();
    // Receive-queue memory above which new DISCOVERs are shed (see `overloaded`): half the
    // buffer, at most SHED_QUEUE.
    let shed_above = socket2::SockRef::from(&sock)
        .recv_buffer_size()
        .map_or(SHED_QUEUE, |b| (b / 2).min(SHED_QUEUE));
    let mut generation = app.generation();
    let mut names_dirty = true;
    let mut names_published = Instant::now();
    let mut unknown = super::unknown::Tracker::default();
    let mut unknown_dirty = false;
    while !shutdown.is_requested() {
        if unknown_dirty {
            app.publish_unknown(unknown.list());
            unknown_dirty = false;
        }
        if names_dirty && names_published.elapsed() >= Duration::from_secs(1) {
            let hosts = table.dynamic_hosts(now_millis() / 1000);
            if *app.dynamic_hosts() != hosts {
                app.set_dynamic_hosts(hosts);
            }
            names_dirty = false;
            names_published = Instant::now();
        }
        let n = match batch.recv(fd, true) {
            Ok(n) => n,
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
        // Overload: a long queue of requests behind this batch, in the socket (CPU-bound) or
        // at the writer (disk-bound). New DISCOVERs are dropped first so the exchanges under
        // way (their REQUESTs) complete and the completed rate holds instead of collapsing.
        let waiting = queue.depth.load(Ordering::Relaxed);
        let overloaded = waiting > WRITE_SHED
            || (n == mmsg::N && mmsg::queued_bytes(fd).is_some_and(|q| q as usize > shed_above));
        let plan = app.plan();
        if app.generation() != generation {
            generation = app.generation();
            table.set_pool(plan.network.pool);
        }
        let now_ms = now_millis();
        let approved = app.approved();
        let ntp_resolved = ntp.get();
        let ctx = Ctx {
            plan: &plan,
            approved: &approved,
            boot,
            ntp_resolved: &ntp_resolved,
            now: now_ms / 1000,
            now_millis: now_ms,
        };
        let mut pending = Pending::default();
        for i in 0..n {
            let (bytes, cut, src) = batch.get(i);
            Stats::bump(&stats.received);
            if cut {
                Stats::bump(&stats.malformed);
                tracing::debug!(%src, "dropped oversized DHCP datagram");
                continue;
            }
            if overloaded && peek_kind(bytes) == Some(DISCOVER) {
                Stats::bump(&stats.dropped_overload);
                stats.count(DISCOVER, Outcome::Shed);
                continue;
            }
            let req = match packet::parse(bytes) {
                Ok(r) => r,
                Err(e) => {
                    Stats::bump(&stats.malformed);
                    tracing::debug!(%src, error = %e, "dropped DHCP packet");
                    continue;
                }
            };
            let decided = engine::handle(&ctx, &mut table, &req, port);
            let kind = u8::from(req.kind);
            let outcome = Outcome::of(&decided);
            if let Some(why) = decided.silence {
                Stats::bump(&stats.ignored);
                tracing::debug!(mac = %req.mac, kind = ?req.kind, ?why, "no DHCP reply");
                if why == engine::Silence::UnknownMac {
                    let class = format!("{:?}", req.class);
                    let seen = unknown.note(req.mac, Some(&class), now_ms / 1000);
                    unknown_dirty = true;
                    if seen == super::unknown::Seen::Report && waiting <= WRITE_MAX {
                        let start = pending.ops.len();
                        pending.ops.push(Op::Event {
                            kind: "dhcp.unknown".into(),
                            mac: Some(req.mac.to_string()),
                            message: format!(
                                "machine not in the description asked for an address ({class}); \
                                 add it to the description or approve it"
                            ),
                        });
                        pending.jobs.push((start, pending.ops.len(), None));
                    }
                }
            }
            names_dirty |= decided.ops.iter().any(|op| {
                matches!(op, Op::PutLease(l) if l.hostname.is_some())
                    || matches!(op, Op::DeleteLease(_))
            });
            let reply = decided.reply.map(|(reply, dest)| {
                match reply.kind {
                    dhcproto::v4::MessageType::Offer => Stats::bump(&stats.offers),
                    dhcproto::v4::MessageType::Ack => Stats::bump(&stats.acks),
                    dhcproto::v4::MessageType::Nak => Stats::bump(&stats.naks),
                    _ => {}
                }
                tracing::debug!(mac = %req.mac, kind = ?reply.kind, yiaddr = %reply.yiaddr, ?dest, "DHCP reply");
                let mut bytes = out.buffer();
                packet::encode_into(&req, &reply, &mut bytes);
                (bytes, address(dest, src))
            });
            let (reply_now, reply_later) = match reply {
                Some(r) if !decided.commit_first || decided.ops.is_empty() => (Some(r), None),
                r => (None, r),
            };
            if let Some((bytes, to)) = reply_now {
                out.push(bytes, to);
            }
            if !decided.ops.is_empty() {
                if waiting > WRITE_MAX {
                    // The disk is hopelessly behind: the client retries.
                    Stats::bump(&stats.dropped_overload);
                    stats.count(kind, Outcome::Shed);
                    continue;
                }
                let start = pending.ops.len();
                pending.ops.extend(decided.ops);
                pending.jobs.push((start, pending.ops.len(), reply_later));
            }
            stats.count(kind, outcome);
        }
        drop(plan);
        out.flush(fd);
        if !pending.jobs.is_empty() {
            queue.depth.fetch_add(pending.jobs.len(), Ordering::Relaxed);
            // A send error means the writer is gone (shutdown).
            let _ = queue.tx.send(pending);
        }
    }
}

/// Takes every batch queued, makes their writes durable in one store call (one fdatasync:
/// the group commit) and sends the replies whose writes all committed. A failed write
/// withholds its reply: the client retries and gets a fresh decision.
fn writer(
    rx: Receiver<Pending>,
    depth: Arc<AtomicUsize>,
    store: &dyn Store,
    sock: &UdpSocket,
    stats: &Stats,
    shutdown: &Shutdown,
) {
    let fd = sock.as_raw_fd();
    let mut out = SendBatch::default();
    let mut all = Pending::default();
    loop {
        let first = match rx.recv_timeout(TICK) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) if shutdown.is_requested() => return,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut next = Some(first);
        while let Some(p) = next {
            let base = all.ops.len();
            all.ops.extend(p.ops);
            all.jobs
                .extend(p.jobs.into_iter().map(|(s, e, r)| (base + s, base + e, r)));
            next = if all.jobs.len() < MAX_COMMIT {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        depth.fetch_sub(all.jobs.len(), Ordering::Relaxed);
        commit(store, &mut all, &mut out, stats);
        out.flush(fd);
    }
}

/// Applies `pending` in one store call and queues the replies whose writes all committed.
fn commit(store: &dyn Store, pending: &mut Pending, out: &mut SendBatch, stats: &Stats) {
    match store.apply(&pending.ops) {
        Ok(results) => {
            for (start, end, reply) in pending.jobs.drain(..) {
                let mut ok = true;
                for e in results[start..end].iter().filter_map(|r| r.as_ref().err()) {
                    tracing::error!(error = %e, "DHCP store write refused");
                    ok = false;
                }
                match (ok, reply) {
                    (true, Some((bytes, to))) => out.push(bytes, to),
                    (false, Some(_)) => Stats::bump(&stats.commit_failures),
                    _ => {}
                }
            }
        }
        Err(e) => {
            let withheld = pending.jobs.iter().filter(|j| j.2.is_some()).count();
            stats
                .commit_failures
                .fetch_add(withheld as u64, Ordering::Relaxed);
            tracing::error!(error = %e, replies = withheld, "could not persist DHCP leases; withholding replies");
            pending.jobs.clear();
        }
    }
    pending.ops.clear();
}

const DISCOVER: u8 = 1;

/// The DHCP message type (option 53) of a datagram, read without parsing the rest; `None`
/// when it is not in the options field (the full parse decides then).
fn peek_kind(bytes: &[u8]) -> Option<u8> {
    let mut at = 240;
    while at < bytes.len() {
        match bytes[at] {
            0 => at += 1,
            255 => return None,
            code => {
                let len = usize::from(*bytes.get(at + 1)?);
                if code == 53 && len >= 1 {
                    return bytes.get(at + 2).copied();
                }
                at += 2 + len;
            }
        }
    }
    None
}

fn address(dest: Destination, src: SocketAddr) -> SocketAddr {
    match dest {
        Destination::Relay(ip) => SocketAddrV4::new(ip, SERVER_PORT).into(),
        Destination::Unicast(ip) => SocketAddrV4::new(ip, CLIENT_PORT).into(),
        Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT).into(),
        Destination::Source => src,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_type_and_outcome() {
        let s = Stats::default();
        s.count(1, Outcome::Answered);
        s.count(3, Outcome::Answered);
        s.count(3, Outcome::Answered);
        s.count(7, Outcome::Accepted);
        s.count(1, Outcome::Shed);
        s.count(42, Outcome::Ignored);
        let get = |kind: &str, o: Outcome| {
            let i = REQUEST_KINDS.iter().position(|k| *k == kind).unwrap();
            s.by_kind[i][o as usize].load(Ordering::Relaxed)
        };
        assert_eq!(get("discover", Outcome::Answered), 1);
        assert_eq!(get("discover", Outcome::Shed), 1);
        assert_eq!(get("request", Outcome::Answered), 2);
        assert_eq!(get("release", Outcome::Accepted), 1);
        assert_eq!(get("other", Outcome::Ignored), 1);
        assert_eq!(get("inform", Outcome::Answered), 0);
    }

    #[test]
    fn releases_that_change_a_lease_count_as_accepted() {
        use crate::store::Op;
        let acted = engine::Outcome {
            ops: vec![Op::Event {
                kind: "dhcp.decline".into(),
                mac: None,
                message: String::new(),
            }],
            silence: Some(engine::Silence::NoReplyNeeded),
            ..Default::default()
        };
        assert_eq!(Outcome::of(&acted), Outcome::Accepted);
        let nothing = engine::Outcome {
            silence: Some(engine::Silence::NoReplyNeeded),
            ..Default::default()
        };
        assert_eq!(Outcome::of(&nothing), Outcome::Ignored);
        let unknown = engine::Outcome {
            silence: Some(engine::Silence::UnknownMac),
            ..Default::default()
        };
        assert_eq!(Outcome::of(&unknown), Outcome::Ignored);
    }

    #[test]
    fn peek_kind_finds_option_53() {
        let mut p = vec![0u8; 240];
        p.extend_from_slice(&[0, 12, 3, b'a', b'b', b'c', 53, 1, 3, 255]);
        assert_eq!(peek_kind(&p), Some(3));
        p.truncate(240 + 7);
        assert_eq!(peek_kind(&p), None, "cut inside the option");
        assert_eq!(peek_kind(&[0u8; 100]), None);
        let mut q = vec![0u8; 240];
        q.extend_from_slice(&[12, 200]);
        assert_eq!(peek_kind(&q), None, "length past the end");
    }
}
