//! `request_filter`'s work: route the path, authenticate, count the key's
//! rates (before the body), read and parse the body once, resolve the
//! alias, then admit against the remaining limits. Every rejection happens
//! here, before any upstream is contacted.

use crate::auth;
use crate::base::endpoint::{self, Endpoint};
use crate::base::error::GatewayError;
use crate::governance;
use crate::providers::mock;
use crate::proxy::body;
use crate::proxy::ctx::{Admitted, Ctx, Served};
use crate::proxy::pipeline::Pipeline;
use crate::proxy::write;
use crate::rewrite;
use crate::runtime::ProviderRt;
use bytes::Bytes;
use pingora::proxy::Session;

/// What the proxy does after admission.
pub(crate) enum Next {
    /// Go upstream.
    Proxy,
    /// A response was already written.
    Done,
}

/// Admits the request, or writes its error. Returns `Ok(true)` when a
/// response was sent (Pingora's `request_filter` convention).
/// Keeps what admission reserved (and its rate headers) in `ctx`, or its
/// refusal's headers and the error to answer.
pub(crate) fn hold_admission(
    ctx: &mut Ctx,
    admitted: Result<Option<governance::Admitted>, governance::Refusal>,
) -> Result<(), GatewayError> {
    match admitted {
        Ok(Some(a)) => ctx.out.limits(Some(a.reservation), a.headers),
        Ok(None) => {}
        Err((err, headers)) => {
            ctx.out.limits(None, headers);
            return Err(err);
        }
    }
    Ok(())
}

pub(crate) async fn request_filter(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    match admit(session, ctx).await {
        Ok(Next::Proxy) => Ok(false),
        Ok(Next::Done) => Ok(true),
        Err(err) => {
            if !session.is_body_done() {
                // Unread body bytes must not be parsed as the next request.
                session.set_keepalive(None);
            }
            let written = write::error(session, &err, &ctx.tags()).await;
            ctx.out.answered(err);
            written.map(|()| true)
        }
    }
}

async fn admit(session: &mut Session, ctx: &mut Ctx) -> Result<Next, GatewayError> {
    let rt = ctx.head.rt.clone();
    let req = session.req_header();
    let route = endpoint::route(&req.method, req.uri.path());
    if route != endpoint::Route::Ok(Endpoint::Healthz) {
        // Liveness probes are not traced.
        ctx.trace = crate::telemetry::trace::begin(&req.headers);
    }
    let ep = match route {
        endpoint::Route::Ok(ep) => ep,
        endpoint::Route::WrongMethod(ep, allowed) => {
            // Known endpoint: its error shape (Anthropic's on /v1/messages).
            ctx.head.endpoint = Some(ep);
            return Err(GatewayError::MethodNotAllowed { allowed });
        }
        endpoint::Route::Unknown => return Err(GatewayError::NotFound),
    };
    ctx.head.endpoint = Some(ep);
    #[cfg(debug_assertions)]
    fault_injection::maybe_panic(session);
    if ep == Endpoint::Healthz {
        let body = Bytes::from_static(br#"{"status":"ok"}"#);
        return written(write::json(session, 200, body, &ctx.tags()).await, ctx);
    }
    if req.headers.contains_key(http::header::UPGRADE) {
        return Err(GatewayError::invalid(
            "Protocol upgrades are not supported.",
        ));
    }
    let presented = auth::presented_key(&req.headers).ok_or(GatewayError::InvalidApiKey)?;
    let key = rt.lookup_key(presented)?;
    ctx.head.key = Some(key.clone());
    let key_info = &*key;
    if ep == Endpoint::Models {
        let body = key_info.models_body.clone();
        return written(write::json(session, 200, body, &ctx.tags()).await, ctx);
    }
    let over_tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    if session.is_http2() || over_tls {
        // Plain HTTP/1 headers were measured by the header guard. TLS streams
        // skip it (HTTP/2's are capped by the h2 settings at start-up, and
        // HTTP/1's by Pingora at 1 MiB), so they are measured here against
        // the current limit.
        let req = session.req_header();
        let size = req.uri.to_string().len()
            + req
                .headers
                .iter()
                .map(|(k, v)| k.as_str().len() + v.len() + 4)
                .sum::<usize>();
        if size > rt.header_limits.max_bytes {
            return Err(GatewayError::HeaderTooLarge);
        }
    }
    // Files and Batches: provider, id and owner are checked before the
    // body is read (a refusal reads no upload and asks no upstream).
    let files = if ep.is_files() {
        Some(crate::proxy::files::begin(
            ep,
            session.req_header(),
            key_info,
            &rt,
        )?)
    } else {
        None
    };
    let mut framing = body::framing(&session.req_header().headers)?;
    if session.is_http2() && framing == body::Framing::Length(0) && !session.is_body_empty() {
        // HTTP/2 may send a body without Content-Length: read it to its end.
        framing = body::Framing::Chunked;
    }
    if body::had_both_lengths(session) {
        return Err(GatewayError::invalid(
            "Both Content-Length and Transfer-Encoding were sent.",
        ));
    }
    // Our idle limit, unless Pingora already decided to close (the client
    // asked to, or the server is shutting down).
    if session.get_keepalive().is_some() {
        session.set_keepalive(Some(rt.keepalive_secs));
    }
    session.set_write_timeout(Some(rt.write_timeout));
    // The key's and team's rates and slots are counted before the body is
    // read: a key over them gets its 429 without the gateway reading,
    // parsing or tokenizing the body. With Redis the round trip overlaps
    // the body's upload, unless the client waits for `100 Continue` (it
    // must not be told to send a body that is then refused).
    let overlap = governance::is_shared() && !body::expects_continue(session);
    let (early, bytes) = {
        let early = governance::admit_early(&key_info.rules);
        let read = body::read_all(session, framing, rt.max_body_bytes, rt.body_idle_timeout);
        tokio::pin!(early, read);
        if overlap {
            tokio::select! {
                biased;
                e = &mut early => match e {
                    Ok(a) => (Ok(a), Some(read.await)),
                    Err(refused) => (Err(refused), None),
                },
                b = &mut read => (early.await, Some(b)),
            }
        } else {
            match early.await {
                Ok(a) => (Ok(a), Some(read.await)),
                Err(refused) => (Err(refused), None),
            }
        }
    };
    let early = match early {
        Ok(a) => a,
        Err((err, headers)) => {
            ctx.out.limits(None, headers);
            return Err(err);
        }
    };
    if let Some(a) = &early {
        // The early headers answer a refusal before the full admission.
        ctx.out.limits(None, a.headers);
    }
    let bytes = bytes.ok_or(GatewayError::Internal)??;
    if let Some((call, frt)) = files {
        return crate::proxy::files::admit(ctx, call, frt, bytes, early).await;
    }
    let parsed = if ep.is_form() {
        // Multipart: the model field is found (and later replaced) in
        // place; every other part passes byte for byte.
        let ct = session
            .req_header()
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let boundary = crate::form::boundary(ct).map_err(|e| GatewayError::InvalidRequest {
            message: e.message,
            param: e.param,
        })?;
        rewrite::parse_form(&bytes, boundary).map(|(p, _)| p)
    } else {
        rewrite::parse(&bytes)
    };
    let mut parsed = parsed.map_err(|e| GatewayError::InvalidRequest {
        message: e.message,
        param: e.param,
    })?;
    // Embeddings, moderations, images, speech and rerank never stream,
    // whatever the body says (images refuse to be asked). Decided here,
    // once: every later "is this a stream?" reads `Ctx::streams`.
    if ep.never_streams() {
        if (ep == Endpoint::ImageGenerations || ep.is_form()) && parsed.stream {
            return Err(GatewayError::InvalidRequest {
                message: format!("Streamed answers of /v1{} are not supported by this gateway: leave out `stream` or set it to false.", ep.upstream_suffix()),
                param: Some("stream"),
            });
        }
        parsed.stream = false;
    }
    let model = rt
        .models
        .get(&parsed.model)
        .ok_or_else(|| GatewayError::ModelNotFound {
            model: shorten(&parsed.model),
        })?;
    if !key_info.allows(&model.name) {
        return Err(GatewayError::ModelNotAllowed {
            model: model.name.to_string(),
        });
    }
    supported(ep, model)?;
    crate::accounting::units::check(ep, &bytes)?;
    let tags = workload_tags(&rt, session, &bytes, &parsed, key_info)?;
    let (body, parsed, messages) =
        crate::proxy::messages::admit(&ctx.head.request_id, ep, model, bytes, parsed)?;
    let req = ctx.admit(Admitted {
        endpoint: ep,
        model: model.clone(),
        parsed,
        body,
        messages,
        files: None,
        tags,
    });
    let order = crate::routing::decide(
        &mut ctx.routing,
        &model.routing,
        &key_info.access,
        &key_info.name,
        ep,
        &req.parsed,
        &req.body,
        req.tags,
    )?;
    ctx.attempts = crate::engine::attempts::Attempts::new(order);
    let (first_index, first) = crate::routing::candidate(ctx.attempts.order(), 0, &model.routes)
        .ok_or(GatewayError::Internal)?;
    ctx.cache = if model.cache.is_some() {
        crate::proxy::cached::begin(&session.req_header().headers, key_info, &req).await
    } else {
        None
    };
    let hit = ctx.cache.as_ref().and_then(|c| c.hit().cloned());
    let count_hit = model.cache.as_ref().is_none_or(|c| c.rate_limits);
    if let (Some(entry), false) = (&hit, count_hit) {
        // Not counted against rate limits: what the first step took goes
        // back, and the second step is skipped.
        governance::give_back(early).await;
        return written(serve_cached(session, ctx, entry).await, ctx);
    }
    let admitted = governance::admit_request(
        &key_info.rules,
        &key_info.workload_rules(&req.tags),
        model.limits(),
        ctx.attempts.order(),
        ep,
        &req.body,
        early,
    )
    .await;
    hold_admission(ctx, admitted)?;
    if let Some(entry) = &hit {
        return written(serve_cached(session, ctx, entry).await, ctx);
    }
    if let ProviderRt::Mock(settings) = &*first.provider {
        // A mock route answers only what it declares (`rerank: true`).
        first
            .dialect
            .supports(ep, &model.name, &first.provider_name)?;
        ctx.out.serve(Served::Locally);
        ctx.attempts.served_locally(first_index);
        crate::routing::attempt_started(&mut ctx.routing, &model.routing, first_index);
        if !settings.latency.get().is_zero() {
            tokio::time::sleep(settings.latency.get()).await;
        }
        let (oa, id) = (ep.as_openai(), &ctx.head.request_id);
        let reply = mock::reply(oa, settings, &first.model, &req.parsed, &req.body, id);
        let reply = crate::proxy::messages::local_reply(&req, id, reply);
        ctx.resp = Pipeline::local(mock::usage_of(oa, settings));
        let sent = match reply {
            mock::Reply::Json(b) => write::json(session, 200, b, &ctx.tags()).await,
            mock::Reply::Audio(b) => write::bytes(session, 200, "audio/mpeg", b, &ctx.tags()).await,
            mock::Reply::Sse { events, interval } => {
                write::sse(session, events, interval, &ctx.tags()).await
            }
        };
        return written(sent, ctx);
    }
    Ok(Next::Proxy)
}

/// The request's tags (`x-tollgate-tags`, the body's `metadata`, the key's
/// defaults), checked against the declared ones and the key's subset.
/// Nothing is read when no tag is declared.
fn workload_tags(
    rt: &crate::runtime::Runtime,
    session: &Session,
    body: &[u8],
    parsed: &rewrite::Parsed,
    key: &crate::keys::KeyRt,
) -> Result<crate::workload::TagSet, GatewayError> {
    let declared = &rt.workloads;
    if !declared.active() {
        return Ok(crate::workload::TagSet::default());
    }
    let headers = &session.req_header().headers;
    let mut values = headers.get_all(crate::workload::HEADER).iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(GatewayError::InvalidRequest {
            message: format!("Send one {} header.", crate::workload::HEADER),
            param: Some(crate::workload::HEADER),
        });
    }
    let metadata = parsed.metadata_span.clone().and_then(|r| body.get(r));
    declared
        .resolve(header.map(|h| h.as_bytes()), metadata, &key.workload)
        .map_err(|e| GatewayError::InvalidRequest {
            message: e.message,
            param: e.param,
        })
}

/// Refuses an endpoint no route of the alias serves (a translated kind's
/// `/v1/moderations`, `/v1/rerank` without `rerank: true`…) with the first
/// route's reason, before any limit is counted or upstream contacted. A
/// route that cannot serve it is skipped by the walk (`translated::Bodies`).
fn supported(ep: Endpoint, model: &crate::runtime::ModelRt) -> Result<(), GatewayError> {
    let mut first = None;
    for r in &model.routes {
        match r.dialect.supports(ep, &model.name, &r.provider_name) {
            Ok(()) => return Ok(()),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Answers from the cache: the stored body as the client first got it, a
/// stream's events in one write (at full speed).
async fn serve_cached(
    session: &mut Session,
    ctx: &mut Ctx,
    entry: &crate::cache::Entry,
) -> pingora::Result<()> {
    ctx.out.serve(Served::Cache);
    let body = entry.body.clone();
    if entry.stream {
        write::sse(session, vec![body], std::time::Duration::ZERO, &ctx.tags()).await
    } else {
        write::json(session, 200, body, &ctx.tags()).await
    }
}

/// Records the outcome of a locally written 200 response.
fn written(result: pingora::Result<()>, ctx: &mut Ctx) -> Result<Next, GatewayError> {
    match result {
        Ok(()) => ctx.out.sent(200),
        // A write error means the client went away: nothing more to send.
        Err(_) => ctx.out.gone(),
    }
    Ok(Next::Done)
}

/// Client-supplied text echoed in an error is cut to a sane length.
fn shorten(s: &str) -> String {
    if s.len() <= 128 {
        return s.to_string();
    }
    let mut end = 128;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Test-only fault injection, compiled into debug builds only: with
/// `TOLLGATE_FAULT_INJECTION=1` in the environment at start, a request that
/// carries `x-tollgate-panic` panics inside the hook (RELIABILITY row 33).
#[cfg(debug_assertions)]
mod fault_injection {
    use std::sync::OnceLock;

    pub(super) fn maybe_panic(session: &pingora::proxy::Session) {
        static ON: OnceLock<bool> = OnceLock::new();
        let on =
            *ON.get_or_init(|| std::env::var("TOLLGATE_FAULT_INJECTION").is_ok_and(|v| v == "1"));
        if on && session.get_header("x-tollgate-panic").is_some() {
            panic!("fault injection: x-tollgate-panic");
        }
    }
}
