//! The status page in headless Chromium (Debian's, driven by playwright-core): it loads, a
//! node that boots during the test changes state in the table live and is then marked stuck
//! without a reload, the registry's images are listed, the reinstall action needs the admin
//! token. A screenshot is kept at target/status-page.png. Also, from outside the cluster's
//! networks: the page's shell loads, data, the live stream and `slipway status` need the
//! admin token, and the page works once the token is entered; the forget action.

mod common;
#[path = "registry_support/mod.rs"]
mod registry_support;

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;

use common::{Host, Lan, Slipway, TestDesc, have, netns_available};

const BASE: &str = "http://10.20.0.2:8080";
const CACHED: &str = "docker.io/library/busybox:1.36";
const MISSING: &str = "registry.k8s.io/pause:3.10";

/// Runs a tests/web driver script inside `host` with the admin token in SLIPWAY_TOKEN;
/// the script reports on stdout and waits for the test's lines on stdin.
fn browser(
    host: &Host,
    script: &str,
    args: &[&str],
    token: &str,
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = host
        .command("node")
        .arg(web_dir().join(script))
        .args(args)
        .env("SLIPWAY_TOKEN", token)
        .current_dir(web_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let out = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, out)
}

fn web_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/web")
}

/// curl in `host`: the HTTP status code.
fn code(host: &Host, args: &[&str]) -> String {
    let o = host
        .command("curl")
        .args(["-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
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

    // One pinned image is in the mirror (imported before the start), one is not.
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    registry_support::layout(&oci, "1.36", false, &[(2_000, 7)]);
    let storage = dir.path().join("state/registry");
    let imported = std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["images", "import", "--storage"])
        .arg(&storage)
        .args(["--name", CACHED])
        .arg(&oci)
        .output()
        .unwrap();
    assert!(imported.status.success(), "{imported:?}");
    let yaml = format!(
        "{}images:\n  - {CACHED}\n  - {MISSING}\n",
        TestDesc::default().yaml()
    );
    let mut slipway = Slipway::start_in(
        &server,
        dir,
        &yaml,
        &[
            "--disable",
            "dhcp",
            "--disable",
            "dns",
            "--registry-offline",
            "--stuck-after",
            "3s",
        ],
    );
    let token = std::fs::read_to_string(slipway.dir.path().join("state/admin.token")).unwrap();
    let token = token.trim().to_string();
    // Lines so far include the one that shows the new admin token at its creation.
    let shown = slipway.seen.len();

    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    let shot_arg = shot.to_str().unwrap();
    let (mut browser, mut out) = browser(
        &viewer,
        "ui.mjs",
        &[
            &format!("{BASE}/"),
            "cp-1",
            "planned",
            "pxe",
            shot_arg,
            CACHED,
            MISSING,
        ],
        &token,
    );
    let first = out.next().expect("browser output").unwrap();
    assert_eq!(first, "LOADED", "page did not load: {first}");

    // The node boots: its script fetch moves it to `pxe`, then nothing more happens.
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
    assert_eq!(second, "LIVE", "page test failed: {second}");
    assert!(browser.wait().unwrap().success());
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "screenshot kept"
    );

    outside_the_cluster(&outsider, &token);
    page_from_outside(&outsider, &node, &token);
    forget(&outsider, &token);
    // The admin token never reaches the log afterwards, though the page's stream carried it.
    let logged: Vec<&String> = slipway.drain_logs()[shown..]
        .iter()
        .filter(|l| l.contains(&token))
        .collect();
    assert!(logged.is_empty(), "admin token logged: {logged:?}");
}

/// From 10.99.0.5 (routed, not on the cluster's networks): the page's shell loads for
/// anyone; data, the live stream and `slipway status` need the admin token.
fn outside_the_cluster(outsider: &Host, token: &str) {
    for shell in ["/", "/ui/app.js", "/ui/style.css", "/healthz"] {
        assert_eq!(
            code(outsider, &[&format!("{BASE}{shell}")]),
            "200",
            "{shell}"
        );
    }
    for data in [
        "/api/v1/nodes",
        "/api/v1/summary",
        "/api/v1/stream",
        "/metrics",
    ] {
        assert_eq!(code(outsider, &[&format!("{BASE}{data}")]), "403", "{data}");
    }
    let auth = format!("Authorization: Bearer {token}");
    assert_eq!(
        code(outsider, &["-H", &auth, &format!("{BASE}/api/v1/nodes")]),
        "200"
    );
    assert_eq!(
        code(
            outsider,
            &[
                "-H",
                "Authorization: Bearer wrong",
                &format!("{BASE}/api/v1/nodes")
            ]
        ),
        "403"
    );

    // The live stream with the token in the query (as the page's EventSource sends it):
    // an event arrives once something happens.
    let mut stream = outsider
        .command("curl")
        .args(["-sN", "-m", "60"])
        .arg(format!("{BASE}/api/v1/stream?access_token={token}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(stream.stdout.take().unwrap()).lines();
    let base = BASE.to_string();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poke = std::thread::spawn({
        let (auth, done) = (auth.clone(), done.clone());
        let ns = outsider.ns.clone();
        move || {
            // Until the stream has subscribed, an event may be missed: repeat.
            for _ in 0..60 {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let _ = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "-X",
                        "POST",
                    ])
                    .args(["-H", &auth])
                    .arg(format!("{base}/api/v1/nodes/worker-1/reinstall"))
                    .status();
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
    });
    let got = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("node.reinstall"));
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stream.kill();
    let _ = stream.wait();
    let _ = poke.join();
    assert!(got.is_some(), "no event on the stream");

    // `slipway status` from outside: refused without a token, then --token FILE and
    // SLIPWAY_TOKEN.
    let cli = |args: &[&str], env: Option<&str>| {
        let mut c = outsider.command(env!("CARGO_BIN_EXE_slipway"));
        c.args(["status", "--server", BASE]).args(args);
        c.env_remove("SLIPWAY_TOKEN");
        if let Some(t) = env {
            c.env("SLIPWAY_TOKEN", t);
        }
        let o = c.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    };
    let (ok, text) = cli(&[], None);
    assert!(!ok && text.contains("403"), "{text}");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{token}\n")).unwrap();
    let (ok, text) = cli(&["--token", &file.path().to_string_lossy()], None);
    assert!(ok && text.contains("cp-1"), "{text}");
    let (ok, text) = cli(&[], Some(token));
    assert!(ok && text.contains("worker-1"), "{text}");

    // --watch survives failed requests: it shows the error and asks again.
    let mut watch = outsider
        .command(env!("CARGO_BIN_EXE_slipway"))
        .args(["status", "--watch", "--server", BASE])
        .env_remove("SLIPWAY_TOKEN")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = watch.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("403").count() < 2 {
        let n = std::io::Read::read(&mut out, &mut buf).unwrap();
        assert!(n > 0, "status --watch exited: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

/// The page in Chromium from outside: empty until the token is entered, then filled and
/// live (the node's next step shows without a reload).
fn page_from_outside(outsider: &Host, node: &Host, token: &str) {
    let (mut browser, mut out) = browser(
        outsider,
        "outside.mjs",
        &[&format!("{BASE}/"), "cp-1", "pxe"],
        token,
    );
    let first = out.next().expect("browser output").unwrap();
    assert_eq!(first, "READY", "page from outside: {first}");
    // cp-1 is `planned` again (reinstalled from the page); its script fetch moves it on.
    let fetched = node
        .command("curl")
        .args(["-sf", "-o", "/dev/null"])
        .arg(format!("{BASE}/boot/52-54-00-00-00-11.ipxe"))
        .status()
        .unwrap();
    assert!(fetched.success());
    writeln!(browser.stdin.take().unwrap(), "go").unwrap();
    let second = out.next().expect("browser output").unwrap();
    assert_eq!(second, "LIVE", "page from outside: {second}");
    assert!(browser.wait().unwrap().success());
}

/// `POST /api/v1/nodes/{id}/forget`: needs the admin token; the planned node is `planned`
/// again with no record, and a second forget finds nothing.
fn forget(outsider: &Host, token: &str) {
    let auth = format!("Authorization: Bearer {token}");
    let url = format!("{BASE}/api/v1/nodes/cp-1/forget");
    assert_eq!(code(outsider, &["-X", "POST", &url]), "401");
    assert_eq!(
        code(
            outsider,
            &["-X", "POST", "-H", "Authorization: Bearer wrong", &url]
        ),
        "403"
    );
    assert_eq!(code(outsider, &["-X", "POST", "-H", &auth, &url]), "200");
    let o = outsider
        .command("curl")
        .args(["-sf", "-H", &auth, &format!("{BASE}/api/v1/nodes/cp-1")])
        .output()
        .unwrap();
    let view: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(view["state"], "planned", "{view}");
    assert!(view["updated_at"].is_null(), "{view}");
    assert_eq!(code(outsider, &["-X", "POST", "-H", &auth, &url]), "404");
}
