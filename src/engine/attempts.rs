//! The one attempt walker. Both ways a request reaches upstreams use it:
//! the proxy's attempts, one at a time through Pingora's hooks, and the
//! hedge race's legs, several at once. It owns where the walk is (the
//! routes in order, the backends tried on the current one, the second pass
//! over unhealthy backends), the caps (attempts, the request deadline, each
//! provider's `retry.attempts`), the retry-versus-fallback count, the
//! failure verdict's outcome labels and the attempt log.
//!
//! It hands out [`Attempt`] values, owned by the caller (the proxy keeps
//! its current one; the race one per leg), and is told back how each ended
//! ([`Attempts::failed`], [`Attempts::succeeded`], [`Attempts::cancelled`]).

use crate::base::error::GatewayError;
use crate::resilience::breaker::BackendState;
use crate::rewrite::{self, Parsed};
use crate::runtime::{ModelRt, ProviderRt, RouteRt};
use crate::telemetry::metrics;
use crate::upstream::cloud::Material;
use crate::upstream::pool::KeyPick;
use crate::upstream::UpstreamRef;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The limits on how many attempts a request makes, and until when.
#[derive(Clone, Copy)]
pub(crate) struct Caps {
    pub(crate) max_attempts: u32,
    /// When the request started, and how long it may try for.
    pub(crate) start: Instant,
    pub(crate) deadline: Duration,
}

impl Caps {
    fn reached(&self, started: u32) -> bool {
        started >= self.max_attempts || self.start.elapsed() >= self.deadline
    }
}

/// A backend chosen for an attempt, before its body is built.
pub(crate) struct Pick {
    /// The route's index among the alias's routes.
    pub(crate) route: usize,
    pub(crate) up: UpstreamRef,
    pub(crate) addr: SocketAddr,
    pub(crate) state: Option<Arc<BackendState>>,
    /// The route's own body (a translated provider's), when it has one.
    pub(crate) prepared: Option<Bytes>,
    /// The pool key picked, for a provider with `api_keys`.
    pub(crate) key: Option<KeyPick>,
    /// Which attempt of the request this is (1 for the first).
    pub(crate) seq: u32,
    /// A hedge race's hedge leg.
    pub(crate) hedge: bool,
}

/// One attempt in flight: where it goes and what it sends.
pub(crate) struct Attempt {
    pub(crate) route: usize,
    pub(crate) up: UpstreamRef,
    pub(crate) addr: SocketAddr,
    /// The backend's passive-health state.
    pub(crate) state: Option<Arc<BackendState>>,
    /// The body sent, with the route's model spliced in.
    pub(crate) body: Bytes,
    /// The body asks for stream usage on the client's behalf.
    pub(crate) injected: bool,
    /// Which attempt of the request this is (1 for the first): its trace
    /// span's number.
    pub(crate) seq: u32,
    /// A hedge race's hedge leg.
    pub(crate) hedge: bool,
    pub(crate) started: Instant,
    /// What it authenticates with besides the provider's own `auth`.
    pub(crate) creds: Creds,
}

/// An attempt's own credentials.
#[derive(Default)]
pub(crate) enum Creds {
    /// The provider's `auth` (or none).
    #[default]
    Provider,
    /// A key of the provider's pool (`api_keys`).
    Key(KeyPick),
    /// A cloud provider's credentials ([`authorize`]).
    Cloud(Box<Material>),
}

impl Attempt {
    /// The provider-key header value this attempt sends, if any: its
    /// pool key's, else the provider's.
    pub(crate) fn auth(&self) -> Option<&http::HeaderValue> {
        match (&self.creds, &self.up.pool) {
            (Creds::Key(k), Some(pool)) => pool.header(k.index),
            _ => self.up.auth.as_ref(),
        }
    }

    /// The pool key, and its pool, when it uses one.
    pub(crate) fn key(&self) -> Option<(&KeyPick, &crate::upstream::pool::KeyPool)> {
        match (&self.creds, &self.up.pool) {
            (Creds::Key(k), Some(pool)) => Some((k, pool)),
            _ => None,
        }
    }

    /// The cloud credentials, once [`authorize`]d.
    pub(crate) fn cloud(&self) -> Option<&Material> {
        match &self.creds {
            Creds::Cloud(m) => Some(m),
            _ => None,
        }
    }
}

/// Gets a cloud provider's credentials for `a` (SigV4 credentials or an
/// OAuth token), cached or fetched. `Err`: the attempt failed like a
/// connect failure (report it with [`Attempts::failed`]); the detail was
/// logged and counted.
pub(crate) async fn authorize(a: &mut Attempt) -> Result<(), Failure> {
    let Some(cloud) = a.up.cloud.clone() else {
        return Ok(());
    };
    match cloud.material().await {
        Ok(m) => {
            a.creds = Creds::Cloud(Box::new(m));
            Ok(())
        }
        Err(_) => Err(Failure::credentials()),
    }
}

impl Pick {
    /// The attempt, with its body: the route's prepared body, or the
    /// client's with the route's model spliced in (and `include_usage`
    /// added when the provider should report stream usage).
    pub(crate) fn into_attempt(
        self,
        route: &RouteRt,
        client_body: &Bytes,
        parsed: &Parsed,
        usage_capable: bool,
        tags: (&crate::workload::Declared, crate::workload::TagSet),
    ) -> Attempt {
        let (body, injected) = match self.prepared {
            Some(b) => (b, false),
            None => {
                let ask = usage_capable && self.up.stream_usage;
                let (body, injected) = rewrite::attempt_body(
                    client_body,
                    parsed,
                    &route.model,
                    &route.model_json,
                    ask,
                );
                // A route with `forward_tags` (passthrough kinds only).
                match route.forward_tags {
                    crate::config::ForwardTags::None => (body, injected),
                    mode if !parsed.form => (
                        crate::workload::forward(&body, mode, tags.0, &tags.1),
                        injected,
                    ),
                    _ => (body, injected),
                }
            }
        };
        Attempt {
            route: self.route,
            up: self.up,
            addr: self.addr,
            state: self.state,
            body,
            injected,
            seq: self.seq,
            hedge: self.hedge,
            started: Instant::now(),
            creds: self.key.map_or(Creds::Provider, Creds::Key),
        }
    }
}

/// How an attempt failed: its outcome label (one set for every caller),
/// the error answered if nothing else works, and what it means for the
/// walk.
pub(crate) struct Failure {
    pub(crate) outcome: &'static str,
    pub(crate) error: GatewayError,
    /// The backend is cooled for this long (a 429's or 503's `Retry-After`).
    pub(crate) retry_after: Option<u64>,
    /// Move to the next route without trying more of this provider.
    pub(crate) skip_provider: bool,
    /// The response status, when the upstream answered.
    pub(crate) status: Option<u16>,
}

impl Failure {
    /// A response status the verdict counted as a failure.
    pub(crate) fn status(
        status: u16,
        error: GatewayError,
        retry_after: Option<u64>,
        skip_provider: bool,
    ) -> Self {
        let outcome = match status {
            429 => "status_429",
            401 | 403 => "auth_error",
            s if s >= 500 => "status_5xx",
            _ => "bad_response",
        };
        Failure {
            outcome,
            error,
            retry_after,
            skip_provider,
            status: Some(status),
        }
    }

    /// Connecting failed (or timed out).
    pub(crate) fn connect(timed_out: bool) -> Self {
        Self::io(
            if timed_out {
                "connect_timeout"
            } else {
                "connect_error"
            },
            timed_out,
        )
    }

    /// Reading or writing failed (or timed out) before any response.
    pub(crate) fn transfer(timed_out: bool) -> Self {
        Self::io(if timed_out { "timeout" } else { "read_error" }, timed_out)
    }

    /// A cloud provider's credentials could not be had (STS, the token
    /// file or the OAuth token endpoint failed): counted like a connect
    /// failure, answered as a generic 502.
    pub(crate) fn credentials() -> Self {
        Failure {
            outcome: "credentials_error",
            error: GatewayError::UpstreamError,
            retry_after: None,
            skip_provider: false,
            status: None,
        }
    }

    fn io(outcome: &'static str, timed_out: bool) -> Self {
        Failure {
            outcome,
            error: if timed_out {
                GatewayError::UpstreamTimeout
            } else {
                GatewayError::UpstreamError
            },
            retry_after: None,
            skip_provider: false,
            status: None,
        }
    }
}

impl From<crate::upstream::client::Failure> for Failure {
    fn from(f: crate::upstream::client::Failure) -> Self {
        use crate::upstream::client::Failure as F;
        match f {
            F::ConnectError => Failure::connect(false),
            F::ConnectTimeout => Failure::connect(true),
            F::Timeout => Failure::transfer(true),
            F::ReadError => Failure::transfer(false),
        }
    }
}

/// One attempt that ended, as the access log and the trace show it.
#[derive(Clone)]
pub(crate) struct AttemptLog {
    pub(crate) provider: UpstreamRef,
    pub(crate) backend: SocketAddr,
    /// The pool key's index, for a provider with `api_keys`.
    pub(crate) key: Option<usize>,
    pub(crate) outcome: &'static str,
    /// The route's index among the alias's routes.
    pub(crate) route: usize,
    pub(crate) seq: u32,
    pub(crate) hedge: bool,
    /// The upstream's response status, when it answered.
    pub(crate) status: Option<u16>,
    pub(crate) started: Instant,
    /// When it failed or was cut off; `None` for the attempt whose answer
    /// went to the client, which lasts as long as the request.
    pub(crate) ended: Option<Instant>,
}

/// The keys of a pool a route's attempts have used.
#[derive(Default)]
struct KeyWalk {
    tried: Vec<usize>,
    /// Attempts that failed on their key (a 429 or a refusal): each allows
    /// one more attempt on the route, with another key.
    failures: usize,
}

/// Where a request's walk over routes and backends stands.
#[derive(Default)]
pub(crate) struct Attempts {
    /// The routes this request may try, in order (indices into the
    /// alias's routes), decided at admission.
    order: Vec<usize>,
    /// Position in `order` of the route being tried.
    pos: usize,
    /// Backends tried on the current route.
    tried: Vec<SocketAddr>,
    /// Attempts started on the current route.
    route_attempts: usize,
    /// The walk over a pooled provider's keys on the current route (set
    /// only on such a route).
    keys: Option<Box<KeyWalk>>,
    /// No route had a healthy backend: unhealthy ones may be tried.
    any_health: bool,
    skip_provider: bool,
    /// Attempts started (a locally served request counts one).
    started: u32,
    /// The route of the last attempt started.
    last_route: Option<usize>,
    /// The shortest wait until a skipped (cooling or open) backend is
    /// back, and whether one of them waits out a 429.
    out_for_ms: Option<u64>,
    out_rate_limited: bool,
    last_failure: Option<GatewayError>,
    log: Vec<AttemptLog>,
}

impl Attempts {
    pub(crate) fn new(order: Vec<usize>) -> Self {
        Attempts {
            order,
            ..Attempts::default()
        }
    }

    /// The routes in the order they are tried.
    pub(crate) fn order(&self) -> &[usize] {
        &self.order
    }

    /// Attempts started so far.
    pub(crate) fn started(&self) -> u32 {
        self.started
    }

    /// The route of the last attempt started or, before any, the first
    /// route to try.
    pub(crate) fn route(&self) -> Option<usize> {
        self.last_route
            .or_else(|| self.order.get(self.pos).copied())
    }

    /// The route of the last attempt started.
    pub(crate) fn last_route(&self) -> Option<usize> {
        self.last_route
    }

    /// Each attempt that ended, in order.
    pub(crate) fn log(&self) -> &[AttemptLog] {
        &self.log
    }

    /// Why the last failed attempt failed.
    pub(crate) fn last_failure(&self) -> Option<&GatewayError> {
        self.last_failure.as_ref()
    }

    /// The last attempt started has not ended (no outcome was recorded).
    pub(crate) fn last_is_open(&self) -> bool {
        self.log.len() < self.started as usize
    }

    /// A route with a local (mock) provider answered: one attempt, on it.
    pub(crate) fn served_locally(&mut self, route: usize) {
        self.started = self.started.saturating_add(1);
        self.last_route = Some(route);
    }

    /// Whether another attempt may start.
    pub(crate) fn may_retry(&self, caps: &Caps) -> bool {
        !caps.reached(self.started)
    }

    /// Whether a route follows the current one (a hedge has somewhere to go).
    pub(crate) fn has_next_route(&self) -> bool {
        self.pos + 1 < self.order.len()
    }

    /// Moves past the current route (a hedge goes to another route).
    pub(crate) fn skip_route(&mut self) {
        self.pos += 1;
        self.tried.clear();
        self.keys = None;
        self.route_attempts = 0;
        self.skip_provider = false;
    }

    /// Chooses the next backend: other backends of the current route's
    /// provider first (up to its `retry.attempts`, unless it refused the
    /// key), then the next route; when no route has a healthy backend
    /// before the first attempt, the unhealthy ones once. `prepare` checks
    /// that a route can take the request and builds its own body if it
    /// needs one; a route it refuses is passed over, its error kept for the
    /// answer. A `hedge` attempt is not counted as a retry or fallback.
    /// `Err`: nothing is left to try, or a cap is reached; the error to
    /// answer.
    pub(crate) fn next(
        &mut self,
        model: &ModelRt,
        alias: &str,
        request_key: &[u8],
        caps: &Caps,
        hedge: bool,
        mut prepare: impl FnMut(usize, &RouteRt) -> Result<Option<Bytes>, GatewayError>,
    ) -> Result<Pick, GatewayError> {
        if caps.reached(self.started) {
            return Err(self.exhausted());
        }
        loop {
            let Some((index, route)) =
                crate::routing::candidate(&self.order, self.pos, &model.routes)
            else {
                if self.started == 0 && !self.any_health {
                    // Health checks lag (a backend that just came up): try
                    // the unhealthy ones once.
                    self.any_health = true;
                    self.pos = 0;
                    self.tried.clear();
                    self.keys = None;
                    self.route_attempts = 0;
                    continue;
                }
                return Err(self.exhausted());
            };
            let prepared = prepare(index, route);
            if let Err(e) = &prepared {
                self.last_failure = Some(e.clone());
            }
            if let (ProviderRt::Http(up), Ok(prepared)) = (&*route.provider, prepared) {
                let key_failures = self.keys.as_ref().map_or(0, |k| k.failures);
                let budget = up.retry.attempts.saturating_add(key_failures);
                let provider_done = self.skip_provider || self.route_attempts >= budget;
                if !provider_done {
                    // A pool key first (cheap, and no breaker probe is
                    // claimed for a provider whose keys are all out).
                    let key = match &up.pool {
                        None => Ok(None),
                        Some(pool) => pool
                            .pick(
                                self.keys.as_ref().map_or(&[][..], |k| &k.tried),
                                crate::base::clock::monotonic_ms(),
                            )
                            .map(Some)
                            .map_err(|out| out.map(|o| (o.ms, o.rate_limited))),
                    };
                    let picked = key.and_then(|key| {
                        match up.select(request_key, &self.tried, self.any_health) {
                            Ok((addr, state)) => Ok((addr, state, key)),
                            Err(out) => {
                                if let Some(k) = &key {
                                    k.unused();
                                }
                                Err(out.map(|o| (o.ms, o.rate_limited)))
                            }
                        }
                    });
                    match picked {
                        Ok((addr, state, key)) => {
                            if self.started > 0 && !hedge {
                                self.count_retry(alias, index);
                            }
                            self.tried.push(addr);
                            if let Some(k) = &key {
                                self.keys.get_or_insert_default().tried.push(k.index);
                            }
                            self.route_attempts += 1;
                            self.started = self.started.saturating_add(1);
                            self.last_route = Some(index);
                            return Ok(Pick {
                                route: index,
                                up: up.clone(),
                                addr,
                                state,
                                prepared,
                                key,
                                seq: self.started,
                                hedge,
                            });
                        }
                        Err(Some((ms, rate_limited))) => {
                            self.out_for_ms = Some(self.out_for_ms.map_or(ms, |m| m.min(ms)));
                            self.out_rate_limited |= rate_limited;
                        }
                        Err(None) => {}
                    }
                }
            }
            self.skip_route();
        }
    }

    /// Same route as the last attempt: a retry; another route: a fallback.
    fn count_retry(&self, alias: &str, route: usize) {
        let kind = if self.last_route == Some(route) {
            "retry"
        } else {
            "fallback"
        };
        if let Some(m) = metrics::get() {
            m.retries.with_label_values(&[alias, kind]).inc();
        }
    }

    /// What to answer when nothing is left to try.
    pub(crate) fn exhausted(&self) -> GatewayError {
        match (&self.last_failure, self.out_for_ms) {
            (Some(e), _) => e.clone(),
            (None, Some(ms)) => {
                let retry_after = Some(ms.div_ceil(1000).max(1));
                if self.out_rate_limited {
                    GatewayError::RateLimited { retry_after }
                } else {
                    GatewayError::UpstreamUnavailable { retry_after }
                }
            }
            (None, None) => GatewayError::UpstreamError,
        }
    }

    /// An attempt failed before any byte reached the client: its backend's
    /// breaker and cooldown, the attempt metric and log, and the error to
    /// answer if nothing else works.
    pub(crate) fn failed(&mut self, a: &Attempt, f: Failure) {
        let now = crate::base::clock::monotonic_ms();
        // A pool key's 429 or refusal is the key's, not the backend's: the
        // key is taken out, and the route gets another try with another
        // key on any backend.
        if let (Some((k, pool)), Some(status @ (401 | 403 | 429))) = (a.key(), f.status) {
            if status == 429 {
                k.rate_limited(pool, f.retry_after, now);
            } else {
                k.refused(pool, status, now);
            }
            let walk = self.keys.get_or_insert_default();
            walk.failures = walk.failures.saturating_add(1);
            self.tried.retain(|t| *t != a.addr);
            self.record(a, f.outcome, f.status, Some(Instant::now()));
            self.last_failure = Some(f.error);
            return;
        }
        if let Some(s) = &a.state {
            s.record(false, now, &a.up.breaker);
            if let Some(secs) = f.retry_after {
                let rate_limit = matches!(f.error, GatewayError::RateLimited { .. });
                s.cool_for(secs.saturating_mul(1000), now, rate_limit);
            }
        }
        if let Some(status @ (401 | 403)) = f.status {
            let setting = match a.up.kind {
                _ if a.up.cloud.is_none() => "api_key",
                crate::config::ProviderKind::Bedrock => "bedrock.credentials",
                _ => "vertex.credentials",
            };
            log::error!(
                "provider {} refused the gateway's credentials (HTTP {status}); check providers.{}.{setting}",
                a.up.name,
                a.up.name
            );
        }
        self.record(a, f.outcome, f.status, Some(Instant::now()));
        self.last_failure = Some(f.error);
        self.skip_provider |= f.skip_provider;
    }

    /// An attempt's response (its upstream status `status`) is going to
    /// the client.
    pub(crate) fn succeeded(&mut self, a: &Attempt, status: u16) {
        if let Some(s) = &a.state {
            s.record(true, crate::base::clock::monotonic_ms(), &a.up.breaker);
        }
        self.record(a, "success", Some(status), None);
    }

    /// A hedge leg was cut off (`at`) by the winner or by the client
    /// leaving.
    pub(crate) fn cancelled(&mut self, a: &Attempt, at: Instant) {
        self.record(a, "hedge_cancelled", None, Some(at));
    }

    fn record(
        &mut self,
        a: &Attempt,
        outcome: &'static str,
        status: Option<u16>,
        ended: Option<Instant>,
    ) {
        if let Some(m) = metrics::get() {
            m.attempts
                .with_label_values(&[a.up.name.as_str(), outcome])
                .inc();
        }
        if let Some((k, pool)) = a.key() {
            k.outcome(pool, outcome);
        }
        self.log.push(AttemptLog {
            provider: a.up.clone(),
            backend: a.addr,
            key: a.key().map(|(k, _)| k.index),
            outcome,
            route: a.route,
            seq: a.seq,
            hedge: a.hedge,
            status,
            started: a.started,
            ended,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_labels_are_one_set() {
        let f = |s| Failure::status(s, GatewayError::UpstreamError, None, false).outcome;
        assert_eq!(
            [f(429), f(401), f(403), f(500), f(503), f(404)],
            [
                "status_429",
                "auth_error",
                "auth_error",
                "status_5xx",
                "status_5xx",
                "bad_response"
            ]
        );
        assert_eq!(Failure::connect(true).outcome, "connect_timeout");
        assert_eq!(Failure::connect(false).outcome, "connect_error");
        assert_eq!(Failure::transfer(true).outcome, "timeout");
        assert_eq!(Failure::transfer(false).outcome, "read_error");
        assert_eq!(Failure::transfer(true).error, GatewayError::UpstreamTimeout);
    }

    #[test]
    fn exhausted_answers_the_last_failure_then_the_wait() {
        let mut a = Attempts::new(vec![0]);
        assert_eq!(a.exhausted(), GatewayError::UpstreamError);
        a.out_for_ms = Some(1500);
        assert_eq!(
            a.exhausted(),
            GatewayError::UpstreamUnavailable {
                retry_after: Some(2)
            }
        );
        a.out_rate_limited = true;
        assert_eq!(
            a.exhausted(),
            GatewayError::RateLimited {
                retry_after: Some(2)
            }
        );
        a.last_failure = Some(GatewayError::UpstreamTimeout);
        assert_eq!(a.exhausted(), GatewayError::UpstreamTimeout);
    }

    #[test]
    fn caps_stop_the_walk() {
        let caps = Caps {
            max_attempts: 2,
            start: Instant::now(),
            deadline: Duration::from_secs(60),
        };
        let mut a = Attempts::new(vec![0, 1]);
        assert!(a.may_retry(&caps));
        a.served_locally(1);
        assert_eq!((a.started(), a.route()), (1, Some(1)));
        assert!(a.last_is_open() && a.may_retry(&caps));
        a.served_locally(1);
        assert!(!a.may_retry(&caps));
        let late = Caps {
            deadline: Duration::ZERO,
            ..caps
        };
        assert!(!Attempts::new(vec![0]).may_retry(&late));
    }
}
