//! The I/O half of a client connection: one task per connection, on the
//! same arbiter as its Session actor.
//!
//! It owns the socket (plain or TLS), the read buffer and the stream
//! parser. It reads only while the session has no event in hand, so a
//! client cannot flood the actor's mailbox, and it applies what the session
//! decides about the stream (restart, STARTTLS, close) before reading on.
//! It must not interpret stanzas: that is the Session's job.

use super::tls::{self, HandshakeFailure};
use super::{ConnectionLost, Inbound, Next, Session, SystemShutdown};
use crate::transport::{tcp, Output};
use crate::xmpp::StreamParser;
use actix::Addr;
use bytes::BytesMut;
use futures_channel::mpsc;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// A client socket before or after STARTTLS. The TLS state is boxed: it is
/// several KiB, and most of a storm's connections are idle sockets whose
/// size is what a held session costs.
pub(crate) type Socket = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// How long one write to the client may block before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes gathered from the outbound queue into one write.
const MAX_WRITE_BATCH: usize = 64 * 1024;
/// The most bytes taken from the socket in one read. They are read into a
/// stack buffer and only what arrived is copied to the heap, so an idle
/// connection holds no read buffer at all.
const READ_CHUNK: usize = 4096;

/// Bytes handed to the I/O task (or held for it) and not yet written to
/// the socket: the session adds what it queues and refuses to queue past
/// `max_outbound_bytes`; the I/O task subtracts what it has written.
#[derive(Clone, Default)]
pub(crate) struct QueuedBytes(Arc<AtomicUsize>);

impl QueuedBytes {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn add(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::AcqRel);
    }

    fn written(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What the session hands the I/O task.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Something to say, in order; framed here.
    Item(Output),
    /// Write what is queued, then close the connection.
    Close,
}

/// Everything one I/O task needs.
pub(crate) struct Connection {
    /// The client's socket, plain until STARTTLS upgrades it.
    pub socket: Socket,
    /// The client's address, for what the operator is told about it.
    pub peer: SocketAddr,
    /// The acceptor for STARTTLS, when the server has a certificate.
    pub tls: Option<TlsAcceptor>,
    /// The session actor that reads the parsed stream and decides.
    pub session: Addr<Session>,
    /// What the session wants written, in order.
    pub outbound: mpsc::Receiver<Outbound>,
    /// Bytes in `outbound` not yet written; lowered as writes complete.
    pub queued: QueuedBytes,
    /// Turns the bytes read into stream events; reset after STARTTLS.
    pub parser: StreamParser,
    /// Cancelled by the session to drop the connection at once (a client
    /// too slow to read what it is sent).
    pub kill: CancellationToken,
    /// Cancelled when the server shuts down.
    pub shutdown: CancellationToken,
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

impl Connection {
    pub(crate) async fn run(self) {
        let Connection {
            socket,
            peer,
            tls,
            session,
            mut outbound,
            queued,
            mut parser,
            kill,
            shutdown,
        } = self;
        metrics::gauge!("gatehouse_connections").increment(1.0);
        let (mut reader, mut writer) = tokio::io::split(socket);
        // Unparsed input: empty (and unallocated) between stanzas.
        let mut buf = BytesMut::new();
        let mut pending: Option<Pin<Box<actix::dev::Request<Session, Inbound>>>> = None;
        let mut shutdown_sent = false;
        let end = loop {
            if pending.is_none() {
                match parser.next_event(&mut buf) {
                    Ok(Some(event)) => {
                        pending = Some(Box::pin(session.send(Inbound::Event(event))))
                    }
                    Ok(None) => {}
                    Err(error) => pending = Some(Box::pin(session.send(Inbound::Invalid(error)))),
                }
                if buf.is_empty() && buf.capacity() > 0 {
                    buf = BytesMut::new();
                }
            }
            tokio::select! {
                biased;
                _ = kill.cancelled() => break End::Killed,
                _ = shutdown.cancelled(), if !shutdown_sent => {
                    shutdown_sent = true;
                    session.do_send(SystemShutdown);
                }
                item = outbound.next() => match item {
                    Some(Outbound::Item(first)) => {
                        if let Err(e) = Box::pin(write_batch(&mut writer, first, &mut outbound, &queued, &kill)).await {
                            break e;
                        }
                    }
                    Some(Outbound::Close) | None => {
                        Box::pin(close(&mut writer, &mut outbound, &queued, &kill)).await;
                        break End::Closed;
                    }
                },
                next = async { pending.as_mut().expect("guarded by the condition").await }, if pending.is_some() => {
                    pending = None;
                    match next {
                        Ok(Next::Continue) => {}
                        Ok(Next::Restart) => parser.reset_authenticated(),
                        Ok(Next::StartTls) => {
                            // The client waits for <proceed/> before its
                            // handshake, so nothing may be buffered yet.
                            if let Err(e) = Box::pin(drain(&mut writer, &mut outbound, &queued, &kill)).await {
                                break e;
                            }
                            // Whitespace after <starttls/> is legal
                            // (a keepalive, a client's newline); anything
                            // else came before <proceed/> and would be
                            // lost under the handshake.
                            if !buf.iter().all(u8::is_ascii_whitespace) {
                                HandshakeFailure::DataBeforeHandshake
                                    .report(peer, &"data after <starttls/> before <proceed/>");
                                break End::TlsFailed;
                            }
                            buf = BytesMut::new();
                            let Some(acceptor) = tls.as_ref() else {
                                break End::TlsFailed;
                            };
                            match Box::pin(tls::upgrade(reader.unsplit(writer), acceptor, peer)).await {
                                Some(secure) => (reader, writer) = tokio::io::split(secure),
                                None => break End::TlsFailed,
                            }
                            parser.reset();
                        }
                        Ok(Next::Close) => {
                            Box::pin(close(&mut writer, &mut outbound, &queued, &kill)).await;
                            break End::Closed;
                        }
                        Err(_) => break End::SessionGone,
                    }
                }
                read = read_chunk(&mut reader, &mut buf), if pending.is_none() => match read {
                    Ok(0) => break End::Eof,
                    Ok(_) => {}
                    Err(e) => break End::Io(e),
                },
            }
        };
        match &end {
            End::Io(error) => tracing::debug!(%error, "connection ended by an I/O error"),
            other => tracing::debug!(end = ?other, "connection ended"),
        }
        session.do_send(ConnectionLost);
        metrics::gauge!("gatehouse_connections").decrement(1.0);
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
    tcp::frame(&first, &mut batch);
    let mut close_after = false;
    while batch.len() < MAX_WRITE_BATCH {
        match outbound.try_recv() {
            Ok(Outbound::Item(more)) => {
                held += more.held_bytes();
                tcp::frame(&more, &mut batch);
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
