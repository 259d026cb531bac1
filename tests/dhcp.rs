//! DHCP with real clients on a private LAN of network namespaces: ISC dhclient, busybox
//! udhcpc posing as each PXE class, Kea's perfdhcp as a relay, and a raw PXE client for the
//! ProxyDHCP exchange; garbage sprayed at DHCP and DNS of one serve while clients keep being
//! served. Slipway's own recorded state is checked after each run. The path through a real
//! relay agent between two subnets is in dhcp_relay.rs.

mod common;
#[path = "common/dhcp_client.rs"]
mod dhcp_client;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use dhcp_client::*;
use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
use slipway::status::NodeState;
use slipway::store::Store;

const WORKER_MAC: &str = "52:54:00:00:00:21";
const STRANGER_MAC: &str = "52:54:00:00:09:99";

/// A LAN with Slipway at 10.20.0.2 serving `desc`, and a client host without an address.
fn lan_with(tag: &str, desc: &TestDesc, client_mac: &str) -> (Lan, Host, Host, Slipway) {
    let lan = Lan::new(tag);
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    let cli = lan.host("cli", None, Some(client_mac));
    let slipway = Slipway::start(&srv, &desc.yaml(), &["--disable", "dns"]);
    (lan, srv, cli, slipway)
}

#[test]
fn dhclient_gets_its_reserved_address_hostname_and_dns() {
    if !need(&["dhclient"]) {
        return;
    }
    // Not the defaults: what dhclient records must come from the description.
    let desc = TestDesc {
        lease_time: Some("2h".into()),
        mtu: Some(1400),
        ntp: vec!["10.20.0.5".into(), "10.20.0.6".into()],
        ..TestDesc::default()
    };
    let (_lan, _srv, cli, slipway) = lan_with("dhcl", &desc, WORKER_MAC);
    let tmp = tempfile::tempdir().unwrap();
    let (script, out) = env_script(tmp.path(), "dhclient-hook", "[ \"$reason\" = BOUND ]");
    let leases = tmp.path().join("dhclient.leases");
    let pid = tmp.path().join("dhclient.pid");
    cli.spawn(
        cli.command("dhclient")
            .args(["-d", "-1", "-v", "-sf", &script, "-lf"])
            .arg(&leases)
            .arg("-pf")
            .arg(&pid)
            .arg("eth0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let env = loop {
        if let Ok(env) = std::fs::read_to_string(&out) {
            break env;
        }
        assert!(Instant::now() < deadline, "dhclient did not bind");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        env_value(&env, "new_ip_address").as_deref(),
        Some("10.20.0.21"),
        "{env}"
    );
    assert_eq!(
        env_value(&env, "new_host_name").as_deref(),
        Some("worker-1")
    );
    assert_eq!(
        env_value(&env, "new_domain_name").as_deref(),
        Some("lab.test")
    );
    assert_eq!(
        env_value(&env, "new_domain_name_servers").as_deref(),
        Some("10.20.0.2")
    );
    assert_eq!(env_value(&env, "new_routers").as_deref(), Some("10.20.0.1"));
    assert_eq!(
        env_value(&env, "new_subnet_mask").as_deref(),
        Some("255.255.255.0")
    );
    assert_eq!(
        env_value(&env, "new_dhcp_lease_time").as_deref(),
        Some("7200")
    );
    // dhclient writes its lease file after the hook ran.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lease = loop {
        let text = std::fs::read_to_string(&leases).unwrap_or_default();
        if text.contains("dhcp-lease-time") {
            break text;
        }
        assert!(Instant::now() < deadline, "no lease file: {text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    for line in [
        "fixed-address 10.20.0.21;",
        "option dhcp-lease-time 7200;",
        "option dhcp-renewal-time 3600;",
        "option dhcp-rebinding-time 6300;",
        "option interface-mtu 1400;",
        "option broadcast-address 10.20.0.255;",
        "option ntp-servers 10.20.0.5,10.20.0.6;",
    ] {
        assert!(lease.contains(line), "no `{line}` in the lease:\n{lease}");
    }

    // Slipway recorded the lease and the node's discovery, durably.
    let (dir, _) = stop(slipway);
    let store = slipway::store::open(&dir.path().join("state")).unwrap();
    let lease = store
        .get_lease(WORKER_MAC)
        .unwrap()
        .expect("lease persisted");
    assert_eq!(lease.ip.to_string(), "10.20.0.21");
    let node = store
        .get_node(WORKER_MAC)
        .unwrap()
        .expect("lifecycle record");
    assert_eq!(node.state, NodeState::Discovered);
    assert_eq!(node.hostname.as_deref(), Some("worker-1"));
}

#[test]
fn udhcpc_posing_as_each_boot_class_gets_the_right_program() {
    if !need(&["busybox"]) {
        return;
    }
    let (_lan, _srv, cli, slipway) = lan_with("udhc", &TestDesc::default(), WORKER_MAC);
    let tmp = tempfile::tempdir().unwrap();
    let script_url = "http://10.20.0.2:8080/boot/52-54-00-00-00-21.ipxe";
    let cases: [(&[&str], &str, Option<&str>); 4] = [
        (
            &["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"],
            "undionly.kpxe",
            None,
        ),
        (
            &["-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007"],
            "snponly.efi",
            None,
        ),
        (
            &["-V", "HTTPClient:Arch:00016:UNDI:003016", "-x", "0x5d:0010"],
            "http://10.20.0.2:8080/ipxe/snponly.efi",
            Some("HTTPClient"),
        ),
        (
            &[
                "-V",
                "PXEClient:Arch:00000:UNDI:002001",
                "-x",
                "0x4d:69505845",
                "-O",
                "175",
            ],
            script_url,
            None,
        ),
    ];
    for (args, file, vendor) in cases {
        let env = udhcpc(&cli, tmp.path(), &[args, &["-O", "60"]].concat())
            .unwrap_or_else(|| panic!("no lease for {args:?}"));
        assert_eq!(env_value(&env, "ip").as_deref(), Some("10.20.0.21"));
        assert_eq!(
            env_value(&env, "boot_file").as_deref(),
            Some(file),
            "{args:?}\n{env}"
        );
        assert_eq!(env_value(&env, "vendor").as_deref(), vendor, "{args:?}");
        if file.ends_with(".kpxe") || file.ends_with(".efi") && !file.starts_with("http") {
            assert_eq!(
                env_value(&env, "siaddr").as_deref(),
                Some("10.20.0.2"),
                "next-server for TFTP"
            );
        }
        if file == script_url {
            // iPXE must not wait for ProxyDHCP offers: encapsulated 175.176 = 1.
            assert_eq!(
                env_value(&env, "opt175").as_deref(),
                Some("b00101"),
                "{env}"
            );
        }
    }
    let (dir, _) = stop(slipway);
    let store = slipway::store::open(&dir.path().join("state")).unwrap();
    let node = store.get_node(WORKER_MAC).unwrap().unwrap();
    assert_eq!(node.state, NodeState::Pxe);
    let states: Vec<NodeState> = node.history.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        vec![NodeState::Discovered, NodeState::Pxe],
        "forward-only timeline"
    );
}

#[test]
fn unknown_machines_get_nothing_until_the_policy_enrolls_them() {
    if !need(&["busybox"]) {
        return;
    }
    let desc = TestDesc::default();
    let (_lan, _srv, cli, mut slipway) = lan_with("unkn", &desc, STRANGER_MAC);
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(
        udhcpc(&cli, tmp.path(), &[]),
        None,
        "an unknown MAC got an answer"
    );
    slipway.drain_logs();
    assert!(
        slipway.seen.iter().any(|l| l.contains("UnknownMac")),
        "ignored as unknown"
    );

    let enroll = TestDesc {
        unknown_machines: "enroll-worker".into(),
        pool: Some(("10.20.0.200".into(), "10.20.0.210".into())),
        ..desc
    };
    slipway.reload(&enroll.yaml());
    let env = udhcpc(&cli, tmp.path(), &["-x", "hostname:stray"])
        .expect("enrolled machine gets a pool address");
    assert_eq!(env_value(&env, "ip").as_deref(), Some("10.20.0.200"));
}

fn pxe_bios() -> Vec<DhcpOption> {
    vec![
        DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
        DhcpOption::ClientSystemArchitecture(0u16.into()),
    ]
}

#[test]
fn proxy_mode_answers_pxe_with_boot_information_and_no_address() {
    if !need(&["busybox"]) {
        return;
    }
    let desc = TestDesc {
        dhcp_mode: "proxy".into(),
        ..TestDesc::default()
    };
    let (_lan, _srv, cli, _slipway) = lan_with("prox", &desc, WORKER_MAC);
    // The site's own DHCP server gave this machine its address.
    cli.add_addr("10.20.0.50/24");
    let mac = [0x52, 0x54, 0, 0, 0, 0x21];
    let broadcast: SocketAddr = "255.255.255.255:67".parse().unwrap();
    let offers = raw_exchange(
        &cli,
        client_msg(
            MessageType::Discover,
            mac,
            Ipv4Addr::UNSPECIFIED,
            pxe_bios(),
        ),
        broadcast,
        Duration::from_secs(2),
    );
    assert_eq!(offers.len(), 1, "one proxy offer");
    let offer = &offers[0];
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(
        offer.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "ProxyDHCP never offers an address"
    );
    assert!(offer.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert_eq!(offer.siaddr().to_string(), "10.20.0.2");
    assert!(
        matches!(offer.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(v)) if v == b"PXEClient")
    );
    assert!(
        matches!(offer.opts().get(OptionCode::BootfileName), Some(DhcpOption::BootfileName(f)) if f == b"undionly.kpxe")
    );

    // The PXE client then asks the proxy on port 4011 and gets the boot file.
    let request = client_msg(
        MessageType::Request,
        mac,
        "10.20.0.50".parse().unwrap(),
        pxe_bios(),
    );
    let acks = raw_exchange(
        &cli,
        request,
        "10.20.0.2:4011".parse().unwrap(),
        Duration::from_secs(2),
    );
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].opts().msg_type(), Some(MessageType::Ack));
    assert!(
        matches!(acks[0].opts().get(OptionCode::BootfileName), Some(DhcpOption::BootfileName(f)) if f == b"undionly.kpxe")
    );

    // An ordinary client is the other server's business: no answer.
    let tmp = tempfile::tempdir().unwrap();
    assert_eq!(udhcpc(&cli, tmp.path(), &[]), None);
}

#[test]
fn a_wrong_address_gets_a_nak() {
    if !need(&["busybox"]) {
        return;
    }
    let (_lan, _srv, cli, _slipway) = lan_with("nak", &TestDesc::default(), WORKER_MAC);
    cli.add_addr("10.20.0.99/24");
    let mac = [0x52, 0x54, 0, 0, 0, 0x21];
    let req = client_msg(
        MessageType::Request,
        mac,
        Ipv4Addr::UNSPECIFIED,
        vec![DhcpOption::RequestedIpAddress(
            "10.20.0.99".parse().unwrap(),
        )],
    );
    let replies = raw_exchange(
        &cli,
        req,
        "255.255.255.255:67".parse().unwrap(),
        Duration::from_secs(2),
    );
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(replies[0].yiaddr(), Ipv4Addr::UNSPECIFIED);
}

#[test]
fn relayed_requests_via_perfdhcp_get_leases() {
    if !need(&["perfdhcp"]) {
        return;
    }
    let desc = TestDesc {
        unknown_machines: "enroll-worker".into(),
        pool: Some(("10.20.0.100".into(), "10.20.0.199".into())),
        ..TestDesc::default()
    };
    let lan = Lan::new("rely");
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    let relay = lan.host("rel", Some("10.20.0.3/24"), None);
    let _slipway = Slipway::start(&srv, &desc.yaml(), &["--disable", "dns"]);
    // perfdhcp acts as a relay agent at 10.20.0.3 (giaddr) talking to the server by unicast.
    let out = relay
        .command("perfdhcp")
        .args([
            "-4",
            "-l",
            "10.20.0.3",
            "-r",
            "20",
            "-R",
            "30",
            "-p",
            "3",
            "-W",
            "1000000",
            "10.20.0.2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let received: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("received packets: "))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(received.len(), 2, "{text}");
    assert!(
        received[0] >= 40 && received[1] >= 40,
        "offers and acks through the relay:\n{text}"
    );
    let non_unique: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("non unique addresses: "))
        .map(|n| n.trim().parse().unwrap())
        .collect();
    assert_eq!(non_unique.len(), 2, "{text}");
    assert_eq!(non_unique, [0, 0], "an address handed out twice:\n{text}");
}

#[test]
fn leases_survive_sigkill_and_are_never_handed_out_twice() {
    if !need(&["busybox"]) {
        return;
    }
    let desc = TestDesc {
        unknown_machines: "enroll-worker".into(),
        pool: Some(("10.20.0.200".into(), "10.20.0.210".into())),
        ..TestDesc::default()
    };
    let (_lan, srv, cli, slipway) = lan_with("kill", &desc, "52:54:00:00:0a:01");
    let tmp = tempfile::tempdir().unwrap();
    let a = udhcpc(&cli, tmp.path(), &[]).expect("A leased");
    cli.set_mac("52:54:00:00:0a:02");
    let b = udhcpc(&cli, tmp.path(), &[]).expect("B leased");
    let (ip_a, ip_b) = (env_value(&a, "ip").unwrap(), env_value(&b, "ip").unwrap());
    assert_ne!(ip_a, ip_b);

    let _slipway = slipway.kill_and_restart(&srv, &["--disable", "dns"]);
    cli.set_mac("52:54:00:00:0a:03");
    let c = udhcpc(&cli, tmp.path(), &[]).expect("C leased after the restart");
    let ip_c = env_value(&c, "ip").unwrap();
    assert!(
        ip_c != ip_a && ip_c != ip_b,
        "{ip_c} was already leased before the crash"
    );
    // A comes back and keeps its address.
    cli.set_mac("52:54:00:00:0a:01");
    let again = udhcpc(&cli, tmp.path(), &["-r", &ip_a]).expect("A renewed");
    assert_eq!(env_value(&again, "ip"), Some(ip_a));
}

/// A tiny xorshift generator: reproducible garbage without a dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `slipway_dhcp_packets_total{outcome="malformed"}` and the DNS counterpart from /metrics,
/// fetched by `host` over HTTP.
fn malformed_counters(host: &Host) -> (u64, u64) {
    let text = host.run(
        host.command("curl")
            .args(["-sf", "http://10.20.0.2:8080/metrics"]),
    );
    let value = |metric: &str| {
        text.lines()
            .find(|l| l.starts_with(metric) && l.contains("outcome=\"malformed\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no malformed count for {metric} in:\n{text}")) as u64
    };
    (
        value("slipway_dhcp_packets_total"),
        value("slipway_dns_queries_total"),
    )
}

/// Random and mutated datagrams at UDP 67 (and 4011 in proxy mode) and UDP 53, garbage on
/// TCP 53, all at one `slipway serve` running DHCP and DNS, while real clients keep getting
/// their leases (or proxy offers) and their DNS answers; the malformed counters rise.
fn garbage_on_dhcp_and_dns_does_not_stop_service(mode: &str) {
    if !need(&["busybox", "dig", "curl"]) {
        return;
    }
    let desc = TestDesc {
        dhcp_mode: mode.into(),
        ..TestDesc::default()
    };
    let lan = Lan::new(&format!("gb{}", &mode[..2]));
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    let cli = lan.host("cli", None, Some(WORKER_MAC));
    let asker = lan.host("ask", Some("10.20.0.50/24"), None);
    let attacker = lan.host("atk", Some("10.20.0.66/24"), None);
    let slipway = Slipway::start(&srv, &desc.yaml(), &[]);
    let before = malformed_counters(&asker);
    // Mutations of a stranger's DISCOVER (a flipped byte may turn it into a RELEASE: keep the
    // real client's MAC out of it, DHCP has no sender authentication).
    let valid = client_msg(
        MessageType::Discover,
        [0x52, 0x54, 0, 0, 0x77, 0x77],
        Ipv4Addr::UNSPECIFIED,
        pxe_bios(),
    );
    let proxy = mode == "proxy";
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let ns = attacker.ns.clone();
    let sprayer = std::thread::spawn(move || {
        enter_netns(&ns);
        let sock = UdpSocket::bind("10.20.0.66:0").unwrap();
        sock.set_broadcast(true).unwrap();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let (mut sent, mut tcp) = (0u64, 0u64);
        let deadline = Instant::now() + Duration::from_secs(30);
        // Keep going until the clients are done *and* a good amount of garbage went out.
        let mut stop = false;
        while !(stop && sent >= 3000) && Instant::now() < deadline {
            stop |= stop_rx.try_recv().is_ok();
            let r = xorshift(&mut seed);
            let pkt: Vec<u8> = match r % 3 {
                // Pure noise of any length.
                0 => (0..(r >> 8) % 1500)
                    .map(|_| xorshift(&mut seed) as u8)
                    .collect(),
                // A valid DISCOVER truncated somewhere.
                1 => valid[..(r >> 8) as usize % valid.len()].to_vec(),
                // A valid DISCOVER with bytes flipped (header, options, lengths).
                _ => {
                    let mut p = valid.clone();
                    for _ in 0..1 + r % 8 {
                        let i = xorshift(&mut seed) as usize % p.len();
                        p[i] = xorshift(&mut seed) as u8;
                    }
                    p
                }
            };
            let to = match (r >> 16) % 3 {
                0 if proxy => "10.20.0.2:4011",
                1 => "255.255.255.255:67",
                _ => "10.20.0.2:67",
            };
            let _ = sock.send_to(&pkt, to);
            // The same bytes are garbage to DNS too (a DHCP header is no DNS query).
            let _ = sock.send_to(&pkt[..pkt.len().min(512)], "10.20.0.2:53");
            sent += 1;
            if sent % 100 == 0
                && let Ok(mut s) = std::net::TcpStream::connect("10.20.0.2:53")
            {
                use std::io::Write;
                let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                let mut framed = (pkt.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&pkt);
                let _ = s.write_all(&framed);
                tcp += 1;
            }
            // ~4000 datagrams/s per server: far above real traffic, below flooding the socket
            // buffers (a flood starves any UDP server; this test is about parsing, not capacity).
            std::thread::sleep(Duration::from_micros(250));
        }
        (sent, tcp)
    });
    let tmp = tempfile::tempdir().unwrap();
    if proxy {
        // The site's own DHCP server gave this machine its address.
        cli.add_addr("10.20.0.60/24");
    }
    for round in 0..3 {
        if proxy {
            let mac = [0x52, 0x54, 0, 0, 0, 0x21];
            let broadcast: SocketAddr = "255.255.255.255:67".parse().unwrap();
            let discover = client_msg(
                MessageType::Discover,
                mac,
                Ipv4Addr::UNSPECIFIED,
                pxe_bios(),
            );
            let offers = raw_exchange(&cli, discover, broadcast, Duration::from_secs(2));
            assert_eq!(
                offers.len(),
                1,
                "round {round}: no proxy offer under garbage"
            );
            let request = client_msg(
                MessageType::Request,
                mac,
                "10.20.0.60".parse().unwrap(),
                pxe_bios(),
            );
            let to = "10.20.0.2:4011".parse().unwrap();
            let acks = raw_exchange(&cli, request, to, Duration::from_secs(2));
            assert_eq!(acks.len(), 1, "round {round}: no 4011 ACK under garbage");
            assert!(
                matches!(acks[0].opts().get(OptionCode::BootfileName), Some(DhcpOption::BootfileName(f)) if f == b"undionly.kpxe")
            );
        } else {
            let env = udhcpc(&cli, tmp.path(), &[])
                .unwrap_or_else(|| panic!("round {round}: no lease under garbage"));
            assert_eq!(env_value(&env, "ip").as_deref(), Some("10.20.0.21"));
        }
        for tcp in ["+notcp", "+tcp"] {
            let out = asker.run(asker.command("dig").args([
                "@10.20.0.2",
                "+short",
                "+time=2",
                "+tries=3",
                tcp,
                "worker-1.lab.test",
            ]));
            assert_eq!(out.trim(), "10.20.0.21", "round {round} {tcp}");
        }
    }
    stop_tx.send(()).unwrap();
    let (sent, tcp) = sprayer.join().unwrap();
    assert!(
        sent >= 3000 && tcp >= 30,
        "only {sent} datagrams, {tcp} TCP"
    );
    assert!(slipway.is_running());
    let after = malformed_counters(&asker);
    assert!(
        after.0 >= before.0 + 100 && after.1 >= before.1 + 100,
        "malformed DHCP and DNS packets counted in /metrics: {before:?} -> {after:?}"
    );
    stop(slipway);
}

#[test]
fn garbage_on_dhcp_and_dns_does_not_stop_leases_or_answers() {
    garbage_on_dhcp_and_dns_does_not_stop_service("authoritative");
}

#[test]
fn garbage_on_proxydhcp_and_dns_does_not_stop_proxy_offers_or_answers() {
    garbage_on_dhcp_and_dns_does_not_stop_service("proxy");
}
