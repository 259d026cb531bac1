//! The `slipway` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use slipway::plan::Plan;
use slipway::{client, desc};

#[derive(Parser)]
#[command(
    name = "slipway",
    version,
    about = "Bare-metal Kubernetes bootstrapper: one description, one process"
)]
struct Cli {
    /// Log format for `serve` and other long-running commands.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLIPWAY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

// Parsed once per process: boxing `serve`'s many flags would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Check a cluster description; prints every error with file:line:col and exits 1 on any.
    Validate {
        #[command(flatten)]
        config: slipway::desc::ConfigArg,
    },
    /// Print the plan derived from a description (nodes, addresses, boot URLs).
    Plan {
        #[command(flatten)]
        config: slipway::desc::ConfigArg,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Run the bootstrapper: serve the cluster's machines until SIGINT/SIGTERM; SIGHUP reloads.
    Serve {
        #[command(flatten)]
        config: slipway::desc::ConfigArg,
        /// Where leases, node states, events and key material persist.
        #[arg(long, default_value = "/var/lib/slipway", env = "SLIPWAY_STATE_DIR")]
        state_dir: PathBuf,
        /// HTTP listen address; default: the bootstrapper address and http port.
        #[arg(long)]
        http_listen: Option<SocketAddr>,
        /// DNS listen address (UDP and TCP); default: the bootstrapper address and dns port.
        #[arg(long)]
        dns_listen: Option<SocketAddr>,
        /// TFTP listen address; default: the bootstrapper address and tftp port.
        #[arg(long)]
        tftp_listen: Option<SocketAddr>,
        /// Concurrent TFTP transfers; requests beyond wait for a slot (see --tftp-queue).
        #[arg(long, default_value_t = slipway::tftp::DEFAULT_MAX_TRANSFERS)]
        tftp_max_transfers: usize,
        /// TFTP requests that may wait for a transfer slot; beyond, a "busy" error (0: no
        /// waiting at all).
        #[arg(long, default_value_t = slipway::tftp::queue::DEFAULT_QUEUE)]
        tftp_queue: usize,
        /// How long a TFTP request waits for a slot at most (keep it under the firmware's
        /// RRQ retransmission timeout); then it is dropped and the client's retry queues.
        #[arg(long, default_value_t = slipway::tftp::queue::DEFAULT_QUEUE_WAIT.as_millis() as u64)]
        tftp_queue_wait_ms: u64,
        /// Registry listen address; default: the bootstrapper address and registry port.
        #[arg(long)]
        registry_listen: Option<SocketAddr>,
        /// HTTPS listen address when bootstrapper.ports.https is set; default: the
        /// bootstrapper address and that port.
        #[arg(long)]
        https_listen: Option<SocketAddr>,
        /// Serve only the images already stored; never fetch from upstream registries.
        #[arg(long)]
        registry_offline: bool,
        /// Largest blob a client may push to the registry, in bytes.
        #[arg(long, default_value_t = slipway::registry::DEFAULT_MAX_UPLOAD)]
        registry_max_upload: u64,
        /// Boot assets: iPXE binaries under ipxe/, OS kernels and images (see images/README.md).
        #[arg(long, default_value = "images", env = "SLIPWAY_IMAGES_DIR")]
        images_dir: PathBuf,
        /// Do not run this service here (repeatable): dhcp, dns, tftp, registry.
        #[arg(long, value_enum)]
        disable: Vec<slipway::serve::Service>,
        /// Directory of template overrides (same names as the built-in templates/).
        #[arg(long, env = "SLIPWAY_TEMPLATES")]
        templates: Option<PathBuf>,
        /// Key algorithm of leaf certificates, remembered in the state directory; leaves of
        /// another algorithm are re-issued, CAs keep theirs. Default: the remembered one,
        /// else the cluster CA's (ecdsa-p256 for a new cluster).
        #[arg(long, value_enum)]
        key_algorithm: Option<slipway::pki::KeyAlgorithm>,
        /// Mark a node stuck after this long without progress (90s, 30m, 2h, 1d).
        #[arg(long, value_parser = parse_duration)]
        stuck_after: Option<std::time::Duration>,
    },
    /// Show every machine's lifecycle state, asked of the running `slipway serve`.
    Status {
        #[command(flatten)]
        remote: Remote,
        /// Show this node's timeline (name or MAC) instead of the table.
        #[arg(long)]
        node: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Redraw every 2 seconds until interrupted (a failed request is shown and retried).
        #[arg(short, long)]
        watch: bool,
        /// File holding the admin token, needed outside the cluster's networks (a copy of
        /// <state-dir>/admin.token). Without it, the token itself from SLIPWAY_TOKEN.
        #[arg(long = "token", value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
    /// Print what a node gets (iPXE script, Ignition, cloud-config, manifests); secrets are
    /// redacted unless --show-secrets.
    Render {
        #[command(flatten)]
        config: slipway::desc::ConfigArg,
        /// For the cluster PKI: only read if it exists, created (as `serve` would) if not.
        #[arg(long, default_value = "/var/lib/slipway", env = "SLIPWAY_STATE_DIR")]
        state_dir: PathBuf,
        #[arg(long, env = "SLIPWAY_TEMPLATES")]
        templates: Option<PathBuf>,
        /// Node name.
        #[arg(long)]
        node: String,
        #[arg(long, value_enum)]
        what: slipway::render::cli::What,
        /// Print private keys and tokens instead of REDACTED.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Operator actions on one node.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// The registry's images: import archives (air gap), list, garbage-collect.
    Images {
        #[command(subcommand)]
        command: slipway::registry::cli::ImagesCommand,
    },
    /// Inspect or renew the cluster's certificates under --state-dir.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

/// Where the running `slipway serve` is.
#[derive(clap::Args)]
struct Remote {
    /// Slipway's HTTP base URL, e.g. http://10.0.0.2:8080 (default: from the description).
    #[arg(long, env = "SLIPWAY_SERVER")]
    server: Option<String>,
    #[command(flatten)]
    config: slipway::desc::ConfigArg,
}

impl Remote {
    fn base(&self) -> Result<String, ExitCode> {
        match &self.server {
            Some(s) => Ok(s.trim_end_matches('/').to_string()),
            None => {
                load_or_report(&self.config).map(|d| Plan::from_desc(&d).bootstrapper.http_base)
            }
        }
    }
}

#[derive(Subcommand)]
enum NodeAction {
    /// Install the node again at its next network boot (it boots from disk otherwise).
    Reinstall {
        /// Node name or MAC.
        name: String,
        #[command(flatten)]
        remote: Remote,
        /// State directory of the server, for its admin.token (on the bootstrapper itself).
        #[arg(long, default_value = "/var/lib/slipway", env = "SLIPWAY_STATE_DIR")]
        state_dir: PathBuf,
        /// File holding the admin token (a copy of <state-dir>/admin.token), as for
        /// `status`. Without it, the token itself from SLIPWAY_TOKEN, else the state dir's.
        #[arg(long = "token", value_name = "FILE")]
        token_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PkiCommand {
    /// List the certificates (name, subject, SANs, expiry); reads only.
    Show(PkiArgs),
    /// Re-issue every leaf certificate, keeping the CAs; prints what was issued. Stop
    /// `serve` first (it holds the state store).
    Renew {
        #[command(flatten)]
        args: PkiArgs,
        /// Algorithm of the new keys, remembered for later starts (default: the PKI's own).
        #[arg(long, value_enum)]
        key_algorithm: Option<slipway::pki::KeyAlgorithm>,
    },
}

#[derive(clap::Args)]
struct PkiArgs {
    #[command(flatten)]
    config: slipway::desc::ConfigArg,
    #[arg(long, default_value = "/var/lib/slipway", env = "SLIPWAY_STATE_DIR")]
    state_dir: PathBuf,
}

fn run_pki(command: PkiCommand) -> ExitCode {
    let (args, renew) = match command {
        PkiCommand::Show(args) => (args, None),
        PkiCommand::Renew {
            args,
            key_algorithm,
        } => (args, Some(key_algorithm)),
    };
    let plan = match load_or_report(&args.config) {
        Ok(d) => Plan::from_desc(&d),
        Err(code) => return code,
    };
    let result = match renew {
        None => slipway::pki::cli::show_table(&plan, &args.state_dir),
        Some(alg) => slipway::pki::cli::renew(&plan, &args.state_dir, alg),
    };
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Durations as in the description (90s, 30m, 12h, 1d).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    desc::types::parse_duration_secs(s).map(std::time::Duration::from_secs)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_or_report(config: &std::path::Path) -> Result<desc::ClusterDesc, ExitCode> {
    desc::load(config).map_err(|diags| {
        eprint!("{diags}");
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match load_or_report(&config) {
            Ok(d) => {
                println!("{}: valid ({} nodes)", config.display(), d.nodes.len());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Plan { config, output } => {
            let d = match load_or_report(&config) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let plan = Plan::from_desc(&d);
            match output {
                Output::Table => print!("{}", plan.table()),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&plan).expect("plan serializes")
                ),
            }
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            state_dir,
            http_listen,
            dns_listen,
            tftp_listen,
            tftp_max_transfers,
            tftp_queue,
            tftp_queue_wait_ms,
            registry_listen,
            https_listen,
            registry_offline,
            registry_max_upload,
            images_dir,
            disable,
            templates,
            key_algorithm,
            stuck_after,
        } => {
            init_logging(cli.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let opts = slipway::serve::ServeOptions {
                config: config.path,
                state_dir,
                http_listen,
                dns_listen,
                tftp_listen,
                tftp_max_transfers,
                tftp_queue,
                tftp_queue_wait: std::time::Duration::from_millis(tftp_queue_wait_ms),
                registry_listen,
                https_listen,
                registry: slipway::registry::Options {
                    offline: registry_offline,
                    max_upload: registry_max_upload,
                },
                images_dir,
                disable,
                templates_dir: templates,
                key_algorithm,
                stuck_after,
            };
            match runtime.block_on(slipway::serve::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status {
            remote,
            node,
            output,
            watch,
            token_file,
        } => {
            let base = match remote.base() {
                Ok(b) => b,
                Err(code) => return code,
            };
            run_client(async move {
                let token = client::read_token(token_file.as_deref())?;
                let json = matches!(output, Output::Json);
                client::status(&base, node.as_deref(), json, watch, token.as_deref()).await
            })
        }
        Command::Node {
            action:
                NodeAction::Reinstall {
                    name,
                    remote,
                    state_dir,
                    token_file,
                },
        } => {
            let base = match remote.base() {
                Ok(b) => b,
                Err(code) => return code,
            };
            run_client(async move {
                let token = match client::read_token(token_file.as_deref())? {
                    Some(t) => t,
                    None => {
                        let path = state_dir.join(slipway::http::api::ADMIN_TOKEN_FILE);
                        std::fs::read_to_string(&path)
                            .map_err(|e| {
                                anyhow::anyhow!(
                                    "reading {}: {e} (or pass --token FILE)",
                                    path.display()
                                )
                            })?
                            .trim()
                            .to_string()
                    }
                };
                let url = format!("{base}/api/v1/nodes/{name}/reinstall");
                client::call(hyper::Method::POST, &url, Some(&token)).await?;
                println!("{name}: will install again at its next network boot");
                Ok(())
            })
        }
        Command::Pki { command } => run_pki(command),
        Command::Images { command } => slipway::registry::cli::run(command),
        Command::Render {
            config,
            state_dir,
            templates,
            node,
            what,
            show_secrets,
        } => {
            let plan = match load_or_report(&config) {
                Ok(d) => Plan::from_desc(&d),
                Err(code) => return code,
            };
            match slipway::render::cli::render(
                &plan,
                &state_dir,
                templates.as_deref(),
                &node,
                what,
                show_secrets,
            ) {
                Ok(text) => {
                    println!("{}", text.trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs a CLI command that talks to the server; errors print as `error: ...` with exit 1.
fn run_client(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
