//! The AuthPool with the external-process backend, against real child
//! processes: the workspace's fixture program `tests/fixtures/auth.py` (both wire
//! protocols, misbehaving on demand). Covers answers, validation before
//! anything is written, replacement of broken processes, idle dispatch,
//! admission, the queue timeout, shutdown, the metrics, and the changes a
//! reload makes to a running pool (resize, rolling replacement, a swap of
//! the whole pool).
//!
//! Each test installs its own Prometheus recorder on its thread: the pool
//! and its workers run on the test's actix System, so every metric they
//! record lands there and tests do not see each other's counters.

#[path = "../../tests/common/poll.rs"]
mod poll;
#[path = "../../tests/common/processes.rs"]
mod processes;

use gatehouse_actors::auth::{
    AuthCommand, AuthError, Authenticator, Capabilities, ExternalConfig, Password, PoolHandle,
    Protocol,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use poll::eventually;
use processes::{pids, python, running};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PROTOCOLS: [Protocol; 2] = [Protocol::Generic, Protocol::Ejabberd];

/// A password that must never show up in an error.
const SECRET: &str = "s3cret:pw";

/// A program in the workspace's `tests/fixtures`.
fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A fresh, empty directory for one test's pid files and request records.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gatehouse-auth-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What a test pool looks like; every test changes only what it needs.
struct Setup {
    protocol: Protocol,
    processes: usize,
    queue: usize,
    timeout: Duration,
    queue_timeout: Duration,
    /// How long output must stay quiet after an answer.
    reply_grace: Duration,
    /// Extra fixture arguments (`--delay`, `--late`, ...).
    args: Vec<String>,
    /// Start the fixture through `auth-wrapper.sh` (a child, not `exec`),
    /// which writes its own pid file into this directory.
    wrapped_in: Option<PathBuf>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            protocol: Protocol::Generic,
            processes: 1,
            queue: 8,
            timeout: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(10),
            reply_grace: Duration::from_millis(2),
            args: Vec::new(),
            wrapped_in: None,
        }
    }
}

impl Setup {
    fn arg(mut self, name: &str, value: impl ToString) -> Self {
        self.args.push(name.to_owned());
        self.args.push(value.to_string());
        self
    }

    fn flag(mut self, name: &str) -> Self {
        self.args.push(name.to_owned());
        self
    }

    fn start(self) -> PoolHandle {
        PoolHandle::start_external(self.config())
    }

    fn config(self) -> ExternalConfig {
        let protocol = match self.protocol {
            Protocol::Generic => "generic",
            Protocol::Ejabberd => "ejabberd",
        };
        let mut command = Vec::new();
        if let Some(dir) = self.wrapped_in {
            command.extend(["sh".into(), fixture("auth-wrapper.sh")]);
            command.push(dir.display().to_string());
        }
        command.extend([
            python().to_owned(),
            fixture("auth.py"),
            "--protocol".into(),
            protocol.into(),
        ]);
        command.extend(self.args);
        ExternalConfig {
            command,
            protocol: self.protocol,
            processes: self.processes,
            queue: self.queue,
            timeout: self.timeout,
            queue_timeout: self.queue_timeout,
            reply_grace: self.reply_grace,
        }
    }
}

/// The metrics recorded on this thread (see the module comment).
struct Metrics {
    recorder: PrometheusRecorder,
}

impl Metrics {
    fn new() -> Self {
        Metrics {
            recorder: PrometheusBuilder::new().build_recorder(),
        }
    }

    fn install(&self) -> metrics::LocalRecorderGuard<'_> {
        metrics::set_default_local_recorder(&self.recorder)
    }

    fn handle(&self) -> PrometheusHandle {
        self.recorder.handle()
    }
}

/// The value of `name` whose labels include every one of `labels` (all of
/// them carry `backend="external"`), or 0 if it was never recorded.
fn metric(handle: &PrometheusHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = handle.render();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_text) = series.split_once('{')?;
            let wanted = [("backend", "external")].iter().chain(labels);
            (metric_name == name
                && wanted
                    .clone()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Waits until `n` processes are up and idle.
async fn workers_up(metrics: &PrometheusHandle, n: usize) {
    eventually("the workers to start", Duration::from_secs(10), || {
        metric(metrics, "gatehouse_auth_workers", &[]) == n as f64
    })
    .await;
}

/// Waits until `n` fixture processes have recorded their pid in `dir`,
/// and returns those pids.
async fn recorded_pids(dir: &Path, n: usize) -> BTreeSet<u32> {
    eventually("the processes' pid files", Duration::from_secs(10), || {
        pids(dir).len() >= n
    })
    .await;
    pids(dir)
}

/// Whether `pid` still exists at all (running or an unreaped zombie).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The requests the fixture recorded, one `repr()` of the bytes per line.
fn recorded(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn auth(user: &str, password: &str) -> AuthCommand {
    AuthCommand::Auth {
        user: user.into(),
        host: "localhost".into(),
        password: Password::new(password),
    }
}

fn isuser(user: &str) -> AuthCommand {
    AuthCommand::IsUser {
        user: user.into(),
        host: "localhost".into(),
    }
}

fn set_pass(user: &str, password: &str) -> AuthCommand {
    AuthCommand::SetPass {
        user: user.into(),
        host: "localhost".into(),
        password: Password::new(password),
    }
}

fn register(user: &str, password: &str) -> AuthCommand {
    AuthCommand::TryRegister {
        user: user.into(),
        host: "localhost".into(),
        password: Password::new(password),
    }
}

fn remove(user: &str) -> AuthCommand {
    AuthCommand::RemoveUser {
        user: user.into(),
        host: "localhost".into(),
    }
}

#[test]
fn pool_handles_can_be_shared_across_threads() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<PoolHandle>();
}

#[actix_rt::test]
async fn answers_yes_and_no_in_both_protocols() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let mut asked = 0;
    for protocol in PROTOCOLS {
        let pool = Setup {
            protocol,
            ..Setup::default()
        }
        .start();
        assert_eq!(pool.backend(), "external");
        let mut expectations = vec![
            (auth("alice", "wonderland"), true),
            (auth("alice", "Wonderland"), false),
            (auth("nobody", "wonderland"), false),
            (auth("colon", "pa:ss:word"), true),
            (auth("colon", "pa:ss"), false),
            (auth("colon", "pa:ss:word:"), false),
            (isuser("bob"), true),
            (isuser("nobody"), false),
            (set_pass("bob", "new:one"), true),
            (auth("bob", "builder"), false),
            (auth("bob", "new:one"), true),
        ];
        // Only ejabberd's protocol manages accounts.
        if protocol == Protocol::Ejabberd {
            expectations.extend([
                (register("carol", "c"), true),
                (register("carol", "c"), false),
                (auth("carol", "c"), true),
                (remove("carol"), true),
                (isuser("carol"), false),
            ]);
        }
        for (command, expected) in expectations {
            assert_eq!(
                pool.call(command.clone()).await,
                Ok(expected),
                "{protocol:?} {command:?}"
            );
            asked += 1;
        }
        pool.shutdown().await;
    }
    let h = metrics.handle();
    // Every request was dispatched, so every one has a wait time.
    assert_eq!(
        metric(&h, "gatehouse_auth_wait_seconds_count", &[]),
        asked as f64
    );
    let durations = |result| {
        metric(
            &h,
            "gatehouse_auth_request_duration_seconds_count",
            &[("result", result)],
        )
    };
    assert_eq!(durations("success"), 2.0 * 5.0 + 3.0);
    assert_eq!(durations("failure"), 2.0 * 6.0 + 2.0);
    assert_eq!(durations("error") + durations("timeout"), 0.0);
    assert!(!h.render().contains("wonderland"), "no secret in any label");
}

#[actix_rt::test]
async fn unsendable_requests_are_refused_and_never_written() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let dir = scratch("unsendable");
    let mut refused = 0;
    for protocol in PROTOCOLS {
        let record = dir.join(format!("{protocol:?}.log"));
        let pool = Setup {
            protocol,
            ..Setup::default()
        }
        .arg("--record", record.display())
        .start();
        // The longest request each protocol carries, and one byte more.
        let limit = match protocol {
            Protocol::Generic => 1000,
            Protocol::Ejabberd => 65535,
        };
        let filler = |len: usize| "x".repeat(len - "auth:alice:localhost:".len());
        let longest = auth("alice", &filler(limit));
        let too_long = auth("alice", &filler(limit + 1));
        let unsendable = [
            auth("alice", "wonder\nland"),
            auth("alice", "wonder\rland"),
            auth("alice", "wonder\0land"),
            auth("alice", "wonderland\n"),
            auth("al\nice", "wonderland"),
            auth("al:ice", "wonderland"),
            AuthCommand::IsUser {
                user: "bob".into(),
                host: "local:host".into(),
            },
            AuthCommand::IsUser {
                user: "bob".into(),
                host: "localhost\0".into(),
            },
            too_long,
        ];
        for command in unsendable {
            let result = pool.call(command.clone()).await;
            assert!(
                matches!(result, Err(AuthError::InvalidRequest(_))),
                "{protocol:?} {command:?}: {result:?}"
            );
            assert!(!result.unwrap_err().is_temporary());
            refused += 1;
        }
        assert_eq!(pool.call(longest).await, Ok(false), "{protocol:?}");
        assert_eq!(pool.call(isuser("bob")).await, Ok(true), "{protocol:?}");
        pool.shutdown().await;
        // Only the two valid requests ever reached the process.
        let lines = recorded(&record);
        assert_eq!(lines.len(), 2, "{protocol:?}: {lines:.80?}");
        assert_eq!(lines[0].len(), limit + "b''".len());
        assert_eq!(lines[1], "b'isuser:bob:localhost'");
    }
    assert_eq!(
        metric(
            &metrics.handle(),
            "gatehouse_auth_rejected_total",
            &[("reason", "invalid_request")]
        ),
        refused as f64
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// One process misbehaves on `user`'s request: the request fails with a
/// temporary error (`expected`), the process is killed, reaped and
/// replaced, and the replacement answers.
async fn a_broken_process_is_replaced(
    user: &str,
    timeout: Duration,
    expected: fn(&AuthError) -> bool,
) {
    for protocol in PROTOCOLS {
        let metrics = Metrics::new();
        let _installed = metrics.install();
        let h = metrics.handle();
        let dir = scratch(&format!("broken-{user}-{protocol:?}"));
        let pool = Setup {
            protocol,
            timeout,
            ..Setup::default()
        }
        .arg("--pids", dir.display())
        .arg("--late", 3)
        .start();
        let first = recorded_pids(&dir, 1).await;

        let error = pool.call(auth(user, SECRET)).await.unwrap_err();
        assert!(expected(&error), "{protocol:?} {user}: {error:?}");
        assert!(error.is_temporary());
        for text in [error.to_string(), format!("{error:?}")] {
            assert!(!text.contains(SECRET) && !text.contains(user), "{text}");
        }

        assert_eq!(
            pool.call(auth("alice", "wonderland")).await,
            Ok(true),
            "{protocol:?} {user}: the replacement answers"
        );
        let now = pids(&dir);
        assert_eq!(now.len(), 2, "{protocol:?} {user}: one new process");
        let old = *first.iter().next().unwrap();
        assert!(!exists(old), "{protocol:?} {user}: the old one is reaped");
        assert_eq!(
            metric(&h, "gatehouse_auth_process_restarts_total", &[]),
            1.0
        );
        let timed_out = matches!(error, AuthError::Timeout);
        assert_eq!(
            metric(&h, "gatehouse_auth_timeouts_total", &[]),
            if timed_out { 1.0 } else { 0.0 }
        );
        let result = if timed_out { "timeout" } else { "error" };
        assert_eq!(
            metric(
                &h,
                "gatehouse_auth_request_duration_seconds_count",
                &[("result", result)]
            ),
            1.0
        );
        pool.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[actix_rt::test]
async fn a_process_that_crashes_mid_request_is_replaced() {
    a_broken_process_is_replaced("crash", Duration::from_secs(10), |e| {
        matches!(e, AuthError::BackendFailed(_))
    })
    .await;
}

#[actix_rt::test]
async fn a_process_that_answers_garbage_is_replaced() {
    a_broken_process_is_replaced("garbage", Duration::from_secs(10), |e| {
        matches!(e, AuthError::BackendFailed(_))
    })
    .await;
}

#[actix_rt::test]
async fn a_process_that_hangs_is_replaced() {
    a_broken_process_is_replaced("hang", Duration::from_millis(700), |e| {
        *e == AuthError::Timeout
    })
    .await;
}

#[actix_rt::test]
async fn a_process_that_answers_too_late_is_replaced() {
    a_broken_process_is_replaced("late", Duration::from_millis(700), |e| {
        *e == AuthError::Timeout
    })
    .await;
}

#[actix_rt::test]
async fn a_late_answer_is_never_taken_for_the_next_request() {
    for protocol in PROTOCOLS {
        let pool = Setup {
            protocol,
            timeout: Duration::from_millis(500),
            ..Setup::default()
        }
        .arg("--late", 1.5)
        .start();
        // The fixture answers "1" to `late`, after 1.5 s.
        assert_eq!(pool.call(auth("late", "x")).await, Err(AuthError::Timeout));
        // Right away and once the late answer would have come, a wrong
        // password gets the honest "0" of a fresh process.
        assert_eq!(pool.call(auth("alice", "wrong")).await, Ok(false));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(pool.call(auth("alice", "wrong")).await, Ok(false));
        assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
        pool.shutdown().await;
    }
}

#[actix_rt::test]
async fn a_process_that_exits_or_talks_while_idle_is_replaced_at_once() {
    for protocol in PROTOCOLS {
        for user in ["quit", "chatty"] {
            let metrics = Metrics::new();
            let _installed = metrics.install();
            let h = metrics.handle();
            let dir = scratch(&format!("idle-{user}-{protocol:?}"));
            let pool = Setup {
                protocol,
                ..Setup::default()
            }
            .arg("--pids", dir.display())
            .start();
            assert_eq!(pool.call(auth(user, "x")).await, Ok(true));
            let first = recorded_pids(&dir, 1).await;
            // No further request: the pool notices by itself.
            recorded_pids(&dir, 2).await;
            assert_eq!(
                metric(&h, "gatehouse_auth_process_restarts_total", &[]),
                1.0,
                "{protocol:?} {user}"
            );
            assert!(first.iter().all(|&pid| !exists(pid)), "reaped");
            assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
            pool.shutdown().await;
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A program that answers twice (the fixture's `chatty`, its second "1"
/// written `gap` seconds after the first, before it reads the next
/// request) while wrong passwords for alice arrive concurrently: no
/// second answer is ever taken for alice's reply. Every answer followed
/// by more output within the grace window fails as a temporary error and
/// replaces the process; the right passwords work throughout and after.
#[actix_rt::test]
async fn a_second_answer_is_never_taken_for_another_request() {
    for protocol in PROTOCOLS {
        for gap in [0.001, 0.2] {
            let metrics = Metrics::new();
            let _installed = metrics.install();
            let h = metrics.handle();
            let pool = Setup {
                protocol,
                processes: 2,
                queue: 64,
                // Wide enough that a loaded CI machine cannot stretch the
                // moment between a stray and the real answer beyond it
                // (the residual case the README names).
                reply_grace: Duration::from_millis(50),
                ..Setup::default()
            }
            .arg("--chatty-gap", gap)
            .start();
            workers_up(&h, 2).await;
            let until = Instant::now() + Duration::from_millis(1500);
            let callers = (0..8).map(|i| {
                let pool = pool.clone();
                actix_rt::spawn(async move {
                    let (user, password) = match i % 4 {
                        0 => ("chatty", "x"),
                        1 => ("bob", "builder"),
                        _ => ("alice", "wrong"),
                    };
                    let mut answers = Vec::new();
                    while Instant::now() < until {
                        answers.push((user, pool.call(auth(user, password)).await));
                    }
                    answers
                })
            });
            let mut answers = Vec::new();
            for caller in callers.collect::<Vec<_>>() {
                answers.extend(caller.await.unwrap());
            }
            let count = |who: &str, wanted: fn(&Result<bool, AuthError>) -> bool| {
                answers
                    .iter()
                    .filter(|(user, answer)| *user == who && wanted(answer))
                    .count()
            };
            let what = format!("{protocol:?}, second answer after {gap} s");
            assert_eq!(count("alice", |a| *a == Ok(true)), 0, "{what}");
            assert_eq!(count("bob", |a| *a == Ok(false)), 0, "{what}");
            assert!(count("alice", |a| *a == Ok(false)) > 0, "{what}");
            // Only temporary errors besides the honest answers.
            assert!(
                answers
                    .iter()
                    .all(|(_, a)| matches!(a, Ok(_) | Err(AuthError::BackendFailed(_)))),
                "{what}: {answers:?}"
            );
            assert!(
                metric(&h, "gatehouse_auth_process_restarts_total", &[]) >= 1.0,
                "{what}"
            );
            // The right passwords still work once the pool has settled: a
            // chatty answer given just before the end still has its second
            // answer to come, and the pool then replaces that process.
            tokio::time::sleep(Duration::from_secs_f64(gap) + Duration::from_millis(300)).await;
            workers_up(&h, 2).await;
            assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
            assert_eq!(pool.call(auth("alice", "wrong")).await, Ok(false));
            pool.shutdown().await;
        }
    }
}

#[actix_rt::test]
async fn concurrent_requests_go_to_idle_processes_in_parallel() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    // Four processes taking 1 s per answer: four concurrent requests take
    // about one answer's time, not four.
    let pool = Setup {
        processes: 4,
        ..Setup::default()
    }
    .arg("--delay", 1.0)
    .start();
    workers_up(&h, 4).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(auth("alice", "wonderland")).await })
        })
        .collect();
    eventually("all four to be busy", Duration::from_secs(2), || {
        metric(&h, "gatehouse_auth_busy_workers", &[]) == 4.0
    })
    .await;
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(true));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "took {took:?}: requests waited behind busy processes"
    );
    pool.shutdown().await;
}

#[actix_rt::test]
async fn a_busy_process_never_holds_up_a_request_while_another_is_idle() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let pool = Setup {
        processes: 2,
        ..Setup::default()
    }
    .start();
    workers_up(&h, 2).await;
    let hung = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(auth("hang", "x")).await })
    };
    eventually("one busy process", Duration::from_secs(2), || {
        metric(&h, "gatehouse_auth_busy_workers", &[]) == 1.0
    })
    .await;
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    pool.shutdown().await;
    assert_eq!(hung.await.unwrap(), Err(AuthError::ShutDown));
}

#[actix_rt::test]
async fn a_burst_beyond_the_queue_is_refused_at_once() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let pool = Setup {
        processes: 2,
        queue: 3,
        ..Setup::default()
    }
    .arg("--delay", 1.0)
    .start();
    workers_up(&h, 2).await;
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let result = pool.call(auth("alice", "wonderland")).await;
                (result, started.elapsed())
            })
        })
        .collect();
    eventually("2 busy and 3 queued", Duration::from_millis(900), || {
        metric(&h, "gatehouse_auth_busy_workers", &[]) == 2.0
            && metric(&h, "gatehouse_auth_queue_depth", &[]) == 3.0
    })
    .await;
    let (mut served, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            (Ok(true), _) => served += 1,
            (Err(AuthError::QueueFull), took) => {
                assert!(took < Duration::from_millis(200), "refused after {took:?}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((served, refused), (5, 15));
    assert_eq!(
        metric(
            &h,
            "gatehouse_auth_rejected_total",
            &[("reason", "queue_full")]
        ),
        15.0
    );
    assert_eq!(metric(&h, "gatehouse_auth_queue_depth", &[]), 0.0);
    pool.shutdown().await;
}

#[actix_rt::test]
async fn a_request_that_waits_too_long_fails_and_is_never_sent() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let dir = scratch("queue-timeout");
    let record = dir.join("requests.log");
    let pool = Setup {
        queue_timeout: Duration::from_secs(1),
        ..Setup::default()
    }
    .arg("--record", record.display())
    .arg("--late", 2.5)
    .start();
    workers_up(&h, 1).await;
    // The only process is busy for 2.5 s, longer than the queue timeout.
    let late = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(auth("late", "x")).await })
    };
    eventually("the process to be busy", Duration::from_secs(2), || {
        metric(&h, "gatehouse_auth_busy_workers", &[]) == 1.0
    })
    .await;
    let started = Instant::now();
    assert_eq!(pool.call(isuser("bob")).await, Err(AuthError::QueueTimeout));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(late.await.unwrap(), Ok(true));
    assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
    assert_eq!(
        recorded(&record),
        [
            "b'auth:late:localhost:x'",
            "b'auth:alice:localhost:wonderland'"
        ],
        "the expired request never reached the process"
    );
    assert_eq!(
        metric(
            &h,
            "gatehouse_auth_rejected_total",
            &[("reason", "queue_timeout")]
        ),
        1.0
    );
    pool.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_rt::test]
async fn a_long_queue_times_out_on_time() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let pool = Setup {
        queue: 2000,
        timeout: Duration::from_secs(30),
        queue_timeout: Duration::from_secs(1),
        ..Setup::default()
    }
    .start();
    workers_up(&h, 1).await;
    let hung = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(auth("hang", "x")).await })
    };
    eventually("the process to be busy", Duration::from_secs(2), || {
        metric(&h, "gatehouse_auth_busy_workers", &[]) == 1.0
    })
    .await;
    let waiting: Vec<_> = (0..2000)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                (pool.call(isuser("bob")).await, started.elapsed())
            })
        })
        .collect();
    for call in waiting {
        let (result, took) = call.await.unwrap();
        assert_eq!(result, Err(AuthError::QueueTimeout));
        assert!(took < Duration::from_secs(3), "answered after {took:?}");
    }
    assert_eq!(
        metric(
            &h,
            "gatehouse_auth_rejected_total",
            &[("reason", "queue_timeout")]
        ),
        2000.0
    );
    assert_eq!(metric(&h, "gatehouse_auth_queue_depth", &[]), 0.0);
    pool.shutdown().await;
    assert_eq!(hung.await.unwrap(), Err(AuthError::ShutDown));
}

#[actix_rt::test]
async fn a_caller_that_went_away_is_never_dispatched() {
    // With a queue of 1 the next request needs the abandoned one's place
    // (its admission and its queue slot); with 4 the abandoned request is
    // still queued when the process frees up, and is skipped.
    for queue in [1, 4] {
        let metrics = Metrics::new();
        let _installed = metrics.install();
        let h = metrics.handle();
        let dir = scratch(&format!("gone-{queue}"));
        let record = dir.join("requests.log");
        let pool = Setup {
            queue,
            ..Setup::default()
        }
        .arg("--record", record.display())
        .arg("--late", 1.0)
        .start();
        workers_up(&h, 1).await;
        let call = |command: AuthCommand| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(command).await })
        };
        let late = call(auth("late", "x"));
        let gone = call(isuser("bob"));
        eventually("one busy, one queued", Duration::from_secs(2), || {
            metric(&h, "gatehouse_auth_busy_workers", &[]) == 1.0
                && metric(&h, "gatehouse_auth_queue_depth", &[]) == 1.0
        })
        .await;
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        let next = call(auth("alice", "wonderland"));
        assert_eq!(late.await.unwrap(), Ok(true));
        assert_eq!(next.await.unwrap(), Ok(true), "queue {queue}");
        assert_eq!(
            recorded(&record),
            [
                "b'auth:late:localhost:x'",
                "b'auth:alice:localhost:wonderland'"
            ],
            "queue {queue}: the abandoned request never reached the process"
        );
        pool.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[actix_rt::test]
async fn shutdown_kills_every_process_and_fails_what_waits() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let dir = scratch("shutdown");
    let pool = Setup {
        processes: 3,
        queue: 4,
        timeout: Duration::from_secs(30),
        queue_timeout: Duration::from_secs(30),
        ..Setup::default()
    }
    .arg("--pids", dir.display())
    .start();
    workers_up(&h, 3).await;
    let started = recorded_pids(&dir, 3).await;
    let call = |user: &'static str| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(auth(user, "wonderland")).await })
    };
    let mut calls: Vec<_> = (0..3).map(|_| call("hang")).collect();
    eventually("3 hung", Duration::from_secs(2), || {
        metric(&h, "gatehouse_auth_busy_workers", &[]) == 3.0
    })
    .await;
    calls.extend((0..2).map(|_| call("alice")));
    eventually("2 queued", Duration::from_secs(2), || {
        metric(&h, "gatehouse_auth_queue_depth", &[]) == 2.0
    })
    .await;
    assert!(started.iter().all(|&pid| running(pid)));

    let stopping = Instant::now();
    pool.shutdown().await;
    assert!(stopping.elapsed() < Duration::from_secs(5));
    for call in calls {
        assert_eq!(call.await.unwrap(), Err(AuthError::ShutDown));
    }
    // Killed and reaped: not even a zombie is left.
    for pid in &started {
        assert!(!exists(*pid), "process {pid} outlived the pool");
    }
    assert_eq!(pids(&dir), started, "nothing was restarted");
    assert_eq!(
        pool.call(auth("alice", "wonderland")).await,
        Err(AuthError::ShutDown)
    );
    assert_eq!(metric(&h, "gatehouse_auth_workers", &[]), 0.0);
    assert_eq!(metric(&h, "gatehouse_auth_busy_workers", &[]), 0.0);
    assert_eq!(
        metric(
            &h,
            "gatehouse_auth_rejected_total",
            &[("reason", "shut_down")]
        ),
        3.0,
        "the 2 queued and the one after"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn processes_die_with_the_system_even_without_shutdown() {
    let dir = scratch("dropped");
    let system = actix_rt::System::new();
    let started = system.block_on(async {
        // Each behind a wrapper script: the programs it started ignore the
        // end of their input, so only a kill of the whole group ends them.
        let pool = Setup {
            processes: 2,
            wrapped_in: Some(dir.clone()),
            ..Setup::default()
        }
        .arg("--pids", dir.display())
        .flag("--ignore-eof")
        .start();
        assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
        recorded_pids(&dir, 4).await
    });
    // Dropping the runtime drops every worker task: each process group is
    // killed (reaping is then up to the runtime or init, so a zombie is
    // fine).
    drop(system);
    let deadline = Instant::now() + Duration::from_secs(5);
    while started.iter().any(|&pid| running(pid)) {
        assert!(Instant::now() < deadline, "a process outlived its System");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_rt::test]
async fn what_a_wrapper_script_started_dies_with_it() {
    let dir = scratch("wrapped");
    let pool = Setup {
        timeout: Duration::from_millis(700),
        wrapped_in: Some(dir.clone()),
        ..Setup::default()
    }
    .arg("--pids", dir.display())
    .flag("--ignore-eof")
    .start();
    // The wrapper and the program it started (not with exec).
    let first = recorded_pids(&dir, 2).await;
    assert_eq!(
        pool.call(auth("hang", SECRET)).await,
        Err(AuthError::Timeout)
    );
    assert_eq!(
        pool.call(auth("alice", "wonderland")).await,
        Ok(true),
        "the replacement answers"
    );
    let all = recorded_pids(&dir, 4).await;
    let gone = |pids: &BTreeSet<u32>| pids.iter().all(|&pid| !running(pid));
    eventually("the replaced group to die", Duration::from_secs(5), || {
        gone(&first)
    })
    .await;
    let second: BTreeSet<u32> = all.difference(&first).copied().collect();
    assert!(second.iter().all(|&pid| running(pid)));
    pool.shutdown().await;
    eventually(
        "the group to die at shutdown",
        Duration::from_secs(5),
        || gone(&second),
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_rt::test]
async fn account_commands_the_generic_protocol_lacks_are_never_written() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let dir = scratch("not-supported");
    let record = dir.join("requests.log");
    let pool = Setup::default().arg("--record", record.display()).start();
    for command in [register("carol", SECRET), remove("alice")] {
        let result = pool.call(command.clone()).await;
        assert_eq!(result, Err(AuthError::NotSupported), "{command:?}");
        assert!(!result.unwrap_err().is_temporary());
    }
    assert_eq!(pool.call(isuser("alice")).await, Ok(true));
    pool.shutdown().await;
    assert_eq!(recorded(&record), vec!["b'isuser:alice:localhost'"]);
    assert_eq!(
        metric(
            &metrics.handle(),
            "gatehouse_auth_rejected_total",
            &[("reason", "not_supported")]
        ),
        2.0
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_rt::test]
async fn a_caller_whose_deadline_passes_gets_a_counted_temporary_error() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let dir = scratch("deadline");
    let record = dir.join("requests.log");
    // The pool lives on its own arbiter, which the test then stalls: the
    // pool cannot answer, while the caller's clock (on this thread) runs.
    let arbiter = actix::Arbiter::new();
    let setup = Setup {
        timeout: Duration::from_millis(300),
        queue_timeout: Duration::from_millis(300),
        ..Setup::default()
    }
    .arg("--pids", dir.display())
    .arg("--record", record.display());
    let (started, pool) = tokio::sync::oneshot::channel();
    assert!(arbiter.spawn(async move {
        let _ = started.send(setup.start());
    }));
    let pool = pool.await.unwrap();
    recorded_pids(&dir, 1).await;
    // Longer than a caller's deadline (300 ms + 300 ms + a 1 s margin).
    let (stalled, stalling) = tokio::sync::oneshot::channel();
    assert!(arbiter.spawn(async move {
        let _ = stalled.send(());
        std::thread::sleep(Duration::from_secs(3));
    }));
    stalling.await.unwrap();

    let error = pool.call(auth("alice", SECRET)).await.unwrap_err();
    assert_eq!(error, AuthError::DeadlinePassed);
    assert!(error.is_temporary());
    assert!(!error.to_string().contains(SECRET));
    assert_eq!(
        metric(
            &metrics.handle(),
            "gatehouse_auth_rejected_total",
            &[("reason", "deadline")]
        ),
        1.0
    );
    // Once the pool runs again it serves as before, and the abandoned
    // request is never sent.
    assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
    pool.shutdown().await;
    assert_eq!(
        recorded(&record),
        vec!["b'auth:alice:localhost:wonderland'"]
    );
    arbiter.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_rt::test]
async fn a_program_that_cannot_start_never_says_wrong_password() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let pool = PoolHandle::start_external(ExternalConfig {
        command: vec!["/nonexistent/auth-program".into()],
        protocol: Protocol::Ejabberd,
        processes: 2,
        queue: 4,
        timeout: Duration::from_secs(1),
        queue_timeout: Duration::from_millis(300),
        reply_grace: Duration::from_millis(2),
    });
    let started = Instant::now();
    for _ in 0..4 {
        assert_eq!(
            pool.call(auth("alice", "wonderland")).await,
            Err(AuthError::QueueTimeout)
        );
    }
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(started.elapsed())).await;
    // Both slots keep retrying, with a growing backoff (50 ms, 100 ms,
    // 200 ms, ...): a handful of attempts each, not a busy loop.
    let restarts = metric(&h, "gatehouse_auth_process_restarts_total", &[]);
    assert!((4.0..=30.0).contains(&restarts), "{restarts} restarts");
    assert_eq!(metric(&h, "gatehouse_auth_workers", &[]), 0.0);
    assert_eq!(
        metric(
            &h,
            "gatehouse_auth_rejected_total",
            &[("reason", "queue_timeout")]
        ),
        4.0
    );
    pool.shutdown().await;
}

/// `n` concurrent logins of alice through `pool`, spawned.
fn logins(pool: &PoolHandle, n: usize) -> Vec<tokio::task::JoinHandle<Result<bool, AuthError>>> {
    (0..n)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(auth("alice", "wonderland")).await })
        })
        .collect()
}

/// `processes` fixture processes answering after `delay` seconds, each
/// recording its pid in `dir`.
fn recording(processes: usize, dir: &Path, delay: f64) -> ExternalConfig {
    Setup {
        processes,
        ..Setup::default()
    }
    .arg("--pids", dir.display())
    .arg("--delay", delay)
    .config()
}

/// The recorded pids in `dir` still running.
fn running_pids(dir: &Path) -> BTreeSet<u32> {
    pids(dir).into_iter().filter(|pid| running(*pid)).collect()
}

#[actix_rt::test]
async fn processes_go_up_at_once_and_down_once_idle_a_busy_one_finishing_first() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let dir = scratch("resize");
    let small = recording(2, &dir, 0.5);
    let pool = PoolHandle::start_external(small.clone());
    workers_up(&h, 2).await;
    let big = ExternalConfig {
        processes: 6,
        ..small.clone()
    };
    pool.reconfigure_external(&small, &big).await.unwrap();
    assert_eq!(metric(&h, "gatehouse_auth_workers", &[]), 6.0);
    assert_eq!(recorded_pids(&dir, 6).await.len(), 6);

    // Six slow logins keep all six busy while the pool shrinks to two:
    // every one is answered, by the process it was handed to.
    let calls = logins(&pool, 6);
    eventually("all six to be busy", Duration::from_secs(5), || {
        metric(&h, "gatehouse_auth_busy_workers", &[]) == 6.0
    })
    .await;
    pool.reconfigure_external(&big, &small).await.unwrap();
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(true));
    }
    assert_eq!(metric(&h, "gatehouse_auth_workers", &[]), 2.0);
    eventually(
        "the surplus processes to be gone",
        Duration::from_secs(5),
        || running_pids(&dir).len() == 2,
    )
    .await;
    // More than the new size at once: the rest wait in the queue.
    for call in logins(&pool, 4) {
        assert_eq!(call.await.unwrap(), Ok(true));
    }
    pool.shutdown().await;
    assert!(running_pids(&dir).is_empty());
}

#[actix_rt::test]
async fn a_new_command_replaces_every_process_one_at_a_time_under_load() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let (old_dir, new_dir) = (scratch("roll-old"), scratch("roll-new"));
    let (old, new) = (recording(3, &old_dir, 0.1), recording(3, &new_dir, 0.1));
    let pool = PoolHandle::start_external(old.clone());
    workers_up(&h, 3).await;
    let old_pids = recorded_pids(&old_dir, 3).await;

    // Logins keep coming during the rollout, and the number of processes
    // up never drops below three.
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn({
        let (pool, stop) = (pool.clone(), stop.clone());
        async move {
            let mut answers = Vec::new();
            while !stop.is_cancelled() {
                for call in logins(&pool, 3) {
                    answers.push(call.await.unwrap());
                }
            }
            answers
        }
    });
    let fewest = tokio::spawn({
        let (h, stop) = (h.clone(), stop.clone());
        async move {
            let mut fewest = f64::MAX;
            while !stop.is_cancelled() {
                fewest = fewest.min(metric(&h, "gatehouse_auth_workers", &[]));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fewest
        }
    });
    pool.reconfigure_external(&old, &new).await.unwrap();
    stop.cancel();
    let answers = load.await.unwrap();
    assert!(!answers.is_empty());
    assert!(answers.iter().all(|a| *a == Ok(true)), "{answers:?}");
    assert!(
        fewest.await.unwrap() >= 3.0,
        "fewer than three processes up"
    );
    assert_eq!(metric(&h, "gatehouse_auth_workers", &[]), 3.0);
    // A process is up for the pool once started; it writes its pid file
    // a moment later.
    recorded_pids(&new_dir, 3).await;
    assert_eq!(running_pids(&new_dir).len(), 3);
    assert!(
        old_pids.iter().all(|pid| !running(*pid)),
        "an old process survived"
    );
    pool.shutdown().await;
}

#[actix_rt::test]
async fn a_new_command_that_cannot_start_changes_nothing() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let h = metrics.handle();
    let dir = scratch("roll-broken");
    let old = recording(2, &dir, 0.0);
    let pool = PoolHandle::start_external(old.clone());
    workers_up(&h, 2).await;
    let pids_before = recorded_pids(&dir, 2).await;
    let broken = ExternalConfig {
        command: vec!["/nonexistent/auth-program".into()],
        processes: 4,
        ..old.clone()
    };
    let error = pool.reconfigure_external(&old, &broken).await.unwrap_err();
    assert!(error.contains("cannot start"), "{error}");
    assert_eq!(running_pids(&dir), pids_before);
    assert_eq!(metric(&h, "gatehouse_auth_workers", &[]), 2.0);
    assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
    pool.shutdown().await;
}

#[actix_rt::test]
async fn a_swapped_pool_finishes_its_requests_then_stops() {
    let metrics = Metrics::new();
    let _installed = metrics.install();
    let (old_dir, new_dir) = (scratch("swap-old"), scratch("swap-new"));
    let setup = |dir: &Path| PoolHandle::start_external(recording(2, dir, 0.5));
    let auth = Authenticator::new(setup(&old_dir), None, Capabilities::default());
    let old_pids = recorded_pids(&old_dir, 2).await;
    // Two in service and two queued on the old pool when it is swapped.
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let auth = auth.clone();
            tokio::spawn(async move {
                auth.check_password("alice", "localhost", Password::new("wonderland"))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let new = setup(&new_dir);
    new.started().await.unwrap();
    auth.swap_pool(new).await;
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(true));
    }
    assert!(
        old_pids.iter().all(|pid| !running(*pid)),
        "the old pool's processes live on"
    );
    assert_eq!(
        auth.check_password("alice", "localhost", Password::new("wonderland"))
            .await,
        Ok(true)
    );
    recorded_pids(&new_dir, 2).await;
    assert_eq!(running_pids(&new_dir).len(), 2);
    auth.shutdown().await;
    assert!(running_pids(&new_dir).is_empty());
}
