//! The spans of a finished request, as OTLP protobuf (`opentelemetry-proto`'s
//! `Span`, encoded by prost): the server span (the request as the client
//! saw it, the GenAI attributes, ours under `tollgate.*`) and a client span
//! per upstream attempt under it. Names and values come from config, the
//! request's parameters and the response's metadata; never from prompt or
//! completion text.
//!
//! Each span is written into a `Span` message kept per thread and reused
//! (its ids, name and status keep their allocations from one span to the
//! next), with its attributes encoded straight into a byte buffer beside
//! it ([`Attrs`]), so a span costs no allocation but its encoded bytes,
//! which are what the queue holds (`export.rs` frames them into the
//! request body as they are).

use super::{child_id, AttemptSpan, Finished, RequestTrace, ShadowEnd, ShadowTrace, SHADOW};
use crate::base::endpoint::Endpoint;
use crate::telemetry::metrics::NONE;
use opentelemetry::trace::{SpanId, TraceId, TraceState};
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
        // No GenAI convention names these: the endpoint's own label.
        Endpoint::Moderations => Some("moderations"),
        Endpoint::ImageGenerations => Some("images_generations"),
        Endpoint::AudioSpeech => Some("audio_speech"),
        Endpoint::Rerank => Some("rerank"),
        Endpoint::ImageEdits => Some("images_edits"),
        Endpoint::AudioTranscriptions => Some("audio_transcriptions"),
        Endpoint::AudioTranslations => Some("audio_translations"),
        // Files and batches are no GenAI call either.
        Endpoint::FilesCreate
        | Endpoint::FilesList
        | Endpoint::FilesRetrieve
        | Endpoint::FilesDelete
        | Endpoint::FilesContent
        | Endpoint::BatchesCreate
        | Endpoint::BatchesList
        | Endpoint::BatchesRetrieve
        | Endpoint::BatchesCancel => None,
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

/// The span being written (its attributes always empty: they are encoded
/// apart, see [`Attrs`]), the attributes' encoded bytes and a string for
/// values that are formatted.
#[derive(Default)]
struct Scratch {
    span: Span,
    attrs: Vec<u8>,
    text: String,
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
            return encode_with(&mut Scratch::default(), write);
        };
        encode_with(&mut s, write)
    })
}

fn encode_with(s: &mut Scratch, write: impl FnOnce(&mut Span, &mut Attrs<'_>)) -> Vec<u8> {
    let Scratch { span, attrs, text } = s;
    attrs.clear();
    span.attributes.clear();
    let mut a = Attrs { buf: attrs, text };
    write(span, &mut a);
    // A message's encoding followed by more of its fields is the message
    // with those fields merged in (the protobuf encoding's rule), so the
    // attributes, encoded as `Span.attributes` fields, go after the rest.
    let mut out = Vec::with_capacity(span.encoded_len() + attrs.len());
    // Into a `Vec` sized for it: cannot run out of room.
    let _ = span.encode(&mut out);
    out.extend_from_slice(attrs);
    out
}

/// A span's attributes, encoded as they are written: each one a
/// `Span.attributes` field holding a `KeyValue` (`opentelemetry-proto`'s
/// `common.v1`) whose lengths are known before it is written, so nothing is
/// measured twice. prost encodes the rest of the span; building a
/// `KeyValue` per attribute and letting prost measure each nested level
/// again at every level above it was most of tracing's cost (see
/// docs/benchmarks.md, "Tracing"). The unit tests decode what this writes
/// with prost.
struct Attrs<'s> {
    buf: &'s mut Vec<u8>,
    /// For values written with `fmt`.
    text: &'s mut String,
}

/// The protobuf key byte of field `field` (below 16) with `wire` type.
const fn key(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
/// `Span.attributes`.
const SPAN_ATTRIBUTES: u8 = 9;
/// `KeyValue.key`, `KeyValue.value`.
const KV_KEY: u8 = 1;
const KV_VALUE: u8 = 2;
/// `AnyValue`'s `string_value`, `bool_value`, `int_value`, `double_value`,
/// `array_value`; `ArrayValue.values`.
const ANY_STRING: u8 = 1;
const ANY_BOOL: u8 = 2;
const ANY_INT: u8 = 3;
const ANY_DOUBLE: u8 = 4;
const ANY_ARRAY: u8 = 5;
const ARRAY_VALUES: u8 = 1;

/// Bytes of a length-delimited field of `n` bytes (one-byte key).
fn field_len(n: usize) -> usize {
    1 + prost::length_delimiter_len(n) + n
}

/// What an attribute's `AnyValue` holds.
enum Val<'v> {
    Str(&'v str),
    Int(u64),
    Double(f64),
    Bool(bool),
    Strs(&'v [String]),
}

impl Val<'_> {
    /// Bytes of the `AnyValue` message.
    fn len(&self) -> usize {
        match self {
            Val::Str(s) => field_len(s.len()),
            Val::Int(i) => 1 + prost::length_delimiter_len(varint(*i)),
            Val::Double(_) => 9,
            Val::Bool(_) => 2,
            Val::Strs(items) => field_len(array_len(items)),
        }
    }
}

/// Bytes of an `ArrayValue` of string `AnyValue`s.
fn array_len(items: &[String]) -> usize {
    items.iter().map(|s| field_len(field_len(s.len()))).sum()
}

/// A non-negative `i64` as the `usize` the length delimiter writes (the
/// same base-128 varint as an `int64`).
fn varint(n: u64) -> usize {
    usize::try_from(int(n)).unwrap_or(usize::MAX)
}

fn put_len(buf: &mut Vec<u8>, n: usize) {
    // Writing into a `Vec` cannot run out of room.
    let _ = prost::encode_length_delimiter(n, buf);
}

fn put_str(buf: &mut Vec<u8>, field: u8, s: &str) {
    buf.push(key(field, LEN));
    put_len(buf, s.len());
    buf.extend_from_slice(s.as_bytes());
}

impl Attrs<'_> {
    fn put(&mut self, k: &str, v: Val<'_>) {
        let any = v.len();
        let buf = &mut *self.buf;
        // proto3 leaves an empty `key` out (a oneof's value never is).
        let key_len = if k.is_empty() { 0 } else { field_len(k.len()) };
        buf.push(key(SPAN_ATTRIBUTES, LEN));
        put_len(buf, key_len + field_len(any));
        if !k.is_empty() {
            put_str(buf, KV_KEY, k);
        }
        buf.push(key(KV_VALUE, LEN));
        put_len(buf, any);
        match v {
            Val::Str(s) => put_str(buf, ANY_STRING, s),
            Val::Int(i) => {
                buf.push(key(ANY_INT, VARINT));
                put_len(buf, varint(i));
            }
            Val::Double(d) => {
                buf.push(key(ANY_DOUBLE, FIXED64));
                buf.extend_from_slice(&d.to_le_bytes());
            }
            Val::Bool(b) => {
                buf.push(key(ANY_BOOL, VARINT));
                buf.push(u8::from(b));
            }
            Val::Strs(items) => {
                buf.push(key(ANY_ARRAY, LEN));
                put_len(buf, array_len(items));
                for item in items {
                    buf.push(key(ARRAY_VALUES, LEN));
                    put_len(buf, field_len(item.len()));
                    put_str(buf, ANY_STRING, item);
                }
            }
        }
    }

    /// A string value that `write` formats.
    fn string(&mut self, k: &str, write: impl FnOnce(&mut String)) {
        let mut text = std::mem::take(self.text);
        text.clear();
        write(&mut text);
        self.put(k, Val::Str(&text));
        *self.text = text;
    }

    fn str(&mut self, k: &'static str, v: Option<&str>) {
        if let Some(v) = v {
            self.put(k, Val::Str(v));
        }
    }
    fn int(&mut self, k: &'static str, v: Option<u64>) {
        if let Some(v) = v {
            self.put(k, Val::Int(v));
        }
    }
    fn float(&mut self, k: &'static str, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.put(k, Val::Double(v));
        }
    }
    fn bool(&mut self, k: &'static str, v: bool) {
        self.put(k, Val::Bool(v));
    }
    /// A list of strings.
    fn strings(&mut self, k: &'static str, items: &[String]) {
        self.put(k, Val::Strs(items));
    }
    /// `server.address` and `server.port` of an upstream backend.
    fn server(&mut self, addr: SocketAddr) {
        self.string("server.address", |s| {
            let _ = write!(s, "{}", addr.ip());
        });
        self.int("server.port", Some(u64::from(addr.port())));
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
    if let Some((declared, tags)) = rec.workload {
        // `tollgate.tag.<key>` for each tag the request has.
        let mut k = String::new();
        for (tag, value) in declared.set_pairs(&tags) {
            k.clear();
            k.push_str("tollgate.tag.");
            k.push_str(tag);
            a.put(&k, Val::Str(value));
        }
    }
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
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue};
    use proptest::prelude::*;

    /// One attribute as the test writes it.
    #[derive(Debug, Clone)]
    enum Attr {
        Str(String, String),
        Int(String, u64),
        Double(String, f64),
        Bool(String, bool),
        Strs(String, Vec<String>),
    }

    fn wrap(v: Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    /// What prost makes of the same attributes.
    fn expected(list: &[Attr]) -> Vec<KeyValue> {
        list.iter()
            .map(|a| {
                let (k, v) = match a {
                    Attr::Str(k, v) => (k, Value::StringValue(v.clone())),
                    Attr::Int(k, v) => (k, Value::IntValue(int(*v))),
                    Attr::Double(k, v) => (k, Value::DoubleValue(*v)),
                    Attr::Bool(k, v) => (k, Value::BoolValue(*v)),
                    Attr::Strs(k, v) => (
                        k,
                        Value::ArrayValue(ArrayValue {
                            values: v
                                .iter()
                                .map(|s| AnyValue {
                                    value: Some(Value::StringValue(s.clone())),
                                })
                                .collect(),
                        }),
                    ),
                };
                KeyValue {
                    key: k.clone(),
                    value: wrap(v),
                    ..KeyValue::default()
                }
            })
            .collect()
    }

    fn attr() -> impl Strategy<Value = Attr> {
        // Lengths past 127 and 16,383 need two- and three-byte lengths.
        let text = || prop_oneof![".{0,20}", "[a-z]{100,300}", "x{16380,16400}"];
        prop_oneof![
            (text(), text()).prop_map(|(k, v)| Attr::Str(k, v)),
            (text(), any::<u64>()).prop_map(|(k, v)| Attr::Int(k, v)),
            (
                text(),
                any::<f64>().prop_filter("finite", |v| v.is_finite())
            )
                .prop_map(|(k, v)| Attr::Double(k, v)),
            (text(), any::<bool>()).prop_map(|(k, v)| Attr::Bool(k, v)),
            (text(), prop::collection::vec(text(), 0..4)).prop_map(|(k, v)| Attr::Strs(k, v)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The attributes' bytes are exactly prost's encoding of a `Span`
        /// holding only them, and decode to the same `KeyValue`s.
        #[test]
        fn attributes_encode_as_prost_encodes_them(list in prop::collection::vec(attr(), 0..12)) {
            let mut buf = Vec::new();
            let mut text = String::new();
            let mut a = Attrs { buf: &mut buf, text: &mut text };
            for x in &list {
                match x {
                    Attr::Str(k, v) => a.put(k, Val::Str(v)),
                    Attr::Int(k, v) => a.put(k, Val::Int(*v)),
                    Attr::Double(k, v) => a.put(k, Val::Double(*v)),
                    Attr::Bool(k, v) => a.put(k, Val::Bool(*v)),
                    Attr::Strs(k, v) => a.put(k, Val::Strs(v)),
                }
            }
            let want = Span { attributes: expected(&list), ..Span::default() };
            prop_assert_eq!(&buf, &want.encode_to_vec());
            prop_assert_eq!(Span::decode(&*buf).unwrap().attributes, want.attributes);
        }
    }

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
