// jemalloc: the per-request allocations (Pingora's boxed request future, header maps,
// buffers) come from thread caches; with glibc they cost 20 % of the instructions of a
// proxied request. Its options are set in .cargo/config.toml.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Switchyard: a sidecar proxy for outbound LLM traffic.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar proxy.
    Proxy {
        #[arg(long, short, env = "SWITCHYARD_CONFIG")]
        config: PathBuf,
    },
    /// Validate a policy file and print the compiled routing table.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the bundled mock LLM upstream (OpenAI wire format).
    MockUpstream {
        #[arg(long, default_value_t = 9000)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Keep the last 1000 requests for `GET /mock/requests`.
        #[arg(long)]
        record: bool,
        #[command(flatten)]
        knobs: switchyard::mock::Knobs,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match switchyard::config::load(&config, 1) {
            Ok(policy) => {
                println!("{} is valid\n", config.display());
                print!("{}", policy.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(1)
            }
        },
        Command::Proxy { config } => {
            init_tracing();
            match switchyard::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("switchyard: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::MockUpstream {
            port,
            host,
            record,
            knobs,
        } => {
            init_tracing();
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(switchyard::mock::serve(
                SocketAddr::new(host, port),
                knobs,
                record,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mock upstream: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
