//! HTTPS with Slipway's own certificate (signed by the cluster CA, which every node already
//! trusts) for the registry and, optionally, the status page and API. rustls with the
//! aws-lc-rs provider, the one the upstream client and rcgen already use.
//!
//! Handshakes run in their own tasks, so a slow, silent or non-TLS client never holds up
//! `accept`; one that sends plain HTTP gets a 400 that says so instead of a reset. The
//! certificate is looked up per handshake, so one the PKI re-issues on a reload (new
//! names, or expiring) is served without a restart.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::app::App;

/// A client gets this long to finish its handshake (or send its plain-HTTP request).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

const PLAIN_HTTP_REPLY: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
Connection: close\r\nContent-Length: 45\r\n\r\nThis port speaks HTTPS: use an https:// URL.\n";

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain and key in PEM, as the PKI stores them, ready for rustls.
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("reading the certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM text".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("reading the private key: {e}"))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| e.to_string())
}

/// Slipway's serving certificate as the PKI holds it now; parsed again only when it changed.
struct PkiCert {
    app: Arc<App>,
    provider: Arc<CryptoProvider>,
    cached: Mutex<Option<(String, Arc<CertifiedKey>)>>,
}

impl fmt::Debug for PkiCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PkiCert")
    }
}

impl PkiCert {
    fn current(&self) -> Result<Arc<CertifiedKey>, String> {
        let pki = self.app.pki.as_ref().ok_or("no cluster PKI loaded")?;
        // A handshake runs on an async worker: while a reload or token rotation holds the
        // PKI for writing (key generation, file writes), serve the certificate cached so far
        // instead of blocking the worker.
        let pki = match pki.try_read() {
            Ok(p) => p,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((_, ck)) = cached.as_ref() {
                    return Ok(ck.clone());
                }
                drop(cached);
                pki.read().unwrap_or_else(|e| e.into_inner())
            }
        };
        let (cert, key) = pki.slipway_tls();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pem, ck)) = cached.as_ref()
            && pem == cert
        {
            return Ok(ck.clone());
        }
        let ck = Arc::new(certified_key(cert, key, &self.provider)?);
        *cached = Some((cert.to_string(), ck.clone()));
        Ok(ck)
    }
}

impl ResolvesServerCert for PkiCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
            .map_err(|e| tracing::error!(error = %e, "Slipway's serving certificate is unusable"))
            .ok()
    }
}

/// The TLS settings serving Slipway's certificate from `app`'s PKI. Fails (at start) when
/// there is no PKI or its certificate does not load.
pub fn server_config(app: &Arc<App>) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = provider();
    let resolver = PkiCert {
        app: app.clone(),
        provider: provider.clone(),
        cached: Mutex::new(None),
    };
    resolver.current().map_err(anyhow::Error::msg)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // The servers speak HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener that yields connections whose TLS handshake is complete.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    /// The server dropped the listener (shutdown): stop accepting.
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let tls = TlsAcceptor::from(config);
        let acceptor = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        accept_error(e).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&tls, tcp, peer)).await
                    {
                        Ok(Some(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(None) => {}
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            acceptor,
        })
    }
}

/// As axum's own listener: errors of one connection are skipped; others (out of file
/// descriptors) pause accepting for a moment instead of spinning.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accepting a TLS connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The TLS handshake; a client that opens with anything but a handshake record (plain HTTP
/// on the HTTPS port) is told so and closed.
async fn handshake(
    tls: &TlsAcceptor,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        tracing::debug!(%peer, "plain HTTP on the HTTPS port");
        // Read the request first: closing with unread data resets the connection, and
        // the client might never see the reply.
        let mut request = [0u8; 8192];
        let _ = tcp.read(&mut request).await;
        let _ = tcp.write_all(PLAIN_HTTP_REPLY).await;
        let _ = tcp.shutdown().await;
        while matches!(tcp.read(&mut request).await, Ok(n) if n > 0) {}
        return None;
    }
    match tls.accept(tcp).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The acceptor task ended (it only does when aborted): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_length_matches_its_body() {
        let text = std::str::from_utf8(PLAIN_HTTP_REPLY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    /// An App holding the example cluster's PKI, as `serve` builds it.
    fn example_app(dir: &std::path::Path) -> Arc<App> {
        let cfg =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster-desc.example.yaml");
        let plan = crate::plan::Plan::from_desc(&crate::desc::load(&cfg).unwrap());
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::open(&dir.join("state")).unwrap());
        let pki = crate::pki::Pki::load_or_init(dir, &plan, None).unwrap();
        let options = crate::app::AppOptions {
            pki: Some(pki),
            ..Default::default()
        };
        App::new(cfg, plan, store, options).unwrap()
    }

    /// The listener behind a real server, with the TLS settings `serve` uses: a client
    /// trusting the cluster CA gets its reply although a silent client connected first;
    /// plain HTTP gets the 400.
    #[tokio::test]
    async fn serves_tls_past_a_silent_client_and_answers_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let app = example_app(dir.path());
        let config = server_config(&app).unwrap();
        let ca_pem = app
            .pki
            .as_ref()
            .unwrap()
            .read()
            .unwrap()
            .ca_cert_pem()
            .to_string();
        let p = provider();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
        tokio::spawn(super::super::serve_router(
            listener,
            Some(config),
            router,
            std::future::pending(),
        ));

        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(p)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("slipway").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: slipway\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.ends_with("hello"), "{reply}");

        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: slipway\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        plain.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, PLAIN_HTTP_REPLY);
    }

    #[test]
    fn pki_material_loads_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let app = example_app(dir.path());
        let pki = app.pki.as_ref().unwrap().read().unwrap();
        let (cert, key) = pki.slipway_tls();
        let p = provider();
        assert!(certified_key(cert, key, &p).is_ok());
        assert!(certified_key("", key, &p).is_err());
        assert!(certified_key(cert, "not a key", &p).is_err());
        // A key that is not the certificate's is refused.
        let other = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(certified_key(cert, &other, &p).is_err());
    }
}
