//! The end of a request: the error answer when proxying failed, then metrics
//! and the access-log line.

use crate::error::GatewayError;
use crate::proxy::ctx::Ctx;
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
                ReadError | WriteError | ConnectionClosed => None,
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
    let err = ctx.error.clone().or_else(|| classify(e));
    let Some(err) = err else {
        ctx.status = 499;
        return 0;
    };
    if session.response_written().is_some() {
        // Headers are out: the stream is cut; the client sees a broken body.
        ctx.error = Some(err);
        return 0;
    }
    if err.status() >= 500 {
        log::warn!(
            "request {}: {} ({e})",
            ctx.request_id,
            err.code()
        );
    }
    let status = err.status();
    if respond::error(session, &err, &ctx.request_id).await.is_err() {
        ctx.status = 499;
        return 0;
    }
    ctx.status = status;
    ctx.error = Some(err);
    status
}

/// Records metrics and writes the access-log line.
pub fn log_request(session: &Session, e: Option<&Error>, ctx: &mut Ctx) {
    if ctx.status == 0 {
        ctx.status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(if e.is_some() { 499 } else { 0 });
    }
    let rt = ctx.rt.clone();
    let key = rt
        .as_ref()
        .zip(ctx.key)
        .and_then(|(rt, k)| rt.key_info.get(k))
        .map(|k| k.name.clone());
    let route = ctx.current_route();
    let provider = route.map(|r| r.provider_name.clone());
    let upstream_model = route.map(|r| r.model.clone());
    let model = ctx.alias.clone();
    let endpoint = ctx.endpoint.map_or(metrics::NONE, |e| e.label());
    let duration = ctx.start.elapsed();
    let upstream = ctx.upstream_headers_at.map(|t| t - ctx.start);
    let s = |v: &Option<std::sync::Arc<str>>| -> String {
        v.as_deref().unwrap_or(metrics::NONE).to_string()
    };
    let (key_s, model_s, provider_s, upstream_model_s) =
        (s(&key), s(&model), s(&provider), s(&upstream_model));
    if let Some(m) = metrics::get() {
        if ctx.counted_in_flight {
            m.in_flight.dec();
            ctx.counted_in_flight = false;
        }
        m.requests
            .with_label_values(&[
                &model_s,
                &provider_s,
                &upstream_model_s,
                &key_s,
                endpoint,
                metrics::status_class(ctx.status),
            ])
            .inc();
        m.duration
            .with_label_values(&[&model_s, &provider_s, endpoint])
            .observe(duration.as_secs_f64());
        if let Some(u) = upstream {
            m.upstream_latency
                .with_label_values(&[&provider_s])
                .observe(u.as_secs_f64());
        }
        if let Some(err) = &ctx.error {
            m.errors.with_label_values(&[err.code()]).inc();
        }
    }
    let enabled = rt.as_ref().is_none_or(|r| r.config.access_log.enabled);
    if enabled {
        let method = session.req_header().method.as_str().to_string();
        access_log::write(&access_log::Record {
            ts: access_log::now_ts(),
            request_id: &ctx.request_id,
            method: &method,
            endpoint,
            key: &key_s,
            model: &model_s,
            provider: if ctx.served_locally || ctx.backend.is_some() {
                &provider_s
            } else {
                metrics::NONE
            },
            upstream_model: &upstream_model_s,
            backend: ctx.backend.map(|b| b.to_string()),
            stream: ctx.parsed.as_ref().is_some_and(|p| p.stream),
            status: ctx.status,
            duration_ms: duration.as_secs_f64() * 1000.0,
            upstream_ms: upstream.map(|u| u.as_secs_f64() * 1000.0),
            attempts: ctx.attempts,
            error: ctx.error.as_ref().map(|e| e.code()),
        });
    }
}
