//! A client connection's TLS (after STARTTLS, or Direct TLS from the first
//! byte) on rustls' unbuffered API, so that an idle session keeps no
//! plaintext or ciphertext buffer: rustls' buffered connection keeps a
//! read buffer of at least 4 KiB for good after its first read, more than
//! half of what TLS added to a held session.
//!
//! [`TlsSocket`] owns the TCP socket and rustls' state. Ciphertext is read
//! into a stack buffer and decrypted where it lies (rustls then hands each
//! record's plaintext over in a buffer of its own, copied out and freed at
//! once); only a record not yet complete (or handshake bytes rustls still
//! refers to) is copied to the heap, and only until the rest arrives.
//! Decrypted data the reader has not taken yet, and ciphertext the socket
//! has not taken yet, are kept until taken; each buffer is freed as soon
//! as it is empty.
//!
//! It owns the TLS record layer: the server handshake, encryption,
//! close_notify both ways. It must not touch what the bytes mean (the
//! transport's framing) nor what a failed handshake means (counted and
//! logged in [`super::tls`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::ServerConnectionData;
use tokio_rustls::rustls::server::UnbufferedServerConnection;
use tokio_rustls::rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, WriteTraffic,
};

/// The largest TLS record on the wire: its 5-byte header, 16 KiB of
/// plaintext and up to 2 KiB of expansion (TLS 1.2's bound; TLS 1.3's is
/// 256 bytes). One socket read takes at most this much.
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;
/// The most plaintext one write encrypts: bounds the ciphertext held for
/// a socket that does not take it (a write returns only once what the
/// previous one encrypted has gone out).
const MAX_WRITE: usize = 64 * 1024;
/// What encryption adds to each record, at most (header, explicit nonce,
/// tag, padding): a first guess at the size of the ciphertext; rustls says
/// when it is short and the buffer grows to what it asks.
const RECORD_OVERHEAD: usize = 64;
/// Plaintext per record (rustls' default fragment size).
const MAX_FRAGMENT: usize = 16 * 1024;

/// A server-side TLS connection over TCP that holds no buffer while idle.
pub struct TlsSocket {
    /// The client's socket; every byte of ciphertext goes through it.
    tcp: TcpStream,
    /// rustls' state: the handshake, then keys and sequence numbers. It
    /// keeps no buffer of its own across calls beyond a record's
    /// plaintext on its way to [`TlsSocket::plaintext`].
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not yet processed: the start of a record,
    /// or handshake records rustls has read but still refers to. Empty and
    /// unallocated otherwise.
    incoming: Vec<u8>,
    /// Decrypted data the reader has not taken yet (a record can hold more
    /// than one read asks for), from `plaintext_taken` on. Unallocated
    /// once taken.
    plaintext: Vec<u8>,
    /// How much of `plaintext` the reader has taken.
    plaintext_taken: usize,
    /// Ciphertext for the client (handshake records, encrypted writes,
    /// alerts) not yet written to the socket, from `outgoing_sent` on.
    /// Unallocated once written.
    outgoing: Vec<u8>,
    /// How much of `outgoing` the socket has taken.
    outgoing_sent: usize,
    /// The client sent close_notify, or closed its side of TCP: reads
    /// return end of stream once `plaintext` is taken.
    read_closed: bool,
    /// We sent close_notify: nothing more may be written.
    write_closed: bool,
}

impl TlsSocket {
    /// Does the server side of the handshake on `tcp` under `config`.
    /// Errors of the protocol are `io::Error`s wrapping the
    /// [`rustls::Error`] (after the alert rustls makes of it was offered to
    /// the client); the client closing the connection is `UnexpectedEof`.
    /// The caller bounds how long it may take.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<Box<TlsSocket>> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut socket = Box::new(TlsSocket {
            tcp,
            conn,
            incoming: Vec::new(),
            plaintext: Vec::new(),
            plaintext_taken: 0,
            outgoing: Vec::new(),
            outgoing_sent: 0,
            read_closed: false,
            write_closed: false,
        });
        std::future::poll_fn(|cx| socket.poll_handshake(cx)).await?;
        Ok(socket)
    }

    /// Whether the handshake was full or resumed from a session ticket.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.conn.handshake_kind()
    }

    /// Reads and answers until the handshake is complete and everything
    /// it made (the session ticket included) is written.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            ready!(self.poll_receive(cx))?;
        }
    }

    /// Reads what the socket has (at most one record's worth) and
    /// processes it. At end of stream (TCP's, without close_notify) the
    /// read side is closed.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut chunk = [0u8; MAX_RECORD];
        let mut chunk = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut chunk))?;
        let received = chunk.filled_mut();
        if received.is_empty() {
            self.read_closed = true;
            self.incoming = Vec::new();
            return Poll::Ready(Ok(()));
        }
        let result = if self.incoming.is_empty() {
            // The common case: whole records, processed on the stack; only
            // what is left of a record that is not complete is kept.
            self.process(received).map(|used| {
                self.incoming = received.get(used..).unwrap_or_default().to_vec();
            })
        } else {
            let mut incoming = std::mem::take(&mut self.incoming);
            incoming.extend_from_slice(received);
            self.process(&mut incoming).map(|used| {
                incoming.drain(..used.min(incoming.len()));
                if !incoming.is_empty() {
                    self.incoming = incoming;
                }
            })
        };
        if self.read_closed {
            // Whatever follows close_notify is never read.
            self.incoming = Vec::new();
        }
        Poll::Ready(result.map_err(|e| self.fail(e)))
    }

    /// Runs rustls over `incoming` until it needs more bytes: decrypted
    /// data goes to `plaintext`, what rustls has to send (handshake
    /// records, a key update, an alert) to `outgoing`. Returns how many
    /// bytes from the front of `incoming` are done with.
    fn process(&mut self, incoming: &mut [u8]) -> Result<usize, rustls::Error> {
        let mut done = 0;
        loop {
            let rest = incoming.get_mut(done..).unwrap_or_default();
            let status = self.conn.process_tls_records(rest);
            let mut discard = status.discard;
            match status.state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, &mut encode)
                        .map_err(|e| rustls::Error::General(e.to_string()))?
                }
                // Written by `poll_send` before anything else is: for
                // rustls, handing it over is sending it.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.read_closed = true;
                    return Ok(done + discard);
                }
                // Nothing more to do until more bytes arrive.
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => {
                    return Ok(done + discard);
                }
                // Early data is never accepted (the configuration's
                // `max_early_data_size` is 0), and any later state is
                // unknown here.
                _ => return Err(rustls::Error::General("unexpected TLS state".into())),
            }
            done += discard;
        }
    }

    /// Offers the client the alert rustls made of `error` (one attempt,
    /// without waiting: the connection ends either way) and turns the
    /// error into an `io::Error`.
    fn fail(&mut self, error: rustls::Error) -> io::Error {
        while self.conn.wants_write() {
            // Each call hands out one queued record before it would look
            // at any input, so no input needs to be passed.
            let status = self.conn.process_tls_records(&mut []);
            let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state else {
                break;
            };
            if encode_into(&mut self.outgoing, &mut encode).is_err() {
                break;
            }
        }
        if let Some(alert) = self.outgoing.get(self.outgoing_sent..) {
            let _ = self.tcp.try_write(alert);
        }
        self.outgoing = Vec::new();
        self.outgoing_sent = 0;
        tls_error(error)
    }

    /// Writes `outgoing` to the socket; frees it once all of it is out.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(unsent) = self
            .outgoing
            .get(self.outgoing_sent..)
            .filter(|unsent| !unsent.is_empty())
        {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, unsent))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing_sent += n;
        }
        if self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.outgoing_sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Appends to `outgoing` what `write` (an encryption, or close_notify)
    /// puts there, once rustls is ready for application data; records
    /// rustls has queued before it (a key update) go first.
    fn write_traffic(
        &mut self,
        guess: usize,
        mut write: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> io::Result<()> {
        loop {
            // Only a record not yet complete is ever left in `incoming`:
            // rustls finds nothing to read in it.
            let status = self.conn.process_tls_records(&mut self.incoming);
            let discard = status.discard;
            let written = match status.state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    append(&mut self.outgoing, guess, |out| write(&mut traffic, out))?;
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut self.outgoing, &mut encode)?;
                    false
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    false
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    false
                }
                ConnectionState::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS not ready for application data",
                    ))
                }
            };
            self.incoming.drain(..discard.min(self.incoming.len()));
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            if written {
                return Ok(());
            }
        }
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(pending) = this
                .plaintext
                .get(this.plaintext_taken..)
                .filter(|pending| !pending.is_empty())
            {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.plaintext_taken += n;
                if this.plaintext_taken >= this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.plaintext_taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // What rustls answered to the last read (a key update) goes
            // out before more is read, so it cannot pile up.
            ready!(this.poll_send(cx))?;
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What the last write encrypted goes out first: at most one
        // write's ciphertext is ever held.
        ready!(this.poll_send(cx))?;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let Some(data) = buf.get(..buf.len().min(MAX_WRITE)) else {
            return Poll::Ready(Ok(0));
        };
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let guess = data.len() + data.len().div_ceil(MAX_FRAGMENT) * RECORD_OVERHEAD;
        this.write_traffic(guess, |traffic, out| traffic.encrypt(data, out))?;
        // Start sending now; what the socket does not take yet is sent by
        // the next write, flush or shutdown.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        if !this.write_closed {
            this.write_closed = true;
            // Both sides closed already: nothing more to say.
            match this.write_traffic(0, |traffic, out| traffic.queue_close_notify(out)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            ready!(this.poll_send(cx))?;
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// A TLS error as the `io::Error` the transport sees; the handshake's
/// failure classification reads the `rustls::Error` back out of it.
fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// The errors of rustls' encoding calls, which say how much room they
/// need when the buffer is short.
trait Shortfall: Into<Box<dyn std::error::Error + Send + Sync>> {
    /// The size the buffer must have, when that is what went wrong.
    fn required(&self) -> Option<usize>;
}

impl Shortfall for EncodeError {
    fn required(&self) -> Option<usize> {
        match self {
            EncodeError::InsufficientSize(short) => Some(short.required_size),
            EncodeError::AlreadyEncoded => None,
        }
    }
}

impl Shortfall for EncryptError {
    fn required(&self) -> Option<usize> {
        match self {
            EncryptError::InsufficientSize(short) => Some(short.required_size),
            _ => None,
        }
    }
}

/// Appends to `outgoing` the record rustls has ready (a handshake
/// message, a session ticket, an alert), in exactly the room it takes.
fn encode_into(
    outgoing: &mut Vec<u8>,
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
) -> io::Result<()> {
    append(outgoing, 0, |out| encode.encode(out))
}

/// Appends to `out` what `write` puts in a buffer: first `guess` bytes of
/// room (none: rustls says what it needs), then what rustls asks for if
/// that was short (`write` changes nothing when it fails).
fn append<E: Shortfall>(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<()> {
    let start = out.len();
    let mut room = guess;
    for _ in 0..2 {
        out.resize(start + room, 0);
        let tail = out.get_mut(start..).unwrap_or_default();
        match write(tail) {
            Ok(written) => {
                out.truncate(start + written.min(room));
                return Ok(());
            }
            Err(e) => match e.required() {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(io::Error::other(e));
                }
            },
        }
    }
    out.truncate(start);
    Err(io::Error::other("rustls asked for more room twice"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_loadgen::transport::tls::accepting_any_certificate;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream;

    /// A server socket and the client at the other end, handshaken.
    async fn pair() -> (Box<TlsSocket>, TlsStream<TcpStream>) {
        let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/localhost");
        let chain = CertificateDer::pem_file_iter(format!("{examples}.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(format!("{examples}.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            accepting_any_certificate(&[], false)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsSocket::accept(tcp, Arc::new(server)).await.unwrap()
        };
        let (client, server) = tokio::join!(connect, accept);
        (server, client)
    }

    /// Writes to a client that does not read stop (Pending) with at most
    /// one write's ciphertext held; once the client reads, everything
    /// arrives in order, and shutting down sends close_notify (a clean end
    /// of stream for the client). After it, nothing is held.
    #[tokio::test]
    async fn writes_wait_for_a_slow_client_holding_one_write_at_most() {
        let (mut server, mut client) = pair().await;
        // Far more than the kernel's socket buffers take.
        let data: Vec<u8> = (0..16 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let mut written = 0;
        while written < data.len() {
            let write = server.write(&data[written..]);
            match tokio::time::timeout(Duration::from_millis(200), write).await {
                Ok(n) => written += n.unwrap(),
                Err(_) => break,
            }
            assert!(server.outgoing.capacity() <= MAX_WRITE + 4 * RECORD_OVERHEAD);
        }
        assert!(written < data.len(), "the socket took 16 MiB unread");

        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.map(|_| received)
        });
        server.write_all(&data[written..]).await.unwrap();
        server.shutdown().await.unwrap();
        let received = reader.await.unwrap().expect("a clean end: close_notify");
        assert!(received == data, "what the client read is what was written");
        assert_eq!(server.outgoing.capacity(), 0);
        assert_eq!(server.incoming.capacity(), 0);
        assert_eq!(server.plaintext.capacity(), 0);
    }

    /// Records larger than one read, and several records in one read,
    /// arrive whole and in order; the client's close_notify is the end of
    /// the stream; nothing is held after each read is taken.
    #[tokio::test]
    async fn reads_span_records_and_end_at_close_notify() {
        let (mut server, mut client) = pair().await;
        let data: Vec<u8> = (0..100_000).map(|i| (i % 253) as u8).collect();
        let writer = tokio::spawn(async move {
            for piece in data.chunks(7_000) {
                client.write_all(piece).await.unwrap();
            }
            client.shutdown().await.unwrap();
            data
        });
        let mut received = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = server.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
        }
        assert!(received == writer.await.unwrap());
        assert_eq!(server.incoming.capacity(), 0);
        assert_eq!(server.plaintext.capacity(), 0);
    }

    /// What a client may send after the handshake that is not TLS — a
    /// record longer than any allowed, one that does not decrypt — is an
    /// error of the read, with the rustls error inside; a record cut short
    /// by the end of the connection is the end of the stream. Nothing is
    /// held afterwards.
    #[tokio::test]
    async fn garbage_after_the_handshake_is_an_error() {
        let too_long = [0x17, 0x03, 0x03, 0xff, 0xff];
        let mut undecryptable = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        undecryptable.extend_from_slice(&[0x5a; 0x40]);
        for garbage in [&too_long[..], &undecryptable] {
            let (mut server, mut client) = pair().await;
            client.get_mut().0.write_all(garbage).await.unwrap();
            let error = server.read(&mut [0u8; 4096]).await.unwrap_err();
            assert!(
                error
                    .get_ref()
                    .is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some()),
                "{error}"
            );
            assert_eq!(server.incoming.capacity(), 0);
            assert_eq!(server.outgoing.capacity(), 0);
        }

        let (mut server, mut client) = pair().await;
        client
            .get_mut()
            .0
            .write_all(&undecryptable[..20])
            .await
            .unwrap();
        client.get_mut().0.shutdown().await.unwrap();
        assert_eq!(server.read(&mut [0u8; 4096]).await.unwrap(), 0);
        assert_eq!(server.incoming.capacity(), 0);
    }

    /// Garbage instead of a ClientHello fails the handshake with a
    /// rustls error inside the io::Error; a client that hangs up is
    /// `UnexpectedEof`.
    #[tokio::test]
    async fn failed_handshakes_say_why() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new())),
        );

        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let error = TlsSocket::accept(tcp, config.clone()).await.err().unwrap();
        assert!(error
            .get_ref()
            .is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some()));

        drop(TcpStream::connect(addr).await.unwrap());
        let (tcp, _) = listener.accept().await.unwrap();
        let error = TlsSocket::accept(tcp, config).await.err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
