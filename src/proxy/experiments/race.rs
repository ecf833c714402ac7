//! One leg of a hedged request, run to its first response byte. Which
//! backend each leg uses is the attempt walker's (`engine::attempts`).

use crate::engine::attempts::Failure;
use crate::resilience::verdict::{judge, Verdict};
use crate::upstream::client::Exchange;
use crate::upstream::UpstreamRef;
use bytes::Bytes;
use pingora::http::RequestHeader;
use std::net::SocketAddr;
use std::time::Instant;

/// How a leg ended before any byte went to the client.
pub(crate) enum LegEnd {
    /// The leg produced its first body byte (`first`), or a complete
    /// response with none, or an answer to pass on as is (a 4xx).
    Ready {
        ex: Box<Exchange>,
        first: Option<Bytes>,
    },
    Failed(Failure),
}

/// Runs one leg: connect, send, judge the header like the proxy does, then
/// wait for the first non-empty body chunk within the route's first-byte
/// limit (counted from the start).
pub(crate) async fn run_leg(
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
        Err(f) => return LegEnd::Failed(Failure::from(f)),
    };
    if let Verdict::Fail {
        error,
        skip_provider,
        retry_after,
    } = judge(ex.header(), &pick_up.retry.on_status, stream)
    {
        let status = ex.header().status.as_u16();
        return LegEnd::Failed(Failure::status(status, error, retry_after, skip_provider));
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
            Err(f) => return LegEnd::Failed(Failure::from(f)),
        }
    }
}
