//! The JSON API under `/api/v1`: nodes with their lifecycle, events, and operator actions.
//! Reads are open to the cluster's networks (elsewhere the admin token, see `access`);
//! actions need the admin token (`Authorization: Bearer`), which `serve` creates in the
//! state directory on first start.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error;
use crate::app::App;
use crate::desc::{Gpu, Role};
use crate::plan::Plan;
use crate::status::NodeState;
use crate::store::{Event, NodeRecord, StoreError, Transition, now_millis};

/// File name of the admin token inside the state directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Reads the admin token, creating it (0600, fsynced) when missing. Returns the token and
/// whether it was created now, so `serve` can show it once.
pub fn ensure_admin_token(state_dir: &FsPath) -> std::io::Result<(String, bool)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let path = state_dir.join(ADMIN_TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok((t.trim().to_string(), false)),
        Ok(_) => std::fs::remove_file(&path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = crate::boot::new_token()?.secret;
    let tmp = state_dir.join(format!("{ADMIN_TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok((token, true))
}

/// Checks the bearer token against the admin token's hash; `Some` is the refusal.
fn refuse_unless_admin(app: &App, headers: &HeaderMap) -> Option<Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return Some(error(StatusCode::UNAUTHORIZED, "admin token required"));
    };
    match &app.admin_token_hash {
        Some(hash) if crate::boot::hash_token(presented.trim()) == *hash => None,
        _ => Some(error(StatusCode::FORBIDDEN, "wrong admin token")),
    }
}

/// One machine as the API shows it: its plan (if any) and its lifecycle record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub name: Option<String>,
    pub mac: String,
    pub ip: Option<std::net::Ipv4Addr>,
    pub role: Option<Role>,
    pub gpu: Option<Gpu>,
    pub state: NodeState,
    pub detail: Option<String>,
    /// Unix milliseconds of the last transition (None: never seen).
    pub updated_at: Option<u64>,
    /// In progress but without a step for longer than `--stuck-after`.
    #[serde(default)]
    pub stuck: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Transition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
}

/// Planned nodes in description order, then machines known only from the store.
pub fn node_views(plan: &Plan, records: Vec<NodeRecord>, with_history: bool) -> Vec<NodeView> {
    let mut by_mac: BTreeMap<String, NodeRecord> =
        records.into_iter().map(|r| (r.mac.clone(), r)).collect();
    let mut out: Vec<NodeView> = plan
        .nodes
        .iter()
        .map(|n| {
            let rec = by_mac.remove(&n.mac.to_string());
            NodeView {
                name: Some(n.hostname.clone()),
                mac: n.mac.to_string(),
                ip: Some(n.ip),
                role: Some(n.role),
                gpu: Some(n.gpu),
                state: rec.as_ref().map_or(NodeState::Planned, |r| r.state),
                detail: rec.as_ref().and_then(|r| r.detail.clone()),
                updated_at: rec.as_ref().map(|r| r.updated_at),
                stuck: false,
                history: rec
                    .filter(|_| with_history)
                    .map(|r| r.history)
                    .unwrap_or_default(),
                events: Vec::new(),
            }
        })
        .collect();
    out.extend(by_mac.into_values().map(|r| NodeView {
        name: r.hostname.clone(),
        mac: r.mac.clone(),
        ip: None,
        role: None,
        gpu: None,
        state: r.state,
        detail: r.detail.clone(),
        updated_at: Some(r.updated_at),
        stuck: false,
        history: if with_history { r.history } else { Vec::new() },
        events: Vec::new(),
    }));
    out
}

/// Marks nodes that are on their way (not planned, joined or failed) but made no step for
/// `after_ms`: the page highlights them for the operator.
pub fn mark_stuck(views: &mut [NodeView], now_ms: u64, after_ms: u64) {
    for v in views {
        let waiting = !matches!(
            v.state,
            NodeState::Planned | NodeState::Joined | NodeState::Failed
        );
        v.stuck = waiting
            && v.updated_at
                .is_some_and(|t| now_ms.saturating_sub(t) > after_ms);
    }
}

fn store_error(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "state store");
    error(StatusCode::SERVICE_UNAVAILABLE, "state store unavailable")
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(store_error(e)),
        Err(e) => Err(store_error(e)),
    }
}

/// `GET /api/v1/nodes`
pub async fn nodes(State(app): State<Arc<App>>) -> Response {
    let plan = app.plan();
    let store = app.store.clone();
    match blocking(move || store.nodes()).await {
        Ok(records) => {
            let mut views = node_views(&plan, records, false);
            mark_stuck(&mut views, now_millis(), app.stuck_after_millis);
            Json(views).into_response()
        }
        Err(r) => r,
    }
}

/// Finds a machine by planned name or by MAC (any accepted MAC spelling).
fn find(plan: &Plan, id: &str) -> Option<String> {
    if let Some(n) = plan.node_by_name(id) {
        return Some(n.mac.to_string());
    }
    id.parse::<crate::desc::Mac>().ok().map(|m| m.to_string())
}

/// `GET /api/v1/nodes/{name-or-mac}`: the node with its timeline and recent events.
pub async fn node(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let plan = app.plan();
    let Some(mac) = find(&plan, &id) else {
        return error(StatusCode::NOT_FOUND, "no such node");
    };
    let store = app.store.clone();
    let m = mac.clone();
    let found = blocking(move || {
        let rec = store.get_node(&m)?;
        let events: Vec<Event> = store
            .recent_events(2000)?
            .into_iter()
            .filter(|e| e.mac.as_deref() == Some(m.as_str()))
            .collect();
        Ok((rec, events))
    })
    .await;
    let (rec, events) = match found {
        Ok(v) => v,
        Err(r) => return r,
    };
    let in_plan = plan
        .node_by_mac(&mac.parse().expect("canonical MAC"))
        .is_some();
    if rec.is_none() && !in_plan {
        return error(StatusCode::NOT_FOUND, "no such node");
    }
    let mut views = node_views(&plan, rec.into_iter().collect(), true);
    let Some(mut view) = views.drain(..).find(|v| v.mac == mac) else {
        return error(StatusCode::NOT_FOUND, "no such node");
    };
    view.events = events;
    mark_stuck(
        std::slice::from_mut(&mut view),
        now_millis(),
        app.stuck_after_millis,
    );
    Json(view).into_response()
}

#[derive(Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /api/v1/events?after=SEQ&limit=N`
pub async fn events(State(app): State<Arc<App>>, Query(q): Query<EventsQuery>) -> Response {
    let store = app.store.clone();
    let limit = q.limit.unwrap_or(500).min(5000);
    match blocking(move || store.events_since(q.after, limit)).await {
        Ok(ev) => Json(ev).into_response(),
        Err(r) => r,
    }
}

/// `POST /api/v1/nodes/{name-or-mac}/reinstall` (admin): the node's next network boot
/// installs again. Its state goes back to `planned` and any live boot token is revoked.
pub async fn reinstall(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refuse_unless_admin(&app, &headers) {
        return refusal;
    }
    let plan = app.plan();
    let Some(node) = plan.node_by_name(&id).or_else(|| {
        id.parse::<crate::desc::Mac>()
            .ok()
            .and_then(|m| plan.node_by_mac(&m))
    }) else {
        return error(StatusCode::NOT_FOUND, "no such node in the description");
    };
    let (mac, hostname) = (node.mac.to_string(), node.hostname.clone());
    let app2 = app.clone();
    let m = mac.clone();
    let done = blocking(move || {
        app2.store.revoke_boot_token(&m)?;
        app2.loop_guard.clear(&m);
        app2.node_step(
            &m,
            Some(hostname),
            NodeState::Planned,
            "reinstall requested by the operator",
            false,
        )?;
        app2.store.append_event(
            "node.reinstall",
            Some(&m),
            "reinstall requested by the operator",
        )
    })
    .await;
    match done {
        Ok(_) => (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({
                "node": id,
                "mac": mac,
                "state": "planned",
                "at": now_millis(),
                "message": "the next network boot installs this node again",
            })),
        )
            .into_response(),
        Err(r) => r,
    }
}

/// `POST /api/v1/nodes/{name-or-mac}/forget` (admin): drops the machine's lifecycle record
/// and boot token, as if it had never booted (its planned entry, if any, stays). Its DHCP
/// lease is kept until it expires: the machine may still be using the address.
pub async fn forget(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refuse_unless_admin(&app, &headers) {
        return refusal;
    }
    let plan = app.plan();
    let Some(mac) = find(&plan, &id) else {
        return error(StatusCode::NOT_FOUND, "no such node");
    };
    let app2 = app.clone();
    let m = mac.clone();
    let done = blocking(move || {
        let had_record = app2.store.delete_node(&m)?;
        let had_token = app2.store.revoke_boot_token(&m)?;
        app2.loop_guard.clear(&m);
        app2.store
            .append_event("node.forgotten", Some(&m), "forgotten by the operator")?;
        Ok(had_record || had_token)
    })
    .await;
    match done {
        Ok(true) => {
            Json(serde_json::json!({"node": id, "mac": mac, "forgotten": true})).into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "nothing recorded for this node"),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: NodeState, updated_at: Option<u64>) -> NodeView {
        NodeView {
            name: None,
            mac: "52:54:00:00:00:01".into(),
            ip: None,
            role: None,
            gpu: None,
            state,
            detail: None,
            updated_at,
            stuck: false,
            history: vec![],
            events: vec![],
        }
    }

    #[test]
    fn only_nodes_on_their_way_get_stuck() {
        let mut v = vec![
            view(NodeState::Booting, Some(0)),
            view(NodeState::Installing, Some(9_500)),
            view(NodeState::Joined, Some(0)),
            view(NodeState::Failed, Some(0)),
            view(NodeState::Planned, None),
            view(NodeState::Installed, Some(1_000)),
        ];
        mark_stuck(&mut v, 10_000, 5_000);
        let stuck: Vec<bool> = v.iter().map(|n| n.stuck).collect();
        assert_eq!(stuck, [true, false, false, false, false, true]);
    }
}

#[derive(Serialize)]
struct UnknownView {
    #[serde(flatten)]
    machine: crate::dhcp::unknown::UnknownMachine,
    approved: bool,
}

/// `GET /api/v1/unknown`: machines not in the description that asked DHCP for an address.
pub async fn unknown(State(app): State<Arc<App>>) -> Response {
    let list: Vec<UnknownView> = app
        .unknown_machines()
        .into_iter()
        .map(|(machine, approved)| UnknownView { machine, approved })
        .collect();
    Json(list).into_response()
}

/// `POST /api/v1/unknown/{mac}/approve` (admin): the machine is served from the DHCP pool
/// and installed as a worker, like under `unknown_machines: enroll-worker`.
pub async fn approve(
    State(app): State<Arc<App>>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refusal) = refuse_unless_admin(&app, &headers) {
        return refusal;
    }
    let Ok(mac) = mac.parse::<crate::desc::Mac>() else {
        return error(StatusCode::BAD_REQUEST, "not a MAC address");
    };
    let plan = app.plan();
    if plan.node_by_mac(&mac).is_some() {
        return error(
            StatusCode::CONFLICT,
            "this machine is in the description already",
        );
    }
    if plan.network.pool.is_none() {
        return error(
            StatusCode::CONFLICT,
            "network.dhcp.pool is not set: approved machines need a pool address",
        );
    }
    let app2 = app.clone();
    match blocking(move || app2.approve(mac)).await {
        Ok(()) => {
            Json(serde_json::json!({"mac": mac.to_string(), "approved": true})).into_response()
        }
        Err(r) => r,
    }
}
