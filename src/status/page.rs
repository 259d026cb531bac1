//! The status page: static assets compiled into the binary (no build step) and the summary
//! it shows above the node table. Node rows come from `/api/v1/nodes`, live updates from
//! `/api/v1/stream`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::app::App;
use crate::status::NodeState;

const INDEX: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE: &str = include_str!("web/style.css");

fn asset(mime: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, mime),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[derive(Serialize)]
struct Summary {
    cluster: String,
    domain: String,
    kubernetes_version: String,
    os: String,
    endpoint: String,
    endpoint_addresses: Vec<std::net::Ipv4Addr>,
    plan_generation: u64,
    nodes_by_state: Vec<(NodeState, usize)>,
    stuck_after_secs: u64,
    /// Certificates and their expiry (unix seconds), soonest first.
    certificates: Vec<CertExpiry>,
    /// Images the description pins, and whether the mirror holds each (None: the
    /// registry does not run here).
    images: Vec<(String, Option<bool>)>,
}

#[derive(Serialize)]
struct CertExpiry {
    name: String,
    not_after: i64,
}

/// `GET /api/v1/summary`
pub async fn summary(State(app): State<Arc<App>>) -> Response {
    let store = app.store.clone();
    let records = match tokio::task::spawn_blocking(move || store.nodes()).await {
        Ok(Ok(r)) => r,
        _ => {
            return crate::http::error(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "state store unavailable",
            );
        }
    };
    let plan = app.plan();
    let views = crate::http::api::node_views(&plan, records, false);
    let nodes_by_state = NodeState::ALL
        .into_iter()
        .map(|s| (s, views.iter().filter(|v| v.state == s).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    let mut certificates: Vec<CertExpiry> = match &app.pki {
        Some(pki) => pki
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .summary()
            .into_iter()
            .map(|c| CertExpiry {
                name: c.name,
                not_after: c.not_after,
            })
            .collect(),
        None => Vec::new(),
    };
    certificates.sort_by_key(|c| c.not_after);
    let images = {
        let (app, plan) = (app.clone(), plan.clone());
        tokio::task::spawn_blocking(move || {
            plan.images
                .iter()
                .map(|i| {
                    let cached = app.registry.get().map(|r| {
                        crate::registry::prefetch::is_cached(r, &plan.registry.upstreams, i)
                    });
                    (i.clone(), cached)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default()
    };
    let ep = &plan.cluster.endpoint;
    Json(Summary {
        cluster: plan.cluster.name.clone(),
        domain: plan.cluster.domain.clone(),
        kubernetes_version: plan.cluster.kubernetes_version.clone(),
        os: format!("{:?} {}", plan.os.profile, plan.os.version).to_lowercase(),
        endpoint: format!("{}:{}", ep.fqdn, ep.port),
        endpoint_addresses: ep.addresses.clone(),
        plan_generation: app.generation(),
        nodes_by_state,
        stuck_after_secs: app.stuck_after_millis / 1000,
        certificates,
        images,
    })
    .into_response()
}
