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
        .route("/", get(page::index))
        .route("/ui/app.js", get(page::app_js))
        .route("/ui/style.css", get(page::style))
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
        .layer(TraceLayer::new_for_http())
        .with_state(app)
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
