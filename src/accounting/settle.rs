//! Settles a finished request's usage and cost.
//!
//! The rule, in order (documented in `docs/config.md`, "Usage"):
//! 1. What the provider reported, when its final counts were read.
//! 2. A complete answer without counts: the tokenizer's count of the prompt
//!    and of the output text (`estimated`).
//! 3. A stream cut short (client gone, upstream broken, timeout): the counts
//!    the provider sent so far, with the output no less than the tokenizer's
//!    count of the text that passed (`estimated`, `partial`). A stream is
//!    generated as it is sent, so what passed is what was generated.
//! 4. Nothing could be counted: a non-stream answer too big, not JSON or cut
//!    short (the provider generated it whole before sending it, and billed
//!    it), or a non-stream request cut off before its answer: the estimated
//!    prompt plus the completion the request allowed, the figure its
//!    reservation holds (`reserved`), at most [`MAX_RESERVED_COMPLETION`].
//!    A stream cut off before its answer generated nothing yet: its prompt.
//!
//! 5. An opaque answer (speech audio, never read): the estimated prompt (at
//!    least one token) and no completion (`estimated`).
//!
//! Whatever reached a provider is never charged 0 tokens: the prompt counts
//! at least one. Images and speech characters (`units`) are read from the
//! request and priced at the route's unit prices on top of the tokens.
//!
//! 6. A transcription or translation: `usage` tokens when the answer has
//!    them (gpt-4o-transcribe); its audio's seconds (`duration`, or
//!    `usage.seconds`) priced at `per_minute`, tokens estimated; neither
//!    (a `text`, `srt` or `vtt` answer): the reservation.

use super::meter::{output_text, Seen};
use super::{cost::cost_usd, estimate, Usage, UsageSource};
use crate::base::endpoint::Endpoint;
use crate::config::Price;
use serde_json::Value;

/// Most completion tokens charged for an answer nobody could count (the
/// largest `reserve_output_tokens` a config may set): bounds what a client
/// that sends a huge `max_tokens` and leaves can add to the counters.
pub(crate) const MAX_RESERVED_COMPLETION: u64 = 10_000_000;

/// The accounting outcome of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub(crate) usage: Usage,
    pub(crate) source: UsageSource,
    /// `None`: the route has no price.
    pub(crate) cost_usd: Option<f64>,
    /// A stream that ended without its end marker.
    pub(crate) partial: bool,
    /// Images and speech characters the request was priced by.
    pub(crate) units: super::units::Units,
}

impl Settled {
    /// Prompt plus completion tokens: what token limits and budgets count.
    pub fn tokens(&self) -> u64 {
        self.usage.prompt.saturating_add(self.usage.completion)
    }
}

/// The request being settled, as far as estimates need it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) ep: Endpoint,
    /// The upstream model: it picks the tokenizer.
    pub(crate) model: &'a str,
    /// The body the gateway admitted (the prompt is counted from it).
    pub(crate) body: &'a [u8],
    /// Completion tokens assumed when the body sets no maximum (the alias's
    /// `reserve_output_tokens`, as the reservation assumed).
    pub(crate) default_output: u64,
}

/// What the response showed.
pub(crate) enum Observed<'a> {
    /// Usage known up front (local mock, or read by a translator).
    Known(Usage),
    /// Usage a translator had to estimate (the provider reported none).
    Estimated(Usage),
    /// An event stream, as its meter read it (`done`: its end marker
    /// passed), and the counts a translator or passthrough watch read from
    /// the provider's own events so far (final only at the stream's end).
    Stream {
        seen: &'a Seen,
        counts: Option<Usage>,
    },
    /// A whole non-stream body without reported usage (`None`: not JSON).
    Body(Option<Value>),
    /// A 2xx non-stream answer whose usage could not be read: too big, not
    /// JSON, or cut short.
    Unread,
    /// A 2xx body that is not JSON by design (`/v1/audio/speech`'s audio),
    /// passed through unread.
    Opaque,
    /// The request reached the provider, which had not answered when the
    /// request was cut off (the client left, or a hedge leg lost).
    Unanswered { stream: bool },
}

/// Usage as reported, or estimated when it was not. `None` when nothing was
/// served (an error before any output), which is never charged.
pub(crate) fn settle(
    req: &Request<'_>,
    observed: Observed<'_>,
    price: Option<&Price>,
) -> Option<Settled> {
    let prompt = || estimate::prompt_tokens(req.model, req.ep, req.body);
    // Seconds of audio a transcription's answer reports.
    let mut seconds = None;
    let (usage, source, partial) = match observed {
        Observed::Known(u) => (u, UsageSource::Reported, false),
        Observed::Estimated(u) => (u, UsageSource::Estimated, false),
        Observed::Stream { seen, counts } => match (seen.usage, counts) {
            // A usage chunk: the provider's final counts.
            (Some(u), _) => (u, UsageSource::Reported, false),
            // The provider's own events, read to their end.
            (None, Some(c)) if seen.done => (c, UsageSource::Reported, false),
            (None, counts) => {
                // Output actually streamed; nothing streamed is never charged.
                let streamed =
                    estimate::count(req.model, &seen.text).saturating_add(seen.text_overflow / 4);
                let c = counts.unwrap_or_default();
                let reported_prompt = (c.prompt > 0).then_some(c.prompt);
                let u = Usage {
                    prompt: reported_prompt.unwrap_or_else(prompt),
                    completion: c.completion.max(streamed),
                    ..c
                };
                (u, UsageSource::Estimated, !seen.done)
            }
        },
        Observed::Body(doc) => {
            let doc = doc?;
            let found = if req.ep == Endpoint::Rerank {
                Usage::find_rerank(&doc)
            } else if req.ep.is_transcription() {
                // gpt-4o-transcribe's `usage` counts tokens; whisper's
                // counts seconds (`usage.type: duration`) or says
                // `duration`: priced per minute below.
                seconds = super::units::seconds_of(&doc);
                doc.get("usage")
                    .filter(|u| u.get("input_tokens").is_some() || u.get("output_tokens").is_some())
                    .and_then(Usage::from_json)
            } else {
                Usage::find(&doc)
            };
            match found {
                None if req.ep.is_transcription() && seconds.is_none() => {
                    // Nothing the provider billed by can be read: never 0.
                    (reserved(req), UsageSource::Reserved, false)
                }
                None if req.ep.is_transcription() => {
                    let text = doc.get("text").and_then(Value::as_str).unwrap_or("");
                    let u = Usage {
                        prompt: prompt(),
                        completion: estimate::count(req.model, text),
                        ..Usage::default()
                    };
                    (u, UsageSource::Estimated, false)
                }
                Some(u) => (u, UsageSource::Reported, false),
                None => {
                    let u = Usage {
                        prompt: prompt(),
                        completion: estimate::count(req.model, &output_text(&doc)),
                        ..Usage::default()
                    };
                    (u, UsageSource::Estimated, false)
                }
            }
        }
        Observed::Unanswered { stream: true } => {
            let u = Usage {
                prompt: prompt().max(1),
                ..Usage::default()
            };
            (u, UsageSource::Estimated, true)
        }
        Observed::Opaque => {
            // Binary audio carries no counts: the prompt's estimate (at
            // least one token), no completion; the unit price does the rest.
            let u = Usage {
                prompt: prompt().max(1),
                ..Usage::default()
            };
            (u, UsageSource::Estimated, false)
        }
        Observed::Unread | Observed::Unanswered { stream: false } => {
            (reserved(req), UsageSource::Reserved, false)
        }
    };
    let mut units = super::units::of(req.ep, req.body);
    units.seconds = seconds.unwrap_or(0);
    Some(Settled {
        usage,
        source,
        cost_usd: price.map(|p| cost_usd(&usage, p) + units.cost_usd(p)),
        partial,
        units,
    })
}

/// The worst case the request allowed: its estimated prompt (at least one
/// token) and its completion maximum (`max_tokens` and its aliases, else
/// `default_output`, times `n`), capped at [`MAX_RESERVED_COMPLETION`].
fn reserved(req: &Request<'_>) -> Usage {
    let (prompt, completion) =
        match estimate::worst_case(req.model, req.ep, req.body, req.default_output) {
            Ok(w) => (w.prompt, w.completion),
            // A field no token rule checked (none applies): the default maximum.
            Err(_) => (
                estimate::prompt_tokens(req.model, req.ep, req.body),
                req.default_output,
            ),
        };
    Usage {
        prompt: prompt.max(1),
        completion: completion.min(MAX_RESERVED_COMPLETION),
        ..Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"model":"m","max_tokens":300,"n":2,"messages":[{"role":"user","content":"Tell me a story about a lighthouse."}]}"#;

    fn req(body: &'static [u8]) -> Request<'static> {
        Request {
            ep: Endpoint::ChatCompletions,
            model: "gpt-4o",
            body,
            default_output: 1024,
        }
    }

    fn seen(text: &str, done: bool) -> Seen {
        Seen {
            text: text.to_string(),
            done,
            ..Seen::default()
        }
    }

    #[test]
    fn an_unread_answer_is_charged_its_worst_case() {
        let r = req(BODY);
        let s = settle(&r, Observed::Unread, None).unwrap();
        let prompt = estimate::prompt_tokens("gpt-4o", Endpoint::ChatCompletions, BODY);
        assert!(prompt > 5, "{prompt}");
        assert_eq!(s.usage.prompt, prompt);
        assert_eq!(s.usage.completion, 600, "max_tokens times n");
        assert_eq!(s.source, UsageSource::Reserved);
        let s = settle(&r, Observed::Unanswered { stream: false }, None).unwrap();
        assert_eq!((s.usage.completion, s.source), (600, UsageSource::Reserved));
    }

    #[test]
    fn the_worst_case_charged_is_bounded() {
        let body = br#"{"model":"m","max_tokens":18446744073709551615,"n":128,"messages":[]}"#;
        let s = settle(&req(body), Observed::Unread, None).unwrap();
        assert_eq!(s.usage.completion, MAX_RESERVED_COMPLETION);
        assert_eq!(s.usage.prompt, 1, "no message: at least one token");
        let body = br#"{"model":"m","prompt":""}"#;
        let r = Request {
            ep: Endpoint::Completions,
            default_output: 0,
            ..req(body)
        };
        let s = settle(&r, Observed::Unread, None).unwrap();
        assert_eq!(s.usage.prompt + s.usage.completion, 1, "never 0");
    }

    #[test]
    fn a_stream_cut_off_before_its_answer_is_charged_its_prompt() {
        let s = settle(&req(BODY), Observed::Unanswered { stream: true }, None).unwrap();
        let prompt = estimate::prompt_tokens("gpt-4o", Endpoint::ChatCompletions, BODY);
        assert_eq!((s.usage.prompt, s.usage.completion), (prompt, 0));
        assert_eq!(s.source, UsageSource::Estimated);
        assert!(s.partial);
    }

    #[test]
    fn a_cut_stream_keeps_reported_counts_and_estimates_the_output() {
        let text = "The keeper climbed the stairs again, as he had for forty years.";
        let counts = Usage {
            prompt: 42,
            completion: 1,
            cached: 10,
            ..Usage::default()
        };
        let cut = seen(text, false);
        let s = settle(
            &req(BODY),
            Observed::Stream {
                seen: &cut,
                counts: Some(counts),
            },
            None,
        )
        .unwrap();
        let want = estimate::count("gpt-4o", text);
        assert!(want > 5, "{want}");
        assert_eq!(s.usage.prompt, 42, "the reported prompt");
        assert_eq!(s.usage.cached, 10);
        assert_eq!(s.usage.completion, want, "not the placeholder 1");
        assert_eq!((s.source, s.partial), (UsageSource::Estimated, true));

        // The same stream read to its end: the provider's counts stand.
        let whole = seen(text, true);
        let s = settle(
            &req(BODY),
            Observed::Stream {
                seen: &whole,
                counts: Some(counts),
            },
            None,
        )
        .unwrap();
        assert_eq!(s.usage, counts);
        assert_eq!((s.source, s.partial), (UsageSource::Reported, false));
    }

    #[test]
    fn a_cut_stream_without_counts_is_estimated_whole() {
        let cut = seen("Hello there", false);
        let s = settle(
            &req(BODY),
            Observed::Stream {
                seen: &cut,
                counts: None,
            },
            None,
        )
        .unwrap();
        let prompt = estimate::prompt_tokens("gpt-4o", Endpoint::ChatCompletions, BODY);
        assert_eq!(s.usage.prompt, prompt);
        assert_eq!(s.usage.completion, estimate::count("gpt-4o", "Hello there"));
        assert!(s.partial);
    }
}
