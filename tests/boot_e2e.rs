//! End to end: real firmware under QEMU (TCG) network-boots through Slipway on a private LAN.
//! SeaBIOS with QEMU's iPXE ROM, OVMF's own PXE client (TFTP `snponly.efi`, then iPXE) and
//! OVMF UEFI HTTP boot each get their address from Slipway's DHCP, the node's iPXE script,
//! Debian's kernel and a busybox initramfs (served as the Flatcar PXE assets) over HTTP. The
//! initramfs plays the installer: it checks its address and Slipway's DNS, fetches its config
//! with the one-time token and reports `installing` then `installed`. Each test then checks
//! Slipway's own record of the node: its state and its timeline.
//!
//! The machines run one scenario at a time (a lock): TCG is CPU-heavy. Serial logs and
//! Slipway's log are printed when a test fails; the run directory under
//! `target/tmp/e2e-runs/` is kept then.

mod common;
#[path = "common/vm.rs"]
mod vm;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use vm::*;

/// One scenario at a time: each VM needs most of a core under TCG.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How long one machine may take from power-on to power-off (TCG on a shared 2-core box).
const VM_TIMEOUT: Duration = Duration::from_secs(240);

const KERNEL_ARGS: [&str; 3] = ["console=ttyS0,115200", "loglevel=4", "panic=5"];
const BASE: &str = "http://10.20.0.2:8080";

/// The lifecycle every fresh install must show, in this order.
const INSTALL_TIMELINE: [&str; 6] = [
    "discovered",
    "pxe",
    "booting",
    "config-fetched",
    "installing",
    "installed",
];

/// Where a scenario keeps its files; removed after success, kept (and named) after a failure.
struct RunDir(PathBuf);

impl RunDir {
    fn new(tag: &str) -> RunDir {
        let p = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e-runs")
            .join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        RunDir(p)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("e2e: serial and QEMU logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A LAN with Slipway (DHCP, DNS, TFTP, HTTP) at 10.20.0.2, radvd beside it, the guest's
/// kernel and initramfs in Slipway's images directory as the Flatcar PXE assets.
struct Bed {
    slipway: Slipway,
    nodes: Vec<TestNode>,
    dir: RunDir,
    srv: Host,
    lan: Lan,
}

impl Drop for Bed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.slipway.drain_logs();
            eprintln!("===== Slipway log, last {} lines =====", logs.len().min(80));
            for l in logs.iter().rev().take(80).rev() {
                eprintln!("{l}");
            }
            eprintln!("===== end of Slipway log =====");
        }
    }
}

fn mac(i: usize) -> String {
    format!("52:54:00:e2:e0:{:02x}", i)
}

/// The description: `n` nodes (the first a control-plane node), kernel arguments for the
/// serial console.
fn description(nodes: &[TestNode]) -> String {
    let desc = TestDesc {
        nodes: nodes.to_vec(),
        ..TestDesc::default()
    };
    let yaml = desc.yaml();
    let version = "  version: \"4081.2.0\"\n";
    assert!(yaml.contains(version), "TestDesc's os section changed");
    let args = KERNEL_ARGS
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    yaml.replacen(version, &format!("{version}  kernel_args: [{args}]\n"), 1)
}

impl Bed {
    /// `None` when the test cannot run here (and is not in CI).
    fn new(tag: &str, n: usize) -> Option<Bed> {
        if !netns_available() || !vm_tools_available() {
            return None;
        }
        let guest = guest();
        let dir = RunDir::new(tag);
        let nodes: Vec<TestNode> = (1..=n)
            .map(|i| {
                TestNode::new(
                    &mac(i),
                    &format!("node-{i}"),
                    &format!("10.20.0.{}", 10 + i),
                    i == 1,
                )
            })
            .collect();
        let lan = Lan::new(tag);
        let srv = lan.host("srv", Some("10.20.0.2/24"), None);
        radvd(&srv, &dir.0);
        let slipway = Slipway::start(&srv, &description(&nodes), &[]);
        let bed = Bed {
            slipway,
            nodes,
            dir,
            srv,
            lan,
        };
        // The guest goes where the plan says the profile's PXE kernel and initrd are.
        let plan = bed.api("/api/v1/plan");
        let images = bed.slipway.dir.path().join("images");
        for (key, src) in [("kernel", &guest.kernel), ("initrd", &guest.initrd)] {
            let url = plan["nodes"][0]["boot"][key]
                .as_str()
                .unwrap_or_else(|| panic!("no nodes[0].boot.{key} in the plan: {plan}"));
            let rel = url
                .strip_prefix(&format!("{BASE}/assets/"))
                .unwrap_or_else(|| panic!("{key} URL {url} is not under {BASE}/assets/"));
            let dst = images.join(rel);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::copy(src, &dst).unwrap();
        }
        Some(bed)
    }

    fn vm(&self, node: usize, firmware: &Firmware, disk: bool, boot: usize) -> Vm {
        let n = &self.nodes[node];
        let disk = disk.then(|| guest().disk.as_path());
        Vm::start(
            &self.lan,
            &self.dir.0,
            &format!("{}-boot{boot}", n.hostname),
            &n.mac,
            firmware,
            disk,
        )
    }

    /// `GET {path}` from inside the LAN, as JSON.
    fn api(&self, path: &str) -> serde_json::Value {
        let out = self.srv.run(
            self.srv
                .command("curl")
                .args(["-sS", "--fail-with-body", "-m", "10"])
                .arg(format!("{BASE}{path}")),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {out}"))
    }

    /// The node as `GET /api/v1/nodes` lists it (its current state).
    fn listed(&self, node: usize) -> serde_json::Value {
        let name = &self.nodes[node].hostname;
        let all = self.api("/api/v1/nodes");
        all.as_array()
            .unwrap_or_else(|| panic!("/api/v1/nodes is not a list: {all}"))
            .iter()
            .find(|r| r["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} is not in /api/v1/nodes: {all}"))
            .clone()
    }

    /// The node with its timeline and events (`GET /api/v1/nodes/{name}`).
    fn record(&self, node: usize) -> serde_json::Value {
        let r = self.api(&format!("/api/v1/nodes/{}", self.nodes[node].hostname));
        assert_eq!(
            r["mac"].as_str().map(str::to_lowercase).as_deref(),
            Some(self.nodes[node].mac.as_str()),
            "record of another machine: {r}"
        );
        r
    }

    /// States of the node's timeline, oldest first.
    fn timeline(&self, node: usize) -> Vec<String> {
        let r = self.record(node);
        r["history"]
            .as_array()
            .unwrap_or_else(|| panic!("record without history: {r}"))
            .iter()
            .map(|t| t["state"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// Kinds of the node's events, oldest first.
    fn event_kinds(&self, node: usize) -> Vec<String> {
        let r = self.record(node);
        r["events"]
            .as_array()
            .map(|evs| {
                evs.iter()
                    .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The node's events as `kind: message`, oldest first.
    fn events(&self, node: usize) -> Vec<String> {
        let r = self.record(node);
        r["events"]
            .as_array()
            .map(|evs| {
                evs.iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["kind"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Slipway's account of a first install: listed as installed, and the whole timeline.
    fn assert_installed(&self, node: usize) {
        let listed = self.listed(node);
        assert_eq!(listed["state"], "installed", "listed as {listed}");
        let timeline = self.timeline(node);
        eprintln!(
            "e2e: {} timeline: {}",
            self.nodes[node].hostname,
            timeline.join(" > ")
        );
        assert_in_order(&timeline, &INSTALL_TIMELINE, 0);
        assert!(
            !timeline.iter().any(|s| s == "failed"),
            "the timeline has a failure: {}",
            self.record(node)
        );
    }
}

/// Asserts that `timeline` holds `expected` as a subsequence (in order) starting at or after
/// `from`, and returns the index after the last match.
fn assert_in_order(timeline: &[String], expected: &[&str], from: usize) -> usize {
    let mut i = from;
    for want in expected {
        match timeline[i..].iter().position(|s| s == want) {
            Some(p) => i += p + 1,
            None => panic!(
                "timeline {timeline:?} lacks `{want}` after position {i} (expected {expected:?} in order from {from})"
            ),
        }
    }
    i
}

/// Waits for the machine to power off and checks the installer's own account: its reserved
/// address, DNS answer, config and both reports.
fn assert_guest_installed(vm: &mut Vm, node: &TestNode) -> Duration {
    let status: ExitStatus = vm.wait_exit(VM_TIMEOUT);
    let took = vm.exited.unwrap().1;
    let marks = vm.marks();
    let fail = marks.iter().find(|m| m.contains(" FAIL "));
    assert!(fail.is_none(), "the guest failed: {}", fail.unwrap());
    assert!(status.success(), "QEMU exited with {status}");
    let ip = marks
        .iter()
        .find_map(|m| m.split("ip=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or(""))
        .unwrap_or_else(|| panic!("the guest printed no address: {marks:?}"));
    assert_eq!(ip, node.ip, "the guest's address is not its reservation");
    assert!(
        marks
            .iter()
            .any(|m| m.contains(&format!("hostname={} ", node.hostname))),
        "DHCP did not give the hostname {}: {marks:?}",
        node.hostname
    );
    assert!(
        marks
            .iter()
            .any(|m| m.ends_with("resolved slipway.lab.test=10.20.0.2 via 10.20.0.2")),
        "the bootstrapper name did not resolve through Slipway's DNS: {marks:?}"
    );
    for step in [
        "bytes (ignition)",
        "second config fetch refused",
        "reported installing",
        "INSTALLED",
    ] {
        assert!(
            marks.iter().any(|m| m.contains(step)),
            "the guest never got to `{step}`: {marks:?}"
        );
    }
    took
}

/// The whole first install of `node` with `firmware`: power on, wait, check guest and record.
fn install(bed: &Bed, node: usize, firmware: &Firmware, disk: bool, boot: usize) -> Vm {
    let mut vm = bed.vm(node, firmware, disk, boot);
    let took = assert_guest_installed(&mut vm, &bed.nodes[node]);
    eprintln!(
        "e2e: {} ({firmware:?}) installed in {:.1}s",
        bed.nodes[node].hostname,
        took.as_secs_f64()
    );
    vm
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn bios_ipxe_rom_installs_over_http() {
    let _one = lock();
    let Some(bed) = Bed::new("bios", 1) else {
        return;
    };
    let vm = install(&bed, 0, &Firmware::Bios, false, 1);
    let serial = vm.serial_log();
    assert!(
        serial.contains("iPXE"),
        "the iPXE ROM did not run: no banner on the serial console"
    );
    bed.assert_installed(0);
}

#[test]
fn uefi_pxe_chains_tftp_snponly_then_installs_over_http() {
    let _one = lock();
    let Some(bed) = Bed::new("uefipxe", 1) else {
        return;
    };
    let vm = install(&bed, 0, &Firmware::UefiPxe, false, 1);
    let serial = vm.serial_log();
    assert!(
        serial.contains("Start PXE over IPv4"),
        "OVMF did not PXE-boot over IPv4"
    );
    assert!(
        !serial.contains("PXE-E") && !serial.contains("Start HTTP Boot"),
        "OVMF's PXE boot failed (it may have fallen back to HTTP boot)"
    );
    let events = bed.events(0);
    assert!(
        events.iter().any(|e| e == "node.pxe: TFTP snponly.efi"),
        "Slipway recorded no TFTP transfer of snponly.efi: {events:?}"
    );
    assert!(
        serial.contains("iPXE"),
        "snponly.efi (iPXE) never ran: no banner on the serial console"
    );
    bed.assert_installed(0);
}

#[test]
fn uefi_http_boot_fetches_snponly_then_installs() {
    let _one = lock();
    let Some(bed) = Bed::new("uefihttp", 1) else {
        return;
    };
    let vm = install(&bed, 0, &Firmware::UefiHttp, false, 1);
    let serial = vm.serial_log();
    assert!(
        serial.contains("Start HTTP Boot over IPv4"),
        "OVMF did not use UEFI HTTP boot"
    );
    assert!(
        !serial.contains("Start PXE over IPv4") && !serial.contains("failed to load Boot"),
        "OVMF's HTTP boot was not the first and only boot option it used"
    );
    assert!(
        serial.contains(&format!("URI: {BASE}/ipxe/snponly.efi")),
        "OVMF did not fetch snponly.efi over HTTP"
    );
    let events = bed.events(0);
    assert!(
        events
            .iter()
            .any(|e| e == "node.pxe: ipxe /ipxe/snponly.efi"),
        "Slipway recorded no HTTP download of snponly.efi: {events:?}"
    );
    assert!(
        !events.iter().any(|e| e.contains("TFTP")),
        "HTTP boot used TFTP: {events:?}"
    );
    assert!(
        serial.contains("iPXE"),
        "snponly.efi (iPXE) never ran: no banner on the serial console"
    );
    bed.assert_installed(0);
}

#[test]
fn four_machines_install_at_once() {
    let _one = lock();
    let Some(bed) = Bed::new("four", 4) else {
        return;
    };
    let t = Instant::now();
    let mut vms: Vec<Vm> = (0..4)
        .map(|i| bed.vm(i, &Firmware::Bios, false, 1))
        .collect();
    for (i, vm) in vms.iter_mut().enumerate() {
        assert_guest_installed(vm, &bed.nodes[i]);
    }
    eprintln!(
        "e2e: four machines installed in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    for i in 0..4 {
        bed.assert_installed(i);
    }
    // The operator's view says the same: `slipway status --output json`.
    let out = bed.srv.run(
        bed.srv
            .command(env!("CARGO_BIN_EXE_slipway"))
            .args(["status", "--server", BASE, "--output", "json"]),
    );
    let status: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("slipway status --output json ({e}): {out}"));
    for n in &bed.nodes {
        let row = status
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["name"] == n.hostname.as_str()))
            .unwrap_or_else(|| panic!("{} missing from slipway status: {out}", n.hostname));
        assert_eq!(row["state"], "installed", "{row}");
        assert_eq!(row["ip"], n.ip.as_str(), "{row}");
    }
}

#[test]
fn installed_node_boots_from_disk_until_reinstalled() {
    let _one = lock();
    let Some(bed) = Bed::new("disk", 1) else {
        return;
    };
    let node = &bed.nodes[0];
    let t = Instant::now();
    drop(install(&bed, 0, &Firmware::Bios, true, 1));
    bed.assert_installed(0);
    let first = bed.timeline(0);

    // Next power-on: the script boots the local disk, whose boot sector prints its mark and
    // exits QEMU with status 3 (isa-debug-exit).
    let mut vm = bed.vm(0, &Firmware::Bios, true, 2);
    let status = vm.wait_exit(VM_TIMEOUT);
    let serial = vm.serial_log();
    assert!(
        serial.contains(&format!(
            "Slipway: {} is installed; booting from the local disk",
            node.hostname
        )),
        "the script did not say it boots the local disk"
    );
    assert!(
        serial.contains(DISK_BOOT_MARK),
        "the installed node did not boot its disk"
    );
    assert_eq!(
        status.code(),
        Some(3),
        "QEMU did not exit from the disk's boot sector"
    );
    assert!(
        !serial.contains("SLIPWAY-E2E init started"),
        "the installer ran again on an installed node"
    );
    eprintln!(
        "e2e: {} booted from disk in {:.1}s",
        node.hostname,
        vm.exited.unwrap().1.as_secs_f64()
    );
    drop(vm);
    assert_eq!(bed.listed(0)["state"], "installed");
    let second = bed.timeline(0);
    assert!(
        !second[first.len()..]
            .iter()
            .any(|s| s == "booting" || s == "config-fetched"),
        "an installed node was booted into the installer again: {second:?}"
    );
    let events = bed.event_kinds(0);
    assert!(
        events.iter().any(|k| k == "boot.local-disk"),
        "no boot.local-disk event: {events:?}"
    );

    // The operator asks for a reinstall: the node goes back to planned, and its next boot
    // installs again with the whole timeline.
    let out = bed.srv.run(
        bed.srv
            .command(env!("CARGO_BIN_EXE_slipway"))
            .args([
                "node",
                "reinstall",
                &node.hostname,
                "--server",
                BASE,
                "--state-dir",
            ])
            .arg(bed.slipway.dir.path().join("state")),
    );
    eprintln!("e2e: slipway node reinstall: {}", out.trim());
    assert_eq!(bed.listed(0)["state"], "planned");
    let planned = bed.timeline(0).len();
    drop(install(&bed, 0, &Firmware::Bios, true, 3));
    assert_eq!(bed.listed(0)["state"], "installed");
    let third = bed.timeline(0);
    assert_eq!(third[planned - 1], "planned", "timeline: {third:?}");
    assert_in_order(&third, &INSTALL_TIMELINE, planned);
    eprintln!("e2e: {} timeline: {}", node.hostname, third.join(" > "));
    eprintln!(
        "e2e: install, disk boot, reinstall took {:.1}s",
        t.elapsed().as_secs_f64()
    );
}
