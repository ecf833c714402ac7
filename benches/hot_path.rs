//! Criterion micro-benchmarks of Tollgate's per-request work.
//!
//! `cargo bench --bench hot_path` (add `-- --test` to run each once).
//!
//! * `rewrite`: body parse (`rewrite::parse`) and model rewrite
//!   (`rewrite::splice` with a `rewrite::json_string` built once) at 1 KiB,
//!   100 KiB and 8 MiB.
//! * `key_lookup`: `auth::KeyIndex::lookup` with 10 and 1000 keys.
//! * `route_select`: alias lookup in `Runtime::models` plus
//!   `Upstream::select`, with 1 and 3 backends.
//! * `metrics`: the per-request recording `proxy/finish.rs` does.
//! * `sse`: one streamed chunk through the bare scanner (`sse::Scanner`) and
//!   through the whole stream meter (`accounting::meter::StreamMeter`: scan,
//!   parse the chunk's JSON, count the content).
//! * `governance`: admission plus settle of one request against the memory
//!   store, with no limits, with a key's rpm and concurrency, and with every
//!   level set (key rpm/tpm/concurrency and a spend budget, the team's spend
//!   and token budgets, the alias's tpm); the worst-case estimate of a 1 KiB
//!   body (the tokenizer); both admission steps with the estimate
//!   (`*_two_steps_1KiB`, as a request makes them); and, when
//!   `redis-server` is installed, the same against a Redis on loopback (two
//!   round trips for one step and its settle, three for two steps).
//! * `translate`: Anthropic stream translation per event (`text_delta` and
//!   `input_json_delta` through `translate::anthropic::ChatStream`, and a
//!   whole SSE event through scanner + translator), and the request
//!   translation of a 1 KiB chat body.
//! * `routing`: `routing::decide` among ten routes with every eligibility
//!   filter active (tier, region, capability from the body, context
//!   window), for each strategy; and the p95 lookup hedging uses.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::fmt::Debug;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;
use tollgate::auth::{digest, KeyIndex};
use tollgate::rewrite::{json_string, parse, splice};
use tollgate::runtime::{ProviderRt, Runtime};
use tollgate::telemetry::metrics;

fn must<T, E: Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e:?}"),
    }
}

/// A chat request of about `size` bytes (a paragraph short at most): a few
/// short messages, then one long user message with escapes and non-ASCII, as
/// real documents have.
fn chat_body(size: usize) -> bytes::Bytes {
    let build = |text: &str| {
        serde_json::json!({
            "model": "fast",
            "messages": [
                {"role": "system", "content": "You are a careful assistant for an online bookshop. Be concise."},
                {"role": "user", "content": "Hi! Order #A-20931 arrived with one book missing. Can you check?"},
                {"role": "assistant", "content": "The second parcel left on Friday and should arrive within three working days."},
                {"role": "user", "content": text},
            ],
            "temperature": 0.7,
            "max_tokens": 256,
        })
        .to_string()
    };
    let para = "Notes: the expedition crosses the ice; \"shifgrethor\" again,\twith \u{e9} and newlines\n. ";
    let overhead = build("").len();
    let para_len = serde_json::Value::from(para).to_string().len() - 2;
    let n = size.saturating_sub(overhead) / para_len;
    bytes::Bytes::from(build(&para.repeat(n)))
}

fn rewrite(c: &mut Criterion) {
    let model_json = json_string("bench-model-1");
    let mut g = c.benchmark_group("rewrite");
    for (name, size) in [
        ("1KiB", 1024usize),
        ("100KiB", 100 * 1024),
        ("8MiB", 8 * 1024 * 1024),
    ] {
        let body = chat_body(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        if size >= 1 << 20 {
            g.sample_size(10);
            g.measurement_time(Duration::from_secs(4));
        } else {
            g.sample_size(50);
            g.measurement_time(Duration::from_secs(3));
        }
        g.bench_with_input(BenchmarkId::new("parse", name), &body, |b, body| {
            b.iter(|| must(parse(black_box(body)), "parse"))
        });
        g.bench_with_input(BenchmarkId::new("parse+splice", name), &body, |b, body| {
            b.iter(|| {
                let p = must(parse(black_box(body)), "parse");
                splice(body, &p.model_span, &model_json)
            })
        });
    }
    g.finish();
}

fn key_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("key_lookup");
    g.measurement_time(Duration::from_secs(2));
    for n in [10usize, 1000] {
        let keys: Vec<String> = (0..n)
            .map(|i| format!("sk-tollgate-{i:08}-abcdef"))
            .collect();
        let index = KeyIndex::new(keys.iter().map(|k| digest(k.as_bytes())).collect());
        let presented = keys[n / 2].clone().into_bytes();
        g.bench_with_input(BenchmarkId::new("lookup", n), &presented, |b, key| {
            b.iter(|| index.lookup(black_box(key)))
        });
    }
    g.finish();
}

fn runtime_with(backends: usize) -> Runtime {
    let list: Vec<String> = (0..backends)
        .map(|i| format!("\"127.0.0.1:{}\"", 19_101 + i))
        .collect();
    let mut models = String::new();
    for i in 0..20 {
        models.push_str(&format!(
            "  alias-{i}:\n    routes:\n      - provider: p\n        model: upstream-{i}\n"
        ));
    }
    let yaml = format!(
        "listen: \"127.0.0.1:18080\"\n\
         providers:\n  p:\n    kind: openai\n    base_url: http://127.0.0.1:19100/v1\n    \
         backends: [{}]\n    health_check:\n      enabled: false\n\
         models:\n  fast:\n    routes:\n      - provider: p\n        model: bench-model-1\n{models}\
         keys:\n  - name: bench\n    key: sk-bench\n",
        list.join(", ")
    );
    let cfg = must(
        tollgate::config::parse_str(&yaml, |_| None, Path::new(".")),
        "config",
    );
    let rt = must(Runtime::build(cfg, &Default::default()), "runtime");
    // `select` reads the balancer, which is empty until discovery has run.
    let tokio_rt = must(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        "tokio",
    );
    for up in rt.upstreams.values() {
        tokio_rt.block_on(up.resolve());
    }
    rt
}

fn route_select(c: &mut Criterion) {
    let mut g = c.benchmark_group("route_select");
    g.measurement_time(Duration::from_secs(2));
    let request_id = b"6ff69d4419c9a27000000000";
    for backends in [1usize, 3] {
        let rt = runtime_with(backends);
        g.bench_with_input(BenchmarkId::new("alias+select", backends), &rt, |b, rt| {
            b.iter(|| {
                let Some(m) = rt.models.get(black_box("fast")) else {
                    panic!("alias missing")
                };
                let ProviderRt::Http(up) = &*m.routes[0].provider else {
                    panic!("not an HTTP provider")
                };
                must(
                    up.select(request_id, &[], false).map_err(|_| "none"),
                    "select",
                )
            })
        });
    }
    g.finish();
}

fn metrics_record(c: &mut Criterion) {
    let Some(m) = metrics::get() else {
        panic!("metrics registry unavailable")
    };
    let mut g = c.benchmark_group("metrics");
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("counter_inc", |b| {
        b.iter(|| {
            m.requests
                .with_label_values(&[
                    "fast",
                    "bench",
                    "bench-model-1",
                    "bench",
                    "chat_completions",
                    "2xx",
                ])
                .inc()
        })
    });
    // What `finish::log_request` does for a plain successful request: owned
    // label strings, the request counter and two histograms.
    g.bench_function("finish_request", |b| {
        b.iter(|| {
            let name = |v: Option<&str>| v.unwrap_or(metrics::NONE).to_string();
            let key = name(black_box(Some("bench")));
            let provider = name(black_box(Some("bench")));
            let upstream_model = name(black_box(Some("bench-model-1")));
            let model = name(black_box(Some("fast")));
            let endpoint = "chat_completions";
            let route_labels = [model.as_str(), &provider, &upstream_model, &key];
            let class = metrics::status_class(black_box(200));
            let mut labels = route_labels.to_vec();
            labels.extend([endpoint, class]);
            m.requests.with_label_values(&labels).inc();
            m.duration
                .with_label_values(&[&model, &provider, endpoint])
                .observe(black_box(0.0123));
            m.upstream_latency
                .with_label_values(&[&provider])
                .observe(black_box(0.0042));
        })
    });
    g.finish();
}

/// A typical `chat.completion.chunk` event as an OpenAI-kind upstream sends it.
fn sse_chunk(i: usize) -> bytes::Bytes {
    bytes::Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-AbC123\",\"object\":\"chat.completion.chunk\",\
         \"created\":1732500000,\"model\":\"gpt-4o-mini-2024-07-18\",\
         \"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{{\"index\":0,\
         \"delta\":{{\"content\":\" token{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
    ))
}

fn sse_scan(c: &mut Criterion) {
    use tollgate::accounting::meter::StreamMeter;
    use tollgate::base::endpoint::Endpoint;
    use tollgate::sse::Scanner;
    let chunks: Vec<bytes::Bytes> = (0..64).map(sse_chunk).collect();
    let mut g = c.benchmark_group("sse");
    g.measurement_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(chunks[0].len() as u64));
    g.bench_function("scan_chunk", |b| {
        let mut scanner = Scanner::new(1 << 20);
        let mut i = 0usize;
        b.iter(|| {
            let mut events = 0u32;
            let chunk = &chunks[i % chunks.len()];
            i += 1;
            must(scanner.feed(black_box(chunk), |_| events += 1), "feed");
            events
        })
    });
    g.bench_function("meter_chunk", |b| {
        let mut meter = StreamMeter::new(Endpoint::ChatCompletions, true);
        let mut i = 0usize;
        b.iter(|| {
            let mut body = Some(chunks[i % chunks.len()].clone());
            i += 1;
            must(meter.on_chunk(black_box(&mut body), false), "on_chunk");
            body
        })
    });
    g.finish();
}

fn translate(c: &mut Criterion) {
    use bytes::BytesMut;
    use tollgate::translate::anthropic::{chat_request, ChatStream};
    use tollgate::translate::pipe::Pipe;
    use tollgate::translate::{RequestOpts, ResponseOpts, StreamTranslator};
    let opts = ResponseOpts {
        model: "claude-sonnet-4-5",
        request_id: "req-1",
        include_usage: true,
    };
    let start = br#"{"type":"message_start","message":{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#;
    let text_block =
        br#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
    let tool_block = br#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#;
    let text_delta = br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" token with \"quotes\" and \u00e9"}}"#;
    let json_delta = br#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\": \"San Fra"}}"#;
    let mut g = c.benchmark_group("translate");
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("anthropic_text_delta_event", |b| {
        let mut t = ChatStream::new(&opts);
        let mut out = BytesMut::with_capacity(1 << 16);
        t.event(start, &mut out);
        t.event(text_block, &mut out);
        b.iter(|| {
            out.clear();
            t.event(black_box(text_delta), &mut out);
            out.len()
        })
    });
    g.bench_function("anthropic_input_json_delta_event", |b| {
        let mut t = ChatStream::new(&opts);
        let mut out = BytesMut::with_capacity(1 << 16);
        t.event(start, &mut out);
        t.event(tool_block, &mut out);
        b.iter(|| {
            out.clear();
            t.event(black_box(json_delta), &mut out);
            out.len()
        })
    });
    let mut sse = b"event: content_block_delta\ndata: ".to_vec();
    sse.extend_from_slice(text_delta);
    sse.extend_from_slice(b"\n\n");
    g.bench_function("anthropic_sse_event_scan_and_translate", |b| {
        let mut pipe = Pipe::new(Box::new(ChatStream::new(&opts)), 1 << 20);
        let mut out = BytesMut::with_capacity(1 << 16);
        let mut prelude = b"event: message_start\ndata: ".to_vec();
        prelude.extend_from_slice(start);
        prelude.extend_from_slice(b"\n\nevent: content_block_start\ndata: ");
        prelude.extend_from_slice(text_block);
        prelude.extend_from_slice(b"\n\n");
        must(pipe.feed(&prelude, &mut out), "feed");
        b.iter(|| {
            out.clear();
            must(pipe.feed(black_box(&sse), &mut out), "feed");
            out.len()
        })
    });
    let body: serde_json::Value = must(serde_json::from_slice(&chat_body(1024)), "chat body");
    let ropts = RequestOpts {
        model: "claude-sonnet-4-5",
        stream: true,
        default_max_tokens: Some(1024),
        drop_unsupported: true,
    };
    g.bench_function("anthropic_request_1KiB", |b| {
        b.iter(|| {
            must(chat_request(black_box(&body), &ropts), "translate")
                .body
                .len()
        })
    });
    g.finish();
}

fn governance_runtime(store: &str) -> Runtime {
    let yaml = format!(
        r#"
listen: "127.0.0.1:18080"
limits_store: {store}
providers:
  p: {{ kind: openai, base_url: "http://127.0.0.1:19100/v1" }}
models:
  open:
    routes: [ {{ provider: p, model: m, price: {{ input: 1, output: 2 }} }} ]
  capped:
    limits: {{ tpm: 1000000000000 }}
    routes: [ {{ provider: p, model: m, price: {{ input: 1, output: 2 }} }} ]
teams:
  t:
    budgets: [ {{ usd: 1000000, window: month }}, {{ tokens: 1000000000000, window: 30d }} ]
keys:
  - {{ name: none, key: sk-bench-none }}
  - {{ name: rate, key: sk-bench-rate, limits: {{ rpm: 1000000000000, concurrency: 1000000 }} }}
  - {{ name: all, key: sk-bench-all, team: t,
      limits: {{ rpm: 1000000000000, tpm: 1000000000000, concurrency: 1000000 }},
      budgets: [ {{ usd: 1000000, window: day }} ] }}
"#
    );
    let cfg = must(
        tollgate::config::parse_str(&yaml, |_| None, Path::new(".")),
        "config",
    );
    must(tollgate::governance::configure(&cfg.limits_store), "store");
    must(Runtime::build(cfg, &Default::default()), "runtime")
}

/// Both admission steps and the settle, as `admit.rs` and `finish.rs` do
/// them for a request of `body` (its estimate included).
async fn two_steps(rt: &Runtime, key: usize, alias: &str, body: &bytes::Bytes) {
    use tollgate::governance::{admit_early, admit_request};
    let k = &rt.key_info[key];
    let m = &rt.models[alias];
    let early = admit_early(&k.rules)
        .await
        .unwrap_or_else(|_| panic!("refused before the body"));
    let ep = tollgate::base::endpoint::Endpoint::ChatCompletions;
    match admit_request(&k.rules, &[], m.limits(), &[0], ep, body, early).await {
        Ok(Some(a)) => a.reservation.settle(120, Some(0.0002)),
        Ok(None) => panic!("no rule applied"),
        Err(_) => panic!("refused"),
    }
}

/// One admission and its settle, as `admit.rs` and `finish.rs` do them.
async fn admit_settle(rt: &Runtime, key: usize, alias: &str, ask: tollgate::governance::Ask) {
    use tollgate::governance::{admit, Refused};
    let k = &rt.key_info[key];
    let m = &rt.models[alias];
    match admit(&[&k.rules, &m.rules], ask).await {
        Ok(a) => a.reservation.settle(120, Some(0.0002)),
        Err(Refused::Limit(r)) => panic!("refused: {}", r.detail),
        Err(Refused::Unavailable) => panic!("store unavailable"),
    }
}

fn governance(c: &mut Criterion) {
    use tollgate::governance::Ask;
    let rt = governance_runtime("memory");
    let tokio_rt = must(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        "tokio",
    );
    let ask = Ask::new(300, 500_000);
    let mut g = c.benchmark_group("governance");
    for (name, key, alias) in [
        ("memory_no_limits", 0, "open"),
        ("memory_rpm_concurrency", 1, "open"),
        ("memory_all_levels", 2, "capped"),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| tokio_rt.block_on(admit_settle(&rt, key, alias, black_box(ask))))
        });
    }
    let body = chat_body(1024);
    let prices = rt.models["capped"].prices.clone();
    g.bench_function("estimate_1KiB", |b| {
        b.iter(|| {
            Ask::worst_case(
                "gpt-4o",
                &prices,
                1024,
                tollgate::base::endpoint::Endpoint::ChatCompletions,
                black_box(&body),
            )
        })
    });
    let body1k = chat_body(1024);
    g.bench_function("memory_all_levels_two_steps_1KiB", |b| {
        b.iter(|| tokio_rt.block_on(two_steps(&rt, 2, "capped", black_box(&body1k))))
    });
    g.finish();
    redis_round_trips(c, ask);
}

/// Admission and settle against a real Redis on loopback, if one can be
/// started.
fn redis_round_trips(c: &mut Criterion, ask: tollgate::governance::Ask) {
    let Ok(port) = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) else {
        return;
    };
    let port = port.port();
    let Ok(mut child) = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("governance/redis: redis-server not found; skipped");
        return;
    };
    let up = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    if up {
        let rt = governance_runtime(&format!(
            "{{ redis: {{ url: \"redis://127.0.0.1:{port}\" }} }}"
        ));
        let tokio_rt = must(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            "tokio",
        );
        let mut g = c.benchmark_group("governance");
        g.bench_function("redis_all_levels", |b| {
            b.iter(|| tokio_rt.block_on(admit_settle(&rt, 2, "capped", black_box(ask))))
        });
        let body1k = chat_body(1024);
        g.bench_function("redis_all_levels_two_steps_1KiB", |b| {
            b.iter(|| tokio_rt.block_on(two_steps(&rt, 2, "capped", black_box(&body1k))))
        });
        g.finish();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An alias with ten routes under `strategy`: capabilities, context
/// windows, regions, tiers, weights, prices and concurrency caps all set,
/// so every filter and the strategy do their work.
fn routing_plan(strategy: &str) -> tollgate::routing::Plan {
    let mut yaml = format!("strategy: {strategy}\nroutes:\n");
    for i in 0..10 {
        let caps = if i % 3 == 0 {
            "[tools]"
        } else {
            "[tools, vision, json_schema]"
        };
        let region = if i % 2 == 0 { "eu" } else { "us" };
        let weight = if strategy == "weighted" {
            format!(", weight: {}", i + 1)
        } else {
            String::new()
        };
        yaml.push_str(&format!(
            "  - {{ provider: p{i}, model: m{i}, capabilities: {caps}, context_window: {}, region: {region}, tiers: [gold, silver], max_concurrency: 100, price: {{ input: {}.5, output: 2 }}{weight} }}\n",
            8000 * (i + 1),
            i % 4
        ));
    }
    let m: tollgate::config::Model = must(serde_yaml::from_str(&yaml), "bench model");
    tollgate::routing::Plan::build(&Default::default(), &format!("bench-{strategy}"), &m)
}

/// `routing::decide` among ten routes: read the body's needs (tools, an
/// image), filter by tier, region, capability and context window, then
/// order by the strategy. Plus the p95 lookup a hedge makes.
fn routing(c: &mut Criterion) {
    use tollgate::routing::{self, Access, RequestRouting};
    let body = serde_json::json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        "max_tokens": 256,
    })
    .to_string();
    let parsed = must(parse(body.as_bytes()).map_err(|e| e.message), "parse");
    let access = Access {
        tier: Some("gold".into()),
        regions: Some(vec!["eu".into()]),
    };
    let mut g = c.benchmark_group("routing");
    for strategy in ["fallback", "weighted", "latency", "least_busy", "cost"] {
        let plan = routing_plan(strategy);
        for r in &plan.routes {
            r.stats.observe(
                tollgate::routing::stats::Kind::Latency,
                Duration::from_millis(20 + r.name.len() as u64),
            );
        }
        g.bench_with_input(
            BenchmarkId::new("decide_10_routes", strategy),
            &plan,
            |b, plan| {
                b.iter(|| {
                    let mut state = RequestRouting::default();
                    let order = routing::decide(
                        &mut state,
                        plan,
                        &access,
                        "key-name",
                        tollgate::base::endpoint::Endpoint::ChatCompletions,
                        &parsed,
                        black_box(body.as_bytes()),
                        Default::default(),
                    );
                    black_box(order)
                })
            },
        );
    }
    // The same request without the image (the messages need no parse).
    let text_body = serde_json::json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}]}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        "max_tokens": 256,
    })
    .to_string();
    let text_parsed = must(parse(text_body.as_bytes()).map_err(|e| e.message), "parse");
    let plan = routing_plan("weighted");
    g.bench_function("decide_10_routes_no_image/weighted", |b| {
        b.iter(|| {
            let mut state = RequestRouting::default();
            black_box(routing::decide(
                &mut state,
                &plan,
                &access,
                "key-name",
                tollgate::base::endpoint::Endpoint::ChatCompletions,
                &text_parsed,
                black_box(text_body.as_bytes()),
                Default::default(),
            ))
        })
    });
    // Eligibility and strategy alone, the body's needs already read.
    let needs = tollgate::routing::needs::derive(
        tollgate::base::endpoint::Endpoint::ChatCompletions,
        body.as_bytes(),
        false,
        true,
    );
    for strategy in ["fallback", "weighted", "latency", "least_busy", "cost"] {
        let plan = routing_plan(strategy);
        g.bench_with_input(
            BenchmarkId::new("select_10_routes", strategy),
            &plan,
            |b, plan| {
                b.iter(|| {
                    let mut prompt = tollgate::routing::eligible::Prompt::new(
                        tollgate::base::endpoint::Endpoint::ChatCompletions,
                        body.as_bytes(),
                    );
                    let mut skipped = Vec::new();
                    let order = routing::select(
                        plan,
                        black_box(&plan.all),
                        &access,
                        black_box(&needs),
                        &mut prompt,
                        &mut skipped,
                    );
                    black_box((order, skipped))
                })
            },
        );
    }
    let plan = routing_plan("latency");
    g.bench_function("p95_ttft", |b| {
        b.iter(|| black_box(routing::p95_ttft(&plan, black_box(3))))
    });
    g.finish();
}

criterion_group!(
    benches,
    rewrite,
    key_lookup,
    route_select,
    metrics_record,
    sse_scan,
    translate,
    governance,
    routing
);
criterion_main!(benches);
