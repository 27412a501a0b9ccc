//! The `minder` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use minder::cli::{self, Cli, Top};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Top::Check { config } => cli::check(config.as_deref()),
        Top::Ctl(args) => cli::ctl(args),
        Top::Daemon {
            config,
            insecure_config,
        } => {
            let config = match cli::load_for_daemon(config.as_deref(), insecure_config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            init_logging(&config.supervisor.log_level);
            let options = minder::daemon::Options { insecure_config };
            match minder::daemon::run(config, options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("minder: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// minder's own log to stderr; `MINDER_LOG` (a tracing filter) overrides `log_level`.
fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MINDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
