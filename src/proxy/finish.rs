//! The end of a request: the error answer when proxying failed, then metrics,
//! the access-log line and, for a traced request, its spans.

use crate::accounting::settle::{self, Observed, Settled};
use crate::accounting::UsageSource;
use crate::base::error::GatewayError;
use crate::proxy::ctx::{Ctx, Served};
use crate::proxy::write;
use crate::telemetry::record::Record;
use crate::telemetry::{access_log, metrics};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

/// Maps a Pingora error to what the client is told. `None`: the client is
/// gone, nothing can be sent.
pub(crate) fn classify(e: &Error) -> Option<GatewayError> {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => Some(match code {
            400 => GatewayError::invalid("Bad request."),
            408 => GatewayError::RequestTimeout,
            413 => GatewayError::PayloadTooLarge { limit: 0 },
            504 => GatewayError::UpstreamTimeout,
            502 | 503 => GatewayError::UpstreamError,
            _ => GatewayError::Internal,
        }),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if e.esource() == &ErrorSource::Upstream =>
        {
            Some(GatewayError::UpstreamTimeout)
        }
        _ => match e.esource() {
            ErrorSource::Upstream => Some(GatewayError::UpstreamError),
            ErrorSource::Downstream => match e.etype() {
                // Gone, or too slow to take the response: nothing can be sent.
                ReadError | WriteError | ConnectionClosed | WriteTimedout => None,
                // An HTTP/2 client reset its stream (or broke the protocol):
                // the stream is gone, nothing can be sent on it.
                H2Error => None,
                ReadTimedout => Some(GatewayError::RequestTimeout),
                _ => Some(GatewayError::invalid("Malformed request.")),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(GatewayError::Internal),
        },
    }
}

/// Writes the OpenAI-format error if nothing was sent yet. Returns the status
/// for the log (0 when nothing could be sent).
pub(crate) async fn fail_to_proxy(session: &mut Session, e: &Error, ctx: &mut Ctx) -> u16 {
    let err = ctx.out.error().cloned().or_else(|| match classify(e) {
        // An upstream failure was already judged by the attempt that saw it
        // (say, a timeout the watchdog turned into a reset): answer that.
        Some(GatewayError::UpstreamError | GatewayError::UpstreamTimeout) => ctx
            .attempts
            .last_failure()
            .cloned()
            .or(Some(GatewayError::UpstreamError)),
        other => other,
    });
    let Some(err) = err else {
        ctx.out.gone();
        return 0;
    };
    if session.response_written().is_some() {
        // Headers are out. A stream ends with one error event (never a fake
        // [DONE]), so SDKs raise; any other body is cut short.
        let err = ctx.out.broken().cloned().unwrap_or(err);
        if ctx.resp.streams() {
            let chunks = ctx.resp.stream_error(&err);
            let n = chunks.len();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let _ = session.write_response_body(Some(chunk), i + 1 == n).await;
            }
        }
        log::warn!(
            "request {}: stream broken after it started: {e}",
            ctx.head.request_id
        );
        ctx.out.fail(err);
        return 0;
    }
    if err.status() >= 500 {
        log::warn!("request {}: {} ({e})", ctx.head.request_id, err.code());
    }
    // Pingora closes the connection after a proxy failure: say so, or
    // pooled clients reuse it and get a reset.
    session.set_keepalive(None);
    if write::error(session, &err, &ctx.tags()).await.is_err() {
        ctx.out.gone();
        return 0;
    }
    let status = err.status();
    ctx.out.answered(err);
    status
}

/// Settles usage, then builds the request's record once and hands it to
/// the metrics and the access log.
/// Returns the limits store's settle call still to send, if any: the
/// caller awaits it after the log line, before the connection is reused.
pub(crate) fn log_request(
    session: &Session,
    e: Option<&Error>,
    ctx: &mut Ctx,
) -> Option<crate::governance::Pending> {
    let written = session.response_written().map(|r| r.status.as_u16());
    ctx.out.close(written, e.is_some());
    ctx.current.disarm();
    let req = ctx.req().cloned();
    let served = ctx.out.served() != Served::No;
    {
        let end = crate::routing::track::Ending {
            alias: req.as_ref().map_or("", |r| r.alias()),
            stream: ctx.streams(),
            served,
            cut: ctx.out.broken().is_some(),
            status: ctx.out.status(),
            route: ctx.attempt_route(),
            first_byte_at: ctx.out.first_byte_at(),
            upstream_headers_at: ctx.out.upstream_headers_at(),
        };
        let plan = req.as_ref().map(|r| &r.model.routing);
        crate::routing::finished(&mut ctx.routing, plan, &end);
    }
    let settled = settle(ctx);
    store_in_cache(ctx, settled.as_ref());
    if let (Some(a), Some(s)) = (ctx.current.get(), settled.as_ref()) {
        // A pool key's `tpm` counts what its requests used.
        if let Some((k, pool)) = a.key() {
            k.spent(pool, s.tokens(), crate::base::clock::monotonic_ms());
        }
    }
    if let Some(r) = ctx.out.reservation() {
        r.learn(ctx.attempt_route(), settled.as_ref());
    }
    // Nothing reached a provider, (0, None): this releases what was reserved.
    let pending = ctx.out.take_reservation().and_then(|r| {
        let own = charged(ctx, settled.as_ref());
        let (tokens, usd) = ctx.exp.charge(own.0, own.1);
        r.settle_later(tokens, usd)
    });
    record_usage_ledger(ctx, settled.as_ref());
    let trace = ctx.trace.take().filter(|t| t.sampled());
    let tap = ctx.capture.take();
    let route = ctx.current_route();
    let tried = ctx.out.served() == Served::Locally || ctx.current.get().is_some();
    let stream = ctx.streams();
    let duration = ctx.head.start.elapsed();
    let mut record = Record {
        ts: std::time::SystemTime::now(),
        request_id: &ctx.head.request_id,
        method: session.req_header().method.as_str(),
        endpoint: ctx.head.endpoint.map_or(metrics::NONE, |e| e.label()),
        key: or_none(ctx.head.key.as_deref().map(|k| &*k.name)),
        model: or_none(req.as_ref().map(|r| &**r.alias())),
        provider: or_none(route.filter(|_| tried).map(|r| &*r.provider_name)),
        upstream_model: or_none(route.filter(|_| tried).map(|r| &*r.model)),
        backend: ctx.current.get().map(|a| a.addr),
        provider_key: ctx
            .current
            .get()
            .and_then(|a| a.key())
            .map(|(k, pool)| pool.label(k.index)),
        stream,
        status: ctx.out.status(),
        duration,
        upstream: ctx.out.upstream_headers_at().map(|t| t - ctx.head.start),
        attempts: ctx.attempts.started(),
        attempt_log: None,
        error: ctx.out.error().map(|e| e.code()),
        ttft: ctx
            .out
            .first_byte_at()
            .filter(|_| stream)
            .map(|t| t - ctx.head.start),
        usage: settled.as_ref().map(|s| s.usage),
        usage_source: settled.as_ref().map(|s| s.source),
        cost_usd: settled.as_ref().and_then(|s| s.cost_usd),
        unpriced: settled
            .as_ref()
            .is_some_and(|s| s.cost_usd.is_none() && s.source != UsageSource::Cache),
        partial: settled.as_ref().is_some_and(|s| s.partial),
        units: settled.as_ref().map(|s| s.units).unwrap_or_default(),
        cache: ctx.cache.as_ref().map(|c| c.mark.label()),
        saved_usd: ctx
            .cache
            .as_ref()
            .and_then(|c| c.hit())
            .and_then(|e| e.cost_usd),
        hedge: ctx.exp.hedge,
        shadow: ctx.exp.shadow,
        strategy: None,
        variant: None,
        route: None,
        candidates: None,
        skipped: None,
        workload: match req.as_ref() {
            Some(r) if ctx.head.rt.workloads.active() => Some((&*ctx.head.rt.workloads, r.tags)),
            _ => None,
        },
        captured: tap.is_some(),
    };
    metrics::observe(&record);
    let log = ctx.head.rt.config.access_log.enabled;
    if log || trace.is_some() || record.captured {
        // The parts only the log line and the trace show, built only when
        // one of them is written.
        let plan = req.as_ref().map(|r| &r.model.routing);
        let routing = crate::routing::track::log_fields(
            &ctx.routing,
            plan,
            ctx.attempts.order(),
            ctx.attempt_route(),
        );
        record.strategy = routing.strategy;
        record.variant = routing.variant;
        record.route = routing.route;
        record.candidates = routing.candidates;
        record.skipped = routing.skipped;
    }
    if let (Some(tap), Some(r)) = (tap, req.as_ref()) {
        capture(*tap, r, ctx, &record);
    }
    if log {
        record.attempt_log = attempt_log(ctx);
        access_log::write(&record);
    }
    if let Some(t) = trace {
        crate::proxy::spans::finish(t, ctx, &record);
    }
    ctx.head.in_flight = None;
    pending
}

/// Hands a captured request and its answer to the capture writer.
fn capture(
    tap: crate::capture::Tap,
    req: &crate::proxy::ctx::Admitted,
    ctx: &Ctx,
    record: &Record<'_>,
) {
    let Some(plan) = req.model.capture.clone() else {
        return;
    };
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let (raw, raw_cut) = tap.into_parts();
    let side = crate::capture::Side {
        route: format!("{}/{}", record.provider, record.upstream_model),
        variant: record.variant.map(str::to_string),
        status: record.status,
        latency_ms: ms(record.duration),
        ttft_ms: ctx.out.first_byte_at().map(|t| ms(t - ctx.head.start)),
        prompt_tokens: record.usage.map(|u| u.prompt),
        completion_tokens: record.usage.map(|u| u.completion),
        cost_usd: record.cost_usd,
        stream: ctx.streams(),
        raw,
        raw_cut,
    };
    crate::capture::send(crate::capture::Job::Primary(Box::new(
        crate::capture::Primary {
            request_id: ctx.head.request_id.clone(),
            alias: req.alias().to_string(),
            endpoint: req.endpoint.label(),
            tags: ctx.head.rt.workloads.tag_string(&req.tags),
            ts_ms: crate::base::clock::unix_ms(),
            body: req.body.clone(),
            plan,
            side,
            shadow: ctx.exp.shadow == Some("sampled"),
        },
    )));
}

/// A label value, or the placeholder when there is none.
fn or_none(v: Option<&str>) -> &str {
    v.unwrap_or(metrics::NONE)
}

/// Counts a request that was admitted past the limits in the admin API's
/// usage ledger, against its key, team and model alias.
fn record_usage_ledger(ctx: &Ctx, settled: Option<&Settled>) {
    use crate::governance::{ledger, usd_to_nanos, Level};
    let refused = matches!(
        ctx.out.error(),
        Some(GatewayError::LimitExceeded { .. } | GatewayError::QuotaExceeded { .. })
    );
    let (Some(key), Some(req)) = (ctx.head.key.as_deref(), ctx.req()) else {
        return;
    };
    if refused {
        return;
    }
    let own = charged(ctx, settled);
    let (tokens, usd) = ctx.exp.charge(own.0, own.1);
    let nanos = usd.map_or(0, usd_to_nanos);
    let alias = req.alias();
    let mut who = vec![(Level::Key, &key.name), (Level::Model, alias)];
    if let Some(team) = &key.team {
        who.push((Level::Team, team));
    }
    ledger::global().record(&who, tokens, nanos);
    let declared = &ctx.head.rt.workloads;
    if declared.active() {
        // Each declared tag's value (`none` included), per key and team.
        let pairs: Vec<&std::sync::Arc<str>> = (0..declared.keys.len())
            .filter_map(|k| declared.pair_name(k, req.tags.get(k)))
            .collect();
        who.retain(|(l, _)| *l != Level::Model);
        ledger::global().record_tags(&who, &pairs, tokens, nanos);
    }
}

/// `provider@backend:outcome` for each attempt, when there was more than one.
fn attempt_log(ctx: &Ctx) -> Option<Vec<String>> {
    let log = ctx.attempts.log();
    (log.len() > 1).then(|| {
        log.iter()
            .map(|a| match (a.key, &a.provider.pool) {
                // `provider[key]@backend:outcome` for a pooled provider.
                (Some(k), Some(pool)) => format!(
                    "{}[{}]@{}:{}",
                    a.provider.name,
                    pool.label(k),
                    a.backend,
                    a.outcome
                ),
                _ => format!("{}@{}:{}", a.provider.name, a.backend, a.outcome),
            })
            .collect()
    })
}

/// The tokens and cost charged to the request's limits and budgets: what
/// it used, except a cache hit's, charged only with `budgets: true`.
fn charged(ctx: &Ctx, settled: Option<&Settled>) -> (u64, Option<f64>) {
    if let Some(entry) = ctx.cache.as_ref().and_then(|c| c.hit()) {
        let budgets = ctx
            .req()
            .and_then(|r| r.model.cache.as_ref())
            .is_some_and(|c| c.budgets);
        let tokens = entry.usage.prompt.saturating_add(entry.usage.completion);
        return if budgets {
            (tokens, entry.cost_usd)
        } else {
            (0, None)
        };
    }
    settled.map_or((0, None), |s| (s.tokens(), s.cost_usd))
}

/// A cache miss's answer goes into the cache when it was successful and
/// complete (`cached::State::finish` says what that takes).
fn store_in_cache(ctx: &mut Ctx, settled: Option<&Settled>) {
    if ctx.cache.is_none() {
        return;
    }
    let Some(req) = ctx.req().cloned() else {
        return;
    };
    let Some(cache) = req.model.cache.as_ref() else {
        return;
    };
    let ok = ctx.out.status() == 200
        && ctx.out.error().is_none()
        && ctx.out.broken().is_none()
        && ctx.out.served() == Served::Upstream;
    let responses = req.endpoint == crate::base::endpoint::Endpoint::Responses;
    let (complete, stream) = (ctx.resp.complete(responses), ctx.resp.streams());
    if let Some(state) = ctx.cache.as_mut() {
        state.finish(cache, ok, complete, stream, settled);
    }
}

/// The request's usage and cost, from what its response showed (the rule
/// is in `accounting::settle`); a cache hit's is the stored answer's usage,
/// which cost no provider anything.
fn settle(ctx: &Ctx) -> Option<Settled> {
    if let Some(entry) = ctx.cache.as_ref().and_then(|c| c.hit()) {
        return Some(Settled {
            usage: entry.usage,
            source: UsageSource::Cache,
            cost_usd: None,
            partial: false,
            units: Default::default(),
        });
    }
    let req = ctx.req()?;
    let route = ctx.current_route()?;
    let request = settle::Request {
        ep: req.endpoint,
        model: &route.model,
        body: &req.body,
        default_output: req.model.reserve_output_tokens,
    };
    let observed = match ctx.resp.observed() {
        Some(o) => o,
        None if unanswered(ctx) => Observed::Unanswered {
            stream: req.stream(),
        },
        None => return None,
    };
    settle::settle(&request, observed, route.price.as_ref())
}

/// Whether the last attempt's request reached the provider, which had not
/// answered when the request ended: no response was accepted and the
/// attempt did not fail (a failed attempt is logged; an error or a timeout
/// is not charged), so the client left while the provider was working.
fn unanswered(ctx: &Ctx) -> bool {
    ctx.current.body_sent() && ctx.out.served() == Served::No && ctx.attempts.last_is_open()
}
