//! `gatehouse-loadgen`: drives a login storm against any XMPP server on
//! this machine and reports what happened.
//!
//! Modes: `open` (a fixed offered rate, whatever the server does),
//! `closed` (a fixed number of clients, each starting its next login when
//! the last ended) and `hold` (log in N sessions and keep them open, to
//! measure memory per session). It always ends on its own: a login count
//! and a time limit bound every run, and it only targets loopback.

pub mod client;
mod stats;

use clap::{Parser, ValueEnum};
use client::{Outcome, Target};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Open,
    Closed,
    Hold,
}

/// Login-storm load generator for XMPP servers on loopback.
#[derive(Parser, Debug)]
#[command(version)]
pub struct Args {
    /// Server address (loopback only).
    #[arg(long, default_value = "127.0.0.1:5222")]
    pub target: SocketAddr,
    /// XMPP domain.
    #[arg(long, default_value = "localhost")]
    pub domain: String,
    /// User name pattern; `{n}` is replaced by 1..=users.
    #[arg(long, default_value = "user{n}")]
    pub user: String,
    /// Password pattern; `{n}` as for --user.
    #[arg(long, default_value = "pass{n}")]
    pub password: String,
    /// How many distinct users to cycle through.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Negotiate STARTTLS (the certificate is not verified).
    #[arg(long)]
    pub starttls: bool,
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
    /// Server process to measure (CPU seconds, RSS).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Runtime worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Every finished login.
#[derive(Default)]
struct Results {
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

fn percentiles(durations: &[Duration]) -> Option<[f64; 4]> {
    if durations.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    Some([at(0.50), at(0.95), at(0.99), ms[ms.len() - 1]])
}

fn credentials(args: &Args, i: usize) -> (String, String) {
    let n = (i % args.users.max(1) + 1).to_string();
    (
        args.user.replace("{n}", &n),
        args.password.replace("{n}", &n),
    )
}

/// Runs the storm `args` describe and returns the report (text, or one
/// JSON object with `--json`). Refuses any target not on loopback.
pub async fn storm(args: &Args) -> Result<String, String> {
    if !args.target.ip().is_loopback() {
        return Err(format!(
            "refusing {}: only loopback targets are allowed",
            args.target
        ));
    }
    let target = Arc::new(Target {
        addr: args.target,
        domain: args.domain.clone(),
        tls: args.starttls.then(client::insecure_tls),
        timeout: Duration::from_secs_f64(args.timeout),
    });
    let results = Arc::new(Mutex::new(Results::default()));
    let server_pid = args.server_pid.map(|p| p.to_string());
    let server_before = server_pid.as_deref().and_then(stats::sample);
    let self_before = stats::sample("self");
    let started = Instant::now();
    let limit = Duration::from_secs_f64(args.max_seconds);
    let mut held_rss = None;

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
                let (user, password) = credentials(args, i);
                let (target, results) = (target.clone(), results.clone());
                tasks.push(tokio::spawn(async move {
                    let (outcome, took) = client::login(&target, &user, &password, None).await;
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
                    let (count, creds): (usize, Vec<(String, String)>) = (
                        args.count,
                        (0..args.users.max(1))
                            .map(|i| credentials(args, i))
                            .collect(),
                    );
                    tokio::spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count || started.elapsed() > limit {
                                return;
                            }
                            let (user, password) = &creds[i % creds.len()];
                            let (outcome, took) =
                                client::login(&target, user, password, None).await;
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
            let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
            let mut tasks = Vec::with_capacity(args.count);
            let mut ups = Vec::with_capacity(args.count);
            for i in 0..args.count {
                if started.elapsed() > limit {
                    break;
                }
                let permit = gate.clone().acquire_owned().await.expect("semaphore open");
                let (user, password) = credentials(args, i);
                let (target, results, release) = (target.clone(), results.clone(), hold.clone());
                let (up, is_up) = tokio::sync::oneshot::channel();
                let (settled, on_settled) = tokio::sync::oneshot::channel::<()>();
                ups.push(on_settled);
                tasks.push(tokio::spawn(async move {
                    let login = client::login(
                        &target,
                        &user,
                        &password,
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
                }));
            }
            // Every session is up or failed: measure while all are held.
            for up in ups {
                let _ = up.await;
            }
            held_rss = server_pid
                .as_deref()
                .and_then(stats::sample)
                .map(|s| s.rss_bytes);
            let _ = release.send(true);
            for task in tasks {
                let _ = task.await;
            }
        }
    }

    let wall = started.elapsed().as_secs_f64();
    let server_after = server_pid.as_deref().and_then(stats::sample);
    let self_after = stats::sample("self");
    let results = results.lock().unwrap();
    Ok(render(
        args,
        &results,
        wall,
        (server_before, server_after, held_rss),
        (self_before, self_after),
    ))
}

fn render(
    args: &Args,
    results: &Results,
    wall: f64,
    server: (Option<stats::Sample>, Option<stats::Sample>, Option<u64>),
    me: (Option<stats::Sample>, Option<stats::Sample>),
) -> String {
    let total = results.total();
    let successes = results.count(Outcome::Success);
    let per_thousand =
        |before: Option<stats::Sample>, after: Option<stats::Sample>| match (before, after) {
            (Some(b), Some(a)) if total > 0 => {
                Some((a.cpu_seconds - b.cpu_seconds) / total as f64 * 1000.0)
            }
            _ => None,
        };
    let server_cpu = per_thousand(server.0, server.1);
    let own_cpu = per_thousand(me.0, me.1);
    let rss_per_session = match (server.0, server.2) {
        (Some(before), Some(held)) if successes > 0 => {
            Some((held as f64 - before.rss_bytes as f64) / successes as f64)
        }
        _ => None,
    };
    let success_ms = percentiles(
        results
            .by_outcome
            .get(&Outcome::Success)
            .map_or(&[], Vec::as_slice),
    );
    let refused_ms = percentiles(
        results
            .by_outcome
            .get(&Outcome::TemporaryAuthFailure)
            .map_or(&[], Vec::as_slice),
    );
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("null".to_owned(), |v| format!("{v:.digits$}"));
    let quantiles = |q: Option<[f64; 4]>| {
        q.map_or("null".to_owned(), |[p50, p95, p99, max]| {
            format!("{{\"p50\":{p50:.2},\"p95\":{p95:.2},\"p99\":{p99:.2},\"max\":{max:.2}}}")
        })
    };
    if args.json {
        let outcomes: Vec<String> = results
            .by_outcome
            .iter()
            .map(|(o, v)| format!("\"{}\":{}", o.label(), v.len()))
            .collect();
        return format!(
            "{{\"mode\":\"{:?}\",\"logins\":{total},\"seconds\":{wall:.3},\"logins_per_second\":{:.1},\
             \"outcomes\":{{{}}},\"success_ms\":{},\"temporary_failure_ms\":{},\
             \"server_cpu_seconds_per_1000\":{},\"loadgen_cpu_seconds_per_1000\":{},\
             \"server_rss_bytes\":{},\"server_rss_bytes_per_held_session\":{}}}",
            args.mode,
            successes as f64 / wall,
            outcomes.join(","),
            quantiles(success_ms),
            quantiles(refused_ms),
            opt(server_cpu, 4),
            opt(own_cpu, 4),
            server.1.map_or("null".to_owned(), |s| s.rss_bytes.to_string()),
            opt(rss_per_session, 0),
        );
    }
    let mut out = format!(
        "mode {:?}: {total} logins in {wall:.2}s, {:.1} successful logins/s\n",
        args.mode,
        successes as f64 / wall
    );
    for (outcome, durations) in &results.by_outcome {
        out.push_str(&format!(
            "  {:<24}{:>8}\n",
            outcome.label(),
            durations.len()
        ));
    }
    if let Some([p50, p95, p99, max]) = success_ms {
        out.push_str(&format!(
            "  success latency ms      p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  max {max:.2}\n"
        ));
    }
    if let Some([p50, p95, p99, max]) = refused_ms {
        out.push_str(&format!(
            "  refusal latency ms      p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  max {max:.2}\n"
        ));
    }
    out.push_str(&format!(
        "  CPU s per 1000 logins   server {}  loadgen {}\n",
        opt(server_cpu, 3),
        opt(own_cpu, 3)
    ));
    if let Some(after) = server.1 {
        out.push_str(&format!(
            "  server RSS              {:.1} MiB\n",
            after.rss_bytes as f64 / 1048576.0
        ));
    }
    if let Some(per) = rss_per_session {
        out.push_str(&format!("  server RSS per held session {:.0} bytes\n", per));
    }
    out
}
