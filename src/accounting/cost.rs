//! Spend: tokens × the route's price (USD per million tokens).

use super::Usage;
use crate::config::Price;

/// Cost in USD. Cached prompt tokens are charged at the cached price (the
/// input price when no cached price is set).
pub fn cost_usd(u: &Usage, p: &Price) -> f64 {
    let cached = u.cached.min(u.prompt);
    let fresh = u.prompt - cached;
    let cached_price = p.cached_input.unwrap_or(p.input);
    (fresh as f64 * p.input + cached as f64 * cached_price + u.completion as f64 * p.output) / 1e6
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
}
