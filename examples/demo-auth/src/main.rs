//! DEMO ONLY: an external authentication program for Gatehouse's demo
//! config, speaking the `generic` protocol of Prosody's `mod_auth_external`.
//!
//! Owns: reading a `user:password` file and answering `auth`, `isuser` and
//! `setpass` requests on stdin/stdout, one line each, `1` or `0`.
//! Must not touch: anything persistent. `setpass` changes the in-memory copy
//! only; the file is never written. Passwords are never printed.
//!
//! Usage: `gatehouse-demo-auth [USERS_FILE]`. Without an argument it reads
//! `examples/users.txt` of the source tree it was built from, so the demo
//! works whatever the server's working directory is. A relative argument is
//! relative to the working directory of the server that starts it.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// The demo users file, found from the source tree this was built from.
const DEFAULT_USERS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../users.txt");

fn main() -> ExitCode {
    let path = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from(DEFAULT_USERS_FILE), PathBuf::from);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!(
                "gatehouse-demo-auth: cannot read {}: {error}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let mut users = match parse_users(&text) {
        Ok(users) => users,
        Err((line, why)) => {
            eprintln!("gatehouse-demo-auth: {}:{line}: {why}", path.display());
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "gatehouse-demo-auth: {} users from {}",
        users.len(),
        path.display()
    );
    match serve(io::stdin().lock(), io::stdout().lock(), &mut users) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gatehouse-demo-auth: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `user:password` lines; the password is everything after the first
/// `:`. Blank lines and `#` comments are skipped. An error carries the
/// 1-based line number and what is wrong (never the password).
fn parse_users(text: &str) -> Result<HashMap<String, String>, (usize, &'static str)> {
    let mut users = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (user, password) = line
            .split_once(':')
            .ok_or((number, "expected user:password"))?;
        if user.is_empty() || user.contains(char::is_whitespace) {
            return Err((number, "the user name is empty or contains spaces"));
        }
        if password.is_empty() {
            return Err((number, "the password is empty"));
        }
        if users.insert(user.to_owned(), password.to_owned()).is_some() {
            return Err((number, "the user is listed twice"));
        }
    }
    Ok(users)
}

/// One request of the generic protocol. The host is ignored: the demo's
/// users exist on every host.
#[derive(Debug, PartialEq, Eq)]
enum Request<'a> {
    Auth { user: &'a str, password: &'a str },
    IsUser { user: &'a str },
    SetPass { user: &'a str, password: &'a str },
}

/// Parses `cmd:user:host[:pass]` (without the line end). USER and HOST never
/// contain `:`, the password may. `None` for anything else.
fn parse_request(line: &str) -> Option<Request<'_>> {
    let (command, rest) = line.split_once(':')?;
    let (user, rest) = rest.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    match command {
        "auth" | "setpass" => {
            let (_host, password) = rest.split_once(':')?;
            Some(if command == "auth" {
                Request::Auth { user, password }
            } else {
                Request::SetPass { user, password }
            })
        }
        "isuser" if !rest.contains(':') => Some(Request::IsUser { user }),
        _ => None,
    }
}

/// Answers one request: `true` is `1`, anything not understood is `0`.
fn answer(line: &str, users: &mut HashMap<String, String>) -> bool {
    match parse_request(line) {
        Some(Request::Auth { user, password }) => {
            users.get(user).is_some_and(|known| known == password)
        }
        Some(Request::IsUser { user }) => users.contains_key(user),
        Some(Request::SetPass { user, password }) => match users.get_mut(user) {
            Some(known) if !password.is_empty() => {
                *known = password.to_owned();
                true
            }
            _ => false,
        },
        None => false,
    }
}

/// Reads requests until end of input, answering each with one line.
fn serve(
    mut input: impl BufRead,
    mut output: impl Write,
    users: &mut HashMap<String, String>,
) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let request = line.strip_suffix(b"\n").unwrap_or(&line);
        let request = request.strip_suffix(b"\r").unwrap_or(request);
        let ok = std::str::from_utf8(request).is_ok_and(|request| answer(request, users));
        writeln!(output, "{}", u8::from(ok))?;
        output.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file() {
        let users =
            parse_users("# comment\n\nalice:wonder:land\r\n  # indented\nbob:builder\n").unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users["alice"], "wonder:land");
        assert_eq!(users["bob"], "builder");
        assert_eq!(parse_users("alice\n").unwrap_err().0, 1);
        assert_eq!(parse_users("a:b\n:x\n").unwrap_err().0, 2);
        assert_eq!(parse_users("a:\n").unwrap_err().0, 1);
        assert_eq!(parse_users("a:b\na:c\n").unwrap_err().0, 2);
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse_request("auth:alice:localhost:a:b"),
            Some(Request::Auth {
                user: "alice",
                password: "a:b"
            })
        );
        assert_eq!(
            parse_request("isuser:bob:localhost"),
            Some(Request::IsUser { user: "bob" })
        );
        assert_eq!(
            parse_request("setpass:bob:localhost:new"),
            Some(Request::SetPass {
                user: "bob",
                password: "new"
            })
        );
        for bad in [
            "",
            "auth",
            "auth:alice:localhost",
            "isuser:bob:a:b",
            "tryregister:a:b:c",
            "auth::h:p",
        ] {
            assert_eq!(parse_request(bad), None, "{bad}");
        }
    }

    #[test]
    fn conversation() {
        let mut users = parse_users("alice:wonderland\n").unwrap();
        let input = b"auth:alice:localhost:wonderland\nauth:alice:localhost:wrong\r\n\
                     isuser:alice:localhost\nisuser:carol:localhost\nbogus\n\
                     setpass:alice:localhost:new:pass\nauth:alice:localhost:new:pass\n\xff\n";
        let mut output = Vec::new();
        serve(&input[..], &mut output, &mut users).unwrap();
        assert_eq!(
            String::from_utf8(output).unwrap(),
            "1\n0\n1\n0\n0\n1\n1\n0\n"
        );
    }
}
