//! The public web listener (`[web] listen`): XMPP over WebSocket
//! (RFC 7395) at `/xmpp-websocket`, BOSH (XEP-0124/0206) at `/http-bind`,
//! and where to find them (XEP-0156) at `/.well-known/host-meta` and
//! `/.well-known/host-meta.json`.
//!
//! It owns HTTP only — paths, methods, the WebSocket upgrade and its
//! `xmpp` subprotocol, the page's origin and CORS, the size of a BOSH
//! body, who the client is behind a trusted proxy and how a refusal by
//! the connection limits (`crate::limits`, shared with the XMPP
//! listeners) is answered — and hands each accepted WebSocket to its
//! transport (`gatehouse_actors::transport::websocket`) on the web worker
//! that accepted it, and each BOSH body to the BOSH registry
//! (`gatehouse_actors::transport::bosh`). It must not speak XMPP.

use crate::config::WebConfig;
use crate::limits::ConnectionLimits;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpResponseBuilder, HttpServer};
use gatehouse_actors::refused::Refused;
use gatehouse_actors::reloadable::Reloadable;
use gatehouse_actors::session::{C2sSettings, Services};
use gatehouse_actors::transport::bosh::{Bosh, BoshSettings, Refusal};
use gatehouse_actors::transport::websocket;
use std::net::{SocketAddr, TcpListener};
use tokio_rustls::rustls::ServerConfig;

/// Where XMPP over WebSocket is served.
const WEBSOCKET_PATH: &str = "xmpp-websocket";
/// Where BOSH is served.
const BOSH_PATH: &str = "http-bind";
/// How long a browser may cache a CORS preflight answer.
const CORS_MAX_AGE: &str = "86400";
/// The `Retry-After` of a refusal by the connection limits, in seconds:
/// long enough that a client obeying it is no burden, short enough that
/// a NAT's reconnecting users are soon let in.
const RETRY_AFTER: &str = "5";

/// What every web worker shares.
#[derive(Clone)]
struct WebState {
    /// The `[web]` section: origins, whether streams count as secure.
    config: WebConfig,
    /// The c2s limits and hosts: a web session is held to the ones
    /// current when it starts.
    settings: Reloadable<C2sSettings>,
    /// The actors a session talks to.
    services: Services,
    /// The BOSH sessions, shared by every worker: a session's requests
    /// may arrive on any of them.
    bosh: Bosh,
    /// The admission the XMPP listeners use too: a client's WebSockets
    /// and BOSH sessions count with its TCP connections.
    limits: ConnectionLimits,
}

/// A browser page from an origin `[web] allowed_origins` does not list.
struct ForeignOrigin;

/// The page's origin when the request comes from a browser page allowed
/// here (`None` without an `Origin` header: not from a page).
fn page_origin(
    req: &HttpRequest,
    config: &WebConfig,
) -> Result<Option<HeaderValue>, ForeignOrigin> {
    match req.headers().get(header::ORIGIN) {
        None => Ok(None),
        Some(origin) => {
            let allowed = origin
                .to_str()
                .is_ok_and(|origin| config.allows_origin(origin));
            if allowed {
                Ok(Some(origin.clone()))
            } else {
                Err(ForeignOrigin)
            }
        }
    }
}

/// A response that a page from `origin` may read (CORS), to a request
/// made with one of `methods`. Its `Retry-After` (a refusal's) is exposed
/// to the page's script, which a browser otherwise hides.
fn cors(
    mut response: HttpResponseBuilder,
    origin: Option<HeaderValue>,
    methods: &'static str,
) -> HttpResponseBuilder {
    if let Some(origin) = origin {
        response
            .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
            .insert_header((header::VARY, "Origin"))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods))
            .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, CORS_MAX_AGE))
            .insert_header((header::ACCESS_CONTROL_EXPOSE_HEADERS, "Retry-After"));
    }
    response
}

fn foreign_origin() -> HttpResponse {
    HttpResponse::Forbidden().body("this origin may not open XMPP streams here\n")
}

/// `GET /xmpp-websocket`: the upgrade, refused unless the client asks for
/// the `xmpp` subprotocol (RFC 7395 §3.1), from a browser page comes from
/// an allowed origin, and is admitted by the connection limits (the
/// WebSocket holds its place until it closes).
async fn xmpp_websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<WebState>,
) -> HttpResponse {
    if page_origin(&req, &state.config).is_err() {
        return foreign_origin();
    }
    let offers_xmpp = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim() == websocket::SUBPROTOCOL);
    if !offers_xmpp {
        return HttpResponse::BadRequest()
            .body("XMPP over WebSocket needs the Sec-WebSocket-Protocol \"xmpp\" (RFC 7395)\n");
    }
    let Some(client) = client(&req, &state.config) else {
        return HttpResponse::BadRequest().finish();
    };
    let admitted = match state.limits.admit(client.ip()) {
        Ok(admitted) => admitted,
        Err(refused) => return refused_upgrade(refused),
    };
    match actix_ws::handle_with_protocols(&req, body, &[websocket::SUBPROTOCOL]) {
        Ok((response, session, messages)) => {
            websocket::start(
                session,
                messages,
                client,
                state.config.secure(),
                state.settings.get(),
                state.services.clone(),
                admitted,
            );
            response
        }
        Err(error) => HttpResponse::from_error(error),
    }
}

/// The answer to an upgrade the connection limits refuse: the client's
/// address opens connections too fast (429), or has, or everyone has,
/// too many open (503); either way it may try again after `Retry-After`.
fn refused_upgrade(refused: Refused) -> HttpResponse {
    let mut response = match refused {
        Refused::ConnectionRate => HttpResponse::TooManyRequests(),
        _ => HttpResponse::ServiceUnavailable(),
    };
    response
        .insert_header((header::RETRY_AFTER, RETRY_AFTER))
        .body(format!(
            "refused by the connection limits ({})\n",
            refused.as_str()
        ))
}

/// The client behind a request: its peer, or the address a trusted
/// proxy's `X-Forwarded-For` names (every line of it, in order; a value
/// that is not text is no address). `None` when the peer is unknown.
fn client(req: &HttpRequest, config: &WebConfig) -> Option<SocketAddr> {
    let forwarded_for: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .map(|v| v.to_str().unwrap_or_default())
        .collect();
    Some(config.client(req.peer_addr()?, &forwarded_for))
}

/// `POST /http-bind`: one BOSH body, answered when the session has
/// something to say or the request's `wait` is over. A body larger than
/// one stanza and its wrapper is refused (HTTP 413) before it is
/// buffered. A session creation request is admitted by the connection
/// limits (the session holds its place until it ends); a refused one is
/// answered `<body type='terminate' condition='policy-violation'/>` with
/// HTTP 200, as XEP-0124 §17.2 answers terminal conditions, and a
/// `Retry-After`.
async fn http_bind(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<WebState>,
) -> HttpResponse {
    let Ok(origin) = page_origin(&req, &state.config) else {
        return foreign_origin();
    };
    let Some(client) = client(&req, &state.config) else {
        return HttpResponse::BadRequest().finish();
    };
    let body = match body.to_bytes_limited(state.bosh.max_body_bytes()).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return HttpResponse::from_error(error),
        Err(_) => {
            let mut response = cors(HttpResponse::PayloadTooLarge(), origin, "POST, OPTIONS");
            return response.body(Refusal::BodyTooLarge.answer());
        }
    };
    let answer = state
        .bosh
        .request(&body, client, || state.limits.admit(client.ip()))
        .await;
    let mut response = cors(HttpResponse::Ok(), origin, "POST, OPTIONS");
    if answer.refused {
        response.insert_header((header::RETRY_AFTER, RETRY_AFTER));
    }
    response
        .content_type("text/xml; charset=utf-8")
        .body(answer.body)
}

/// `OPTIONS /http-bind`: the CORS preflight of a page's POST.
async fn http_bind_preflight(req: HttpRequest, state: web::Data<WebState>) -> HttpResponse {
    match page_origin(&req, &state.config) {
        Ok(origin) => cors(HttpResponse::NoContent(), origin, "POST, OPTIONS").finish(),
        Err(ForeignOrigin) => foreign_origin(),
    }
}

/// The URLs host-meta names: from `[web] public_url`, else from the
/// request's `Host` as this plain listener's (`ws`/`http`; behind a TLS
/// proxy `public_url` says what clients use).
/// `None` when the `Host` is not a plain `host[:port]`, which is all that
/// may go into the answer.
fn connection_urls(req: &HttpRequest, config: &WebConfig) -> Option<(String, String)> {
    if let Some(url) = &config.public_url {
        return Some((
            url.endpoint(WEBSOCKET_PATH, true),
            url.endpoint(BOSH_PATH, false),
        ));
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !plain {
        return None;
    }
    Some((
        format!("ws://{host}/{WEBSOCKET_PATH}"),
        format!("http://{host}/{BOSH_PATH}"),
    ))
}

/// `GET /.well-known/host-meta` (XRD) and `/.well-known/host-meta.json`
/// (JRD): where a web client connects (XEP-0156).
async fn host_meta(req: HttpRequest, state: web::Data<WebState>) -> HttpResponse {
    let origin = page_origin(&req, &state.config).ok().flatten();
    let Some((websocket, bosh)) = connection_urls(&req, &state.config) else {
        return HttpResponse::BadRequest().body("no usable Host header\n");
    };
    let links = [
        ("urn:xmpp:alt-connections:websocket", websocket),
        ("urn:xmpp:alt-connections:xbosh", bosh),
    ];
    let mut response = cors(HttpResponse::Ok(), origin, "GET");
    if req.path().ends_with(".json") {
        let links: Vec<_> = links
            .iter()
            .map(|(rel, href)| serde_json::json!({ "rel": rel, "href": href }))
            .collect();
        return response.json(serde_json::json!({ "links": links }));
    }
    let mut xrd = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n\
         <XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for (rel, href) in &links {
        let href = xml_attribute(href);
        xrd.push_str(&format!("  <Link rel='{rel}' href='{href}'/>\n"));
    }
    xrd.push_str("</XRD>\n");
    response
        .content_type("application/xrd+xml; charset=utf-8")
        .body(xrd)
}

/// `text` as the value of an XML attribute in single quotes.
fn xml_attribute(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
}

/// Starts the web server on an already bound listener, one worker per
/// core (each is an actix arbiter; the sessions it accepts live on it);
/// over TLS when `tls` is given (`[web] tls_cert`/`tls_key`).
pub fn start(
    listener: TcpListener,
    tls: Option<ServerConfig>,
    config: WebConfig,
    settings: Reloadable<C2sSettings>,
    services: Services,
    limits: ConnectionLimits,
) -> std::io::Result<actix_web::dev::Server> {
    let bosh = Bosh::new(
        BoshSettings {
            max_wait: config.bosh_max_wait,
            max_hold: config.bosh_max_hold,
            inactivity: config.bosh_inactivity,
            polling: config.bosh_polling,
            max_sessions: config.bosh_max_sessions,
        },
        settings.clone(),
        services.clone(),
        config.secure(),
    );
    let state = WebState {
        config,
        settings,
        services,
        bosh,
        limits,
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route(&format!("/{WEBSOCKET_PATH}"), web::get().to(xmpp_websocket))
            .route(&format!("/{BOSH_PATH}"), web::post().to(http_bind))
            .route(
                &format!("/{BOSH_PATH}"),
                web::method(Method::OPTIONS).to(http_bind_preflight),
            )
            .route("/.well-known/host-meta", web::get().to(host_meta))
            .route("/.well-known/host-meta.json", web::get().to(host_meta))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(1);
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}
