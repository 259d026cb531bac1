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
        "kubernetes.default.svc.rack1.example.internal",
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
