//! Shared by the TFTP tests: a LAN with Slipway serving TFTP and a client posing as
//! worker-1, file contents, the shutdown statistics, and a raw TFTP client for what real
//! clients never do on purpose.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{Host, Lan, Slipway, TestDesc};
use slipway::tftp::packet::{self, Packet};

pub const SERVER: &str = "10.20.0.2:69";
/// The client poses as worker-1 (its planned address), so transfers move its lifecycle.
pub const CLIENT_IP: &str = "10.20.0.21/24";
pub const WORKER_MAC: &str = "52:54:00:00:00:21";

pub struct Net {
    // Field order is drop order: the server goes before the LAN.
    pub slipway: Slipway,
    pub srv: Host,
    pub cli: Host,
    _lan: Lan,
}

impl Net {
    pub fn images(&self) -> PathBuf {
        self.slipway.dir.path().join("images").join("ipxe")
    }

    /// Stops the server; returns its state directory and the `TFTP stopped` log line.
    pub fn stop(mut self) -> (tempfile::TempDir, String) {
        self.slipway.signal(libc::SIGTERM);
        let line = self.slipway.wait_log("TFTP stopped");
        self.slipway.wait_log("slipway stopped");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.slipway.is_running() {
            assert!(Instant::now() < deadline, "serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        let Net { slipway, .. } = self;
        (slipway.dir, line)
    }
}

pub fn setup(tag: &str, args: &[&str]) -> Net {
    setup_with(tag, &TestDesc::default().yaml(), args)
}

/// `setup` with a description of the test's own.
pub fn setup_with(tag: &str, yaml: &str, args: &[&str]) -> Net {
    let lan = Lan::new(tag);
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    let cli = lan.host("cli", Some(CLIENT_IP), Some(WORKER_MAC));
    let mut all = vec!["--disable", "dhcp", "--disable", "dns"];
    all.extend_from_slice(args);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("images/ipxe")).unwrap();
    let slipway = Slipway::start_in(&srv, dir, yaml, &all);
    assert!(
        slipway.seen.iter().any(|l| l.contains("TFTP serving")),
        "{:?}",
        slipway.seen
    );
    Net {
        slipway,
        srv,
        cli,
        _lan: lan,
    }
}

/// Deterministic, incompressible-looking content.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

pub fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The `key=value` of a JSON log line's stats debug dump, e.g. `size_probes: 1`.
pub fn stat(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("{name} in {line}"));
    line[at + name.len() + 2..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// A raw TFTP client socket inside the client namespace.
pub struct Raw {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl Raw {
    pub fn new() -> Raw {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Raw {
            sock,
            server: SERVER.parse().unwrap(),
        }
    }

    pub fn request(&self, op: u16, name: &[u8], options: &[(&str, &str)]) {
        let mut p = Vec::new();
        packet::encode_request(op, name, options, &mut p);
        self.sock.send_to(&p, self.server).unwrap();
    }

    /// Next datagram: its bytes and where it came from (the transfer's port).
    pub fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = self.sock.recv_from(&mut buf).expect("a reply");
        buf.truncate(n);
        (buf, from)
    }

    pub fn send(&self, p: &[u8], to: SocketAddr) {
        self.sock.send_to(p, to).unwrap();
    }

    /// The error (code, message) the server answers `name` with.
    pub fn error_for(&self, op: u16, name: &[u8]) -> (u16, String) {
        self.request(op, name, &[]);
        let (p, _) = self.recv();
        match packet::parse(&p) {
            Ok(Packet::Error { code, message }) => (code, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Downloads until the short block, acknowledging each window's last block (RFC 7440;
    /// the window is 1 without an OACK); returns the bytes. `first` is the first datagram
    /// already received (DATA 1 or an OACK).
    /// Every datagram must come from the transfer's port (one transfer per request).
    pub fn download(&self, first: (Vec<u8>, SocketAddr)) -> Vec<u8> {
        let (mut p, tid) = first;
        let next = || {
            let (p, from) = self.recv();
            assert_eq!(from, tid, "a datagram from another transfer");
            p
        };
        let mut data = Vec::new();
        let (mut blksize, mut window) = (512, 1u16);
        let mut expect: u16 = 1;
        if let Ok(Packet::Oack(opts)) = packet::parse(&p) {
            for (k, v) in opts {
                match k.as_str() {
                    "blksize" => blksize = v.parse().unwrap(),
                    "windowsize" => window = v.parse().unwrap(),
                    _ => {}
                }
            }
            let mut ack = Vec::new();
            packet::encode_ack(0, &mut ack);
            self.send(&ack, tid);
            p = next();
        }
        loop {
            let parsed = packet::parse(&p);
            if let Ok(Packet::Oack(_)) = parsed {
                // A retransmitted OACK (the client was slow to answer the first).
                p = next();
                continue;
            }
            let Ok(Packet::Data { block, data: d }) = parsed else {
                panic!("expected DATA, got {p:?}");
            };
            let last = d.len() < blksize;
            if block == expect {
                data.extend_from_slice(d);
                expect = expect.wrapping_add(1);
                if last || block.is_multiple_of(window) {
                    let mut ack = Vec::new();
                    packet::encode_ack(block, &mut ack);
                    self.send(&ack, tid);
                }
                if last {
                    return data;
                }
            }
            p = next();
        }
    }
}
