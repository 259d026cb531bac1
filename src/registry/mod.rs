//! The cluster's container registry: an OCI Distribution API v2 server on its own listener
//! that is at once a private registry (pushes with the admin token), a pull-through cache
//! for the description's upstream registries, and the target of `slipway images import`
//! for air-gapped sites.
//!
//! Names. Every repository is stored under the registry host it comes from:
//! `docker.io/library/busybox`, `registry.k8s.io/pause`. containerd, configured as a mirror
//! by the node's `hosts.toml`, asks for `/v2/library/busybox/manifests/1.36?ns=docker.io`;
//! `?ns=` is prefixed to the name, so a mirror request, an imported archive and a direct
//! pull of `<slipway>/docker.io/library/busybox:1.36` all name the same repository. A name
//! whose first component is an upstream's name is fetched from that upstream on a miss
//! (unless `--registry-offline`); other names are a plain private registry.
//!
//! Blobs are global (content-addressed, shared by every repository), so a cross-repository
//! mount of a stored blob always succeeds. Cached tags are not re-checked upstream: the
//! cluster's images are pinned, and later pulls must not depend on the upstream. Delete
//! the tag to fetch it again.
//!
//! Access: pulls are open to the cluster's node subnet, pod CIDR and loopback; anyone else
//! gets 403. Pushes and deletes need the admin token, as `Authorization: Bearer <token>` or
//! Basic with any user name and the token as password (`skopeo --dest-creds x:<token>`).

pub mod api;
mod blobs;
pub mod cli;
mod follow;
pub mod import;
pub mod manifest;
pub mod path;
pub mod prefetch;
mod pull;
#[cfg(test)]
mod pull_tests;
pub mod storage;
mod uploads;
pub mod upstream;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::app::App;
use crate::plan::{Plan, UpstreamPlan};
use storage::{Storage, StorageLock};
use upstream::UpstreamClient;
use writer::BlobWriter;

/// Default cap of one uploaded blob.
pub const DEFAULT_MAX_UPLOAD: u64 = 10 << 30;

/// Upload sessions idle this long are dropped (their temporary file with them).
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);

/// Settings of the registry that come from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Serve only what is stored; never contact an upstream.
    pub offline: bool,
    /// Largest blob a client may upload, in bytes.
    pub max_upload: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            offline: false,
            max_upload: DEFAULT_MAX_UPLOAD,
        }
    }
}

/// Counters for the metrics endpoint (monotonic since start).
#[derive(Debug, Default)]
pub struct Counters {
    /// Blob and manifest bytes sent to clients.
    pub bytes_served: AtomicU64,
    /// Manifest and blob requests answered from storage.
    pub cache_hits: AtomicU64,
    /// Requests for content not stored (fetched upstream when possible).
    pub cache_misses: AtomicU64,
    /// Blob requests served from a download still in progress.
    pub followed: AtomicU64,
    /// Manifests and blobs downloaded from upstreams.
    pub upstream_fetches: AtomicU64,
    pub upstream_bytes: AtomicU64,
    /// Blobs received from clients.
    pub uploads: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A chunked upload in progress.
pub(crate) struct Session {
    repo: String,
    writer: Option<BlobWriter>,
    last: Instant,
}

pub struct Registry {
    pub storage: Storage,
    pub options: Options,
    pub counters: Counters,
    /// Bytes of stored blobs sent (the mapped-file bodies count here; see `bytes_served`).
    pub blob_stats: Arc<crate::http::files::Stats>,
    client: UpstreamClient,
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Session>>>>,
    /// Singleflight: one lock per manifest or blob being fetched; later requesters wait on
    /// it and then find the content stored.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Blob downloads in progress, which other requests can follow (`follow`).
    downloads: Mutex<HashMap<String, tokio::sync::watch::Receiver<follow::Progress>>>,
    download_started: tokio::sync::Notify,
    _lock: StorageLock,
}

/// Where a request's repository is stored, and where it comes from on a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub key: String,
    pub upstream: Option<Source>,
}

/// An upstream registry and the repository's name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub url: String,
    pub repo: String,
}

/// The registry host as a name component (`host:port` becomes `host_port`).
fn host_component(host: &str) -> String {
    host.to_ascii_lowercase().replace(':', "_")
}

/// Maps a request's name (and containerd's `?ns=`) to the stored repository and upstream.
pub fn resolve(name: &str, ns: Option<&str>, upstreams: &[UpstreamPlan]) -> Option<Resolved> {
    let mut key = match ns.filter(|n| !n.is_empty()) {
        Some(ns) => {
            let host = host_component(ns);
            if !path::valid_component(&host) {
                return None;
            }
            format!("{host}/{name}")
        }
        None => name.to_string(),
    };
    // docker.io's official images live under library/.
    if let Some(rest) = key.strip_prefix("docker.io/")
        && !rest.contains('/')
    {
        key = format!("docker.io/library/{rest}");
    }
    if !path::valid_name(&key) {
        return None;
    }
    let upstream = key.split_once('/').and_then(|(first, rest)| {
        upstreams
            .iter()
            .find(|u| host_component(&u.name) == first)
            .map(|u| Source {
                name: u.name.clone(),
                url: u.url.clone(),
                repo: rest.to_string(),
            })
    });
    Some(Resolved { key, upstream })
}

/// Whether `ip` may pull: loopback, the node subnet and the pod network.
pub fn pull_allowed(ip: IpAddr, plan: &Plan) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => return v6.is_loopback(),
        },
        v4 => v4,
    };
    let IpAddr::V4(v4) = ip else { return false };
    v4.is_loopback() || plan.network.subnet.contains(&v4) || plan.cluster.pod_cidr.contains(&v4)
}

impl Registry {
    /// Opens (creating) the storage and takes its shared lock, which `images gc` needs
    /// exclusively. Removes temporary files a previous run left behind.
    pub fn open(dir: &Path, options: Options) -> anyhow::Result<Registry> {
        use anyhow::Context;
        let storage = Storage::open(dir)
            .with_context(|| format!("creating the registry storage in {}", dir.display()))?;
        let lock = storage
            .lock(false)
            .context("the registry storage is locked (is `slipway images gc` running?)")?;
        let removed = storage.clean_temp(&["up", "pt", "mem"])?;
        if removed > 0 {
            tracing::info!(removed, "removed unfinished uploads of a previous run");
        }
        Ok(Registry {
            storage,
            options,
            counters: Counters::default(),
            blob_stats: Default::default(),
            client: UpstreamClient::new(),
            sessions: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            downloads: Mutex::new(HashMap::new()),
            download_started: tokio::sync::Notify::new(),
            _lock: lock,
        })
    }

    fn inflight_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.to_string()).or_default().clone()
    }

    fn inflight_done(&self, key: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|l| Arc::ptr_eq(l, lock)) {
            map.remove(key);
        }
    }

    fn session(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    fn remove_session(&self, id: &str) -> Option<Arc<tokio::sync::Mutex<Session>>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
    }

    /// Drops upload sessions nobody touched for a while (clients that went away).
    async fn expire_sessions(&self) {
        let all: Vec<(String, Arc<tokio::sync::Mutex<Session>>)> = {
            let map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (id, s) in all {
            let idle = match s.try_lock() {
                Ok(s) => s.last.elapsed() > SESSION_IDLE,
                Err(_) => false,
            };
            if idle {
                self.remove_session(&id);
                tracing::info!(upload = %id, "dropped an idle upload");
            }
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct Ctx {
    pub app: Arc<App>,
    pub registry: Arc<Registry>,
}

pub fn router(app: Arc<App>, registry: Arc<Registry>) -> Router {
    Router::new()
        .fallback(api::handle)
        .layer(TraceLayer::new_for_http())
        .with_state(Ctx { app, registry })
}

/// Serves the registry on `listener` (HTTPS when `tls` is given) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Arc<App>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let warm = tokio::spawn(prefetch::prefetch(registry.clone(), app.clone()));
    let sweeper = {
        let registry = registry.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                registry.expire_sessions().await;
            }
        })
    };
    let result = crate::http::serve_router(listener, tls, router(app, registry), shutdown).await;
    sweeper.abort();
    warm.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ups() -> Vec<UpstreamPlan> {
        ["docker.io", "registry.k8s.io", "127.0.0.1:5001"]
            .iter()
            .map(|n| UpstreamPlan {
                name: n.to_string(),
                url: format!("http://{n}"),
            })
            .collect()
    }

    #[test]
    fn names_resolve_to_one_repository() {
        let u = ups();
        let mirror = resolve("library/busybox", Some("docker.io"), &u).unwrap();
        assert_eq!(mirror.key, "docker.io/library/busybox");
        assert_eq!(mirror.upstream.as_ref().unwrap().repo, "library/busybox");
        // Direct pulls name the same repository; docker.io's library/ rule applies.
        assert_eq!(resolve("docker.io/busybox", None, &u), Some(mirror.clone()));
        assert_eq!(resolve("busybox", Some("docker.io"), &u), Some(mirror));
        let k8s = resolve("pause", Some("registry.k8s.io"), &u).unwrap();
        assert_eq!(k8s.key, "registry.k8s.io/pause");
        assert_eq!(k8s.upstream.unwrap().repo, "pause");
        let port = resolve("a/b", Some("127.0.0.1:5001"), &u).unwrap();
        assert_eq!(port.key, "127.0.0.1_5001/a/b");
        assert!(port.upstream.is_some());
        // Private names and unknown hosts: stored, never fetched.
        let private = resolve("team/app", None, &u).unwrap();
        assert_eq!((private.key.as_str(), private.upstream), ("team/app", None));
        assert_eq!(resolve("x", Some("quay.io"), &u).unwrap().upstream, None);
        assert_eq!(resolve("x", Some("../etc"), &u), None);
        assert_eq!(resolve("x", Some("a/b"), &u), None);
    }

    #[test]
    fn pull_access_by_address() {
        let desc = crate::desc::load(std::path::Path::new("cluster-desc.example.yaml")).unwrap();
        let plan = Plan::from_desc(&desc);
        let node = plan.nodes[0].ip;
        assert!(pull_allowed(IpAddr::V4(node), &plan));
        assert!(pull_allowed("127.0.0.1".parse().unwrap(), &plan));
        assert!(pull_allowed("::1".parse().unwrap(), &plan));
        let pod = plan.cluster.pod_cidr.network();
        assert!(pull_allowed(IpAddr::V4(pod), &plan));
        assert!(pull_allowed(
            format!("::ffff:{node}").parse().unwrap(),
            &plan
        ));
        assert!(!pull_allowed("203.0.113.9".parse().unwrap(), &plan));
        assert!(!pull_allowed("2001:db8::1".parse().unwrap(), &plan));
    }
}
