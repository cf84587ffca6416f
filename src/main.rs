//! The `gatehouse` command line: parse the arguments and dispatch.
//!
//! Owns: argument parsing only. Must not touch: what a command does, its
//! messages or exit codes; that is `gatehouse::cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatehouse::auth::UserAction;
use gatehouse::cli;

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
    /// Make the server running on this config file read it again: applies
    /// what can change live, names what needs a restart, and changes
    /// nothing when the file is invalid. Talks to the server's operator
    /// listener (`http.listen`, with `http.admin_token`). Exit 0 reloaded,
    /// 1 the file is invalid (every problem printed), 2 the server could
    /// not be asked.
    Reload {
        /// The config file the server runs on.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Operate the running server's auth cache.
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
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
enum CacheCommand {
    /// Forget the cached auth checks of these users (a password changed
    /// outside Gatehouse), so their next login asks the backend. Talks to
    /// the server's operator listener (`http.listen`, with
    /// `http.admin_token`). Exit 0 done, 2 the server could not be asked.
    Drop {
        /// The config file the server runs on.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// `user@host`, or a username (dropped on every host).
        #[arg(required = true, value_name = "USER")]
        users: Vec<String>,
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
    /// Check that an account exists (exit 0 yes, 1 no); reads no password.
    Exists { jid: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ExitCode::from(match (cli.command, cli.config) {
        (Some(Command::CheckConfig { file }), _) => cli::check_config(&file),
        (Some(Command::Reload { config }), _) => cli::reload(&config),
        (Some(Command::Cache { action }), _) => match action {
            CacheCommand::Drop { config, users } => cli::cache_drop(&config, &users),
        },
        (Some(Command::User { config, action }), _) => {
            let (action, jid) = match action {
                UserCommand::Add { jid } => (UserAction::Add, jid),
                UserCommand::Passwd { jid } => (UserAction::Passwd, jid),
                UserCommand::Remove { jid } => (UserAction::Remove, jid),
                UserCommand::Check { jid } => (UserAction::Check, jid),
                UserCommand::Exists { jid } => (UserAction::Exists, jid),
            };
            cli::user(&config, action, &jid)
        }
        (None, Some(config)) => cli::serve(&config),
        (None, None) => unreachable!("clap requires --config without a subcommand"),
    })
}
