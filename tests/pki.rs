//! `slipway pki renew` and `slipway pki show` as an operator runs them: renew creates the
//! PKI in an empty state directory and records an event per secret, show lists it without
//! changing anything, a second renew replaces the leaves and keeps the CAs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cluster-desc.example.yaml")
}

fn slipway(args: &[&str], state_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .arg("-c")
        .arg(example())
        .arg("--state-dir")
        .arg(state_dir)
        .env_remove("SLIPWAY_CONFIG")
        .env_remove("SLIPWAY_STATE_DIR")
        .output()
        .expect("slipway runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `name -> full row` of the show table.
fn rows(table: &str) -> Vec<(String, String)> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            (
                l.split_whitespace().next().unwrap().to_string(),
                l.to_string(),
            )
        })
        .collect()
}

#[test]
fn pki_show_lists_what_renew_created() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let empty = slipway(&["pki", "show"], &state);
    assert!(
        !empty.status.success(),
        "show on an empty state dir must fail"
    );
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no PKI"));
    assert!(!state.join("pki").exists(), "show must not create the PKI");

    let created = stdout(&slipway(&["pki", "renew"], &state));
    assert!(created.contains("ca issued (was missing)"), "{created}");
    assert!(
        created.contains("apiserver issued (was missing)"),
        "{created}"
    );
    assert!(!created.contains("PRIVATE KEY"));

    let before = stdout(&slipway(&["pki", "show"], &state));
    let table = rows(&before);
    assert!(before.starts_with("NAME"), "{before}");
    let names: Vec<&str> = table.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[..4],
        ["ca", "etcd/ca", "front-proxy-ca", "apiserver"]
    );
    assert_eq!(names.len(), 3 + 6 + 3 * 3);
    let api = &table[3].1;
    for want in [
        "CN=kube-apiserver",
        "kubernetes.default.svc.cluster.local",
        "10.96.0.1",
        "10.20.0.10",
        "api.rack1.example.internal",
        " UTC",
    ] {
        assert!(api.contains(want), "{want} missing from {api}");
    }
    // show changed nothing.
    assert_eq!(stdout(&slipway(&["pki", "show"], &state)), before);

    let read = |rel: &str| std::fs::read(state.join("pki").join(rel)).unwrap();
    let cas_before: Vec<Vec<u8>> = ["ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"]
        .map(read)
        .into();
    let api_before = read("apiserver.crt");
    let renewed = stdout(&slipway(&["pki", "renew"], &state));
    assert_eq!(renewed.lines().count(), 6 + 3 * 3, "{renewed}");
    assert!(
        renewed.lines().all(|l| l.contains("(renewed)")),
        "{renewed}"
    );
    let after = stdout(&slipway(&["pki", "show"], &state));
    assert_eq!(rows(&after)[..3], table[..3]);
    let cas_after: Vec<Vec<u8>> = ["ca.crt", "etcd/ca.crt", "front-proxy-ca.crt"]
        .map(read)
        .into();
    assert_eq!(cas_after, cas_before, "CAs unchanged");
    assert_ne!(read("apiserver.crt"), api_before, "leaves re-issued");

    // Each issued secret became a `secret.issued` event in the store.
    let store = slipway::store::open(&state).unwrap();
    use slipway::store::Store;
    let events = store.recent_events(1000).unwrap();
    let issued = events.iter().filter(|e| e.kind == "secret.issued").count();
    assert_eq!(issued, created.lines().count() + renewed.lines().count());
}

/// `slipway render --show-secrets --what node-ignition` for `node`, as (path -> contents)
/// of the files it writes.
fn node_files(state: &Path, node: &str) -> std::collections::BTreeMap<String, String> {
    use base64::Engine as _;
    let out = stdout(&slipway(
        &[
            "render",
            "--node",
            node,
            "--what",
            "node-ignition",
            "--show-secrets",
        ],
        state,
    ));
    let ign: serde_json::Value = serde_json::from_str(&out).unwrap();
    ign["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| {
            let b64 = f["contents"]["source"]
                .as_str()?
                .strip_prefix("data:;base64,")?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            Some((
                f["path"].as_str().unwrap().to_string(),
                String::from_utf8(bytes).unwrap(),
            ))
        })
        .collect()
}

/// The JSON value after `key: ` on the first line of `yaml` that has it (the kubeadm
/// template writes every value JSON-encoded).
fn yaml_value(yaml: &str, key: &str) -> serde_json::Value {
    let line = yaml
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in {yaml}"));
    serde_json::from_str(line).unwrap_or_else(|_| serde_json::Value::String(line.to_string()))
}

/// Whether openssl matches `name` (DNS name or IP) against the certificate in `pem`.
fn matches(pem: &str, name: &str) -> bool {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), pem).unwrap();
    let flag = if name.parse::<std::net::IpAddr>().is_ok() {
        "-checkip"
    } else {
        "-checkhost"
    };
    let out = Command::new("openssl")
        .args(["x509", "-noout", flag, name, "-in"])
        .arg(f.path())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("match certificate"), "openssl: {text}");
    !text.contains("does NOT match")
}

/// kubeadm (v1.31) uses a certificate it finds in /etc/kubernetes/pki only if it verifies
/// every name of its own list for that certificate (`validateCertificateWithConfig`:
/// `VerifyHostname` per DNS name and IP), else `kubeadm init`/`join --control-plane` stops
/// with "certificate apiserver is invalid". Those lists are rebuilt here from the rendered
/// kubeadm configuration (cmd/kubeadm/app/util/pkiutil: GetAPIServerAltNames, getAltNames)
/// and matched against the certificates each control-plane node gets, by openssl.
#[test]
fn kubeadm_accepts_the_pre_issued_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let init = node_files(&state, "cp-1");
    let cluster = &init["/etc/slipway/kubeadm.yaml"];
    assert!(cluster.contains("kind: ClusterConfiguration"), "{cluster}");
    let dns_domain = yaml_value(cluster, "dnsDomain");
    let service_subnet = yaml_value(cluster, "serviceSubnet");
    let endpoint = yaml_value(cluster, "controlPlaneEndpoint");
    let cert_sans = yaml_value(cluster, "certSANs");
    // The first address of the service subnet: the `kubernetes` Service's ClusterIP.
    let net: std::net::Ipv4Addr = service_subnet
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let first_service_ip = std::net::Ipv4Addr::from(u32::from(net) + 1).to_string();
    let endpoint_host = endpoint
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .0
        .to_string();

    for node in ["cp-1", "cp-2", "cp-3"] {
        let files = if node == "cp-1" {
            init.clone()
        } else {
            node_files(&state, node)
        };
        let kubeadm = &files["/etc/slipway/kubeadm.yaml"];
        let name = yaml_value(kubeadm, "name").as_str().unwrap().to_string();
        let advertise = yaml_value(kubeadm, "advertiseAddress")
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(name, node);

        let mut apiserver = vec![
            name.clone(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            format!("kubernetes.default.svc.{}", dns_domain.as_str().unwrap()),
            first_service_ip.clone(),
            advertise.clone(),
            endpoint_host.clone(),
        ];
        apiserver.extend(
            cert_sans
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string()),
        );
        let etcd = [
            name.clone(),
            "localhost".into(),
            advertise.clone(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        let pki = |p: &str| &files[&format!("/etc/kubernetes/pki/{p}")];
        for (cert, names) in [
            ("apiserver.crt", &apiserver[..]),
            ("etcd/server.crt", &etcd[..]),
            ("etcd/peer.crt", &etcd[..]),
        ] {
            for n in names {
                assert!(matches(pki(cert), n), "{node}: {cert} does not cover {n}");
            }
        }
        // The check has teeth: the node domain in place of kubeadm's dnsDomain, another
        // node's address.
        assert!(!matches(
            pki("apiserver.crt"),
            "kubernetes.default.svc.rack1.example.internal"
        ));
        assert!(!matches(pki("etcd/server.crt"), "10.20.0.99"));
    }
}

/// Every file under `<state>/pki`, by relative path.
fn pki_snapshot(state: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, at: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(at).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(&state.join("pki"), &state.join("pki"), &mut out);
    out
}

fn is_rsa_2048(key: &Path) -> bool {
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(key)
        .output()
        .expect("openssl runs");
    String::from_utf8_lossy(&out.stdout).contains("Private-Key: (2048 bit")
}

/// Runs `slipway serve` (HTTP on loopback, nothing else) until it is serving, then stops it
/// with SIGTERM; returns its log.
fn serve_once(state: &Path) -> String {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["serve", "--http-listen", "127.0.0.1:0"])
        .args(["--disable", "dhcp", "--disable", "dns"])
        .args(["--disable", "tftp", "--disable", "registry", "-c"])
        .arg(example())
        .arg("--state-dir")
        .arg(state)
        .env_remove("SLIPWAY_CONFIG")
        .env_remove("SLIPWAY_STATE_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("slipway serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    loop {
        match rx.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("slipway serving") {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("serve did not start:\n{log}");
            }
        }
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    // "serving" is logged (after the PKI is loaded) just before the SIGTERM handler is
    // installed; a signal in between ends it by the default action, which is fine here.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(libc::SIGTERM),
        "serve exited with {status}:\n{log}"
    );
    log.extend(rx.try_iter().map(|l| l + "\n"));
    log
}

/// An RSA cluster stays RSA: `render` and `serve` without `--key-algorithm` change no byte
/// of the PKI (before, both re-issued every leaf as ECDSA), and `pki renew` without it
/// issues RSA leaves again.
#[test]
fn rsa_pki_is_kept_by_render_serve_and_renew_without_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    stdout(&slipway(
        &["pki", "renew", "--key-algorithm", "rsa2048"],
        &state,
    ));
    let pki = state.join("pki");
    for key in [
        "ca.key",
        "apiserver.key",
        "etcd/cp-1/peer.key",
        "slipway.key",
    ] {
        assert!(is_rsa_2048(&pki.join(key)), "{key} is not RSA 2048");
    }
    let before = pki_snapshot(&state);

    for what in ["node-ignition", "ignition"] {
        stdout(&slipway(
            &["render", "--node", "cp-1", "--what", what, "--show-secrets"],
            &state,
        ));
    }
    stdout(&slipway(
        &["render", "--node", "worker-1", "--what", "ignition"],
        &state,
    ));
    assert!(pki_snapshot(&state) == before, "render changed the PKI");

    let log = serve_once(&state);
    assert!(
        pki_snapshot(&state) == before,
        "serve changed the PKI:\n{log}"
    );
    let store = slipway::store::open(&state).unwrap();
    use slipway::store::Store;
    let issued_events = |s: &dyn Store| {
        s.recent_events(1000)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "secret.issued")
            .count()
    };
    let events = issued_events(&store);
    drop(store);

    let renewed = stdout(&slipway(&["pki", "renew"], &state));
    assert!(renewed.contains("apiserver issued (renewed)"), "{renewed}");
    assert!(!renewed.contains("another algorithm"), "{renewed}");
    for key in ["apiserver.key", "etcd/cp-1/peer.key", "admin.key"] {
        assert!(is_rsa_2048(&pki.join(key)), "{key} is no longer RSA 2048");
    }
    assert_ne!(pki_snapshot(&state), before, "renew re-issued the leaves");
    let store = slipway::store::open(&state).unwrap();
    assert_eq!(issued_events(&store), events + renewed.lines().count());
}

/// A real TLS server (openssl s_server) on loopback standing where the API server would:
/// it presents `cert`, requires a client certificate from `client_ca`, prints what the
/// client sends, sends what is written to its stdin, and exits after one connection.
/// Returns the process and its port once it listens.
fn tls_server(cert: &Path, key: &Path, client_ca: &Path) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
        .arg(cert)
        .arg("-key")
        .arg(key)
        .arg("-CAfile")
        .arg(client_ca)
        .args(["-Verify", "1", "-verify_return_error", "-naccept", "1"])
        // -quiet: what the client sends goes to stdout as it is.
        .args(["-ign_eof", "-quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server starts");
    // Ready once the port is listening (a probe connection would use up its one accept).
    let listening = format!("0100007F:{port:04X} 00000000:0000 0A");
    while !std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .contains(&listening)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    (child, port)
}

/// Slipway creates its bootstrap token's Secret through the API server (so nodes installed
/// after kubeadm init's token expired can still join): mutual TLS with the cluster CA and
/// the admin certificate, the API server verified by the endpoint name, a POST of the
/// bootstrap-token Secret. A server whose certificate is not from the cluster CA is refused.
#[test]
fn bootstrap_token_is_posted_to_the_api_server_over_mutual_tls() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    stdout(&slipway(&["pki", "renew"], &state));
    let plan = slipway::plan::Plan::from_desc(
        &slipway::desc::load(&example()).unwrap_or_else(|e| panic!("{e}")),
    );
    let pki = slipway::pki::Pki::load_read_only(&state, &plan).unwrap();
    let token = pki.bootstrap_token().clone();
    let admin = pki.admin_client();
    let p = state.join("pki");
    let register = {
        let (admin, token) = (admin.clone(), token.clone());
        let (fqdn, cluster) = (
            plan.cluster.endpoint.fqdn.clone(),
            plan.cluster.name.clone(),
        );
        move |port: u16| {
            let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(slipway::pki::cluster::register_token(
                    &admin, addr, &fqdn, &token, &cluster,
                ))
        }
    };

    let (mut server, port) = tls_server(
        &p.join("apiserver.crt"),
        &p.join("apiserver.key"),
        &p.join("ca.crt"),
    );
    let client = {
        let register = register.clone();
        std::thread::spawn(move || register(port))
    };
    // Read the request (headers, then Content-Length bytes of body), then answer it.
    let mut out = server.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let body_at = loop {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "no request: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .expect("Content-Length")
                .trim()
                .parse()
                .unwrap();
            if seen.len() >= end + 4 + len {
                break end + 4;
            }
        }
    };
    use std::io::Write;
    let mut stdin = server.stdin.take().unwrap();
    stdin
        .write_all(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    stdin.flush().unwrap();
    let created = client.join().unwrap();
    drop(stdin);
    let _ = server.kill();
    let _ = server.wait();
    let head = String::from_utf8_lossy(&seen[..body_at]).to_string();
    assert!(matches!(created, Ok(true)), "{created:?}\n{head}");
    assert!(
        head.starts_with("POST /api/v1/namespaces/kube-system/secrets HTTP/1.1\r\n"),
        "{head}"
    );
    let secret: serde_json::Value = serde_json::from_slice(&seen[body_at..]).unwrap();
    assert_eq!(
        secret,
        slipway::pki::cluster::token_secret(&token, &plan.cluster.name)
    );
    assert_eq!(secret["stringData"]["token-id"], token.id());

    // A server the cluster CA did not certify is not talked to.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/CN=kube-apiserver", "-days", "1"])
        .args(["-addext", "subjectAltName=DNS:api.rack1.example.internal"])
        .arg("-keyout")
        .arg(other.join("k.pem"))
        .arg("-out")
        .arg(other.join("c.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (mut server, port) = tls_server(
        &other.join("c.pem"),
        &other.join("k.pem"),
        &p.join("ca.crt"),
    );
    let refused = register(port);
    let _ = server.kill();
    let _ = server.wait();
    let msg = format!("{refused:?}");
    assert!(
        matches!(
            refused,
            Err(slipway::pki::cluster::ClusterError::Connect { .. })
        ) && msg.contains("TLS"),
        "{msg}"
    );
}
