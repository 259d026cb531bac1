//! Shared by the registry tests: OCI layouts written by hand (real tar layers, configs,
//! manifests, two-platform indexes), Slipway in a namespace with its admin token, curl and
//! skopeo helpers, and Debian's docker-registry as an upstream with an access log.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{Host, Lan, Slipway, TestDesc, have, netns_available};
use sha2::{Digest as _, Sha256};

pub const REG: &str = "10.20.0.2:5000";

pub fn tools(names: &[&str]) -> bool {
    if !netns_available() {
        return false;
    }
    let missing: Vec<&str> = names.iter().copied().filter(|n| !have(n)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("registry tests must run in CI, but {missing:?} are missing");
    }
    eprintln!("SKIPPED: needs {missing:?}");
    false
}

pub fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pseudo-random, incompressible bytes (xorshift), different per seed.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar holding one file of `len` random bytes: a real layer containerd can unpack.
pub fn layer_tar(len: usize, seed: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, format!("data-{seed}"), &noise(len, seed)[..])
        .unwrap();
    b.into_inner().unwrap()
}

pub fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hex = sha(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// Writes one image (config + layers + manifest) into an OCI layout; returns the
/// manifest's descriptor JSON.
pub fn image(layout: &Path, arch: &str, layers: &[(usize, u64)]) -> serde_json::Value {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for &(len, seed) in layers {
        let t = layer_tar(len, seed);
        let (d, n) = put_blob(layout, &t);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}));
    }
    let config = serde_json::json!({
        "architecture": arch, "os": "linux", "config": {"Cmd": ["/data"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cn) = put_blob(layout, config.to_string().as_bytes());
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": descs,
    });
    let (md, mn) = put_blob(layout, m.to_string().as_bytes());
    serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
        "platform": {"architecture": arch, "os": "linux"}})
}

/// An OCI layout with one tag: a single image, or a two-platform index when `multi`.
pub fn layout(dir: &Path, tag: &str, multi: bool, layers: &[(usize, u64)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut top = if multi {
        let a = image(dir, "amd64", layers);
        let shifted: Vec<(usize, u64)> = layers.iter().map(|&(l, s)| (l, s + 1000)).collect();
        let b = image(dir, "arm64", &shifted);
        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [a, b]});
        let (d, n) = put_blob(dir, idx.to_string().as_bytes());
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": n})
    } else {
        image(dir, "amd64", layers)
    };
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let digest = top["digest"].as_str().unwrap().to_string();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    digest
}

pub struct Env {
    pub _lan: Lan,
    pub host: Host,
    pub slipway: Option<Slipway>,
    pub token: String,
    /// State directories of stopped serve processes, deleted with the Env.
    pub kept: Vec<tempfile::TempDir>,
}

impl Env {
    /// Slipway in a namespace at 10.20.0.2 (registry on :5000); `registry_yaml` is appended
    /// to the description.
    pub fn start(tag: &str, registry_yaml: &str, args: &[&str]) -> Env {
        let yaml = format!("{}{registry_yaml}", TestDesc::default().yaml());
        Env::start_yaml(tag, &yaml, args)
    }

    /// Slipway in a namespace at 10.20.0.2 with the whole description `yaml`.
    pub fn start_yaml(tag: &str, yaml: &str, args: &[&str]) -> Env {
        let lan = Lan::new(tag);
        let host = lan.host("boot", Some("10.20.0.2/24"), None);
        let mut all = vec!["--disable", "dhcp", "--disable", "dns"];
        all.extend_from_slice(args);
        let slipway = Slipway::start(&host, yaml, &all);
        assert!(slipway.seen.iter().any(|l| l.contains("registry serving")));
        let token = std::fs::read_to_string(slipway.dir.path().join("state/admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Env {
            _lan: lan,
            host,
            slipway: Some(slipway),
            token,
            kept: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.slipway.as_ref().unwrap().dir.path()
    }

    pub fn storage(&self) -> PathBuf {
        self.dir().join("state/registry")
    }

    /// The files under /etc/containerd/certs.d/ that Slipway renders for `node` (its
    /// installed system's Ignition, secrets shown, from this serve's own state directory),
    /// written below `dest` as a containerd hosts directory. Returns their relative paths.
    pub fn rendered_certs_d(&self, node: &str, dest: &Path) -> Vec<String> {
        use base64::Engine as _;
        let config = self.slipway.as_ref().unwrap().config.clone();
        let out = self.host.run(
            std::process::Command::new(env!("CARGO_BIN_EXE_slipway"))
                .args(["render", "-c"])
                .arg(&config)
                .arg("--state-dir")
                .arg(self.dir().join("state"))
                .args(["--node", node, "--what", "node-ignition", "--show-secrets"]),
        );
        let ign: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut written = Vec::new();
        for f in ign["storage"]["files"].as_array().unwrap() {
            let path = f["path"].as_str().unwrap();
            let Some(rel) = path.strip_prefix("/etc/containerd/certs.d/") else {
                continue;
            };
            let src = f["contents"]["source"].as_str().unwrap();
            let b64 = src.strip_prefix("data:;base64,").expect("inline file");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let target = dest.join(rel);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::write(&target, bytes).unwrap();
            written.push(rel.to_string());
        }
        assert!(!written.is_empty(), "no certs.d files rendered for {node}");
        written
    }

    /// Starts containerd (no CRI) in the namespace with its state under `dir`; returns
    /// its socket.
    pub fn containerd(&self, dir: &Path) -> String {
        let sock = dir.join("containerd.sock");
        let cfg = dir.join("containerd.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
                dir.join("ctr-root").display(),
                dir.join("ctr-state").display(),
                sock.display()
            ),
        )
        .unwrap();
        self.host.spawn(
            self.cmd("containerd", &["--config", &cfg.to_string_lossy()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        sock.to_string_lossy().into_owned()
    }

    pub fn cmd(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = self.host.command(prog);
        c.args(args);
        c
    }

    pub fn run(&self, prog: &str, args: &[&str]) -> String {
        self.host.run(&mut self.cmd(prog, args))
    }

    /// (status, headers + body) of a curl request inside the namespace.
    pub fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut c = self.cmd("curl", &["-s", "-i", "-w", "\n%{http_code}"]);
        c.args(args);
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    pub fn skopeo_push(&self, src: &str, dest: &str, all: bool) {
        let creds = format!("x:{}", self.token);
        let mut args = vec!["copy", "--dest-tls-verify=false", "--dest-creds", &creds];
        if all {
            args.push("--all");
        }
        args.extend([src, dest]);
        self.run("skopeo", &args);
    }

    pub fn skopeo_digest(&self, reference: &str) -> String {
        let out = self.run(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{reference}"),
            ],
        );
        format!("sha256:{}", sha(out.as_bytes()))
    }

    /// Stops serve cleanly and starts it again on the same state with `args` added.
    pub fn restart(&mut self, args: &[&str]) {
        let mut s = self.slipway.take().unwrap();
        s.signal(libc::SIGTERM);
        s.wait_log("slipway stopped");
        // The state store is unlocked once every thread of the process has exited.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(format!("/proc/{}/task", s.pid))
            .map(|d| d.count())
            .unwrap_or(0)
            > 1
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        let yaml = std::fs::read_to_string(&s.config).unwrap();
        let mut all = vec!["--disable", "dhcp", "--disable", "dns"];
        all.extend_from_slice(args);
        self.slipway = Some(Slipway::start_in(&self.host, s.dir, &yaml, &all));
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.slipway.take() {
            s.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while s.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Keep the directory while the Env lives: tests look at it afterwards.
            self.kept.push(s.dir);
        }
    }
}

pub fn blob_files(storage: &Path) -> usize {
    pub fn walk(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&storage.join("blobs"))
}

pub fn uploads_left(storage: &Path) -> usize {
    std::fs::read_dir(storage.join("uploads"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

pub fn upstream(env: &Env, dir: &Path, port: u16) -> PathBuf {
    let cfg = dir.join("upstream.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("upstream-data").display()
        ),
    )
    .unwrap();
    let log = dir.join("upstream.log");
    let file = std::fs::File::create(&log).unwrap();
    env.host.spawn(
        env.cmd("docker-registry", &["serve", &cfg.to_string_lossy()])
            .stdout(file.try_clone().unwrap())
            .stderr(file),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.curl(&[&format!("http://127.0.0.1:{port}/v2/")]).0 != 200 {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    log
}

pub fn upstream_yaml(port: u16) -> String {
    format!(
        "registry:\n  upstreams:\n    - name: docker.io\n      url: http://127.0.0.1:{port}\n    - name: registry.k8s.io\n      url: http://127.0.0.1:{port}\n"
    )
}

/// Blob GETs the upstream served, by digest.
pub fn upstream_blob_gets(log: &Path) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for line in std::fs::read_to_string(log).unwrap().lines() {
        if let Some(i) = line.find("\"GET /v2/") {
            let req = &line[i..];
            if let Some(j) = req.find("/blobs/sha256:") {
                let d: String = req[j + 7..].chars().take(71).collect();
                *m.entry(d).or_default() += 1;
            }
        }
    }
    m
}
