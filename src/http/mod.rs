//! The HTTP server: health, the JSON API, and (in later modules) boot scripts, configs and
//! assets. It takes an already-bound listener and a shutdown signal, so tests and `serve`
//! decide where it listens.

pub mod files;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tower_http::trace::TraceLayer;

use crate::app::App;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/plan", get(plan))
        .merge(files::routes())
        .fallback(not_found)
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}

pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Connection info: handlers need the peer address (lifecycle records, boot scripts).
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
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

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

/// A JSON error body. Messages are fixed strings: never file-system paths or internals.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({"error": message}))).into_response()
}
