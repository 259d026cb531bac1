//! The registry with real clients: skopeo (push/pull, multi-arch), podman, containerd's ctr
//! through a hosts.toml mirror, pull-through from Debian's docker-registry, imports of
//! archives made by skopeo. Each test runs Slipway in its own network namespace; clients and
//! the upstream registry run inside it too. Under CI=true a missing tool fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Host, Lan, Slipway, TestDesc, have, netns_available};
use sha2::{Digest as _, Sha256};

const REG: &str = "10.20.0.2:5000";

fn tools(names: &[&str]) -> bool {
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

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Pseudo-random, incompressible bytes (xorshift), different per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
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
fn layer_tar(len: usize, seed: u64) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, format!("data-{seed}"), &noise(len, seed)[..])
        .unwrap();
    b.into_inner().unwrap()
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let hex = sha(bytes);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len())
}

/// Writes one image (config + layers + manifest) into an OCI layout; returns the
/// manifest's descriptor JSON.
fn image(layout: &Path, arch: &str, layers: &[(usize, u64)]) -> serde_json::Value {
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
fn layout(dir: &Path, tag: &str, multi: bool, layers: &[(usize, u64)]) -> String {
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

struct Env {
    _lan: Lan,
    host: Host,
    slipway: Option<Slipway>,
    token: String,
}

impl Env {
    /// Slipway in a namespace at 10.20.0.2 (registry on :5000); `registry_yaml` is appended
    /// to the description.
    fn start(tag: &str, registry_yaml: &str, args: &[&str]) -> Env {
        let lan = Lan::new(tag);
        let host = lan.host("boot", Some("10.20.0.2/24"), None);
        let yaml = format!("{}{registry_yaml}", TestDesc::default().yaml());
        let mut all = vec!["--disable", "dhcp", "--disable", "dns"];
        all.extend_from_slice(args);
        let slipway = Slipway::start(&host, &yaml, &all);
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
        }
    }

    fn dir(&self) -> &Path {
        self.slipway.as_ref().unwrap().dir.path()
    }

    fn storage(&self) -> PathBuf {
        self.dir().join("state/registry")
    }

    fn cmd(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = self.host.command(prog);
        c.args(args);
        c
    }

    fn run(&self, prog: &str, args: &[&str]) -> String {
        self.host.run(&mut self.cmd(prog, args))
    }

    /// (status, headers + body) of a curl request inside the namespace.
    fn curl(&self, args: &[&str]) -> (u16, String) {
        let mut c = self.cmd("curl", &["-s", "-i", "-w", "\n%{http_code}"]);
        c.args(args);
        let out = c.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn skopeo_push(&self, src: &str, dest: &str, all: bool) {
        let creds = format!("x:{}", self.token);
        let mut args = vec!["copy", "--dest-tls-verify=false", "--dest-creds", &creds];
        if all {
            args.push("--all");
        }
        args.extend([src, dest]);
        self.run("skopeo", &args);
    }

    fn skopeo_digest(&self, reference: &str) -> String {
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
    fn restart(&mut self, args: &[&str]) {
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

    fn stop(&mut self) {
        if let Some(s) = self.slipway.take() {
            s.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while s.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // Keep the directory: tests look at it afterwards.
            std::mem::forget(s.dir);
        }
    }
}

fn blob_files(storage: &Path) -> usize {
    fn walk(p: &Path) -> usize {
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

fn uploads_left(storage: &Path) -> usize {
    std::fs::read_dir(storage.join("uploads"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

#[test]
fn skopeo_round_trips_and_api_details() {
    if !tools(&["skopeo", "curl"]) {
        return;
    }
    let env = Env::start("regapi", "", &[]);
    let work = tempfile::tempdir().unwrap();
    let single = work.path().join("single");
    let multi = work.path().join("multi");
    let single_digest = layout(
        &single,
        "v1",
        false,
        &[(300_000, 1), (200_000, 2), (100_000, 3)],
    );
    layout(&multi, "v2", true, &[(50_000, 4), (60_000, 5)]);

    // Pushing needs the admin token.
    let anon = env
        .cmd(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:v1", single.display()),
                &format!("docker://{REG}/team/app:v1"),
            ],
        )
        .output()
        .unwrap();
    assert!(!anon.status.success(), "anonymous push must fail");

    env.skopeo_push(
        &format!("oci:{}:v1", single.display()),
        &format!("docker://{REG}/team/app:v1"),
        false,
    );
    env.skopeo_push(
        &format!("oci:{}:v2", multi.display()),
        &format!("docker://{REG}/team/app:v2"),
        true,
    );
    // skopeo may compress layers on push, so compare what a pull returns with a second pull.
    let pushed = env.skopeo_digest(&format!("{REG}/team/app:v1"));
    let out = work.path().join("out");
    env.run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{REG}/team/app:v1"),
            &format!("oci:{}:v1", out.display()),
        ],
    );
    let out_multi = work.path().join("out-multi");
    env.run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{REG}/team/app:v2"),
            &format!("oci:{}:v2", out_multi.display()),
        ],
    );
    let idx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_multi.join("index.json")).unwrap())
            .unwrap();
    let top = idx["manifests"][0]["digest"].as_str().unwrap();
    let top_json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out_multi.join("blobs/sha256").join(&top[7..])).unwrap(),
    )
    .unwrap();
    assert_eq!(
        top_json["manifests"].as_array().unwrap().len(),
        2,
        "both platforms pulled"
    );
    assert_eq!(pushed, env.skopeo_digest(&format!("{REG}/team/app:v1")));
    let _ = single_digest;

    // Manifest headers, by tag and by digest; HEAD has no body but the length.
    let (code, head) = env.curl(&["-I", &format!("http://{REG}/v2/team/app/manifests/v1")]);
    assert_eq!(code, 200, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("docker-content-digest: {pushed}")),
        "{head}"
    );
    assert!(
        lower.contains("content-type: application/vnd.oci.image.manifest.v1+json"),
        "{head}"
    );
    let (code, _) = env.curl(&[&format!("http://{REG}/v2/team/app/manifests/{pushed}")]);
    assert_eq!(code, 200);

    // Tags and catalog with pagination.
    let (code, body) = env.curl(&[&format!("http://{REG}/v2/team/app/tags/list?n=1")]);
    assert_eq!(code, 200);
    assert!(body.contains(r#""tags":["v1"]"#), "{body}");
    assert!(
        body.contains("</v2/team/app/tags/list?n=1&last=v1>; rel=\"next\""),
        "{body}"
    );
    let (_, body) = env.curl(&[&format!("http://{REG}/v2/team/app/tags/list?n=1&last=v1")]);
    assert!(body.contains(r#""tags":["v2"]"#), "{body}");
    let (_, body) = env.curl(&[&format!("http://{REG}/v2/_catalog")]);
    assert!(body.contains(r#""repositories":["team/app"]"#), "{body}");
    let (code, body) = env.curl(&[&format!("http://{REG}/v2/nope/tags/list")]);
    assert_eq!(code, 404);
    assert!(body.contains("NAME_UNKNOWN"), "{body}");

    // A blob with a range.
    let manifest: serde_json::Value = serde_json::from_str(&env.run(
        "curl",
        &[
            "-s",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!("http://{REG}/v2/team/app/manifests/v1"),
        ],
    ))
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, resp) = env.curl(&[
        "-r",
        "10-19",
        &format!("http://{REG}/v2/team/app/blobs/{layer}"),
    ]);
    assert_eq!(code, 206, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-range: bytes 10-19/"),
        "{resp}"
    );
    let (code, resp) = env.curl(&[
        "-r",
        "999999999-",
        &format!("http://{REG}/v2/team/app/blobs/{layer}"),
    ]);
    assert_eq!(code, 416, "{resp}");
    let (code, body) = env.curl(&[&format!(
        "http://{REG}/v2/team/app/blobs/sha256:{}",
        "0".repeat(64)
    )]);
    assert_eq!(code, 404);
    assert!(body.contains(r#""code":"BLOB_UNKNOWN""#), "{body}");
    let (code, body) = env.curl(&[&format!("http://{REG}/v2/Team/manifests/x")]);
    assert_eq!(code, 400);
    assert!(
        body.contains("NAME_INVALID") && !body.contains("registry/"),
        "{body}"
    );

    // Pulls from outside the cluster's networks are refused.
    env.host.add_addr("192.168.99.2/24");
    let (code, body) = env.curl(&[
        "--interface",
        "192.168.99.2",
        &format!("http://{REG}/v2/team/app/manifests/v1"),
    ]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("DENIED"));

    // A wrong digest stores nothing; an interrupted upload leaves nothing behind.
    let before = blob_files(&env.storage());
    let auth = format!("Authorization: Bearer {}", env.token);
    let wrong = format!("sha256:{}", sha(b"something else"));
    let (code, body) = env.curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        "--data-binary",
        "payload",
        &format!("http://{REG}/v2/team/app/blobs/uploads/?digest={wrong}"),
    ]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("DIGEST_INVALID"), "{body}");
    assert_eq!(blob_files(&env.storage()), before);
    let (code, resp) = env.curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("http://{REG}/v2/team/app/blobs/uploads/"),
    ]);
    assert_eq!(code, 202, "{resp}");
    let location = resp
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap()
        .trim()
        .to_string();
    assert!(
        resp.to_ascii_lowercase().contains("docker-upload-uuid: "),
        "{resp}"
    );
    // A 10 MB chunk sent slowly; the client gives up after a second, mid-body.
    let big = work.path().join("big-chunk");
    std::fs::write(&big, noise(10_000_000, 9)).unwrap();
    let (code, _) = env.curl(&[
        "-X",
        "PATCH",
        "-H",
        &auth,
        "--limit-rate",
        "200k",
        "--max-time",
        "1",
        "--data-binary",
        &format!("@{}", big.display()),
        &format!("http://{REG}{location}"),
    ]);
    // 0 (no reply) or 100 (only the interim reply): never an accepted chunk.
    assert!(
        code == 0 || code == 100,
        "curl must have aborted the transfer ({code})"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while uploads_left(&env.storage()) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        uploads_left(&env.storage()),
        0,
        "interrupted upload left a temporary file"
    );
    let (code, _) = env.curl(&[
        "-X",
        "PUT",
        "-H",
        &auth,
        &format!("http://{REG}{location}?digest={wrong}"),
    ]);
    assert_eq!(code, 404, "the interrupted session is gone");
    assert_eq!(blob_files(&env.storage()), before);

    // Chunked upload in two PATCHes, then cross-repository mount.
    let data = noise(70_000, 77);
    let digest = format!("sha256:{}", sha(&data));
    let chunk = work.path().join("chunk");
    let (_, resp) = env.curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("http://{REG}/v2/team/chunked/blobs/uploads/"),
    ]);
    let location = resp
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_string();
    std::fs::write(&chunk, &data[..30_000]).unwrap();
    let (code, resp) = env.curl(&[
        "-X",
        "PATCH",
        "-H",
        &auth,
        "-H",
        "Content-Range: 0-29999",
        "--data-binary",
        &format!("@{}", chunk.display()),
        &format!("http://{REG}{location}"),
    ]);
    assert_eq!(code, 202, "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("range: 0-29999"),
        "{resp}"
    );
    // Out of order: refused.
    let (code, _) = env.curl(&[
        "-X",
        "PATCH",
        "-H",
        &auth,
        "-H",
        "Content-Range: 5-10",
        "--data-binary",
        "x",
        &format!("http://{REG}{location}"),
    ]);
    assert_eq!(code, 416);
    std::fs::write(&chunk, &data[30_000..]).unwrap();
    let (code, resp) = env.curl(&[
        "-X",
        "PUT",
        "-H",
        &auth,
        "--data-binary",
        &format!("@{}", chunk.display()),
        &format!("http://{REG}{location}?digest={digest}"),
    ]);
    assert_eq!(code, 201, "{resp}");
    let (code, resp) = env.curl(&[
        "-X",
        "POST",
        "-H",
        &auth,
        &format!("http://{REG}/v2/other/blobs/uploads/?mount={digest}&from=team/chunked"),
    ]);
    assert_eq!(code, 201, "{resp}");
    let (code, _) = env.curl(&["-I", &format!("http://{REG}/v2/other/blobs/{digest}")]);
    assert_eq!(code, 200);

    // Deleting by tag needs the token.
    let (code, _) = env.curl(&[
        "-X",
        "DELETE",
        &format!("http://{REG}/v2/team/app/manifests/v2"),
    ]);
    assert_eq!(code, 401);
    let (code, _) = env.curl(&[
        "-X",
        "DELETE",
        "-H",
        &auth,
        &format!("http://{REG}/v2/team/app/manifests/v2"),
    ]);
    assert_eq!(code, 202);
    let (code, _) = env.curl(&["-I", &format!("http://{REG}/v2/team/app/manifests/v2")]);
    assert_eq!(code, 404);

    // 20 concurrent pulls.
    let children: Vec<_> = (0..20)
        .map(|i| {
            let dest = work.path().join(format!("p{i}"));
            env.cmd(
                "skopeo",
                &[
                    "copy",
                    "--src-tls-verify=false",
                    &format!("docker://{REG}/team/app:v1"),
                    &format!("dir:{}", dest.display()),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn podman_pulls() {
    if !tools(&["skopeo", "podman"]) {
        return;
    }
    let env = Env::start("regpod", "", &[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("img");
    layout(&src, "v1", false, &[(100_000, 11), (50_000, 12)]);
    env.skopeo_push(
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{REG}/team/pod:v1"),
        false,
    );
    let root = work.path().join("root");
    let runroot = work.path().join("run");
    let conf = work.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nlocation = \"{REG}\"\ninsecure = true\n"),
    )
    .unwrap();
    let mut c = env.cmd(
        "podman",
        &[
            "--root",
            &root.to_string_lossy(),
            "--runroot",
            &runroot.to_string_lossy(),
            "--storage-driver",
            "vfs",
            "pull",
            "--tls-verify=false",
            &format!("{REG}/team/pod:v1"),
        ],
    );
    c.env("CONTAINERS_REGISTRIES_CONF", &conf);
    env.host.run(&mut c);
}

/// Debian's docker-registry on 127.0.0.1:`port` inside the namespace, logging requests.
fn upstream(env: &Env, dir: &Path, port: u16) -> PathBuf {
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

fn upstream_yaml(port: u16) -> String {
    format!(
        "registry:\n  upstreams:\n    - name: docker.io\n      url: http://127.0.0.1:{port}\n    - name: registry.k8s.io\n      url: http://127.0.0.1:{port}\n"
    )
}

/// Blob GETs the upstream served, by digest.
fn upstream_blob_gets(log: &Path) -> std::collections::HashMap<String, usize> {
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

#[test]
fn pull_through_containerd_singleflight_and_offline() {
    if !tools(&["skopeo", "docker-registry", "containerd", "ctr", "curl"]) {
        return;
    }
    let port = 5101;
    let env = Env::start("regpt", &upstream_yaml(port), &[]);
    let work = tempfile::tempdir().unwrap();
    let log = upstream(&env, work.path(), port);
    let up = format!("127.0.0.1:{port}");
    let img = work.path().join("img");
    layout(&img, "1.36", false, &[(400_000, 21), (300_000, 22)]);
    for name in ["library/busybox:1.36", "pause:3.10"] {
        env.run(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                &format!("oci:{}:1.36", img.display()),
                &format!("docker://{up}/{name}"),
            ],
        );
    }
    let big = work.path().join("big");
    layout(
        &big,
        "1",
        false,
        &[(3_000_000, 31), (2_000_000, 32), (1_000_000, 33)],
    );
    env.run(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", big.display()),
            &format!("docker://{up}/big:1"),
        ],
    );

    // containerd with hosts.toml as Slipway renders them.
    let certs = work.path().join("certs.d");
    for ns in ["docker.io", "registry.k8s.io"] {
        std::fs::create_dir_all(certs.join(ns)).unwrap();
        std::fs::write(
            certs.join(ns).join("hosts.toml"),
            format!("server = \"http://{up}\"\n\n[host.\"http://{REG}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"),
        )
        .unwrap();
    }
    let sock = work.path().join("containerd.sock");
    let cfg = work.path().join("containerd.toml");
    std::fs::write(
        &cfg,
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            work.path().join("ctr-root").display(),
            work.path().join("ctr-state").display(),
            sock.display()
        ),
    )
    .unwrap();
    env.host.spawn(
        env.cmd("containerd", &["--config", &cfg.to_string_lossy()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "containerd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sock_s = sock.to_string_lossy().into_owned();
    let hosts = certs.to_string_lossy().into_owned();
    for image in [
        "docker.io/library/busybox:1.36",
        "registry.k8s.io/pause:3.10",
    ] {
        env.run(
            "ctr",
            &[
                "-a",
                &sock_s,
                "images",
                "pull",
                "--snapshotter",
                "native",
                "--hosts-dir",
                &hosts,
                "--plain-http",
                image,
            ],
        );
    }
    // The mirror, not the upstream server entry, answered: both are stored under their names.
    let list = env.run(
        env!("CARGO_BIN_EXE_slipway"),
        &[
            "images",
            "list",
            "--storage",
            &env.storage().to_string_lossy(),
        ],
    );
    assert!(
        list.contains("docker.io/library/busybox") && list.contains("registry.k8s.io/pause"),
        "{list}"
    );
    let gets = upstream_blob_gets(&log);
    // Layers shared by both names were fetched once.
    assert!(gets.values().all(|&n| n == 1), "{gets:?}");

    // 20 clients asking for an uncached image at once: one upstream fetch per blob.
    let children: Vec<_> = (0..20)
        .map(|i| {
            let dest = work.path().join(format!("pull{i}"));
            env.cmd(
                "skopeo",
                &[
                    "copy",
                    "--src-tls-verify=false",
                    &format!("docker://{REG}/registry.k8s.io/big:1"),
                    &format!("dir:{}", dest.display()),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let gets = upstream_blob_gets(&log);
    let big_manifest: serde_json::Value = serde_json::from_str(&env.run(
        "curl",
        &[
            "-s",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!("http://{REG}/v2/registry.k8s.io/big/manifests/1"),
        ],
    ))
    .unwrap();
    let mut digests = vec![
        big_manifest["config"]["digest"]
            .as_str()
            .unwrap()
            .to_string(),
    ];
    for l in big_manifest["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_string());
    }
    for d in &digests {
        assert_eq!(
            gets.get(d),
            Some(&1),
            "{d} fetched {:?} times: {gets:?}",
            gets.get(d)
        );
    }

    // Offline: cached images still pull, nothing new is fetched.
    let mut env = env;
    env.restart(&["--registry-offline"]);
    let slipway = env.slipway.as_ref().unwrap();
    assert!(
        slipway
            .seen
            .iter()
            .any(|l| l.contains("registry serving") && l.contains("offline"))
    );

    let dest = work.path().join("offline");
    env.run(
        "skopeo",
        &[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{REG}/docker.io/library/busybox:1.36"),
            &format!("dir:{}", dest.display()),
        ],
    );
    env.run(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:1.36", img.display()),
            &format!("docker://{up}/library/fresh:1"),
        ],
    );
    let (code, body) = env.curl(&[
        "-I",
        &format!("http://{REG}/v2/library/fresh/manifests/1?ns=docker.io"),
    ]);
    assert_eq!(code, 404, "{body}");
}

#[test]
fn import_archives_then_serve_and_gc() {
    if !tools(&["skopeo", "curl"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    layout(&img, "x", false, &[(120_000, 41), (80_000, 42)]);
    let multi = work.path().join("multi");
    layout(&multi, "m", true, &[(30_000, 43)]);
    let oci = work.path().join("oci");
    std::fs::create_dir_all(&oci).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pause = oci.join("pause.tar");
    run(&[
        "skopeo",
        "copy",
        &format!("oci:{}:x", img.display()),
        &format!("oci-archive:{}:registry.k8s.io/pause:3.10", pause.display()),
    ]);
    let busybox = oci.join("busybox.tar");
    run(&[
        "skopeo",
        "copy",
        &format!("oci:{}:x", img.display()),
        &format!("docker-archive:{}:busybox:1.36", busybox.display()),
    ]);
    let flannel = oci.join("flannel.tar");
    run(&[
        "skopeo",
        "copy",
        "--all",
        &format!("oci:{}:m", multi.display()),
        &format!(
            "oci-archive:{}:ghcr.io/flannel-io/flannel:v0.26.1",
            flannel.display()
        ),
    ]);

    let storage = work.path().join("storage");
    let bin = env!("CARGO_BIN_EXE_slipway");
    let st = storage.to_string_lossy().into_owned();
    let out = run(&[
        bin,
        "images",
        "import",
        "--storage",
        &st,
        &oci.to_string_lossy(),
    ]);
    for want in [
        "registry.k8s.io/pause:3.10",
        "docker.io/library/busybox:1.36",
        "ghcr.io/flannel-io/flannel:v0.26.1",
    ] {
        assert!(out.contains(want), "{out}");
    }
    // --name, and an OCI layout directory.
    let tool = work.path().join("tool");
    let tool_digest = layout(&tool, "t", false, &[(10_000, 45)]);
    let out = run(&[
        bin,
        "images",
        "import",
        "--storage",
        &st,
        "--name",
        "quay.io/team/tool:2",
        &tool.to_string_lossy(),
    ]);
    assert!(
        out.contains(&format!("quay.io/team/tool:2 ({tool_digest})")),
        "{out}"
    );
    let list = run(&[bin, "images", "list", "--storage", &st]);
    assert_eq!(list.lines().count(), 5, "{list}");
    // A corrupt blob is refused and leaves nothing behind.
    let bad = work.path().join("bad");
    layout(&bad, "x", false, &[(1000, 44)]);
    let layer = std::fs::read_dir(bad.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    std::fs::write(&layer, b"tampered").unwrap();
    let out = Command::new(bin)
        .args([
            "images",
            "import",
            "--storage",
            &st,
            "--name",
            "bad/x:1",
            &bad.to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(uploads_left(&storage), 0);

    // Serve the imported storage (registry.storage in the description) and pull.
    let yaml = format!("registry:\n  storage: {st}\n");
    let mut env = Env::start("regimp", &yaml, &["--registry-offline"]);
    let dest = work.path().join("pulled");
    for r in [
        "registry.k8s.io/pause:3.10",
        "docker.io/library/busybox:1.36",
    ] {
        env.run(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{REG}/{r}"),
                &format!("dir:{}", dest.display()),
            ],
        );
    }
    env.run(
        "skopeo",
        &[
            "copy",
            "--all",
            "--src-tls-verify=false",
            &format!("docker://{REG}/ghcr.io/flannel-io/flannel:v0.26.1"),
            &format!("oci:{}:f", work.path().join("f").display()),
        ],
    );
    let (code, _) = env.curl(&[
        "-I",
        &format!("http://{REG}/v2/pause/manifests/3.10?ns=registry.k8s.io"),
    ]);
    assert_eq!(code, 200);

    // gc refuses while serve holds the storage; afterwards it removes only orphans.
    let out = Command::new(bin)
        .args(["images", "gc", "--storage", &st])
        .output()
        .unwrap();
    assert!(!out.status.success(), "gc must refuse while serve runs");
    let auth = format!("Authorization: Bearer {}", env.token);
    let (code, _) = env.curl(&[
        "-X",
        "DELETE",
        "-H",
        &auth,
        &format!("http://{REG}/v2/quay.io/team/tool/manifests/{tool_digest}"),
    ]);
    assert_eq!(code, 202);
    env.stop();
    let before = blob_files(&storage);
    let out = run(&[bin, "images", "gc", "--storage", &st]);
    assert!(out.starts_with("removed "), "{out}");
    let after = blob_files(&storage);
    // The tool's manifest, config and layer were referenced by nothing else.
    assert!(before - after >= 3, "{before} -> {after}: {out}");
    // What is still tagged still pulls (offline, straight from the files).
    let mut env = Env::start("regimp2", &yaml, &["--registry-offline"]);
    for r in [
        "registry.k8s.io/pause:3.10",
        "docker.io/library/busybox:1.36",
    ] {
        env.run(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                &format!("docker://{REG}/{r}"),
                &format!("dir:{}", work.path().join("again").display()),
            ],
        );
    }
    env.stop();
}

#[test]
fn fetch_images_script_dry_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/fetch-images.sh");
    let out = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("bash")
        .arg(&script)
        .env("SLIPWAY", env!("CARGO_BIN_EXE_slipway"))
        .args(["--dry-run", "-c"])
        .arg(root.join("cluster-desc.example.yaml"))
        .args(["-o", "/nonexistent-images"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "copy docker://registry.k8s.io/pause:3.10 oci-archive:/nonexistent-images/oci/registry.k8s.io_pause_3.10.tar:registry.k8s.io/pause:3.10",
        "nvcr.io/nvidia/k8s-device-plugin:v0.16.2",
        "https://stable.release.flatcar-linux.net/amd64-usr/4081.2.0/flatcar_production_pxe.vmlinuz",
        "https://dl.k8s.io/release/v1.31.4/bin/linux/amd64/kubeadm",
        "kubeadm.sha256",
        "undionly.kpxe",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    assert!(!Path::new("/nonexistent-images").exists());
}
