//! Forwarding out-of-zone queries to the upstream resolvers: in order, each with a timeout,
//! the next on failure; over TCP when the client used TCP or the UDP answer was truncated.
//! Each exchange uses a fresh socket (random source port) and a fresh random ID, and only a
//! reply that matches the ID and the question is accepted.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{ForwardRequest, METRICS, Snapshot, count, error_reply, finish, write_limited};

/// How long one upstream gets for one exchange before the next is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);

/// A 16-bit ID that off-path attackers cannot predict (SipHash with random keys).
fn random_id() -> u16 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish() as u16
}

/// Resolves `req` through `snap`'s upstreams. Returns the reply bytes for the client: the
/// upstream's answer under the client's ID, or SERVFAIL when no upstream answered.
pub async fn resolve(snap: &Snapshot, req: &ForwardRequest, tcp: bool) -> Vec<u8> {
    count(&METRICS.forwarded);
    for upstream in snap.upstreams() {
        let id = random_id();
        let mut packet = req.packet.clone();
        packet[..2].copy_from_slice(&id.to_be_bytes());
        let mut result = if tcp {
            exchange_tcp(*upstream, &packet).await
        } else {
            exchange_udp(*upstream, &packet, id, &req.request).await
        };
        if let Ok(reply) = &result
            && !tcp
            && reply.len() > 2
            && reply[2] & 0x02 != 0
        {
            // Truncated over UDP: ask the same upstream over TCP.
            result = exchange_tcp(*upstream, &packet).await;
        }
        match result.and_then(|r| accept(r, id, &req.request)) {
            Ok(mut reply) => {
                reply[..2].copy_from_slice(&req.request.metadata.id.to_be_bytes());
                return fit(snap, reply, req);
            }
            Err(e) => tracing::debug!(%upstream, error = %e, "upstream DNS exchange failed"),
        }
    }
    count(&METRICS.forward_failed);
    let mut resp = error_reply(&req.request, ResponseCode::ServFail);
    finish(snap, &mut resp, Some(&req.request));
    let mut out = Vec::new();
    write_limited(
        &resp,
        req.size_limit.unwrap_or(usize::from(u16::MAX)),
        &mut out,
    );
    out
}

/// The upstream reply if it answers our question under our ID.
fn accept(reply: Vec<u8>, id: u16, request: &Message) -> std::io::Result<Vec<u8>> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let msg = Message::from_vec(&reply).map_err(|_| bad("undecodable reply"))?;
    if msg.metadata.id != id || msg.metadata.message_type != MessageType::Response {
        return Err(bad("reply ID or type mismatch"));
    }
    if msg.queries != request.queries {
        return Err(bad("reply question mismatch"));
    }
    Ok(reply)
}

/// The reply as the client may receive it: cut to the question with TC if it is too long
/// for the client's UDP size.
fn fit(snap: &Snapshot, reply: Vec<u8>, req: &ForwardRequest) -> Vec<u8> {
    match req.size_limit {
        Some(limit) if reply.len() > limit => {
            let mut resp = match Message::from_vec(&reply) {
                Ok(m) => m.truncate(),
                Err(_) => error_reply(&req.request, ResponseCode::ServFail),
            };
            resp.metadata.truncation = true;
            resp.edns = None;
            finish(snap, &mut resp, Some(&req.request));
            resp.metadata.recursion_available = true;
            let mut out = Vec::new();
            write_limited(&resp, limit, &mut out);
            out
        }
        _ => reply,
    }
}

fn unspecified(upstream: SocketAddr) -> SocketAddr {
    match upstream.ip() {
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
    }
}

async fn exchange_udp(
    upstream: SocketAddr,
    packet: &[u8],
    id: u16,
    request: &Message,
) -> std::io::Result<Vec<u8>> {
    let sock = UdpSocket::bind(unspecified(upstream)).await?;
    sock.connect(upstream).await?;
    sock.send(packet).await?;
    let mut buf = vec![0u8; 65535];
    let wait = async {
        loop {
            let n = sock.recv(&mut buf).await?;
            // Stray or spoofed datagrams are skipped; the timeout bounds the wait.
            if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                let reply = buf[..n].to_vec();
                if accept(reply.clone(), id, request).is_ok() || reply[2] & 0x02 != 0 {
                    return Ok::<_, std::io::Error>(reply);
                }
            }
        }
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, wait).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "upstream timed out",
        )),
    }
}

async fn exchange_tcp(upstream: SocketAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    let io = async {
        let mut s = TcpStream::connect(upstream).await?;
        let mut framed = Vec::with_capacity(packet.len() + 2);
        framed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        framed.extend_from_slice(packet);
        s.write_all(&framed).await?;
        let len = s.read_u16().await?;
        let mut reply = vec![0u8; usize::from(len)];
        s.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    match tokio::time::timeout(UPSTREAM_TIMEOUT, io).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "upstream timed out",
        )),
    }
}
