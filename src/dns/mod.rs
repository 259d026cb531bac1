//! DNS for the cluster: authoritative for the cluster domain and the node subnet's reverse
//! zone(s), a forwarder to `network.upstream_dns` for clients inside the cluster's networks,
//! REFUSED for everyone else.
//!
//! Layers: `zone` decides (pure, unit-tested); `handle` is the whole request path for one
//! packet (parse -> answer -> encode, synchronous, the fuzz target); `fast` holds precomputed
//! answers for in-zone names so the hot path is a table lookup; `server` moves packets
//! (UDP and TCP) and `forward` talks to upstream resolvers.

mod fast;
mod forward;
#[cfg(target_os = "linux")]
mod mmsg;
mod server;
pub mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use ipnet::Ipv4Net;

pub use server::{bind, serve};
pub use zone::Zone;

use crate::plan::Plan;

/// Largest UDP payload we advertise and send with EDNS (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Port of the upstream resolvers (the description lists addresses only).
pub const UPSTREAM_PORT: u16 = 53;

/// Counters for the DNS server; read them for logs and status.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Packets that could not be parsed as a DNS query (dropped, never answered).
    pub malformed: AtomicU64,
    /// Queries forwarded to an upstream resolver.
    pub forwarded: AtomicU64,
    /// Forwarded queries no upstream answered (the client got SERVFAIL).
    pub forward_failed: AtomicU64,
    /// Out-of-zone queries refused (client outside the cluster networks, or no upstreams).
    pub refused: AtomicU64,
}

pub static METRICS: Metrics = Metrics {
    malformed: AtomicU64::new(0),
    forwarded: AtomicU64::new(0),
    forward_failed: AtomicU64::new(0),
    refused: AtomicU64::new(0),
};

impl Metrics {
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// How the query arrived: UDP answers are limited in size, TCP ones are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Everything the request path needs, built once per plan generation / lease change and
/// swapped atomically.
#[derive(Debug)]
pub struct Snapshot {
    pub zone: Zone,
    fast: fast::Table,
    upstreams: Vec<SocketAddr>,
    /// Clients allowed to use the forwarder (plus loopback).
    allowed: Vec<Ipv4Net>,
    /// (plan generation, dynamic-host version) this was built from.
    pub version: (u64, u64),
}

impl Snapshot {
    pub fn new(plan: &Plan, dynamic: &[(String, Ipv4Addr)], version: (u64, u64)) -> Snapshot {
        // The serial grows with every change: generation in the high bits, leases below.
        let serial = ((version.0 as u32) << 16) | (version.1 as u32 & 0xffff);
        let zone = Zone::new(plan, dynamic, serial);
        let upstreams: Vec<SocketAddr> = plan
            .network
            .upstream_dns
            .iter()
            .map(|ip| SocketAddr::new(*ip, UPSTREAM_PORT))
            .collect();
        let mut snap = Snapshot {
            zone,
            fast: fast::Table::default(),
            allowed: vec![
                plan.network.subnet,
                plan.cluster.pod_cidr,
                plan.cluster.service_cidr,
            ],
            upstreams,
            version,
        };
        snap.fast = fast::Table::build(&snap);
        snap
    }

    /// Replaces the upstream resolvers (tests and benchmarks use other ports than 53).
    pub fn with_upstreams(mut self, upstreams: Vec<SocketAddr>) -> Snapshot {
        self.upstreams = upstreams;
        self.fast = fast::Table::build(&self);
        self
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    fn recursion_available(&self) -> bool {
        !self.upstreams.is_empty()
    }

    /// Whether `client` may have out-of-zone names resolved through us (no open resolver).
    pub fn may_forward(&self, client: IpAddr) -> bool {
        let v4 = match client {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4,
                None => return v6.is_loopback(),
            },
        };
        v4.is_loopback() || self.allowed.iter().any(|n| n.contains(&v4))
    }
}

/// What to do with one received packet.
#[derive(Debug)]
pub enum Action {
    /// Send the bytes written to `out`.
    Reply,
    /// Resolve through the upstreams; the server does the I/O.
    Forward(Box<ForwardRequest>),
    /// Malformed or not a query: counted, no answer.
    Drop,
}

/// An out-of-zone query from an allowed client.
#[derive(Debug)]
pub struct ForwardRequest {
    /// The client's query as parsed (its ID, question and EDNS shape the reply).
    pub request: Message,
    /// The client's packet, sent upstream under a fresh ID.
    pub packet: Vec<u8>,
    /// Largest reply the client accepts (UDP); `None` over TCP.
    pub size_limit: Option<usize>,
}

/// The largest UDP reply `request` accepts.
fn udp_limit(request: &Message) -> usize {
    match &request.edns {
        Some(e) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
        None => 512,
    }
}

/// The whole request path for one packet: parse, decide, encode. The reply (if any) is
/// written to `out` (cleared first). Never panics on any input (fuzzed).
pub fn handle(
    snap: &Snapshot,
    packet: &[u8],
    client: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Action {
    out.clear();
    if fast::answer(&snap.fast, packet, out) {
        return Action::Reply;
    }
    out.clear();
    slow(snap, packet, client, transport, out)
}

fn malformed(why: &str, client: IpAddr) -> Action {
    count(&METRICS.malformed);
    tracing::debug!(%client, why, "dropped malformed DNS packet");
    Action::Drop
}

fn slow(
    snap: &Snapshot,
    packet: &[u8],
    client: IpAddr,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Action {
    // The header first: a query count other than one is answered (FORMERR) without decoding
    // thousands of claimed questions.
    let header = match Header::read(&mut BinDecoder::new(packet)) {
        Ok(h) => h,
        Err(_) => return malformed("short header", client),
    };
    if header.metadata.message_type != MessageType::Query {
        // Never answer a response: that is how reflection loops start.
        return malformed("not a query", client);
    }
    if header.counts.queries != 1 {
        let mut resp = Message::error_msg(
            header.metadata.id,
            header.metadata.op_code,
            ResponseCode::FormErr,
        );
        resp.metadata.recursion_desired = header.metadata.recursion_desired;
        return encode(snap, resp, None, transport, out);
    }
    let request = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => return malformed("undecodable message", client),
    };
    let limit = match transport {
        Transport::Udp => udp_limit(&request),
        Transport::Tcp => usize::from(u16::MAX),
    };

    if request.metadata.op_code != OpCode::Query {
        let resp = error_reply(&request, ResponseCode::NotImp);
        return encode(snap, resp, Some((&request, limit)), transport, out);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        let resp = error_reply(&request, ResponseCode::BADVERS);
        return encode(snap, resp, Some((&request, limit)), transport, out);
    }
    if let Some(resp) = snap.zone.answer(&request) {
        return encode(snap, resp, Some((&request, limit)), transport, out);
    }
    if snap.upstreams.is_empty() || !snap.may_forward(client) {
        count(&METRICS.refused);
        let resp = error_reply(&request, ResponseCode::Refused);
        return encode(snap, resp, Some((&request, limit)), transport, out);
    }
    Action::Forward(Box::new(ForwardRequest {
        packet: packet.to_vec(),
        size_limit: (transport == Transport::Udp).then_some(limit),
        request,
    }))
}

/// A reply to `request` with no records and the given code.
pub fn error_reply(request: &Message, code: ResponseCode) -> Message {
    let mut resp = Message::error_msg(request.metadata.id, request.metadata.op_code, code);
    resp.metadata.recursion_desired = request.metadata.recursion_desired;
    resp.metadata.checking_disabled = request.metadata.checking_disabled;
    resp.add_queries(request.queries.iter().cloned());
    resp
}

/// Finishes a response for `request` (RA, EDNS mirrored from the request) and encodes it
/// within the client's size limit (TC when it does not fit).
fn encode(
    snap: &Snapshot,
    mut resp: Message,
    request: Option<(&Message, usize)>,
    transport: Transport,
    out: &mut Vec<u8>,
) -> Action {
    finish(snap, &mut resp, request.map(|(r, _)| r));
    let limit = match (transport, request) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some((_, l))) => l,
        (Transport::Udp, None) => 512,
    };
    match write_limited(&resp, limit, out) {
        true => Action::Reply,
        false => Action::Drop,
    }
}

/// Sets RA and the response OPT record. Shared with the precomputed answers so both paths
/// produce the same bytes.
fn finish(snap: &Snapshot, resp: &mut Message, request: Option<&Message>) {
    resp.metadata.recursion_available = snap.recursion_available();
    if let Some(req_edns) = request.and_then(|r| r.edns.as_ref()) {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_version(0);
        edns.set_dnssec_ok(req_edns.flags().dnssec_ok);
        // The high bits of an extended RCODE (BADVERS) are filled in when encoding.
        resp.set_edns(edns);
    }
}

/// Encodes `resp` into `out`; if it is longer than `limit`, sends the question only with TC.
fn write_limited(resp: &Message, limit: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => {
            out.extend_from_slice(&bytes);
            true
        }
        Ok(_) => match resp.truncate().to_vec() {
            Ok(bytes) if bytes.len() <= limit => {
                out.extend_from_slice(&bytes);
                true
            }
            _ => false,
        },
        Err(e) => {
            tracing::debug!(error = %e, "could not encode a DNS response");
            false
        }
    }
}

#[cfg(test)]
mod tests;
