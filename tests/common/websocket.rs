//! A real WebSocket client (tokio-tungstenite) for `/xmpp-websocket`
//! (RFC 7395): connecting with a subprotocol and origin, framing, logging
//! in.

use super::{PATIENCE, SASL};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderName;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The stream header a client opens with.
pub const OPEN: &str =
    "<open xmlns='urn:ietf:params:xml:ns:xmpp-framing' to='localhost' version='1.0'/>";

/// One WebSocket to `/xmpp-websocket`.
pub struct Ws(pub WebSocketStream<MaybeTlsStream<TcpStream>>);

/// Opens a WebSocket asking for `protocol`, from the page at `origin`.
pub async fn connect(
    web: SocketAddr,
    protocol: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, WsError> {
    let headers: Vec<_> = [("Sec-WebSocket-Protocol", protocol), ("Origin", origin)]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
    open(TcpStream::connect(web).await.unwrap(), web, &headers).await
}

/// Opens a WebSocket to `web` over `stream` (a connection the test made,
/// from the address it chose) with `headers` on the upgrade request, each
/// a line of its own.
pub async fn open(
    stream: TcpStream,
    web: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<Ws, WsError> {
    let mut request = format!("ws://{web}/xmpp-websocket")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let (stream, response) =
        tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await?;
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("xmpp"),
        "the server names the subprotocol"
    );
    Ok(Ws(stream))
}

/// A WebSocket upgrade to `web` from the loopback address `from`, with
/// `X-Forwarded-For` lines `forwarded_for`: the WebSocket, or the
/// refusal's HTTP status and `Retry-After`.
pub async fn upgrade_from(
    web: SocketAddr,
    from: &str,
    forwarded_for: &[&str],
) -> Result<Ws, (u16, Option<String>)> {
    let mut headers = vec![("Sec-WebSocket-Protocol", "xmpp")];
    headers.extend(forwarded_for.iter().map(|hop| ("X-Forwarded-For", *hop)));
    match open(super::connect_from(from, web).await, web, &headers).await {
        Ok(ws) => Ok(ws),
        Err(WsError::Http(response)) => {
            let retry_after = response.headers().get("Retry-After");
            Err((
                response.status().as_u16(),
                retry_after.map(|v| v.to_str().unwrap().to_owned()),
            ))
        }
        Err(error) => panic!("the upgrade failed otherwise: {error}"),
    }
}

impl Ws {
    pub async fn send(&mut self, text: &str) {
        self.0.send(Message::text(text)).await.unwrap();
    }

    /// The next text message; panics on anything else.
    pub async fn text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.0.next())
                .await
                .expect("an answer in time");
            match message {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Reads text messages until one contains `marker`; returns it.
    pub async fn until(&mut self, marker: &str) -> String {
        loop {
            let text = self.text().await;
            if text.contains(marker) {
                return text;
            }
        }
    }

    /// The stream error's condition, then `<close/>` and the WebSocket's
    /// close.
    pub async fn stream_error(&mut self) -> String {
        let error = self.until("<stream:error").await;
        let condition = error
            .split("><")
            .nth(1)
            .and_then(|rest| rest.split([' ', '/']).next())
            .unwrap_or_default()
            .to_owned();
        assert!(
            self.text().await.starts_with("<close"),
            "a <close/> follows"
        );
        self.closed().await;
        condition
    }

    /// Waits for the server to close the WebSocket; returns its code.
    pub async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(PATIENCE, self.0.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    }

    /// Opens the stream, authenticates and restarts it; returns the
    /// features after the restart.
    pub async fn authenticate(&mut self, user: &str, password: &str) -> String {
        self.send(OPEN).await;
        assert!(self.text().await.starts_with("<open"));
        let features = self.text().await;
        assert!(features.contains("PLAIN"), "{features}");
        assert!(!features.contains("starttls"), "no STARTTLS on WebSocket");
        let payload =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.send(&format!(
            "<auth xmlns='{SASL}' mechanism='PLAIN'>{payload}</auth>"
        ))
        .await;
        assert!(self.text().await.starts_with("<success"));
        self.send(OPEN).await;
        assert!(self.text().await.starts_with("<open"));
        self.text().await
    }

    /// Opens the stream, logs in and binds; returns the full JID.
    pub async fn login(&mut self, user: &str, password: &str, resource: &str) -> String {
        let features = self.authenticate(user, password).await;
        assert!(
            features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
            "{features}"
        );
        self.send(&format!(
            "<iq xmlns='jabber:client' type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"
        ))
        .await;
        let bound = self.text().await;
        assert!(
            bound.contains("type=\"result\"") || bound.contains("type='result'"),
            "{bound}"
        );
        format!("{user}@localhost/{resource}")
    }
}
