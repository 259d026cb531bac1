use dhcproto::v4::{DhcpOption, Message, OptionCode, relay};
use dhcproto::{Decodable, Encodable};

use super::*;
use crate::dhcp::packet::{self, ClientClass};

pub(super) const KNOWN: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x21];
const STRANGER: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x99];

pub(super) fn plan(extra: &str) -> Plan {
    plan_edited(extra, &[])
}

/// The test plan with `(from, to)` replacements applied to its description text.
pub(super) fn plan_edited(extra: &str, edits: &[(&str, &str)]) -> Plan {
    let mut yaml = format!(
        "cluster: {{name: c, domain: lab.test, kubernetes_version: 1.31.4}}\n\
         bootstrapper: {{interface: eth0, address: 10.20.0.2}}\n\
         network:\n  subnet: 10.20.0.0/24\n  gateway: 10.20.0.1\n  ntp: [10.20.0.5, pool.ntp.org]\n  dhcp: {{lease_time: 1h{extra}}}\n\
         os: {{profile: flatcar, version: 4081.2.0}}\n\
         nodes:\n  - {{mac: 52:54:00:00:00:11, hostname: cp-1, ip: 10.20.0.11, role: control-plane}}\n  \
         - {{mac: 52:54:00:00:00:21, hostname: worker-1, ip: 10.20.0.21, role: worker}}\n"
    );
    for (from, to) in edits {
        assert!(yaml.contains(from), "{from}");
        yaml = yaml.replace(from, to);
    }
    Plan::from_desc(&crate::desc::parse_str("t.yaml", &yaml).unwrap_or_else(|e| panic!("{e}")))
}

pub(super) fn ctx(plan: &Plan) -> Ctx<'_> {
    static NONE: std::sync::LazyLock<std::collections::HashSet<Mac>> =
        std::sync::LazyLock::new(Default::default);
    Ctx {
        plan,
        approved: &NONE,
        boot: BootFiles::default(),
        ntp_resolved: &[],
        now: 1000,
        now_millis: 1_000_000,
    }
}

pub(super) fn request(
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

pub(super) fn req(kind: MessageType, mac: [u8; 6], opts: Vec<DhcpOption>) -> Request {
    request(
        kind,
        mac,
        opts,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
    )
}

pub(super) fn ip(s: &str) -> Ipv4Addr {
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

    let p = plan(", unknown_machines: enroll-worker, pool: {start: 10.20.0.200, end: 10.20.0.201}");
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
    let p = plan(", unknown_machines: enroll-worker, pool: {start: 10.20.0.200, end: 10.20.0.201}");
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
