//! Plain TCP (RFC 6120): the XML stream as one document over a byte stream.
//! [`XmlStream`] is that framing; STARTTLS and Direct TLS put TLS under the
//! same framing.

use super::{features, ClientStream};
use crate::client::{Outcome, Stop, Target};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connects to the server without TLS.
pub(crate) async fn connect(target: &Target) -> Result<XmlStream<'_, TcpStream>, Stop> {
    Ok(XmlStream::new(socket(target).await?, &target.opening))
}

/// A TCP connection to the target, from its source address if it has
/// one, with Nagle off (every login step is a small write waiting for an
/// answer).
pub(crate) async fn socket(target: &Target) -> Result<TcpStream, Stop> {
    let tcp = match target.source {
        None => TcpStream::connect(target.addr).await?,
        Some(source) => {
            let socket = match source {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(target.addr).await?
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The client's stream header for `domain`, rendered once per run (see
/// [`Target`]).
pub(crate) fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    )
}

/// RFC 6120 framing over a byte stream `S` (TCP, or TLS over TCP).
pub(crate) struct XmlStream<'t, S> {
    /// The socket, plain or TLS.
    socket: S,
    /// The stream header every (re)open sends, from [`stream_header`].
    header: &'t str,
    /// What the server sent that no marker has consumed yet.
    replies: Vec<u8>,
}

impl<'t, S: AsyncRead + AsyncWrite + Unpin> XmlStream<'t, S> {
    pub(crate) fn new(socket: S, header: &'t str) -> Self {
        XmlStream {
            socket,
            header,
            replies: Vec::with_capacity(1024),
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
        let header = self.header;
        self.send(&[header]).await?;
        features(self).await
    }

    async fn send(&mut self, elements: &[&str]) -> Result<(), Stop> {
        match elements {
            [element] => self.socket.write_all(element.as_bytes()).await?,
            // One write for all, as one packet: the login never sends more
            // than a couple of small elements together.
            several => self.socket.write_all(several.concat().as_bytes()).await?,
        }
        Ok(())
    }

    async fn receive(&mut self) -> Result<(), Stop> {
        self.replies.reserve(4096);
        if self.socket.read_buf(&mut self.replies).await? == 0 {
            return Err(Stop::Outcome(Outcome::ConnectionReset));
        }
        Ok(())
    }

    fn replies(&mut self) -> &mut Vec<u8> {
        &mut self.replies
    }

    async fn hung_up(&mut self) {
        let mut scratch = [0u8; 1024];
        while self.socket.read(&mut scratch).await.unwrap_or(0) > 0 {}
    }

    async fn close(&mut self) -> Result<(), Stop> {
        self.send(&["</stream:stream>"]).await?;
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
    XmlStream::new(client, "")
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

    #[tokio::test]
    async fn a_held_session_the_server_drops_is_a_reset() {
        let (_release, held) = tokio::sync::watch::channel(false);
        let mut stream = replaying(b"<presence/>");
        assert!(matches!(
            stream.hold(held).await,
            Err(Stop::Outcome(Outcome::ConnectionReset))
        ));
    }
}
