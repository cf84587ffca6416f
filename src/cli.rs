//! What each `gatehouse` command does once its arguments are parsed: serve,
//! check a config, or run an operator's account action. Each returns the
//! process's exit code; `main` only parses the command line and dispatches.
//!
//! Owns: the logging setup, reading the operator's password, the messages
//! printed for a command and its exit code. Must not touch: anything the
//! server does (that is [`crate::run`]) or any backend protocol (that is
//! [`crate::auth`]).

use crate::auth::{manage_user, UserAction, UserOutcome};
use crate::config::Config;
use std::io::IsTerminal;
use std::path::Path;
use tracing_subscriber::EnvFilter;

/// `gatehouse check-config FILE`: prints `FILE: ok` (exit 0) or every
/// problem (exit 1) on standard output.
pub fn check_config(file: &Path) -> u8 {
    match Config::load(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            0
        }
        Err(error) => {
            println!("{error}");
            1
        }
    }
}

/// `gatehouse --config FILE`: starts logging and runs the server until a
/// shutdown signal. Exit 0 after a clean stop, 2 on a bad config, 1 when
/// the server could not start.
pub fn serve(file: &Path) -> u8 {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    gatehouse_actors::panic_guard::install_hook();
    let Some(config) = load(file) else {
        return 2;
    };
    tracing::info!(config = %file.display(), "starting gatehouse {}", env!("CARGO_PKG_VERSION"));
    let result =
        actix_rt::System::new().block_on(crate::run(config, crate::signal::shutdown_signal()));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            0
        }
        Err(error) => {
            eprintln!("gatehouse: {error}");
            1
        }
    }
}

/// `gatehouse user --config FILE ACTION JID`: reads the password when the
/// action takes one, then asks the backend. Exit 0 done, 1 refused, 2
/// invalid (a bad config, JID or empty password, or an unsupported
/// action), 3 backend unavailable.
pub fn user(file: &Path, action: UserAction, jid: &str) -> u8 {
    let Some(config) = load(file) else {
        return 2;
    };
    let password = match action.needs_password().then(read_password).transpose() {
        Ok(password) => password,
        Err(error) => {
            eprintln!("cannot read the password: {error}");
            return 2;
        }
    };
    let outcome = actix_rt::System::new().block_on(manage_user(&config, action, jid, password));
    match outcome {
        Ok(outcome) => {
            match &outcome {
                UserOutcome::Done(what) | UserOutcome::Refused(what) => println!("{jid}: {what}"),
                UserOutcome::Invalid(why) | UserOutcome::Unavailable(why) => {
                    eprintln!("{jid}: {why}")
                }
            }
            outcome.exit_code()
        }
        Err(error) => {
            eprintln!("gatehouse: {error}");
            3
        }
    }
}

/// The config, or `None` after printing why it cannot be loaded.
fn load(file: &Path) -> Option<Config> {
    Config::load(file)
        .inspect_err(|error| eprintln!("{error}"))
        .ok()
}

/// The password from the terminal without echo, or the first line of
/// standard input.
fn read_password() -> std::io::Result<String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("Password: ");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
