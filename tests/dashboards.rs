//! The dashboards are true: Gatehouse serves a small login storm driven by
//! the load generator (with refusals), a roster refresh, gated MUC joins and
//! messages kept (and archived) for a user who is away;
//! a real Prometheus (Debian package `prometheus`), configured from the
//! example dashboards/prometheus.yml, scrapes it, and every panel query and
//! template-variable query of every dashboard in dashboards/ must return a
//! finite value through Prometheus' HTTP API (and a positive one where the
//! storm is meant to move it). Every metric a dashboard names must be one
//! Gatehouse exports, with the labels the dashboard selects and groups by;
//! every dashboard must use its datasource variable and describe each panel.
//! This file owns those checks only; it must not reach into the server.

mod common;
mod muc_support;

use clap::Parser;
use common::roster_service::RosterService;
use common::*;
use muc_support::{join, Gate, MUC};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Panel targets, named by panel title and legend, that the storm, the
/// roster refresh and the MUC joins below must move above zero. Every other
/// target only has to return a finite value (timeouts, restarts, skipped
/// and sanitized items, and every protection and fault counter stay at 0 in
/// a healthy storm).
const MOVED_BY_THE_TEST: &[(&str, &str)] = &[
    ("Offline messages", "stored"),
    ("Messages archived and purged", "stored"),
    ("Logins by result", "{{result}}"),
    ("Login latency", "p50"),
    ("Login latency", "p95"),
    ("Login latency", "p99"),
    ("Refusal latency", "p50"),
    ("Refusal latency", "p99"),
    ("Share of logins refused for capacity", "refused"),
    ("Busy vs total workers", "up {{backend}}"),
    ("Queue wait time", "p99 {{backend}}"),
    (
        "Backend answer time by result",
        "p99 {{backend}} {{result}}",
    ),
    ("Refused auth requests", "{{backend}} {{reason}}"),
    ("Online", "sessions"),
    ("Online", "connections"),
    ("Roster fetch latency", "p99 {{result}}"),
    ("Refreshes and pushes", "refresh {{result}}"),
    ("Join gate decisions", "{{outcome}}"),
    ("Join gate latency", "p50"),
    ("Join gate latency", "p99"),
    ("Rooms and occupants", "rooms"),
    ("Rooms and occupants", "occupants"),
    ("Groupchat messages", "messages"),
];

/// What Grafana's built-in interval variables stand for in the test: wide
/// enough that the storm stays in every rate window while the test polls.
const TEST_INTERVAL: &str = "5m";

/// Series Prometheus itself writes for every target; a dashboard may use
/// them although Gatehouse does not export them.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// One dashboard file, parsed.
struct Dashboard {
    /// The file name, for messages.
    file: String,
    /// The dashboard JSON.
    json: serde_json::Value,
}

/// One query a dashboard runs: a panel target or a template variable.
struct DashboardQuery {
    /// Where it comes from (file, panel title or variable name), for messages.
    origin: String,
    /// The panel's title; empty for a template variable.
    panel: String,
    /// The target's legend; empty for a template variable.
    legend: String,
    /// The PromQL (or `label_values(...)`) as written, Grafana variables included.
    expr: String,
}

fn dashboards() -> Vec<Dashboard> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        found.push(Dashboard {
            file: path.file_name().unwrap().to_string_lossy().into_owned(),
            json: serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
        });
    }
    assert!(!found.is_empty(), "no dashboard in dashboards/");
    found
}

impl Dashboard {
    /// Every panel, nested ones (in collapsed rows) included.
    fn panels(&self) -> Vec<&serde_json::Value> {
        let mut panels = Vec::new();
        let mut stack: Vec<&serde_json::Value> =
            self.json["panels"].as_array().unwrap().iter().collect();
        while let Some(panel) = stack.pop() {
            stack.extend(panel["panels"].as_array().into_iter().flatten());
            panels.push(panel);
        }
        panels
    }

    fn variables(&self) -> Vec<&serde_json::Value> {
        self.json["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .collect()
    }

    /// Every panel target's and query variable's query.
    fn queries(&self) -> Vec<DashboardQuery> {
        let mut queries = Vec::new();
        for panel in self.panels() {
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push(DashboardQuery {
                    origin: format!("{}: panel {title:?}", self.file),
                    panel: title.to_owned(),
                    legend: target["legendFormat"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    expr: target["expr"].as_str().unwrap().to_owned(),
                });
            }
        }
        for variable in self.variables() {
            if variable["type"] != "query" {
                continue;
            }
            let query = &variable["query"];
            let expr = query.as_str().or(query["query"].as_str()).unwrap();
            queries.push(DashboardQuery {
                origin: format!("{}: variable {}", self.file, variable["name"]),
                panel: String::new(),
                legend: String::new(),
                expr: expr.to_owned(),
            });
        }
        queries
    }

    /// `expr` with every Grafana variable replaced by what it stands for
    /// when everything is selected: a query variable by its `allValue`,
    /// the interval variables by TEST_INTERVAL.
    fn substitute(&self, expr: &str) -> String {
        let mut expr = expr.to_owned();
        for variable in self.variables() {
            if variable["type"] != "query" {
                continue;
            }
            let name = variable["name"].as_str().unwrap();
            let all = variable["allValue"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: variable {name} has no allValue", self.file));
            expr = expr
                .replace(&format!("${{{name}}}"), all)
                .replace(&format!("${name}"), all);
        }
        for builtin in ["__rate_interval", "__interval", "__range"] {
            expr = expr
                .replace(&format!("${{{builtin}}}"), TEST_INTERVAL)
                .replace(&format!("${builtin}"), TEST_INTERVAL);
        }
        assert!(
            !expr.contains('$'),
            "{}: a Grafana variable the test does not know: {expr}",
            self.file
        );
        expr
    }

    /// Structure problems: the datasource variable, datasource references
    /// and panel descriptions.
    fn structure_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let file = &self.file;
        let datasource_variables: Vec<_> = self
            .variables()
            .into_iter()
            .filter(|v| v["type"] == "datasource" && v["query"] == "prometheus")
            .collect();
        if datasource_variables.len() != 1 || datasource_variables[0]["name"] != "datasource" {
            problems.push(format!(
                "{file}: needs one template variable `datasource` of type datasource, query prometheus"
            ));
        }
        let is_the_variable = |datasource: &serde_json::Value| {
            datasource["type"] == "prometheus" && datasource["uid"] == "${datasource}"
        };
        // A row, or a target, without one inherits its panel's.
        let inherits_or_is_the_variable =
            |datasource: &serde_json::Value| datasource.is_null() || is_the_variable(datasource);
        for variable in self.variables() {
            if variable["type"] == "query" && !is_the_variable(&variable["datasource"]) {
                problems.push(format!(
                    "{file}: variable {} has datasource {}, not ${{datasource}}",
                    variable["name"], variable["datasource"]
                ));
            }
        }
        for panel in self.panels() {
            let title = panel["title"].as_str().unwrap_or_default();
            let panel_ok = if panel["type"] == "row" {
                inherits_or_is_the_variable(&panel["datasource"])
            } else {
                is_the_variable(&panel["datasource"])
            };
            let targets_ok = panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|target| inherits_or_is_the_variable(&target["datasource"]));
            if !panel_ok || !targets_ok {
                problems.push(format!(
                    "{file}: panel {title:?} has a datasource other than ${{datasource}}"
                ));
            }
            let described = panel["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty());
            if panel["type"] != "row" && !described {
                problems.push(format!("{file}: panel {title:?} has no description"));
            }
        }
        problems
    }
}

/// A PromQL token, as far as finding metric and label names needs.
#[derive(Debug, PartialEq)]
enum Token {
    /// A metric, label, function or keyword name.
    Name(String),
    /// `(`: a call, an aggregation's argument or a label list.
    Open,
    /// `)`.
    Close,
    /// `{`: a selector's label matchers.
    OpenBrace,
    /// `}`.
    CloseBrace,
    /// A string, number, range, operator or comma: nothing to check.
    Other,
}

fn tokens(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '{' => tokens.push(Token::OpenBrace),
            '}' => tokens.push(Token::CloseBrace),
            '"' | '\'' | '`' => {
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                tokens.push(Token::Other);
            }
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
                tokens.push(Token::Other);
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i).is_some_and(char::is_ascii_digit)) =>
            {
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || chars[i] == '.'
                        || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
                {
                    i += 1;
                }
                tokens.push(Token::Other);
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i - 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                tokens.push(Token::Name(chars[start..i].iter().collect()));
            }
            c if c.is_whitespace() => {}
            _ => tokens.push(Token::Other),
        }
    }
    tokens
}

/// Keywords followed by a parenthesised list of label names.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Keywords that stand alone between expressions (`group_left` may).
const OPERATOR_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "group_left",
    "group_right",
];

/// A metric selector in a query: the metric and the labels it matches on.
struct Selector {
    /// Index of the metric's token, to tell which grouping holds it.
    at: usize,
    /// The series name selected.
    metric: String,
    /// The label names its matchers use.
    labels: Vec<String>,
}

/// A `by`/`without` grouping: its labels and the metrics it aggregates.
struct Grouping {
    /// The labels listed in `by (...)` or `without (...)`.
    labels: Vec<String>,
    /// The series aggregated, which must all carry those labels.
    metrics: BTreeSet<String>,
}

/// Index of the token closing the bracket opened at `open` (or, going
/// backwards, opening the one closed at `open`).
fn matching(tokens: &[Token], open: usize, forward: bool) -> usize {
    let (inc, dec) = if forward {
        (Token::Open, Token::Close)
    } else {
        (Token::Close, Token::Open)
    };
    let mut depth = 0;
    let mut i = open;
    loop {
        if tokens[i] == inc {
            depth += 1;
        } else if tokens[i] == dec {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
        i = if forward {
            i + 1
        } else {
            i.checked_sub(1).expect("unbalanced parentheses")
        };
        assert!(i < tokens.len(), "unbalanced parentheses");
    }
}

/// Names up to the token closing the list opened at `open`.
fn names_until_close(tokens: &[Token], open: usize, close: &Token) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut i = open + 1;
    while tokens.get(i).is_some_and(|t| t != close) {
        if let Token::Name(name) = &tokens[i] {
            names.push(name.clone());
        }
        i += 1;
    }
    (names, i)
}

/// The metric selectors and groupings of a PromQL expression. A
/// `label_values(metric, label)` variable query reads as a grouping of
/// `metric` by `label`.
fn analyse(expr: &str) -> (Vec<Selector>, Vec<Grouping>) {
    let tokens = tokens(expr);
    let mut selectors = Vec::new();
    let mut grouping_spans = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let Token::Name(name) = &tokens[i] else {
            i += 1;
            continue;
        };
        let next = tokens.get(i + 1);
        if LABEL_LIST_KEYWORDS.contains(&name.as_str()) && next == Some(&Token::Open) {
            let (labels, close) = names_until_close(&tokens, i + 1, &Token::Close);
            let grouping = name == "by" || name == "without";
            if grouping {
                // `sum by (x) (arg)` or `sum (arg) by (x)`.
                let span = if matches!(tokens.get(i.wrapping_sub(1)), Some(Token::Name(_))) {
                    (close + 1, matching(&tokens, close + 1, true))
                } else {
                    (matching(&tokens, i - 1, false), i - 1)
                };
                grouping_spans.push((labels, span));
            }
            i = close + 1;
        } else if name == "label_values" && next == Some(&Token::Open) {
            let (names, close) = names_until_close(&tokens, i + 1, &Token::Close);
            let [metric, label] = names.as_slice() else {
                panic!("label_values(metric, label) expected: {expr}");
            };
            selectors.push(Selector {
                at: i + 2,
                metric: metric.clone(),
                labels: Vec::new(),
            });
            grouping_spans.push((vec![label.clone()], (i + 1, close)));
            i = close + 1;
        } else if next == Some(&Token::Open)
            || OPERATOR_KEYWORDS.contains(&name.as_str())
            || matches!(next, Some(Token::Name(keyword)) if keyword == "by" || keyword == "without")
        {
            // A function, an aggregation (`sum by (x) (...)`) or an operator.
            i += 1;
        } else {
            let mut labels = Vec::new();
            let mut after = i + 1;
            if next == Some(&Token::OpenBrace) {
                let (names, close) = names_until_close(&tokens, i + 1, &Token::CloseBrace);
                labels = names;
                after = close + 1;
            }
            selectors.push(Selector {
                at: i,
                metric: name.clone(),
                labels,
            });
            i = after;
        }
    }
    let groupings = grouping_spans
        .into_iter()
        .map(|(labels, (from, to))| Grouping {
            labels,
            metrics: selectors
                .iter()
                .filter(|s| (from..=to).contains(&s.at))
                .map(|s| s.metric.clone())
                .collect(),
        })
        .collect();
    (selectors, groupings)
}

/// What one /metrics scrape says Gatehouse exports.
struct Exported {
    /// `# TYPE` of each metric family.
    types: BTreeMap<String, String>,
    /// Label names seen on each series name (`_bucket` apart from its family).
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl Exported {
    fn parse(scrape: &str) -> Exported {
        let mut types = BTreeMap::new();
        let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in scrape.lines() {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').unwrap();
                types.insert(name.to_owned(), kind.trim().to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let names = labels.entry(line[..name_end].to_owned()).or_default();
            if line[name_end..].starts_with('{') {
                let chars: Vec<char> = line[name_end + 1..].chars().collect();
                let mut i = 0;
                while i < chars.len() && chars[i] != '}' {
                    let start = i;
                    while chars[i] != '=' {
                        i += 1;
                    }
                    names.insert(
                        chars[start..i]
                            .iter()
                            .collect::<String>()
                            .trim_matches(',')
                            .trim()
                            .to_owned(),
                    );
                    i += 2; // `="`
                    while chars[i] != '"' {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                    i += 1;
                    if chars.get(i) == Some(&',') {
                        i += 1;
                    }
                }
            }
        }
        Exported { types, labels }
    }

    /// Whether `name` is a series Gatehouse exports: a metric family, or a
    /// histogram's `_bucket`/`_sum`/`_count` (a summary's `_sum`/`_count`).
    fn exports(&self, name: &str) -> bool {
        if self.types.contains_key(name) {
            return true;
        }
        let family_of = |suffix: &str, kinds: &[&str]| {
            name.strip_suffix(suffix)
                .and_then(|base| self.types.get(base))
                .is_some_and(|kind| kinds.contains(&kind.as_str()))
        };
        family_of("_bucket", &["histogram"])
            || family_of("_sum", &["histogram", "summary"])
            || family_of("_count", &["histogram", "summary"])
    }

    /// Problems with the names and labels one query uses.
    fn problems(&self, origin: &str, expr: &str) -> Vec<String> {
        let (selectors, groupings) = analyse(expr);
        let mut problems = Vec::new();
        let mut label_uses: Vec<(&String, &String)> = Vec::new();
        for selector in &selectors {
            if PROMETHEUS_SERIES.contains(&selector.metric.as_str()) {
                continue;
            }
            if !self.exports(&selector.metric) {
                problems.push(format!(
                    "{origin} uses {}, which Gatehouse does not export",
                    selector.metric
                ));
                continue;
            }
            label_uses.extend(selector.labels.iter().map(|l| (&selector.metric, l)));
        }
        for grouping in &groupings {
            for metric in &grouping.metrics {
                label_uses.extend(grouping.labels.iter().map(|l| (metric, l)));
            }
        }
        for (metric, label) in label_uses {
            if TARGET_LABELS.contains(&label.as_str())
                || label == "__name__"
                || PROMETHEUS_SERIES.contains(&metric.as_str())
            {
                continue;
            }
            let exported = self.labels.get(metric.as_str());
            if !exported.is_some_and(|labels| labels.contains(label)) {
                problems.push(format!(
                    "{origin} uses label {label} of {metric}, which Gatehouse exports with labels {exported:?}"
                ));
            }
        }
        if selectors.is_empty() {
            problems.push(format!("{origin} names no metric: {expr}"));
        }
        problems
    }
}

/// The example scrape config, dashboards/prometheus.yml.
fn example_prometheus_config() -> String {
    std::fs::read_to_string(root().join("dashboards/prometheus.yml")).unwrap()
}

/// Gatehouse's default `http.listen`, read from a config that leaves it out.
fn default_http_listen() -> std::net::SocketAddr {
    let text = format!(
        "hosts = [\"localhost\"]\n[c2s]\nrequire_tls = false\n{}",
        fixture_auth("")
    );
    gatehouse::config::Config::parse(&text, std::path::Path::new("defaults.toml"))
        .unwrap()
        .http
        .listen
}

/// A real Prometheus scraping one Gatehouse every second; killed on drop.
struct Prometheus {
    /// The prometheus process, killed on drop.
    child: Child,
    /// Base URL of its HTTP API.
    url: String,
}

impl Prometheus {
    /// Starts Prometheus with the example config, pointed at `target` and
    /// scraping every second.
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let example = example_prometheus_config();
        let default_target = format!("\"{}\"", default_http_listen());
        assert!(
            example.contains(&default_target) && example.contains("scrape_interval: 15s"),
            "dashboards/prometheus.yml should scrape {default_target} every 15s:\n{example}"
        );
        let dir = tempdir();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            example
                .replace(&default_target, &format!("\"{target}\""))
                .replace("scrape_interval: 15s", "scrape_interval: 1s"),
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

    async fn get(
        &self,
        client: &reqwest::Client,
        path: &str,
        query: &[(&str, &str)],
    ) -> serde_json::Value {
        let response = client
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await;
        match response {
            Ok(response) => {
                serde_json::from_str(&response.text().await.unwrap_or_default()).unwrap_or_default()
            }
            Err(_) => serde_json::Value::Null,
        }
    }

    /// The sample values of an instant query, or why there are none.
    async fn values(&self, client: &reqwest::Client, expr: &str) -> Result<Vec<f64>, String> {
        let answer = self.get(client, "/api/v1/query", &[("query", expr)]).await;
        if answer["status"] != "success" {
            return Err(format!("{answer}"));
        }
        let data = &answer["data"];
        let samples: Vec<&serde_json::Value> = match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| &s["value"])
                .collect(),
            Some("scalar") => vec![&data["result"]],
            _ => return Err(format!("not an instant vector: {answer}")),
        };
        Ok(samples
            .iter()
            .map(|sample| {
                sample[1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN)
            })
            .collect())
    }

    /// Waits until Prometheus has stored a scrape that started after now.
    async fn wait_for_a_scrape(&self, client: &reqwest::Client) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let scraped = self.values(client, "timestamp(up)").await;
            if scraped
                .as_ref()
                .is_ok_and(|at| at.iter().any(|at| *at > now))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no scrape after {now}: {scraped:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What Grafana's `label_values(metric, label)` lists.
    async fn label_values(&self, client: &reqwest::Client, expr: &str) -> Result<Vec<f64>, String> {
        let (selectors, groupings) = analyse(expr);
        let path = format!("/api/v1/label/{}/values", groupings[0].labels[0]);
        let answer = self
            .get(client, &path, &[("match[]", &selectors[0].metric)])
            .await;
        match answer["data"].as_array() {
            Some(values) if answer["status"] == "success" => Ok(vec![values.len() as f64]),
            _ => Err(format!("{answer}")),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check config` accepts the example scrape config.
#[test]
fn example_prometheus_config_is_valid() {
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(root().join("dashboards/prometheus.yml"))
        .output()
        .expect("promtool is installed (Debian package prometheus)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Grafana's datasource should expect points as often as Prometheus scrapes.
    let datasource =
        std::fs::read_to_string(root().join("dashboards/provisioning/datasources/prometheus.yml"))
            .unwrap();
    assert!(datasource.contains("type: prometheus"), "{datasource}");
    assert!(datasource.contains("timeInterval: 15s"), "{datasource}");
    assert!(example_prometheus_config().contains("scrape_interval: 15s"));
}

#[test]
fn dashboards_use_the_datasource_variable_and_describe_every_panel() {
    let problems: Vec<String> = dashboards()
        .iter()
        .flat_map(Dashboard::structure_problems)
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn promql_names_and_labels_are_found() {
    let (selectors, groupings) = analyse(
        "histogram_quantile(0.9, sum by (le, backend) (rate(a_bucket{result=\"x\", instance=~\".*\"}[5m]))) \
         / clamp_min(sum(rate(b_total[5m])) without (reason), 1e-9) > bool up",
    );
    let names: Vec<_> = selectors.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["a_bucket", "b_total", "up"]);
    assert_eq!(selectors[0].labels, ["result", "instance"]);
    assert_eq!(groupings[0].labels, ["le", "backend"]);
    assert_eq!(
        groupings[0].metrics,
        BTreeSet::from(["a_bucket".to_owned()])
    );
    assert_eq!(groupings[1].labels, ["reason"]);
    assert_eq!(groupings[1].metrics, BTreeSet::from(["b_total".to_owned()]));
    let (selectors, groupings) = analyse("label_values(gatehouse_sessions, instance)");
    assert_eq!(selectors[0].metric, "gatehouse_sessions");
    assert_eq!(groupings[0].labels, ["instance"]);
}

#[actix_rt::test]
async fn every_dashboard_query_returns_data_after_a_storm() {
    let dashboards = dashboards();
    let queries: Vec<(&Dashboard, DashboardQuery)> = dashboards
        .iter()
        .flat_map(|d| d.queries().into_iter().map(move |q| (d, q)))
        .collect();
    assert!(
        queries.len() >= 15,
        "dashboard queries found: {}",
        queries.len()
    );
    for (panel, legend) in MOVED_BY_THE_TEST {
        assert!(
            queries
                .iter()
                .any(|(_, q)| q.panel == *panel && q.legend == *legend),
            "MOVED_BY_THE_TEST names {panel:?} / {legend:?}, which no dashboard has"
        );
    }

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
    let database = common::database::TestDatabase::sqlite();
    // A certificate (so its expiry is exported), STARTTLS not required:
    // the storm logs in over plain TCP.
    let (toml, _) = with_tls(&config(
        &roster_auth(
            &rosters.url(),
            &format!(
                "[muc]\ndomain = \"{MUC}\"\n[muc.http_auth]\nurl = \"{}\"\n{}",
                gate.url,
                database.storage_section()
            ),
        )
        .replace("processes = 2", "processes = 2\nqueue = 4")
        .replace(
            &format!("\"{}\"", fixture("auth.py")),
            &format!("\"{}\", \"--delay\", \"0.02\"", fixture("auth.py")),
        ),
    ));
    let server = TestServer::start(&toml.replace("require_tls = true", "require_tls = false"));
    let prometheus = Prometheus::start(server.http);
    let client = reqwest::Client::new();

    // Wait for Prometheus to be up and scraping.
    let deadline = Instant::now() + PATIENCE.max(Duration::from_secs(60));
    while prometheus.values(&client, "up").await != Ok(vec![1.0]) {
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

    // Roster refreshes, gated joins (one allowed, one denied) and a
    // groupchat message, in two rounds with a scrape between them: rate()
    // sees no increase in a series whose first scrape already counts it, so
    // the series the first round creates need the second round to move.
    let (mut alice, _) = Client::login(server.c2s, "alice", "wonderland", "r").await;
    let (mut bob, _) = Client::login(server.c2s, "bob", "builder", "r").await;
    for room in ["tea", "cake"] {
        let refresh = client
            .post(format!("http://{}/roster_admin/refresh", server.http))
            .body(r#"["user1", "user2"]"#)
            .send()
            .await
            .unwrap();
        assert!(refresh.status().is_success());
        join(&mut alice, room, "Alice")
            .await
            .expect("alice is allowed");
        alice
            .send(&format!(
                "<message to='{room}@{MUC}' type='groupchat'><body>hi</body></message>"
            ))
            .await;
        assert_eq!(
            join(&mut bob, room, "Bob").await.err().as_deref(),
            Some("not-authorized")
        );
        // A message for a user who is away, kept in storage.
        alice
            .send("<message to='grace@localhost' type='chat'><body>later</body></message>")
            .await;
        prometheus.wait_for_a_scrape(&client).await;
    }

    // Every metric a dashboard names is one Gatehouse exports, with the
    // labels the dashboard selects and groups by.
    let exported = Exported::parse(&server.metrics().await);
    let problems: Vec<String> = queries
        .iter()
        .flat_map(|(dashboard, query)| {
            exported.problems(&query.origin, &dashboard.substitute(&query.expr))
        })
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Every query returns a finite value (a positive one where this test
    // moves it) once Prometheus has scraped enough; poll until then.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut failures = Vec::new();
        for (dashboard, query) in &queries {
            let expr = dashboard.substitute(&query.expr);
            let values = if expr.starts_with("label_values(") {
                prometheus.label_values(&client, &expr).await
            } else {
                prometheus.values(&client, &expr).await
            };
            let moved = MOVED_BY_THE_TEST.contains(&(query.panel.as_str(), query.legend.as_str()));
            let fine = values
                .as_ref()
                .is_ok_and(|values| values.iter().any(|v| v.is_finite() && (!moved || *v > 0.0)));
            if !fine {
                let wanted = if moved {
                    "a value > 0"
                } else {
                    "a finite value"
                };
                failures.push(format!(
                    "{} {:?}: {expr} -> {values:?}, wanted {wanted}",
                    query.origin, query.legend
                ));
            }
        }
        if failures.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queries without data:\n{}",
            failures.join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop((alice, bob));
}
