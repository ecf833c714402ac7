//! Hedged requests. For an alias with `hedge`, the request is served here
//! instead of by Pingora's proxy loop (which talks to one upstream at a
//! time): the primary leg starts on the first route; if it has produced no
//! body byte after `after`, a second leg starts on the next route. The
//! first leg to produce a byte wins and is streamed to the client through
//! the usual meters; the other is dropped at once, which closes its
//! connection. A leg that fails before any byte falls back to the next
//! candidate, as the proxy would. Both legs are metered.

use super::race::{run_leg, Candidates, LegEnd, LegFailure, Pick};
use super::{metrics as xmetrics, relay};
use crate::accounting::settle::{self, Observed};
use crate::base::endpoint::Endpoint;
use crate::config::{HedgeAfter, HEDGE_BURST};
use crate::proxy::ctx::{AttemptLog, Ctx};
use crate::proxy::{attempt, headers};
use crate::rewrite;
use crate::runtime::experiments::HedgePlan;
use crate::runtime::Runtime;
use crate::telemetry::metrics;
use bytes::Bytes;
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
    pick: Pick,
    hedge: bool,
    body: Bytes,
    injected: bool,
    started: Instant,
    running: bool,
}

/// What one request's race needs, taken from its context.
struct Race<'a> {
    rt: Arc<Runtime>,
    alias: Arc<str>,
    ep: Endpoint,
    stream: bool,
    client: &'a RequestHeader,
    legs: Vec<Leg>,
    running: FuturesUnordered<LegFuture>,
}

/// Serves a request of a hedging alias. Always answers (`Ok(true)`),
/// unless the request lacks what a race needs, when the normal proxy path
/// takes it (`Ok(false)`).
pub async fn serve(
    session: &mut Session,
    ctx: &mut Ctx,
    plan: &HedgePlan,
) -> pingora::Result<bool> {
    let (Some(rt), Some(alias), Some(ep), Some(parsed)) = (
        ctx.rt.clone(),
        ctx.alias.clone(),
        ctx.endpoint,
        ctx.parsed.as_ref(),
    ) else {
        return Ok(false);
    };
    let stream = parsed.stream && ep != Endpoint::Embeddings;
    let Some(model) = rt.models.get(&*alias) else {
        return Ok(false);
    };
    plan.cap.on_request(plan.max_share, HEDGE_BURST);
    let client = session.req_header().clone();
    let mut race = Race {
        rt: rt.clone(),
        alias: alias.clone(),
        ep,
        stream,
        client: &client,
        legs: Vec::new(),
        running: FuturesUnordered::new(),
    };
    let mut cands = Candidates::new(ctx, model);
    if !race.start_next(ctx, &mut cands, false) {
        return relay::answer_error(session, ctx).await;
    }
    let primary = race.legs.first().map_or(0, |l| l.pick.route);
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
                    ctx.status = 499;
                    race.running = FuturesUnordered::new();
                    race.meter_cancelled(ctx, None);
                    return Ok(true);
                }
                watch_client = false;
            }
            Some((i, end)) = race.running.next() => match end {
                LegEnd::Ready { ex, first } => break Some((i, *ex, first)),
                LegEnd::Failed(f) => {
                    race.failed(ctx, i, f);
                    if race.running.is_empty() && !race.start_next(ctx, &mut cands, false) {
                        break None;
                    }
                }
            },
            _ = &mut hedge_timer, if armed => {
                armed = false;
                if race.running.len() == 1 && cands.has_next_route() {
                    if plan.cap.try_take() {
                        cands.skip_route();
                        if race.start_next(ctx, &mut cands, true) {
                            ctx.exp.hedge = Some("fired");
                            xmetrics::hedge(&alias, "fired");
                        }
                    } else {
                        xmetrics::hedge(&alias, "capped");
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
    race.running = FuturesUnordered::new();
    // The winner is the request's attempt for the route statistics (its
    // first byte feeds the p95 that `after: p95` reads).
    if let Some(leg) = race.legs.get(winner) {
        crate::routing::track::attempt_started_at(
            &mut ctx.routing,
            &model.routing,
            leg.pick.route,
            leg.started,
        );
    }
    race.adopt(ctx, winner);
    if race.legs.get(winner).is_some_and(|l| l.hedge) {
        ctx.exp.hedge = Some("won");
        xmetrics::hedge(&alias, "won");
    }
    let served = relay::relay(session, ctx, ex, first).await;
    // After the response: estimating tokens may first load a tokenizer.
    race.meter_cancelled(ctx, Some(winner));
    served
}

impl Race<'_> {
    /// Starts a leg on the next candidate; `false` when none is left or no
    /// attempt may start (attempt cap, request deadline).
    fn start_next(&mut self, ctx: &mut Ctx, cands: &mut Candidates, hedge: bool) -> bool {
        if ctx.attempts >= self.rt.max_attempts || ctx.start.elapsed() >= self.rt.request_deadline {
            return false;
        }
        let Some(model) = self.rt.models.get(&*self.alias) else {
            return false;
        };
        let Some(pick) = cands.next(ctx, model) else {
            return false;
        };
        let Some(parsed) = ctx.parsed.as_ref() else {
            return false;
        };
        let Some(route) = model.routes.get(pick.route) else {
            return false;
        };
        let usage_capable = matches!(self.ep, Endpoint::ChatCompletions | Endpoint::Completions);
        let (body, injected) = rewrite::attempt_body(
            &ctx.body,
            parsed,
            &route.model_json,
            usage_capable && pick.up.stream_usage,
        );
        let Ok(req) =
            headers::upstream_request(self.client, &pick.up, self.ep, body.len(), &ctx.request_id)
        else {
            return false;
        };
        if let (Some(last), false) = (self.legs.last(), hedge) {
            // Same route, another backend: a retry; another route: a fallback.
            let kind = if last.pick.route == pick.route {
                "retry"
            } else {
                "fallback"
            };
            if let Some(m) = metrics::get() {
                m.retries.with_label_values(&[&self.alias, kind]).inc();
            }
        }
        ctx.attempts += 1;
        let index = self.legs.len();
        let fut = run_leg(
            pick.up.clone(),
            pick.addr,
            route.limits,
            req,
            body.clone(),
            self.stream,
        );
        self.running
            .push(Box::pin(async move { (index, fut.await) }));
        self.legs.push(Leg {
            pick,
            hedge,
            body,
            injected,
            started: Instant::now(),
            running: true,
        });
        true
    }

    /// Points the context at leg `i`, so the proxy's bookkeeping (breaker,
    /// attempt log, meters, route header) applies to it.
    fn adopt(&self, ctx: &mut Ctx, i: usize) {
        let Some(leg) = self.legs.get(i) else {
            return;
        };
        ctx.attempt_route = Some(leg.pick.route);
        ctx.backend = Some(leg.pick.addr);
        ctx.backend_state = leg.pick.state.clone();
        ctx.attempt_body = leg.body.clone();
        ctx.usage_injected = leg.injected;
    }

    /// Records a leg that failed before any byte reached the client.
    fn failed(&mut self, ctx: &mut Ctx, i: usize, f: LegFailure) {
        self.adopt(ctx, i);
        if let Some(leg) = self.legs.get_mut(i) {
            leg.running = false;
        }
        attempt::record_failure(ctx, f.outcome, f.error, f.retry_after, f.skip_provider);
        ctx.skip_provider = false;
    }

    /// Meters the legs cut off by the winner (or by the client leaving):
    /// logged as `hedge_cancelled`, counted on their route and charged with
    /// the request, as any request cut off before its answer is
    /// (`accounting::settle`): a stream leg its prompt (estimated; the
    /// provider has read it, and a stream without a byte has generated
    /// nothing), a non-stream leg its worst case (the provider may finish
    /// the answer it started and bill it).
    fn meter_cancelled(&self, ctx: &mut Ctx, winner: Option<usize>) {
        let Some(model) = self.rt.models.get(&*self.alias) else {
            return;
        };
        let key = ctx
            .key
            .as_deref()
            .map_or(metrics::NONE, |k| &*k.name)
            .to_string();
        for (i, leg) in self.legs.iter().enumerate() {
            if Some(i) == winner || !leg.running {
                continue;
            }
            let Some(route) = model.routes.get(leg.pick.route) else {
                continue;
            };
            let req = settle::Request {
                ep: self.ep,
                model: &route.model,
                body: &ctx.body,
                default_output: model.reserve_output_tokens,
            };
            let observed = Observed::Unanswered {
                stream: self.stream,
            };
            let Some(s) = settle::settle(&req, observed, route.price.as_ref()) else {
                continue;
            };
            ctx.exp.extra_tokens = ctx.exp.extra_tokens.saturating_add(s.tokens());
            ctx.exp.extra_usd += s.cost_usd.unwrap_or(0.0);
            if let Some(m) = metrics::get() {
                let labels = [&*self.alias, &*route.provider_name, &*route.model, &key];
                m.attempts
                    .with_label_values(&[leg.pick.up.name.as_str(), "hedge_cancelled"])
                    .inc();
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
            ctx.attempt_log.push(AttemptLog {
                provider: Some(leg.pick.up.clone()),
                backend: Some(leg.pick.addr),
                outcome: "hedge_cancelled",
            });
        }
    }
}
