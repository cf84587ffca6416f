//! Shared by the integration tests: a real Gatehouse on port 0 in its own
//! actix System thread, and a raw XMPP client over a real TCP socket.
#![allow(dead_code)] // each test binary uses a different part of this

pub mod backend;
pub mod database;
pub mod poll;
pub mod roster_service;
pub mod server_process;
pub mod websocket;

use base64::Engine;
use bytes::BytesMut;
use gatehouse::config::Config;
use gatehouse_actors::xmpp::{StanzaLimits, StreamEvent, StreamParser};
use minidom::Element;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// The server's own namespaces; not every test binary uses each.
#[allow(unused_imports)]
pub use gatehouse_actors::xmpp::ns::{CLIENT, SASL, STREAMS};
#[allow(unused_imports)]
pub use poll::eventually;

/// How long a test waits for one thing from the server.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The workspace root, for fixture paths.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture auth program under tests/fixtures.
pub fn fixture(name: &str) -> String {
    root()
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A fresh empty directory under the system temp dir.
pub fn tempdir() -> PathBuf {
    use std::hash::{BuildHasher, RandomState};
    let unique = RandomState::new().hash_one(std::time::SystemTime::now());
    let dir =
        std::env::temp_dir().join(format!("gatehouse-test-{}-{unique:x}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The external auth section for the fixture backend.
pub fn fixture_auth(args: &str) -> String {
    format!(
        r#"
[auth]
backend = "external"
[auth.external]
command = ["python3", "{}" {args}]
processes = 2
"#,
        fixture("auth.py")
    )
}

/// Writes a CA certificate and a `localhost` certificate signed by it;
/// returns (ca, cert, key) paths.
pub fn make_certificates(dir: &Path) -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Gatehouse test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    (
        write("ca.pem", ca_cert.pem()),
        write("cert.pem", leaf.pem()),
        write("key.pem", leaf_key.serialize_pem()),
    )
}

/// A test config requiring STARTTLS with a fresh certificate; returns it
/// and the CA file a client should trust.
pub fn tls_config(auth_section: &str) -> (String, String) {
    with_tls(&config(auth_section))
}

/// Turns a test config (from [`config`]) into one requiring STARTTLS with
/// a fresh certificate; returns it and the CA file a client should trust.
pub fn with_tls(toml: &str) -> (String, String) {
    let dir = tempdir();
    let (ca, cert, key) = make_certificates(&dir);
    let toml = toml.replace(
        "require_tls = false",
        &format!("require_tls = true\ntls_cert = \"{cert}\"\ntls_key = \"{key}\""),
    );
    (toml, ca)
}

/// Adds a Direct TLS listener on any free port to a config from
/// [`with_tls`].
pub fn with_direct_tls(toml: &str) -> String {
    toml.replace(
        "require_tls = true",
        "require_tls = true\ndirect_tls_listen = \"127.0.0.1:0\"",
    )
}

/// A running server; dropping it shuts it down and waits.
pub struct TestServer {
    pub c2s: SocketAddr,
    /// The Direct TLS listener, when the config sets `direct_tls_listen`.
    pub direct_tls: Option<SocketAddr>,
    /// The web listener, when the config has a `[web]` section.
    pub web: Option<SocketAddr>,
    pub http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server from TOML text; listeners should use port 0.
    pub fn start(toml: &str) -> TestServer {
        let config = Config::parse(toml, Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("test config: {e}"));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = gatehouse::Server::bind(config)
                    .await
                    .unwrap_or_else(|e| panic!("server starts: {e}"));
                addr_tx
                    .send((
                        server.c2s_addr(),
                        server.direct_tls_addr(),
                        server.web_addr(),
                        server.http_addr(),
                    ))
                    .unwrap();
                server
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .expect("clean shutdown");
            });
        });
        let (c2s, direct_tls, web, http) = addr_rx.recv_timeout(PATIENCE).expect("server bound");
        TestServer {
            c2s,
            direct_tls,
            web,
            http,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Shuts down and waits until the server thread has finished.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("server thread");
        }
    }

    /// One scrape of `/metrics`.
    pub async fn metrics(&self) -> String {
        http_get(self.http, "/metrics").await
    }

    /// Scrapes until `ready` holds (metrics recorded just after a client
    /// got its answer, such as a restart, may lag it); panics after
    /// PATIENCE.
    pub async fn metrics_when(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        metrics_when(self.http, what, ready).await
    }

    /// Scrapes until `series` has grown by exactly `by` since `before`
    /// (an earlier scrape); returns that scrape.
    pub async fn grown(&self, before: &str, series: &str, by: f64) -> String {
        let start = sample(before, series);
        self.metrics_when(series, |m| sample(m, series) - start == by)
            .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Scrapes the operator listener `http` until `ready` holds; panics
/// after PATIENCE.
pub async fn metrics_when(http: SocketAddr, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let scrape = http_get(http, "/metrics").await;
        if ready(&scrape) {
            return scrape;
        }
        assert!(std::time::Instant::now() < deadline, "{what}:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// That `bytes` sent at once took `took` to be consumed by a server that
/// reads at `rate` bytes per second: at least what they take at the rate
/// beyond the `free` ones (the burst, and the debt of the last read, not
/// waited off), and not far more.
pub fn assert_held_to_the_rate(bytes: usize, free: usize, rate: usize, took: Duration) {
    let least = Duration::from_secs_f64((bytes - free) as f64 / rate as f64);
    assert!(
        took >= least,
        "{bytes} bytes consumed in {took:?}, faster than the rate ({least:?})"
    );
    assert!(
        took < least * 3,
        "{bytes} bytes consumed in {took:?}, far slower than the rate ({least:?})"
    );
}

/// A connection to `server` from the loopback address `from` (any of
/// 127.0.0.0/8: a client address of the test's own).
pub async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(server).await.unwrap()
}

/// Connects, opens a stream and tries SASL PLAIN; the failure condition
/// on refusal.
pub async fn try_login(server: &TestServer, user: &str, password: &str) -> Result<(), String> {
    let mut client = Client::connect(server.c2s).await;
    client.open("localhost").await;
    client.auth(user, password).await
}

/// A minimal HTTP/1.0 GET over a raw socket; returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_owned()
}

/// Scrapes the operator listener `http` until `series` is `value`; returns
/// that scrape. Panics after PATIENCE.
pub async fn metric_reaches(http: SocketAddr, series: &str, value: f64) -> String {
    metrics_when(http, series, |scrape| sample(scrape, series) == value).await
}

/// The sum of the samples in a Prometheus scrape whose name is `series`'s
/// and whose labels include all of `series`'s, e.g.
/// `gatehouse_logins_total{result="success"}` over every transport; 0 when
/// none is exported. (Label values holding a comma are not supported.)
pub fn sample(scrape: &str, series: &str) -> f64 {
    let (name, wanted) = split_series(series);
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (exported, value) = l.rsplit_once(' ')?;
            let (exported_name, labels) = split_series(exported);
            (exported_name == name && wanted.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `name{a="x",b="y"}` as the name and its `a="x"` pairs.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, labels)) => (
            name,
            labels
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .collect(),
        ),
        None => (series, Vec::new()),
    }
}

/// A config for tests: plain TCP allowed, listeners on port 0.
pub fn config(auth_section: &str) -> String {
    format!(
        r#"
hosts = ["localhost"]
[c2s]
listen = "127.0.0.1:0"
require_tls = false
[http]
listen = "127.0.0.1:0"
{auth_section}
"#
    )
}

/// The auth fixture plus a `[roster]` section fetching from `url`, and any
/// `extra` TOML after it.
pub fn roster_auth(url: &str, extra: &str) -> String {
    format!("{}\n[roster]\nurl = \"{url}\"\n{extra}\n", fixture_auth(""))
}

/// A raw XMPP client over a real socket.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    parser: StreamParser,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client::over(TcpStream::connect(addr).await.expect("connect"))
    }

    /// A client on a connection made elsewhere (from a chosen address).
    pub fn over(stream: TcpStream) -> Client {
        Client {
            stream,
            buf: BytesMut::new(),
            // The server's output, not a client's: no limits but size.
            parser: StreamParser::new(
                StanzaLimits {
                    max_bytes: 1 << 20,
                    max_elements: usize::MAX,
                    max_attributes: usize::MAX,
                },
                None,
            ),
        }
    }

    pub async fn send(&mut self, data: &str) {
        self.stream.write_all(data.as_bytes()).await.expect("write");
    }

    pub async fn send_bytes(&mut self, data: &[u8]) {
        self.stream.write_all(data).await.expect("write");
    }

    /// The socket, for a test that reads or writes it on its own from now
    /// on (whatever was read but not yet parsed is dropped).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// The next stream-level event from the server; `None` on EOF.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        loop {
            if let Some(ev) = self
                .parser
                .next_event(&mut self.buf)
                .expect("server sends valid XML")
            {
                return Some(ev);
            }
            let n = tokio::time::timeout(PATIENCE, self.stream.read_buf(&mut self.buf))
                .await
                .expect("server answered in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Whether the server sends no complete element within `wait`: for
    /// checking that something is held back (it cannot fail when it is).
    pub async fn silent_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.next()).await.is_err()
    }

    /// The next top-level element; panics on anything else.
    pub async fn element(&mut self) -> Element {
        match self.next().await {
            Some(StreamEvent::Element(el)) => el,
            other => panic!("expected an element, got {other:?}"),
        }
    }

    /// Sends a stream header and returns the features.
    pub async fn open(&mut self, host: &str) -> Element {
        self.parser.reset();
        self.send(&format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='{STREAMS}' to='{host}' version='1.0'>"
        ))
        .await;
        match self.next().await {
            Some(StreamEvent::Open(_)) => {}
            other => panic!("expected a stream header, got {other:?}"),
        }
        let features = self.element().await;
        assert!(features.is("features", STREAMS), "{features:?}");
        features
    }

    /// SASL PLAIN; returns `Ok(())` or the failure condition.
    pub async fn auth(&mut self, user: &str, password: &str) -> Result<(), String> {
        let payload =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='{SASL}' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        let answer = self.element().await;
        if answer.is("success", SASL) {
            return Ok(());
        }
        assert!(answer.is("failure", SASL), "{answer:?}");
        Err(answer
            .children()
            .next()
            .map(|c| c.name().to_owned())
            .unwrap_or_default())
    }

    /// Opens, authenticates and restarts; returns the client and the
    /// features after the restart (binding, stream management).
    pub async fn authenticated(addr: SocketAddr, user: &str, password: &str) -> (Client, Element) {
        let mut client = Client::connect(addr).await;
        client.open("localhost").await;
        client.auth(user, password).await.expect("login succeeds");
        let features = client.open("localhost").await;
        (client, features)
    }

    /// Opens, authenticates, restarts and binds; returns the full JID.
    pub async fn login(
        addr: SocketAddr,
        user: &str,
        password: &str,
        resource: &str,
    ) -> (Client, String) {
        let (mut client, _) = Client::authenticated(addr, user, password).await;
        let jid = client.bind(resource).await;
        (client, jid)
    }

    /// Sends a roster get (with `ver` if given) and returns the answer.
    pub async fn roster(&mut self, ver: Option<&str>) -> Element {
        let ver = ver.map(|v| format!(" ver='{v}'")).unwrap_or_default();
        self.send(&format!(
            "<iq type='get' id='roster'><query xmlns='jabber:iq:roster'{ver}/></iq>"
        ))
        .await;
        self.element().await
    }

    /// Sends a ping and expects its result: the session is still up.
    pub async fn answers_ping(&mut self) {
        self.send("<iq type='get' id='alive'><ping xmlns='urn:xmpp:ping'/></iq>")
            .await;
        let answer = self.element().await;
        assert_eq!(answer.attr("id"), Some("alive"), "{answer:?}");
        assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    }

    pub async fn bind(&mut self, resource: &str) -> String {
        self.send(&format!(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let reply = self.element().await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
        reply
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .expect("bound JID")
    }

    /// Reads until a stream error; returns its condition, then expects the
    /// stream end and EOF.
    pub async fn stream_error(&mut self) -> String {
        loop {
            match self.next().await {
                Some(StreamEvent::Element(el)) if el.is("error", STREAMS) => {
                    let condition = el
                        .children()
                        .next()
                        .map(|c| c.name().to_owned())
                        .unwrap_or_default();
                    assert_eq!(self.next().await, Some(StreamEvent::Close));
                    assert_eq!(
                        self.next().await,
                        None,
                        "connection closed after the stream error"
                    );
                    return condition;
                }
                Some(StreamEvent::Open(_)) | Some(StreamEvent::Element(_)) => continue,
                other => panic!("expected a stream error, got {other:?}"),
            }
        }
    }
}

/// Runs an interop script under tests/interop with `args`; panics with its
/// output unless it exits 0 and prints `interop ok`. Returns its stdout.
pub async fn run_interop(script: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new("python3")
        .arg(root().join("tests/interop").join(script))
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("interop ok"), "{stdout}");
    stdout
}
