//! The TLS handshake of a client connection (STARTTLS, or Direct TLS from
//! the first byte): a completed one is counted as full or resumed (from a
//! session ticket) in `gatehouse_tls_handshakes_total{kind}`, and a failed
//! one tells the operator a reason, counted in
//! `gatehouse_tls_handshake_failures_total{reason}` and logged at `info`
//! with the peer address (a few lines a second at most, so a scan cannot
//! flood the log).
//!
//! It owns starting the handshake, bounding it in time and what its
//! outcome means; the TLS protocol itself is [`super::tls_stream`]'s, and
//! the connection loop decides when to start it and what to do with its
//! result.

use super::tcp::Socket;
use super::tls_stream::TlsSocket;
use crate::log_budget::LogBudget;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_util::either::Either;

/// The ALPN protocol of a Direct TLS client connection (XEP-0368).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Failed handshakes logged per second; the rest are only counted.
static LOGGED: LogBudget = LogBudget::new(10);

/// Why a handshake failed: the `reason` label of the failure counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The client sent something other than whitespace after
    /// `<starttls/>` without waiting for `<proceed/>`.
    DataBeforeHandshake,
    /// The handshake did not finish within [`TLS_HANDSHAKE_TIMEOUT`].
    Timeout,
    /// The client closed the connection during the handshake (often: it
    /// did not trust the certificate and gave up without an alert).
    ClosedByClient,
    /// The client sent a TLS alert: typically it rejected the certificate
    /// (unknown CA, bad certificate, wrong name).
    AlertFromClient,
    /// No protocol version, cipher suite or signature scheme in common.
    Incompatible,
    /// What arrived was not TLS, or broke the protocol.
    NotTls,
    /// A socket error, or anything else.
    Other,
}

impl HandshakeFailure {
    /// Every reason, for registering the counter at zero.
    const ALL: [HandshakeFailure; 7] = [
        HandshakeFailure::DataBeforeHandshake,
        HandshakeFailure::Timeout,
        HandshakeFailure::ClosedByClient,
        HandshakeFailure::AlertFromClient,
        HandshakeFailure::Incompatible,
        HandshakeFailure::NotTls,
        HandshakeFailure::Other,
    ];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::DataBeforeHandshake => "data_before_handshake",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::ClosedByClient => "closed_by_client",
            HandshakeFailure::AlertFromClient => "alert_from_client",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Other => "other",
        }
    }

    /// Classifies an error of the handshake.
    fn of(error: &std::io::Error) -> HandshakeFailure {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            return HandshakeFailure::ClosedByClient;
        }
        let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Other;
        };
        match tls {
            rustls::Error::AlertReceived(_) => HandshakeFailure::AlertFromClient,
            rustls::Error::PeerIncompatible(_) => HandshakeFailure::Incompatible,
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::DecryptError => HandshakeFailure::NotTls,
            _ => HandshakeFailure::Other,
        }
    }

    /// Logs the failure (unless this second's lines are used up), then
    /// counts it. `detail` is rustls' or the socket's error text: it never
    /// holds application data.
    pub(crate) fn report(self, peer: SocketAddr, detail: &dyn std::fmt::Display) {
        if LOGGED.allows() {
            tracing::info!(%peer, reason = self.as_str(), %detail, "TLS handshake failed");
        }
        metrics::counter!("gatehouse_tls_handshake_failures_total", "reason" => self.as_str())
            .increment(1);
    }
}

/// Describes the handshake failure counter and registers every reason at
/// zero, so dashboards and alerts see a 0 before the first failure.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_tls_handshake_failures_total",
        "TLS handshakes (STARTTLS and Direct TLS) that failed, by reason: data_before_handshake, timeout, closed_by_client, alert_from_client, incompatible, not_tls, other"
    );
    for reason in HandshakeFailure::ALL {
        metrics::counter!("gatehouse_tls_handshake_failures_total", "reason" => reason.as_str())
            .absolute(0);
    }
    metrics::describe_counter!(
        "gatehouse_tls_handshakes_total",
        "TLS handshakes (STARTTLS and Direct TLS) completed, by kind: full, or resumed from a session ticket (c2s.tls_tickets)"
    );
    for kind in ["full", "resumed"] {
        metrics::counter!("gatehouse_tls_handshakes_total", "kind" => kind).absolute(0);
    }
}

/// Runs the server side of the handshake on a plain socket.
pub(crate) async fn upgrade(
    socket: Socket,
    config: &Arc<ServerConfig>,
    peer: SocketAddr,
) -> Option<Socket> {
    let Either::Left(tcp) = socket else {
        // Already secure: the session never asks twice.
        HandshakeFailure::Other.report(peer, &"STARTTLS on a secure stream");
        return None;
    };
    let handshake = TlsSocket::accept(tcp, config.clone());
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => {
            let kind = match tls.handshake_kind() {
                Some(rustls::HandshakeKind::Resumed) => "resumed",
                _ => "full",
            };
            metrics::counter!("gatehouse_tls_handshakes_total", "kind" => kind).increment(1);
            Some(Either::Right(tls))
        }
        Ok(Err(e)) => {
            HandshakeFailure::of(&e).report(peer, &e);
            None
        }
        Err(_) => {
            HandshakeFailure::Timeout.report(
                peer,
                &format!("no handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
            );
            None
        }
    }
}
