//! Rules compiled from the config, and what a request asks of them.

use super::window::Span;
use super::{Level, Metric};
use crate::accounting::{cost::cost_usd, estimate, Usage};
use crate::base::endpoint::Endpoint;
use crate::config::{Budget, Limits};
use std::sync::Arc;

/// What a counter is, by config names: the same after a reload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CounterId {
    pub level: Level,
    pub name: Arc<str>,
    pub metric: Metric,
    pub span: Span,
}

/// One limit of one key, team or model.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: CounterId,
    /// In the metric's unit (requests, tokens, nano-dollars, slots).
    pub limit: i64,
    /// The window as configured (`minute`, `30d`…), for labels.
    pub window: Arc<str>,
    /// `tollgate_budget_remaining` for budgets, bound to its labels.
    pub gauge: Option<prometheus::Gauge>,
}

impl Rule {
    fn new(
        level: Level,
        name: &Arc<str>,
        metric: Metric,
        span: Span,
        limit: i64,
        window: &str,
    ) -> Rule {
        Rule {
            id: CounterId {
                level,
                name: name.clone(),
                metric,
                span,
            },
            limit,
            window: Arc::from(window),
            gauge: None,
        }
    }

    pub fn is_budget(&self) -> bool {
        self.id.span.durable()
    }

    /// The reason label of a rejection by this rule.
    pub fn reason(&self) -> &'static str {
        match (self.id.metric, self.is_budget()) {
            (Metric::Requests, _) => "rpm",
            (Metric::Tokens, false) => "tpm",
            (Metric::Concurrency, _) => "concurrency",
            (Metric::Tokens, true) => "budget_tokens",
            (Metric::Usd, _) => "budget_usd",
        }
    }

    /// How much of the ask this rule counts: at least the first, and up to
    /// the second where the rule has room (see [`Ask`]).
    pub fn amount(&self, ask: &Ask) -> (i64, i64) {
        let (lo, hi) = match self.id.metric {
            Metric::Requests | Metric::Concurrency => (1, 1),
            Metric::Tokens => (ask.tokens, ask.tokens_max),
            Metric::Usd => (ask.nanos, ask.nanos_max),
        };
        let lo = lo.clamp(0, COUNTER_MAX);
        (lo, hi.clamp(lo, COUNTER_MAX))
    }

    /// What this rule reserves of an ask of `lo` to `hi` when `used` is
    /// already counted: as much of `hi` as fits, never less than `lo`.
    pub fn take(&self, used: i64, (lo, hi): (i64, i64)) -> i64 {
        let room = self.limit.saturating_sub(used);
        hi.min(room.max(lo))
    }

    /// Whether this rule is checked before the request's body is read: a
    /// key's or team's rate of requests and concurrency (the alias is in
    /// the body, and the other limits need the body's token estimate).
    pub fn is_early(&self) -> bool {
        matches!(self.id.level, Level::Key | Level::Team)
            && matches!(self.id.metric, Metric::Requests | Metric::Concurrency)
    }

    /// Shows `limit − used` on the rule's `tollgate_budget_remaining`
    /// gauge, when it has one (budgets only).
    pub fn show_remaining(&self, used: i64) {
        if let Some(g) = &self.gauge {
            g.set(self.natural(self.limit.saturating_sub(used)));
        }
    }

    /// A limit in the rule's natural unit, for people (USD as dollars).
    pub fn natural(&self, amount: i64) -> f64 {
        match self.id.metric {
            Metric::Usd => amount as f64 / super::NANOS,
            _ => amount as f64,
        }
    }
}

/// The rules of one level, from its `limits` and `budgets`.
pub fn compile(level: Level, name: &str, limits: &Limits, budgets: &[Budget]) -> Vec<Rule> {
    let name: Arc<str> = Arc::from(name);
    let mut out = Vec::new();
    let as_i64 = amount_of;
    if let Some(n) = limits.rpm {
        out.push(Rule::new(
            level,
            &name,
            Metric::Requests,
            Span::Rate,
            as_i64(n),
            "minute",
        ));
    }
    if let Some(n) = limits.tpm {
        out.push(Rule::new(
            level,
            &name,
            Metric::Tokens,
            Span::Rate,
            as_i64(n),
            "minute",
        ));
    }
    if let Some(n) = limits.concurrency {
        out.push(Rule::new(
            level,
            &name,
            Metric::Concurrency,
            Span::Now,
            as_i64(n),
            "-",
        ));
    }
    for b in budgets {
        let span = Span::from_window(b.window);
        let window = b.window.to_string();
        let (metric, limit, unit) = match (b.usd, b.tokens) {
            (Some(usd), _) => (Metric::Usd, super::usd_to_nanos(usd), "usd"),
            (None, Some(t)) => (Metric::Tokens, as_i64(t), "tokens"),
            (None, None) => continue,
        };
        let mut rule = Rule::new(level, &name, metric, span, limit, &window);
        rule.gauge = crate::telemetry::metrics::get().and_then(|m| {
            m.budget_remaining
                .get_metric_with_label_values(&[level.label(), &name, unit, &window])
                .ok()
        });
        out.push(rule);
    }
    out
}

/// A rule that applies only to requests of one workload: tag key `key`
/// (its index among the declared keys) with value index `value`.
#[derive(Debug, Clone)]
pub struct WorkloadRule {
    pub key: usize,
    pub value: u8,
    pub rule: Rule,
}

/// The rules of a key's or team's `workload_limits` (`level` is
/// `KeyWorkload` or `TeamWorkload`), each named `owner#tag=value`: their
/// limits and budgets, and `share` times each of the owner's own budgets
/// (`own`), window by window. Pairs that are not declared are left out
/// (validation reports them).
pub fn compile_workloads(
    level: Level,
    owner: &str,
    limits: &std::collections::BTreeMap<String, crate::config::WorkloadLimits>,
    own: &[Budget],
    declared: &crate::workload::Declared,
) -> Vec<WorkloadRule> {
    let mut out = Vec::new();
    for (pair, w) in limits {
        let Some((key, value)) = declared.pair(pair) else {
            continue;
        };
        let mut budgets = w.budgets.clone();
        if let Some(share) = w.share.filter(|s| *s > 0.0 && *s <= 1.0) {
            for b in own {
                let usd = b.usd.map(|u| u * share);
                let tokens = b.tokens.map(|t| (t as f64 * share).floor() as u64);
                let same = |x: &Budget| x.window == b.window && x.usd.is_some() == usd.is_some();
                // An explicit budget of the same unit and window wins.
                if !budgets.iter().any(same) {
                    budgets.push(Budget {
                        usd,
                        tokens,
                        window: b.window,
                    });
                }
            }
        }
        let name = format!("{owner}#{pair}");
        for rule in compile(level, &name, &w.limits, &budgets) {
            out.push(WorkloadRule { key, value, rule });
        }
    }
    out
}

/// Whether any rule needs the token and cost estimate.
pub fn needs_estimate(rule: &Rule) -> bool {
    matches!(rule.id.metric, Metric::Tokens | Metric::Usd)
}

/// The largest value a counter, a limit or a reservation takes, in its unit
/// (requests, tokens, nano-dollars): 2^53 − 1, the largest integer a Lua
/// number (a double) holds exactly, so the memory and the Redis store count
/// alike and no sum of two values can overflow an `i64`. Config limits stay
/// below it (`config::validate`); a request's worst case above it is
/// reserved at it, so it is refused by any limit.
pub const COUNTER_MAX: i64 = (1 << 53) - 1;

/// `n` as a counter amount: clamped to [`COUNTER_MAX`].
pub fn amount_of(n: u64) -> i64 {
    i64::try_from(n.min(COUNTER_MAX as u64)).unwrap_or(COUNTER_MAX)
}

/// What one request reserves, per unit: at least `tokens` / `nanos`, and,
/// where a rule has room, up to `tokens_max` / `nanos_max` (an elastic
/// reservation, used while the provider's token ratio is not yet learned:
/// see [`super::ratio`]). Every field is within 0 and [`COUNTER_MAX`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    pub tokens: i64,
    /// Nano-dollars.
    pub nanos: i64,
    pub tokens_max: i64,
    pub nanos_max: i64,
}

/// A request's worst case, with what the ratio learning needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorstCase {
    pub ask: Ask,
    /// The prompt as the tokenizer counted it (before any ratio).
    pub prompt: u64,
    /// The whole prompt was tokenized (not extrapolated past the cap).
    pub exact: bool,
}

impl Ask {
    /// A fixed ask of `tokens` and `nanos`, each clamped to [`COUNTER_MAX`].
    pub fn new(tokens: u64, nanos: u64) -> Ask {
        let (tokens, nanos) = (amount_of(tokens), amount_of(nanos));
        Ask {
            tokens,
            nanos,
            tokens_max: tokens,
            nanos_max: nanos,
        }
    }

    /// The worst case of a request to `model` with no ratio applied; a
    /// body whose fields are invalid asks for [`COUNTER_MAX`] (refused by
    /// any limit). For callers that cannot answer a 400 (shadow copies).
    pub fn worst_case(
        tokenizer_model: &str,
        prices: &[crate::config::Price],
        default_output: u64,
        ep: Endpoint,
        body: &[u8],
    ) -> Ask {
        match worst_case(
            tokenizer_model,
            prices,
            default_output,
            ep,
            body,
            super::ratio::Factor::ONE,
        ) {
            Ok(w) => w.ask,
            Err(_) => Ask::new(u64::MAX, u64::MAX),
        }
    }
}

/// The worst case of a request to `model`: the estimated prompt times the
/// route's learned ratio (`factor`), plus the completion it allows, priced
/// at the dearest of the alias's routes (with its images or speech
/// characters at the route's unit prices, `accounting::units`). Every step saturates at
/// [`COUNTER_MAX`]. `Err`: a field the reservation depends on is invalid
/// (`max_tokens: -1`, `n: "2"`…), for a 400 naming it.
pub fn worst_case(
    tokenizer_model: &str,
    prices: &[crate::config::Price],
    default_output: u64,
    ep: Endpoint,
    body: &[u8],
    factor: super::ratio::Factor,
) -> Result<WorstCase, estimate::FieldError> {
    let w = estimate::worst_case(tokenizer_model, ep, body, default_output)?;
    // Images and speech characters: the same figure the settlement charges.
    let units = crate::accounting::units::of(ep, body);
    let price = |prompt: u64| {
        let usage = Usage {
            prompt,
            completion: w.completion,
            ..Usage::default()
        };
        let usd = prices
            .iter()
            .map(|p| cost_usd(&usage, p) + units.cost_usd(p))
            .fold(0.0f64, f64::max);
        (
            amount_of(prompt.saturating_add(w.completion)),
            super::usd_to_nanos_ceil(usd),
        )
    };
    let (lo, hi) = factor.apply(w.prompt);
    let (tokens, nanos) = price(lo);
    let (tokens_max, nanos_max) = if hi > lo { price(hi) } else { (tokens, nanos) };
    Ok(WorstCase {
        ask: Ask {
            tokens,
            nanos,
            tokens_max: tokens_max.max(tokens),
            nanos_max: nanos_max.max(nanos),
        },
        prompt: w.prompt,
        exact: w.exact,
    })
}
