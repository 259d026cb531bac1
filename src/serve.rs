//! `slipway serve`: validate, open the store, bind, serve; reload on SIGHUP; stop cleanly on
//! SIGINT/SIGTERM. Sockets are bound here and handed to the servers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::app::App;
use crate::desc;
use crate::plan::Plan;

pub struct ServeOptions {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    /// Overrides the HTTP listen address (default: the bootstrapper address and http port).
    pub http_listen: Option<SocketAddr>,
}

/// A cloneable shutdown signal for servers: resolves once shutdown was requested.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
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
    let app = App::new(opts.config.clone(), plan, store.clone());
    store.append_event(
        "serve.started",
        None,
        &format!("serving {nodes} nodes, HTTP on {http_addr}"),
    )?;
    tracing::info!(%http_addr, nodes, state_dir = %opts.state_dir.display(), "slipway serving");

    let (stop_tx, shutdown) = Shutdown::new();
    let http = tokio::spawn(crate::http::serve(
        listener,
        app.clone(),
        shutdown.clone().wait(),
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
