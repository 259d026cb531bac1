//! `registry.tls` and `bootstrapper.ports.https`: the registry and the status API over
//! HTTPS with Slipway's certificate, checked by real clients that trust only the cluster
//! CA: curl --cacert (by address and by the names in the certificate), skopeo with
//! certs.d-style --dest-cert-dir/--src-cert-dir, and containerd's ctr with the hosts.toml
//! and ca.crt Slipway renders for a node. Plain HTTP to the TLS port gets a 400, a client
//! that never finishes its handshake does not hold up the others, and a certificate
//! re-issued on reload is served without a restart.

mod common;
mod registry_support;

use std::process::Stdio;

use common::TestDesc;
use registry_support::*;

#[test]
fn registry_and_api_over_https_with_the_cluster_ca() {
    if !tools(&["skopeo", "curl", "containerd", "ctr", "bash"]) {
        return;
    }
    let yaml = TestDesc::default().yaml().replace(
        "  address: 10.20.0.2\n",
        "  address: 10.20.0.2\n  ports:\n    https: 8443\n",
    ) + "registry:\n  tls: true\n";
    // Offline: the image is pushed under docker.io's name and must not be looked up there.
    let mut env = Env::start_yaml("regtls", &yaml, &["--registry-offline"]);
    let slipway = env.slipway.as_ref().unwrap();
    assert!(
        slipway
            .seen
            .iter()
            .any(|l| l.contains("registry serving") && l.contains("\"tls\":true")),
        "{:?}",
        slipway.seen
    );
    assert!(slipway.seen.iter().any(|l| l.contains("HTTPS serving")));
    let work = tempfile::tempdir().unwrap();
    let ca = env.dir().join("state/pki/ca.crt");
    let ca_s = ca.to_string_lossy().into_owned();
    let auth = format!("Authorization: Bearer {}", env.token);

    // curl trusting only the cluster CA: by address, and by each name the certificate has.
    let (code, body) = env.curl(&[
        "--cacert",
        &ca_s,
        "-H",
        &auth,
        &format!("https://{REG}/v2/"),
    ]);
    assert_eq!(code, 200, "{body}");
    for name in ["registry.lab.test", "slipway.lab.test"] {
        let (code, body) = env.curl(&[
            "--cacert",
            &ca_s,
            "--resolve",
            &format!("{name}:5000:10.20.0.2"),
            "-H",
            &auth,
            &format!("https://{name}:5000/v2/"),
        ]);
        assert_eq!(code, 200, "{name}: {body}");
    }
    // Verification has teeth: without the CA, and for a name not in the certificate, no.
    let (code, _) = env.curl(&["-H", &auth, &format!("https://{REG}/v2/")]);
    assert_eq!(
        code, 0,
        "curl trusted Slipway's certificate without the cluster CA"
    );
    let (code, _) = env.curl(&[
        "--cacert",
        &ca_s,
        "--resolve",
        "elsewhere.lab.test:5000:10.20.0.2",
        "https://elsewhere.lab.test:5000/v2/",
    ]);
    assert_eq!(
        code, 0,
        "a name outside the certificate's SANs was accepted"
    );

    // Plain HTTP to the TLS port: a 400 that says why (curl's own --max-time ends a hang).
    let (code, body) = env.curl(&["--max-time", "20", &format!("http://{REG}/v2/")]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("speaks HTTPS"), "{body}");
    // A client that connects and never sends a byte holds up nobody.
    let mut silent = env
        .cmd(
            "bash",
            &[
                "-c",
                "exec 3<>/dev/tcp/10.20.0.2/5000; echo connected; sleep 60",
            ],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(silent.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "connected");
    let (code, body) = env.curl(&[
        "--max-time",
        "20",
        "--cacert",
        &ca_s,
        "-H",
        &auth,
        &format!("https://{REG}/v2/"),
    ]);
    assert_eq!(code, 200, "{body}");

    // skopeo with a certs.d-style directory holding the CA: push, inspect, pull.
    let cert_dir = work.path().join("skopeo-certs");
    std::fs::create_dir_all(&cert_dir).unwrap();
    std::fs::copy(&ca, cert_dir.join("ca.crt")).unwrap();
    let cert_dir_s = cert_dir.to_string_lossy().into_owned();
    let img = work.path().join("img");
    layout(&img, "1.36", false, &[(200_000, 61), (100_000, 62)]);
    let creds = format!("x:{}", env.token);
    env.run(
        "skopeo",
        &[
            "copy",
            "--dest-cert-dir",
            &cert_dir_s,
            "--dest-creds",
            &creds,
            &format!("oci:{}:1.36", img.display()),
            &format!("docker://{REG}/docker.io/library/busybox:1.36"),
        ],
    );
    let pulled = work.path().join("pulled");
    env.run(
        "skopeo",
        &[
            "copy",
            "--src-cert-dir",
            &cert_dir_s,
            &format!("docker://{REG}/docker.io/library/busybox:1.36"),
            &format!("dir:{}", pulled.display()),
        ],
    );
    assert!(pulled.join("manifest.json").exists());
    let untrusted = env
        .cmd(
            "skopeo",
            &[
                "inspect",
                "--raw",
                &format!("docker://{REG}/docker.io/library/busybox:1.36"),
            ],
        )
        .output()
        .unwrap();
    assert!(
        !untrusted.status.success(),
        "skopeo trusted Slipway's certificate without the cluster CA"
    );

    // containerd with exactly the certs.d files a node gets: https:// and the CA beside it.
    let certs = work.path().join("certs.d");
    let rendered = env.rendered_certs_d("worker-1", &certs);
    assert!(
        rendered.contains(&"docker.io/ca.crt".to_string()),
        "{rendered:?}"
    );
    let hosts = std::fs::read_to_string(certs.join("docker.io/hosts.toml")).unwrap();
    assert!(
        hosts.contains(&format!("[host.\"https://{REG}\"]")),
        "{hosts}"
    );
    assert!(!hosts.contains("skip_verify"), "{hosts}");
    assert_eq!(
        std::fs::read_to_string(certs.join("docker.io/ca.crt")).unwrap(),
        std::fs::read_to_string(&ca).unwrap()
    );
    let sock = env.containerd(work.path());
    let certs_s = certs.to_string_lossy().into_owned();
    let pull = [
        "-a",
        &sock,
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        &certs_s,
        "docker.io/library/busybox:1.36",
    ];
    // containerd does verify: with another CA (the etcd CA) in place, the pull fails.
    std::fs::copy(
        env.dir().join("state/pki/etcd/ca.crt"),
        certs.join("docker.io/ca.crt"),
    )
    .unwrap();
    let refused = env.cmd("ctr", &pull).output().unwrap();
    assert!(
        !refused.status.success(),
        "ctr pulled through a certificate it should not trust"
    );
    std::fs::copy(&ca, certs.join("docker.io/ca.crt")).unwrap();
    env.run("ctr", &pull);
    let listed = env.run("ctr", &["-a", &sock, "images", "ls", "-q"]);
    assert!(
        listed.contains("docker.io/library/busybox:1.36"),
        "{listed}"
    );

    // The status API on its HTTPS port, same certificate; plain HTTP stays on 8080.
    let (code, body) = env.curl(&["--cacert", &ca_s, "https://10.20.0.2:8443/healthz"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (code, body) = env.curl(&["--cacert", &ca_s, "https://10.20.0.2:8443/api/v1/plan"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"registry_tls\":true"), "{body}");
    let (code, _) = env.curl(&["http://10.20.0.2:8080/healthz"]);
    assert_eq!(code, 200);
    let (code, body) = env.curl(&["--max-time", "20", "http://10.20.0.2:8443/healthz"]);
    assert_eq!(code, 400, "{body}");

    // A reload that renames the bootstrapper re-issues the certificate, and the new name
    // is served at once, without a restart.
    let gateway = |env: &Env| {
        env.curl(&[
            "--cacert",
            &ca_s,
            "--resolve",
            "gateway.lab.test:5000:10.20.0.2",
            "-H",
            &auth,
            "https://gateway.lab.test:5000/v2/",
        ])
        .0
    };
    assert_eq!(gateway(&env), 0, "a name the certificate does not have yet");
    let renamed = yaml.replace(
        "  address: 10.20.0.2\n",
        "  address: 10.20.0.2\n  hostname: gateway\n",
    );
    env.slipway.as_mut().unwrap().reload(&renamed);
    assert_eq!(gateway(&env), 200);

    // SIGTERM stops it cleanly although the silent client is still connected.
    let slipway = env.slipway.as_mut().unwrap();
    slipway.signal(libc::SIGTERM);
    slipway.wait_log("slipway stopped");
    assert!(
        !slipway.seen.iter().any(|l| l.contains("still open after")),
        "{:?}",
        slipway.seen
    );
    let _ = silent.kill();
    let _ = silent.wait();
}
