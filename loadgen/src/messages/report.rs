//! What the message exchange counted, side by side and for the whole run,
//! and its report (text, or one JSON object).

use crate::client::Outcome;
use crate::meter::{number, per_thousand, ServerMemory, Usage};
use crate::{percentiles, Args};
use std::collections::BTreeMap;
use std::time::Duration;

/// What one side counted.
#[derive(Default)]
pub(super) struct Tally {
    /// Messages it sent.
    pub sent: u64,
    /// Which of the peer's messages arrived, by sequence number.
    pub seen: Vec<bool>,
    /// The peer's messages that arrived, each counted once.
    pub delivered: u64,
    /// Arrivals of a message that had arrived before.
    pub duplicated: u64,
    /// Each delivery's latency, from send to first arrival.
    pub latencies: Vec<Duration>,
    /// Stanza errors received (`type='error'`).
    pub errors: u64,
    /// Acknowledgement requests answered (stream management).
    pub acks: u64,
    /// How the side failed (at login or later), if it did.
    pub failure: Option<Outcome>,
}

/// What every side counted, added up.
#[derive(Default)]
pub(super) struct Total {
    sent: u64,
    delivered: u64,
    duplicated: u64,
    latencies: Vec<Duration>,
    errors: u64,
    acks: u64,
    failures: BTreeMap<Outcome, usize>,
}

impl Total {
    pub(super) fn add(&mut self, side: Tally) {
        self.sent += side.sent;
        self.delivered += side.delivered;
        self.duplicated += side.duplicated;
        self.latencies.extend(side.latencies);
        self.errors += side.errors;
        self.acks += side.acks;
        if let Some(failure) = side.failure {
            *self.failures.entry(failure).or_default() += 1;
        }
    }

    /// Messages sent that never arrived.
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
}

/// The report of an exchange that took `wall` from its start until every
/// side stopped.
pub(super) fn render(args: &Args, total: &Total, wall: Duration, usage: Usage) -> String {
    let wall = wall.as_secs_f64();
    let rate = total.delivered as f64 / wall;
    let delivered = usize::try_from(total.delivered).unwrap_or(usize::MAX);
    let server_cpu = per_thousand(usage.server_cpu, delivered);
    let own_cpu = per_thousand(usage.own_cpu, delivered);
    let latency = percentiles(&total.latencies);
    let sm = if args.sm { "on" } else { "off" };
    if args.json {
        let latency = latency.map_or("null".to_owned(), |[p50, p95, p99, max]| {
            format!("{{\"p50\":{p50:.2},\"p95\":{p95:.2},\"p99\":{p99:.2},\"max\":{max:.2}}}")
        });
        let failures: Vec<String> = total
            .failures
            .iter()
            .map(|(outcome, n)| format!("\"{}\":{n}", outcome.label()))
            .collect();
        return format!(
            "{{\"mode\":\"Messages\",\"transport\":\"{}\",\"pairs\":{},\"window\":{},\"sm\":{},\
             \"seconds\":{wall:.3},\"sent\":{},\"delivered\":{},\"lost\":{},\"duplicated\":{},\
             \"messages_per_second\":{rate:.1},\"latency_ms\":{latency},\"errors\":{},\
             \"sm_acks\":{},\"failed_sides\":{{{}}},\"server_cpu_seconds\":{},\
             \"server_cpu_seconds_per_1000\":{},\"loadgen_cpu_seconds_per_1000\":{},\
             \"server_rss_bytes\":{}}}",
            args.transport.label(),
            args.pairs,
            args.window,
            args.sm,
            total.sent,
            total.delivered,
            total.lost(),
            total.duplicated,
            total.errors,
            total.acks,
            failures.join(","),
            number(usage.server_cpu, 3),
            number(server_cpu, 4),
            number(own_cpu, 4),
            ServerMemory::json(usage.memory),
        );
    }
    let mut out = format!(
        "mode Messages over {}: {} pairs, window {}, stream management {sm}: \
         {} messages delivered in {wall:.2}s, {rate:.1} messages/s\n",
        args.transport.label(),
        args.pairs,
        args.window,
        total.delivered
    );
    out.push_str(&format!(
        "  sent {}  delivered {}  lost {}  duplicated {}  stanza errors {}  acks answered {}\n",
        total.sent,
        total.delivered,
        total.lost(),
        total.duplicated,
        total.errors,
        total.acks
    ));
    if let Some([p50, p95, p99, max]) = latency {
        out.push_str(&format!(
            "  latency ms              p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  max {max:.2}\n"
        ));
    }
    for (outcome, n) in &total.failures {
        out.push_str(&format!("  failed sides: {:<14}{n:>8}\n", outcome.label()));
    }
    out.push_str(&format!(
        "  CPU s per 1000 messages server {}  loadgen {}\n",
        number(server_cpu, 3),
        number(own_cpu, 3)
    ));
    if let Some(memory) = usage.memory {
        out.push_str(&memory.line());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn total() -> Total {
        let mut total = Total::default();
        total.add(Tally {
            sent: 4,
            delivered: 3,
            duplicated: 1,
            latencies: vec![Duration::from_millis(1); 3],
            acks: 2,
            ..Tally::default()
        });
        total.add(Tally {
            sent: 3,
            delivered: 3,
            latencies: vec![Duration::from_millis(2); 3],
            errors: 1,
            failure: Some(Outcome::ConnectionReset),
            ..Tally::default()
        });
        total
    }

    #[test]
    fn the_json_report_counts_losses_and_duplicates() {
        let args = Args::parse_from(["gatehouse-loadgen", "--mode", "messages", "--sm", "--json"]);
        let report: serde_json::Value = serde_json::from_str(&render(
            &args,
            &total(),
            Duration::from_secs(2),
            Usage::default(),
        ))
        .unwrap();
        assert_eq!(report["mode"], "Messages");
        assert_eq!(report["sm"], true);
        assert_eq!(report["sent"], 7);
        assert_eq!(report["delivered"], 6);
        assert_eq!(report["lost"], 1);
        assert_eq!(report["duplicated"], 1);
        assert_eq!(report["errors"], 1);
        assert_eq!(report["sm_acks"], 2);
        assert_eq!(report["messages_per_second"], 3.0);
        assert_eq!(report["latency_ms"]["p50"], 1.0);
        assert_eq!(report["latency_ms"]["p99"], 2.0);
        assert_eq!(report["failed_sides"]["connection-reset"], 1);
        assert!(report["server_cpu_seconds_per_1000"].is_null());
    }

    #[test]
    fn the_text_report_names_the_load() {
        let args = Args::parse_from(["gatehouse-loadgen", "--mode", "messages", "--window", "4"]);
        let report = render(&args, &total(), Duration::from_secs(2), Usage::default());
        assert!(
            report.starts_with(
                "mode Messages over tcp: 10 pairs, window 4, stream management off: \
                 6 messages delivered"
            ),
            "{report}"
        );
        assert!(report.contains("lost 1  duplicated 1"), "{report}");
    }
}
