//! Reading certificates back with x509-parser: what the load path checks (expiry, SANs,
//! subject, key match, issuer) and what `summary()` and `slipway pki show` print.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sha2::{Digest, Sha256};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::PkiError;
use super::spec::San;

/// What Slipway needs to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// `CN=..., O=...` as printed by x509-parser.
    pub subject: String,
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
    pub sans: BTreeSet<San>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Lower-case hex of the DER serial.
    pub serial: String,
    /// `sha256:` + hex SHA-256 of the certificate DER (what `openssl x509 -fingerprint
    /// -sha256` prints, without the colons).
    pub fingerprint: String,
    pub spki_der: Vec<u8>,
    pub subject_key_id: Option<Vec<u8>>,
    pub authority_key_id: Option<Vec<u8>>,
    pub is_ca: bool,
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the first CERTIFICATE block in `pem`.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("not a PEM certificate: {e}")))?;
    if p.label != "CERTIFICATE" {
        return Err(PkiError::Invalid(format!(
            "PEM block is {}, not CERTIFICATE",
            p.label
        )));
    }
    Ok(p.contents)
}

/// `sha256:<hex>` of the SubjectPublicKeyInfo DER: kubeadm's `--discovery-token-ca-cert-hash`.
pub fn spki_hash(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(spki_der)))
}

fn san_of(name: &GeneralName<'_>) -> Option<San> {
    match name {
        GeneralName::DNSName(d) => Some(San::Dns(d.to_ascii_lowercase())),
        GeneralName::IPAddress(b) => match b.len() {
            4 => Some(San::Ip(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(*b).ok()?,
            )))),
            16 => Some(San::Ip(IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(*b).ok()?,
            )))),
            _ => None,
        },
        _ => None,
    }
}

/// Parses a PEM certificate into [`CertInfo`].
pub fn inspect(pem: &str) -> Result<CertInfo, PkiError> {
    let der = pem_to_der(pem)?;
    let (_, cert) = X509Certificate::from_der(&der)
        .map_err(|e| PkiError::Invalid(format!("undecodable certificate: {e}")))?;
    let mut info = CertInfo {
        subject: cert.subject().to_string(),
        common_name: cert
            .subject()
            .iter_common_name()
            .find_map(|a| a.as_str().ok())
            .map(str::to_string),
        organizations: cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .map(str::to_string)
            .collect(),
        sans: BTreeSet::new(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        serial: hex(cert.raw_serial()),
        fingerprint: format!("sha256:{}", hex(&Sha256::digest(&der))),
        spki_der: cert.public_key().raw.to_vec(),
        subject_key_id: None,
        authority_key_id: None,
        is_ca: cert.is_ca(),
    };
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                info.sans
                    .extend(san.general_names.iter().filter_map(san_of));
            }
            ParsedExtension::SubjectKeyIdentifier(k) => info.subject_key_id = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                info.authority_key_id = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    Ok(info)
}
