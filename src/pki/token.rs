//! kubeadm bootstrap tokens and the admin kubeconfig: the two secrets that are not
//! certificates.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::PkiError;

/// How long a bootstrap token is valid, kubeadm's default. Nodes join within hours of
/// `kubeadm init`; a token that leaks later is useless.
pub const TOKEN_TTL_SECS: u64 = 24 * 3600;
/// A token with less than this left is replaced on load, so a node starting its join now
/// still finishes before the token expires.
pub const TOKEN_MIN_REMAINING_SECS: u64 = 3600;

/// A kubeadm bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`, id.secret) with its expiry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapToken {
    pub token: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds; `created_at + ttl_secs`.
    pub expires_at: u64,
    pub ttl_secs: u64,
}

impl std::fmt::Debug for BootstrapToken {
    /// Shows the public token id only: the secret half must not reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("id", &self.id())
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl BootstrapToken {
    /// The public half (`bootstrap-token-<id>` is the Secret's name in kube-system).
    pub fn id(&self) -> &str {
        self.token.split('.').next().unwrap_or("")
    }

    /// The TTL kubeadm should give the token's Secret at `now`, as a Go duration (`"3600s"`).
    pub fn remaining_ttl(&self, now: u64) -> String {
        format!("{}s", self.expires_at.saturating_sub(now))
    }

    pub fn generate(now: u64) -> Result<BootstrapToken, PkiError> {
        Ok(BootstrapToken {
            token: format!("{}.{}", random_chars(6)?, random_chars(16)?),
            created_at: now,
            expires_at: now + TOKEN_TTL_SECS,
            ttl_secs: TOKEN_TTL_SECS,
        })
    }

    /// Whether the token has the shape kubeadm requires.
    pub fn is_well_formed(&self) -> bool {
        let ok = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        matches!(self.token.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
    }

    /// Still usable for a join started at `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        self.expires_at >= now.saturating_add(TOKEN_MIN_REMAINING_SECS)
    }
}

/// `n` characters uniformly from `[a-z0-9]` (rejection sampling: 252 = 7 * 36, so bytes
/// 252..=255 are discarded rather than skewing the distribution).
fn random_chars(n: usize) -> Result<String, PkiError> {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 32];
    while out.len() < n {
        getrandom::fill(&mut buf)
            .map_err(|e| PkiError::Crypto(format!("reading random bytes: {e}")))?;
        for b in buf.iter().filter(|&&b| b < 252) {
            if out.len() == n {
                break;
            }
            out.push(ALPHABET[usize::from(b % 36)] as char);
        }
    }
    Ok(out)
}

/// The admin kubeconfig (admin.conf): `user` authenticates with its client certificate
/// against `server`, trusting `ca_pem`.
pub fn admin_kubeconfig(
    cluster: &str,
    server: &str,
    user: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - cluster:\n    \
             certificate-authority-data: {ca}\n    \
             server: {server}\n  \
           name: {cluster}\n\
         contexts:\n\
         - context:\n    \
             cluster: {cluster}\n    \
             user: {user}\n  \
           name: {user}@{cluster}\n\
         current-context: {user}@{cluster}\n\
         preferences: {{}}\n\
         users:\n\
         - name: {user}\n  \
           user:\n    \
             client-certificate-data: {cert}\n    \
             client-key-data: {key}\n",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}
