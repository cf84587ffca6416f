//! The dashboards are true: Gatehouse serves a small login storm driven by
//! the load generator (with refusals), a real Prometheus (Debian package
//! `prometheus`) scrapes it, and every panel query of every dashboard in
//! dashboards/ must return data through Prometheus' HTTP API. Every metric
//! a dashboard names must also be one Gatehouse exports.

mod common;
mod muc_support;

use clap::Parser;
use common::roster_service::RosterService;
use common::*;
use muc_support::{join, Gate, MUC};
use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every `expr` of every panel (rows included) of every dashboard file.
fn dashboard_queries() -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut stack: Vec<&serde_json::Value> =
            dashboard["panels"].as_array().unwrap().iter().collect();
        while let Some(panel) = stack.pop() {
            stack.extend(panel["panels"].as_array().into_iter().flatten());
            for target in panel["targets"].as_array().into_iter().flatten() {
                let title = panel["title"].as_str().unwrap_or_default();
                queries.push((
                    title.to_owned(),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    queries
}

fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("gatehouse_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// A real Prometheus scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempdir();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: gatehouse\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed (Debian package prometheus; .ci/run installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn query(&self, client: &reqwest::Client, expr: &str) -> serde_json::Value {
        let response = client
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await;
        match response {
            Ok(response) => {
                serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or_default()
            }
            Err(_) => serde_json::Value::Null,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_rt::test]
async fn every_dashboard_query_returns_data_after_a_storm() {
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "dashboards found: {queries:?}");

    // Slow auth processes and a short queue, so the storm is partly refused.
    let rosters = RosterService::start();
    rosters.set(
        "user1",
        r#"{"user2@localhost": {"name": "Two", "groups": ["Friends"]}}"#,
    );
    let gate = Gate::start(|request| {
        let allowed = request.params["userJID"] == "alice@localhost";
        muc_support::Reply::json(&format!(r#"{{"allowed": {allowed}}}"#))
    })
    .await;
    let server = TestServer::start(&config(
        &roster_auth(
            &rosters.url(),
            &format!(
                "[muc]\ndomain = \"{MUC}\"\n[muc.http_auth]\nurl = \"{}\"",
                gate.url
            ),
        )
        .replace("processes = 2", "processes = 2\nqueue = 4")
        .replace(
            &format!("\"{}\"", fixture("auth.py")),
            &format!("\"{}\", \"--delay\", \"0.02\"", fixture("auth.py")),
        ),
    ));
    let prometheus = Prometheus::start(server.http);
    let client = reqwest::Client::new();

    // Wait for Prometheus to be up and scraping.
    let deadline = Instant::now() + Duration::from_secs(30);
    while prometheus.query(&client, "up").await["data"]["result"][0]["value"][1] != "1" {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape Gatehouse"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The storm: more offered than 2 processes at 20 ms can serve.
    let port = server.c2s.port().to_string();
    let args = gatehouse_loadgen::Args::parse_from([
        "gatehouse-loadgen",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--mode",
        "open",
        "--rate",
        "400",
        "--count",
        "600",
        "--users",
        "20",
        "--max-seconds",
        "20",
        "--json",
    ]);
    let report: serde_json::Value =
        serde_json::from_str(&gatehouse_loadgen::storm(&args).await.unwrap()).unwrap();
    assert!(
        report["outcomes"]["success"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert!(
        report["outcomes"]["temporary-auth-failure"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "no refusals: {report}"
    );

    // A roster refresh, so refresh and push panels have data too.
    let refresh = client
        .post(format!("http://{}/roster_admin/refresh", server.http))
        .body(r#"["user1", "user2"]"#)
        .send()
        .await
        .unwrap();
    assert!(refresh.status().is_success());

    // A gated room: one join allowed, one denied, a groupchat message.
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    join(&mut alice, "tea", "Alice")
        .await
        .expect("alice is allowed");
    alice
        .send(&format!(
            "<message to='tea@{MUC}' type='groupchat'><body>hi</body></message>"
        ))
        .await;
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "r").await;
    assert_eq!(
        join(&mut bob, "tea", "Bob").await.err().as_deref(),
        Some("not-authorized")
    );

    // Every metric a dashboard names is one Gatehouse exports.
    let exported = server.metrics().await;
    for (title, expr) in &queries {
        for name in metric_names(expr) {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                exported.contains(&format!("# TYPE {base} ")),
                "panel {title:?} uses {name}, which Gatehouse does not export"
            );
        }
    }

    // Let a few scrapes land, then every query must return data.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let expr = expr.replace("$__rate_interval", "1m");
        let answer = prometheus.query(&client, &expr).await;
        let ok = answer["status"] == "success"
            && answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
        if !ok {
            empty.push(format!("{title}: {expr} -> {answer}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries without data:\n{}",
        empty.join("\n")
    );
}
