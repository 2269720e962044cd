//! `kproxy`: a drop-in replacement for kube-proxy.
//!
//! `main` stays small: parse arguments, set up logging, run the command, and turn an error into a
//! message and an exit status (2 for bad input, 1 for anything else).

mod args;
mod commands;
mod daemon;
mod handover;
mod input;
mod modes;
mod upstream_flags;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbosity);
    let result = match (&cli.command, cli.cleanup) {
        (_, true) | (Some(Command::Cleanup), _) => commands::cleanup::run(),
        (Some(Command::State(a)), _) => commands::state::run(a),
        (Some(Command::Render(a)), _) => commands::render::run(a),
        (Some(Command::Sync(a)), _) => commands::sync::run(a),
        (None, false) => daemon::run(&cli.daemon),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kproxy: {err:#}");
            if input::is_bad_input(&err)
                || err.chain().any(|e| {
                    e.is::<daemon::settings_error::BadSetting>() || e.is::<modes::ModeNotBuilt>()
                })
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Logs go to stderr, so command output on stdout stays clean for piping. `-v N` follows kube-proxy's
/// klog levels loosely: 0–1 warnings and info, 2–3 debug, 4+ trace. `RUST_LOG` overrides.
fn init_logging(verbosity: u8) {
    let level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
