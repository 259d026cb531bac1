//! The DNS server's I/O: UDP workers answering from the current snapshot, a TCP listener
//! (2-byte length framing, several queries per connection), forwarding in spawned tasks.
//! A bad packet is counted and dropped; nothing a client sends stops a worker.

use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Action, METRICS, Snapshot, Transport, count, forward, handle};
use crate::app::App;
use crate::serve::Shutdown;

/// Forwarded queries in flight at once (beyond that, SERVFAIL at once).
const MAX_FORWARDS: usize = 512;
/// TCP connections served at once; further ones wait in the accept queue.
const MAX_TCP: usize = 256;
/// A TCP connection idle (or dribbling a message) this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Datagrams handled before a worker goes back to the scheduler (portable worker).
#[cfg(not(target_os = "linux"))]
const BATCH: usize = 64;
/// How long a UDP thread keeps polling without sleeping after it answered a batch. Under
/// steady traffic the next query usually arrives within it, and skipping the sleep/wake-up
/// cycle keeps the latency tail short; an idle server sleeps in `recvmmsg` as before. The
/// price is up to this much CPU per batch at moderate rates.
const UDP_SPIN: Duration = Duration::from_micros(50);

/// How often a UDP thread blocked in receive checks for shutdown.
#[cfg(target_os = "linux")]
const UDP_POLL: Duration = Duration::from_millis(250);

/// Binds UDP and TCP on `addr`. With port 0, both get the same free port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind(addr).await?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
}

/// The snapshot in force, rebuilt when the plan generation or the leased hosts change.
struct Live {
    app: Arc<App>,
    snap: ArcSwap<Snapshot>,
    rebuilding: Mutex<()>,
}

impl Live {
    fn new(app: Arc<App>) -> Live {
        let snap = build(&app);
        Live {
            app,
            snap: ArcSwap::from_pointee(snap),
            rebuilding: Mutex::new(()),
        }
    }

    fn current(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        let snap = self.snap.load();
        if snap.version == self.app.dns_version() {
            return snap;
        }
        // One task rebuilds; the others keep answering from the previous snapshot.
        if let Ok(_guard) = self.rebuilding.try_lock()
            && self.snap.load().version != self.app.dns_version()
        {
            let new = build(&self.app);
            tracing::info!(
                generation = new.version.0,
                leases = new.version.1,
                serial = new.zone.serial(),
                "DNS zone rebuilt"
            );
            self.snap.store(Arc::new(new));
        }
        self.snap.load()
    }
}

fn build(app: &App) -> Snapshot {
    // The version is read before the data: a concurrent change leaves the version behind,
    // which only causes one more rebuild.
    let version = app.dns_version();
    let plan = app.plan();
    let hosts = app.dynamic_hosts();
    Snapshot::new(&plan, &hosts, version)
}

/// `handle` with a last line of defence: a panic (a bug) costs one packet, not the worker.
fn handle_guarded(
    snap: &Snapshot,
    packet: &[u8],
    client: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Action {
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        handle(snap, packet, client, transport, out)
    })) {
        Ok(a) => a,
        Err(_) => {
            count(&METRICS.malformed);
            tracing::error!(%client, len = packet.len(), "DNS request handling panicked; packet dropped");
            Action::Drop
        }
    }
}

/// Serves DNS on the already-bound sockets until `shutdown`.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    app: Arc<App>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let live = Arc::new(Live::new(app));
    // A deep receive queue absorbs bursts (capped by net.core.rmem_max).
    let _ = socket2::SockRef::from(&udp).set_recv_buffer_size(4 << 20);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4);
    let mut tasks = JoinSet::new();
    tasks.spawn(tcp_acceptor(tcp, live.clone(), shutdown.clone()));

    // Linux: UDP on dedicated threads blocking in recvmmsg (no readiness round trip per
    // datagram); they look at `stop` at least every UDP_POLL.
    #[cfg(target_os = "linux")]
    {
        use std::sync::atomic::AtomicBool;
        let udp = udp.into_std()?;
        udp.set_nonblocking(false)?;
        udp.set_read_timeout(Some(UDP_POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        for i in 0..workers {
            let (sock, live, forwards) = (udp.try_clone()?, live.clone(), forwards.clone());
            let (runtime, stop) = (runtime.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || udp_thread(sock, &live, &forwards, &runtime, &stop))?,
            );
        }
        shutdown.wait().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        tasks.shutdown().await;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
    #[cfg(not(target_os = "linux"))]
    {
        let udp = Arc::new(udp);
        for _ in 0..workers {
            tasks.spawn(udp_worker(
                udp.clone(),
                live.clone(),
                forwards.clone(),
                shutdown.clone(),
            ));
        }
        shutdown.wait().await;
        tasks.shutdown().await;
    }
    Ok(())
}

/// The Linux worker thread: batches of datagrams in, batches of replies out.
#[cfg(target_os = "linux")]
fn udp_thread(
    sock: std::net::UdpSocket,
    live: &Live,
    forwards: &Arc<Semaphore>,
    runtime: &tokio::runtime::Handle,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::os::fd::AsRawFd;

    let fd = sock.as_raw_fd();
    let sock = Arc::new(sock);
    let mut batch = super::mmsg::Batch::new();
    let mut marks = Vec::with_capacity(super::mmsg::N);
    // Busy until this instant after a batch (see UDP_SPIN), then blocking.
    let mut spin_until: Option<std::time::Instant> = None;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let spinning = spin_until.is_some_and(|t| std::time::Instant::now() < t);
        let flags = if spinning {
            libc::MSG_DONTWAIT
        } else {
            libc::MSG_WAITFORONE
        };
        let n = match batch.recv(fd, flags) {
            Ok(n) => n,
            Err(e) if spinning && e.kind() == std::io::ErrorKind::WouldBlock => {
                std::hint::spin_loop();
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "DNS UDP receive error");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let snap = live.current();
        marks.clear();
        for i in 0..n {
            let (packet, out) = batch.slot(i);
            let Some((packet, from)) = packet else {
                count(&METRICS.malformed);
                tracing::debug!("dropped oversized or non-IP DNS datagram");
                continue;
            };
            match handle_guarded(&snap, packet, from.ip(), Transport::Udp, out) {
                Action::Reply => marks.push(i),
                Action::Drop => {}
                Action::Forward(req) => {
                    let Ok(permit) = forwards.clone().try_acquire_owned() else {
                        tracing::debug!(client = %from, "too many forwarded queries in flight");
                        continue;
                    };
                    let (sock, snap) = (sock.clone(), Arc::clone(&*snap));
                    runtime.spawn(async move {
                        let reply = forward::resolve(&snap, &req, false).await;
                        if let Err(e) = sock.send_to(&reply, from) {
                            tracing::debug!(error = %e, %from, "DNS UDP send failed");
                        }
                        drop(permit);
                    });
                }
            }
        }
        drop(snap);
        for &i in &marks {
            batch.mark(i);
        }
        for (data, to) in batch.send(fd) {
            // The send buffer was full: wait for room (the socket is blocking).
            if let Err(e) = sock.send_to(&data, to) {
                tracing::debug!(error = %e, %to, "DNS UDP send failed");
            }
        }
        spin_until = Some(std::time::Instant::now() + UDP_SPIN);
    }
}

/// The portable worker: one datagram per system call.
#[cfg(not(target_os = "linux"))]
async fn udp_worker(
    sock: Arc<UdpSocket>,
    live: Arc<Live>,
    forwards: Arc<Semaphore>,
    shutdown: Shutdown,
) {
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => return,
            r = sock.readable() => if let Err(e) = r {
                tracing::warn!(error = %e, "DNS UDP socket not readable");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            },
        }
        for _ in 0..BATCH {
            let (n, from) = match sock.try_recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS UDP receive error");
                    break;
                }
            };
            // The snapshot guard is not held across an await.
            let (action, snap) = {
                let snap = live.current();
                let action = handle_guarded(&snap, &buf[..n], from.ip(), Transport::Udp, &mut out);
                let keep = matches!(action, Action::Forward(_)).then(|| Arc::clone(&*snap));
                (action, keep)
            };
            match action {
                Action::Reply => send(&sock, &out, from).await,
                Action::Drop => {}
                Action::Forward(req) => {
                    let Ok(permit) = forwards.clone().try_acquire_owned() else {
                        tracing::debug!(client = %from, "too many forwarded queries in flight");
                        continue;
                    };
                    let Some(snap) = snap else { continue };
                    let sock = sock.clone();
                    tokio::spawn(async move {
                        let reply = forward::resolve(&snap, &req, false).await;
                        send(&sock, &reply, from).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
async fn send(sock: &UdpSocket, data: &[u8], to: SocketAddr) {
    if data.is_empty() {
        return;
    }
    let r = match sock.try_send_to(data, to) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => sock.send_to(data, to).await,
        r => r,
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, %to, "DNS UDP send failed");
    }
}

async fn tcp_acceptor(listener: TcpListener, live: Arc<Live>, shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(MAX_TCP));
    let mut conns = JoinSet::new();
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        while conns.try_join_next().is_some() {}
        let permit = tokio::select! {
            biased;
            _ = &mut stop => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = &mut stop => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving UDP.
                    tracing::warn!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let live = live.clone();
        conns.spawn(async move {
            if let Err(e) = tcp_connection(stream, peer, &live).await {
                tracing::debug!(%peer, error = %e, "DNS TCP connection closed");
            }
            drop(permit);
        });
    }
}

async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    live: &Live,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    let mut framed = Vec::with_capacity(4096);
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len])).await {
            Ok(r) => r?,
            Err(_) => {
                count(&METRICS.malformed);
                return Ok(());
            }
        };
        let snap = Arc::clone(&*live.current());
        let reply = match handle_guarded(&snap, &buf[..len], peer.ip(), Transport::Tcp, &mut out) {
            Action::Reply => &out[..],
            Action::Drop => continue,
            Action::Forward(req) => {
                out = forward::resolve(&snap, &req, true).await;
                &out[..]
            }
        };
        framed.clear();
        framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        framed.extend_from_slice(reply);
        stream.write_all(&framed).await?;
    }
}
