//! The HTTP server: health, the JSON API, and (in later modules) boot scripts, configs and
//! assets. It takes an already-bound listener and a shutdown signal, so tests and `serve`
//! decide where it listens.

pub mod access;
pub mod api;
pub mod boot;
pub mod files;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::app::App;

pub fn router(app: Arc<App>) -> Router {
    use crate::status::{feed, page};
    // Read-only status: open to the cluster's networks, elsewhere the admin token.
    let status = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/plan", get(plan))
        .route("/api/v1/summary", get(page::summary))
        .route("/api/v1/nodes", get(api::nodes))
        .route("/api/v1/nodes/{id}", get(api::node))
        .route("/api/v1/events", get(api::events))
        .route("/api/v1/unknown", get(api::unknown))
        .route("/api/v1/stream", get(feed::stream))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            app.clone(),
            access::read_access,
        ));
    Router::new()
        .merge(status)
        // The page's shell carries no data: open to anyone, so an operator outside the
        // cluster's networks can load it and enter the admin token.
        .route("/", get(page::index))
        .route("/ui/app.js", get(page::app_js))
        .route("/ui/style.css", get(page::style))
        .route("/healthz", get(healthz))
        .route("/api/v1/nodes/{id}/reinstall", post(api::reinstall))
        .route("/api/v1/nodes/{id}/forget", post(api::forget))
        .route("/api/v1/unknown/{mac}/approve", post(api::approve))
        .route("/boot/{file}", get(boot::script))
        .route("/config/{mac}", get(boot::config))
        .route("/nocloud/{mac}/{token}/{file}", get(boot::nocloud))
        .route("/report/{mac}", post(boot::report))
        .merge(files::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(
            crate::status::metrics::track_http,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(app)
}

/// The trace span of a request, with secrets in the query replaced: the page's EventSource
/// carries the admin token as `access_token`, a node's config fetch its boot `token`.
fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %req.method(),
        uri = %scrub_uri(req.uri()),
        version = ?req.version(),
    )
}

/// `uri` with every `access_token=` and `token=` value replaced by `REDACTED`.
pub fn scrub_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.to_string();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _)) if k == "access_token" || k == "token" => format!("{k}=REDACTED"),
            _ => kv.to_string(),
        })
        .collect();
    format!("{}?{}", uri.path(), query.join("&"))
}

/// Every accepted connection with `TCP_NODELAY`: without it a response's last small
/// segment can wait for the client's delayed ACK (up to 40 ms a response).
pub fn nodelay(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, impl FnMut(&mut tokio::net::TcpStream) + Send + 'static> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    })
}

/// The API's OpenAPI 3 description.
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, None, router(app), shutdown).await
}

/// Serves `router` on `listener`, over TLS when `tls` is given, until `shutdown`. Handlers
/// see the peer address (boot scripts go only to the machine itself; pulls by subnet).
pub async fn serve_router(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    match tls {
        None => {
            axum::serve(nodelay(listener), service)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            // A no-op tap: axum provides `ConnectInfo<SocketAddr>` for any tapped listener.
            let listener = tls::TlsListener::new(listener, config)?.tap_io(|_| {});
            axum::serve(listener, service)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// Healthy when the store answers; the plan generation helps spot a reload that did not apply.
async fn healthz(State(app): State<Arc<App>>) -> Response {
    let store = app.store.clone();
    let ok = tokio::task::spawn_blocking(move || store.schema_version()).await;
    match ok {
        Ok(Ok(_)) => Json(serde_json::json!({"status": "ok", "plan_generation": app.generation()}))
            .into_response(),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "state store unavailable"),
    }
}

async fn plan(State(app): State<Arc<App>>) -> Response {
    let plan = app.plan();
    (
        [(
            header::HeaderName::from_static("x-slipway-plan-generation"),
            app.generation().to_string(),
        )],
        Json(&*plan),
    )
        .into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    match tokio::task::spawn_blocking(move || crate::status::metrics::render(&app)).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "state store unavailable"),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

/// A JSON error body. Messages are fixed strings: never file-system paths or internals.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}

#[cfg(test)]
mod tests {
    /// Paths of the `.route("...")` calls in `source`, wildcards as OpenAPI writes them
    /// (`{*path}` -> `{path}`).
    fn routes_in(source: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = source;
        while let Some(i) = rest.find(".route(") {
            rest = rest[i + ".route(".len()..].trim_start();
            if let Some(lit) = rest.strip_prefix('"') {
                let end = lit.find('"').unwrap_or(0);
                if lit.starts_with('/') {
                    out.push(lit[..end].replace("{*", "{"));
                }
            }
        }
        out
    }

    /// The OpenAPI document must describe every route the router serves (read from this
    /// module's and the file routes' source, so a new route cannot be forgotten).
    #[test]
    fn openapi_lists_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        let served: Vec<String> = [include_str!("mod.rs"), include_str!("files.rs")]
            .into_iter()
            .flat_map(routes_in)
            .collect();
        assert!(served.len() >= 20, "route parsing found {served:?}");
        for route in &served {
            assert!(paths.contains_key(route), "{route} is not in openapi.json");
        }
        for path in paths.keys() {
            assert!(
                served.contains(path),
                "openapi.json lists {path}, not served"
            );
        }
    }

    /// A writer for the test's log subscriber: everything into one buffer.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The request span the server logs (at debug) shows the URI with the token redacted.
    #[tokio::test]
    async fn the_request_log_shows_no_access_token() {
        let logs = Captured::default();
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        // Current-thread runtime: the server's tasks log through this subscriber too.
        let _guard = tracing::subscriber::set_default(subscriber);

        let dir = tempfile::tempdir().unwrap();
        let cfg = std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/cluster-desc.example.yaml"
        ));
        let plan = crate::plan::Plan::from_desc(&crate::desc::load(&cfg).unwrap());
        let store: std::sync::Arc<dyn crate::store::Store> =
            std::sync::Arc::new(crate::store::open(&dir.path().join("state")).unwrap());
        let app = crate::app::App::new(cfg, plan, store, Default::default()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(super::serve(listener, app, std::future::pending()));
        let url = format!("http://{addr}/api/v1/summary?access_token=S3CRET&x=1");
        crate::client::call(hyper::Method::GET, &url, None)
            .await
            .unwrap();
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("/api/v1/summary?access_token=REDACTED&x=1"),
            "{text}"
        );
        assert!(!text.contains("S3CRET"), "{text}");
    }

    #[test]
    fn access_tokens_are_scrubbed_from_logged_uris() {
        let uri: axum::http::Uri = "/api/v1/stream?a=1&access_token=s3cret&b=2&token=t0k"
            .parse()
            .unwrap();
        let shown = super::scrub_uri(&uri);
        assert_eq!(
            shown,
            "/api/v1/stream?a=1&access_token=REDACTED&b=2&token=REDACTED"
        );
        let plain: axum::http::Uri = "/api/v1/nodes".parse().unwrap();
        assert_eq!(super::scrub_uri(&plain), "/api/v1/nodes");
    }
}
