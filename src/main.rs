//! The `slipway` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use slipway::desc;
use slipway::plan::Plan;

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

#[derive(Subcommand)]
enum Command {
    /// Check a cluster description; prints every error with file:line:col and exits 1 on any.
    Validate {
        #[arg(
            short,
            long,
            default_value = "cluster-desc.yaml",
            env = "SLIPWAY_CONFIG"
        )]
        config: PathBuf,
    },
    /// Print the plan derived from a description (nodes, addresses, boot URLs).
    Plan {
        #[arg(
            short,
            long,
            default_value = "cluster-desc.yaml",
            env = "SLIPWAY_CONFIG"
        )]
        config: PathBuf,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Run the bootstrapper: serve the cluster's machines until SIGINT/SIGTERM; SIGHUP reloads.
    Serve {
        #[arg(
            short,
            long,
            default_value = "cluster-desc.yaml",
            env = "SLIPWAY_CONFIG"
        )]
        config: PathBuf,
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
        /// Concurrent TFTP transfers; requests beyond get a "busy" error.
        #[arg(long, default_value_t = slipway::tftp::DEFAULT_MAX_TRANSFERS)]
        tftp_max_transfers: usize,
        /// Boot assets: iPXE binaries under ipxe/, OS kernels and images (see images/README.md).
        #[arg(long, default_value = "images", env = "SLIPWAY_IMAGES_DIR")]
        images_dir: PathBuf,
        /// Do not run this service here (repeatable): dhcp, dns, tftp.
        #[arg(long, value_enum)]
        disable: Vec<slipway::serve::Service>,
    },
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
            images_dir,
            disable,
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
                config,
                state_dir,
                http_listen,
                dns_listen,
                tftp_listen,
                tftp_max_transfers,
                images_dir,
                disable,
            };
            match runtime.block_on(slipway::serve::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
