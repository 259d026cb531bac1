//! Decisions for a Slipway behind a router (relayed requests only), NAKs through a relay,
//! and the network options as they go on the wire.

use dhcproto::Decodable;
use dhcproto::v4::{DhcpOption, Message, OptionCode};

use super::tests::{KNOWN, ctx, ip, plan, plan_edited, req, request};
use super::*;
use crate::dhcp::packet;

/// Slipway on its own subnet behind the router 10.20.0.1: relayed requests from the node
/// subnet are answered through the relay with Slipway's address as server, next-server and
/// in the boot URLs; broadcasts on its own LAN are not from nodes.
#[test]
fn a_bootstrapper_behind_a_router_serves_the_node_subnet_through_relays() {
    let p = plan_edited(
        "",
        &[(
            "address: 10.20.0.2}",
            "address: 10.30.0.2, subnet: 10.30.0.0/24}",
        )],
    );
    let mut t = LeaseTable::new(None);
    let gw = ip("10.20.0.1");
    let pxe = vec![
        DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
        DhcpOption::ClientSystemArchitecture(0u16.into()),
    ];
    let relayed = request(
        MessageType::Discover,
        KNOWN,
        pxe.clone(),
        Ipv4Addr::UNSPECIFIED,
        gw,
    );
    let (offer, dest) = handle(&ctx(&p), &mut t, &relayed, Port::Server)
        .reply
        .unwrap();
    assert_eq!(dest, Destination::Relay(gw));
    assert_eq!(offer.yiaddr, ip("10.20.0.21"));
    assert_eq!(offer.server_id, ip("10.30.0.2"));
    assert_eq!(offer.siaddr, ip("10.30.0.2"), "next-server");
    assert_eq!(offer.tftp_server.as_deref(), Some("10.30.0.2"));
    assert_eq!(offer.routers, vec![gw]);
    assert_eq!(offer.subnet_mask, Some(ip("255.255.255.0")));
    assert_eq!(offer.dns, vec![ip("10.30.0.2")]);
    let ipxe = request(
        MessageType::Discover,
        KNOWN,
        vec![DhcpOption::UserClass(b"iPXE".to_vec())],
        Ipv4Addr::UNSPECIFIED,
        gw,
    );
    let (offer, _) = handle(&ctx(&p), &mut t, &ipxe, Port::Server).reply.unwrap();
    assert_eq!(
        offer.boot_file.as_deref(),
        Some("http://10.30.0.2:8080/boot/52-54-00-00-00-21.ipxe")
    );

    // Broadcasts on Slipway's own LAN are not from nodes, even with a node's MAC.
    let local = req(MessageType::Discover, KNOWN, pxe);
    assert_eq!(
        handle(&ctx(&p), &mut t, &local, Port::Server).silence,
        Some(Silence::NotRelayed)
    );
    // A renewal comes by unicast from the node's address, unrelayed: answered to it.
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
    // A renewal of a wrong address is NAKed to the client itself: a broadcast on Slipway's
    // LAN would never reach it.
    let wrong = request(
        MessageType::Request,
        KNOWN,
        vec![],
        ip("10.20.0.99"),
        Ipv4Addr::UNSPECIFIED,
    );
    let (nak, dest) = handle(&ctx(&p), &mut t, &wrong, Port::Server)
        .reply
        .unwrap();
    assert_eq!(
        (nak.kind, dest),
        (MessageType::Nak, Destination::Unicast(ip("10.20.0.99")))
    );
}

/// RFC 2131 4.3.2: a NAK through a relay has the broadcast bit set, whatever the client's.
#[test]
fn a_nak_through_a_relay_sets_the_broadcast_bit() {
    let p = plan("");
    let mut t = LeaseTable::new(None);
    let r = request(
        MessageType::Request,
        KNOWN,
        vec![DhcpOption::RequestedIpAddress(ip("10.20.0.99"))],
        Ipv4Addr::UNSPECIFIED,
        ip("10.20.0.1"),
    );
    assert!(!r.broadcast);
    let (nak, dest) = handle(&ctx(&p), &mut t, &r, Port::Server).reply.unwrap();
    assert_eq!(
        (nak.kind, dest),
        (MessageType::Nak, Destination::Relay(ip("10.20.0.1")))
    );
    let m = Message::from_bytes(&packet::encode(&r, &nak)).unwrap();
    assert!(m.flags().broadcast(), "NAK via relay without broadcast bit");
    assert_eq!(m.giaddr(), ip("10.20.0.1"));
    // An OFFER through the relay keeps the client's flag.
    let d = request(
        MessageType::Discover,
        KNOWN,
        vec![],
        Ipv4Addr::UNSPECIFIED,
        ip("10.20.0.1"),
    );
    let (offer, _) = handle(&ctx(&p), &mut t, &d, Port::Server).reply.unwrap();
    let m = Message::from_bytes(&packet::encode(&d, &offer)).unwrap();
    assert!(!m.flags().broadcast());
}

/// The options that only the code sets, read back from the encoded reply a client gets:
/// MTU (26), broadcast address (28), NTP (42: the addresses written and the names resolved),
/// TFTP server name (66) and the lease time from the description (51).
#[test]
fn network_options_reach_the_wire() {
    let p = plan_edited(
        "",
        &[
            ("  ntp: [", "  mtu: 9000\n  ntp: ["),
            ("lease_time: 1h", "lease_time: 90m"),
            ("subnet: 10.20.0.0/24", "subnet: 10.20.0.0/23"),
        ],
    );
    let resolved = [ip("192.0.2.123"), ip("10.20.0.5")];
    let c = Ctx {
        ntp_resolved: &resolved,
        ..ctx(&p)
    };
    let mut t = LeaseTable::new(None);
    let r = req(
        MessageType::Discover,
        KNOWN,
        vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
            DhcpOption::ClientSystemArchitecture(0u16.into()),
        ],
    );
    let (offer, _) = handle(&c, &mut t, &r, Port::Server).reply.unwrap();
    let m = Message::from_bytes(&packet::encode(&r, &offer)).unwrap();
    let o = m.opts();
    assert!(matches!(
        o.get(OptionCode::InterfaceMtu),
        Some(DhcpOption::InterfaceMtu(9000))
    ));
    assert!(
        matches!(o.get(OptionCode::BroadcastAddr), Some(DhcpOption::BroadcastAddr(b)) if *b == ip("10.20.1.255"))
    );
    assert!(
        matches!(o.get(OptionCode::SubnetMask), Some(DhcpOption::SubnetMask(m)) if *m == ip("255.255.254.0"))
    );
    match o.get(OptionCode::NtpServers) {
        Some(DhcpOption::NtpServers(v)) => assert_eq!(
            v,
            &vec![ip("10.20.0.5"), ip("192.0.2.123")],
            "written addresses, then resolved names, once each"
        ),
        other => panic!("no NTP option: {other:?}"),
    }
    assert!(
        matches!(o.get(OptionCode::TFTPServerName), Some(DhcpOption::TFTPServerName(n)) if n == b"10.20.0.2")
    );
    assert!(matches!(
        o.get(OptionCode::AddressLeaseTime),
        Some(DhcpOption::AddressLeaseTime(5400))
    ));
}
