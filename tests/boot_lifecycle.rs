//! The node lifecycle over real HTTP from machines on a LAN the test builds: a failure
//! reported with the node's token is recorded with its message and holds the node (no
//! reinstall loop) until `slipway node reinstall`; the boot-loop guard does the same for a
//! machine that keeps fetching its script; and the timeline survives restarts of `serve`,
//! clean and by SIGKILL, to the millisecond.

mod common;

use common::{Host, Lan, Slipway, TestDesc, netns_available};

const CP_URL_MAC: &str = "52-54-00-00-00-11";
const CP: &str = "52:54:00:00:00:11";
const BASE: &str = "http://10.20.0.2:8080";
const ARGS: &[&str] = &["--disable", "dhcp", "--disable", "dns"];

use common::{boot_token as token_of, curl_status as curl};

/// `slipway ARGS` inside `host`; panics unless it succeeds; returns stdout and stderr.
fn cli(host: &Host, args: &[&str]) -> String {
    let out = host
        .command(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .output()
        .expect("slipway runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "slipway {args:?}: {text}");
    text
}

fn node_view(host: &Host) -> serde_json::Value {
    let (code, body) = curl(host, &[&format!("{BASE}/api/v1/nodes/cp-1")]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn states(view: &serde_json::Value) -> Vec<String> {
    view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect()
}

fn script(node: &Host) -> String {
    let (code, text) = curl(node, &[&format!("{BASE}/boot/{CP_URL_MAC}.ipxe")]);
    assert_eq!(code, 200, "{text}");
    assert!(text.starts_with("#!ipxe"), "{text}");
    text
}

/// A hold script: no installer, no token, asks for the same script again.
fn assert_held(text: &str, reason: &str) {
    assert!(
        !text.contains("kernel ") && !text.contains("token="),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "chain --replace --autofree {BASE}/boot/{CP_URL_MAC}.ipxe"
        )),
        "{text}"
    );
    assert!(text.contains("slipway node reinstall cp-1"), "{text}");
    assert!(text.contains(reason), "{reason}: {text}");
}

fn reinstall(ops: &Host, slipway: &Slipway) {
    let state_dir = slipway.dir.path().join("state");
    cli(
        ops,
        &[
            "node",
            "reinstall",
            "cp-1",
            "--server",
            BASE,
            "--state-dir",
            state_dir.to_str().unwrap(),
        ],
    );
}

struct Net {
    // Field order is drop order: the server goes before the LAN.
    slipway: Slipway,
    srv: Host,
    node: Host,
    ops: Host,
    _lan: Lan,
}

fn setup(tag: &str) -> Net {
    let lan = Lan::new(tag);
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    let node = lan.host("cp1", Some("10.20.0.11/24"), Some(CP));
    let ops = lan.host("ops", Some("10.20.0.99/24"), None);
    let slipway = Slipway::start(&srv, &TestDesc::default().yaml(), ARGS);
    Net {
        slipway,
        srv,
        node,
        ops,
        _lan: lan,
    }
}

#[test]
fn reported_failure_is_recorded_and_held_until_reinstall() {
    if !netns_available() {
        return;
    }
    let net = setup("failrep");
    let token = token_of(&script(&net.node));
    let (code, _) = curl(
        &net.node,
        &[&format!("{BASE}/config/{CP_URL_MAC}?token={token}")],
    );
    assert_eq!(code, 200);
    let report = format!("{BASE}/report/{CP_URL_MAC}");
    let post = |form: &str| curl(&net.node, &["--data", form, &report]).0;
    assert_eq!(post(&format!("token={token}&state=installing")), 204);
    // Someone else's failure report is refused and changes nothing.
    assert_eq!(post("token=nope&state=failed&message=forged"), 403);
    assert_eq!(node_view(&net.ops)["state"], "installing");
    let message = "disk /dev/vda not found";
    assert_eq!(
        post(&format!(
            "token={token}&state=failed&message=disk+%2Fdev%2Fvda+not+found"
        )),
        204
    );

    // The API: state, detail and the timeline's last step carry the message.
    let view = node_view(&net.ops);
    assert_eq!(view["state"], "failed", "{view}");
    assert!(view["detail"].as_str().unwrap().contains(message), "{view}");
    assert_eq!(
        states(&view),
        ["pxe", "config-fetched", "installing", "failed"],
        "{view}"
    );
    let last = view["history"].as_array().unwrap().last().unwrap().clone();
    assert!(last["detail"].as_str().unwrap().contains(message), "{last}");
    assert!(
        view["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "node.failed" && e["message"].as_str().unwrap().contains(message)),
        "{view}"
    );
    // The CLI prints it.
    let timeline = cli(&net.ops, &["status", "--server", BASE, "--node", "cp-1"]);
    let line = timeline
        .lines()
        .find(|l| l.contains(" failed "))
        .unwrap_or_else(|| panic!("no failed step in\n{timeline}"));
    assert!(line.contains(message), "{timeline}");
    let table = cli(&net.ops, &["status", "--server", BASE]);
    let row = table.lines().find(|l| l.starts_with("cp-1")).expect(&table);
    assert!(row.contains("failed") && row.contains(message), "{table}");

    // Its next network boot is held, not a silent reinstall, however often it asks...
    for _ in 0..3 {
        assert_held(&script(&net.node), message);
    }
    // ...and its firmware's TFTP leg does not move it out of `failed` either.
    let ipxe = net.slipway.dir.path().join("images/ipxe");
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::write(ipxe.join("snponly.efi"), b"efi").unwrap();
    let (code, body) = curl(&net.node, &["tftp://10.20.0.2/snponly.efi"]);
    assert_eq!((code, body.as_str()), (0, "efi"));
    // The TFTP step is recorded off the transfer's path: wait for its event (written in
    // the same transaction as the transition it skipped).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let view = loop {
        let view = node_view(&net.ops);
        let seen = view["events"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "node.pxe" && e["message"].as_str().unwrap().contains("snponly.efi")
        });
        if seen {
            break view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no TFTP event: {view}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(view["state"], "failed", "{view}");
    assert_eq!(states(&view).last().unwrap(), "failed");

    // The installer's own later report still counts (it retried by itself and made it)...
    assert_eq!(post(&format!("token={token}&state=installed")), 204);
    assert_eq!(node_view(&net.ops)["state"], "installed");
    assert!(
        script(&net.node).contains("sanboot"),
        "installed: local disk"
    );
    // ...and a second failure holds it again.
    assert_eq!(
        post(&format!("token={token}&state=failed&message=fsck+failed")),
        204
    );
    assert_held(&script(&net.node), "fsck failed");

    // The operator decides: reinstall, and the next fetch installs with a fresh token.
    reinstall(&net.ops, &net.slipway);
    assert_eq!(node_view(&net.ops)["state"], "planned");
    let fresh = token_of(&script(&net.node));
    assert_ne!(fresh, token);
    assert_eq!(node_view(&net.ops)["state"], "pxe");
}

#[test]
fn boot_loop_guard_fails_the_node_and_reinstall_clears_it() {
    if !netns_available() {
        return;
    }
    let net = setup("bootloop");
    // Eight script fetches without a kernel fetch are still served (a slow firmware).
    for _ in 0..8 {
        token_of(&script(&net.node));
    }
    assert_eq!(node_view(&net.ops)["state"], "pxe");
    // The ninth trips the guard: failed, held, and held again on the next fetch.
    assert_held(&script(&net.node), "boot loop");
    let view = node_view(&net.ops);
    assert_eq!(view["state"], "failed", "{view}");
    let detail = view["detail"].as_str().unwrap();
    assert!(detail.starts_with("boot loop: 9 script fetches"), "{view}");
    assert_held(&script(&net.node), "boot loop");
    let timeline = cli(&net.ops, &["status", "--server", BASE, "--node", "cp-1"]);
    assert!(
        timeline.contains("boot loop: 9 script fetches"),
        "{timeline}"
    );

    reinstall(&net.ops, &net.slipway);
    // The guard forgot the machine: it gets its installer again, eight times over.
    for _ in 0..8 {
        token_of(&script(&net.node));
    }
    let view = node_view(&net.ops);
    assert_eq!(view["state"], "pxe", "{view}");
    let s = states(&view);
    assert_eq!(&s[s.len() - 3..], ["failed", "planned", "pxe"], "{view}");
}

/// Stops `serve` with SIGTERM (a clean shutdown) and starts it again on the same state.
fn restart(slipway: Slipway, host: &Host) -> Slipway {
    slipway.signal(libc::SIGTERM);
    host.reap(slipway.pid);
    let yaml = std::fs::read_to_string(&slipway.config).unwrap();
    Slipway::start_in(host, slipway.dir, &yaml, ARGS)
}

#[test]
fn timeline_survives_clean_and_killed_restarts() {
    if !netns_available() {
        return;
    }
    let mut net = setup("timeline");
    let (node, ops) = (&net.node, &net.ops);
    let token = token_of(&script(node));
    let config = format!("{BASE}/config/{CP_URL_MAC}?token={token}");
    assert_eq!(curl(node, &[&config]).0, 200);
    let report = format!("{BASE}/report/{CP_URL_MAC}");
    let post = |state: &str| {
        let form = format!("token={token}&state={state}&message=step+{state}");
        curl(node, &["--data", &form, &report]).0
    };
    assert_eq!(post("installing"), 204);
    let history = |view: &serde_json::Value| view["history"].clone();
    let before = node_view(ops);
    let printed = cli(ops, &["status", "--server", BASE, "--node", "cp-1"]);
    assert_eq!(states(&before), ["pxe", "config-fetched", "installing"]);

    net.slipway = restart(net.slipway, &net.srv);
    let after = node_view(ops);
    assert_eq!(history(&after), history(&before), "clean restart");
    assert_eq!(after["state"], "installing");
    assert_eq!(
        cli(ops, &["status", "--server", BASE, "--node", "cp-1"]),
        printed
    );

    // The token survived too: the node goes on reporting; then serve is killed outright.
    assert_eq!(post("installed"), 204);
    let before = node_view(ops);
    let printed = cli(ops, &["status", "--server", BASE, "--node", "cp-1"]);
    assert!(printed.contains("step installed"), "{printed}");
    net.slipway = net.slipway.kill_and_restart(&net.srv, ARGS);
    let after = node_view(ops);
    assert_eq!(history(&after), history(&before), "after SIGKILL");
    assert_eq!(
        states(&after),
        ["pxe", "config-fetched", "installing", "installed"]
    );
    assert_eq!(
        cli(ops, &["status", "--server", BASE, "--node", "cp-1"]),
        printed
    );
    // Each step kept its own timestamp (not all rewritten at load time).
    let at: Vec<u64> = after["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["at"].as_u64().unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] <= w[1]) && at[0] > 0, "{at:?}");
}
