//! The operator HTTP listener (`[http] listen`): `/metrics` in Prometheus
//! text format, `/health`, when `[roster]` is configured the application's
//! roster refresh endpoint (`/roster_admin/refresh`, as in Prosody's
//! `mod_http_roster_admin`), and with `http.admin_token` the operator's
//! `POST /admin/reload` and `POST /admin/cache/drop`.
//!
//! It owns the HTTP surface only: the refresh is done by the RosterCache
//! actor, the reload by [`Reloader`], the cache drop by the
//! [`Authenticator`]; what the metrics say is recorded by
//! the components themselves.

use crate::reload::{ReloadOutcome, Reloader};
use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use gatehouse_actors::auth::Authenticator;
use gatehouse_actors::reloadable::Reloadable;
use gatehouse_actors::roster::{Refresh, RosterCache};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::net::TcpListener;

/// A bearer token an endpoint checks, which a reload may change.
#[derive(Clone)]
pub struct LiveToken(Reloadable<Option<String>>);

impl LiveToken {
    pub fn new(token: Option<String>) -> LiveToken {
        LiveToken(Reloadable::new(token))
    }

    /// From now on, requests need `token` (none when `None`).
    pub fn set(&self, token: Option<String>) {
        self.0.set(token);
    }

    fn is_set(&self) -> bool {
        self.0.get().is_some()
    }

    /// A 401 answer, unless the request carries the token (or none is
    /// set).
    fn refusal(&self, request: &HttpRequest) -> Option<HttpResponse> {
        let token = self.0.get();
        let token = token.as_ref().as_ref()?;
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .unwrap_or_default();
        if same_secret(given.as_bytes(), token.as_bytes()) {
            return None;
        }
        let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        Some(response)
    }
}

/// What the refresh endpoint needs.
#[derive(Clone)]
pub struct RosterAdmin {
    /// Does the refreshing.
    pub cache: Addr<RosterCache>,
    /// The bearer token a request must carry, when one is set.
    pub token: LiveToken,
    /// Largest body accepted; a bigger one gets 413.
    pub max_body_bytes: usize,
}

async fn metrics(handle: web::Data<&'static PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// A JSON `{"status":"error","message":…}` answer.
fn error(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "status": "error", "message": message }))
}

/// Compares `given` with `secret` in a time that depends only on the
/// secret's length: neither where a guess first differs nor its length is
/// revealed by how long the answer takes.
fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    let mut difference = given.len() ^ secret.len();
    for (i, s) in secret.iter().enumerate() {
        difference |= usize::from(given.get(i).copied().unwrap_or(0) ^ s);
    }
    difference == 0
}

/// The credentials of an `Authorization: Bearer …` header; the scheme is
/// case-insensitive (RFC 7235 §2.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl RosterAdmin {
    async fn refresh(&self, users: Vec<String>) -> HttpResponse {
        let requested = users.len();
        match self.cache.send(Refresh { users }).await {
            Ok(Ok(report)) => {
                tracing::info!(
                    requested,
                    updated = report.updated,
                    errors = report.errors,
                    "roster refresh"
                );
                // As in Prosody: "error" only when the operation failed
                // completely.
                let (status, message) = if report.updated == 0 && report.errors > 0 {
                    ("error", "no roster could be updated")
                } else {
                    ("ok", "roster update complete")
                };
                HttpResponse::Ok().json(json!({
                    "status": status,
                    "message": message,
                    "updated": report.updated,
                    "errors": report.errors,
                }))
            }
            // A fault in the cache, logged and counted there: the refresh
            // may be half done, and is safe to send again.
            Ok(Err(_)) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the roster refresh failed inside Gatehouse; send it again",
            ),
            Err(_) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the roster cache is not running",
            ),
        }
    }
}

/// `POST /roster_admin/refresh` with a JSON array of usernames.
async fn refresh_many(
    request: HttpRequest,
    payload: web::Payload,
    admin: web::Data<RosterAdmin>,
) -> HttpResponse {
    if let Some(response) = admin.token.refusal(&request) {
        return response;
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is larger than {} bytes", admin.max_body_bytes),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > admin.max_body_bytes) {
        return too_large();
    }
    let body = match payload.to_bytes_limited(admin.max_body_bytes).await {
        Err(_) => return too_large(),
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            )
        }
        Ok(Ok(body)) => body,
    };
    match refresh_users(&body) {
        Ok(users) => admin.refresh(users).await,
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

/// The usernames a refresh body names, or why it names none.
pub(crate) fn refresh_users(body: &[u8]) -> Result<Vec<String>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("missing body: expected a JSON array of usernames".into());
    }
    serde_json::from_slice(body)
        .map_err(|e| format!("the body must be a JSON array of usernames (strings): {e}"))
}

/// `GET /roster_admin/refresh/USER`: one user.
async fn refresh_one(
    request: HttpRequest,
    user: web::Path<String>,
    admin: web::Data<RosterAdmin>,
) -> HttpResponse {
    if let Some(response) = admin.token.refusal(&request) {
        return response;
    }
    admin.refresh(vec![user.into_inner()]).await
}

/// What the operator's endpoints need.
#[derive(Clone)]
pub struct Operator {
    /// `http.admin_token`: without it the endpoints answer 404.
    pub token: LiveToken,
    /// Does the reloading.
    pub reloader: Reloader,
    /// Whose auth cache `/admin/cache/drop` empties.
    pub auth: Authenticator,
    /// The served domains: a bare username is dropped on each.
    pub hosts: Vec<String>,
}

impl Operator {
    /// A 404 while the endpoints are off, a 401 without the token.
    fn refusal(&self, request: &HttpRequest) -> Option<HttpResponse> {
        if !self.token.is_set() {
            return Some(error(
                StatusCode::NOT_FOUND,
                "the operator endpoints are off: set http.admin_token",
            ));
        }
        self.token.refusal(request)
    }

    /// The (user, host) pairs `name` stands for: `user@host` (a resource
    /// is ignored) on that host, a bare `user` on every served host.
    fn accounts(&self, name: &str) -> Result<Vec<(String, String)>, String> {
        let bare = name.split_once('/').map_or(name, |(bare, _)| bare);
        let (user, hosts) = match bare.split_once('@') {
            Some((user, host)) => (user, vec![host.to_owned()]),
            None => (bare, self.hosts.clone()),
        };
        let user = gatehouse_actors::auth::username(user)
            .ok_or_else(|| format!("{name:?} is not a user name or JID"))?;
        Ok(hosts.into_iter().map(|host| (user.clone(), host)).collect())
    }
}

/// `POST /admin/reload`: re-reads the config file the server started
/// from. 200 with what changed (or that nothing did), 422 with every
/// problem of an invalid file, or what could not be set up for a valid one
/// (nothing changed).
async fn reload(request: HttpRequest, operator: web::Data<Operator>) -> HttpResponse {
    if let Some(response) = operator.refusal(&request) {
        return response;
    }
    let outcome = operator.reloader.reload("http").await;
    let status = match outcome {
        ReloadOutcome::Applied { .. } | ReloadOutcome::Unchanged { .. } => StatusCode::OK,
        ReloadOutcome::Invalid(_) | ReloadOutcome::NotApplied { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
    };
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{outcome}\n"))
}

/// `POST /admin/cache/drop` with a JSON array of JIDs (`user@host`) or
/// usernames (dropped on every served host): forgets their cached auth
/// checks, so the next login of each asks the backend (a password changed
/// outside Gatehouse). 200 with `{"status":"ok","dropped":N}`, N the
/// entries dropped; 400 for a body that is not such an array (413 over
/// actix-web's 256 KiB limit).
async fn drop_cached(
    request: HttpRequest,
    body: web::Bytes,
    operator: web::Data<Operator>,
) -> HttpResponse {
    if let Some(response) = operator.refusal(&request) {
        return response;
    }
    let names = match serde_json::from_slice::<Vec<String>>(&body) {
        Ok(names) => names,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be a JSON array of JIDs or usernames (strings): {e}"),
            )
        }
    };
    let mut accounts = Vec::new();
    for name in &names {
        match operator.accounts(name) {
            Ok(more) => accounts.extend(more),
            Err(why) => return error(StatusCode::BAD_REQUEST, &why),
        }
    }
    let dropped: usize = accounts
        .iter()
        .map(|(user, host)| operator.auth.drop_cached(user, host))
        .sum();
    tracing::info!(users = names.len(), dropped, "auth cache entries dropped");
    HttpResponse::Ok().json(json!({ "status": "ok", "dropped": dropped }))
}

/// Starts the HTTP server on an already bound listener. One worker is
/// plenty: scrapes, health checks and refreshes are cheap (a refresh only
/// hands the usernames to the RosterCache).
pub fn start(
    listener: TcpListener,
    handle: &'static PrometheusHandle,
    roster_admin: Option<RosterAdmin>,
    operator: Operator,
) -> std::io::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(web::Data::new(handle))
            .app_data(web::Data::new(operator.clone()))
            .route("/metrics", web::get().to(metrics))
            .route("/health", web::get().to(health))
            .route("/admin/reload", web::post().to(reload))
            .route("/admin/cache/drop", web::post().to(drop_cached));
        match &roster_admin {
            Some(admin) => app
                .app_data(web::Data::new(admin.clone()))
                .route("/roster_admin/refresh", web::post().to(refresh_many))
                .route("/roster_admin/refresh/{user}", web::get().to(refresh_one)),
            None => app,
        }
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::{bearer_token, same_secret};

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
        assert!(!same_secret(b"s3cre", b"s3cret"));
        assert!(!same_secret(b"s3cret2", b"s3cret"));
        assert!(!same_secret(b"s3cret\0", b"s3cret"));
        assert!(!same_secret(b"", b"s3cret"));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER   abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }
}
