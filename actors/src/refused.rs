//! `gatehouse_refused_total{reason}`: every refusal of a limit that keeps
//! one client (or one address) from taking what others need, counted by
//! the limit, so the operator can tell an attack from a limit set too low.
//!
//! Owns the reasons and the counter. Must not touch where a limit is
//! enforced: each enforcing component counts its own refusals here.

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections` were open.
    Connections,
    /// `limits.max_unauthenticated_connections` were open and not yet
    /// logged in.
    UnauthenticatedConnections,
    /// `limits.max_connections_per_address` were open from the address.
    ConnectionsPerAddress,
    /// The address opened connections faster than
    /// `limits.connections_per_second_per_address` allows.
    ConnectionRate,
    /// The account had `c2s.max_resources` bound already.
    Resources,
    /// Too many failed logins from the client (for the account, or for
    /// any): the login was refused before the backend was asked.
    LoginThrottled,
    /// A trusted proxy's connection began with no valid PROXY protocol v2
    /// header (in time).
    ProxyHeader,
    /// An occupant sent a room groupchat messages faster than
    /// `muc.messages_per_second_per_occupant` past the burst.
    MucMessages,
}

impl Refused {
    const ALL: [Refused; 8] = [
        Refused::Connections,
        Refused::UnauthenticatedConnections,
        Refused::ConnectionsPerAddress,
        Refused::ConnectionRate,
        Refused::Resources,
        Refused::LoginThrottled,
        Refused::ProxyHeader,
        Refused::MucMessages,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Connections => "connections",
            Refused::UnauthenticatedConnections => "unauthenticated_connections",
            Refused::ConnectionsPerAddress => "connections_per_address",
            Refused::ConnectionRate => "connection_rate",
            Refused::Resources => "resources",
            Refused::LoginThrottled => "login_throttled",
            Refused::ProxyHeader => "proxy_header",
            Refused::MucMessages => "muc_messages",
        }
    }

    /// Counts one refusal.
    pub fn count(self) {
        metrics::counter!("gatehouse_refused_total", "reason" => self.as_str()).increment(1);
    }
}

/// Help text, and every reason at zero.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "gatehouse_refused_total",
        "Refusals by the limit that refused: connections (limits.max_connections open; the \
         socket closed at once, a web request answered 503 or policy-violation), \
         unauthenticated_connections (limits.max_unauthenticated_connections open and not \
         logged in yet: a login storm beyond it, or many slow lorises), connections_per_address (limits.max_connections_per_address \
         open from one address), connection_rate (an address over \
         limits.connections_per_second_per_address), resources (an account at \
         c2s.max_resources; the bind got resource-constraint), login_throttled (too many \
         failed logins from one client, for the account or for all: \
         temporary-auth-failure before the backend is asked), proxy_header (a connection \
         from limits.trusted_proxies without a valid PROXY v2 header), muc_messages (an \
         occupant over muc.messages_per_second_per_occupant; resource-constraint)"
    );
    for reason in Refused::ALL {
        metrics::counter!("gatehouse_refused_total", "reason" => reason.as_str()).absolute(0);
    }
}
