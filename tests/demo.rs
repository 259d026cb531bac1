//! The one-command demo (`scripts/demo.sh` runs this ignored test): a private LAN in network
//! namespaces, Slipway serving a three-node description (one GPU node), and three QEMU
//! machines network-booting through it — SeaBIOS with iPXE, OVMF PXE and OVMF HTTP boot —
//! into the end-to-end tests' installer stand-in, which reports back. The status page is
//! forwarded to http://127.0.0.1:$SLIPWAY_DEMO_PORT on the host. Ctrl-C stops everything
//! and removes the namespaces.
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

/// Forwards 127.0.0.1:`port` on the host to Slipway's HTTP inside the LAN: each connection
/// gets a thread that enters the server's namespace to connect.
fn forward(port: u16, ns: String) {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("127.0.0.1:{port} is taken ({e}); set PORT"));
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
    let port: u16 = std::env::var("SLIPWAY_DEMO_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
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
    forward(port, srv.ns.clone());
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
    while !STOP.load(Ordering::SeqCst) {
        for (vm, done) in vms.iter_mut().zip(reported.iter_mut()) {
            if !*done && vm.poll() {
                *done = true;
                eprintln!("  {} powered off: {}", vm.name, vm.marks().join(" | "));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!("\n  stopping: VMs, Slipway and the namespaces are removed");
    drop(vms);
    drop(slipway);
}
