//! Rules compiled from the config, and what a request asks of them.

use super::window::Span;
use super::{Level, Metric};
use crate::accounting::{cost::cost_usd, estimate, Usage};
use crate::config::{Budget, Limits};
use crate::proxy::endpoint::Endpoint;
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

    /// How much of the ask this rule counts.
    pub fn amount(&self, ask: &Ask) -> i64 {
        match self.id.metric {
            Metric::Requests | Metric::Concurrency => 1,
            Metric::Tokens => ask.tokens,
            Metric::Usd => ask.nanos,
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
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
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
        if let Some(g) = &rule.gauge {
            g.set(rule.natural(limit - super::memory::global().used(&rule.id)));
        }
        out.push(rule);
    }
    out
}

/// Whether any rule needs the token and cost estimate.
pub fn needs_estimate(rules: &[Rule]) -> bool {
    rules
        .iter()
        .any(|r| matches!(r.id.metric, Metric::Tokens | Metric::Usd))
}

/// What one request reserves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ask {
    pub tokens: i64,
    /// Nano-dollars.
    pub nanos: i64,
}

impl Ask {
    /// The worst case of a request to `model`: the estimated prompt plus the
    /// completion it allows, priced at the dearest of the alias's routes.
    pub fn worst_case(
        tokenizer_model: &str,
        prices: &[crate::config::Price],
        default_output: u64,
        ep: Endpoint,
        body: &[u8],
    ) -> Ask {
        let (prompt, completion) = estimate::worst_case(tokenizer_model, ep, body, default_output);
        let usage = Usage {
            prompt,
            completion,
            ..Usage::default()
        };
        let usd = prices
            .iter()
            .map(|p| cost_usd(&usage, p))
            .fold(0.0f64, f64::max);
        Ask {
            tokens: i64::try_from(prompt.saturating_add(completion)).unwrap_or(i64::MAX),
            nanos: super::usd_to_nanos_ceil(usd),
        }
    }
}
