#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Metering and budget promises no other test pinned (issue 24):
//! `stream_usage: false`, streams of `/v1/completions` and `/v1/responses`
//! (chunk by chunk, usage counted), a calendar `minute` and a rolling `1m`
//! budget window, and a team's spend budget refusing its keys. The real
//! binary, upstreams on loopback.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use support::raw::{RawMode, RawUpstream};
use support::{assert_json_error, sse_chat_events, Behavior, Gateway, MockUpstream, Reply};

const KEY: &str = "tg-promises-accounting-01";
/// Generous bound for what should be quick (2 shared, noisy cores).
const QUICK: Duration = Duration::from_secs(10);

/// `providers` and `models` are YAML map bodies (indented two spaces);
/// `keys` is the body of the `keys` list; `top` more top-level YAML.
fn config(top: &str, providers: &str, models: &str, keys: &str) -> String {
    format!(
        "{}{top}\nproviders:\n{providers}\nmodels:\n{models}\nkeys:\n{keys}",
        support::CONFIG_HEAD
    )
}

fn one_key() -> String {
    format!("  - {{ name: k, key: \"{KEY}\" }}\n")
}

fn provider(name: &str, port: u16, extra: &str) -> String {
    format!(
        "  {name}: {{ kind: openai, base_url: \"http://127.0.0.1:{port}/v1\", health_check: {{ enabled: false }}{extra} }}\n"
    )
}

async fn post(gw: &Gateway, path: &str, key: &str, rid: &str, body: &str) -> reqwest::Response {
    support::client()
        .post(gw.url(path))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()))
}

// ---------------------------------------------------------------------------
// stream_usage: false
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_usage_false_sends_the_body_untouched_and_estimates_the_usage() {
    let events = sse_chat_events("up-model", 3);
    let off = MockUpstream::start(Behavior::sse(events.clone(), Duration::from_millis(2))).await;
    let on = MockUpstream::start(Behavior::sse(events.clone(), Duration::from_millis(2))).await;
    let providers =
        provider("off", off.port(), ", stream_usage: false") + &provider("on", on.port(), "");
    let models = "  m: { routes: [ { provider: off, model: up-model } ] }\n  \
                  d: { routes: [ { provider: on, model: up-model } ] }\n";
    let gw = Gateway::start(&config("", &providers, models, &one_key())).await;

    let body = |alias: &str| {
        format!(
            r#"{{"model":"{alias}","stream":true,"messages":[{{"role":"user","content":"Say hello."}}]}}"#
        )
    };
    let r = post(&gw, "/v1/chat/completions", KEY, "su-off", &body("m")).await;
    assert_eq!(r.status().as_u16(), 200);
    let got = r.bytes().await.unwrap();
    // The client sees the upstream's stream as it was.
    assert_eq!(support::text(&got), events.concat());
    // The upstream got the client's bytes, only `model` replaced.
    let sent = off.last().unwrap();
    assert_eq!(sent.body_str(), body("up-model"));
    // No reported usage: the tokenizer's estimate is recorded.
    let line = gw.access_line("su-off").await;
    assert_eq!(line["usage_source"], "estimated", "{line}");
    assert!(line["prompt_tokens"].as_u64().unwrap() > 0, "{line}");
    assert!(line["completion_tokens"].as_u64().unwrap() > 0, "{line}");
    gw.wait_metric(
        "tollgate_usage_estimated_total",
        &[("request_model", "m"), ("provider", "off")],
        1.0,
    )
    .await;

    // The default (true) asks the provider: the body gains include_usage.
    let r = post(&gw, "/v1/chat/completions", KEY, "su-on", &body("d")).await;
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().await.unwrap();
    let sent = on.last().unwrap().json();
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
}

// ---------------------------------------------------------------------------
// /v1/completions and /v1/responses streams
// ---------------------------------------------------------------------------

/// Reads `stream` until `want` has arrived in full; panics after [`QUICK`].
async fn read_exactly<S>(stream: &mut S, want: &str) -> String
where
    S: futures_util::Stream<Item = reqwest::Result<Bytes>> + Unpin,
{
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + QUICK;
    while got.len() < want.len() {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("waited for {want:?}; got {:?}", support::text(&got)))
            .expect("stream ended early")
            .unwrap();
        got.extend_from_slice(&next);
    }
    assert_eq!(support::text(&got), want);
    support::text(&got)
}

/// A gated SSE upstream: `first` goes out at once, `rest` after the gate.
async fn gated(first: &[String], rest: &[String]) -> RawUpstream {
    let b = |v: &[String]| v.iter().map(|e| Bytes::from(e.clone())).collect();
    RawUpstream::start(RawMode::Gated {
        content_type: "text/event-stream".into(),
        first: b(first),
        rest: b(rest),
    })
    .await
}

fn completion_event(text: &str, finish: Option<&str>) -> String {
    let v = json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "up-c",
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]});
    format!("data: {v}\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_stream_passes_chunk_by_chunk_and_its_usage_chunk_is_counted_and_cut() {
    let first = vec![completion_event("Hel", None)];
    let usage = format!(
        "data: {}\n\n",
        json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "up-c",
            "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
    );
    let rest = vec![
        completion_event("lo", Some("stop")),
        usage,
        "data: [DONE]\n\n".to_string(),
    ];
    let up = gated(&first, &rest).await;
    let gw = Gateway::start(&config(
        "",
        &provider("p", up.port(), ""),
        "  c: { routes: [ { provider: p, model: up-c } ] }\n",
        &one_key(),
    ))
    .await;

    let body = r#"{"model":"c","prompt":"Say hello.","stream":true,"max_tokens":5}"#;
    let r = post(&gw, "/v1/completions", KEY, "cmpl-stream", body).await;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        support::header(&r, "content-type").as_deref(),
        Some("text/event-stream")
    );
    let mut stream = r.bytes_stream();
    // The first event arrives while the upstream holds back the rest.
    read_exactly(&mut stream, &first.concat()).await;
    up.gate().open();
    let mut tail = Vec::new();
    while let Some(chunk) = tokio::time::timeout(QUICK, stream.next()).await.unwrap() {
        tail.extend_from_slice(&chunk.unwrap());
    }
    // The usage-only chunk (the client did not ask for it) is cut.
    let want = [rest[0].clone(), rest[2].clone()].concat();
    assert_eq!(support::text(&tail), want);

    let sent: Value = serde_json::from_slice(&up.bodies()[0]).unwrap();
    assert_eq!(sent["model"], "up-c");
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    let line = gw.access_line("cmpl-stream").await;
    assert_eq!(
        (
            &line["endpoint"],
            &line["usage_source"],
            &line["prompt_tokens"],
            &line["completion_tokens"],
            &line["partial"]
        ),
        (
            &json!("completions"),
            &json!("reported"),
            &json!(11),
            &json!(7),
            &json!(false)
        ),
        "{line}"
    );
}

fn responses_event(kind: &str, data: Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_stream_passes_chunk_by_chunk_and_its_usage_is_counted() {
    let first = vec![
        responses_event(
            "response.created",
            json!({"type": "response.created", "response": {"id": "resp_1", "status": "in_progress"}}),
        ),
        responses_event(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                   "content_index": 0, "delta": "Hel"}),
        ),
    ];
    let rest = vec![
        responses_event(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0,
                   "content_index": 0, "delta": "lo"}),
        ),
        responses_event(
            "response.completed",
            json!({"type": "response.completed", "response": {"id": "resp_1", "status": "completed",
                   "usage": {"input_tokens": 13, "output_tokens": 4, "total_tokens": 17,
                             "input_tokens_details": {"cached_tokens": 0}}}}),
        ),
    ];
    let up = gated(&first, &rest).await;
    let gw = Gateway::start(&config(
        "",
        &provider("p", up.port(), ""),
        "  r: { routes: [ { provider: p, model: up-r } ] }\n",
        &one_key(),
    ))
    .await;

    let body = r#"{"model":"r","input":"Say hello.","stream":true}"#;
    let r = post(&gw, "/v1/responses", KEY, "resp-stream", body).await;
    assert_eq!(r.status().as_u16(), 200);
    let mut stream = r.bytes_stream();
    read_exactly(&mut stream, &first.concat()).await;
    up.gate().open();
    let mut tail = Vec::new();
    while let Some(chunk) = tokio::time::timeout(QUICK, stream.next()).await.unwrap() {
        tail.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(
        support::text(&tail),
        rest.concat(),
        "not passed through as sent"
    );

    // The Responses API takes no stream_options: only `model` changes.
    assert_eq!(
        support::text(&up.bodies()[0]),
        body.replace(r#""model":"r""#, r#""model":"up-r""#)
    );
    let line = gw.access_line("resp-stream").await;
    assert_eq!(
        (
            &line["endpoint"],
            &line["usage_source"],
            &line["prompt_tokens"],
            &line["completion_tokens"]
        ),
        (
            &json!("responses"),
            &json!("reported"),
            &json!(13),
            &json!(4)
        ),
        "{line}"
    );
    gw.wait_metric(
        "tollgate_tokens_total",
        &[
            ("request_model", "r"),
            ("token_type", "output"),
            ("usage_source", "reported"),
        ],
        4.0,
    )
    .await;
}

// ---------------------------------------------------------------------------
// Budget windows and team spend
// ---------------------------------------------------------------------------

/// A chat completion reporting 5 prompt and 25 completion tokens.
fn usage_5_25() -> Behavior {
    Behavior::func(|_| {
        Reply::json(
            200,
            json!({"id": "c", "object": "chat.completion", "created": 1, "model": "up",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 25, "total_tokens": 30}})
            .to_string(),
        )
    })
}

const CHAT: &str = r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Seconds from `ms` to the end of its `period_ms` (UTC), rounded up.
fn secs_to_period_end(ms: u64, period_ms: u64) -> u64 {
    (period_ms - ms % period_ms).div_ceil(1000)
}

/// Waits until at least `margin` is left before the current `period_ms`
/// ends, so the steps that must fall in one period do.
async fn clear_of_period_end(period_ms: u64, margin: Duration) {
    let left = period_ms - now_ms() % period_ms;
    if left < margin.as_millis() as u64 {
        tokio::time::sleep(Duration::from_millis(left + 500)).await;
    }
}

/// The status and `Retry-After` of a chat request of key `key`; the error
/// body is checked to be `insufficient_quota` when refused.
async fn try_budget(gw: &Gateway, key: &str, rid: &str) -> (u16, Option<u64>, Value) {
    let r = post(gw, "/v1/chat/completions", key, rid, CHAT).await;
    let status = r.status().as_u16();
    let ct = support::header(&r, "content-type");
    let ra = support::header(&r, "retry-after").map(|v| v.parse().unwrap());
    let body = r.bytes().await.unwrap();
    if status == 429 {
        let v = assert_json_error(
            status,
            ct.as_deref(),
            &body,
            (429, "insufficient_quota", "insufficient_quota"),
        );
        return (status, ra, v);
    }
    (
        status,
        ra,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calendar_minute_budgets_reset_at_the_minute_and_rolling_ones_sixty_seconds_on() {
    const CAL: &str = "tg-promises-calendar-01";
    const ROLL: &str = "tg-promises-rolling-001";
    let up = MockUpstream::start(usage_5_25()).await;
    let keys = format!(
        "  - {{ name: cal, key: \"{CAL}\", budgets: [ {{ tokens: 30, window: minute }} ] }}\n  \
         - {{ name: roll, key: \"{ROLL}\", budgets: [ {{ tokens: 30, window: 1m }} ] }}\n"
    );
    let gw = Gateway::start(&config(
        "",
        &provider("p", up.port(), ""),
        "  m: { routes: [ { provider: p, model: up } ] }\n",
        &keys,
    ))
    .await;

    // Spend both budgets (30 tokens each) and be refused, all in one minute,
    // between its 10th and 40th second: the calendar's Retry-After (20 to
    // 50 s) then differs from the rolling window's (about 60 s).
    let second = now_ms() % 60_000 / 1000;
    if second < 10 {
        tokio::time::sleep(Duration::from_secs(10 - second)).await;
    } else if second > 40 {
        tokio::time::sleep(Duration::from_secs(70 - second)).await;
    }
    let spent_at = now_ms();
    for key in [CAL, ROLL] {
        let (status, _, body) = try_budget(&gw, key, &format!("spend-{key}")).await;
        assert_eq!(status, 200, "{body}");
    }
    for (name, window) in [("cal", "minute"), ("roll", "1m")] {
        let labels = [
            ("level", "key"),
            ("name", name),
            ("unit", "tokens"),
            ("window", window),
        ];
        gw.wait_metric("tollgate_budget_remaining", &labels, 0.0)
            .await;
    }
    let before = now_ms();
    let (cal_status, cal_ra, cal_body) = try_budget(&gw, CAL, "refused-cal").await;
    let (roll_status, roll_ra, roll_body) = try_budget(&gw, ROLL, "refused-roll").await;
    let after = now_ms();
    assert_eq!(
        (cal_status, roll_status),
        (429, 429),
        "{cal_body} {roll_body}"
    );
    assert_eq!(up.hits(), 2, "a refusal reached the upstream");
    let msg = cal_body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("the key's budget of 30 tokens per minute"),
        "{msg}"
    );

    // Calendar: Retry-After is the time to the next UTC minute.
    let cal_ra = cal_ra.expect("Retry-After");
    assert!(
        (secs_to_period_end(after, 60_000)..=secs_to_period_end(before, 60_000)).contains(&cal_ra),
        "Retry-After {cal_ra} s at second {} of the minute",
        before % 60_000 / 1000
    );
    // Rolling: the spend leaves 60 s after it was made, whatever the clock says.
    let roll_ra = roll_ra.expect("Retry-After");
    let since_spend = (after - spent_at).div_ceil(1000);
    assert!(
        roll_ra <= 60 && roll_ra + since_spend + 1 >= 60,
        "Retry-After {roll_ra} s, {since_spend} s after the spend"
    );

    // Each key is admitted again when its Retry-After said, not before.
    let refused_at = Instant::now();
    let refused_minute = after / 60_000;
    let (mut cal_ok, mut roll_ok) = (None, None);
    let mut n = 0;
    while cal_ok.is_none() || roll_ok.is_none() {
        assert!(
            refused_at.elapsed() < Duration::from_secs(75),
            "not admitted again: calendar {cal_ok:?}, rolling {roll_ok:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        n += 1;
        if cal_ok.is_none() {
            let (status, _, body) = try_budget(&gw, CAL, &format!("retry-cal-{n}")).await;
            if status == 200 {
                assert!(
                    now_ms() / 60_000 > refused_minute,
                    "admitted within the same minute"
                );
                cal_ok = Some(refused_at.elapsed());
            } else {
                assert_eq!(status, 429, "{body}");
            }
        }
        if roll_ok.is_none() {
            let (status, _, body) = try_budget(&gw, ROLL, &format!("retry-roll-{n}")).await;
            if status == 200 {
                roll_ok = Some(refused_at.elapsed());
            } else {
                assert_eq!(status, 429, "{body}");
            }
        }
    }
    let (cal_ok, roll_ok) = (cal_ok.unwrap(), roll_ok.unwrap());
    for (what, ok, ra) in [("calendar", cal_ok, cal_ra), ("rolling", roll_ok, roll_ra)] {
        assert!(
            ok + Duration::from_millis(1500) >= Duration::from_secs(ra)
                && ok <= Duration::from_secs(ra + 5),
            "{what}: admitted {ok:?} after the refusal that said Retry-After {ra} s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_spend_budget_refuses_every_key_of_the_team_once_spent() {
    const ALICE: &str = "tg-promises-team-alice-1";
    const BOB: &str = "tg-promises-team-bob-001";
    const CAROL: &str = "tg-promises-no-team-0001";
    let up = MockUpstream::start(usage_5_25()).await;
    // 5 x $100 + 25 x $400 per million tokens: $0.0105 a request, over the
    // team's $0.01 a day after one.
    let keys = format!(
        "  - {{ name: alice, key: \"{ALICE}\", team: t }}\n  \
         - {{ name: bob, key: \"{BOB}\", team: t }}\n  \
         - {{ name: carol, key: \"{CAROL}\" }}\n"
    );
    let top = "teams:\n  t:\n    budgets: [ { usd: 0.01, window: day } ]\n";
    let gw = Gateway::start(&config(
        top,
        &provider("p", up.port(), ""),
        "  m: { routes: [ { provider: p, model: up, price: { input: 100, output: 400 } } ] }\n",
        &keys,
    ))
    .await;
    clear_of_period_end(86_400_000, Duration::from_secs(60)).await;

    let (status, _, body) = try_budget(&gw, ALICE, "team-spend").await;
    assert_eq!(status, 200, "{body}");
    let labels = [
        ("level", "team"),
        ("name", "t"),
        ("unit", "usd"),
        ("window", "day"),
    ];
    gw.wait_metric("tollgate_budget_remaining", &labels, -0.0005)
        .await;

    // Bob spent nothing himself: the team's budget refuses him.
    let before = now_ms();
    let (status, ra, body) = try_budget(&gw, BOB, "team-refused").await;
    let after = now_ms();
    assert_eq!(status, 429, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("the team's budget of $0.01 per day"), "{msg}");
    let ra = ra.expect("Retry-After");
    assert!(
        (secs_to_period_end(after, 86_400_000)..=secs_to_period_end(before, 86_400_000))
            .contains(&ra),
        "Retry-After {ra} s is not the time to the next UTC day"
    );
    let (status, _, _) = try_budget(&gw, ALICE, "team-refused-2").await;
    assert_eq!(status, 429);
    assert_eq!(up.hits(), 1, "a refusal reached the upstream");
    gw.wait_metric(
        "tollgate_limit_rejections_total",
        &[("level", "team"), ("reason", "budget_usd")],
        2.0,
    )
    .await;

    // A key outside the team is not affected.
    let (status, _, body) = try_budget(&gw, CAROL, "no-team").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(up.hits(), 2);
}
