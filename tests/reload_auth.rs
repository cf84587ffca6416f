//! The tuning test of issue 12: the real binary holds 2,000 sessions while
//! a closed-loop login load meets a slow auth program in a small pool, so
//! logins are refused; reloads raise `processes` from 2 to 8 (the refusals
//! stop, `gatehouse_auth_workers` shows 8 within a second), lower it back
//! to 2, and give the program a new command line (every process is
//! replaced). Throughout, no held session is dropped, no admitted login
//! fails (a refusal before admission, `temporary-auth-failure` counted as
//! `queue_full`, is fine) and no auth process outlives its use.
//!
//! Also: a switch of backend (external ⇄ http) and of the HTTP URL with
//! logins in flight; a reload whose auth program cannot start changes
//! nothing; `gatehouse cache drop` and `POST /admin/cache/drop` make the
//! next login of a cached user ask the backend again.

mod common;
#[path = "common/processes.rs"]
mod processes;

use common::backend::Backend;
use common::server_process::{free_port, gatehouse, post_reload, ServerProcess};
use common::{fixture, http_get, sample, Client};
use gatehouse_loadgen::client::{self, Credentials, Hold, Outcome, Target};
use gatehouse_loadgen::transport::Transport;
use processes::{python, running};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tuning-secret";
/// Sessions held through every reload.
const HELD: usize = 2_000;
/// Clients of the closed-loop login load: more than 2 processes and a
/// queue of 2 admit, no more than 8 and the queue do.
const LOAD: usize = 8;
/// Seconds the auth program takes per answer.
const DELAY: &str = "0.02";

/// The server's config: an operator listener on `http` and `auth`, the
/// `[auth]` section with its subsections.
fn server_config(http: u16, auth: &str) -> String {
    format!(
        "hosts = [\"localhost\"]\n\
         [c2s]\nlisten = \"127.0.0.1:0\"\nrequire_tls = false\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\nadmin_token = \"{TOKEN}\"\n{auth}"
    )
}

/// The server's config: `processes` slow auth processes behind a queue of
/// `queue`, the program given `extra` arguments, then `more` TOML (in
/// `[auth]`'s subsections).
fn config(http: u16, processes: usize, queue: usize, extra: &str, more: &str) -> String {
    server_config(
        http,
        &format!(
            "[auth]\nbackend = \"external\"\n\
             [auth.external]\ncommand = [\"{}\", \"{}\", \"--delay\", \"{DELAY}\"{extra}]\n\
             processes = {processes}\nqueue = {queue}\n{more}",
            python(),
            fixture("auth.py"),
        ),
    )
}

/// Writes `toml` over the server's config and reloads it through `POST
/// /admin/reload`: the answer's status and text.
async fn try_reload(server: &ServerProcess, http: SocketAddr, toml: &str) -> (u16, String) {
    std::fs::write(server.config_path(), toml).unwrap();
    post_reload(http, Some(TOKEN)).await
}

/// [`try_reload`], which must apply something.
async fn reload(server: &ServerProcess, http: SocketAddr, toml: &str) -> String {
    let (status, body) = try_reload(server, http, toml).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("applied"), "{body}");
    body
}

/// The server's child processes: its auth processes.
fn children(server: &ServerProcess) -> BTreeSet<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.id())).unwrap();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .map(|pid| pid.parse::<u32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// How the load's logins ended, by outcome.
type Outcomes = Arc<Mutex<BTreeMap<&'static str, u64>>>;

fn count(outcomes: &Outcomes, outcome: &str) -> u64 {
    outcomes.lock().unwrap().get(outcome).copied().unwrap_or(0)
}

#[actix_rt::test]
async fn pools_are_tuned_live_under_a_login_load_without_dropping_a_session() {
    let http_port = free_port();
    let mut server = ServerProcess::from_toml(&config(http_port, 16, 64, "", ""));
    let (c2s, http) = server.listeners();
    let scrape = || http_get(http, "/metrics");
    let target = Arc::new(Target::new(
        c2s,
        "localhost",
        Transport::Tcp,
        Duration::from_secs(30),
    ));

    // 2,000 sessions, logged in while the pool is big, held to the end.
    let (release, held) = tokio::sync::watch::channel(false);
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut holders = Vec::with_capacity(HELD);
    for i in 0..HELD {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (up, is_up) = tokio::sync::oneshot::channel();
        let (target, release) = (target.clone(), held.clone());
        // 20 resources per account, within c2s.max_resources.
        let user = i % 100 + 1;
        let credentials = Credentials::new(&format!("user{user}"), &format!("pass{user}"));
        holders.push(tokio::spawn(async move {
            let login = client::login(&target, &credentials, Some(Hold { up, release }));
            tokio::pin!(login);
            let (is_up, mut login) = tokio::select! {
                done = &mut login => return done.0,
                up = is_up => (up, login),
            };
            drop(permit);
            assert!(is_up.is_ok());
            login.as_mut().await.0
        }));
    }
    let sessions_up = Instant::now() + Duration::from_secs(60);
    loop {
        let sessions = sample(&scrape().await, "gatehouse_sessions");
        if sessions >= HELD as f64 {
            break;
        }
        assert!(
            Instant::now() < sessions_up,
            "only {sessions} of {HELD} sessions up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A small pool: two processes and a queue of two.
    reload(&server, http, &config(http_port, 2, 2, "", "")).await;
    assert_eq!(sample(&scrape().await, "gatehouse_auth_workers"), 2.0);

    // The closed-loop login load, on users of its own.
    let outcomes: Outcomes = Arc::default();
    let stop = CancellationToken::new();
    let load: Vec<_> = (0..LOAD)
        .map(|k| {
            let (target, outcomes, stop) = (target.clone(), outcomes.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.is_cancelled() {
                    i += 1;
                    let user = 10_000 + k * 100_000 + i;
                    let credentials =
                        Credentials::new(&format!("user{user}"), &format!("pass{user}"));
                    let (outcome, _) = client::login(&target, &credentials, None).await;
                    *outcomes.lock().unwrap().entry(outcome.label()).or_default() += 1;
                }
            })
        })
        .collect();
    let refused = "temporary-auth-failure";
    let refusals_seen = Instant::now() + Duration::from_secs(20);
    while count(&outcomes, refused) == 0 {
        assert!(
            Instant::now() < refusals_seen,
            "the small pool refused nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Eight processes: up within a second, and the refusals stop.
    let asked = Instant::now();
    let answer = reload(&server, http, &config(http_port, 8, 2, "", "")).await;
    assert!(answer.contains("auth.external.processes"), "{answer}");
    loop {
        if sample(&scrape().await, "gatehouse_auth_workers") == 8.0 {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "gatehouse_auth_workers not 8 within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Logins refused just before the reload may still be ending.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (refused_before, succeeded_before) =
        (count(&outcomes, refused), count(&outcomes, "success"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&outcomes, refused),
        refused_before,
        "still refused with 8 processes"
    );
    assert!(count(&outcomes, "success") > succeeded_before + 50);

    // Back to two.
    reload(&server, http, &config(http_port, 2, 2, "", "")).await;
    assert_eq!(sample(&scrape().await, "gatehouse_auth_workers"), 2.0);
    let old = children(&server);
    assert_eq!(old.len(), 2, "auth processes: {old:?}");

    // A new command line: every process replaced.
    let answer = reload(
        &server,
        http,
        &config(http_port, 2, 2, ", \"--late\", \"3\"", ""),
    )
    .await;
    assert!(answer.contains("auth.external.command"), "{answer}");
    let new = children(&server);
    assert_eq!(new.len(), 2, "auth processes: {new:?}");
    assert!(old.is_disjoint(&new), "not replaced: {old:?} → {new:?}");
    assert!(
        old.iter().all(|pid| !running(*pid)),
        "an old process lives on"
    );
    assert_eq!(sample(&scrape().await, "gatehouse_auth_workers"), 2.0);
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.cancel();
    for client in load {
        client.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let metrics = scrape().await;
    eprintln!("load: {outcomes:?}");
    // Every login either succeeded or was refused before admission.
    assert_eq!(
        outcomes.keys().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(["success", refused]),
        "{outcomes:?}"
    );
    let queue_full = sample(
        &metrics,
        "gatehouse_auth_rejected_total{reason=\"queue_full\"}",
    );
    assert!(
        outcomes[refused] as f64 <= queue_full,
        "{outcomes:?} {queue_full}"
    );
    for reason in ["queue_timeout", "shut_down", "deadline"] {
        let series = format!("gatehouse_auth_rejected_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&metrics, &series), 0.0, "{series}");
    }
    assert_eq!(sample(&metrics, "gatehouse_auth_timeouts_total"), 0.0);
    assert_eq!(
        sample(&metrics, "gatehouse_auth_process_restarts_total"),
        0.0
    );
    assert_eq!(
        sample(
            &metrics,
            "gatehouse_auth_request_duration_seconds_count{result=\"error\"}"
        ),
        0.0
    );

    // Every held session is still there.
    assert!(sample(&metrics, "gatehouse_sessions") >= HELD as f64);
    let _ = release.send(true);
    for holder in holders {
        assert_eq!(holder.await.unwrap(), Outcome::Success);
    }

    // Nothing outlives the server.
    let status = server.signal_and_wait("TERM");
    assert!(status.success(), "{status:?}");
    assert!(
        new.iter().all(|pid| !running(*pid)),
        "an auth process outlived the server"
    );
}

#[actix_rt::test]
async fn a_dropped_cache_entry_is_checked_by_the_backend_again() {
    let http_port = free_port();
    let record = common::tempdir().join("requests.log");
    let record_arg = format!(", \"--record\", \"{}\"", record.display());
    let cached = "[auth.cache]\nenabled = true\nttl = \"10m\"\n";
    let server = ServerProcess::from_toml(&config(http_port, 2, 8, &record_arg, cached));
    let (c2s, http) = server.listeners();
    let config_path = server.config_path();
    let config_file = config_path.to_str().unwrap();
    // How often the backend was asked for alice's password.
    let asked = || {
        std::fs::read_to_string(&record)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("auth:alice:"))
            .count()
    };
    let login = || async {
        Client::login(c2s, "alice", "wonderland", "r").await;
    };

    login().await;
    login().await;
    assert_eq!(asked(), 1, "the second login came from the cache");

    // The command line, by JID.
    let (code, out) = gatehouse(&["cache", "drop", "--config", config_file, "alice@localhost"]);
    assert_eq!((code, out.as_str()), (0, "dropped 1 cached auth entries\n"));
    login().await;
    assert_eq!(asked(), 2, "asked again after the drop");
    login().await;
    assert_eq!(asked(), 2, "and cached again");

    // The endpoint, by username (every host): the token is required.
    let drop = |token: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{http}/admin/cache/drop"))
            .bearer_auth(token)
            .body(r#"["alice", "nobody@localhost"]"#)
            .send()
    };
    assert_eq!(drop("wrong").await.unwrap().status().as_u16(), 401);
    let answer = drop(TOKEN).await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let answer: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(answer["dropped"], 1, "{answer}");
    login().await;
    assert_eq!(asked(), 3, "asked again after the drop");
    let bad = reqwest::Client::new()
        .post(format!("http://{http}/admin/cache/drop"))
        .bearer_auth(TOKEN)
        .body(r#"{"user": "alice"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // A reload that disables the cache empties it: every login asks.
    reload(&server, http, &config(http_port, 2, 8, &record_arg, "")).await;
    login().await;
    login().await;
    assert_eq!(asked(), 5, "no cache any more");
}

#[actix_rt::test]
async fn the_backend_switches_between_external_and_http_while_logins_are_in_flight() {
    let http_port = free_port();
    let slow = ", \"--delay\", \"0.5\"";
    let external = config(http_port, 2, 8, slow, "");
    let server = ServerProcess::from_toml(&external);
    let (c2s, http) = server.listeners();
    // Each login binds its own resource: logins in flight together must not
    // replace one another (the newer bind of a resource ends the older
    // stream with <conflict/>).
    let login_as = |resource: String| async move {
        Client::login(c2s, "alice", "wonderland", &resource).await;
    };
    let login = || login_as("r".to_owned());
    let processes = wait_for_children(&server, 2).await;
    let (first, second) = (
        Backend::start(&[("alice", &["wonderland"])]),
        Backend::start(&[("alice", &["wonderland"])]),
    );
    let on_http = |url: String| {
        server_config(
            http_port,
            &format!("[auth]\nbackend = \"http\"\n[auth.http]\nurl = \"{url}\"\n"),
        )
    };

    // Four slow logins are with the external pool when the HTTP backend
    // takes over: each is answered; then the processes stop.
    let in_flight: Vec<_> = (0..4)
        .map(|i| tokio::spawn(login_as(format!("r{i}"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = reload(&server, http, &on_http(first.url())).await;
    assert!(answer.contains("auth.backend"), "{answer}");
    for login in in_flight {
        login.await.unwrap();
    }
    assert!(
        children(&server).is_empty(),
        "auth processes after the switch"
    );
    assert!(processes.iter().all(|pid| !running(*pid)));
    login().await;
    assert_eq!(first.count("/api/check_password"), 1);

    // Another URL: the next login goes there.
    reload(&server, http, &on_http(second.url())).await;
    login().await;
    assert_eq!(
        (
            first.count("/api/check_password"),
            second.count("/api/check_password")
        ),
        (1, 1)
    );

    // Registration offered from the next stream on.
    let offered = |features: &minidom::Element| features.children().any(|f| f.name() == "register");
    let mut client = Client::connect(c2s).await;
    assert!(!offered(&client.open("localhost").await));
    let registering = on_http(second.url()).replace(
        "backend = \"http\"",
        "backend = \"http\"\nallow_registration = true",
    );
    let answer = reload(&server, http, &registering).await;
    assert!(answer.contains("auth.allow_registration"), "{answer}");
    let mut client = Client::connect(c2s).await;
    assert!(offered(&client.open("localhost").await));

    // And back to processes.
    reload(&server, http, &external).await;
    assert_eq!(wait_for_children(&server, 2).await.len(), 2);
    login().await;
    assert_eq!(second.count("/api/check_password"), 1);
    let metrics = http_get(http, "/metrics").await;
    assert_eq!(
        sample(&metrics, "gatehouse_auth_workers{backend=\"external\"}"),
        2.0
    );
    assert_eq!(
        sample(&metrics, "gatehouse_auth_workers{backend=\"http\"}"),
        0.0
    );
}

/// The server's auth processes, once there are `n`.
async fn wait_for_children(server: &ServerProcess, n: usize) -> BTreeSet<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = children(server);
        if now.len() == n {
            return now;
        }
        assert!(Instant::now() < deadline, "auth processes: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_reload_whose_auth_program_cannot_start_changes_nothing() {
    let http_port = free_port();
    let before = config(http_port, 2, 8, "", "");
    let server = ServerProcess::from_toml(&before);
    let (c2s, http) = server.listeners();
    let processes = wait_for_children(&server, 2).await;
    // An executable file that passes validation but cannot be run.
    let broken = common::tempdir().join("auth.sh");
    std::fs::write(&broken, "#!/nonexistent/interpreter\n").unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&broken, executable).unwrap();
    // More processes and a new program at once: neither is applied.
    let after = server_config(
        http_port,
        &format!(
            "[auth]\nbackend = \"external\"\n[auth.external]\ncommand = \"{}\"\nprocesses = 4\n",
            broken.display()
        ),
    );
    let (status, body) = try_reload(&server, http, &after).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains(": auth: ") && body.contains("nothing changed"),
        "{body}"
    );
    let (code, out) = gatehouse(&["reload", "--config", server.config_path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(children(&server), processes);
    let metrics = http_get(http, "/metrics").await;
    assert_eq!(sample(&metrics, "gatehouse_auth_workers"), 2.0);
    assert_eq!(
        sample(
            &metrics,
            "gatehouse_config_reloads_total{result=\"failure\"}"
        ),
        2.0
    );
    Client::login(c2s, "alice", "wonderland", "r").await;
    // The running config is still the one to compare with.
    reload(&server, http, &config(http_port, 3, 8, "", "")).await;
    assert_eq!(wait_for_children(&server, 3).await.len(), 3);
}
