//! Selector tests over many draws, without a network.

use super::*;
use crate::config::Model;
use crate::rewrite;

fn plan(alias: &str, yaml: &str) -> Plan {
    let m: Model = match serde_yaml::from_str(yaml) {
        Ok(m) => m,
        Err(e) => panic!("bad test model: {e}"),
    };
    Plan::build(&Default::default(), alias, &m)
}

fn decide_for(
    p: &Plan,
    access: &Access,
    caller: &str,
    body: &str,
) -> Result<Vec<usize>, GatewayError> {
    let parsed = match rewrite::parse(body.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("bad test body: {}", e.message),
    };
    let mut state = RequestRouting::default();
    decide(
        &mut state,
        p,
        access,
        caller,
        Endpoint::ChatCompletions,
        &parsed,
        body.as_bytes(),
        Default::default(),
    )
}

const CHAT: &str = r#"{"model":"chat","messages":[{"role":"user","content":"hi"}]}"#;

#[test]
fn weighted_95_5_holds_over_10000_draws_and_keeps_fallbacks() {
    let p = plan(
        "t-weighted",
        r#"
strategy: weighted
routes:
  - { provider: a, model: big, weight: 95 }
  - { provider: b, model: small, weight: 5 }
  - { provider: c, model: spare, weight: 0 }
"#,
    );
    let mut first = [0u32; 3];
    for _ in 0..10_000 {
        let order = decide_for(&p, &Access::default(), "k", CHAT).unwrap_or_default();
        assert_eq!(order.len(), 3, "every eligible route stays as a fallback");
        assert_eq!(order.last(), Some(&2), "weight 0 is only a fallback");
        first[order[0]] += 1;
    }
    let share = f64::from(first[0]) / 10_000.0;
    assert!((share - 0.95).abs() <= 0.015, "{first:?}");
    assert_eq!(first[2], 0);
}

#[test]
fn weighted_draw_is_exact_at_the_edges() {
    let p = plan(
        "t-weighted-edges",
        r#"
strategy: weighted
routes:
  - { provider: a, model: x, weight: 1 }
  - { provider: b, model: y, weight: 0 }
  - { provider: c, model: z, weight: 3 }
"#,
    );
    for (draw, want) in [
        (0.0, vec![0, 1, 2]),
        (0.2499, vec![0, 1, 2]),
        (0.25, vec![2, 0, 1]),
        (0.9999, vec![2, 0, 1]),
    ] {
        let mut order = vec![0, 1, 2];
        strategy::weighted(&p, &mut order, draw);
        assert_eq!(order, want, "draw {draw}");
    }
}

#[test]
fn latency_prefers_the_fastest_and_explores_a_little() {
    let p = plan(
        "t-latency",
        r#"
strategy: latency
routes:
  - { provider: a, model: slow }
  - { provider: b, model: fast }
"#,
    );
    // Never measured: measured first, in config order.
    let order = decide_for(&p, &Access::default(), "k", CHAT).unwrap_or_default();
    assert_eq!(order.len(), 2);
    p.routes[0]
        .stats
        .observe(stats::Kind::Latency, Duration::from_millis(50));
    p.routes[1]
        .stats
        .observe(stats::Kind::Latency, Duration::from_millis(5));
    let n = 10_000;
    let fast = (0..n)
        .filter(|_| decide_for(&p, &Access::default(), "k", CHAT).unwrap_or_default()[0] == 1)
        .count();
    let share = fast as f64 / f64::from(n);
    assert!(share > 0.93 && share < 0.97, "{share}");
    // The fast route fails twice: it now counts as slow.
    p.routes[1]
        .stats
        .observe_failure(stats::Kind::Latency, Duration::from_millis(1));
    p.routes[1]
        .stats
        .observe_failure(stats::Kind::Latency, Duration::from_millis(1));
    let mut order = vec![0, 1];
    strategy::latency(&p, &mut order, &needs::Needs::default(), 1.0, 0.0);
    assert_eq!(order, [0, 1]);
}

#[test]
fn least_busy_compares_in_flight_relative_to_max_concurrency() {
    let p = plan(
        "t-busy",
        r#"
strategy: least_busy
routes:
  - { provider: a, model: x, max_concurrency: 10 }
  - { provider: b, model: y, max_concurrency: 2 }
  - { provider: c, model: z }
"#,
    );
    let order = || decide_for(&p, &Access::default(), "k", CHAT).unwrap_or_default();
    assert_eq!(order(), [0, 1, 2], "all idle: config order");
    p.routes[0].stats.enter();
    p.routes[0].stats.enter();
    p.routes[1].stats.enter();
    p.routes[2].stats.enter();
    // 2/10 = 0.2, 1/2 = 0.5, 1 (no cap) = 1.
    assert_eq!(order(), [0, 1, 2]);
    p.routes[1].stats.enter();
    // Route 1 is at its cap: behind the others whatever its score.
    assert_eq!(order(), [0, 2, 1]);
    for _ in 0..9 {
        p.routes[0].stats.enter();
    }
    // Both at or over their cap: behind route 2, by load (1.0, then 1.1).
    assert_eq!(order(), [2, 1, 0]);
}

#[test]
fn cost_picks_the_cheapest_for_the_request_and_unpriced_goes_last() {
    let p = plan(
        "t-cost",
        r#"
strategy: cost
reserve_output_tokens: 1000
routes:
  - { provider: free, model: unknown }
  - { provider: a, model: x, price: { input: 1.0, output: 10.0 } }
  - { provider: b, model: y, price: { input: 5.0, output: 1.0 } }
"#,
    );
    // Short prompt, 1000 completion tokens: the cheap output wins.
    assert_eq!(
        decide_for(&p, &Access::default(), "k", CHAT).unwrap_or_default(),
        [2, 1, 0]
    );
    // A long prompt with a tiny completion: the cheap input wins.
    let long = format!(
        r#"{{"model":"chat","max_tokens":1,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "word ".repeat(5000)
    );
    assert_eq!(
        decide_for(&p, &Access::default(), "k", &long).unwrap_or_default(),
        [1, 2, 0]
    );
}

#[test]
fn capability_and_context_filters_skip_routes_and_name_what_is_missing() {
    let p = plan(
        "t-caps",
        r#"
routes:
  - { provider: a, model: text-only, capabilities: [tools], context_window: 50 }
  - { provider: b, model: eyes, capabilities: [tools, vision] }
"#,
    );
    let image = r#"{"model":"chat","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
    assert_eq!(
        decide_for(&p, &Access::default(), "k", image).unwrap_or_default(),
        [1]
    );
    let long = format!(
        r#"{{"model":"chat","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "word ".repeat(200)
    );
    assert_eq!(
        decide_for(&p, &Access::default(), "k", &long).unwrap_or_default(),
        [1]
    );
    assert_eq!(
        decide_for(&p, &Access::default(), "k", CHAT).unwrap_or_default(),
        [0, 1]
    );
    let json = r#"{"model":"chat","response_format":{"type":"json_schema","json_schema":{}}}"#;
    match decide_for(&p, &Access::default(), "k", json) {
        Err(e) => {
            assert_eq!(e.status(), 400);
            assert_eq!(e.code(), "unsupported_capability");
            assert!(e.to_string().contains("json_schema"), "{e}");
        }
        Ok(o) => panic!("routed to {o:?}"),
    }
}

#[test]
fn undeclared_capabilities_are_assumed() {
    let p = plan("t-undeclared", "routes:\n  - { provider: a, model: x }\n");
    let tools = r#"{"model":"chat","tools":[{"type":"function"}],"reasoning_effort":"low"}"#;
    assert_eq!(
        decide_for(&p, &Access::default(), "k", tools).unwrap_or_default(),
        [0]
    );
}

#[test]
fn tier_and_region_filters_refuse_with_403() {
    let p = plan(
        "t-access",
        r#"
routes:
  - { provider: a, model: x, region: us }
  - { provider: b, model: y, region: eu, tiers: [premium] }
  - { provider: c, model: z }
"#,
    );
    let eu = Access {
        tier: None,
        regions: Some(vec![Arc::from("eu")]),
    };
    // The EU route is reserved for premium; the others are not in the EU.
    match decide_for(&p, &eu, "k", CHAT) {
        Err(e) => assert_eq!((e.status(), e.code()), (403, "region_not_allowed")),
        Ok(o) => panic!("routed to {o:?}"),
    }
    let premium_only = plan(
        "t-tier",
        "routes:\n  - { provider: a, model: x, tiers: [premium] }\n",
    );
    match decide_for(&premium_only, &Access::default(), "k", CHAT) {
        Err(e) => {
            assert_eq!((e.status(), e.code()), (403, "tier_not_allowed"));
            assert_eq!(e.kind(), "permission_error");
        }
        Ok(o) => panic!("routed to {o:?}"),
    }
    let eu_premium = Access {
        tier: Some(Arc::from("premium")),
        regions: eu.regions.clone(),
    };
    assert_eq!(
        decide_for(&p, &eu_premium, "k", CHAT).unwrap_or_default(),
        [1]
    );
    let ap = Access {
        tier: Some(Arc::from("premium")),
        regions: Some(vec![Arc::from("ap")]),
    };
    match decide_for(&p, &ap, "k", CHAT) {
        Err(e) => assert_eq!((e.status(), e.code()), (403, "region_not_allowed")),
        Ok(o) => panic!("routed to {o:?}"),
    }
    assert_eq!(
        decide_for(&p, &Access::default(), "k", CHAT).unwrap_or_default(),
        [0, 2]
    );
}

#[test]
fn split_is_sticky_by_key_or_user_and_uses_the_variant_routes() {
    let p = plan(
        "t-split",
        r#"
routes:
  - { provider: a, model: x, name: control }
  - { provider: b, model: y, name: candidate }
split:
  - { name: a, share: 0.5, routes: [control] }
  - { name: b, share: 0.5, routes: [candidate, control] }
"#,
    );
    let mut seen = [0u32; 2];
    for k in 0..2000 {
        let key = format!("key-{k}");
        let first = decide_for(&p, &Access::default(), &key, CHAT).unwrap_or_default();
        assert_eq!(
            decide_for(&p, &Access::default(), &key, CHAT).unwrap_or_default(),
            first
        );
        seen[usize::from(first.len() == 2)] += 1;
    }
    assert!(seen.iter().all(|n| (900..1100).contains(n)), "{seen:?}");
    // `user` wins over the key.
    let with_user = r#"{"model":"chat","user":"u-42"}"#;
    let a = decide_for(&p, &Access::default(), "key-1", with_user).unwrap_or_default();
    let b = decide_for(&p, &Access::default(), "key-2", with_user).unwrap_or_default();
    assert_eq!(a, b);
}

#[test]
fn key_settings_win_over_the_team_and_regions_narrow_each_other() {
    let key: crate::config::Key =
        serde_yaml::from_str("{ name: k, key: secret-123, regions: [eu, us] }")
            .unwrap_or_else(|e| panic!("{e}"));
    let team: crate::config::Team =
        serde_yaml::from_str("{ tier: gold, regions: [eu, ap] }").unwrap_or_else(|e| panic!("{e}"));
    let a = Access::of(&key, Some(&team));
    assert_eq!(
        a.tier.as_deref(),
        Some("gold"),
        "the team's tier when the key sets none"
    );
    assert_eq!(
        a.regions,
        Some(vec![Arc::from("eu")]),
        "only regions both allow"
    );
    let a = Access::of(&key, None);
    assert_eq!(a.tier, None);
    assert_eq!(a.regions.map(|r| r.len()), Some(2));
}

fn tagged_plan(alias: &str, yaml: &str) -> (Plan, crate::workload::Declared) {
    let w: crate::config::WorkloadsSection =
        serde_yaml::from_str("tags: { priority: [interactive, batch] }").unwrap_or_default();
    let declared = crate::workload::Declared::compile(&w);
    let m: Model = match serde_yaml::from_str(yaml) {
        Ok(m) => m,
        Err(e) => panic!("bad test model: {e}"),
    };
    (
        Plan::build_tagged(&Default::default(), alias, &m, &declared),
        declared,
    )
}

fn decide_tagged(p: &Plan, tags: crate::workload::TagSet) -> Result<Vec<usize>, GatewayError> {
    let parsed = match rewrite::parse(CHAT.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("bad test body: {}", e.message),
    };
    let mut state = RequestRouting::default();
    decide(
        &mut state,
        p,
        &Access::default(),
        "k",
        Endpoint::ChatCompletions,
        &parsed,
        CHAT.as_bytes(),
        tags,
    )
}

#[test]
fn routes_reserved_for_a_workload_are_skipped_by_the_others_and_none_left_is_403() {
    let (p, d) = tagged_plan(
        "t-workload",
        r#"
routes:
  - { provider: a, model: premium, workloads: { priority: [interactive] } }
  - { provider: b, model: basic, workloads: { priority: [interactive, batch] } }
by_workload:
  tag: priority
  values:
    batch: { routes: [b/basic, a/premium] }
"#,
    );
    let tags = |h: &[u8]| match d.parse_header(h) {
        Ok(t) => t,
        Err(e) => panic!("{}", e.message),
    };
    assert_eq!(
        decide_tagged(&p, tags(b"priority=interactive")).ok(),
        Some(vec![0, 1])
    );
    // batch: its own route order, premium skipped.
    assert_eq!(
        decide_tagged(&p, tags(b"priority=batch")).ok(),
        Some(vec![1])
    );
    // No tag: no route admits it.
    match decide_tagged(&p, crate::workload::TagSet::default()) {
        Err(e) => {
            assert_eq!(e.status(), 403);
            assert_eq!(e.code(), "workload_not_allowed");
        }
        Ok(order) => panic!("routed to {order:?}"),
    }
}
