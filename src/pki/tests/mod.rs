mod lifecycle;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::inspect::pem_to_der;
use super::*;
use crate::plan::Plan;

pub(super) fn plan() -> Plan {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-desc.example.yaml");
    let d = crate::desc::load(&path).unwrap_or_else(|e| panic!("{e}"));
    Plan::from_desc(&d)
}

pub(super) fn init(dir: &Path) -> Pki {
    Pki::load_or_init(dir, &plan(), None).unwrap()
}

pub(super) fn pki_path(dir: &Path, rel: &str) -> PathBuf {
    dir.join(PKI_DIR).join(rel)
}

pub(super) fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(pki_path(dir, rel)).unwrap()
}

/// Runs `f` on the parsed certificate at `rel` (relative to the pki directory).
pub(super) fn with_cert<T>(dir: &Path, rel: &str, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
    let der = pem_to_der(&read(dir, rel)).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    f(&cert)
}

pub(super) fn fingerprints(pki: &Pki) -> BTreeMap<String, String> {
    pki.summary()
        .into_iter()
        .map(|r| (r.name, r.fingerprint))
        .collect()
}

pub(super) const CAS: [&str; 3] = ["ca", "etcd/ca", "front-proxy-ca"];

/// (leaf stem, CA stem, serverAuth, clientAuth)
pub(super) const LEAVES: [(&str, &str, bool, bool); 9] = [
    ("apiserver", "ca", true, false),
    ("apiserver-kubelet-client", "ca", false, true),
    ("apiserver-etcd-client", "etcd/ca", false, true),
    ("front-proxy-client", "front-proxy-ca", false, true),
    ("admin", "ca", false, true),
    ("slipway", "ca", true, false),
    ("etcd/cp-1/server", "etcd/ca", true, true),
    ("etcd/cp-2/peer", "etcd/ca", true, true),
    ("etcd/cp-3/healthcheck-client", "etcd/ca", false, true),
];

#[test]
fn fresh_init_issues_everything_with_private_modes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init(dir.path());
    let names: BTreeSet<&str> = pki.issued().iter().map(|i| i.name.as_str()).collect();
    for n in CAS.iter().chain(&["sa", "bootstrap-token"]) {
        assert!(names.contains(n), "{n} not issued: {names:?}");
    }
    for (leaf, ..) in LEAVES {
        assert!(names.contains(leaf), "{leaf} not issued");
    }
    // 3 CAs + sa + token + 6 shared leaves + 3 per control-plane node (3 nodes).
    assert_eq!(pki.issued().len(), 3 + 1 + 1 + 6 + 9);
    assert!(pki.issued().iter().all(|i| i.reason == Reason::Missing));

    let mode = |rel: &str| {
        std::fs::metadata(pki_path(dir.path(), rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    for key in [
        "ca.key",
        "etcd/ca.key",
        "front-proxy-ca.key",
        "sa.key",
        "apiserver.key",
        "etcd/cp-2/peer.key",
        "admin.conf",
        "bootstrap-token.json",
    ] {
        assert_eq!(mode(key), 0o600, "{key}");
    }
    assert_eq!(mode("ca.crt"), 0o644);
    for d in ["", "etcd", "etcd/cp-1"] {
        assert_eq!(mode(d), 0o700, "dir {d:?}");
    }
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join(PKI_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn cas_are_self_signed_constrained_and_ten_years() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    for ca in CAS {
        with_cert(dir.path(), &format!("{ca}.crt"), |c| {
            let bc = c.basic_constraints().unwrap().expect("basic constraints");
            assert!(bc.critical && bc.value.ca, "{ca}");
            let ku = c.key_usage().unwrap().expect("key usage");
            assert!(ku.critical);
            assert!(ku.value.key_cert_sign() && ku.value.crl_sign(), "{ca}");
            assert!(c.extended_key_usage().unwrap().is_none(), "{ca}");
            let info = inspect(&read(dir.path(), &format!("{ca}.crt"))).unwrap();
            let ski = info.subject_key_id.as_ref().expect("SKI");
            assert_eq!(ski.len(), 20);
            assert_eq!(info.authority_key_id.as_ref(), Some(ski), "{ca}: AKI = SKI");
            assert_eq!(c.subject(), c.issuer());
            let life = info.not_after - info.not_before;
            let want = (CA_VALIDITY + BACKDATE).as_secs() as i64;
            assert!((life - want).abs() <= 2, "{ca}: lifetime {life}");
            assert!(
                c.tbs_certificate.serial.bits() > 64,
                "{ca}: serial too short"
            );
        });
    }
}

#[test]
fn leaves_have_role_usages_key_ids_and_one_year() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    for (leaf, ca, server, client) in LEAVES {
        let ca_info = inspect(&read(dir.path(), &format!("{ca}.crt"))).unwrap();
        let info = inspect(&read(dir.path(), &format!("{leaf}.crt"))).unwrap();
        assert!(!info.is_ca, "{leaf}");
        assert_eq!(info.authority_key_id, ca_info.subject_key_id, "{leaf}: AKI");
        assert!(info.subject_key_id.is_some(), "{leaf}: SKI");
        assert_ne!(info.subject_key_id, ca_info.subject_key_id);
        let life = info.not_after - info.not_before;
        let want = (LEAF_VALIDITY + BACKDATE).as_secs() as i64;
        assert!((life - want).abs() <= 2, "{leaf}: lifetime {life}");
        with_cert(dir.path(), &format!("{leaf}.crt"), |c| {
            let bc = c.basic_constraints().unwrap().expect("basic constraints");
            assert!(!bc.value.ca, "{leaf}");
            let ku = c.key_usage().unwrap().expect("key usage").value;
            assert!(ku.digital_signature(), "{leaf}");
            assert!(!ku.key_cert_sign() && !ku.crl_sign(), "{leaf}");
            assert!(
                !ku.key_encipherment(),
                "{leaf}: ECDSA has no key encipherment"
            );
            let eku = c.extended_key_usage().unwrap().expect("EKU").value;
            assert_eq!(eku.server_auth, server, "{leaf}: serverAuth");
            assert_eq!(eku.client_auth, client, "{leaf}: clientAuth");
            assert_eq!(
                c.issuer().to_string(),
                format!("CN={}", ca_info.common_name.clone().unwrap())
            );
        });
    }
}

/// Subjects as kubeadm v1.31 issues them (phases/certs/certlist.go), so a certificate
/// kubeadm finds in place is the one it would have made.
#[test]
fn leaf_subjects_match_kubeadm() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let admins = ["kubeadm:cluster-admins"];
    let none: [&str; 0] = [];
    let want: [(&str, &str, &[&str]); 8] = [
        ("apiserver", "kube-apiserver", &none),
        (
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &admins,
        ),
        ("apiserver-etcd-client", "kube-apiserver-etcd-client", &none),
        ("front-proxy-client", "front-proxy-client", &none),
        ("admin", "kubernetes-admin", &admins),
        ("etcd/cp-2/server", "cp-2", &none),
        ("etcd/cp-2/peer", "cp-2", &none),
        (
            "etcd/cp-2/healthcheck-client",
            "kube-etcd-healthcheck-client",
            &none,
        ),
    ];
    for (leaf, cn, orgs) in want {
        let info = inspect(&read(dir.path(), &format!("{leaf}.crt"))).unwrap();
        assert_eq!(info.common_name.as_deref(), Some(cn), "{leaf}");
        assert_eq!(info.organizations, orgs, "{leaf}");
    }
    let peer = inspect(&read(dir.path(), "etcd/cp-2/peer.crt")).unwrap();
    let got: BTreeSet<String> = peer.sans.iter().map(San::to_string).collect();
    let want: BTreeSet<String> = ["cp-2", "localhost", "10.20.0.12", "127.0.0.1", "::1"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want, "etcd peer: kubeadm's getAltNames");
}

#[test]
fn apiserver_sans_cover_services_nodes_and_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let info = inspect(&read(dir.path(), "apiserver.crt")).unwrap();
    let got: BTreeSet<String> = info.sans.iter().map(San::to_string).collect();
    let want: BTreeSet<String> = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        // kubeadm's dnsDomain, not the node domain: kubeadm refuses a pre-existing
        // apiserver certificate without it ("certificate apiserver is invalid").
        "kubernetes.default.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "10.96.0.1",
        "cp-1",
        "cp-2",
        "cp-3",
        "cp-1.rack1.example.internal",
        "cp-2.rack1.example.internal",
        "cp-3.rack1.example.internal",
        "10.20.0.11",
        "10.20.0.12",
        "10.20.0.13",
        "api.rack1.example.internal",
        "10.20.0.10",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
    assert_eq!(info.common_name.as_deref(), Some("kube-apiserver"));

    let etcd = inspect(&read(dir.path(), "etcd/cp-2/server.crt")).unwrap();
    let got: BTreeSet<String> = etcd.sans.iter().map(San::to_string).collect();
    let want: BTreeSet<String> = ["cp-2", "localhost", "10.20.0.12", "127.0.0.1", "::1"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);

    let slipway = inspect(&read(dir.path(), "slipway.crt")).unwrap();
    let got: BTreeSet<String> = slipway.sans.iter().map(San::to_string).collect();
    let want: BTreeSet<String> = [
        "10.20.0.2",
        "slipway",
        "slipway.rack1.example.internal",
        "registry.rack1.example.internal",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want);
}

#[test]
fn serials_are_unique_and_positive() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init(dir.path());
    let mut serials = BTreeSet::new();
    for row in pki.summary() {
        with_cert(dir.path(), &format!("{}.crt", row.name), |c| {
            let raw = c.raw_serial();
            assert!(
                raw.len() <= 20 && raw[0] & 0x80 == 0,
                "{}: {raw:?}",
                row.name
            );
            assert!(
                serials.insert(raw.to_vec()),
                "duplicate serial in {}",
                row.name
            );
        });
    }
    assert_eq!(serials.len(), 3 + 6 + 9);
}

pub(super) fn openssl(args: &[&str], stdin_from: Option<&Path>) -> Vec<u8> {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    if let Some(p) = stdin_from {
        cmd.stdin(std::fs::File::open(p).unwrap());
    }
    let out = cmd.output().expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn ca_hash_matches_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init(dir.path());
    let ca = pki_path(dir.path(), "ca.crt");
    let pubkey = dir.path().join("ca.pub.pem");
    std::fs::write(&pubkey, openssl(&["x509", "-pubkey", "-noout"], Some(&ca))).unwrap();
    let der = openssl(&["pkey", "-pubin", "-outform", "der"], Some(&pubkey));
    let der_file = dir.path().join("ca.pub.der");
    std::fs::write(&der_file, der).unwrap();
    let out = Command::new("sha256sum").arg(&der_file).output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    let want = format!("sha256:{}", hex.split_whitespace().next().unwrap());
    assert_eq!(pki.ca_cert_hash(), want);
    assert_eq!(pki.ca_cert_hash().len(), "sha256:".len() + 64);
}

pub(super) fn assert_chains_verify(dir: &Path) {
    for (leaf, ca, ..) in LEAVES {
        let out = openssl(
            &[
                "verify",
                "-CAfile",
                pki_path(dir, &format!("{ca}.crt")).to_str().unwrap(),
                pki_path(dir, &format!("{leaf}.crt")).to_str().unwrap(),
            ],
            None,
        );
        assert!(String::from_utf8_lossy(&out).contains(": OK"), "{leaf}");
    }
    // A leaf does not verify against another CA: the check above can fail.
    let cmd = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(pki_path(dir, "etcd/ca.crt"))
        .arg(pki_path(dir, "apiserver.crt"))
        .output()
        .unwrap();
    assert!(!cmd.status.success());
}

#[test]
fn chains_verify_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    assert_chains_verify(dir.path());
}

#[test]
fn rsa_option_issues_rsa_keys_that_verify() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::load_or_init(dir.path(), &plan(), Some(KeyAlgorithm::Rsa2048)).unwrap();
    assert_eq!(pki.key_algorithm(), KeyAlgorithm::Rsa2048);
    for rel in ["ca.key", "apiserver.key", "sa.key"] {
        let text = String::from_utf8(openssl(
            &[
                "pkey",
                "-noout",
                "-text",
                "-in",
                pki_path(dir.path(), rel).to_str().unwrap(),
            ],
            None,
        ))
        .unwrap();
        assert!(text.contains("Private-Key: (2048 bit"), "{rel}: {text}");
    }
    with_cert(dir.path(), "apiserver.crt", |c| {
        let ku = c.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment());
    });
    assert_chains_verify(dir.path());
    // The RSA material loads again unchanged.
    let again = Pki::load_or_init(dir.path(), &plan(), Some(KeyAlgorithm::Rsa2048)).unwrap();
    assert!(again.issued().is_empty());
    assert_eq!(again.ca_cert_hash(), pki.ca_cert_hash());

    // Switching to ECDSA re-issues the leaves with ECDSA keys; the RSA CAs stay.
    let ec = Pki::load_or_init(dir.path(), &plan(), Some(KeyAlgorithm::EcdsaP256)).unwrap();
    assert_eq!(ec.issued().len(), 6 + 9);
    assert!(ec.issued().iter().all(|i| i.reason == Reason::KeyAlgorithm));
    assert_eq!(ec.ca_cert_hash(), pki.ca_cert_hash());
    assert!(read(dir.path(), "ca.key").len() > 1000, "CA key still RSA");
    assert!(
        read(dir.path(), "apiserver.key").len() < 300,
        "leaf key now ECDSA"
    );
    assert_chains_verify(dir.path());
}

#[test]
fn node_files_give_ca_keys_to_control_plane_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init(dir.path());
    let p = plan();
    let worker = p.nodes.iter().find(|n| n.hostname == "worker-1").unwrap();
    let files = pki.node_files(worker);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "ca.crt");
    assert_eq!(files[0].contents, pki.ca_cert_pem());
    assert!(!files.iter().any(|f| f.contents.contains("PRIVATE KEY")));

    let cp2 = p.node_by_name("cp-2").unwrap();
    let files = pki.node_files(cp2);
    let paths: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for want in [
        "ca.crt",
        "ca.key",
        "etcd/ca.crt",
        "etcd/ca.key",
        "front-proxy-ca.crt",
        "front-proxy-ca.key",
        "sa.key",
        "sa.pub",
        "apiserver.crt",
        "apiserver.key",
        "apiserver-kubelet-client.crt",
        "apiserver-etcd-client.key",
        "front-proxy-client.crt",
        "etcd/server.crt",
        "etcd/peer.key",
        "etcd/healthcheck-client.crt",
    ] {
        assert!(paths.contains(want), "{want} missing from {paths:?}");
    }
    assert_eq!(files.len(), paths.len(), "no duplicate paths");
    let server = files.iter().find(|f| f.path == "etcd/server.crt").unwrap();
    assert_eq!(server.contents, read(dir.path(), "etcd/cp-2/server.crt"));
    for f in &files {
        let secret = f.contents.contains("PRIVATE KEY");
        assert_eq!(f.mode, if secret { 0o600 } else { 0o644 }, "{}", f.path);
    }
}

#[test]
fn admin_kubeconfig_and_group_follow_the_version() {
    assert_eq!(admin_group("1.28.9"), "system:masters");
    assert_eq!(admin_group("v1.29.0"), "kubeadm:cluster-admins");
    assert_eq!(admin_group("1.31.4"), "kubeadm:cluster-admins");
    assert_eq!(admin_group("2.0.0"), "kubeadm:cluster-admins");

    let dir = tempfile::tempdir().unwrap();
    let mut pki = init(dir.path());
    let admin = inspect(&read(dir.path(), "admin.crt")).unwrap();
    assert_eq!(admin.organizations, ["kubeadm:cluster-admins"]);
    assert_eq!(admin.common_name.as_deref(), Some(ADMIN_USER));
    let conf = pki.admin_kubeconfig().to_string();
    assert!(
        conf.contains("server: https://api.rack1.example.internal:6443\n"),
        "{conf}"
    );
    assert_eq!(read(dir.path(), "admin.conf"), conf);
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert!(conf.contains(&format!(
        "client-certificate-data: {}\n",
        b64(&read(dir.path(), "admin.crt"))
    )));
    assert!(conf.contains(&format!(
        "certificate-authority-data: {}\n",
        b64(pki.ca_cert_pem())
    )));

    // An older Kubernetes: the admin and kubelet-client certificates move to system:masters.
    let mut p = plan();
    p.cluster.kubernetes_version = "1.28.4".into();
    let issued = pki.refresh(&p).unwrap();
    let names: BTreeSet<&str> = issued.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["admin", "apiserver-kubelet-client"]));
    let admin = inspect(&read(dir.path(), "admin.crt")).unwrap();
    assert_eq!(admin.organizations, ["system:masters"]);
    assert_ne!(pki.admin_kubeconfig(), conf);
}

#[test]
fn summary_lists_cas_then_leaves_and_show_reads_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    assert!(show(dir.path(), &plan()).is_err(), "nothing to show yet");
    assert!(
        !dir.path().join(PKI_DIR).exists(),
        "show must not create anything"
    );
    let pki = init(dir.path());
    let rows = pki.summary();
    assert_eq!(rows.len(), 3 + 6 + 9);
    assert!(rows[..3].iter().all(|r| r.is_ca) && rows[3..].iter().all(|r| !r.is_ca));
    assert_eq!(show(dir.path(), &plan()).unwrap().len(), rows.len());
    let api = rows.iter().find(|r| r.name == "apiserver").unwrap();
    assert_eq!(api.subject, "CN=kube-apiserver");
    assert_eq!(
        api.fingerprint,
        inspect(&read(dir.path(), "apiserver.crt"))
            .unwrap()
            .fingerprint
    );
    let table = summary_table(&rows);
    assert!(table.starts_with("NAME"));
    assert!(table.contains("kubernetes.default.svc.cluster.local"));
    assert_eq!(table.lines().count(), rows.len() + 1);
}

#[test]
fn fingerprint_matches_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init(dir.path());
    let out = openssl(
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            pki_path(dir.path(), "ca.crt").to_str().unwrap(),
        ],
        None,
    );
    let text = String::from_utf8(out).unwrap();
    let want = text
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_lowercase();
    assert_eq!(pki.summary()[0].fingerprint, format!("sha256:{want}"));
}
