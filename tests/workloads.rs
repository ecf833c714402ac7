//! Workloads end to end (issue 23): declared request tags set with
//! `x-tollgate-tags` or the body's `metadata`, refused (400, no upstream
//! call) when undeclared or outside a key's subset, counted in the
//! workload metrics, the access log and the admin usage view, routing by
//! workload (`by_workload`, a route's `workloads`), per-workload budgets on
//! the memory store and on Redis, and tags across a reload. The real
//! binary in front of a mock upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::prom::{sample, series_count};
use support::{assert_error, Behavior, Gateway, MockUpstream, CONFIG_HEAD};
use tollgate::base::endpoint::Endpoint;

const KEY_A: &str = "tg-key-alice-0001";
const KEY_B: &str = "tg-key-bob-00002";
const KEY_C: &str = "tg-key-carol-003";
const ADMIN_KEY: &str = "tg-admin-secret-000001";
/// `max_tokens` of every test request.
const MAX_TOKENS: u64 = 3;
/// What `Behavior::ChatEcho` reports: 5 prompt and 3 completion tokens.
const PROMPT: u64 = 5;
const COMPLETION: u64 = 3;
/// USD per token at the test price ($1000 per million, in and out).
const PER_TOKEN: f64 = 1e-3;

fn body() -> Value {
    json!({
        "model": "m",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": "Sort these words."}],
    })
}

/// Tokens reserved for [`body`]: its prompt estimate plus `max_tokens`.
fn reservation() -> u64 {
    let b = body().to_string();
    tollgate::accounting::estimate::prompt_tokens("m1", Endpoint::ChatCompletions, b.as_bytes())
        + MAX_TOKENS
}

/// A budget (USD) that admits one request (its reservation) and, once
/// that one settled at [`PROMPT`] + [`COMPLETION`] tokens, refuses the next.
fn one_request_budget() -> f64 {
    (PROMPT + COMPLETION + reservation() - 1) as f64 * PER_TOKEN
}

/// Provider `up` at `port`; alias `m` (one route, priced), alias `routed`
/// (routes `cheap` and `fast`, chosen by `priority`), alias `gated` (a
/// `premium` route reserved for `priority: interactive`, then `basic`);
/// keys alice (team research), bob, carol (only `use_case: batch`, by
/// default). `workloads` and `extra` are appended as they are.
fn config(port: u16, workloads: &str, extra: &str) -> String {
    let team_budget = 4.0 * one_request_budget();
    format!(
        r#"{CONFIG_HEAD}
admin_listen: "{{ADMIN}}"
admin_key: "{ADMIN_KEY}"
access_log: {{ path: "{{TMP}}/access.log" }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-up"
    health_check: {{ enabled: false }}
    retry: {{ attempts: 1, on_status: [] }}
    breaker: {{ enabled: false }}
models:
  m:
    routes:
      - {{ provider: up, model: m1, price: {{ input: 1000, output: 1000 }} }}
  routed:
    strategy: fallback
    routes:
      - {{ provider: up, model: fast-1, name: fast, price: {{ input: 10, output: 10 }} }}
      - {{ provider: up, model: cheap-1, name: cheap, price: {{ input: 1, output: 1 }} }}
    by_workload:
      tag: priority
      values:
        batch: {{ strategy: cost }}
        interactive: {{ strategy: fallback, routes: [fast, cheap] }}
  gated:
    routes:
      - {{ provider: up, model: premium-1, name: premium, workloads: {{ priority: [interactive] }} }}
      - {{ provider: up, model: basic-1, name: basic }}
  fwd:
    routes:
      - {{ provider: up, model: fwd-1, forward_tags: metadata }}
  fwd_user:
    routes:
      - {{ provider: up, model: fwdu-1, forward_tags: user }}
teams:
  research:
    budgets: [ {{ usd: {team_budget}, window: day }} ]
    workload_limits:
      "priority=batch": {{ share: 0.25 }}
keys:
  - {{ name: alice, key: "{KEY_A}", team: research }}
  - {{ name: bob, key: "{KEY_B}" }}
  - {{ name: carol, key: "{KEY_C}", tags: {{ use_case: batch }}, allowed_tags: {{ use_case: [batch] }} }}
{workloads}
{extra}
"#
    )
}

const DECLARED: &str = r#"workloads:
  tags:
    use_case: [summarize, support, batch, eval]
    priority: [interactive, batch]
  metrics:
    requests: [use_case]
    tokens: [use_case]
    cost: [use_case]
    duration: [use_case]
"#;

struct Resp {
    status: u16,
    body: Value,
}

/// POSTs `body` with `key`, `tags` (the `x-tollgate-tags` header, if any)
/// and `rid` as the request id.
async fn post(gw: &Gateway, key: &str, tags: Option<&str>, body: &Value, rid: &str) -> Resp {
    let mut req = gw
        .http()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid);
    if let Some(t) = tags {
        req = req.header("x-tollgate-tags", t);
    }
    let resp = req
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    Resp {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

fn with_model(model: &str) -> Value {
    let mut b = body();
    b["model"] = json!(model);
    b
}

fn with_metadata(metadata: Value) -> Value {
    let mut b = body();
    b["metadata"] = metadata;
    b
}

async fn admin_get(gw: &Gateway, path: &str) -> Value {
    let resp = support::client()
        .get(format!("http://{}{path}", gw.admin_addr()))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_access_log_and_admin_usage_split_by_use_case() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(mock.port(), DECLARED, "")).await;
    for (i, tags) in ["use_case=summarize", "use_case=summarize", "use_case=batch"]
        .iter()
        .enumerate()
    {
        let r = post(&gw, KEY_A, Some(tags), &body(), &format!("split-{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // No tag at all: `none`.
    assert_eq!(post(&gw, KEY_A, None, &body(), "split-3").await.status, 200);
    let line = gw.access_line("split-2").await;
    assert_eq!(line["tags"], json!({"use_case": "batch"}));
    assert_eq!(gw.access_line("split-3").await["tags"], json!({}));

    let req = "tollgate_workload_requests_total";
    gw.wait_metric(req, &[("tag", "use_case")], 4.0).await;
    let m = gw.metrics_text().await;
    fn at(v: &str) -> [(&str, &str); 3] {
        [("request_model", "m"), ("tag", "use_case"), ("value", v)]
    }
    fn with<'a>(v: &'a str, extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
        let mut l = at(v).to_vec();
        l.push(extra);
        l
    }
    assert_eq!(
        sample(&m, req, &with("summarize", ("status_class", "2xx"))),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, req, &with("batch", ("status_class", "2xx"))),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, req, &with("none", ("status_class", "2xx"))),
        Some(1.0)
    );
    let tok = "tollgate_workload_tokens_total";
    assert_eq!(
        sample(&m, tok, &with("summarize", ("token_type", "input"))),
        Some(2.0 * PROMPT as f64)
    );
    assert_eq!(
        sample(&m, tok, &with("summarize", ("token_type", "output"))),
        Some(2.0 * COMPLETION as f64)
    );
    assert_eq!(
        sample(&m, tok, &with("batch", ("token_type", "input"))),
        Some(PROMPT as f64)
    );
    assert_eq!(
        sample(&m, tok, &with("batch", ("token_type", "output"))),
        Some(COMPLETION as f64)
    );
    let cost = sample(&m, "tollgate_workload_cost_usd_total", &at("summarize")).unwrap();
    assert!((cost - 2.0 * 8.0 * PER_TOKEN).abs() < 1e-12, "{cost}");
    let cost = sample(&m, "tollgate_workload_cost_usd_total", &at("batch")).unwrap();
    assert!((cost - 8.0 * PER_TOKEN).abs() < 1e-12, "{cost}");
    assert_eq!(
        sample(
            &m,
            "tollgate_workload_request_duration_seconds_count",
            &at("summarize")
        ),
        Some(2.0)
    );
    // `priority` is declared but named by no family: no series of it.
    assert!(!m.contains("tag=\"priority\""), "{m}");
    // No TTFT family was asked for.
    assert_eq!(series_count(&m, "tollgate_workload_time_to_first_token"), 0);

    // The admin usage view: per key and team, per tag value.
    let u = admin_get(&gw, "/admin/usage?window=day").await;
    let row = |level: &str, name: &str| -> Value {
        u["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["level"] == level && r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {level} {name} in {u}"))
    };
    for (level, name) in [("key", "alice"), ("team", "research")] {
        let tags = &row(level, name)["tags"];
        let cur = |tag: &str, v: &str| tags[tag][v]["current"].clone();
        assert_eq!(cur("use_case", "summarize")["requests"], 2, "{tags}");
        assert_eq!(cur("use_case", "summarize")["tokens"], 16, "{tags}");
        assert_eq!(cur("use_case", "batch")["tokens"], 8, "{tags}");
        assert_eq!(cur("use_case", "none")["requests"], 1, "{tags}");
        assert_eq!(cur("priority", "none")["requests"], 4, "{tags}");
        let spend = cur("use_case", "summarize")["spend_usd"].as_f64().unwrap();
        assert!((spend - 16.0 * PER_TOKEN).abs() < 1e-12, "{spend}");
    }
    // bob sent nothing: no row with tags.
    assert!(u["usage"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["name"] != "bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_tag_or_value_is_refused_before_any_upstream_call() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(mock.port(), DECLARED, "")).await;
    for (tags, body, says, param) in [
        (
            Some("use_case=poetry"),
            body(),
            "`poetry` is not a declared value of the tag `use_case`",
            "x-tollgate-tags",
        ),
        (
            Some("team=red"),
            body(),
            "The tag `team` is not declared",
            "x-tollgate-tags",
        ),
        (
            Some("use_case=batch,use_case=eval"),
            body(),
            "sets the tag `use_case` twice",
            "x-tollgate-tags",
        ),
        (
            Some("use_case=batch,priority=batch,x=y"),
            body(),
            "more than 2 tags",
            "x-tollgate-tags",
        ),
        (
            Some(&*"a".repeat(1025)),
            body(),
            "longer than 1024 bytes",
            "x-tollgate-tags",
        ),
        (
            None,
            with_metadata(json!({"use_case": "poetry"})),
            "`poetry` is not a declared value",
            "metadata",
        ),
        (
            None,
            with_metadata(json!({"use_case": 7})),
            "`metadata.use_case` must be a string",
            "metadata",
        ),
    ] {
        let r = post(&gw, KEY_B, tags, &body, "bad").await;
        let v = assert_error(
            r.status,
            r.body.to_string().as_bytes(),
            (400, "invalid_request_error", "invalid_request"),
        );
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{msg}");
        assert_eq!(v["error"]["param"], param);
    }
    // Metadata the gateway does not declare is the client's: no 400.
    let r = post(
        &gw,
        KEY_B,
        None,
        &with_metadata(json!({"order": "42"})),
        "own-metadata",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(mock.hits(), 1, "only the last request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_wins_over_metadata_which_is_forwarded_as_sent() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(mock.port(), DECLARED, "")).await;
    let meta = json!({"use_case": "summarize", "priority": "interactive", "order": "42"});
    let r = post(
        &gw,
        KEY_B,
        Some("use_case=batch"),
        &with_metadata(meta.clone()),
        "both",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        gw.access_line("both").await["tags"],
        json!({"priority": "interactive", "use_case": "batch"})
    );
    let seen = mock.last().unwrap();
    // The header never goes upstream; the body's metadata is the client's.
    assert_eq!(seen.header("x-tollgate-tags"), None);
    assert_eq!(seen.json()["metadata"], meta);
    let r = post(&gw, KEY_B, None, &with_metadata(meta), "meta-only").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        gw.access_line("meta-only").await["tags"],
        json!({"priority": "interactive", "use_case": "summarize"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_forward_tags_sends_them_as_metadata_or_user() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(mock.port(), DECLARED, "")).await;
    let mut b = with_metadata(json!({"order": "42", "use_case": "eval"}));
    b["model"] = json!("fwd");
    let r = post(&gw, KEY_B, Some("use_case=batch"), &b, "fwd-meta").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.last().unwrap().json();
    assert_eq!(seen["model"], "fwd-1");
    assert_eq!(
        seen["metadata"],
        json!({"order": "42", "use_case": "batch"})
    );
    assert_eq!(seen["messages"], body()["messages"]);
    let r = post(
        &gw,
        KEY_B,
        Some("priority=batch,use_case=eval"),
        &with_model("fwd_user"),
        "fwd-user",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = mock.last().unwrap().json();
    assert_eq!(seen["user"], "priority=batch,use_case=eval");
    assert_eq!(seen.get("metadata"), None);
    // Without `forward_tags` nothing is added.
    let r = post(&gw, KEY_B, Some("use_case=batch"), &body(), "no-fwd").await;
    assert_eq!(r.status, 200);
    let seen = mock.last().unwrap().json();
    assert_eq!((seen.get("metadata"), seen.get("user")), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_limited_to_a_subset_gets_400_outside_it_and_its_default_inside() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(mock.port(), DECLARED, "")).await;
    let r = post(&gw, KEY_C, Some("use_case=summarize"), &body(), "outside").await;
    let v = assert_error(
        r.status,
        r.body.to_string().as_bytes(),
        (400, "invalid_request_error", "invalid_request"),
    );
    assert_eq!(
        v["error"]["message"],
        "This key may not use `summarize` for the tag `use_case`."
    );
    let r = post(
        &gw,
        KEY_C,
        None,
        &with_metadata(json!({"use_case": "eval"})),
        "outside-meta",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "metadata");
    assert_eq!(mock.hits(), 0);
    assert_eq!(
        post(&gw, KEY_C, Some("use_case=batch"), &body(), "inside")
            .await
            .status,
        200
    );
    assert_eq!(post(&gw, KEY_C, None, &body(), "default").await.status, 200);
    assert_eq!(
        gw.access_line("default").await["tags"],
        json!({"use_case": "batch"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_stay_bounded_under_random_tag_values() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let other = DECLARED.replace("workloads:\n", "workloads:\n  unknown: other\n");
    let gw = Gateway::start(&config(mock.port(), &other, "")).await;
    let r = post(&gw, KEY_B, Some("use_case=first-one"), &body(), "r-0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        gw.access_line("r-0").await["tags"],
        json!({"use_case": "other"})
    );
    gw.wait_metric(
        "tollgate_workload_requests_total",
        &[("value", "other")],
        1.0,
    )
    .await;
    // requests (one status class) 1, tokens (input, output, cached_input,
    // reasoning) 4, cost 1, duration 15 buckets + +Inf + sum + count 18.
    let want = 1 + 4 + 1 + 18;
    assert_eq!(
        series_count(&gw.metrics_text().await, "tollgate_workload_"),
        want
    );
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 1..=200 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let tags = format!("use_case=v{seed:x}");
        let r = post(&gw, KEY_B, Some(&tags), &body(), &format!("r-{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    gw.wait_metric(
        "tollgate_workload_requests_total",
        &[("value", "other")],
        201.0,
    )
    .await;
    let m = gw.metrics_text().await;
    assert_eq!(series_count(&m, "tollgate_workload_"), want, "{m}");
    // A value that is not a tag name at all is still refused.
    let r = post(&gw, KEY_B, Some("use_case=a b"), &body(), "r-bad").await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_workload_sends_batch_to_the_cheap_route_and_interactive_to_the_fast_one() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(mock.port(), DECLARED, "")).await;
    for i in 0..3 {
        let rid = format!("batch-{i}");
        let r = post(
            &gw,
            KEY_B,
            Some("priority=batch"),
            &with_model("routed"),
            &rid,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["model"], "cheap-1");
        let line = gw.access_line(&rid).await;
        assert_eq!(line["strategy"], "cost");
        assert_eq!(line["route"], "cheap");
        let rid = format!("interactive-{i}");
        let r = post(
            &gw,
            KEY_B,
            Some("priority=interactive"),
            &with_model("routed"),
            &rid,
        )
        .await;
        assert_eq!(r.body["model"], "fast-1");
        let line = gw.access_line(&rid).await;
        assert_eq!(line["strategy"], "fallback");
        assert_eq!(line["candidates"], json!(["fast", "cheap"]));
    }
    let models: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.json()["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(models, ["cheap-1", "fast-1"].repeat(3));

    // A route reserved for interactive: skipped for batch (logged like a
    // tier), used for interactive, and not for a request without the tag.
    let r = post(
        &gw,
        KEY_B,
        Some("priority=batch"),
        &with_model("gated"),
        "gated-batch",
    )
    .await;
    assert_eq!(r.body["model"], "basic-1");
    let line = gw.access_line("gated-batch").await;
    assert_eq!(line["skipped"], json!(["premium:workload"]));
    let r = post(&gw, KEY_B, None, &with_model("gated"), "gated-none").await;
    assert_eq!(r.body["model"], "basic-1");
    let r = post(
        &gw,
        KEY_B,
        Some("priority=interactive"),
        &with_model("gated"),
        "gated-int",
    )
    .await;
    assert_eq!(r.body["model"], "premium-1");
    assert_eq!(gw.access_line("gated-int").await["skipped"], Value::Null);
    gw.wait_metric(
        "tollgate_route_skipped_total",
        &[("route", "premium"), ("reason", "workload")],
        2.0,
    )
    .await;
}

/// The budget test on either store: bob's `priority=batch` may spend one
/// request's worth a day; alice's team gives batch a quarter of its budget
/// (the same amount). Past it batch gets 429 while interactive goes on.
async fn batch_budget_refuses_batch_only(gw: &Gateway, mock: &MockUpstream) {
    for key in [KEY_A, KEY_B] {
        let r = post(gw, key, Some("priority=batch"), &body(), "b1").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = post(gw, key, Some("priority=batch"), &body(), "b2").await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "insufficient_quota");
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.contains("workload `priority=batch`"), "{msg}");
        for _ in 0..3 {
            let r = post(gw, key, Some("priority=interactive"), &body(), "i").await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        let r = post(gw, key, None, &body(), "n").await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(
        mock.hits(),
        2 * 5,
        "refused requests never reach the upstream"
    );
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_limit_rejections_total",
            &[("level", "key_workload"), ("reason", "budget_usd")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_limit_rejections_total",
            &[("level", "team_workload"), ("reason", "budget_usd")]
        ),
        Some(1.0)
    );
}

/// Key dave: one `use_case=eval` request per minute.
fn dave_key() -> &'static str {
    "  - { name: dave, key: \"tg-key-dave-0004\", workload_limits: { \"use_case=eval\": { limits: { rpm: 1 } } } }"
}

/// `config` with bob's batch budget (inserted into his key line).
fn budget_config(port: u16, extra: &str) -> String {
    config(port, DECLARED, extra).replace(
        &format!("{{ name: bob, key: \"{KEY_B}\" }}"),
        &format!(
            "{{ name: bob, key: \"{KEY_B}\", workload_limits: {{ \"priority=batch\": {{ budgets: [ {{ usd: {}, window: day }} ] }} }} }}\n{}",
            one_request_budget(),
            dave_key()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_budget_refuses_batch_while_interactive_keeps_working() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&budget_config(mock.port(), "")).await;
    batch_budget_refuses_batch_only(&gw, &mock).await;
    // A workload rpm: dave's second eval request in the minute is refused.
    const KEY_D: &str = "tg-key-dave-0004";
    assert_eq!(
        post(&gw, KEY_D, Some("use_case=eval"), &body(), "d1")
            .await
            .status,
        200
    );
    let r = post(&gw, KEY_D, Some("use_case=eval"), &body(), "d2").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        post(&gw, KEY_D, Some("use_case=batch"), &body(), "d3")
            .await
            .status,
        200
    );
    let m = gw.metrics_text().await;
    let left = sample(
        &m,
        "tollgate_budget_remaining",
        &[
            ("level", "key_workload"),
            ("name", "bob#priority=batch"),
            ("unit", "usd"),
        ],
    )
    .unwrap();
    let want = one_request_budget() - (PROMPT + COMPLETION) as f64 * PER_TOKEN;
    assert!((left - want).abs() < 1e-9, "{left} != {want}");
    // bob's usage view splits his spend by workload too.
    let u = admin_get(&gw, "/admin/keys/bob/usage?window=day").await;
    assert_eq!(
        u["usage"]["tags"]["priority"]["batch"]["current"]["requests"], 1,
        "{u}"
    );
    assert_eq!(
        u["usage"]["tags"]["priority"]["interactive"]["current"]["tokens"],
        3 * 8,
        "{u}"
    );
    assert_eq!(u["usage"]["current"]["requests"], 5, "{u}");
    // The budgets show in /admin/limits under their own level.
    let l = admin_get(&gw, "/admin/limits").await;
    let text = l.to_string();
    assert!(text.contains("bob#priority=batch"), "{text}");
    assert!(text.contains("research#priority=batch"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_budget_refuses_batch_on_redis_too() {
    let redis = support::redis::Redis::start();
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let extra = format!(
        "limits_store: {{ redis: {{ url: \"{}\" }} }}\n",
        redis.url()
    );
    let yaml = budget_config(mock.port(), &extra);
    let gw = Gateway::start(&yaml).await;
    batch_budget_refuses_batch_only(&gw, &mock).await;
    // A second gateway on the same Redis sees the spent batch budget.
    let gw2 = Gateway::start(&yaml).await;
    let r = post(&gw2, KEY_B, Some("priority=batch"), &body(), "b3").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(
        post(&gw2, KEY_B, Some("priority=interactive"), &body(), "i2")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_survive_a_reload_and_follow_the_new_declaration() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let before =
        "workloads:\n  tags: { use_case: [summarize, batch], priority: [interactive, batch] }\n";
    let gw = Gateway::start(&config(mock.port(), before, "")).await;
    let r = post(&gw, KEY_B, Some("use_case=batch"), &body(), "pre").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        gw.access_line("pre").await["tags"],
        json!({"use_case": "batch"})
    );
    assert_eq!(
        post(&gw, KEY_B, Some("use_case=eval"), &body(), "pre-eval")
            .await
            .status,
        400
    );

    let after = "workloads:\n  tags: { use_case: [batch, eval], priority: [interactive, batch] }\n";
    gw.write_config(&config(mock.port(), after, ""));
    gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = gw.metrics_text().await;
        if sample(
            &m,
            "tollgate_config_reloads_total",
            &[("result", "success")],
        ) == Some(1.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no reload; log:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (tags, rid) in [
        ("use_case=eval", "post-eval"),
        ("use_case=batch", "post-batch"),
    ] {
        let r = post(&gw, KEY_B, Some(tags), &body(), rid).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(
        gw.access_line("post-eval").await["tags"],
        json!({"use_case": "eval"})
    );
    assert_eq!(
        gw.access_line("post-batch").await["tags"],
        json!({"use_case": "batch"})
    );
    let r = post(&gw, KEY_B, Some("use_case=summarize"), &body(), "post-sum").await;
    assert_eq!(r.status, 400, "summarize is no longer declared");

    // A bad workloads section never replaces the good one.
    let bad = "workloads:\n  tags: { use_case: [batch, other], priority: [interactive, batch] }\n";
    gw.write_config(&config(mock.port(), bad, ""));
    gw.sighup();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = gw.metrics_text().await;
        if sample(&m, "tollgate_config_reloads_total", &[("result", "failed")]) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed reload; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gw.logs().contains("workloads.tags.use_case[1]"),
        "{}",
        gw.logs()
    );
    assert_eq!(
        post(&gw, KEY_B, Some("use_case=eval"), &body(), "kept")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_workload_field() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let cases = [
        (
            "workloads:\n  tags: { use_case: [batch] }\n  metrics: { requests: [team] }\n",
            "workloads.metrics.requests[0]",
        ),
        (
            "workloads:\n  tags: { \"bad key\": [x] }\n",
            "workloads.tags.bad key",
        ),
        (
            "workloads:\n  tags: { use_case: [batch] }\n  colour: red\n",
            "unknown field `colour`",
        ),
    ];
    for (section, field) in cases {
        let yaml = config(mock.port(), section, "");
        let mut gw = Gateway::spawn_with_env(&yaml, &[]);
        let status = gw.wait_exit(Duration::from_secs(20)).await.expect("exits");
        assert!(!status.success());
        assert!(gw.logs().contains(field), "{field}:\n{}", gw.logs());
    }
    // The test config's own workload fields fail without `workloads`.
    let mut gw = Gateway::spawn_with_env(&config(mock.port(), "", ""), &[]);
    assert!(gw.wait_exit(Duration::from_secs(20)).await.is_some());
    let logs = gw.logs();
    for field in [
        "models.routed.by_workload.tag",
        "models.gated.routes[0].workloads.priority",
        "teams.research.workload_limits.priority=batch",
        "keys[2].tags.use_case",
        "keys[2].allowed_tags.use_case",
    ] {
        assert!(logs.contains(field), "{field}:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_span_carries_the_request_tags() {
    let rx = support::otlp::OtlpReceiver::start().await;
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let tracing = format!(
        "tracing: {{ endpoint: \"{}\", export_interval: 50ms }}\n",
        rx.endpoint()
    );
    let gw = Gateway::start(&config(mock.port(), DECLARED, &tracing)).await;
    let r = post(
        &gw,
        KEY_B,
        Some("use_case=eval,priority=batch"),
        &body(),
        "traced",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        post(&gw, KEY_B, None, &body(), "traced-none").await.status,
        200
    );
    let spans = rx
        .wait(Duration::from_secs(20), |all| {
            ["traced", "traced-none"].iter().all(|rid| {
                all.iter()
                    .any(|s| s.str("tollgate.request_id") == Some(rid))
            })
        })
        .await;
    let server = |rid: &str| {
        spans
            .iter()
            .find(|s| s.str("tollgate.request_id") == Some(rid))
            .cloned()
            .unwrap_or_else(|| panic!("no span of {rid}: {spans:#?}"))
    };
    let s = server("traced");
    assert_eq!(s.kind, support::otlp::SERVER);
    assert_eq!(s.str("tollgate.tag.use_case"), Some("eval"));
    assert_eq!(s.str("tollgate.tag.priority"), Some("batch"));
    let none = server("traced-none");
    assert!(
        none.attributes
            .keys()
            .all(|k| !k.starts_with("tollgate.tag.")),
        "{none:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_concurrency_slot_holds_only_its_own_workload() {
    let mock = MockUpstream::start(Behavior::ChatEcho).await;
    let gate = support::Gate::new();
    let held = MockUpstream::start(Behavior::held_sse("slow-1", &gate)).await;
    let yaml = config(mock.port(), DECLARED, "")
        .replace(
            "models:\n  m:\n",
            "models:\n  slow:\n    routes: [ { provider: held, model: slow-1 } ]\n  m:\n",
        )
        .replace(
            "providers:\n",
            &format!(
                "providers:\n  held:\n    kind: openai\n    base_url: \"http://127.0.0.1:{}/v1\"\n    api_key: \"sk-up\"\n    health_check: {{ enabled: false }}\n",
                held.port()
            ),
        )
        .replace(
            &format!("{{ name: bob, key: \"{KEY_B}\" }}"),
            &format!(
                "{{ name: bob, key: \"{KEY_B}\", workload_limits: {{ \"use_case=eval\": {{ limits: {{ concurrency: 1 }} }} }} }}"
            ),
        );
    let gw = Gateway::start(&yaml).await;
    let mut slow = with_model("slow");
    slow["stream"] = json!(true);
    let url = gw.url("/v1/chat/completions");
    let first = tokio::spawn(async move {
        support::client()
            .post(url)
            .header("authorization", format!("Bearer {KEY_B}"))
            .header("content-type", "application/json")
            .header("x-tollgate-tags", "use_case=eval")
            .body(slow.to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(held.wait_hits(1, Duration::from_secs(20)).await);
    let r = post(&gw, KEY_B, Some("use_case=eval"), &body(), "second-eval").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "rate_limit_exceeded");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("key workload `use_case=eval`'s limit of 1 concurrent requests"),
        "{}",
        r.body
    );
    assert_eq!(
        post(&gw, KEY_B, Some("use_case=batch"), &body(), "batch")
            .await
            .status,
        200
    );
    gate.open(100);
    let streamed = first.await.unwrap();
    assert!(streamed.contains("[DONE]"), "{streamed}");
    // The slot is back once the stream ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&gw, KEY_B, Some("use_case=eval"), &body(), "third-eval").await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mock.hits(), 2);
}
