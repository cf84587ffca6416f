//! The signals the server acts on: SIGTERM or SIGINT to shut down, SIGHUP
//! to reload its config.
//!
//! Owns: installing the signal handlers and logging which signal arrived.
//! Must not touch: what shutting down means (closing listeners, draining
//! sessions, stopping auth processes; that is `run`'s job) or what a
//! reload does ([`crate::reload`]).

use crate::reload::Reloader;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Resolves on the first SIGTERM or SIGINT. Must be polled inside a Tokio
/// runtime (e.g. an actix `System`); the handlers are installed on first poll.
///
/// If a handler cannot be installed, the error is logged and only the other
/// signal is awaited: the server keeps running rather than stopping at once.
pub async fn shutdown_signal() {
    let mut terminate = install(SignalKind::terminate(), "SIGTERM");
    let mut interrupt = install(SignalKind::interrupt(), "SIGINT");
    tokio::select! {
        () = recv(&mut terminate) => tracing::info!("received SIGTERM, shutting down"),
        () = recv(&mut interrupt) => tracing::info!("received SIGINT, shutting down"),
    }
}

/// Reloads the config at every SIGHUP, one after the other, until
/// dropped. What each reload did is in its log line.
pub async fn reload_on_hangup(reloader: Reloader) {
    let mut hangup = install(SignalKind::hangup(), "SIGHUP");
    loop {
        recv(&mut hangup).await;
        tracing::info!("received SIGHUP, reloading the configuration");
        reloader.reload("signal").await;
    }
}

fn install(kind: SignalKind, name: &str) -> Option<Signal> {
    signal(kind)
        .inspect_err(|error| tracing::error!(%error, "cannot install a {name} handler"))
        .ok()
}

/// Waits for the next delivery of `signal`; forever if it is not installed.
async fn recv(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            // `None` would mean the handler was torn down, which cannot
            // happen while we hold it; treat it like a delivery anyway.
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}
