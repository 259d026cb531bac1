//! Option negotiation (RFC 2347 framework; blksize RFC 2348, timeout and tsize RFC 2349,
//! windowsize RFC 7440): what the client asked, bounded by what the path and the server
//! allow. Pure: the server passes the limits in.

use std::time::Duration;

/// Block size without a `blksize` option (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// The largest blksize RFC 2348 allows.
const MAX_BLKSIZE: u16 = 65464;
/// The smallest blksize RFC 2348 allows; smaller requests are ignored (512 is used).
const MIN_BLKSIZE: u16 = 8;
/// IPv4 header (no options) + UDP header + TFTP DATA header.
pub const HEADERS: u16 = 20 + 8 + 4;
/// Largest window we grant: more than this gains nothing on a LAN and risks overrunning
/// the client's socket buffer (a window is sent in one burst).
pub const MAX_WINDOW: u16 = 64;
/// Bytes in flight per window at most, whatever the block size (a buffer of this size is
/// held per transfer).
pub const MAX_WINDOW_BYTES: usize = 512 * 1024;
/// First retransmission timeout when the client does not name one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Limits from the plan and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest DATA payload that fits one frame: `network.mtu` minus [`HEADERS`].
    pub max_blksize: u16,
}

impl Limits {
    pub fn from_mtu(mtu: u16) -> Limits {
        Limits {
            max_blksize: mtu.saturating_sub(HEADERS).clamp(MIN_BLKSIZE, MAX_BLKSIZE),
        }
    }
}

/// What was agreed for one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Options acknowledged in the OACK, in the client's order; empty means no OACK (the
    /// transfer starts with DATA block 1).
    pub oack: Vec<(&'static str, String)>,
}

/// Negotiates the client's `options` for a file of `size` bytes (as sent on the wire).
/// Unknown options and unusable values are left out of the OACK, which RFC 2347 defines
/// as "not accepted"; a repeated option counts once.
pub fn negotiate(options: &[(String, String)], size: u64, limits: Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: DEFAULT_TIMEOUT,
        oack: Vec::new(),
    };
    let mut window_asked = None;
    for (name, value) in options {
        let value = value.trim();
        let name: &'static str = match name.as_str() {
            "blksize" => "blksize",
            "tsize" => "tsize",
            "timeout" => "timeout",
            "windowsize" => "windowsize",
            _ => continue,
        };
        if n.oack.iter().any(|(seen, _)| *seen == name) {
            continue;
        }
        let Ok(v) = value.parse::<u64>() else {
            continue;
        };
        let granted = match name {
            "blksize" if v >= u64::from(MIN_BLKSIZE) => {
                n.blksize = v.min(u64::from(limits.max_blksize)) as u16;
                u64::from(n.blksize)
            }
            // A read request carries 0; the answer is the size.
            "tsize" => size,
            "timeout" if (1..=255).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                v
            }
            "windowsize" if (1..=65535).contains(&v) => {
                window_asked = Some(v as u16);
                v
            }
            _ => continue,
        };
        n.oack.push((name, granted.to_string()));
    }
    // The window depends on the final block size, so it is settled last.
    if let Some(asked) = window_asked {
        let by_bytes = (MAX_WINDOW_BYTES / usize::from(n.blksize)).clamp(1, MAX_WINDOW.into());
        n.windowsize = asked.min(by_bytes as u16);
        for (name, value) in &mut n.oack {
            if *name == "windowsize" {
                *value = n.windowsize.to_string();
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const ETHERNET: Limits = Limits { max_blksize: 1468 };

    #[test]
    fn mtu_gives_the_largest_block() {
        assert_eq!(Limits::from_mtu(1500).max_blksize, 1468);
        assert_eq!(Limits::from_mtu(9000).max_blksize, 8968);
        assert_eq!(Limits::from_mtu(576).max_blksize, 544);
        assert_eq!(Limits::from_mtu(0).max_blksize, 8);
    }

    #[test]
    fn no_options_means_no_oack_and_rfc1350_defaults() {
        let n = negotiate(&[], 100, ETHERNET);
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        assert_eq!(n.timeout, DEFAULT_TIMEOUT);
        assert!(n.oack.is_empty());
    }

    #[test]
    fn blksize_is_clamped_to_the_mtu() {
        let n = negotiate(&opts(&[("blksize", "8192")]), 0, ETHERNET);
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.oack, vec![("blksize", "1468".to_string())]);
        let n = negotiate(&opts(&[("blksize", "1024")]), 0, ETHERNET);
        assert_eq!(n.blksize, 1024);
        // Below the RFC minimum, or not a number: ignored, 512 applies.
        for bad in ["7", "0", "-1", "lots", "99999999999999999999999"] {
            let n = negotiate(&opts(&[("blksize", bad)]), 0, ETHERNET);
            assert_eq!(n.blksize, 512, "{bad}");
            assert!(n.oack.is_empty(), "{bad}");
        }
    }

    #[test]
    fn tsize_answers_the_size_and_unknown_options_are_ignored() {
        let n = negotiate(
            &opts(&[
                ("multicast", ""),
                ("tsize", "0"),
                ("utimeout", "500"),
                ("rollover", "0"),
            ]),
            1_234_567,
            ETHERNET,
        );
        assert_eq!(n.oack, vec![("tsize", "1234567".to_string())]);
    }

    #[test]
    fn timeout_and_windowsize() {
        let n = negotiate(
            &opts(&[("timeout", "3"), ("windowsize", "16"), ("blksize", "1468")]),
            0,
            ETHERNET,
        );
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(n.windowsize, 16);
        assert_eq!(
            n.oack,
            vec![
                ("timeout", "3".to_string()),
                ("windowsize", "16".to_string()),
                ("blksize", "1468".to_string())
            ]
        );
        let n = negotiate(&opts(&[("timeout", "0"), ("windowsize", "0")]), 0, ETHERNET);
        assert!(n.oack.is_empty());
        assert_eq!(n.windowsize, 1);
        // Large windows are capped, by count and by bytes with big blocks.
        let n = negotiate(&opts(&[("windowsize", "1000")]), 0, ETHERNET);
        assert_eq!(n.windowsize, MAX_WINDOW);
        assert_eq!(n.oack, vec![("windowsize", MAX_WINDOW.to_string())]);
        let jumbo = Limits::from_mtu(9000);
        let n = negotiate(
            &opts(&[("windowsize", "1000"), ("blksize", "65464")]),
            0,
            jumbo,
        );
        assert_eq!(n.blksize, 8968);
        assert_eq!(usize::from(n.windowsize), MAX_WINDOW_BYTES / 8968);
        // Tiny blocks: the byte bound must not overflow the window count (found by fuzzing).
        let n = negotiate(&opts(&[("blksize", "8"), ("windowsize", "6")]), 0, ETHERNET);
        assert_eq!((n.blksize, n.windowsize), (8, 6));
        assert_eq!(n.oack[1], ("windowsize", "6".to_string()));
    }

    #[test]
    fn repeated_options_count_once() {
        let n = negotiate(
            &opts(&[("blksize", "1024"), ("blksize", "1468"), ("tsize", "0")]),
            9,
            ETHERNET,
        );
        assert_eq!(n.blksize, 1024);
        assert_eq!(
            n.oack,
            vec![("blksize", "1024".to_string()), ("tsize", "9".to_string())]
        );
    }
}
