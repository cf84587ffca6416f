//! Waiting for a condition, shared by the server tests (`tests/`) and the
//! pool tests (`actors/tests/`, which include this file by path): poll
//! instead of sleeping a fixed time, so a loaded machine only makes a test
//! slower, not flaky.

use std::time::{Duration, Instant};

/// Polls `condition` every 20 ms until it holds; panics naming `what`
/// after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
