//! Key generation and certificate signing with rcgen. Every field that has a library default
//! is set here explicitly (validity, serial, key identifiers, constraints, usages) so that
//! what we issue does not change when rcgen's defaults do.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RsaKeySize, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::PkiError;
use super::spec::{CaKind, LeafSpec, Purpose, San};

/// CAs live 10 years: replacing one means re-trusting it on every node and client.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves live 1 year, as kubeadm's; `renew` or a restart within 30 days re-issues them.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start 5 minutes in the past so a node whose clock lags slightly (NTP not
/// yet synced at first boot) already accepts them, as kubeadm does.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Algorithm of new keys. Chosen explicitly (`--key-algorithm`) it is persisted in
/// `pki/key-algorithm` and leaves follow a change on their next load; otherwise the
/// persisted choice, else the cluster CA's algorithm, applies. CAs and the service-account
/// key keep the algorithm they were created with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: small, fast, supported by every Kubernetes component.
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256, for sites whose tooling still expects RSA.
    Rsa2048,
}

impl KeyAlgorithm {
    /// The name on the command line and in `pki/key-algorithm`.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa2048",
        }
    }

    pub fn parse(name: &str) -> Option<KeyAlgorithm> {
        [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// The algorithm of an existing key (`None`: one Slipway does not issue, e.g. P-384).
    pub fn of(key: &KeyPair) -> Option<KeyAlgorithm> {
        [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048]
            .into_iter()
            .find(|a| key.algorithm() == a.signature_algorithm())
    }

    pub fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    pub fn generate(self) -> Result<KeyPair, PkiError> {
        match self {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(self.signature_algorithm()),
            KeyAlgorithm::Rsa2048 => {
                KeyPair::generate_rsa_for(self.signature_algorithm(), RsaKeySize::_2048)
            }
        }
        .map_err(|e| PkiError::Crypto(format!("generating a {self:?} key: {e}")))
    }
}

/// A random positive serial of 128 bits of entropy (RFC 5280 allows up to 20 octets; a
/// leading zero octet keeps the DER INTEGER positive).
pub fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 17];
    getrandom::fill(&mut bytes[1..])
        .map_err(|e| PkiError::Crypto(format!("reading random bytes: {e}")))?;
    Ok(SerialNumber::from_slice(&bytes))
}

/// SHA-256 truncated to 160 bits (RFC 7093 method 1) of the SPKI: the same key gives the
/// same identifier, so a CA certificate re-made for its existing key keeps its leaves valid.
pub fn key_id(key: &KeyPair) -> Vec<u8> {
    use rcgen::PublicKeyData;
    use sha2::Digest;
    sha2::Sha256::digest(key.subject_public_key_info())[..20].to_vec()
}

fn base_params(
    cn: &str,
    org: Option<&str>,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.not_before = now - BACKDATE;
    p.not_after = now + validity;
    p.serial_number = Some(random_serial()?);
    Ok(p)
}

/// A self-signed CA certificate for `key` (PEM).
pub fn self_signed_ca(kind: CaKind, key: &KeyPair) -> Result<String, PkiError> {
    let now = OffsetDateTime::now_utc();
    let mut p = base_params(kind.common_name(), None, CA_VALIDITY, now)?;
    // No path length: kubeadm's external-CA mode may put an intermediate below ours.
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(key));
    p.use_authority_key_identifier_extension = true;
    let cert = p
        .self_signed(key)
        .map_err(|e| PkiError::Crypto(format!("signing the {} CA: {e}", kind.stem())))?;
    Ok(cert.pem())
}

fn san_type(san: &San) -> Result<SanType, PkiError> {
    Ok(match san {
        San::Ip(ip) => SanType::IpAddress(*ip),
        San::Dns(d) => SanType::DnsName(
            d.as_str()
                .try_into()
                .map_err(|e| PkiError::Crypto(format!("SAN {d}: {e}")))?,
        ),
    })
}

/// Issues the leaf `spec` for `key`, signed by the CA whose certificate is `ca_cert_pem` and
/// key is `ca_key`. Returns the certificate PEM.
pub fn issue_leaf(
    spec: &LeafSpec,
    key: &KeyPair,
    ca_cert_pem: &str,
    ca_key: &KeyPair,
) -> Result<String, PkiError> {
    let now = OffsetDateTime::now_utc();
    let mut p = base_params(
        &spec.common_name,
        spec.organization.as_deref(),
        LEAF_VALIDITY,
        now,
    )?;
    // ExplicitNoCa also makes rcgen write the subject key identifier.
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        // RSA key exchange (TLS 1.2 without ECDHE) encrypts to the key.
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = match spec.purpose {
        Purpose::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Purpose::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Purpose::ServerAndClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    p.subject_alt_names = spec.sans.iter().map(san_type).collect::<Result<_, _>>()?;
    p.key_identifier_method = KeyIdMethod::PreSpecified(key_id(key));
    p.use_authority_key_identifier_extension = true;
    // The issuer (DN, key identifier) is read from the CA certificate itself so the leaf
    // chains to exactly that certificate.
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)
        .map_err(|e| PkiError::Crypto(format!("reading the {:?} CA: {e}", spec.issuer)))?;
    let cert = p
        .signed_by(key, &issuer)
        .map_err(|e| PkiError::Crypto(format!("signing {}: {e}", spec.stem)))?;
    Ok(cert.pem())
}
