//! TFTP with real clients on a private LAN of network namespaces: tftp-hpa (512-byte blocks
//! over a file past the 16-bit block-number wrap), atftp with blksize/tsize/windowsize,
//! curl and busybox; every download is compared byte for byte with the served file. A raw
//! UDP client covers what clients never do on purpose: write requests, traversal, absolute
//! paths, symlinks out of the root, the OVMF size probe, silence (retransmission with
//! backoff) and garbage sprayed at the port. Caps, the waiting room, ports and MTU:
//! tests/tftp_limits.rs.

mod common;
mod tftp_support;

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use common::need;
use slipway::status::NodeState;
use slipway::store::Store;
use slipway::tftp::packet::{self, Packet, RRQ, WRQ};
use tftp_support::*;

#[test]
fn real_clients_download_identical_bytes() {
    if !need(&["tftp", "atftp", "curl", "busybox", "sha256sum"]) {
        return;
    }
    let net = setup("tftpcl", &[]);
    let ipxe = net.images();
    // 40 MiB: 81,921 blocks of 512 bytes, past the 65535 wrap.
    let big = ipxe.join("big.img");
    std::fs::write(&big, content(40 << 20, 1)).unwrap();
    std::fs::create_dir_all(ipxe.join("arm64")).unwrap();
    let small = ipxe.join("arm64/snponly.efi");
    std::fs::write(&small, content(3 * 1468, 2)).unwrap(); // a multiple of the block size
    let mid = ipxe.join("mid.bin");
    std::fs::write(&mid, content(5_000_001, 3)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let got = |name: &str| out.path().join(name);

    // tftp-hpa: no options, 512-byte blocks, octet mode.
    net.cli.run(net.cli.command("tftp").args([
        "-m",
        "binary",
        "10.20.0.2",
        "-c",
        "get",
        "big.img",
        got("hpa-big").to_str().unwrap(),
    ]));
    assert_eq!(
        sha256(&got("hpa-big")),
        sha256(&big),
        "tftp-hpa across the wrap"
    );

    // atftp with blksize, tsize and windowsize 16.
    for (file, local) in [
        ("mid.bin", "atftp-mid"),
        ("/arm64/snponly.efi", "atftp-small"),
    ] {
        net.cli.run(net.cli.command("atftp").args([
            "--option",
            "blksize 1468",
            "--option",
            "tsize 0",
            "--option",
            "windowsize 16",
            "-g",
            "-r",
            file,
            "-l",
            got(local).to_str().unwrap(),
            "10.20.0.2",
        ]));
    }
    assert_eq!(sha256(&got("atftp-mid")), sha256(&mid), "atftp windowed");
    assert_eq!(sha256(&got("atftp-small")), sha256(&small), "atftp exact");

    // curl with a 1468-byte block.
    net.cli.run(net.cli.command("curl").args([
        "-sS",
        "--tftp-blksize",
        "1468",
        "-o",
        got("curl-mid").to_str().unwrap(),
        "tftp://10.20.0.2/mid.bin",
    ]));
    assert_eq!(sha256(&got("curl-mid")), sha256(&mid), "curl");

    // busybox asks for 8192 and gets 1468 (the MTU clamp).
    net.cli.run(net.cli.command("busybox").args([
        "tftp",
        "-g",
        "-b",
        "8192",
        "-r",
        "mid.bin",
        "-l",
        got("bb-mid").to_str().unwrap(),
        "10.20.0.2",
    ]));
    assert_eq!(sha256(&got("bb-mid")), sha256(&mid), "busybox");

    // The iPXE binary from Debian's package when images/ipxe/ has none.
    let system = Path::new("/usr/lib/ipxe/undionly.kpxe");
    if system.is_file() {
        net.cli.run(net.cli.command("curl").args([
            "-sS",
            "-o",
            got("undionly").to_str().unwrap(),
            "tftp://10.20.0.2/undionly.kpxe",
        ]));
        assert_eq!(sha256(&got("undionly")), sha256(system), "fallback root");
        // images/ipxe/ comes first.
        std::fs::write(ipxe.join("undionly.kpxe"), b"ours").unwrap();
        net.cli.run(net.cli.command("curl").args([
            "-sS",
            "-o",
            got("undionly2").to_str().unwrap(),
            "tftp://10.20.0.2/undionly.kpxe",
        ]));
        assert_eq!(std::fs::read(got("undionly2")).unwrap(), b"ours");
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("/usr/lib/ipxe/undionly.kpxe missing: scripts/test.sh installs ipxe");
    }

    let (dir, stats) = net.stop();
    assert_eq!(stat(&stats, "failed"), 0, "{stats}");
    assert!(stat(&stats, "completed") >= 5, "{stats}");
    assert!(
        stat(&stats, "bytes_sent") >= (40 << 20) + 3 * 5_000_001,
        "{stats}"
    );
    // Each transfer from worker-1's address moved its lifecycle to `pxe`.
    let store = slipway::store::open(&dir.path().join("state")).unwrap();
    let node = store
        .get_node(WORKER_MAC)
        .unwrap()
        .expect("lifecycle record");
    assert_eq!(node.state, NodeState::Pxe);
    assert!(
        node.detail
            .as_deref()
            .is_some_and(|d| d.starts_with("TFTP ")),
        "{node:?}"
    );
}

#[test]
fn refusals_never_reveal_paths() {
    if !need(&[]) {
        return;
    }
    let mut net = setup("tftpref", &[]);
    let ipxe = net.images();
    let secret = net.slipway.dir.path().join("secret.txt");
    std::fs::write(&secret, b"not for clients").unwrap();
    std::os::unix::fs::symlink(&secret, ipxe.join("escape")).unwrap();
    std::os::unix::fs::symlink(net.slipway.dir.path(), ipxe.join("updir")).unwrap();
    std::fs::write(ipxe.join("ok.bin"), b"fine").unwrap();
    let server_dir = net.slipway.dir.path().display().to_string();
    let abs = format!("/{}", secret.display());
    let results = net.cli.within(move || {
        let raw = Raw::new();
        let mut r = vec![raw.error_for(WRQ, b"ok.bin")];
        for name in [
            &b"../secret.txt"[..],
            b"/../secret.txt",
            b"arm64/../../secret.txt",
            abs.as_bytes(),
            b"escape",
            b"updir/secret.txt",
            b"no-such-file",
            b"/no/such/dir/file",
        ] {
            r.push(raw.error_for(RRQ, name));
        }
        // The legitimate file still downloads.
        raw.request(RRQ, b"/ok.bin", &[]);
        let got = raw.download(raw.recv());
        (r, got)
    });
    let (errors, got) = results;
    assert_eq!(got, b"fine");
    // The client is done once it sent the last ACK; the server, once it read it.
    net.slipway.wait_log("TFTP transfer complete");
    let codes: Vec<u16> = errors.iter().map(|e| e.0).collect();
    assert_eq!(codes, [2, 2, 2, 2, 2, 2, 2, 1, 1], "{errors:?}");
    for (_, message) in &errors {
        assert!(
            !message.contains('/') && !message.contains(&server_dir),
            "{message}"
        );
    }
    let (_, stats) = net.stop();
    assert_eq!(stat(&stats, "refused"), 9, "{stats}");
    assert_eq!(stat(&stats, "completed"), 1, "{stats}");
}

#[test]
fn ovmf_size_probe_then_download_is_normal() {
    if !need(&[]) {
        return;
    }
    let mut net = setup("tftpovmf", &[]);
    let body = content(200_000, 7);
    std::fs::write(net.images().join("snponly.efi"), &body).unwrap();
    let got = net.cli.within(|| {
        let raw = Raw::new();
        // The probe: tsize and blksize, then error 8 after reading the size.
        raw.request(RRQ, b"snponly.efi", &[("blksize", "1468"), ("tsize", "0")]);
        let (p, tid) = raw.recv();
        let Ok(Packet::Oack(opts)) = packet::parse(&p) else {
            panic!("expected OACK, got {p:?}");
        };
        assert!(
            opts.contains(&("tsize".into(), "200000".into())),
            "{opts:?}"
        );
        assert!(
            opts.contains(&("blksize".into(), "1468".into())),
            "{opts:?}"
        );
        let mut abort = Vec::new();
        packet::encode_error(packet::ErrorCode::OptionsRefused, "tsize only", &mut abort);
        raw.send(&abort, tid);
        // The real download, windowed.
        raw.request(
            RRQ,
            b"snponly.efi",
            &[("blksize", "8192"), ("windowsize", "4")],
        );
        raw.download(raw.recv())
    });
    assert_eq!(got, body);
    net.slipway.wait_log("TFTP transfer complete");
    let logs = net.slipway.drain_logs().join("\n");
    assert!(
        !logs.contains("\"level\":\"WARN\"") && !logs.contains("\"level\":\"ERROR\""),
        "{logs}"
    );
    let (_, stats) = net.stop();
    assert_eq!(stat(&stats, "size_probes"), 1, "{stats}");
    assert_eq!(stat(&stats, "failed"), 0, "{stats}");
    assert_eq!(stat(&stats, "completed"), 1, "{stats}");
}

#[test]
fn silence_gets_retransmissions_with_backoff() {
    if !need(&[]) {
        return;
    }
    let net = setup("tftprtx", &[]);
    std::fs::write(net.images().join("f.bin"), content(2000, 9)).unwrap();
    let (gaps, next) = net.cli.within(|| {
        let raw = Raw::new();
        raw.request(RRQ, b"f.bin", &[]);
        let (first, tid) = raw.recv();
        let mut at = Instant::now();
        let mut gaps = Vec::new();
        for _ in 0..2 {
            let (again, from) = raw.recv();
            assert_eq!((again.as_slice(), from), (first.as_slice(), tid));
            gaps.push(at.elapsed());
            at = Instant::now();
        }
        let mut ack = Vec::new();
        packet::encode_ack(1, &mut ack);
        raw.send(&ack, tid);
        let (p, _) = raw.recv();
        (gaps, p)
    });
    // Timeout 1 s, then doubled: block 1 again after ~1 s, then ~2 s later.
    assert!(
        gaps[0] >= Duration::from_millis(900) && gaps[0] < Duration::from_millis(1800),
        "{gaps:?}"
    );
    assert!(gaps[1] >= Duration::from_millis(1900), "{gaps:?}");
    assert!(matches!(
        packet::parse(&next),
        Ok(Packet::Data { block: 2, .. })
    ));
}

#[test]
fn garbage_does_not_stop_a_real_client() {
    if !need(&["curl"]) {
        return;
    }
    let mut net = setup("tftpjunk", &[]);
    let body = content(3_000_000, 11);
    std::fs::write(net.images().join("snponly.efi"), &body).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sprayer = {
        let (ns, stop) = (net.cli.ns.clone(), stop.clone());
        std::thread::spawn(move || {
            common::enter_netns(&ns);
            let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
            let mut s: u64 = 0x1234_5678_9abc_def1;
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let len = (s % 600) as usize;
                let mut p: Vec<u8> = (0..len).map(|i| (s >> (i % 56)) as u8).collect();
                // Half of them look like TFTP: a valid opcode, then junk.
                if s.is_multiple_of(2) && p.len() >= 2 {
                    p[0] = 0;
                    p[1] = [3, 4, 5, 6, 9][(s % 5) as usize];
                }
                let _ = sock.send_to(&p, SERVER);
                sent += 1;
                if sent.is_multiple_of(8) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            sent
        })
    };
    let out = tempfile::tempdir().unwrap();
    let got = out.path().join("got");
    for _ in 0..3 {
        net.cli.run(net.cli.command("curl").args([
            "-sS",
            "--tftp-blksize",
            "1468",
            "-o",
            got.to_str().unwrap(),
            "tftp://10.20.0.2/snponly.efi",
        ]));
        assert_eq!(std::fs::read(&got).unwrap(), body);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sprayer.join().unwrap();
    for _ in 0..3 {
        net.slipway.wait_log("TFTP transfer complete");
    }
    assert!(sent > 1000, "{sent}");
    let (_, stats) = net.stop();
    assert!(stat(&stats, "bad_packets") >= sent / 4, "{sent} {stats}");
    assert_eq!(stat(&stats, "completed"), 3, "{stats}");
}
