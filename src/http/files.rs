//! Boot assets over HTTP: `GET`/`HEAD /assets/{path}` from the images directory and
//! `/ipxe/{path}` from `images/ipxe/`, then Debian's `/usr/lib/ipxe/`. HEAD, single byte
//! ranges, If-Range, strong ETags and 304s, because UEFI HTTP boot and iPXE use them.
//!
//! Files are confined to their roots: the URL path is checked segment by segment
//! ([`rules::relative_path`]), and the file actually opened must lie under the canonical root
//! (a symlink may point within the root, not out of it). Directories are not listed. Error
//! bodies are fixed strings, never a file-system path.
//!
//! A GET of a node's kernel moves the machine at the peer address to `booting`, an `/ipxe/`
//! fetch to `pxe`.
//!
//! Bodies are frames of a shared file mapping ([`map`]): no layer on these routes may read
//! or transform body bytes (compression, inspection), see `map.rs` for why.

mod body;
mod map;
pub mod rules;

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use self::body::FileBody;
use self::map::FileMap;
use self::rules::{Conditions, RangeReply, Validators};
use super::error;
use crate::app::App;
use crate::plan::Plan;
use crate::status::NodeState;

/// Where the two route families find their files, and what they served.
pub struct Files {
    /// `/assets/` serves this directory.
    pub images_dir: PathBuf,
    /// `/ipxe/` looks in these, first match wins.
    pub ipxe_dirs: Vec<Root>,
    pub stats: Arc<Stats>,
}

/// A directory files are served from.
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
    /// Whether a symlink in it may lead out of it. Only for a package-managed directory that
    /// only root can write: Debian's ipxe links `/usr/lib/ipxe/ipxe.efi` to `/boot/ipxe.efi`.
    pub links_leave: bool,
}

impl Root {
    pub fn confined(dir: PathBuf) -> Root {
        Root {
            dir,
            links_leave: false,
        }
    }
}

impl Files {
    /// Debian's `ipxe` package installs its binaries here; `images/ipxe/` overrides them.
    pub const SYSTEM_IPXE: &str = "/usr/lib/ipxe";

    pub fn new(images_dir: PathBuf) -> Files {
        Files {
            ipxe_dirs: vec![
                Root::confined(images_dir.join("ipxe")),
                Root {
                    dir: PathBuf::from(Files::SYSTEM_IPXE),
                    links_leave: true,
                },
            ],
            images_dir,
            stats: Arc::default(),
        }
    }

    fn roots(&self, family: Family) -> Vec<Root> {
        match family {
            Family::Assets => vec![Root::confined(self.images_dir.clone())],
            Family::Ipxe => self.ipxe_dirs.clone(),
        }
    }
}

/// A body of the bytes `start..end` of the file at `path`, sent the way the boot assets are
/// (shared read-only mapping, pages populated a frame ahead); `stats.bytes` counts them. For
/// other servers of immutable files (the registry's blobs).
pub async fn mapped_body(
    path: std::path::PathBuf,
    start: u64,
    end: u64,
    stats: Arc<Stats>,
) -> std::io::Result<Body> {
    if start >= end {
        return Ok(Body::empty());
    }
    let map = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        if end > meta.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "range beyond the file",
            ));
        }
        FileMap::shared(file, &meta)
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(Body::new(FileBody::new(map, start, end, stats)))
}

/// Counters for metrics: requests answered by these routes and body bytes handed to the
/// connection.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Assets,
    Ipxe,
}

impl Family {
    fn prefix(self) -> &'static str {
        match self {
            Family::Assets => "/assets/",
            Family::Ipxe => "/ipxe/",
        }
    }
}

/// The file routes, to be merged into the main router. `get` also answers HEAD.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/assets/{*path}",
            get(|s: State<Arc<App>>, r: Request| serve(s, Family::Assets, r)),
        )
        .route(
            "/ipxe/{*path}",
            get(|s: State<Arc<App>>, r: Request| serve(s, Family::Ipxe, r)),
        )
}

async fn serve(State(app): State<Arc<App>>, family: Family, req: Request) -> Response {
    app.files.stats.requests.fetch_add(1, Ordering::Relaxed);
    // The raw path, not axum's decoded `Path`: `%2f` must not become a separator.
    let path = req.uri().path();
    let Some(raw) = path.strip_prefix(family.prefix()) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let rel = match rules::relative_path(raw) {
        Ok(rel) => rel,
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid path"),
    };
    let roots = app.files.roots(family);
    let opened = match tokio::task::spawn_blocking(move || open_confined(&roots, &rel)).await {
        Ok(r) => r,
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file"),
    };
    let (file, meta, validators) = match opened {
        Ok(Some(found)) => found,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not found"),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return error(StatusCode::FORBIDDEN, "forbidden");
        }
        Err(e) => {
            tracing::warn!(error = %e, "opening a file to serve failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file");
        }
    };
    let head = req.method() == Method::HEAD;
    let (res, body_range) = respond(
        req.headers(),
        meta.len(),
        &validators,
        rules::content_type(raw),
    );
    let Some((start, end)) = body_range else {
        return res;
    };
    if head || start == end {
        return res;
    }
    // Mapped before the status goes out, so a file system without mmap gets a clean 500.
    let mapped = tokio::task::spawn_blocking(move || FileMap::shared(file, &meta)).await;
    let map = match mapped {
        Ok(Ok(map)) => map,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "mapping a file to serve failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file");
        }
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read file"),
    };
    if let Some(peer) = peer_ipv4(&req) {
        record_step(&app, family, path, peer);
    }
    let (parts, _) = res.into_parts();
    let body = FileBody::new(map, start, end, app.files.stats.clone());
    Response::from_parts(parts, Body::new(body))
}

/// Opens `rel` under the first root that has it as a regular file. `Ok(None)`: not found,
/// not a regular file, or outside its root. Blocking.
fn open_confined(
    roots: &[Root],
    rel: &Path,
) -> io::Result<Option<(File, std::fs::Metadata, Validators)>> {
    for Root { dir, links_leave } in roots {
        // A missing root (no images/ipxe/) just means "look in the next one".
        let Ok(root) = std::fs::canonicalize(dir) else {
            continue;
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            // A FIFO planted in the tree must not block the open.
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(root.join(rel))
        {
            Ok(f) => f,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::ENAMETOOLONG)
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            continue;
        }
        // Where the opened file really is, with every symlink resolved: checked after the
        // open, so swapping a symlink between check and use gains nothing.
        if !links_leave && !within(&root, &real_path(&file, &root.join(rel))?) {
            tracing::warn!("refused a file whose real path leaves its root (symlink)");
            return Ok(None);
        }
        let validators = Validators::new(
            meta.ino(),
            meta.len(),
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
        );
        return Ok(Some((file, meta, validators)));
    }
    Ok(None)
}

/// The path of an open file from `/proc/self/fd`; where /proc is missing, the canonical form
/// of the path it was opened by.
fn real_path(file: &File, opened_as: &Path) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .or_else(|_| std::fs::canonicalize(opened_as))
}

fn within(root: &Path, real: &Path) -> bool {
    real.starts_with(root) && real != root
}

/// The response head for a file of `len` bytes given the request headers, and the byte range
/// (`start..end`) its body carries; `None` when the response is complete as it is (304, 416).
pub fn respond(
    req: &HeaderMap,
    len: u64,
    v: &Validators,
    content_type: &'static str,
) -> (Response, Option<(u64, u64)>) {
    let text = |name| req.get(name).and_then(|h: &HeaderValue| h.to_str().ok());
    let cond = Conditions {
        if_none_match: text(header::IF_NONE_MATCH),
        if_modified_since: text(header::IF_MODIFIED_SINCE),
        if_range: text(header::IF_RANGE),
    };
    let validator_headers = |res: &mut Response| {
        let h = res.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(&v.etag) {
            h.insert(header::ETAG, etag);
        }
        if let Ok(lm) = HeaderValue::from_str(&v.last_modified()) {
            h.insert(header::LAST_MODIFIED, lm);
        }
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    };
    if rules::not_modified(&cond, v) {
        let mut res = Response::new(Body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        validator_headers(&mut res);
        return (res, None);
    }
    let range = match text(header::RANGE) {
        Some(r) if rules::if_range_holds(&cond, v) => rules::range(r, len),
        _ => RangeReply::Full,
    };
    let (status, start, end) = match range {
        RangeReply::Full => (StatusCode::OK, 0, len),
        RangeReply::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        RangeReply::Unsatisfiable => {
            let mut res = error(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            let cr = HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii");
            res.headers_mut().insert(header::CONTENT_RANGE, cr);
            validator_headers(&mut res);
            return (res, None);
        }
    };
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    validator_headers(&mut res);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        let cr = format!("bytes {start}-{}/{len}", end - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr).expect("ascii"),
        );
    }
    (res, Some((start, end)))
}

fn peer_ipv4(req: &Request) -> Option<Ipv4Addr> {
    let ConnectInfo(addr) = req.extensions().get::<ConnectInfo<SocketAddr>>()?;
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => Some(ip),
        std::net::IpAddr::V6(_) => None,
    }
}

/// The lifecycle step a GET of `path` (the URL path as requested) marks: any `/ipxe/` file
/// means the machine runs its first-stage loader; the kernel named in the plan's boot URLs
/// means it is booting the installer.
pub fn lifecycle_step(plan: &Plan, family: Family, path: &str) -> Option<(NodeState, String)> {
    match family {
        Family::Ipxe => Some((NodeState::Pxe, format!("ipxe {path}"))),
        Family::Assets => {
            // Every machine (planned or enrolled) boots the profile's one kernel.
            let base = plan.bootstrapper.http_base.as_str();
            (plan.assets.kernel.strip_prefix(base) == Some(path))
                .then(|| (NodeState::Booting, format!("kernel {path}")))
        }
    }
}

/// Records the step off the request path: the store write must not delay the first byte.
fn record_step(app: &Arc<App>, family: Family, path: &str, peer: Ipv4Addr) {
    let Some((state, detail)) = lifecycle_step(&app.plan(), family, path) else {
        return;
    };
    let app = app.clone();
    tokio::task::spawn_blocking(move || match app.node_seen(peer, state, &detail) {
        Ok(Some(mac)) => tracing::debug!(%peer, %mac, %state, "{detail}"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, %peer, "could not record node {state}"),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn v() -> Validators {
        Validators::new(
            7,
            1000,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )
    }

    fn req(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, val) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(val).unwrap());
        }
        h
    }

    #[test]
    fn full_partial_unsatisfiable_and_not_modified_heads() {
        let v = v();
        let (res, body) = respond(&req(&[]), 1000, &v, "application/octet-stream");
        assert_eq!((res.status(), body), (StatusCode::OK, Some((0, 1000))));
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "1000");
        assert_eq!(res.headers()[header::ACCEPT_RANGES], "bytes");
        assert_eq!(res.headers()[header::ETAG], v.etag.as_str());

        let (res, body) = respond(&req(&[(header::RANGE, "bytes=-100")]), 1000, &v, "x/y");
        assert_eq!(
            (res.status(), body),
            (StatusCode::PARTIAL_CONTENT, Some((900, 1000)))
        );
        assert_eq!(res.headers()[header::CONTENT_RANGE], "bytes 900-999/1000");
        assert_eq!(res.headers()[header::CONTENT_LENGTH], "100");

        let (res, body) = respond(&req(&[(header::RANGE, "bytes=1000-")]), 1000, &v, "x/y");
        assert_eq!(
            (res.status(), body),
            (StatusCode::RANGE_NOT_SATISFIABLE, None)
        );
        assert_eq!(res.headers()[header::CONTENT_RANGE], "bytes */1000");

        let (res, body) = respond(&req(&[(header::IF_NONE_MATCH, &v.etag)]), 1000, &v, "x/y");
        assert_eq!((res.status(), body), (StatusCode::NOT_MODIFIED, None));
    }

    #[test]
    fn a_stale_if_range_sends_the_whole_file() {
        let v = v();
        let h = req(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, "\"old\"")]);
        let (res, body) = respond(&h, 1000, &v, "x/y");
        assert_eq!((res.status(), body), (StatusCode::OK, Some((0, 1000))));
        let h = req(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, &v.etag)]);
        let (res, body) = respond(&h, 1000, &v, "x/y");
        assert_eq!(
            (res.status(), body),
            (StatusCode::PARTIAL_CONTENT, Some((0, 10)))
        );
    }

    #[test]
    fn confinement_follows_symlinks_only_within_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("os")).unwrap();
        std::fs::write(root.join("os/k"), b"kernel").unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink("../os/k", root.join("os/inside")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
        let roots = [Root::confined(root.clone())];
        let open = |p: &str| {
            open_confined(&roots, Path::new(p))
                .unwrap()
                .map(|f| f.1.len())
        };
        assert_eq!(open("os/k"), Some(6));
        assert_eq!(open("os/inside"), Some(6));
        assert_eq!(open("out"), None);
        assert_eq!(open("up/secret"), None);
        assert_eq!(open("os"), None, "directories are not served");
        assert_eq!(open("missing"), None);
        assert_eq!(open("os/k/deeper"), None);
        // A package-managed root may link out; its path segments are still checked.
        let trusted = [Root {
            dir: root.clone(),
            links_leave: true,
        }];
        let open = |p: &str| {
            open_confined(&trusted, Path::new(p))
                .unwrap()
                .map(|f| f.1.len())
        };
        assert_eq!(open("out"), Some(6));
    }

    #[test]
    fn later_roots_fill_in_for_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("snponly.efi"), b"12").unwrap();
        let roots = [Root::confined(a.clone()), Root::confined(b.clone())];
        let open = |p: &str| {
            open_confined(&roots, Path::new(p))
                .unwrap()
                .map(|f| f.1.len())
        };
        assert_eq!(open("snponly.efi"), Some(2));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("snponly.efi"), b"123").unwrap();
        assert_eq!(open("snponly.efi"), Some(3));
    }

    #[test]
    fn kernel_and_ipxe_fetches_mark_lifecycle_steps() {
        let text = include_str!("../../cluster-desc.example.yaml");
        let plan = Plan::from_desc(&crate::desc::parse_str("example", text).unwrap());
        let base = &plan.bootstrapper.http_base;
        let kernel = plan.nodes[0]
            .boot
            .kernel
            .strip_prefix(base.as_str())
            .unwrap();
        assert!(kernel.starts_with("/assets/os/"));
        assert_eq!(
            lifecycle_step(&plan, Family::Assets, kernel),
            Some((NodeState::Booting, format!("kernel {kernel}")))
        );
        let initrd = plan.nodes[0]
            .boot
            .initrd
            .strip_prefix(base.as_str())
            .unwrap();
        assert_eq!(lifecycle_step(&plan, Family::Assets, initrd), None);
        assert_eq!(
            lifecycle_step(&plan, Family::Ipxe, "/ipxe/snponly.efi"),
            Some((NodeState::Pxe, "ipxe /ipxe/snponly.efi".into()))
        );
    }
}
