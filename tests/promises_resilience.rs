#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Resilience promises of docs/config.md that no other test pinned (issue
//! 24): `request_deadline`, the `connect` timeout (the TCP connect and the
//! TLS handshake each), TCP health checks, the second pass over unhealthy backends,
//! DNS resolution and refresh of host-name backends, and the health-check
//! round a reload runs before it swaps. The real binary, upstreams on
//! loopback.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::raw::{RawMode, RawUpstream, Unconnectable};
use support::{assert_json_error, Behavior, Gateway, MockUpstream, Reply, CONFIG_HEAD};

const KEY: &str = "tg-promises-resilience-01";
/// Generous bound for what should be quick (2 shared, noisy cores).
const QUICK: Duration = Duration::from_secs(10);
const ATTEMPTS: &str = "tollgate_upstream_attempts_total";
const HEALTHY: &str = "tollgate_upstream_backend_healthy";

/// A config: `providers` and `models` are YAML map bodies (indented two
/// spaces), `top` more top-level YAML; one key for every alias.
fn config(top: &str, providers: &str, models: &str) -> String {
    format!(
        "{CONFIG_HEAD}{top}\nproviders:\n{providers}\nmodels:\n{models}\nkeys:\n  - {{ name: k, key: \"{KEY}\" }}\n"
    )
}

/// A provider at `127.0.0.1:port` with health checks off unless `extra`
/// sets them; `extra` is more fields of its flow map.
fn provider(name: &str, port: u16, extra: &str) -> String {
    format!(
        "  {name}: {{ kind: openai, base_url: \"http://127.0.0.1:{port}/v1\", health_check: {{ enabled: false }}{extra} }}\n"
    )
}

/// A loopback port nothing listens on.
fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Resp {
    status: u16,
    content_type: Option<String>,
    body: bytes::Bytes,
    took: Duration,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// POSTs a chat request for `model` with `x-request-id: rid`.
async fn chat(gw: &Gateway, model: &str, rid: &str) -> Resp {
    let t0 = Instant::now();
    let r = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(format!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}; log:\n{}", gw.logs()));
    let status = r.status().as_u16();
    let content_type = support::header(&r, "content-type");
    let body = r.bytes().await.unwrap();
    Resp {
        status,
        content_type,
        body,
        took: t0.elapsed(),
    }
}

fn assert_gateway_error(r: &Resp, want: (u16, &str, &str)) {
    assert_json_error(r.status, r.content_type.as_deref(), &r.body, want);
}

/// `attempt_log` of an access-log line (empty when there was one attempt).
fn attempt_log(line: &Value) -> Vec<String> {
    line["attempt_log"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// request_deadline
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fallback_starts_after_request_deadline_and_the_running_attempt_is_not_cut() {
    // The primary reads the request and never answers; its first_byte
    // timeout (2 s) ends the attempt after the 1 s deadline has passed.
    let hang = RawUpstream::start(RawMode::Silent).await;
    let good = MockUpstream::start(Behavior::ChatEcho).await;
    let providers = provider("slow", hang.port(), ", timeouts: { first_byte: 2s }")
        + &provider("good", good.port(), "");
    let models =
        "  m: { routes: [ { provider: slow, model: s }, { provider: good, model: g } ] }\n";

    let gw = Gateway::start(&config("request_deadline: 1s", &providers, models)).await;
    let r = chat(&gw, "m", "deadline-1").await;
    assert_gateway_error(&r, (504, "api_error", "upstream_timeout"));
    assert!(
        r.took >= Duration::from_secs(2) && r.took < Duration::from_secs(20),
        "answered after {:?}: the running attempt (first_byte 2 s) must end on its own",
        r.took
    );
    assert_eq!(hang.requests(), 1);
    assert!(
        support::wait_until(QUICK, || hang.cancelled() == 1).await,
        "the timed-out attempt's connection was not closed"
    );
    assert_eq!(good.hits(), 0, "a fallback started after request_deadline");
    let line = gw.access_line("deadline-1").await;
    assert_eq!(line["attempts"], 1, "{line}");
    gw.wait_metric(
        ATTEMPTS,
        &[("provider", "slow"), ("outcome", "timeout")],
        1.0,
    )
    .await;
    drop(gw);

    // The same upstreams without the deadline (default 600 s): the fallback
    // serves it, so the deadline is what stopped it above.
    let gw = Gateway::start(&config("", &providers, models)).await;
    let r = chat(&gw, "m", "deadline-2").await;
    assert_eq!(r.status, 200, "{}", support::text(&r.body));
    assert_eq!(r.json()["model"], "g");
    assert_eq!(good.hits(), 1);
    assert_eq!(gw.access_line("deadline-2").await["attempts"], 2);
}

// ---------------------------------------------------------------------------
// timeouts.connect
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_past_the_connect_timeout_fails_over_or_is_504() {
    let dead = Unconnectable::start().await;
    let good = MockUpstream::start(Behavior::ChatEcho).await;
    let providers = provider("dead", dead.port(), ", timeouts: { connect: 500ms }")
        + &provider("good", good.port(), "");
    let models = "  only: { routes: [ { provider: dead, model: d } ] }\n  \
                  chain: { routes: [ { provider: dead, model: d }, { provider: good, model: g } ] }\n";
    let gw = Gateway::start(&config("", &providers, models)).await;

    // No route left: 504 upstream_timeout, after the 500 ms connect timeout
    // and well before the 5 s default.
    let r = chat(&gw, "only", "connect-1").await;
    assert_gateway_error(&r, (504, "api_error", "upstream_timeout"));
    assert!(
        r.took >= Duration::from_millis(500) && r.took < Duration::from_secs(5),
        "answered after {:?}",
        r.took
    );
    // A route left: the next one starts and serves.
    let r = chat(&gw, "chain", "connect-2").await;
    assert_eq!(r.status, 200, "{}", support::text(&r.body));
    assert_eq!(r.json()["model"], "g");
    assert!(r.took >= Duration::from_millis(500), "{:?}", r.took);
    let line = gw.access_line("connect-2").await;
    let want = format!("dead@127.0.0.1:{}:connect_timeout", dead.port());
    assert_eq!(attempt_log(&line)[0], want, "{line}");
    gw.wait_metric(
        ATTEMPTS,
        &[("provider", "dead"), ("outcome", "connect_timeout")],
        2.0,
    )
    .await;
}

/// An HTTPS upstream (leaf signed by `ca`) that starts each TLS handshake
/// `delay` after the TCP connect, then answers every request with a chat
/// completion. Returns its port and a count of the requests it answered.
async fn tls_upstream_after(
    ca: &support::TestCa,
    delay: Duration,
) -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config(&["localhost"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, h) = (acceptor.clone(), h.clone());
            tokio::spawn(async move {
                // The ClientHello waits in the socket meanwhile.
                tokio::time::sleep(delay).await;
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"id":"c","object":"chat.completion","created":1,"model":"t","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, hits, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_handshake_gets_its_own_connect_timeout() {
    // connect: 2s. The TCP connect is instant; one upstream starts its
    // handshake after 300 ms, the other after 3 s: within 2 x connect, but
    // over what the handshake itself may take.
    let ca = support::TestCa::new();
    let (quick, quick_hits, _q) = tls_upstream_after(&ca, Duration::from_millis(300)).await;
    let (slow, slow_hits, _s) = tls_upstream_after(&ca, Duration::from_secs(3)).await;
    let tls = |name: &str, port: u16| {
        format!(
            "  {name}: {{ kind: openai, base_url: \"https://localhost:{port}/v1\", ca_file: \"{}\", \
             health_check: {{ enabled: false }}, timeouts: {{ connect: 2s }} }}\n",
            ca.ca_file().display()
        )
    };
    let providers = tls("quick", quick) + &tls("slow", slow);
    let models = "  q: { routes: [ { provider: quick, model: t } ] }\n  \
                  s: { routes: [ { provider: slow, model: t } ] }\n";
    let gw = Gateway::start(&config("", &providers, models)).await;

    let r = chat(&gw, "q", "tls-quick").await;
    assert_eq!(r.status, 200, "{}", support::text(&r.body));
    assert_eq!(quick_hits.load(Ordering::SeqCst), 1);

    let r = chat(&gw, "s", "tls-slow").await;
    assert_gateway_error(&r, (504, "api_error", "upstream_timeout"));
    assert!(
        r.took >= Duration::from_secs(2) && r.took < Duration::from_secs(20),
        "answered after {:?}",
        r.took
    );
    assert_eq!(slow_hits.load(Ordering::SeqCst), 0);
    gw.wait_metric(
        ATTEMPTS,
        &[("provider", "slow"), ("outcome", "connect_timeout")],
        1.0,
    )
    .await;
}

// ---------------------------------------------------------------------------
// health_check
// ---------------------------------------------------------------------------

/// Polls until `tollgate_upstream_backend_healthy{provider, backend}` is `want`.
async fn wait_healthy(gw: &Gateway, provider: &str, backend: &str, want: f64) {
    gw.wait_metric(
        HEALTHY,
        &[("provider", provider), ("backend", backend)],
        want,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_checks_take_a_closed_port_out_and_bring_it_back_without_a_request() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let dead = refused_port();
    // An https provider whose only backend accepts TCP and never speaks.
    let silent = RawUpstream::start(RawMode::Silent).await;
    let providers = format!(
        "  p: {{ kind: openai, base_url: \"http://127.0.0.1:{up}/v1\", \
         backends: [\"127.0.0.1:{up}\", \"127.0.0.1:{dead}\"], retry: {{ attempts: 1 }}, \
         health_check: {{ interval: 100ms, timeout: 500ms }} }}\n  \
         s: {{ kind: openai, base_url: \"https://localhost:{silent}/v1\", \
         health_check: {{ interval: 100ms, timeout: 500ms }} }}\n",
        up = up.port(),
        silent = silent.port(),
    );
    let models = "  m: { routes: [ { provider: p, model: x } ] }\n  s: { routes: [ { provider: s, model: y } ] }\n";
    let gw = Gateway::start(&config("", &providers, models)).await;
    let (live, gone) = (
        format!("127.0.0.1:{}", up.port()),
        format!("127.0.0.1:{dead}"),
    );
    wait_healthy(&gw, "p", &live, 1.0).await;
    wait_healthy(&gw, "p", &gone, 0.0).await;

    // Round robin skips the unhealthy backend: no request ever tries it.
    for i in 0..6 {
        let r = chat(&gw, "m", &format!("tcp-{i}")).await;
        assert_eq!(r.status, 200, "{}", support::text(&r.body));
    }
    assert_eq!(up.hits(), 6);
    gw.wait_metric(ATTEMPTS, &[("provider", "p"), ("outcome", "success")], 6.0)
        .await;
    let text = gw.metrics_text().await;
    assert_eq!(
        support::prom::sum(&text, ATTEMPTS, &[("outcome", "connect_error")]),
        0.0
    );
    // A TCP check sends no HTTP request: the mock saw no GET.
    assert_eq!(up.health_hits(), 0);
    assert!(up.requests().iter().all(|r| r.method == "POST"));

    // The https backend passes on TCP alone: connected to, round after
    // round, and never sent a byte (no TLS handshake, no request).
    wait_healthy(&gw, "s", &format!("127.0.0.1:{}", silent.port()), 1.0).await;
    assert!(
        support::wait_until(QUICK, || silent.connections() >= 3).await,
        "{} checks",
        silent.connections()
    );
    assert_eq!(silent.bytes(), 0, "a TCP check wrote to the backend");

    // Something listens on the closed port again: it comes back, with no
    // request sent to find out.
    let back = RawUpstream::start_on(gone.parse().unwrap(), RawMode::Silent).await;
    wait_healthy(&gw, "p", &gone, 1.0).await;
    assert!(back.connections() >= 1);
    assert_eq!(back.bytes(), 0);
}

/// A backend whose health path answers 503 and whose API answers chat.
fn failing_health_path(model: &'static str) -> Behavior {
    Behavior::func(move |r| {
        if r.method == "GET" {
            return Reply::json(503, r#"{"status":"down"}"#);
        }
        Reply::json(
            200,
            serde_json::json!({
                "id": "c", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })
            .to_string(),
        )
    })
}

fn posts(m: &MockUpstream) -> usize {
    m.requests().iter().filter(|r| r.method == "POST").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_backends_are_tried_only_when_no_route_has_a_healthy_one() {
    let sick = MockUpstream::start(failing_health_path("sick-model")).await;
    let well = MockUpstream::start(Behavior::ChatEcho).await;
    let hc = ", health_check: { interval: 100ms, path: /ready }";
    let providers = format!(
        "  sick: {{ kind: openai, base_url: \"http://127.0.0.1:{}/v1\"{hc} }}\n  \
         well: {{ kind: openai, base_url: \"http://127.0.0.1:{}/v1\"{hc} }}\n",
        sick.port(),
        well.port()
    );
    let models = "  alone: { routes: [ { provider: sick, model: sick-model } ] }\n  \
                  pair: { routes: [ { provider: sick, model: sick-model }, { provider: well, model: w } ] }\n";
    let gw = Gateway::start(&config("", &providers, models)).await;
    wait_healthy(&gw, "sick", &format!("127.0.0.1:{}", sick.port()), 0.0).await;
    wait_healthy(&gw, "well", &format!("127.0.0.1:{}", well.port()), 1.0).await;

    // Another route is healthy: the unhealthy one is skipped.
    let r = chat(&gw, "pair", "pass-1").await;
    assert_eq!(r.status, 200, "{}", support::text(&r.body));
    assert_eq!(r.json()["model"], "w");
    assert_eq!(posts(&sick), 0);

    // No route has a healthy backend: one more pass tries the unhealthy one.
    let r = chat(&gw, "alone", "pass-2").await;
    assert_eq!(r.status, 200, "{}", support::text(&r.body));
    assert_eq!(r.json()["model"], "sick-model");
    assert_eq!(posts(&sick), 1);
    let line = gw.access_line("pass-2").await;
    assert_eq!(line["attempts"], 1, "{line}");
    assert_eq!(line["backend"], format!("127.0.0.1:{}", sick.port()));
}

// ---------------------------------------------------------------------------
// Reload: one health-check round before the swap
// ---------------------------------------------------------------------------

const ADMIN_KEY: &str = "tg-promises-admin-key-0001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_health_checks_new_backends_before_it_swaps() {
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let dead = refused_port();
    // Checks every hour: only the round a reload runs before its swap can
    // have taken the dead backend out (new backends start healthy).
    let top = format!("admin_listen: \"{{PLAIN}}\"\nadmin_key: \"{ADMIN_KEY}\"");
    let hc = "health_check: { interval: 1h, timeout: 500ms }, retry: { attempts: 2 }";
    let before = format!(
        "  p: {{ kind: openai, base_url: \"http://127.0.0.1:{}/v1\", {hc} }}\n",
        up.port()
    );
    let after = format!(
        "  p: {{ kind: openai, base_url: \"http://127.0.0.1:{up}/v1\", {hc}, \
         backends: [\"127.0.0.1:{up}\", \"127.0.0.1:{dead}\"] }}\n",
        up = up.port()
    );
    let models = "  m: { routes: [ { provider: p, model: x } ] }\n";
    let gw = Gateway::start(&config(&top, &before, models)).await;
    gw.write_config(&config(&top, &after, models));

    let r = support::client()
        .post(format!("http://{}/admin/reload", gw.plain_addr()))
        .header("authorization", format!("Bearer {ADMIN_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["reloaded"], true);

    // Right after the swap: the dead backend is known and already out.
    let text = gw.metrics_text().await;
    let backend = format!("127.0.0.1:{dead}");
    assert_eq!(
        support::prom::sample(&text, HEALTHY, &[("provider", "p"), ("backend", &backend)]),
        Some(0.0),
        "{}",
        text.lines()
            .filter(|l| l.starts_with(HEALTHY))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for i in 0..6 {
        let r = chat(&gw, "m", &format!("swap-{i}")).await;
        assert_eq!(r.status, 200, "{}", support::text(&r.body));
        assert_eq!(gw.access_line(&format!("swap-{i}")).await["attempts"], 1);
    }
    let text = gw.metrics_text().await;
    assert_eq!(
        support::prom::sum(&text, ATTEMPTS, &[("outcome", "connect_error")]),
        0.0,
        "a request tried the dead backend: it was not checked before the swap"
    );
}

// ---------------------------------------------------------------------------
// DNS: host-name backends, resolved off the request path and refreshed
// ---------------------------------------------------------------------------

/// The hosts file the gateway sees, in its own mount namespace: this test
/// rewrites it in place (a bind mount follows the inode) to change what a
/// name resolves to, for the gateway process only.
struct Hosts {
    _dir: tempfile::TempDir,
    hosts: std::path::PathBuf,
    nsswitch: std::path::PathBuf,
}

impl Hosts {
    fn new(content: &str) -> Hosts {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        let nsswitch = dir.path().join("nsswitch.conf");
        std::fs::write(&hosts, content).unwrap();
        // Files only: a name that is not there fails at once, with no DNS
        // query leaving the machine.
        std::fs::write(&nsswitch, "hosts: files\n").unwrap();
        Hosts {
            _dir: dir,
            hosts,
            nsswitch,
        }
    }

    fn set(&self, content: &str) {
        std::fs::write(&self.hosts, content).unwrap();
    }
}

/// Starts the gateway in a private mount namespace where `/etc/hosts` and
/// `/etc/nsswitch.conf` are `h`'s files (needs root, as the tests run).
async fn start_with_hosts(yaml: &str, h: &Hosts) -> Gateway {
    let ok = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "this test needs `unshare -m` (util-linux, run as root) to give the gateway its own /etc/hosts"
    );
    Gateway::start_wrapped(
        yaml,
        &[
            ("TG_HOSTS", h.hosts.to_str().unwrap()),
            ("TG_NSSWITCH", h.nsswitch.to_str().unwrap()),
        ],
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$TG_HOSTS\" /etc/hosts && \
             mount --bind \"$TG_NSSWITCH\" /etc/nsswitch.conf && exec \"$0\" \"$@\"",
        ],
    )
    .await
}

/// Sends requests until one is served by `backend` (per its access-log
/// line); returns how many it took.
async fn until_served_by(gw: &Gateway, backend: &str, tag: &str) -> usize {
    let deadline = Instant::now() + QUICK;
    for i in 0.. {
        let rid = format!("{tag}-{i}");
        let r = chat(gw, "m", &rid).await;
        if r.status == 200 && gw.access_line(&rid).await["backend"] == backend {
            return i + 1;
        }
        assert!(
            Instant::now() < deadline,
            "no request served by {backend}; last: {} {}; log:\n{}",
            r.status,
            support::text(&r.body),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_name_backends_follow_the_resolver_and_keep_their_addresses_when_it_fails() {
    let ok = r#"{"id":"c","object":"chat.completion","created":1,"model":"x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;
    let a = RawUpstream::start(RawMode::Json(200, ok.into())).await;
    let port = a.port();
    let b = RawUpstream::start_on(
        format!("127.0.0.2:{port}").parse().unwrap(),
        RawMode::Json(200, ok.into()),
    )
    .await;
    let (addr_a, addr_b) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let hosts = Hosts::new("127.0.0.1 localhost\n");
    let providers = format!(
        "  p: {{ kind: openai, base_url: \"http://backend.test:{port}/v1\", \
         backends: [\"backend.test:{port}\"], dns_refresh: 200ms, health_check: {{ enabled: false }} }}\n"
    );
    let gw = start_with_hosts(
        &config(
            "",
            &providers,
            "  m: { routes: [ { provider: p, model: x } ] }\n",
        ),
        &hosts,
    )
    .await;
    let failed = format!("resolving upstream backend.test:{port} failed");

    // The name resolves to nothing yet: no backend exists, 502.
    let r = chat(&gw, "m", "dns-none").await;
    assert_gateway_error(&r, (502, "api_error", "upstream_error"));
    assert_eq!(a.requests() + b.requests(), 0);
    assert!(gw.logs().contains(&failed), "{}", gw.logs());

    // The name starts resolving: a refresh picks it up.
    hosts.set("127.0.0.1 localhost\n127.0.0.1 backend.test\n");
    until_served_by(&gw, &addr_a, "dns-a").await;

    // Two addresses: two backends, both used.
    hosts.set("127.0.0.1 backend.test\n127.0.0.2 backend.test\n");
    until_served_by(&gw, &addr_b, "dns-ab").await;
    let a_before = a.requests();
    until_served_by(&gw, &addr_a, "dns-ab2").await;
    assert!(a.requests() > a_before);

    // The name moves to the second address only: the first is dropped.
    hosts.set("127.0.0.2 backend.test\n");
    let deadline = Instant::now() + QUICK;
    let mut n = 0;
    'moved: loop {
        // Six in a row on B: round robin over two would have hit A.
        for _ in 0..6 {
            n += 1;
            let rid = format!("dns-b-{n}");
            let r = chat(&gw, "m", &rid).await;
            assert_eq!(r.status, 200);
            if gw.access_line(&rid).await["backend"] != addr_b.as_str() {
                assert!(Instant::now() < deadline, "127.0.0.1 is still used");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue 'moved;
            }
        }
        break;
    }

    // The name stops resolving: its last addresses are kept.
    let failures = gw.logs().matches(&failed).count();
    hosts.set("127.0.0.1 localhost\n");
    assert!(
        support::wait_until(QUICK, || gw.logs().matches(&failed).count() >= failures + 2).await,
        "no failed lookup logged; log:\n{}",
        gw.logs()
    );
    let b_before = b.requests();
    for i in 0..3 {
        let r = chat(&gw, "m", &format!("dns-kept-{i}")).await;
        assert_eq!(r.status, 200, "{}", support::text(&r.body));
    }
    assert_eq!(b.requests(), b_before + 3);
}
