//! Pull-through with real clients: containerd's ctr through hosts.toml mirrors and skopeo,
//! against Debian's docker-registry as the upstream; singleflight counted in the upstream's
//! access log; offline mode.

mod common;
mod registry_support;

use std::process::Stdio;

use registry_support::*;

#[test]
fn pull_through_containerd_singleflight_and_offline() {
    if !tools(&["skopeo", "docker-registry", "containerd", "ctr", "curl"]) {
        return;
    }
    let port = 5101;
    let yaml = format!(
        "{}images:\n  - docker.io/library/warm:1\n",
        upstream_yaml(port)
    );
    let mut env = Env::start("regpt", &yaml, &[]);
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

    // Images the description lists are cached when serve starts, before any node asks
    // (the upstream was not up at the first start: restart).
    let warm = work.path().join("warm");
    layout(&warm, "1", false, &[(200_000, 51)]);
    env.run(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:1", warm.display()),
            &format!("docker://{up}/library/warm:1"),
        ],
    );
    env.restart(&[]);
    env.slipway
        .as_mut()
        .unwrap()
        .wait_log("image cached ahead of time");
    let storage = env.storage().to_string_lossy().into_owned();
    let list = env.run(
        env!("CARGO_BIN_EXE_slipway"),
        &["images", "list", "--storage", &storage],
    );
    assert!(list.contains("docker.io/library/warm"), "{list}");

    // containerd with the hosts.toml files Slipway renders for a node (its installed
    // system's Ignition): a template that no longer works with containerd fails here.
    let certs = work.path().join("certs.d");
    let rendered = env.rendered_certs_d("worker-1", &certs);
    for ns in ["docker.io", "registry.k8s.io"] {
        let file = format!("{ns}/hosts.toml");
        assert!(rendered.contains(&file), "{rendered:?}");
        let text = std::fs::read_to_string(certs.join(&file)).unwrap();
        assert!(text.contains(&format!("[host.\"http://{REG}\"]")), "{text}");
    }
    let sock_s = env.containerd(work.path());
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
