//! A traced request's end: what the proxy hands the tracer
//! (`telemetry::trace`) besides the request's record: the team, the
//! sampling parameters, the response's id, model and finish reasons, and
//! each upstream attempt, all as plain values.

use crate::proxy::ctx::Ctx;
use crate::telemetry::record::Record;
use crate::telemetry::trace::{AttemptSpan, Finished, RequestTrace};

/// Builds and queues the request's spans.
pub(crate) fn finish(trace: Box<RequestTrace>, ctx: &Ctx, record: &Record<'_>) {
    let req = ctx.req();
    let since_start = |t: std::time::Instant| t.saturating_duration_since(ctx.head.start);
    let mut attempts: Vec<AttemptSpan<'_>> = ctx
        .attempts
        .log()
        .iter()
        .filter_map(|l| {
            let route = req?.route(l.route)?;
            Some(AttemptSpan {
                seq: l.seq,
                provider: &l.provider.name,
                system: route.system(),
                model: &route.model,
                backend: l.backend,
                outcome: l.outcome,
                status: l.status,
                hedge: l.hedge,
                started: since_start(l.started),
                ended: l.ended.map(since_start),
            })
        })
        .collect();
    // The attempt the request ended on before it had an answer (the client
    // left while the provider was working) has no log entry.
    if let (true, Some(a)) = (ctx.attempts.last_is_open(), ctx.current.get()) {
        if let Some(route) = req.and_then(|r| r.route(a.route)) {
            attempts.push(AttemptSpan {
                seq: a.seq,
                provider: &a.up.name,
                system: route.system(),
                model: &route.model,
                backend: a.addr,
                outcome: "unanswered",
                status: None,
                hedge: a.hedge,
                started: since_start(a.started),
                ended: None,
            });
        }
    }
    let finished = Finished {
        record,
        endpoint: ctx.head.endpoint,
        team: ctx.head.key.as_deref().and_then(|k| k.team.as_deref()),
        system: ctx.current_route().map(|r| r.system()),
        params: req
            .map(|r| r.parsed.params.read(&r.body))
            .unwrap_or_default(),
        response: ctx.resp.facts(),
        attempts,
    };
    trace.finish(&finished);
}
