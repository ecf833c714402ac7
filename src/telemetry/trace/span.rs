//! The spans of a finished request, as the SDK's `SpanData`: the server
//! span (the request as the client saw it, the GenAI attributes, ours
//! under `tollgate.*`) and a client span per upstream attempt under it.
//! Names and values come from config, the request's parameters and the
//! response's metadata; never from prompt or completion text.

use super::{child_id, AttemptSpan, Finished, RequestTrace, ShadowEnd, ShadowTrace, SHADOW};
use crate::base::endpoint::Endpoint;
use crate::telemetry::metrics::NONE;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{Array, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// `gen_ai.operation.name` of an endpoint (`None`: not a GenAI call).
fn operation(ep: Endpoint) -> Option<&'static str> {
    match ep {
        Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses => Some("chat"),
        Endpoint::Completions => Some("text_completion"),
        Endpoint::Embeddings => Some("embeddings"),
        Endpoint::Models | Endpoint::Healthz => None,
    }
}

/// A config name or `None` for the placeholder.
fn named(v: &str) -> Option<&str> {
    (v != NONE && !v.is_empty()).then_some(v)
}

fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Attributes being gathered.
struct Attrs(Vec<KeyValue>);

impl Attrs {
    fn str(&mut self, k: &'static str, v: Option<&str>) {
        if let Some(v) = v {
            self.0.push(KeyValue::new(k, v.to_string()));
        }
    }
    fn fixed(&mut self, k: &'static str, v: Option<&'static str>) {
        if let Some(v) = v {
            self.0.push(KeyValue::new(k, v));
        }
    }
    fn int(&mut self, k: &'static str, v: Option<u64>) {
        if let Some(v) = v {
            self.0.push(KeyValue::new(k, int(v)));
        }
    }
    fn float(&mut self, k: &'static str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.0.push(KeyValue::new(k, v));
        }
    }
    fn bool(&mut self, k: &'static str, v: bool) {
        self.0.push(KeyValue::new(k, v));
    }
    /// `server.address` and `server.port` of an upstream backend.
    fn server(&mut self, addr: SocketAddr) {
        self.0
            .push(KeyValue::new("server.address", addr.ip().to_string()));
        self.int("server.port", Some(u64::from(addr.port())));
    }
}

/// The server span and one span per attempt.
pub(super) fn request(t: &RequestTrace, f: &Finished<'_>) -> Vec<SpanData> {
    let rec = f.record;
    let end = rec.ts;
    let start = end.checked_sub(rec.duration).unwrap_or(end);
    let op = f.endpoint.and_then(operation);
    let served = named(rec.provider).is_some();
    let mut a = Attrs(Vec::with_capacity(40));
    a.fixed("gen_ai.operation.name", op);
    a.fixed("gen_ai.provider.name", f.system.filter(|_| served));
    a.str("gen_ai.request.model", named(rec.model));
    let facts = f.response.as_ref();
    let response_model = facts
        .and_then(|r| r.model.as_deref())
        .or(named(rec.upstream_model));
    a.str("gen_ai.response.model", response_model);
    a.str("gen_ai.response.id", facts.and_then(|r| r.id.as_deref()));
    if let Some(reasons) = facts.map(|r| &r.finish_reasons).filter(|r| !r.is_empty()) {
        let list = reasons.iter().cloned().map(StringValue::from).collect();
        a.0.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(Array::String(list)),
        ));
    }
    a.int("gen_ai.request.max_tokens", f.params.max_tokens);
    a.float("gen_ai.request.temperature", f.params.temperature);
    a.float("gen_ai.request.top_p", f.params.top_p);
    if let Some(u) = &rec.usage {
        a.int("gen_ai.usage.input_tokens", Some(u.prompt));
        a.int("gen_ai.usage.output_tokens", Some(u.completion));
        a.int(
            "gen_ai.usage.cache_read.input_tokens",
            Some(u.cached).filter(|n| *n > 0),
        );
        a.int(
            "gen_ai.usage.cache_creation.input_tokens",
            Some(u.cache_write).filter(|n| *n > 0),
        );
        a.int(
            "gen_ai.usage.reasoning.output_tokens",
            Some(u.reasoning).filter(|n| *n > 0),
        );
    }
    a.float(
        "gen_ai.response.time_to_first_chunk",
        rec.ttft.map(|d| d.as_secs_f64()),
    );
    a.str("http.request.method", Some(rec.method));
    a.int(
        "http.response.status_code",
        Some(u64::from(rec.status)).filter(|s| *s > 0),
    );
    let route = f.endpoint.map(|ep| format!("/v1{}", ep.upstream_suffix()));
    a.str("http.route", route.as_deref());
    a.str("error.type", rec.error);
    a.str("tollgate.request_id", Some(rec.request_id));
    a.str("tollgate.key", named(rec.key));
    a.str("tollgate.team", f.team);
    a.str("tollgate.provider", named(rec.provider));
    a.str("tollgate.upstream_model", named(rec.upstream_model));
    a.str("tollgate.route", rec.route);
    a.str("tollgate.strategy", rec.strategy);
    a.str("tollgate.variant", rec.variant);
    a.int("tollgate.attempts", Some(u64::from(rec.attempts)));
    a.bool("tollgate.stream", rec.stream);
    a.fixed("tollgate.usage_source", rec.usage_source.map(|s| s.label()));
    a.float("tollgate.cost_usd", rec.cost_usd);
    if rec.usage.is_some() {
        a.bool("tollgate.unpriced", rec.unpriced);
    }
    if rec.stream {
        a.bool("tollgate.partial", rec.partial);
    }
    a.fixed("tollgate.hedge", Some(rec.hedge.unwrap_or("none")));
    a.fixed("tollgate.shadow", rec.shadow);
    a.fixed("tollgate.cache", rec.cache);
    a.float("tollgate.saved_usd", rec.saved_usd);
    let name = match (op, named(rec.model)) {
        (Some(op), Some(alias)) => format!("{op} {alias}"),
        (Some(op), None) => op.to_string(),
        (None, _) => match &route {
            Some(r) => format!("{} {r}", rec.method),
            None => rec.method.to_string(),
        },
    };
    let broken = rec.error.is_some() && (200..400).contains(&rec.status);
    let status = if rec.status >= 500 || broken {
        Status::error(rec.error.unwrap_or("error").to_string())
    } else {
        Status::Unset
    };
    let server = SpanData {
        span_context: context(t, t.span_id),
        parent_span_id: t.parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: t.parent.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(name),
        start_time: start,
        end_time: end,
        attributes: a.0,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: t.pipeline.scope.clone(),
    };
    let at = |d: Duration| start + d;
    let mut out = Vec::with_capacity(1 + f.attempts.len());
    out.push(server);
    for attempt in &f.attempts {
        let first_token = rec.ttft.filter(|_| attempt.ended.is_none()).map(at);
        let times = (at(attempt.started), attempt.ended.map_or(end, at));
        out.push(attempt_span(t, op, attempt, times, first_token));
    }
    out
}

fn context(t: &RequestTrace, span: SpanId) -> SpanContext {
    SpanContext::new(
        t.trace_id,
        span,
        TraceFlags::SAMPLED,
        false,
        t.state.clone(),
    )
}

/// One attempt's client span, under the server span.
fn attempt_span(
    t: &RequestTrace,
    op: Option<&'static str>,
    att: &AttemptSpan<'_>,
    (start, end): (SystemTime, SystemTime),
    first_token: Option<SystemTime>,
) -> SpanData {
    let mut a = Attrs(Vec::with_capacity(14));
    let up = Upstream {
        op,
        system: att.system,
        provider: att.provider,
        model: att.model,
        backend: att.backend,
        status: att.status,
        outcome: att.outcome,
    };
    up.attributes(&mut a);
    a.int("tollgate.attempt", Some(u64::from(att.seq)));
    if att.hedge {
        a.bool("tollgate.hedge_leg", true);
    }
    let mut events = SpanEvents::default();
    if let Some(at) = first_token {
        let event = opentelemetry::trace::Event::new("first_token", at, Vec::new(), 0);
        events.events.push(event);
    }
    SpanData {
        span_context: context(t, child_id(t.span_id, att.seq)),
        parent_span_id: t.span_id,
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: Cow::Owned(up.name()),
        start_time: start,
        end_time: end,
        attributes: a.0,
        dropped_attributes_count: 0,
        events,
        links: SpanLinks::default(),
        status: up.status(),
        instrumentation_scope: t.pipeline.scope.clone(),
    }
}

/// The shadow copy's client span, under the request's server span.
pub(super) fn shadow(t: &ShadowTrace, end: &ShadowEnd<'_>) -> SpanData {
    let mut a = Attrs(Vec::with_capacity(12));
    let up = Upstream {
        op: operation(end.endpoint),
        system: end.system,
        provider: end.provider,
        model: end.model,
        backend: end.backend,
        status: end.status,
        outcome: end.result,
    };
    up.attributes(&mut a);
    a.bool("tollgate.shadow_copy", true);
    SpanData {
        span_context: SpanContext::new(
            t.trace_id,
            child_id(t.parent, SHADOW),
            TraceFlags::SAMPLED,
            false,
            t.state.clone(),
        ),
        parent_span_id: t.parent,
        parent_span_is_remote: false,
        span_kind: SpanKind::Client,
        name: Cow::Owned(up.name()),
        start_time: end.ended.checked_sub(end.duration).unwrap_or(end.ended),
        end_time: end.ended,
        attributes: a.0,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: up.status(),
        instrumentation_scope: t.pipeline.scope.clone(),
    }
}

/// What an attempt's (or the shadow copy's) span says of its upstream.
struct Upstream<'a> {
    op: Option<&'static str>,
    system: &'static str,
    provider: &'a str,
    model: &'a str,
    backend: SocketAddr,
    status: Option<u16>,
    outcome: &'static str,
}

impl Upstream<'_> {
    fn failed(&self) -> bool {
        self.outcome != "success" || self.status.is_some_and(|s| s >= 400)
    }

    fn attributes(&self, a: &mut Attrs) {
        a.fixed("gen_ai.operation.name", self.op);
        a.fixed("gen_ai.provider.name", Some(self.system));
        a.str("gen_ai.request.model", Some(self.model));
        a.server(self.backend);
        a.fixed("http.request.method", Some("POST"));
        a.int("http.response.status_code", self.status.map(u64::from));
        if self.failed() {
            let kind = match (self.outcome, self.status) {
                ("success", Some(s)) => s.to_string(),
                (outcome, _) => outcome.to_string(),
            };
            a.0.push(KeyValue::new("error.type", kind));
        }
        a.str("tollgate.provider", Some(self.provider));
        a.fixed("tollgate.outcome", Some(self.outcome));
    }

    fn name(&self) -> String {
        format!("{} {}", self.op.unwrap_or("POST"), self.model)
    }

    fn status(&self) -> Status {
        if self.failed() {
            Status::error(self.outcome)
        } else {
            Status::Unset
        }
    }
}
