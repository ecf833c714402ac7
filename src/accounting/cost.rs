//! Spend: tokens × the route's price (USD per million tokens).

use super::Usage;
use crate::config::Price;

/// Cost in USD. Cached prompt tokens are charged at the cached price (the
/// input price when no cached price is set). Always a finite number ≥ 0:
/// a price that is not (config validation forbids it) counts as 0, and a
/// product too large for an `f64` is `f64::MAX` (the stores clamp it to
/// their ceiling), so nothing billed is ever priced NaN or negative.
pub(crate) fn cost_usd(u: &Usage, p: &Price) -> f64 {
    let price = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    let cached = u.cached.min(u.prompt);
    let fresh = u.prompt - cached;
    let cached_price = price(p.cached_input.unwrap_or(p.input));
    let usd = (fresh as f64 * price(p.input)
        + cached as f64 * cached_price
        + u.completion as f64 * price(p.output))
        / 1e6;
    if usd.is_nan() {
        0.0
    } else {
        usd.min(f64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_tokens_use_the_cached_price() {
        let p = Price {
            input: 0.15,
            cached_input: Some(0.075),
            output: 0.60,
            per_image: None,
            per_million_characters: None,
            per_minute: None,
        };
        let u = Usage {
            prompt: 1_000_000,
            completion: 1_000_000,
            cached: 400_000,
            reasoning: 0,
            cache_write: 0,
        };
        let c = cost_usd(&u, &p);
        assert!((c - (0.6 * 0.15 + 0.4 * 0.075 + 0.60)).abs() < 1e-12, "{c}");
        let no_cached_price = Price {
            input: 1.0,
            cached_input: None,
            output: 0.0,
            per_image: None,
            per_million_characters: None,
            per_minute: None,
        };
        let u = Usage {
            prompt: 10,
            completion: 0,
            cached: 4,
            reasoning: 0,
            cache_write: 0,
        };
        assert!((cost_usd(&u, &no_cached_price) - 10.0 / 1e6).abs() < 1e-15);
    }

    #[test]
    fn cost_is_finite_and_never_negative_at_any_size() {
        let huge = Price {
            input: 1e300,
            cached_input: Some(f64::NAN),
            output: f64::INFINITY,
            per_image: None,
            per_million_characters: None,
            per_minute: None,
        };
        let u = Usage {
            prompt: u64::MAX,
            completion: u64::MAX,
            cached: u64::MAX / 2,
            reasoning: 0,
            cache_write: 0,
        };
        let c = cost_usd(&u, &huge);
        assert!(c.is_finite() && c > 0.0, "{c}");
        let negative = Price {
            input: -1.0,
            cached_input: None,
            output: -2.0,
            per_image: None,
            per_million_characters: None,
            per_minute: None,
        };
        assert_eq!(cost_usd(&u, &negative), 0.0);
    }
}
