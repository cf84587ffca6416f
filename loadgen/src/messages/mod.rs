//! `--mode messages`: `--pairs` pairs of clients, each side logged in once
//! (`side`), send each other chat messages to the other's full JID, closed
//! loop with `--window` messages in flight per sender, for `--seconds` or
//! `--messages` per pair. Every side logs in before the exchange starts,
//! and the exchange is measured (server CPU and RSS) from its start until
//! every side has stopped: sending is over and what the peer sent arrived,
//! or `--drain` passed. What never arrived is lost (`report`).
//!
//! A message that is lost shrinks its sender's window for good (it is not
//! sent again): a lossy server shows fewer messages/s as well as losses.

mod report;
mod side;

use crate::client::{connected, Credentials, Stop};
use crate::meter::Meter;
use crate::transport::Transport;
use crate::{target, Args, StormError};
use report::{Tally, Total};
use side::{Flow, Phases, Plan, Side};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Runs the exchange `args` describe and returns its report.
pub(crate) async fn exchange(args: &Args) -> Result<String, StormError> {
    // BOSH reads by sending a request: a side cannot wait for the server
    // and send at once.
    if args.transport == Transport::Bosh {
        return Err(StormError::Unsupported {
            mode: "messages",
            transport: Transport::Bosh.label(),
        });
    }
    let target = Arc::new(target(args)?);
    let plan = Plan {
        sm: args.sm,
        sending: Duration::from_secs_f64(args.seconds),
        drain: Duration::from_secs_f64(args.drain),
        timeout: target.timeout,
    };
    let (arrived, mut all_arrived) = mpsc::channel(1);
    let (finished, mut all_finished) = mpsc::channel(1);
    let (go, on_go) = watch::channel(None);
    let (release, on_release) = watch::channel(false);
    let phases = Phases {
        arrived,
        go: on_go,
        finished,
        release: on_release,
    };
    let account = |n: usize| {
        let n = n.to_string();
        Credentials::new(
            &args.user.replace("{i}", &n),
            &args.password.replace("{i}", &n),
        )
    };
    let mut sides = Vec::with_capacity(args.pairs * 2);
    for pair in 0..args.pairs {
        let (there, back) = (Flow::new(args.window), Flow::new(args.window));
        let (a_jid, to_b) = oneshot::channel();
        let (b_jid, to_a) = oneshot::channel();
        // The pair's quota, A sending the odd one.
        let (quota_a, quota_b) = args
            .messages
            .map_or((u64::MAX, u64::MAX), |m| (m.div_ceil(2), m / 2));
        let a = (
            account(2 * pair + 1),
            quota_a,
            a_jid,
            to_a,
            there.clone(),
            back.clone(),
        );
        let b = (account(2 * pair + 2), quota_b, b_jid, to_b, back, there);
        for (credentials, quota, jid, peer, outgoing, incoming) in [a, b] {
            let (target, phases) = (target.clone(), phases.clone());
            sides.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                let login_by = tokio::time::Instant::now() + plan.timeout;
                let side = Side {
                    credentials,
                    plan,
                    login_by,
                    quota,
                    phases,
                    jid,
                    peer,
                    outgoing: outgoing.clone(),
                    incoming,
                    tally: &mut tally,
                };
                if let Err(Stop::Outcome(failure)) = connected(&target, login_by, side).await {
                    tally.failure = Some(failure);
                }
                // Whatever happened, the peer need not wait for more.
                outgoing.stopped(tally.sent);
                tally
            }));
        }
    }
    drop(phases);
    let _ = all_arrived.recv().await;
    let meter = Meter::start(args.server_pid);
    let started = Instant::now();
    go.send_replace(Some(started));
    let _ = all_finished.recv().await;
    let wall = started.elapsed();
    let usage = meter.stop().await;
    release.send_replace(true);
    let mut total = Total::default();
    for side in sides {
        if let Ok(tally) = side.await {
            total.add(tally);
        }
    }
    Ok(report::render(args, &total, wall, usage))
}
