//! `slipway serve` as a process: it refuses an invalid description, serves /healthz and the
//! plan over HTTP (checked with curl), keeps the old plan when SIGHUP brings an invalid file,
//! applies a valid one, stops cleanly on SIGTERM, and its store survives the restart.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

fn example() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-desc.example.yaml"))
        .unwrap()
}

struct Server {
    child: Child,
    logs: Receiver<String>,
    seen: Vec<String>,
    addr: String,
}

impl Server {
    fn start(config: &Path, state: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args([
                "--log-format",
                "json",
                "serve",
                "--http-listen",
                "127.0.0.1:0",
                "--disable",
                "dhcp",
                "--disable",
                "dns",
                "--disable",
                "tftp",
                "--disable",
                "registry",
                "-c",
            ])
            .arg(config)
            .arg("--state-dir")
            .arg(state)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, logs) = channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            child,
            logs,
            seen: Vec::new(),
            addr: String::new(),
        };
        let line = s.wait_log("slipway serving");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        s.addr = v["fields"]["http_addr"].as_str().unwrap().to_string();
        s
    }

    /// Waits for a log line containing `needle` (20 s at most).
    fn wait_log(&mut self, needle: &str) -> String {
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

    fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// GET with curl; returns (status, headers, body).
    fn get(&self, path: &str) -> (u16, String, String) {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .arg(format!("http://{}{path}", self.addr))
            .output()
            .expect("curl runs");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, head.to_lowercase(), body.to_string())
    }

    fn plan_nodes(&self) -> (usize, String) {
        let (status, head, body) = self.get("/api/v1/plan");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let generation = head
            .lines()
            .find_map(|l| l.strip_prefix("x-slipway-plan-generation: "))
            .unwrap()
            .trim()
            .to_string();
        (v["nodes"].as_array().unwrap().len(), generation)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cluster-desc.yaml");
    let state = dir.path().join("state");
    (dir, config, state)
}

#[test]
fn refuses_to_start_on_an_invalid_description() {
    let (_dir, config, state) = temp();
    std::fs::write(
        &config,
        example().replacen("role: control-plane", "role: controlplane", 1),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["serve", "--http-listen", "127.0.0.1:0", "-c"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid role `controlplane`")
            && stderr.contains("did you mean `control-plane`"),
        "{stderr}"
    );
    assert!(stderr.contains("refusing to start"), "{stderr}");
}

#[test]
fn serves_reloads_on_sighup_and_stops_cleanly() {
    let (_dir, config, state) = temp();
    let valid = example();
    std::fs::write(&config, &valid).unwrap();
    let mut server = Server::start(&config, &state);

    let (status, _, body) = server.get("/healthz");
    assert_eq!(status, 200);
    assert!(body.contains("\"ok\""), "{body}");
    assert_eq!(server.plan_nodes(), (9, "1".to_string()));
    let (status, _, body) = server.get("/no/such/../path");
    assert_eq!(status, 404);
    assert!(!body.contains(state.to_str().unwrap()));

    // An invalid file on SIGHUP: errors logged, old plan still served.
    std::fs::write(&config, valid.replace("10.20.0.0/24", "10.20.0.0/33")).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("still serving the previous plan");
    assert!(
        server.seen.iter().any(|l| l.contains("invalid CIDR")),
        "errors are logged"
    );
    assert_eq!(server.plan_nodes(), (9, "1".to_string()));

    // A valid change on SIGHUP applies: drop worker-4 (its entry ends at a blank line).
    let start = valid
        .find("  - mac: 3c:ec:ef:10:00:24")
        .expect("worker-4 in the example");
    let end = start
        + valid[start..]
            .find("\n\n")
            .expect("blank line after worker-4")
        + 1;
    let fewer = format!("{}{}", &valid[..start], &valid[end..]);
    std::fs::write(&config, &fewer).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("SIGHUP: reloaded");
    assert_eq!(server.plan_nodes(), (8, "2".to_string()));

    server.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");

    // The store kept every event across the stop, and a second start opens it again.
    let store = slipway::store::open(&state).unwrap();
    use slipway::store::Store;
    let kinds: Vec<String> = store
        .recent_events(100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for k in [
        "serve.started",
        "plan.reload_failed",
        "plan.reloaded",
        "serve.stopped",
    ] {
        assert!(kinds.iter().any(|x| x == k), "no {k} event in {kinds:?}");
    }
    drop(store);
    let mut again = Server::start(&config, &state);
    assert_eq!(again.plan_nodes().0, 8);
    again.signal(libc::SIGINT);
    again.wait_log("slipway stopped");
}
