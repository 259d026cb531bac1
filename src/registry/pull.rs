//! Pull-through: a miss for a repository of a configured upstream fetches the manifest or
//! blob, verifies its digest, stores it, and the request is then served from storage.
//!
//! Singleflight: each fetch runs in its own task under a per-item async lock. Requests for
//! the same item while it downloads wait on that lock, then find it stored: twenty clients
//! asking at once cost one upstream download. Whole-blob GETs need not wait: they follow
//! the download as it is written (`follow`). Running the download in a task of its own
//! lets it finish for the others when the first client goes away.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::header;

use super::api::MAX_MANIFEST;
use super::follow::Publisher;
use super::path::{Digest, Reference};
use super::storage::StorageError;
use super::upstream::UpstreamError;
use super::writer::BlobWriter;
use super::{Counters, Registry, Source, manifest};

/// Longest pause between two pieces of an upstream body.
const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream body: {0}")]
    Body(String),
    #[error("upstream content does not match digest {0}")]
    Digest(String),
    #[error("upstream manifest: {0}")]
    Manifest(String),
    #[error("storing: {0}")]
    Storage(#[from] StorageError),
    #[error("fetch task failed: {0}")]
    Task(String),
}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> Self {
        FetchError::Storage(StorageError::Io(e))
    }
}

/// Runs `work` as the single fetch of `key`: `Ok(true)` when the item is stored afterwards,
/// `Ok(false)` when the upstream does not have it.
async fn singleflight<F, Fut>(
    reg: Arc<Registry>,
    key: String,
    stored: F,
    work: Fut,
) -> Result<bool, FetchError>
where
    F: Fn(&Registry) -> bool + Send + 'static,
    Fut: std::future::Future<Output = Result<bool, FetchError>> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let lock = reg.inflight_lock(&key);
        let result = {
            let _held = lock.lock().await;
            if stored(&reg) { Ok(true) } else { work.await }
        };
        reg.inflight_done(&key, &lock);
        result
    });
    task.await.map_err(|e| FetchError::Task(e.to_string()))?
}

/// Fetches manifest `reference` from `src` into repository `key`.
pub async fn fetch_manifest(
    reg: Arc<Registry>,
    src: Source,
    key: String,
    reference: Reference,
) -> Result<bool, FetchError> {
    let flight = format!("m {key}:{reference}");
    let (k, r) = (key.clone(), reference.clone());
    let stored = move |reg: &Registry| match &r {
        Reference::Tag(t) => reg
            .storage
            .tag(&k, t)
            .is_some_and(|d| reg.storage.manifest(&k, &d).is_some()),
        Reference::Digest(d) => reg.storage.manifest(&k, d).is_some(),
    };
    let work = {
        let reg = reg.clone();
        async move {
            let accept = manifest::MEDIA_TYPES.join(", ");
            let resp = reg
                .client
                .get(
                    &src.url,
                    &src.repo,
                    &format!("manifests/{reference}"),
                    Some(&accept),
                )
                .await?;
            match resp.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Ok(false),
                s => return Err(UpstreamError::Status(s).into()),
            }
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let claimed = resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Digest::parse(v).ok());
            let mut body = resp.into_body();
            let mut bytes = Vec::new();
            while let Some(frame) = tokio::time::timeout(IDLE, body.frame())
                .await
                .map_err(|_| UpstreamError::Timeout)?
            {
                let frame = frame.map_err(|e| FetchError::Body(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    if bytes.len() + data.len() > MAX_MANIFEST {
                        return Err(FetchError::Manifest("too large".into()));
                    }
                    bytes.extend_from_slice(&data);
                }
            }
            let parsed = manifest::parse(&bytes, ct.as_deref())
                .map_err(|e| FetchError::Manifest(e.to_string()))?;
            let expected = match &reference {
                Reference::Digest(d) => Some(d.clone()),
                Reference::Tag(_) => claimed,
            };
            let storage = reg.storage.clone();
            let n = bytes.len() as u64;
            let r = reference.clone();
            tokio::task::spawn_blocking(move || -> Result<(), FetchError> {
                let reference = r;
                let d = storage
                    .put_blob_bytes(&bytes, expected.as_ref())
                    .map_err(|e| match e {
                        StorageError::DigestMismatch { expected, .. } => {
                            FetchError::Digest(expected.to_string())
                        }
                        e => e.into(),
                    })?;
                storage.link_manifest(&key, &d, parsed.media_type)?;
                if let Reference::Tag(t) = &reference {
                    storage.set_tag(&key, t, &d)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| FetchError::Task(e.to_string()))??;
            Counters::add(&reg.counters.upstream_fetches, 1);
            Counters::add(&reg.counters.upstream_bytes, n);
            tracing::info!(upstream = %src.name, repository = %src.repo, reference = %reference, "fetched manifest");
            Ok(true)
        }
    };
    singleflight(reg, flight, stored, work).await
}

/// Fetches blob `d` from `src` into storage.
pub async fn fetch_blob(reg: Arc<Registry>, src: Source, d: Digest) -> Result<bool, FetchError> {
    let flight = format!("b {d}");
    let dd = d.clone();
    let stored = move |reg: &Registry| reg.storage.blob_size(&dd).is_some();
    let work = {
        let reg = reg.clone();
        async move {
            let resp = reg
                .client
                .get(&src.url, &src.repo, &format!("blobs/{d}"), None)
                .await?;
            match resp.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Ok(false),
                s => return Err(UpstreamError::Status(s).into()),
            }
            let total = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let mut w = BlobWriter::create(&reg.storage, "pt").await?;
            // Others can follow the download when its length is known.
            let mut publisher = total.map(|t| Publisher::start(reg.clone(), &d, &w, t));
            let mut body = resp.into_body();
            while let Some(frame) = tokio::time::timeout(IDLE, body.frame())
                .await
                .map_err(|_| UpstreamError::Timeout)?
            {
                let frame = frame.map_err(|e| FetchError::Body(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    w.write(&data).await?;
                    if let Some(p) = publisher.as_mut() {
                        p.advance(&mut w).await?;
                    }
                }
            }
            let (_, n) = w
                .finish(&reg.storage, Some(&d))
                .await
                .map_err(|e| match e {
                    StorageError::DigestMismatch { expected, .. } => {
                        FetchError::Digest(expected.to_string())
                    }
                    e => e.into(),
                })?;
            if let Some(p) = publisher {
                p.done();
            }
            Counters::add(&reg.counters.upstream_fetches, 1);
            Counters::add(&reg.counters.upstream_bytes, n);
            tracing::info!(upstream = %src.name, repository = %src.repo, digest = %d, bytes = n, "fetched blob");
            Ok(true)
        }
    };
    singleflight(reg, flight, stored, work).await
}
