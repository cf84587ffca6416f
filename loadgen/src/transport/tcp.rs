//! Plain TCP (RFC 6120): the XML stream as one document over a byte stream.
//! [`XmlStream`] is that framing; STARTTLS and Direct TLS put TLS under the
//! same framing.

use super::ClientStream;
use crate::client::{Outcome, Stop, Target};
use memchr::memmem;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to the server without TLS.
pub(crate) async fn connect(target: &Target) -> Result<XmlStream<'_, TcpStream>, Stop> {
    Ok(XmlStream::new(
        socket(target.addr).await?,
        &target.stream_header,
    ))
}

/// A TCP connection to `addr` with Nagle off (every login step is a small
/// write waiting for an answer).
pub(crate) async fn socket(addr: SocketAddr) -> Result<TcpStream, Stop> {
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The client's stream header for `domain`, rendered once per run (see
/// [`Target`]).
pub(crate) fn stream_header(domain: &str) -> Vec<u8> {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
    .into_bytes()
}

/// RFC 6120 framing over a byte stream `S` (TCP, or TLS over TCP), with a
/// read buffer scanned for markers.
pub(crate) struct XmlStream<'t, S> {
    /// The socket, plain or TLS.
    socket: S,
    /// The stream header every (re)open sends, from [`stream_header`].
    header: &'t [u8],
    /// What the server sent that no marker has consumed yet.
    buf: Vec<u8>,
    /// Where the unscanned part of `buf` starts, per call of `until`: bytes
    /// already scanned are not scanned again when more arrive.
    scanned: usize,
}

impl<'t, S: AsyncRead + AsyncWrite + Unpin> XmlStream<'t, S> {
    pub(crate) fn new(socket: S, header: &'t [u8]) -> Self {
        XmlStream {
            socket,
            header,
            buf: Vec::with_capacity(1024),
            scanned: 0,
        }
    }

    /// The socket, for a transport that changes what runs on it (STARTTLS);
    /// anything buffered is dropped.
    pub(crate) fn into_socket(self) -> S {
        self.socket
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream for XmlStream<'_, S> {
    async fn open(&mut self) -> Result<(), Stop> {
        self.send(self.header).await?;
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

    async fn send(&mut self, elements: &[u8]) -> Result<(), Stop> {
        self.socket.write_all(elements).await?;
        Ok(())
    }

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
                    memmem::find(&self.buf[from..], m.as_bytes()).map(|at| (from + at, i, m.len()))
                })
                .min();
            if let Some((at, i, len)) = found {
                return Ok((i, self.buf.drain(..at + len).collect()));
            }
            self.scanned = self.buf.len();
            self.buf.reserve(4096);
            if self.socket.read_buf(&mut self.buf).await? == 0 {
                return Err(Stop::Outcome(Outcome::ConnectionReset));
            }
        }
    }

    async fn hold(&mut self, mut release: tokio::sync::watch::Receiver<bool>) -> Result<(), Stop> {
        // The login's buffer is not needed while the session sits idle.
        self.buf = Vec::new();
        let mut scratch = [0u8; 1024];
        loop {
            tokio::select! {
                changed = release.changed() => if changed.is_err() || *release.borrow() {
                    return Ok(());
                },
                n = self.socket.read(&mut scratch) => if n.unwrap_or(0) == 0 {
                    return Err(Stop::Outcome(Outcome::ConnectionReset));
                },
            }
        }
    }

    async fn close(&mut self) -> Result<(), Stop> {
        self.send(b"</stream:stream>").await?;
        let _ = self.socket.shutdown().await;
        Ok(())
    }
}

/// A stream whose server side writes `replies` in 3-byte pieces, so markers
/// straddle reads.
#[cfg(test)]
pub(crate) fn replaying(replies: &'static [u8]) -> XmlStream<'static, tokio::io::DuplexStream> {
    let (client, mut server) = tokio::io::duplex(64);
    tokio::spawn(async move {
        for piece in replies.chunks(3) {
            server.write_all(piece).await.unwrap();
        }
        let _ = server.shutdown().await;
    });
    XmlStream::new(client, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn markers_are_found_across_reads_and_consumed() {
        let mut stream = replaying(b"<stream:features><bind/></stream:features><success/>");
        let (which, text) = stream
            .until(&["<failure", "</stream:features>"])
            .await
            .ok()
            .unwrap();
        assert_eq!(which, 1);
        assert!(text.ends_with(b"</stream:features>"));
        assert_eq!(stream.until(&["<success"]).await.ok().unwrap().0, 0);
    }
}
