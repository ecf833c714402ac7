//! "The Pingora floor": the smallest useful Pingora proxy. Every request goes
//! to one upstream address, untouched: no routing, no auth, no body
//! inspection, no logging. `benches/load.sh` compares Tollgate with it to see
//! what Tollgate's own work costs on top of Pingora.
//!
//! `passthrough --listen 127.0.0.1:P --upstream 127.0.0.1:Q [--threads N]`
//!
//! `--threads` maps to Pingora's `ServerConf::threads`, as Tollgate's
//! `server.threads` does.

use async_trait::async_trait;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;

struct Passthrough {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Args {
    listen: String,
    upstream: SocketAddr,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = 1usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--listen" => listen = Some(it.next().ok_or("--listen needs ADDR")?),
            "--upstream" => {
                let v = it.next().ok_or("--upstream needs ADDR")?;
                upstream = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--upstream {v}: {e}"))?,
                );
            }
            "--threads" => {
                threads = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--threads needs a positive number")?
            }
            "-h" | "--help" => {
                println!("usage: passthrough --listen ADDR --upstream IP:PORT [--threads N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        threads,
    })
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("passthrough: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    // Per-process files, so several instances (and Tollgate) can run at once.
    let tag = format!(
        "{}-{}",
        std::process::id(),
        args.listen.replace([':', '.'], "_")
    );
    let conf = ServerConf {
        threads: args.threads,
        pid_file: format!("/tmp/bench-passthrough-{tag}.pid"),
        upgrade_sock: format!("/tmp/bench-passthrough-{tag}.sock"),
        // Same pool size as Tollgate's default `server.upstream_keepalive_pool`.
        upstream_keepalive_pool_size: 1024,
        // A benchmark tool: stop promptly on SIGTERM.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Passthrough {
            upstream: args.upstream,
        },
    );
    proxy.add_tcp(&args.listen);
    server.add_service(proxy);
    eprintln!(
        "passthrough listening on {} -> {} ({} threads)",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
