//! One virtual client: connect → stream → [STARTTLS] → SASL PLAIN → bind →
//! roster get → initial presence → close, against any XMPP server.
//!
//! Replies are recognised by cheap substring scans, not parsed as XML, so
//! the generator spends far less CPU per login than the server it drives.

use base64::Engine;
use memchr::memmem;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{self, ClientConfig, DigitallySignedStruct, SignatureScheme};
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
    /// The server's c2s address (loopback only).
    pub addr: SocketAddr,
    /// The XMPP domain every client logs in to.
    pub domain: String,
    /// The client's stream header for `domain`, rendered once.
    header: Vec<u8>,
    /// Present when STARTTLS is used (certificates are not verified: this
    /// is a load tool for servers on loopback).
    pub tls: Option<TlsConnector>,
    /// Per-login limit (connect to roster answer; holding is not limited).
    pub timeout: Duration,
}

impl Target {
    pub fn new(
        addr: SocketAddr,
        domain: &str,
        tls: Option<TlsConnector>,
        timeout: Duration,
    ) -> Self {
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
        );
        Target {
            addr,
            domain: domain.to_owned(),
            header: header.into_bytes(),
            tls,
            timeout,
        }
    }
}

/// One account's SASL PLAIN request, rendered once and reused by every
/// login of that account.
pub struct Credentials {
    /// The whole `<auth mechanism='PLAIN'>` element, ready to write.
    auth: Vec<u8>,
}

impl Credentials {
    pub fn new(user: &str, password: &str) -> Self {
        let payload =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let auth = format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{payload}</auth>"
        );
        Credentials {
            auth: auth.into_bytes(),
        }
    }
}

/// A TLS connector that accepts any certificate.
pub fn insecure_tls() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a step did not complete.
enum Stop {
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

/// A connection with a read buffer scanned for markers.
struct Conn<S> {
    /// The socket, plain or TLS.
    stream: S,
    /// What the server sent that no marker has consumed yet.
    buf: Vec<u8>,
    /// Where the unscanned part of `buf` starts, per call of `until`: bytes
    /// already scanned are not scanned again when more arrive.
    scanned: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(1024),
            scanned: 0,
        }
    }

    async fn send(&mut self, data: &[u8]) -> Result<(), Stop> {
        self.stream.write_all(data).await?;
        Ok(())
    }

    /// Reads until one of `markers` appears; returns its index and the
    /// bytes read up to the end of the marker (which leave the buffer).
    async fn until(&mut self, markers: &[&str]) -> Result<(usize, Vec<u8>), Stop> {
        self.scanned = 0;
        loop {
            // A marker may straddle the old and new bytes: rescan from the
            // longest marker's length before the new ones.
            let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
            let from = self.scanned.saturating_sub(longest);
            let found = markers
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    find(&self.buf[from..], m.as_bytes()).map(|at| (from + at, i, m.len()))
                })
                .min();
            if let Some((at, i, len)) = found {
                return Ok((i, self.buf.drain(..at + len).collect()));
            }
            self.scanned = self.buf.len();
            self.buf.reserve(4096);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(Stop::Outcome(Outcome::ConnectionReset));
            }
        }
    }

    /// Reads the answer to the IQ with `id` (its whole start tag) and
    /// fails unless it is a result: a bind or roster error is no login.
    async fn result_of(&mut self, id: &str) -> Result<(), Stop> {
        let (_, mut text) = self.until(&[id]).await?;
        let (_, rest) = self.until(&[">"]).await?;
        text.extend_from_slice(&rest);
        let tag = &text[memchr::memrchr(b'<', &text).unwrap_or(0)..];
        if find(tag, b"type='result'").is_some() || find(tag, b"type=\"result\"").is_some() {
            Ok(())
        } else {
            Err(Stop::Outcome(Outcome::OtherFailure))
        }
    }

    async fn open(&mut self, header: &[u8]) -> Result<(), Stop> {
        self.send(header).await?;
        match self
            .until(&[
                "</stream:features>",
                "<stream:features/>",
                "</stream:error>",
            ])
            .await?
        {
            (2, _) => Err(Stop::Outcome(Outcome::OtherFailure)),
            _ => Ok(()),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memmem::find(haystack, needle)
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
    let outcome = match run(target, credentials, deadline, hold, started, &mut took).await {
        Ok(()) => Outcome::Success,
        Err(Stop::Outcome(outcome)) => outcome,
    };
    (outcome, took.unwrap_or_else(|| started.elapsed()))
}

/// Runs `step` unless the login deadline passes first.
async fn by<T>(
    deadline: tokio::time::Instant,
    step: impl std::future::Future<Output = Result<T, Stop>>,
) -> Result<T, Stop> {
    tokio::time::timeout_at(deadline, step)
        .await
        .unwrap_or(Err(Stop::Outcome(Outcome::Timeout)))
}

async fn run(
    target: &Target,
    credentials: &Credentials,
    deadline: tokio::time::Instant,
    hold: Option<Hold>,
    started: Instant,
    took: &mut Option<Duration>,
) -> Result<(), Stop> {
    let tcp = by(deadline, async {
        Ok(TcpStream::connect(target.addr).await?)
    })
    .await?;
    let _ = tcp.set_nodelay(true);
    let plain = Conn::new(tcp);
    match &target.tls {
        None => session(plain, target, credentials, deadline, hold, started, took).await,
        Some(connector) => {
            let tls = by(deadline, starttls(plain, connector, target)).await?;
            session(tls, target, credentials, deadline, hold, started, took).await
        }
    }
}

async fn starttls(
    mut plain: Conn<TcpStream>,
    connector: &TlsConnector,
    target: &Target,
) -> Result<Conn<tokio_rustls::client::TlsStream<TcpStream>>, Stop> {
    plain.open(&target.header).await?;
    plain
        .send(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await?;
    if plain.until(&["<proceed", "<failure"]).await?.0 != 0 {
        return Err(Stop::Outcome(Outcome::OtherFailure));
    }
    let name = ServerName::try_from(target.domain.clone())
        .map_err(|_| Stop::Outcome(Outcome::OtherFailure))?;
    let tls = connector.connect(name, plain.stream).await?;
    Ok(Conn::new(tls))
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Conn<S>,
    target: &Target,
    credentials: &Credentials,
    deadline: tokio::time::Instant,
    hold: Option<Hold>,
    started: Instant,
    took: &mut Option<Duration>,
) -> Result<(), Stop> {
    by(deadline, login_steps(&mut conn, target, credentials)).await?;
    *took = Some(started.elapsed());
    if let Some(Hold { up, mut release }) = hold {
        let _ = up.send(());
        // The login's buffer is not needed while the session sits idle.
        conn.buf = Vec::new();
        let mut scratch = [0u8; 1024];
        loop {
            tokio::select! {
                changed = release.changed() => if changed.is_err() || *release.borrow() { break },
                n = conn.stream.read(&mut scratch) => if n.unwrap_or(0) == 0 {
                    return Err(Stop::Outcome(Outcome::ConnectionReset));
                },
            }
        }
    }
    conn.send(b"</stream:stream>").await?;
    let _ = conn.stream.shutdown().await;
    Ok(())
}

async fn login_steps<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    target: &Target,
    credentials: &Credentials,
) -> Result<(), Stop> {
    conn.open(&target.header).await?;
    conn.send(&credentials.auth).await?;
    let (answer, text) = conn
        .until(&["<success", "</failure>", "</stream:error>"])
        .await?;
    if answer != 0 {
        return Err(Stop::Outcome(
            if find(&text, b"<not-authorized").is_some() {
                Outcome::NotAuthorized
            } else if find(&text, b"<temporary-auth-failure").is_some() {
                Outcome::TemporaryAuthFailure
            } else {
                Outcome::OtherFailure
            },
        ));
    }
    conn.open(&target.header).await?;
    conn.send(b"<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        .await?;
    conn.result_of("bind1").await?;
    conn.send(b"<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq><presence/>")
        .await?;
    conn.result_of("roster1").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection whose server side writes `replies` in small pieces, so
    /// markers straddle reads.
    fn conn_with(replies: &'static [u8]) -> Conn<tokio::io::DuplexStream> {
        let (client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for piece in replies.chunks(3) {
                server.write_all(piece).await.unwrap();
            }
            let _ = server.shutdown().await;
        });
        Conn::new(client)
    }

    #[tokio::test]
    async fn markers_are_found_across_reads_and_consumed() {
        let mut conn = conn_with(b"<stream:features><bind/></stream:features><success/>");
        let (which, text) = conn
            .until(&["<failure", "</stream:features>"])
            .await
            .ok()
            .unwrap();
        assert_eq!(which, 1);
        assert!(text.ends_with(b"</stream:features>"));
        assert_eq!(conn.until(&["<success"]).await.ok().unwrap().0, 0);
    }

    #[tokio::test]
    async fn only_a_result_completes_an_iq_step() {
        let mut ok = conn_with(b"<iq id=\"bind1\" type=\"result\"><bind/></iq>");
        assert!(ok.result_of("bind1").await.is_ok());
        let mut error = conn_with(b"<iq type='error' id='bind1'><error/></iq>");
        assert!(matches!(
            error.result_of("bind1").await,
            Err(Stop::Outcome(Outcome::OtherFailure))
        ));
        let mut gone = conn_with(b"<iq type='result' id='roster");
        assert!(matches!(
            gone.result_of("roster1").await,
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
