//! The registry API with real clients: skopeo (push/pull, multi-arch, 20 concurrent pulls),
//! podman, curl for headers, ranges, pagination, uploads and refusals; and the
//! fetch-images.sh dry run. Each test runs Slipway in its own network namespace. Under
//! CI=true a missing tool fails the test.

mod common;
mod registry_support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use registry_support::*;

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
        "https://github.com/containernetworking/plugins/releases/download/v1.5.1/cni-plugins-linux-amd64-v1.5.1.tgz",
        // Served to nodes as /assets/cni/v1.5.1/... (the plan's assets.cni_plugins).
        "/nonexistent-images/cni/v1.5.1/cni-plugins-linux-amd64-v1.5.1.tgz.sha256",
        "undionly.kpxe",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    // 4081.2.0 predates Flatcar's NVIDIA driver extensions: none to fetch, and a warning.
    assert!(!text.contains("nvidia-drivers"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no prebuilt NVIDIA driver extension"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new("/nonexistent-images").exists());

    // A release with them: the GPU nodes' driver extension of the description's branch, in
    // the directory the plan's assets.nvidia_drivers_sysext URL serves.
    let dir = tempfile::tempdir().unwrap();
    let desc = dir.path().join("cluster-desc.yaml");
    let example = std::fs::read_to_string(root.join("cluster-desc.example.yaml")).unwrap();
    std::fs::write(
        &desc,
        example
            .replace("version: \"4081.2.0\"", "version: \"4459.2.0\"")
            .replace("nvidia_driver: \"570\"", "nvidia_driver: 570-open"),
    )
    .unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .env("SLIPWAY", env!("CARGO_BIN_EXE_slipway"))
        .args(["--dry-run", "-c"])
        .arg(&desc)
        .args(["-o", "/nonexistent-images"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for want in [
        "curl -fL -o /nonexistent-images/os/flatcar/stable/amd64-usr/4459.2.0/flatcar-nvidia-drivers-570-open.raw https://stable.release.flatcar-linux.net/amd64-usr/4459.2.0/flatcar-nvidia-drivers-570-open.raw",
        "flatcar-nvidia-drivers-570-open.raw.sig",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}
