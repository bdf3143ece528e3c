//! `bifrost-cluster`: the node binary.
//!
//! Subcommands:
//! - `check-config [FILE]`: load and validate a config (FILE, else `BIFROST_CONFIG`); print the effective config
//!   as pretty JSON on stdout and warnings on stderr. Exit 0 when the config loads, 2 when it does not, 1 on any
//!   other failure (e.g. stdout closed).
//! - `run [--config FILE]`: run a node and its HTTP surface (`http.listen`) until SIGTERM or SIGINT, then stop
//!   HTTP (≤ 1 s), leave gracefully (final flush ≤ 2 s, leave announced ≤ 1 s, links closed ≤ 1 s) and exit 0.
//!   Exit 2 when the config cannot run (including a non-loopback `http.listen` without any HTTP token, an
//!   unreadable token file or TLS file), 1 when the node or its HTTP listener fails to start.
//! - `export --data-dir DIR [--output FILE]`: the counters of a data directory's snapshot as JSON lines (works
//!   while the node runs). Exit 0, or 1 with one error line naming the file.
//! - `import --data-dir DIR [--source NAME] [FILE]`: max-merge JSON lines of counters into a stopped node's
//!   snapshot. Exit 0, or 1 with one error line naming the file and line (nothing is changed).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bifrost_cluster::config::{self, CLUSTER_SECRET_ENV, CONFIG_ENV, ConfigError, HTTP_TOKENS_ENV};
use clap::{Parser, Subcommand};

mod cli;

/// Exit code when the config cannot be found, read or validated.
const EXIT_BAD_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "bifrost-cluster",
    version,
    about = "Shared rate-limit state for AI-gateway clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file and print the effective config (every default filled in) as JSON.
    ///
    /// Errors go to stderr as `error: path: rule` (exit 2); warnings (unknown fields, what `run` will still
    /// need) as `warning: path: rule` (exit 0).
    CheckConfig {
        /// JSON config file with a top-level `cluster_config` member [default: $BIFROST_CONFIG]
        file: Option<PathBuf>,
    },
    /// Run a local demo cluster on loopback: N nodes in this process, rate-limited traffic through all of
    /// them, a table once a second. No file to write first.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
        nodes: u16,
        /// How long to run, e.g. "20s", "2m"; "0" runs until Ctrl-C.
        #[arg(long, default_value = "20s")]
        duration: String,
    },
    /// Print a node's /cluster/status as a table of members and health (or its JSON with --json).
    ///
    /// Exit 0 with the status, 1 with one error line naming the URL: unreachable (with the cause), 401 (no or
    /// an unknown token), 403 (the token lacks the read scope), any other answer.
    Status {
        /// The node's HTTP address: http://host:port or https://host:port (a path prefix is kept).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// PEM file of CA certificates to trust for an https:// URL, besides the system's trust store (a node
        /// with a self-signed or private-CA `http.tls` certificate).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Bearer token with the `read` scope, when the node has tokens configured [default: the first token
        /// with the `read` scope in $BIFROST_HTTP_TOKENS, as the node itself reads it (container healthchecks)]
        #[arg(long, env = "BIFROST_HTTP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the raw JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Write the counters of a data directory's snapshot as JSON lines, one value per line (a backup).
    ///
    /// Reads the snapshot file without locking the directory: it works while the node runs. A summary goes to
    /// stderr.
    Export {
        /// The node's data directory (`storage.path`) [default: $BIFROST_DATA_DIR]
        #[arg(long, env = "BIFROST_DATA_DIR")]
        data_dir: PathBuf,
        /// Where to write the lines ("-": stdout) [default: stdout]
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Max-merge JSON lines of counter values into a stopped node's data directory.
    ///
    /// Each line: {"key": "team-a", "window": "1M", "value": 1200}, optionally with "epoch", "start_unix_ms"
    /// or "at_unix_ms" (default: the window current now), "origin" and "kind" (as `export` writes them).
    /// Lines without "origin" count under the source's own origin, so they add to what the nodes count and a
    /// repeated import changes nothing. Every line is checked before the directory is touched. The node loads
    /// the values at its next start and sends them to its peers.
    Import {
        /// The node's data directory (`storage.path`) [default: $BIFROST_DATA_DIR]
        #[arg(long, env = "BIFROST_DATA_DIR")]
        data_dir: PathBuf,
        /// Name of the system the values come from: one origin per name.
        #[arg(long, default_value = "import")]
        source: String,
        /// Longest key accepted, in bytes: the node's `limits.max_key_length`.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
        max_key_length: u64,
        /// Create the data directory when it does not exist (to seed a node that never ran); without it a
        /// missing directory is an error.
        #[arg(long)]
        create: bool,
        /// JSON lines file ("-": stdin) [default: stdin]
        file: Option<PathBuf>,
    },
    /// Run a node until SIGTERM or SIGINT, then leave gracefully and exit 0.
    ///
    /// Logs go to stderr; the level comes from `RUST_LOG` (default `info`).
    Run {
        /// JSON config file with a top-level `cluster_config` member [default: $BIFROST_CONFIG]
        #[arg(long)]
        config: Option<PathBuf>,
        /// IP address the gossip port binds to.
        #[arg(long, default_value = "0.0.0.0")]
        bind_ip: std::net::IpAddr,
        /// Log format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(file),
        Command::Run {
            config,
            bind_ip,
            log_format,
        } => run(config, bind_ip, log_format),
        Command::Demo { nodes, duration } => demo(nodes, &duration),
        Command::Status {
            url,
            ca_file,
            token,
            json,
        } => status(&url, token.as_deref(), ca_file.as_deref(), json),
        Command::Export { data_dir, output } => export(&data_dir, output.as_deref()),
        Command::Import {
            data_dir,
            source,
            max_key_length,
            create,
            file,
        } => import(&data_dir, create, file.as_deref(), &source, max_key_length),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn export(
    data_dir: &std::path::Path,
    output: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let report = cli::exchange::export(data_dir, output)?;
    eprintln!(
        "exported {} values of {} origins from {}",
        report.lines,
        report.origins,
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn import(
    data_dir: &std::path::Path,
    create: bool,
    file: Option<&std::path::Path>,
    source: &str,
    max_key_length: u64,
) -> anyhow::Result<ExitCode> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_millis();
    let summary = cli::exchange::import(
        data_dir,
        create,
        file,
        source,
        usize::try_from(max_key_length).unwrap_or(usize::MAX),
        u64::try_from(now_ms).unwrap_or(u64::MAX),
    )?;
    let m = summary.merge;
    eprintln!(
        "imported {} values into {} (source {source:?}, origin {:016x}): {} added, {} raised, {} unchanged",
        summary.lines,
        data_dir.display(),
        summary.origin,
        m.added,
        m.raised,
        m.unchanged
    );
    if summary.outside_live_windows > 0 {
        eprintln!(
            "warning: {} values are for windows that are over or not started yet: the node drops them when it loads the snapshot",
            summary.outside_live_windows
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check_config(file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let loaded = match config::resolve_config_path(file, std::env::var_os(CONFIG_ENV))
        .and_then(|path| config::load_from_path(&path).map(|loaded| (path, loaded)))
    {
        Ok((path, loaded)) => {
            for warning in cli::file_permissions::warnings(&path, &loaded.config) {
                eprintln!("warning: {warning}");
            }
            loaded
        }
        Err(e) => {
            print_config_error(&e);
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    let env_secret = std::env::var(CLUSTER_SECRET_ENV).ok();
    let run_requirements = loaded.config.run_requirements(env_secret.as_deref());

    let json =
        config::effective_json(&loaded.config).context("serializing the effective config")?;
    writeln!(std::io::stdout().lock(), "{json}").context("writing to stdout")?;

    let mut stderr = std::io::stderr().lock();
    for warning in &loaded.warnings {
        writeln!(stderr, "warning: {warning}")?;
    }
    for requirement in &run_requirements {
        writeln!(stderr, "warning: {requirement}")?;
    }
    // HTTP security (issue 14): what `run` will refuse about the HTTP listener.
    let env_tokens = std::env::var(HTTP_TOKENS_ENV).ok();
    match env_tokens.as_deref().map(config::parse_env_tokens) {
        Some(Err(e)) => writeln!(stderr, "warning: {e}; run will refuse to start")?,
        parsed => {
            let from_env = parsed.is_some_and(|t| t.is_ok_and(|t| !t.is_empty()));
            if let Some(requirement) = loaded.config.http.auth_requirement(from_env) {
                writeln!(stderr, "warning: {requirement}")?;
            }
            // The Envoy rate-limit service (issue 15): the same tokens guard it.
            let tokens = from_env || loaded.config.http.has_config_tokens();
            if let Some(requirement) = loaded
                .config
                .grpc
                .as_ref()
                .and_then(|g| g.auth_requirement(tokens))
            {
                writeln!(stderr, "warning: {requirement}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn demo(nodes: u16, duration: &str) -> anyhow::Result<ExitCode> {
    let duration = match duration {
        "0" => None,
        text => Some(
            config::ConfigDuration::parse(text)
                .map(|d| std::time::Duration::from_millis(d.as_millis()))
                .map_err(|e| anyhow::anyhow!("--duration: {e}"))?,
        ),
    };
    // The nodes' own logs are noise in a demo: warnings only, unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(cli::demo::run(usize::from(nodes), duration))?;
    Ok(ExitCode::SUCCESS)
}

fn status(
    url: &str,
    token: Option<&str>,
    ca_file: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Without --token, a read token of the node's own BIFROST_HTTP_TOKENS (same container or unit).
    let env_token = match token {
        Some(_) => None,
        None => std::env::var(HTTP_TOKENS_ENV)
            .ok()
            .and_then(|text| config::parse_env_tokens(&text).ok())
            .and_then(|tokens| {
                tokens.into_iter().find_map(|t| match t.source {
                    config::HttpTokenSource::Inline(value)
                        if t.scopes.contains(&config::HttpScope::Read) =>
                    {
                        Some(value.expose_secret().to_owned())
                    }
                    _ => None,
                })
            }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let value = runtime.block_on(cli::status::fetch(
        url,
        token.or(env_token.as_deref()),
        ca_file,
    ))?;
    let text = if json {
        serde_json::to_string_pretty(&value)?
    } else {
        cli::status::render(&value)
    };
    writeln!(std::io::stdout().lock(), "{text}").context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn print_config_error(e: &ConfigError) {
    let mut stderr = std::io::stderr().lock();
    for line in e.lines() {
        // Nothing sensible is left to do if stderr itself is closed.
        let _ = writeln!(stderr, "error: {line}");
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(
    file: Option<PathBuf>,
    bind_ip: std::net::IpAddr,
    log_format: LogFormat,
) -> anyhow::Result<ExitCode> {
    init_logs(log_format);
    let loaded = match config::resolve_config_path(file, std::env::var_os(CONFIG_ENV))
        .and_then(|path| config::load_from_path(&path).map(|loaded| (path, loaded)))
    {
        Ok((path, loaded)) => {
            for warning in cli::file_permissions::warnings(&path, &loaded.config) {
                tracing::warn!("{warning}");
            }
            loaded
        }
        Err(e) => {
            print_config_error(&e);
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    // The HTTP listener's tokens, TLS files and loopback rule, before anything starts.
    let env_tokens = std::env::var(HTTP_TOKENS_ENV).ok();
    let http_options = match bifrost_cluster::http::HttpOptions::from_config(
        &loaded.config.http,
        env_tokens.as_deref(),
    ) {
        Ok(options) => options,
        Err(e) => {
            // Every reason at once: what the node itself would refuse, then the HTTP listener's.
            let env_secret = std::env::var(CLUSTER_SECRET_ENV).ok();
            let mut stderr = std::io::stderr().lock();
            for requirement in loaded.config.run_requirements(env_secret.as_deref()) {
                let _ = writeln!(stderr, "error: {requirement}");
            }
            let _ = writeln!(stderr, "error: {e}");
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    // The Envoy rate-limit service (issue 15): the HTTP tokens with the check scope, its own TLS files.
    let grpc_options = match &loaded.config.grpc {
        None => None,
        Some(grpc) => match bifrost_cluster::grpc::GrpcOptions::from_config(
            grpc,
            http_options.access.tokens.clone(),
            http_options.access.max_request_n,
        ) {
            Ok(options) => Some(options),
            Err(e) => {
                let _ = writeln!(std::io::stderr().lock(), "error: {e}");
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let options = bifrost_cluster::node::NodeOptions {
            bind_ip,
            ..Default::default()
        };
        let mut config = loaded.config;
        // The data directory of the Docker image, the StatefulSet and the systemd unit, unless the file sets one.
        if config.storage.path.is_none()
            && let Some(dir) = std::env::var_os(bifrost_cluster::config::StorageConfig::PATH_ENV)
                .filter(|d| !d.is_empty())
        {
            config.storage.path = Some(PathBuf::from(dir));
        }
        let node = match bifrost_cluster::node::Cluster::start_with(config, options).await {
            Ok(node) => node,
            Err(bifrost_cluster::node::NodeError::Config(errors)) => {
                let mut stderr = std::io::stderr().lock();
                for error in errors {
                    let _ = writeln!(stderr, "error: {error}");
                }
                return Ok(ExitCode::from(EXIT_BAD_CONFIG));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("starting the node")),
        };
        let http =
            match bifrost_cluster::http::HttpServer::start_with(node.clone(), http_options).await {
                Ok(http) => http,
                Err(e) => {
                    node.shutdown().await;
                    return Err(anyhow::Error::new(e).context("starting the HTTP server"));
                }
            };
        let grpc = match grpc_options {
            None => None,
            Some(options) => {
                match bifrost_cluster::grpc::GrpcServer::start(node.clone(), options).await {
                    Ok(grpc) => {
                        let _ = http.stats().rls.set(grpc.handle());
                        Some(grpc)
                    }
                    Err(e) => {
                        let _ = writeln!(std::io::stderr().lock(), "error: {e}");
                        http.shutdown().await;
                        node.shutdown().await;
                        return Ok(ExitCode::from(EXIT_BAD_CONFIG));
                    }
                }
            }
        };
        wait_for_signal().await.context("waiting for a signal")?;
        tracing::info!("signal received: leaving the cluster");
        // HTTP and gRPC first (≤ 1 s each), so every request they counted is in the final flush; then the
        // node leaves.
        if let Some(grpc) = grpc {
            grpc.shutdown().await;
        }
        http.shutdown().await;
        node.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
