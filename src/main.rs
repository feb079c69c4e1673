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
    /// Validate a policy file (and print the compiled routing table) or a collector config.
    Check {
        #[arg(long, short, required_unless_present = "collector")]
        config: Option<PathBuf>,
        /// A collector config file to validate.
        #[arg(long)]
        collector: Option<PathBuf>,
    },
    /// Run the central collector of usage events (API, storage, dashboard).
    Collector {
        #[arg(long, short, env = "SWITCHYARD_COLLECTOR_CONFIG")]
        config: PathBuf,
    },
    /// Print usage from a collector, grouped as asked.
    Usage {
        #[command(flatten)]
        reader: Reader,
        /// Any of team, model, provider, route, service, key, day, hour.
        #[arg(long, default_value = "team,model")]
        group_by: String,
        /// Start: a span back from now (7d, 24h) or a time (RFC 3339, YYYY-MM-DD).
        #[arg(long, default_value = "7d")]
        since: String,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: switchyard::collector::report::Format,
    },
    /// Route the recorded traffic again under a new policy: requests moved between
    /// models, cost before and after at its prices, expected latency.
    Whatif {
        #[command(flatten)]
        reader: Reader,
        /// Start: a span back from now (7d, 24h) or a time (RFC 3339, YYYY-MM-DD).
        #[arg(long, default_value = "7d")]
        since: String,
        /// The policy to try.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make a new random token (collector ingest or reader): prints the token once, and the
    /// `sha256:` line to put in the config.
    Token,
    /// Complexity scores: reads one JSON request body a line on stdin
    /// (`{"messages":[…]}`) and prints its score in [0, 1] a line (0.5 for a line that is
    /// not a chat request).
    Complexity,
    /// Virtual keys for governance (`teams.<team>.keys`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
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

/// A collector and a reader token (a team token sees its team's rows only).
#[derive(clap::Args)]
struct Reader {
    /// The collector's base URL.
    #[arg(
        long,
        env = "SWITCHYARD_COLLECTOR",
        default_value = "http://127.0.0.1:7070"
    )]
    collector: String,
    /// A reader token.
    #[arg(long, env = "SWITCHYARD_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new virtual key: prints the key once (give it to its owner; it is not kept)
    /// and the entry to paste under `teams.<team>.keys` in the policy.
    New {
        #[arg(long)]
        team: String,
        /// The key's name in events, metrics and the policy (e.g. alice-laptop).
        #[arg(long)]
        id: String,
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
        Command::Check { config, collector } => {
            let mut ok = true;
            if let Some(config) = config {
                match switchyard::config::load(&config, 1) {
                    Ok(policy) => {
                        println!("{} is valid\n", config.display());
                        print!("{}", policy.describe());
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", config.display());
                        ok = false;
                    }
                }
            }
            if let Some(path) = collector {
                match switchyard::collector::config::load(&path) {
                    Ok(c) => println!(
                        "{} is valid: listen {}, database {}, {} ingest and {} reader tokens",
                        path.display(),
                        c.listen,
                        c.database.describe(),
                        c.ingest.len(),
                        c.readers.len()
                    ),
                    Err(e) => {
                        eprintln!("{}: {e}", path.display());
                        ok = false;
                    }
                }
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Collector { config } => {
            init_tracing();
            match switchyard::collector::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("switchyard collector: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Usage {
            reader: Reader { collector, token },
            group_by,
            since,
            until,
            team,
            model,
            format,
        } => {
            let req = switchyard::collector::report::Request {
                collector: &collector,
                token: &token,
                group_by: &group_by,
                since: &since,
                until: until.as_deref(),
                team: team.as_deref(),
                model: model.as_deref(),
                format,
            };
            match switchyard::collector::report::fetch(&req) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchyard usage: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Whatif {
            reader: Reader { collector, token },
            since,
            config,
        } => {
            let req = switchyard::whatif::Request {
                collector: &collector,
                token: &token,
                since: &since,
                config: &config,
            };
            match switchyard::whatif::run(&req) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("switchyard whatif: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Complexity => {
            use std::io::{BufRead, Write};
            let stdin = std::io::stdin().lock();
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for line in stdin.lines() {
                let Ok(line) = line else {
                    eprintln!("switchyard complexity: stdin is not UTF-8 text");
                    return ExitCode::FAILURE;
                };
                let score = switchyard::route::complexity::score(line.as_bytes());
                if writeln!(out, "{score}").is_err() {
                    return ExitCode::FAILURE;
                }
            }
            if out.flush().is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Token => {
            let token = switchyard::collector::auth::new_token();
            println!("token:  {token}");
            println!(
                "config: \"{}\"",
                switchyard::collector::auth::hash_line(&token)
            );
            ExitCode::SUCCESS
        }
        Command::Keys {
            command: KeysCommand::New { team, id },
        } => {
            use switchyard::governance::identity;
            let key = identity::new_key();
            println!("key:    {key}");
            println!("policy: (under teams.{team}.keys)");
            println!(
                "  - {{ id: {}, hash: \"{}\" }}",
                serde_json::Value::from(id.as_str()),
                identity::hash_line(&key)
            );
            ExitCode::SUCCESS
        }
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
