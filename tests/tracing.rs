#![allow(clippy::unwrap_used, clippy::expect_used)]
//! OpenTelemetry traces (issue 21), end to end: the real gateway binary in
//! front of mock upstreams, exporting over OTLP/HTTP to a test receiver
//! (`support::otlp`) that decodes the official protobuf messages.
//!
//! Each test waits for what it expects (spans received, a counter moving)
//! with a generous deadline. Where a test asserts that some span never
//! came, it first waits for a later request's spans: spans are queued in
//! the order requests end and exported in that order, so once the later
//! ones are in, the earlier ones would be too.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::otlp::{Attr, OtlpReceiver, Span, CLIENT, SERVER};
use support::{Behavior, Gate, Gateway, MockUpstream, CONFIG_HEAD};

const KEY: &str = "tg-tracing-key-0001";
const PROVIDER_KEY: &str = "sk-provider-tracing-secret-5d2a";
const OTLP_SECRET: &str = "otlp-collector-secret-77f1";
const ALIAS: &str = "fb";
/// Generous: spans go out on the export thread's next tick, on 2 shared cores.
const WAIT: Duration = Duration::from_secs(20);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn provider(name: &str, port: u16, extra: &str) -> String {
    format!(
        "  {name}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{port}/v1\"\n    api_key: \"{PROVIDER_KEY}\"\n    health_check: {{ enabled: false }}\n{extra}"
    )
}

/// A `tracing:` section for `rx` with a short export interval; `extra`
/// holds more fields (`, sample_ratio: 0`).
fn tracing(rx: &OtlpReceiver, extra: &str) -> String {
    format!(
        "tracing: {{ endpoint: \"{}\", export_interval: 50ms, service_name: tollgate-test, headers: {{ x-otlp-key: \"{OTLP_SECRET}\" }}{extra} }}\n",
        rx.endpoint()
    )
}

/// The config: `top` lines (the `tracing:` section), providers, routes of
/// [`ALIAS`] (`(provider, model)`, priced) and extra alias lines.
fn config(top: &str, providers: &[String], routes: &[(&str, &str)], alias_extra: &str) -> String {
    let routes: String = routes
        .iter()
        .map(|(p, m)| {
            format!(
                "      - {{ provider: {p}, model: {m}, price: {{ input: 1.0, output: 2.0 }} }}\n"
            )
        })
        .collect();
    format!(
        r#"{CONFIG_HEAD}{top}
providers:
{providers}
models:
  {ALIAS}:
    routes:
{routes}{alias_extra}
teams:
  research: {{}}
keys:
  - {{ name: alice, key: "{KEY}", team: research }}
"#,
        providers = providers.concat(),
    )
}

struct Sent {
    status: u16,
    body: String,
}

/// A receiver, an echoing upstream (`up`, routed as `up-model`) and a
/// gateway tracing to the receiver; `extra` goes into its `tracing:`.
async fn traced(extra: &str) -> (OtlpReceiver, MockUpstream, Gateway) {
    let rx = OtlpReceiver::start().await;
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let gw = Gateway::start(&config(
        &tracing(&rx, extra),
        &[provider("up", up.port(), "")],
        &[("up", "up-model")],
        "",
    ))
    .await;
    (rx, up, gw)
}

/// POSTs a chat request with `headers` (e.g. a `traceparent`).
async fn chat(gw: &Gateway, rid: &str, stream: bool, headers: &[(&str, &str)]) -> Sent {
    let body = json!({
        "model": ALIAS, "stream": stream, "max_tokens": 64, "temperature": 0.25, "top_p": 0.5,
        "messages": [{"role": "user", "content": "SECRET-PROMPT-TEXT please"}],
    });
    let mut req = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("request {rid}: {e}; log:\n{}", gw.logs()));
    Sent {
        status: resp.status().as_u16(),
        body: resp.text().await.unwrap_or_default(),
    }
}

/// The spans of request `rid`: its server span (found by
/// `tollgate.request_id`) and every span of its trace, once `n` are in.
async fn spans_of(gw: &Gateway, rx: &OtlpReceiver, rid: &str, n: usize) -> (Span, Vec<Span>) {
    let server = |all: &[Span]| {
        all.iter()
            .find(|s| s.str("tollgate.request_id") == Some(rid))
            .cloned()
    };
    let all = rx
        .wait(WAIT, |all| {
            server(all)
                .is_some_and(|s| all.iter().filter(|x| x.trace_id == s.trace_id).count() >= n)
        })
        .await;
    let Some(s) = server(&all) else {
        let metrics = gw.metrics_text().await;
        let trace_lines: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("tollgate_trace"))
            .collect();
        panic!(
            "no server span for {rid}: {all:#?}\n{}\nlog:\n{}",
            trace_lines.join("\n"),
            gw.logs()
        );
    };
    let trace: Vec<Span> = all
        .into_iter()
        .filter(|x| x.trace_id == s.trace_id)
        .collect();
    assert_eq!(trace.len(), n, "spans of {rid}: {trace:#?}");
    (s, trace)
}

/// The client spans under `server`, by attempt number.
fn attempts(server: &Span, trace: &[Span]) -> Vec<Span> {
    let mut out: Vec<Span> = trace
        .iter()
        .filter(|s| s.kind == CLIENT && s.parent_span_id == server.span_id)
        .cloned()
        .collect();
    out.sort_by_key(|s| s.int("tollgate.attempt"));
    out
}

/// Polls `/metrics` until `metric{labels}` is at least `min`; returns it.
async fn metric_at_least(gw: &Gateway, metric: &str, labels: &[(&str, &str)], min: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = support::sample(&gw.metrics_text().await, metric, labels).unwrap_or(0.0);
        if v >= min || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_request_gives_a_server_span_with_the_genai_attributes_and_an_attempt_span_under_it() {
    let (rx, up, gw) = traced("").await;
    let parent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let r = chat(
        &gw,
        "tr-1",
        false,
        &[("traceparent", &parent), ("tracestate", "vendor=abc")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (server, trace) = spans_of(&gw, &rx, "tr-1", 2).await;

    // The client's trace is continued: same trace id, its span the parent.
    assert_eq!(server.trace_id, TRACE);
    assert_eq!(server.parent_span_id, CLIENT_SPAN);
    assert_eq!((server.kind, server.name.as_str()), (SERVER, "chat fb"));
    for (k, want) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", ALIAS),
        ("gen_ai.response.model", "up-model"),
        ("gen_ai.response.id", "chatcmpl-mock"),
        ("tollgate.key", "alice"),
        ("tollgate.team", "research"),
        ("tollgate.provider", "up"),
        ("tollgate.upstream_model", "up-model"),
        ("tollgate.route", "up/up-model"),
        ("tollgate.usage_source", "reported"),
        ("tollgate.hedge", "none"),
        ("http.request.method", "POST"),
        ("http.route", "/v1/chat/completions"),
    ] {
        assert_eq!(server.str(k), Some(want), "{k}: {server:#?}");
    }
    assert!(server.str("tollgate.strategy").is_some(), "{server:#?}");
    assert_eq!(
        server.strings("gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_string()])
    );
    for (k, want) in [
        ("gen_ai.request.max_tokens", 64),
        ("gen_ai.usage.input_tokens", 5),
        ("gen_ai.usage.output_tokens", 3),
        ("http.response.status_code", 200),
        ("tollgate.attempts", 1),
    ] {
        assert_eq!(server.int(k), Some(want), "{k}: {server:#?}");
    }
    assert_eq!(server.float("gen_ai.request.temperature"), Some(0.25));
    assert_eq!(server.float("gen_ai.request.top_p"), Some(0.5));
    // 5 input and 3 output tokens at $1 and $2 per million.
    let cost = server.float("tollgate.cost_usd").unwrap();
    assert!((cost - 11e-6).abs() < 1e-12, "{cost}");
    assert_eq!(server.bool("tollgate.stream"), Some(false));
    assert_eq!(server.status_code, 0, "a 200 is not an error");
    assert_eq!(
        server.resource.get("service.name"),
        Some(&Attr::Str("tollgate-test".into()))
    );
    assert_eq!(server.scope, "tollgate");

    // One attempt, a client span under the server span.
    let tried = attempts(&server, &trace);
    assert_eq!(tried.len(), 1, "{trace:#?}");
    let a = &tried[0];
    assert_eq!(a.name, "chat up-model");
    assert_eq!(a.str("gen_ai.request.model"), Some("up-model"));
    assert_eq!(a.str("gen_ai.provider.name"), Some("openai"));
    assert_eq!(a.str("server.address"), Some("127.0.0.1"));
    assert_eq!(a.int("server.port"), Some(i64::from(up.port())));
    assert_eq!(a.int("http.response.status_code"), Some(200));
    assert_eq!(a.str("tollgate.outcome"), Some("success"));
    assert!(
        server.start_ns <= a.start_ns && a.end_ns <= server.end_ns,
        "{server:#?} {a:#?}"
    );

    // The upstream got our traceparent: the same trace, the attempt's span
    // as its parent, and the client's tracestate.
    let sent = up.last().unwrap();
    assert_eq!(
        sent.header("traceparent"),
        Some(format!("00-{TRACE}-{}-01", a.span_id))
    );
    assert_eq!(sent.header("tracestate").as_deref(), Some("vendor=abc"));

    // Never any prompt or completion text; the collector's header went to
    // the collector only, and never into the log.
    for s in &trace {
        for (k, v) in &s.attributes {
            if let Attr::Str(v) = v {
                assert!(!v.contains("SECRET-PROMPT") && v != "echo", "{k}={v}");
            }
        }
    }
    let req = &rx.requests()[0];
    let h = |name: &str| req.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(h("x-otlp-key"), Some(OTLP_SECRET));
    assert_eq!(h("content-type"), Some("application/x-protobuf"));
    assert!(sent.header("x-otlp-key").is_none());
    assert!(!gw.logs().contains(OTLP_SECRET), "{}", gw.logs());
    assert!(metric_at_least(&gw, "tollgate_trace_spans_exported_total", &[], 2.0).await >= 2.0);

    // A malformed traceparent is ignored: a new trace, no parent.
    let bad = format!("00-{}-{CLIENT_SPAN}-01", TRACE.to_uppercase());
    assert_eq!(
        chat(&gw, "tr-bad", false, &[("traceparent", &bad)])
            .await
            .status,
        200
    );
    let (fresh, trace) = spans_of(&gw, &rx, "tr-bad", 2).await;
    assert_ne!(fresh.trace_id, TRACE.to_lowercase());
    assert_eq!(fresh.trace_id.len(), 32);
    assert!(fresh.parent_span_id.is_empty(), "{fresh:#?}");
    let a = &attempts(&fresh, &trace)[0];
    assert_eq!(
        up.last().unwrap().header("traceparent"),
        Some(format!("00-{}-{}-01", fresh.trace_id, a.span_id))
    );
}

#[tokio::test]
async fn a_retry_gives_two_attempt_spans_under_the_server_span() {
    let rx = OtlpReceiver::start().await;
    let down = MockUpstream::start(Behavior::json(503, r#"{"error":{"message":"busy"}}"#)).await;
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let one = "    retry: { attempts: 1 }\n";
    let gw = Gateway::start(&config(
        &tracing(&rx, ""),
        &[
            provider("down", down.port(), one),
            provider("up", up.port(), one),
        ],
        &[("down", "down-model"), ("up", "up-model")],
        "",
    ))
    .await;
    assert_eq!(chat(&gw, "tr-retry", false, &[]).await.status, 200);
    let (server, trace) = spans_of(&gw, &rx, "tr-retry", 3).await;
    assert_eq!(server.int("tollgate.attempts"), Some(2));
    assert_eq!(server.str("tollgate.provider"), Some("up"));
    let tried = attempts(&server, &trace);
    assert_eq!(tried.len(), 2, "{trace:#?}");
    let (first, second) = (&tried[0], &tried[1]);
    assert_eq!(first.int("tollgate.attempt"), Some(1));
    assert_eq!(first.str("tollgate.provider"), Some("down"));
    assert_eq!(first.str("tollgate.outcome"), Some("status_5xx"));
    assert_eq!(first.int("http.response.status_code"), Some(503));
    assert_eq!(first.str("error.type"), Some("status_5xx"));
    assert_eq!(first.status_code, 2, "a failed attempt is an error");
    assert_eq!(second.int("tollgate.attempt"), Some(2));
    assert_eq!(second.str("tollgate.outcome"), Some("success"));
    assert_eq!(second.status_code, 0);
    assert!(first.end_ns <= second.start_ns, "{first:#?} {second:#?}");
    // Each upstream saw its own attempt's span as the parent.
    for (mock, span) in [(&down, first), (&up, second)] {
        let got = mock.last().unwrap().header("traceparent").unwrap();
        assert_eq!(got, format!("00-{}-{}-01", server.trace_id, span.span_id));
    }
}

#[tokio::test]
async fn a_stream_has_its_first_token_event_and_finish_reasons() {
    let (rx, _up, gw) = traced("").await;
    let r = chat(&gw, "tr-stream", true, &[]).await;
    assert!(r.body.trim_end().ends_with("data: [DONE]"), "{}", r.body);
    let (server, trace) = spans_of(&gw, &rx, "tr-stream", 2).await;
    assert_eq!(server.bool("tollgate.stream"), Some(true));
    assert_eq!(server.str("gen_ai.response.id"), Some("chatcmpl-mock"));
    assert_eq!(server.str("gen_ai.response.model"), Some("up-model"));
    assert_eq!(
        server.strings("gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_string()])
    );
    let ttft = server.float("gen_ai.response.time_to_first_chunk").unwrap();
    assert!(ttft > 0.0, "{ttft}");
    // The echo's stream reports no usage: counted from its text.
    assert_eq!(server.str("tollgate.usage_source"), Some("estimated"));
    let a = &attempts(&server, &trace)[0];
    let (name, at) = a.events.first().cloned().expect("a first_token event");
    assert_eq!(name, "first_token");
    assert!(a.start_ns <= at && at <= a.end_ns, "{a:#?}");
}

#[tokio::test]
async fn tracing_off_sends_nothing_and_reloads_turn_it_on_move_it_and_off() {
    let rx = OtlpReceiver::start().await;
    let rx2 = OtlpReceiver::start().await;
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let cfg = |top: &str| {
        config(
            top,
            &[provider("up", up.port(), "")],
            &[("up", "up-model")],
            "",
        )
    };
    let gw = Gateway::start(&cfg("")).await;
    let parent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let with_parent = [("traceparent", parent.as_str())];
    // Off: the client's traceparent is not passed on, nothing is exported.
    assert_eq!(chat(&gw, "off-1", false, &with_parent).await.status, 200);
    assert!(up.last().unwrap().header("traceparent").is_none());

    // A reload turns it on: the exporter starts.
    gw.write_config(&cfg(&tracing(&rx, "")));
    gw.sighup();
    assert!(
        gw.wait_log("tracing: exporting spans to", WAIT).await,
        "{}",
        gw.logs()
    );
    assert_eq!(chat(&gw, "on-1", false, &[]).await.status, 200);
    spans_of(&gw, &rx, "on-1", 2).await;
    assert!(
        rx.spans().iter().all(|s| s.trace_id != TRACE),
        "the request made while off has no span"
    );

    // A changed endpoint rebuilds the exporter; spans go to the new one.
    gw.write_config(&cfg(&tracing(&rx2, "")));
    gw.sighup();
    assert!(
        gw.wait_log("tracing: exporter rebuilt", WAIT).await,
        "{}",
        gw.logs()
    );
    assert_eq!(chat(&gw, "moved-1", false, &[]).await.status, 200);
    spans_of(&gw, &rx2, "moved-1", 2).await;
    assert!(rx
        .spans()
        .iter()
        .all(|s| s.str("tollgate.request_id") != Some("moved-1")));

    // Off again: no traceparent upstream.
    gw.write_config(&cfg(""));
    gw.sighup();
    assert!(gw.wait_log("tracing: off", WAIT).await, "{}", gw.logs());
    assert_eq!(chat(&gw, "off-2", false, &with_parent).await.status, 200);
    assert!(up.last().unwrap().header("traceparent").is_none());
}

#[tokio::test]
async fn sample_ratio_0_exports_no_span_and_passes_the_clients_context_on() {
    let (rx, up, gw) = traced(", sample_ratio: 0").await;
    for i in 0..5 {
        assert_eq!(
            chat(&gw, &format!("unsampled-{i}"), false, &[])
                .await
                .status,
            200
        );
        assert!(up.last().unwrap().header("traceparent").is_none());
    }
    // An unsampled client context is passed on as it came.
    let unsampled = format!("00-{TRACE}-{CLIENT_SPAN}-00");
    assert_eq!(
        chat(
            &gw,
            "unsampled-parent",
            false,
            &[("traceparent", &unsampled)]
        )
        .await
        .status,
        200
    );
    assert_eq!(up.last().unwrap().header("traceparent"), Some(unsampled));
    // The barrier: a client that samples its trace (parent-based) is traced.
    let sampled = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(
        chat(&gw, "barrier", false, &[("traceparent", &sampled)])
            .await
            .status,
        200
    );
    spans_of(&gw, &rx, "barrier", 2).await;
    let spans = rx.spans();
    assert_eq!(spans.len(), 2, "only the barrier's spans: {spans:#?}");
}

#[tokio::test]
async fn a_stopped_collector_drops_and_counts_spans_and_requests_still_succeed() {
    let (rx, _up, gw) = traced(", export_timeout: 300ms").await;
    assert_eq!(chat(&gw, "before", false, &[]).await.status, 200);
    spans_of(&gw, &rx, "before", 2).await;
    rx.stop();
    for i in 0..5 {
        let r = chat(&gw, &format!("down-{i}"), false, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let failed = [("reason", "export_failed")];
    let n = metric_at_least(&gw, "tollgate_trace_spans_dropped_total", &failed, 10.0).await;
    assert!(n >= 10.0, "5 requests of 2 spans each were dropped: {n}");
    assert!(
        gw.wait_log("spans are dropped and counted", WAIT).await,
        "{}",
        gw.logs()
    );
}

#[tokio::test]
async fn a_collector_that_never_answers_fills_the_queue_and_requests_do_not_wait() {
    let (rx, _up, gw) = traced(", export_timeout: 30s, queue_size: 4, batch_size: 2").await;
    rx.hang(true);
    // The first batch is stuck in an export that takes 30 s; the queue of
    // 4 fills, and the rest is dropped. No request waits for any of it.
    for i in 0..8 {
        let start = Instant::now();
        let r = chat(&gw, &format!("slow-{i}"), false, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "request {i} waited"
        );
    }
    let full = [("reason", "queue_full")];
    let n = metric_at_least(&gw, "tollgate_trace_spans_dropped_total", &full, 1.0).await;
    assert!(n >= 1.0, "{n}");
}

#[tokio::test]
async fn hedge_legs_and_the_shadow_copy_get_spans_of_their_own() {
    let rx = OtlpReceiver::start().await;
    let primary = MockUpstream::start(Behavior::held_sse("primary-model", &Gate::new())).await;
    let hedge = MockUpstream::start(Behavior::ChatEcho).await;
    let shadow = MockUpstream::start(Behavior::ChatEcho).await;
    let one = "    retry: { attempts: 1 }\n";
    let gw = Gateway::start(&config(
        &tracing(&rx, ""),
        &[
            provider("slow", primary.port(), one),
            provider("fast", hedge.port(), one),
            provider("shadowp", shadow.port(), one),
        ],
        &[("slow", "primary-model"), ("fast", "hedge-model")],
        "    hedge: { after: 100ms, max_share: 1.0 }\n    shadow: { route: { provider: shadowp, model: shadow-model }, sample: 1.0 }\n",
    ))
    .await;
    let r = chat(&gw, "tr-hedge", true, &[]).await;
    assert!(r.body.contains("hedge-model"), "{}", r.body);
    // The server span, two legs and the shadow copy.
    let (server, trace) = spans_of(&gw, &rx, "tr-hedge", 4).await;
    assert_eq!(server.str("tollgate.hedge"), Some("won"));
    assert_eq!(server.str("tollgate.shadow"), Some("sampled"));
    let children = attempts(&server, &trace);
    assert_eq!(children.len(), 3, "{trace:#?}");
    let by = |f: &dyn Fn(&Span) -> bool| children.iter().find(|s| f(s)).cloned().unwrap();
    let lost = by(&|s| s.str("tollgate.outcome") == Some("hedge_cancelled"));
    assert_eq!(lost.str("gen_ai.request.model"), Some("primary-model"));
    let won = by(&|s| s.bool("tollgate.hedge_leg") == Some(true));
    assert_eq!(won.str("tollgate.outcome"), Some("success"));
    assert_eq!(won.str("gen_ai.request.model"), Some("hedge-model"));
    assert!(
        won.events.iter().any(|(n, _)| n == "first_token"),
        "{won:#?}"
    );
    let copy = by(&|s| s.bool("tollgate.shadow_copy") == Some(true));
    assert_eq!(copy.str("gen_ai.request.model"), Some("shadow-model"));
    assert_eq!(copy.str("tollgate.outcome"), Some("success"));
    // Each upstream was told its own span.
    for (mock, span) in [(&primary, &lost), (&hedge, &won), (&shadow, &copy)] {
        let got = mock
            .requests()
            .last()
            .unwrap()
            .header("traceparent")
            .unwrap();
        assert_eq!(got, format!("00-{}-{}-01", server.trace_id, span.span_id));
    }
}

#[tokio::test]
async fn queued_spans_are_exported_when_the_gateway_stops() {
    let rx = OtlpReceiver::start().await;
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    // Nothing is exported on a tick within the test: only the exit flush.
    let top = tracing(&rx, "").replace("export_interval: 50ms", "export_interval: 60s");
    let mut gw = Gateway::start(&config(
        &top,
        &[provider("up", up.port(), "")],
        &[("up", "up-model")],
        "",
    ))
    .await;
    assert_eq!(chat(&gw, "at-exit", false, &[]).await.status, 200);
    gw.access_line("at-exit").await;
    gw.sigterm();
    assert!(gw.wait_exit(WAIT).await.is_some(), "{}", gw.logs());
    let spans = rx
        .wait(WAIT, |s| {
            s.iter()
                .any(|x| x.str("tollgate.request_id") == Some("at-exit"))
        })
        .await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
}
