#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Process and connection promises no other test pinned (issue 24): `-d`
//! (daemon), SIGINT (fast stop), `downstream.keepalive`,
//! `downstream.read_buffer_bytes`, `access_log.enabled: false` and
//! `tollgate_access_log_dropped_total`. The real binary, upstreams on
//! loopback, raw TCP clients where the exact bytes matter.

mod support;

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::prom::sample;
use support::{sse_chat_events, text, Behavior, Gateway, MockUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "tg-promises-lifecycle-01";
/// Generous bound for what should be quick (2 shared, noisy cores).
const QUICK: Duration = Duration::from_secs(10);

/// A config with the built-in mock provider behind alias `m` (upstream
/// model `model`), or `upstream` (an openai provider at that port) when
/// given; `server` is more fields of the `server` map, `top` more
/// top-level YAML.
fn config_with(server: &str, top: &str, upstream: Option<u16>, model: &str) -> String {
    let provider = match upstream {
        Some(p) => format!(
            "  p: {{ kind: openai, base_url: \"http://127.0.0.1:{p}/v1\", health_check: {{ enabled: false }} }}"
        ),
        None => "  p: { kind: mock }".to_string(),
    };
    format!(
        "listen: \"{{LISTEN}}\"\nmetrics_listen: \"{{METRICS}}\"\n\
         server: {{ pid_file: \"{{TMP}}/t.pid\", upgrade_sock: \"{{TMP}}/u.sock\"{server} }}\n\
         {top}\nproviders:\n{provider}\nmodels:\n  m: {{ routes: [ {{ provider: p, model: \"{model}\" }} ] }}\n\
         keys:\n  - {{ name: k, key: \"{KEY}\" }}\n"
    )
}

fn config(top: &str, upstream: Option<u16>, model: &str) -> String {
    config_with("", top, upstream, model)
}

fn chat_body(stream: bool) -> String {
    format!(r#"{{"model":"m","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#)
}

async fn chat(base: &str, rid: &str) -> (u16, String) {
    let r = support::client()
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .header("x-request-id", rid)
        .body(chat_body(false))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// A raw keep-alive chat request.
fn raw_chat(body: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one `Content-Length` response from `s` (bytes past it stay in `buf`).
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let mut tmp = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + QUICK;
    loop {
        if let Some((h, l)) = support::raw::complete_response(buf) {
            let resp = text(&buf[..h + l]);
            buf.drain(..h + l);
            return resp;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut tmp))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response; got {:?}", text(buf));
        buf.extend_from_slice(&tmp[..n]);
    }
}

/// Waits for the peer to close `s`; returns the bytes it sent first and
/// how long after `since` it closed.
async fn wait_closed(s: &mut TcpStream, since: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let read = tokio::time::timeout(QUICK, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "still open after {QUICK:?}");
    (got, since.elapsed())
}

// ---------------------------------------------------------------------------
// downstream.keepalive
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_closes_a_connection_silently_after_that_long_without_a_request() {
    let gw = Gateway::start(&config("downstream: { keepalive: 3s }", None, "x")).await;
    let addr = gw.listen_addr();

    // A connection that never sends a first request.
    let first = async {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(&addr).await.unwrap();
        wait_closed(&mut s, t0).await
    };
    // A connection idle after one request.
    let after_one = async {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let t0 = Instant::now();
        s.write_all(&raw_chat(&chat_body(false))).await.unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut s, &mut buf).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        let (rest, took) = wait_closed(&mut s, t0).await;
        (buf.into_iter().chain(rest).collect::<Vec<u8>>(), took)
    };
    // A connection with a request every 300 ms outlives the 3 s: the limit
    // is on each wait, not on the connection.
    let busy = async {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let mut buf = Vec::new();
        let t0 = Instant::now();
        let mut served = 0;
        let mut last_served = Duration::ZERO;
        while t0.elapsed() < Duration::from_secs(4) {
            s.write_all(&raw_chat(&chat_body(false))).await.unwrap();
            let resp = read_response(&mut s, &mut buf).await;
            assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
            served += 1;
            last_served = t0.elapsed();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (served, last_served)
    };
    let ((quiet, t_first), (extra, t_after), served) = tokio::join!(first, after_one, busy);
    for (what, bytes, took) in [("first", quiet, t_first), ("next", extra, t_after)] {
        assert!(
            bytes.is_empty(),
            "{what}: the server wrote {:?}",
            text(&bytes)
        );
        assert!(
            took >= Duration::from_secs(3),
            "{what} request: closed after {took:?}, before the 3 s keepalive"
        );
    }
    // Served past the 3 s, on one connection (a closed one fails the loop).
    let (served, last_served) = served;
    assert!(
        served >= 2 && last_served >= Duration::from_secs(3),
        "{served} requests on the busy connection, the last at {last_served:?}"
    );
}

// ---------------------------------------------------------------------------
// downstream.read_buffer_bytes
// ---------------------------------------------------------------------------

/// The process's address space (`VmSize`): a buffer counts in full there
/// whether or not its pages were touched, whatever the allocator.
fn mapped_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Opens `n` connections, each served one request and then left open
/// (idle keep-alive, its read buffer allocated); returns them.
async fn idle_connections(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let resp = read_response(&mut s, &mut buf).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        out.push(s);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_buffer_bytes_sizes_each_connections_buffer_and_zero_still_serves() {
    const CONNS: usize = 64;
    let up = MockUpstream::start(Behavior::ChatEcho).await;
    let mut grew = Vec::new();
    for bytes in [1_048_576usize, 8192] {
        let top = format!("downstream: {{ read_buffer_bytes: {bytes} }}");
        let yaml = config_with(", threads: 1", &top, Some(up.port()), "x");
        let gw = Gateway::start(&yaml).await;
        let warm = idle_connections(&gw.listen_addr(), 4).await;
        let before = mapped_bytes(gw.pid());
        let conns = idle_connections(&gw.listen_addr(), CONNS).await;
        let after = mapped_bytes(gw.pid());
        grew.push((bytes, after.saturating_sub(before)));
        drop((conns, warm));
    }
    let (big, small) = (grew[0].1, grew[1].1);
    assert!(
        big >= (CONNS as u64) * 1_048_576 * 3 / 4,
        "{CONNS} connections with 1 MiB buffers grew the address space by only {} KiB",
        big / 1024
    );
    assert!(
        small <= 16 << 20,
        "{CONNS} connections with 8 KiB buffers grew the address space by {} KiB",
        small / 1024
    );

    // Unbuffered (0): still a correct HTTP/1.1 server, a 1 MiB body and
    // keep-alive included.
    let gw = Gateway::start(&config(
        "downstream: { read_buffer_bytes: 0 }",
        Some(up.port()),
        "x",
    ))
    .await;
    let big_body = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "y".repeat(1 << 20)
    );
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    let mut buf = Vec::new();
    for body in [big_body.clone(), chat_body(false)] {
        s.write_all(&raw_chat(&body)).await.unwrap();
        let resp = read_response(&mut s, &mut buf).await;
        assert!(
            resp.starts_with("HTTP/1.1 200"),
            "{}",
            &resp[..resp.len().min(600)]
        );
    }
    let bodies: Vec<usize> = up.requests().iter().map(|r| r.body.len()).collect();
    let n = bodies.len();
    assert_eq!(
        &bodies[n - 2..],
        &[big_body.len(), chat_body(false).len()],
        "bodies forwarded"
    );
}

// ---------------------------------------------------------------------------
// access_log
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_enabled_false_writes_no_line_but_metrics_still_count() {
    for enabled in [false, true] {
        let top = format!("access_log: {{ enabled: {enabled}, path: \"{{TMP}}/access.log\" }}");
        let mut gw = Gateway::start(&config(&top, None, "x")).await;
        let rids: Vec<String> = (0..3).map(|i| format!("al-{enabled}-{i}")).collect();
        for rid in &rids {
            let (status, body) = chat(&gw.base_url(), rid).await;
            assert_eq!(status, 200, "{body}");
        }
        gw.wait_metric(
            "tollgate_requests_total",
            &[("request_model", "m"), ("status_class", "2xx")],
            3.0,
        )
        .await;
        // A graceful stop flushes whatever the writer holds before exiting.
        gw.sigterm();
        let status = gw.wait_exit(QUICK).await.expect("exited on SIGTERM");
        assert!(status.success(), "{}", gw.logs());
        let file = std::fs::read_to_string(gw.tmp_dir().join("access.log")).unwrap_or_default();
        let found = rids
            .iter()
            .filter(|r| file.contains(r.as_str()) || gw.logs().contains(r.as_str()))
            .count();
        assert_eq!(
            found,
            if enabled { 3 } else { 0 },
            "enabled: {enabled}; access log:\n{file}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_past_8_mib_pending_are_dropped_and_counted() {
    // Lines go to a FIFO this test holds open and does not read: the writer
    // blocks once the pipe is full, and lines pile up in its queue. A 60 KB
    // upstream model name makes each line about 180 KB, so 8 MiB is ~50.
    const N: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    // Open the read end first (non-blocking), or the gateway's open of the
    // write end would wait for a reader.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let model = "w".repeat(60_000);
    let top = format!("access_log: {{ path: \"{}\" }}", fifo.display());
    let gw = Gateway::start(&config(&top, None, &model)).await;

    let t0 = Instant::now();
    for i in 0..N {
        let (status, body) = chat(&gw.base_url(), &format!("drop-{i}")).await;
        assert_eq!(status, 200, "{}", &body[..body.len().min(200)]);
    }
    let took = t0.elapsed();
    let dropped = || async {
        sample(
            &gw.metrics_text().await,
            "tollgate_access_log_dropped_total",
            &[],
        )
        .unwrap_or(0.0)
    };
    let deadline = Instant::now() + QUICK;
    while dropped().await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "no line dropped; log:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Every request was logged (queued) or counted as dropped, none both:
    // read the FIFO dry and count ours.
    gw.wait_metric(
        "tollgate_requests_total",
        &[("request_model", "m"), ("status_class", "2xx")],
        N as f64,
    )
    .await;
    let final_dropped = dropped().await as usize;
    let mut data = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    let deadline = Instant::now() + QUICK * 3;
    let lines = loop {
        match reader.read(&mut chunk) {
            Ok(n) => data.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the FIFO: {e}"),
        }
        let ours = text(&data)
            .lines()
            .filter(|l| l.contains("\"request_id\":\"drop-"))
            .count();
        if ours + final_dropped >= N {
            break ours;
        }
        assert!(
            Instant::now() < deadline,
            "{ours} lines read and {final_dropped} dropped of {N}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        lines + final_dropped,
        N,
        "{lines} lines, {final_dropped} dropped"
    );
    assert!(lines > 0 && final_dropped > 0);
    // Requests never waited for the log: 100 of them took well under the
    // time a blocked writer would have held them.
    assert!(took < Duration::from_secs(60), "{N} requests took {took:?}");
}

// ---------------------------------------------------------------------------
// SIGINT
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_once_cutting_streams_in_flight() {
    // A stream of 100 events 100 ms apart (10 s), and a 30 s grace period
    // that SIGTERM would honour.
    let events = sse_chat_events("x", 98);
    let up = MockUpstream::start(Behavior::sse(events.clone(), Duration::from_millis(100))).await;
    let yaml = config_with(", grace_period: 30s", "", Some(up.port()), "x");
    let mut gw = Gateway::start(&yaml).await;
    let r = support::client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut stream = r.bytes_stream();
    let first = tokio::time::timeout(QUICK, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());

    let t0 = Instant::now();
    gw.sigint();
    let status = gw
        .wait_exit(QUICK)
        .await
        .unwrap_or_else(|| panic!("still running {QUICK:?} after SIGINT; log:\n{}", gw.logs()));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        gw.logs()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "SIGINT took {:?} (the stream had 10 s left, the grace period 30 s)",
        t0.elapsed()
    );
    // The stream in flight was cut, not finished, and the upstream saw it.
    let mut rest = first.to_vec();
    while let Ok(Some(Ok(b))) = tokio::time::timeout(QUICK, stream.next()).await {
        rest.extend_from_slice(&b);
    }
    assert!(!text(&rest).contains("[DONE]"), "the stream completed");
    assert!(
        up.wait_cancelled(1, QUICK).await,
        "the upstream stream was not cancelled"
    );
    assert!(
        TcpStream::connect(gw.listen_addr()).await.is_err(),
        "the listener still accepts"
    );
}

// ---------------------------------------------------------------------------
// -d: daemon
// ---------------------------------------------------------------------------

/// Kills the daemon named by a pid file when dropped.
struct Daemon {
    pid_file: PathBuf,
}

impl Daemon {
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid and a signal has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn daemon_config(listen: &str, extra_alias: bool) -> String {
    let extra = if extra_alias {
        "\n  n: { routes: [ { provider: p, model: y } ] }"
    } else {
        ""
    };
    format!(
        "listen: \"{listen}\"\nserver: {{ pid_file: t.pid, upgrade_sock: u.sock }}\n\
         access_log: {{ path: access.log }}\nproviders:\n  p: {{ kind: mock }}\n\
         models:\n  m: {{ routes: [ {{ provider: p, model: x }} ] }}{extra}\n\
         keys:\n  - {{ name: k, key: \"{KEY}\" }}\n"
    )
}

async fn wait_for(what: &str, log: &Path, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + QUICK * 2;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_mode_detaches_and_keeps_relative_paths_and_reload_working() {
    // Run from a directory of its own, with every path relative to it.
    let dir = tempfile::tempdir().unwrap();
    let [listen, _] = support::gateway::free_addrs();
    std::fs::write(dir.path().join("t.yaml"), daemon_config(&listen, false)).unwrap();
    let log = dir.path().join("out.log");
    let out = std::fs::File::create(&log).unwrap();
    let daemon = Daemon {
        pid_file: dir.path().join("t.pid"),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["--config", "t.yaml", "-d"])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();

    // The command returns once the daemon is forked off.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < QUICK * 2, "tollgate -d did not return");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "tollgate -d exited {status}");

    // The pid file is where the config says (relative to where it ran),
    // and names a live process other than the one that returned.
    wait_for("no t.pid in the start directory", &log, || {
        daemon.pid().is_some()
    })
    .await;
    let pid = daemon.pid().unwrap();
    assert_ne!(pid as u32, child.id());
    assert!(alive(pid), "daemon {pid} is not running");
    let base = format!("http://{listen}");
    wait_for("the daemon never served /healthz", &log, || {
        std::net::TcpStream::connect(&listen).is_ok()
    })
    .await;
    let (status, body) = chat(&base, "daemon-1").await;
    assert_eq!(status, 200, "{body}");
    let access = dir.path().join("access.log");
    wait_for("no access-log line in the start directory", &log, || {
        std::fs::read_to_string(&access).is_ok_and(|s| s.contains("daemon-1"))
    })
    .await;

    // SIGHUP re-reads the (relative) config path.
    std::fs::write(dir.path().join("t.yaml"), daemon_config(&listen, true)).unwrap();
    // SAFETY: kill(2) with a pid and a signal has no memory effects.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
    let client = support::client();
    let deadline = Instant::now() + QUICK;
    loop {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .header("authorization", format!("Bearer {KEY}"))
            .body(r#"{"model":"n","messages":[]}"#)
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never took: {}; log:\n{}",
            r.status(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM stops it.
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    wait_for("the daemon outlived SIGTERM", &log, || !alive(pid)).await;
    assert!(std::net::TcpStream::connect(&listen).is_err());
}
