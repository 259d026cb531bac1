//! DHCPv4 wire format: bytes -> a typed `Request`, and a typed `Reply` -> bytes. No decisions
//! here. dhcproto does the parsing; everything it hands back is checked before use (it panics
//! on `chaddr()` with a bogus `hlen`, and on odd option lengths with debug assertions on).

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};

use crate::desc::Mac;

/// How a client boots, from options 60 (vendor class), 77 (user class) and 93 (architecture).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClass {
    /// An ordinary DHCP client (an OS, dhclient): address only.
    Plain,
    /// Firmware PXE (`PXEClient`): wants a TFTP boot file for its architecture.
    Pxe { arch: u16 },
    /// UEFI HTTP boot (`HTTPClient`): wants an HTTP URL; option 60 must be echoed.
    HttpBoot { arch: u16 },
    /// iPXE (user class `iPXE`): wants the HTTP URL of its boot script.
    Ipxe { arch: u16 },
}

/// A parsed client message, with everything the decision logic looks at.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: MessageType,
    pub xid: u32,
    pub mac: Mac,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub broadcast: bool,
    pub hops: u8,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub class: ClientClass,
    pub hostname: Option<String>,
    /// Option 82 as received, echoed in replies to relays (RFC 3046).
    pub relay_info: Option<DhcpOption>,
    /// Largest reply the client accepts (option 57), at least 576.
    pub max_size: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("not a DHCPv4 message: {0}")]
    Malformed(String),
    #[error("not a client request (op {0})")]
    NotRequest(u8),
    #[error("unsupported hardware address (htype {htype:?}, hlen {hlen})")]
    Hardware { htype: String, hlen: u8 },
    #[error("no message type option")]
    NoMessageType,
}

/// Parses a datagram received on a server port.
pub fn parse(bytes: &[u8]) -> Result<Request, ParseError> {
    // A DHCP message has a 236-byte fixed header and the 4-byte magic cookie.
    if bytes.len() < 240 {
        return Err(ParseError::Malformed(format!(
            "{} bytes is too short",
            bytes.len()
        )));
    }
    // dhcproto is not expected to panic in release builds, but a malformed packet must never
    // take the server down: contain any panic to this one packet.
    let msg = std::panic::catch_unwind(|| Message::from_bytes(bytes))
        .map_err(|_| ParseError::Malformed("decoder panicked".into()))?
        .map_err(|e| ParseError::Malformed(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(ParseError::NotRequest(bytes[0]));
    }
    if msg.htype() != HType::Eth || msg.hlen() != 6 {
        return Err(ParseError::Hardware {
            htype: format!("{:?}", msg.htype()),
            hlen: msg.hlen(),
        });
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&msg.chaddr()[..6]);
    let opts = msg.opts();
    let kind = opts.msg_type().ok_or(ParseError::NoMessageType)?;
    let requested_ip = match opts.get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let hostname = match opts.get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => sanitize_hostname(h),
        _ => None,
    };
    let max_size = match opts.get(OptionCode::MaxMessageSize) {
        Some(DhcpOption::MaxMessageSize(n)) => usize::from(*n).max(576),
        _ => 576,
    };
    Ok(Request {
        kind,
        xid: msg.xid(),
        mac: Mac(mac),
        ciaddr: msg.ciaddr(),
        giaddr: msg.giaddr(),
        broadcast: msg.flags().broadcast(),
        hops: msg.hops(),
        requested_ip,
        server_id,
        class: classify(opts),
        hostname,
        relay_info: opts.get(OptionCode::RelayAgentInformation).cloned(),
        max_size,
    })
}

/// A client's own host name is only used for DNS of dynamic machines: keep it to one
/// lower-case RFC 1123 label or drop it.
fn sanitize_hostname(h: &str) -> Option<String> {
    let label = h.split('.').next()?.to_ascii_lowercase();
    crate::desc::types::check_label(&label).ok().map(|_| label)
}

fn classify(opts: &v4::DhcpOptions) -> ClientClass {
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => u16::from(*a),
        _ => 0,
    };
    let user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => v.as_slice(),
        _ => &[],
    };
    // iPXE sends "iPXE" bare, RFC 3004 clients length-prefix it: a substring test covers both.
    if user_class.windows(4).any(|w| w == b"iPXE") {
        return ClientClass::Ipxe { arch };
    }
    match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) if v.starts_with(b"HTTPClient") => {
            ClientClass::HttpBoot { arch }
        }
        Some(DhcpOption::ClassIdentifier(v)) if v.starts_with(b"PXEClient") => {
            ClientClass::Pxe { arch }
        }
        _ => ClientClass::Plain,
    }
}

/// Where a reply goes, decided from the request (RFC 2131 4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// To a relay agent's giaddr, server port 67.
    Relay(Ipv4Addr),
    /// To a client that has an address (renewing, INFORM): ciaddr, client port 68.
    Unicast(Ipv4Addr),
    /// To a client without an address: limited broadcast on the bound interface.
    Broadcast,
    /// To the source address and port the request came from (ProxyDHCP port 4011).
    Source,
}

/// A reply's content. Built by the decision logic; `encode` turns it into bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub kind: MessageType,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub server_id: Ipv4Addr,
    pub lease_secs: Option<u32>,
    pub subnet_mask: Option<Ipv4Addr>,
    pub broadcast_addr: Option<Ipv4Addr>,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub hostname: Option<String>,
    pub ntp: Vec<Ipv4Addr>,
    pub mtu: Option<u16>,
    /// Boot file (TFTP name or HTTP URL), sent both in the header `file` and option 67.
    pub boot_file: Option<String>,
    /// Option 66 (TFTP server name) for firmware that ignores siaddr.
    pub tftp_server: Option<String>,
    /// Option 60 echoed: `PXEClient` or `HTTPClient` (UEFI ignores offers without it).
    pub vendor_class: Option<&'static str>,
    /// iPXE option 175.176 "no-pxedhcp": do not wait for ProxyDHCP offers.
    pub ipxe_no_proxydhcp: bool,
    pub message: Option<String>,
}

impl Reply {
    pub fn new(kind: MessageType, server_id: Ipv4Addr) -> Reply {
        Reply {
            kind,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            server_id,
            lease_secs: None,
            subnet_mask: None,
            broadcast_addr: None,
            routers: Vec::new(),
            dns: Vec::new(),
            domain: None,
            hostname: None,
            ntp: Vec::new(),
            mtu: None,
            boot_file: None,
            tftp_server: None,
            vendor_class: None,
            ipxe_no_proxydhcp: false,
            message: None,
        }
    }
}

/// Encodes `reply` as an answer to `req`: xid, chaddr, giaddr and flags come from the request;
/// option 82 is echoed when the request came through a relay.
pub fn encode(req: &Request, reply: &Reply) -> Vec<u8> {
    let mut out = Vec::with_capacity(576);
    encode_into(req, reply, &mut out);
    out
}

/// [`encode`] into `out` (cleared first), without allocating when `out` has room. Writes
/// what dhcproto's encoder writes for the same message, byte for byte (a test holds it to
/// that): the BOOTP header, then the options in code order, option 82 last, End.
pub fn encode_into(req: &Request, reply: &Reply, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[2, 1, 6, req.hops]); // op BOOTREPLY, htype Ethernet, hlen 6
    out.extend_from_slice(&req.xid.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // secs
    out.extend_from_slice(
        &(if broadcast_flag(req, reply) {
            0x8000u16
        } else {
            0
        })
        .to_be_bytes(),
    );
    let ciaddr = if reply.kind == MessageType::Nak {
        Ipv4Addr::UNSPECIFIED
    } else {
        req.ciaddr
    };
    for a in [ciaddr, reply.yiaddr, reply.siaddr, req.giaddr] {
        out.extend_from_slice(&a.octets());
    }
    out.extend_from_slice(&req.mac.0);
    out.extend_from_slice(&[0; 10 + 64]); // rest of chaddr, sname
    let file = reply.boot_file.as_deref().filter(|f| f.len() < 128);
    let file = file.map_or(&[][..], str::as_bytes);
    out.extend_from_slice(file);
    out.resize(out.len() + 128 - file.len(), 0);
    out.extend_from_slice(&[99, 130, 83, 99]); // magic cookie

    let ips = |out: &mut Vec<u8>, code: u8, ips: &[Ipv4Addr]| {
        // At most 63 addresses (252 bytes) per instance, as dhcproto splits them.
        for chunk in ips.chunks(63) {
            out.extend_from_slice(&[code, (chunk.len() * 4) as u8]);
            for ip in chunk {
                out.extend_from_slice(&ip.octets());
            }
        }
    };
    let bytes = |out: &mut Vec<u8>, code: u8, data: &[u8]| {
        for chunk in data.chunks(255) {
            out.extend_from_slice(&[code, chunk.len() as u8]);
            out.extend_from_slice(chunk);
        }
    };
    let ip = |out: &mut Vec<u8>, code: u8, ip: Ipv4Addr| {
        out.extend_from_slice(&[code, 4]);
        out.extend_from_slice(&ip.octets());
    };
    let u32_opt = |out: &mut Vec<u8>, code: u8, v: u32| {
        out.extend_from_slice(&[code, 4]);
        out.extend_from_slice(&v.to_be_bytes());
    };
    if let Some(m) = reply.subnet_mask {
        ip(out, 1, m);
    }
    ips(out, 3, &reply.routers);
    ips(out, 6, &reply.dns);
    if let Some(h) = &reply.hostname {
        bytes(out, 12, h.as_bytes());
    }
    if let Some(d) = &reply.domain {
        bytes(out, 15, d.as_bytes());
    }
    if let Some(mtu) = reply.mtu {
        out.extend_from_slice(&[26, 2]);
        out.extend_from_slice(&mtu.to_be_bytes());
    }
    if let Some(b) = reply.broadcast_addr {
        ip(out, 28, b);
    }
    ips(out, 42, &reply.ntp);
    if let Some(secs) = reply.lease_secs {
        u32_opt(out, 51, secs);
    }
    out.extend_from_slice(&[53, 1, u8::from(reply.kind)]);
    ip(out, 54, reply.server_id);
    if let Some(m) = &reply.message {
        bytes(out, 56, m.as_bytes());
    }
    if let Some(secs) = reply.lease_secs {
        u32_opt(out, 58, secs / 2);
        u32_opt(out, 59, secs / 8 * 7);
    }
    if let Some(vc) = reply.vendor_class {
        bytes(out, 60, vc.as_bytes());
    }
    if let Some(t) = &reply.tftp_server {
        bytes(out, 66, t.as_bytes());
    }
    if let Some(file) = &reply.boot_file {
        bytes(out, 67, file.as_bytes());
    }
    if reply.ipxe_no_proxydhcp {
        // Encapsulated iPXE options (175): sub-option 176 no-pxedhcp, length 1, value 1.
        out.extend_from_slice(&[175, 3, 176, 1, 1]);
    }
    if !req.giaddr.is_unspecified()
        && let Some(ri) = &req.relay_info
    {
        // Re-encoded as dhcproto parsed it (rare: only relayed requests carry it). Its
        // encoder writes from the start of the buffer it gets, hence the separate one.
        let mut buf = Vec::new();
        match ri.encode(&mut dhcproto::encoder::Encoder::new(&mut buf)) {
            Ok(()) => out.extend_from_slice(&buf),
            Err(e) => tracing::debug!(error = %e, "relay agent information not echoed"),
        }
    }
    out.push(255);
}

/// The reply's broadcast flag: the client's, and always set on a NAK through a relay, which
/// must broadcast it to a client whose address is in doubt (RFC 2131 4.3.2).
fn broadcast_flag(req: &Request, reply: &Reply) -> bool {
    req.broadcast || (reply.kind == MessageType::Nak && !req.giaddr.is_unspecified())
}

/// The dhcproto encoding [`encode_into`] must equal.
#[cfg(test)]
fn encode_dhcproto(req: &Request, reply: &Reply) -> Vec<u8> {
    let mut msg = Message::new_with_id(
        req.xid,
        if reply.kind == MessageType::Nak {
            Ipv4Addr::UNSPECIFIED
        } else {
            req.ciaddr
        },
        reply.yiaddr,
        reply.siaddr,
        req.giaddr,
        &req.mac.0,
    );
    msg.set_opcode(Opcode::BootReply);
    msg.set_hops(req.hops);
    let mut flags = v4::Flags::default();
    if broadcast_flag(req, reply) {
        flags = flags.set_broadcast();
    }
    msg.set_flags(flags);
    if let Some(file) = &reply.boot_file
        && file.len() < 128
    {
        msg.set_fname_str(file);
    }
    let o = msg.opts_mut();
    o.insert(DhcpOption::MessageType(reply.kind));
    o.insert(DhcpOption::ServerIdentifier(reply.server_id));
    if let Some(secs) = reply.lease_secs {
        o.insert(DhcpOption::AddressLeaseTime(secs));
        o.insert(DhcpOption::Renewal(secs / 2));
        o.insert(DhcpOption::Rebinding(secs / 8 * 7));
    }
    if let Some(m) = reply.subnet_mask {
        o.insert(DhcpOption::SubnetMask(m));
    }
    if let Some(b) = reply.broadcast_addr {
        o.insert(DhcpOption::BroadcastAddr(b));
    }
    if !reply.routers.is_empty() {
        o.insert(DhcpOption::Router(reply.routers.clone()));
    }
    if !reply.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(reply.dns.clone()));
    }
    if let Some(d) = &reply.domain {
        o.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(h) = &reply.hostname {
        o.insert(DhcpOption::Hostname(h.clone()));
    }
    if !reply.ntp.is_empty() {
        o.insert(DhcpOption::NtpServers(reply.ntp.clone()));
    }
    if let Some(mtu) = reply.mtu {
        o.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(file) = &reply.boot_file {
        o.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
    if let Some(t) = &reply.tftp_server {
        o.insert(DhcpOption::TFTPServerName(t.as_bytes().to_vec()));
    }
    if let Some(vc) = reply.vendor_class {
        o.insert(DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()));
    }
    if reply.ipxe_no_proxydhcp {
        // Encapsulated iPXE options (175): sub-option 176 no-pxedhcp, length 1, value 1.
        o.insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1],
        )));
    }
    if let Some(m) = &reply.message {
        o.insert(DhcpOption::Message(m.clone()));
    }
    if !req.giaddr.is_unspecified()
        && let Some(ri) = &req.relay_info
    {
        o.insert(ri.clone());
    }
    // Encoding our own well-formed message cannot fail; an empty vec is dropped by the caller.
    msg.to_vec().unwrap_or_default()
}

/// Where to send the reply to `req` (RFC 2131 4.1), before any proxy-port override.
pub fn destination(req: &Request, reply_kind: MessageType) -> Destination {
    if !req.giaddr.is_unspecified() {
        Destination::Relay(req.giaddr)
    } else if reply_kind == MessageType::Nak {
        Destination::Broadcast
    } else if !req.ciaddr.is_unspecified() {
        Destination::Unicast(req.ciaddr)
    } else {
        Destination::Broadcast
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a client message the way a real client lays it out.
    pub fn client_msg(kind: MessageType, mac: [u8; 6], extra: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            m.opts_mut().insert(o);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn classifies_clients() {
        let mac = [0x52, 0x54, 0, 0, 0, 1];
        let parse_with = |opts| {
            parse(&client_msg(MessageType::Discover, mac, opts))
                .unwrap()
                .class
        };
        assert_eq!(parse_with(vec![]), ClientClass::Plain);
        assert_eq!(
            parse_with(vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientSystemArchitecture(0u16.into()),
            ]),
            ClientClass::Pxe { arch: 0 }
        );
        assert_eq!(
            parse_with(vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007".to_vec()),
                DhcpOption::ClientSystemArchitecture(7u16.into()),
            ]),
            ClientClass::Pxe { arch: 7 }
        );
        assert_eq!(
            parse_with(vec![
                DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016".to_vec()),
                DhcpOption::ClientSystemArchitecture(16u16.into()),
            ]),
            ClientClass::HttpBoot { arch: 16 }
        );
        assert_eq!(
            parse_with(vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000".to_vec()),
                DhcpOption::UserClass(b"iPXE".to_vec()),
            ]),
            ClientClass::Ipxe { arch: 0 }
        );
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        assert!(matches!(parse(&[0u8; 10]), Err(ParseError::Malformed(_))));
        let mut bytes = client_msg(MessageType::Discover, [1, 2, 3, 4, 5, 6], vec![]);
        bytes[2] = 200; // hlen: dhcproto's chaddr() would panic on this
        assert!(matches!(parse(&bytes), Err(ParseError::Hardware { .. })));
        let mut reply = client_msg(MessageType::Discover, [1, 2, 3, 4, 5, 6], vec![]);
        reply[0] = 2;
        assert!(matches!(parse(&reply), Err(ParseError::NotRequest(2))));
    }

    #[test]
    fn encoder_writes_what_dhcproto_writes() {
        use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};
        let mut relay = RelayAgentInformation::default();
        relay.insert(RelayInfo::AgentCircuitId(b"eth0/7".to_vec()));
        let plain = client_msg(MessageType::Request, [0x52, 0x54, 0, 0, 0, 9], vec![]);
        let mut relayed = Message::from_bytes(&client_msg(
            MessageType::Discover,
            [2, 0, 0, 0, 0, 1],
            vec![DhcpOption::RelayAgentInformation(relay)],
        ))
        .unwrap();
        relayed.set_giaddr(Ipv4Addr::new(10, 0, 7, 1));
        relayed.set_hops(1);
        relayed.set_flags(v4::Flags::default().set_broadcast());
        let relayed = relayed.to_vec().unwrap();
        let server = Ipv4Addr::new(10, 0, 0, 2);
        let mut full = Reply::new(MessageType::Ack, server);
        full.yiaddr = Ipv4Addr::new(10, 0, 0, 11);
        full.siaddr = server;
        full.lease_secs = Some(86_400);
        full.subnet_mask = Some(Ipv4Addr::new(255, 255, 0, 0));
        full.broadcast_addr = Some(Ipv4Addr::new(10, 0, 255, 255));
        full.routers = vec![Ipv4Addr::new(10, 0, 0, 1)];
        full.dns = (0..70).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        full.domain = Some("cluster.lan".into());
        full.hostname = Some("node-9".into());
        full.ntp = vec![Ipv4Addr::new(10, 0, 0, 3), Ipv4Addr::new(10, 0, 0, 4)];
        full.mtu = Some(9000);
        full.boot_file = Some("undionly.kpxe".into());
        full.tftp_server = Some("10.0.0.2".into());
        full.vendor_class = Some("PXEClient");
        full.ipxe_no_proxydhcp = true;
        let mut long = Reply::new(MessageType::Offer, server);
        long.boot_file = Some(format!(
            "http://10.0.0.2:8080/boot/{}.ipxe",
            "x".repeat(300)
        ));
        long.hostname = Some(String::new());
        let mut nak = Reply::new(MessageType::Nak, server);
        nak.message = Some("address 10.0.0.99 is not yours".into());
        let mut out = Vec::new();
        for bytes in [&plain, &relayed] {
            let mut req = parse(bytes).unwrap();
            for reply in [&full, &long, &nak, &Reply::new(MessageType::Offer, server)] {
                encode_into(&req, reply, &mut out);
                assert_eq!(out, encode_dhcproto(&req, reply), "{reply:?}");
                req.ciaddr = Ipv4Addr::new(10, 0, 0, 11);
            }
        }
    }

    #[test]
    fn reply_round_trips_with_options() {
        let req = parse(&client_msg(
            MessageType::Discover,
            [0x52, 0x54, 0, 0, 0, 9],
            vec![DhcpOption::Hostname("Node-9.example".into())],
        ))
        .unwrap();
        assert_eq!(req.hostname.as_deref(), Some("node-9"));
        let server = Ipv4Addr::new(10, 0, 0, 2);
        let mut r = Reply::new(MessageType::Offer, server);
        r.yiaddr = Ipv4Addr::new(10, 0, 0, 11);
        r.lease_secs = Some(3600);
        r.boot_file = Some("undionly.kpxe".into());
        r.ipxe_no_proxydhcp = true;
        let bytes = encode(&req, &r);
        let m = Message::from_bytes(&bytes).unwrap();
        assert_eq!(m.opcode(), Opcode::BootReply);
        assert_eq!(m.xid(), req.xid);
        assert_eq!(m.yiaddr(), r.yiaddr);
        assert_eq!(m.chaddr(), &req.mac.0);
        assert_eq!(
            m.fname_str()
                .unwrap()
                .unwrap()
                .trim_end_matches(char::from(0)),
            "undionly.kpxe"
        );
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert!(matches!(
            m.opts().get(OptionCode::Renewal),
            Some(DhcpOption::Renewal(1800))
        ));
        assert!(matches!(
            m.opts().get(OptionCode::Rebinding),
            Some(DhcpOption::Rebinding(3150))
        ));
        match m.opts().get(OptionCode::Unknown(175)) {
            Some(DhcpOption::Unknown(u)) => assert_eq!(u.data(), &[176, 1, 1]),
            other => panic!("{other:?}"),
        }
    }
}
