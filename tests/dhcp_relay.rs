//! DHCP across subnets through a real relay agent: Slipway on its own management subnet
//! (`bootstrapper.subnet`), the nodes on another LAN behind a router that runs ISC dhcrelay
//! with option 82 (`-a`) and drops replies whose option 82 does not match (`-D`). busybox
//! udhcpc and a raw client on the node LAN get their addresses, router and boot information,
//! and a NAK, through it.

mod common;
#[path = "common/dhcp_client.rs"]
mod dhcp_client;

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dhcp_client::*;
use dhcproto::v4::{DhcpOption, MessageType};

const WORKER_MAC: &str = "52:54:00:00:00:21";

/// Slipway at 10.30.0.2 on the management LAN; the router 10.30.0.1 / 10.20.0.1 relays the
/// node LAN 10.20.0.0/24 to it; a client without an address on the node LAN.
struct Routed {
    // Field order is drop order: processes before the namespaces they run in.
    slipway: Slipway,
    cli: Host,
    _router: Host,
    _srv: Host,
    _nodes: Lan,
    _mgmt: Lan,
}

fn routed(tag: &str) -> Routed {
    let mgmt = Lan::new(&format!("{tag}m"));
    let nodes = Lan::new(&format!("{tag}n"));
    let srv = mgmt.host("srv", Some("10.30.0.2/24"), None);
    srv.add_route("10.20.0.0/24", "10.30.0.1");
    let router = mgmt.host("rtr", Some("10.30.0.1/24"), None);
    nodes.attach(&router, "nodes0", Some("10.20.0.1/24"));
    router.enable_forwarding();
    let cli = nodes.host("cli", None, Some(WORKER_MAC));
    // -a: add option 82 (circuit ID = the interface name); -D: drop replies whose option 82
    // does not name one of our interfaces, i.e. replies that did not echo it.
    router.spawn(
        router
            .command("dhcrelay")
            .args([
                "-d",
                "-4",
                "-a",
                "-D",
                "--no-pid",
                "-iu",
                "eth0",
                "-id",
                "nodes0",
                "10.30.0.2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let desc = TestDesc {
        bootstrapper: "10.30.0.2".into(),
        bootstrapper_subnet: Some("10.30.0.0/24".into()),
        ..TestDesc::default()
    };
    let slipway = Slipway::start(&srv, &desc.yaml(), &["--disable", "dns"]);
    Routed {
        slipway,
        cli,
        _router: router,
        _srv: srv,
        _nodes: nodes,
        _mgmt: mgmt,
    }
}

#[test]
fn udhcpc_behind_a_dhcrelay_router_gets_its_lease_and_boot_information() {
    if !need(&["busybox", "dhcrelay"]) {
        return;
    }
    let mut net = routed("rly");
    let tmp = tempfile::tempdir().unwrap();
    // dhcrelay needs a moment to open its sockets: the first exchange may retry.
    let env = udhcpc(
        &net.cli,
        tmp.path(),
        &[
            "-t",
            "6",
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
            "-x",
            "0x5d:0000",
        ],
    )
    .unwrap_or_else(|| {
        panic!(
            "no lease through the relay:\n{}",
            net.slipway.drain_logs().join("\n")
        )
    });
    for (key, want) in [
        ("ip", "10.20.0.21"),
        ("subnet", "255.255.255.0"),
        ("router", "10.20.0.1"),
        ("serverid", "10.30.0.2"),
        ("dns", "10.30.0.2"),
        ("hostname", "worker-1"),
        ("siaddr", "10.30.0.2"),
        ("boot_file", "undionly.kpxe"),
    ] {
        assert_eq!(env_value(&env, key).as_deref(), Some(want), "{key}:\n{env}");
    }
    // iPXE gets its script URL on Slipway's address.
    let env = udhcpc(
        &net.cli,
        tmp.path(),
        &[
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
            "-x",
            "0x4d:69505845",
        ],
    )
    .expect("iPXE lease through the relay");
    assert_eq!(
        env_value(&env, "boot_file").as_deref(),
        Some("http://10.30.0.2:8080/boot/52-54-00-00-00-21.ipxe")
    );
    // The requests did arrive relayed, from the relay's address on the node LAN.
    let logs = net.slipway.drain_logs().join("\n");
    assert!(logs.contains("Relay(10.20.0.1)"), "{logs}");
}

/// A REQUEST for a wrong address gets its NAK through the relay. The relay broadcasts it to
/// the client only because the NAK has the broadcast bit set (RFC 2131 4.3.2); without it,
/// dhcrelay would unicast it to yiaddr 0.0.0.0 and the client would never see it.
#[test]
fn a_nak_reaches_the_client_through_the_relay() {
    if !need(&["busybox", "dhcrelay"]) {
        return;
    }
    let net = routed("rnak");
    let tmp = tempfile::tempdir().unwrap();
    // A first exchange proves the relay is up.
    udhcpc(&net.cli, tmp.path(), &["-t", "6"]).expect("lease through the relay");
    let req = client_msg(
        MessageType::Request,
        [0x52, 0x54, 0, 0, 0, 0x21],
        Ipv4Addr::UNSPECIFIED,
        vec![DhcpOption::RequestedIpAddress(
            "10.20.0.99".parse().unwrap(),
        )],
    );
    let replies = raw_exchange(
        &net.cli,
        req,
        "255.255.255.255:67".parse().unwrap(),
        Duration::from_secs(3),
    );
    assert_eq!(replies.len(), 1, "one NAK through the relay");
    assert_eq!(replies[0].opts().msg_type(), Some(MessageType::Nak));
    assert!(replies[0].flags().broadcast());
}

/// A node MAC broadcasting on Slipway's own LAN is not a node: no answer there.
#[test]
fn broadcasts_on_the_bootstrappers_own_lan_are_ignored() {
    if !need(&["busybox", "dhcrelay"]) {
        return;
    }
    let mut net = routed("rown");
    let tmp = tempfile::tempdir().unwrap();
    let stray = net._mgmt.host("stray", None, Some(WORKER_MAC));
    assert_eq!(udhcpc(&stray, tmp.path(), &[]), None);
    net.slipway.drain_logs();
    assert!(
        net.slipway.seen.iter().any(|l| l.contains("NotRelayed")),
        "{:?}",
        net.slipway.seen
    );
}
