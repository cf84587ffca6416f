//! Live configuration reload of the real binary by its three triggers
//! (SIGHUP, `POST /admin/reload`, `gatehouse reload`): an invalid file
//! changes nothing and is reported with check-config's words; a valid one
//! applies its live keys, names those that need a restart, and shows in
//! the metrics; no secret reaches the log.

mod common;

use common::server_process::{free_port, gatehouse, post_reload, wait_for, ServerProcess};
use common::{fixture_auth, http_get, metric_reaches, sample, Client};
use std::path::PathBuf;
use std::process::Command;

const TOKEN: &str = "reload-secret-1";
const NEW_TOKEN: &str = "reload-secret-2";
const RELOADS_OK: &str = "gatehouse_config_reloads_total{result=\"success\"}";
const RELOADS_FAILED: &str = "gatehouse_config_reloads_total{result=\"failure\"}";

/// A valid config with the operator listener on `http` and `extra` TOML
/// at the top level (before any table).
fn config(http: u16, admin_token: Option<&str>, extra: &str) -> String {
    let token = admin_token.map_or(String::new(), |t| format!("admin_token = \"{t}\"\n"));
    format!(
        "hosts = [\"localhost\"]\n{extra}\n[c2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n{token}{}",
        fixture_auth("")
    )
}

fn sighup(server: &ServerProcess) {
    let status = Command::new("kill")
        .args(["-HUP", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The running config file's hash, from `gatehouse_config_info`.
fn running_hash(scrape: &str) -> String {
    let lines: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("gatehouse_config_info{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(lines.len(), 1, "one running hash: {lines:?}");
    lines[0].split('"').nth(1).unwrap().to_owned()
}

fn invalid_fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(common::root().join("tests/config_test/invalid"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "toml"))
            .collect();
    files.sort();
    files
}

/// Every invalid fixture, put where the server's config is, is refused
/// by each trigger with check-config's lines; the server runs on as it
/// was (same config hash, logins work).
#[tokio::test]
async fn an_invalid_file_changes_nothing_by_any_trigger() {
    let port = free_port();
    let valid = config(port, Some(TOKEN), "");
    let server = ServerProcess::from_toml(&valid);
    let (c2s, http) = server.listeners();
    let path = server.config_path();
    let path_text = path.to_str().unwrap();
    let before = http_get(http, "/metrics").await;
    let hash = running_hash(&before);
    let mut failed = sample(&before, RELOADS_FAILED);
    for fixture in invalid_fixtures() {
        std::fs::copy(&fixture, &path).unwrap();
        let (code, expected) = gatehouse(&["check-config", path_text]);
        assert_eq!(code, 1, "{} is invalid", fixture.display());
        let refused = format!("{expected}nothing changed\n");

        let (code, said) = gatehouse(&["reload", "--config", path_text]);
        assert_eq!(
            (code, said.as_str()),
            (1, refused.as_str()),
            "{}",
            fixture.display()
        );

        let (status, answer) = post_reload(http, Some(TOKEN)).await;
        assert_eq!(
            (status, answer.as_str()),
            (422, refused.as_str()),
            "{}",
            fixture.display()
        );
        failed += 1.0;

        sighup(&server);
        failed += 1.0;
        metric_reaches(http, RELOADS_FAILED, failed).await;
    }
    std::fs::write(&path, &valid).unwrap();
    let (code, said) = gatehouse(&["reload", "--config", path_text]);
    assert_eq!(code, 0, "{said}");
    assert_eq!(said, format!("{path_text}: no change to apply\n"));
    let after = http_get(http, "/metrics").await;
    assert_eq!(running_hash(&after), hash);
    assert_eq!(
        sample(&after, RELOADS_OK),
        sample(&before, RELOADS_OK) + 1.0
    );
    Client::login(c2s, "alice", "wonderland", "r").await;
    assert!(server
        .log()
        .contains("configuration not reloaded, nothing changed"));
}

/// Live keys are applied, the others named and left as they run; the
/// metrics and the log say so, and neither token is ever logged.
#[tokio::test]
async fn a_valid_file_applies_live_keys_and_names_the_rest() {
    let port = free_port();
    let server = ServerProcess::from_toml(&config(port, None, "log_level = \"trace\""));
    let (_, http) = server.listeners();
    let path = server.config_path();
    let path_text = path.to_str().unwrap();
    let before = http_get(http, "/metrics").await;
    let hash = running_hash(&before);

    // No admin_token: the endpoint is off, the command says so.
    assert_eq!(post_reload(http, Some(TOKEN)).await.0, 404);
    assert_eq!(gatehouse(&["reload", "--config", path_text]).0, 2);

    // A SIGHUP turns it on; a backlog change waits for a restart.
    let with_token = config(port, Some(TOKEN), "log_level = \"trace\"")
        .replace("require_tls = false", "require_tls = false\nbacklog = 64");
    std::fs::write(&path, &with_token).unwrap();
    sighup(&server);
    let scrape = metric_reaches(http, RELOADS_OK, sample(&before, RELOADS_OK) + 1.0).await;
    assert_ne!(running_hash(&scrape), hash);
    assert!(
        sample(
            &scrape,
            "gatehouse_config_last_reload_success_timestamp_seconds"
        ) > 0.0
    );
    assert_eq!(post_reload(http, None).await.0, 401);
    let (status, answer) = post_reload(http, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        format!(
            "{path_text}: no change to apply\n\
             {path_text}: needs restart (running as before): c2s.backlog\n"
        )
    );

    // A new token and log level apply; the command uses the file's token,
    // so the token changes by signal.
    let changed = config(port, Some(NEW_TOKEN), "log_level = \"debug\"")
        .replace("require_tls = false", "require_tls = false\nbacklog = 64");
    std::fs::write(&path, &changed).unwrap();
    let (status, answer) = post_reload(http, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        format!(
            "{path_text}: reloaded: applied http.admin_token, log_level\n\
             {path_text}: needs restart (running as before): c2s.backlog\n"
        )
    );
    assert_eq!(post_reload(http, Some(TOKEN)).await.0, 401);
    let (code, said) = gatehouse(&["reload", "--config", path_text]);
    assert_eq!(code, 0, "{said}");
    wait_for("the reload log line", || {
        server
            .log()
            .contains("applied=http.admin_token, log_level needs_restart=c2s.backlog")
            .then_some(())
    });
    let log = server.log();
    assert!(
        !log.contains(TOKEN) && !log.contains(NEW_TOKEN),
        "a token was logged"
    );
}

/// `gatehouse reload` against a file that is not what the server runs on
/// asks the listener the file names; nothing listening there is exit 2.
#[test]
fn the_command_without_a_server_exits_2() {
    let dir = common::tempdir();
    let file = dir.join("gatehouse.toml");
    std::fs::write(&file, config(free_port(), Some(TOKEN), "")).unwrap();
    let (code, _) = gatehouse(&["reload", "--config", file.to_str().unwrap()]);
    assert_eq!(code, 2);
}

/// Client stream settings change for streams that start after the
/// reload; a stream that started before keeps its own.
#[tokio::test]
async fn stream_settings_apply_to_new_streams_and_spare_running_ones() {
    let port = free_port();
    let before_reload = config(port, Some(TOKEN), "");
    let server = ServerProcess::from_toml(&before_reload);
    let (c2s, http) = server.listeners();
    let (mut early, _) = Client::login(c2s, "alice", "wonderland", "early").await;
    let (_, features) = Client::authenticated(c2s, "bob", "builder").await;
    assert!(features.has_child("sm", "urn:xmpp:sm:3"), "{features:?}");

    // `require_tls` ends [c2s]; [http] follows.
    let tighter = before_reload.replace(
        "require_tls = false",
        "require_tls = false\nmax_stanza_bytes = 8192\n[stream_management]\nenabled = false",
    );
    std::fs::write(server.config_path(), &tighter).unwrap();
    let (status, answer) = post_reload(http, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("applied c2s.max_stanza_bytes, stream_management.enabled"),
        "{answer}"
    );

    let (_, features) = Client::authenticated(c2s, "bob", "builder").await;
    assert!(!features.has_child("sm", "urn:xmpp:sm:3"), "{features:?}");
    let big = format!(
        "<message to='alice@localhost'><body>{}</body></message>",
        "x".repeat(10_000)
    );
    let (mut late, _) = Client::login(c2s, "grace", "grace", "late").await;
    late.send(&big).await;
    assert_eq!(late.stream_error().await, "policy-violation");
    // To itself: it comes back whole.
    early
        .send(&big.replace("alice@localhost", "alice@localhost/early"))
        .await;
    let echoed = early.element().await;
    assert_eq!(
        echoed
            .get_child("body", common::CLIENT)
            .unwrap()
            .text()
            .len(),
        10_000
    );
    early.answers_ping().await;
}
