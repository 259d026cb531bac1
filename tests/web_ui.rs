//! The status page in headless Chromium (Debian's, driven by playwright-core): it loads, and
//! a node that boots during the test changes state in the table live, without a reload. A
//! screenshot is kept at target/status-page.png. Also: reads from outside the cluster's
//! networks need the admin token.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;

use common::{Lan, Slipway, TestDesc, have, netns_available};

const BASE: &str = "http://10.20.0.2:8080";

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

#[test]
fn status_page_updates_live_in_chromium() {
    if !netns_available() {
        return;
    }
    let ready =
        have("node") && have("chromium") && web_dir().join("node_modules/playwright-core").is_dir();
    if !ready {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "node, chromium and tests/web/node_modules are installed by scripts/test.sh"
        );
        eprintln!("SKIPPED: node/chromium/playwright-core missing");
        return;
    }
    let lan = Lan::new("webui");
    let server = lan.host("srv", Some("10.20.0.2/24"), None);
    let node = lan.host("cp1", Some("10.20.0.11/24"), Some("52:54:00:00:00:11"));
    let viewer = lan.host("viewer", Some("10.20.0.90/24"), None);
    let outsider = lan.host("out", Some("10.99.0.5/24"), None);
    server.add_addr("10.99.0.1/24");
    outsider.add_route("10.20.0.0/24", "10.99.0.1");
    let slipway = Slipway::start(
        &server,
        &TestDesc::default().yaml(),
        &["--disable", "dhcp", "--disable", "dns"],
    );

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    let mut browser = viewer
        .command("node")
        .arg(web_dir().join("ui.mjs"))
        .args([&format!("{BASE}/"), "cp-1", "planned", "pxe"])
        .arg(&shot)
        .current_dir(web_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let mut out = BufReader::new(browser.stdout.take().unwrap()).lines();
    let first = out.next().expect("browser output").unwrap();
    assert_eq!(first, "LOADED", "page did not load: {first}");

    // The node boots: its script fetch moves it to `pxe`.
    let fetched = node
        .command("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            &format!("{BASE}/boot/52-54-00-00-00-11.ipxe"),
        ])
        .status()
        .unwrap();
    assert!(fetched.success());
    writeln!(browser.stdin.take().unwrap(), "go").unwrap();
    let second = out.next().expect("browser output").unwrap();
    assert_eq!(second, "LIVE", "live update failed: {second}");
    assert!(browser.wait().unwrap().success());
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot kept"
    );

    // Outside the cluster's networks: refused without the admin token, served with it.
    let curl = |args: &[&str]| {
        let o = outsider
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(curl(&[&format!("{BASE}/api/v1/nodes")]), "403");
    assert_eq!(curl(&[&format!("{BASE}/")]), "403");
    let token = std::fs::read_to_string(slipway.dir.path().join("state/admin.token")).unwrap();
    let auth = format!("Authorization: Bearer {}", token.trim());
    assert_eq!(curl(&["-H", &auth, &format!("{BASE}/api/v1/nodes")]), "200");
    assert_eq!(
        curl(&[&format!(
            "{BASE}/api/v1/summary?access_token={}",
            token.trim()
        )]),
        "200"
    );
    // Boot endpoints keep their own rules and the health check stays open.
    assert_eq!(curl(&[&format!("{BASE}/healthz")]), "200");
}
