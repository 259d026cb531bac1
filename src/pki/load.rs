//! Loading the PKI from disk and generating or re-issuing what is missing or stale.
//! Write order makes every crash point recoverable: a key is written before its
//! certificate, so a crash in between leaves a certificate that no longer matches its key
//! (a leaf is re-issued on the next start; a CA key without certificate is re-certified).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};

use super::files::{self, PUBLIC_MODE, SECRET_MODE};
use super::inspect::{CertInfo, inspect};
use super::issue::{KeyAlgorithm, issue_leaf, self_signed_ca};
use super::spec::{CaKind, LeafSpec, leaf_specs};
use super::token::{BootstrapToken, admin_kubeconfig};
use super::{
    ADMIN_USER, Ca, CertSummary, Issued, Leaf, PKI_DIR, Pki, PkiError, RENEW_BEFORE, Reason,
};
use crate::plan::Plan;

const SA_KEY: &str = "sa.key";
const SA_PUB: &str = "sa.pub";
const TOKEN_FILE: &str = "bootstrap-token.json";
const ADMIN_CONF: &str = "admin.conf";
/// The operator's key algorithm choice, so a later start without `--key-algorithm` keeps it.
const ALG_FILE: &str = "key-algorithm";

/// What [`open`] may do with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Generate what is missing, re-issue what is stale (`serve`).
    Init,
    /// Like `Init`, and re-issue every leaf (`pki renew`).
    Renew,
    /// Write nothing: missing material is an error, stale leaves are used as they are and
    /// listed in [`Pki::pending`] (`render` next to a running `serve`).
    ReadOnly,
}

fn now_secs() -> i64 {
    i64::try_from(crate::store::now_secs()).unwrap_or(i64::MAX)
}

fn parse_key(pem: &str, path: &Path) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem)
        .map_err(|e| PkiError::Invalid(format!("{}: unreadable private key: {e}", path.display())))
}

fn issued_cert(name: &str, reason: Reason, info: &CertInfo) -> Issued {
    Issued {
        name: name.to_string(),
        reason,
        id: info.fingerprint.clone(),
        expires_at: Some(info.not_after),
    }
}

/// Writes a key (0600) and then its certificate (0644).
fn write_pair(dir: &Path, stem: &str, key_pem: &str, cert_pem: &str) -> Result<(), PkiError> {
    let base = dir.join(stem);
    if let Some(parent) = base.parent() {
        files::ensure_dir(parent)?;
    }
    files::write_atomic(&base.with_extension("key"), key_pem.as_bytes(), SECRET_MODE)?;
    files::write_atomic(
        &base.with_extension("crt"),
        cert_pem.as_bytes(),
        PUBLIC_MODE,
    )?;
    Ok(())
}

fn read_alg(dir: &Path) -> Result<Option<KeyAlgorithm>, PkiError> {
    let Some(raw) = files::read_optional(&dir.join(ALG_FILE))? else {
        return Ok(None);
    };
    KeyAlgorithm::parse(raw.trim()).map(Some).ok_or_else(|| {
        PkiError::Invalid(format!(
            "{}: unknown key algorithm {:?} (ecdsa-p256 or rsa2048)",
            dir.join(ALG_FILE).display(),
            raw.trim()
        ))
    })
}

/// Loads the PKI under `<state_dir>/pki`. `requested` is an explicit `--key-algorithm`:
/// it is persisted and leaves of another algorithm are re-issued. Without it the persisted
/// choice applies, else the cluster CA's own algorithm, and existing leaves are never
/// re-issued for their algorithm alone.
pub(super) fn open(
    state_dir: &Path,
    plan: &Plan,
    requested: Option<KeyAlgorithm>,
    mode: Mode,
) -> Result<Pki, PkiError> {
    let dir = state_dir.join(PKI_DIR);
    if mode == Mode::ReadOnly {
        if !dir.is_dir() {
            return Err(no_pki(&dir));
        }
    } else {
        files::ensure_dir(&dir)?;
    }
    let persisted = read_alg(&dir)?;
    let chosen = requested.or(persisted);
    let mut issued = Vec::new();
    let mut cas = BTreeMap::new();
    for kind in CaKind::ALL {
        let alg = chosen.unwrap_or_default();
        cas.insert(kind, load_ca(&dir, kind, alg, mode, &mut issued)?);
    }
    let cluster_ca = &cas[&CaKind::Cluster].key;
    let alg = chosen
        .or_else(|| KeyAlgorithm::of(cluster_ca))
        .unwrap_or_default();
    let fresh = issued
        .iter()
        .any(|i| i.name == "ca" && i.reason == Reason::Missing);
    if mode != Mode::ReadOnly && (requested.is_some() || fresh) && persisted != Some(alg) {
        files::write_atomic(
            &dir.join(ALG_FILE),
            format!("{}\n", alg.name()).as_bytes(),
            PUBLIC_MODE,
        )?;
    }
    let (sa_key_pem, sa_pub_pem) = load_sa(&dir, alg, mode, &mut issued)?;
    let token = match mode {
        Mode::ReadOnly => read_token(&dir)?.ok_or_else(|| no_pki(&dir))?,
        _ => {
            let (token, token_issued) = ensure_token(&dir, read_token(&dir)?.as_ref())?;
            issued.extend(token_issued);
            token
        }
    };
    let mut pki = Pki {
        dir,
        alg,
        enforce_alg: chosen.is_some(),
        cas,
        sa_key_pem,
        sa_pub_pem,
        leaves: BTreeMap::new(),
        token,
        admin_conf: String::new(),
        issued: Vec::new(),
        pending: Vec::new(),
    };
    issued.extend(leaves(&mut pki, plan, mode)?);
    let now = u64::try_from(now_secs()).unwrap_or(0);
    if mode == Mode::ReadOnly && !pki.token.is_fresh(now) {
        pki.pending
            .push(("bootstrap-token".into(), Reason::Expiring));
    }
    pki.issued = issued;
    Ok(pki)
}

fn no_pki(dir: &Path) -> PkiError {
    PkiError::Invalid(format!(
        "no complete PKI in {} (`slipway serve` or `slipway pki renew` creates it)",
        dir.display()
    ))
}

fn load_ca(
    dir: &Path,
    kind: CaKind,
    alg: KeyAlgorithm,
    mode: Mode,
    issued: &mut Vec<Issued>,
) -> Result<Ca, PkiError> {
    let cert_path = dir.join(format!("{}.crt", kind.stem()));
    let key_path = dir.join(format!("{}.key", kind.stem()));
    if let Some(parent) = cert_path.parent()
        && mode != Mode::ReadOnly
    {
        files::ensure_dir(parent)?;
    }
    let cert = files::read_optional(&cert_path)?;
    let key_pem = files::read_optional(&key_path)?;
    let (cert_pem, key_pem, key) = match (cert, key_pem) {
        (Some(cert_pem), Some(key_pem)) => {
            let key = parse_key(&key_pem, &key_path)?;
            (cert_pem, key_pem, key)
        }
        (Some(_), None) => {
            return Err(PkiError::KeyMissing {
                what: "CA",
                cert: cert_path,
                key: key_path,
                dir: dir.to_path_buf(),
            });
        }
        (None, _) if mode == Mode::ReadOnly => return Err(no_pki(dir)),
        (None, Some(key_pem)) => {
            let key = parse_key(&key_pem, &key_path)?;
            let cert_pem = self_signed_ca(kind, &key)?;
            files::write_atomic(&cert_path, cert_pem.as_bytes(), PUBLIC_MODE)?;
            let info = inspect(&cert_pem)?;
            issued.push(issued_cert(kind.stem(), Reason::Recertified, &info));
            (cert_pem, key_pem, key)
        }
        (None, None) => {
            let key = alg.generate()?;
            let key_pem = key.serialize_pem();
            let cert_pem = self_signed_ca(kind, &key)?;
            write_pair(dir, kind.stem(), &key_pem, &cert_pem)?;
            let info = inspect(&cert_pem)?;
            issued.push(issued_cert(kind.stem(), Reason::Missing, &info));
            (cert_pem, key_pem, key)
        }
    };
    let info = inspect(&cert_pem)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", cert_path.display())))?;
    if info.spki_der != key.subject_public_key_info() {
        return Err(PkiError::KeyMismatch {
            what: "CA",
            cert: cert_path,
            key: key_path,
        });
    }
    if !info.is_ca {
        return Err(PkiError::Invalid(format!(
            "{} is not a CA certificate",
            cert_path.display()
        )));
    }
    if info.not_after < now_secs() + RENEW_BEFORE.as_secs() as i64 {
        tracing::warn!(
            cert = %cert_path.display(),
            not_after = %super::format_time(info.not_after),
            "CA certificate expires soon; Slipway never replaces a CA, rotate it by hand"
        );
    }
    Ok(Ca {
        cert_pem,
        key,
        key_pem,
        info,
    })
}

/// The service-account signing key: like a CA, never replaced (it would invalidate every
/// service-account token in the cluster).
fn load_sa(
    dir: &Path,
    alg: KeyAlgorithm,
    mode: Mode,
    issued: &mut Vec<Issued>,
) -> Result<(String, String), PkiError> {
    let key_path = dir.join(SA_KEY);
    let pub_path = dir.join(SA_PUB);
    let key_pem = files::read_optional(&key_path)?;
    let pub_pem = files::read_optional(&pub_path)?;
    let (key_pem, key) = match (key_pem, &pub_pem) {
        (Some(pem), _) => {
            let key = parse_key(&pem, &key_path)?;
            (pem, key)
        }
        (None, Some(_)) => {
            return Err(PkiError::KeyMissing {
                what: "service-account key",
                cert: pub_path,
                key: key_path,
                dir: dir.to_path_buf(),
            });
        }
        (None, None) if mode == Mode::ReadOnly => return Err(no_pki(dir)),
        (None, None) => {
            let key = alg.generate()?;
            let pem = key.serialize_pem();
            files::write_atomic(&key_path, pem.as_bytes(), SECRET_MODE)?;
            issued.push(Issued {
                name: "sa".into(),
                reason: Reason::Missing,
                id: super::spki_hash(&key.subject_public_key_info()),
                expires_at: None,
            });
            (pem, key)
        }
    };
    let derived = key.public_key_pem();
    match pub_pem {
        Some(p) if pem_body(&p) == pem_body(&derived) => Ok((key_pem, p)),
        Some(_) => Err(PkiError::KeyMismatch {
            what: "service-account key",
            cert: pub_path,
            key: key_path,
        }),
        None => {
            if mode != Mode::ReadOnly {
                files::write_atomic(&pub_path, derived.as_bytes(), PUBLIC_MODE)?;
            }
            Ok((key_pem, derived))
        }
    }
}

/// The base64 body of a PEM block, whitespace removed, for comparing encodings.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

/// Why an existing leaf must be re-issued, if it must (pure).
pub(super) fn leaf_verdict(
    spec: &LeafSpec,
    info: &CertInfo,
    key_matches: bool,
    ca: &CertInfo,
    now: i64,
) -> Option<Reason> {
    let orgs: Vec<String> = spec.organization.iter().cloned().collect();
    if !key_matches {
        Some(Reason::KeyMismatch)
    } else if info.authority_key_id.is_none() || info.authority_key_id != ca.subject_key_id {
        Some(Reason::WrongIssuer)
    } else if info.not_after < now + RENEW_BEFORE.as_secs() as i64 {
        Some(Reason::Expiring)
    } else if info.sans != spec.sans
        || info.common_name.as_deref() != Some(spec.common_name.as_str())
        || info.organizations != orgs
    {
        Some(Reason::PlanChanged)
    } else {
        None
    }
}

/// The existing leaf of `spec` (if its files are readable) and why it must be (re)issued,
/// if it must. `alg`: leaves of another key algorithm are stale (an explicit choice).
fn check_leaf(
    dir: &Path,
    spec: &LeafSpec,
    ca: &CertInfo,
    alg: Option<KeyAlgorithm>,
) -> Result<(Option<Leaf>, Option<Reason>), PkiError> {
    let base = dir.join(&spec.stem);
    let cert = files::read_optional(&base.with_extension("crt"))?;
    let key = files::read_optional(&base.with_extension("key"))?;
    let (Some(cert_pem), Some(key_pem)) = (cert, key) else {
        return Ok((None, Some(Reason::Missing)));
    };
    let Ok(info) = inspect(&cert_pem) else {
        return Ok((None, Some(Reason::Unreadable)));
    };
    let key = KeyPair::from_pem(&key_pem).ok();
    let key_matches = key
        .as_ref()
        .is_some_and(|k| k.subject_public_key_info() == info.spki_der);
    let reason = match leaf_verdict(spec, &info, key_matches, ca, now_secs()) {
        // The operator chose another key algorithm: leaves follow (CAs never do).
        None if alg.is_some_and(|a| key.is_some_and(|k| KeyAlgorithm::of(&k) != Some(a))) => {
            Some(Reason::KeyAlgorithm)
        }
        other => other,
    };
    let leaf = Leaf {
        spec: spec.clone(),
        cert_pem,
        key_pem,
        info,
    };
    Ok((Some(leaf), reason))
}

/// Loads or (re)issues every leaf the plan needs and rewrites admin.conf if it changed
/// (read-only: uses what is on disk and lists what is stale in `pki.pending`).
pub(super) fn leaves(pki: &mut Pki, plan: &Plan, mode: Mode) -> Result<Vec<Issued>, PkiError> {
    let mut issued = Vec::new();
    let mut pending = Vec::new();
    let mut loaded = BTreeMap::new();
    let enforced = pki.enforce_alg.then_some(pki.alg);
    for spec in leaf_specs(plan) {
        let ca = &pki.cas[&spec.issuer];
        let (existing, reason) = match check_leaf(&pki.dir, &spec, &ca.info, enforced)? {
            (leaf, None) if mode == Mode::Renew => (leaf, Some(Reason::Renew)),
            other => other,
        };
        let leaf = match (existing, reason) {
            (Some(leaf), None) => leaf,
            (Some(leaf), Some(reason)) if mode == Mode::ReadOnly => {
                pending.push((spec.stem.clone(), reason));
                leaf
            }
            (None, _) if mode == Mode::ReadOnly => {
                return Err(PkiError::Invalid(format!(
                    "{} is missing or unreadable in {} (`slipway serve` issues it)",
                    spec.stem,
                    pki.dir.display()
                )));
            }
            (_, reason) => {
                let reason = reason.unwrap_or(Reason::Renew);
                let key = pki.alg.generate()?;
                let key_pem = key.serialize_pem();
                let cert_pem = issue_leaf(&spec, &key, &ca.cert_pem, &ca.key)?;
                write_pair(&pki.dir, &spec.stem, &key_pem, &cert_pem)?;
                let info = inspect(&cert_pem)?;
                issued.push(issued_cert(&spec.stem, reason, &info));
                Leaf {
                    spec,
                    cert_pem,
                    key_pem,
                    info,
                }
            }
        };
        loaded.insert(leaf.spec.stem.clone(), leaf);
    }
    pki.leaves = loaded;
    pki.pending = pending;
    let admin = &pki.leaves["admin"];
    let ep = &plan.cluster.endpoint;
    let conf = admin_kubeconfig(
        &plan.cluster.name,
        &format!("https://{}:{}", ep.fqdn, ep.port),
        ADMIN_USER,
        pki.ca_cert_pem(),
        &admin.cert_pem,
        &admin.key_pem,
    );
    let path = pki.dir.join(ADMIN_CONF);
    if mode != Mode::ReadOnly && files::read_optional(&path)?.as_deref() != Some(conf.as_str()) {
        files::write_atomic(&path, conf.as_bytes(), SECRET_MODE)?;
    }
    pki.admin_conf = conf;
    Ok(issued)
}

fn read_token(dir: &Path) -> Result<Option<BootstrapToken>, PkiError> {
    let Some(raw) = files::read_optional(&dir.join(TOKEN_FILE))? else {
        return Ok(None);
    };
    // An unreadable record is replaced like a missing one: the token is re-creatable.
    Ok(serde_json::from_str::<BootstrapToken>(&raw)
        .ok()
        .filter(BootstrapToken::is_well_formed))
}

/// Returns `current` if it is still fresh, else a new token (written to disk) and its
/// [`Issued`] entry.
pub(super) fn ensure_token(
    dir: &Path,
    current: Option<&BootstrapToken>,
) -> Result<(BootstrapToken, Option<Issued>), PkiError> {
    let now = u64::try_from(now_secs()).unwrap_or(0);
    let reason = match current {
        Some(t) if t.is_well_formed() && t.is_fresh(now) => return Ok((t.clone(), None)),
        Some(_) => Reason::Expiring,
        None => Reason::Missing,
    };
    let t = BootstrapToken::generate(now)?;
    let json = serde_json::to_string_pretty(&t)
        .map_err(|e| PkiError::Invalid(format!("encoding the bootstrap token: {e}")))?;
    files::write_atomic(&dir.join(TOKEN_FILE), json.as_bytes(), SECRET_MODE)?;
    let issued = Issued {
        name: "bootstrap-token".into(),
        reason,
        id: format!("token id {}", t.id()),
        expires_at: i64::try_from(t.expires_at).ok(),
    };
    Ok((t, Some(issued)))
}

/// Reads what exists under `<state_dir>/pki` without generating anything, for
/// `slipway pki show`: the CAs, then the plan's leaves that are present.
pub fn show(state_dir: &Path, plan: &Plan) -> Result<Vec<CertSummary>, PkiError> {
    let dir = state_dir.join(PKI_DIR);
    let read = |stem: &str| -> Result<Option<CertInfo>, PkiError> {
        let path: PathBuf = dir.join(format!("{stem}.crt"));
        files::read_optional(&path)?
            .map(|pem| {
                inspect(&pem).map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))
            })
            .transpose()
    };
    let mut rows = Vec::new();
    for kind in CaKind::ALL {
        if let Some(info) = read(kind.stem())? {
            rows.push(CertSummary::new(kind.stem(), &info));
        }
    }
    if rows.is_empty() {
        return Err(PkiError::Invalid(format!(
            "no PKI in {} yet (`slipway serve` or `slipway pki renew` creates it)",
            dir.display()
        )));
    }
    for spec in leaf_specs(plan) {
        if let Some(info) = read(&spec.stem)? {
            rows.push(CertSummary::new(&spec.stem, &info));
        }
    }
    Ok(rows)
}
