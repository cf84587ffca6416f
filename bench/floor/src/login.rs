//! One connection's login, as the load generator performs it (see
//! `loadgen/src/client.rs`): stream header → features → [`<starttls/>` →
//! `<proceed/>` → handshake → header → features] → `<auth/>` →
//! `<success/>` → header → features → bind → roster get and initial
//! presence → `</stream:stream>`, answered with canned replies: the bytes
//! Gatehouse writes with `bench/compare.sh`'s config, but for the stream
//! ids and the bound resource, which are fixed here.
//!
//! Each client step is recognised by a byte search for where its element
//! starts and ends, the least reading any server must do to know a step
//! is complete; nothing is parsed, checked or remembered beyond the IQ ids
//! the generator looks for in the answers. One read per client write and
//! one write per reply, as Gatehouse does them; between steps a connection
//! holds no buffer, so a held session costs only its socket, its TLS state
//! and its task. It owns the conversation; it must not look at more than
//! the markers: a floor that understood its input would not be one.

use memchr::memmem;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// What the plain listener offers before authentication.
#[derive(Clone)]
pub enum Offer {
    /// SASL PLAIN in the clear, no TLS.
    Plain,
    /// STARTTLS, or SASL PLAIN in the clear.
    Starttls(TlsAcceptor),
    /// STARTTLS only (`--require-tls`).
    RequiredStarttls(TlsAcceptor),
}

/// Our stream header, the same for every stream (a real server gives each
/// stream an id of its own; the generator does not look at it).
macro_rules! header {
    () => {
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' id='0123456789abcdef' \
         from='localhost' version='1.0' xml:lang='en'>"
    };
}

/// SASL PLAIN, the one mechanism the generator uses.
macro_rules! mechanisms {
    () => {
        "<mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><mechanism>PLAIN</mechanism>\
         </mechanisms>"
    };
}

/// The answers to the first stream header, by [`Offer`].
const OPENED: &str = concat!(
    header!(),
    "<stream:features>",
    mechanisms!(),
    "</stream:features>"
);
const OPENED_STARTTLS: &str = concat!(
    header!(),
    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
    mechanisms!(),
    "</stream:features>"
);
const OPENED_REQUIRING_TLS: &str = concat!(
    header!(),
    "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>\
     </stream:features>"
);
const PROCEED: &str = "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
const SUCCESS: &str = "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'></success>";
/// The answer to the header after SASL: what Gatehouse offers with its
/// default settings and no roster service.
const RESTARTED: &str = concat!(
    header!(),
    "<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>\
     <session xmlns='urn:ietf:params:xml:ns:xmpp-session'><optional/></session>\
     <sm xmlns='urn:xmpp:sm:3'/><csi xmlns='urn:xmpp:csi:0'/></stream:features>"
);
/// What every IQ result starts with, up to its id.
const RESULT_ID: &str = "<iq xmlns='jabber:client' id='";
/// The bind result after its id: the bound JID (a real server's names the
/// account and a fresh resource).
const BOUND: &str = "' type='result'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
    <jid>user@localhost/0123456789abcdef</jid></bind></iq>";
/// The roster result after its id: empty, as Gatehouse's without a roster
/// service.
const ROSTER: &str = "' to='user@localhost/0123456789abcdef' type='result'>\
    <query xmlns='jabber:iq:roster'/></iq>";
const CLOSE: &str = "</stream:stream>";

/// A client element the floor waits for: what starts it and what ends it
/// (the first `end` after `start`).
struct Element {
    start: &'static [u8],
    end: &'static [u8],
}

const HEADER: Element = Element::new(b"<stream:stream", b">");
const STARTTLS: Element = Element::new(b"<starttls", b">");
const AUTH: Element = Element::new(b"<auth", b"</auth>");
const IQ: Element = Element::new(b"<iq", b"</iq>");
/// The generator's `<presence/>`: empty, so its tag's end is its end.
const PRESENCE: Element = Element::new(b"<presence", b">");
const STREAM_END: Element = Element::new(b"</stream:stream", b">");

impl Element {
    const fn new(start: &'static [u8], end: &'static [u8]) -> Self {
        Element { start, end }
    }
}

/// The most the floor buffers while waiting for a step's end: a client
/// that sends more without it is not the generator.
const MAX_PENDING: usize = 64 * 1024;
/// The most one read takes. Read into the stack and copied, so a
/// connection waiting for its client holds no buffer.
const READ_SIZE: usize = 4096;

/// A plain connection: the first stream, then STARTTLS and the login
/// inside TLS, or (unless TLS is required) the login in the clear.
pub async fn plain(socket: TcpStream, offer: Offer) {
    let (opened, acceptor, in_clear) = match offer {
        Offer::Plain => (OPENED, None, true),
        Offer::Starttls(acceptor) => (OPENED_STARTTLS, Some(acceptor), true),
        Offer::RequiredStarttls(acceptor) => (OPENED_REQUIRING_TLS, Some(acceptor), false),
    };
    let mut client = Client::new(socket);
    let first = first_stream(&mut client, opened).await;
    match (first, acceptor) {
        // Boxed: the TLS state is several KiB, which a plain session's
        // task would otherwise hold too.
        (Ok(Asked::Starttls), Some(acceptor)) => {
            let _ = Box::pin(starttls(client, &acceptor)).await;
        }
        (Ok(Asked::Auth), _) if in_clear => {
            let _ = authenticated(client).await;
        }
        // STARTTLS not offered, SASL before TLS where TLS is required, or
        // a stream the generator would not send: hung up on.
        _ => {}
    }
}

/// What the client asked for after the first features.
enum Asked {
    Starttls,
    Auth,
}

/// The first stream's header, answered with `opened`, and what the client
/// asks next.
async fn first_stream(client: &mut Client<TcpStream>, opened: &str) -> io::Result<Asked> {
    client.next(&[HEADER]).await?;
    client.reply(opened).await?;
    Ok(match client.next(&[STARTTLS, AUTH]).await? {
        0 => Asked::Starttls,
        _ => Asked::Auth,
    })
}

/// `<proceed/>`, the handshake, and the login inside TLS.
async fn starttls(mut client: Client<TcpStream>, acceptor: &TlsAcceptor) -> io::Result<()> {
    client.reply(PROCEED).await?;
    let secure = acceptor.accept(client.socket).await?;
    secure_login(Client::new(secure)).await
}

/// A Direct TLS connection: the handshake first (ALPN `xmpp-client`, in
/// the acceptor), then the login.
pub async fn direct_tls(socket: TcpStream, acceptor: TlsAcceptor) {
    if let Ok(secure) = acceptor.accept(socket).await {
        let _ = secure_login(Client::new(secure)).await;
    }
}

/// The login on a stream that is already secure: SASL is offered at once.
async fn secure_login<S: AsyncRead + AsyncWrite + Unpin>(mut client: Client<S>) -> io::Result<()> {
    client.next(&[HEADER]).await?;
    client.reply(OPENED).await?;
    client.next(&[AUTH]).await?;
    authenticated(client).await
}

/// The rest of the login once the client sent `<auth/>`: success, the
/// restarted stream, bind, roster, presence, and the close.
async fn authenticated<S: AsyncRead + AsyncWrite + Unpin>(mut client: Client<S>) -> io::Result<()> {
    client.reply(SUCCESS).await?;
    client.next(&[HEADER]).await?;
    client.reply(RESTARTED).await?;
    client.answer_iq(BOUND).await?;
    client.answer_iq(ROSTER).await?;
    // Gatehouse sends initial presence to the user's other resources and
    // contacts: none in a storm, so nothing goes back.
    client.next(&[PRESENCE]).await?;
    client.next(&[STREAM_END]).await?;
    client.reply(CLOSE).await?;
    client.socket.shutdown().await
}

/// A client connection, plain or TLS, and what it sent that no step has
/// taken yet.
struct Client<S> {
    /// The socket; its TLS state, after a handshake.
    socket: S,
    /// Bytes read beyond the last complete step (the generator writes
    /// some steps together): empty, and unallocated, between steps.
    pending: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(socket: S) -> Self {
        Client {
            socket,
            pending: Vec::new(),
        }
    }

    /// Reads until one of `expected` is complete, and takes it; returns
    /// its index.
    async fn next(&mut self, expected: &[Element]) -> io::Result<usize> {
        let (which, _, end) = self.until(expected).await?;
        self.take(end);
        Ok(which)
    }

    /// Reads until one of `expected` is complete in what the client sent:
    /// which, its start tag's range and its end. The client hanging up,
    /// or sending too much without one, is an error.
    async fn until(&mut self, expected: &[Element]) -> io::Result<(usize, Range<usize>, usize)> {
        loop {
            if let Some(complete) = complete(&self.pending, expected) {
                return Ok(complete);
            }
            if self.pending.len() > MAX_PENDING {
                return Err(io::ErrorKind::InvalidData.into());
            }
            let (socket, pending) = (&mut self.socket, &mut self.pending);
            let read = std::future::poll_fn(|cx| {
                let mut chunk = [0u8; READ_SIZE];
                let mut chunk = ReadBuf::new(&mut chunk);
                let polled = Pin::new(&mut *socket).poll_read(cx, &mut chunk);
                pending.extend_from_slice(chunk.filled());
                polled.map_ok(|()| chunk.filled().len())
            });
            if read.await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Drops the first `end` bytes of what the client sent (a step done),
    /// and the buffer once nothing is left in it.
    fn take(&mut self, end: usize) {
        self.pending.drain(..end);
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }

    /// Writes `reply` in one write (and, over TLS, sends its record).
    async fn reply(&mut self, reply: impl AsRef<[u8]>) -> io::Result<()> {
        self.socket.write_all(reply.as_ref()).await?;
        self.socket.flush().await
    }

    /// Reads the next IQ and answers it with a result under its own id,
    /// ending with `rest`.
    async fn answer_iq(&mut self, rest: &str) -> io::Result<()> {
        let (_, tag, end) = self.until(&[IQ]).await?;
        let id = id(&self.pending[tag]).ok_or(io::ErrorKind::InvalidData)?;
        let mut reply = Vec::with_capacity(RESULT_ID.len() + id.len() + rest.len());
        reply.extend_from_slice(RESULT_ID.as_bytes());
        reply.extend_from_slice(id);
        reply.extend_from_slice(rest.as_bytes());
        self.take(end);
        self.reply(reply).await
    }
}

/// The first of `expected` complete in `text`: its index, its start tag's
/// range, and where it ends.
fn complete(text: &[u8], expected: &[Element]) -> Option<(usize, Range<usize>, usize)> {
    expected
        .iter()
        .enumerate()
        .filter_map(|(which, element)| {
            let start = memmem::find(text, element.start)?;
            let tag = start + memchr::memchr(b'>', &text[start..])? + 1;
            let end = start + memmem::find(&text[start..], element.end)? + element.end.len();
            Some((start, which, start..tag, end))
        })
        .min_by_key(|(start, ..)| *start)
        .map(|(_, which, tag, end)| (which, tag, end))
}

/// The `id` attribute of a start tag, quoted either way.
fn id(tag: &[u8]) -> Option<&[u8]> {
    let at = memmem::find(tag, b" id=")? + 4;
    let quote = *tag.get(at)?;
    let value = tag.get(at + 1..)?;
    Some(&value[..memchr::memchr(quote, value)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_complete_only_at_their_end() {
        let both = b"<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq><presence/>";
        let (which, tag, end) = complete(both, &[IQ]).unwrap();
        assert_eq!(which, 0);
        assert_eq!(&both[tag], b"<iq type='get' id='roster1'>");
        assert_eq!(&both[end..], b"<presence/>");
        for cut in 0..end {
            assert!(complete(&both[..cut], &[IQ]).is_none(), "cut at {cut}");
        }
        let header = b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0'>";
        assert_eq!(complete(header, &[HEADER]).unwrap().2, header.len());
        assert_eq!(complete(b"</stream:stream>", &[HEADER]), None);
    }

    #[test]
    fn the_first_of_several_is_taken() {
        let auth =
            b"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>AGEAYg==</auth>";
        assert_eq!(complete(auth, &[STARTTLS, AUTH]).unwrap().0, 1);
        let starttls = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>";
        assert_eq!(complete(starttls, &[STARTTLS, AUTH]).unwrap().0, 0);
    }

    #[test]
    fn ids_are_read_whichever_the_quotes() {
        assert_eq!(id(b"<iq type='set' id='bind1'>"), Some(&b"bind1"[..]));
        assert_eq!(id(b"<iq id=\"r 1\" type='get'>"), Some(&b"r 1"[..]));
        assert_eq!(id(b"<iq type='get'>"), None);
    }
}
