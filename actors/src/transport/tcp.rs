//! The TCP transport (RFC 6120): plain TCP upgraded by STARTTLS, or TLS
//! from the first byte (Direct TLS, whose handshake is in [`super::tls`]).
//! Our side of the exchange is one XML document, `<stream:stream>` …
//! `</stream:stream>`, whose header declares the `stream` prefix the
//! features and errors use.
//!
//! One I/O task per connection, on the same arbiter as its Session actor.
//! It owns the socket, the read buffer and the stream parser. It reads only
//! while the session has no event in hand, so a client cannot flood the
//! actor's mailbox, and it applies what the session decides about the
//! stream (restart, STARTTLS, close) before reading on. It must not
//! interpret stanzas: that is the Session's job.

use super::tls::{self, HandshakeFailure};
use super::tls_stream::TlsSocket;
use super::{
    shaper, spawn_io, Admission, Outbound, Output, QueuedBytes, SessionLink, TransportKind, Turn,
};
use crate::session::{self, C2sSettings, Inbound, Next, Services};
use crate::xmpp::ns;
use bytes::BytesMut;
use futures_channel::mpsc;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// A client socket before or after STARTTLS. The TLS state is boxed: it is
/// over a KiB, which every plain connection's socket would take too if it
/// were not.
pub(crate) type Socket = Either<TcpStream, Box<TlsSocket>>;

/// How long one write to the client may block before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes gathered from the outbound queue into one write.
const MAX_WRITE_BATCH: usize = 64 * 1024;
/// The most bytes taken from the socket in one read. They are read into a
/// stack buffer and only what arrived is copied to the heap, so an idle
/// connection holds no read buffer at all.
const READ_CHUNK: usize = 4096;

/// Starts a session and its I/O task on the current arbiter for a plain
/// TCP connection (STARTTLS offered when a certificate is configured).
/// `held` (the listener's place for the connection under its limits) is
/// dropped when the connection ends.
pub fn start(
    socket: TcpStream,
    peer: SocketAddr,
    settings: Arc<C2sSettings>,
    services: Services,
    held: impl Admission,
) {
    start_on(Either::Left(socket), peer, settings, services, held);
}

/// Starts a Direct TLS (XEP-0368) connection on the current arbiter: the
/// TLS handshake first (bounded in time, failures counted like STARTTLS
/// ones), then a session whose stream is secure from its first header.
/// The handshake is tracked like a connection, so shutdown waits for it.
pub fn start_direct_tls(
    socket: TcpStream,
    tls: Arc<ServerConfig>,
    peer: SocketAddr,
    settings: Arc<C2sSettings>,
    services: Services,
    held: impl Admission,
) {
    let tracker = services.connections.clone();
    let shutdown = services.shutdown.clone();
    spawn_io(&tracker, async move {
        let handshake = tls::upgrade(Either::Left(socket), &tls, peer);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            secure = handshake => if let Some(secure) = secure {
                start_on(secure, peer, settings, services, held);
            },
        }
    });
}

/// Starts a session on `socket`, plain or already TLS, and its I/O task.
fn start_on(
    socket: Socket,
    peer: SocketAddr,
    settings: Arc<C2sSettings>,
    services: Services,
    held: impl Admission,
) {
    let (kind, secure) = match socket {
        Either::Left(_) => (TransportKind::Tcp, false),
        Either::Right(_) => (TransportKind::DirectTls, true),
    };
    let tls = settings.tls.clone();
    let tracker = services.connections.clone();
    let mut link = session::start(peer, kind, secure, settings, services);
    link.hold(held);
    spawn_io(&tracker, run(socket, peer, tls, link));
}

/// Why the loop ended; only for the debug log.
#[derive(Debug)]
enum End {
    Eof,
    Closed,
    Killed,
    Io(std::io::Error),
    SessionGone,
    TlsFailed,
}

/// The I/O task: reads, parses and hands events to the session; frames
/// and writes what it says; upgrades the socket on STARTTLS.
async fn run(
    socket: Socket,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    mut link: SessionLink,
) {
    let (mut reader, mut writer) = tokio::io::split(socket);
    // Unparsed input: empty (and unallocated) between stanzas.
    let mut buf = BytesMut::new();
    let end = loop {
        if !link.busy() {
            match link.parser.next_event(&mut buf) {
                Ok(Some(event)) => link.tell(Inbound::Event(event)),
                Ok(None) => {}
                Err(error) => link.tell(Inbound::Invalid(error)),
            }
            if buf.is_empty() && buf.capacity() > 0 {
                buf = BytesMut::new();
            }
        }
        let wait = link.shaper.wait();
        let turn = {
            let read = std::pin::pin!(shaper::after(wait, read_chunk(&mut reader, &mut buf)));
            link.turn(read).await
        };
        match turn {
            Turn::Killed => break End::Killed,
            Turn::Said(Some(Outbound::Item(first))) => {
                let write = write_batch(
                    &mut writer,
                    first,
                    &mut link.outbound,
                    &link.queued,
                    &link.kill,
                );
                if let Err(e) = Box::pin(write).await {
                    break e;
                }
            }
            Turn::Said(Some(Outbound::Close) | None) | Turn::Answer(Ok(Next::Close)) => {
                Box::pin(close(
                    &mut writer,
                    &mut link.outbound,
                    &link.queued,
                    &link.kill,
                ))
                .await;
                break End::Closed;
            }
            Turn::Answer(Ok(Next::Continue)) => {}
            Turn::Answer(Ok(Next::Restart)) => link.authenticated(),
            Turn::Answer(Ok(Next::StartTls)) => {
                // The client waits for <proceed/> before its handshake, so
                // nothing may be buffered yet.
                let drained = drain(&mut writer, &mut link.outbound, &link.queued, &link.kill);
                if let Err(e) = Box::pin(drained).await {
                    break e;
                }
                // Whitespace after <starttls/> is legal (a keepalive, a
                // client's newline); anything else came before <proceed/>
                // and would be lost under the handshake.
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    HandshakeFailure::DataBeforeHandshake
                        .report(peer, &"data after <starttls/> before <proceed/>");
                    break End::TlsFailed;
                }
                buf = BytesMut::new();
                let Some(config) = tls.as_ref() else {
                    break End::TlsFailed;
                };
                match Box::pin(tls::upgrade(reader.unsplit(writer), config, peer)).await {
                    Some(secure) => (reader, writer) = tokio::io::split(secure),
                    None => break End::TlsFailed,
                }
                link.parser.reset();
            }
            Turn::Answer(Err(_)) => break End::SessionGone,
            Turn::Read(Ok(0)) => break End::Eof,
            Turn::Read(Ok(n)) => link.shaper.consume(n),
            Turn::Read(Err(e)) => break End::Io(e),
        }
    };
    match &end {
        End::Io(error) => tracing::debug!(%error, "connection ended by an I/O error"),
        other => tracing::debug!(end = ?other, "connection ended"),
    }
}

/// Reads what the socket has (up to [`READ_CHUNK`] bytes) and appends it to
/// `buf`; 0 at end of stream. While it waits it holds no buffer: the chunk
/// lives on the stack only for the poll that fills it.
async fn read_chunk(reader: &mut ReadHalf<Socket>, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut chunk = [0u8; READ_CHUNK];
        let mut chunk = ReadBuf::new(&mut chunk);
        std::task::ready!(Pin::new(&mut *reader).poll_read(cx, &mut chunk))?;
        buf.extend_from_slice(chunk.filled());
        Poll::Ready(Ok(chunk.filled().len()))
    })
    .await
}

/// Frames and writes `first` and whatever else is already queued, in one
/// write.
async fn write_batch(
    writer: &mut WriteHalf<Socket>,
    first: Output,
    outbound: &mut mpsc::Receiver<Outbound>,
    queued: &QueuedBytes,
    kill: &CancellationToken,
) -> Result<(), End> {
    let mut batch = BytesMut::new();
    let mut held = first.held_bytes();
    frame(&first, &mut batch);
    let mut close_after = false;
    while batch.len() < MAX_WRITE_BATCH {
        match outbound.try_recv() {
            Ok(Outbound::Item(more)) => {
                held += more.held_bytes();
                frame(&more, &mut batch);
            }
            Ok(Outbound::Close) => {
                close_after = true;
                break;
            }
            Err(_) => break,
        }
    }
    let write = async {
        writer.write_all(&batch).await?;
        writer.flush().await
    };
    tokio::select! {
        _ = kill.cancelled() => return Err(End::Killed),
        done = tokio::time::timeout(WRITE_TIMEOUT, write) => match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(End::Io(e)),
            Err(_) => return Err(End::Io(std::io::ErrorKind::TimedOut.into())),
        },
    }
    queued.written(held);
    if close_after {
        let _ = writer.shutdown().await;
        return Err(End::Closed);
    }
    Ok(())
}

/// Writes everything queued so far.
async fn drain(
    writer: &mut WriteHalf<Socket>,
    outbound: &mut mpsc::Receiver<Outbound>,
    queued: &QueuedBytes,
    kill: &CancellationToken,
) -> Result<(), End> {
    loop {
        match outbound.try_recv() {
            Ok(Outbound::Item(first)) => write_batch(writer, first, outbound, queued, kill).await?,
            Ok(Outbound::Close) => return Err(End::Closed),
            Err(_) => return Ok(()),
        }
    }
}

/// Writes what is queued (the closing stream error) and shuts the socket.
async fn close(
    writer: &mut WriteHalf<Socket>,
    outbound: &mut mpsc::Receiver<Outbound>,
    queued: &QueuedBytes,
    kill: &CancellationToken,
) {
    if matches!(
        drain(writer, outbound, queued, kill).await,
        Ok(()) | Err(End::Closed)
    ) {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.shutdown()).await;
    }
}

/// Appends `item`, framed, to `out`.
pub fn frame(item: &Output, out: &mut BytesMut) {
    match item {
        Output::Open { from, id } => {
            out.extend_from_slice(b"<?xml version='1.0'?><stream:stream xmlns='");
            out.extend_from_slice(ns::CLIENT.as_bytes());
            out.extend_from_slice(b"' xmlns:stream='");
            out.extend_from_slice(ns::STREAMS.as_bytes());
            out.extend_from_slice(b"' id='");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"' from='");
            out.extend_from_slice(from.as_bytes());
            out.extend_from_slice(b"' version='1.0' xml:lang='en'>");
        }
        Output::Features(children) => {
            out.extend_from_slice(b"<stream:features>");
            for child in children.iter() {
                out.extend_from_slice(child);
            }
            out.extend_from_slice(b"</stream:features>");
        }
        Output::Element(bytes) => out.extend_from_slice(bytes),
        Output::Error(condition) => {
            out.extend_from_slice(b"<stream:error><");
            out.extend_from_slice(condition.as_str().as_bytes());
            out.extend_from_slice(b" xmlns='");
            out.extend_from_slice(ns::STREAM_ERRORS.as_bytes());
            out.extend_from_slice(b"'/></stream:error>");
        }
        Output::Close => out.extend_from_slice(b"</stream:stream>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(items: &[Output]) -> String {
        let mut out = BytesMut::new();
        for item in items {
            frame(item, &mut out);
        }
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_whole_stream() {
        let text = framed(&crate::transport::whole_stream());
        assert_eq!(
            text,
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' id='abc' from='example.com' \
             version='1.0' xml:lang='en'>\
             <stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>\
             <message xmlns='jabber:client'/>\
             <stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
             </stream:stream>"
        );
    }
}
