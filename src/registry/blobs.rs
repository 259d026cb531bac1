//! Blob downloads: from storage with `Range`, or on a miss from the upstream, following
//! the download while it runs (whole-blob GETs) or after it (HEAD, ranges).

// Handlers return `Result<Response, Response>`: both sides are the reply, once per request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::api::{internal, oci_error, set_digest, upstream_failed};
use super::path::{self, Digest};
use super::{Counters, Registry, Resolved};

/// 200 with a whole blob's body and headers.
fn blob_response(body: Body, d: &Digest, len: u64) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set_digest(h, d);
    resp
}

pub async fn get_blob(
    reg: &Arc<Registry>,
    r: &Resolved,
    d: &Digest,
    head: bool,
    headers: &HeaderMap,
) -> Result<Response, Response> {
    let mut size = reg.storage.blob_size(d);
    if size.is_some() {
        Counters::add(&reg.counters.cache_hits, 1);
    } else {
        Counters::add(&reg.counters.cache_misses, 1);
        if let Some(src) = r.upstream.clone().filter(|_| !reg.options.offline) {
            // The fetch runs on (for the other clients) even if this one goes away.
            let mut fetch = tokio::spawn(super::pull::fetch_blob(reg.clone(), src, d.clone()));
            // Whole-blob GETs stream along with the download; HEAD and ranges wait for it.
            let follows = !head && !headers.contains_key(header::RANGE);
            let fetched = loop {
                let started = reg.download_started.notified();
                tokio::pin!(started);
                started.as_mut().enable();
                if follows && let Some((len, body)) = super::follow::follow(reg, d).await {
                    return Ok(blob_response(body, d, len));
                }
                tokio::select! {
                    _ = &mut started => continue,
                    r = &mut fetch => break r.map_err(internal)?,
                }
            };
            match fetched {
                Ok(true) => size = reg.storage.blob_size(d),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(repository = %r.key, digest = %d, error = %e, "upstream blob fetch failed");
                    return Err(upstream_failed());
                }
            }
        }
    }
    let Some(len) = size else {
        return Err(oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown",
        ));
    };
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(h) => match path::parse_range(h, len) {
            Ok(r) => r,
            Err(path::Unsatisfiable) => {
                let mut resp = oci_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UNKNOWN",
                    "range not satisfiable",
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Err(resp);
            }
        },
        None => None,
    };
    let (start, count) = match range {
        Some((a, b)) => (a, b - a + 1),
        None => (0, len),
    };
    let body = if head {
        Body::empty()
    } else {
        crate::http::files::mapped_body(
            reg.storage.blob_path(d),
            start,
            start + count,
            reg.blob_stats.clone(),
        )
        .await
        .map_err(internal)?
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some((a, b)) = range
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}"))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    set_digest(h, d);
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{d}\"")).expect("digest is ASCII"),
    );
    Ok(resp)
}
