//! The public web listener (`[web] listen`): XMPP over WebSocket
//! (RFC 7395) at `/xmpp-websocket`.
//!
//! It owns the HTTP upgrade only — the path, the `xmpp` subprotocol, the
//! page's origin — and hands each accepted WebSocket to its transport
//! (`gatehouse_actors::transport::websocket`) on the web worker that
//! accepted it. It must not speak XMPP.

use crate::config::WebConfig;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use gatehouse_actors::session::{C2sSettings, Services};
use gatehouse_actors::transport::websocket;
use std::net::TcpListener;
use std::sync::Arc;
use tokio_rustls::rustls::ServerConfig;

/// What every web worker shares.
#[derive(Clone)]
struct WebState {
    /// The `[web]` section: origins, whether streams count as secure.
    config: WebConfig,
    /// The c2s limits and hosts: a web session is held to the same ones.
    settings: Arc<C2sSettings>,
    /// The actors a session talks to.
    services: Services,
}

/// `GET /xmpp-websocket`: the upgrade, refused unless the client asks for
/// the `xmpp` subprotocol (RFC 7395 §3.1) and, from a browser page, comes
/// from an allowed origin.
async fn xmpp_websocket(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<WebState>,
) -> HttpResponse {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| state.config.allows_origin(origin));
        if !allowed {
            return HttpResponse::Forbidden().body("this origin may not open XMPP streams here\n");
        }
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
    let Some(peer) = req.peer_addr() else {
        return HttpResponse::BadRequest().finish();
    };
    let forwarded_for = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = state.config.client(peer, forwarded_for);
    match actix_ws::handle_with_protocols(&req, body, &[websocket::SUBPROTOCOL]) {
        Ok((response, session, messages)) => {
            websocket::start(
                session,
                messages,
                client,
                state.config.secure(),
                state.settings.clone(),
                state.services.clone(),
            );
            response
        }
        Err(error) => HttpResponse::from_error(error),
    }
}

/// Starts the web server on an already bound listener, one worker per
/// core (each is an actix arbiter; the sessions it accepts live on it);
/// over TLS when `tls` is given (`[web] tls_cert`/`tls_key`).
pub fn start(
    listener: TcpListener,
    tls: Option<ServerConfig>,
    config: WebConfig,
    settings: Arc<C2sSettings>,
    services: Services,
) -> std::io::Result<actix_web::dev::Server> {
    let state = WebState {
        config,
        settings,
        services,
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .route("/xmpp-websocket", web::get().to(xmpp_websocket))
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
