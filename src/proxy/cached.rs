//! The response cache on the request path: the look-up at admission (a hit
//! is answered locally, like the mock provider's answers), the capture of
//! a miss's body as the client gets it, and the store at the end when the
//! answer was successful and complete. The store itself is `crate::cache`.

use crate::accounting::settle::Settled;
use crate::accounting::UsageSource;
use crate::base::endpoint::Endpoint;
use crate::cache::{AliasCache, Entry, Key};
use crate::keys::KeyRt;
use crate::proxy::ctx::Admitted;
use bytes::Bytes;
use std::sync::Arc;

/// The response header that says what the cache did.
pub(crate) const HEADER: &str = "x-tollgate-cache";

/// What the cache did for one request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mark {
    Hit,
    Miss,
    Bypass,
}

impl Mark {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mark::Hit => "hit",
            Mark::Miss => "miss",
            Mark::Bypass => "bypass",
        }
    }
}

/// One request's cache state (boxed in `Ctx`, only for cached aliases).
pub(crate) struct State {
    pub(crate) mark: Mark,
    key: Key,
    /// A hit's entry.
    hit: Option<Arc<Entry>>,
    /// The answer's body as it goes to the client; `None`: not stored
    /// (`no-store`, over `max_entry_bytes`, or a hit).
    capture: Option<Capture>,
}

struct Capture {
    chunks: Vec<Bytes>,
    len: usize,
    max: usize,
    /// The body's last chunk passed.
    ended: bool,
}

/// Whether requests to `ep` are cached (the OpenAI endpoints; a Messages
/// request is not).
fn cacheable(ep: Endpoint) -> bool {
    matches!(
        ep,
        Endpoint::ChatCompletions
            | Endpoint::Completions
            | Endpoint::Embeddings
            | Endpoint::Responses
    )
}

/// What `Cache-Control` asks: (`no-cache`: do not answer from the cache,
/// `no-store`: do not store).
fn directives(headers: &http::HeaderMap) -> (bool, bool) {
    let (mut no_cache, mut no_store) = (false, false);
    for v in headers.get_all(http::header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for d in v.split(',') {
            let d = d.trim();
            if d.eq_ignore_ascii_case("no-cache") {
                no_cache = true;
            } else if d.eq_ignore_ascii_case("no-store") {
                no_store = true;
            }
        }
    }
    (no_cache || no_store, no_store)
}

/// The cache's look-up for an admitted request. `None`: the alias has no
/// cache or the endpoint is not cached (no work at all, no header).
pub(crate) async fn begin(
    headers: &http::HeaderMap,
    key: &KeyRt,
    req: &Admitted,
) -> Option<Box<State>> {
    let c = req.model.cache.as_ref()?;
    if !cacheable(req.endpoint) {
        return None;
    }
    let (bypass, no_store) = directives(headers);
    let caller = (&*key.name, key.team.as_deref());
    let Some(k) = c.key(req.alias(), req.endpoint.label(), caller, &req.body) else {
        return Some(Box::new(State {
            mark: Mark::Bypass,
            key: [0; 32],
            hit: None,
            capture: None,
        }));
    };
    let hit = if bypass { None } else { c.get(&k).await };
    let mark = match (&hit, bypass) {
        (Some(_), _) => Mark::Hit,
        (None, true) => Mark::Bypass,
        (None, false) => Mark::Miss,
    };
    let capture = (hit.is_none() && !no_store).then(|| Capture {
        chunks: Vec::new(),
        len: 0,
        max: c.max_entry_bytes,
        ended: false,
    });
    Some(Box::new(State {
        mark,
        key: k,
        hit,
        capture,
    }))
}

impl State {
    /// A hit's entry.
    pub(crate) fn hit(&self) -> Option<&Arc<Entry>> {
        self.hit.as_ref()
    }

    /// A chunk of the answer went to the client (after the pipeline).
    pub(crate) fn capture(&mut self, body: &Option<Bytes>, eos: bool) {
        let Some(c) = &mut self.capture else { return };
        if let Some(b) = body.as_ref().filter(|b| !b.is_empty()) {
            c.len = c.len.saturating_add(b.len());
            if c.len > c.max {
                // Too big to store: stop holding it.
                self.capture = None;
                return;
            }
            c.chunks.push(b.clone());
        }
        if eos {
            c.ended = true;
        }
    }

    /// At the end: stores the answer when it was successful and complete:
    /// a 200 that ended without an error, whose usage the provider
    /// reported (`complete`: a stream's end marker passed).
    pub(crate) fn finish(
        &mut self,
        cache: &AliasCache,
        ok: bool,
        complete: bool,
        stream: bool,
        settled: Option<&Settled>,
    ) {
        let Some(c) = self.capture.take() else { return };
        let Some(s) = settled else { return };
        if !(ok && complete && c.ended && c.len > 0)
            || s.source != UsageSource::Reported
            || s.partial
        {
            return;
        }
        let body = match c.chunks.as_slice() {
            [one] => one.clone(),
            parts => Bytes::from(parts.concat()),
        };
        cache.put(
            self.key,
            Entry {
                body,
                stream,
                usage: s.usage,
                cost_usd: s.cost_usd,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::directives;

    #[test]
    fn cache_control_directives() {
        let mut h = http::HeaderMap::new();
        assert_eq!(directives(&h), (false, false));
        h.insert(
            http::header::CACHE_CONTROL,
            "max-age=0, No-Cache".parse().unwrap(),
        );
        assert_eq!(directives(&h), (true, false));
        h.insert(http::header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(directives(&h), (true, true));
        h.insert(http::header::CACHE_CONTROL, "no-transform".parse().unwrap());
        assert_eq!(directives(&h), (false, false));
    }
}
