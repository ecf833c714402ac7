//! The response cache end to end: the real gateway binary in front of a
//! mock upstream that counts what reaches it (issue 18). Hits and misses
//! by exact and reordered bodies, isolation across keys and teams, TTL
//! expiry, the bypass header, stream replay byte for byte, errors and cut
//! streams never stored, the size bound, reload, rate limits and budgets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::prom::{sample, sum};
use support::{Behavior, Gateway, MockUpstream, Reply, ReplyBody};

const ALICE: &str = "tg-cache-alice-0001";
const BOB: &str = "tg-cache-bob-00002";
const CAROL: &str = "tg-cache-carol-0003";

/// Provider `up` at `port`; aliases `k`, `t` and `g` (scopes key, team and
/// global) with `extra` added to each alias's cache map; alice and bob in
/// team red, carol in team blue. `top`: more top-level YAML.
fn config(port: u16, extra: &str, top: &str) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
providers:
  up:
    kind: openai
    base_url: "http://127.0.0.1:{port}/v1"
    api_key: "sk-up"
    health_check: {{ enabled: false }}
    retry: {{ attempts: 1, on_status: [] }}
    breaker: {{ enabled: false }}
models:
  k:
    routes: [ {{ provider: up, model: m1, price: {{ input: 1000, output: 1000 }} }} ]
    cache: {{ ttl: 10m {extra} }}
  t:
    routes: [ {{ provider: up, model: m1 }} ]
    cache: {{ ttl: 10m, scope: team {extra} }}
  g:
    routes: [ {{ provider: up, model: m1 }} ]
    cache: {{ ttl: 10m, scope: global {extra} }}
  plain:
    routes: [ {{ provider: up, model: m1 }} ]
teams:
  red: {{}}
  blue: {{}}
keys:
  - {{ name: alice, key: "{ALICE}", team: red }}
  - {{ name: bob, key: "{BOB}", team: red }}
  - {{ name: carol, key: "{CAROL}", team: blue }}
{top}
"#
    )
}

/// A chat completion (usage 7 in, 5 out) numbered by the upstream's
/// request count, so every upstream answer differs from the last.
fn numbered() -> Behavior {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Behavior::func(move |rec| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stream = rec.json()["stream"] == json!(true);
        if stream {
            return Reply::sse(stream_events(i, true), Duration::from_millis(1));
        }
        Reply::json(
            200,
            json!({
                "id": format!("c{i}"), "object": "chat.completion", "created": 1, "model": "m1",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("answer {i}")},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
            })
            .to_string(),
        )
    })
}

/// A chat stream numbered `i`, with its usage chunk when `usage`.
fn stream_events(i: usize, usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": format!("s{i}"), "object": "chat.completion.chunk", "created": 1,
                   "model": "m1", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    let mut out = vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(
            json!({"content": format!("part one of {i}, ")}),
            Value::Null,
        ),
        chunk(json!({"content": "part two"}), Value::Null),
        chunk(json!({}), json!("stop")),
    ];
    if usage {
        out.push(format!(
            "data: {}\n\n",
            json!({"id": format!("s{i}"), "object": "chat.completion.chunk", "created": 1,
                   "model": "m1", "choices": [],
                   "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})
        ));
    }
    out.push("data: [DONE]\n\n".into());
    out
}

fn chat(model: &str, content: &str) -> Value {
    json!({
        "model": model,
        "temperature": 0,
        "messages": [{"role": "user", "content": content}],
    })
}

/// One finished response.
struct Resp {
    status: u16,
    cache: Option<String>,
    request_id: String,
    body: Bytes,
}

async fn send_raw(gw: &Gateway, key: &str, body: &str, cache_control: Option<&str>) -> Resp {
    let mut req = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json");
    if let Some(cc) = cache_control {
        req = req.header("cache-control", cc);
    }
    let resp = req
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()));
    let status = resp.status().as_u16();
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let cache = h("x-tollgate-cache");
    let request_id = h("x-request-id").unwrap_or_default();
    let mut body = Vec::new();
    let mut s = resp.bytes_stream();
    while let Some(Ok(b)) = s.next().await {
        body.extend_from_slice(&b);
    }
    Resp {
        status,
        cache,
        request_id,
        body: Bytes::from(body),
    }
}

/// A request of alice's to `path` (any endpoint).
async fn send_to(gw: &Gateway, path: &str, body: &Value) -> Resp {
    let resp = support::client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {ALICE}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()));
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-tollgate-cache")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.bytes().await.unwrap_or_default();
    Resp {
        status,
        cache,
        request_id: String::new(),
        body,
    }
}

async fn send(gw: &Gateway, key: &str, body: &Value) -> Resp {
    send_raw(gw, key, &body.to_string(), None).await
}

/// Sends and checks the status and the cache header.
async fn expect(gw: &Gateway, key: &str, body: &Value, mark: &str) -> Resp {
    let r = send(gw, key, body).await;
    assert_eq!(r.status, 200, "{}; log:\n{}", text(&r), gw.logs());
    assert_eq!(r.cache.as_deref(), Some(mark), "{}", text(&r));
    r
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Waits until the gateway counted `n` requests in all (the logging phase,
/// which stores a miss's answer, runs just after the client has it).
async fn settled(gw: &Gateway, n: f64) {
    gw.wait_metric(
        "tollgate_requests_total",
        &[("endpoint", "chat_completions")],
        n,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_needs_the_same_body_up_to_key_order_and_whitespace() {
    let up = MockUpstream::start(numbered()).await;
    let gw = Gateway::start(&config(up.port(), "", "")).await;
    let first = expect(&gw, ALICE, &chat("k", "hello"), "miss").await;
    settled(&gw, 1.0).await;
    let again = expect(&gw, ALICE, &chat("k", "hello"), "hit").await;
    assert_eq!(again.body, first.body, "the stored answer, byte for byte");
    assert_eq!(up.hits(), 1, "a hit sends nothing upstream");
    // The same request with keys reordered and whitespace added.
    let reordered = "{ \"messages\" : [ {\"content\": \"hello\", \"role\": \"user\"} ],\n  \"temperature\": 0, \"model\": \"k\" }";
    let r = send_raw(&gw, ALICE, reordered, None).await;
    assert_eq!((r.status, r.cache.as_deref()), (200, Some("hit")));
    assert_eq!(r.body, first.body);
    // Another body: a miss.
    let other = expect(&gw, ALICE, &chat("k", "hello!"), "miss").await;
    assert_ne!(other.body, first.body);
    let mut t = chat("k", "hello");
    t["temperature"] = json!(1);
    expect(&gw, ALICE, &t, "miss").await;
    assert_eq!(up.hits(), 3);
    // An alias without a cache: no header, no work.
    let r = send(&gw, ALICE, &chat("plain", "hello")).await;
    assert_eq!((r.status, r.cache), (200, None));

    settled(&gw, 6.0).await;
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(&m, "tollgate_cache_hits_total", &[("request_model", "k")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, "tollgate_cache_misses_total", &[("request_model", "k")]),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_cache_saved_tokens_total",
            &[("request_model", "k"), ("token_type", "input")]
        ),
        Some(14.0)
    );
    assert_eq!(
        sample(
            &m,
            "tollgate_cache_saved_tokens_total",
            &[("request_model", "k"), ("token_type", "output")]
        ),
        Some(10.0)
    );
    // $1000 per million: 12 tokens cost 0.012 USD, twice saved.
    let saved = sample(
        &m,
        "tollgate_cache_saved_usd_total",
        &[("request_model", "k")],
    )
    .unwrap();
    assert!((saved - 0.024).abs() < 1e-9, "{saved}");
    // Hits cost no provider tokens and no spend.
    assert_eq!(
        sum(
            &m,
            "tollgate_tokens_total",
            &[("request_model", "k"), ("token_type", "input")]
        ),
        21.0,
        "three misses of 7 prompt tokens"
    );
    assert_eq!(
        sum(&m, "tollgate_tokens_total", &[("usage_source", "cache")]),
        0.0
    );
    let cost = sum(&m, "tollgate_cost_usd_total", &[("request_model", "k")]);
    assert!((cost - 0.036).abs() < 1e-9, "{cost}");

    let line = gw.access_line(&again.request_id).await;
    assert_eq!(line["cache"], "hit", "{line}");
    assert_eq!(line["usage_source"], "cache", "{line}");
    assert_eq!(line["prompt_tokens"], 7, "{line}");
    assert_eq!(line["cost_usd"], Value::Null, "{line}");
    assert_eq!(line["provider"], "-", "no provider answered: {line}");
    let line = gw.access_line(&first.request_id).await;
    assert_eq!(line["cache"], "miss", "{line}");
    assert_eq!(line["usage_source"], "reported", "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_teams_see_only_what_their_scope_shares() {
    let up = MockUpstream::start(numbered()).await;
    let gw = Gateway::start(&config(up.port(), "", "")).await;
    let q = |alias: &str| chat(alias, "what is two plus two?");
    // scope: key — bob (same team) never gets alice's answer.
    let a = expect(&gw, ALICE, &q("k"), "miss").await;
    settled(&gw, 1.0).await;
    let b = expect(&gw, BOB, &q("k"), "miss").await;
    assert_ne!(a.body, b.body);
    settled(&gw, 2.0).await;
    assert_eq!(expect(&gw, ALICE, &q("k"), "hit").await.body, a.body);
    assert_eq!(expect(&gw, BOB, &q("k"), "hit").await.body, b.body);
    // scope: team — bob shares alice's, carol (another team) does not.
    let a = expect(&gw, ALICE, &q("t"), "miss").await;
    settled(&gw, 5.0).await;
    assert_eq!(expect(&gw, BOB, &q("t"), "hit").await.body, a.body);
    let c = expect(&gw, CAROL, &q("t"), "miss").await;
    assert_ne!(
        c.body, a.body,
        "a second key in another team never gets the first key's answer"
    );
    // scope: global — everyone.
    let a = expect(&gw, ALICE, &q("g"), "miss").await;
    settled(&gw, 8.0).await;
    assert_eq!(expect(&gw, CAROL, &q("g"), "hit").await.body, a.body);
    // A different `user` is a different request, whatever the scope.
    let mut u = q("g");
    u["user"] = json!("someone-else");
    expect(&gw, CAROL, &u, "miss").await;
    assert_eq!(up.hits(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_expires_after_its_ttl() {
    let up = MockUpstream::start(numbered()).await;
    let cfg = config(up.port(), "", "").replace("ttl: 10m", "ttl: 2s");
    let gw = Gateway::start(&cfg).await;
    let body = chat("k", "short-lived");
    let first = expect(&gw, ALICE, &body, "miss").await;
    let stored = Instant::now();
    settled(&gw, 1.0).await;
    let r = send(&gw, ALICE, &body).await;
    if stored.elapsed() < Duration::from_millis(1500) {
        // Well within the ttl (a loaded machine may take longer: then the
        // answer may already have expired, and nothing is asserted).
        assert_eq!(r.cache.as_deref(), Some("hit"));
        assert_eq!(r.body, first.body);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = expect(&gw, ALICE, &body, "miss").await;
    assert_ne!(late.body, first.body, "a fresh answer after the ttl");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_bypasses_and_no_store_stores_nothing() {
    let up = MockUpstream::start(numbered()).await;
    let gw = Gateway::start(&config(up.port(), "", "")).await;
    let a = chat("k", "question a").to_string();
    let first = send_raw(&gw, ALICE, &a, None).await;
    assert_eq!(first.cache.as_deref(), Some("miss"));
    settled(&gw, 1.0).await;
    // no-cache: served fresh (not from the cache) and stored in its place.
    let fresh = send_raw(&gw, ALICE, &a, Some("no-cache")).await;
    assert_eq!(
        (fresh.status, fresh.cache.as_deref()),
        (200, Some("bypass"))
    );
    assert_ne!(fresh.body, first.body, "not the cached answer");
    settled(&gw, 2.0).await;
    let r = send_raw(&gw, ALICE, &a, None).await;
    assert_eq!(r.cache.as_deref(), Some("hit"));
    assert_eq!(r.body, fresh.body, "the refreshed answer");
    // no-store (with other directives): neither read nor written.
    let b = chat("k", "question b").to_string();
    let r = send_raw(&gw, ALICE, &b, Some("max-age=0, No-Store")).await;
    assert_eq!((r.status, r.cache.as_deref()), (200, Some("bypass")));
    settled(&gw, 4.0).await;
    let r = send_raw(&gw, ALICE, &b, None).await;
    assert_eq!(r.cache.as_deref(), Some("miss"), "no-store stored nothing");
    assert_eq!(up.hits(), 4);
    settled(&gw, 5.0).await;
    let m = gw.metrics_text().await;
    assert_eq!(
        sample(
            &m,
            "tollgate_cache_bypasses_total",
            &[("request_model", "k")]
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_stream_replays_the_client_visible_stream_byte_for_byte() {
    let up = MockUpstream::start(numbered()).await;
    let gw = Gateway::start(&config(up.port(), "", "")).await;
    // Without include_usage: the gateway asks for usage upstream and drops
    // the usage chunk from what the client sees; the replay drops it too.
    let mut body = chat("k", "stream me");
    body["stream"] = json!(true);
    let first = expect(&gw, ALICE, &body, "miss").await;
    assert!(
        text(&first).ends_with("data: [DONE]\n\n"),
        "{}",
        text(&first)
    );
    assert!(!text(&first).contains("prompt_tokens"), "{}", text(&first));
    settled(&gw, 1.0).await;
    let replay = expect(&gw, ALICE, &body, "hit").await;
    assert_eq!(
        text(&replay),
        text(&first),
        "the same client-visible stream"
    );
    // With include_usage: another request, whose stream has the usage chunk.
    body["stream_options"] = json!({"include_usage": true});
    let first = expect(&gw, ALICE, &body, "miss").await;
    assert!(
        text(&first).contains("\"prompt_tokens\":7"),
        "{}",
        text(&first)
    );
    settled(&gw, 3.0).await;
    let replay = expect(&gw, ALICE, &body, "hit").await;
    assert_eq!(text(&replay), text(&first));
    assert_eq!(up.hits(), 2);
    let line = gw.access_line(&replay.request_id).await;
    assert_eq!(
        (line["cache"].as_str(), line["stream"].as_bool()),
        (Some("hit"), Some(true)),
        "{line}"
    );
    assert_eq!(line["completion_tokens"], 5, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_cut_streams_and_unread_usage_are_never_stored() {
    let up = MockUpstream::start(Behavior::json(
        500,
        r#"{"error":{"message":"boom","type":"server_error"}}"#,
    ))
    .await;
    let gw = Gateway::start(&config(up.port(), "", "")).await;
    let body = chat("k", "fails");
    for i in 0..2 {
        let r = send(&gw, ALICE, &body).await;
        assert!(r.status >= 500, "{}", text(&r));
        settled(&gw, f64::from(i + 1)).await;
    }
    assert_eq!(up.hits(), 2, "an error is not stored");

    // A stream that ends without its end marker.
    let mut events = stream_events(0, true);
    events.pop();
    up.set_behavior(Behavior::sse(events, Duration::from_millis(1)));
    let mut s = chat("k", "cut");
    s["stream"] = json!(true);
    for i in 0..2 {
        let r = send(&gw, ALICE, &s).await;
        assert_eq!(r.cache.as_deref(), Some("miss"));
        settled(&gw, f64::from(i + 3)).await;
    }
    assert_eq!(up.hits(), 4, "a cut stream is not stored");

    // A complete stream without usage: its counts were estimated.
    up.set_behavior(Behavior::sse(
        stream_events(1, false),
        Duration::from_millis(1),
    ));
    let mut s = chat("k", "no usage");
    s["stream"] = json!(true);
    for i in 0..2 {
        let r = send(&gw, ALICE, &s).await;
        assert_eq!((r.status, r.cache.as_deref()), (200, Some("miss")));
        settled(&gw, f64::from(i + 5)).await;
    }
    assert_eq!(
        up.hits(),
        6,
        "an answer whose usage was not reported is not stored"
    );

    // A body cut short (fewer bytes than its Content-Length is not
    // possible with this mock: a chunked body that is not JSON instead).
    up.set_behavior(Behavior::func(|_| Reply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: ReplyBody::Chunks(
            vec![Bytes::from_static(b"{\"id\":\"x\",\"choi")],
            Duration::ZERO,
        ),
    }));
    let b = chat("k", "broken body");
    for i in 0..2 {
        send(&gw, ALICE, &b).await;
        settled(&gw, f64::from(i + 7)).await;
    }
    assert_eq!(up.hits(), 8, "an unreadable body is not stored");

    // Over max_entry_bytes: served, not stored.
    let big = "x".repeat(3000);
    up.set_behavior(Behavior::json(
        200,
        json!({"id": "big", "object": "chat.completion", "created": 1, "model": "m1",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": big}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        .to_string(),
    ));
    let cfg = config(up.port(), ", max_entry_bytes: 2000", "");
    drop(gw);
    let gw = Gateway::start(&cfg).await;
    let b = chat("k", "big answer");
    for i in 0..2 {
        let r = expect(&gw, ALICE, &b, "miss").await;
        assert!(r.body.len() > 3000);
        settled(&gw, f64::from(i + 1)).await;
    }
    assert_eq!(
        up.hits(),
        10,
        "an answer over max_entry_bytes is not stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_size_bound_holds_under_thousands_of_distinct_requests() {
    let up = MockUpstream::start(numbered()).await;
    let max = 64 * 1024;
    let cfg = config(
        up.port(),
        ", max_entry_bytes: 4096",
        &format!("cache: {{ max_bytes: {max} }}"),
    );
    let gw = Gateway::start(&cfg).await;
    let n = 2000usize;
    let url = gw.url("/v1/chat/completions");
    let mut tasks = Vec::new();
    for worker in 0..8usize {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = support::client();
            for i in (worker..n).step_by(8) {
                let resp = client
                    .post(&url)
                    .header("authorization", format!("Bearer {ALICE}"))
                    .body(chat("k", &format!("request number {i}")).to_string())
                    .send()
                    .await
                    .expect("request");
                assert_eq!(resp.status().as_u16(), 200);
                let _ = resp.bytes().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    settled(&gw, n as f64).await;
    let m = gw.metrics_text().await;
    let bytes = sample(&m, "tollgate_cache_bytes", &[]).unwrap();
    let entries = sample(&m, "tollgate_cache_entries", &[]).unwrap();
    let evicted = sample(&m, "tollgate_cache_evictions_total", &[]).unwrap();
    assert!(bytes <= max as f64, "{bytes} bytes > {max}");
    assert!(bytes > (max / 2) as f64, "{bytes}: the cache was used");
    assert!(entries > 10.0 && entries < n as f64, "{entries}");
    assert_eq!(
        entries + evicted,
        n as f64,
        "every answer stored, the oldest evicted"
    );
    // The most recent is still there; the first is long gone.
    expect(
        &gw,
        ALICE,
        &chat("k", &format!("request number {}", n - 1)),
        "hit",
    )
    .await;
    expect(&gw, ALICE, &chat("k", "request number 0"), "miss").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_cache_unless_the_alias_cache_settings_change() {
    let up = MockUpstream::start(numbered()).await;
    let cfg = config(up.port(), "", "");
    let gw = Gateway::start(&cfg).await;
    let body = chat("k", "keep me");
    let first = expect(&gw, ALICE, &body, "miss").await;
    settled(&gw, 1.0).await;
    // Another setting changes (a route header), the cache's do not.
    gw.write_config(&cfg.replace("models:\n", "route_header: x-served-by\nmodels:\n"));
    reload(&gw, 1.0).await;
    let r = expect(&gw, ALICE, &body, "hit").await;
    assert_eq!(r.body, first.body, "kept across the reload");
    // The alias's cache settings change: its old entries are not served.
    let changed = cfg.replacen("cache: { ttl: 10m  }", "cache: { ttl: 9m }", 1);
    assert_ne!(changed, cfg);
    gw.write_config(&changed);
    reload(&gw, 2.0).await;
    let r = expect(&gw, ALICE, &body, "miss").await;
    assert_ne!(r.body, first.body);
}

async fn reload(gw: &Gateway, n: f64) {
    gw.sighup();
    let got = gw
        .wait_sample(
            "tollgate_config_reloads_total",
            &[("result", "success")],
            n,
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(got, Some(n), "reload; log:\n{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_count_against_rate_limits_unless_told_not_to() {
    let up = MockUpstream::start(numbered()).await;
    // alice may send 2 requests a minute.
    let limited = |cfg: String| {
        cfg.replace(
            &format!("{{ name: alice, key: \"{ALICE}\", team: red }}"),
            &format!("{{ name: alice, key: \"{ALICE}\", team: red, limits: {{ rpm: 2 }} }}"),
        )
    };
    let gw = Gateway::start(&limited(config(up.port(), "", ""))).await;
    let body = chat("k", "rate me");
    expect(&gw, ALICE, &body, "miss").await;
    settled(&gw, 1.0).await;
    expect(&gw, ALICE, &body, "hit").await;
    let r = send(&gw, ALICE, &body).await;
    assert_eq!(r.status, 429, "a hit counts by default: {}", text(&r));
    drop(gw);

    let gw = Gateway::start(&limited(config(up.port(), ", rate_limits: false", ""))).await;
    expect(&gw, ALICE, &body, "miss").await;
    settled(&gw, 1.0).await;
    for _ in 0..4 {
        expect(&gw, ALICE, &body, "hit").await;
    }
    // The two requests a minute are still there for misses.
    expect(&gw, ALICE, &chat("k", "another"), "miss").await;
    let r = send(&gw, ALICE, &chat("k", "a third")).await;
    assert_eq!(r.status, 429, "{}", text(&r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_charged_to_budgets_only_when_told_to() {
    let up = MockUpstream::start(numbered()).await;
    let budget = |cfg: String| {
        cfg.replace(
            &format!("{{ name: alice, key: \"{ALICE}\", team: red }}"),
            &format!("{{ name: alice, key: \"{ALICE}\", team: red, budgets: [ {{ tokens: 100000, window: day }} ] }}"),
        )
    };
    let remaining = |m: &str| {
        sample(
            m,
            "tollgate_budget_remaining",
            &[
                ("level", "key"),
                ("name", "alice"),
                ("unit", "tokens"),
                ("window", "day"),
            ],
        )
        .unwrap()
    };
    for (extra, charged) in [("", 0.0), (", budgets: true", 12.0)] {
        let gw = Gateway::start(&budget(config(up.port(), extra, ""))).await;
        let body = chat("k", "budget me");
        expect(&gw, ALICE, &body, "miss").await;
        settled(&gw, 1.0).await;
        let after_miss = remaining(&gw.metrics_text().await);
        assert_eq!(after_miss, 100000.0 - 12.0, "{extra}");
        expect(&gw, ALICE, &body, "hit").await;
        settled(&gw, 2.0).await;
        let after_hit = remaining(&gw.metrics_text().await);
        assert_eq!(after_miss - after_hit, charged, "{extra}");
    }
}

/// Answers each endpoint in its own shape, numbered like [`numbered`].
fn by_endpoint() -> Behavior {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Behavior::func(move |rec| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let stream = rec.json()["stream"] == json!(true);
        let response = |status: &str| {
            json!({"id": format!("resp_{i}"), "object": "response", "created_at": 1, "model": "m1",
                   "status": status, "output": [{"type": "message", "role": "assistant",
                   "content": [{"type": "output_text", "text": format!("answer {i}")}]}],
                   "usage": {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}})
        };
        match (rec.path.as_str(), stream) {
            ("/v1/embeddings", _) => Reply::json(
                200,
                json!({"object": "list", "model": "m1",
                       "data": [{"object": "embedding", "index": 0, "embedding": [i as f64, 0.5]}],
                       "usage": {"prompt_tokens": 7, "total_tokens": 7}})
                .to_string(),
            ),
            ("/v1/completions", _) => Reply::json(
                200,
                json!({"id": format!("cmpl-{i}"), "object": "text_completion", "created": 1, "model": "m1",
                       "choices": [{"index": 0, "text": format!("answer {i}"), "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})
                .to_string(),
            ),
            ("/v1/responses", false) => Reply::json(200, response("completed").to_string()),
            ("/v1/responses", true) => {
                let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
                Reply::sse(
                    vec![
                        ev("response.created", json!({"type": "response.created", "response": response("in_progress")})),
                        ev("response.output_text.delta", json!({"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": format!("answer {i}")})),
                        ev("response.completed", json!({"type": "response.completed", "response": response("completed")})),
                    ],
                    Duration::from_millis(1),
                )
            }
            _ => Reply::json(404, "{}"),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_embeddings_and_responses_are_cached_too() {
    let up = MockUpstream::start(by_endpoint()).await;
    let gw = Gateway::start(&config(up.port(), "", "")).await;
    let cases = [
        ("/v1/embeddings", json!({"model": "k", "input": "embed me"})),
        (
            "/v1/completions",
            json!({"model": "k", "prompt": "complete me"}),
        ),
        ("/v1/responses", json!({"model": "k", "input": "respond"})),
        (
            "/v1/responses",
            json!({"model": "k", "input": "respond", "stream": true}),
        ),
    ];
    let mut done = 0.0;
    for (i, (path, body)) in cases.iter().enumerate() {
        let first = send_to(&gw, path, body).await;
        assert_eq!(
            (first.status, first.cache.as_deref()),
            (200, Some("miss")),
            "{path}: {}",
            text(&first)
        );
        done += 1.0;
        gw.wait_metric("tollgate_requests_total", &[("request_model", "k")], done)
            .await;
        let again = send_to(&gw, path, body).await;
        assert_eq!(
            (again.status, again.cache.as_deref()),
            (200, Some("hit")),
            "{path} {body}"
        );
        assert_eq!(again.body, first.body, "{path} {body}");
        done += 1.0;
        assert_eq!(up.hits(), i + 1, "{path} {body}");
    }
    // The same body on another endpoint is another request.
    let r = send_to(
        &gw,
        "/v1/completions",
        &json!({"model": "k", "input": "embed me"}),
    )
    .await;
    assert_eq!(r.cache.as_deref(), Some("miss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_store_is_shared_by_two_gateways() {
    let redis = support::redis::Redis::start();
    let up = MockUpstream::start(numbered()).await;
    let top = format!("cache: {{ redis: {{ url: \"{}\" }} }}", redis.url());
    let cfg = config(up.port(), "", &top);
    let a = Gateway::start(&cfg).await;
    let b = Gateway::start(&cfg).await;
    let body = chat("t", "shared question");
    let first = expect(&a, ALICE, &body, "miss").await;
    // The store is written in the background, after the answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.command(&["DBSIZE"]).as_deref() != Some(":1") {
        assert!(
            Instant::now() < deadline,
            "never stored: {:?}",
            redis.command(&["DBSIZE"])
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Bob (alice's team) on the other gateway gets the same answer.
    let r = expect(&b, BOB, &body, "hit").await;
    assert_eq!(r.body, first.body);
    assert_eq!(up.hits(), 1);
    // Under our prefix, expiring with the alias's ttl (10m), in Redis.
    let count = "return #redis.call('KEYS', 'tollgate:cache:*')";
    assert_eq!(redis.command(&["EVAL", count, "0"]).as_deref(), Some(":1"));
    let pttl = "return redis.call('PTTL', redis.call('RANDOMKEY'))";
    let ttl = redis.command(&["EVAL", pttl, "0"]).unwrap();
    let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "{ttl}");
    // Carol (another team) does not.
    expect(&b, CAROL, &body, "miss").await;
    // A stream is replayed from Redis byte for byte too.
    let mut s = chat("k", "shared stream");
    s["stream"] = json!(true);
    let first = expect(&a, ALICE, &s, "miss").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.command(&["DBSIZE"]).as_deref() != Some(":3") {
        assert!(
            Instant::now() < deadline,
            "never stored: {:?}",
            redis.command(&["DBSIZE"])
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(text(&expect(&b, ALICE, &s, "hit").await), text(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_request_is_served_as_a_miss() {
    let mut redis = support::redis::Redis::start();
    let up = MockUpstream::start(numbered()).await;
    let top = format!("cache: {{ redis: {{ url: \"{}\" }} }}", redis.url());
    let gw = Gateway::start(&config(up.port(), "", &top)).await;
    redis.kill();
    let body = chat("k", "redis is down");
    for i in 0..3 {
        let r = expect(&gw, ALICE, &body, "miss").await;
        assert!(text(&r).contains(&format!("answer {i}")), "{}", text(&r));
    }
    assert_eq!(up.hits(), 3, "every request went upstream");
    gw.wait_metric(
        "tollgate_cache_misses_total",
        &[("request_model", "k")],
        3.0,
    )
    .await;
    let m = gw.metrics_text().await;
    let errors = sum(
        &m,
        "tollgate_cache_store_errors_total",
        &[("store", "redis"), ("op", "get")],
    );
    assert!(
        errors >= 3.0,
        "every look-up failed and was counted: {errors}"
    );
    assert!(!m.contains(&redis.url()), "the URL is never in the metrics");
    // Back up: the cache works again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let fresh = chat("k", "redis is back");
    // Every miss's answer may be stored (in the background); a hit is one of them.
    let mut answers = Vec::new();
    loop {
        let r = send(&gw, ALICE, &fresh).await;
        assert_eq!(r.status, 200);
        if r.cache.as_deref() == Some("hit") {
            assert!(answers.contains(&r.body), "{}", text(&r));
            break;
        }
        answers.push(r.body);
        assert!(
            Instant::now() < deadline,
            "no hit once Redis is back; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
