//! The MucGate actor: the HTTP join gate of `mod_muc_http_auth` — which
//! rooms are gated for which users, and the `GET url?userJID=&mucJID=&nickname=`
//! request that decides a join.
//!
//! It owns the HTTP client, the in-flight and queue bounds and the gate
//! metrics. It
//! must not touch room state or occupants: a Room asks, the gate answers
//! with a [`Decision`], and the Room acts on it. It fails closed: anything
//! but a 2xx JSON answer with a boolean `allowed` denies.
//!
//! Its handler and the future it returns run under the panic guard
//! (`gatehouse_panics_total{actor="muc_gate"}`): after a panic the join in
//! hand gets [`GateError::Internal`], a temporary failure, and the gate
//! serves on.

use crate::outbound_http::{client_builder, read_bounded_body, redirect_refused, BodyError};
use crate::panic_guard;
use crate::xmpp::stanza;
use actix::prelude::*;
use jid::{BareJid, FullJid};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The largest gate answer read; a longer one is a failure. A verdict is a
/// few dozen bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The `actor` label of panics caught in the gate.
const PANIC_LABEL: &str = "muc_gate";

/// Room localparts per user domain (or `"all"`).
pub type RoomLists = BTreeMap<String, BTreeSet<String>>;

/// Which rooms the gate decides for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatedRooms {
    /// Neither list configured: every room is gated.
    Every,
    /// Only the listed rooms, per user domain, are gated.
    EnabledFor(RoomLists),
    /// Every room except the listed ones, per user domain, is gated.
    DisabledFor(RoomLists),
}

impl GatedRooms {
    /// Whether a user of `user_domain` joining `room` must ask the gate.
    pub fn is_gated(&self, user_domain: &str, room: &str) -> bool {
        let listed = |lists: &RoomLists| {
            [user_domain, "all"]
                .iter()
                .any(|key| lists.get(*key).is_some_and(|rooms| rooms.contains(room)))
        };
        match self {
            GatedRooms::Every => true,
            GatedRooms::EnabledFor(lists) => listed(lists),
            GatedRooms::DisabledFor(lists) => !listed(lists),
        }
    }
}

/// Settings of the gate, from `[muc.http_auth]`.
#[derive(Clone, PartialEq, Eq)]
pub struct GateConfig {
    /// The endpoint; the query parameters are appended to it.
    pub url: url::Url,
    /// Which rooms are gated.
    pub rooms: GatedRooms,
    /// Skip certificate verification (development gates only).
    pub insecure: bool,
    /// Sent verbatim as `Authorization` when set.
    pub authorization_header: Option<reqwest::header::HeaderValue>,
    /// Bound on one decision, waiting for a free slot included.
    pub timeout: Duration,
    /// Requests in flight at once; more wait for a slot within `timeout`.
    pub max_in_flight: usize,
    /// Joins that may wait for a slot; one more is refused at once.
    pub queue: usize,
}

impl GateConfig {
    /// Whether a gate on `other` sends the requests a gate on `self` does:
    /// only which rooms are gated may differ.
    pub fn asks_as(&self, other: &GateConfig) -> bool {
        let rooms = GateConfig {
            rooms: other.rooms.clone(),
            ..self.clone()
        };
        rooms == *other
    }
}

/// Why a gate request produced no usable answer. Every one denies the join.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The error carries no URL: the URL holds the user's JID and nickname
    /// and whatever secrets the configured query has.
    #[error("request failed: {0}")]
    Transport(#[source] reqwest::Error),
    #[error("HTTP status {0}")]
    Status(reqwest::StatusCode),
    /// A 3xx: redirects are not followed (see [`crate::outbound_http`]).
    #[error("redirect (HTTP {0}), not followed")]
    Redirect(reqwest::StatusCode),
    #[error("answer longer than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("every request slot is busy and the waiting queue is full")]
    Busy,
    #[error("body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("`allowed` is missing or not a boolean")]
    NoVerdict,
    /// A panic in the gate (caught, logged and counted) ended the request;
    /// the gate serves on, and the join may be tried again.
    #[error("the gate failed internally")]
    Internal,
}

/// The gate's answer for one join.
#[derive(Debug)]
pub enum Decision {
    Allowed,
    /// The gate said no; `reason` is its `error` field, for logs only. It is
    /// made XML-safe where it is read all the same, like all text from the
    /// application, so it can never make a stanza unwritable.
    Denied {
        reason: Option<String>,
    },
    /// No usable answer: denied, and counted apart from real denials.
    Failed(GateError),
}

impl Decision {
    /// The `outcome` label of `gatehouse_muc_gate_decisions_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Denied { .. } => "denied",
            Decision::Failed(_) => "error",
        }
    }
}

/// Asks whether `user` may join `room` as `nickname`.
#[derive(Message)]
#[rtype(result = "Decision")]
pub struct Check {
    /// The joining client; the gate gets its bare JID.
    pub user: FullJid,
    /// The room's bare JID, sent as `mucJID`.
    pub room: BareJid,
    /// The nickname asked for, sent as `nickname`.
    pub nickname: String,
}

/// The gate. One per server; rooms on any arbiter ask it.
pub struct MucGate {
    /// URL, header and timeout, shared with requests in flight.
    config: Arc<GateConfig>,
    /// The shared client: rustls with certificate verification, or with
    /// none when `insecure` is set.
    client: reqwest::Client,
    /// Bounds requests in flight to `max_in_flight`.
    slots: Arc<Semaphore>,
    /// Bounds requests in flight or waiting for a slot to
    /// `max_in_flight + queue`; a join that gets none is refused at once.
    admitted: Arc<Semaphore>,
}

impl MucGate {
    /// Builds the HTTP client. Fails only if the TLS backend cannot start.
    pub fn new(mut config: GateConfig) -> Result<MucGate, reqwest::Error> {
        let mut builder = client_builder().timeout(config.timeout);
        if config.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        // Kept out of any debug output of the request.
        if let Some(header) = &mut config.authorization_header {
            header.set_sensitive(true);
        }
        Ok(MucGate {
            client: builder.build()?,
            slots: Arc::new(Semaphore::new(config.max_in_flight)),
            admitted: Arc::new(Semaphore::new(config.max_in_flight + config.queue)),
            config: Arc::new(config),
        })
    }
}

impl MucGate {
    /// The settings it asks with.
    pub fn config(&self) -> Arc<GateConfig> {
        self.config.clone()
    }
}

impl Actor for MucGate {
    type Context = Context<Self>;
}

/// Prosody's `util.http.urlencode`: every byte outside `A-Z a-z 0-9 . ~ _ -`
/// as `%xx` (lowercase hex), so a space is `%20`, not `+`.
fn urlencode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b".~_-".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02x}"));
        }
    }
    out
}

/// The request URL: the parameters appended with `?` or `&` (after a
/// configured query), encoded as Prosody encodes them.
fn request_url(base: &url::Url, check: &Check) -> url::Url {
    let params = format!(
        "userJID={}&mucJID={}&nickname={}",
        urlencode(check.user.to_bare().as_str()),
        urlencode(check.room.as_str()),
        urlencode(&check.nickname)
    );
    let query = match base.query() {
        Some(configured) if !configured.is_empty() => format!("{configured}&{params}"),
        _ => params,
    };
    let mut url = base.clone();
    url.set_query(Some(&query));
    url
}

/// Reads a 2xx body, failing once it is longer than `MAX_BODY_BYTES`.
async fn read_body(response: reqwest::Response) -> Result<Vec<u8>, GateError> {
    read_bounded_body(response, MAX_BODY_BYTES)
        .await
        .map_err(|error| match error {
            BodyError::TooLarge => GateError::TooLarge,
            BodyError::Transport(error) => transport(error),
        })
}

/// A transport error, its URL removed.
fn transport(error: reqwest::Error) -> GateError {
    GateError::Transport(error.without_url())
}

/// Reads the verdict out of a 2xx body.
pub(crate) fn verdict(body: &[u8]) -> Result<Decision, GateError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(GateError::NotJson)?;
    match value.get("allowed").and_then(serde_json::Value::as_bool) {
        Some(true) => Ok(Decision::Allowed),
        Some(false) => Ok(Decision::Denied {
            reason: value
                .get("error")
                .and_then(serde_json::Value::as_str)
                .map(|reason| stanza::xml_safe(reason).into_owned()),
        }),
        None => Err(GateError::NoVerdict),
    }
}

/// Waits for a request slot, then asks the gate. `_admitted` is this
/// request's place among those in flight or waiting, held to the end.
async fn ask(
    client: reqwest::Client,
    config: Arc<GateConfig>,
    slots: Arc<Semaphore>,
    _admitted: OwnedSemaphorePermit,
    url: url::Url,
) -> Result<Decision, GateError> {
    let _slot = slots
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let mut request = client.get(url);
    if let Some(header) = &config.authorization_header {
        request = request.header(reqwest::header::AUTHORIZATION, header.clone());
    }
    let response = request.send().await.map_err(transport)?;
    if response.status().is_redirection() {
        redirect_refused("muc_gate");
        return Err(GateError::Redirect(response.status()));
    }
    if !response.status().is_success() {
        return Err(GateError::Status(response.status()));
    }
    verdict(&read_body(response).await?)
}

impl Handler<Check> for MucGate {
    type Result = ResponseFuture<Decision>;

    fn handle(&mut self, check: Check, _: &mut Self::Context) -> Self::Result {
        panic_guard::guarded_response(
            PANIC_LABEL,
            || self.decide(check),
            || Decision::Failed(GateError::Internal),
        )
    }
}

impl MucGate {
    /// Asks the gate about `check` (unless the queue is full), and logs
    /// and counts the decision.
    fn decide(&self, check: Check) -> impl Future<Output = Decision> + 'static {
        let timeout = self.config.timeout;
        // Taken here, in the order joins arrive, so a full queue refuses
        // at once instead of adding a waiter.
        let request = self.admitted.clone().try_acquire_owned().map(|admitted| {
            ask(
                self.client.clone(),
                self.config.clone(),
                self.slots.clone(),
                admitted,
                request_url(&self.config.url, &check),
            )
        });
        async move {
            let started = Instant::now();
            let decision = match request {
                Err(_) => Decision::Failed(GateError::Busy),
                Ok(request) => match tokio::time::timeout(timeout, request).await {
                    Ok(Ok(decision)) => decision,
                    Ok(Err(error)) => Decision::Failed(error),
                    Err(_) => Decision::Failed(GateError::Timeout(timeout)),
                },
            };
            let outcome = decision.outcome();
            metrics::counter!("gatehouse_muc_gate_decisions_total", "outcome" => outcome)
                .increment(1);
            metrics::histogram!("gatehouse_muc_gate_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            match &decision {
                Decision::Allowed => {}
                Decision::Denied { reason } => tracing::info!(
                    user = %check.user, room = %check.room, reason = reason.as_deref().unwrap_or(""),
                    "MUC join denied by the gate"
                ),
                Decision::Failed(error) => tracing::warn!(
                    user = %check.user, room = %check.room, %error,
                    "MUC gate failed; join denied"
                ),
            }
            decision
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(entries: &[(&str, &[&str])]) -> RoomLists {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn gated_rooms() {
        assert!(GatedRooms::Every.is_gated("a.example", "x"));
        let enabled = GatedRooms::EnabledFor(lists(&[("a.example", &["x"]), ("all", &["y"])]));
        assert!(enabled.is_gated("a.example", "x"));
        assert!(enabled.is_gated("b.example", "y"));
        assert!(!enabled.is_gated("b.example", "x"));
        let disabled = GatedRooms::DisabledFor(lists(&[("a.example", &["x"])]));
        assert!(!disabled.is_gated("a.example", "x"));
        assert!(disabled.is_gated("b.example", "x"));
        assert!(disabled.is_gated("a.example", "y"));
    }

    #[test]
    fn url_keeps_an_existing_query() {
        let check = Check {
            user: FullJid::new("ab@x.example/r").unwrap(),
            room: BareJid::new("room@muc.example").unwrap(),
            nickname: "Ro&meo é".into(),
        };
        let url = request_url(&url::Url::parse("http://h/p?k=v").unwrap(), &check);
        assert_eq!(
            url.as_str(),
            "http://h/p?k=v&userJID=ab%40x.example&mucJID=room%40muc.example&nickname=Ro%26meo%20%c3%a9"
        );
        let url = request_url(&url::Url::parse("http://h/p").unwrap(), &check);
        assert!(url.as_str().starts_with("http://h/p?userJID="), "{url}");
    }

    #[test]
    fn urlencode_is_prosodys() {
        assert_eq!(urlencode("aZ09.~_-"), "aZ09.~_-");
        assert_eq!(urlencode("a b+c&d=e/f?"), "a%20b%2bc%26d%3de%2ff%3f");
        assert_eq!(urlencode("é"), "%c3%a9");
    }

    fn config(url: &str) -> GateConfig {
        GateConfig {
            url: url::Url::parse(url).unwrap(),
            rooms: GatedRooms::Every,
            insecure: false,
            authorization_header: Some(reqwest::header::HeaderValue::from_static("Bearer s3cr3t")),
            timeout: Duration::from_secs(10),
            max_in_flight: 1,
            queue: 0,
        }
    }

    #[test]
    fn the_authorization_header_is_sensitive() {
        let gate = MucGate::new(config("http://gate.example/check")).unwrap();
        let header = gate.config.authorization_header.as_ref().unwrap();
        assert!(header.is_sensitive());
        assert!(!format!("{header:?}").contains("s3cr3t"));
    }

    #[actix_rt::test]
    async fn a_transport_error_does_not_show_the_url() {
        // A port nobody listens on: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/check?api_key=k3y");
        let gate = MucGate::new(config(&url)).unwrap().start();
        let decision = gate
            .send(Check {
                user: FullJid::new("alice@x.example/r").unwrap(),
                room: BareJid::new("tea@muc.example").unwrap(),
                nickname: "Alice".into(),
            })
            .await
            .unwrap();
        let Decision::Failed(error @ GateError::Transport(_)) = decision else {
            panic!("{decision:?}");
        };
        let shown = format!("{error} {error:?}");
        for secret in ["k3y", "alice", "Alice", "/check"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    /// A panic while a join is in hand (here where the decision is
    /// counted) answers it with a temporary failure, and the gate serves
    /// on.
    #[actix_rt::test]
    async fn a_panic_fails_the_join_in_hand_temporarily_and_the_gate_serves_on() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let gate = MucGate::new(config(&format!("http://127.0.0.1:{port}/check")))
            .unwrap()
            .start();
        let check = || Check {
            user: FullJid::new("alice@x.example/r").unwrap(),
            room: BareJid::new("tea@muc.example").unwrap(),
            nickname: "Alice".into(),
        };
        let recorder = crate::panic_guard::test_support::PanicOnIncrement {
            name: "gatehouse_muc_gate_decisions_total",
            label: None,
        };
        let tripping = metrics::set_default_local_recorder(&recorder);
        let decision = gate.send(check()).await.unwrap();
        assert!(
            matches!(decision, Decision::Failed(GateError::Internal)),
            "{decision:?}"
        );
        drop(tripping);
        let decision = gate.send(check()).await.unwrap();
        assert!(
            matches!(decision, Decision::Failed(GateError::Transport(_))),
            "{decision:?}"
        );
    }

    #[test]
    fn verdicts() {
        assert!(matches!(
            verdict(br#"{"allowed": true}"#),
            Ok(Decision::Allowed)
        ));
        match verdict(br#"{"allowed": false, "error": "no\u0000pe"}"#).unwrap() {
            Decision::Denied { reason } => assert_eq!(reason.as_deref(), Some("no\u{FFFD}pe")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(verdict(b"yes"), Err(GateError::NotJson(_))));
        assert!(matches!(
            verdict(br#"{"allowed": "true"}"#),
            Err(GateError::NoVerdict)
        ));
        assert!(matches!(verdict(br#"{}"#), Err(GateError::NoVerdict)));
    }
}
