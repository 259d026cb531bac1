//! Loading again, renewing, plan changes and damaged state: what is kept, what is
//! re-issued, and what is refused.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::*;

#[test]
fn second_load_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let first = init(dir.path());
    let second = init(dir.path());
    assert_eq!(second.issued(), &[] as &[Issued]);
    assert_eq!(fingerprints(&first), fingerprints(&second));
    assert_eq!(first.bootstrap_token(), second.bootstrap_token());
    assert_eq!(first.ca_cert_hash(), second.ca_cert_hash());
    assert_eq!(first.admin_kubeconfig(), second.admin_kubeconfig());
}

#[test]
fn ca_cert_without_key_is_an_error_not_a_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let before = read(dir.path(), "etcd/ca.crt");
    std::fs::remove_file(pki_path(dir.path(), "etcd/ca.key")).unwrap();
    let err = Pki::load_or_init(dir.path(), &plan(), None)
        .err()
        .expect("missing CA key must fail");
    assert!(matches!(err, PkiError::KeyMissing { .. }), "{err}");
    assert!(err.to_string().contains("etcd/ca.key"), "{err}");
    assert_eq!(read(dir.path(), "etcd/ca.crt"), before);
    assert!(!pki_path(dir.path(), "etcd/ca.key").exists());
}

#[test]
fn ca_key_that_does_not_match_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let other = KeyAlgorithm::EcdsaP256.generate().unwrap().serialize_pem();
    std::fs::write(pki_path(dir.path(), "front-proxy-ca.key"), other).unwrap();
    let err = Pki::load_or_init(dir.path(), &plan(), None)
        .err()
        .expect("mismatched CA key must fail");
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
}

#[test]
fn sa_pub_without_key_or_mismatched_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    let sa_key = read(dir.path(), "sa.key");
    let other = KeyAlgorithm::EcdsaP256.generate().unwrap().public_key_pem();
    std::fs::write(pki_path(dir.path(), "sa.pub"), other).unwrap();
    let err = Pki::load_or_init(dir.path(), &plan(), None).err();
    assert!(matches!(err, Some(PkiError::KeyMismatch { .. })), "{err:?}");
    std::fs::remove_file(pki_path(dir.path(), "sa.key")).unwrap();
    let err = Pki::load_or_init(dir.path(), &plan(), None).err();
    assert!(matches!(err, Some(PkiError::KeyMissing { .. })), "{err:?}");
    // The key alone is enough: sa.pub is derived again.
    std::fs::write(pki_path(dir.path(), "sa.key"), &sa_key).unwrap();
    std::fs::remove_file(pki_path(dir.path(), "sa.pub")).unwrap();
    let pki = init(dir.path());
    assert!(pki.issued().is_empty());
    assert!(read(dir.path(), "sa.pub").contains("BEGIN PUBLIC KEY"));
}

#[test]
fn ca_key_without_cert_is_recertified_and_leaves_still_chain() {
    let dir = tempfile::tempdir().unwrap();
    let first = init(dir.path());
    let key = read(dir.path(), "ca.key");
    std::fs::remove_file(pki_path(dir.path(), "ca.crt")).unwrap();
    let second = init(dir.path());
    assert_eq!(read(dir.path(), "ca.key"), key);
    assert_eq!(second.ca_cert_hash(), first.ca_cert_hash());
    let reasons: Vec<_> = second
        .issued()
        .iter()
        .map(|i| (i.name.as_str(), i.reason))
        .collect();
    assert_eq!(reasons, [("ca", Reason::Recertified)]);
    assert_chains_verify(dir.path());
}

#[test]
fn renew_reissues_leaves_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = init(dir.path());
    let before = fingerprints(&pki);
    let serial = |rel: &str| inspect(&read(dir.path(), rel)).unwrap().serial;
    let apiserver_serial = serial("apiserver.crt");
    let token = pki.bootstrap_token().clone();
    let issued = pki.renew(&plan()).unwrap();
    assert_eq!(issued.len(), 6 + 9);
    assert!(issued.iter().all(|i| i.reason == Reason::Renew));
    let after = fingerprints(&pki);
    for (name, fp) in &before {
        if CAS.contains(&name.as_str()) {
            assert_eq!(&after[name], fp, "{name} must not change");
        } else {
            assert_ne!(&after[name], fp, "{name} must be re-issued");
        }
    }
    assert_ne!(serial("apiserver.crt"), apiserver_serial);
    assert_eq!(pki.bootstrap_token(), &token);
    assert_chains_verify(dir.path());
    // The renewed set is what the next start loads.
    let reloaded = init(dir.path());
    assert!(reloaded.issued().is_empty());
    assert_eq!(fingerprints(&reloaded), after);
    // load_and_renew (the CLI) behaves the same.
    let renewed = Pki::load_and_renew(dir.path(), &plan(), None).unwrap();
    assert_eq!(renewed.issued().len(), 6 + 9);
    assert_eq!(renewed.ca_cert_hash(), pki.ca_cert_hash());
}

#[test]
fn added_control_plane_node_reissues_what_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut pki = init(dir.path());
    let mut p = plan();
    let mut cp4 = p.nodes[0].clone();
    cp4.hostname = "cp-4".into();
    cp4.fqdn = "cp-4.rack1.example.internal".into();
    cp4.ip = Ipv4Addr::new(10, 20, 0, 14);
    cp4.init = false;
    p.nodes.push(cp4);
    let issued = pki.refresh(&p).unwrap();
    let got: BTreeSet<(&str, Reason)> =
        issued.iter().map(|i| (i.name.as_str(), i.reason)).collect();
    let want: BTreeSet<(&str, Reason)> = [
        ("apiserver", Reason::PlanChanged),
        ("etcd/cp-4/server", Reason::Missing),
        ("etcd/cp-4/peer", Reason::Missing),
        ("etcd/cp-4/healthcheck-client", Reason::Missing),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    let info = inspect(&read(dir.path(), "apiserver.crt")).unwrap();
    assert!(
        info.sans
            .contains(&San::Ip(Ipv4Addr::new(10, 20, 0, 14).into()))
    );
    assert!(
        info.sans
            .contains(&San::Dns("cp-4.rack1.example.internal".into()))
    );
}

#[test]
fn leaf_key_mismatch_and_expiry_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    // A crash between writing a leaf's new key and its certificate leaves this state.
    let other = KeyAlgorithm::EcdsaP256.generate().unwrap().serialize_pem();
    std::fs::write(pki_path(dir.path(), "front-proxy-client.key"), other).unwrap();
    std::fs::remove_file(pki_path(dir.path(), "admin.crt")).unwrap();
    let pki = init(dir.path());
    let got: Vec<_> = pki
        .issued()
        .iter()
        .map(|i| (i.name.as_str(), i.reason))
        .collect();
    assert_eq!(
        got,
        [
            ("front-proxy-client", Reason::KeyMismatch),
            ("admin", Reason::Missing)
        ]
    );

    let p = plan();
    let spec = leaf_specs(&p)
        .into_iter()
        .find(|s| s.stem == "apiserver")
        .unwrap();
    let ca = inspect(pki.ca_cert_pem()).unwrap();
    let info = inspect(&read(dir.path(), "apiserver.crt")).unwrap();
    let verdict = |now: i64| load::leaf_verdict(&spec, &info, true, &ca, now);
    assert_eq!(verdict(info.not_before), None);
    let renew_at = info.not_after - RENEW_BEFORE.as_secs() as i64;
    assert_eq!(verdict(renew_at - 10), None);
    assert_eq!(verdict(renew_at + 10), Some(Reason::Expiring));
    let other_ca = inspect(pki.ca_cert_pem_of(CaKind::Etcd)).unwrap();
    assert_eq!(
        load::leaf_verdict(&spec, &info, true, &other_ca, info.not_before),
        Some(Reason::WrongIssuer)
    );
}

#[test]
fn bootstrap_token_shape_expiry_and_persistence() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init(dir.path());
    let t = pki.bootstrap_token();
    assert!(t.is_well_formed(), "{t:?}");
    let (id, secret) = t.token.split_once('.').unwrap();
    assert_eq!((id.len(), secret.len()), (6, 16));
    assert!(
        t.token
            .bytes()
            .all(|b| b == b'.' || b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    assert_eq!(t.expires_at, t.created_at + TOKEN_TTL_SECS);
    assert!(
        !format!("{t:?}").contains(secret),
        "Debug must hide the secret"
    );
    assert!(
        !pki.issued()
            .iter()
            .any(|i| i.event_message().contains(secret))
    );

    // An expired token is replaced on load.
    let mut old = t.clone();
    old.created_at -= 2 * TOKEN_TTL_SECS;
    old.expires_at -= 2 * TOKEN_TTL_SECS;
    std::fs::write(
        pki_path(dir.path(), "bootstrap-token.json"),
        serde_json::to_string(&old).unwrap(),
    )
    .unwrap();
    let again = init(dir.path());
    assert_ne!(again.bootstrap_token().token, old.token);
    let got: Vec<_> = again
        .issued()
        .iter()
        .map(|i| (i.name.as_str(), i.reason))
        .collect();
    assert_eq!(got, [("bootstrap-token", Reason::Expiring)]);
    assert!(
        !BootstrapToken {
            token: "ABCDEF.0123456789abcdef".into(),
            ..old
        }
        .is_well_formed()
    );
}

#[test]
fn issued_entries_become_secret_issued_events() {
    let dir = tempfile::tempdir().unwrap();
    let pki = init(dir.path());
    let store = crate::store::open(&dir.path().join("state")).unwrap();
    record_issued(&store, pki.issued()).unwrap();
    let events = store.recent_events(100).unwrap();
    assert_eq!(events.len(), pki.issued().len());
    assert!(events.iter().all(|e| e.kind == "secret.issued"));
    assert!(events.iter().any(|e| {
        e.message
            .starts_with("apiserver issued (was missing): sha256:")
    }));
    assert!(!events.iter().any(|e| e.message.contains("PRIVATE")));
}

/// Every file under the pki directory, by relative path.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, at: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
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
    let mut out = BTreeMap::new();
    walk(&dir.join(PKI_DIR), &dir.join(PKI_DIR), &mut out);
    out
}

#[test]
fn key_algorithm_is_kept_unless_chosen_again() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = Pki::load_or_init(dir.path(), &plan(), Some(KeyAlgorithm::Rsa2048)).unwrap();
    assert_eq!(read(dir.path(), "key-algorithm"), "rsa2048\n");
    let before = snapshot(dir.path());
    // A start without the flag (serve's default) keeps every byte.
    let again = init(dir.path());
    assert_eq!(again.issued(), &[] as &[Issued]);
    assert_eq!(again.key_algorithm(), KeyAlgorithm::Rsa2048);
    assert_eq!(snapshot(dir.path()), before);
    // Renewing without the flag issues RSA leaves again.
    let renewed = Pki::load_and_renew(dir.path(), &plan(), None).unwrap();
    assert!(renewed.issued().iter().all(|i| i.reason == Reason::Renew));
    assert!(read(dir.path(), "apiserver.key").len() > 1000, "still RSA");
    assert_eq!(renewed.ca_cert_hash(), rsa.ca_cert_hash());

    // An explicit switch is remembered: the next start without a flag keeps ECDSA.
    let ec = Pki::load_or_init(dir.path(), &plan(), Some(KeyAlgorithm::EcdsaP256)).unwrap();
    assert!(ec.issued().iter().all(|i| i.reason == Reason::KeyAlgorithm));
    assert_eq!(read(dir.path(), "key-algorithm"), "ecdsa-p256\n");
    let before = snapshot(dir.path());
    assert!(init(dir.path()).issued().is_empty());
    assert_eq!(snapshot(dir.path()), before);

    // A PKI from before the choice was recorded (RSA CA, ECDSA leaves): without a flag
    // nothing is re-issued for its algorithm alone.
    std::fs::remove_file(pki_path(dir.path(), "key-algorithm")).unwrap();
    let legacy = init(dir.path());
    assert!(legacy.issued().is_empty(), "{:?}", legacy.issued());
    assert_eq!(legacy.key_algorithm(), KeyAlgorithm::Rsa2048, "the CA's");
    assert!(!pki_path(dir.path(), "key-algorithm").exists());
    std::fs::write(pki_path(dir.path(), "key-algorithm"), "dsa\n").unwrap();
    assert!(matches!(
        Pki::load_or_init(dir.path(), &plan(), None),
        Err(PkiError::Invalid(_))
    ));
}

#[test]
fn read_only_load_writes_nothing_and_lists_stale_leaves() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!Pki::exists(dir.path()));
    assert!(Pki::load_read_only(dir.path(), &plan()).is_err());
    assert!(!pki_path(dir.path(), "").exists(), "nothing created");
    let first = init(dir.path());
    assert!(Pki::exists(dir.path()));
    let before = snapshot(dir.path());
    // The plan gains a control-plane node: serve would re-issue the apiserver certificate
    // and issue cp-4's etcd certificates.
    let mut p = plan();
    let mut cp4 = p.nodes[0].clone();
    cp4.hostname = "cp-4".into();
    cp4.init = false;
    p.nodes.push(cp4);
    let err = Pki::load_read_only(dir.path(), &p)
        .err()
        .expect("cp-4 has no etcd certs");
    assert!(err.to_string().contains("etcd/cp-4/server"), "{err}");
    p.nodes.pop();
    p.nodes[1].ip = Ipv4Addr::new(10, 20, 0, 99);
    let ro = Pki::load_read_only(dir.path(), &p).unwrap();
    let pending: BTreeSet<&str> = ro.pending().iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        pending,
        BTreeSet::from(["apiserver", "etcd/cp-2/server", "etcd/cp-2/peer"])
    );
    assert!(ro.issued().is_empty());
    assert_eq!(fingerprints(&ro), fingerprints(&first));
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a read-only load writes nothing"
    );
}
