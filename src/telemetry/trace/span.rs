//! The spans of a finished request, as OTLP protobuf (`opentelemetry-proto`'s
//! `Span`, encoded by prost): the server span (the request as the client
//! saw it, the GenAI attributes, ours under `tollgate.*`) and a client span
//! per upstream attempt under it. Names and values come from config, the
//! request's parameters and the response's metadata; never from prompt or
//! completion text.
//!
//! Each span is written into a `Span` message kept per thread and reused:
//! its attribute keys, string values and ids keep their allocations from
//! one span to the next (a key is rewritten only when it differs), so a
//! span costs no allocation but its encoded bytes, which are what the
//! queue holds (`export.rs` frames them into the request body as they are).

use super::{child_id, AttemptSpan, Finished, RequestTrace, ShadowEnd, ShadowTrace, SHADOW};
use crate::base::endpoint::Endpoint;
use crate::telemetry::metrics::NONE;
use opentelemetry::trace::{SpanId, TraceId, TraceState};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, SpanFlags, Status};
use prost::Message;
use std::cell::RefCell;
use std::fmt::Write;
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

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The span being written and the attribute slots it does not use now
/// (kept, with their allocations, for a span that has more).
#[derive(Default)]
struct Scratch {
    span: Span,
    spare: Vec<KeyValue>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Writes one span into this thread's scratch message and returns it
/// encoded.
fn encoded(write: impl FnOnce(&mut Span, &mut Attrs<'_>)) -> Vec<u8> {
    SCRATCH.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            // Not reentrant in practice; a fresh message if it ever is.
            return encode_fresh(write);
        };
        let Scratch { span, spare } = &mut *s;
        let mut list = std::mem::take(&mut span.attributes);
        let mut a = Attrs {
            list: &mut list,
            spare,
            n: 0,
        };
        write(span, &mut a);
        a.done();
        span.attributes = list;
        span.encode_to_vec()
    })
}

fn encode_fresh(write: impl FnOnce(&mut Span, &mut Attrs<'_>)) -> Vec<u8> {
    let (mut span, mut list, mut spare) = (Span::default(), Vec::new(), Vec::new());
    let mut a = Attrs {
        list: &mut list,
        spare: &mut spare,
        n: 0,
    };
    write(&mut span, &mut a);
    a.done();
    span.attributes = list;
    span.encode_to_vec()
}

/// Attributes being written over the previous span's.
struct Attrs<'s> {
    list: &'s mut Vec<KeyValue>,
    spare: &'s mut Vec<KeyValue>,
    /// How many are written.
    n: usize,
}

impl Attrs<'_> {
    /// The next attribute's value, its key set to `k`.
    fn slot(&mut self, k: &str) -> &mut Value {
        if self.n == self.list.len() {
            self.list.push(self.spare.pop().unwrap_or_default());
        }
        let i = self.n;
        self.n += 1;
        let kv = &mut self.list[i];
        if kv.key != k {
            kv.key.clear();
            kv.key.push_str(k);
        }
        let any = kv.value.get_or_insert_with(AnyValue::default);
        any.value.get_or_insert(Value::BoolValue(false))
    }

    /// A string value, `write` filling the previous one's buffer (in
    /// place: no value moved, no drop glue run, for a key that was a
    /// string last time too).
    fn string(&mut self, k: &str, write: impl FnOnce(&mut String)) {
        let v = self.slot(k);
        if let Value::StringValue(s) = v {
            s.clear();
            write(s);
            return;
        }
        let mut s = String::new();
        write(&mut s);
        *v = Value::StringValue(s);
    }

    fn str(&mut self, k: &'static str, v: Option<&str>) {
        if let Some(v) = v {
            self.string(k, |s| s.push_str(v));
        }
    }
    fn int(&mut self, k: &'static str, v: Option<u64>) {
        if let Some(v) = v {
            match self.slot(k) {
                Value::IntValue(i) => *i = int(v),
                other => *other = Value::IntValue(int(v)),
            }
        }
    }
    fn float(&mut self, k: &'static str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            match self.slot(k) {
                Value::DoubleValue(d) => *d = v,
                other => *other = Value::DoubleValue(v),
            }
        }
    }
    fn bool(&mut self, k: &'static str, v: bool) {
        match self.slot(k) {
            Value::BoolValue(b) => *b = v,
            other => *other = Value::BoolValue(v),
        }
    }
    /// A list of strings.
    fn strings(&mut self, k: &'static str, items: &[String]) {
        let v = self.slot(k);
        if !matches!(v, Value::ArrayValue(_)) {
            *v = Value::ArrayValue(ArrayValue::default());
        }
        if let Value::ArrayValue(list) = v {
            list.values.truncate(items.len());
            for (i, item) in items.iter().enumerate() {
                if let Some(AnyValue {
                    value: Some(Value::StringValue(s)),
                }) = list.values.get_mut(i)
                {
                    s.clear();
                    s.push_str(item);
                } else if let Some(slot) = list.values.get_mut(i) {
                    slot.value = Some(Value::StringValue(item.clone()));
                } else {
                    list.values.push(AnyValue {
                        value: Some(Value::StringValue(item.clone())),
                    });
                }
            }
        }
    }
    /// `server.address` and `server.port` of an upstream backend.
    fn server(&mut self, addr: SocketAddr) {
        self.string("server.address", |s| {
            let _ = write!(s, "{}", addr.ip());
        });
        self.int("server.port", Some(u64::from(addr.port())));
    }

    /// The span's attributes are the first `n`; the rest wait for a
    /// longer span.
    fn done(self) {
        self.spare.extend(self.list.drain(self.n..));
    }
}

/// What every span has, written over the previous span's.
struct Head<'a> {
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    parent_remote: bool,
    state: &'a TraceState,
    kind: SpanKind,
    start: SystemTime,
    end: SystemTime,
    /// `Some`: an error status with this message.
    error: Option<&'a str>,
}

fn set_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.clear();
    buf.extend_from_slice(bytes);
}

impl Head<'_> {
    fn write(&self, s: &mut Span) {
        set_bytes(&mut s.trace_id, &self.trace_id.to_bytes());
        set_bytes(&mut s.span_id, &self.span_id.to_bytes());
        match self.parent {
            Some(p) => set_bytes(&mut s.parent_span_id, &p.to_bytes()),
            None => s.parent_span_id.clear(),
        }
        s.trace_state.clear();
        if !self.state.eq(&TraceState::NONE) {
            s.trace_state.push_str(&self.state.header());
        }
        // Sampled, and whether the parent is remote (as the SDK sets them).
        let mut flags = 1 | SpanFlags::ContextHasIsRemoteMask as u32;
        if self.parent_remote {
            flags |= SpanFlags::ContextIsRemoteMask as u32;
        }
        s.flags = flags;
        s.kind = self.kind as i32;
        s.start_time_unix_nano = nanos(self.start);
        s.end_time_unix_nano = nanos(self.end);
        s.dropped_attributes_count = 0;
        s.dropped_events_count = 0;
        s.dropped_links_count = 0;
        s.links.clear();
        let status = s.status.get_or_insert_with(Status::default);
        status.message.clear();
        match self.error {
            Some(m) => {
                status.code = StatusCode::Error as i32;
                status.message.push_str(m);
            }
            None => status.code = StatusCode::Unset as i32,
        }
    }
}

/// Sets the span's events to one `first_token` at `at`, or none.
fn first_token_event(s: &mut Span, at: Option<SystemTime>) {
    let Some(at) = at else {
        s.events.clear();
        return;
    };
    s.events.truncate(1);
    if s.events.is_empty() {
        s.events.push(Event::default());
    }
    if let Some(e) = s.events.first_mut() {
        e.time_unix_nano = nanos(at);
        if e.name != "first_token" {
            e.name.clear();
            e.name.push_str("first_token");
        }
        e.attributes.clear();
        e.dropped_attributes_count = 0;
    }
}

/// The server span and one span per attempt, encoded.
pub(super) fn request(t: &RequestTrace, f: &Finished<'_>) -> Vec<Vec<u8>> {
    let rec = f.record;
    let end = rec.ts;
    let start = end.checked_sub(rec.duration).unwrap_or(end);
    let op = f.endpoint.and_then(operation);
    let mut out = Vec::with_capacity(1 + f.attempts.len());
    out.push(encoded(|span, a| {
        server_span(t, f, op, (start, end), span, a)
    }));
    let at = |d: Duration| start + d;
    for attempt in &f.attempts {
        let first_token = rec.ttft.filter(|_| attempt.ended.is_none()).map(at);
        let times = (at(attempt.started), attempt.ended.map_or(end, at));
        out.push(encoded(|span, a| {
            attempt_span(t, op, attempt, times, first_token, span, a);
        }));
    }
    out
}

fn server_span(
    t: &RequestTrace,
    f: &Finished<'_>,
    op: Option<&'static str>,
    (start, end): (SystemTime, SystemTime),
    span: &mut Span,
    a: &mut Attrs<'_>,
) {
    let rec = f.record;
    let served = named(rec.provider).is_some();
    a.str("gen_ai.operation.name", op);
    a.str("gen_ai.provider.name", f.system.filter(|_| served));
    a.str("gen_ai.request.model", named(rec.model));
    let facts = f.response.as_ref();
    let response_model = facts
        .and_then(|r| r.model.as_deref())
        .or(named(rec.upstream_model));
    a.str("gen_ai.response.model", response_model);
    a.str("gen_ai.response.id", facts.and_then(|r| r.id.as_deref()));
    if let Some(reasons) = facts.map(|r| &r.finish_reasons).filter(|r| !r.is_empty()) {
        a.strings("gen_ai.response.finish_reasons", reasons);
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
    let suffix = f.endpoint.map(|ep| ep.upstream_suffix());
    if let Some(suffix) = suffix {
        a.string("http.route", |r| {
            r.push_str("/v1");
            r.push_str(suffix);
        });
    }
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
    a.str("tollgate.usage_source", rec.usage_source.map(|s| s.label()));
    a.float("tollgate.cost_usd", rec.cost_usd);
    if rec.usage.is_some() {
        a.bool("tollgate.unpriced", rec.unpriced);
    }
    if rec.stream {
        a.bool("tollgate.partial", rec.partial);
    }
    a.str("tollgate.hedge", Some(rec.hedge.unwrap_or("none")));
    a.str("tollgate.shadow", rec.shadow);
    a.str("tollgate.cache", rec.cache);
    a.float("tollgate.saved_usd", rec.saved_usd);
    let name = &mut span.name;
    name.clear();
    match (op, named(rec.model)) {
        (Some(op), Some(alias)) => {
            name.push_str(op);
            name.push(' ');
            name.push_str(alias);
        }
        (Some(op), None) => name.push_str(op),
        (None, _) => {
            name.push_str(rec.method);
            if let Some(suffix) = suffix {
                name.push_str(" /v1");
                name.push_str(suffix);
            }
        }
    }
    let broken = rec.error.is_some() && (200..400).contains(&rec.status);
    let error = (rec.status >= 500 || broken).then(|| rec.error.unwrap_or("error"));
    first_token_event(span, None);
    Head {
        trace_id: t.trace_id,
        span_id: t.span_id,
        parent: t.parent,
        parent_remote: t.parent.is_some(),
        state: &t.state,
        kind: SpanKind::Server,
        start,
        end,
        error,
    }
    .write(span);
}

/// One attempt's client span, under the server span.
fn attempt_span(
    t: &RequestTrace,
    op: Option<&'static str>,
    att: &AttemptSpan<'_>,
    (start, end): (SystemTime, SystemTime),
    first_token: Option<SystemTime>,
    span: &mut Span,
    a: &mut Attrs<'_>,
) {
    let up = Upstream {
        op,
        system: att.system,
        provider: att.provider,
        model: att.model,
        backend: att.backend,
        status: att.status,
        outcome: att.outcome,
    };
    up.attributes(a);
    a.int("tollgate.attempt", Some(u64::from(att.seq)));
    if att.hedge {
        a.bool("tollgate.hedge_leg", true);
    }
    up.name(&mut span.name);
    first_token_event(span, first_token);
    Head {
        trace_id: t.trace_id,
        span_id: child_id(t.span_id, att.seq),
        parent: Some(t.span_id),
        parent_remote: false,
        state: &t.state,
        kind: SpanKind::Client,
        start,
        end,
        error: up.failed().then_some(up.outcome),
    }
    .write(span);
}

/// The shadow copy's client span, under the request's server span, encoded.
pub(super) fn shadow(t: &ShadowTrace, end: &ShadowEnd<'_>) -> Vec<u8> {
    encoded(|span, a| {
        let up = Upstream {
            op: operation(end.endpoint),
            system: end.system,
            provider: end.provider,
            model: end.model,
            backend: end.backend,
            status: end.status,
            outcome: end.result,
        };
        up.attributes(a);
        a.bool("tollgate.shadow_copy", true);
        up.name(&mut span.name);
        first_token_event(span, None);
        Head {
            trace_id: t.trace_id,
            span_id: child_id(t.parent, SHADOW),
            parent: Some(t.parent),
            parent_remote: false,
            state: &t.state,
            kind: SpanKind::Client,
            start: end.ended.checked_sub(end.duration).unwrap_or(end.ended),
            end: end.ended,
            error: up.failed().then_some(up.outcome),
        }
        .write(span);
    })
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

    fn attributes(&self, a: &mut Attrs<'_>) {
        a.str("gen_ai.operation.name", self.op);
        a.str("gen_ai.provider.name", Some(self.system));
        a.str("gen_ai.request.model", Some(self.model));
        a.server(self.backend);
        a.str("http.request.method", Some("POST"));
        a.int("http.response.status_code", self.status.map(u64::from));
        if self.failed() {
            a.string("error.type", |kind| match (self.outcome, self.status) {
                ("success", Some(s)) => {
                    let _ = write!(kind, "{s}");
                }
                (outcome, _) => kind.push_str(outcome),
            });
        }
        a.str("tollgate.provider", Some(self.provider));
        a.str("tollgate.outcome", Some(self.outcome));
    }

    fn name(&self, name: &mut String) {
        name.clear();
        name.push_str(self.op.unwrap_or("POST"));
        name.push(' ');
        name.push_str(self.model);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> Span {
        Span::decode(bytes).unwrap()
    }

    fn attrs(s: &Span) -> Vec<(String, Option<Value>)> {
        s.attributes
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
            .collect()
    }

    #[test]
    fn a_reused_scratch_span_carries_nothing_over_from_the_last() {
        let state = TraceState::NONE;
        let head = |error| Head {
            trace_id: TraceId::from(7u128),
            span_id: SpanId::from(9u64),
            parent: None,
            parent_remote: false,
            state: &state,
            kind: SpanKind::Client,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH + Duration::from_nanos(5),
            error,
        };
        let long = encoded(|span, a| {
            a.str("a", Some("one"));
            a.int("b", Some(2));
            a.strings("c", &["x".into(), "y".into()]);
            a.bool("d", true);
            span.name.push_str("long");
            first_token_event(span, Some(SystemTime::UNIX_EPOCH));
            head(Some("bad")).write(span);
        });
        let short = encoded(|span, a| {
            a.int("a", Some(1));
            a.str("z", Some("two"));
            span.name.clear();
            span.name.push_str("short");
            first_token_event(span, None);
            head(None).write(span);
        });
        let (long, short) = (decode(&long), decode(&short));
        assert_eq!(attrs(&long).len(), 4);
        assert_eq!(
            attrs(&short),
            vec![
                ("a".to_string(), Some(Value::IntValue(1))),
                ("z".to_string(), Some(Value::StringValue("two".into()))),
            ]
        );
        assert_eq!((long.name.as_str(), short.name.as_str()), ("long", "short"));
        assert_eq!((long.events.len(), short.events.len()), (1, 0));
        let code = |s: &Span| s.status.as_ref().map(|s| (s.code, s.message.clone()));
        assert_eq!(code(&long), Some((StatusCode::Error as i32, "bad".into())));
        assert_eq!(code(&short), Some((0, String::new())));
        assert_eq!(short.trace_id, 7u128.to_be_bytes().to_vec());
        assert_eq!(short.end_time_unix_nano, 5);
        assert!(short.parent_span_id.is_empty());
    }
}
