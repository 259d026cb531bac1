//! Parsing of Distribution API paths and names, with no I/O. Repository names may have any
//! number of `/` segments, which axum's router cannot match before a fixed suffix, so the
//! registry routes every request through [`parse`]. Everything that later becomes a file
//! name (repository components, tags, digests, upload ids) is checked here against the
//! distribution grammar, so no request can name a path outside the storage directory.

/// What a request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(String),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(String, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(String, Digest),
    /// `/v2/<name>/blobs/uploads/`
    UploadStart(String),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(String, String),
}

/// Why a path is not a registry route (mapped to NAME_INVALID, DIGEST_INVALID, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("not a registry API path")]
    NotFound,
    #[error("invalid repository name")]
    Name,
    #[error("invalid tag or digest")]
    Reference,
    #[error("invalid digest")]
    Digest,
    #[error("unsupported digest algorithm")]
    Algorithm,
    #[error("invalid upload id")]
    Upload,
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// A validated `sha256:<64 lower-case hex>` digest (the only algorithm stored).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, PathError> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(PathError::Digest);
        };
        // Grammar: algorithm-component ([a-z0-9]+) separated by [+._-]; encoded [a-zA-Z0-9=_-]+.
        let alg_ok = !alg.is_empty()
            && alg.split(['+', '.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        if !alg_ok {
            return Err(PathError::Digest);
        }
        if alg != "sha256" {
            return Err(PathError::Algorithm);
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(PathError::Digest);
        }
        Ok(Digest(s.to_string()))
    }

    /// From the raw SHA-256 output.
    pub fn from_sha256(bytes: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex(bytes)))
    }

    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
pub fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A repository name: components joined by `/`, at most 255 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component)
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

/// Upload ids are ours (hex); anything else is unknown.
fn valid_upload_id(id: &str) -> bool {
    (16..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses the path of a request (without the query). Names and references are validated.
pub fn parse(path: &str) -> Result<Route, PathError> {
    let rest = match path.strip_prefix("/v2") {
        Some("") | Some("/") => return Ok(Route::Base),
        Some(r) => r.strip_prefix('/').ok_or(PathError::NotFound)?,
        None => return Err(PathError::NotFound),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let n = segs.len();
    let name = |k: usize| -> Result<String, PathError> {
        if k == 0 {
            return Err(PathError::NotFound);
        }
        let name = segs[..k].join("/");
        if valid_name(&name) {
            Ok(name)
        } else {
            Err(PathError::Name)
        }
    };
    // Matched on the suffix: the name is whatever precedes it.
    if n >= 3 && segs[n - 3] == "blobs" && segs[n - 2] == "uploads" {
        let id = segs[n - 1];
        let name = name(n - 3)?;
        if id.is_empty() {
            return Ok(Route::UploadStart(name));
        }
        if !valid_upload_id(id) {
            return Err(PathError::Upload);
        }
        return Ok(Route::Upload(name, id.to_string()));
    }
    if n >= 3 && segs[n - 2] == "blobs" && segs[n - 1] == "uploads" {
        return Ok(Route::UploadStart(name(n - 2)?));
    }
    if n >= 3 && segs[n - 2] == "tags" && segs[n - 1] == "list" {
        return Ok(Route::Tags(name(n - 2)?));
    }
    if n >= 3 && segs[n - 2] == "manifests" {
        let name = name(n - 2)?;
        return Ok(Route::Manifest(name, parse_reference(segs[n - 1])?));
    }
    if n >= 3 && segs[n - 2] == "blobs" {
        let name = name(n - 2)?;
        return Ok(Route::Blob(name, Digest::parse(segs[n - 1])?));
    }
    Err(PathError::NotFound)
}

pub fn parse_reference(s: &str) -> Result<Reference, PathError> {
    if s.contains(':') {
        Digest::parse(s).map(Reference::Digest)
    } else if valid_tag(s) {
        Ok(Reference::Tag(s.to_string()))
    } else {
        Err(PathError::Reference)
    }
}

/// Value of `key` in a URL query string (no percent-decoding beyond `%3A`/`%2F`, which is
/// all digests, names and hosts need).
pub fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<std::borrow::Cow<'a, str>> {
    let q = query?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| {
            if v.contains('%') {
                std::borrow::Cow::Owned(
                    v.replace("%3A", ":")
                        .replace("%3a", ":")
                        .replace("%2F", "/")
                        .replace("%2f", "/"),
                )
            } else {
                std::borrow::Cow::Borrowed(v)
            }
        })
    })
}

/// A `Range` the blob cannot satisfy (416).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsatisfiable;

/// A requested byte range of a blob of `len` bytes, from a `Range: bytes=...` header.
/// `Ok(None)` means the whole blob.
pub fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let spec = header.trim().strip_prefix("bytes=").ok_or(Unsatisfiable)?;
    if spec.contains(',') {
        return Err(Unsatisfiable); // one range only
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if n == 0 || len == 0 {
            return Err(Unsatisfiable);
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>()
                .map_err(|_| Unsatisfiable)?
                .min(len.saturating_sub(1))
        };
        (start, end)
    };
    if start >= len || start > end {
        return Err(Unsatisfiable);
    }
    if start == 0 && end + 1 == len {
        return Ok(None);
    }
    Ok(Some((start, end)))
}

/// `Content-Range: start-end` of a chunked upload (the `bytes ` prefix is tolerated).
pub fn parse_content_range(s: &str) -> Option<(u64, u64)> {
    let s = s
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches([' ', '=']);
    let s = s.split('/').next()?;
    let (a, b) = s.split_once('-')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn routes_with_nested_names() {
        assert_eq!(parse("/v2/"), Ok(Route::Base));
        assert_eq!(parse("/v2"), Ok(Route::Base));
        assert_eq!(parse("/v2/_catalog"), Ok(Route::Catalog));
        assert_eq!(
            parse("/v2/a/b/c/manifests/v1.0"),
            Ok(Route::Manifest(
                "a/b/c".into(),
                Reference::Tag("v1.0".into())
            ))
        );
        assert_eq!(
            parse(&format!("/v2/library/busybox/manifests/{D}")),
            Ok(Route::Manifest(
                "library/busybox".into(),
                Reference::Digest(Digest::parse(D).unwrap())
            ))
        );
        assert_eq!(
            parse(&format!("/v2/x/blobs/{D}")),
            Ok(Route::Blob("x".into(), Digest::parse(D).unwrap()))
        );
        assert_eq!(
            parse("/v2/a/b/blobs/uploads/"),
            Ok(Route::UploadStart("a/b".into()))
        );
        assert_eq!(
            parse("/v2/a/b/blobs/uploads"),
            Ok(Route::UploadStart("a/b".into()))
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/0123456789abcdef0123"),
            Ok(Route::Upload("a".into(), "0123456789abcdef0123".into()))
        );
        assert_eq!(parse("/v2/a/b/tags/list"), Ok(Route::Tags("a/b".into())));
        // Keywords inside a name are just components.
        assert_eq!(
            parse("/v2/blobs/manifests/tags/manifests/latest"),
            Ok(Route::Manifest(
                "blobs/manifests/tags".into(),
                Reference::Tag("latest".into())
            ))
        );
        assert_eq!(
            parse(&format!("/v2/a/blobs/uploads/blobs/{D}"))
                .map(|r| matches!(r, Route::Blob(n, _) if n == "a/blobs/uploads")),
            Ok(true)
        );
    }

    #[test]
    fn rejects_traversal_and_bad_names() {
        for p in [
            "/v2/../manifests/x",
            "/v2/a/../b/manifests/x",
            "/v2/./manifests/x",
            "/v2/A/manifests/x",
            "/v2//manifests/x",
            "/v2/a//b/manifests/x",
            "/v2/_x/manifests/x",
            "/v2/a%2f..%2fb/manifests/x",
            "/v2/a-/manifests/x",
            "/v2/a.-b/manifests/x",
        ] {
            assert_eq!(parse(p), Err(PathError::Name), "{p}");
        }
        assert_eq!(
            parse("/v2/a/manifests/..").unwrap_err(),
            PathError::Reference
        );
        assert_eq!(
            parse("/v2/a/manifests/.x").unwrap_err(),
            PathError::Reference
        );
        assert_eq!(
            parse("/v2/a/blobs/sha256:../../etc").unwrap_err(),
            PathError::NotFound
        );
        assert_eq!(
            parse("/v2/a/blobs/sha256:..%2f..%2fetc").unwrap_err(),
            PathError::Digest
        );
        assert_eq!(
            parse("/v2/a/blobs/sha256:ABCDEF").unwrap_err(),
            PathError::Digest
        );
        assert_eq!(
            parse(&format!("/v2/a/blobs/sha512:{}", "0".repeat(128))).unwrap_err(),
            PathError::Algorithm
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/../x").unwrap_err(),
            PathError::NotFound
        );
        assert_eq!(
            parse("/v2/a/blobs/uploads/zz").unwrap_err(),
            PathError::Upload
        );
        assert_eq!(parse("/v2/manifests/x").unwrap_err(), PathError::NotFound);
        assert_eq!(parse("/v1/a/manifests/x").unwrap_err(), PathError::NotFound);
        assert_eq!(parse("/v2/a/b").unwrap_err(), PathError::NotFound);
        assert!(!valid_name(&"a".repeat(256)));
    }

    #[test]
    fn components_and_tags() {
        for ok in [
            "a",
            "a0",
            "a.b",
            "a_b",
            "a__b",
            "a---b",
            "registry.k8s.io",
            "127.0.0.1_5000",
        ] {
            assert!(valid_component(ok), "{ok}");
        }
        for bad in ["", "-a", "a_", "a___b", "a._b", "A", "a b", "é"] {
            assert!(!valid_component(bad), "{bad}");
        }
        assert!(valid_tag("v1.31.4"));
        assert!(valid_tag("_x"));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Ok(None));
        assert_eq!(parse_range("bytes=2-4", 10), Ok(Some((2, 4))));
        assert_eq!(parse_range("bytes=2-100", 10), Ok(Some((2, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(parse_range("bytes=-30", 10), Ok(None));
        assert_eq!(parse_range("bytes=10-", 10), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-2", 10), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), Err(Unsatisfiable));
        assert_eq!(parse_range("items=0-1", 10), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=-0", 10), Err(Unsatisfiable));
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("x"), None);
    }

    #[test]
    fn query() {
        let q = Some("ns=docker.io&digest=sha256%3Aab&n=3");
        assert_eq!(query_param(q, "ns").as_deref(), Some("docker.io"));
        assert_eq!(query_param(q, "digest").as_deref(), Some("sha256:ab"));
        assert_eq!(query_param(q, "last"), None);
        assert_eq!(query_param(None, "n"), None);
    }
}
