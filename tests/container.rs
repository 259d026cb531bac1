//! The Dockerfile, checked without a container engine (none runs on these machines, and base
//! images cannot be pulled here): its stages are parsed and their commands run as the image
//! would — the build stage's command is the release build `scripts/test.sh` runs, the
//! runtime stage's packages exist in Debian and provide the iPXE binaries, and the image's
//! entrypoint with its environment serves DHCP's next step (TFTP) and HTTP in a namespace
//! standing in for `--net=host`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Lan, TestDesc, netns_available};

#[derive(Default, Debug)]
struct Stage {
    from: String,
    run: Vec<String>,
    env: BTreeMap<String, String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    copies: Vec<String>,
}

/// Dockerfile -> stages (continuation lines joined, comments dropped).
fn parse(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => cur.push_str(part),
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical {
        let (inst, rest) = l.split_once(' ').unwrap_or((&l, ""));
        let rest = rest.trim().to_string();
        let json = |s: &str| -> Vec<String> { serde_json::from_str(s).expect("exec form") };
        match inst {
            "FROM" => stages.push(Stage {
                from: rest,
                ..Stage::default()
            }),
            "RUN" => stages.last_mut().unwrap().run.push(rest),
            "COPY" => stages.last_mut().unwrap().copies.push(rest),
            "ENV" => {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').expect("ENV k=v");
                    stages.last_mut().unwrap().env.insert(k.into(), v.into());
                }
            }
            "ENTRYPOINT" => stages.last_mut().unwrap().entrypoint = json(&rest),
            "CMD" => stages.last_mut().unwrap().cmd = json(&rest),
            _ => {}
        }
    }
    stages
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn dockerfile_stages_hold_up() {
    let stages = parse(&std::fs::read_to_string(root().join("Dockerfile")).unwrap());
    assert_eq!(stages.len(), 2, "{stages:?}");
    let (build, runtime) = (&stages[0], &stages[1]);
    assert!(build.from.ends_with("AS build"), "{}", build.from);
    assert_eq!(build.run, ["cargo build --release --locked"]);
    assert!(
        runtime.from.contains("debian:bookworm-slim"),
        "{}",
        runtime.from
    );
    assert!(
        runtime
            .copies
            .iter()
            .any(|c| c.starts_with("--from=build /src/target/release/slipway ")),
        "{:?}",
        runtime.copies
    );

    // The runtime stage's packages exist in Debian (what `apt-get install` would fetch).
    let install = runtime
        .run
        .iter()
        .find(|r| r.contains("apt-get install"))
        .unwrap();
    let packages: Vec<&str> = install
        .split("apt-get install")
        .nth(1)
        .unwrap()
        .split("&&")
        .next()
        .unwrap()
        .split_whitespace()
        .filter(|w| !w.starts_with('-'))
        .collect();
    assert!(packages.contains(&"ipxe"), "{packages:?}");
    for p in &packages {
        let out = Command::new("apt-cache")
            .args(["show", "--no-all-versions", p])
            .output();
        let ok = out
            .as_ref()
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
        assert!(ok, "{p} is not a Debian package here");
    }

    // The build stage's command: the release binary scripts/test.sh builds the same way.
    let binary = root().join("target/release/slipway");
    if !binary.exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "test.sh builds the release binary first"
        );
        eprintln!("SKIPPED: no release build");
        return;
    }
    let version = Command::new(&binary).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("slipway "));
    assert_eq!(runtime.entrypoint, ["/usr/local/bin/slipway"]);
    assert_eq!(runtime.cmd, ["serve"]);
    run_like_the_image(&binary, runtime);
}

/// ENTRYPOINT + CMD with the image's environment, its volumes mapped to temporary
/// directories, in a namespace as `--net=host` would see the bootstrapper's interface.
fn run_like_the_image(binary: &Path, image: &Stage) {
    if !netns_available() {
        return;
    }
    assert!(
        Path::new("/usr/lib/ipxe/undionly.kpxe").is_file(),
        "Debian's ipxe package provides the boot binaries (scripts/test.sh installs it)"
    );
    let lan = Lan::new("image");
    let host = lan.host("bootstrapper", Some("10.20.0.2/24"), None);
    let client = lan.host("pc", Some("10.20.0.50/24"), None);
    let vols = tempfile::tempdir().unwrap();
    let mapped = |container_path: &str| vols.path().join(container_path.trim_start_matches('/'));
    let config = mapped(&image.env["SLIPWAY_CONFIG"]);
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, TestDesc::default().yaml()).unwrap();
    std::fs::create_dir_all(mapped(&image.env["SLIPWAY_IMAGES_DIR"])).unwrap();
    let mut cmd = host.command(binary.to_str().unwrap());
    cmd.args(&image.cmd);
    for (k, v) in &image.env {
        let v = if v.starts_with('/') {
            mapped(v).display().to_string()
        } else {
            v.clone()
        };
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    host.spawn(&mut cmd);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ok = client
            .command("curl")
            .args(["-sf", "-m", "2", "http://10.20.0.2:8080/healthz"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the image's command did not serve"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The first boot step a PXE client takes: TFTP of iPXE from the package's files.
    let out = client
        .command("curl")
        .args([
            "-sf",
            "-m",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "tftp://10.20.0.2/undionly.kpxe",
        ])
        .output()
        .unwrap();
    let size: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert_eq!(
        size,
        std::fs::metadata("/usr/lib/ipxe/undionly.kpxe")
            .unwrap()
            .len(),
        "TFTP serves Debian's undionly.kpxe"
    );
    // State went to the volume, key material private.
    let state = mapped(&image.env["SLIPWAY_STATE_DIR"]);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(state.join("pki/ca.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}
