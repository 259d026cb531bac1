//! The boot endpoints machines call: their iPXE script, their config (with the one-time
//! token from the script) and their progress reports. See docs/boot-flow.md.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error;
use crate::app::App;
use crate::boot::{self, ScriptKind};
use crate::desc::{Mac, UnknownPolicy};
use crate::plan::NodePlan;
use crate::status::NodeState;
use crate::store::{BootToken, TokenCheck, TokenUse, now_millis};

/// Peer address as IPv4 (IPv4-mapped IPv6 included).
pub fn peer_v4(peer: SocketAddr) -> Option<Ipv4Addr> {
    match peer.ip() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(a) => a.to_ipv4_mapped(),
    }
}

fn parse_mac(s: &str) -> Option<Mac> {
    s.parse().ok()
}

fn ipxe(text: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}

fn internal(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "{what}");
    error(StatusCode::INTERNAL_SERVER_ERROR, what)
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal("internal error", e))
}

/// The machine a URL's MAC names (see [`App::node_for_mac`]); `Err` is the reply.
async fn find_node(app: &Arc<App>, mac: &str) -> Result<NodePlan, Response> {
    let Some(mac) = parse_mac(mac) else {
        return Err(error(StatusCode::NOT_FOUND, "not found"));
    };
    let app2 = app.clone();
    match blocking(move || app2.node_for_mac(&mac)).await? {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "not found")),
        Err(e) => Err(internal("state store unavailable", e)),
    }
}

/// `GET /boot/{mac}.ipxe`. The install script carries a fresh token, so it is only handed
/// to the machine itself: the request must come from the node's planned address or the
/// address leased to that MAC.
pub async fn script(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Response {
    let Some(mac) = file.strip_suffix(".ipxe").and_then(parse_mac) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let plan = app.plan();
    let node = match find_node(&app, &mac.to_string()).await {
        Ok(n) => n,
        Err(_) => return unknown_machine(&app, &plan, mac),
    };
    let peer_ip = peer_v4(peer);
    let app2 = app.clone();
    let key = mac.to_string();
    let checked = blocking(move || -> Result<_, crate::store::StoreError> {
        let leased = app2.store.get_lease(&key)?.map(|l| l.ip);
        let record = app2.store.get_node(&key)?;
        Ok((leased, record))
    })
    .await;
    let (leased, record) = match checked {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return internal("state store unavailable", e),
        Err(r) => return r,
    };
    if peer_ip != Some(node.ip) && (peer_ip.is_none() || peer_ip != leased) {
        let app2 = app.clone();
        let msg = format!("boot script for {} refused to {}", node.hostname, peer.ip());
        tracing::warn!("{msg}");
        let key = mac.to_string();
        let _ = blocking(move || app2.store.append_event("boot.refused", Some(&key), &msg)).await;
        return error(
            StatusCode::FORBIDDEN,
            "boot scripts are served only to the machine itself",
        );
    }
    let state = record.as_ref().map(|r| r.state);
    match boot::script_kind(state) {
        ScriptKind::LocalDisk => local_disk(app, node).await,
        ScriptKind::Install => install(app, node, state).await,
        ScriptKind::Hold => {
            let why = record.and_then(|r| r.detail).unwrap_or_default();
            held(&app, &node, &why)
        }
    }
}

/// A failed node: no token, no installer; it asks again every minute, so that
/// `slipway node reinstall` takes effect without anyone at its console.
fn held(app: &App, node: &NodePlan, why: &str) -> Response {
    tracing::info!(node = %node.hostname, reason = why, "boot script: failed node held");
    let msg = boot::ipxe_text(&format!(
        "{} failed ({why}); held until: slipway node reinstall {}",
        node.hostname, node.hostname
    ));
    match app
        .renderer()
        .hold_script(&node.boot.ipxe_script, &msg, boot::HOLD_RETRY_SECS)
    {
        Ok(t) => ipxe(t),
        Err(e) => internal("rendering the boot script failed", e),
    }
}

async fn local_disk(app: Arc<App>, node: NodePlan) -> Response {
    let plan = app.plan();
    let text = match app.renderer().local_disk_script(&plan, &node) {
        Ok(t) => t,
        Err(e) => return internal("rendering the boot script failed", e),
    };
    let mac = node.mac.to_string();
    let msg = format!("{} is installed: boot from the local disk", node.hostname);
    let _ = blocking(move || app.store.append_event("boot.local-disk", Some(&mac), &msg)).await;
    ipxe(text)
}

async fn install(app: Arc<App>, node: NodePlan, state: Option<NodeState>) -> Response {
    let plan = app.plan();
    let mac = node.mac.to_string();
    let now = now_millis();
    let fetches = app.loop_guard.note(&mac, now);
    if fetches > boot::LOOP_LIMIT && state.is_none_or(|s| s < NodeState::Booting) {
        // The machine keeps asking without ever loading the installer: stop feeding it
        // tokens, mark it failed (held like any failed node until `node reinstall`).
        let detail =
            format!("boot loop: {fetches} script fetches in 10 min without loading the installer");
        let app2 = app.clone();
        let (m, h) = (mac.clone(), node.hostname.clone());
        let d = detail.clone();
        let saved =
            blocking(move || app2.node_step(&m, Some(h), NodeState::Failed, &d, false)).await;
        return match saved {
            Ok(Ok(())) => held(&app, &node, &detail),
            Ok(Err(e)) => internal("state store unavailable", e),
            Err(r) => r,
        };
    }
    let token = match boot::new_token() {
        Ok(t) => t,
        Err(e) => return internal("no randomness for a boot token", e),
    };
    let args = boot::install_kernel_args(&plan, &node, &token.secret);
    let text = match app.renderer().install_script(&plan, &node, &args) {
        Ok(t) => t,
        Err(e) => return internal("rendering the boot script failed", e),
    };
    let record = BootToken {
        mac: mac.clone(),
        hash: token.hash,
        issued_at: now,
        expires_at: now + boot::TOKEN_TTL_MILLIS,
        config_fetched_at: None,
    };
    let app2 = app.clone();
    let hostname = node.hostname.clone();
    let saved = blocking(move || -> Result<(), crate::store::StoreError> {
        app2.store.issue_boot_token(&record)?;
        app2.node_step(
            &mac,
            Some(hostname),
            NodeState::Pxe,
            "iPXE install script served",
            true,
        )
    })
    .await;
    match saved {
        Ok(Ok(())) => ipxe(text),
        Ok(Err(e)) => internal("state store unavailable", e),
        Err(r) => r,
    }
}

/// A MAC that is not in the description and holds no lease. With `enroll-worker` it is told
/// to ask again (its DHCP lease makes it a worker); otherwise there is nothing here.
fn unknown_machine(app: &App, plan: &crate::plan::Plan, mac: Mac) -> Response {
    if plan.network.unknown_machines != UnknownPolicy::EnrollWorker {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    let url = format!(
        "{}/boot/{}.ipxe",
        plan.bootstrapper.http_base,
        mac.url_form()
    );
    let msg = format!("machine {mac} is not in the cluster description and has no lease yet");
    match app.renderer().hold_script(&url, &msg, 60) {
        Ok(t) => ipxe(t),
        Err(e) => internal("rendering the boot script failed", e),
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The token from `?token=` or `Authorization: Bearer`.
fn presented_token(query: Option<String>, headers: &HeaderMap) -> Option<String> {
    query.filter(|t| !t.is_empty()).or_else(|| {
        headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")
            .map(str::to_string)
    })
}

fn refused(check: &TokenCheck) -> Response {
    error(StatusCode::FORBIDDEN, check.reason())
}

/// `GET /config/{mac}?token=T`: the node's config, once per token.
pub async fn config(
    State(app): State<Arc<App>>,
    Path(mac): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = presented_token(q.token, &headers) else {
        return error(StatusCode::UNAUTHORIZED, "a boot token is required");
    };
    config_for(app, &mac, token).await
}

/// NoCloud for Ubuntu's autoinstall: `GET /nocloud/{mac}/{token}/user-data` is the node's
/// config (spending the token, like `/config`); `meta-data` and `vendor-data` hold no
/// secrets but still need the node's current token.
pub async fn nocloud(
    State(app): State<Arc<App>>,
    Path((mac, token, file)): Path<(String, String, String)>,
) -> Response {
    match file.as_str() {
        "user-data" => config_for(app, &mac, token).await,
        "meta-data" | "vendor-data" => {
            let node = match find_node(&app, &mac).await {
                Ok(n) => n,
                Err(r) => return r,
            };
            let app2 = app.clone();
            let hash = boot::hash_token(&token);
            let key = node.mac.to_string();
            let checked = blocking(move || {
                app2.store
                    .use_boot_token(&key, &hash, TokenUse::Report, now_millis())
            })
            .await;
            match checked {
                Ok(Ok(TokenCheck::Valid(_))) => {
                    let text = if file == "meta-data" {
                        crate::render::cloud::meta_data(&node)
                    } else {
                        "#cloud-config\n{}\n".to_string()
                    };
                    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
                }
                Ok(Ok(other)) => refused(&other),
                Ok(Err(e)) => internal("state store unavailable", e),
                Err(r) => r,
            }
        }
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The node's config for a presented token: rendered, then the token spent.
async fn config_for(app: Arc<App>, mac: &str, token: String) -> Response {
    let plan = app.plan();
    let node = match find_node(&app, mac).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    // Render first: a template error must not spend the node's token. The installed
    // system reports `joined` with the same token, so it goes into the config.
    let secrets = match &app.pki {
        Some(pki) => {
            let pki = pki.read().unwrap_or_else(|e| e.into_inner());
            crate::render::NodeSecrets::from_pki(&pki, &node, &token)
        }
        None => return error(StatusCode::SERVICE_UNAVAILABLE, "no cluster PKI loaded"),
    };
    let (text, mime) = match app.renderer().node_config(&plan, &node, &secrets) {
        Ok(v) => v,
        Err(e) => return internal("rendering the node config failed", e),
    };
    // Names only, for the event: which secrets went to this node.
    let mut names: Vec<&str> = vec!["bootstrap token"];
    names.extend(
        secrets
            .pki_files
            .iter()
            .filter(|f| f.mode & 0o077 == 0)
            .map(|f| f.path.as_str()),
    );
    let secret_list = names.join(", ");
    let app2 = app.clone();
    let hash = boot::hash_token(&token);
    let checked = blocking(move || -> Result<TokenCheck, crate::store::StoreError> {
        let key = node.mac.to_string();
        let check = app2
            .store
            .use_boot_token(&key, &hash, TokenUse::Config, now_millis())?;
        if matches!(check, TokenCheck::Valid(_)) {
            app2.node_step(
                &key,
                Some(node.hostname.clone()),
                NodeState::ConfigFetched,
                "config served (token spent)",
                true,
            )?;
            app2.store.append_event(
                "secret.issued",
                Some(&key),
                &format!(
                    "config with its secrets served to {}: {}",
                    node.hostname, secret_list
                ),
            )?;
        }
        Ok(check)
    })
    .await;
    match checked {
        Ok(Ok(TokenCheck::Valid(_))) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "no-store"),
            ],
            text,
        )
            .into_response(),
        Ok(Ok(other)) => refused(&other),
        Ok(Err(e)) => internal("state store unavailable", e),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct Report {
    token: Option<String>,
    state: String,
    #[serde(default)]
    message: String,
}

/// `POST /report/{mac}` (form: `token`, `state`, `message`): installer progress.
pub async fn report(
    State(app): State<Arc<App>>,
    Path(mac): Path<String>,
    headers: HeaderMap,
    Form(r): Form<Report>,
) -> Response {
    let node = match find_node(&app, &mac).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let state = match r.state.as_str() {
        "installing" => NodeState::Installing,
        "installed" => NodeState::Installed,
        "joined" => NodeState::Joined,
        "failed" => NodeState::Failed,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "state must be installing, installed, joined or failed",
            );
        }
    };
    let Some(token) = presented_token(r.token, &headers) else {
        return error(StatusCode::UNAUTHORIZED, "a boot token is required");
    };
    let message: String = r.message.chars().take(500).collect();
    let hash = boot::hash_token(&token);
    let app2 = app.clone();
    let checked = blocking(move || -> Result<TokenCheck, crate::store::StoreError> {
        let key = node.mac.to_string();
        let check = app2
            .store
            .use_boot_token(&key, &hash, TokenUse::Report, now_millis())?;
        if matches!(check, TokenCheck::Valid(_)) {
            let detail = if message.is_empty() {
                format!("reported {}", state)
            } else {
                format!("reported {state}: {message}")
            };
            // A failure is recorded whatever came before; progress only moves forward,
            // except out of `failed`: the installer itself retried and says how it went.
            let was_failed = app2
                .store
                .get_node(&key)?
                .is_some_and(|n| n.state == NodeState::Failed);
            let forward_only = state != NodeState::Failed && !was_failed;
            app2.node_step(
                &key,
                Some(node.hostname.clone()),
                state,
                &detail,
                forward_only,
            )?;
            if state == NodeState::Installed {
                app2.loop_guard.clear(&key);
            }
            // Joined: the node's work with Slipway is done; its token dies.
            if state == NodeState::Joined {
                app2.store.revoke_boot_token(&key)?;
            }
        }
        Ok(check)
    })
    .await;
    match checked {
        Ok(Ok(TokenCheck::Valid(_))) => StatusCode::NO_CONTENT.into_response(),
        Ok(Ok(other)) => refused(&other),
        Ok(Err(e)) => internal("state store unavailable", e),
        Err(r) => r,
    }
}
