#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Output capture (issue 20) end to end: the real gateway in front of a
//! primary and a shadow mock that answer differently on some prompts. The
//! captures land in the key store's SQLite file (read here directly), the
//! admin API reports exactly what the mocks did, redaction removed what
//! was planted, retention deletes old rows, a locked store drops captures
//! without touching requests, and the report page renders in Debian's
//! headless chromium.

mod support;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{prom, Behavior, Gateway, MockUpstream, CONFIG_HEAD};

const KEY: &str = "tg-capture-test-key-0001";
const ADMIN_KEY: &str = "tg-capture-admin-key-0123";
const QUICK: Duration = Duration::from_secs(15);

/// Planted in a prompt (and echoed in the answers): none of it may be stored.
const PLANTED_KEY: &str = "sk-live-abcdefghijklmnopqrstuv";
const PLANTED_MAIL: &str = "jane.doe@example.com";
const PLANTED_TICKET: &str = "ACME-1234";

/// The prompts of [`populate`]; those with `DIFFER` get another answer
/// from the shadow.
fn prompts() -> Vec<String> {
    vec![
        "question zero".into(),
        "question one DIFFER".into(),
        format!("question two from {PLANTED_MAIL} with key {PLANTED_KEY} about {PLANTED_TICKET}"),
        "question three".into(),
        "question four DIFFER".into(),
        "question five".into(),
    ]
}

/// The primary answers every prompt the same way; the shadow too, except
/// for prompts with `DIFFER`.
fn answer(prompt: &str, model: &str) -> String {
    if model == "shadow-model" && prompt.contains("DIFFER") {
        "a completely unrelated reply".into()
    } else if prompt.starts_with("json") {
        format!("{{\"n\": {}}}", prompt.len())
    } else {
        format!("The answer to {prompt} is forty two")
    }
}

fn provider(name: &str, port: u16) -> String {
    format!(
        "  {name}:\n    kind: openai\n    base_url: \"http://127.0.0.1:{port}/v1\"\n    api_key: \"sk-provider-capture\"\n    health_check: {{ enabled: false }}\n    retry: {{ attempts: 1 }}\n"
    )
}

/// Aliases: `chat` (shadowed, captured), `plain` (shadowed, not captured),
/// `solo` (captured, no shadow), `never` (capture with sample 0), `ab` (an
/// A/B split over two routes, captured).
fn config(primary: u16, shadow: u16, top: &str) -> String {
    config_on(primary, shadow, top, r#"{ sqlite: "{TMP}/keys.db" }"#)
}

/// [`config`] with `store` as the `key_store:` section.
fn config_on(primary: u16, shadow: u16, top: &str, store: &str) -> String {
    let route = "{ provider: main, model: primary-model, price: { input: 1.0, output: 2.0 } }";
    let shade = "{ route: { provider: shade, model: shadow-model, price: { input: 0.5, output: 1.0 } }, sample: 1.0 }";
    format!(
        r#"{CONFIG_HEAD}admin_listen: "{{ADMIN}}"
admin_key: "{ADMIN_KEY}"
access_log: {{ path: "{{TMP}}/access.log" }}
key_store: {store}
{top}
providers:
{p}{s}
models:
  chat:
    routes: [ {route} ]
    shadow: {shade}
    capture: {{ sample: 1.0, max_bytes: 4096, redact: ["ACME-[0-9]{{4}}"] }}
  plain:
    routes: [ {route} ]
    shadow: {shade}
  solo:
    routes: [ {route} ]
    capture: {{ sample: 1.0 }}
  never:
    routes: [ {route} ]
    capture: {{ sample: 0.0 }}
  js:
    routes: [ {route} ]
    shadow: {shade}
    capture: {{ sample: 1.0 }}
  ab:
    routes:
      - {{ provider: main, model: primary-model, name: control, price: {{ input: 1.0, output: 2.0 }} }}
      - {{ provider: shade, model: candidate-model, name: candidate, price: {{ input: 0.5, output: 1.0 }} }}
    split:
      - {{ name: a, share: 0.5, routes: [control] }}
      - {{ name: b, share: 0.5, routes: [candidate] }}
    capture: {{ sample: 1.0 }}
keys:
  - {{ name: alice, key: "{KEY}" }}
"#,
        p = provider("main", primary),
        s = provider("shade", shadow),
    )
}

struct Setup {
    gw: Gateway,
    _primary: MockUpstream,
    _shadow: MockUpstream,
}

async fn start(top: &str) -> Setup {
    let primary = MockUpstream::start(Behavior::chat_answers(answer)).await;
    let shadow = MockUpstream::start(Behavior::chat_answers(answer)).await;
    let gw = Gateway::start(&config(primary.port(), shadow.port(), top)).await;
    Setup {
        gw,
        _primary: primary,
        _shadow: shadow,
    }
}

async fn chat(gw: &Gateway, alias: &str, rid: &str, prompt: &str, stream: bool) -> (u16, String) {
    let body = json!({"model": alias, "stream": stream, "messages": [{"role": "user", "content": prompt}]});
    let r = support::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", rid)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

fn admin_url(gw: &Gateway, path: &str) -> String {
    format!("http://{}{path}", gw.admin_addr())
}

async fn admin(gw: &Gateway, path: &str) -> (u16, Value) {
    let r = support::client()
        .get(admin_url(gw, path))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn admin_text(gw: &Gateway, path: &str) -> (u16, String) {
    let r = support::client()
        .get(admin_url(gw, path))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn db_path(gw: &Gateway) -> PathBuf {
    gw.tmp_dir().join("keys.db")
}

fn db(gw: &Gateway) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(db_path(gw)).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c
}

fn count(gw: &Gateway, filter: &str) -> i64 {
    db(gw)
        .query_row(
            &format!("SELECT COUNT(*) FROM captures WHERE {filter}"),
            [],
            |r| r.get(0),
        )
        .unwrap()
}

/// Waits until `filter` matches `n` rows.
async fn wait_rows(gw: &Gateway, filter: &str, n: i64) {
    let ok = support::wait_until(QUICK, || count(gw, filter) == n).await;
    assert!(
        ok,
        "{filter}: {} rows, want {n}; log:\n{}",
        count(gw, filter),
        gw.logs()
    );
}

/// Sends [`prompts`] to `chat` as `cap-0`…`cap-5` (`cap-0` streamed) and
/// waits until all six pairs are written.
async fn populate(gw: &Gateway) {
    for (i, p) in prompts().iter().enumerate() {
        let (s, body) = chat(gw, "chat", &format!("cap-{i}"), p, i == 0).await;
        assert_eq!(s, 200, "{body}");
    }
    wait_rows(gw, "alias = 'chat' AND s_route IS NOT NULL", 6).await;
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[tokio::test]
async fn the_report_matches_what_the_mocks_did_and_nothing_planted_is_stored() {
    let s = start("").await;
    let gw = &s.gw;
    // An alias without capture: shadowed, never captured.
    let (st, _) = chat(gw, "plain", "plain-0", "question zero", false).await;
    assert_eq!(st, 200);
    populate(gw).await;
    assert_eq!(count(gw, "alias = 'plain'"), 0);
    assert_eq!(count(gw, "1 = 1"), 6);

    let (st, r) = admin(gw, "/admin/capture/chat/report").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["captured"], 6);
    let pairs = r["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{r}");
    let p = &pairs[0];
    assert_eq!(p["route"], "main/primary-model");
    assert_eq!(p["shadow_route"], "shade/shadow-model");
    assert_eq!(p["pairs"], 6);
    assert_eq!(p["agreeing"], 4);
    assert_eq!(p["shadow_failed"], 0);
    assert_eq!(p["agreement_rate"].as_f64(), Some(4.0 / 6.0));
    assert_eq!(p["exact_rate"].as_f64(), Some(4.0 / 6.0));
    assert_eq!(p["finish_agree_rate"].as_f64(), Some(1.0));
    assert_eq!(p["tool_agree_rate"], Value::Null, "no tool calls");
    // The two differing answers share no token with the primary's.
    assert!(
        close(p["mean_similarity"].as_f64().unwrap(), 4.0 / 6.0),
        "{p}"
    );
    // 10 prompt and 5 completion tokens: 10 × 1 + 5 × 2 = 20 µUSD on the
    // primary, 10 × 0.5 + 5 × 1 = 10 µUSD on the shadow.
    assert!(
        close(
            p["primary"]["cost_per_request_usd"].as_f64().unwrap(),
            20e-6
        ),
        "{p}"
    );
    assert!(
        close(p["shadow"]["cost_per_request_usd"].as_f64().unwrap(), 10e-6),
        "{p}"
    );
    assert!(
        close(p["switch_cost_per_request_usd"].as_f64().unwrap(), -10e-6),
        "{p}"
    );
    assert!(close(p["switch_cost_usd"].as_f64().unwrap(), -60e-6), "{p}");
    assert_eq!(p["primary"]["requests"], 6);
    assert_eq!(p["shadow"]["ok"], 6);
    let routes = r["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["route"], "main/primary-model");
    assert_eq!(routes[0]["variant"], Value::Null);
    assert_eq!(routes[0]["requests"], 6);
    assert_eq!(routes[0]["ok"], 6);

    // The low-agreement list holds exactly the prompts the shadow answered
    // differently, and says what each side answered.
    let (st, low) = admin(gw, "/admin/capture/chat/pairs").await;
    assert_eq!(st, 200, "{low}");
    assert_eq!(low["total"], 2);
    let ids: Vec<&str> = low["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cap-1", "cap-4"]);
    assert_eq!(low["pairs"][0]["s_text"], "a completely unrelated reply");
    assert_eq!(
        low["pairs"][0]["p_text"],
        "The answer to question one DIFFER is forty two"
    );
    assert_eq!(low["pairs"][0]["score_ppm"], 0);
    // `below=1` lists every pair under a perfect score: the same two.
    let (_, all) = admin(gw, "/admin/capture/chat/pairs?below=1").await;
    assert_eq!(all["total"], 2);

    // One pair in full; the stream was assembled into its text.
    let (st, one) = admin(gw, "/admin/captures/cap-0").await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["p_text"], "The answer to question zero is forty two");
    assert_eq!(one["s_text"], "The answer to question zero is forty two");
    assert_eq!(one["p_finish"], "stop");
    assert_eq!(one["exact_match"], 1);
    assert_eq!(one["score_ppm"], 1_000_000);
    assert_eq!(one["p_prompt_tokens"], 10);
    assert_eq!(one["p_cost_nanos"], 20_000);
    assert_eq!(one["s_cost_nanos"], 10_000);
    assert_eq!(one["p_truncated"], 0);
    let (st, _) = admin(gw, "/admin/captures/no-such-request").await;
    assert_eq!(st, 404);

    // Redaction: read the file itself.
    let c = db(gw);
    let (req, ptext, stext): (String, String, String) = c
        .query_row(
            "SELECT request, p_text, s_text FROM captures WHERE request_id = 'cap-2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        ptext,
        "The answer to question two from [REDACTED] with key [REDACTED] about [REDACTED] is forty two"
    );
    assert_eq!(ptext, stext);
    assert_eq!(
        req,
        r#"[{"content":"question two from [REDACTED] with key [REDACTED] about [REDACTED]","role":"user"}]"#
    );
    let dump: String = c
        .prepare("SELECT request || p_text || COALESCE(s_text, '') || p_tools FROM captures")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for planted in [PLANTED_KEY, PLANTED_MAIL, PLANTED_TICKET] {
        assert!(!dump.contains(planted), "{planted} was stored");
    }
    let file = std::fs::read(db_path(gw)).unwrap();
    assert!(support::find(&file, PLANTED_MAIL.as_bytes()).is_none());

    // The access log says which requests were captured.
    assert_eq!(gw.access_line("cap-3").await["captured"], true);
    assert_eq!(gw.access_line("plain-0").await.get("captured"), None);

    // Metrics with bounded labels.
    let m = gw.metrics_text().await;
    let pair = [
        ("alias", "chat"),
        ("route", "main/primary-model"),
        ("shadow_route", "shade/shadow-model"),
    ];
    prom::assert_sample(&m, "tollgate_capture_pairs_total", &pair, 6.0);
    prom::assert_sample(&m, "tollgate_capture_agreements_total", &pair, 4.0);
    prom::assert_sample(&m, "tollgate_capture_score_total", &pair, 4.0);
    prom::assert_sample(
        &m,
        "tollgate_capture_written_total",
        &[("alias", "chat")],
        6.0,
    );
    prom::assert_sample(
        &m,
        "tollgate_capture_requests_total",
        &[
            ("alias", "chat"),
            ("route", "main/primary-model"),
            ("variant", "none"),
        ],
        6.0,
    );

    // Exports: six rows, newest first.
    let (st, jsonl) = admin_text(gw, "/admin/capture/chat/export").await;
    assert_eq!(st, 200);
    let rows: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[0]["request_id"], "cap-5");
    let (st, csv) = admin_text(gw, "/admin/capture/chat/export?format=csv").await;
    assert_eq!(st, 200);
    assert_eq!(csv.lines().count(), 7, "{csv}");
    assert!(csv.starts_with("seq,request_id,ts_ms,alias,"), "{csv}");
    let (st, page2) = admin_text(gw, "/admin/capture/chat/export?limit=4").await;
    assert_eq!((st, page2.lines().count()), (200, 4));
    let (st, e) = admin(gw, "/admin/capture/chat/export?format=xml").await;
    assert_eq!(st, 400);
    assert_eq!(e["error"]["param"], "format");

    // Nothing captured is reachable without the admin key, nor through the
    // client API.
    let r = support::client()
        .get(admin_url(gw, "/admin/capture/chat/report"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for path in [
        "/admin/capture/chat/report",
        "/admin/captures/cap-0",
        "/v1/admin/captures/cap-0",
    ] {
        let r = support::client()
            .get(gw.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("forty two"), "{path}: {body}");
    }
    let (st, e) = admin(gw, "/admin/capture/unknown/report").await;
    assert_eq!(st, 404, "{e}");
}

#[tokio::test]
async fn retention_deletes_old_rows_and_sample_zero_captures_nothing() {
    let s = start("capture_retention: { max_age: 1h, max_rows: 3, interval: 1s }").await;
    let gw = &s.gw;
    let old = chrono_ms() - 2 * 3600 * 1000;
    db(gw)
        .execute(
            "INSERT INTO captures (request_id, ts_ms, alias, endpoint, request, json_requested, p_route, \
             p_status, p_text, p_tools, p_latency_ms, p_truncated) \
             VALUES ('old-0', ?1, 'solo', 'chat_completions', '[]', 0, 'main/primary-model', 200, 'x', '[]', 1, 0)",
            [old],
        )
        .unwrap();
    for i in 0..3 {
        let (st, _) = chat(gw, "never", &format!("never-{i}"), "question", false).await;
        assert_eq!(st, 200);
    }
    for i in 0..5 {
        let (st, body) = chat(gw, "solo", &format!("solo-{i}"), "question", false).await;
        assert_eq!(st, 200, "{body}");
    }
    // The old row goes by age, then all but the newest three by count.
    let ok = support::wait_until(QUICK, || {
        let c = db(gw);
        let ids: Vec<String> = c
            .prepare("SELECT request_id FROM captures ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        ids == ["solo-2", "solo-3", "solo-4"]
    })
    .await;
    assert!(ok, "log:\n{}", gw.logs());
    assert_eq!(count(gw, "alias = 'never'"), 0);
    assert_eq!(gw.access_line("never-0").await.get("captured"), None);
    assert_eq!(gw.access_line("solo-0").await["captured"], true);
    assert_eq!(
        gw.wait_sample(
            "tollgate_capture_deleted_total",
            &[("reason", "rows")],
            2.0,
            QUICK
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        gw.wait_sample(
            "tollgate_capture_deleted_total",
            &[("reason", "age")],
            1.0,
            QUICK
        )
        .await,
        Some(1.0)
    );
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_locked_store_drops_captures_and_requests_still_succeed() {
    let s = start("").await;
    let gw = &s.gw;
    let lock = db(gw);
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for i in 0..5 {
        let (st, body) = chat(gw, "solo", &format!("locked-{i}"), "question", false).await;
        assert_eq!(st, 200, "{body}");
    }
    assert_eq!(
        gw.wait_sample(
            "tollgate_capture_dropped_total",
            &[("reason", "store")],
            5.0,
            QUICK
        )
        .await,
        Some(5.0),
        "log:\n{}",
        gw.logs()
    );
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);
    // The writer reconnects: the next capture is written.
    let (st, _) = chat(gw, "solo", "after-0", "question", false).await;
    assert_eq!(st, 200);
    wait_rows(gw, "request_id = 'after-0'", 1).await;
    assert_eq!(count(gw, "request_id LIKE 'locked-%'"), 0);
    let m = gw.metrics_text().await;
    assert_eq!(prom::sum(&m, "tollgate_capture_dropped_total", &[]), 5.0);
}

fn chromium() -> PathBuf {
    for c in ["chromium", "chromium-browser"] {
        if let Ok(o) = Command::new("sh")
            .args(["-c", &format!("command -v {c}")])
            .output()
        {
            let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success() && !p.is_empty() {
                return PathBuf::from(p);
            }
        }
    }
    panic!("no chromium on PATH: run `sh scripts/deps.sh --tests` (it installs Debian's chromium)");
}

fn headless(bin: &Path, profile: &Path, args: &[&str]) -> std::process::Output {
    // Bounded: a browser that hangs (no display, a crashed GPU process)
    // fails the test after two minutes instead of holding the suite.
    Command::new("timeout")
        .args(["--kill-after=10", "120"])
        .arg(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_report_page_renders_the_table_in_headless_chromium() {
    let bin = chromium();
    let s = start("").await;
    let gw = &s.gw;
    populate(gw).await;
    // The page itself is static and holds no data.
    let page = support::client()
        .get(admin_url(gw, "/admin/capture.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("forty two"));

    let url = admin_url(
        gw,
        &format!("/admin/capture.html#alias=chat&token={ADMIN_KEY}"),
    );
    let profile = tempfile::tempdir().unwrap();
    let bin2 = bin.clone();
    let (p, u) = (profile.path().to_path_buf(), url.clone());
    let out = tokio::task::spawn_blocking(move || headless(&bin2, &p, &["--dump-dom", &u]))
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains(r#"data-state="ready""#),
        "the page did not finish: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The aggregate rows, with the exact numbers of the report.
    assert!(
        dom.contains(
            r#"<tr><td class="t">main/primary-model</td><td class="t">–</td><td>6</td><td>6</td>"#
        ),
        "{dom}"
    );
    assert!(
        dom.contains(
            r#"<tr><td class="t">main/primary-model</td><td class="t">shade/shadow-model</td><td>6</td><td>4</td><td>66.7%</td><td>66.7%</td><td>0.667</td><td>100.0%</td>"#
        ),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<svg width="880""#) && dom.contains("66.7%</text>"),
        "{dom}"
    );
    // The low-agreement pairs, side by side, exactly the differing ones.
    let shown: Vec<&str> = dom
        .match_indices(r#"data-request-id=""#)
        .map(|(i, m)| {
            let rest = &dom[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(shown, ["cap-1", "cap-4"], "{dom}");
    assert!(
        dom.contains(r#"<pre class="shadow">a completely unrelated reply</pre>"#),
        "{dom}"
    );
    assert!(dom.contains("1–2 of 2"), "{dom}");

    // A screenshot of the rendered page: a PNG of the window's size.
    let shot = profile.path().join("report.png");
    let (p, u, s2) = (profile.path().to_path_buf(), url, shot.clone());
    let out = tokio::task::spawn_blocking(move || {
        headless(
            &bin,
            &p,
            &[
                "--window-size=1200,900",
                &format!("--screenshot={}", s2.display()),
                &u,
            ],
        )
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if let Some(dir) = std::env::var_os("CAPTURE_SCREENSHOT_DIR") {
        // For a look at the page: `CAPTURE_SCREENSHOT_DIR=/tmp cargo test --test capture`.
        std::fs::copy(&shot, Path::new(&dir).join("capture-report.png")).unwrap();
    }
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // The IHDR chunk: width and height, big-endian.
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 1200);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_pairs_are_reported_and_retention_holds_the_same() {
    let pg = support::postgres::Postgres::start();
    let primary = MockUpstream::start(Behavior::chat_answers(answer)).await;
    let shadow = MockUpstream::start(Behavior::chat_answers(answer)).await;
    let store = format!("{{ postgres: \"{}\" }}", pg.url_template());
    let yaml = config_on(
        primary.port(),
        shadow.port(),
        &format!("capture_retention: {{ max_age: 1h, max_rows: 4, interval: 1s }}\n{WORKLOADS}"),
        &store,
    );
    let gw = Gateway::start_with_env(&yaml, &pg.env()).await;
    let gw = &gw;
    // Tagged from pg-1 on: even ones `batch`, odd ones `summarize`.
    for (i, p) in prompts().iter().enumerate() {
        let rid = format!("pg-{i}");
        let (s, body) = match i {
            0 => chat(gw, "chat", &rid, p, true).await,
            i if i % 2 == 0 => chat_tagged(gw, &rid, p, "use_case=batch").await,
            _ => chat_tagged(gw, &rid, p, "use_case=summarize").await,
        };
        assert_eq!(s, 200, "{body}");
    }
    // Retention keeps the newest four of the six; they are pg-2 to pg-5,
    // of which pg-4 differs.
    let mut report = Value::Null;
    for _ in 0..300 {
        let (st, r) = admin(gw, "/admin/capture/chat/report").await;
        assert_eq!(st, 200, "{r}");
        let deleted = prom::sum(
            &gw.metrics_text().await,
            "tollgate_capture_deleted_total",
            &[("reason", "rows")],
        );
        if r["captured"] == 4 && deleted == 2.0 {
            report = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(report["captured"], 4, "log:\n{}", gw.logs());
    let p = &report["pairs"][0];
    assert_eq!(
        (p["pairs"].as_u64(), p["agreeing"].as_u64()),
        (Some(4), Some(3)),
        "{p}"
    );
    assert_eq!(p["agreement_rate"].as_f64(), Some(0.75));
    assert!(
        close(p["switch_cost_per_request_usd"].as_f64().unwrap(), -10e-6),
        "{p}"
    );
    let (st, low) = admin(gw, "/admin/capture/chat/pairs?below=1").await;
    assert_eq!(st, 200, "{low}");
    assert_eq!(low["total"], 1);
    assert_eq!(low["pairs"][0]["request_id"], "pg-4");
    // The tag filter and breakdown on PostgreSQL: pg-2 and pg-4 (which
    // differs) are `batch`, pg-3 and pg-5 `summarize`.
    let uc = &report["by_tag"]["use_case"];
    assert_eq!(uc["batch"]["agreement_rate"].as_f64(), Some(0.5), "{uc}");
    assert_eq!(
        uc["summarize"]["agreement_rate"].as_f64(),
        Some(1.0),
        "{uc}"
    );
    let (st, b) = admin(gw, "/admin/capture/chat/report?tag=use_case=batch").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(
        (b["captured"].as_u64(), b["pairs"][0]["agreeing"].as_u64()),
        (Some(2), Some(1))
    );
    let (_, low) = admin(gw, "/admin/capture/chat/pairs?below=1&tag=use_case=batch").await;
    assert_eq!(low["total"], 1, "{low}");
    let (_, low) = admin(
        gw,
        "/admin/capture/chat/pairs?below=1&tag=use_case=summarize",
    )
    .await;
    assert_eq!(low["total"], 0, "{low}");
    let (st, one) = admin(gw, "/admin/captures/pg-2").await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["tags"], "use_case=batch");
    let text = one["p_text"].as_str().unwrap();
    assert!(
        !text.contains(PLANTED_MAIL) && !text.contains(PLANTED_KEY),
        "{text}"
    );
    let (st, csv) = admin_text(gw, "/admin/capture/chat/export?format=csv&limit=3").await;
    assert_eq!((st, csv.lines().count()), (200, 4), "{csv}");
}

#[tokio::test]
async fn a_b_variants_are_aggregated_per_variant_and_route() {
    let s = start("").await;
    let gw = &s.gw;
    for i in 0..10 {
        let body = json!({"model": "ab", "user": format!("user-{i}"),
                          "messages": [{"role": "user", "content": "question"}]});
        let r = support::client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-request-id", format!("ab-{i}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    wait_rows(gw, "alias = 'ab'", 10).await;
    // What the gateway decided, from the access log: variant → requests.
    let mut want = std::collections::BTreeMap::new();
    for i in 0..10 {
        let line = gw.access_line(&format!("ab-{i}")).await;
        assert_eq!(line["captured"], true);
        let v = line["variant"].as_str().unwrap().to_string();
        *want.entry(v).or_insert(0u64) += 1;
    }
    assert_eq!(
        want.len(),
        2,
        "ten users all landed in one variant: {want:?}"
    );
    let (st, r) = admin(gw, "/admin/capture/ab/report").await;
    assert_eq!(st, 200, "{r}");
    let mut got = std::collections::BTreeMap::new();
    for row in r["routes"].as_array().unwrap() {
        let v = row["variant"].as_str().unwrap().to_string();
        let route = row["route"].as_str().unwrap();
        let cost = row["cost_per_request_usd"].as_f64().unwrap();
        match v.as_str() {
            "a" => assert!(route == "main/primary-model" && close(cost, 20e-6), "{row}"),
            "b" => assert!(
                route == "shade/candidate-model" && close(cost, 10e-6),
                "{row}"
            ),
            _ => panic!("{row}"),
        }
        got.insert(v, row["requests"].as_u64().unwrap());
    }
    assert_eq!(got, want);
    assert_eq!(r["pairs"], json!([]), "no shadow on `ab`");
    let m = gw.metrics_text().await;
    for (v, n) in &want {
        let route = if v == "a" {
            "main/primary-model"
        } else {
            "shade/candidate-model"
        };
        prom::assert_sample(
            &m,
            "tollgate_capture_requests_total",
            &[("alias", "ab"), ("route", route), ("variant", v)],
            *n as f64,
        );
    }
}

#[tokio::test]
async fn json_and_schema_validity_are_reported_for_json_schema_requests() {
    let s = start("").await;
    let gw = &s.gw;
    let format = json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}},
        "additionalProperties": false}}});
    for (i, prompt) in ["json one", "json two DIFFER", "json three"]
        .iter()
        .enumerate()
    {
        let body = json!({"model": "js", "response_format": format,
                          "messages": [{"role": "user", "content": prompt}]});
        let r = support::client()
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(KEY)
            .header("x-request-id", format!("js-{i}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    wait_rows(gw, "alias = 'js' AND score_ppm IS NOT NULL", 3).await;
    let (st, r) = admin(gw, "/admin/capture/js/report").await;
    assert_eq!(st, 200, "{r}");
    let p = &r["pairs"][0];
    assert_eq!(
        (p["pairs"].as_u64(), p["agreeing"].as_u64()),
        (Some(3), Some(2)),
        "{p}"
    );
    assert_eq!(p["primary"]["json_valid_rate"].as_f64(), Some(1.0));
    assert_eq!(p["primary"]["schema_valid_rate"].as_f64(), Some(1.0));
    assert_eq!(p["shadow"]["json_valid_rate"].as_f64(), Some(2.0 / 3.0));
    assert_eq!(p["shadow"]["schema_valid_rate"].as_f64(), Some(2.0 / 3.0));
    assert_eq!(r["routes"][0]["json_valid_rate"].as_f64(), Some(1.0));
    let (_, one) = admin(gw, "/admin/captures/js-1").await;
    assert_eq!(one["json_requested"], 1);
    assert_eq!(
        (one["p_json_valid"].as_i64(), one["s_json_valid"].as_i64()),
        (Some(1), Some(0))
    );
    assert_eq!(one["p_text"], "{\"n\": 15}");
    // JSON validity disagrees: the pair scores 0 whatever its text.
    assert_eq!(one["score_ppm"], 0);
}

const WORKLOADS: &str =
    "workloads: { tags: { use_case: [summarize, support, batch], priority: [interactive, background] } }";

async fn chat_tagged(gw: &Gateway, rid: &str, prompt: &str, tags: &str) -> (u16, String) {
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": prompt}]});
    let mut r = support::client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .header("x-request-id", rid)
        .json(&body);
    if !tags.is_empty() {
        r = r.header("x-tollgate-tags", tags);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

#[tokio::test]
async fn workload_tags_are_recorded_filter_the_report_and_split_it_by_tag() {
    let s = start(WORKLOADS).await;
    let gw = &s.gw;
    // batch: 1 of 3 agree; summarize (interactive): 3 of 4; one untagged.
    let sent = [
        ("wl-b0", "batch zero", "use_case=batch"),
        ("wl-b1", "batch one DIFFER", "use_case=batch"),
        ("wl-b2", "batch two DIFFER", "use_case=batch"),
        (
            "wl-s0",
            "sum zero",
            "priority=interactive,use_case=summarize",
        ),
        (
            "wl-s1",
            "sum one",
            "use_case=summarize, priority=interactive",
        ),
        (
            "wl-s2",
            "sum two",
            "use_case=summarize,priority=interactive",
        ),
        (
            "wl-s3",
            "sum three DIFFER",
            "use_case=summarize,priority=interactive",
        ),
        ("wl-u0", "untagged DIFFER", ""),
    ];
    for (rid, prompt, tags) in sent {
        let (st, body) = chat_tagged(gw, rid, prompt, tags).await;
        assert_eq!(st, 200, "{rid}: {body}");
    }
    wait_rows(gw, "alias = 'chat' AND s_route IS NOT NULL", 8).await;
    // The column holds the declared keys with a value, in declared (name) order.
    assert_eq!(count(gw, "tags = 'use_case=batch'"), 3);
    assert_eq!(
        count(gw, "tags = 'priority=interactive,use_case=summarize'"),
        4
    );
    assert_eq!(count(gw, "tags = ''"), 1);

    let (st, r) = admin(gw, "/admin/capture/chat/report").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["captured"], 8);
    assert_eq!(r["tag"], Value::Null);
    assert_eq!(r["pairs"][0]["pairs"], 8);
    assert_eq!(r["pairs"][0]["agreeing"], 4);
    let by = &r["by_tag"];
    let uc = &by["use_case"];
    assert_eq!(
        uc.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["batch", "summarize", "support"],
        "only the declared values: {by}"
    );
    assert_eq!(uc["batch"]["requests"], 3);
    assert_eq!(uc["batch"]["pairs"], 3);
    assert_eq!(uc["batch"]["agreeing"], 1);
    assert_eq!(uc["batch"]["agreement_rate"].as_f64(), Some(1.0 / 3.0));
    assert_eq!(uc["summarize"]["pairs"], 4);
    assert_eq!(uc["summarize"]["agreement_rate"].as_f64(), Some(0.75));
    assert_eq!(uc["support"]["pairs"], 0);
    assert_eq!(uc["support"]["agreement_rate"], Value::Null);
    assert_eq!(uc["support"]["primary_cost_per_request_usd"], Value::Null);
    assert_eq!(by["priority"]["interactive"]["pairs"], 4);
    assert_eq!(
        by["priority"]["interactive"]["agreement_rate"].as_f64(),
        Some(0.75)
    );
    assert_eq!(by["priority"]["background"]["pairs"], 0);
    // 10 × 1 + 5 × 2 = 20 µUSD on the primary, 10 µUSD on the shadow.
    for v in ["batch", "summarize"] {
        let c = &uc[v];
        assert!(
            close(c["primary_cost_per_request_usd"].as_f64().unwrap(), 20e-6),
            "{c}"
        );
        assert!(
            close(c["shadow_cost_per_request_usd"].as_f64().unwrap(), 10e-6),
            "{c}"
        );
    }

    // The filter restricts the aggregate, its breakdown and the pairs list.
    let (st, b) = admin(gw, "/admin/capture/chat/report?tag=use_case=batch").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["tag"], "use_case=batch");
    assert_eq!(b["captured"], 3);
    assert_eq!(b["pairs"][0]["pairs"], 3);
    assert_eq!(b["pairs"][0]["agreeing"], 1);
    assert_eq!(b["routes"][0]["requests"], 3);
    assert_eq!(b["by_tag"]["use_case"]["summarize"]["pairs"], 0);
    assert_eq!(b["by_tag"]["priority"]["interactive"]["pairs"], 0);
    let (st, b) = admin(gw, "/admin/capture/chat/report?tag=priority%3Dinteractive").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["captured"], 4);
    let (st, low) = admin(gw, "/admin/capture/chat/pairs?tag=use_case=batch").await;
    assert_eq!(st, 200, "{low}");
    assert_eq!(low["total"], 2);
    let ids: Vec<&str> = low["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["wl-b1", "wl-b2"]);
    assert_eq!(low["pairs"][0]["tags"], "use_case=batch");
    let (_, low) = admin(gw, "/admin/capture/chat/pairs?tag=use_case=summarize").await;
    assert_eq!(low["total"], 1);
    let (_, low) = admin(gw, "/admin/capture/chat/pairs").await;
    assert_eq!(low["total"], 4, "unfiltered: the untagged pair too");
    for bad in [
        "use_case=nope",
        "team=x",
        "use_case",
        "use_case=batch,priority=interactive",
    ] {
        for ep in ["report", "pairs"] {
            let (st, e) = admin(gw, &format!("/admin/capture/chat/{ep}?tag={bad}")).await;
            assert_eq!(st, 400, "{ep} {bad}: {e}");
            assert_eq!(e["error"]["param"], "tag", "{e}");
            assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        }
    }

    // One capture and the exports carry the tags.
    let (st, one) = admin(gw, "/admin/captures/wl-s1").await;
    assert_eq!(st, 200, "{one}");
    assert_eq!(one["tags"], "priority=interactive,use_case=summarize");
    let (_, one) = admin(gw, "/admin/captures/wl-u0").await;
    assert_eq!(one["tags"], "");
    let (st, jsonl) = admin_text(gw, "/admin/capture/chat/export").await;
    assert_eq!(st, 200);
    let tags: std::collections::BTreeMap<String, String> = jsonl
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| {
            (
                r["request_id"].as_str().unwrap().to_string(),
                r["tags"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(tags.len(), 8);
    assert_eq!(tags["wl-b0"], "use_case=batch");
    assert_eq!(tags["wl-s3"], "priority=interactive,use_case=summarize");
    assert_eq!(tags["wl-u0"], "");
    let (st, csv) = admin_text(gw, "/admin/capture/chat/export?format=csv").await;
    assert_eq!(st, 200);
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().ends_with(",score_ppm,tags"), "{csv}");
    assert!(
        lines.next().unwrap().ends_with(",\"\""),
        "newest first: the untagged row: {csv}"
    );
    assert!(csv.contains(",\"use_case=batch\"\n"), "{csv}");
}
