//! Fetching from upstream registries: one HTTP(S) client for every upstream, anonymous or
//! with the Bearer-token flow (a 401 names the token service in `WWW-Authenticate`; the
//! token is fetched, cached for its lifetime and the request retried), and redirects
//! followed without credentials (Docker Hub sends blobs from a CDN).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// Time to wait for an upstream's response headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream request failed: {0}")]
    Http(String),
    #[error("upstream timed out")]
    Timeout,
    #[error("upstream answered {0}")]
    Status(StatusCode),
    #[error("upstream token service: {0}")]
    Token(String),
    #[error("invalid upstream URL {0}")]
    Url(String),
}

pub struct UpstreamClient {
    client: Client<Https, Empty<Bytes>>,
    /// (token realm + scope) -> (token, valid until).
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

/// A `WWW-Authenticate: Bearer ...` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub service: Option<String>,
    pub scope: Option<String>,
}

/// Parses a Bearer challenge (`Bearer realm="...",service="...",scope="..."`).
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let rest = h.trim();
    let (scheme, params) = rest.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut map = HashMap::new();
    let mut s = params.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        map.insert(k, v);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        realm: map.remove("realm")?,
        service: map.remove("service"),
        scope: map.remove("scope"),
    })
}

/// Percent-encodes a query value (scopes hold `:` and `/`, which token services accept).
fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamClient {
    pub fn new() -> UpstreamClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        UpstreamClient {
            client: Client::builder(TokioExecutor::new()).build(https),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// GETs `{base}/v2/{repo}/{suffix}` with `accept`, authenticating and following
    /// redirects. Returns the final response whatever its status.
    pub async fn get(
        &self,
        base: &str,
        repo: &str,
        suffix: &str,
        accept: Option<&str>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let url = format!("{}/v2/{repo}/{suffix}", base.trim_end_matches('/'));
        let scope = format!("repository:{repo}:pull");
        let key = format!("{base} {scope}");
        let token = self.cached_token(&key);
        let resp = self.get_following(&url, accept, token.as_deref()).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_challenge);
        let Some(challenge) = challenge else {
            return Ok(resp);
        };
        let token = self.fetch_token(&challenge, &scope).await?;
        self.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (token.0.clone(), token.1));
        self.get_following(&url, accept, Some(&token.0)).await
    }

    fn cached_token(&self, key: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(t, _)| t.clone())
    }

    async fn fetch_token(
        &self,
        c: &Challenge,
        scope: &str,
    ) -> Result<(String, Instant), UpstreamError> {
        let mut url = c.realm.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        if let Some(service) = &c.service {
            url.push_str(&format!("service={}&", encode(service)));
        }
        url.push_str(&format!(
            "scope={}",
            encode(c.scope.as_deref().unwrap_or(scope))
        ));
        let resp = self
            .get_following(&url, Some("application/json"), None)
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(UpstreamError::Token(format!("answered {}", resp.status())));
        }
        let body = tokio::time::timeout(HEADER_TIMEOUT, resp.into_body().collect())
            .await
            .map_err(|_| UpstreamError::Timeout)?
            .map_err(|e| UpstreamError::Token(e.to_string()))?
            .to_bytes();
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: Token =
            serde_json::from_slice(&body).map_err(|e| UpstreamError::Token(e.to_string()))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| UpstreamError::Token("no token in the reply".into()))?;
        // Renew a little early; a token without expiry is kept for the spec's default 60 s.
        let life = t.expires_in.unwrap_or(60).saturating_sub(10).max(10);
        Ok((token, Instant::now() + Duration::from_secs(life)))
    }

    async fn get_following(
        &self,
        url: &str,
        accept: Option<&str>,
        token: Option<&str>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut url = url.to_string();
        let mut token = token;
        for _ in 0..=MAX_REDIRECTS {
            let uri: hyper::Uri = url.parse().map_err(|_| UpstreamError::Url(url.clone()))?;
            let mut req = Request::get(uri.clone()).header(header::USER_AGENT, "slipway-registry");
            if let Some(a) = accept {
                req = req.header(header::ACCEPT, a);
            }
            if let Some(t) = token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Empty::new())
                .map_err(|e| UpstreamError::Http(e.to_string()))?;
            let resp = tokio::time::timeout(HEADER_TIMEOUT, self.client.request(req))
                .await
                .map_err(|_| UpstreamError::Timeout)?
                .map_err(|e| UpstreamError::Http(e.to_string()))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(loc) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Ok(resp);
            };
            url = if loc.starts_with("http://") || loc.starts_with("https://") {
                loc.to_string()
            } else {
                let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
                let scheme = uri.scheme_str().unwrap_or("https");
                format!(
                    "{scheme}://{authority}{}",
                    if loc.starts_with('/') {
                        loc.to_string()
                    } else {
                        format!("/{loc}")
                    }
                )
            };
            // Signed CDN URLs must not receive the registry's token.
            token = None;
        }
        Err(UpstreamError::Http("too many redirects".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://auth.docker.io/token");
        assert_eq!(c.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(c.scope.as_deref(), Some("repository:library/busybox:pull"));
        let c = parse_challenge("bearer realm=http://x/t, service=s").unwrap();
        assert_eq!(
            (c.realm.as_str(), c.service.as_deref(), c.scope),
            ("http://x/t", Some("s"), None)
        );
        assert_eq!(parse_challenge(r#"Basic realm="x""#), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
        assert_eq!(
            encode("repository:a/b:pull,push"),
            "repository:a/b:pull%2Cpush"
        );
    }
}
