//! What a run costs, measured around it from /proc (see `stats`): the
//! server's and the generator's CPU seconds, and the server's resident
//! memory before, at its peak and after; and how the reports print them.

use crate::stats;
use std::time::Duration;

/// The server's resident memory: before the run, its highest while the
/// run went on (sampled every 100 ms), and after.
#[derive(Clone, Copy, Default)]
pub(crate) struct ServerMemory {
    /// RSS in bytes before the run.
    pub before: u64,
    /// The highest RSS sampled during the run.
    pub peak: u64,
    /// RSS once the run ended (in hold mode: with every session still up).
    pub after: u64,
}

impl ServerMemory {
    /// The JSON object reports carry.
    pub fn json(memory: Option<Self>) -> String {
        memory.map_or("null".to_owned(), |m| {
            format!(
                "{{\"before\":{},\"peak\":{},\"after\":{}}}",
                m.before, m.peak, m.after
            )
        })
    }

    /// The line text reports carry.
    pub fn line(self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        format!(
            "  server RSS MiB          before {:.1}  peak {:.1}  after {:.1}\n",
            mib(self.before),
            mib(self.peak),
            mib(self.after)
        )
    }
}

/// What a [`Meter`] measured.
#[derive(Clone, Copy, Default)]
pub(crate) struct Usage {
    /// CPU seconds the server used during the run.
    pub server_cpu: Option<f64>,
    /// CPU seconds the generator used during the run.
    pub own_cpu: Option<f64>,
    pub memory: Option<ServerMemory>,
}

/// Measures from [`Meter::start`] to [`Meter::stop`].
pub(crate) struct Meter {
    server_pid: Option<String>,
    server_before: Option<stats::Sample>,
    self_before: Option<stats::Sample>,
    /// Tells the RSS sampler the run is over.
    run_over: tokio::sync::watch::Sender<bool>,
    peak: Option<tokio::task::JoinHandle<u64>>,
}

impl Meter {
    /// Takes the first samples of the server `server_pid` (if given) and
    /// of this process, and starts sampling the server's RSS.
    pub fn start(server_pid: Option<u32>) -> Meter {
        let server_pid = server_pid.map(|p| p.to_string());
        let server_before = server_pid.as_deref().and_then(stats::sample);
        let (run_over, watch_run) = tokio::sync::watch::channel(false);
        let peak = server_pid
            .clone()
            .map(|pid| tokio::spawn(peak_rss(pid, watch_run)));
        Meter {
            server_pid,
            server_before,
            self_before: stats::sample("self"),
            run_over,
            peak,
        }
    }

    /// The server's RSS now.
    pub fn server_rss(&self) -> Option<u64> {
        self.server_pid
            .as_deref()
            .and_then(stats::sample)
            .map(|s| s.rss_bytes)
    }

    /// Takes the last samples and stops sampling.
    pub async fn stop(self) -> Usage {
        let server_after = self.server_pid.as_deref().and_then(stats::sample);
        let self_after = stats::sample("self");
        let _ = self.run_over.send(true);
        let peak = match self.peak {
            Some(task) => task.await.unwrap_or(0),
            None => 0,
        };
        let cpu = |before: Option<stats::Sample>, after: Option<stats::Sample>| {
            Some(after?.cpu_seconds - before?.cpu_seconds)
        };
        Usage {
            server_cpu: cpu(self.server_before, server_after),
            own_cpu: cpu(self.self_before, self_after),
            memory: match (self.server_before, server_after) {
                (Some(before), Some(after)) => Some(ServerMemory {
                    before: before.rss_bytes,
                    peak: peak.max(before.rss_bytes).max(after.rss_bytes),
                    after: after.rss_bytes,
                }),
                _ => None,
            },
        }
    }
}

/// Samples `pid`'s RSS every 100 ms until `done` turns true; returns the
/// highest seen.
async fn peak_rss(pid: String, mut done: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut peak = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        if let Some(sample) = stats::sample(&pid) {
            peak = peak.max(sample.rss_bytes);
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.changed() => return peak,
        }
    }
}

/// `cpu` seconds per 1000 of `n` things, if both are known.
pub(crate) fn per_thousand(cpu: Option<f64>, n: usize) -> Option<f64> {
    cpu.filter(|_| n > 0).map(|c| c / n as f64 * 1000.0)
}

/// `value` with `digits` decimals, or `null` (JSON's, and the text
/// reports' word for not measured).
pub(crate) fn number(value: Option<f64>, digits: usize) -> String {
    value.map_or("null".to_owned(), |v| format!("{v:.digits$}"))
}
