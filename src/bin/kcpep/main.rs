//! `kcpep`: the filter's core on the command line. `check` and `explain` read only the
//! configuration; `doctor` compares it with the live realm; `evaluate` runs one request through
//! the same core the filter runs, against the live Keycloak. Never prints a secret or a token.

mod doctor;
mod evaluate;
mod keycloak;
mod offline;

use anyhow::{anyhow, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use keycloak_pep::config::routes::PluginConfig;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const EXIT_CODES: &str = "Exit codes:
  0   done (check: the configuration loads; doctor: no error found; evaluate: a verdict)
  1   check: the configuration is refused; doctor: errors found; any command: bad input
  2   doctor, evaluate: Keycloak could not be reached
  64  the command line itself is wrong (an unknown flag, a missing argument)";

#[derive(Parser)]
#[command(name = "kcpep", version, about = "Keycloak's policy enforcer, as the keycloak-pep filter runs it, on the command line", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a keycloak.json, a flat PolicyEnforcerConfig or a plugin configuration offline
    #[command(after_help = EXIT_CODES)]
    Check {
        /// The configuration file (`${env.NAME}` is substituted from the environment)
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show which configured path, scopes and mode a request maps to (no server is asked)
    #[command(after_help = EXIT_CODES)]
    Explain {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        select: Select,
        /// The request's method (GET, POST, ...)
        method: String,
        /// The request's path and query, as the client sends it
        path: String,
    },
    /// Compare the configuration with the live realm: discovery, credentials, resources, scopes,
    /// permissions, signing keys
    #[command(after_help = EXIT_CODES)]
    Doctor {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Only this enforcer (default: every enforcer of the configuration)
        #[arg(long, value_name = "NAME")]
        enforcer: Option<String>,
        /// One JSON object instead of lines
        #[arg(long)]
        json: bool,
        /// A file holding an admin access token (for the check that every resource has a
        /// permission; Keycloak's protection API cannot tell that)
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
        /// Seconds to wait for each answer from Keycloak
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        timeout: u64,
    },
    /// Run a request through the filter's own pipeline against the live Keycloak and print the
    /// trace
    #[command(after_help = EXIT_CODES)]
    Evaluate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        select: Select,
        /// A file holding the access token (or RPT) the request carries; none: anonymous
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// A request header, `NAME:VALUE` (repeatable)
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// One JSON object instead of lines
        #[arg(long)]
        json: bool,
        /// Seconds to wait for each answer from Keycloak
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        timeout: u64,
        /// Send the request this many times through the same worker (the later ones meet the
        /// memo and the decision table as a repeated request does in Envoy)
        #[arg(long, value_name = "N", default_value_t = 1)]
        repeat: u32,
        /// The request's method (GET, POST, ...)
        method: String,
        /// The request's path and query, as the client sends it
        path: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Nanoseconds per path lookup for 10, 1,000 and 10,000 paths (printed, never asserted)
    #[command(hide = true)]
    BenchPaths,
}

/// Which enforcer a request goes to, as the filter chooses it.
#[derive(Args, Clone, Default)]
pub struct Select {
    /// The enforcer by name (default: the one the route rules select)
    #[arg(long, value_name = "NAME")]
    pub enforcer: Option<String>,
    /// The request's Host (:authority), for host rules
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Envoy's route name, for route-name rules
    #[arg(long, value_name = "ROUTE")]
    pub route: Option<String>,
    /// Envoy's virtual host name, for virtual-host rules
    #[arg(long, value_name = "VHOST")]
    pub virtual_host: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return ExitCode::from(if usage { 64 } else { 0 });
        }
    };
    let outcome = match cli.command {
        Command::Check { config } => offline::check(&config).map(|()| ExitCode::SUCCESS),
        Command::Explain {
            config,
            select,
            method,
            path,
        } => offline::explain(&config, &select, &method, &path).map(|()| ExitCode::SUCCESS),
        Command::Doctor {
            config,
            enforcer,
            json,
            admin_token_file,
            timeout,
        } => doctor::run(&doctor::Options {
            config,
            enforcer,
            json,
            admin_token_file,
            timeout_s: timeout,
        }),
        Command::Evaluate {
            config,
            select,
            token_file,
            headers,
            json,
            timeout,
            repeat,
            method,
            path,
        } => evaluate::run(&evaluate::Options {
            config,
            select,
            token_file,
            headers,
            json,
            timeout_s: timeout,
            method,
            path,
            repeat,
        }),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kcpep", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::BenchPaths => {
            offline::bench_paths();
            Ok(ExitCode::SUCCESS)
        }
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kcpep: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Reads and parses a configuration file as the filter does at configure.
pub fn load(path: &Path) -> Result<PluginConfig> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    PluginConfig::from_json(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// A token kept in a file (never on the command line, where `ps` shows it), trimmed.
pub fn read_token_file(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}
