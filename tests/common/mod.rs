//! Test harness shared by the integration tests that need a network: throw-away network
//! namespaces joined by a bridge (a private LAN), hosts on it with veth `eth0`, commands run
//! inside a host, and `slipway serve` started from a small description template.
//!
//! Every packet stays inside namespaces the test created. Everything is deleted on drop,
//! including processes still running inside the namespaces.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .output()
        .expect("the `ip` command (iproute2) runs")
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether network-namespace tests can run here. Without root or `ip netns`, CI (CI=true)
/// fails loudly; elsewhere the test prints a notice and is skipped.
pub fn netns_available() -> bool {
    static PROBE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let why = PROBE.get_or_init(probe_netns).clone();
    match why {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("network-namespace tests must run in CI, but {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED: network-namespace test needs root and `ip netns` ({why})");
            false
        }
    }
}

/// Why namespaces cannot be used here, if they cannot.
fn probe_netns() -> Option<String> {
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        Some("not running as root".to_string())
    } else {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let probe = format!("slw-probe-{}-{n}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &probe]).output();
        match out {
            Ok(o) if o.status.success() => {
                let _ = ip(&["netns", "del", &probe]);
                None
            }
            Ok(o) => Some(format!(
                "`ip netns add` failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!("cannot run `ip`: {e}")),
        }
    }
}

/// Whether a program is installed (tests that need it say so when it is missing).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether a network test can run with these programs: without them it is skipped, except
/// in CI (CI=true), where a missing program fails the test.
pub fn need(programs: &[&str]) -> bool {
    if !netns_available() {
        return false;
    }
    for p in programs {
        if !have(p) {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{p} is required in CI (scripts/test.sh installs it)");
            }
            eprintln!("SKIPPED: {p} is not installed");
            return false;
        }
    }
    true
}

/// curl inside `host`: (HTTP status, body).
pub fn curl_status(host: &Host, args: &[&str]) -> (u16, String) {
    let out = host
        .command("curl")
        .args(["-sS", "-m", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_string())
}

/// The one-time token on an install script's kernel line.
pub fn boot_token(script: &str) -> String {
    let kernel = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in\n{script}"));
    kernel
        .split_whitespace()
        .find_map(|a| a.strip_prefix("slipway.token="))
        .expect("slipway.token= in the kernel arguments")
        .to_string()
}

/// A private L2 segment: a namespace holding bridge `br0`.
pub struct Lan {
    pub ns: String,
    prefix: String,
    hosts: AtomicUsize,
}

impl Lan {
    /// `tag` names the test in namespace names (helps when something is left over).
    pub fn new(tag: &str) -> Lan {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("slw-{tag}-{}-{n}", std::process::id());
        let ns = format!("{prefix}-lan");
        ip_ok(&["netns", "add", &ns]);
        ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &ns, "link", "add", "br0", "type", "bridge"]);
        // No STP delay and no multicast snooping surprises: ports forward at once.
        ip_ok(&[
            "-n",
            &ns,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
        ]);
        ip_ok(&["-n", &ns, "link", "set", "br0", "up"]);
        Lan {
            ns,
            prefix,
            hosts: AtomicUsize::new(0),
        }
    }

    /// A host on the LAN: its own namespace with `eth0` (veth to the bridge), loopback up,
    /// `addr` ("10.20.0.2/24") configured and the MAC set when given.
    pub fn host(&self, name: &str, addr: Option<&str>, mac: Option<&str>) -> Host {
        let i = self.hosts.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{}-{name}", self.prefix);
        ip_ok(&["netns", "add", &ns]);
        let port = format!("p{i}");
        ip_ok(&[
            "-n", &self.ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        ip_ok(&["-n", &self.ns, "link", "set", &port, "master", "br0"]);
        ip_ok(&["-n", &self.ns, "link", "set", &port, "up"]);
        if let Some(mac) = mac {
            ip_ok(&["-n", &ns, "link", "set", "eth0", "address", mac]);
        }
        ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
        let host = Host {
            ns,
            name: name.to_string(),
            children: Mutex::new(Vec::new()),
        };
        if let Some(addr) = addr {
            host.add_addr(addr);
        }
        host
    }
}

impl Lan {
    /// Connects an existing host to this LAN as well (a router between two LANs): a veth
    /// named `ifname` in the host, with `addr` when given.
    pub fn attach(&self, host: &Host, ifname: &str, addr: Option<&str>) {
        let port = format!("p{}", self.hosts.fetch_add(1, Ordering::Relaxed));
        ip_ok(&[
            "-n", &self.ns, "link", "add", &port, "type", "veth", "peer", "name", ifname, "netns",
            &host.ns,
        ]);
        ip_ok(&["-n", &self.ns, "link", "set", &port, "master", "br0"]);
        ip_ok(&["-n", &self.ns, "link", "set", &port, "up"]);
        ip_ok(&["-n", &host.ns, "link", "set", ifname, "up"]);
        if let Some(addr) = addr {
            ip_ok(&["-n", &host.ns, "addr", "add", addr, "dev", ifname]);
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// One machine on a `Lan`.
pub struct Host {
    pub ns: String,
    pub name: String,
    children: Mutex<Vec<Child>>,
}

impl Host {
    /// `prog` run inside this host's namespace (via `ip netns exec`).
    pub fn command(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, prog]);
        c
    }

    /// Adds an address ("192.168.77.1/24") to `eth0`.
    pub fn add_addr(&self, cidr: &str) {
        ip_ok(&["-n", &self.ns, "addr", "add", cidr, "dev", "eth0"]);
    }

    /// Changes `eth0`'s MAC (to pose as another machine).
    pub fn set_mac(&self, mac: &str) {
        ip_ok(&["-n", &self.ns, "link", "set", "eth0", "address", mac]);
    }

    /// Adds a route: `dest` ("10.20.0.0/24" or "default") via `gateway`.
    pub fn add_route(&self, dest: &str, gateway: &str) {
        ip_ok(&["-n", &self.ns, "route", "add", dest, "via", gateway]);
    }

    /// Makes this host route IPv4 between its interfaces (the setting is per namespace).
    pub fn enable_forwarding(&self) {
        self.run(
            self.command("sh")
                .args(["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]),
        );
    }

    /// Runs `cmd` to completion; panics with its output when it fails.
    pub fn run(&self, cmd: &mut Command) -> String {
        let out = cmd.output().expect("command runs");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd` and keeps the child: it is killed when the host is dropped.
    pub fn spawn(&self, cmd: &mut Command) -> u32 {
        let child = cmd.spawn().expect("command starts");
        let pid = child.id();
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Waits for the child `pid` (started in this host) to exit completely.
    pub fn reap(&self, pid: u32) {
        let child = {
            let mut children = self.children.lock().unwrap();
            let i = children.iter().position(|c| c.id() == pid);
            i.map(|i| children.swap_remove(i))
        };
        if let Some(mut c) = child {
            let _ = c.wait();
        }
    }

    /// Runs `f` on a thread that lives in this host's namespace (sockets it opens are
    /// inside the namespace).
    pub fn within<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            enter_netns(&ns);
            f()
        })
        .join()
        .expect("thread inside the namespace")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for mut c in self.children.lock().unwrap().drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Anything else still running in the namespace (daemons that forked).
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// Moves the calling thread into network namespace `ns` (for threads that open sockets
/// there while the test goes on).
pub fn enter_netns(ns: &str) {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    let file = std::fs::File::open(&path).expect("namespace file");
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "setns into {path}: {}",
        std::io::Error::last_os_error()
    );
}

/// A node in a test description.
#[derive(Clone, Debug)]
pub struct TestNode {
    pub mac: String,
    pub hostname: String,
    pub ip: String,
    pub control_plane: bool,
}

impl TestNode {
    pub fn new(mac: &str, hostname: &str, ip: &str, control_plane: bool) -> TestNode {
        TestNode {
            mac: mac.into(),
            hostname: hostname.into(),
            ip: ip.into(),
            control_plane,
        }
    }
}

/// A small cluster description on 10.20.0.0/24 with the bootstrapper at 10.20.0.2 on
/// `eth0`; adjust the fields, then `yaml()`.
#[derive(Clone, Debug)]
pub struct TestDesc {
    pub domain: String,
    pub bootstrapper: String,
    /// `bootstrapper.subnet`: Slipway on its own subnet, behind a router.
    pub bootstrapper_subnet: Option<String>,
    pub subnet: String,
    pub gateway: String,
    pub upstream_dns: Vec<String>,
    pub vip: Option<String>,
    pub mtu: Option<u16>,
    pub ntp: Vec<String>,
    pub dhcp_mode: String,
    /// `network.dhcp.lease_time` ("2h"); the default (1h) when None.
    pub lease_time: Option<String>,
    pub pool: Option<(String, String)>,
    pub unknown_machines: String,
    pub nodes: Vec<TestNode>,
}

impl Default for TestDesc {
    fn default() -> Self {
        TestDesc {
            domain: "lab.test".into(),
            bootstrapper: "10.20.0.2".into(),
            bootstrapper_subnet: None,
            subnet: "10.20.0.0/24".into(),
            gateway: "10.20.0.1".into(),
            upstream_dns: vec![],
            vip: None,
            mtu: None,
            ntp: vec![],
            dhcp_mode: "authoritative".into(),
            lease_time: None,
            pool: None,
            unknown_machines: "ignore".into(),
            nodes: vec![
                TestNode::new("52:54:00:00:00:11", "cp-1", "10.20.0.11", true),
                TestNode::new("52:54:00:00:00:21", "worker-1", "10.20.0.21", false),
            ],
        }
    }
}

impl TestDesc {
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "cluster:\n  name: lab\n  domain: {}\n  kubernetes_version: \"1.31.4\"\n",
            self.domain
        );
        if let Some(vip) = &self.vip {
            y.push_str(&format!("  control_plane_endpoint:\n    vip: {vip}\n"));
        }
        y.push_str(&format!(
            "bootstrapper:\n  interface: eth0\n  address: {}\n",
            self.bootstrapper
        ));
        if let Some(s) = &self.bootstrapper_subnet {
            y.push_str(&format!("  subnet: {s}\n"));
        }
        y.push_str(&format!(
            "network:\n  subnet: {}\n  gateway: {}\n",
            self.subnet, self.gateway
        ));
        if !self.upstream_dns.is_empty() {
            y.push_str(&format!(
                "  upstream_dns: [{}]\n",
                self.upstream_dns.join(", ")
            ));
        }
        if let Some(mtu) = self.mtu {
            y.push_str(&format!("  mtu: {mtu}\n"));
        }
        if !self.ntp.is_empty() {
            y.push_str(&format!("  ntp: [{}]\n", self.ntp.join(", ")));
        }
        y.push_str(&format!(
            "  dhcp:\n    mode: {}\n    unknown_machines: {}\n",
            self.dhcp_mode, self.unknown_machines
        ));
        if let Some(t) = &self.lease_time {
            y.push_str(&format!("    lease_time: {t}\n"));
        }
        if let Some((start, end)) = &self.pool {
            y.push_str(&format!(
                "    pool:\n      start: {start}\n      end: {end}\n"
            ));
        }
        y.push_str("os:\n  profile: flatcar\n  version: \"4081.2.0\"\nnodes:\n");
        for n in &self.nodes {
            let role = if n.control_plane {
                "control-plane"
            } else {
                "worker"
            };
            y.push_str(&format!(
                "  - mac: {}\n    hostname: {}\n    ip: {}\n    role: {role}\n",
                n.mac, n.hostname, n.ip
            ));
        }
        y
    }
}

/// `slipway serve` running inside a host, with its JSON log lines.
pub struct Slipway {
    pub pid: u32,
    logs: Receiver<String>,
    pub seen: Vec<String>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Slipway {
    /// Writes `yaml` as the description and starts `slipway serve` in `host` with `args`
    /// added (e.g. `--disable dhcp`); returns once it logged "slipway serving".
    pub fn start(host: &Host, yaml: &str, args: &[&str]) -> Slipway {
        Slipway::start_in(host, tempfile::tempdir().unwrap(), yaml, args)
    }

    /// Like `start`, keeping description and state in `dir`.
    pub fn start_in(host: &Host, dir: tempfile::TempDir, yaml: &str, args: &[&str]) -> Slipway {
        let config = dir.path().join("cluster-desc.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut cmd = host.command(env!("CARGO_BIN_EXE_slipway"));
        cmd.args(["--log-format", "json", "serve", "-c"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--images-dir")
            .arg(dir.path().join("images"))
            .args(args)
            .env("SLIPWAY_LOG", "info,slipway=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("slipway starts");
        let stderr = child.stderr.take().unwrap();
        let pid = child.id();
        host.children.lock().unwrap().push(child);
        let (tx, logs) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Slipway {
            pid,
            logs,
            seen: Vec::new(),
            dir,
            config,
        };
        s.wait_log("slipway serving");
        s
    }

    /// Kills this serve process with SIGKILL (no clean shutdown) and starts a new one in
    /// `host` on the same description and state directory.
    pub fn kill_and_restart(self, host: &Host, args: &[&str]) -> Slipway {
        self.signal(libc::SIGKILL);
        // Reap it: only then have all its threads exited and its files (the store's lock)
        // been closed. A zombie main thread alone does not mean that.
        host.reap(self.pid);
        let yaml = std::fs::read_to_string(&self.config).unwrap();
        Slipway::start_in(host, self.dir, &yaml, args)
    }

    /// Waits for a log line containing `needle` (20 s at most) and returns it.
    pub fn wait_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with `{needle}`; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Log lines received so far (without waiting).
    pub fn drain_logs(&mut self) -> &[String] {
        while let Ok(line) = self.logs.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Sends a signal to the serve process (`ip netns exec` execs it: same pid).
    pub fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.pid as i32, sig) }, 0);
    }

    /// Replaces the description and sends SIGHUP; waits for the reload to apply.
    pub fn reload(&mut self, yaml: &str) {
        std::fs::write(&self.config, yaml).unwrap();
        self.signal(libc::SIGHUP);
        self.wait_log("SIGHUP: reloaded");
    }

    /// Alive and not a zombie.
    pub fn is_running(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .map(|s| !s.contains("State:\tZ"))
            .unwrap_or(false)
    }
}
