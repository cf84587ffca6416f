//! Config file tests: every file under tests/config_test/valid must load,
//! every file under tests/config_test/invalid must be rejected with one error
//! line per `# expect: KEY` line it starts with, each naming the file and,
//! in order, that key.
//! Also checks defaults, path resolution, the demo config, and the
//! `gatehouse check-config` command.
//!
//! Owns: nothing but these fixtures; must not start a server.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gatehouse::config::{AuthBackendKind, Config, ConfigError, ExternalProtocol};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/config_test");

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(Path::new(FIXTURES).join(kind))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(name)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn every_valid_file_loads() {
    let files = fixtures("valid");
    assert!(files.len() >= 8, "{files:?}");
    for file in files {
        if let Err(error) = Config::load(&file) {
            panic!("{} should be valid:\n{error}", file.display());
        }
    }
}

/// The keys an invalid fixture expects in its error, one per problem, from
/// its leading `# expect: KEY` lines.
fn expected_keys(file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap();
    let keys: Vec<String> = text
        .lines()
        .map_while(|line| line.strip_prefix("# expect: "))
        .map(|key| key.trim().to_owned())
        .collect();
    assert!(
        !keys.is_empty(),
        "{}: first line must be `# expect: KEY`",
        file.display()
    );
    keys
}

/// Checks that `error` has one line per expected key, each naming the
/// file and, in order, its key.
fn assert_names_file_and_keys(file: &Path, error: &str, keys: &[String]) {
    let name = file.file_name().unwrap().to_str().unwrap();
    let lines: Vec<&str> = error.lines().collect();
    assert_eq!(
        lines.len(),
        keys.len(),
        "{name}: expected one problem per key {keys:?}, got:\n{error}"
    );
    for (line, key) in lines.iter().zip(keys) {
        assert!(line.contains(name), "{name}: file not named in: {line}");
        assert!(
            line.contains(&format!(": {key}: ")) || line.contains(&format!(": {key}[")),
            "{name}: key `{key}` not named in: {line}"
        );
    }
}

#[test]
fn every_invalid_file_names_its_file_and_keys() {
    let files = fixtures("invalid");
    assert!(files.len() >= 40, "{files:?}");
    for file in files {
        let keys = expected_keys(&file);
        let error = match Config::load(&file) {
            Ok(_) => panic!("{} should be invalid", file.display()),
            Err(error) => error.to_string(),
        };
        assert_names_file_and_keys(&file, &error, &keys);
    }
}

#[test]
fn config_errors_name_normalised_rooms_and_hide_url_secrets() {
    let error = Config::load(&fixture("invalid/muc_gate_room_not_normalised.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("\"strasse\""), "{error}");
    let error = Config::load(&fixture("invalid/muc_gate_bad_url_with_secrets.toml"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("gate.example"), "{error}");
    for secret in ["hunter2", "s3cr3t", "gateuser"] {
        assert!(!error.contains(secret), "{error}");
    }
}

#[test]
fn minimal_file_gets_every_default() {
    let config = Config::load(&fixture("valid/minimal.toml")).unwrap();
    assert_eq!(config.hosts, ["localhost"]);
    let c2s = &config.c2s;
    assert_eq!(c2s.listen, addr("127.0.0.1:5222"));
    assert_eq!(c2s.direct_tls_listen, None);
    assert!(c2s.require_tls);
    assert_eq!(c2s.max_stanza_bytes, 262_144);
    assert_eq!(c2s.max_stanza_elements, 10_000);
    assert_eq!(c2s.max_element_attributes, 64);
    assert_eq!(c2s.max_unauthenticated_partial_bytes, 16 * 1024 * 1024);
    assert_eq!(c2s.backlog, 1024);
    assert_eq!(c2s.unauthenticated_timeout, Duration::from_secs(30));
    assert_eq!(c2s.max_outbound_queue, 1024);
    assert_eq!(c2s.read_rate_unauthenticated, 4096);
    assert_eq!(c2s.read_burst_unauthenticated, 16_384);
    assert_eq!(c2s.read_rate, 65_536);
    assert_eq!(c2s.read_burst, 262_144);
    assert_eq!(config.http.listen, addr("127.0.0.1:5280"));
    assert_eq!(config.auth.backend, AuthBackendKind::External);
    let external = config.auth.external.unwrap();
    assert_eq!(external.protocol, ExternalProtocol::Generic);
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(external.processes, cpus.min(1024));
    assert_eq!(external.queue, 1024);
    assert_eq!(external.timeout, Duration::from_secs(5));
    assert_eq!(external.queue_timeout, Duration::from_secs(5));
    assert_eq!(external.reply_grace, Duration::from_millis(2));
    assert!(config.carbons.enabled);
    assert!(config.csi.enabled);
    assert_eq!(config.csi.max_held, 256);
}

#[test]
fn relative_paths_are_resolved_from_the_config_directory() {
    let config = Config::load(&fixture("valid/minimal.toml")).unwrap();
    let cert = config.c2s.tls_cert.unwrap();
    let key = config.c2s.tls_key.unwrap();
    let program = PathBuf::from(&config.auth.external.unwrap().command.argv()[0]);
    for (path, expected) in [
        (cert, "localhost.crt"),
        (key, "localhost.key"),
        (program, "auth.sh"),
    ] {
        assert!(path.is_absolute(), "{}", path.display());
        assert_eq!(
            fs::canonicalize(&path).unwrap(),
            fs::canonicalize(fixture(expected)).unwrap()
        );
    }
}

#[test]
fn bare_program_names_and_arguments_are_left_alone() {
    let config = Config::load(&fixture("valid/ejabberd_argv.toml")).unwrap();
    let external = config.auth.external.unwrap();
    assert_eq!(external.command.argv(), ["sh", "../auth.sh"]);
    assert_eq!(external.protocol, ExternalProtocol::Ejabberd);
    assert_eq!(external.processes, 4);
}

#[test]
fn full_file_sets_every_key() {
    let config = Config::load(&fixture("valid/full.toml")).unwrap();
    assert_eq!(config.hosts, ["example.com", "chat.example.com"]);
    let c2s = &config.c2s;
    assert_eq!(c2s.listen, addr("0.0.0.0:5223"));
    assert_eq!(c2s.direct_tls_listen, Some(addr("0.0.0.0:5224")));
    assert!(c2s.require_tls);
    assert_eq!(c2s.max_stanza_bytes, 65_536);
    assert_eq!(c2s.max_stanza_elements, 5000);
    assert_eq!(c2s.max_element_attributes, 32);
    assert_eq!(c2s.max_unauthenticated_partial_bytes, 8 * 1024 * 1024);
    assert_eq!(c2s.backlog, 4096);
    assert_eq!(c2s.unauthenticated_timeout, Duration::from_secs(90));
    assert_eq!(c2s.max_outbound_queue, 500);
    assert_eq!(c2s.read_rate_unauthenticated, 2048);
    assert_eq!(c2s.read_burst_unauthenticated, 8192);
    assert_eq!(c2s.read_rate, 32_768);
    assert_eq!(c2s.read_burst, 131_072);
    assert_eq!(config.http.listen, addr("127.0.0.1:9090"));
    let external = config.auth.external.unwrap();
    assert_eq!(external.command.argv()[1], "--verbose");
    assert_eq!(external.processes, 16);
    assert_eq!(external.queue, 2000);
    assert_eq!(external.timeout, Duration::from_secs(2));
    assert_eq!(external.queue_timeout, Duration::from_millis(750));
    assert_eq!(external.reply_grace, Duration::from_millis(5));
    assert!(!config.carbons.enabled);
    assert_eq!(config.csi.max_held, 1000);
    // Everything held is queued at once: it must fit c2s.max_outbound_queue.
    let csi = config.csi.settings(config.c2s.max_outbound_queue).unwrap();
    assert_eq!(csi.max_held, 499);
}

#[test]
fn storage_sections_load_and_the_database_password_is_masked() {
    let path = fixture("valid/storage.toml");
    let config = Config::load(&path).unwrap();
    let storage = config.storage.clone().unwrap();
    let dir = std::path::absolute(path.parent().unwrap()).unwrap();
    assert_eq!(storage.sqlite, Some(dir.join("data/gatehouse.sqlite")));
    assert_eq!(storage.max_connections, 4);
    assert_eq!(storage.acquire_timeout, Duration::from_secs(2));
    let offline = config.offline.settings(true).unwrap();
    assert_eq!(offline.max_per_user, 200);
    assert_eq!(offline.max_pending_bytes, 8 * 1024 * 1024);
    // Defaults: offline messages on with storage, off without.
    let minimal = Config::load(&fixture("valid/minimal.toml")).unwrap();
    assert_eq!(minimal.storage, None);
    assert_eq!(minimal.offline.settings(false), None);
    assert_eq!(minimal.offline.settings(true).unwrap().max_per_user, 1000);
    let archive = config.archive.settings(true).unwrap();
    assert_eq!(archive.max_age, Some(Duration::from_secs(30 * 86400)));
    assert_eq!(archive.max_per_archive, 500);
    assert_eq!(archive.max_page, 50);
    assert_eq!(archive.max_pending_bytes, 4 * 1024 * 1024);
    // Archives, like offline messages, are on with storage, off without.
    assert_eq!(minimal.archive.settings(false), None);
    let defaults = minimal.archive.settings(true).unwrap();
    assert_eq!((defaults.max_age, defaults.max_page), (None, 250));

    let config = Config::load(&fixture("valid/storage_postgres.toml")).unwrap();
    assert_eq!(config.offline.settings(true), None, "switched off");
    let shown = format!("{config:?}");
    assert!(shown.contains("db.example.com"), "{shown}");
    assert!(!shown.contains("s3cr3t"), "{shown}");
}

#[test]
fn queue_zero_and_plaintext_are_accepted() {
    let config = Config::load(&fixture("valid/queue_zero.toml")).unwrap();
    assert_eq!(config.auth.external.unwrap().queue, 0);
    let config = Config::load(&fixture("valid/plaintext_without_certs.toml")).unwrap();
    assert!(!config.c2s.require_tls);
    assert_eq!(config.c2s.tls_cert, None);
}

#[test]
fn every_problem_is_reported_one_per_line() {
    let origin = fixture("invalid/several.toml");
    let text = r#"
        hosts = []
        [c2s]
        require_tls = false
        backlog = 0
        [auth]
        backend = "external"
        [auth.external]
        command = []
        processes = 0
        timeout = "0s"
    "#;
    let error = Config::parse(text, &origin).unwrap_err();
    let ConfigError::Invalid { problems, .. } = &error else {
        panic!("not a validation error: {error}");
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "hosts",
            "c2s.backlog",
            "auth.external.command",
            "auth.external.processes",
            "auth.external.timeout"
        ]
    );
    let text = error.to_string();
    assert_eq!(text.lines().count(), 5, "{text}");
    for line in text.lines() {
        assert!(
            line.starts_with(&format!("{}: ", origin.display())),
            "{line}"
        );
    }
    assert!(text.contains("auth.external.processes: must be between 1 and 1024"));
}

#[test]
fn a_broken_required_key_hides_neither_other_sections_nor_repeats_as_missing() {
    let origin = Path::new("/etc/gatehouse/gatehouse.toml");
    let text = "hosts = \"localhost\"\n[c2s]\nbogus = 1\nrequire_tls = false\n\
                [auth]\nbackend = \"ldap\"\n[auth.external]\ncommand = \"sh\"\nextra = 2\n";
    let error = Config::parse(text, origin).unwrap_err();
    let ConfigError::Invalid { problems, .. } = &error else {
        panic!("not a list of problems: {error}");
    };
    let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["hosts", "c2s.bogus", "auth.backend", "auth.external.extra"],
        "{error}"
    );
    assert!(!error.to_string().contains("missing field"), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("/etc/gatehouse/gatehouse.toml:1:9: hosts: invalid type"),
        "{error}"
    );
}

#[test]
fn parse_errors_name_origin_line_and_column() {
    let origin = Path::new("/etc/gatehouse/gatehouse.toml");
    let text =
        "hosts = [\"localhost\"]\n[c2s]\nrequire_tls = false\n[auth]\nbackend = \"external\"\n\
                [auth.external]\ncommand = \"sh\"\nprocesses = \"many\"\n";
    let error = Config::parse(text, origin).unwrap_err().to_string();
    assert!(
        error.starts_with(
            "/etc/gatehouse/gatehouse.toml:8:13: auth.external.processes: invalid type"
        ),
        "{error}"
    );
}

#[test]
fn unreadable_file_is_named() {
    let path = fixture("no-such-file.toml");
    let error = Config::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().contains("no-such-file.toml"), "{error}");
}

#[test]
fn demo_config_is_valid_once_the_demo_program_is_built() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gatehouse.toml");
    match Config::load(&path) {
        Ok(config) => {
            assert_eq!(config.hosts, ["localhost"]);
            assert_eq!(config.auth.external.unwrap().processes, 2);
        }
        // `cargo test` does not build the release binary the demo runs.
        Err(ConfigError::Invalid { problems, .. }) => {
            for problem in problems {
                assert_eq!(problem.key, "auth.external.command", "{problem}");
                assert!(problem.message.contains("gatehouse-demo-auth"), "{problem}");
            }
        }
        Err(error) => panic!("{error}"),
    }
}

fn gatehouse(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn check_config_accepts_a_valid_file() {
    let file = fixture("valid/full.toml");
    let file = file.to_str().unwrap();
    let (code, stdout, _) = gatehouse(&["check-config", file]);
    assert_eq!(code, Some(0));
    assert_eq!(stdout, format!("{file}: ok\n"));
}

#[test]
fn check_config_rejects_an_invalid_file() {
    let file = fixture("invalid/processes_zero.toml");
    let file = file.to_str().unwrap();
    let (code, stdout, _) = gatehouse(&["check-config", file]);
    assert_eq!(code, Some(1));
    assert_eq!(
        stdout,
        format!("{file}: auth.external.processes: must be between 1 and 1024 (got 0)\n")
    );
}

#[test]
fn check_config_lists_every_kind_of_problem_at_once() {
    let file = fixture("invalid/several_problems.toml");
    let keys = expected_keys(&file);
    assert!(keys.len() >= 5, "{keys:?}");
    let (code, stdout, _) = gatehouse(&["check-config", file.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stdout}");
    assert_names_file_and_keys(&file, &stdout, &keys);
    for what in [
        "unknown field `port`",
        "invalid type: string \"4\"",
        "unknown field `retries`",
        "missing field `domain`",
        "must be between 1 and 65535 (got 0)",
    ] {
        assert!(stdout.contains(what), "{what:?} not in:\n{stdout}");
    }
    // Problems with the file's shape carry their line:column.
    assert!(
        stdout.contains("several_problems.toml:13:1: c2s.port: "),
        "{stdout}"
    );
}

#[test]
fn serving_an_invalid_config_exits_2() {
    let file = fixture("invalid/misspelled_key.toml");
    let (code, _, stderr) = gatehouse(&["--config", file.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("auth.external.procesess"), "{stderr}");
}

#[test]
fn roster_sections_load_with_defaults_and_hide_their_secrets() {
    let config = Config::load(&fixture("valid/roster.toml")).unwrap();
    let roster = config.roster.as_ref().unwrap();
    assert_eq!(
        roster.url,
        "https://app.example.com/contacts/%s?format=json"
    );
    assert_eq!(roster.cache_capacity, 5000);
    assert_eq!(roster.ttl, Duration::from_secs(600));
    assert_eq!(roster.timeout, Duration::from_secs(2));
    assert_eq!(roster.max_in_flight, 8);
    let header = roster.authorization_header.as_ref().unwrap();
    assert_eq!(header.0, "Bearer s3cret");
    let admin = config.roster_admin.as_ref().unwrap();
    assert_eq!(admin.token.as_ref().unwrap().0, "t0ken");
    assert_eq!(admin.max_body_bytes, 65_536);
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("s3cret") && !debug.contains("t0ken") && !debug.contains("format=json"),
        "{debug}"
    );
    assert!(
        debug.contains("https://app.example.com/contacts/%s?***"),
        "{debug}"
    );

    let minimal = fs::read_to_string(fixture("valid/minimal.toml")).unwrap();
    let config = Config::parse(&minimal, &fixture("valid/minimal.toml")).unwrap();
    assert!(config.roster.is_none() && config.roster_admin.is_none());
    let text = format!("{minimal}\n[roster]\nurl = \"http://app/%s\"\n");
    let roster = Config::parse(&text, &fixture("valid/minimal.toml"))
        .unwrap()
        .roster
        .unwrap();
    assert_eq!(roster.cache_capacity, 100_000);
    assert_eq!(roster.ttl, Duration::from_secs(3600));
    assert_eq!(roster.timeout, Duration::from_secs(5));
    assert_eq!(roster.max_in_flight, 64);
    assert!(roster.authorization_header.is_none());
}

#[test]
fn muc_defaults_and_the_gate_header_is_masked() {
    let config = Config::load(&fixture("valid/muc_minimal.toml")).unwrap();
    let muc = config.muc.unwrap();
    assert_eq!(muc.domain, "rooms.localhost");
    assert!(muc.persistent_rooms.is_empty());
    assert_eq!(muc.max_occupants, 1000);
    assert_eq!(muc.max_rooms, 10_000);
    assert_eq!(muc.history, 20);
    assert!(muc.http_auth.is_none());

    let config = Config::load(&fixture("valid/muc_gate_enabled_for.toml")).unwrap();
    let gate = config.muc.as_ref().unwrap().http_auth.as_ref().unwrap();
    assert!(!gate.insecure);
    assert_eq!(gate.timeout, Duration::from_secs(2));
    assert_eq!(gate.max_in_flight, 16);
    assert_eq!(gate.enabled_for.as_ref().unwrap()["localhost"].len(), 2);
    let shown = format!("{config:?}");
    assert!(!shown.contains("dXNlcm5hbWU6cGFzc3dvcmQ="), "{shown}");
    assert!(shown.contains("***"), "{shown}");

    let config = Config::load(&fixture("valid/muc_gate_disabled_for.toml")).unwrap();
    let gate = config.muc.unwrap().http_auth.unwrap();
    assert!(gate.insecure);
    assert_eq!(gate.timeout, Duration::from_secs(5));
    assert_eq!(gate.max_in_flight, 64);
    assert!(gate.enabled_for.is_none());
}
