//! The operator HTTP listener (`[http] listen`): `/metrics` in Prometheus
//! text format and `/health`.
//!
//! It owns the HTTP surface only; what the metrics say is recorded by the
//! components themselves.

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::TcpListener;

async fn metrics(handle: web::Data<&'static PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle.render())
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Starts the HTTP server on an already bound listener. One worker is
/// plenty: scrapes and health checks are rare and cheap.
pub fn start(
    listener: TcpListener,
    handle: &'static PrometheusHandle,
) -> std::io::Result<actix_web::dev::Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(handle))
            .route("/metrics", web::get().to(metrics))
            .route("/health", web::get().to(health))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok(server)
}
