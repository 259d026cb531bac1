//! DHCP decisions: a pure function of the plan, the lease table, the request and the time.
//! It returns the reply (if any), where it goes, and the store writes it implies.

use std::net::Ipv4Addr;

use dhcproto::v4::MessageType;

use super::boot::{self, BootFiles};
use super::leases::LeaseTable;
use super::packet::{ClientClass, Destination, Reply, Request};
use crate::desc::{DhcpMode, Mac, UnknownPolicy};
use crate::plan::Plan;
use crate::status::NodeState;
use crate::store::Op;

/// Which socket a request arrived on: ProxyDHCP clients send their REQUEST to port 4011.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Server,
    Proxy,
}

pub struct Ctx<'a> {
    pub plan: &'a Plan,
    /// MACs the operator approved: served from the pool like `enroll-worker` machines.
    pub approved: &'a std::collections::HashSet<Mac>,
    pub boot: BootFiles,
    pub now: u64,
    pub now_millis: u64,
}

/// Why a request got no reply (counted; logged at debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    UnknownMac,
    OtherServer,
    ForeignRelay,
    PoolExhausted,
    NotPxe,
    NoReplyNeeded,
    Unsupported,
    ModeOff,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub reply: Option<(Reply, Destination)>,
    /// Store writes. When `commit_first`, the reply is sent only after they are durable.
    pub ops: Vec<Op>,
    pub commit_first: bool,
    pub silence: Option<Silence>,
}

impl Outcome {
    fn silent(why: Silence) -> Outcome {
        Outcome {
            silence: Some(why),
            ..Default::default()
        }
    }
}

/// Who the client is to us: a node of the plan, or an unknown machine we may enroll.
struct Client {
    mac: Mac,
    reserved: Option<Ipv4Addr>,
    hostname: Option<String>,
    script_url: String,
}

fn identify(ctx: &Ctx, req: &Request) -> Option<Client> {
    let plan = ctx.plan;
    if let Some(n) = plan.node_by_mac(&req.mac) {
        return Some(Client {
            mac: n.mac,
            reserved: Some(n.ip),
            hostname: Some(n.hostname.clone()),
            script_url: n.boot.ipxe_script.clone(),
        });
    }
    let enroll = (plan.network.unknown_machines == UnknownPolicy::EnrollWorker
        || ctx.approved.contains(&req.mac))
        && plan.network.pool.is_some();
    enroll.then(|| Client {
        mac: req.mac,
        reserved: None,
        hostname: req.hostname.clone(),
        script_url: format!(
            "{}/boot/{}.ipxe",
            plan.bootstrapper.http_base,
            req.mac.url_form()
        ),
    })
}

/// The whole request path for one datagram without sockets: parse, decide, encode. The
/// server runs exactly these steps; the fuzz target and the robustness test call this.
pub fn respond(
    ctx: &Ctx,
    table: &mut LeaseTable,
    bytes: &[u8],
    port: Port,
) -> Result<(Outcome, Option<Vec<u8>>), super::packet::ParseError> {
    let req = super::packet::parse(bytes)?;
    let out = handle(ctx, table, &req, port);
    let wire = out
        .reply
        .as_ref()
        .map(|(reply, _)| super::packet::encode(&req, reply));
    Ok((out, wire))
}

pub fn handle(ctx: &Ctx, table: &mut LeaseTable, req: &Request, port: Port) -> Outcome {
    // Relayed requests must come from a relay on our subnet (we serve one subnet).
    if !req.giaddr.is_unspecified() && !ctx.plan.network.subnet.contains(&req.giaddr) {
        return Outcome::silent(Silence::ForeignRelay);
    }
    let Some(client) = identify(ctx, req) else {
        return Outcome::silent(Silence::UnknownMac);
    };
    match ctx.plan.network.dhcp_mode {
        DhcpMode::Authoritative => authoritative(ctx, table, req, &client),
        DhcpMode::Proxy => proxy(ctx, req, &client, port),
        DhcpMode::Off => Outcome::silent(Silence::ModeOff),
    }
}

fn authoritative(ctx: &Ctx, table: &mut LeaseTable, req: &Request, c: &Client) -> Outcome {
    let server = ctx.plan.bootstrapper.address;
    match req.kind {
        MessageType::Discover => {
            let ip = match c.reserved {
                Some(ip) => ip,
                None => match table.allocate(&c.mac, req.requested_ip, ctx.now) {
                    Some(ip) => ip,
                    None => return Outcome::silent(Silence::PoolExhausted),
                },
            };
            let mut ops = table.offer(c.mac, ip, ctx.now);
            let reply = address_reply(ctx, req, c, MessageType::Offer, ip);
            ops.extend(lifecycle(ctx, req, c, &reply));
            Outcome {
                reply: Some((reply, super::packet::destination(req, MessageType::Offer))),
                ops,
                ..Default::default()
            }
        }
        MessageType::Request => {
            if let Some(sid) = req.server_id
                && sid != server
            {
                table.cancel_offer(&c.mac);
                return Outcome::silent(Silence::OtherServer);
            }
            let Some(target) = req
                .requested_ip
                .or((!req.ciaddr.is_unspecified()).then_some(req.ciaddr))
            else {
                return Outcome::silent(Silence::Unsupported);
            };
            let expected = expected_address(ctx, table, req, c, target);
            if expected != Some(target) {
                let why = if ctx.plan.network.subnet.contains(&target) {
                    format!("address {target} is not yours")
                } else {
                    format!("address {target} is not on this network")
                };
                return nak(ctx, req, c, why);
            }
            let mut ops = table.bind(
                c.mac,
                target,
                ctx.now,
                ctx.plan.network.lease_time_secs,
                c.hostname.clone(),
            );
            let reply = address_reply(ctx, req, c, MessageType::Ack, target);
            ops.extend(lifecycle(ctx, req, c, &reply));
            Outcome {
                reply: Some((reply, super::packet::destination(req, MessageType::Ack))),
                ops,
                commit_first: true,
                silence: None,
            }
        }
        MessageType::Decline => {
            let Some(ip) = req.requested_ip else {
                return Outcome::silent(Silence::Unsupported);
            };
            if table.get(&c.mac).map(|e| e.ip) != Some(ip) {
                return Outcome::silent(Silence::NoReplyNeeded);
            }
            let mut ops = if c.reserved.is_some() {
                table.release(&c.mac)
            } else {
                table.decline(&c.mac, ip, ctx.now)
            };
            ops.push(event(
                "dhcp.decline",
                c,
                format!("{} reports {ip} already in use on the network", c.mac),
            ));
            Outcome {
                ops,
                silence: Some(Silence::NoReplyNeeded),
                ..Default::default()
            }
        }
        MessageType::Release => {
            let ops = if table.get(&c.mac).map(|e| e.ip) == Some(req.ciaddr) {
                table.release(&c.mac)
            } else {
                Vec::new()
            };
            Outcome {
                ops,
                silence: Some(Silence::NoReplyNeeded),
                ..Default::default()
            }
        }
        MessageType::Inform => {
            let mut reply = address_reply(ctx, req, c, MessageType::Ack, Ipv4Addr::UNSPECIFIED);
            reply.lease_secs = None; // RFC 2131 3.4: no lease time in an INFORM's ACK
            Outcome {
                reply: Some((reply, super::packet::destination(req, MessageType::Ack))),
                ..Default::default()
            }
        }
        _ => Outcome::silent(Silence::Unsupported),
    }
}

/// The address `c` may have, given what it asks for (None: it may have nothing we know of).
fn expected_address(
    ctx: &Ctx,
    table: &LeaseTable,
    req: &Request,
    c: &Client,
    target: Ipv4Addr,
) -> Option<Ipv4Addr> {
    if let Some(ip) = c.reserved {
        return Some(ip);
    }
    if let Some(e) = table.get(&c.mac)
        && table.available(e.ip, &c.mac, ctx.now)
    {
        return Some(e.ip);
    }
    // INIT-REBOOT of a client we have no record of (e.g. it kept its lease over our restart
    // from an older state): grant the address it asks for if it is a free pool address.
    let init_reboot = req.server_id.is_none() && req.requested_ip.is_some();
    (init_reboot && table.in_pool(target) && table.available(target, &c.mac, ctx.now))
        .then_some(target)
}

fn nak(ctx: &Ctx, req: &Request, c: &Client, why: String) -> Outcome {
    let mut reply = Reply::new(MessageType::Nak, ctx.plan.bootstrapper.address);
    reply.message = Some(why.clone());
    let ops = vec![event("dhcp.nak", c, format!("NAK to {}: {why}", c.mac))];
    Outcome {
        reply: Some((reply, super::packet::destination(req, MessageType::Nak))),
        ops,
        ..Default::default()
    }
}

/// An OFFER or ACK with the address, the network's options and the boot program.
fn address_reply(ctx: &Ctx, req: &Request, c: &Client, kind: MessageType, ip: Ipv4Addr) -> Reply {
    let plan = ctx.plan;
    let net = &plan.network;
    let mut r = Reply::new(kind, plan.bootstrapper.address);
    r.yiaddr = ip;
    r.lease_secs = Some(net.lease_time_secs);
    r.subnet_mask = Some(net.subnet.netmask());
    r.broadcast_addr = Some(net.subnet.broadcast());
    r.routers = vec![net.gateway];
    r.dns = vec![plan.bootstrapper.address];
    r.domain = Some(plan.cluster.domain.clone());
    r.hostname = c.hostname.clone();
    r.ntp = net.ntp.iter().filter_map(|n| n.parse().ok()).collect();
    r.mtu = Some(net.mtu);
    set_boot(ctx, req, c, &mut r);
    r
}

fn set_boot(ctx: &Ctx, req: &Request, c: &Client, r: &mut Reply) {
    let Some(b) = boot::choose(
        req.class,
        ctx.boot,
        &c.script_url,
        &ctx.plan.bootstrapper.http_base,
    ) else {
        return;
    };
    if b.tftp {
        r.siaddr = ctx.plan.bootstrapper.address;
        r.tftp_server = Some(ctx.plan.bootstrapper.address.to_string());
    }
    r.boot_file = Some(b.file);
    r.vendor_class = b.vendor_class;
    r.ipxe_no_proxydhcp = b.ipxe_no_proxydhcp;
}

/// ProxyDHCP (PXE spec): boot information only, never an address. DISCOVERs on port 67 get a
/// proxy offer; REQUESTs on port 4011 get the ACK with the boot file.
fn proxy(ctx: &Ctx, req: &Request, c: &Client, port: Port) -> Outcome {
    if req.class == ClientClass::Plain {
        return Outcome::silent(Silence::NotPxe);
    }
    let kind = match (req.kind, port) {
        (MessageType::Discover, _) => MessageType::Offer,
        (MessageType::Request, Port::Proxy) => MessageType::Ack,
        (MessageType::Request, Port::Server)
            if req.server_id == Some(ctx.plan.bootstrapper.address) =>
        {
            MessageType::Ack
        }
        _ => return Outcome::silent(Silence::NoReplyNeeded),
    };
    let mut r = Reply::new(kind, ctx.plan.bootstrapper.address);
    set_boot(ctx, req, c, &mut r);
    if r.boot_file.is_none() {
        return Outcome::silent(Silence::NotPxe);
    }
    // PXE clients only accept a proxy offer that names itself PXEClient.
    r.vendor_class.get_or_insert("PXEClient");
    // Do not tell iPXE to skip ProxyDHCP: we *are* the ProxyDHCP.
    r.ipxe_no_proxydhcp = false;
    let dest = match port {
        Port::Proxy => Destination::Source,
        Port::Server => super::packet::destination(req, kind),
    };
    let ops = lifecycle(ctx, req, c, &r);
    Outcome {
        reply: Some((r, dest)),
        ops,
        ..Default::default()
    }
}

/// Lifecycle updates for planned nodes: discovered on first contact, pxe when a boot program
/// is handed out. Forward-only in the store, so a reboot of an installed node changes nothing.
fn lifecycle(ctx: &Ctx, req: &Request, c: &Client, reply: &Reply) -> Vec<Op> {
    if c.reserved.is_none() || req.kind != MessageType::Discover && req.kind != MessageType::Request
    {
        return Vec::new();
    }
    let transition = |state, detail: String| Op::Transition {
        mac: c.mac.to_string(),
        hostname: c.hostname.clone(),
        state,
        detail: Some(detail),
        at_millis: ctx.now_millis,
        forward_only: true,
    };
    let mut ops = vec![transition(
        NodeState::Discovered,
        format!("DHCP {:?} from {}", req.kind, c.mac),
    )];
    if let Some(f) = &reply.boot_file {
        ops.push(transition(
            NodeState::Pxe,
            format!("PXE boot requested: {f}"),
        ));
    }
    ops
}

fn event(kind: &str, c: &Client, message: String) -> Op {
    Op::Event {
        kind: kind.to_string(),
        mac: Some(c.mac.to_string()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use dhcproto::v4::{DhcpOption, Message, OptionCode, relay};
    use dhcproto::{Decodable, Encodable};

    use super::*;
    use crate::dhcp::packet::{self, ClientClass};

    const KNOWN: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x21];
    const STRANGER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x99];

    fn plan(extra: &str) -> Plan {
        let yaml = format!(
            "cluster: {{name: c, domain: lab.test, kubernetes_version: 1.31.4}}\n\
             bootstrapper: {{interface: eth0, address: 10.20.0.2}}\n\
             network:\n  subnet: 10.20.0.0/24\n  gateway: 10.20.0.1\n  ntp: [10.20.0.5, pool.ntp.org]\n  dhcp: {{lease_time: 1h{extra}}}\n\
             os: {{profile: flatcar, version: 4081.2.0}}\n\
             nodes:\n  - {{mac: 52:54:00:00:00:11, hostname: cp-1, ip: 10.20.0.11, role: control-plane}}\n  \
             - {{mac: 52:54:00:00:00:21, hostname: worker-1, ip: 10.20.0.21, role: worker}}\n"
        );
        Plan::from_desc(&crate::desc::parse_str("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}")))
    }

    fn ctx(plan: &Plan) -> Ctx<'_> {
        static NONE: std::sync::LazyLock<std::collections::HashSet<Mac>> =
            std::sync::LazyLock::new(Default::default);
        Ctx {
            plan,
            approved: &NONE,
            boot: BootFiles::default(),
            now: 1000,
            now_millis: 1_000_000,
        }
    }

    fn request(
        kind: MessageType,
        mac: [u8; 6],
        opts: Vec<DhcpOption>,
        ciaddr: Ipv4Addr,
        giaddr: Ipv4Addr,
    ) -> Request {
        let mut m = Message::new_with_id(
            7,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            giaddr,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o);
        }
        packet::parse(&m.to_vec().unwrap()).unwrap()
    }

    fn req(kind: MessageType, mac: [u8; 6], opts: Vec<DhcpOption>) -> Request {
        request(
            kind,
            mac,
            opts,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
        )
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn known_node_gets_its_reserved_address_with_options() {
        let plan = plan("");
        let mut t = LeaseTable::new(None);
        let out = handle(
            &ctx(&plan),
            &mut t,
            &req(MessageType::Discover, KNOWN, vec![]),
            Port::Server,
        );
        let (offer, dest) = out.reply.unwrap();
        assert_eq!(dest, Destination::Broadcast);
        assert_eq!(offer.kind, MessageType::Offer);
        assert_eq!(offer.yiaddr, ip("10.20.0.21"));
        assert_eq!(offer.hostname.as_deref(), Some("worker-1"));
        assert_eq!(offer.dns, vec![ip("10.20.0.2")]);
        assert_eq!(offer.routers, vec![ip("10.20.0.1")]);
        assert_eq!(
            offer.ntp,
            vec![ip("10.20.0.5")],
            "only NTP entries that are addresses"
        );
        assert_eq!(offer.lease_secs, Some(3600));
        assert!(
            !out.commit_first,
            "an offer promises nothing: no wait for the disk"
        );
        assert!(matches!(
            &out.ops[0],
            Op::Transition {
                state: NodeState::Discovered,
                forward_only: true,
                ..
            }
        ));

        let r = req(
            MessageType::Request,
            KNOWN,
            vec![
                DhcpOption::RequestedIpAddress(ip("10.20.0.21")),
                DhcpOption::ServerIdentifier(ip("10.20.0.2")),
            ],
        );
        let out = handle(&ctx(&plan), &mut t, &r, Port::Server);
        assert_eq!(out.reply.as_ref().unwrap().0.kind, MessageType::Ack);
        assert!(out.commit_first, "an ACK waits for its lease to be durable");
        assert!(
            out.ops
                .iter()
                .any(|o| matches!(o, Op::PutLease(l) if l.ip == ip("10.20.0.21")))
        );
    }

    #[test]
    fn unknown_machines_are_ignored_by_default_and_enrolled_when_allowed() {
        let p = plan("");
        let mut t = LeaseTable::new(None);
        let out = handle(
            &ctx(&p),
            &mut t,
            &req(MessageType::Discover, STRANGER, vec![]),
            Port::Server,
        );
        assert!(out.reply.is_none() && out.ops.is_empty());
        assert_eq!(out.silence, Some(Silence::UnknownMac));

        let p =
            plan(", unknown_machines: enroll-worker, pool: {start: 10.20.0.200, end: 10.20.0.201}");
        let mut t = LeaseTable::new(p.network.pool);
        let out = handle(
            &ctx(&p),
            &mut t,
            &req(MessageType::Discover, STRANGER, vec![]),
            Port::Server,
        );
        let offer = out.reply.unwrap().0;
        assert_eq!(offer.yiaddr, ip("10.20.0.200"));
        assert!(
            out.ops.iter().all(|o| !matches!(o, Op::Transition { .. })),
            "no lifecycle for strangers"
        );

        // Under `ignore`, an approved MAC is served from the pool; others still are not.
        let p = plan(", pool: {start: 10.20.0.200, end: 10.20.0.201}");
        let mut t = LeaseTable::new(p.network.pool);
        let approved: std::collections::HashSet<Mac> =
            [req(MessageType::Discover, STRANGER, vec![]).mac].into();
        let ctx_approved = Ctx {
            approved: &approved,
            ..ctx(&p)
        };
        let out = handle(
            &ctx_approved,
            &mut t,
            &req(MessageType::Discover, STRANGER, vec![]),
            Port::Server,
        );
        assert_eq!(out.reply.unwrap().0.yiaddr, ip("10.20.0.200"));
        let out = handle(
            &ctx(&p),
            &mut t,
            &req(MessageType::Discover, STRANGER, vec![]),
            Port::Server,
        );
        assert_eq!(out.silence, Some(Silence::UnknownMac));
    }

    #[test]
    fn wrong_address_or_subnet_gets_a_nak() {
        let p = plan("");
        let mut t = LeaseTable::new(None);
        for (asked, why) in [
            ("10.20.0.99", "not yours"),
            ("192.168.1.5", "not on this network"),
        ] {
            let r = req(
                MessageType::Request,
                KNOWN,
                vec![DhcpOption::RequestedIpAddress(ip(asked))],
            );
            let out = handle(&ctx(&p), &mut t, &r, Port::Server);
            let (nak, dest) = out.reply.unwrap();
            assert_eq!(nak.kind, MessageType::Nak);
            assert_eq!(dest, Destination::Broadcast);
            assert!(nak.message.unwrap().contains(why));
            assert!(!out.commit_first);
        }
    }

    #[test]
    fn a_client_that_chose_another_server_is_left_alone() {
        let p = plan("");
        let mut t = LeaseTable::new(None);
        let r = req(
            MessageType::Request,
            KNOWN,
            vec![
                DhcpOption::RequestedIpAddress(ip("10.20.0.21")),
                DhcpOption::ServerIdentifier(ip("10.20.0.3")),
            ],
        );
        let out = handle(&ctx(&p), &mut t, &r, Port::Server);
        assert_eq!(out.silence, Some(Silence::OtherServer));
        assert!(out.reply.is_none());
    }

    #[test]
    fn renewal_inform_and_release() {
        let p = plan("");
        let mut t = LeaseTable::new(None);
        let renew = request(
            MessageType::Request,
            KNOWN,
            vec![],
            ip("10.20.0.21"),
            Ipv4Addr::UNSPECIFIED,
        );
        let (ack, dest) = handle(&ctx(&p), &mut t, &renew, Port::Server)
            .reply
            .unwrap();
        assert_eq!(
            (ack.kind, dest),
            (MessageType::Ack, Destination::Unicast(ip("10.20.0.21")))
        );

        let inform = request(
            MessageType::Inform,
            KNOWN,
            vec![],
            ip("10.20.0.21"),
            Ipv4Addr::UNSPECIFIED,
        );
        let (ack, _) = handle(&ctx(&p), &mut t, &inform, Port::Server)
            .reply
            .unwrap();
        assert_eq!(ack.kind, MessageType::Ack);
        assert_eq!(ack.lease_secs, None, "no lease time in an INFORM's ACK");

        let release = request(
            MessageType::Release,
            KNOWN,
            vec![],
            ip("10.20.0.21"),
            Ipv4Addr::UNSPECIFIED,
        );
        let out = handle(&ctx(&p), &mut t, &release, Port::Server);
        assert!(out.reply.is_none());
        assert!(
            out.ops
                .contains(&Op::DeleteLease("52:54:00:00:00:21".into()))
        );
    }

    #[test]
    fn declined_pool_address_is_quarantined_and_recorded() {
        let p =
            plan(", unknown_machines: enroll-worker, pool: {start: 10.20.0.200, end: 10.20.0.201}");
        let mut t = LeaseTable::new(p.network.pool);
        t.bind(Mac(STRANGER), ip("10.20.0.200"), 900, 3600, None);
        let d = req(
            MessageType::Decline,
            STRANGER,
            vec![DhcpOption::RequestedIpAddress(ip("10.20.0.200"))],
        );
        let out = handle(&ctx(&p), &mut t, &d, Port::Server);
        assert!(out.reply.is_none());
        assert!(
            out.ops
                .iter()
                .any(|o| matches!(o, Op::Event { kind, .. } if kind == "dhcp.decline"))
        );
        let again = handle(
            &ctx(&p),
            &mut t,
            &req(MessageType::Discover, STRANGER, vec![]),
            Port::Server,
        );
        assert_eq!(
            again.reply.unwrap().0.yiaddr,
            ip("10.20.0.201"),
            "the declined address is not offered"
        );
    }

    #[test]
    fn relayed_requests_answer_the_relay_and_echo_option_82() {
        let p = plan("");
        let mut t = LeaseTable::new(None);
        let mut info = relay::RelayAgentInformation::default();
        info.insert(relay::RelayInfo::AgentCircuitId(b"port7".to_vec()));
        let r = request(
            MessageType::Discover,
            KNOWN,
            vec![DhcpOption::RelayAgentInformation(info)],
            Ipv4Addr::UNSPECIFIED,
            ip("10.20.0.3"),
        );
        let out = handle(&ctx(&p), &mut t, &r, Port::Server);
        let (offer, dest) = out.reply.unwrap();
        assert_eq!(dest, Destination::Relay(ip("10.20.0.3")));
        let bytes = packet::encode(&r, &offer);
        let m = Message::from_bytes(&bytes).unwrap();
        assert_eq!(m.giaddr(), ip("10.20.0.3"));
        match m.opts().get(OptionCode::RelayAgentInformation) {
            Some(DhcpOption::RelayAgentInformation(i)) => {
                assert!(
                    matches!(i.get(relay::RelayCode::AgentCircuitId), Some(relay::RelayInfo::AgentCircuitId(c)) if c == b"port7")
                )
            }
            other => panic!("option 82 not echoed: {other:?}"),
        }
        // A relay outside our subnet is not ours to answer.
        let foreign = request(
            MessageType::Discover,
            KNOWN,
            vec![],
            Ipv4Addr::UNSPECIFIED,
            ip("172.16.0.1"),
        );
        assert_eq!(
            handle(&ctx(&p), &mut t, &foreign, Port::Server).silence,
            Some(Silence::ForeignRelay)
        );
    }

    #[test]
    fn proxy_mode_gives_boot_information_and_no_address() {
        let p = plan(", mode: proxy");
        let mut t = LeaseTable::new(None);
        let pxe = vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
            DhcpOption::ClientSystemArchitecture(0u16.into()),
        ];
        let out = handle(
            &ctx(&p),
            &mut t,
            &req(MessageType::Discover, KNOWN, pxe.clone()),
            Port::Server,
        );
        let (offer, dest) = out.reply.unwrap();
        assert_eq!(dest, Destination::Broadcast);
        assert_eq!(offer.yiaddr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.lease_secs, None);
        assert!(offer.routers.is_empty() && offer.subnet_mask.is_none());
        assert_eq!(offer.boot_file.as_deref(), Some("undionly.kpxe"));
        assert_eq!(offer.vendor_class, Some("PXEClient"));
        assert_eq!(offer.siaddr, ip("10.20.0.2"));
        assert!(t.is_empty(), "proxy mode never allocates");

        let r = request(
            MessageType::Request,
            KNOWN,
            pxe,
            ip("10.20.0.50"),
            Ipv4Addr::UNSPECIFIED,
        );
        let (ack, dest) = handle(&ctx(&p), &mut t, &r, Port::Proxy).reply.unwrap();
        assert_eq!((ack.kind, dest), (MessageType::Ack, Destination::Source));
        assert_eq!(ack.boot_file.as_deref(), Some("undionly.kpxe"));

        let plain = handle(
            &ctx(&p),
            &mut t,
            &req(MessageType::Discover, KNOWN, vec![]),
            Port::Server,
        );
        assert_eq!(
            plain.silence,
            Some(Silence::NotPxe),
            "an OS's DHCP is the other server's job"
        );
        assert_eq!(
            req(MessageType::Discover, KNOWN, vec![]).class,
            ClientClass::Plain
        );
    }

    /// Random, truncated and bit-flipped packets through the full path in every mode: no
    /// panic, and every reply decodes and answers the request's xid.
    #[test]
    fn arbitrary_bytes_never_panic() {
        let plans = [
            plan(", unknown_machines: enroll-worker, pool: {start: 10.20.0.200, end: 10.20.0.250}"),
            plan(", mode: proxy"),
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let templates: Vec<Vec<u8>> = [
            req(
                MessageType::Discover,
                KNOWN,
                vec![DhcpOption::UserClass(b"iPXE".to_vec())],
            ),
            req(
                MessageType::Request,
                STRANGER,
                vec![DhcpOption::RequestedIpAddress(ip("10.20.0.201"))],
            ),
        ]
        .iter()
        .map(|r| {
            let mut m = Message::new_with_id(
                r.xid,
                r.ciaddr,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                r.giaddr,
                &r.mac.0,
            );
            m.opts_mut().insert(DhcpOption::MessageType(r.kind));
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00007".to_vec(),
            ));
            m.to_vec().unwrap()
        })
        .collect();
        let (mut parsed, mut replied) = (0, 0);
        for i in 0..60_000u32 {
            let r = next();
            let bytes: Vec<u8> = match r % 3 {
                0 => (0..(r >> 8) % 600).map(|_| next() as u8).collect(),
                1 => {
                    let t = &templates[i as usize % 2];
                    t[..(r >> 8) as usize % (t.len() + 1)].to_vec()
                }
                _ => {
                    let mut t = templates[i as usize % 2].clone();
                    for _ in 0..1 + r % 6 {
                        let at = next() as usize % t.len();
                        t[at] = next() as u8;
                    }
                    t
                }
            };
            let p = &plans[i as usize % 2];
            let mut table = LeaseTable::new(p.network.pool);
            let port = if r & 1 == 0 {
                Port::Server
            } else {
                Port::Proxy
            };
            if let Ok((_, wire)) = respond(&ctx(p), &mut table, &bytes, port) {
                parsed += 1;
                if let Some(wire) = wire {
                    replied += 1;
                    let m = Message::from_bytes(&wire).expect("our reply decodes");
                    assert_eq!(m.xid(), Message::from_bytes(&bytes).unwrap().xid());
                }
            }
        }
        assert!(
            parsed > 1000 && replied > 100,
            "the mutations reached the decision logic ({parsed}, {replied})"
        );
    }
}
