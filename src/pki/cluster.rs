//! Keeps Slipway's bootstrap token known to the cluster. `kubeadm init` creates only the
//! token of its InitConfiguration; Slipway replaces its token before it expires, and a node
//! installed later joins with the new one, which the API server accepts only once its
//! `kube-system/bootstrap-token-<id>` Secret exists. Slipway creates that Secret itself,
//! through the API server, as the admin user whose certificate it issued (admin.conf).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};

use super::token::BootstrapToken;

/// The group kubeadm gives its default node tokens; its RBAC bindings (CSR creation and
/// auto-approval, cluster-info) name it.
pub const TOKEN_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// Connecting and the whole request each give up after this: the API server is on the
/// local network, and the caller retries later.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("connecting to the API server at {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("the API server answered {status}: {body}")]
    Refused { status: StatusCode, body: String },
}

/// `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, what the Secret's `expiration` holds).
fn rfc3339(unix: u64) -> String {
    let t = i64::try_from(unix)
        .ok()
        .and_then(|u| time::OffsetDateTime::from_unix_timestamp(u).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The Secret `kubeadm token create` writes for `t`: usable for the kubelet's TLS bootstrap
/// (authentication) and for signing the cluster-info ConfigMap (discovery), by the default
/// node group, until the token's expiry.
pub fn token_secret(t: &BootstrapToken, cluster: &str) -> Value {
    let (id, secret) = t.token.split_once('.').unwrap_or((&t.token, ""));
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": format!("bootstrap-token-{id}"),
            "namespace": "kube-system",
            "labels": { "app.kubernetes.io/managed-by": "slipway" },
        },
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": format!("Slipway: nodes of {cluster} join with this token"),
            "token-id": id,
            "token-secret": secret,
            "expiration": rfc3339(t.expires_at),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": TOKEN_GROUP,
        },
    })
}

/// What [`register_token`] needs from the PKI, copied out so no lock is held across I/O.
#[derive(Clone)]
pub struct AdminClient {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for AdminClient {
    /// Omits the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminClient")
    }
}

impl AdminClient {
    /// TLS trusting only the cluster CA, authenticating with the admin certificate.
    fn tls(&self) -> Result<rustls::ClientConfig, ClusterError> {
        let tls = |e: &dyn std::fmt::Display| ClusterError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
        }
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| tls(&e))?;
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls(&e))
    }
}

/// Creates `t`'s Secret through the API server at `addr`, verified as `server_name` (the
/// control-plane endpoint's name, in the apiserver certificate). `Ok(true)`: created;
/// `Ok(false)`: it already exists (kubeadm init made it, or an earlier call did).
pub async fn register_token(
    admin: &AdminClient,
    addr: SocketAddr,
    server_name: &str,
    t: &BootstrapToken,
    cluster: &str,
) -> Result<bool, ClusterError> {
    let connect = |message: String| ClusterError::Connect { addr, message };
    let config = admin.tls()?;
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| ClusterError::Tls(format!("server name {server_name}: {e}")))?;
    let body = serde_json::to_vec(&token_secret(t, cluster)).expect("JSON values serialize");
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| connect(format!("TLS: {e}")))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| connect(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/namespaces/kube-system/secrets")
            .header(hyper::header::HOST, server_name)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("static request parts are valid");
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| connect(e.to_string()))?;
        let status = resp.status();
        let text = match resp.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes())
                .chars()
                .take(300)
                .collect(),
            Err(e) => e.to_string(),
        };
        match status {
            StatusCode::CREATED | StatusCode::OK => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            status => Err(ClusterError::Refused { status, body: text }),
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(connect("timed out".into())))
}

/// How often the token is checked for rotation and for registration.
const PERIOD: Duration = Duration::from_secs(60);

/// Whether a control-plane node has reported `joined`: only then is there an API server to
/// talk to (before, Slipway sends nothing towards the endpoint).
fn cluster_up(app: &crate::app::App) -> bool {
    let plan = app.plan();
    let nodes = match app.store.nodes() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "reading node states");
            return false;
        }
    };
    nodes.iter().any(|rec| {
        rec.state == crate::status::NodeState::Joined
            && plan
                .nodes
                .iter()
                .any(|n| n.role == crate::desc::Role::ControlPlane && n.mac.to_string() == rec.mac)
    })
}

/// Replaces the token when little of it is left (a `serve` running longer than the token's
/// TTL would otherwise hand nodes an expired one), recording what was issued, and returns
/// what registering needs. Blocking.
fn rotate(app: &crate::app::App) -> Option<(AdminClient, BootstrapToken)> {
    let lock = app.pki.as_ref()?;
    let mut pki = lock.write().unwrap_or_else(|e| e.into_inner());
    match pki.refresh_token() {
        Ok(issued) => {
            if let Err(e) = super::record_issued(app.store.as_ref(), &issued) {
                tracing::warn!(error = %e, "could not record the new bootstrap token");
            }
        }
        Err(e) => tracing::error!(error = %e, "bootstrap token not rotated"),
    }
    Some((pki.admin_client(), pki.bootstrap_token().clone()))
}

/// Runs until `shutdown`: every [`PERIOD`], rotates the token when due and, once a
/// control-plane node has joined and until the cluster knows the current token, creates
/// its Secret through the control-plane endpoint's addresses. Right after `kubeadm init`
/// the first token's Secret exists already (kubeadm made it from the InitConfiguration).
pub async fn keep_token_registered(app: Arc<crate::app::App>, shutdown: crate::serve::Shutdown) {
    let mut known: Option<String> = None;
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let app2 = app.clone();
        let Ok(Some((admin, token))) = tokio::task::spawn_blocking(move || rotate(&app2)).await
        else {
            return;
        };
        let app2 = app.clone();
        let up = tokio::task::spawn_blocking(move || cluster_up(&app2))
            .await
            .unwrap_or(false);
        if up && known.as_deref() != Some(token.id()) {
            let plan = app.plan();
            let ep = &plan.cluster.endpoint;
            for ip in &ep.addresses {
                let addr = SocketAddr::new((*ip).into(), ep.port);
                match register_token(&admin, addr, &ep.fqdn, &token, &plan.cluster.name).await {
                    Ok(created) => {
                        known = Some(token.id().to_string());
                        if created {
                            let msg = format!(
                                "bootstrap token id {} registered in the cluster through {addr}",
                                token.id()
                            );
                            tracing::info!("{msg}");
                            let _ = app.store.append_event("secret.registered", None, &msg);
                        }
                        break;
                    }
                    Err(e @ ClusterError::Refused { .. }) => {
                        tracing::warn!(%addr, error = %e, "bootstrap token not registered");
                    }
                    Err(e) => tracing::debug!(%addr, error = %e, "API server not reachable"),
                }
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_the_one_kubeadm_writes() {
        let t = BootstrapToken {
            token: "abcdef.0123456789abcdef".into(),
            created_at: 0,
            expires_at: 1_800_000_000,
            ttl_secs: 86400,
        };
        let s = token_secret(&t, "rack1");
        assert_eq!(s["metadata"]["name"], "bootstrap-token-abcdef");
        assert_eq!(s["metadata"]["namespace"], "kube-system");
        assert_eq!(s["type"], "bootstrap.kubernetes.io/token");
        let d = &s["stringData"];
        assert_eq!(d["token-id"], "abcdef");
        assert_eq!(d["token-secret"], "0123456789abcdef");
        assert_eq!(d["expiration"], "2027-01-15T08:00:00Z");
        assert_eq!(d["usage-bootstrap-authentication"], "true");
        assert_eq!(d["usage-bootstrap-signing"], "true");
        assert_eq!(d["auth-extra-groups"], TOKEN_GROUP);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    /// The keeper's two decisions: a token close to expiry is replaced (and recorded), and
    /// the API server is only contacted once a control-plane node (not a worker) joined.
    #[test]
    fn keeper_rotates_due_tokens_and_waits_for_a_joined_control_plane() {
        use crate::status::NodeState;
        let dir = tempfile::tempdir().unwrap();
        let cfg =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-desc.example.yaml");
        let plan = crate::plan::Plan::from_desc(
            &crate::desc::load(&cfg).unwrap_or_else(|e| panic!("{e}")),
        );
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::open(&dir.path().join("state")).unwrap());
        let mut pki = super::super::Pki::load_or_init(dir.path(), &plan, None).unwrap();
        let old = pki.token.clone();
        // Ten minutes left: a node starting its join now might not finish in time.
        pki.token.expires_at = crate::store::now_secs() + 600;
        let worker = plan.node_by_name("worker-1").unwrap().mac.to_string();
        let cp = plan.node_by_name("cp-2").unwrap().mac.to_string();
        let options = crate::app::AppOptions {
            pki: Some(pki),
            ..Default::default()
        };
        let app = crate::app::App::new(cfg, plan, store.clone(), options).unwrap();

        let (admin, token) = rotate(&app).unwrap();
        assert_ne!(token.id(), old.id(), "a due token is replaced");
        assert!(admin.cert_pem.contains("BEGIN CERTIFICATE"));
        let events = store.recent_events(10).unwrap();
        assert!(
            events.iter().any(|e| e.kind == "secret.issued"
                && e.message.contains(&format!("token id {}", token.id()))),
            "{events:?}"
        );
        let (_, again) = rotate(&app).unwrap();
        assert_eq!(again.id(), token.id(), "a fresh token is kept");

        assert!(!cluster_up(&app));
        store
            .record_transition(&worker, None, NodeState::Joined, None, 1)
            .unwrap();
        assert!(!cluster_up(&app), "a worker is no API server");
        store
            .record_transition(&cp, None, NodeState::Installed, None, 2)
            .unwrap();
        assert!(!cluster_up(&app));
        store
            .record_transition(&cp, None, NodeState::Joined, None, 3)
            .unwrap();
        assert!(cluster_up(&app));
    }
}
