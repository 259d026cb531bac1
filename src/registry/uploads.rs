//! Blob uploads: monolithic (`POST ?digest=`), chunked (`POST`, `PATCH`..., `PUT ?digest=`)
//! and cross-repository mounts. Bytes stream into a `BlobWriter`; an interrupted or
//! oversized chunk ends the session and deletes its temporary file, and a wrong digest
//! stores nothing.

// Handlers return `Result<Response, Response>`: both sides are the reply, once per request.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use super::api::{internal, oci_error, path_error, set_digest};
use super::path::{self, Digest, PathError};
use super::storage::StorageError;
use super::writer::BlobWriter;
use super::{Counters, Registry, Session};

const UUID_HEADER: &str = "docker-upload-uuid";

fn too_large() -> Response {
    oci_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "SIZE_INVALID",
        "blob exceeds the upload limit",
    )
}

/// Streams the request body into `w`, enforcing the upload limit. `Err` leaves the writer
/// to be dropped by the caller (which deletes its file).
async fn receive(reg: &Registry, w: &mut BlobWriter, req: Request) -> Result<(), Response> {
    let max = reg.options.max_upload;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| w.len().saturating_add(n) > max) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            oci_error(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                "request body interrupted",
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if w.len() + data.len() as u64 > max {
                return Err(too_large());
            }
            w.write(&data).await.map_err(internal)?;
        }
    }
    Ok(())
}

fn upload_headers(resp: &mut Response, name: &str, id: &str, len: u64) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{name}/blobs/uploads/{id}")) {
        h.insert(header::LOCATION, v);
    }
    // Range is inclusive; an empty upload reports 0-0 as distribution does.
    let range = format!("0-{}", len.saturating_sub(1));
    h.insert(header::RANGE, HeaderValue::from_str(&range).expect("ASCII"));
    h.insert(UUID_HEADER, HeaderValue::from_str(id).expect("hex id"));
}

fn blob_created(name: &str, d: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{name}/blobs/{d}")) {
        h.insert(header::LOCATION, v);
    }
    set_digest(h, d);
    resp
}

fn digest_param(q: Option<&str>) -> Result<Option<Digest>, Response> {
    match path::query_param(q, "digest") {
        None => Ok(None),
        Some(d) => Digest::parse(&d).map(Some).map_err(path_error),
    }
}

/// Writes `w` into place as `expected`, mapping failures to replies.
async fn commit(
    reg: &Registry,
    name: &str,
    w: BlobWriter,
    expected: &Digest,
) -> Result<Response, Response> {
    match w.finish(&reg.storage, Some(expected)).await {
        Ok((d, _)) => {
            Counters::add(&reg.counters.uploads, 1);
            Ok(blob_created(name, &d))
        }
        Err(StorageError::DigestMismatch { .. }) => Err(oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "content does not match the digest",
        )),
        Err(e) => Err(internal(e)),
    }
}

pub async fn start_upload(
    reg: &Arc<Registry>,
    name: &str,
    q: Option<&str>,
    req: Request,
) -> Result<Response, Response> {
    if let Some(m) = path::query_param(q, "mount") {
        let d = Digest::parse(&m).map_err(path_error)?;
        if reg.storage.blob_size(&d).is_some() {
            return Ok(blob_created(name, &d));
        }
        // Not stored: an ordinary upload session, as the spec asks.
    }
    if let Some(d) = digest_param(q)? {
        let mut w = BlobWriter::create(&reg.storage, "up")
            .await
            .map_err(internal)?;
        receive(reg, &mut w, req).await?;
        return commit(reg, name, w, &d).await;
    }
    let id = super::storage::random_id();
    let w = BlobWriter::create(&reg.storage, "up")
        .await
        .map_err(internal)?;
    let session = Session {
        repo: name.to_string(),
        writer: Some(w),
        last: Instant::now(),
    };
    reg.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(session)));
    let mut resp = StatusCode::ACCEPTED.into_response();
    upload_headers(&mut resp, name, &id, 0);
    Ok(resp)
}

pub fn upload_unknown() -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        "upload unknown",
    )
}

pub async fn patch_upload(
    reg: &Arc<Registry>,
    name: &str,
    id: &str,
    req: Request,
) -> Result<Response, Response> {
    let session = reg.session(id).ok_or_else(upload_unknown)?;
    let mut s = session.lock().await;
    if s.repo != name {
        return Err(upload_unknown());
    }
    let Some(w) = s.writer.as_mut() else {
        return Err(upload_unknown());
    };
    let offset = w.len();
    if let Some(cr) = req
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        match path::parse_content_range(cr) {
            Some((start, _)) if start == offset => {}
            _ => {
                let mut resp = oci_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "BLOB_UPLOAD_INVALID",
                    "chunk out of order",
                );
                upload_headers(&mut resp, name, id, offset);
                return Err(resp);
            }
        }
    }
    if let Err(e) = receive(reg, w, req).await {
        // An interrupted chunk ends the upload: the temporary file goes with the session.
        s.writer = None;
        drop(s);
        reg.remove_session(id);
        return Err(e);
    }
    let len = w.len();
    s.last = Instant::now();
    let mut resp = StatusCode::ACCEPTED.into_response();
    upload_headers(&mut resp, name, id, len);
    Ok(resp)
}

pub async fn finish_upload(
    reg: &Arc<Registry>,
    name: &str,
    id: &str,
    q: Option<&str>,
    req: Request,
) -> Result<Response, Response> {
    let d = digest_param(q)?.ok_or_else(|| path_error(PathError::Digest))?;
    let session = reg.session(id).ok_or_else(upload_unknown)?;
    let mut w = {
        let mut s = session.lock().await;
        if s.repo != name {
            return Err(upload_unknown());
        }
        s.writer.take().ok_or_else(upload_unknown)?
    };
    reg.remove_session(id);
    receive(reg, &mut w, req).await?;
    commit(reg, name, w, &d).await
}

pub async fn upload_status(
    reg: &Arc<Registry>,
    name: &str,
    id: &str,
) -> Result<Response, Response> {
    let session = reg.session(id).ok_or_else(upload_unknown)?;
    let s = session.lock().await;
    let len = s
        .writer
        .as_ref()
        .map(|w| w.len())
        .ok_or_else(upload_unknown)?;
    if s.repo != name {
        return Err(upload_unknown());
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    upload_headers(&mut resp, name, id, len);
    Ok(resp)
}
