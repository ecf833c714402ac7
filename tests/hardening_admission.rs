//! Issue 14, defect 5 (RELIABILITY row 42): a key over its limits gets its
//! 429 before the gateway reads, parses or tokenizes the body. Shown
//! without timing: the client sends only the header of a 32 MiB request,
//! and the 429 comes back although the body was never sent (the old order
//! waited for the body, then answered 408). Also the cap on the text the
//! tokenizer reads, at the cap and one byte past it, seen through the
//! reservation in `x-ratelimit-remaining-tokens`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::redis as redis_server;

use serde_json::{json, Value};
use std::time::Duration;
use support::{Behavior, Gateway, MockUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::accounting::estimate::{self, MAX_TOKENIZED_BYTES};
use tollgate::base::endpoint::Endpoint;

const RATE_KEY: &str = "tg-key-rate-00001";
const BUDGET_KEY: &str = "tg-key-budget-0001";
const SLOT_KEY: &str = "tg-key-slot-000001";
const TPM_KEY: &str = "tg-key-tpm-000001";
const BOTH_KEY: &str = "tg-key-both-00001";
const ADMIN_KEY: &str = "tg-admin-secret-000001";
const TPM: u64 = 10_000_000;
/// `max_body_bytes`' default: the largest body a client may announce.
const BIG: u64 = 32 * 1024 * 1024;

fn config(port: u16, store: &str) -> String {
    format!(
        r#"
listen: "{{LISTEN}}"
metrics_listen: "{{METRICS}}"
server: {{ pid_file: "{{TMP}}/t.pid", upgrade_sock: "{{TMP}}/u.sock" }}
admin_listen: "{{ADMIN}}"
admin_key: "{ADMIN_KEY}"
limits_store: {store}
downstream: {{ body_idle_timeout: 5s }}
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
      - {{ provider: up, model: m1 }}
  tight:
    limits: {{ tpm: 10 }}
    routes:
      - {{ provider: up, model: m1 }}
keys:
  - {{ name: both, key: "{BOTH_KEY}", limits: {{ rpm: 2, concurrency: 1 }} }}
  - {{ name: rate, key: "{RATE_KEY}", limits: {{ rpm: 1 }} }}
  - {{ name: budget, key: "{BUDGET_KEY}", budgets: [ {{ tokens: 50, window: day }} ] }}
  - {{ name: slot, key: "{SLOT_KEY}", limits: {{ concurrency: 1 }} }}
  - {{ name: tpm, key: "{TPM_KEY}", limits: {{ tpm: {TPM} }} }}
"#
    )
}

/// Reports the request's prompt as our tokenizer counts it (no
/// completion; 1000 tokens for a body with `"user": "burn"`), after
/// `delay`, as a stream when asked for one.
fn exact_usage(delay: Duration) -> Behavior {
    Behavior::func(move |req| {
        let prompt = if req.json()["user"] == "burn" {
            1000
        } else {
            estimate::prompt_tokens("m1", Endpoint::ChatCompletions, &req.body)
        };
        let usage =
            json!({"prompt_tokens": prompt, "completion_tokens": 0, "total_tokens": prompt});
        if req.json()["stream"] == true {
            let mut events = support::sse_chat_events("m1", 3);
            events.insert(
                events.len() - 1,
                format!(
                    "data: {}\n\n",
                    json!({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                           "model": "m1", "choices": [], "usage": usage})
                ),
            );
            return support::Reply::sse(events, delay);
        }
        let doc = json!({
            "id": "c1", "object": "chat.completion", "created": 1, "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": usage,
        })
        .to_string();
        support::Reply {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: support::ReplyBody::Chunks(vec![bytes::Bytes::from(doc)], delay),
        }
    })
}

fn small_body() -> String {
    json!({"model": "m", "max_tokens": 5,
           "messages": [{"role": "user", "content": "Count the sheep, please."}]})
    .to_string()
}

async fn post(gw: &Gateway, key: &str, body: String) -> reqwest::Response {
    gw.http()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request")
}

/// Sends only the header of a request announcing a [`BIG`] body (plus
/// `extra` header lines), never a byte of the body, and reads the answer.
/// Returns the status, the header block and the body.
async fn header_only(gw: &Gateway, key: &str, extra: &str) -> (u16, String, Value) {
    let mut s = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {BIG}\r\n{extra}\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = support::find(&got, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|len| got.len() >= end + 4 + len) {
                    break;
                }
            }
        }
    };
    // Generous: the answer needs no body, so it comes at once; the old
    // order waited for the body and answered 408 after 5 s.
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("no answer");
    let end = support::find(&got, b"\r\n\r\n").expect("a response header");
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = serde_json::from_slice(&got[end + 4..]).unwrap_or(Value::Null);
    (status, head, body)
}

async fn key_over_its_limits_is_refused_before_its_body(store: &str) {
    let mock = MockUpstream::start(exact_usage(Duration::from_millis(300))).await;
    let gw = Gateway::start(&config(mock.port(), store)).await;

    // rpm: the one request of the minute is used; the 32 MiB one is refused
    // from its header alone, with or without `Expect: 100-continue`.
    assert_eq!(post(&gw, RATE_KEY, small_body()).await.status(), 200);
    for extra in ["", "Expect: 100-continue\r\n"] {
        let (status, head, body) = header_only(&gw, RATE_KEY, extra).await;
        assert_eq!(status, 429, "{head}\n{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("\r\nretry-after: "), "{head}");
        assert!(
            lower.contains("x-ratelimit-remaining-requests: 0"),
            "{head}"
        );
        assert!(
            !lower.starts_with("http/1.1 100"),
            "no 100 Continue: {head}"
        );
    }

    // concurrency: one slow stream holds the only slot.
    let mut stream_body: Value = serde_json::from_str(&small_body()).unwrap();
    stream_body["stream"] = json!(true);
    let mut held = post(&gw, SLOT_KEY, stream_body.to_string()).await;
    assert_eq!(held.status(), 200);
    held.chunk().await.unwrap();
    let (status, head, body) = header_only(&gw, SLOT_KEY, "").await;
    assert_eq!(status, 429, "{head}\n{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    while held.chunk().await.unwrap().is_some() {}

    // A budget with nothing left refuses before the body too: on the
    // memory store always; on Redis along with the key's rates, when it
    // has some (this key has none, so there its body is read first).
    if store == "memory" {
        let mut burn: Value = serde_json::from_str(&small_body()).unwrap();
        burn["user"] = json!("burn");
        let spent = post(&gw, BUDGET_KEY, burn.to_string()).await;
        assert_eq!(spent.status(), 200);
        let _ = spent.bytes().await;
        let (status, head, body) = header_only(&gw, BUDGET_KEY, "").await;
        assert_eq!(status, 429, "{head}\n{body}");
        assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    }
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.body.len() as u64 >= BIG)
            .count(),
        0,
        "no big body reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_limits_gets_429_before_sending_its_body_memory() {
    key_over_its_limits_is_refused_before_its_body("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_limits_gets_429_before_sending_its_body_redis() {
    let redis = redis_server::Redis::start();
    let store = format!("{{ redis: {{ url: \"{}\" }} }}", redis.url());
    key_over_its_limits_is_refused_before_its_body(&store).await;
}

/// A chat body whose one message is `len` bytes of ASCII text.
fn body_of_text(len: usize) -> (String, String) {
    let words = "the quick brown fox jumps over the lazy dog ";
    let text: String = words.repeat(len / words.len() + 1)[..len].to_string();
    let body = json!({"model": "m", "max_tokens": 0,
                      "messages": [{"role": "user", "content": text}]})
    .to_string();
    (text, body)
}

/// Tokens the gateway reserved for `body`: the drop in
/// `x-ratelimit-remaining-tokens` from the settled `used`.
async fn reserved(gw: &Gateway, admin: &str, body: String) -> u64 {
    let used = tpm_used(admin).await;
    let resp = post(gw, TPM_KEY, body).await;
    assert_eq!(resp.status(), 200);
    let remaining: u64 = support::header(&resp, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    let _ = resp.bytes().await;
    TPM - used - remaining
}

/// The `tpm` key's settled `used`, once no request is in flight.
async fn tpm_used(admin: &str) -> u64 {
    let mut last = None;
    for _ in 0..200 {
        let v: Value = support::client()
            .get(format!("http://{admin}/admin/limits"))
            .header("authorization", format!("Bearer {ADMIN_KEY}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let used = v["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "tpm" && r["limit"] == "tpm")
            .and_then(|r| r["used"].as_f64())
            .unwrap() as u64;
        if last == Some(used) {
            return used;
        }
        last = Some(used);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    last.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokenizer_reads_the_prompt_up_to_the_cap_and_estimates_past_it() {
    let mock = MockUpstream::start(exact_usage(Duration::from_millis(1))).await;
    let gw = Gateway::start(&config(mock.port(), "memory")).await;
    let admin = gw.admin_addr();
    // One request teaches the route its ratio (1: the mock counts like
    // our tokenizer), so reservations are exactly the estimate.
    let warm = post(&gw, TPM_KEY, small_body()).await;
    assert_eq!(warm.status(), 200);
    let _ = warm.bytes().await;
    // One message: 3 framing tokens, plus 3 priming the reply.
    let framing = 6;

    let (text, body) = body_of_text(MAX_TOKENIZED_BYTES);
    let at_cap = reserved(&gw, &admin, body).await;
    assert_eq!(
        at_cap,
        estimate::count("m1", &text) + framing,
        "all of it tokenized"
    );

    let (text, body) = body_of_text(MAX_TOKENIZED_BYTES + 1);
    let past = reserved(&gw, &admin, body).await;
    let head = estimate::count("m1", &text[..MAX_TOKENIZED_BYTES]);
    assert_eq!(
        past,
        head + 1 + framing,
        "the byte past the cap is estimated"
    );

    // Far past the cap: the rest is estimated from its length, at the
    // tokenized part's rate but at least a token per 4 bytes; never less
    // than the tokenizer would count for such text.
    let (text, body) = body_of_text(4 * MAX_TOKENIZED_BYTES);
    let far = reserved(&gw, &admin, body).await;
    let (cap, tail) = (MAX_TOKENIZED_BYTES as u64, 3 * MAX_TOKENIZED_BYTES as u64);
    let head = estimate::count("m1", &text[..MAX_TOKENIZED_BYTES]);
    let rest = (tail * head).div_ceil(cap).max(tail.div_ceil(4));
    assert_eq!(far, head + rest + framing);
    let full = estimate::count("m1", &text) + framing;
    assert!(far >= full, "{far} estimated vs {full} counted");
}

/// The key's `rpm` and `concurrency` as `/admin/limits` shows them.
async fn both_used(admin: &str) -> (f64, f64) {
    let v: Value = support::client()
        .get(format!("http://{admin}/admin/limits"))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let of = |limit: &str| {
        v["limits"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "both" && r["limit"] == limit)
            .and_then(|r| r["used"].as_f64())
            .unwrap()
    };
    (of("rpm"), of("concurrency"))
}

async fn second_step_refusal_gives_back_the_first_steps_count(store: &str) {
    let mock = MockUpstream::start(exact_usage(Duration::from_millis(1))).await;
    let gw = Gateway::start(&config(mock.port(), store)).await;
    let admin = gw.admin_addr();
    // `tight` allows 10 tokens a minute: a request reserving more is
    // refused by the alias after the key's rpm and slot were counted.
    let mut over: Value = serde_json::from_str(&small_body()).unwrap();
    over["model"] = json!("tight");
    over["max_tokens"] = json!(100);
    for _ in 0..3 {
        let resp = post(&gw, BOTH_KEY, over.to_string()).await;
        assert_eq!(resp.status(), 429);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("model"),
            "{v}"
        );
    }
    // Given back (with Redis, by a settle sent just after the answer).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while both_used(&admin).await != (0.0, 0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            both_used(&admin).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // So the key's two requests of the minute are both still there. On one
    // connection (`post` reuses the gateway's): the first one's concurrency
    // slot is back before the connection reads the second (a new connection
    // could overtake the Redis store's release).
    for _ in 0..2 {
        let resp = post(&gw, BOTH_KEY, small_body()).await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "{text}");
    }
    let resp = post(&gw, BOTH_KEY, small_body()).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(
        mock.hits(),
        2,
        "refused requests never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_the_body_holds_nothing_before_it_memory() {
    second_step_refusal_gives_back_the_first_steps_count("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_the_body_holds_nothing_before_it_redis() {
    let redis = redis_server::Redis::start();
    let store = format!("{{ redis: {{ url: \"{}\" }} }}", redis.url());
    second_step_refusal_gives_back_the_first_steps_count(&store).await;
}
