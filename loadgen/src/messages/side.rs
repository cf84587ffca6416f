//! One side of a pair: logs in once (SASL, bind, stream management if
//! asked, initial presence), tells its peer its full JID, and once every
//! side is up sends the peer chat messages — at most the window in flight —
//! while taking in the peer's, until both have stopped; it answers the
//! server's acknowledgement requests and IQ requests (pings) as it goes.
//!
//! Every message carries its sequence number and the time it was sent, in
//! microseconds since the exchange's start, as its body: `<body>SEQ
//! MICROS</body>`. The body is what every server delivers unchanged, so
//! nothing on the wire is particular to one server.

use super::report::Tally;
use crate::client::{authenticate, by, result_of, Credentials, OnStream, Outcome, Stop, BIND};
use crate::markup::{self, Top};
use crate::transport::ClientStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// XEP-0198's namespace.
const SM: &str = "urn:xmpp:sm:3";

/// One direction of a pair's traffic.
pub(super) struct Flow {
    /// Messages in flight: the sender takes a permit per message, the
    /// receiver gives one back at the message's first delivery.
    window: Semaphore,
    /// How many the sender sent, once it stopped sending.
    sent: watch::Sender<Option<u64>>,
}

impl Flow {
    pub(super) fn new(window: usize) -> Arc<Flow> {
        Arc::new(Flow {
            window: Semaphore::new(window.max(1)),
            sent: watch::channel(None).0,
        })
    }

    /// The sender stopped after `sent` messages.
    pub(super) fn stopped(&self, sent: u64) {
        self.sent.send_replace(Some(sent));
    }
}

/// How every side of a run moves from one phase to the next together. The
/// coordinator learns that every side is past a phase when every clone of
/// a sender is dropped, so a side that fails (or never connects) counts as
/// past it at once.
#[derive(Clone)]
pub(super) struct Phases {
    /// Dropped once the side logged in, or failed to.
    pub arrived: mpsc::Sender<()>,
    /// The exchange's start, set once every side arrived.
    pub go: watch::Receiver<Option<Instant>>,
    /// Dropped once the side stopped exchanging.
    pub finished: mpsc::Sender<()>,
    /// Turns true once the run is measured: the sides close then.
    pub release: watch::Receiver<bool>,
}

/// What every side of a run does alike.
#[derive(Clone, Copy)]
pub(super) struct Plan {
    /// Enable stream management.
    pub sm: bool,
    /// How long a side sends, from the exchange's start.
    pub sending: Duration,
    /// How long it then waits for the peer's messages still on their way.
    pub drain: Duration,
    /// The login's limit (connect to presence), and the close's.
    pub timeout: Duration,
}

/// One side, before it connects.
pub(super) struct Side<'t> {
    pub credentials: Credentials,
    pub plan: Plan,
    /// When the login must be over, connecting included.
    pub login_by: tokio::time::Instant,
    /// Messages this side sends at most.
    pub quota: u64,
    pub phases: Phases,
    /// Where this side's full JID goes to its peer.
    pub jid: oneshot::Sender<String>,
    /// The peer's full JID; an error if the peer did not log in.
    pub peer: oneshot::Receiver<String>,
    /// This side's messages to the peer, and the peer's to this side.
    pub outgoing: Arc<Flow>,
    pub incoming: Arc<Flow>,
    pub tally: &'t mut Tally,
}

impl OnStream for Side<'_> {
    type Output = ();

    fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    async fn on(self, mut stream: impl ClientStream) -> Result<(), Stop> {
        let (plan, login_by) = (self.plan, self.login_by);
        let logged_in = by(login_by, log_in(&mut stream, &self.credentials, plan.sm)).await;
        let own = match logged_in {
            Ok(own) => own,
            Err(stop) => {
                let _ = by(login_by, stream.close()).await;
                return Err(stop);
            }
        };
        let _ = self.jid.send(own);
        let Phases {
            arrived,
            mut go,
            finished,
            mut release,
        } = self.phases;
        drop(arrived);
        let epoch = go
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|go| *go)
            .unwrap_or_else(Instant::now);
        let mut talk = Talk {
            epoch,
            handled: 0,
            outgoing: self.outgoing,
            incoming: self.incoming,
            tally: self.tally,
        };
        let talked = match self.peer.await {
            Ok(peer) => talk.exchange(&mut stream, &peer, plan, self.quota).await,
            // The peer did not log in: nothing to send, nothing to wait for.
            Err(_) => Ok(()),
        };
        talk.outgoing.stopped(talk.tally.sent);
        drop(finished);
        talked?;
        let _ = release.wait_for(|released| *released).await;
        tokio::time::timeout(plan.timeout, talk.close(&mut stream, plan.sm))
            .await
            .unwrap_or(Err(Stop::Outcome(Outcome::Timeout)))
    }
}

/// Authenticates, binds, enables stream management if `sm` and sends
/// initial presence; returns the full JID the server bound, ready to stand
/// in an attribute.
async fn log_in(
    stream: &mut impl ClientStream,
    credentials: &Credentials,
    sm: bool,
) -> Result<String, Stop> {
    authenticate(stream, credentials).await?;
    stream.send(&[BIND]).await?;
    result_of(stream, "bind1").await?;
    // The rest of the answer, which ends the same way on every server.
    let (_, bound) = stream.until(&["</iq>"]).await?;
    let jid = markup::child_text(&bound, "jid")
        .and_then(|jid| std::str::from_utf8(jid).ok())
        .ok_or(Stop::Outcome(Outcome::OtherFailure))?
        .replace('\'', "&apos;");
    if sm {
        stream.send(&[&format!("<enable xmlns='{SM}'/>")]).await?;
        let (answer, _) = stream.until(&["<enabled", "<failed"]).await?;
        stream.until(&[">"]).await?;
        if answer != 0 {
            return Err(Stop::Outcome(Outcome::OtherFailure));
        }
    }
    stream.send(&["<presence/>"]).await?;
    Ok(jid)
}

/// The answer to an IQ request (a server's ping, say): a XEP-0199 ping
/// gets its result, anything else `service-unavailable`, as RFC 6120 §8.4
/// asks of a client that supports nothing more.
fn answer(tag: &[u8], request: &[u8]) -> String {
    let attribute = |name| markup::attribute(tag, name).map(|v| v.replace('\'', "&apos;"));
    let id = attribute("id").unwrap_or_default();
    let to = attribute("from").map_or(String::new(), |from| format!(" to='{from}'"));
    if memchr::memmem::find(request, b"urn:xmpp:ping").is_some() {
        format!("<iq type='result' id='{id}'{to}/>")
    } else {
        format!(
            "<iq type='error' id='{id}'{to}><error type='cancel'>\
             <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        )
    }
}

/// A logged-in side's exchange with its peer.
struct Talk<'t> {
    /// The exchange's start, which message times count from.
    epoch: Instant,
    /// Stanzas received since stream management was enabled (XEP-0198's
    /// `h`, which wraps at 2^32).
    handled: u32,
    outgoing: Arc<Flow>,
    incoming: Arc<Flow>,
    tally: &'t mut Tally,
}

impl Talk<'_> {
    /// Sends `quota` messages to `peer` (or as many as `plan.sending`
    /// allows), a window's worth in flight, while taking in the peer's;
    /// returns once this side stopped sending and every message the peer
    /// sent arrived, or when the drain time is over.
    async fn exchange(
        &mut self,
        stream: &mut impl ClientStream,
        peer: &str,
        plan: Plan,
        quota: u64,
    ) -> Result<(), Stop> {
        let start = tokio::time::Instant::from_std(self.epoch);
        let (send_until, drain_until) = (start + plan.sending, start + plan.sending + plan.drain);
        let mut sending = quota > 0;
        if !sending {
            self.outgoing.stopped(0);
        }
        // Owned here, as the branches below borrow them while others change
        // the tally.
        let (outgoing, incoming) = (self.outgoing.clone(), self.incoming.clone());
        let mut peer_sent = incoming.sent.subscribe();
        loop {
            let peer_done = peer_sent
                .borrow()
                .is_some_and(|sent| self.tally.delivered >= sent);
            if !sending && peer_done {
                return Ok(());
            }
            tokio::select! {
                received = stream.receive() => {
                    received?;
                    self.take_in(stream).await?;
                }
                permit = outgoing.window.acquire(), if sending => {
                    permit.expect("the window is never closed").forget();
                    let seq = self.tally.sent;
                    let micros = self.epoch.elapsed().as_micros();
                    stream.send(&[&format!(
                        "<message to='{peer}' type='chat' id='m{seq}'><body>{seq} {micros}</body></message>"
                    )]).await?;
                    self.tally.sent += 1;
                    if self.tally.sent == quota {
                        sending = false;
                        self.outgoing.stopped(self.tally.sent);
                    }
                }
                () = tokio::time::sleep_until(send_until), if sending => {
                    sending = false;
                    self.outgoing.stopped(self.tally.sent);
                }
                _ = peer_sent.changed() => {}
                () = tokio::time::sleep_until(drain_until) => return Ok(()),
            }
        }
    }

    /// Takes every complete stanza the server sent: the peer's messages are
    /// counted, errors too, IQ requests and acknowledgement requests are
    /// answered.
    async fn take_in(&mut self, stream: &mut impl ClientStream) -> Result<(), Stop> {
        let mut consumed = 0;
        let mut asked = false;
        let mut answers = Vec::new();
        let replies = stream.replies();
        while let Some((top, len)) = markup::top_element(&replies[consumed..]) {
            consumed += len;
            let Top::Element { tag, whole } = top else {
                return Err(Stop::Outcome(Outcome::ConnectionReset));
            };
            match markup::name(tag) {
                name @ (b"message" | b"presence" | b"iq") => {
                    self.handled = self.handled.wrapping_add(1);
                    match (name, markup::attribute(tag, "type").as_deref()) {
                        (_, Some("error")) => self.tally.errors += 1,
                        (b"message", _) => self.delivered(whole),
                        (b"iq", Some("get" | "set")) => answers.push(answer(tag, whole)),
                        _ => {}
                    }
                }
                b"r" => asked = true,
                // A stream error, or RFC 7395's end of the stream.
                b"stream:error" | b"close" => return Err(Stop::Outcome(Outcome::ConnectionReset)),
                _ => {}
            }
        }
        replies.drain(..consumed);
        if asked {
            self.tally.acks += 1;
            answers.push(self.ack());
        }
        if !answers.is_empty() {
            let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
            stream.send(&answers).await?;
        }
        Ok(())
    }

    /// Counts one of the peer's messages (anything else is ignored): its
    /// latency at its first delivery, which also frees a place in the
    /// peer's window; a duplicate otherwise.
    fn delivered(&mut self, message: &[u8]) {
        let Some((seq, micros)) = markup::child_text(message, "body")
            .and_then(|body| std::str::from_utf8(body).ok())
            .and_then(|body| body.split_once(' '))
            .and_then(|(seq, micros)| Some((seq.parse::<usize>().ok()?, micros.parse().ok()?)))
        else {
            return;
        };
        let seen = &mut self.tally.seen;
        if seen.len() <= seq {
            seen.resize(seq + 1, false);
        }
        if std::mem::replace(&mut seen[seq], true) {
            self.tally.duplicated += 1;
            return;
        }
        self.tally.delivered += 1;
        let sent = Duration::from_micros(micros);
        self.tally
            .latencies
            .push(self.epoch.elapsed().saturating_sub(sent));
        self.incoming.window.add_permits(1);
    }

    /// The acknowledgement of every stanza taken in so far.
    fn ack(&self) -> String {
        format!("<a xmlns='{SM}' h='{}'/>", self.handled)
    }

    /// Closes the stream, first acknowledging every stanza taken in so
    /// that the server routes none of them again.
    async fn close(&self, stream: &mut impl ClientStream, sm: bool) -> Result<(), Stop> {
        if sm {
            stream.send(&[&self.ack()]).await?;
        }
        stream.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tcp::XmlStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// A stream whose server side is returned, having written `replies`;
    /// the client's side has read them.
    async fn received(replies: &[u8]) -> (XmlStream<'static, DuplexStream>, DuplexStream) {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut stream = XmlStream::new(client, "");
        server.write_all(replies).await.unwrap();
        while stream.replies().len() < replies.len() {
            stream.receive().await.ok().unwrap();
        }
        (stream, server)
    }

    /// A side's exchange, its peer's one message in flight.
    fn talk(tally: &mut Tally) -> Talk<'_> {
        let incoming = Flow::new(1);
        incoming.window.try_acquire().unwrap().forget();
        Talk {
            epoch: Instant::now(),
            handled: 0,
            outgoing: Flow::new(1),
            incoming,
            tally,
        }
    }

    #[tokio::test]
    async fn stanzas_are_counted_answered_and_acknowledged_in_order() {
        let (mut stream, mut server) = received(
            b"<presence/><message type='chat'><body>0 0</body></message>\
              <message type='chat'><body>0 0</body></message>\
              <message type='error'><body>1 0</body></message>\
              <iq type='get' id='p1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>\
              <iq type='set' id='q1'><query xmlns='urn:x'/></iq>\
              <r xmlns='urn:xmpp:sm:3'/><message type='chat'><bo",
        )
        .await;
        let mut tally = Tally::default();
        let mut talk = talk(&mut tally);
        talk.take_in(&mut stream).await.ok().unwrap();
        assert_eq!(talk.handled, 6);
        // The first delivery gave the peer its place back.
        assert_eq!(talk.incoming.window.available_permits(), 1);
        let expected: &[u8] = b"<iq type='result' id='p1' to='localhost'/>\
            <iq type='error' id='q1'><error type='cancel'>\
            <service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>\
            <a xmlns='urn:xmpp:sm:3' h='6'/>";
        let mut ack = vec![0; expected.len()];
        server.read_exact(&mut ack).await.unwrap();
        assert_eq!(ack, expected);
        // What is not whole yet waits for the rest.
        assert_eq!(stream.replies(), b"<message type='chat'><bo");
        assert_eq!(
            (tally.delivered, tally.duplicated, tally.errors, tally.acks),
            (1, 1, 1, 1)
        );
    }

    #[tokio::test]
    async fn the_end_of_the_stream_ends_the_exchange() {
        let (mut stream, _server) = received(b"</stream:stream>").await;
        let mut tally = Tally::default();
        assert!(matches!(
            talk(&mut tally).take_in(&mut stream).await,
            Err(Stop::Outcome(Outcome::ConnectionReset))
        ));
    }
}
