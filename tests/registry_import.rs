//! `slipway images import|list|gc` on archives made by skopeo (oci-archive, docker-archive,
//! multi-arch) and OCI layouts, then served and pulled; gc's exclusion of a running serve.

mod common;
mod registry_support;

use std::process::Command;

use registry_support::*;

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
