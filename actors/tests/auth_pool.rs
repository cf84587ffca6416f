//! The AuthPool on its own, with real child processes (the fixture in the
//! workspace's tests/fixtures/auth.py): dispatch to idle processes, the
//! queue timeout, a program that cannot start, a late answer, shutdown.

use gatehouse_actors::auth::{
    AuthCommand, AuthError, ExternalConfig, Password, PoolHandle, Protocol,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn fixture() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/auth.py")
        .display()
        .to_string()
}

fn pool(args: &[&str], processes: usize, queue: usize, timeout: Duration) -> PoolHandle {
    let mut command = vec!["python3".to_owned(), fixture()];
    command.extend(args.iter().map(|a| a.to_string()));
    PoolHandle::start_external(ExternalConfig {
        command,
        protocol: Protocol::Generic,
        processes,
        queue,
        timeout,
        queue_timeout: Duration::from_secs(2),
    })
}

fn auth(user: &str, password: &str) -> AuthCommand {
    AuthCommand::Auth {
        user: user.into(),
        host: "localhost".into(),
        password: Password::new(password),
    }
}

#[actix_rt::test]
async fn requests_go_to_idle_processes_in_parallel() {
    // Four processes taking 0.5 s each: four concurrent requests are all
    // answered in about one request time, not four.
    let pool = pool(&["--delay", "0.5"], 4, 16, Duration::from_secs(5));
    assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true)); // warm-up
                                                                        // Let every process come up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.call(auth("alice", "wonderland")).await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), Ok(true));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1400),
        "took {took:?}: requests waited behind busy processes"
    );
    pool.shutdown().await;
}

#[actix_rt::test]
async fn a_request_waiting_too_long_in_the_queue_fails_temporarily() {
    let pool = pool(&[], 1, 4, Duration::from_secs(10));
    // The only process hangs on this request for the whole test.
    let hung = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.call(auth("hang", "x")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(
        pool.call(auth("alice", "wonderland")).await,
        Err(AuthError::QueueTimeout)
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    pool.shutdown().await;
    assert_eq!(hung.await.unwrap(), Err(AuthError::ShutDown));
}

#[actix_rt::test]
async fn a_program_that_cannot_start_never_says_wrong_password() {
    let pool = PoolHandle::start_external(ExternalConfig {
        command: vec!["/nonexistent/auth-program".into()],
        protocol: Protocol::Ejabberd,
        processes: 2,
        queue: 4,
        timeout: Duration::from_secs(1),
        queue_timeout: Duration::from_millis(300),
    });
    for _ in 0..3 {
        let result = pool.call(auth("alice", "wonderland")).await;
        assert!(
            matches!(result, Err(ref e) if e.is_temporary()),
            "{result:?}"
        );
    }
    pool.shutdown().await;
}

#[actix_rt::test]
async fn a_late_answer_is_never_taken_for_the_next_request() {
    let pool = pool(&["--late", "1.5"], 1, 4, Duration::from_millis(500));
    assert_eq!(pool.call(auth("late", "x")).await, Err(AuthError::Timeout));
    // The late process would answer "1" now; the next request must get the
    // fresh process's honest "0".
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(pool.call(auth("alice", "wrong")).await, Ok(false));
    assert_eq!(pool.call(auth("alice", "wonderland")).await, Ok(true));
    pool.shutdown().await;
}

#[actix_rt::test]
async fn invalid_requests_are_refused_before_admission() {
    // No queue at all: a request is served only by an idle process.
    let pool = pool(&[], 1, 0, Duration::from_secs(5));
    assert!(matches!(
        pool.call(auth("alice", "a\0b")).await,
        Err(AuthError::InvalidRequest(_))
    ));
    assert!(matches!(
        pool.call(auth("al:ice", "x")).await,
        Err(AuthError::InvalidRequest(_))
    ));
    // Give the one process time to start, then it answers.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let isuser = AuthCommand::IsUser {
        user: "bob".into(),
        host: "localhost".into(),
    };
    assert_eq!(pool.call(isuser).await, Ok(true));
    pool.shutdown().await;
    assert_eq!(
        pool.call(auth("alice", "wonderland")).await,
        Err(AuthError::ShutDown)
    );
}
