//! XEP-0077 through the auth backends: in-band registration, password
//! change and account removal, offered only when allowed and supported;
//! slixmpp interop; and the `gatehouse user` operator command.

mod common;

use common::backend::{closed_address, Backend, Mode};
use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

use gatehouse_actors::xmpp::ns::{DISCO_INFO, REGISTER, REGISTER_FEATURE};

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

/// Sends an account IQ (`jabber:iq:register` set with `payload`); the
/// error condition of the answer, if any.
async fn account_set(client: &mut Client, payload: &str) -> Option<String> {
    client
        .send(&format!(
            "<iq type='set' id='a'><query xmlns='{REGISTER}'>{payload}</query></iq>"
        ))
        .await;
    stanza_condition(&client.element().await)
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
        let change = "<username>dave</username><password>n3w</password>";
        assert_eq!(account_set(&mut dave, change).await, None);
        let (_again, _) = Client::login(server.c2s, "dave", "n3w", "r2").await;
        // Removal ends the stream; the account is gone.
        assert_eq!(account_set(&mut dave, "<remove/>").await, None);
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
    assert_eq!(
        account_set(&mut alice, "<remove/>").await.as_deref(),
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

/// Sends a ping to the server and returns the next element: the ping's
/// answer only if nothing was sent before it.
async fn next_after_ping(client: &mut Client) -> minidom::Element {
    client
        .send("<iq type='get' id='ping'><ping xmlns='urn:xmpp:ping'/></iq>")
        .await;
    client.element().await
}

#[actix_rt::test]
async fn results_and_errors_are_neither_acted_on_nor_answered() {
    let server = TestServer::start(&ejabberd("allow_account_removal = true"));
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    for kind in ["result", "error"] {
        alice
            .send(&format!(
                "<iq type='{kind}' id='x'><query xmlns='{REGISTER}'><remove/></query></iq>\
                 <iq type='{kind}' id='y'><query xmlns='{REGISTER}'>\
                 <username>alice</username><password>n3w</password></query></iq>"
            ))
            .await;
        let answer = next_after_ping(&mut alice).await;
        assert_eq!(answer.attr("id"), Some("ping"), "{kind}: {answer:?}");
        assert_eq!(answer.attr("type"), Some("result"), "{kind}: {answer:?}");
    }
    // Neither removed nor changed: the old password still logs in.
    let (_again, _) = Client::login(server.c2s, "alice", "wonderland", "r2").await;
}

/// Logs alice in to a server started from `toml` and sends her account
/// get; the answer.
async fn account_get(toml: &str) -> minidom::Element {
    let server = TestServer::start(toml);
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    alice
        .send(&format!(
            "<iq type='get' id='g'><query xmlns='{REGISTER}'/></iq>"
        ))
        .await;
    let answer = alice.element().await;
    assert_eq!(answer.attr("id"), Some("g"), "{answer:?}");
    answer
}

#[actix_rt::test]
async fn an_account_get_with_nothing_offered_is_service_unavailable() {
    // The generic protocol cannot register; removal is off by default.
    let nothing = config(&fixture_auth("").replace(
        "[auth.external]",
        "allow_password_change = false\n[auth.external]",
    ));
    let answer = account_get(&nothing).await;
    assert_eq!(
        stanza_condition(&answer).as_deref(),
        Some("service-unavailable"),
        "{answer:?}"
    );
    // With something offered (password change, the default), a get says
    // what is registered.
    let answer = account_get(&config(&fixture_auth(""))).await;
    let query = answer.get_child("query", REGISTER).expect("an answer");
    assert!(query.has_child("registered", REGISTER), "{answer:?}");
}

#[actix_rt::test]
async fn a_501_reaches_the_client_as_feature_not_implemented() {
    let backend = Backend::start(&[("alice", &["wonderland"])]);
    for method in ["register", "set_password", "remove_user"] {
        backend.set_mode_for(method, Mode::Fixed(501, ""));
    }
    let server = TestServer::start(&http(
        &backend,
        "allow_registration = true\nallow_account_removal = true",
    ));
    assert_eq!(
        register(&server, "dave", "pw").await,
        Err("feature-not-implemented".into())
    );
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    let change = "<username>alice</username><password>n3w</password>";
    assert_eq!(
        account_set(&mut alice, change).await.as_deref(),
        Some("feature-not-implemented"),
        "password change"
    );
    assert_eq!(
        account_set(&mut alice, "<remove/>").await.as_deref(),
        Some("feature-not-implemented"),
        "removal"
    );
    for method in ["register", "set_password", "remove_user"] {
        assert_eq!(backend.count(&format!("/api/{method}")), 1, "{method}");
    }
    assert_eq!(backend.passwords("alice"), Some(vec!["wonderland".into()]));
}

/// Whether `jabber:iq:register` is offered as a stream feature before
/// login, and in the server's disco#info after it.
async fn register_advertised(toml: &str) -> (bool, bool) {
    let server = TestServer::start(toml);
    let mut c = Client::connect(server.c2s).await;
    let feature = c
        .open("localhost")
        .await
        .has_child("register", REGISTER_FEATURE);
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    alice
        .send(&format!(
            "<iq type='get' id='d' to='localhost'><query xmlns='{DISCO_INFO}'/></iq>"
        ))
        .await;
    let info = alice.element().await;
    let query = info.get_child("query", DISCO_INFO).expect("disco#info");
    let disco = query
        .children()
        .any(|f| f.is("feature", DISCO_INFO) && f.attr("var") == Some(REGISTER));
    (feature, disco)
}

#[actix_rt::test]
async fn registration_is_advertised_as_configured() {
    let backend = Backend::start(&[("alice", &["wonderland"])]);
    // (backend, flags, stream feature, disco feature)
    let cases = [
        // Password change is on by default, so disco lists the namespace.
        (http(&backend, ""), false, true),
        (
            http(&backend, "allow_password_change = false"),
            false,
            false,
        ),
        (http(&backend, "allow_registration = true"), true, true),
        (
            http(
                &backend,
                "allow_password_change = false\nallow_account_removal = true",
            ),
            false,
            true,
        ),
        (
            http(
                &backend,
                "allow_password_change = false\nallow_registration = true",
            ),
            true,
            true,
        ),
        // The generic protocol can change passwords, never register.
        (config(&fixture_auth("")), false, true),
        (
            config(&fixture_auth("").replace(
                "[auth.external]",
                "allow_registration = true\nallow_password_change = false\n[auth.external]",
            )),
            false,
            false,
        ),
        (ejabberd("allow_registration = true"), true, true),
    ];
    for (toml, feature, disco) in cases {
        assert_eq!(register_advertised(&toml).await, (feature, disco), "{toml}");
    }
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
    user_command_with_stdin(config_path, action, jid, format!("{password}\n").as_bytes())
}

/// Runs `gatehouse user ACTION JID` with exactly `stdin` as its input.
fn user_command_with_stdin(
    config_path: &std::path::Path,
    action: &str,
    jid: &str,
    stdin: &[u8],
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
    // `remove` and `exists` read no password and may exit before the
    // input is written.
    if let Err(error) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(error.kind(), std::io::ErrorKind::BrokenPipe, "{error}");
    }
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
    assert_eq!(user_command(&path, "exists", "erin@localhost", "").0, 1);
    assert_eq!(user_command(&path, "add", "erin@localhost", "pw one").0, 0);
    let (code, text) = user_command(&path, "exists", "erin@localhost", "");
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("erin@localhost: exists"), "{text}");
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
    assert_eq!(user_command(&path, "exists", "erin@localhost", "").0, 1);
    assert_eq!(backend.count("/api/user_exists"), 3);
    let (code, text) = user_command(&path, "add", "erin@elsewhere", "x");
    assert_eq!(code, 2, "{text}");
    assert!(!text.contains("pw one"));
    // Unsupported (501) is the operator's input problem: 2.
    backend.set_mode(Mode::Fixed(501, ""));
    for action in ["add", "passwd", "remove", "exists"] {
        let (code, text) = user_command(&path, action, "erin@localhost", "pw");
        assert_eq!(code, 2, "{action}: {text}");
        assert!(text.contains("does not support"), "{action}: {text}");
    }
}

#[test]
fn the_user_command_refuses_an_empty_password_before_asking_the_backend() {
    let backend = Backend::start(&[("erin", &["pw"])]);
    let dir = tempdir();
    let path = dir.join("gatehouse.toml");
    std::fs::write(&path, http(&backend, "")).unwrap();
    for action in ["add", "passwd", "check"] {
        for stdin in [&b""[..], b"\n", b"\r\n"] {
            let (code, text) = user_command_with_stdin(&path, action, "erin@localhost", stdin);
            assert_eq!(code, 2, "{action} {stdin:?}: {text}");
            assert!(text.contains("password is empty"), "{action}: {text}");
        }
    }
    assert!(backend.requests().is_empty(), "{:?}", backend.requests());
    assert_eq!(backend.passwords("erin"), Some(vec!["pw".to_owned()]));
}

#[test]
fn the_user_command_exits_3_when_the_backend_is_down_and_2_on_a_bad_ca_file() {
    let closed = closed_address();
    let dir = tempdir();
    let path = dir.join("gatehouse.toml");
    let section = |extra: &str| {
        config(&format!(
            "[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"http://{closed}/api\"\n\
             timeout = \"2s\"\n{extra}\n"
        ))
    };
    std::fs::write(&path, section("")).unwrap();
    for action in ["check", "exists"] {
        let (code, text) = user_command(&path, action, "erin@localhost", "pw");
        assert_eq!(code, 3, "{action}: {text}");
    }
    // A CA file that cannot be read (a directory), or whose PEM is broken,
    // is a config problem, reported before any backend is asked.
    let broken = dir.join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for ca in [dir.display().to_string(), broken.display().to_string()] {
        std::fs::write(&path, section(&format!("ca_file = \"{ca}\""))).unwrap();
        let (code, text) = user_command(&path, "check", "erin@localhost", "pw");
        assert_eq!(code, 2, "{ca}: {text}");
        assert!(text.contains("auth.http.ca_file"), "{ca}: {text}");
    }
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
    // The generic protocol has isuser.
    assert_eq!(user_command(&path, "exists", "alice@localhost", "").0, 0);
    assert_eq!(user_command(&path, "exists", "erin@localhost", "").0, 1);
    // Only the check and the two isuser ever reached the process.
    let recorded = std::fs::read_to_string(&record).unwrap();
    assert_eq!(recorded.lines().count(), 3, "{recorded}");
}
