//! The `minder` binary: parses the command line and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use minder::cli::{self, Cli, Top};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Top::Check { config } => cli::check(config.as_deref()),
        Top::Ctl(args) => cli::ctl(args),
        Top::Import(from) => cli::import(from),
        Top::Daemon {
            config,
            insecure_config,
        } => {
            // SAFETY: the first thing the daemon does, while minder has one
            // thread: none is started before it (parsing the command line
            // starts none; the writer thread of the log file comes with the
            // logging set up below).
            unsafe { minder::daemon::tune_allocator() };
            let config = match cli::load_for_daemon(config.as_deref(), insecure_config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            // Held until exit: dropping it flushes the log file.
            let _log_guard = match minder::logs::own::init(&config.supervisor) {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("minder: {e}");
                    return ExitCode::from(1);
                }
            };
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
