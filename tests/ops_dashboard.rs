#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Grafana dashboard (`dashboards/tollgate.json`) and the Prometheus
//! alert rules (`dashboards/alerts.yaml`) against the real thing (issue 21):
//! a real Prometheus (Debian's package) scrapes the real gateway every second
//! while traffic exercises every metric the dashboard shows (a retry, a
//! fallback, a hedge, a budget spent, a limit refusal, an alias whose only
//! backend is down, estimated usage, a cut stream, reloads, a TLS listener
//! with a certificate that expires in two days). Then every query of the
//! dashboard must return data, the template variables must list values, and
//! the alert rules, evaluated by the same Prometheus, must fire for exactly
//! the faults the traffic caused. `promtool check rules` and the rules' unit
//! tests (`dashboards/alerts.test.yaml`) run too.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use support::prometheus::{promtool, Prometheus, Sample};
use support::{sse_chat_events, Behavior, Gateway, MockUpstream, Reply, ReplyBody, TestCa};

const ALICE: &str = "tg-dash-alice-0001";
const BOB: &str = "tg-dash-bob-00002";
/// bob's token budget: many requests' worth, so that the first refusal
/// comes with less than 10% left (the reservation is ~15 tokens).
const BOB_TOKENS: u64 = 300;
/// How long a query may take to return what the traffic made.
const DATA_DEADLINE: Duration = Duration::from_secs(90);

/// What the dashboard's variables stand for in the test: every value.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "5m"),
    ("$__range", "1h"),
    ("$alias", ".*"),
    ("$provider", ".*"),
    ("$key", ".*"),
    ("$team", ".*"),
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo("dashboards/tollgate.json")).unwrap();
    serde_json::from_str(&text).expect("dashboards/tollgate.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    fn walk<'a>(ps: &'a Value, out: &mut Vec<&'a Value>) {
        for p in ps.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// `(panel title, refId, expr)` of every query target.
fn targets(dash: &Value) -> Vec<(String, String, String)> {
    panels(dash)
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    title.clone(),
                    t["refId"].as_str().unwrap_or("").to_string(),
                    t["expr"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

/// `expr` with the dashboard's variables replaced by concrete values;
/// panics on a variable the test does not know.
fn concrete(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in VARIABLES {
        out = out.replace(var, value);
    }
    assert!(!out.contains('$'), "unknown variable in {expr}");
    out
}

/// The metric names the gateway registers, read from its source.
fn registered_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in [
        "src/telemetry/metrics.rs",
        "src/routing/metrics.rs",
        "src/proxy/experiments/metrics.rs",
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        for part in text.split('"').skip(1).step_by(2) {
            if part.starts_with("tollgate_")
                && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            {
                names.insert(part.to_string());
            }
        }
    }
    names
}

/// The `tollgate_*` names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tollgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn dashboard_is_well_formed_and_names_only_registered_metrics() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "tollgate");
    assert!(dash["title"].is_string());
    let all = panels(&dash);
    let ids: Vec<u64> = all.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "panel ids repeat: {ids:?}");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "alias", "provider", "key", "team"]);
    let registered = registered_metrics();
    let mut used = BTreeSet::new();
    for p in all.iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let ts = p["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!ts.is_empty(), "{title}: no targets");
        let refs: BTreeSet<&str> = ts.iter().map(|t| t["refId"].as_str().unwrap()).collect();
        assert_eq!(refs.len(), ts.len(), "{title}: refIds repeat");
        for t in ts {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
            let expr = t["expr"].as_str().unwrap();
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| registered.contains(*b))
                    .unwrap_or(&name);
                assert!(
                    registered.contains(base),
                    "{title}: {name} is not a metric the gateway registers"
                );
                used.insert(base.to_string());
            }
        }
    }
    // What issue 21 asks the dashboard to show.
    for must in [
        "tollgate_requests_total",
        "tollgate_route_requests_total",
        "tollgate_errors_total",
        "tollgate_request_duration_seconds",
        "tollgate_time_to_first_token_seconds",
        "tollgate_tokens_total",
        "tollgate_cost_usd_total",
        "tollgate_key_info",
        "tollgate_retries_total",
        "tollgate_hedges_total",
        "tollgate_breaker_state",
        "tollgate_upstream_backend_healthy",
        "tollgate_budget_remaining",
        "tollgate_config_reloads_total",
        "tollgate_tls_cert_expiry_timestamp_seconds",
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo("dashboards");
    let check = promtool(&dir, &["check", "rules", "alerts.yaml"]);
    let out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let test = promtool(&dir, &["test", "rules", "alerts.test.yaml"]);
    let out =
        String::from_utf8_lossy(&test.stdout).to_string() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success(), "promtool test rules:\n{out}");
}

// ---------------------------------------------------------------------------
// The gateway under traffic, scraped by a real Prometheus
// ---------------------------------------------------------------------------

fn delayed_sse(model: &str, delay: Duration) -> Behavior {
    let model = model.to_string();
    Behavior::func(move |_| {
        let mut chunks = vec![Bytes::new()];
        chunks.extend(sse_chat_events(&model, 3).into_iter().map(Bytes::from));
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ReplyBody::Chunks(chunks, delay),
        }
    })
}

struct Upstreams {
    good: MockUpstream,
    bad: MockUpstream,
    slow: MockUpstream,
    nousage: MockUpstream,
    cut: MockUpstream,
    refused: u16,
}

impl Upstreams {
    async fn start() -> Upstreams {
        let no_usage = json!({
            "id": "chatcmpl-n", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "no usage here"}, "finish_reason": "stop"}],
        });
        let mut cut = sse_chat_events("cut-up", 2);
        cut.pop(); // no [DONE]: the stream ends early
        let refused = support::gateway::refused_port();
        Upstreams {
            good: MockUpstream::start(Behavior::ChatEcho).await,
            bad: MockUpstream::start(Behavior::json(
                503,
                r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            ))
            .await,
            slow: MockUpstream::start(delayed_sse("slow-up", Duration::from_secs(2))).await,
            nousage: MockUpstream::start(Behavior::json(200, no_usage.to_string())).await,
            cut: MockUpstream::start(Behavior::sse(cut, Duration::from_millis(1))).await,
            refused,
        }
    }
}

/// The config: TLS on `listen` (traffic goes to `plain_listen`), one alias
/// per thing the dashboard shows.
fn config(u: &Upstreams, cert: &Path, key: &Path) -> String {
    let provider = |name: &str, port: u16, extra: &str| {
        format!(
            "  {name}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{port}/v1\"\n    api_key: \"sk-dash-upstream-secret\"\n{extra}"
        )
    };
    let off = "    health_check: { enabled: false }\n";
    let providers = [
        provider(
            "flaky",
            u.good.port(),
            &format!(
                "    backends: [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n    retry: {{ attempts: 2 }}\n{off}",
                u.bad.port(),
                u.good.port()
            ),
        ),
        provider("down", u.bad.port(), &format!("    retry: {{ attempts: 1 }}\n{off}")),
        provider("hosted", u.good.port(), off),
        provider("slow", u.slow.port(), off),
        provider(
            "gone",
            u.refused,
            "    health_check: { interval: 200ms, timeout: 200ms }\n",
        ),
        provider("nousage", u.nousage.port(), off),
        provider("cutoff", u.cut.port(), off),
    ]
    .concat();
    let price = "price: { input: 1.0, output: 2.0 }";
    format!(
        r#"
listen: "{{LISTEN}}"
plain_listen: "{{PLAIN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
tls:
  cert: "{cert}"
  key: "{key}"
providers:
{providers}
models:
  chat:
    routes: [ {{ provider: flaky, model: chat-up, {price} }} ]
  fb:
    routes:
      - {{ provider: down, model: down-up, {price} }}
      - {{ provider: hosted, model: fb-up, {price} }}
  hedged:
    routes:
      - {{ provider: slow, model: slow-up, {price} }}
      - {{ provider: hosted, model: hedge-up, {price} }}
    hedge: {{ after: 100ms, max_share: 1.0 }}
  dead:
    routes: [ {{ provider: gone, model: gone-up, {price} }} ]
  estimate:
    routes: [ {{ provider: nousage, model: gpt-4o-mini }} ]
  cut:
    routes: [ {{ provider: cutoff, model: cut-up, {price} }} ]
  metered:
    routes: [ {{ provider: hosted, model: metered-up, {price} }} ]
teams:
  research: {{ budgets: [ {{ tokens: 100000000, window: day }} ] }}
keys:
  - {{ name: alice, key: "{ALICE}", team: research, budgets: [ {{ usd: 100, window: day }} ] }}
  - {{ name: bob, key: "{BOB}", models: [metered], budgets: [ {{ tokens: {BOB_TOKENS}, window: day }} ] }}
"#,
        cert = cert.display(),
        key = key.display(),
    )
}

/// POSTs a chat request for `alias` with `key` to the plaintext listener;
/// returns the status and the whole body.
async fn chat(gw: &Gateway, key: &str, alias: &str, stream: bool) -> (u16, String) {
    let body = json!({
        "model": alias, "stream": stream, "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let resp = support::client()
        .post(format!("http://{}/v1/chat/completions", gw.plain_addr()))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// One round of traffic touching every metric of the dashboard.
async fn traffic(gw: &Gateway, ca: &TestCa) {
    for stream in [false, true, false, true] {
        let (s, b) = chat(gw, ALICE, "chat", stream).await;
        assert_eq!(s, 200, "chat: {b}");
    }
    for stream in [false, true] {
        let (s, b) = chat(gw, ALICE, "fb", stream).await;
        assert_eq!(s, 200, "fb: {b}");
        let (s, b) = chat(gw, ALICE, "hedged", stream).await;
        assert_eq!(s, 200, "hedged: {b}");
        let (s, _) = chat(gw, ALICE, "dead", stream).await;
        assert!(s >= 500, "dead answered {s}");
        let (s, b) = chat(gw, ALICE, "estimate", false).await;
        assert_eq!(s, 200, "estimate: {b}");
    }
    let (s, b) = chat(gw, ALICE, "cut", true).await;
    assert_eq!(s, 200, "cut: {b}");
    let (s, _) = chat(gw, "tg-dash-nobody-000", "chat", false).await;
    assert_eq!(s, 401);
    // One TLS handshake on `listen`.
    let tls = reqwest::Client::builder()
        .no_proxy()
        .use_preconfigured_tls((*ca.client_config()).clone())
        .build()
        .unwrap();
    let port = gw.listen_addr().rsplit(':').next().unwrap().to_string();
    let r = tls
        .get(format!("https://localhost:{port}/healthz"))
        .send()
        .await
        .expect("GET /healthz over TLS");
    assert_eq!(r.status().as_u16(), 200);
}

/// bob spends his token budget until the gateway refuses him.
async fn spend_bobs_budget(gw: &Gateway) {
    for _ in 0..(BOB_TOKENS / 8 + 10) {
        let (s, b) = chat(gw, BOB, "metered", false).await;
        if s == 429 {
            assert!(b.contains("insufficient_quota"), "{b}");
            return;
        }
        assert_eq!(s, 200, "metered: {b}");
    }
    panic!("bob's budget of {BOB_TOKENS} tokens never ran out");
}

/// Polls `expr` until `ok` accepts its samples; panics after
/// [`DATA_DEADLINE`] with the last answer.
async fn wait_query(
    prom: &Prometheus,
    what: &str,
    expr: &str,
    ok: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + DATA_DEADLINE;
    loop {
        let got = prom.query(expr).await;
        if let Ok(samples) = &got {
            if ok(samples) {
                return samples.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: `{expr}` never returned what was expected; last answer: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn has_finite(samples: &[Sample]) -> bool {
    samples.iter().any(|s| s.number().is_finite())
}

fn value_where(samples: &[Sample], label: &str, value: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.label(label) == Some(value))
        .map(Sample::number)
}

/// Sends SIGHUP and waits until `tollgate_config_reloads_total{result}`
/// reaches `want` on `/metrics`.
async fn reload(gw: &Gateway, result: &str, want: f64) {
    gw.sighup();
    gw.wait_metric("tollgate_config_reloads_total", &[("result", result)], want)
        .await;
}

/// The alerting rules with their state, once each named rule is in the
/// wanted state ("inactive" or active: "pending"/"firing") with exactly the
/// wanted label values on `label`.
async fn wait_alerts(prom: &Prometheus, want: &BTreeMap<&str, (&str, Vec<&str>)>) -> Vec<Value> {
    let deadline = Instant::now() + DATA_DEADLINE;
    loop {
        let rules = prom.alerting_rules().await.unwrap();
        let mut problems = Vec::new();
        assert_eq!(rules.len(), 7, "rules loaded: {rules:#?}\n{}", prom.logs());
        for r in &rules {
            let name = r["name"].as_str().unwrap();
            if r["health"] != "ok" {
                problems.push(format!(
                    "{name}: health {} ({})",
                    r["health"], r["lastError"]
                ));
            }
            let (label, values) = want
                .get(name)
                .unwrap_or_else(|| panic!("unexpected rule {name}"));
            let mut got: Vec<&str> = r["alerts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a["labels"][*label].as_str().unwrap_or("?"))
                .collect();
            got.sort_unstable();
            if got != *values {
                problems.push(format!("{name}: {label} {got:?}, want {values:?}"));
            }
        }
        if problems.is_empty() {
            return rules;
        }
        assert!(
            Instant::now() < deadline,
            "alert rules never settled: {problems:#?}\nrules: {rules:#?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_and_the_alerts_fire_in_a_real_prometheus() {
    let u = Upstreams::start().await;
    let ca = TestCa::new();
    let expires = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let (cert, key) = ca.issue_files_until("edge", &["localhost", "127.0.0.1"], expires);
    let yaml = config(&u, &cert, &key);
    let gw = Gateway::start(&yaml).await;
    let prom = Prometheus::start(&[gw.metrics_addr()], &[repo("dashboards/alerts.yaml")]).await;

    // Round one, then wait until Prometheus has scraped what it made, so
    // that round two shows as increases (rates, histogram quantiles).
    traffic(&gw, &ca).await;
    spend_bobs_budget(&gw).await;
    wait_query(
        &prom,
        "first scrape",
        "count(count by (request_model) (tollgate_requests_total))",
        |s| s.first().is_some_and(|s| s.number() >= 8.0),
    )
    .await;
    wait_query(
        &prom,
        "reload series",
        r#"tollgate_config_reloads_total{result="failed"}"#,
        |s| !s.is_empty(),
    )
    .await;
    // A reload that fails (the running config stays), then one that works.
    gw.write_config(&format!("{yaml}\nnot_a_field: 1\n"));
    reload(&gw, "failed", 1.0).await;
    gw.write_config(&yaml);
    reload(&gw, "success", 1.0).await;
    traffic(&gw, &ca).await;
    let (s, _) = chat(&gw, BOB, "metered", false).await;
    assert_eq!(s, 429, "bob is still out of budget");

    // Every query of the dashboard returns at least one finite value.
    let dash = dashboard();
    let all = targets(&dash);
    assert!(all.len() >= 40, "only {} queries", all.len());
    let mut answers: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for (title, ref_id, expr) in &all {
        let q = concrete(expr);
        let samples = wait_query(&prom, &format!("{title} ({ref_id})"), &q, has_finite).await;
        answers.insert(format!("{title}/{ref_id}"), samples);
    }
    // The template variables list values.
    for v in dash["templating"]["list"].as_array().unwrap() {
        let Some(q) = v["definition"].as_str() else {
            continue;
        };
        let args = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {}: {q}", v["name"]));
        let (metric, label) = args.split_once(", ").unwrap();
        let values = prom.label_values(metric, label).await.unwrap();
        assert!(
            !values.is_empty(),
            "variable {}: no values for {q}",
            v["name"]
        );
    }

    // The panels show what the traffic did, not just something.
    let a = |k: &str| answers.get(k).unwrap_or_else(|| panic!("no panel {k}"));
    assert_eq!(a("Aliases with no usable route/A")[0].number(), 1.0);
    let usable = a("Usable routes by alias/A");
    assert_eq!(value_where(usable, "request_model", "dead"), Some(0.0));
    assert_eq!(value_where(usable, "request_model", "chat"), Some(1.0));
    let retries = a("Fallbacks and retries/s by alias/A");
    assert!(
        retries
            .iter()
            .any(|s| s.label("request_model") == Some("chat") && s.label("kind") == Some("retry")),
        "{retries:?}"
    );
    assert!(
        retries
            .iter()
            .any(|s| s.label("request_model") == Some("fb") && s.label("kind") == Some("fallback")),
        "{retries:?}"
    );
    let hedges = a("Hedges/s by alias/A");
    for event in ["fired", "won"] {
        assert!(
            hedges.iter().any(|s| s.label("event") == Some(event)),
            "{hedges:?}"
        );
    }
    assert!(value_where(a("Tokens by team/A"), "team", "research").unwrap() > 0.0);
    assert!(value_where(a("Spend by key/A"), "key", "alice").unwrap() > 0.0);
    let used = a("Budget used/A");
    let bob = used
        .iter()
        .find(|s| s.label("name") == Some("bob"))
        .unwrap()
        .number();
    assert!(bob > 0.9 && bob <= 1.0, "bob used {bob} of his budget");
    let days = a("TLS certificate: days left/A")[0].number();
    assert!(
        days > 1.0 && days < 2.1,
        "the certificate has {days} days left"
    );
    let reloads = a("Config reloads by result/A");
    for result in ["success", "failed"] {
        assert!(
            value_where(reloads, "result", result).unwrap() > 0.0,
            "{reloads:?}"
        );
    }
    assert!(value_where(a("TLS handshakes/s by result/A"), "result", "success").is_some());
    assert!(value_where(a("Gateway errors/s by code/A"), "code", "invalid_api_key").is_some());
    assert!(value_where(
        a("Estimated usage and partial streams/s/A"),
        "request_model",
        "estimate"
    )
    .is_some());
    assert!(value_where(
        a("Estimated usage and partial streams/s/B"),
        "request_model",
        "cut"
    )
    .is_some());

    // The alert rules, evaluated by this Prometheus every second, fire for
    // exactly what went wrong: the dead alias (no usable route, all 5xx),
    // bob's budget, the certificate, the failed reload; and nothing else.
    let want: BTreeMap<&str, (&str, Vec<&str>)> = [
        ("TollgateHighErrorRatio", ("request_model", vec!["dead"])),
        ("TollgateAliasDown", ("request_model", vec!["dead"])),
        ("TollgateBudgetNearlySpent", ("name", vec!["bob"])),
        (
            "TollgateTLSCertificateExpiringSoon",
            ("severity", vec!["warning"]),
        ),
        (
            "TollgateTLSCertificateExpiring",
            ("severity", vec!["critical"]),
        ),
        ("TollgateConfigReloadFailed", ("result", vec!["failed"])),
        ("TollgateTraceSpansDropped", ("instance", vec![])),
    ]
    .into_iter()
    .collect();
    wait_alerts(&prom, &want).await;
    // No secret reached Prometheus.
    let dump = prom
        .api("series", &[("match[]", r#"{__name__=~"tollgate_.+"}"#)])
        .await
        .unwrap();
    let dump = dump.to_string();
    for secret in ["sk-dash-upstream-secret", ALICE, BOB] {
        assert!(!dump.contains(secret), "{secret} is in a series label");
    }
}
