//! The end of a request: the error answer when proxying failed, then metrics
//! and the access-log line.

use crate::accounting::meter::BodyUsage;
use crate::accounting::settle::{self, Observed, Settled};
use crate::accounting::UsageSource;
use crate::base::error::GatewayError;
use crate::proxy::ctx::{Ctx, Meter};
use crate::proxy::respond;
use crate::telemetry::{access_log, metrics};
use pingora::proxy::Session;
use pingora::{Error, ErrorSource, ErrorType};

/// Maps a Pingora error to what the client is told. `None`: the client is
/// gone, nothing can be sent.
pub fn classify(e: &Error) -> Option<GatewayError> {
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
pub async fn fail_to_proxy(session: &mut Session, e: &Error, ctx: &mut Ctx) -> u16 {
    let err = ctx.error.clone().or_else(|| match classify(e) {
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
        ctx.status = 499;
        return 0;
    };
    if session.response_written().is_some() {
        // Headers are out. A stream ends with one error event (never a fake
        // [DONE]), so SDKs raise; any other body is cut short.
        let err = ctx.mid_stream_error.clone().unwrap_or(err);
        if matches!(ctx.meter, Meter::Stream(_)) {
            // A Messages stream: its unsent events, translated, and its error event.
            let anthropic = crate::proxy::messages::stream_error(ctx, &err);
            if let Some(unsent) = ctx.unsent.take() {
                let _ = session.write_response_body(Some(unsent), false).await;
            }
            let event = anthropic.unwrap_or_else(|| {
                format!("data: {}\n\n", String::from_utf8_lossy(&err.body())).into()
            });
            let _ = session.write_response_body(Some(event), true).await;
        }
        log::warn!(
            "request {}: stream broken after it started: {e}",
            ctx.request_id
        );
        ctx.error = Some(err);
        return 0;
    }
    if err.status() >= 500 {
        log::warn!("request {}: {} ({e})", ctx.request_id, err.code());
    }
    let status = err.status();
    // Pingora closes the connection after a proxy failure: say so, or
    // pooled clients reuse it and get a reset.
    session.set_keepalive(None);
    if respond::error(session, &err, &respond::Tags::of(ctx))
        .await
        .is_err()
    {
        ctx.status = 499;
        return 0;
    }
    ctx.status = status;
    ctx.error = Some(err);
    status
}

/// Settles usage, records metrics and writes the access-log line.
pub fn log_request(session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
    if ctx.status == 0 {
        ctx.status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(if e.is_some() { 499 } else { 0 });
    }
    ctx.watchdog = None;
    {
        let plan = crate::proxy::ctx::alias_model(ctx.rt.as_ref(), ctx.alias.as_deref())
            .map(|m| &m.routing);
        let end = crate::routing::track::Ending {
            alias: ctx.alias.as_deref().unwrap_or_default(),
            stream: ctx.streams(),
            served: ctx.served_locally || ctx.response_started,
            cut: ctx.mid_stream_error.is_some(),
            status: ctx.status,
            route: ctx.attempt_route(),
            first_byte_at: ctx.first_byte_at,
            upstream_headers_at: ctx.upstream_headers_at,
        };
        crate::routing::finished(&mut ctx.routing, plan, &end);
    }
    let settled = settle(ctx);
    if let Some(r) = &ctx.reservation {
        r.learn(ctx.attempt_route(), settled.as_ref());
    }
    if let Some(r) = ctx.reservation.take() {
        let own = settled
            .as_ref()
            .map_or((0, None), |s| (s.tokens(), s.cost_usd));
        match ctx.exp.charge(own.0, own.1) {
            // Nothing reached a provider: release what was reserved.
            (0, None) => drop(r),
            (tokens, usd) => r.settle(tokens, usd),
        }
    }
    record_usage_ledger(ctx, settled.as_ref());
    let rt = ctx.rt.clone();
    let key = or_none(ctx.key.as_deref().map(|k| &*k.name));
    let route = ctx.current_route();
    let served = ctx.served_locally || ctx.attempt.is_some();
    let provider = or_none(route.filter(|_| served).map(|r| &*r.provider_name));
    let upstream_model = or_none(route.filter(|_| served).map(|r| &*r.model));
    let model = or_none(ctx.alias.as_deref());
    let endpoint = ctx.endpoint.map_or(metrics::NONE, |e| e.label());
    let duration = ctx.start.elapsed();
    let upstream = ctx.upstream_headers_at.map(|t| t - ctx.start);
    let stream = ctx.streams();
    let ttft = ctx.first_byte_at.filter(|_| stream).map(|t| t - ctx.start);
    if let Some(m) = metrics::get() {
        let route_labels = [model, provider, upstream_model, key];
        let class = metrics::status_class(ctx.status);
        m.requests
            .with_label_values(&[model, provider, upstream_model, key, endpoint, class])
            .inc();
        m.duration
            .with_label_values(&[model, provider, endpoint])
            .observe(duration.as_secs_f64());
        if let Some(u) = upstream {
            m.upstream_latency
                .with_label_values(&[provider])
                .observe(u.as_secs_f64());
        }
        if let Some(t) = ttft {
            m.ttft
                .with_label_values(&[model, provider])
                .observe(t.as_secs_f64());
        }
        if let Some(err) = &ctx.error {
            m.errors.with_label_values(&[err.code()]).inc();
        }
        if let Some(s) = &settled {
            record_usage(m, &route_labels, s);
            if s.source != UsageSource::Reported {
                m.estimated.with_label_values(&[model, provider]).inc();
            }
            if s.partial {
                m.partial_streams
                    .with_label_values(&[model, provider])
                    .inc();
            }
        }
    }
    let enabled = rt.as_ref().is_none_or(|r| r.config.access_log.enabled);
    if enabled {
        let plan =
            crate::proxy::ctx::alias_model(rt.as_ref(), ctx.alias.as_deref()).map(|m| &m.routing);
        let routing = crate::routing::track::log_fields(
            &ctx.routing,
            plan,
            ctx.attempts.order(),
            ctx.attempt_route(),
        );
        access_log::write(&access_log::Record {
            ts: std::time::SystemTime::now(),
            request_id: &ctx.request_id,
            method: session.req_header().method.as_str(),
            endpoint,
            key,
            model,
            provider,
            upstream_model,
            backend: ctx.attempt.as_ref().map(|a| a.addr),
            stream,
            status: ctx.status,
            duration,
            upstream,
            attempts: ctx.attempts.started(),
            attempt_log: attempt_log(ctx),
            error: ctx.error.as_ref().map(|e| e.code()),
            ttft,
            usage: settled.as_ref().map(|s| s.usage),
            usage_source: settled.as_ref().map(|s| s.source.label()),
            cost_usd: settled.as_ref().and_then(|s| s.cost_usd),
            unpriced: settled.as_ref().is_some_and(|s| s.cost_usd.is_none()),
            partial: settled.as_ref().is_some_and(|s| s.partial),
            hedge: ctx.exp.hedge,
            shadow: ctx.exp.shadow,
            strategy: routing.strategy,
            variant: routing.variant,
            route: routing.route,
            candidates: routing.candidates,
            skipped: routing.skipped,
        });
    }
    ctx.in_flight = None;
}

/// Counts a request that was admitted past the limits in the admin API's
/// usage ledger, against its key, team and model alias.
fn record_usage_ledger(ctx: &Ctx, settled: Option<&Settled>) {
    use crate::governance::{ledger, usd_to_nanos, Level};
    let refused = matches!(
        ctx.error,
        Some(GatewayError::LimitExceeded { .. } | GatewayError::QuotaExceeded { .. })
    );
    let (Some(key), Some(alias)) = (ctx.key.as_deref(), ctx.alias.as_ref()) else {
        return;
    };
    if refused {
        return;
    }
    let own = settled.map_or((0, None), |s| (s.tokens(), s.cost_usd));
    let (tokens, usd) = ctx.exp.charge(own.0, own.1);
    let nanos = usd.map_or(0, usd_to_nanos);
    let mut who = vec![(Level::Key, &key.name), (Level::Model, alias)];
    if let Some(team) = &key.team {
        who.push((Level::Team, team));
    }
    ledger::global().record(&who, tokens, nanos);
}

/// A label value, or the placeholder when there is none.
fn or_none(v: Option<&str>) -> &str {
    v.unwrap_or(metrics::NONE)
}

/// `provider@backend:outcome` for each attempt, when there was more than one.
fn attempt_log(ctx: &Ctx) -> Option<Vec<String>> {
    let log = ctx.attempts.log();
    (log.len() > 1).then(|| {
        log.iter()
            .map(|a| format!("{}@{}:{}", a.provider.name, a.backend, a.outcome))
            .collect()
    })
}

/// The request's usage and cost, from what its response showed (the rule
/// is in `accounting::settle`).
fn settle(ctx: &Ctx) -> Option<Settled> {
    let ep = ctx.endpoint?;
    let route = ctx.current_route()?;
    let req = settle::Request {
        ep,
        model: &route.model,
        body: &ctx.body,
        default_output: crate::proxy::ctx::alias_model(ctx.rt.as_ref(), ctx.alias.as_deref())
            .map_or(crate::config::DEFAULT_RESERVE_OUTPUT_TOKENS, |m| {
                m.reserve_output_tokens
            }),
    };
    let local = ctx.local_usage.map(|u| {
        if ctx.local_usage_estimated {
            Observed::Estimated(u)
        } else {
            Observed::Known(u)
        }
    });
    let observed = match (&ctx.meter, local) {
        // A translator's (or passthrough watch's) counts are final only if
        // the stream ended.
        (Meter::Stream(m), _) => Observed::Stream {
            seen: m.seen(),
            counts: ctx.local_usage,
        },
        (_, Some(local)) => local,
        (Meter::Body(m), None) => match m.usage() {
            BodyUsage::Reported(u) => Observed::Known(u),
            BodyUsage::Missing => Observed::Body(m.json()),
            BodyUsage::Unreadable => Observed::Unread,
        },
        (Meter::None, None) if unanswered(ctx) => Observed::Unanswered {
            stream: ctx.streams(),
        },
        (Meter::None, None) => return None,
    };
    settle::settle(&req, observed, route.price.as_ref())
}

/// Whether the last attempt's request reached the provider, which had not
/// answered when the request ended: no response was accepted and the
/// attempt did not fail (a failed attempt is logged; an error or a timeout
/// is not charged), so the client left while the provider was working.
fn unanswered(ctx: &Ctx) -> bool {
    ctx.body_sent && !ctx.response_started && !ctx.served_locally && ctx.attempts.last_is_open()
}

fn record_usage(m: &metrics::Metrics, route: &[&str; 4], s: &Settled) {
    let source = s.source.label();
    for (kind, n) in s.usage.by_kind() {
        let [model, provider, upstream_model, key] = *route;
        m.tokens
            .with_label_values(&[model, provider, upstream_model, key, kind, source])
            .inc_by(n);
    }
    match s.cost_usd {
        Some(c) => m.cost.with_label_values(route).inc_by(c),
        None => m.unpriced.with_label_values(route).inc(),
    }
}
