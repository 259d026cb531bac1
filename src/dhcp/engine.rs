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
    /// Addresses of the NTP servers the description names by DNS name, resolved off the
    /// request path by the server (option 42 carries addresses only).
    pub ntp_resolved: &'a [Ipv4Addr],
    pub now: u64,
    pub now_millis: u64,
}

/// Why a request got no reply (counted; logged at debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    UnknownMac,
    OtherServer,
    ForeignRelay,
    /// Not relayed, on the bootstrapper's own subnet when that is not the node subnet.
    NotRelayed,
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
    let subnet = ctx.plan.network.subnet;
    if !req.giaddr.is_unspecified() {
        // Relayed requests must come from a relay on the node subnet (we serve one subnet).
        if !subnet.contains(&req.giaddr) {
            return Outcome::silent(Silence::ForeignRelay);
        }
    } else if remote(ctx) && !subnet.contains(&req.ciaddr) {
        // Slipway behind a router: a broadcast it hears comes from its own LAN, not from a
        // node. Nodes reach it relayed, or by unicast once they have their address (renewal,
        // INFORM, ProxyDHCP on 4011).
        return Outcome::silent(Silence::NotRelayed);
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

/// Whether Slipway sits outside the node subnet (`bootstrapper.subnet`), behind a router.
fn remote(ctx: &Ctx) -> bool {
    !ctx.plan
        .network
        .subnet
        .contains(&ctx.plan.bootstrapper.address)
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
    let dest = match super::packet::destination(req, MessageType::Nak) {
        // A renewing client of a Slipway behind a router would never hear a broadcast.
        Destination::Broadcast if remote(ctx) => Destination::Unicast(req.ciaddr),
        d => d,
    };
    Outcome {
        reply: Some((reply, dest)),
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
    for a in ctx.ntp_resolved {
        if !r.ntp.contains(a) {
            r.ntp.push(*a);
        }
    }
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
mod relay_tests;
#[cfg(test)]
mod tests;
