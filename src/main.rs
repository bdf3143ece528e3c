//! `bifrost-cluster`: the node binary.
//!
//! Subcommands:
//! - `check-config [FILE]`: load and validate a config (FILE, else `BIFROST_CONFIG`); print the effective config
//!   as pretty JSON on stdout and warnings on stderr. Exit 0 when the config loads, 2 when it does not, 1 on any
//!   other failure (e.g. stdout closed).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bifrost_cluster::config::{self, CLUSTER_SECRET_ENV, CONFIG_ENV, ConfigError};
use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig { file } => check_config(file),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn check_config(file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let loaded = match config::resolve_config_path(file, std::env::var_os(CONFIG_ENV))
        .and_then(|path| config::load_from_path(&path))
    {
        Ok(loaded) => loaded,
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
    Ok(ExitCode::SUCCESS)
}

fn print_config_error(e: &ConfigError) {
    let mut stderr = std::io::stderr().lock();
    for line in e.lines() {
        // Nothing sensible is left to do if stderr itself is closed.
        let _ = writeln!(stderr, "error: {line}");
    }
}
