//! BOSH (XEP-0124) carrying the XMPP stream (XEP-0206): every element goes
//! out inside a `<body/>` POSTed to `http://TARGET/http-bind`, numbered by
//! the session's next `rid`, and comes back inside the `<body/>` answering
//! some request. The session is created with `hold='1'`, as browsers do:
//! the server keeps one request outstanding to carry what it says later.
//!
//! The HTTP/1.1 client is a minimal one written here over one keep-alive
//! [`TcpStream`] rather than hyper's: the login only ever needs one request
//! at a time on one connection, with a `Content-Length` both ways, and a
//! few dozen lines of formatting and header scanning cost the generator
//! far less CPU per login than a general client's machinery (the generator
//! must stay cheaper than the server it drives). A chunked or
//! length-less answer is a failed login.
//!
//! At most one request is outstanding on the connection: [`send`] first
//! reads the answer of the one before, and [`receive`] sends an empty body
//! when none is outstanding, which the server holds until it has something
//! to say. A held session keeps exactly that one empty request outstanding
//! (answered every `wait` seconds and renewed), and terminates on a second
//! connection, as a browser would: the held request blocks the first.
//!
//! The bodies' contents are appended to the same buffer as on TCP and
//! scanned for the same markers, so the login and its outcomes are the
//! other transports'. A `<body type='terminate'/>` is the server ending
//! the stream: a reset, or, with a `condition` other than
//! `remote-stream-error` (whose stream error is among its children), the
//! session refused, a failure.
//!
//! [`send`]: ClientStream::send
//! [`receive`]: ClientStream::receive

use super::{features, tcp, ClientStream};
use crate::client::{Outcome, Stop, Target};
use crate::markup::attribute;
use memchr::memmem;
use std::fmt::Write as _;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the server serves BOSH.
const PATH: &str = "/http-bind";

/// The namespaces of `<body/>` (XEP-0124) and of its XMPP attributes
/// (XEP-0206).
const HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const XBOSH: &str = "urn:xmpp:xbosh";

/// How long the server may hold a request (`wait`, in seconds): long, so
/// that a held session costs the server one answer a minute, not more.
const WAIT_SECONDS: u32 = 60;

/// The first request's `rid`. XEP-0124 §14 asks for a random one so that
/// rids are hard to guess; a server under test does not care, and a
/// constant keeps the generator free of a random source.
const FIRST_RID: u64 = 1_000_000;

/// The most bytes of headers one answer may have: anything longer is no
/// BOSH answer this client understands.
const MAX_HEADER_BYTES: usize = 8192;

/// The attributes that restart the stream after SASL (XEP-0206 §5).
const RESTART: &str = " xmpp:restart='true' xmlns:xmpp='urn:xmpp:xbosh'";

/// The session creation body's attributes for `domain` (`to`, `wait`,
/// `hold`, XEP-0206's version), rendered once per run (see [`Target`]);
/// [`Bosh::post`] adds the rid.
pub(crate) fn creation_attributes(domain: &str) -> String {
    format!(
        " to='{domain}' xml:lang='en' wait='{WAIT_SECONDS}' hold='1' ver='1.6' \
         xmlns:xmpp='{XBOSH}' xmpp:version='1.0'"
    )
}

/// Connects over TCP; the session is created by the first
/// [`open`](ClientStream::open).
pub(crate) async fn connect(target: &Target) -> Result<Bosh<'_>, Stop> {
    Ok(Bosh {
        socket: tcp::socket(target).await?,
        target,
        sid: None,
        rid: FIRST_RID,
        outstanding: false,
        ended: false,
        response: Vec::with_capacity(1024),
        replies: Vec::with_capacity(1024),
    })
}

/// One BOSH session over one keep-alive HTTP/1.1 connection.
pub(crate) struct Bosh<'t> {
    socket: TcpStream,
    /// The server's address (the `Host` header) and the creation body's
    /// attributes (its `opening`, from [`creation_attributes`]).
    target: &'t Target,
    /// The session's id, from the creation answer.
    sid: Option<String>,
    /// The next request's `rid`.
    rid: u64,
    /// Whether a request was (or was being) sent whose answer was not
    /// read yet.
    outstanding: bool,
    /// The server terminated the session: nothing more will come.
    ended: bool,
    /// The answer being read: headers and body, as they arrive.
    response: Vec<u8>,
    /// The bodies' contents no marker has consumed yet.
    replies: Vec<u8>,
}

impl Bosh<'_> {
    /// Sends one request with `attributes` (each with a leading space)
    /// besides the rid, sid and namespace, and `elements` as its children.
    async fn post(&mut self, attributes: &str, elements: &[&str]) -> Result<(), Stop> {
        if self.outstanding {
            self.answer().await?;
        }
        let mut body = format!("<body rid='{}' xmlns='{HTTPBIND}'", self.rid);
        if let Some(sid) = &self.sid {
            let _ = write!(body, " sid='{sid}'");
        }
        body.push_str(attributes);
        if elements.is_empty() {
            body.push_str("/>");
        } else {
            body.push('>');
            elements.iter().for_each(|element| body.push_str(element));
            body.push_str("</body>");
        }
        self.rid += 1;
        let request = request(self.target.addr, &body);
        // Set before writing: a write cut short (a held session released
        // meanwhile) leaves the connection as unusable as a request sent.
        self.outstanding = true;
        self.socket.write_all(request.as_bytes()).await?;
        Ok(())
    }

    /// Reads the outstanding request's answer and appends its body's
    /// children to the replies. A termination with a condition other than
    /// `remote-stream-error` (whose stream error is among the children) is
    /// a refusal of the session; any termination is the stream's end.
    async fn answer(&mut self) -> Result<(), Stop> {
        let body = read_response(&mut self.socket, &mut self.response).await?;
        self.outstanding = false;
        let body = &self.response[body];
        let tag_end = memchr::memchr(b'>', body).ok_or(Stop::Outcome(Outcome::OtherFailure))?;
        let tag = &body[..tag_end];
        // First, as a refused creation's answer has no sid.
        if attribute(tag, "type").as_deref() == Some("terminate") {
            self.ended = true;
            if attribute(tag, "condition").is_some_and(|c| c != "remote-stream-error") {
                return Err(Stop::Outcome(Outcome::OtherFailure));
            }
        }
        if self.sid.is_none() {
            self.sid = Some(attribute(tag, "sid").ok_or(Stop::Outcome(Outcome::OtherFailure))?);
        }
        if tag.last() != Some(&b'/') {
            let children = body[tag_end + 1..]
                .strip_suffix(b"</body>")
                .ok_or(Stop::Outcome(Outcome::OtherFailure))?;
            self.replies.extend_from_slice(children);
        }
        Ok(())
    }
}

impl ClientStream for Bosh<'_> {
    async fn open(&mut self) -> Result<(), Stop> {
        let target = self.target;
        let attributes = if self.sid.is_none() {
            &target.opening
        } else {
            RESTART
        };
        self.post(attributes, &[]).await?;
        features(self).await
    }

    async fn send(&mut self, elements: &[&str]) -> Result<(), Stop> {
        self.post("", elements).await
    }

    async fn receive(&mut self) -> Result<(), Stop> {
        if self.ended {
            return Err(Stop::Outcome(Outcome::ConnectionReset));
        }
        if !self.outstanding {
            self.post("", &[]).await?;
        }
        self.answer().await
    }

    fn replies(&mut self) -> &mut Vec<u8> {
        &mut self.replies
    }

    async fn hung_up(&mut self) {
        // The server answers the held request after `wait` seconds, or
        // when it has something to say; a new one takes its place at
        // once, until the session ends.
        while self.receive().await.is_ok() {
            self.replies.clear();
        }
    }

    async fn close(&mut self) -> Result<(), Stop> {
        if self.ended {
            return Ok(());
        }
        if self.outstanding {
            // The held request blocks this connection until answered: the
            // termination goes on a second one, which the server's
            // `requests` (hold + 1) allows.
            self.socket = tcp::socket(self.target).await?;
            self.outstanding = false;
        }
        self.post(" type='terminate'", &[]).await?;
        // The answer is read (not just dropped) so that the server sees
        // the termination before the connection closes.
        let _ = read_response(&mut self.socket, &mut self.response).await;
        let _ = self.socket.shutdown().await;
        Ok(())
    }
}

/// One `POST` of `body` to `addr`'s [`PATH`], keeping the connection alive.
fn request(addr: SocketAddr, body: &str) -> String {
    format!(
        "POST {PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml; charset=utf-8\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one HTTP/1.1 answer into `buffer` (cleared first) and returns
/// where its body is. Anything but `200` with a `Content-Length` is a
/// failure (a refusal comes as a terminating body with a 200, or an HTTP
/// error); the connection closing first is a reset.
async fn read_response(
    socket: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> Result<std::ops::Range<usize>, Stop> {
    buffer.clear();
    let headers_end = loop {
        if let Some(at) = memmem::find(buffer, b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > MAX_HEADER_BYTES {
            return Err(Stop::Outcome(Outcome::OtherFailure));
        }
        fill(socket, buffer).await?;
    };
    let headers = std::str::from_utf8(&buffer[..headers_end])
        .map_err(|_| Stop::Outcome(Outcome::OtherFailure))?;
    let mut lines = headers.split("\r\n");
    let status = lines.next().and_then(|line| line.split(' ').nth(1));
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok());
    let (Some("200"), Some(length)) = (status, length) else {
        return Err(Stop::Outcome(Outcome::OtherFailure));
    };
    while buffer.len() < headers_end + length {
        fill(socket, buffer).await?;
    }
    Ok(headers_end..headers_end + length)
}

/// Reads more of an answer; the connection closing is a reset.
async fn fill(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<(), Stop> {
    buffer.reserve(4096);
    if socket.read_buf(buffer).await? == 0 {
        return Err(Stop::Outcome(Outcome::ConnectionReset));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{login, Credentials};
    use crate::transport::scripted::{held_login, FEATURES};
    use crate::transport::Transport;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A BOSH server on loopback that answers a login as Gatehouse does,
    /// with `sasl` as its answer to `<auth/>`, and `refusal` (if not empty)
    /// as the attributes of a creation answer without sid or children; an empty request is answered
    /// empty after a moment (a short `wait`). Returns its address and
    /// every body it received, on any connection, in order.
    async fn scripted(
        sasl: &'static str,
        refusal: &'static str,
    ) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let bodies = received.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let bodies = bodies.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    while let Some(body) = next_request(&mut socket, &mut buffer).await {
                        bodies.lock().unwrap().push(body.clone());
                        let answer = answer(&body, sasl, refusal).await;
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        socket.write_all(response.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (addr, received)
    }

    /// Reads one request's body, or `None` once the client hung up.
    async fn next_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(end) = memmem::find(buffer, b"\r\n\r\n") {
                let headers = String::from_utf8(buffer[..end].to_vec()).unwrap();
                assert!(
                    headers.starts_with("POST /http-bind HTTP/1.1\r\n"),
                    "{headers}"
                );
                let length: usize = headers
                    .lines()
                    .find_map(|line| line.strip_prefix("Content-Length: "))
                    .unwrap()
                    .parse()
                    .unwrap();
                if buffer.len() >= end + 4 + length {
                    let body = String::from_utf8(buffer[end + 4..end + 4 + length].to_vec());
                    buffer.drain(..end + 4 + length);
                    return body.ok();
                }
            }
            if socket.read_buf(buffer).await.ok()? == 0 {
                return None;
            }
        }
    }

    async fn answer(body: &str, sasl: &str, refusal: &str) -> String {
        let wrap = |children: &str| format!("<body xmlns='{HTTPBIND}'>{children}</body>");
        if !body.contains(" sid=") && !refusal.is_empty() {
            format!("<body xmlns='{HTTPBIND}'{refusal}/>")
        } else if !body.contains(" sid=") {
            format!("<body xmlns='{HTTPBIND}' sid='s1'>{FEATURES}</body>")
        } else if body.contains("<auth") {
            wrap(sasl)
        } else if body.contains("xmpp:restart='true'") {
            wrap(FEATURES)
        } else if body.contains("id='bind1'") {
            wrap("<iq xmlns='jabber:client' type='result' id='bind1'/>")
        } else if body.contains("id='roster1'") {
            wrap("<iq xmlns='jabber:client' id=\"roster1\" type=\"result\"/>")
        } else if body.contains("type='terminate'") {
            format!("<body xmlns='{HTTPBIND}' type='terminate'/>")
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            format!("<body xmlns='{HTTPBIND}'/>")
        }
    }

    fn target(addr: SocketAddr) -> Target {
        Target::new(addr, "localhost", Transport::Bosh, Duration::from_secs(5))
    }

    /// Each body's `rid`.
    fn rids(bodies: &[String]) -> Vec<u64> {
        bodies
            .iter()
            .map(|body| attribute(body.as_bytes(), "rid").unwrap().parse().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_login_counts_rids_restarts_and_terminates() {
        let (addr, received) =
            scripted("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", "").await;
        let (outcome, _) = login(&target(addr), &Credentials::new("u1", "p1"), None).await;
        assert_eq!(outcome, Outcome::Success);
        let bodies = received.lock().unwrap().clone();
        assert_eq!(bodies.len(), 6, "{bodies:#?}");
        let creation = &bodies[0];
        for attribute in [
            " to='localhost'",
            " wait='60'",
            " hold='1'",
            " xmpp:version='1.0'",
        ] {
            assert!(creation.contains(attribute), "{creation}");
        }
        assert!(bodies[1..].iter().all(|body| body.contains(" sid='s1'")));
        assert!(bodies[1].contains("<auth "));
        assert!(bodies[2].contains("xmpp:restart='true'"));
        assert!(bodies[3].contains("id='bind1'"));
        assert!(bodies[4].contains("id='roster1'") && bodies[4].contains("<presence/>"));
        assert!(bodies[5].contains("type='terminate'"));
        let expected: Vec<u64> = (FIRST_RID..FIRST_RID + 6).collect();
        assert_eq!(rids(&bodies), expected);
    }

    #[tokio::test]
    async fn a_held_session_keeps_a_request_outstanding_then_terminates() {
        let (addr, received) =
            scripted("<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>", "").await;
        // Held long enough for a few empty requests to be answered and
        // renewed.
        let outcome = held_login(&target(addr), Duration::from_millis(100)).await;
        assert_eq!(outcome, Outcome::Success);
        // The termination may arrive on a second connection while the
        // first still waits for its answer.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let bodies = received.lock().unwrap().clone();
        let polls = bodies[5..bodies.len() - 1].iter();
        assert!(polls.len() >= 2, "{bodies:#?}");
        assert!(polls
            .clone()
            .all(|body| body.ends_with("/>") && !body.contains("type=")));
        assert!(bodies.last().unwrap().contains("type='terminate'"));
        let rids = rids(&bodies);
        assert!(
            rids.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "{rids:?}"
        );
    }

    #[tokio::test]
    async fn refusals_are_counted_as_on_tcp() {
        let (addr, received) = scripted(
            "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><temporary-auth-failure/></failure>",
            "",
        )
        .await;
        let (outcome, _) = login(&target(addr), &Credentials::new("u1", "p1"), None).await;
        assert_eq!(outcome, Outcome::TemporaryAuthFailure);
        // The refused session is terminated, not left to time out.
        let bodies = received.lock().unwrap().clone();
        assert!(
            bodies.last().unwrap().contains("type='terminate'"),
            "{bodies:#?}"
        );

        // A session refused at creation (`sessions_full`) is no login.
        let (addr, received) = scripted(
            "<success/>",
            " type='terminate' condition='undefined-condition'",
        )
        .await;
        let (outcome, _) = login(&target(addr), &Credentials::new("u1", "p1"), None).await;
        assert_eq!(outcome, Outcome::OtherFailure);
        assert_eq!(
            received.lock().unwrap().len(),
            1,
            "a session that never was is not terminated"
        );
    }

    #[tokio::test]
    async fn only_a_200_with_a_length_is_an_answer() {
        for answer in [
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (mut socket, _) = listener.accept().await.unwrap();
                let _ = next_request(&mut socket, &mut Vec::new()).await;
                socket.write_all(answer.as_bytes()).await.unwrap();
            });
            let (outcome, _) = login(&target(addr), &Credentials::new("u1", "p1"), None).await;
            assert_eq!(outcome, Outcome::OtherFailure, "{answer}");
        }
    }
}
