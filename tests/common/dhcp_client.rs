//! DHCP client helpers shared by the DHCP tests: hook scripts that record a client's
//! environment, busybox udhcpc runs, a raw client socket, and stopping serve cleanly.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{Host, Slipway};
use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Encodable};

/// Writes a client hook script that saves its environment to `out` when bound.
pub fn env_script(dir: &Path, name: &str, bound_when: &str) -> (String, String) {
    let script = dir.join(name);
    let out = dir.join(format!("{name}.env"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif {bound_when}; then env > {}.tmp && mv {0}.tmp {0}; fi\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script.display().to_string(), out.display().to_string())
}

pub fn env_value(env: &str, key: &str) -> Option<String> {
    env.lines().find_map(|l| {
        l.strip_prefix(&format!("{key}="))
            .map(|v| v.trim_matches('\'').to_string())
    })
}

/// Runs udhcpc once with extra arguments; returns its bound environment, or None.
pub fn udhcpc(cli: &Host, dir: &Path, args: &[&str]) -> Option<String> {
    let (script, out) = env_script(dir, "udhcpc-hook", "[ \"$1\" = bound ]");
    let _ = std::fs::remove_file(&out);
    let status = cli
        .command("busybox")
        .args([
            "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "3", "-T", "1", "-s", &script,
        ])
        .args(args)
        .output()
        .unwrap();
    if !status.status.success() {
        return None;
    }
    std::fs::read_to_string(out).ok()
}

pub fn stop(mut s: Slipway) -> (tempfile::TempDir, Vec<String>) {
    s.signal(libc::SIGTERM);
    s.wait_log("slipway stopped");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.is_running() {
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = s.drain_logs().to_vec();
    (s.dir, logs)
}

/// Sends `msg` from the client port of `host` and collects the replies for the same xid.
pub fn raw_exchange(host: &Host, msg: Vec<u8>, to: SocketAddr, wait: Duration) -> Vec<Message> {
    host.within(move || {
        // Bound to the interface, like a PXE ROM: limited broadcast needs no route.
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        s.bind_device(Some(b"eth0")).unwrap();
        s.set_broadcast(true).unwrap();
        s.bind(&"0.0.0.0:68".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let sock: UdpSocket = s.into();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let xid = Message::from_bytes(&msg).unwrap().xid();
        sock.send_to(&msg, to).unwrap();
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        let mut replies = Vec::new();
        while Instant::now() < deadline {
            if let Ok((n, _)) = sock.recv_from(&mut buf)
                && let Ok(m) = Message::from_bytes(&buf[..n])
                && m.xid() == xid
            {
                replies.push(m);
            }
        }
        replies
    })
}

pub fn client_msg(
    kind: MessageType,
    mac: [u8; 6],
    ciaddr: Ipv4Addr,
    opts: Vec<DhcpOption>,
) -> Vec<u8> {
    let mut m = Message::new_with_id(
        0x5117_0000 | u32::from(mac[5]),
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o);
    }
    m.to_vec().unwrap()
}
