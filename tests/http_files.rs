//! Boot assets over HTTP, checked with real curl from another host on a private LAN: whole
//! downloads, HEAD, ranges, 416, conditional requests, the refusals that keep requests inside
//! the images directory, the iPXE fallback to Debian's binaries, and the lifecycle step a
//! node's kernel fetch records.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Host, Lan, Slipway, TestDesc, need};
use slipway::status::NodeState;
use slipway::store::Store;

const BASE: &str = "http://10.20.0.2:8080";
const WORKER_MAC: &str = "52:54:00:00:00:21";
const KERNEL: &str = "os/flatcar/stable/amd64-usr/4081.2.0/flatcar_production_pxe.vmlinuz";

/// A LAN with Slipway at 10.20.0.2 (HTTP only) and a client at `client_ip`.
fn lan(tag: &str, client_ip: &str) -> (Lan, Host, Host, Slipway) {
    let lan = Lan::new(tag);
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    let cli = lan.host("cli", Some(&format!("{client_ip}/24")), None);
    let slipway = Slipway::start(
        &srv,
        &TestDesc::default().yaml(),
        &["--disable", "dhcp", "--disable", "dns"],
    );
    (lan, srv, cli, slipway)
}

/// Deterministic, non-repeating-looking content.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn put(images: &Path, rel: &str, data: &[u8]) {
    let path = images.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

struct Resp {
    status: u16,
    /// Header lines, names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `curl` from `host` of `path` (sent as is: no dot-segment removal) with `args` added.
fn curl(host: &Host, path: &str, args: &[&str]) -> Resp {
    let tmp = tempfile::tempdir().unwrap();
    let (hdr, body) = (tmp.path().join("h"), tmp.path().join("b"));
    let out = host.run(
        host.command("curl")
            .args(["-sS", "--path-as-is", "--max-time", "30", "-D"])
            .arg(&hdr)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("{BASE}{path}")),
    );
    let headers = std::fs::read_to_string(&hdr)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status: out.trim().parse().unwrap(),
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn downloads_heads_ranges_and_conditional_requests() {
    if !need(&["curl", "sha256sum"]) {
        return;
    }
    let (_lan, _srv, cli, slipway) = lan("hfget", "10.20.0.50");
    let images = slipway.dir.path().join("images");
    let data = pattern(5 * 1024 * 1024 + 123);
    let len = data.len();
    put(&images, "os/big.img.gz", &data);

    // Whole file: same bytes, same digest.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("big");
    cli.run(
        cli.command("curl")
            .args(["-sSf", "-o"])
            .arg(&out)
            .arg(format!("{BASE}/assets/os/big.img.gz")),
    );
    assert_eq!(sha256(&out), sha256(&images.join("os/big.img.gz")));

    let full = curl(&cli, "/assets/os/big.img.gz", &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body.len(), len);
    assert_eq!(
        full.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(full.header("content-type"), Some("application/gzip"));
    let etag = full.header("etag").expect("ETag").to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong: {etag}"
    );
    let last_modified = full
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();

    // HEAD: the length (curl -I writes the head where the body would go).
    let head = curl(&cli, "/assets/os/big.img.gz", &["-I"]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert_eq!(head.header("etag"), Some(etag.as_str()));

    // Ranges: first bytes, middle, suffix, open-ended.
    for (range, start, end) in [
        ("0-99", 0, 99),
        ("1000000-2000000", 1_000_000, 2_000_000),
        ("-500", len - 500, len - 1),
        ("5000000-", 5_000_000, len - 1),
    ] {
        let r = curl(&cli, "/assets/os/big.img.gz", &["-r", range]);
        assert_eq!(r.status, 206, "range {range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/{len}").as_str())
        );
        assert_eq!(r.body, &data[start..=end], "range {range}");
    }

    // Past the end: 416 with the length; several ranges: the whole file.
    let r = curl(&cli, "/assets/os/big.img.gz", &["-r", &format!("{len}-")]);
    assert_eq!(r.status, 416);
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    let r = curl(&cli, "/assets/os/big.img.gz", &["-r", "0-9,20-29"]);
    assert_eq!((r.status, r.body.len()), (200, len));

    // Conditional requests.
    let inm = format!("If-None-Match: {etag}");
    let r = curl(&cli, "/assets/os/big.img.gz", &["-H", &inm]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = curl(
        &cli,
        "/assets/os/big.img.gz",
        &["-H", "If-None-Match: \"stale\""],
    );
    assert_eq!(r.status, 200);
    let ims = format!("If-Modified-Since: {last_modified}");
    assert_eq!(
        curl(&cli, "/assets/os/big.img.gz", &["-H", &ims]).status,
        304
    );
    let old = "If-Modified-Since: Thu, 01 Jan 2015 00:00:00 GMT";
    assert_eq!(
        curl(&cli, "/assets/os/big.img.gz", &["-H", old]).status,
        200
    );
    let ir = format!("If-Range: {etag}");
    let r = curl(&cli, "/assets/os/big.img.gz", &["-r", "0-9", "-H", &ir]);
    assert_eq!((r.status, r.body.len()), (206, 10));
    let r = curl(
        &cli,
        "/assets/os/big.img.gz",
        &["-r", "0-9", "-H", "If-Range: \"stale\""],
    );
    assert_eq!((r.status, r.body.len()), (200, len));

    // A replaced file gets a new ETag.
    std::thread::sleep(Duration::from_millis(20));
    put(&images, "os/big.img.gz", b"new");
    let r = curl(&cli, "/assets/os/big.img.gz", &["-H", &inm]);
    assert_eq!((r.status, r.body.as_slice()), (200, b"new".as_slice()));
}

#[test]
fn requests_cannot_leave_the_images_directory() {
    if !need(&["curl"]) {
        return;
    }
    let (_lan, _srv, cli, slipway) = lan("hfesc", "10.20.0.50");
    let dir = slipway.dir.path();
    let images = dir.join("images");
    put(&images, "os/ok", b"fine");
    std::fs::write(dir.join("secret"), b"do not serve").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", images.join("passwd")).unwrap();
    std::os::unix::fs::symlink(dir, images.join("up")).unwrap();
    std::os::unix::fs::symlink("ok", images.join("os/alias")).unwrap();

    assert_eq!(curl(&cli, "/assets/os/ok", &[]).text(), "fine");
    assert_eq!(
        curl(&cli, "/assets/os/alias", &[]).text(),
        "fine",
        "symlink inside"
    );

    let dir_text = dir.display().to_string();
    for (path, status) in [
        ("/assets/../cluster-desc.yaml", 400),
        ("/assets/os/../../secret", 400),
        ("/assets/%2e%2e/secret", 400),
        ("/assets/os/%2E%2E/%2e%2e/secret", 400),
        ("/assets/..%2fsecret", 400),
        ("/assets/%2fetc%2fpasswd", 400),
        ("/assets//etc/passwd", 400),
        ("/assets/os/./ok", 400),
        ("/assets/os%5c..%5csecret", 400),
        ("/assets/os/ok%00", 400),
        ("/ipxe/../secret", 400),
        ("/assets/passwd", 404),
        ("/assets/up/secret", 404),
        ("/assets/os", 404),
        ("/assets/os/", 400),
        ("/assets/missing", 404),
    ] {
        let r = curl(&cli, path, &[]);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        let text = r.text();
        assert!(text.starts_with("{\"error\":"), "{path}: {text}");
        for leak in [dir_text.as_str(), "root:", "do not serve", "/etc", "images"] {
            assert!(!text.contains(leak), "{path} leaked {leak}: {text}");
        }
    }
}

#[test]
fn ipxe_binaries_come_from_images_then_debian() {
    if !need(&["curl"]) {
        return;
    }
    let system = Path::new("/usr/lib/ipxe/snponly.efi");
    if !system.exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("Debian's ipxe package is required in CI (scripts/test.sh installs it)");
        }
        eprintln!("SKIPPED: /usr/lib/ipxe/snponly.efi missing (apt-get install ipxe)");
        return;
    }
    let (_lan, _srv, cli, slipway) = lan("hfipxe", "10.20.0.50");
    let images = slipway.dir.path().join("images");

    let r = curl(&cli, "/ipxe/snponly.efi", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, std::fs::read(system).unwrap());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let head = curl(&cli, "/ipxe/snponly.efi", &["-I"]);
    assert_eq!(
        head.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );

    // Debian links ipxe.efi to /boot/ipxe.efi: its own directory may link out.
    let linked = Path::new("/usr/lib/ipxe/ipxe.efi");
    if linked.exists() {
        let r = curl(&cli, "/ipxe/ipxe.efi", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, std::fs::read(linked).unwrap());
    }
    // images/ipxe/ may not, and it comes first.
    std::fs::create_dir_all(images.join("ipxe")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", images.join("ipxe/undionly.kpxe")).unwrap();
    let r = curl(&cli, "/ipxe/undionly.kpxe", &[]);
    assert_eq!(r.status, 404, "{}", r.text());
    put(&images, "ipxe/snponly.efi", b"a newer build");
    assert_eq!(curl(&cli, "/ipxe/snponly.efi", &[]).text(), "a newer build");
    assert_eq!(curl(&cli, "/ipxe/no-such.efi", &[]).status, 404);
}

#[test]
fn a_nodes_kernel_fetch_moves_it_to_booting() {
    if !need(&["curl"]) {
        return;
    }
    // The client is worker-1, at its planned address.
    let (_lan, _srv, node, mut slipway) = lan("hfboot", "10.20.0.21");
    let images = slipway.dir.path().join("images");
    put(&images, "ipxe/snponly.efi", b"loader");
    put(&images, KERNEL, &pattern(300_000));
    put(&images, "os/other", b"x");

    // HEAD and unrelated files record nothing; the loader marks pxe, the kernel booting.
    assert_eq!(
        curl(&node, &format!("/assets/{KERNEL}"), &["-I"]).status,
        200
    );
    assert_eq!(curl(&node, "/assets/os/other", &[]).status, 200);
    assert_eq!(curl(&node, "/ipxe/snponly.efi", &[]).status, 200);
    // The store write runs after the response started: wait for it to be logged.
    slipway.wait_log("ipxe /ipxe/snponly.efi");
    assert_eq!(curl(&node, &format!("/assets/{KERNEL}"), &[]).status, 200);
    let dir = stop(slipway, "kernel /assets/os/flatcar");
    let store = slipway::store::open(&dir.path().join("state")).unwrap();
    let rec = store.get_node(WORKER_MAC).unwrap().expect("node record");
    assert_eq!(rec.state, NodeState::Booting);
    assert_eq!(
        rec.detail.as_deref(),
        Some(format!("kernel /assets/{KERNEL}").as_str())
    );
    let states: Vec<_> = rec.history.iter().map(|t| t.state).collect();
    assert_eq!(states, [NodeState::Pxe, NodeState::Booting]);
    assert_eq!(store.nodes().unwrap().len(), 1);
}

/// Stops serve cleanly once it logged `needle`; returns its directory.
fn stop(mut s: Slipway, needle: &str) -> tempfile::TempDir {
    s.wait_log(needle);
    s.signal(libc::SIGTERM);
    s.wait_log("slipway stopped");
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.is_running() {
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.dir
}

#[test]
fn a_file_truncated_while_served_fails_that_download_only() {
    if !need(&["curl"]) {
        return;
    }
    let (_lan, _srv, cli, slipway) = lan("hftrunc", "10.20.0.50");
    let images = slipway.dir.path().join("images");
    let len = 64 * 1024 * 1024;
    put(&images, "os/big", &pattern(len));
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("partial");
    // A slow reader: most of the file is still to be sent when it shrinks.
    let mut slow = cli
        .command("curl")
        .args(["-sS", "--limit-rate", "4M", "-o"])
        .arg(&out)
        .arg(format!("{BASE}/assets/os/big"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(images.join("os/big"))
        .unwrap();
    f.set_len(1024 * 1024).unwrap();
    let status = slow.wait().unwrap();
    assert!(!status.success(), "a short transfer must not look complete");
    let got = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert!(got < len as u64, "got {got} bytes");
    // The server lives on and serves the file as it now is.
    assert!(slipway.is_running());
    let r = curl(&cli, "/healthz", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(curl(&cli, "/assets/os/big", &[]).body.len(), 1024 * 1024);
}
