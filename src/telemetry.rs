//! The Prometheus recorder behind `/metrics`: installed once per process,
//! with explicit histogram buckets (without them every histogram would
//! render as a summary) and a periodic upkeep task.
//!
//! It owns how metrics are exported, and the help text and zero values of
//! the series that the application's dashboards rely on before anything
//! has happened (logins, sessions, the auth cache, and the labelled roster
//! and MUC series); each actor records its own and describes the rest.

use gatehouse_actors::transport::TransportKind;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Buckets for every `*_seconds` histogram: from half a millisecond (an
/// admitted or refused auth call on loopback) to the 5 s default timeouts
/// and beyond.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often the recorder drains histogram samples into buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process-wide recorder. Several servers in one process (tests) share
/// it; the first call installs it and starts its upkeep thread.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .expect("bucket list is non-empty")
            .build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("no other metrics recorder is installed");
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            })
            .expect("spawning the metrics upkeep thread");
        describe();
        register_at_zero();
        handle
    })
}

/// Help texts of the metrics this crate and the sessions record.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "gatehouse_logins_total",
        "SASL logins by result (success, not_authorized, temporary_failure, malformed) and transport (tcp, tls, websocket, bosh)"
    );
    describe_histogram!(
        "gatehouse_login_duration_seconds",
        Unit::Seconds,
        "Time from a SASL auth request to its answer, by result and transport"
    );
    describe_gauge!(
        "gatehouse_sessions",
        "Bound client resources (online sessions), by transport"
    );
    describe_gauge!(
        "gatehouse_connections",
        "Open client connections (TCP, WebSocket; a BOSH session counts as one), by transport"
    );
    describe_counter!(
        "gatehouse_auth_cache_hits_total",
        "Password checks answered by the result cache, by backend"
    );
    describe_counter!(
        "gatehouse_auth_cache_misses_total",
        "Password checks the result cache could not answer, by backend"
    );
    describe_counter!(
        "gatehouse_unauthenticated_budget_refusals_total",
        "Connections ended with <resource-constraint/> because unauthenticated \
         partial stanzas would hold more than c2s.max_unauthenticated_partial_bytes"
    );
    describe_counter!(
        "gatehouse_account_operations_total",
        "XEP-0077 account operations by operation and result"
    );
    gatehouse_actors::session::describe_metrics();
    gatehouse_actors::carbons::describe_metrics();
    gatehouse_actors::transport::describe_metrics();
    gatehouse_actors::auth::describe_metrics();
    gatehouse_actors::roster::describe_metrics();
    gatehouse_actors::muc::describe_metrics();
    gatehouse_actors::outbound_http::describe_metrics();
    gatehouse_actors::panic_guard::describe_metrics();
    gatehouse_actors::xmpp::stanza::describe_metrics();
    gatehouse_actors::storage::describe_metrics();
    gatehouse_actors::refused::describe_metrics();
    crate::reload::describe_metrics();
    crate::tls::describe_metrics();
    gatehouse_actors::offline::describe_metrics();
    gatehouse_actors::archive::describe_metrics();
}

/// Counters and gauges that exist before their first event, so a dashboard
/// shows 0 rather than no data. (Labelled series of a component, such as
/// an auth pool's, are registered when the component starts.)
fn register_at_zero() {
    for transport in TransportKind::ALL.map(TransportKind::as_str) {
        for result in [
            "success",
            "not_authorized",
            "temporary_failure",
            "malformed",
        ] {
            metrics::counter!("gatehouse_logins_total", "result" => result, "transport" => transport)
                .absolute(0);
        }
        for name in ["gatehouse_sessions", "gatehouse_connections"] {
            metrics::gauge!(name, "transport" => transport).increment(0.0);
        }
    }
    for name in [
        "gatehouse_roster_cache_hits_total",
        "gatehouse_roster_cache_misses_total",
        "gatehouse_unauthenticated_budget_refusals_total",
        "gatehouse_roster_pushes_total",
        "gatehouse_roster_items_skipped_total",
        "gatehouse_roster_items_sanitized_total",
        "gatehouse_stanzas_unwritable_total",
        "gatehouse_muc_messages_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for actor in [
        "session",
        "router",
        "muc_service",
        "muc_room",
        "auth_pool",
        "roster_cache",
        "muc_gate",
        "transport",
    ] {
        metrics::counter!("gatehouse_panics_total", "actor" => actor).absolute(0);
    }
    for service in ["roster", "muc_gate", "auth"] {
        metrics::counter!("gatehouse_http_redirects_refused_total", "service" => service)
            .absolute(0);
    }
    for result in ["dropped", "refetched", "error"] {
        metrics::counter!("gatehouse_roster_refresh_users_total", "result" => result).absolute(0);
    }
    for result in ["success", "error", "timeout"] {
        // A histogram handle registers the series: it renders with zero
        // counts before the first fetch.
        let _ = metrics::histogram!("gatehouse_roster_fetch_duration_seconds", "result" => result);
    }
    for phase in gatehouse_actors::transport::shaper::PHASES {
        metrics::counter!("gatehouse_shaped_reads_total", "phase" => phase).absolute(0);
    }
    for outcome in ["allowed", "denied", "error"] {
        metrics::counter!("gatehouse_muc_gate_decisions_total", "outcome" => outcome).absolute(0);
    }
    for name in [
        "gatehouse_roster_cache_entries",
        "gatehouse_muc_rooms",
        "gatehouse_muc_occupants",
    ] {
        metrics::gauge!(name).increment(0.0);
    }
}
