//! Who may read the status data, the API and the metrics: machines on the cluster's own
//! networks (node subnet, pod network, loopback) freely; anyone else with the admin token
//! (`Authorization: Bearer`, or `?access_token=` where a header cannot be set, as for the
//! page's EventSource; the trace span shows it redacted). The page's static shell is open
//! to all, so an operator elsewhere can load it and enter the token. Actions check the
//! admin token themselves.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::App;

/// Whether `ip` is on one of the cluster's networks.
pub fn inside(plan: &crate::plan::Plan, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            a.is_loopback()
                || plan.network.subnet.contains(&a)
                || plan.cluster.pod_cidr.contains(&a)
        }
        IpAddr::V6(a) => a.is_loopback(),
    }
}

fn presented(req: &Request) -> Option<String> {
    if let Some(t) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_string());
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token=").map(str::to_string))
}

pub async fn read_access(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    if inside(&app.plan(), peer.ip()) {
        return next.run(req).await;
    }
    let ok = match (presented(&req), &app.admin_token_hash) {
        (Some(t), Some(hash)) => crate::boot::hash_token(&t) == *hash,
        _ => false,
    };
    if ok {
        next.run(req).await
    } else {
        super::error(
            StatusCode::FORBIDDEN,
            "status is open to the cluster's networks; elsewhere use the admin token",
        )
    }
}
