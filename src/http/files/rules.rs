//! The decisions behind file serving, as pure functions: which relative path a URL names (or
//! why it is refused), which byte range a `Range` header asks for, whether a conditional
//! request is answered 304, and the Content-Type of a name. The handler only does I/O.

use std::path::PathBuf;
use std::time::SystemTime;

/// Why a URL path cannot name a file. Every variant maps to a fixed message: a response
/// never echoes the path back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadPath {
    /// `..`, `.` or an empty segment (also a leading `/`, i.e. an absolute path).
    Traversal,
    /// A backslash, NUL or `/` inside a segment (after percent-decoding), or a bad escape.
    Encoding,
}

/// The relative path named by `raw`, the still percent-encoded URL path after the route
/// prefix (`os/flatcar/...`). Each segment is decoded on its own, so `%2f` cannot join two
/// segments and `%2e%2e` is caught as `..` after decoding; axum's `Path` extractor decodes
/// before splitting, which is why the handler reads the raw URI instead.
pub fn relative_path(raw: &str) -> Result<PathBuf, BadPath> {
    let mut path = PathBuf::new();
    for seg in raw.split('/') {
        let seg = percent_decode(seg).ok_or(BadPath::Encoding)?;
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(BadPath::Traversal);
        }
        if seg.contains(['/', '\\', '\0']) {
            return Err(BadPath::Encoding);
        }
        path.push(seg);
    }
    Ok(path)
}

/// `%XX` escapes decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What to send for a `Range` header, given the file length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    /// 200 with the whole file: no Range, one we do not parse, or several ranges (a
    /// multipart/byteranges reply buys boot clients nothing; RFC 9110 lets us ignore Range).
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416: a well-formed single range that lies wholly past the end.
    Unsatisfiable,
}

/// Interprets a `Range` header value (RFC 9110 §14.1.2) for a file of `len` bytes.
pub fn range(header: &str, len: u64) -> RangeReply {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeReply::Full;
    };
    let mut specs = spec.split(',').map(str::trim).filter(|s| !s.is_empty());
    let (Some(one), None) = (specs.next(), specs.next()) else {
        return RangeReply::Full;
    };
    let Some((first, last)) = one.split_once('-') else {
        return RangeReply::Full;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            // Digits beyond u64 still mean "very large": saturate rather than reject.
            Some(s.parse().unwrap_or(u64::MAX))
        }
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            None => RangeReply::Full,
            Some(0) => RangeReply::Unsatisfiable,
            Some(_) if len == 0 => RangeReply::Unsatisfiable,
            Some(n) => RangeReply::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
        },
        (first, last) => {
            let Some(start) = num(first) else {
                return RangeReply::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match num(last) {
                    Some(end) if end >= start => end,
                    _ => return RangeReply::Full,
                }
            };
            if start >= len {
                RangeReply::Unsatisfiable
            } else {
                RangeReply::Partial {
                    start,
                    end: end.min(len - 1),
                }
            }
        }
    }
}

/// A file's validators: the strong ETag and the modification time (whole seconds, as
/// HTTP dates carry them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    pub etag: String,
    pub modified: SystemTime,
}

impl Validators {
    /// The ETag changes when the file is replaced (inode), rewritten (mtime, nanoseconds) or
    /// resized; that is what makes it strong enough for ranges to be stitched together.
    pub fn new(inode: u64, len: u64, mtime: SystemTime) -> Validators {
        let nanos = mtime
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let secs =
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs((nanos / 1_000_000_000) as u64);
        Validators {
            etag: format!("\"{inode:x}-{len:x}-{nanos:x}\""),
            modified: secs,
        }
    }

    pub fn last_modified(&self) -> String {
        httpdate::fmt_http_date(self.modified)
    }
}

/// The conditional request headers of a GET/HEAD, as sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditions<'a> {
    pub if_none_match: Option<&'a str>,
    pub if_modified_since: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

/// Whether the client's copy is current (answer 304). If-None-Match, when present, decides
/// alone (RFC 9110 §13.2.2); an unparseable If-Modified-Since is ignored.
pub fn not_modified(c: &Conditions, v: &Validators) -> bool {
    if let Some(inm) = c.if_none_match {
        let inm = inm.trim();
        return inm == "*" || inm.split(',').any(|t| weak_eq(t.trim(), &v.etag));
    }
    match c
        .if_modified_since
        .map(|s| httpdate::parse_http_date(s.trim()))
    {
        Some(Ok(since)) => v.modified <= since,
        _ => false,
    }
}

/// Whether a Range may be honoured: no If-Range, or one naming this very version (strong
/// comparison for an ETag, exact match for a date). Otherwise the whole file is sent.
pub fn if_range_holds(c: &Conditions, v: &Validators) -> bool {
    let Some(ir) = c.if_range.map(str::trim) else {
        return true;
    };
    if ir.starts_with('"') || ir.starts_with("W/") {
        ir == v.etag
    } else {
        httpdate::parse_http_date(ir).is_ok_and(|d| d == v.modified)
    }
}

/// Weak comparison: `W/"x"` matches `"x"`.
fn weak_eq(a: &str, b: &str) -> bool {
    a.trim_start_matches("W/") == b.trim_start_matches("W/")
}

/// Content-Type from the file name's extension; boot loaders and kernels are plain bytes.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("gz" | "tgz") => "application/gzip",
        Some("bz2") => "application/x-bzip2",
        Some("xz") => "application/x-xz",
        Some("zst") => "application/zstd",
        Some("tar") => "application/x-tar",
        Some("cpio") => "application/x-cpio",
        Some("iso") => "application/x-iso9660-image",
        Some("sig" | "asc") => "application/pgp-signature",
        Some("json") => "application/json",
        Some("yaml" | "yml") => "application/yaml",
        Some("txt" | "sha256" | "sha512" | "ipxe" | "md") => "text/plain; charset=utf-8",
        Some("html") => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn plain_paths_are_accepted() {
        assert_eq!(
            relative_path("os/flatcar/stable/a.vmlinuz").unwrap(),
            PathBuf::from("os/flatcar/stable/a.vmlinuz")
        );
        assert_eq!(relative_path("a%20b").unwrap(), PathBuf::from("a b"));
        assert_eq!(relative_path("..a").unwrap(), PathBuf::from("..a"));
    }

    #[test]
    fn traversal_and_odd_encodings_are_refused() {
        for raw in [
            "..",
            "os/../../etc/passwd",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "/etc/passwd",
            "",
            "%2e%2e/etc/passwd",
            "%2E%2E",
            "os/%2e/a",
        ] {
            assert_eq!(relative_path(raw), Err(BadPath::Traversal), "{raw}");
        }
        for raw in [
            "a%2fb",
            "..%2f..%2fetc%2fpasswd",
            "%2fetc%2fpasswd",
            "a\\b",
            "a%5cb",
            "a%00b",
            "a%zz",
            "a%2",
            "%ff",
        ] {
            assert_eq!(relative_path(raw), Err(BadPath::Encoding), "{raw}");
        }
    }

    #[test]
    fn single_ranges() {
        let p = |start, end| RangeReply::Partial { start, end };
        assert_eq!(range("bytes=0-99", 1000), p(0, 99));
        assert_eq!(range("bytes=100-199", 1000), p(100, 199));
        assert_eq!(range("bytes=500-", 1000), p(500, 999));
        assert_eq!(range("bytes=-500", 1000), p(500, 999));
        assert_eq!(range("bytes=-5000", 1000), p(0, 999));
        assert_eq!(range("bytes=900-5000", 1000), p(900, 999));
        assert_eq!(range(" bytes=0-0 ", 1000), p(0, 0));
        assert_eq!(range("bytes=999-999", 1000), p(999, 999));
        assert_eq!(range("bytes=0-99999999999999999999999", 10), p(0, 9));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(range("bytes=1000-", 1000), RangeReply::Unsatisfiable);
        assert_eq!(range("bytes=1000-2000", 1000), RangeReply::Unsatisfiable);
        assert_eq!(range("bytes=-0", 1000), RangeReply::Unsatisfiable);
        assert_eq!(range("bytes=0-", 0), RangeReply::Unsatisfiable);
        assert_eq!(range("bytes=-1", 0), RangeReply::Unsatisfiable);
    }

    #[test]
    fn ignored_ranges_give_the_whole_file() {
        for h in [
            "bytes=0-1,5-6",
            "bytes=5-2",
            "bytes=abc",
            "bytes=-",
            "bytes=1-x",
            "items=0-1",
            "bytes=+1-2",
            "",
        ] {
            assert_eq!(range(h, 1000), RangeReply::Full, "{h}");
        }
        // An empty list element is allowed by the grammar: still one range.
        assert_eq!(
            range("bytes=0-1, ", 1000),
            RangeReply::Partial { start: 0, end: 1 }
        );
    }

    fn v() -> Validators {
        Validators::new(
            0x1234,
            1000,
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123),
        )
    }

    #[test]
    fn etag_depends_on_inode_size_and_mtime() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let a = Validators::new(1, 10, t);
        assert_ne!(a.etag, Validators::new(2, 10, t).etag);
        assert_ne!(a.etag, Validators::new(1, 11, t).etag);
        assert_ne!(
            a.etag,
            Validators::new(1, 10, t + Duration::from_nanos(1)).etag
        );
        assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
        assert_eq!(a.last_modified(), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn if_none_match() {
        let v = v();
        let c = |inm| Conditions {
            if_none_match: Some(inm),
            ..Default::default()
        };
        let (weak, list) = (format!("W/{}", v.etag), format!("\"other\", {}", v.etag));
        assert!(not_modified(&c(&v.etag), &v));
        assert!(not_modified(&c(&weak), &v));
        assert!(not_modified(&c(&list), &v));
        assert!(not_modified(&c("*"), &v));
        assert!(!not_modified(&c("\"other\""), &v));
        // If-None-Match decides even when If-Modified-Since alone would say 304.
        let both = Conditions {
            if_none_match: Some("\"other\""),
            if_modified_since: Some("Tue, 14 Nov 2023 22:13:20 GMT"),
            if_range: None,
        };
        assert!(!not_modified(&both, &v));
    }

    #[test]
    fn if_modified_since() {
        let v = v();
        let c = |ims| Conditions {
            if_modified_since: Some(ims),
            ..Default::default()
        };
        assert!(not_modified(&c("Tue, 14 Nov 2023 22:13:20 GMT"), &v));
        assert!(not_modified(&c("Wed, 15 Nov 2023 00:00:00 GMT"), &v));
        assert!(!not_modified(&c("Tue, 14 Nov 2023 22:13:19 GMT"), &v));
        assert!(!not_modified(&c("yesterday"), &v));
        assert!(!not_modified(&Conditions::default(), &v));
    }

    #[test]
    fn if_range() {
        let v = v();
        let c = |ir| Conditions {
            if_range: Some(ir),
            ..Default::default()
        };
        assert!(if_range_holds(&Conditions::default(), &v));
        assert!(if_range_holds(&c(&v.etag), &v));
        let weak = format!("W/{}", v.etag);
        assert!(!if_range_holds(&c(&weak), &v));
        assert!(!if_range_holds(&c("\"other\""), &v));
        assert!(if_range_holds(&c("Tue, 14 Nov 2023 22:13:20 GMT"), &v));
        assert!(!if_range_holds(&c("Tue, 14 Nov 2023 22:13:21 GMT"), &v));
        assert!(!if_range_holds(&c("garbage"), &v));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("snponly.efi"), "application/octet-stream");
        assert_eq!(content_type("vmlinuz"), "application/octet-stream");
        assert_eq!(content_type("x.cpio.gz"), "application/gzip");
        assert_eq!(content_type("X.ISO"), "application/x-iso9660-image");
        assert_eq!(content_type("kubeadm.sha256"), "text/plain; charset=utf-8");
    }
}
