//! Shared by the MUC tests: a real HTTP join gate on port 0 (plain or
//! HTTPS with a self-signed certificate) that records every request, the
//! MUC config section, and joining a room with the raw test client.
#![allow(dead_code)] // each test binary uses a different part of this

use crate::common::*;
use minidom::Element;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

pub const MUC: &str = "rooms.localhost";
// The server's own namespaces; not every test binary uses each.
#[allow(unused_imports)]
pub use gatehouse_actors::muc::{NS_MUC, NS_MUC_USER};
#[allow(unused_imports)]
pub use gatehouse_actors::xmpp::ns::STANZA_ERRORS;

/// The test server config with a `[muc]` section; `extra` goes at its end
/// (more `[muc]` keys, then e.g. a `[muc.http_auth]` table).
pub fn muc_config(extra: &str) -> String {
    format!(
        "{}\n[muc]\ndomain = \"{MUC}\"\n{extra}\n",
        config(&fixture_auth(""))
    )
}

/// One request the gate received.
#[derive(Debug, Clone)]
pub struct GateRequest {
    /// Path and query, exactly as sent.
    pub target: String,
    /// Header names in lowercase.
    pub headers: HashMap<String, String>,
    /// The decoded query parameters.
    pub params: HashMap<String, String>,
    /// Responses the gate had written when this request arrived, to tell
    /// which requests overlapped.
    pub answered_before: usize,
}

/// What the gate does with a request.
pub enum Reply {
    /// Answers with this status and body.
    Status(u16, String),
    /// Answers `302 Found` to this location.
    Redirect(String),
    /// Answers with status 200 and this body after a while.
    After(Duration, String),
    /// Answers with status 200 and this body once the test calls
    /// `Gate::release`, so that it can order what happens meanwhile.
    Held(String),
    /// Never answers.
    Hang,
}

impl Reply {
    pub fn json(body: &str) -> Reply {
        Reply::Status(200, body.to_owned())
    }
}

/// A running gate. Its tasks end with the test's runtime.
pub struct Gate {
    /// Where the gate listens, with the path `/check`.
    pub url: String,
    /// Every request received, in order.
    requests: Arc<Mutex<Vec<GateRequest>>>,
    /// Responses written so far.
    answered: Arc<AtomicUsize>,
    /// One permit per `Reply::Held` answer the test released.
    held: Arc<tokio::sync::Semaphore>,
}

impl Gate {
    /// A plain-HTTP gate deciding with `policy`.
    pub async fn start(policy: impl Fn(&GateRequest) -> Reply + Send + Sync + 'static) -> Gate {
        Gate::serve(None, policy).await
    }

    /// An HTTPS gate with a fresh self-signed `localhost` certificate.
    pub async fn start_tls(policy: impl Fn(&GateRequest) -> Reply + Send + Sync + 'static) -> Gate {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        Gate::serve(
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            policy,
        )
        .await
    }

    async fn serve(
        tls: Option<tokio_rustls::TlsAcceptor>,
        policy: impl Fn(&GateRequest) -> Reply + Send + Sync + 'static,
    ) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let answered = Arc::new(AtomicUsize::new(0));
        let counted = answered.clone();
        let held = Arc::new(tokio::sync::Semaphore::new(0));
        let releases = held.clone();
        let policy = Arc::new(policy);
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let (recorded, policy, tls) = (recorded.clone(), policy.clone(), tls.clone());
                let (counted, releases) = (counted.clone(), releases.clone());
                tokio::spawn(async move {
                    let answered = Answered {
                        count: &counted,
                        releases: &releases,
                    };
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(socket).await {
                                answer(stream, &recorded, &*policy, answered).await;
                            }
                        }
                        None => answer(socket, &recorded, &*policy, answered).await,
                    }
                });
            }
        });
        Gate {
            url: format!("{scheme}://127.0.0.1:{port}/check"),
            requests,
            answered,
            held,
        }
    }

    /// Lets one `Reply::Held` answer go.
    pub fn release(&self) {
        self.held.add_permits(1);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<GateRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until the gate has written `n` responses.
    pub async fn answered(&self, n: usize) {
        eventually("the gate to answer enough requests", PATIENCE, || {
            self.answered.load(Ordering::SeqCst) >= n
        })
        .await;
    }

    /// Waits until the gate has received `n` requests.
    pub async fn received(&self, n: usize) {
        eventually("the gate to receive enough requests", PATIENCE, || {
            self.requests.lock().unwrap().len() >= n
        })
        .await;
    }
}

/// A gate URL on which nothing listens: connections are refused.
pub fn refused_url() -> String {
    format!("http://{}/check", crate::common::backend::closed_address())
}

/// Logs `user` in with resource `r`.
pub async fn login(server: &TestServer, user: &str, password: &str) -> Client {
    Client::login(server.c2s, user, password, "r").await.0
}

/// The gate's shared answering state, for one connection.
#[derive(Clone, Copy)]
struct Answered<'a> {
    /// Responses written so far.
    count: &'a AtomicUsize,
    /// Released `Reply::Held` answers.
    releases: &'a tokio::sync::Semaphore,
}

/// Reads one request head, records it, answers per `policy`, and counts
/// the response once written.
async fn answer<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    mut stream: S,
    recorded: &Mutex<Vec<GateRequest>>,
    policy: &(dyn Fn(&GateRequest) -> Reply + Send + Sync),
    answered: Answered<'_>,
) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or_default()
        .to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let params = url::Url::parse(&format!("http://gate{target}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let request = GateRequest {
        target,
        headers,
        params,
        answered_before: answered.count.load(Ordering::SeqCst),
    };
    recorded.lock().unwrap().push(request.clone());
    // Set by a redirect only.
    let mut location_header = String::new();
    let (status, body) = match policy(&request) {
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        Reply::After(delay, body) => {
            tokio::time::sleep(delay).await;
            (200, body)
        }
        Reply::Held(body) => {
            answered
                .releases
                .acquire()
                .await
                .expect("never closed")
                .forget();
            (200, body)
        }
        Reply::Status(status, body) => (status, body),
        Reply::Redirect(location) => {
            location_header = format!("Location: {location}\r\n");
            (302, String::new())
        }
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{location_header}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        answered.count.fetch_add(1, Ordering::SeqCst);
    }
    let _ = stream.shutdown().await;
}

/// Sends a join and reads until it completes (the subject message) or
/// fails. Returns every stanza received, or the error condition.
pub async fn join(c: &mut Client, room: &str, nick: &str) -> Result<Vec<Element>, String> {
    c.send(&format!(
        "<presence to='{room}@{MUC}/{nick}'><x xmlns='{NS_MUC}'/></presence>"
    ))
    .await;
    let mut got = Vec::new();
    loop {
        let el = c.element().await;
        if el.is("presence", CLIENT) && el.attr("type") == Some("error") {
            return Err(condition(&el));
        }
        // The subject message (a subject, no body) ends the join.
        let done = el.is("message", CLIENT)
            && el.get_child("subject", CLIENT).is_some()
            && el.get_child("body", CLIENT).is_none();
        got.push(el);
        if done {
            return Ok(got);
        }
    }
}

/// The defined condition of an error stanza.
pub fn condition(el: &Element) -> String {
    el.get_child("error", CLIENT)
        .and_then(|e| e.children().find(|c| c.ns() == STANZA_ERRORS))
        .map(|c| c.name().to_owned())
        .unwrap_or_default()
}

/// The error `type` of an error stanza.
pub fn error_type(el: &Element) -> String {
    el.get_child("error", CLIENT)
        .and_then(|e| e.attr("type"))
        .unwrap_or_default()
        .to_owned()
}

/// Status codes in a presence's `muc#user` payload.
pub fn codes(el: &Element) -> Vec<String> {
    el.get_child("x", NS_MUC_USER)
        .map(|x| {
            x.children()
                .filter(|c| c.is("status", NS_MUC_USER))
                .filter_map(|c| c.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads until an element matching `wanted`; panics after a patience
/// timeout in the client.
pub async fn until(c: &mut Client, wanted: impl Fn(&Element) -> bool) -> Element {
    loop {
        let el = c.element().await;
        if wanted(&el) {
            return el;
        }
    }
}

/// The rooms the service lists.
pub async fn disco_items(c: &mut Client) -> Vec<String> {
    c.send(&format!(
        "<iq type='get' id='d' to='{MUC}'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
    ))
    .await;
    let reply = until(c, |el| el.is("iq", CLIENT)).await;
    reply
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap()
        .children()
        .map(|i| i.attr("jid").unwrap().to_owned())
        .collect()
}

/// Polls the service's room list until `wanted` holds.
pub async fn rooms_until(c: &mut Client, wanted: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let rooms = disco_items(c).await;
        if wanted(&rooms) {
            return rooms;
        }
        assert!(std::time::Instant::now() < deadline, "rooms: {rooms:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
