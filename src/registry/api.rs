//! Request handling: every request comes through [`handle`], which parses the path
//! (`path::parse`), checks access, and dispatches. Error replies follow the Distribution
//! spec's JSON (`{"errors":[{"code":...}]}`) and never carry file-system paths.

// Handlers return `Result<Response, Response>`: both sides are the reply, once per request.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http_body_util::BodyExt;

use super::path::{self, Digest, PathError, Reference, Route};
use super::storage::StorageError;
use super::{Counters, Ctx, Registry, Resolved, blobs, manifest, uploads};

/// Largest manifest accepted from a client or an upstream.
pub const MAX_MANIFEST: usize = 4 << 20;

const DIGEST_HEADER: &str = "docker-content-digest";

/// An OCI error reply.
pub fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn path_error(e: PathError) -> Response {
    match e {
        PathError::NotFound => oci_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "not a registry API path",
        ),
        PathError::Name => oci_error(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            "invalid repository name",
        ),
        PathError::Reference => oci_error(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "invalid tag or digest",
        ),
        PathError::Digest => oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", "invalid digest"),
        PathError::Algorithm => oci_error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            "only sha256 digests are supported",
        ),
        PathError::Upload => oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
            "upload unknown",
        ),
    }
}

pub(super) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "registry storage");
    oci_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "storage error",
    )
}

fn unsupported() -> Response {
    oci_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
        "method not supported here",
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}

/// Whether the request carries the admin token (Bearer, or Basic with it as password).
pub fn is_admin(headers: &HeaderMap, hash: Option<&str>) -> bool {
    let Some(hash) = hash else { return false };
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let presented = if let Some(t) = v.strip_prefix("Bearer ") {
        t.trim().to_string()
    } else if let Some(b) = v.strip_prefix("Basic ") {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
            return false;
        };
        let Ok(s) = String::from_utf8(raw) else {
            return false;
        };
        match s.split_once(':') {
            Some((_, pw)) => pw.to_string(),
            None => return false,
        }
    } else {
        return false;
    };
    !presented.is_empty() && crate::boot::hash_token(&presented) == hash
}

fn unauthorized() -> Response {
    let mut r = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "admin token required",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"slipway\""),
    );
    r
}

/// The one entry point (a router fallback: names have any number of segments).
pub async fn handle(
    State(ctx): State<Ctx>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let route = match path::parse(req.uri().path()) {
        Ok(r) => r,
        Err(e) => return path_error(e),
    };
    let plan = ctx.app.plan();
    let admin = is_admin(req.headers(), ctx.app.admin_token_hash.as_deref());
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    if !admin && !super::pull_allowed(peer.ip(), &plan) {
        return oci_error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "this address may not use the registry",
        );
    }
    if !reading && !admin {
        return unauthorized();
    }
    let query = req.uri().query().map(str::to_string);
    let q = query.as_deref();
    let resolve = |name: &str| {
        super::resolve(
            name,
            path::query_param(q, "ns").as_deref(),
            &plan.registry.upstreams,
        )
        .ok_or_else(|| path_error(PathError::Name))
    };
    let reg = ctx.registry.clone();
    let head = *req.method() == Method::HEAD;
    let result = match (req.method().clone(), route) {
        // Clients learn from a 401 here that credentials are Basic; pulls work without.
        (_, Route::Base) if admin => Ok(Json::ok(serde_json::json!({}))),
        (_, Route::Base) => Err(unauthorized()),
        (Method::GET, Route::Catalog) => catalog(&reg, q).await,
        (Method::GET, Route::Tags(name)) => match resolve(&name) {
            Ok(r) => tags(&reg, &name, &r, q).await,
            Err(e) => Err(e),
        },
        (Method::GET | Method::HEAD, Route::Manifest(name, reference)) => match resolve(&name) {
            Ok(r) => get_manifest(&reg, &r, &reference, head).await,
            Err(e) => Err(e),
        },
        (Method::PUT, Route::Manifest(name, reference)) => match resolve(&name) {
            Ok(r) => put_manifest(&reg, &name, &r, &reference, req).await,
            Err(e) => Err(e),
        },
        (Method::DELETE, Route::Manifest(name, reference)) => match resolve(&name) {
            Ok(r) => delete_manifest(&reg, &r, &reference).await,
            Err(e) => Err(e),
        },
        (Method::GET | Method::HEAD, Route::Blob(name, digest)) => match resolve(&name) {
            Ok(r) => blobs::get_blob(&reg, &r, &digest, head, req.headers()).await,
            Err(e) => Err(e),
        },
        (Method::POST, Route::UploadStart(name)) => {
            uploads::start_upload(&reg, &name, q, req).await
        }
        (Method::PATCH, Route::Upload(name, id)) => {
            uploads::patch_upload(&reg, &name, &id, req).await
        }
        (Method::PUT, Route::Upload(name, id)) => {
            uploads::finish_upload(&reg, &name, &id, q, req).await
        }
        (Method::GET, Route::Upload(name, id)) => uploads::upload_status(&reg, &name, &id).await,
        (Method::DELETE, Route::Upload(_, id)) => match reg.remove_session(&id) {
            Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
            None => Err(oci_error(
                StatusCode::NOT_FOUND,
                "BLOB_UPLOAD_UNKNOWN",
                "upload unknown",
            )),
        },
        _ => Err(unsupported()),
    };
    let mut resp = result.unwrap_or_else(|e| e);
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

struct Json;
impl Json {
    fn ok(v: serde_json::Value) -> Response {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response()
    }
}

/// `n` and `last` of a paginated list; `Link` to the next page when one is left.
fn paginate(items: Vec<String>, q: Option<&str>, base: &str) -> (Vec<String>, Option<String>) {
    let n = path::query_param(q, "n").and_then(|n| n.parse::<usize>().ok());
    let last = path::query_param(q, "last").map(|s| s.into_owned());
    let mut items: Vec<String> = match &last {
        Some(l) => items.into_iter().filter(|t| t > l).collect(),
        None => items,
    };
    let Some(n) = n else { return (items, None) };
    if items.len() <= n {
        return (items, None);
    }
    items.truncate(n);
    let link = items
        .last()
        .map(|l| format!("<{base}?n={n}&last={l}>; rel=\"next\""));
    (items, link)
}

fn with_link(mut r: Response, link: Option<String>) -> Response {
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(header::LINK, l);
    }
    r
}

async fn catalog(reg: &Arc<Registry>, q: Option<&str>) -> Result<Response, Response> {
    let storage = reg.storage.clone();
    let repos = blocking(move || storage.repositories())
        .await?
        .map_err(internal)?;
    let (page, link) = paginate(repos, q, "/v2/_catalog");
    Ok(with_link(
        Json::ok(serde_json::json!({"repositories": page})),
        link,
    ))
}

async fn tags(
    reg: &Arc<Registry>,
    name: &str,
    r: &Resolved,
    q: Option<&str>,
) -> Result<Response, Response> {
    let (storage, key) = (reg.storage.clone(), r.key.clone());
    let Some(all) = blocking(move || storage.tags(&key)).await? else {
        return Err(oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository unknown",
        ));
    };
    let (page, link) = paginate(all, q, &format!("/v2/{name}/tags/list"));
    Ok(with_link(
        Json::ok(serde_json::json!({"name": name, "tags": page})),
        link,
    ))
}

/// A stored manifest: (digest, media type, bytes).
async fn lookup_manifest(
    reg: &Arc<Registry>,
    key: &str,
    reference: &Reference,
) -> Result<Option<(Digest, String, Vec<u8>)>, Response> {
    let (storage, key, reference) = (reg.storage.clone(), key.to_string(), reference.clone());
    blocking(move || {
        let d = match reference {
            Reference::Tag(t) => storage.tag(&key, &t)?,
            Reference::Digest(d) => d,
        };
        let mt = storage.manifest(&key, &d)?;
        let bytes = storage.read_blob(&d).ok()?;
        Some((d, mt, bytes))
    })
    .await
}

async fn get_manifest(
    reg: &Arc<Registry>,
    r: &Resolved,
    reference: &Reference,
    head: bool,
) -> Result<Response, Response> {
    let mut found = lookup_manifest(reg, &r.key, reference).await?;
    if found.is_some() {
        Counters::add(&reg.counters.cache_hits, 1);
    } else {
        Counters::add(&reg.counters.cache_misses, 1);
        if let Some(src) = r.upstream.clone().filter(|_| !reg.options.offline) {
            match super::pull::fetch_manifest(reg.clone(), src, r.key.clone(), reference.clone())
                .await
            {
                Ok(true) => found = lookup_manifest(reg, &r.key, reference).await?,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(repository = %r.key, %reference, error = %e, "upstream manifest fetch failed");
                    return Err(upstream_failed());
                }
            }
        }
    }
    let Some((d, mt, bytes)) = found else {
        return Err(oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        ));
    };
    let len = bytes.len();
    let body = if head {
        Body::empty()
    } else {
        Counters::add(&reg.counters.bytes_served, len as u64);
        Body::from(bytes)
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&mt).unwrap_or(HeaderValue::from_static(manifest::OCI_MANIFEST)),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    set_digest(h, &d);
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{d}\"")).expect("digest is ASCII"),
    );
    Ok(resp)
}

pub(super) fn upstream_failed() -> Response {
    oci_error(
        StatusCode::BAD_GATEWAY,
        "UNAVAILABLE",
        "upstream registry unavailable",
    )
}

pub(super) fn set_digest(h: &mut HeaderMap, d: &Digest) {
    h.insert(
        DIGEST_HEADER,
        HeaderValue::from_str(d.as_str()).expect("digest is ASCII"),
    );
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
async fn read_limited(req: Request, limit: usize) -> Result<Vec<u8>, Response> {
    let too_big = || {
        oci_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "SIZE_INVALID",
            "manifest too large",
        )
    };
    let mut body = req.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            oci_error(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                "request body interrupted",
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_big());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

async fn put_manifest(
    reg: &Arc<Registry>,
    name: &str,
    r: &Resolved,
    reference: &Reference,
    req: Request,
) -> Result<Response, Response> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = read_limited(req, MAX_MANIFEST).await?;
    let parsed = manifest::parse(&bytes, ct.as_deref())
        .map_err(|e| oci_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", &e.to_string()))?;
    let (storage, key, reference) = (reg.storage.clone(), r.key.clone(), reference.clone());
    let d = blocking(move || -> Result<Digest, Response> {
        for b in &parsed.blobs {
            if storage.blob_size(b).is_none() {
                return Err(oci_error(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_BLOB_UNKNOWN",
                    &format!("blob unknown: {b}"),
                ));
            }
        }
        for (m, _) in &parsed.manifests {
            if storage.manifest(&key, m).is_none() {
                return Err(oci_error(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_UNKNOWN",
                    &format!("manifest unknown: {m}"),
                ));
            }
        }
        let expected = match &reference {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        };
        let d = storage
            .put_blob_bytes(&bytes, expected)
            .map_err(|e| match e {
                StorageError::DigestMismatch { .. } => oci_error(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    "manifest does not match its digest",
                ),
                e => internal(e),
            })?;
        storage
            .link_manifest(&key, &d, parsed.media_type)
            .map_err(internal)?;
        if let Reference::Tag(t) = &reference {
            storage.set_tag(&key, t, &d).map_err(internal)?;
        }
        Ok(d)
    })
    .await??;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    set_digest(h, &d);
    if let Ok(v) = HeaderValue::from_str(&format!("/v2/{name}/manifests/{d}")) {
        h.insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn delete_manifest(
    reg: &Arc<Registry>,
    r: &Resolved,
    reference: &Reference,
) -> Result<Response, Response> {
    let (storage, key, reference) = (reg.storage.clone(), r.key.clone(), reference.clone());
    let deleted = blocking(move || match reference {
        Reference::Tag(t) => storage.delete_tag(&key, &t),
        Reference::Digest(d) => storage.delete_manifest(&key, &d),
    })
    .await?
    .map_err(internal)?;
    if deleted {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(oci_error(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_credentials() {
        let hash = crate::boot::hash_token("s3cret");
        let mut h = HeaderMap::new();
        assert!(!is_admin(&h, Some(&hash)));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        assert!(is_admin(&h, Some(&hash)));
        assert!(!is_admin(&h, None));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:s3cret");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
        );
        assert!(is_admin(&h, Some(&hash)));
        let wrong = base64::engine::general_purpose::STANDARD.encode("s3cret:nope");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {wrong}")).unwrap(),
        );
        assert!(!is_admin(&h, Some(&hash)));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic %%%"));
        assert!(!is_admin(&h, Some(&hash)));
    }

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let (p, l) = paginate(all.clone(), Some("n=2"), "/v2/x/tags/list");
        assert_eq!(p, ["a", "b"]);
        assert_eq!(
            l.as_deref(),
            Some("</v2/x/tags/list?n=2&last=b>; rel=\"next\"")
        );
        let (p, l) = paginate(all.clone(), Some("n=2&last=b"), "/v2/x/tags/list");
        assert_eq!(
            (p.as_slice(), l),
            (&["c".to_string(), "d".to_string()][..], None)
        );
        let (p, _) = paginate(all.clone(), Some("n=0"), "/");
        assert!(p.is_empty());
        assert_eq!(paginate(all.clone(), None, "/").0.len(), 4);
    }
}
