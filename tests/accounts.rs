//! XEP-0077 through the auth backends: in-band registration, password
//! change and account removal, offered only when allowed and supported;
//! slixmpp interop; and the `gatehouse user` operator command.

mod common;

use common::backend::Backend;
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

const REGISTER: &str = "jabber:iq:register";
const REGISTER_FEATURE: &str = "http://jabber.org/features/iq-register";

fn http(backend: &Backend, flags: &str) -> String {
    config(&format!(
        "[auth]\nbackend = \"http\"\n{flags}\n[auth.http]\nurl = \"{}\"\n",
        backend.url()
    ))
}

/// One process: the fixture keeps its user table per process.
fn ejabberd(flags: &str) -> String {
    config(
        &fixture_auth(r#", "--protocol", "ejabberd""#)
            .replace(
                "[auth.external]",
                &format!("{flags}\n[auth.external]\nprotocol = \"ejabberd\""),
            )
            .replace("processes = 2", "processes = 1"),
    )
}

fn stanza_condition(el: &minidom::Element) -> Option<String> {
    el.get_child("error", CLIENT)
        .and_then(|e| e.children().next())
        .map(|c| c.name().to_owned())
}

async fn register(server: &TestServer, user: &str, password: &str) -> Result<(), String> {
    let mut c = Client::connect(server.c2s).await;
    let features = c.open("localhost").await;
    assert!(
        features.has_child("register", REGISTER_FEATURE),
        "registration offered"
    );
    c.send(&format!(
        "<iq type='get' id='f'><query xmlns='{REGISTER}'/></iq>"
    ))
    .await;
    let form = c.element().await;
    assert!(form
        .get_child("query", REGISTER)
        .unwrap()
        .has_child("password", REGISTER));
    c.send(&format!(
        "<iq type='set' id='r'><query xmlns='{REGISTER}'><username>{user}</username>\
         <password>{password}</password></query></iq>"
    ))
    .await;
    let answer = c.element().await;
    assert!(answer.is("iq", CLIENT), "{answer:?}");
    match stanza_condition(&answer) {
        None => Ok(()),
        Some(condition) => Err(condition),
    }
}

#[actix_rt::test]
async fn register_change_password_and_remove_through_both_backends() {
    let backend = Backend::start(&[("alice", &["wonderland"])]);
    let flags = "allow_registration = true\nallow_account_removal = true";
    for toml in [http(&backend, flags), ejabberd(flags)] {
        let server = TestServer::start(&toml);
        assert_eq!(
            register(&server, "dave", "d4ve&amp;&lt;pw&gt;").await,
            Ok(())
        );
        assert_eq!(
            register(&server, "dave", "other").await,
            Err("conflict".into())
        );
        assert_eq!(
            register(&server, "alice", "x").await,
            Err("conflict".into())
        );
        let (mut dave, _) = Client::login(server.c2s, "dave", "d4ve&<pw>", "r").await;
        // Password change.
        dave.send(&format!(
            "<iq type='set' id='p'><query xmlns='{REGISTER}'><username>dave</username>\
             <password>n3w</password></query></iq>"
        ))
        .await;
        assert_eq!(stanza_condition(&dave.element().await), None);
        let (_again, _) = Client::login(server.c2s, "dave", "n3w", "r2").await;
        // Removal ends the stream; the account is gone.
        dave.send(&format!(
            "<iq type='set' id='x'><query xmlns='{REGISTER}'><remove/></query></iq>"
        ))
        .await;
        assert_eq!(stanza_condition(&dave.element().await), None);
        assert_eq!(
            dave.next().await,
            Some(gatehouse_actors::xmpp::StreamEvent::Close)
        );
        let mut c = Client::connect(server.c2s).await;
        c.open("localhost").await;
        assert_eq!(c.auth("dave", "n3w").await, Err("not-authorized".into()));
    }
    let scrape_requests = backend.requests();
    assert!(scrape_requests.iter().any(|r| r.path == "/api/register"));
    assert!(scrape_requests.iter().any(|r| r.path == "/api/remove_user"));
}

#[actix_rt::test]
async fn nothing_is_offered_unless_allowed_and_supported() {
    // Default config: registration and removal off; generic protocol has no
    // tryregister anyway.
    let server = TestServer::start(&config(&fixture_auth("")));
    let mut c = Client::connect(server.c2s).await;
    assert!(!c
        .open("localhost")
        .await
        .has_child("register", REGISTER_FEATURE));
    c.send(&format!(
        "<iq type='get' id='f'><query xmlns='{REGISTER}'/></iq>"
    ))
    .await;
    assert_eq!(c.stream_error().await, "not-authorized");
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    alice
        .send(&format!(
            "<iq type='set' id='x'><query xmlns='{REGISTER}'><remove/></query></iq>"
        ))
        .await;
    assert_eq!(
        stanza_condition(&alice.element().await).as_deref(),
        Some("not-allowed")
    );
    // Allowed in the config but the generic protocol cannot register.
    let server = TestServer::start(&config(&fixture_auth("").replace(
        "[auth.external]",
        "allow_registration = true\n[auth.external]",
    )));
    let mut c = Client::connect(server.c2s).await;
    assert!(!c
        .open("localhost")
        .await
        .has_child("register", REGISTER_FEATURE));
}

#[actix_rt::test]
async fn slixmpp_registers_changes_its_password_and_logs_in_again() {
    let backend = Backend::start(&[]);
    let (toml, ca) = tls_config(&format!(
        "[auth]\nbackend = \"http\"\nallow_registration = true\n[auth.http]\nurl = \"{}\"\n",
        backend.url()
    ));
    let server = TestServer::start(&toml);
    let port = server.c2s.port().to_string();
    run_interop("slix_register.py", &["--port", &port, "--ca", &ca]).await;
    assert_eq!(
        backend.passwords("carol"),
        Some(vec!["second pass: ü&=".to_owned()])
    );
    assert_eq!(backend.count("/api/set_password"), 1);
}

/// Runs `gatehouse user ACTION JID` with `password` on stdin.
fn user_command(
    config_path: &std::path::Path,
    action: &str,
    jid: &str,
    password: &str,
) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["user", "--config"])
        .arg(config_path)
        .args([action, jid])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_user_command_talks_to_the_backend() {
    let backend = Backend::start(&[]);
    let dir = tempdir();
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, http(&backend, "")).unwrap();
    assert_eq!(user_command(&path, "add", "erin@localhost", "pw one").0, 0);
    assert_eq!(user_command(&path, "add", "erin@localhost", "again").0, 1);
    assert_eq!(
        user_command(&path, "check", "erin@localhost", "pw one").0,
        0
    );
    assert_eq!(user_command(&path, "check", "erin@localhost", "wrong").0, 1);
    assert_eq!(
        user_command(&path, "passwd", "erin@localhost", "pw two").0,
        0
    );
    assert_eq!(backend.passwords("erin"), Some(vec!["pw two".to_owned()]));
    assert_eq!(user_command(&path, "remove", "erin@localhost", "").0, 0);
    assert_eq!(backend.passwords("erin"), None);
    let (code, text) = user_command(&path, "add", "erin@elsewhere", "x");
    assert_eq!(code, 2, "{text}");
    assert!(!text.contains("pw one"));
}

#[test]
fn the_user_command_refuses_what_the_generic_protocol_lacks() {
    let dir = tempdir();
    let record = dir.join("requests.log");
    let path = dir.join("gatehouse.toml");
    let flags = format!(r#", "--record", "{}""#, record.display());
    std::fs::write(&path, config(&fixture_auth(&flags))).unwrap();
    for action in ["add", "remove"] {
        let (code, text) = user_command(&path, action, "erin@localhost", "S3cret-pw");
        assert_eq!(code, 2, "{action}: {text}");
        assert!(text.contains("not support"), "{action}: {text}");
        assert!(!text.contains("S3cret-pw"), "{action}: {text}");
    }
    let (code, text) = user_command(&path, "check", "alice@localhost", "wonderland");
    assert_eq!(code, 0, "{text}");
    // Only the check ever reached the process.
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert_eq!(recorded.lines().count(), 1, "{recorded}");
}
