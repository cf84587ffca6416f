//! The `gatehouse` command line: parse arguments, load the config, start
//! logging and run the server (or only check the config).
//!
//! Owns: argument parsing, exit codes and the logging setup.
//! Must not touch: anything the server does; that is `gatehouse::run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::auth::{manage_user, UserAction, UserOutcome};
use gatehouse::config::Config;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// An XMPP server whose users, rosters and rooms live in another application.
#[derive(Parser)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Run the server with this config file.
    #[arg(short, long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a config file: print `FILE: ok` (exit 0) or every problem (exit 1).
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
    /// Manage an account through the configured auth backend. The password
    /// is read from the terminal (without echo) or from the first line of
    /// standard input. Exit 0 done, 1 refused, 2 invalid, 3 backend unavailable.
    User {
        /// The config file naming the backend.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[command(subcommand)]
        action: UserCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create an account.
    Add { jid: String },
    /// Change an account's password.
    Passwd { jid: String },
    /// Remove an account.
    Remove { jid: String },
    /// Check a password.
    Check { jid: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match (cli.command, cli.config) {
        (Some(Command::CheckConfig { file }), _) => check_config(&file),
        (Some(Command::User { config, action }), _) => user(&config, action),
        (None, Some(config)) => serve(&config),
        (None, None) => unreachable!("clap requires --config without a subcommand"),
    }
}

fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            println!("{error}");
            ExitCode::from(1)
        }
    }
}

fn serve(file: &Path) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = %file.display(), "starting gatehouse {}", env!("CARGO_PKG_VERSION"));
    let result = actix_rt::System::new()
        .block_on(gatehouse::run(config, gatehouse::signal::shutdown_signal()));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("gatehouse: {error}");
            ExitCode::from(1)
        }
    }
}

fn user(file: &Path, command: UserCommand) -> ExitCode {
    let (action, jid) = match command {
        UserCommand::Add { jid } => (UserAction::Add, jid),
        UserCommand::Passwd { jid } => (UserAction::Passwd, jid),
        UserCommand::Remove { jid } => (UserAction::Remove, jid),
        UserCommand::Check { jid } => (UserAction::Check, jid),
    };
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    let password = match action.needs_password().then(read_password).transpose() {
        Ok(password) => password,
        Err(error) => {
            eprintln!("cannot read the password: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = actix_rt::System::new().block_on(manage_user(&config, action, &jid, password));
    match outcome {
        Ok(outcome) => {
            match &outcome {
                UserOutcome::Done(what) | UserOutcome::Refused(what) => println!("{jid}: {what}"),
                UserOutcome::Invalid(why) | UserOutcome::Unavailable(why) => {
                    eprintln!("{jid}: {why}")
                }
            }
            ExitCode::from(outcome.exit_code())
        }
        Err(error) => {
            eprintln!("gatehouse: {error}");
            ExitCode::from(3)
        }
    }
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
