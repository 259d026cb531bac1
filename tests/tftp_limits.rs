//! TFTP limits with a raw client on a private LAN: requests beyond the transfer cap wait in
//! a FIFO and start when a slot frees (a repeat of a waiting request is not queued twice),
//! only a full waiting room answers "busy"; every transfer answers from a port of its own;
//! the block size never exceeds what the link's MTU carries.

mod common;
mod tftp_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::need;
use slipway::tftp::packet::{self, ErrorCode, Packet, RRQ};
use tftp_support::*;

/// Long enough that no wait runs out while a test looks at the queue.
const NO_EXPIRY: &[&str] = &["--tftp-queue-wait-ms", "600000"];

fn raw_clients(net: &Net, n: usize) -> Vec<Raw> {
    let clients: Vec<Raw> = net.cli.within(move || (0..n).map(|_| Raw::new()).collect());
    for c in &clients {
        // Queued clients hear nothing until earlier transfers are done.
        c.sock
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
    }
    clients
}

fn abort(c: &Raw, tid: SocketAddr, code: ErrorCode) {
    let mut p = Vec::new();
    packet::encode_error(code, "cancel", &mut p);
    c.send(&p, tid);
}

#[test]
fn six_clients_share_two_slots_and_all_finish() {
    if !need(&["curl"]) {
        return;
    }
    let mut args = vec!["--tftp-max-transfers", "2"];
    args.extend_from_slice(NO_EXPIRY);
    let mut net = setup("tftpq", &args);
    let files: Vec<Vec<u8>> = (0..6)
        .map(|i| content(150_000 + i * 7_777, 20 + i as u64))
        .collect();
    for (i, f) in files.iter().enumerate() {
        std::fs::write(net.images().join(format!("f{i}.bin")), f).unwrap();
    }
    let options: [&[(&str, &str)]; 6] = [
        &[],
        &[("blksize", "1468")],
        &[("blksize", "1024"), ("windowsize", "4")],
        &[],
        &[("blksize", "1468"), ("tsize", "0")],
        &[("windowsize", "8")],
    ];
    let clients = raw_clients(&net, 6);
    let ask = |i: usize| {
        let name = format!("f{i}.bin");
        clients[i].request(RRQ, name.as_bytes(), options[i]);
    };
    // Two transfers take the slots and stall: their clients read the first packet and do
    // not answer yet.
    ask(0);
    let first0 = clients[0].recv();
    ask(1);
    let first1 = clients[1].recv();
    // Four more wait; the last one repeats its request while it waits (as firmware does
    // when its RRQ timer fires).
    for i in 2..6 {
        ask(i);
    }
    ask(5);
    for _ in 0..4 {
        net.slipway.wait_log("TFTP request waits for a slot");
    }
    net.slipway
        .wait_log("TFTP repeat of a waiting request dropped");

    // Now every client goes on at once, each on its own thread.
    let firsts = [Some(first0), Some(first1), None, None, None, None];
    let threads: Vec<_> = clients
        .into_iter()
        .zip(firsts)
        .map(|(c, first)| {
            std::thread::spawn(move || {
                let first = first.unwrap_or_else(|| c.recv());
                c.download(first)
            })
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let got = t.join().expect("client thread");
        assert!(
            got == files[i],
            "client {i}: {} bytes, expected {}",
            got.len(),
            files[i].len()
        );
    }
    for _ in 0..6 {
        net.slipway.wait_log("TFTP transfer complete");
    }
    // The operator sees the waits in /metrics.
    let metrics = net.cli.run(net.cli.command("curl").args([
        "-sS",
        "-m",
        "10",
        "http://10.20.0.2:8080/metrics",
    ]));
    for line in [
        "slipway_tftp_queue_total{event=\"waited\"} 4",
        "slipway_tftp_queue_total{event=\"duplicate\"} 1",
        "slipway_tftp_queue_total{event=\"wait_expired\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let (_, stats) = net.stop();
    for (name, want) in [
        ("requests", 7),
        ("started", 6),
        ("completed", 6),
        ("waited", 4),
        ("duplicates", 1),
        ("wait_expired", 0),
        ("busy", 0),
        ("failed", 0),
    ] {
        assert_eq!(stat(&stats, name), want, "{name}: {stats}");
    }
}

#[test]
fn beyond_the_waiting_room_clients_are_told_busy() {
    if !need(&[]) {
        return;
    }
    let mut args = vec!["--tftp-max-transfers", "1", "--tftp-queue", "1"];
    args.extend_from_slice(NO_EXPIRY);
    let mut net = setup("tftpcap", &args);
    let body = content(10_000, 13);
    std::fs::write(net.images().join("f.bin"), &body).unwrap();
    let [a, b, c]: [Raw; 3] = raw_clients(&net, 3).try_into().ok().unwrap();
    // A holds the only slot and stalls after block 1; B waits; C finds the room full.
    a.request(RRQ, b"f.bin", &[]);
    let (_, tid_a) = a.recv();
    b.request(RRQ, b"f.bin", &[]);
    net.slipway.wait_log("TFTP request waits for a slot");
    let busy = c.error_for(RRQ, b"f.bin");
    assert_eq!(busy.0, 0);
    assert!(busy.1.contains("busy"), "{busy:?}");
    // A ends its transfer: B's starts in the freed slot.
    abort(&a, tid_a, ErrorCode::NotDefined);
    assert_eq!(b.download(b.recv()), body);
    // C asks again and is served (waiting first if B's transfer still holds the slot).
    c.request(RRQ, b"f.bin", &[]);
    assert_eq!(c.download(c.recv()), body);
    for _ in 0..2 {
        net.slipway.wait_log("TFTP transfer complete");
    }
    let (_, stats) = net.stop();
    assert_eq!(stat(&stats, "busy"), 1, "{stats}");
    assert_eq!(stat(&stats, "started"), 3, "{stats}");
    assert_eq!(stat(&stats, "completed"), 2, "{stats}");
    assert!(stat(&stats, "waited") >= 1, "{stats}");
}

#[test]
fn each_transfer_answers_from_a_port_of_its_own() {
    if !need(&[]) {
        return;
    }
    let mut net = setup("tftpport", &[]);
    let body = content(3_000, 17);
    std::fs::write(net.images().join("f.bin"), &body).unwrap();
    let [a, b]: [Raw; 2] = raw_clients(&net, 2).try_into().ok().unwrap();
    a.request(RRQ, b"f.bin", &[]);
    let first_a = a.recv();
    b.request(RRQ, b"f.bin", &[("blksize", "1024")]);
    let first_b = b.recv();
    let (tid_a, tid_b) = (first_a.1, first_b.1);
    let server: SocketAddr = SERVER.parse().unwrap();
    for tid in [tid_a, tid_b] {
        assert_eq!(tid.ip(), server.ip());
        assert_ne!(tid.port(), 69, "reply from the listening port");
    }
    assert_ne!(tid_a.port(), tid_b.port(), "two transfers share a port");
    // Each download checks that every datagram comes from its transfer's port.
    assert_eq!(a.download(first_a), body);
    assert_eq!(b.download(first_b), body);
    for _ in 0..2 {
        net.slipway.wait_log("TFTP transfer complete");
    }
}

/// The blksize of the OACK answering a request for 8192 (the transfer is then aborted).
fn offered_blksize(c: &Raw) -> String {
    c.request(RRQ, b"f.bin", &[("blksize", "8192"), ("tsize", "0")]);
    let (p, tid) = c.recv();
    let Ok(Packet::Oack(opts)) = packet::parse(&p) else {
        panic!("expected OACK, got {p:?}");
    };
    abort(c, tid, ErrorCode::OptionsRefused);
    opts.into_iter()
        .find(|(k, _)| k == "blksize")
        .expect("blksize in the OACK")
        .1
}

#[test]
fn blksize_8192_is_negotiated_down_to_the_link_mtu() {
    if !need(&[]) {
        return;
    }
    // The description claims jumbo frames; the veth carries 1500 bytes.
    let yaml = common::TestDesc::default().yaml().replace(
        "  gateway: 10.20.0.1\n",
        "  gateway: 10.20.0.1\n  mtu: 9000\n",
    );
    assert!(yaml.contains("mtu: 9000"), "{yaml}");
    let net = setup_with("tftpmtu", &yaml, &[]);
    let body = content(50_000, 19);
    std::fs::write(net.images().join("f.bin"), &body).unwrap();
    let [a, b, c]: [Raw; 3] = raw_clients(&net, 3).try_into().ok().unwrap();
    assert_eq!(
        offered_blksize(&a),
        "1468",
        "1500 - IPv4 - UDP - TFTP headers"
    );
    // The download uses that block size, and arrives whole.
    b.request(RRQ, b"f.bin", &[("blksize", "8192")]);
    assert_eq!(b.download(b.recv()), body);
    // A smaller link MTU on the server's side lowers it again.
    net.srv.run(std::process::Command::new("ip").args([
        "-n",
        &net.srv.ns,
        "link",
        "set",
        "eth0",
        "mtu",
        "1280",
    ]));
    assert_eq!(offered_blksize(&c), "1248");
}
