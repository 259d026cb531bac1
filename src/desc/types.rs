//! Small value types of the description: positions, MAC addresses, names and durations.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A position in the description file (1-based line and column; line 0 means "not written").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
    /// Byte offset and length of the written value, when known (used for `^^^` markers).
    pub offset: usize,
    pub len: usize,
}

/// An Ethernet MAC address. Displays as upper-case colon form (`52:54:00:AB:CD:EF`), the one
/// normal form used as a key everywhere in Slipway.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Lower-case hyphen form, as iPXE's `${mac:hexhyp}` prints it; used in URLs.
    pub fn url_form(&self) -> String {
        let b = self.0;
        format!(
            "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    /// Accepts `:` or `-` separators in any letter case; exactly six two-digit hex groups.
    fn from_str(s: &str) -> Result<Self, String> {
        let sep = if s.contains('-') { '-' } else { ':' };
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() != 6 {
            return Err(format!(
                "invalid MAC address `{s}`: expected six hex pairs like 52:54:00:12:34:56"
            ));
        }
        let mut out = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "invalid MAC address `{s}`: `{p}` is not a two-digit hex byte"
                ));
            }
            out[i] = u8::from_str_radix(p, 16).map_err(|e| e.to_string())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Checks one RFC 1123 label: 1-63 of `a-z0-9-`, not starting or ending with `-`.
/// Upper case is refused so that names compare equal in DNS, Kubernetes and the store.
pub fn check_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!(
            "invalid hostname `{s}`: a label has 1 to 63 characters"
        ));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(format!(
            "invalid hostname `{s}`: only lower-case letters, digits and `-` are allowed (RFC 1123)"
        ));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "invalid hostname `{s}`: must not start or end with `-` (RFC 1123)"
        ));
    }
    Ok(())
}

/// Checks a dotted DNS name made of RFC 1123 labels, at most 253 characters.
pub fn check_dns_name(s: &str) -> Result<(), String> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 253 {
        return Err(format!("invalid DNS name `{s}`: 1 to 253 characters"));
    }
    for label in s.split('.') {
        check_label(label).map_err(|e| e.replacen("invalid hostname", "invalid DNS name", 1))?;
    }
    Ok(())
}

/// Parses a duration in seconds: a plain integer or a number with `s`, `m`, `h` or `d`.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid duration `{s}`: expected seconds or a number with s, m, h or d (e.g. 12h)")
    })?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration `{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms_normalise_to_one_value() {
        let a: Mac = "52:54:00:ab:CD:0f".parse().unwrap();
        let b: Mac = "52-54-00-AB-cd-0F".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:AB:CD:0F");
        assert_eq!(a.url_form(), "52-54-00-ab-cd-0f");
    }

    #[test]
    fn malformed_macs_are_refused() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:ef:01",
            "5254.00ab.cdef",
            "52:54:00:ab:cd:eg",
            "52:54:00:ab:cd:e",
            "52:54-00:ab:cd:ef",
            "+2:54:00:ab:cd:ef",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn labels_follow_rfc1123() {
        for good in ["cp-1", "a", "0worker", &"a".repeat(63)] {
            assert!(check_label(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", "Web", "web_1", "a.b", &"a".repeat(64)] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
        assert!(check_dns_name("rack1.example.internal").is_ok());
        assert!(check_dns_name("rack1..internal").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("3600").unwrap(), 3600);
        assert_eq!(parse_duration_secs("30m").unwrap(), 1800);
        assert_eq!(parse_duration_secs("12h").unwrap(), 43200);
        assert_eq!(parse_duration_secs("1d").unwrap(), 86400);
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("-1h").is_err());
        assert!(parse_duration_secs("1w").is_err());
    }
}
