//! The legs of a hedged request: which backend each one uses (in the
//! alias's route order), and one leg run to its first response byte.

use crate::base::error::GatewayError;
use crate::proxy::ctx::Ctx;
use crate::resilience::breaker::BackendState;
use crate::resilience::verdict::{judge, Verdict};
use crate::runtime::{ModelRt, ProviderRt};
use crate::upstream::client::{Exchange, Failure};
use crate::upstream::UpstreamRef;
use bytes::Bytes;
use pingora::http::RequestHeader;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The order in which the alias's routes are tried: the primary first,
/// then the next eligible route (the hedge's), then fallbacks. Today the
/// config order, as the proxy's own attempts use. This is the one place to
/// plug a routing strategy's candidate order into (with the routing
/// branch: the eligible, strategy-ordered `ctx.order`, so tier and region
/// filters hold for hedges too).
pub fn route_order(ctx: &Ctx, model: &ModelRt) -> Vec<usize> {
    if ctx.order.is_empty() {
        (0..model.routes.len()).collect()
    } else {
        ctx.order.clone()
    }
}

/// A backend chosen for a leg.
pub struct Pick {
    pub route: usize,
    pub addr: SocketAddr,
    pub state: Option<Arc<BackendState>>,
    pub up: UpstreamRef,
}

/// Walks the routes in [`route_order`]: other backends of the same
/// provider first (up to its `retry.attempts`), then the next route.
pub struct Candidates {
    order: Vec<usize>,
    pos: usize,
    tried: Vec<SocketAddr>,
    route_attempts: usize,
    any_health: bool,
    started: bool,
}

impl Candidates {
    pub fn new(ctx: &Ctx, model: &ModelRt) -> Self {
        Self {
            order: route_order(ctx, model),
            pos: 0,
            tried: Vec::new(),
            route_attempts: 0,
            any_health: false,
            started: false,
        }
    }

    /// Moves past the current route (the hedge goes to another route, and a
    /// provider that refused the key is not tried again).
    pub fn skip_route(&mut self) {
        self.pos += 1;
        self.tried.clear();
        self.route_attempts = 0;
    }

    /// Whether a route follows the current one (a hedge has somewhere to go).
    pub fn has_next_route(&self) -> bool {
        self.pos + 1 < self.order.len()
    }

    /// The next backend to try, noting cooling backends in `ctx` for the
    /// error answered when nothing is left.
    pub fn next(&mut self, ctx: &mut Ctx, model: &ModelRt) -> Option<Pick> {
        loop {
            let Some(&index) = self.order.get(self.pos) else {
                if !self.started && !self.any_health {
                    // No route has a healthy backend: try the unhealthy once.
                    self.any_health = true;
                    self.pos = 0;
                    self.tried.clear();
                    self.route_attempts = 0;
                    continue;
                }
                return None;
            };
            let route = model.routes.get(index)?;
            if let ProviderRt::Http(up) = &*route.provider {
                if self.route_attempts < up.retry.attempts {
                    match up.select(ctx.request_id.as_bytes(), &self.tried, self.any_health) {
                        Ok((addr, state)) => {
                            self.tried.push(addr);
                            self.route_attempts += 1;
                            self.started = true;
                            return Some(Pick {
                                route: index,
                                addr,
                                state,
                                up: up.clone(),
                            });
                        }
                        Err(Some(out)) => {
                            ctx.note_out(&out);
                        }
                        Err(None) => {}
                    }
                }
            }
            self.skip_route();
        }
    }
}

/// How a leg ended before any byte went to the client.
pub enum LegEnd {
    /// The leg produced its first body byte (`first`), or a complete
    /// response with none, or an answer to pass on as is (a 4xx).
    Ready {
        ex: Box<Exchange>,
        first: Option<Bytes>,
    },
    Failed(LegFailure),
}

pub struct LegFailure {
    pub outcome: &'static str,
    pub error: GatewayError,
    pub retry_after: Option<u64>,
    pub skip_provider: bool,
}

impl From<Failure> for LegFailure {
    fn from(f: Failure) -> Self {
        LegFailure {
            outcome: f.outcome(),
            error: if f.is_timeout() {
                GatewayError::UpstreamTimeout
            } else {
                GatewayError::UpstreamError
            },
            retry_after: None,
            skip_provider: false,
        }
    }
}

/// Runs one leg: connect, send, judge the header like the proxy does, then
/// wait for the first non-empty body chunk within the route's first-byte
/// limit (counted from the start).
pub async fn run_leg(
    pick_up: UpstreamRef,
    addr: SocketAddr,
    limits: crate::resilience::Limits,
    req: RequestHeader,
    body: Bytes,
    stream: bool,
) -> LegEnd {
    let started = Instant::now();
    let mut ex = match Exchange::start(&pick_up, addr, limits, &req, &body).await {
        Ok(ex) => ex,
        Err(f) => return LegEnd::Failed(f.into()),
    };
    if let Verdict::Fail {
        error,
        skip_provider,
        retry_after,
    } = judge(ex.header(), &pick_up.retry.on_status, stream)
    {
        let status = ex.header().status.as_u16();
        if status == 401 || status == 403 {
            log::error!(
                "provider {} refused the gateway's key (HTTP {status}); check providers.{}.api_key",
                pick_up.name,
                pick_up.name
            );
        }
        return LegEnd::Failed(LegFailure {
            outcome: status_outcome(status),
            error,
            retry_after,
            skip_provider,
        });
    }
    if !ex.header().status.is_success() {
        return LegEnd::Ready {
            ex: Box::new(ex),
            first: None,
        };
    }
    loop {
        let left = limits.first_byte.saturating_sub(started.elapsed());
        match ex.chunk_within(left).await {
            Ok(Some(b)) if b.is_empty() => continue,
            Ok(first) => {
                return LegEnd::Ready {
                    ex: Box::new(ex),
                    first,
                }
            }
            Err(f) => return LegEnd::Failed(f.into()),
        }
    }
}

/// The attempt outcome label of a failing status, as the proxy names it.
fn status_outcome(status: u16) -> &'static str {
    match status {
        429 => "status_429",
        401 | 403 => "auth_error",
        s if s >= 500 => "status_5xx",
        _ => "bad_response",
    }
}
