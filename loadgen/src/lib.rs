//! `gatehouse-loadgen`: drives a login storm, or an exchange of chat
//! messages, against any XMPP server on this machine and reports what
//! happened.
//!
//! Storm modes: `open` (a fixed offered rate, whatever the server does),
//! `closed` (a fixed number of clients, each starting its next login when
//! the last ended) and `hold` (log in N sessions and keep them open, to
//! measure memory per session). `messages` (module `messages`): pairs of
//! clients log in once and send each other messages, closed loop. It
//! always ends on its own: counts and time limits bound every run, and it
//! only targets loopback.

pub mod client;
mod markup;
mod messages;
mod meter;
mod stats;
pub mod transport;

use clap::{Parser, ValueEnum};
use client::{Credentials, Outcome, Target};
use meter::{number, per_thousand, Meter, ServerMemory, Usage};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use transport::Transport;

/// How logins are started, or the message exchange instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// At a fixed rate (--rate), whatever the server's latency.
    Open,
    /// --concurrency clients each logging in again as soon as done.
    Closed,
    /// --count sessions logged in and kept open, then the server's memory
    /// is measured.
    Hold,
    /// --pairs pairs of clients log in once and send each other chat
    /// messages, --window in flight per sender, for --seconds (or
    /// --messages per pair); delivery latency, losses and duplicates are
    /// measured.
    Messages,
}

/// Login-storm and message load generator for XMPP servers on loopback.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// Server address, HOST:PORT (it must resolve to loopback).
    #[arg(long, default_value = "127.0.0.1:5222")]
    pub target: String,
    /// Loopback address to connect from (for example 127.0.0.2), so runs
    /// from one machine count as different clients under the server's
    /// per-address limits; default: the system's choice.
    #[arg(long)]
    pub source: Option<IpAddr>,
    /// XMPP domain.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// User name pattern; `{i}` is replaced by 1..=users.
    #[arg(long, default_value = "user{i}")]
    pub user: String,
    /// Password pattern; `{i}` as for --user.
    #[arg(long, default_value = "pass{i}")]
    pub password: String,
    /// How many distinct users to cycle through.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// How clients connect: tcp (plain), starttls (TCP upgraded to TLS),
    /// tls (Direct TLS from the first byte, ALPN xmpp-client; --target is
    /// then the server's Direct TLS listener), websocket (XMPP over
    /// WebSocket, RFC 7395, at ws://TARGET/xmpp-websocket) or bosh (BOSH,
    /// XEP-0206, at http://TARGET/http-bind, hold='1'); for the last two,
    /// --target is the server's web listener. TLS certificates are not
    /// verified.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// starttls and tls: each account is one client that keeps the TLS
    /// session tickets the server gives it and resumes its next handshake
    /// with one (TLS 1.3 resumption), as a phone reconnecting after a
    /// blip does; the report counts the resumed handshakes. Without it,
    /// every handshake is a full one.
    #[arg(long)]
    pub resume: bool,
    /// How logins are started: open (fixed rate), closed (fixed
    /// concurrency) or hold (log in and keep sessions open); or messages
    /// (pairs exchanging chat messages; any transport but bosh).
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// Logins started per second (open mode).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Clients logging in at once (closed mode; in hold mode, logins in
    /// progress at once).
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Logins in all (hold mode: sessions to hold).
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Stop starting logins after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub max_seconds: f64,
    /// Per-login timeout in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Hold mode: how long every session stays open after the last one is
    /// up, before the server's RSS is taken (lets the login's garbage and
    /// timers settle). The hold ends sooner on SIGINT or SIGTERM (the RSS
    /// is taken then, the sessions closed and the report printed), or once
    /// the server has closed every session (a shutdown; each counts as
    /// connection-reset).
    #[arg(long, default_value_t = 2.0)]
    pub hold_seconds: f64,
    /// Server process to measure (CPU seconds, RSS before, peak and after).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Runtime worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Messages mode: pairs of users; pair p is users 2p+1 and 2p+2 of
    /// --user/--password.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages mode: how long each side sends (the exchange's bound
    /// besides --messages).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Messages mode: stop after this many messages per pair (half from
    /// each side), if before --seconds.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Messages mode: messages each side has in flight at most (1:
    /// ping-pong).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Messages mode: enable stream management (XEP-0198) after binding,
    /// answering the server's <r/> with <a h/>.
    #[arg(long)]
    pub sm: bool,
    /// Messages mode: how long to wait, once sending stopped, for messages
    /// still on their way; those not delivered by then are lost.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}

/// Every finished login.
#[derive(Default)]
struct Results {
    /// Each login's duration, grouped by how it ended.
    by_outcome: BTreeMap<Outcome, Vec<Duration>>,
}

impl Results {
    fn add(&mut self, outcome: Outcome, took: Duration) {
        self.by_outcome.entry(outcome).or_default().push(took);
    }

    fn total(&self) -> usize {
        self.by_outcome.values().map(Vec::len).sum()
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.by_outcome.get(&outcome).map_or(0, Vec::len)
    }
}

pub(crate) fn percentiles(durations: &[Duration]) -> Option<[f64; 4]> {
    if durations.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Some([at(0.50), at(0.95), at(0.99), ms[ms.len() - 1]])
}

/// Every account the run uses, rendered once; login `i` uses entry
/// `i % len`.
fn credentials(args: &Args) -> Arc<Vec<Credentials>> {
    let accounts = args.users.clamp(1, args.count.max(1));
    Arc::new(
        (1..=accounts)
            .map(|n| {
                let n = n.to_string();
                let client = Credentials::new(
                    &args.user.replace("{i}", &n),
                    &args.password.replace("{i}", &n),
                );
                if args.resume {
                    client.resuming(args.transport)
                } else {
                    client
                }
            })
            .collect(),
    )
}

/// Why a run could not start: its target is unusable, or the mode and
/// transport do not go together.
#[derive(Debug, thiserror::Error)]
pub enum StormError {
    /// The target is not a HOST:PORT that resolves.
    #[error("{target}: {source}")]
    Resolve {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The target resolves to no address at all.
    #[error("{target}: no address")]
    NoAddress { target: String },
    /// The source address is off loopback.
    #[error("refusing --source {address}: only loopback sources are allowed")]
    SourceNotLoopback { address: IpAddr },
    /// The target is off loopback; the generator only loads local servers.
    #[error("refusing {target} ({addr}): only loopback targets are allowed")]
    NotLoopback { target: String, addr: SocketAddr },
    /// The transport cannot carry the mode.
    #[error("--mode {mode} does not run over --transport {transport}")]
    Unsupported {
        mode: &'static str,
        transport: &'static str,
    },
}

/// Where `args` connect to and from, both on loopback.
pub(crate) fn target(args: &Args) -> Result<Target, StormError> {
    if let Some(source) = args.source.filter(|source| !source.is_loopback()) {
        return Err(StormError::SourceNotLoopback { address: source });
    }
    Ok(Target::new(
        loopback(&args.target)?,
        &args.domain,
        args.transport,
        Duration::from_secs_f64(args.timeout),
    )
    .from_source(args.source))
}

/// The one address `target` names, if it is on loopback.
pub(crate) fn loopback(target: &str) -> Result<SocketAddr, StormError> {
    let addr = target
        .to_socket_addrs()
        .map_err(|source| StormError::Resolve {
            target: target.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| StormError::NoAddress {
            target: target.to_owned(),
        })?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(StormError::NotLoopback {
            target: target.to_owned(),
            addr,
        })
    }
}

/// Runs what `args` describe — a login storm, or with `--mode messages`
/// the message exchange — and returns the report (text, or one JSON object
/// with `--json`). Refuses any target not on loopback.
pub async fn storm(args: &Args) -> Result<String, StormError> {
    match args.mode {
        Mode::Messages => messages::exchange(args).await,
        Mode::Open | Mode::Closed | Mode::Hold => logins(args).await,
    }
}

/// The login storm of the other modes.
async fn logins(args: &Args) -> Result<String, StormError> {
    let target = Arc::new(target(args)?);
    let creds = credentials(args);
    let results = Arc::new(Mutex::new(Results::default()));
    let meter = Meter::start(args.server_pid);
    let started = Instant::now();
    let limit = Duration::from_secs_f64(args.max_seconds);
    let mut held_rss = None;
    // Hold mode: when the last session was up (the held time is no part of
    // the login rate).
    let mut logins_over = None;

    match args.mode {
        Mode::Open => {
            let mut tick =
                tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(0.001)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::with_capacity(args.count);
            for i in 0..args.count {
                tick.tick().await;
                if started.elapsed() > limit {
                    break;
                }
                let (target, results, creds) = (target.clone(), results.clone(), creds.clone());
                tasks.push(tokio::spawn(async move {
                    let (outcome, took) =
                        client::login(&target, &creds[i % creds.len()], None).await;
                    results.lock().unwrap().add(outcome, took);
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        Mode::Closed => {
            let next = Arc::new(AtomicUsize::new(0));
            let workers: Vec<_> = (0..args.concurrency.max(1))
                .map(|_| {
                    let (target, results, next) = (target.clone(), results.clone(), next.clone());
                    let (count, creds) = (args.count, creds.clone());
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count || started.elapsed() > limit {
                                return;
                            }
                            let (outcome, took) =
                                client::login(&target, &creds[i % creds.len()], None).await;
                            results.lock().unwrap().add(outcome, took);
                        }
                    })
                })
                .collect();
            for worker in workers {
                let _ = worker.await;
            }
        }
        Mode::Hold => {
            let (release, hold) = tokio::sync::watch::channel(false);
            // Every task holds a sender: once all have ended, `recv` says so.
            let (alive, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
            let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
            let mut tasks = Vec::with_capacity(args.count);
            let mut ups = Vec::with_capacity(args.count);
            for i in 0..args.count {
                if started.elapsed() > limit {
                    break;
                }
                let permit = gate.clone().acquire_owned().await.expect("semaphore open");
                let (target, results, release) = (target.clone(), results.clone(), hold.clone());
                let (creds, alive) = (creds.clone(), alive.clone());
                let (up, is_up) = tokio::sync::oneshot::channel();
                let (settled, on_settled) = tokio::sync::oneshot::channel::<()>();
                ups.push(on_settled);
                tasks.push(tokio::spawn(async move {
                    let login = client::login(
                        &target,
                        &creds[i % creds.len()],
                        Some(client::Hold { up, release }),
                    );
                    tokio::pin!(login);
                    // The login slot is free once the session is up (or failed).
                    let finished = tokio::select! {
                        done = &mut login => Some(done),
                        _ = is_up => None,
                    };
                    drop(permit);
                    let _ = settled.send(());
                    let (outcome, took) = match finished {
                        Some(done) => done,
                        None => login.await,
                    };
                    results.lock().unwrap().add(outcome, took);
                    drop(alive);
                }));
            }
            drop(alive);
            // Every session is up or failed: let them settle, then measure
            // while all are held (unless the server closed them all first).
            for up in ups {
                let _ = up.await;
            }
            logins_over = Some(started.elapsed());
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)) => {
                    held_rss = meter.server_rss();
                }
                () = signalled() => held_rss = meter.server_rss(),
                _ = all_ended.recv() => {}
            }
            let _ = release.send(true);
            for task in tasks {
                let _ = task.await;
            }
        }
        Mode::Messages => unreachable!("storm() hands it to messages::exchange"),
    }

    let wall = logins_over
        .unwrap_or_else(|| started.elapsed())
        .as_secs_f64();
    let usage = meter.stop().await;
    let results = results.lock().unwrap();
    Ok(render(args, &results, wall, Measured { usage, held_rss }))
}

/// Returns on SIGINT or SIGTERM (never, if neither can be listened for).
async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// What was measured around the run, besides the logins themselves.
struct Measured {
    usage: Usage,
    /// Hold mode: the server's RSS while every session was held.
    held_rss: Option<u64>,
}

fn render(args: &Args, results: &Results, wall: f64, measured: Measured) -> String {
    let total = results.total();
    let successes = results.count(Outcome::Success);
    let usage = measured.usage;
    let server_cpu = per_thousand(usage.server_cpu, total);
    let server_cpu_per_success = per_thousand(usage.server_cpu, successes);
    let own_cpu = per_thousand(usage.own_cpu, total);
    let rss_per_session = match (usage.memory, measured.held_rss) {
        (Some(memory), Some(held)) if successes > 0 => {
            Some((held as f64 - memory.before as f64) / successes as f64)
        }
        _ => None,
    };
    let latency: Vec<(Outcome, [f64; 4])> = results
        .by_outcome
        .iter()
        .filter_map(|(outcome, took)| Some((*outcome, percentiles(took)?)))
        .collect();
    if args.json {
        let outcomes: Vec<String> = results
            .by_outcome
            .iter()
            .map(|(o, v)| format!("\"{}\":{}", o.label(), v.len()))
            .collect();
        let latency: Vec<String> = latency
            .iter()
            .map(|(o, [p50, p95, p99, max])| {
                format!(
                    "\"{}\":{{\"p50\":{p50:.2},\"p95\":{p95:.2},\"p99\":{p99:.2},\"max\":{max:.2}}}",
                    o.label()
                )
            })
            .collect();
        let memory = ServerMemory::json(usage.memory);
        let resumed = transport::tls::RESUMED.load(Ordering::Relaxed);
        return format!(
            "{{\"mode\":\"{:?}\",\"transport\":\"{}\",\"logins\":{total},\"seconds\":{wall:.3},\"logins_per_second\":{:.1},\
             \"outcomes\":{{{}}},\"latency_ms\":{{{}}},\
             \"server_cpu_seconds_per_1000\":{},\"server_cpu_seconds_per_1000_successes\":{},\
             \"loadgen_cpu_seconds_per_1000\":{},\
             \"server_rss_bytes\":{memory},\"server_rss_bytes_per_held_session\":{},\
             \"tls_resumed_handshakes\":{resumed}}}",
            args.mode,
            args.transport.label(),
            successes as f64 / wall,
            outcomes.join(","),
            latency.join(","),
            number(server_cpu, 4),
            number(server_cpu_per_success, 4),
            number(own_cpu, 4),
            number(rss_per_session, 0),
        );
    }
    let mut out = format!(
        "mode {:?} over {}: {total} logins in {wall:.2}s, {:.1} successful logins/s\n",
        args.mode,
        args.transport.label(),
        successes as f64 / wall
    );
    for (outcome, durations) in &results.by_outcome {
        out.push_str(&format!(
            "  {:<24}{:>8}\n",
            outcome.label(),
            durations.len()
        ));
    }
    for (outcome, [p50, p95, p99, max]) in &latency {
        out.push_str(&format!(
            "  {:<24}ms p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  max {max:.2}\n",
            outcome.label()
        ));
    }
    out.push_str(&format!(
        "  CPU s per 1000 logins   server {} ({} per 1000 successes)  loadgen {}\n",
        number(server_cpu, 3),
        number(server_cpu_per_success, 3),
        number(own_cpu, 3)
    ));
    if let Some(memory) = usage.memory {
        out.push_str(&memory.line());
    }
    if let Some(per) = rss_per_session {
        out.push_str(&format!("  server RSS per held session {per:.0} bytes\n"));
    }
    if args.resume {
        let resumed = transport::tls::RESUMED.load(Ordering::Relaxed);
        out.push_str(&format!("  TLS handshakes resumed   {resumed:>8}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_allowed() {
        assert_eq!(loopback("127.0.0.1:5222").unwrap().port(), 5222);
        assert!(loopback("[::1]:5222").is_ok());
        let refused = loopback("10.0.0.1:5222").unwrap_err();
        assert!(matches!(refused, StormError::NotLoopback { .. }));
        assert!(refused.to_string().contains("only loopback"));
        assert!(matches!(
            loopback("no port"),
            Err(StormError::Resolve { .. })
        ));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentiles(&ms), Some([50.0, 95.0, 99.0, 100.0]));
        assert_eq!(percentiles(&[]), None);
    }

    #[test]
    fn the_transport_is_tcp_unless_chosen() {
        let parse = |extra: &[&str]| {
            Args::try_parse_from(["gatehouse-loadgen"].iter().chain(extra))
                .map(|args| args.transport)
        };
        assert_eq!(parse(&[]).unwrap(), Transport::Tcp);
        assert_eq!(parse(&["--transport", "tcp"]).unwrap(), Transport::Tcp);
        assert_eq!(
            parse(&["--transport", "starttls"]).unwrap(),
            Transport::Starttls
        );
        assert_eq!(parse(&["--transport", "tls"]).unwrap(), Transport::Tls);
        assert_eq!(
            parse(&["--transport", "websocket"]).unwrap(),
            Transport::Websocket
        );
        assert_eq!(parse(&["--transport", "bosh"]).unwrap(), Transport::Bosh);
        assert!(parse(&["--transport", "http"]).is_err());
        assert!(parse(&["--starttls"]).is_err(), "the old flag is gone");
    }

    #[test]
    fn reports_name_the_transport() {
        let mut results = Results::default();
        results.add(Outcome::Success, Duration::from_millis(3));
        results.add(Outcome::Timeout, Duration::from_secs(10));
        let unmeasured = || Measured {
            usage: Usage::default(),
            held_rss: None,
        };
        let json = Args::parse_from(["gatehouse-loadgen", "--transport", "tls", "--json"]);
        let report: serde_json::Value =
            serde_json::from_str(&render(&json, &results, 1.0, unmeasured())).unwrap();
        assert_eq!(report["transport"], "tls");
        assert_eq!(report["outcomes"]["success"], 1);
        assert_eq!(report["outcomes"]["timeout"], 1);
        let text = Args::parse_from(["gatehouse-loadgen", "--transport", "starttls"]);
        let report = render(&text, &results, 1.0, unmeasured());
        assert!(
            report.starts_with("mode Closed over starttls: 2 logins"),
            "{report}"
        );
    }

    #[test]
    fn accounts_are_rendered_once_each() {
        let args = Args::parse_from(["gatehouse-loadgen", "--users", "3", "--count", "10"]);
        assert_eq!(credentials(&args).len(), 3);
        let few = Args::parse_from(["gatehouse-loadgen", "--users", "50", "--count", "2"]);
        assert_eq!(credentials(&few).len(), 2);
    }
}
