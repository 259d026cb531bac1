//! What `slipway render` prints for each role x profile x GPU passes the real validators
//! (ignition-validate, cloud-init schema, kubernetes-validate), and matches the golden
//! snapshots in tests/data/golden (secrets redacted, file contents decoded so a diff is
//! readable). `UPDATE_GOLDEN=1 cargo test --test render_validate` rewrites the snapshots.

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether a validator is installed; in CI a missing one is a failure.
fn have(tool: &str) -> bool {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(!ci(), "{tool} must be installed in CI (scripts/test.sh)");
        eprintln!("SKIPPED: {tool} not installed");
    }
    ok
}

struct Desc {
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn desc(profile: &str) -> Desc {
    let text = std::fs::read_to_string(manifest_dir().join("cluster-desc.example.yaml")).unwrap();
    let text = match profile {
        "flatcar" => text,
        // A release with Flatcar's prebuilt NVIDIA driver extension (4344.0.0 and later).
        "flatcar-sysext" => text.replace("version: \"4081.2.0\"", "version: \"4459.2.0\""),
        "ubuntu" => text
            .replace("profile: flatcar", "profile: ubuntu")
            .replace("version: \"4081.2.0\"", "version: \"24.04\""),
        _ => unreachable!(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster-desc.yaml");
    std::fs::write(&path, text).unwrap();
    Desc { dir, path }
}

fn render(d: &Desc, node: &str, what: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["render", "-c"])
        .arg(&d.path)
        .arg("--state-dir")
        .arg(d.dir.path().join("state"))
        .args(["--node", node, "--what", what])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "render {node} {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn validate(tool: &[&str], text: &str, ext: &str) -> (bool, String) {
    let f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
    std::fs::write(f.path(), text).unwrap();
    let out = Command::new(tool[0])
        .args(&tool[1..])
        .arg(f.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An Ignition config as readable text: each file's path, mode and decoded contents, then
/// links and units.
fn decoded(ign: &serde_json::Value) -> String {
    let mut out = String::new();
    for f in ign["storage"]["files"].as_array().unwrap() {
        let src = f["contents"]["source"].as_str().unwrap();
        let body = match src.strip_prefix("data:;base64,") {
            Some(b64) => String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
            .unwrap(),
            None => format!("(downloaded from {src})\n"),
        };
        out.push_str(&format!(
            "=== file {} mode {:o}\n{body}",
            f["path"].as_str().unwrap(),
            f["mode"].as_u64().unwrap()
        ));
    }
    for l in ign["storage"]["links"].as_array().unwrap() {
        out.push_str(&format!("=== link {} -> {}\n", l["path"], l["target"]));
    }
    for u in ign["systemd"]["units"].as_array().unwrap() {
        out.push_str(&format!(
            "=== unit {} enabled={}\n{}",
            u["name"].as_str().unwrap(),
            u["enabled"],
            u["contents"].as_str().unwrap_or("")
        ));
        for d in u["dropins"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "=== dropin {}\n{}",
                d["name"].as_str().unwrap(),
                d["contents"].as_str().unwrap()
            ));
        }
    }
    out
}

fn golden(name: &str, actual: &str) {
    let path = manifest_dir().join("tests/data/golden").join(name);
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with UPDATE_GOLDEN=1", path.display()));
    if expected != actual {
        let got = path.with_extension("actual");
        std::fs::write(&got, actual).unwrap();
        panic!(
            "{} differs from the snapshot; see {} (UPDATE_GOLDEN=1 to accept)",
            path.display(),
            got.display()
        );
    }
}

/// Init control plane, joining control plane, worker, GPU worker.
const NODES: [&str; 4] = ["cp-1", "cp-2", "worker-1", "gpu-1"];

#[test]
fn flatcar_ignition_validates_and_matches_snapshots() {
    let validator = have("ignition-validate");
    let (old, sysext) = (desc("flatcar"), desc("flatcar-sysext"));
    let cases = NODES
        .iter()
        .map(|n| (&old, *n, format!("flatcar-{n}.txt")))
        .chain([(&sysext, "gpu-1", "flatcar-gpu-1-sysext.txt".to_string())]);
    for (d, node, snapshot) in cases {
        let live = render(d, node, "ignition");
        let system = render(d, node, "node-ignition");
        let live_v: serde_json::Value = serde_json::from_str(&live).unwrap();
        let system_v: serde_json::Value = serde_json::from_str(&system).unwrap();
        // The installer carries exactly the installed system's config.
        let carried = live_v["storage"]["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == "/opt/slipway/node.ign")
            .unwrap();
        let b64 = carried["contents"]["source"].as_str().unwrap();
        let inner: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(b64.trim_start_matches("data:;base64,"))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(inner, system_v, "{node}");
        if validator {
            for (what, text) in [("ignition", &live), ("node-ignition", &system)] {
                let (ok, out) = validate(&["ignition-validate"], text, ".ign");
                assert!(ok, "{node} {what}: ignition-validate: {out}");
            }
        }
        golden(&snapshot, &decoded(&system_v));
    }
    if validator {
        // The validator has teeth: a wrong type is refused.
        let (ok, _) = validate(
            &["ignition-validate"],
            r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":5}]}}"#,
            ".ign",
        );
        assert!(!ok, "ignition-validate accepted a broken config");
    }
}

#[test]
fn ubuntu_cloud_config_validates_and_matches_snapshots() {
    let d = desc("ubuntu");
    let validator = have("cloud-init");
    for node in NODES {
        let cc = render(&d, node, "cloud-config");
        assert!(cc.starts_with("#cloud-config\n"), "{cc}");
        if validator {
            let (ok, out) = validate(&["cloud-init", "schema", "--config-file"], &cc, ".yaml");
            assert!(ok, "{node}: cloud-init schema: {out}");
            // The installed system's cloud-config inside the autoinstall, on its own.
            let doc: serde_json::Value =
                serde_json::from_str(cc.trim_start_matches("#cloud-config\n")).unwrap();
            let inner = &doc["autoinstall"]["user-data"];
            assert!(
                inner["write_files"].as_array().unwrap().len() > 10,
                "{node}"
            );
            let inner = format!("#cloud-config\n{inner}\n");
            let (ok, out) = validate(&["cloud-init", "schema", "--config-file"], &inner, ".yaml");
            assert!(ok, "{node}: installed system: cloud-init schema: {out}");
        }
        golden(&format!("ubuntu-{node}.yaml"), &cc);
    }
    if validator {
        let (ok, _) = validate(
            &["cloud-init", "schema", "--config-file"],
            "#cloud-config\nwrite_files: 5\nruncmd: {a: 1}\n",
            ".yaml",
        );
        assert!(!ok, "cloud-init schema accepted a broken config");
    }
}

#[test]
fn manifests_pass_kubernetes_validate() {
    let d = desc("flatcar");
    let manifests = render(&d, "cp-1", "manifests");
    for kind in [
        "kind: DaemonSet",
        "kind: RuntimeClass",
        "kind: ConfigMap",
        "\"Network\": \"10.244.0.0/16\"",
        "image: nvcr.io/nvidia/k8s-device-plugin:v0.16.2",
    ] {
        assert!(manifests.contains(kind), "{kind} missing");
    }
    golden("manifests-cp-1.yaml", &manifests);
    if !have("kubernetes-validate") {
        return;
    }
    let (ok, out) = validate(
        &["kubernetes-validate", "--strict", "-k", "1.31.0"],
        &manifests,
        ".yaml",
    );
    assert!(ok, "kubernetes-validate: {out}");
    assert_eq!(out.matches("passed for resource").count(), 8, "{out}");
    let (ok, _) = validate(
        &["kubernetes-validate", "--strict", "-k", "1.31.0"],
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec: {selector: 5}\n",
        ".yaml",
    );
    assert!(!ok, "kubernetes-validate accepted a broken manifest");
}

/// The bootstrap-token Secret Slipway creates through the API server is a valid Secret.
#[test]
fn bootstrap_token_secret_passes_kubernetes_validate() {
    if !have("kubernetes-validate") {
        return;
    }
    let t = slipway::pki::BootstrapToken {
        token: "abcdef.0123456789abcdef".into(),
        created_at: 1_800_000_000,
        expires_at: 1_800_086_400,
        ttl_secs: 86_400,
    };
    let secret = slipway::pki::cluster::token_secret(&t, "rack1");
    let (ok, out) = validate(
        &["kubernetes-validate", "--strict", "-k", "1.31.0"],
        &serde_json::to_string_pretty(&secret).unwrap(),
        ".yaml",
    );
    assert!(ok, "kubernetes-validate: {out}");
    assert_eq!(out.matches("passed for resource").count(), 1, "{out}");
    let mut broken = secret.clone();
    broken["stringData"]["token-id"] = serde_json::json!(5);
    let (ok, _) = validate(
        &["kubernetes-validate", "--strict", "-k", "1.31.0"],
        &broken.to_string(),
        ".yaml",
    );
    assert!(!ok, "kubernetes-validate accepted a broken Secret");
}
