//! Shadow traffic: a sampled copy of a request, rewritten for the shadow
//! route's model, sent by a background task. Its response is read,
//! metered and discarded; the client never waits for it and never sees its
//! errors. A global cap bounds the copies in flight, and a team's budget
//! (`shadow.budget`) can bound their rate and spend. When the request is
//! captured (`crate::capture`), the copy's answer is copied as it is read
//! and handed to the capture writer however the copy ends.

use super::metrics;
use crate::accounting::meter::{BodyMeter, BodyUsage, StreamMeter};
use crate::accounting::settle::{self, Observed, Settled};
use crate::governance::{self, Ask};
use crate::proxy::ctx::{Admitted, Ctx};
use crate::proxy::headers;
use crate::rewrite;
use crate::runtime::experiments::ShadowPlan;
use crate::runtime::{ProviderRt, Runtime};
use crate::telemetry::trace::{ShadowEnd, ShadowTrace};
use crate::upstream::client::{Exchange, Failure};
use pingora::http::RequestHeader;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Shadow requests in flight, all aliases together.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Holds one shadow slot until dropped.
struct Slot;

impl Slot {
    fn take(max: usize) -> Option<Slot> {
        IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        if let Some(m) = metrics::get() {
            m.shadow_in_flight.inc();
        }
        Some(Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
        if let Some(m) = metrics::get() {
            m.shadow_in_flight.dec();
        }
    }
}

/// Everything the background task needs, owned.
struct Job {
    rt: Arc<Runtime>,
    req: Arc<Admitted>,
    client: RequestHeader,
    request_id: String,
    slot: Slot,
    /// The request's trace, when it is sampled: the copy gets a span of its
    /// own under the request's.
    trace: Option<ShadowTrace>,
    /// The copy's answer, when the request is captured.
    capture: Option<Box<Capture>>,
}

/// The shadow's answer for output capture. Handed to the capture writer
/// when dropped, however the copy ended (one that never got an answer
/// goes with status 0, so its primary does not wait for it).
struct Capture {
    request_id: String,
    side: crate::capture::Side,
    tap: crate::capture::Tap,
}

impl Drop for Capture {
    fn drop(&mut self) {
        let (raw, cut) = std::mem::take(&mut self.tap).into_parts();
        let mut side = std::mem::take(&mut self.side);
        side.raw = raw;
        side.raw_cut = cut;
        crate::capture::send(crate::capture::Job::Shadow {
            request_id: std::mem::take(&mut self.request_id),
            side: Box::new(side),
        });
    }
}

/// Samples the request; when picked and under the cap, spawns its copy.
pub(crate) fn maybe_send(
    client: &RequestHeader,
    ctx: &mut Ctx,
    req: &Arc<Admitted>,
    rt: &Arc<Runtime>,
    plan: &ShadowPlan,
) {
    if plan.sample <= 0.0 || fastrand::f64() >= plan.sample {
        return;
    }
    let Some(slot) = Slot::take(rt.experiments.shadow_max_concurrency) else {
        skipped(req.alias(), "concurrency");
        ctx.exp.shadow = Some("skipped");
        return;
    };
    ctx.exp.shadow = Some("sampled");
    let job = Job {
        rt: rt.clone(),
        req: req.clone(),
        client: client.clone(),
        request_id: format!("{}-shadow", ctx.head.request_id),
        slot,
        trace: ctx.trace.as_ref().and_then(|t| t.shadow()),
        capture: match (&ctx.capture, &req.model.capture) {
            (Some(_), Some(capture)) => Some(Box::new(Capture {
                request_id: ctx.head.request_id.clone(),
                side: crate::capture::Side {
                    route: format!("{}/{}", plan.route.provider_name, plan.route.model),
                    ..Default::default()
                },
                tap: capture.tap(),
            })),
            _ => None,
        },
    };
    tokio::spawn(run(job));
}

fn skipped(alias: &str, reason: &str) {
    if let Some(m) = metrics::get() {
        m.shadow_skipped.with_label_values(&[alias, reason]).inc();
    }
}

async fn run(mut job: Job) {
    let mut capture = job.capture.take();
    let _slot = &job.slot;
    let (req, alias) = (&job.req, job.req.alias());
    let ep = req.endpoint;
    let Some(plan) = job.rt.experiments.of(alias).and_then(|p| p.shadow.as_ref()) else {
        return;
    };
    let route = &plan.route;
    let ProviderRt::Http(up) = &*route.provider else {
        return;
    };
    let rules = &job.rt.experiments.shadow_rules;
    let output = req.model.reserve_output_tokens;
    let reservation = if rules.is_empty() {
        None
    } else {
        let prices: Vec<_> = route.price.into_iter().collect();
        let ask = Ask::worst_case(&route.model, &prices, output, ep, &req.body);
        match governance::admit(&[rules.as_slice()], ask).await {
            Ok(a) => Some(a.reservation),
            Err(_) => {
                skipped(alias, "budget");
                return;
            }
        }
    };
    let picked = up
        .select(job.request_id.as_bytes(), &[], false)
        .or_else(|_| up.select(job.request_id.as_bytes(), &[], true));
    let Ok((addr, _)) = picked else {
        skipped(alias, "no_backend");
        return;
    };
    let usage_capable = ep.usage_capable();
    let (body, injected) = rewrite::attempt_body(
        &req.body,
        &req.parsed,
        &route.model,
        &route.model_json,
        usage_capable && up.stream_usage,
    );
    // A pooled provider lends the copy a key as it would a request.
    let key = match &up.pool {
        Some(pool) => match pool.pick(&[], crate::base::clock::monotonic_ms()) {
            Ok(k) => Some(k),
            Err(_) => {
                skipped(alias, "no_key");
                return;
            }
        },
        None => None,
    };
    let auth = match (&key, &up.pool) {
        (Some(k), Some(pool)) => pool.header(k.index),
        _ => up.auth.as_ref(),
    };
    let propagation = job.trace.as_ref().map(ShadowTrace::propagate);
    let Ok(head) = headers::upstream_request(
        &job.client,
        up,
        auth,
        ep,
        body.len(),
        &job.request_id,
        propagation,
    ) else {
        return;
    };
    let start = Instant::now();
    let mut first = None;
    let (result, settled, status) = match Exchange::start(up, addr, route.limits, &head, &body)
        .await
    {
        Ok(ex) => {
            let status = ex.header().status.as_u16();
            let stream = crate::sse::is_event_stream(ex.header());
            let tap = capture.as_deref_mut().map(|c| {
                c.side.stream = stream;
                &mut c.tap
            });
            let (result, settled) = read(ex, &job, route, injected, output, tap, &mut first).await;
            (result, settled, Some(status))
        }
        Err(f) => (failure_label(f), None, None),
    };
    if let Some(c) = capture.as_deref_mut() {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        c.side.status = status.unwrap_or(0);
        c.side.latency_ms = ms(start.elapsed());
        c.side.ttft_ms = first.map(|t: Instant| ms(t - start));
        if let Some(s) = &settled {
            c.side.prompt_tokens = Some(s.usage.prompt);
            c.side.completion_tokens = Some(s.usage.completion);
            c.side.cost_usd = s.cost_usd;
        }
    }
    drop(capture);
    if let Some(t) = job.trace.take() {
        t.finish(&ShadowEnd {
            endpoint: ep,
            provider: &route.provider_name,
            system: route.system(),
            model: &route.model,
            backend: addr,
            result,
            status,
            duration: start.elapsed(),
            ended: std::time::SystemTime::now(),
        });
    }
    let labels = [&**alias, &*route.provider_name, &*route.model];
    if let Some(m) = metrics::get() {
        m.shadow_requests
            .with_label_values(&[labels[0], labels[1], labels[2], result])
            .inc();
        m.shadow_duration
            .with_label_values(&[labels[0], labels[1]])
            .observe(start.elapsed().as_secs_f64());
        if let Some(s) = &settled {
            record_usage(m, &labels, s);
        }
    }
    if result != "success" {
        log::debug!(
            "request {}: shadow copy ended with {result}",
            job.request_id
        );
    }
    if let Some(r) = reservation {
        match &settled {
            Some(s) => r.settle(s.tokens(), s.cost_usd),
            None => drop(r),
        }
    }
}

fn failure_label(f: Failure) -> &'static str {
    if f.is_timeout() {
        "timeout"
    } else {
        "error"
    }
}

/// Reads the whole response through the meter that fits it, and settles
/// it by the same rule as a client's request: a 2xx answer cut short (read
/// error, timeout, an over-long event) is charged what is known of it.
async fn read(
    mut ex: Exchange,
    job: &Job,
    route: &crate::runtime::RouteRt,
    injected: bool,
    default_output: u64,
    mut tap: Option<&mut crate::capture::Tap>,
    first: &mut Option<Instant>,
) -> (&'static str, Option<Settled>) {
    let status = ex.header().status;
    let ep = job.req.endpoint;
    // Speech audio is never read (see `pipeline::meter_for`).
    let opaque = ep.opaque_response();
    let sse = crate::sse::is_event_stream(ex.header()) && !opaque;
    let mut stream = (status.is_success() && sse).then(|| StreamMeter::new(ep, injected));
    let mut body = (status.is_success() && !sse && !opaque).then(BodyMeter::default);
    let mut failed = None;
    loop {
        match ex.chunk().await {
            Ok(Some(chunk)) => {
                if first.is_none() && !chunk.is_empty() {
                    *first = Some(Instant::now());
                }
                let mut c = Some(chunk);
                if let Some(m) = &mut stream {
                    if m.on_chunk(&mut c, false).is_err() {
                        failed = Some("error");
                        break;
                    }
                }
                if let Some(m) = &mut body {
                    m.on_chunk(&c);
                }
                if let Some(t) = tap.as_deref_mut() {
                    t.push(c.as_ref());
                }
            }
            Ok(None) => break,
            Err(f) => {
                failed = Some(failure_label(f));
                break;
            }
        }
    }
    if failed.is_none() {
        if let Some(m) = &mut stream {
            let _ = m.on_chunk(&mut None, true);
        }
        ex.finish().await;
    }
    if !status.is_success() {
        let label = if status.is_server_error() {
            "status_5xx"
        } else {
            "status_4xx"
        };
        return (failed.unwrap_or(label), None);
    }
    let result = failed.unwrap_or("success");
    let observed = match (&stream, &body) {
        (Some(m), _) => Observed::Stream {
            seen: m.seen(),
            counts: None,
        },
        (None, Some(m)) => match m.usage() {
            BodyUsage::Reported(u) => Observed::Known(u),
            BodyUsage::Missing => Observed::Body(m.json()),
            BodyUsage::Unreadable => Observed::Unread,
        },
        (None, None) if opaque => Observed::Opaque,
        (None, None) => return (result, None),
    };
    let req = settle::Request {
        ep,
        model: &route.model,
        body: &job.req.body,
        default_output,
    };
    let settled = settle::settle(&req, observed, route.price.as_ref());
    (result, settled)
}

fn record_usage(m: &metrics::Metrics, labels: &[&str; 3], s: &Settled) {
    let source = s.source.label();
    for (kind, n) in s.usage.by_kind() {
        m.shadow_tokens
            .with_label_values(&[labels[0], labels[1], labels[2], kind, source])
            .inc_by(n);
    }
    if let Some(c) = s.cost_usd {
        m.shadow_cost.with_label_values(labels).inc_by(c);
    }
}
