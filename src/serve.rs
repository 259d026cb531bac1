//! `slipway serve`: validate, open the store, bind, serve; reload on SIGHUP; stop cleanly on
//! SIGINT/SIGTERM. Sockets are bound here and handed to the servers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::app::{App, AppOptions};
use crate::desc;
use crate::plan::Plan;

pub struct ServeOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// Overrides the HTTP listen address (default: the bootstrapper address and http port).
    pub http_listen: Option<SocketAddr>,
    /// Overrides the DNS listen address, UDP and TCP (default: bootstrapper address, dns port).
    pub dns_listen: Option<SocketAddr>,
    /// Overrides the TFTP listen address (default: bootstrapper address, tftp port).
    pub tftp_listen: Option<SocketAddr>,
    /// Concurrent TFTP transfers; further requests wait for a slot.
    pub tftp_max_transfers: usize,
    /// TFTP requests that may wait for a slot (beyond: "busy"), and how long each may wait.
    pub tftp_queue: usize,
    pub tftp_queue_wait: Duration,
    /// Overrides the registry listen address (default: bootstrapper address, registry port).
    pub registry_listen: Option<SocketAddr>,
    /// Overrides the HTTPS listen address (used only when `bootstrapper.ports.https` is set).
    pub https_listen: Option<SocketAddr>,
    pub registry: crate::registry::Options,
    /// Boot assets: `ipxe/` (first-stage binaries), OS kernels and images.
    pub images_dir: PathBuf,
    /// Services not to run here (e.g. DHCP when another host answers it).
    pub disable: Vec<Service>,
    /// Operator overrides of the built-in templates (same relative names as `templates/`).
    pub templates_dir: Option<PathBuf>,
    /// An explicit key algorithm for leaf certificates (`None`: the PKI's own; see
    /// [`crate::pki::KeyAlgorithm`]).
    pub key_algorithm: Option<crate::pki::KeyAlgorithm>,
    /// A node without progress for this long is shown as stuck.
    pub stuck_after: Option<Duration>,
}

/// The network services `serve` can run; each can be disabled with `--disable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Dhcp,
    Dns,
    Tftp,
    Registry,
}

/// A cloneable shutdown signal for servers: resolves once shutdown was requested.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    /// For server threads that poll between blocking reads.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    pub async fn wait(mut self) {
        // An error means the sender is gone, which also means "stop".
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Exit status of `serve`: 0 after a clean stop; errors before serving are returned.
pub async fn run(opts: ServeOptions) -> Result<()> {
    let desc = match desc::load(&opts.config) {
        Ok(d) => d,
        Err(diags) => {
            eprint!("{diags}");
            anyhow::bail!("refusing to start: {} is invalid", opts.config.display());
        }
    };
    let plan = Plan::from_desc(&desc);
    let state_dir = opts.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || crate::store::open(&state_dir))
        .await?
        .with_context(|| format!("opening the state store in {}", opts.state_dir.display()))?;
    let store: Arc<dyn crate::store::Store> = Arc::new(store);

    let http_addr = opts.http_listen.unwrap_or_else(|| {
        SocketAddr::new(
            plan.bootstrapper.address.into(),
            plan.bootstrapper.http_port,
        )
    });
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| {
            format!(
                "binding HTTP on {http_addr} (is the bootstrapper address configured on this host?)"
            )
        })?;
    let http_addr = listener.local_addr()?;
    let nodes = plan.nodes.len();
    let dhcp_mode = plan.network.dhcp_mode;
    let (interface, address) = (
        plan.bootstrapper.interface.clone(),
        plan.bootstrapper.address,
    );
    let admin_dir = opts.state_dir.clone();
    let (admin_token, created) =
        tokio::task::spawn_blocking(move || crate::http::api::ensure_admin_token(&admin_dir))
            .await?
            .context("creating the admin token in the state directory")?;
    if created {
        // Shown once; afterwards it is only in the 0600 file.
        eprintln!(
            "slipway: admin token (also in {}): {admin_token}",
            opts.state_dir
                .join(crate::http::api::ADMIN_TOKEN_FILE)
                .display()
        );
        store.append_event("secret.issued", None, "admin token created")?;
    }
    let (pki_dir, pki_plan, pki_store) = (opts.state_dir.clone(), plan.clone(), store.clone());
    let key_algorithm = opts.key_algorithm;
    let pki = tokio::task::spawn_blocking(move || -> Result<crate::pki::Pki> {
        let pki = crate::pki::Pki::load_or_init(&pki_dir, &pki_plan, key_algorithm)?;
        crate::pki::record_issued(pki_store.as_ref(), pki.issued())?;
        Ok(pki)
    })
    .await?
    .context("loading the cluster PKI")?;
    let app = App::new(
        opts.config.clone(),
        plan,
        store.clone(),
        AppOptions {
            templates_dir: opts.templates_dir.clone(),
            admin_token_hash: Some(crate::boot::hash_token(&admin_token)),
            pki: Some(pki),
            stuck_after_secs: opts.stuck_after.map(|d| d.as_secs()),
            images_dir: opts.images_dir.clone(),
            approved: store
                .approved_machines()?
                .iter()
                .filter_map(|m| m.parse().ok())
                .collect(),
        },
    )
    .context("loading templates")?;
    let (stop_tx, shutdown) = Shutdown::new();

    let dhcp = if dhcp_mode == desc::DhcpMode::Off || opts.disable.contains(&Service::Dhcp) {
        None
    } else {
        let proxy = dhcp_mode == desc::DhcpMode::Proxy;
        let sockets = crate::dhcp::bind(&interface, address, proxy).with_context(|| {
            format!(
                "starting DHCP on {interface} (needs root or CAP_NET_BIND_SERVICE + CAP_NET_RAW)"
            )
        })?;
        let boot = crate::dhcp::boot::BootFiles::scan(&opts.images_dir.join("ipxe"));
        let (app2, shutdown) = (app.clone(), shutdown.clone());
        let handle =
            tokio::task::spawn_blocking(move || crate::dhcp::spawn(sockets, app2, boot, shutdown))
                .await??;
        let _ = app.dhcp_stats.set(handle.stats.clone());
        tracing::info!(%interface, mode = ?dhcp_mode, "DHCP serving");
        Some(handle)
    };
    let dns = if opts.disable.contains(&Service::Dns) {
        None
    } else {
        let port = app.plan().bootstrapper.dns_port;
        let addr = opts
            .dns_listen
            .unwrap_or_else(|| SocketAddr::new(address.into(), port));
        let (udp, tcp) = crate::dns::bind(addr)
            .await
            .with_context(|| format!("binding DNS (UDP and TCP) on {addr}"))?;
        let dns_addr = udp.local_addr()?;
        tracing::info!(%dns_addr, "DNS serving");
        Some(tokio::spawn(crate::dns::serve(
            udp,
            tcp,
            app.clone(),
            shutdown.clone(),
        )))
    };
    let tftp = if opts.disable.contains(&Service::Tftp) {
        None
    } else {
        let port = app.plan().bootstrapper.tftp_port;
        let addr = opts
            .tftp_listen
            .unwrap_or_else(|| SocketAddr::new(address.into(), port));
        let sock = crate::tftp::bind(addr).await.with_context(|| {
            format!("binding TFTP on {addr} (port 69 needs root or CAP_NET_BIND_SERVICE)")
        })?;
        let tftp_addr = sock.local_addr()?;
        let config = crate::tftp::Config {
            roots: crate::tftp::roots(&opts.images_dir),
            max_transfers: opts.tftp_max_transfers,
            queue: opts.tftp_queue,
            queue_wait: opts.tftp_queue_wait,
        };
        tracing::info!(%tftp_addr, "TFTP serving");
        let stats = Arc::new(crate::tftp::Stats::default());
        let _ = app.tftp_stats.set(stats.clone());
        Some(tokio::spawn(crate::tftp::serve(
            sock,
            app.clone(),
            config,
            stats,
            shutdown.clone(),
        )))
    };
    // One TLS setup (resolver, certificate cache) for every TLS listener.
    let serves_registry = !opts.disable.contains(&Service::Registry);
    let tls_config = {
        let plan = app.plan();
        if (serves_registry && plan.bootstrapper.registry_tls)
            || plan.bootstrapper.https_port.is_some()
        {
            Some(crate::http::tls::server_config(&app).context(
                "registry.tls / bootstrapper.ports.https: loading Slipway's serving certificate",
            )?)
        } else {
            None
        }
    };
    let registry = if !serves_registry {
        None
    } else {
        let plan = app.plan();
        let dir = crate::registry::cli::storage_dir(&plan, &opts.state_dir);
        let options = opts.registry.clone();
        let registry =
            tokio::task::spawn_blocking(move || crate::registry::Registry::open(&dir, options))
                .await??;
        let addr = opts
            .registry_listen
            .unwrap_or_else(|| SocketAddr::new(address.into(), plan.bootstrapper.registry_port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the registry on {addr}"))?;
        let registry_addr = listener.local_addr()?;
        let tls = tls_config
            .clone()
            .filter(|_| plan.bootstrapper.registry_tls);
        tracing::info!(%registry_addr, offline = opts.registry.offline, tls = tls.is_some(), "registry serving");
        let registry = Arc::new(registry);
        let _ = app.registry.set(registry.clone());
        Some(tokio::spawn(crate::registry::serve(
            listener,
            tls,
            app.clone(),
            registry,
            shutdown.clone().wait(),
        )))
    };
    let https = match app.plan().bootstrapper.https_port {
        None => None,
        Some(port) => {
            let addr = opts
                .https_listen
                .unwrap_or_else(|| SocketAddr::new(address.into(), port));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding HTTPS on {addr}"))?;
            let https_addr = listener.local_addr()?;
            tracing::info!(%https_addr, "HTTPS serving");
            Some(tokio::spawn(crate::http::serve_router(
                listener,
                tls_config.clone(),
                crate::http::router(app.clone()),
                shutdown.clone().wait(),
            )))
        }
    };
    store.append_event(
        "serve.started",
        None,
        &format!("serving {nodes} nodes, HTTP on {http_addr}"),
    )?;
    tracing::info!(%http_addr, nodes, state_dir = %opts.state_dir.display(), "slipway serving");

    crate::status::metrics::init();
    let feed = tokio::spawn(crate::status::feed::follow(
        app.clone(),
        shutdown.clone().wait(),
    ));
    let http = tokio::spawn(crate::http::serve(
        listener,
        app.clone(),
        shutdown.clone().wait(),
    ));
    // Rotates the bootstrap token and keeps it registered in the cluster.
    let token_keeper = tokio::spawn(crate::pki::cluster::keep_token_registered(
        app.clone(),
        shutdown.clone(),
    ));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&app).await,
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
        }
    }
    let _ = stop_tx.send(true);
    // In-flight requests get a bounded grace period; a stuck client must not block exit.
    match tokio::time::timeout(Duration::from_secs(10), http).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("HTTP connections still open after 10 s; closing them"),
    }
    if let Some(https) = https {
        match tokio::time::timeout(Duration::from_secs(10), https).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!("HTTPS connections still open after 10 s; closing them"),
        }
    }
    if let Some(registry) = registry {
        match tokio::time::timeout(Duration::from_secs(10), registry).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!("registry connections still open after 10 s; closing them"),
        }
    }
    if let Some(dns) = dns {
        match tokio::time::timeout(Duration::from_secs(5), dns).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!("DNS still busy after 5 s; stopping anyway"),
        }
    }
    if let Some(tftp) = tftp {
        match tokio::time::timeout(Duration::from_secs(5), tftp).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!("TFTP still busy after 5 s; stopping anyway"),
        }
    }
    if let Some(dhcp) = dhcp {
        let stats = dhcp.stats.clone();
        let _ = tokio::task::spawn_blocking(move || dhcp.join()).await;
        tracing::info!(?stats, "DHCP stopped");
    }
    let _ = feed.await;
    // It may be waiting on an API server; nothing it does needs finishing.
    token_keeper.abort();
    let _ = token_keeper.await;
    let _ = store.append_event("serve.stopped", None, "clean shutdown");
    tracing::info!("slipway stopped");
    Ok(())
}

async fn reload(app: &Arc<App>) {
    let app = app.clone();
    let path = app.config_path.display().to_string();
    match tokio::task::spawn_blocking(move || app.reload()).await {
        Ok(Ok(r)) => {
            tracing::info!(
                generation = r.generation,
                nodes = r.nodes,
                "SIGHUP: reloaded {path}"
            );
            if !r.needs_restart.is_empty() {
                tracing::warn!(settings = ?r.needs_restart, "changed settings take effect only after a restart");
            }
        }
        Ok(Err(diags)) => {
            for d in &diags.items {
                tracing::error!(line = d.pos.line, col = d.pos.col, "{path}: {}", d.message);
            }
            tracing::error!(
                "SIGHUP: {path} is invalid ({} errors); still serving the previous plan",
                diags.len()
            );
        }
        Err(e) => tracing::error!(error = %e, "reload task failed"),
    }
}
