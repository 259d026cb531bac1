//! Per-node one-time boot tokens. A node's install script carries a fresh token; the token
//! unlocks that node's config once and authenticates its progress reports. Only a SHA-256
//! of the token is stored, so a copy of the state directory does not hand out live tokens.

use serde::{Deserialize, Serialize};

/// The node's current token. Issuing a new one replaces it (the old one stops working).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootToken {
    /// Upper-case colon form.
    pub mac: String,
    /// Lower-case hex SHA-256 of the token.
    pub hash: String,
    /// Unix milliseconds.
    pub issued_at: u64,
    /// Unix milliseconds; after this the token unlocks nothing.
    pub expires_at: u64,
    /// Unix milliseconds of the config fetch it was spent on, if any.
    pub config_fetched_at: Option<u64>,
}

/// What a token is presented for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUse {
    /// The node's config: allowed once per token.
    Config,
    /// A progress report: allowed while the token is current and unexpired.
    Report,
}

/// The verdict on a presented token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(BootToken),
    /// No token was ever issued to this node (or it was revoked).
    NoToken,
    /// Not the node's current token.
    Mismatch,
    Expired,
    /// The config was already fetched with this token.
    AlreadyUsed,
}

impl TokenCheck {
    /// A short reason for refusal events and error bodies (no secrets in it).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenCheck::Valid(_) => "valid",
            TokenCheck::NoToken => "no boot token issued",
            TokenCheck::Mismatch => "token does not match",
            TokenCheck::Expired => "token expired",
            TokenCheck::AlreadyUsed => "token already used",
        }
    }
}

/// Decides whether `hash` may be used for `usage` at `now` (unix ms). Pure, so the store can
/// run it inside the transaction that records the use.
pub fn check_token(
    stored: Option<&BootToken>,
    hash: &str,
    usage: TokenUse,
    now: u64,
) -> TokenCheck {
    let Some(t) = stored else {
        return TokenCheck::NoToken;
    };
    if !constant_time_eq(t.hash.as_bytes(), hash.as_bytes()) {
        return TokenCheck::Mismatch;
    }
    if now >= t.expires_at {
        return TokenCheck::Expired;
    }
    if usage == TokenUse::Config && t.config_fetched_at.is_some() {
        return TokenCheck::AlreadyUsed;
    }
    TokenCheck::Valid(t.clone())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> BootToken {
        BootToken {
            mac: "52:54:00:00:00:11".into(),
            hash: "ab".repeat(32),
            issued_at: 1_000,
            expires_at: 10_000,
            config_fetched_at: None,
        }
    }

    #[test]
    fn verdicts() {
        let t = token();
        let h = t.hash.clone();
        assert_eq!(
            check_token(None, &h, TokenUse::Config, 2_000),
            TokenCheck::NoToken
        );
        assert_eq!(
            check_token(Some(&t), &"cd".repeat(32), TokenUse::Config, 2_000),
            TokenCheck::Mismatch
        );
        assert_eq!(
            check_token(Some(&t), "ab", TokenUse::Report, 2_000),
            TokenCheck::Mismatch
        );
        assert_eq!(
            check_token(Some(&t), &h, TokenUse::Config, 10_000),
            TokenCheck::Expired
        );
        assert!(matches!(
            check_token(Some(&t), &h, TokenUse::Config, 2_000),
            TokenCheck::Valid(_)
        ));
        let used = BootToken {
            config_fetched_at: Some(3_000),
            ..t
        };
        assert_eq!(
            check_token(Some(&used), &h, TokenUse::Config, 4_000),
            TokenCheck::AlreadyUsed
        );
        // Reports go on after the config fetch.
        assert!(matches!(
            check_token(Some(&used), &h, TokenUse::Report, 4_000),
            TokenCheck::Valid(_)
        ));
    }
}
