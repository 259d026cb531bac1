//! The cluster description: the example is valid, and every broken description under
//! tests/data/invalid/ fails with an error on exactly the lines marked `# ERROR: <phrase>`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use slipway::desc::{self, Mac, Role};
use slipway::plan::Plan;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn invalid_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/data/invalid"))
        .expect("tests/data/invalid exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `(line, phrase)` for every `# ERROR: phrase` marker in a file.
fn markers(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            l.split_once("# ERROR:")
                .map(|(_, p)| (i as u32 + 1, p.trim().to_string()))
        })
        .collect()
}

#[test]
fn example_description_is_valid_and_plans_nine_nodes() {
    let d = desc::load(&root().join("cluster-desc.example.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::from_desc(&d);
    assert_eq!(plan.nodes.len(), 9);
    assert_eq!(
        plan.nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .count(),
        3
    );
    assert_eq!(
        plan.nodes
            .iter()
            .filter(|n| n.gpu == desc::Gpu::Nvidia)
            .count(),
        2
    );
    assert_eq!(
        plan.nodes.iter().filter(|n| n.init).count(),
        1,
        "exactly one node runs kubeadm init"
    );
    for n in &plan.nodes {
        assert_eq!(plan.node_by_mac(&n.mac).unwrap().hostname, n.hostname);
        assert_eq!(plan.node_by_ip(n.ip).unwrap().mac, n.mac);
        assert!(n.fqdn.ends_with(&plan.cluster.domain), "{}", n.fqdn);
        assert!(n.boot.ipxe_script.starts_with(&plan.bootstrapper.http_base));
        assert!(n.boot.ipxe_script.contains(&n.mac.url_form()));
    }
}

/// Slipway on its own subnet behind a router is a valid plan once `bootstrapper.subnet` says
/// so; the same address without it is an error (a typo must not pass).
#[test]
fn a_bootstrapper_on_its_own_subnet_needs_bootstrapper_subnet() {
    let text = std::fs::read_to_string(root().join("cluster-desc.example.yaml")).unwrap();
    let moved = text.replace("  address: 10.20.0.2\n", "  address: 10.30.0.2\n");
    assert_ne!(moved, text);
    let err = desc::parse_str("d.yaml", &moved).unwrap_err().render();
    assert!(
        err.contains("bootstrapper address 10.30.0.2 is outside the subnet"),
        "{err}"
    );
    assert!(err.contains("set bootstrapper.subnet"), "{err}");
    let relayed = moved.replace("  # subnet: 10.30.0.0/24", "  subnet: 10.30.0.0/24");
    let d = desc::parse_str("d.yaml", &relayed).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::from_desc(&d);
    assert_eq!(plan.bootstrapper.address.to_string(), "10.30.0.2");
    assert!(plan.bootstrapper.http_base.contains("10.30.0.2"));
    assert!(
        plan.nodes[0]
            .boot
            .ipxe_script
            .starts_with("http://10.30.0.2:")
    );
}

#[test]
fn covers_every_validation_rule() {
    let names: BTreeSet<String> = invalid_files()
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let phrases: BTreeSet<String> = invalid_files()
        .iter()
        .flat_map(|p| markers(&std::fs::read_to_string(p).unwrap()))
        .map(|(_, phrase)| phrase)
        .collect();
    for phrase in [
        "unknown key",
        "expected",
        "invalid MAC",
        "invalid IPv4 address",
        "invalid CIDR",
        "invalid hostname",
        "duplicate MAC",
        "duplicate hostname",
        "duplicate IP",
        "outside the subnet",
        "inside the dynamic pool",
        "overlaps",
        "outside the service CIDR",
        "no control-plane node",
        "even number of control-plane nodes",
        "missing required key",
        "syntax",
        "invalid NVIDIA driver branch",
    ] {
        assert!(
            phrases.contains(phrase),
            "no invalid description exercises `{phrase}`"
        );
    }
    assert!(
        names.contains("several-errors"),
        "a file with several errors exists"
    );
}

#[test]
fn invalid_descriptions_fail_on_exactly_the_marked_lines() {
    let files = invalid_files();
    assert!(
        files.len() >= 17,
        "only {} invalid descriptions",
        files.len()
    );
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = markers(&text);
        assert!(
            !expected.is_empty(),
            "{} has no # ERROR markers",
            path.display()
        );
        let diags = match desc::load(&path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(d) => d,
        };
        let report = diags.render();
        for (line, phrase) in &expected {
            assert!(
                diags
                    .items
                    .iter()
                    .any(|d| d.pos.line == *line && d.message.contains(phrase.as_str())),
                "{}:{line}: expected an error containing `{phrase}`; got:\n{report}",
                path.display()
            );
        }
        for d in &diags.items {
            assert!(
                expected.iter().any(|(line, _)| *line == d.pos.line),
                "{}: unexpected error on unmarked line {}: {}\n{report}",
                path.display(),
                d.pos.line,
                d.message
            );
        }
    }
}

fn slipway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

#[test]
fn validate_command_prints_every_error_with_location_and_snippet() {
    let file = "tests/data/invalid/several-errors.yaml";
    let out = slipway(&["validate", "-c", file]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let marked = markers(&text);
    assert!(marked.len() >= 5);
    for (line, _) in &marked {
        let prefix = format!("{file}:{line}:");
        assert!(stderr.contains(&prefix), "missing {prefix} in:\n{stderr}");
        // The offending source line is quoted under its number.
        let src_line = text.lines().nth(*line as usize - 1).unwrap();
        assert!(
            stderr.contains(&format!("{line} | {src_line}")),
            "no snippet for line {line}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("{} errors found", marked.len()))
            || stderr.contains("errors found"),
        "{stderr}"
    );

    let ok = slipway(&["validate", "-c", "cluster-desc.example.yaml"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn plan_command_prints_table_and_json() {
    let table = slipway(&["plan", "-c", "cluster-desc.example.yaml"]);
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("MAC") && table.contains("IPXE SCRIPT"),
        "{table}"
    );
    let json = slipway(&[
        "plan",
        "-c",
        "cluster-desc.example.yaml",
        "--output",
        "json",
    ]);
    assert!(json.status.success());
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 9);
    for n in nodes {
        let mac = n["mac"].as_str().unwrap();
        assert!(table.contains(mac), "table lacks {mac}");
        assert!(table.contains(n["ip"].as_str().unwrap()));
        assert!(table.contains(n["boot"]["ipxe_script"].as_str().unwrap()));
    }
    let bad = slipway(&["plan", "-c", "tests/data/invalid/duplicate-mac.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
}

/// A minimal valid description with the given node list, for focused checks.
fn small(nodes: &str) -> String {
    format!(
        "cluster: {{name: c1, domain: c1.lan, kubernetes_version: 1.31.4}}\n\
         bootstrapper: {{interface: eth0, address: 10.0.0.2}}\n\
         network: {{subnet: 10.0.0.0/24, gateway: 10.0.0.1}}\n\
         os: {{profile: flatcar, version: 4081.2.0}}\n\
         nodes:\n{nodes}"
    )
}

#[test]
fn macs_are_normalised_and_defaults_applied() {
    let text =
        small("  - {mac: 52-54-00-ab-cd-ef, hostname: cp-1, ip: 10.0.0.11, role: control-plane}\n");
    let d = desc::parse_str("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let plan = Plan::from_desc(&d);
    let mac: Mac = "52:54:00:AB:CD:EF".parse().unwrap();
    assert_eq!(plan.nodes[0].mac, mac);
    assert_eq!(plan.nodes[0].mac.to_string(), "52:54:00:AB:CD:EF");
    assert_eq!(plan.nodes[0].install_disk, "/dev/sda");
    assert_eq!(plan.cluster.dns_ip.to_string(), "10.96.0.10");
    assert_eq!(plan.cluster.endpoint.fqdn, "api.c1.lan");
    assert_eq!(plan.cluster.endpoint.addresses, vec![plan.nodes[0].ip]);
    assert_eq!(plan.bootstrapper.http_base, "http://10.0.0.2:8080");
    assert_eq!(plan.network.lease_time_secs, 3600);
    assert_eq!(plan.registry.upstreams.len(), desc::DEFAULT_UPSTREAMS.len());
}

#[test]
fn number_like_strings_keep_their_spelling() {
    // `1.30`-style values must not become floats; YAML 1.1 `off` stays a word.
    let text =
        small("  - {mac: 52:54:00:00:00:01, hostname: cp-1, ip: 10.0.0.11, role: control-plane}\n")
            .replace("version: 4081.2.0", "version: 24.10")
            .replace(
                "gateway: 10.0.0.1}",
                "gateway: 10.0.0.1, dhcp: {mode: off}}",
            )
            .replace("kubernetes_version: 1.31.4", "kubernetes_version: v1.30.0");
    let d = desc::parse_str("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(*d.os.version, "24.10");
    assert_eq!(*d.network.dhcp.mode, desc::DhcpMode::Off);
    assert_eq!(Plan::from_desc(&d).cluster.kubernetes_version, "1.30.0");
}

#[test]
fn garbage_input_is_an_error_not_a_panic() {
    for text in [
        "",
        "- a\n- b\n",
        "nodes: 5\n",
        "\u{0}\u{1}",
        "a: &x [*x]\n",
        "{{{{",
        "cluster: [1, 2]\nnodes: {}\n",
    ] {
        let r = desc::parse_str("g.yaml", text);
        assert!(r.is_err(), "{text:?} accepted");
    }
}
