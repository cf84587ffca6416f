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
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

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
    let Some(config) = load(file) else {
        return 2;
    };
    crate::logging::install(&config.log_level);
    gatehouse_actors::panic_guard::install_hook();
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

/// `gatehouse reload --config FILE`: asks the server running on FILE to
/// read it again, through its operator listener, and prints its answer.
/// Exit 0 reloaded, 1 the file is invalid or could not be applied (nothing
/// changed), 2 the server could not be asked.
pub fn reload(file: &Path) -> u8 {
    // Checked here first, with check-config's words: an invalid file is
    // never sent to the server, which would refuse it the same way.
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(error) => {
            println!("{error}\nnothing changed");
            return 1;
        }
    };
    match ask_operator(file, &config, "/admin/reload", None) {
        Ok((200, answer)) => {
            print!("{answer}");
            0
        }
        Ok((422, answer)) => {
            print!("{answer}");
            1
        }
        Ok((_, answer)) => {
            print!("{answer}");
            2
        }
        Err(()) => 2,
    }
}

/// `gatehouse cache drop --config FILE USER…`: asks the server running on
/// FILE to forget the cached auth checks of each USER (`user@host`, or a
/// username on every host), so their next login asks the backend. Prints
/// how many entries were dropped. Exit 0 done, 2 the config is invalid or
/// the server could not be asked.
pub fn cache_drop(file: &Path, users: &[String]) -> u8 {
    let Some(config) = load(file) else {
        return 2;
    };
    let body = serde_json::to_vec(users).expect("strings serialize");
    match ask_operator(file, &config, "/admin/cache/drop", Some(body)) {
        Ok((200, answer)) => {
            let dropped = serde_json::from_str::<serde_json::Value>(&answer)
                .ok()
                .and_then(|answer| answer["dropped"].as_u64());
            match dropped {
                Some(dropped) => {
                    println!("dropped {dropped} cached auth entries");
                    0
                }
                None => {
                    eprintln!("unexpected answer: {answer}");
                    2
                }
            }
        }
        Ok((_, answer)) => {
            eprintln!("{answer}");
            2
        }
        Err(()) => 2,
    }
}

/// POSTs `body` to `path` on the operator listener of the server running
/// on `config` (read from `file`), with `http.admin_token`: the answer's
/// status and text, or `Err` after printing why it could not be asked.
fn ask_operator(
    file: &Path,
    config: &Config,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, String), ()> {
    let mut listen = config.http.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(match listen {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
    }
    let Some(token) = config.http.admin_token.as_ref().map(|t| t.0.as_str()) else {
        eprintln!(
            "{}: http.admin_token is not set, so the server's operator endpoints are off; \
             set it (and restart){}",
            file.display(),
            if path == "/admin/reload" {
                ", or send the server SIGHUP"
            } else {
                ""
            }
        );
        return Err(());
    };
    let url = format!("http://{listen}{path}");
    let asked = async {
        let mut request = gatehouse_actors::outbound_http::client_builder()
            .timeout(OPERATOR_TIMEOUT)
            .build()?
            .post(&url)
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status.as_u16(), response.text().await?))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match runtime.map(|runtime| runtime.block_on(asked)) {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => {
            eprintln!("{url}: cannot ask the server: {error}");
            Err(())
        }
        Err(error) => {
            eprintln!("cannot start: {error}");
            Err(())
        }
    }
}

/// How long the operator commands wait for the server's answer: a reload
/// that replaces auth processes one at a time can take a while.
const OPERATOR_TIMEOUT: Duration = Duration::from_secs(120);

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
