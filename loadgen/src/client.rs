//! One virtual client: connect (over the run's transport) → stream → SASL
//! PLAIN → bind → roster get → initial presence → close, against any XMPP
//! server. Connecting ([`connected`]) and authenticating are shared with
//! the message exchange's sides.
//!
//! Replies are recognised by cheap substring scans, not parsed as XML, so
//! the generator spends far less CPU per login than the server it drives.

use crate::transport::{bosh, starttls, tcp, tls, websocket, ClientStream, Transport};
use base64::Engine;
use memchr::memmem;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

/// How one login ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Success,
    NotAuthorized,
    TemporaryAuthFailure,
    OtherFailure,
    ConnectionRefused,
    ConnectionReset,
    Timeout,
    /// The generator itself failed (out of file descriptors or local
    /// ports): not the server's doing.
    ClientError,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::NotAuthorized => "not-authorized",
            Outcome::TemporaryAuthFailure => "temporary-auth-failure",
            Outcome::OtherFailure => "other-failure",
            Outcome::ConnectionRefused => "connection-refused",
            Outcome::ConnectionReset => "connection-reset",
            Outcome::Timeout => "timeout",
            Outcome::ClientError => "client-error",
        }
    }
}

/// What every virtual client needs.
pub struct Target {
    /// The server's c2s address (loopback only; for `--transport tls`, its
    /// Direct TLS listener; for `--transport websocket` and `bosh`, its web
    /// listener).
    pub addr: SocketAddr,
    /// The XMPP domain every client logs in to.
    pub domain: String,
    /// How every client connects and frames its stream.
    pub transport: Transport,
    /// What opens (and, after SASL, reopens) every stream on `transport`,
    /// for `domain`: RFC 6120's stream header, RFC 7395's `<open/>`, or the
    /// attributes of BOSH's session creation body (its restart is fixed).
    /// Rendered once per run, not once per login.
    pub(crate) opening: String,
    /// Per-login limit (connect to roster answer; holding is not limited).
    pub timeout: Duration,
    /// The loopback address connections come from (`--source`), so one
    /// machine can stand for several clients before the server's
    /// per-address limits; `None`: the system's choice.
    pub source: Option<IpAddr>,
}

impl Target {
    pub fn new(addr: SocketAddr, domain: &str, transport: Transport, timeout: Duration) -> Self {
        Target {
            addr,
            domain: domain.to_owned(),
            transport,
            opening: match transport {
                Transport::Tcp | Transport::Starttls | Transport::Tls => tcp::stream_header(domain),
                Transport::Websocket => websocket::open_element(domain),
                Transport::Bosh => bosh::creation_attributes(domain),
            },
            timeout,
            source: None,
        }
    }

    /// The same target, reached from `source`.
    pub fn from_source(self, source: Option<IpAddr>) -> Self {
        Target { source, ..self }
    }
}

/// One account's SASL PLAIN request, rendered once and reused by every
/// login of that account — a virtual client — and with `--resume` its
/// TLS connector, which keeps the tickets the server gave it.
pub struct Credentials {
    /// The whole `<auth mechanism='PLAIN'>` element, ready to send.
    auth: String,
    /// This client's own TLS connector, resuming its last session; `None`:
    /// every handshake is a full one, through a connector all share.
    tls: Option<TlsConnector>,
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Self {
        let payload =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        Credentials {
            auth: format!(
                "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
            ),
            tls: None,
        }
    }

    /// The same client, resuming its TLS sessions over `transport` (a
    /// transport without TLS has none to resume).
    pub fn resuming(self, transport: Transport) -> Self {
        let alpn: &[&[u8]] = match transport {
            Transport::Starttls => &[],
            Transport::Tls => &[tls::ALPN_XMPP_CLIENT],
            Transport::Tcp | Transport::Websocket | Transport::Bosh => return self,
        };
        Credentials {
            tls: Some(tls::accepting_any_certificate(alpn, true)),
            ..self
        }
    }
}

/// Why a step did not complete: every transport reports its failures as
/// one, so outcomes are counted alike whatever the transport.
pub(crate) enum Stop {
    Outcome(Outcome),
}

/// errno values that mean this process, not the server, ran out of
/// something: EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL.
const LOCAL_ERRNOS: [i32; 5] = [24, 23, 105, 12, 99];

impl From<std::io::Error> for Stop {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error().is_some_and(|n| LOCAL_ERRNOS.contains(&n)) {
            return Stop::Outcome(Outcome::ClientError);
        }
        Stop::Outcome(match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Outcome::ConnectionRefused,
            std::io::ErrorKind::TimedOut => Outcome::Timeout,
            _ => Outcome::ConnectionReset,
        })
    }
}

/// Reads the answer to the IQ with `id` (its whole start tag) and fails
/// unless it is a result: a bind or roster error is no login.
pub(crate) async fn result_of(stream: &mut impl ClientStream, id: &str) -> Result<(), Stop> {
    let (_, mut text) = stream.until(&[id]).await?;
    let (_, rest) = stream.until(&[">"]).await?;
    text.extend_from_slice(&rest);
    let tag = &text[memchr::memrchr(b'<', &text).unwrap_or(0)..];
    if memmem::find(tag, b"type='result'").is_some()
        || memmem::find(tag, b"type=\"result\"").is_some()
    {
        Ok(())
    } else {
        Err(Stop::Outcome(Outcome::OtherFailure))
    }
}

/// Keeps a logged-in session open.
pub struct Hold {
    /// Told once the login phase succeeded.
    pub up: tokio::sync::oneshot::Sender<()>,
    /// The session closes when this turns `true`.
    pub release: tokio::sync::watch::Receiver<bool>,
}

/// One login, timed from connect to the roster answer. With `hold`, the
/// session then stays open until released (the outcome turns into a reset
/// if the server drops it meanwhile).
pub async fn login(
    target: &Target,
    credentials: &Credentials,
    hold: Option<Hold>,
) -> (Outcome, Duration) {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + target.timeout;
    let mut took = None;
    let login = Login {
        credentials,
        deadline,
        hold,
        started,
        took: &mut took,
    };
    let outcome = match connected(target, deadline, login).await {
        Ok(()) => Outcome::Success,
        Err(Stop::Outcome(outcome)) => outcome,
    };
    (outcome, took.unwrap_or_else(|| started.elapsed()))
}

/// Runs `step` unless the login deadline passes first.
pub(crate) async fn by<T>(
    deadline: tokio::time::Instant,
    step: impl std::future::Future<Output = Result<T, Stop>>,
) -> Result<T, Stop> {
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or(Err(Stop::Outcome(Outcome::Timeout)))
}

/// What runs on a client's connected stream, whatever its transport: the
/// storm's login, or one side of the message exchange.
pub(crate) trait OnStream {
    type Output;

    /// The client it runs for (whose TLS connector, if it has its own,
    /// connects).
    fn credentials(&self) -> &Credentials;

    async fn on(self, stream: impl ClientStream) -> Result<Self::Output, Stop>;
}

/// Connects over the target's transport (within `deadline`) and runs
/// `then` on what it returns.
pub(crate) async fn connected<T: OnStream>(
    target: &Target,
    deadline: tokio::time::Instant,
    then: T,
) -> Result<T::Output, Stop> {
    let own_tls = then.credentials().tls.as_ref();
    match target.transport {
        Transport::Tcp => then.on(by(deadline, tcp::connect(target)).await?).await,
        Transport::Starttls => {
            let stream = by(deadline, starttls::connect(target, own_tls)).await?;
            then.on(stream).await
        }
        Transport::Tls => {
            let stream = by(deadline, tls::connect(target, own_tls)).await?;
            then.on(stream).await
        }
        Transport::Websocket => {
            then.on(by(deadline, websocket::connect(target)).await?)
                .await
        }
        Transport::Bosh => then.on(by(deadline, bosh::connect(target)).await?).await,
    }
}

/// The storm's session on a connected stream.
struct Login<'a> {
    credentials: &'a Credentials,
    deadline: tokio::time::Instant,
    hold: Option<Hold>,
    started: Instant,
    took: &'a mut Option<Duration>,
}

impl OnStream for Login<'_> {
    type Output = ();

    fn credentials(&self) -> &Credentials {
        self.credentials
    }

    /// Logs in, holds the session if asked, closes it. A login the server
    /// refused is closed as well (within the login's deadline, untimed): a
    /// BOSH session outlives its connection, so a client that only hung up
    /// would leave it on the server for its `inactivity`, which no real
    /// client does.
    async fn on(self, mut stream: impl ClientStream) -> Result<(), Stop> {
        let logged_in = by(self.deadline, login_steps(&mut stream, self.credentials)).await;
        *self.took = Some(self.started.elapsed());
        if let Err(Stop::Outcome(refused)) = logged_in {
            if matches!(
                refused,
                Outcome::NotAuthorized | Outcome::TemporaryAuthFailure | Outcome::OtherFailure
            ) {
                let _ = by(self.deadline, stream.close()).await;
            }
            return Err(Stop::Outcome(refused));
        }
        if let Some(Hold { up, release }) = self.hold {
            let _ = up.send(());
            stream.hold(release).await?;
        }
        stream.close().await
    }
}

/// The resource binding request (RFC 6120 §7), the server choosing the
/// resource; its answer is [`result_of`] `bind1`.
pub(crate) const BIND: &str =
    "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>";

/// Opens the stream, authenticates with SASL PLAIN and restarts the stream
/// after success; a refusal is counted by its condition.
pub(crate) async fn authenticate(
    stream: &mut impl ClientStream,
    credentials: &Credentials,
) -> Result<(), Stop> {
    stream.open().await?;
    stream.send(&[&credentials.auth]).await?;
    let (answer, text) = stream
        .until(&["<success", "</failure>", "</stream:error>"])
        .await?;
    if answer != 0 {
        return Err(Stop::Outcome(
            if memmem::find(&text, b"<not-authorized").is_some() {
                Outcome::NotAuthorized
            } else if memmem::find(&text, b"<temporary-auth-failure").is_some() {
                Outcome::TemporaryAuthFailure
            } else {
                Outcome::OtherFailure
            },
        ));
    }
    stream.open().await
}

async fn login_steps(
    stream: &mut impl ClientStream,
    credentials: &Credentials,
) -> Result<(), Stop> {
    authenticate(stream, credentials).await?;
    stream.send(&[BIND]).await?;
    result_of(stream, "bind1").await?;
    stream
        .send(&[
            "<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>",
            "<presence/>",
        ])
        .await?;
    result_of(stream, "roster1").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tcp::replaying;

    #[tokio::test]
    async fn only_a_result_completes_an_iq_step() {
        let mut ok = replaying(b"<iq id=\"bind1\" type=\"result\"><bind/></iq>");
        assert!(result_of(&mut ok, "bind1").await.is_ok());
        let mut error = replaying(b"<iq type='error' id='bind1'><error/></iq>");
        assert!(matches!(
            result_of(&mut error, "bind1").await,
            Err(Stop::Outcome(Outcome::OtherFailure))
        ));
        let mut gone = replaying(b"<iq type='result' id='roster");
        assert!(matches!(
            result_of(&mut gone, "roster1").await,
            Err(Stop::Outcome(Outcome::ConnectionReset))
        ));
    }

    #[test]
    fn the_generators_own_shortages_are_its_own_outcome() {
        let emfile = std::io::Error::from_raw_os_error(24);
        assert!(matches!(
            Stop::from(emfile),
            Stop::Outcome(Outcome::ClientError)
        ));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            Stop::from(refused),
            Stop::Outcome(Outcome::ConnectionRefused)
        ));
    }
}
