//! The cluster PKI: three CAs (cluster, etcd, front-proxy), the service-account key pair,
//! every leaf certificate kubeadm needs, the admin kubeconfig, a bootstrap token and
//! Slipway's own serving certificate, persisted under `<state_dir>/pki/` with Kubernetes'
//! file names.
//!
//! Material is loaded when present and generated only when missing. A CA is never
//! regenerated: every node and client trusts it, so a CA certificate whose key is missing or
//! does not match is an error for the operator to resolve. Leaves are cheap and re-issued
//! when missing, expiring within [`RENEW_BEFORE`], no longer matching the plan (SANs,
//! subject) or their key, when the operator explicitly chose another [`KeyAlgorithm`], or
//! on [`Pki::renew`]. A CA key
//! whose certificate file is gone gets a new self-signed certificate for the same key (same
//! subject and key identifier, so everything it signed still verifies). Everything newly issued is listed in
//! [`Issued`] entries; the caller records each as a `secret.issued` event
//! ([`record_issued`]).

pub mod cli;
pub mod cluster;
pub mod files;
mod inspect;
mod issue;
mod load;
mod spec;
#[cfg(test)]
mod tests;
mod token;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::KeyPair;
use serde::Serialize;

use crate::desc::Role;
use crate::plan::{NodePlan, Plan};
use crate::store::{Op, Store, StoreError};

pub use inspect::{CertInfo, hex, inspect, spki_hash};
pub use issue::{BACKDATE, CA_VALIDITY, KeyAlgorithm, LEAF_VALIDITY};
pub use load::show;
pub use spec::{CaKind, LeafSpec, Purpose, San, admin_group, apiserver_sans, leaf_specs};
pub use token::{BootstrapToken, TOKEN_TTL_SECS};

/// Directory under the state directory that holds all key material.
pub const PKI_DIR: &str = "pki";
/// Leaves expiring within this are re-issued on load.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Name of the admin user in admin.conf, as kubeadm's.
pub const ADMIN_USER: &str = "kubernetes-admin";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Crypto(String),
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{} exists but its private key {} is missing; refusing to generate a new {what}: \
         every node and client trusts the existing one. Restore the key from a backup, or \
         remove {} entirely to start a new cluster",
        cert.display(), key.display(), dir.display()
    )]
    KeyMissing {
        what: &'static str,
        cert: PathBuf,
        key: PathBuf,
        dir: PathBuf,
    },
    #[error(
        "private key {} does not match {}; refusing to replace the {what}: restore the \
         matching key from a backup",
        key.display(), cert.display()
    )]
    KeyMismatch {
        what: &'static str,
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Why something was (re)issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Missing,
    /// A CA certificate re-made for its existing key (its certificate file was missing).
    Recertified,
    Expiring,
    /// Subject or SANs differ from what the plan needs (e.g. a control-plane node added).
    PlanChanged,
    /// The private key file does not match the certificate, or is unreadable.
    KeyMismatch,
    /// Not signed by the current CA (its authority key id differs).
    WrongIssuer,
    /// The key is not of the [`KeyAlgorithm`] the operator chose.
    KeyAlgorithm,
    Unreadable,
    Renew,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Missing => "was missing",
            Reason::Recertified => "certificate re-made for the existing key",
            Reason::Expiring => "was expiring",
            Reason::PlanChanged => "no longer matched the plan",
            Reason::KeyMismatch => "did not match its key",
            Reason::WrongIssuer => "was not signed by the current CA",
            Reason::KeyAlgorithm => "had a key of another algorithm",
            Reason::Unreadable => "was unreadable",
            Reason::Renew => "renewed",
        }
    }
}

/// One secret newly written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issued {
    /// `ca`, `etcd/ca`, `sa`, `apiserver`, `etcd/cp1/peer`, `bootstrap-token`, ...
    pub name: String,
    pub reason: Reason,
    /// Certificate fingerprint, or the token's public id; never secret material.
    pub id: String,
    /// Unix seconds.
    pub expires_at: Option<i64>,
}

impl Issued {
    /// The `secret.issued` event message.
    pub fn event_message(&self) -> String {
        let mut m = format!(
            "{} issued ({}): {}",
            self.name,
            self.reason.describe(),
            self.id
        );
        if let Some(t) = self.expires_at {
            let _ = write!(m, ", expires {}", format_time(t));
        }
        m
    }
}

/// Records one `secret.issued` event per entry, in one durable batch.
pub fn record_issued(store: &dyn Store, issued: &[Issued]) -> Result<(), StoreError> {
    if issued.is_empty() {
        return Ok(());
    }
    let ops: Vec<Op> = issued
        .iter()
        .map(|i| Op::Event {
            kind: "secret.issued".into(),
            mac: None,
            message: i.event_message(),
        })
        .collect();
    for r in store.apply(&ops)? {
        r?;
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM UTC` for unix seconds.
pub fn format_time(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!("{} {:02}:{:02} UTC", t.date(), t.hour(), t.minute()),
        Err(_) => unix.to_string(),
    }
}

/// A CA: certificate, key and what the certificate says.
struct Ca {
    cert_pem: String,
    key: KeyPair,
    key_pem: String,
    info: CertInfo,
}

/// A leaf certificate as on disk.
struct Leaf {
    spec: LeafSpec,
    cert_pem: String,
    key_pem: String,
    info: CertInfo,
}

/// A file a node needs under /etc/kubernetes/pki.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// Relative to /etc/kubernetes/pki, e.g. `etcd/ca.key`.
    pub path: String,
    pub contents: String,
    pub mode: u32,
}

impl std::fmt::Debug for NodeFile {
    /// Omits the contents: they may be a private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeFile({}, {:o})", self.path, self.mode)
    }
}

/// One row of [`Pki::summary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertSummary {
    pub name: String,
    pub subject: String,
    pub sans: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    pub fingerprint: String,
    pub is_ca: bool,
}

impl CertSummary {
    fn new(name: &str, info: &CertInfo) -> CertSummary {
        CertSummary {
            name: name.to_string(),
            subject: info.subject.clone(),
            sans: info.sans.iter().map(San::to_string).collect(),
            not_after: info.not_after,
            fingerprint: info.fingerprint.clone(),
            is_ca: info.is_ca,
        }
    }
}

/// The loaded PKI. Holds private keys: keep it in the process, never serialize it.
pub struct Pki {
    dir: PathBuf,
    /// Algorithm of new leaf keys.
    alg: KeyAlgorithm,
    /// Whether `alg` was chosen (flag or persisted): only then are leaves of another
    /// algorithm re-issued.
    enforce_alg: bool,
    cas: BTreeMap<CaKind, Ca>,
    sa_key_pem: String,
    sa_pub_pem: String,
    leaves: BTreeMap<String, Leaf>,
    token: BootstrapToken,
    admin_conf: String,
    issued: Vec<Issued>,
    /// Read-only loads: leaves that are stale on disk, with why.
    pending: Vec<(String, Reason)>,
}

impl Pki {
    /// Loads the PKI under `<state_dir>/pki/`, generating whatever is missing and
    /// re-issuing leaves that are stale for `plan`. `alg` is an explicit algorithm choice
    /// (persisted; leaves of another algorithm are re-issued); `None` keeps the persisted
    /// one, else the cluster CA's. See [`Pki::issued`] for what this call wrote.
    pub fn load_or_init(
        state_dir: &Path,
        plan: &Plan,
        alg: Option<KeyAlgorithm>,
    ) -> Result<Pki, PkiError> {
        load::open(state_dir, plan, alg, load::Mode::Init)
    }

    /// Like [`Pki::load_or_init`], but re-issues every leaf certificate (CAs, the
    /// service-account key and the token are kept): `slipway pki renew`.
    pub fn load_and_renew(
        state_dir: &Path,
        plan: &Plan,
        alg: Option<KeyAlgorithm>,
    ) -> Result<Pki, PkiError> {
        load::open(state_dir, plan, alg, load::Mode::Renew)
    }

    /// Loads an existing PKI without writing anything: missing material is an error,
    /// leaves that `serve` would re-issue are used as they are and listed in
    /// [`Pki::pending`]. For `slipway render`, which may run next to `serve`.
    pub fn load_read_only(state_dir: &Path, plan: &Plan) -> Result<Pki, PkiError> {
        load::open(state_dir, plan, None, load::Mode::ReadOnly)
    }

    /// Whether `<state_dir>/pki` holds any cluster CA material yet.
    pub fn exists(state_dir: &Path) -> bool {
        let dir = state_dir.join(PKI_DIR);
        dir.join("ca.crt").exists() || dir.join("ca.key").exists()
    }

    /// Re-issues every leaf certificate of the loaded PKI; returns what was issued.
    pub fn renew(&mut self, plan: &Plan) -> Result<Vec<Issued>, PkiError> {
        load::leaves(self, plan, load::Mode::Renew)
    }

    /// Brings leaves and the token up to date with a (reloaded) plan and the clock:
    /// re-issues what is missing, expiring or stale. Returns what was issued.
    pub fn refresh(&mut self, plan: &Plan) -> Result<Vec<Issued>, PkiError> {
        let mut issued = load::leaves(self, plan, load::Mode::Init)?;
        issued.extend(self.refresh_token()?);
        Ok(issued)
    }

    /// Replaces the bootstrap token if little of it is left; returns what was issued.
    pub fn refresh_token(&mut self) -> Result<Vec<Issued>, PkiError> {
        let (token, issued) = load::ensure_token(&self.dir, Some(&self.token))?;
        self.token = token;
        Ok(issued.into_iter().collect())
    }

    /// The admin user's client credentials and the CA, for talking to the API server.
    pub fn admin_client(&self) -> cluster::AdminClient {
        let admin = &self.leaves["admin"];
        cluster::AdminClient {
            ca_pem: self.ca_cert_pem().to_string(),
            cert_pem: admin.cert_pem.clone(),
            key_pem: admin.key_pem.clone(),
        }
    }

    /// Leaves a read-only load found stale (name, why); `serve` re-issues them.
    pub fn pending(&self) -> &[(String, Reason)] {
        &self.pending
    }

    /// What the call that created this value generated or re-issued.
    pub fn issued(&self) -> &[Issued] {
        &self.issued
    }

    /// The directory holding the material (`<state_dir>/pki`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.alg
    }

    fn ca(&self, kind: CaKind) -> &Ca {
        &self.cas[&kind]
    }

    /// The cluster CA certificate (PEM): what every node and client trusts.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca(CaKind::Cluster).cert_pem
    }

    /// The CA certificate of `kind` (PEM).
    pub fn ca_cert_pem_of(&self, kind: CaKind) -> &str {
        &self.ca(kind).cert_pem
    }

    /// `sha256:<hex>` of the cluster CA's SubjectPublicKeyInfo, for kubeadm's
    /// `--discovery-token-ca-cert-hash` (and `caCertHashes` in a JoinConfiguration).
    pub fn ca_cert_hash(&self) -> String {
        spki_hash(&self.ca(CaKind::Cluster).info.spki_der)
    }

    pub fn bootstrap_token(&self) -> &BootstrapToken {
        &self.token
    }

    /// The admin kubeconfig (contains the admin's private key).
    pub fn admin_kubeconfig(&self) -> &str {
        &self.admin_conf
    }

    /// Slipway's own serving certificate and key (PEM) for HTTPS and the registry; it is
    /// signed by the cluster CA, which nodes already trust.
    pub fn slipway_tls(&self) -> (&str, &str) {
        let l = &self.leaves["slipway"];
        (&l.cert_pem, &l.key_pem)
    }

    /// Files a node needs under /etc/kubernetes/pki. A worker gets the cluster CA
    /// certificate only (it joins with the token and CA hash); a control-plane node gets
    /// the CA keys kubeadm needs to join as control plane, the service-account key pair, the
    /// shared leaves and its own etcd certificates.
    pub fn node_files(&self, node: &NodePlan) -> Vec<NodeFile> {
        let public = |path: &str, pem: &str| NodeFile {
            path: path.to_string(),
            contents: pem.to_string(),
            mode: files::PUBLIC_MODE,
        };
        let secret = |path: &str, pem: &str| NodeFile {
            path: path.to_string(),
            contents: pem.to_string(),
            mode: files::SECRET_MODE,
        };
        let mut out = vec![public("ca.crt", self.ca_cert_pem())];
        if node.role != Role::ControlPlane {
            return out;
        }
        out.push(secret("ca.key", &self.ca(CaKind::Cluster).key_pem));
        for kind in [CaKind::Etcd, CaKind::FrontProxy] {
            let ca = self.ca(kind);
            out.push(public(&format!("{}.crt", kind.stem()), &ca.cert_pem));
            out.push(secret(&format!("{}.key", kind.stem()), &ca.key_pem));
        }
        out.push(secret("sa.key", &self.sa_key_pem));
        out.push(public("sa.pub", &self.sa_pub_pem));
        for leaf in self.leaves.values() {
            let mine = leaf.spec.node.as_deref().is_none_or(|n| n == node.hostname);
            if let (Some(path), true) = (leaf.spec.node_path, mine) {
                out.push(public(&format!("{path}.crt"), &leaf.cert_pem));
                out.push(secret(&format!("{path}.key"), &leaf.key_pem));
            }
        }
        out
    }

    /// Every certificate: the CAs first, then the leaves in plan order.
    pub fn summary(&self) -> Vec<CertSummary> {
        let mut rows: Vec<CertSummary> = self
            .cas
            .iter()
            .map(|(k, ca)| CertSummary::new(k.stem(), &ca.info))
            .collect();
        rows.extend(
            self.leaves
                .values()
                .map(|l| CertSummary::new(&l.spec.stem, &l.info)),
        );
        rows
    }
}

// The servers share one `Pki` across threads (behind an Arc).
const _: fn() = || {
    fn shareable<T: Send + Sync>() {}
    shareable::<Pki>();
};

/// `slipway pki show`'s table: name, subject, SANs, expiry.
pub fn summary_table(rows: &[CertSummary]) -> String {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.subject.clone(),
                if r.sans.is_empty() {
                    "-".to_string()
                } else {
                    r.sans.join(",")
                },
                format_time(r.not_after),
            ]
        })
        .collect();
    let header = ["NAME", "SUBJECT", "SANS", "EXPIRES"];
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |row: [&str; 4]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    };
    line(header);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    out
}
