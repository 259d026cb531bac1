//! The HTTP boot endpoints with curl from machines on a LAN the test builds: the iPXE script
//! goes only to the machine's own address and carries a one-time token; the token unlocks the
//! config once and authenticates reports; an installed node gets "boot from disk" until
//! `slipway node reinstall`; `slipway status` shows the timeline.

mod common;

use common::{Host, Lan, Slipway, TestDesc, netns_available};

const CP: &str = "52:54:00:00:00:11";
const BASE: &str = "http://10.20.0.2:8080";

use common::{boot_token as token_of, curl_status as curl};

/// Every inline file of the installed system inside a live-installer Ignition, decoded and
/// concatenated.
fn installed_files(live: &str) -> String {
    use base64::Engine as _;
    let decode = |src: &str| {
        src.strip_prefix("data:;base64,")
            .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap())
            .unwrap_or_default()
    };
    let files = |ign: &serde_json::Value| -> Vec<(String, Vec<u8>)> {
        ign["storage"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap().to_string(),
                    decode(f["contents"]["source"].as_str().unwrap()),
                )
            })
            .collect()
    };
    let live: serde_json::Value = serde_json::from_str(live).unwrap();
    let (_, node_ign) = files(&live)
        .into_iter()
        .find(|(p, _)| p == "/opt/slipway/node.ign")
        .expect("node.ign");
    let system: serde_json::Value = serde_json::from_slice(&node_ign).unwrap();
    files(&system)
        .into_iter()
        .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
        .collect()
}

/// Runs busybox udhcpc in `host` asking for `hostname`; on a lease the address is put on
/// eth0 (so the host can then fetch its boot script). Returns whether it got one.
fn lease(host: &Host, hostname: &str, tries: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\n[ \"$1\" = bound ] && ip addr add \"$ip/24\" dev \"$interface\"\nexit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    host.command("busybox")
        .args([
            "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", tries, "-T", "1", "-x",
        ])
        .arg(format!("hostname:{hostname}"))
        .arg("-s")
        .arg(&hook)
        .output()
        .unwrap()
        .status
        .success()
}

fn slipway_cli(host: &Host, args: &[&str]) -> (bool, String) {
    let out = host
        .command(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .output()
        .expect("slipway runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of the sample `series` (name with labels, as rendered) in a metrics text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

fn states(host: &Host) -> serde_json::Value {
    let (code, body) = curl(host, &[&format!("{BASE}/api/v1/nodes/cp-1")]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn script_token_config_report_reinstall() {
    if !netns_available() {
        return;
    }
    let lan = Lan::new("boothttp");
    let server = lan.host("srv", Some("10.20.0.2/24"), None);
    let node = lan.host("cp1", Some("10.20.0.11/24"), Some(CP));
    let other = lan.host("other", Some("10.20.0.99/24"), None);
    let desc = TestDesc::default().yaml();
    let slipway = Slipway::start(&server, &desc, &["--disable", "dhcp", "--disable", "dns"]);
    let state_dir = slipway.dir.path().join("state");
    let token_file = state_dir.join("admin.token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "admin token is private");

    let script_url = format!("{BASE}/boot/52-54-00-00-00-11.ipxe");
    // Another machine naming the MAC gets no script (and so no token).
    let (code, body) = curl(&other, &[&script_url]);
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("token="), "{body}");
    // Unknown MACs get nothing under the default policy.
    let (code, _) = curl(&other, &[&format!("{BASE}/boot/52-54-00-99-99-99.ipxe")]);
    assert_eq!(code, 404);

    // The machine itself gets the install script with a token.
    let (code, script) = curl(&node, &[&script_url]);
    assert_eq!(code, 200, "{script}");
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(
        script.contains(
            "/assets/os/flatcar/stable/amd64-usr/4081.2.0/flatcar_production_pxe.vmlinuz"
        ),
        "{script}"
    );
    let first = token_of(&script);
    // A second fetch issues a new token; the first one stops working.
    let (_, script) = curl(&node, &[&script_url]);
    let token = token_of(&script);
    assert_ne!(first, token);

    let config = format!("{BASE}/config/52-54-00-00-00-11");
    assert_eq!(curl(&node, &[&config]).0, 401, "no token");
    assert_eq!(
        curl(&node, &[&format!("{config}?token={first}")]).0,
        403,
        "replaced token"
    );
    let (code, body) = curl(&node, &[&format!("{config}?token={token}")]);
    assert_eq!(code, 200, "{body}");
    let ign: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ign["ignition"]["version"], "3.3.0");
    let cp_config = body.clone();
    let (code, body) = curl(&node, &[&format!("{config}?token={token}")]);
    assert_eq!((code, body.contains("already used")), (403, true), "{body}");

    let report = format!("{BASE}/report/52-54-00-00-00-11");
    let post = |state: &str, tok: &str| {
        curl(
            &node,
            &[
                "--data",
                &format!("token={tok}&state={state}&message=disk+%2Fdev%2Fvda"),
                &report,
            ],
        )
        .0
    };
    assert_eq!(post("installing", "wrong"), 403);
    assert_eq!(post("bogus", &token), 400);
    assert_eq!(post("installing", &token), 204);
    assert_eq!(post("installed", &token), 204);
    // The installed system reports `joined` with the same token; then it is revoked.
    assert_eq!(post("joined", &token), 204);
    assert_eq!(post("installing", &token), 403);

    let view = states(&node);
    assert_eq!(view["state"], "joined", "{view}");
    let history: Vec<&str> = view["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        history,
        ["pxe", "config-fetched", "installing", "installed", "joined"],
        "{view}"
    );
    let kinds: Vec<&str> = view["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    let events = view["events"].as_array().unwrap();
    let issued: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "secret.issued")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        issued.iter().filter(|m| m.contains("boot token")).count(),
        2,
        "{issued:?}"
    );
    let served = issued
        .iter()
        .find(|m| m.starts_with("config with its secrets"))
        .expect("the config's secrets are an event");
    assert!(
        served.contains("ca.key") && !served.contains("BEGIN"),
        "{served}"
    );
    assert!(kinds.contains(&"token.refused"), "{kinds:?}");

    // Installed nodes boot from disk.
    let (code, script) = curl(&node, &[&script_url]);
    assert_eq!(code, 200);
    assert!(
        script.contains("sanboot --no-describe --drive 0x80"),
        "{script}"
    );
    assert!(!script.contains("kernel "), "{script}");

    // Reinstall needs the admin token.
    let (code, _) = curl(
        &other,
        &["-X", "POST", &format!("{BASE}/api/v1/nodes/cp-1/reinstall")],
    );
    assert_eq!(code, 401);
    let (code, _) = curl(
        &other,
        &[
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer nope",
            &format!("{BASE}/api/v1/nodes/cp-1/reinstall"),
        ],
    );
    assert_eq!(code, 403);
    let state_arg = state_dir.to_str().unwrap();
    let (ok, out) = slipway_cli(
        &other,
        &[
            "node",
            "reinstall",
            "cp-1",
            "--server",
            BASE,
            "--state-dir",
            state_arg,
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(states(&node)["state"], "planned");
    let (_, script) = curl(&node, &[&script_url]);
    token_of(&script);

    let (ok, table) = slipway_cli(&other, &["status", "--server", BASE]);
    assert!(ok, "{table}");
    let cp_line = table.lines().find(|l| l.starts_with("cp-1")).expect(&table);
    assert!(cp_line.contains("pxe") && cp_line.contains(CP), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("worker-1") && l.contains("planned")),
        "{table}"
    );
    let (ok, timeline) = slipway_cli(&other, &["status", "--server", BASE, "--node", "cp-1"]);
    assert!(ok, "{timeline}");
    for step in [
        "installed",
        "planned",
        "reinstall requested by the operator",
    ] {
        assert!(timeline.contains(step), "{step}: {timeline}");
    }
    // A worker's config carries the cluster CA certificate and no private key at all.
    let worker = lan.host("w1", Some("10.20.0.21/24"), Some("52:54:00:00:00:21"));
    let (_, script) = curl(&worker, &[&format!("{BASE}/boot/52-54-00-00-00-21.ipxe")]);
    let wtoken = token_of(&script);
    let (code, body) = curl(
        &worker,
        &[&format!("{BASE}/config/52-54-00-00-00-21?token={wtoken}")],
    );
    assert_eq!(code, 200, "{body}");
    let system = installed_files(&body);
    assert!(system.contains("BEGIN CERTIFICATE"), "worker gets ca.crt");
    assert!(
        !system.contains("PRIVATE KEY"),
        "worker config has a private key"
    );
    // ...while the control plane's carries the CA key.
    assert!(installed_files(&cp_config).contains("PRIVATE KEY"));

    // Prometheus metrics: nodes per state, requests by route and status.
    let (code, metrics) = curl(&other, &[&format!("{BASE}/metrics")]);
    assert_eq!(code, 200);
    assert!(
        metrics.contains("slipway_nodes{state=\"pxe\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("slipway_nodes{state=\"planned\"} 0"),
        "{metrics}"
    );
    let boot_ok = metrics
        .lines()
        .find(|l| {
            l.starts_with("slipway_http_requests_total")
                && l.contains("route=\"/boot/{file}\"")
                && l.contains("status=\"200\"")
        })
        .expect("boot script requests counted");
    let n: f64 = boot_ok.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 4.0, "{boot_ok}");
    assert!(
        metrics.contains("slipway_http_request_duration_seconds_bucket"),
        "{metrics}"
    );

    // A server that is not there is a clear error, not a hang.
    let (ok, out) = slipway_cli(&other, &["status", "--server", "http://10.20.0.2:9"]);
    assert!(!ok && out.contains("cannot reach slipway"), "{out}");
}

#[test]
fn ubuntu_nocloud_user_data_once_per_token() {
    if !netns_available() {
        return;
    }
    let lan = Lan::new("nocloud");
    let server = lan.host("srv", Some("10.20.0.2/24"), None);
    let node = lan.host("cp1", Some("10.20.0.11/24"), Some(CP));
    let desc = TestDesc::default()
        .yaml()
        .replace("profile: flatcar", "profile: ubuntu")
        .replace("version: \"4081.2.0\"", "version: \"24.04\"");
    let _slipway = Slipway::start(&server, &desc, &["--disable", "dhcp", "--disable", "dns"]);
    let (code, script) = curl(&node, &[&format!("{BASE}/boot/52-54-00-00-00-11.ipxe")]);
    assert_eq!(code, 200, "{script}");
    let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let seed = kernel
        .split_whitespace()
        .find_map(|a| a.strip_prefix("ds=nocloud;s="))
        .expect("NoCloud seed URL on the kernel line");
    assert!(kernel.contains(" autoinstall "), "{kernel}");
    let token = token_of(&script);
    assert!(seed.ends_with(&format!("/{token}/")), "{seed}");

    let (code, meta) = curl(&node, &[&format!("{seed}meta-data")]);
    assert_eq!(code, 200, "{meta}");
    assert!(meta.contains("local-hostname: cp-1"), "{meta}");
    let (code, user) = curl(&node, &[&format!("{seed}user-data")]);
    assert_eq!(code, 200, "{user}");
    assert!(user.starts_with("#cloud-config\n"), "{user}");
    let doc: serde_json::Value =
        serde_json::from_str(user.trim_start_matches("#cloud-config\n")).unwrap();
    assert_eq!(doc["autoinstall"]["version"], 1);
    assert!(
        user.contains("PRIVATE KEY"),
        "control plane gets its CA key"
    );
    // Spent: a second fetch is refused; metadata still works for the installer's retries.
    assert_eq!(curl(&node, &[&format!("{seed}user-data")]).0, 403);
    assert_eq!(curl(&node, &[&format!("{seed}vendor-data")]).0, 200);
    let wrong = seed.replace(&token, "0000");
    assert_eq!(curl(&node, &[&format!("{wrong}meta-data")]).0, 403);
    assert_eq!(curl(&node, &[&format!("{seed}../../etc/passwd")]).0, 404);
}

#[test]
fn enrolled_unknown_machine_installs_as_a_worker() {
    if !netns_available() {
        return;
    }
    let lan = Lan::new("enroll");
    let server = lan.host("srv", Some("10.20.0.2/24"), None);
    let stranger = lan.host("new", None, Some("52:54:00:77:00:01"));
    let desc = TestDesc {
        unknown_machines: "enroll-worker".into(),
        pool: Some(("10.20.0.200".into(), "10.20.0.210".into())),
        ..TestDesc::default()
    }
    .yaml();
    let _slipway = Slipway::start(&server, &desc, &["--disable", "dns"]);
    assert!(lease(&stranger, "rack2-n7", "5"), "no lease");
    let (code, script) = curl(&stranger, &[&format!("{BASE}/boot/52-54-00-77-00-01.ipxe")]);
    assert_eq!(code, 200, "{script}");
    assert!(script.contains("slipway.node=rack2-n7"), "{script}");
    let token = token_of(&script);
    let (code, body) = curl(
        &stranger,
        &[&format!("{BASE}/config/52-54-00-77-00-01?token={token}")],
    );
    assert_eq!(code, 200, "{body}");
    let system = installed_files(&body);
    assert!(
        system.contains("kind: JoinConfiguration"),
        "joins as a worker"
    );
    assert!(!system.contains("PRIVATE KEY"));
    let (code, body) = curl(
        &stranger,
        &[&format!("{BASE}/api/v1/nodes/52:54:00:77:00:01")],
    );
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["state"], "config-fetched", "{view}");
    let (_, metrics) = curl(&stranger, &[&format!("{BASE}/metrics")]);
    assert!(
        metrics.contains("slipway_dhcp_active_leases 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("slipway_dhcp_packets_total{direction=\"out\",type=\"ack\"} 1"),
        "{metrics}"
    );
    // udhcpc's lease, counted by message type and outcome.
    for kind in ["discover", "request"] {
        let series = format!("slipway_dhcp_requests_total{{type=\"{kind}\",outcome=\"answered\"}}");
        assert!(sample(&metrics, &series) >= 1.0, "{series}: {metrics}");
    }
    let release = "slipway_dhcp_requests_total{type=\"release\",outcome=\"accepted\"}";
    assert_eq!(sample(&metrics, release), 0.0);
}

#[test]
fn unknown_machine_is_listed_then_approved_and_installs() {
    if !netns_available() {
        return;
    }
    let lan = Lan::new("approve");
    let server = lan.host("srv", Some("10.20.0.2/24"), None);
    let stranger = lan.host("new", None, Some("52:54:00:77:00:02"));
    let admin = lan.host("ops", Some("10.20.0.99/24"), None);
    let desc = TestDesc {
        pool: Some(("10.20.0.200".into(), "10.20.0.210".into())),
        ..TestDesc::default()
    }
    .yaml();
    let slipway = Slipway::start(&server, &desc, &["--disable", "dns"]);
    let token = std::fs::read_to_string(slipway.dir.path().join("state/admin.token")).unwrap();
    // The admin token is shown once, on the start that creates it.
    assert!(
        slipway
            .seen
            .iter()
            .any(|l| l.contains("admin token") && l.contains(token.trim())),
        "admin token not shown on first start: {:?}",
        slipway.seen
    );
    let udhcpc = |tries: &str| lease(&stranger, "rack3-n1", tries);
    // Default policy: no answer, but the operator sees the machine.
    assert!(!udhcpc("2"), "an unknown MAC got a lease");
    let (_, metrics) = curl(&admin, &[&format!("{BASE}/metrics")]);
    let ignored = "slipway_dhcp_requests_total{type=\"discover\",outcome=\"ignored\"}";
    assert!(sample(&metrics, ignored) >= 2.0, "{metrics}");
    let (code, body) = curl(&admin, &[&format!("{BASE}/api/v1/unknown")]);
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seen = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == "52:54:00:77:00:02")
        .unwrap_or_else(|| panic!("not listed: {body}"));
    assert!(seen["requests"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(seen["approved"], false);
    let (_, events) = curl(&admin, &[&format!("{BASE}/api/v1/events")]);
    assert!(events.contains("dhcp.unknown"), "{events}");

    // Approval needs the admin token, then DHCP serves the machine at once.
    let approve = format!("{BASE}/api/v1/unknown/52:54:00:77:00:02/approve");
    assert_eq!(curl(&admin, &["-X", "POST", &approve]).0, 401);
    let auth = format!("Authorization: Bearer {}", token.trim());
    let (code, body) = curl(&admin, &["-X", "POST", "-H", &auth, &approve]);
    assert_eq!(code, 200, "{body}");
    let planned = format!("{BASE}/api/v1/unknown/52:54:00:00:00:11/approve");
    assert_eq!(curl(&admin, &["-X", "POST", "-H", &auth, &planned]).0, 409);

    // Approval survives a restart (SIGKILL, no clean shutdown).
    let slipway = slipway.kill_and_restart(&server, &["--disable", "dns"]);
    assert!(
        !slipway.seen.iter().any(|l| l.contains(token.trim())),
        "admin token shown again: {:?}",
        slipway.seen
    );
    assert!(udhcpc("5"), "the approved machine got no lease");
    let (code, script) = curl(&stranger, &[&format!("{BASE}/boot/52-54-00-77-00-02.ipxe")]);
    assert_eq!(code, 200, "{script}");
    assert!(script.contains("slipway.node=rack3-n1"), "{script}");
    let (_, body) = curl(&admin, &[&format!("{BASE}/api/v1/nodes/52:54:00:77:00:02")]);
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(view["name"], "rack3-n1", "{view}");
    drop(slipway);
}
