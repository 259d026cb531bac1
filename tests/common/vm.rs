//! QEMU machines for the end-to-end boot tests: the guest (Debian's kernel and a busybox
//! initramfs whose /init plays the installer), tap devices on a `Lan`'s bridge, firmware
//! choices (SeaBIOS + iPXE ROM, OVMF PXE, OVMF HTTP boot), serial logs kept on disk and printed
//! when a test fails.
//!
//! Facts this relies on are in /work/shared/notes/netboot-facts.md (TCG only, the module
//! order, busybox quirks, OVMF's fw_cfg switch for HTTP boot).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::Lan;

/// Marker the guest prints before each line meant for the test.
pub const MARK: &str = "SLIPWAY-E2E";
/// What the disk's boot sector prints (proof the machine booted its local disk).
pub const DISK_BOOT_MARK: &str = "SLIPWAY-E2E DISK-BOOT";

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// NIC drivers of Debian's kernel, in load order (modules.dep of 6.1: `virtio` needs
/// `virtio_ring`'s `virtio_break_device`, so the ring comes first).
const MODULES: [&str; 9] = [
    "failover",
    "net_failover",
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_net",
    "e1000",
];

/// Console lines after which a machine will not get anywhere by itself: Slipway's boot-loop
/// guard, OVMF out of boot options, iPXE's command line.
const DEAD_ENDS: [&str; 3] = [
    "Slipway: boot loop",
    "No bootable option or device was found",
    "iPXE> ",
];

static TAPS: AtomicUsize = AtomicUsize::new(0);

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether QEMU, OVMF, iPXE and busybox are here. Missing pieces skip the test, except in CI
/// (CI=true), where they fail it.
pub fn vm_tools_available() -> bool {
    let needed = [
        ("qemu-system-x86_64", "/usr/bin/qemu-system-x86_64"),
        ("OVMF (package ovmf)", OVMF_CODE),
        ("OVMF variables (package ovmf)", OVMF_VARS),
        ("iPXE (package ipxe)", "/usr/lib/ipxe/snponly.efi"),
        (
            "iPXE NIC ROMs (package ipxe-qemu)",
            "/usr/lib/ipxe/qemu/efi-virtio.rom",
        ),
        ("busybox", "/bin/busybox"),
        ("radvd", "/usr/sbin/radvd"),
        ("cpio", "/usr/bin/cpio"),
        ("tap devices", "/dev/net/tun"),
    ];
    for (what, path) in needed {
        if !Path::new(path).exists() {
            if ci() {
                panic!("{what} ({path}) is required in CI (scripts/test.sh installs it)");
            }
            eprintln!("SKIPPED: {what} is not installed ({path})");
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} does not run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The guest every machine boots: Debian's kernel and the test initramfs.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// A 1 MiB raw disk whose boot sector prints [`DISK_BOOT_MARK`] to COM1 and makes QEMU exit
    /// (isa-debug-exit, status 3).
    pub disk: PathBuf,
}

/// Built once per test run under `target/tmp/e2e-guest/` (the kernel package is downloaded
/// once and kept there across runs).
pub fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let t = Instant::now();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-guest");
        std::fs::create_dir_all(&dir).unwrap();
        let modules = kernel(&dir);
        let initrd = initramfs(&dir, &modules);
        let disk = boot_disk(&dir);
        eprintln!("e2e guest ready in {:.1}s", t.elapsed().as_secs_f64());
        Guest {
            kernel: dir.join("kernel/vmlinuz"),
            initrd,
            disk,
        }
    })
}

/// Debian's kernel: `dir/kernel/vmlinuz` and `dir/kernel/modules/*.ko`. Returns the modules dir.
fn kernel(dir: &Path) -> PathBuf {
    let kdir = dir.join("kernel");
    let mods = kdir.join("modules");
    if kdir.join("vmlinuz").is_file() && mods.join("virtio_net.ko").is_file() {
        return mods;
    }
    // linux-image-amd64 is a metapackage; its dependency is the real kernel package.
    let kernel_pkg = || {
        let out = Command::new("apt-cache")
            .args(["depends", "linux-image-amd64"])
            .output()
            .expect("apt-cache runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .map(str::to_string)
    };
    // A fresh image may have no package lists yet.
    let pkg = kernel_pkg()
        .or_else(|| {
            run(Command::new("apt-get").args(["update", "-qq"]));
            kernel_pkg()
        })
        .expect("apt-cache knows linux-image-amd64's kernel package");
    let work = dir.join(format!("work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    run(Command::new("apt-get")
        .args(["download", "-q", &pkg])
        .current_dir(&work));
    let deb = std::fs::read_dir(&work)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("apt-get download left a .deb");
    let mut wanted = vec!["./boot/vmlinuz-*".to_string()];
    wanted.extend(MODULES.iter().map(|m| format!("*/{m}.ko")));
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -x --wildcards {}",
            deb.display(),
            wanted
                .iter()
                .map(|w| format!("'{w}'"))
                .collect::<Vec<_>>()
                .join(" ")
        ))
        .current_dir(&work));
    let staged = work.join("staged");
    std::fs::create_dir_all(staged.join("modules")).unwrap();
    let found = run(Command::new("find")
        .arg(".")
        .args([
            "-type",
            "f",
            "(",
            "-name",
            "vmlinuz-*",
            "-o",
            "-name",
            "*.ko",
            ")",
        ])
        .current_dir(&work));
    for f in found.lines() {
        let src = work.join(f);
        let name = src.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("vmlinuz-") {
            std::fs::copy(&src, staged.join("vmlinuz")).unwrap();
        } else {
            std::fs::copy(&src, staged.join("modules").join(&name)).unwrap();
        }
    }
    for m in MODULES {
        assert!(
            staged.join(format!("modules/{m}.ko")).is_file(),
            "{pkg} has no {m}.ko"
        );
    }
    let _ = std::fs::remove_dir_all(&kdir);
    std::fs::rename(&staged, &kdir).unwrap();
    let _ = std::fs::remove_dir_all(&work);
    mods
}

/// The guest's /init: the installer stand-in. It only talks to Slipway the way an installer
/// does (DHCP, DNS, the config URL with its token, reports), and prints `SLIPWAY-E2E ...` lines.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
say() { echo "SLIPWAY-E2E $*"; }
enc() { echo "$*" | sed 's/[^A-Za-z0-9._-]/+/g'; }
CONFIG= REPORT= TOKEN= BOOTSTRAPPER= IP=
for a in $(cat /proc/cmdline); do
  case "$a" in
    slipway.config=*) CONFIG="${a#slipway.config=}" ;;
    slipway.report=*) REPORT="${a#slipway.report=}" ;;
    slipway.token=*) TOKEN="${a#slipway.token=}" ;;
    slipway.bootstrapper=*) BOOTSTRAPPER="${a#slipway.bootstrapper=}" ;;
  esac
done
report() {
  timeout 20 wget -q -O /dev/null --post-data "token=$TOKEN&state=$1&message=$(enc "$2")" "$REPORT"
}
off() { say POWEROFF; sync; poweroff -f; sleep 30; }
fail() {
  say "FAIL $*"
  if [ -n "$IP" ] && [ -n "$REPORT" ]; then
    if report failed "$*"; then say "reported failed"; else say "could not report failed"; fi
  fi
  off
}
say "init started: $(uname -r)"
for m in failover net_failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_net; do
  insmod /lib/modules/$m.ko || say "insmod $m failed"
done
insmod /lib/modules/e1000.ko 2>/dev/null
IF=
i=0
while [ $i -lt 50 ]; do
  for n in /sys/class/net/*; do
    n=${n##*/}
    [ "$n" != lo ] && IF=$n && break
  done
  [ -n "$IF" ] && break
  sleep 0.2
  i=$((i+1))
done
[ -n "$IF" ] || fail "no network interface"
ip link set lo up
ip link set "$IF" up
udhcpc -i "$IF" -n -q -f -t 6 -T 2 -s /etc/udhcpc.sh || fail "udhcpc on $IF got no lease"
IP=$(cat /tmp/ip) DNS=$(cat /tmp/dns)
say "ip=$IP dns=$DNS hostname=$(cat /tmp/hostname) if=$IF"
[ -n "$CONFIG" ] && [ -n "$REPORT" ] && [ -n "$TOKEN" ] && [ -n "$BOOTSTRAPPER" ] || fail "missing slipway.* kernel arguments"
BIP=$(echo "$REPORT" | sed -n 's#^http://\([0-9.]*\).*#\1#p')
[ -n "$DNS" ] || fail "DHCP gave no DNS server"
ANS=$(timeout 10 nslookup "$BOOTSTRAPPER" "${DNS%% *}" 2>&1)
GOT=$(echo "$ANS" | awk '/^Name:/{n=1} n && /^Address/{print $NF; exit}')
say "resolved $BOOTSTRAPPER=$GOT via ${DNS%% *}"
[ "$GOT" = "$BIP" ] || fail "$BOOTSTRAPPER resolved to '$GOT', expected $BIP: $ANS"
timeout 30 wget -q -O /tmp/config "$CONFIG" || fail "config fetch failed"
SIZE=$(wc -c </tmp/config)
[ "$SIZE" -gt 0 ] || fail "config is empty"
KIND=other
grep -q '"ignition"' /tmp/config && KIND=ignition
say "config fetched: $SIZE bytes ($KIND)"
# The token opens the config once.
timeout 30 wget -q -O /tmp/config2 "$CONFIG" 2>/dev/null && fail "the config was served twice for one token"
say "second config fetch refused"
report installing "fetched config of $SIZE bytes" || fail "report installing failed"
say "reported installing"
report installed "installed by the e2e initramfs" || fail "report installed failed"
say INSTALLED
off
"#;

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}"
    echo "$ip" >/tmp/ip; echo "$dns" >/tmp/dns; echo "$hostname" >/tmp/hostname ;;
esac
exit 0
"#;

fn initramfs(dir: &Path, modules: &Path) -> PathBuf {
    let root = dir.join(format!("root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "lib/modules"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let applets = run(Command::new("/bin/busybox").arg("--list"));
    for a in applets.lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    let exec = |p: &Path, text: &str| {
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    exec(&root.join("init"), INIT);
    exec(&root.join("etc/udhcpc.sh"), UDHCPC_SCRIPT);
    for m in MODULES {
        let name = format!("{m}.ko");
        std::fs::copy(modules.join(&name), root.join("lib/modules").join(&name)).unwrap();
    }
    let out = dir.join("initrd.cpio.gz");
    let tmp = dir.join(format!("initrd.{}.tmp", std::process::id()));
    run(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find . | sort | cpio --quiet -o -H newc -R 0:0 | gzip -1 > '{}'",
            tmp.display()
        ))
        .current_dir(&root));
    std::fs::rename(&tmp, &out).unwrap();
    let _ = std::fs::remove_dir_all(&root);
    out
}

/// A raw disk whose MBR writes [`DISK_BOOT_MARK`] to COM1 and exits QEMU through
/// isa-debug-exit (port 0xf4).
fn boot_disk(dir: &Path) -> PathBuf {
    #[rustfmt::skip]
    let code: [u8; 0x1a] = [
        0xFA,             // cli
        0x31, 0xC0,       // xor ax, ax
        0x8E, 0xD8,       // mov ds, ax
        0xBE, 0x1A, 0x7C, // mov si, 0x7c1a (the message)
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8 (COM1)
        0xAC,             // next: lodsb
        0x84, 0xC0,       // test al, al
        0x74, 0x03,       // jz done
        0xEE,             // out dx, al
        0xEB, 0xF8,       // jmp next
        0xB0, 0x01,       // done: mov al, 1
        0xE6, 0xF4,       // out 0xf4, al (isa-debug-exit)
        0xF4,             // hang: hlt
        0xEB, 0xFD,       // jmp hang
    ];
    let mut mbr = vec![0u8; 512];
    mbr[..code.len()].copy_from_slice(&code);
    let msg = format!("\r\n{DISK_BOOT_MARK}\r\n\0");
    mbr[0x1a..0x1a + msg.len()].copy_from_slice(msg.as_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    let mut img = mbr;
    img.resize(1 << 20, 0);
    let path = dir.join("disk.img");
    std::fs::write(&path, img).unwrap();
    path
}

/// How the machine starts.
#[derive(Clone, Debug)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE NIC ROM (it DHCPs as iPXE and fetches the script over HTTP).
    Bios,
    /// OVMF's own PXE client (the NIC's iPXE ROM removed): TFTP `snponly.efi`, then iPXE.
    UefiPxe,
    /// OVMF UEFI HTTP boot (IPv4 PXE switched off through fw_cfg; ROM removed).
    UefiHttp,
    /// QEMU loads kernel and initramfs itself with this command line: a development aid for
    /// the guest only; the tests boot through the network.
    Direct { append: String },
}

/// One QEMU machine with one virtio NIC on the LAN's bridge; killed on drop. The serial log is
/// printed to stderr when it is dropped during a panic.
pub struct Vm {
    pub name: String,
    pub mac: String,
    pub serial: PathBuf,
    child: Option<Child>,
    lan_ns: String,
    tap: String,
    pub started: Instant,
    pub exited: Option<(ExitStatus, Duration)>,
}

impl Vm {
    /// Starts a machine named `name` with `mac` in `dir` (serial log `dir/<name>.serial.log`).
    /// `disk`: a raw disk attached read-only, after the NIC in the boot order (with
    /// isa-debug-exit, so its boot sector can end the run).
    pub fn start(
        lan: &Lan,
        dir: &Path,
        name: &str,
        mac: &str,
        firmware: &Firmware,
        disk: Option<&Path>,
    ) -> Vm {
        let tap = format!("tap{}", TAPS.fetch_add(1, Ordering::Relaxed));
        let ipn = |args: &[&str]| {
            run(Command::new("ip").args(["-n", &lan.ns]).args(args));
        };
        ipn(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        ipn(&["link", "set", &tap, "master", "br0"]);
        ipn(&["link", "set", &tap, "up"]);

        let serial = dir.join(format!("{name}.serial.log"));
        let _ = std::fs::remove_file(&serial);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lan.ns, "qemu-system-x86_64"]);
        cmd.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-machine",
            "q35,graphics=off",
            "-m",
            "256",
            "-smp",
            "1",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-name",
            name,
        ]);
        cmd.arg("-serial").arg(format!("file:{}", serial.display()));
        cmd.args([
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        ]);
        let mut nic = format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1");
        match firmware {
            Firmware::Bios | Firmware::Direct { .. } => {}
            Firmware::UefiPxe | Firmware::UefiHttp => {
                nic.push_str(",romfile=");
                let vars = dir.join(format!("{name}.OVMF_VARS.fd"));
                std::fs::copy(OVMF_VARS, &vars).unwrap();
                cmd.args([
                    "-drive",
                    &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                    "-drive",
                    &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ]);
            }
        }
        // No PXE over IPv6 (OVMF waits about 70 s for DHCPv6 answers that never come); for
        // HTTP boot no PXE over IPv4 either, so HTTPv4 is the first boot option.
        if let Firmware::UefiPxe | Firmware::UefiHttp = firmware {
            cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]);
        }
        if let Firmware::UefiHttp = firmware {
            cmd.args(["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n"]);
        }
        if let Firmware::Direct { append } = firmware {
            let g = guest();
            cmd.arg("-kernel").arg(&g.kernel);
            cmd.arg("-initrd").arg(&g.initrd);
            cmd.args(["-append", append]);
        }
        cmd.args(["-device", &nic]);
        if let Some(disk) = disk {
            cmd.args([
                "-drive",
                &format!(
                    "file={},format=raw,if=none,id=d0,readonly=on",
                    disk.display()
                ),
                "-device",
                "virtio-blk-pci,drive=d0,bootindex=2",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x01",
            ]);
        }
        let log = std::fs::File::create(dir.join(format!("{name}.qemu.log"))).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("qemu-system-x86_64 starts");
        Vm {
            name: name.to_string(),
            mac: mac.to_string(),
            serial,
            child: Some(child),
            lan_ns: lan.ns.clone(),
            tap,
            started: Instant::now(),
            exited: None,
        }
    }

    /// The serial console so far.
    pub fn serial_log(&self) -> String {
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    /// The guest's `SLIPWAY-E2E ...` lines.
    pub fn marks(&self) -> Vec<String> {
        self.serial_log()
            .lines()
            .filter_map(|l| l.find(MARK).map(|i| l[i..].trim_end().to_string()))
            .collect()
    }

    /// Whether QEMU has exited (records when).
    pub fn poll(&mut self) -> bool {
        if self.exited.is_some() {
            return true;
        }
        let child = self.child.as_mut().unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            self.exited = Some((status, self.started.elapsed()));
            return true;
        }
        false
    }

    /// Waits until QEMU exits (the guest powered off) or `timeout`; panics on timeout, or
    /// at once when the console shows the machine cannot get anywhere.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = self.started + timeout;
        let mut checked = Instant::now();
        while !self.poll() {
            if Instant::now() > deadline {
                panic!(
                    "VM {} ({}) did not power off within {timeout:?}",
                    self.name, self.mac
                );
            }
            if checked.elapsed() > Duration::from_secs(2) {
                checked = Instant::now();
                let log = self.serial_log();
                if let Some(dead) = DEAD_ENDS.iter().find(|d| log.contains(*d)) {
                    // Let the console flush what follows, then give up.
                    std::thread::sleep(Duration::from_secs(2));
                    panic!(
                        "VM {} ({}) is stuck: the console shows `{dead}`",
                        self.name, self.mac
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.exited.unwrap().0
    }

    /// Waits until the serial log contains `needle` (or QEMU exits, or `timeout`).
    pub fn wait_serial(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial_log().contains(needle) {
                return true;
            }
            if self.poll() || Instant::now() > deadline {
                return self.serial_log().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills QEMU now (the machine is switched off hard).
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        let _ = Command::new("ip")
            .args(["-n", &self.lan_ns, "link", "del", &self.tap])
            .output();
        if std::thread::panicking() {
            let log = self.serial_log();
            let tail: Vec<&str> = log.lines().rev().take(150).collect();
            eprintln!(
                "===== serial log of VM {} ({}), last {} lines, full log {} =====",
                self.name,
                self.mac,
                tail.len(),
                self.serial.display()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            eprintln!("===== end of serial log of {} =====", self.name);
        }
    }
}

/// radvd on `host`'s `eth0` announcing a ULA prefix, so iPXE and the kernel finish IPv6
/// autoconfiguration at once instead of waiting for a router.
pub fn radvd(host: &crate::common::Host, dir: &Path) {
    let conf = dir.join("radvd.conf");
    std::fs::write(
        &conf,
        "interface eth0 {\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 10;\n  \
         AdvDefaultLifetime 0;\n  prefix fd00:20::/64 { AdvOnLink on; AdvAutonomous on; };\n};\n",
    )
    .unwrap();
    host.run(
        host.command("sysctl")
            .args(["-qw", "net.ipv6.conf.all.forwarding=1"]),
    );
    host.spawn(
        host.command("/usr/sbin/radvd")
            .args(["-n", "-m", "stderr", "-C"])
            .arg(&conf)
            .arg("-p")
            .arg(dir.join("radvd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
}
