//! The Pingora `ProxyHttp` implementation. Each hook is a line or two that
//! hands off to the module doing that phase's work.

pub(crate) mod admit;
pub(crate) mod attempt;
pub(crate) mod bedrock;
pub(crate) mod body;
pub(crate) mod cached;
pub(crate) mod cloud;
pub(crate) mod ctx;
pub(crate) mod experiments;
pub(crate) mod files;
pub(crate) mod finish;
pub(crate) mod gemini;
pub(crate) mod header_guard;
pub(crate) mod headers;
pub(crate) mod messages;
pub(crate) mod pipeline;
pub(crate) mod response;
pub(crate) mod rewound;
pub(crate) mod spans;
pub(crate) mod translated;
pub(crate) mod write;

use crate::live::Shared;
use async_trait::async_trait;
use bytes::Bytes;
use ctx::Ctx;
use futures_util::FutureExt;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::Error;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

/// A bug panicked inside a hook: answer this request with a 500 and keep the
/// process (and every other request) running.
async fn panicked(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    log::error!(
        "request {}: internal panic; answering 500",
        ctx.head.request_id
    );
    let err = crate::base::error::GatewayError::Internal;
    if session.response_written().is_none() {
        session.set_keepalive(None);
        write::error(session, &err, &ctx.tags()).await?;
        ctx.out.answered(err);
    } else {
        ctx.out.fail(err);
    }
    Ok(true)
}

/// The gateway: reads the current runtime snapshot per request.
pub(crate) struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    /// Boxed: Pingora keeps the CTX inside each request's future, which it
    /// moves several times per request; a pointer moves for less than the
    /// whole `Ctx` (docs/benchmarks.md, "Boxed Ctx").
    type CTX = Box<Ctx>;

    fn new_ctx(&self) -> Box<Ctx> {
        Box::new(Ctx::new(self.shared.load()))
    }

    /// Takes the config snapshot, then admits the request (auth, body, model)
    /// or answers it locally. Runs first; all rejections happen here.
    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> pingora::Result<bool> {
        ctx.head.start = Instant::now();
        ctx.head.request_id = headers::client_request_id(session.req_header())
            .unwrap_or_else(headers::new_request_id);
        ctx.head.in_flight = Some(ctx::InFlight::enter());
        let admitted = AssertUnwindSafe(async {
            match admit::request_filter(session, ctx).await? {
                true => Ok(true),
                false => crate::proxy::experiments::after_admit(session, ctx).await,
            }
        })
        .catch_unwind()
        .await;
        match admitted {
            Ok(r) => r,
            Err(_) => panicked(session, ctx).await,
        }
    }

    /// Picks the next route and healthy backend; runs once per attempt.
    async fn upstream_peer(
        &self,
        _s: &mut Session,
        ctx: &mut Box<Ctx>,
    ) -> pingora::Result<Box<HttpPeer>> {
        match attempt::next_peer(ctx).await {
            Ok(peer) => Ok(peer),
            Err(e) => Err(attempt::fail(ctx, e)),
        }
    }

    /// Replaces the header with this provider's: allow-listed client headers,
    /// the provider key and `Host`, and the rewritten body's length.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Box<Ctx>,
    ) -> pingora::Result<()> {
        attempt::upstream_request(session.req_header(), upstream, ctx)
            .map_err(|e| attempt::fail(ctx, e))
    }

    /// Emits this attempt's rewritten body in place of what Pingora hands us
    /// (the buffered tail, or nothing: `proxy::body`); once per attempt.
    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> pingora::Result<()> {
        attempt::body_chunk(body, ctx);
        Ok(())
    }

    /// Notes when the upstream answered, tags the response (request id,
    /// route) and picks how its body is metered.
    async fn upstream_response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Box<Ctx>,
    ) -> pingora::Result<()> {
        response::on_header(resp, ctx)
    }

    /// Forwards each chunk as it comes, metering it on the side.
    fn response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Box<Ctx>,
    ) -> pingora::Result<Option<std::time::Duration>> {
        response::on_chunk(body, end_of_stream, ctx)?;
        Ok(None)
    }

    /// Marks a failed connect retryable; `upstream_peer` then tries the next
    /// backend or route, or answers 502/504 when none is left.
    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Box<Ctx>,
        e: Box<Error>,
    ) -> Box<Error> {
        attempt::on_connect_failure(ctx, e)
    }

    /// Arms the attempt's timeout watchdog once connected (reused or new).
    async fn connected_to_upstream(
        &self,
        _s: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Box<Ctx>,
    ) -> pingora::Result<()> {
        attempt::on_connected(ctx, fd);
        Ok(())
    }

    /// Decides whether an error while proxying is retried. Unlike Pingora's
    /// default (never for POST), a failure before any response byte reached
    /// the client is retried while attempts remain.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _s: &mut Session,
        e: Box<Error>,
        ctx: &mut Box<Ctx>,
        _client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        attempt::on_proxy_error(ctx, &mut e);
        e
    }

    /// Answers an OpenAI-format error when proxying fails before any response.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Box<Ctx>,
    ) -> FailToProxy {
        let code = finish::fail_to_proxy(session, e, ctx).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Records metrics and the access-log line, and writes a files call's
    /// id changes to the key store's database; runs once per request.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Box<Ctx>) {
        if let Some(settle) = finish::log_request(session, e, ctx) {
            settle.send().await;
        }
        // A files call's new or deleted ids, to the key store's database.
        crate::objects::persist(ctx.resp.take_object_ops()).await;
    }
}
