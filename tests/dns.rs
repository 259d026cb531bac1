//! DNS with real clients: `dig` from namespaces on a private LAN asks `slipway serve` for
//! node, endpoint, bootstrapper and registry names, PTR, SOA, over UDP and TCP; an
//! out-of-zone name goes to an upstream (dnsmasq) the test starts, but only for clients in
//! the cluster's subnets; SIGHUP changes the answers; garbage sprayed at both sockets does
//! not stop a well-formed client from getting its answer. Plus the request path fed 200k
//! random and mutated packets in-process.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Host, Lan, Slipway, TestDesc, TestNode, have, netns_available};

const SERVER: &str = "10.20.0.2";
const UPSTREAM: &str = "10.20.0.53";

struct Net {
    // Field order is drop order: the server goes before the LAN.
    slipway: Slipway,
    srv: Host,
    cli: Host,
    outsider: Host,
    _upstream: Option<Host>,
    desc: TestDesc,
    _lan: Lan,
}

fn desc(upstream: bool) -> TestDesc {
    TestDesc {
        upstream_dns: if upstream {
            vec![UPSTREAM.to_string()]
        } else {
            vec![]
        },
        dhcp_mode: "off".into(),
        nodes: vec![
            TestNode::new("52:54:00:00:00:11", "cp-1", "10.20.0.11", true),
            TestNode::new("52:54:00:00:00:12", "cp-2", "10.20.0.12", true),
            TestNode::new("52:54:00:00:00:13", "cp-3", "10.20.0.13", true),
            TestNode::new("52:54:00:00:00:21", "worker-1", "10.20.0.21", false),
        ],
        ..TestDesc::default()
    }
}

/// The LAN: the server (with a second address outside the cluster), a client in the subnet,
/// a client outside every cluster network, and optionally a dnsmasq upstream.
fn setup(tag: &str, upstream: bool) -> Option<Net> {
    if !netns_available() {
        return None;
    }
    for tool in ["dig"].iter().chain(upstream.then_some(&"dnsmasq")) {
        assert!(have(tool), "{tool} is missing: scripts/test.sh installs it");
    }
    let lan = Lan::new(tag);
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    srv.add_addr("192.168.77.1/24");
    let cli = lan.host("cli", Some("10.20.0.50/24"), None);
    // Outside every cluster network; reaches the server's address through its second one.
    let outsider = lan.host("out", Some("192.168.77.5/24"), None);
    outsider.add_route("10.20.0.0/24", "192.168.77.1");
    let up = upstream.then(|| {
        let up = lan.host("up", Some("10.20.0.53/24"), None);
        up.spawn(
            up.command("dnsmasq")
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--user=root",
                    "--pid-file=",
                    "--bind-interfaces",
                    "--listen-address=10.20.0.53",
                    "--address=/example.test/192.0.2.7",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        );
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(10);
        while dig(&cli, UPSTREAM, &["+short", "www.example.test"]).trim() != "192.0.2.7" {
            assert!(Instant::now() < deadline, "dnsmasq upstream did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    });
    let d = desc(upstream);
    let slipway = Slipway::start(&srv, &d.yaml(), &["--disable", "dhcp"]);
    slipway_dns_ready(&slipway);
    Some(Net {
        slipway,
        srv,
        cli,
        outsider,
        _upstream: up,
        desc: d,
        _lan: lan,
    })
}

fn slipway_dns_ready(s: &Slipway) {
    assert!(
        s.seen.iter().any(|l| l.contains("DNS serving")),
        "DNS did not start: {:?}",
        s.seen
    );
}

/// `dig @server args` from `host`; the whole output.
fn dig(host: &Host, server: &str, args: &[&str]) -> String {
    let out = host
        .command("dig")
        .arg(format!("@{server}"))
        .args(["+time=2", "+tries=2"])
        .args(args)
        .output()
        .expect("dig runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(host: &Host, args: &[&str]) -> Vec<String> {
    let mut all = vec!["+short"];
    all.extend_from_slice(args);
    let mut v: Vec<String> = dig(host, SERVER, &all)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

fn status(out: &str) -> &str {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig output:\n{out}"))
}

fn flags(out: &str) -> Vec<&str> {
    out.lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|l| l.split(';').next())
        .unwrap_or_else(|| panic!("no flags in dig output:\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn dig_gets_cluster_names_ptr_soa_over_udp_and_tcp_and_forwarded_names() {
    let Some(net) = setup("dig", true) else {
        return;
    };
    let c = &net.cli;
    assert_eq!(short(c, &["cp-1.lab.test"]), ["10.20.0.11"]);
    assert_eq!(short(c, &["WORKER-1.Lab.Test"]), ["10.20.0.21"]);
    assert_eq!(
        short(c, &["api.lab.test"]),
        ["10.20.0.11", "10.20.0.12", "10.20.0.13"],
        "the endpoint resolves to every control-plane node"
    );
    assert_eq!(short(c, &["slipway.lab.test"]), [SERVER]);
    assert_eq!(short(c, &["registry.lab.test"]), [SERVER]);
    assert_eq!(short(c, &["-x", "10.20.0.21"]), ["worker-1.lab.test."]);
    assert_eq!(short(c, &["-x", SERVER]), ["slipway.lab.test."]);
    assert_eq!(short(c, &["+tcp", "cp-2.lab.test"]), ["10.20.0.12"]);
    assert_eq!(short(c, &["+tcp", "-x", "10.20.0.13"]), ["cp-3.lab.test."]);

    let full = dig(c, SERVER, &["cp-1.lab.test"]);
    assert_eq!(status(&full), "NOERROR");
    assert!(flags(&full).contains(&"aa"), "{full}");

    let soa = short(c, &["SOA", "lab.test"]);
    assert_eq!(soa.len(), 1);
    assert!(
        soa[0].starts_with("slipway.lab.test. hostmaster.lab.test. "),
        "{soa:?}"
    );
    assert_eq!(short(c, &["NS", "lab.test"]), ["slipway.lab.test."]);
    assert_eq!(short(c, &["+tcp", "SOA", "0.20.10.in-addr.arpa"]).len(), 1);

    let nx = dig(c, SERVER, &["nope.lab.test"]);
    assert_eq!(status(&nx), "NXDOMAIN");
    assert!(flags(&nx).contains(&"aa"));
    assert!(nx.contains("IN\tSOA\tslipway.lab.test."), "{nx}");
    let nx = dig(c, SERVER, &["-x", "10.20.0.99"]);
    assert_eq!(status(&nx), "NXDOMAIN");
    let nodata = dig(c, SERVER, &["AAAA", "cp-1.lab.test"]);
    assert_eq!(status(&nodata), "NOERROR");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    assert!(nodata.contains("IN\tSOA"), "{nodata}");

    // Out of zone: forwarded to the upstream for a cluster client, over UDP and TCP.
    assert_eq!(short(c, &["www.example.test"]), ["192.0.2.7"]);
    assert_eq!(short(c, &["+tcp", "db.example.test"]), ["192.0.2.7"]);
    let fwd = dig(c, SERVER, &["www.example.test"]);
    assert!(flags(&fwd).contains(&"ra"), "{fwd}");

    // A client outside the cluster's networks: REFUSED out of zone, answered in zone.
    let o = &net.outsider;
    let refused = dig(o, SERVER, &["www.example.test"]);
    assert_eq!(status(&refused), "REFUSED", "{refused}");
    let refused = dig(o, SERVER, &["+tcp", "www.example.test"]);
    assert_eq!(status(&refused), "REFUSED", "{refused}");
    let ours = dig(o, SERVER, &["+short", "cp-1.lab.test"]);
    assert_eq!(ours.trim(), "10.20.0.11");
    drop(net.srv);
}

#[test]
fn without_upstreams_out_of_zone_is_refused_and_sighup_changes_answers() {
    let Some(mut net) = setup("reload", false) else {
        return;
    };
    let c = &net.cli;
    let refused = dig(c, SERVER, &["www.example.test"]);
    assert_eq!(status(&refused), "REFUSED");
    assert_eq!(short(c, &["worker-1.lab.test"]), ["10.20.0.21"]);
    let gone = dig(c, SERVER, &["worker-2.lab.test"]);
    assert_eq!(status(&gone), "NXDOMAIN");

    // Move worker-1, add worker-2, rename the domain's endpoint to a VIP.
    let mut d = net.desc.clone();
    d.nodes[3].ip = "10.20.0.31".into();
    d.nodes.push(TestNode::new(
        "52:54:00:00:00:22",
        "worker-2",
        "10.20.0.22",
        false,
    ));
    d.vip = Some("10.20.0.10".into());
    net.slipway.reload(&d.yaml());
    assert_eq!(short(c, &["worker-1.lab.test"]), ["10.20.0.31"]);
    assert_eq!(short(c, &["worker-2.lab.test"]), ["10.20.0.22"]);
    assert_eq!(short(c, &["api.lab.test"]), ["10.20.0.10"]);
    assert_eq!(short(c, &["-x", "10.20.0.31"]), ["worker-1.lab.test."]);
    assert_eq!(status(&dig(c, SERVER, &["-x", "10.20.0.21"])), "NXDOMAIN");
    assert!(net.slipway.is_running());
}

/// A deterministic generator: tests must be reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A well-formed query for `name` (type A, RD, optionally with an EDNS OPT record).
fn query(id: u16, name: &str, edns: bool) -> Vec<u8> {
    let mut p = id.to_be_bytes().to_vec();
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.extend_from_slice(&[0, 0, 1, 0, 1]);
    if edns {
        p.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    p
}

/// Garbage of every kind: random bytes, truncated and mutated valid queries, absurd counts,
/// compression loops, responses.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let valid = query(rng.next() as u16, "cp-1.lab.test", rng.below(2) == 0);
    match rng.below(8) {
        0 => {
            let n = rng.below(600);
            rng.bytes(n)
        }
        1 => valid[..rng.below(valid.len())].to_vec(),
        2 | 3 => {
            let mut v = valid;
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            v
        }
        4 => {
            // 65535 questions claimed.
            let mut v = valid;
            v[4] = 0xff;
            v[5] = 0xff;
            v
        }
        5 => {
            // A compression pointer to itself.
            let mut v = valid[..12].to_vec();
            v.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            v
        }
        6 => {
            let mut v = valid;
            v[2] |= 0x80; // a response
            v
        }
        _ => {
            let mut v = valid;
            let n = rng.below(40);
            v.extend(rng.bytes(n));
            v
        }
    }
}

#[test]
fn garbage_on_udp_and_tcp_does_not_stop_service() {
    let Some(mut net) = setup("spray", false) else {
        return;
    };
    let noise = net._lan.host("noise", Some("10.20.0.66/24"), None);
    let server: SocketAddr = (SERVER.parse::<IpAddr>().unwrap(), 53).into();
    let stop = Arc::new(AtomicBool::new(false));

    let spray = {
        let stop = stop.clone();
        let ns = noise.ns.clone();
        std::thread::spawn(move || {
            common::enter_netns(&ns);
            let mut rng = Rng(0x5eed_d15c_0b01_dead);
            let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
            udp.set_nonblocking(true).unwrap();
            let mut sent = 0u64;
            let mut tcp_conns = 0u64;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut slow = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                for _ in 0..200 {
                    let _ = udp.send_to(&garbage(&mut rng), server);
                    sent += 1;
                }
                // Drain whatever answers came back.
                let mut buf = [0u8; 2048];
                while udp.recv_from(&mut buf).is_ok() {}
                // TCP: garbage frames, lying length prefixes, and connections left idle.
                if let Ok(mut s) = TcpStream::connect_timeout(&server, Duration::from_secs(1)) {
                    tcp_conns += 1;
                    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                    let g = garbage(&mut rng);
                    let mut framed = (g.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&g);
                    match rng.below(3) {
                        0 => {
                            let _ = s.write_all(&framed);
                        }
                        1 => {
                            let _ = s.write_all(&[0xff, 0xff, 1, 2, 3]);
                        }
                        _ => {
                            let _ = s.write_all(&framed[..framed.len() / 2]);
                        }
                    }
                    if slow.len() < 20 {
                        slow.push(s);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (sent, tcp_conns)
        })
    };

    // A well-formed client keeps getting its answers while the spray goes on.
    let c = &net.cli;
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(4) {
        assert_eq!(short(c, &["cp-1.lab.test"]), ["10.20.0.11"]);
        assert_eq!(
            short(c, &["+tcp", "-x", "10.20.0.21"]),
            ["worker-1.lab.test."]
        );
        answered += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, tcp_conns) = spray.join().unwrap();
    assert!(
        sent > 1000 && tcp_conns > 10,
        "spray too small: {sent} {tcp_conns}"
    );
    assert!(answered >= 3, "only {answered} rounds answered");

    // And after it, the server is alive and answers; the bad packets were counted.
    assert_eq!(short(c, &["+tcp", "worker-1.lab.test"]), ["10.20.0.21"]);
    assert!(net.slipway.is_running());
    let malformed = net
        .slipway
        .drain_logs()
        .iter()
        .filter(|l| l.contains("dropped malformed DNS packet"))
        .count();
    assert!(malformed > 100, "only {malformed} malformed packets logged");

    // A raw well-formed UDP query from inside the noise host gets its answer too.
    let reply = noise.within(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&query(0x1234, "worker-1.lab.test", false), server)
            .unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = s.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    });
    assert_eq!(&reply[..2], &[0x12, 0x34]);
    assert_eq!(&reply[reply.len() - 4..], &[10, 20, 0, 21]);
    drop(noise);
}

/// Not a network test: the exact request path (parse -> answer -> encode) over 200k random,
/// truncated and mutated packets, from clients inside and outside the cluster, UDP and TCP.
#[test]
fn request_path_survives_200k_random_and_mutated_packets() {
    let yaml = desc(true).yaml();
    let d = slipway::desc::parse_str("cluster-desc.yaml", &yaml).unwrap();
    let plan = slipway::plan::Plan::from_desc(&d);
    let hosts = vec![("laptop".to_string(), "10.20.0.201".parse().unwrap())];
    let snap = slipway::dns::Snapshot::new(&plan, &hosts, (1, 1));
    let clients: [IpAddr; 3] = [
        "10.20.0.50".parse().unwrap(),
        "192.168.77.5".parse().unwrap(),
        "::1".parse().unwrap(),
    ];
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut out = Vec::new();
    let (mut replies, mut drops, mut forwards) = (0, 0, 0);
    for i in 0..200_000 {
        let p = garbage(&mut rng);
        let transport = if i % 2 == 0 {
            slipway::dns::Transport::Udp
        } else {
            slipway::dns::Transport::Tcp
        };
        match slipway::dns::handle(&snap, &p, clients[i % 3], transport, &mut out) {
            slipway::dns::Action::Reply => {
                replies += 1;
                assert!(out.len() >= 12);
                assert_eq!(out[..2], p[..2], "reply carries the query ID");
                if transport == slipway::dns::Transport::Udp {
                    assert!(out.len() <= 1232);
                }
            }
            slipway::dns::Action::Drop => drops += 1,
            slipway::dns::Action::Forward(_) => forwards += 1,
        }
    }
    assert!(
        replies > 10_000 && drops > 10_000,
        "{replies} {drops} {forwards}"
    );
    assert!(slipway::dns::METRICS.malformed() >= drops);
}

/// A machine that leases an address with a hostname becomes resolvable by that name (and
/// its address by PTR) through Slipway's DNS: DHCP and DNS in one process, real clients.
#[test]
fn a_dhcp_lease_makes_its_hostname_resolvable() {
    if !netns_available() {
        return;
    }
    assert!(
        have("dig") && have("busybox"),
        "scripts/test.sh installs dig and busybox"
    );
    let lan = Lan::new("dhcpdns");
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    let cli = lan.host("cli", Some("10.20.0.50/24"), None);
    let laptop = lan.host("laptop", None, Some("52:54:00:66:00:01"));
    let d = TestDesc {
        unknown_machines: "enroll-worker".into(),
        pool: Some(("10.20.0.200".into(), "10.20.0.210".into())),
        ..TestDesc::default()
    };
    let mut slipway = Slipway::start(&srv, &d.yaml(), &[]);
    slipway_dns_ready(&slipway);
    let name = "rack9-n3.lab.test";
    assert_eq!(
        dig(&cli, SERVER, &["+short", name]).trim(),
        "",
        "not leased yet"
    );
    let out = laptop
        .command("busybox")
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "1",
            "-x",
            "hostname:rack9-n3",
            "-s",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The lease is published to DNS asynchronously; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        let a = dig(&cli, SERVER, &["+short", name]).trim().to_string();
        if !a.is_empty() {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never resolved: {:?}",
            slipway.drain_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let ip: std::net::Ipv4Addr = addr.parse().unwrap();
    assert!((200..=210).contains(&ip.octets()[3]), "{ip} from the pool");
    let ptr = dig(&cli, SERVER, &["+short", "-x", &addr]);
    assert_eq!(ptr.trim(), format!("{name}."));
}
