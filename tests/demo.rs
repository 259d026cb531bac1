//! The one-command demo (`scripts/demo.sh` runs this ignored test): a private LAN in network
//! namespaces, Slipway serving a three-node description (one GPU node), and three QEMU
//! machines network-booting through it — SeaBIOS with iPXE, OVMF PXE and OVMF HTTP boot —
//! into the end-to-end tests' installer stand-in, which reports back. The status page is
//! forwarded to http://127.0.0.1:$SLIPWAY_DEMO_PORT on the host. Ctrl-C stops everything
//! and removes the namespaces.
//!
//! With SLIPWAY_DEMO_CHECK=1 (`scripts/demo.sh --check`, run by scripts/test.sh) it does not
//! wait for Ctrl-C: it succeeds once all three nodes are `installed` and the status page
//! answers on the host's forwarded port, then cleans up; it fails on a node failing, a VM
//! stopping short of it, or after DEMO_CHECK_LIMIT (a guard against a hang, not a speed
//! requirement).
//!
//! What is simulated: the machines are VMs, the "installer" is a busybox initramfs that
//! checks its address and DNS, fetches its config with its one-time token and reports
//! `installing`/`installed` (it does not write a disk or start Kubernetes).

mod common;
#[path = "common/vm.rs"]
mod vm;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use vm::*;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const NODES: [(&str, &str, &str, bool); 3] = [
    ("52:54:00:de:00:01", "cp-1", "10.20.0.11", true),
    ("52:54:00:de:00:02", "worker-1", "10.20.0.21", false),
    ("52:54:00:de:00:03", "gpu-1", "10.20.0.31", false),
];

fn description() -> String {
    let desc = TestDesc {
        nodes: NODES
            .iter()
            .map(|(mac, name, ip, cp)| TestNode::new(mac, name, ip, *cp))
            .collect(),
        ..TestDesc::default()
    };
    desc.yaml()
        .replacen(
            "  version: \"4081.2.0\"\n",
            "  version: \"4081.2.0\"\n  kernel_args: [\"console=ttyS0,115200\", \"loglevel=4\", \"panic=5\"]\n",
            1,
        )
        .replacen(
            "    hostname: gpu-1\n    ip: 10.20.0.31\n    role: worker\n",
            "    hostname: gpu-1\n    ip: 10.20.0.31\n    role: worker\n    gpu: nvidia\n",
            1,
        )
}

/// How long the check mode waits for the three installs at most (TCG takes 1-2 minutes).
const DEMO_CHECK_LIMIT: Duration = Duration::from_secs(900);

/// Forwards 127.0.0.1:`port` on the host to Slipway's HTTP inside the LAN: each connection
/// gets a thread that enters the server's namespace to connect. Port 0 picks a free one;
/// returns the port.
fn forward(port: u16, ns: String) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("127.0.0.1:{port} is taken ({e}); set PORT"));
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !STOP.load(Ordering::SeqCst) {
            let Ok((client, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let ns = ns.clone();
            std::thread::spawn(move || {
                enter_netns(&ns);
                let _ = client.set_nonblocking(false);
                let Ok(upstream) = TcpStream::connect("10.20.0.2:8080") else {
                    return;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    })
                };
                let a = pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let b = pipe(upstream, client);
                let _ = (a.join(), b.join());
            });
        }
    });
    port
}

/// `GET path` from the host through the forwarded port: (status line, whole response).
fn get_on_host(port: u16, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("the forwarded port accepts");
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = c.read_to_string(&mut text);
    let status = text.lines().next().unwrap_or_default().to_string();
    (status, text)
}

/// Each node's state, as the API reports it (through the host's forwarded port).
fn states(port: u16) -> Vec<(String, String)> {
    let (_, text) = get_on_host(port, "/api/v1/nodes");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let nodes: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let name = n["name"].as_str().unwrap_or("-").to_string();
            (name, n["state"].as_str().unwrap_or("-").to_string())
        })
        .collect()
}

#[test]
#[ignore = "the demo: run scripts/demo.sh"]
fn demo() {
    assert!(
        netns_available() && vm_tools_available(),
        "the demo needs root, QEMU and OVMF"
    );
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let check = std::env::var("SLIPWAY_DEMO_CHECK").as_deref() == Ok("1");
    let port: u16 = std::env::var("SLIPWAY_DEMO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(if check { 0 } else { 8080 });
    let guest = guest();
    let dir = tempfile::tempdir().unwrap();
    let lan = Lan::new("demo");
    let srv = lan.host("srv", Some("10.20.0.2/24"), None);
    radvd(&srv, dir.path());
    let slipway = Slipway::start(&srv, &description(), &[]);
    // The stand-in installer goes where the plan puts the Flatcar PXE kernel and initrd.
    let images = slipway.dir.path().join("images");
    let plan: serde_json::Value = serde_json::from_str(
        &srv.run(
            srv.command("curl")
                .args(["-sf", "http://10.20.0.2:8080/api/v1/plan"]),
        ),
    )
    .unwrap();
    for (key, src) in [("kernel", &guest.kernel), ("initrd", &guest.initrd)] {
        let url = plan["assets"][key].as_str().unwrap();
        let dst = images.join(url.split_once("/assets/").unwrap().1);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, &dst).unwrap();
    }
    let port = forward(port, srv.ns.clone());
    let token = std::fs::read_to_string(slipway.dir.path().join("state/admin.token")).unwrap();
    eprintln!(
        "\n  Slipway demo: status page at http://127.0.0.1:{port}/  (admin token: {})\n  \
         Three machines are booting (BIOS iPXE, UEFI PXE, UEFI HTTP boot). Ctrl-C stops all.\n",
        token.trim()
    );
    let firmware = [Firmware::Bios, Firmware::UefiPxe, Firmware::UefiHttp];
    let mut vms: Vec<Vm> = NODES
        .iter()
        .zip(firmware.iter())
        .map(|((mac, name, _, _), fw)| Vm::start(&lan, dir.path(), name, mac, fw, None))
        .collect();
    let mut reported = vec![false; vms.len()];
    let started = std::time::Instant::now();
    let mut looked = started;
    while !STOP.load(Ordering::SeqCst) {
        for (vm, done) in vms.iter_mut().zip(reported.iter_mut()) {
            if !*done && vm.poll() {
                *done = true;
                eprintln!("  {} powered off: {}", vm.name, vm.marks().join(" | "));
            }
        }
        if check && looked.elapsed() > Duration::from_secs(2) {
            looked = std::time::Instant::now();
            if check_done(port, &vms, &reported, started) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("\n  stopping: VMs, Slipway and the namespaces are removed");
    drop(vms);
    drop(slipway);
}

/// Check mode: whether the demo has done its job (all three nodes `installed` and the page
/// served on the host). Panics (test failure, cleanup by drop) when it cannot get there.
fn check_done(port: u16, vms: &[Vm], reported: &[bool], started: std::time::Instant) -> bool {
    let states = states(port);
    let installed = |name: &str| states.iter().any(|(n, s)| n == name && s == "installed");
    let all = NODES.iter().all(|(_, name, _, _)| installed(name));
    let log = || {
        vms.iter()
            .map(|vm| format!("--- {}:\n{}", vm.name, vm.serial_log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        !states.iter().any(|(_, s)| s == "failed"),
        "a node failed: {states:?}\n{}",
        log()
    );
    if !all {
        // A VM that powered off before its node reached `installed` will not get there.
        let stopped_short = vms
            .iter()
            .zip(reported)
            .any(|(vm, done)| *done && !installed(&vm.name));
        // Its report may still be on its way: one more look before giving up.
        if stopped_short {
            std::thread::sleep(Duration::from_secs(2));
            let again = self::states(port);
            let ok = |name: &str| again.iter().any(|(n, s)| n == name && s == "installed");
            assert!(
                vms.iter()
                    .zip(reported)
                    .all(|(vm, done)| !*done || ok(&vm.name)),
                "a VM powered off before its node was installed: {again:?}\n{}",
                log()
            );
        }
        assert!(
            started.elapsed() < DEMO_CHECK_LIMIT,
            "the nodes were not installed after {DEMO_CHECK_LIMIT:?}: {states:?}\n{}",
            log()
        );
        return false;
    }
    let (status, page) = get_on_host(port, "/");
    assert!(
        status.contains(" 200 ") && page.contains("<title>Slipway</title>"),
        "status page on http://127.0.0.1:{port}/: {status}"
    );
    eprintln!("  demo check passed: {states:?}, status page served on 127.0.0.1:{port}");
    true
}
