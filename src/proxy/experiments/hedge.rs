//! Hedged requests. For an alias with `hedge`, the request is served here
//! instead of by Pingora's proxy loop (which talks to one upstream at a
//! time): the primary leg starts on the first route; if it has produced no
//! body byte after `after`, a second leg starts on the next route. The
//! first leg to produce a byte wins and is streamed to the client through
//! the usual meters; the other is dropped at once, which closes its
//! connection. A leg that fails before any byte falls back to the next
//! candidate, as the proxy would. Both legs are metered.

use super::race::{run_leg, LegEnd};
use super::{metrics as xmetrics, relay};
use crate::accounting::settle::{self, Observed};
use crate::config::{HedgeAfter, HEDGE_BURST};
use crate::engine::attempts::{Attempt, Failure};
use crate::proxy::ctx::{Admitted, Ctx};
use crate::proxy::headers;
use crate::runtime::experiments::HedgePlan;
use crate::telemetry::metrics;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `after: p95` before the primary route has enough samples.
const P95_UNTIL_MEASURED: Duration = Duration::from_secs(1);

type LegFuture = Pin<Box<dyn Future<Output = (usize, LegEnd)> + Send>>;

/// A leg started, as remembered by the race.
struct Leg {
    attempt: Attempt,
    hedge: bool,
    running: bool,
}

/// What one request's race needs, taken from its context.
struct Race<'a> {
    req: Arc<Admitted>,
    client: &'a RequestHeader,
    legs: Vec<Leg>,
    running: FuturesUnordered<LegFuture>,
    /// When the legs still running were cut off.
    cut_at: Option<Instant>,
}

/// Serves a request of a hedging alias. Always answers (`Ok(true)`),
/// unless the request lacks what a race needs, when the normal proxy path
/// takes it (`Ok(false)`).
pub(crate) async fn serve(
    session: &mut Session,
    ctx: &mut Ctx,
    req: &Arc<Admitted>,
    plan: &HedgePlan,
) -> pingora::Result<bool> {
    let (model, alias) = (&req.model, req.alias());
    plan.cap.on_request(plan.max_share, HEDGE_BURST);
    let client = session.req_header().clone();
    let mut race = Race {
        req: req.clone(),
        client: &client,
        legs: Vec::new(),
        running: FuturesUnordered::new(),
        cut_at: None,
    };
    if !race.start_next(ctx, false) {
        return relay::answer_error(session, ctx).await;
    }
    let primary = race.legs.first().map_or(0, |l| l.attempt.route);
    let after = match plan.after {
        HedgeAfter::Fixed(d) => d.get(),
        HedgeAfter::P95 => {
            crate::routing::p95_ttft(&model.routing, primary).unwrap_or(P95_UNTIL_MEASURED)
        }
    };
    let hedge_timer = tokio::time::sleep(after);
    tokio::pin!(hedge_timer);
    let mut armed = true;
    let mut watch_client = true;
    let won = loop {
        tokio::select! {
            gone = session.downstream_session.read_body_or_idle(true), if watch_client => {
                if gone.is_err() {
                    // The client left: dropping the legs cancels them
                    // upstream; those that were running are charged.
                    ctx.out.gone();
                    race.cut_off();
                    race.meter_cancelled(ctx);
                    return Ok(true);
                }
                watch_client = false;
            }
            Some((i, end)) = race.running.next() => match end {
                LegEnd::Ready { ex, first } => break Some((i, *ex, first)),
                LegEnd::Failed(f) => {
                    race.failed(ctx, i, f);
                    if race.running.is_empty() && !race.start_next(ctx, false) {
                        break None;
                    }
                }
            },
            _ = &mut hedge_timer, if armed => {
                armed = false;
                if race.running.len() == 1 && ctx.attempts.has_next_route() {
                    if plan.cap.try_take() {
                        ctx.attempts.skip_route();
                        if race.start_next(ctx, true) {
                            ctx.exp.hedge = Some("fired");
                            xmetrics::hedge(alias, "fired");
                        }
                    } else {
                        xmetrics::hedge(alias, "capped");
                    }
                }
            }
            else => break None,
        }
    };
    let Some((winner, ex, first)) = won else {
        return relay::answer_error(session, ctx).await;
    };
    // Dropping the other legs closes their connections: cancelled at once.
    race.cut_off();
    // The winner becomes the request's attempt: for the route statistics
    // (its first byte feeds the p95 that `after: p95` reads), the breaker,
    // the attempt log and the meters.
    if winner < race.legs.len() {
        let leg = race.legs.remove(winner);
        crate::routing::track::attempt_started_at(
            &mut ctx.routing,
            &model.routing,
            leg.attempt.route,
            leg.attempt.started,
        );
        if leg.hedge {
            ctx.exp.hedge = Some("won");
            xmetrics::hedge(alias, "won");
        }
        ctx.current.start(leg.attempt);
    }
    let served = relay::relay(session, ctx, ex, first).await;
    // After the response: estimating tokens may first load a tokenizer.
    race.meter_cancelled(ctx);
    served
}

impl Race<'_> {
    /// Drops the legs still running, which closes their connections.
    fn cut_off(&mut self) {
        self.running = FuturesUnordered::new();
        self.cut_at = Some(Instant::now());
    }

    /// Starts a leg on the walker's next attempt; `false` when none is
    /// left or no attempt may start (attempt cap, request deadline).
    fn start_next(&mut self, ctx: &mut Ctx, hedge: bool) -> bool {
        let r = &*self.req;
        let caps = ctx.caps();
        // Hedged aliases have OpenAI-kind routes only: no route body.
        let Ok(pick) = ctx.attempts.next(
            &r.model,
            r.alias(),
            ctx.head.request_id.as_bytes(),
            &caps,
            hedge,
            |_, _| Ok(None),
        ) else {
            return false;
        };
        let Some(route) = r.route(pick.route) else {
            return false;
        };
        let attempt = pick.into_attempt(
            route,
            &r.body,
            &r.parsed,
            r.endpoint.usage_capable(),
            (&ctx.head.rt.workloads, r.tags),
        );
        let Ok(head) = headers::upstream_request(
            self.client,
            &attempt.up,
            attempt.auth(),
            r.endpoint,
            attempt.body.len(),
            &ctx.head.request_id,
            ctx.propagation(attempt.seq),
        ) else {
            return false;
        };
        let index = self.legs.len();
        let fut = run_leg(
            attempt.up.clone(),
            attempt.addr,
            route.limits,
            head,
            attempt.body.clone(),
            r.stream(),
        );
        self.running
            .push(Box::pin(async move { (index, fut.await) }));
        self.legs.push(Leg {
            attempt,
            hedge,
            running: true,
        });
        true
    }

    /// Records a leg that failed before any byte reached the client.
    fn failed(&mut self, ctx: &mut Ctx, i: usize, f: Failure) {
        if let Some(leg) = self.legs.get_mut(i) {
            leg.running = false;
            ctx.attempts.failed(&leg.attempt, f);
        }
    }

    /// Meters the legs cut off by the winner (or by the client leaving):
    /// logged as `hedge_cancelled`, counted on their route and charged with
    /// the request, as any request cut off before its answer is
    /// (`accounting::settle`): a stream leg its prompt (estimated; the
    /// provider has read it, and a stream without a byte has generated
    /// nothing), a non-stream leg its worst case (the provider may finish
    /// the answer it started and bill it).
    fn meter_cancelled(&self, ctx: &mut Ctx) {
        let r = &*self.req;
        let key = ctx
            .head
            .key
            .as_deref()
            .map_or(metrics::NONE, |k| &*k.name)
            .to_string();
        let at = self.cut_at.unwrap_or_else(Instant::now);
        for leg in self.legs.iter().filter(|l| l.running) {
            ctx.attempts.cancelled(&leg.attempt, at);
            let Some(route) = r.route(leg.attempt.route) else {
                continue;
            };
            let req = settle::Request {
                ep: r.endpoint,
                model: &route.model,
                body: &r.body,
                default_output: r.model.reserve_output_tokens,
            };
            let observed = Observed::Unanswered { stream: r.stream() };
            let Some(s) = settle::settle(&req, observed, route.price.as_ref()) else {
                continue;
            };
            ctx.exp.extra_tokens = ctx.exp.extra_tokens.saturating_add(s.tokens());
            ctx.exp.extra_usd += s.cost_usd.unwrap_or(0.0);
            if let Some(m) = metrics::get() {
                let labels = [&**r.alias(), &*route.provider_name, &*route.model, &key];
                for (kind, n) in s.usage.by_kind().filter(|&(_, n)| n > 0) {
                    m.tokens
                        .with_label_values(&[
                            labels[0],
                            labels[1],
                            labels[2],
                            labels[3],
                            kind,
                            s.source.label(),
                        ])
                        .inc_by(n);
                }
                if let Some(c) = s.cost_usd {
                    m.cost.with_label_values(&labels).inc_by(c);
                }
            }
        }
    }
}
