//! How a route's strategy orders its targets: first the quality floor, then health (targets
//! out of service are skipped, but never more than half of them), then the strategy's own
//! order — weight, listed order, complexity tier, expected cost, response time or load —
//! and the route's fallbacks last. Every choice that weighed something says why.

use super::health::{Health, Target};
use super::{complexity, Observed, RouteInput, MIN_QUALITY_HEADER};
use crate::error::{ErrorCode, ProxyError};
use crate::policy::{Policy, Route, Strategy};
use crate::price::Atto;
use smallvec::SmallVec;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

/// Output tokens a request is expected to produce when it sets no limit, for `cheapest`.
pub const EXPECTED_OUTPUT_TOKENS: u64 = 256;
/// Prompt bytes per token, the same estimate admission uses.
const BYTES_PER_TOKEN: u64 = 4;

/// Positions (in the catalog, or in a route's candidates): routes rarely list more than
/// eight targets, and a few lists of them are made for every request.
pub(super) type Indices = SmallVec<[usize; 8]>;

pub(super) struct Choice {
    /// Catalog models in the order to try them, fallbacks included.
    pub order: Indices,
    pub explain: Option<String>,
    pub score: Option<f64>,
}

/// `known_score`: the request's complexity score if already computed (by the route whose
/// shadow this is).
pub(super) fn choose(
    policy: &Policy,
    seen: &Observed,
    route: &Route,
    input: &RouteInput<'_>,
    known_score: Option<f64>,
) -> Result<Choice, ProxyError> {
    let now = Instant::now();
    let floor = min_quality(route, input.headers)?;
    let meets = |m: usize| floor.is_none_or(|f| policy.models[m].quality.is_some_and(|q| q >= f));
    let mut skipped: Vec<(usize, &'static str)> = Vec::new();

    let mut candidates = Indices::new();
    for &m in &route.targets {
        if meets(m) {
            candidates.push(m);
        } else {
            skipped.push((m, "below min_quality"));
        }
    }
    if candidates.is_empty() {
        return Err(ProxyError::new(
            ErrorCode::InvalidRequest,
            format!(
                "no target of route `{}` is rated at least {} (min_quality)",
                route.name,
                floor.unwrap_or_default()
            ),
        ));
    }

    // Health: those out of service are skipped, but never more than `max_ejected_percent`
    // of the targets (half, by default);
    // past that, the ones that failed longest ago are tried anyway.
    let targets: SmallVec<[Arc<Target>; 8]> = candidates
        .iter()
        .map(|m| policy.models[*m].target(seen))
        .collect();
    let health: SmallVec<[Health; 8]> = targets.iter().map(|t| t.health(now)).collect();
    let mut out: Indices = (0..candidates.len())
        .filter(|i| !health[*i].is_available())
        .collect();
    let most_out = candidates.len() * policy.outlier.max_ejected_percent as usize / 100;
    // Those tried anyway come after every healthy target, whatever the strategy says.
    let mut forced = Indices::new();
    if out.len() > most_out {
        out.sort_by_key(|i| targets[*i].last_failure());
        forced = out.drain(..out.len() - most_out).collect();
    }
    let available: Indices = (0..candidates.len()).filter(|i| !out.contains(i)).collect();
    for i in &out {
        skipped.push((candidates[*i], health[*i].reason()));
    }

    let name = |m: usize| &*policy.models[m].alias;
    // Sized for a whole explanation, which `explain` takes over: growing a String step
    // by step cost more than writing it.
    let mut why = Text(String::with_capacity(192));
    let mut score = None;
    // Positions in `candidates`, in the order to try.
    let ordered: Indices = match &route.strategy {
        Strategy::Weighted {
            targets: weighted, ..
        } => {
            let weight = |i: usize| {
                weighted
                    .iter()
                    .find(|(m, _)| *m == candidates[i])
                    .map_or(0, |(_, w)| *w)
            };
            let total: u32 = available.iter().map(|i| weight(*i)).sum();
            let mut order = available.clone();
            if total > 0 {
                let mut pick = fastrand::u32(0..total);
                if let Some(k) = order.iter().position(|i| {
                    let w = weight(*i);
                    if pick < w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                }) {
                    let chosen = order.remove(k);
                    order.insert(0, chosen);
                }
            }
            order
        }
        Strategy::Priority { .. } => available.clone(),
        Strategy::Complexity { tiers } => {
            let s = known_score
                .or(input.score)
                .unwrap_or_else(|| complexity::score(input.body));
            let s = if s.is_finite() {
                s.clamp(0.0, 1.0)
            } else {
                0.5
            };
            score = Some(s);
            let tier = tiers
                .iter()
                .position(|(_, up_to)| s <= *up_to)
                .unwrap_or(tiers.len() - 1);
            let pos = |m: usize| candidates.iter().position(|c| *c == m);
            let mut order = Indices::new();
            // The scored tier, then harder ones, then easier ones as a last resort.
            let up = tiers[tier..].iter();
            let down = tiers[..tier].iter().rev();
            for (m, _) in up.chain(down) {
                if let Some(i) = pos(*m).filter(|i| available.contains(i) && !order.contains(i)) {
                    order.push(i);
                }
            }
            why.s("score ")
                .fixed(s, 3)
                .s(" -> tier ")
                .n(tier as u64 + 1)
                .s(" (")
                .s(name(tiers[tier].0))
                .s(")");
            if let Some(first) = order.first() {
                if candidates[*first] != tiers[tier].0 {
                    why.s(", unavailable: moved to ")
                        .s(name(candidates[*first]));
                }
            }
            order
        }
        Strategy::Cheapest { .. } => {
            let input_tokens = input
                .input_tokens
                .unwrap_or_else(|| (input.body.len() as u64).div_ceil(BYTES_PER_TOKEN));
            let output_tokens = input.max_tokens.unwrap_or(EXPECTED_OUTPUT_TOKENS);
            let cost = |i: usize| -> Atto {
                match policy.models[candidates[i]].price {
                    Some(p) => {
                        Atto::from(input_tokens) * Atto::from(p.input)
                            + Atto::from(output_tokens) * Atto::from(p.output)
                    }
                    None => Atto::MAX,
                }
            };
            let mut order = available.clone();
            order.sort_by_key(|i| cost(*i));
            why.s("expected ")
                .n(input_tokens)
                .s(" in + ")
                .n(output_tokens)
                .s(" out tokens:");
            for (k, i) in order.iter().enumerate().take(3) {
                why.s(if k == 0 { " " } else { ", " })
                    .s(name(candidates[*i]))
                    .s(" ");
                match cost(*i) {
                    Atto::MAX => why.s("no price"),
                    c => why.s("$").usd(c),
                };
            }
            order
        }
        Strategy::Fastest { .. } => {
            // An unmeasured target is tried while idle; once busy, it counts as slow as
            // the slowest measured one, so a queue does not build on it unseen.
            let slowest = available
                .iter()
                .filter_map(|i| targets[*i].latency_us(now))
                .fold(0.0, f64::max);
            let load = |i: usize| {
                let t = &targets[i];
                let in_flight = t.in_flight();
                let latency = match t.latency_us(now) {
                    Some(us) => us,
                    None if in_flight == 0 => 0.0,
                    None => slowest.max(1.0),
                };
                latency * f64::from(in_flight + 1)
            };
            let order = two_choices(&available, load);
            describe_loads(&mut why, &order, |why, i| {
                let t = &targets[i];
                why.s(name(candidates[i]));
                match t.latency_us(now) {
                    Some(us) => why
                        .s(" ")
                        .fixed(us / 1000.0, 1)
                        .s(" ms x ")
                        .n(u64::from(t.in_flight()) + 1)
                        .s(" in flight"),
                    None => why.s(" unmeasured"),
                };
            });
            order
        }
        Strategy::LeastBusy { .. } => {
            let order = two_choices(&available, |i| f64::from(targets[i].in_flight()));
            describe_loads(&mut why, &order, |why, i| {
                why.s(name(candidates[i]))
                    .s(" ")
                    .n(u64::from(targets[i].in_flight()))
                    .s(" in flight");
            });
            order
        }
        Strategy::Passthrough { .. } => Indices::new(),
    };

    let (healthy, forced): (Indices, Indices) =
        ordered.iter().copied().partition(|i| !forced.contains(i));
    let mut order: Indices = healthy
        .iter()
        .chain(&forced)
        .map(|i| candidates[*i])
        .collect();
    for &f in &route.fallbacks {
        if !meets(f) {
            skipped.push((f, "below min_quality"));
            continue;
        }
        let h = policy.models[f].target(seen).health(now);
        if h.is_available() {
            order.push(f);
        } else {
            skipped.push((f, h.reason()));
        }
    }

    let weighed = !matches!(
        route.strategy,
        Strategy::Weighted { .. } | Strategy::Priority { .. }
    );
    let explain = (weighed || !skipped.is_empty()).then(|| {
        let mut e = Text(String::with_capacity(why.0.len() + 128));
        e.s(route.strategy.name());
        if let Some(first) = order.first() {
            e.s("; chose ").s(name(*first));
        }
        if !why.0.is_empty() {
            e.s("; ").s(&why.0);
        }
        if let Some(f) = floor {
            let _ = write!(e.0, "; min_quality {f}");
        }
        if !skipped.is_empty() {
            e.s("; skipped");
            for (k, (m, reason)) in skipped.iter().enumerate() {
                e.s(if k == 0 { " " } else { ", " })
                    .s(name(*m))
                    .s(" (")
                    .s(reason)
                    .s(")");
            }
        }
        e.0
    });
    Ok(Choice {
        order,
        explain,
        score,
    })
}

/// Power of two choices: two distinct candidates drawn at random, the lighter first; then
/// the rest, lightest first (the retry order).
fn two_choices(available: &[usize], load: impl Fn(usize) -> f64) -> Indices {
    let mut order = Indices::from_slice(available);
    if order.len() < 2 {
        return order;
    }
    let a = fastrand::usize(0..order.len());
    let mut b = fastrand::usize(0..order.len() - 1);
    if b >= a {
        b += 1;
    }
    let first = if load(order[b]) < load(order[a]) {
        order[b]
    } else {
        order[a]
    };
    order.retain(|i| *i != first);
    order.sort_by(|x, y| load(*x).total_cmp(&load(*y)));
    order.insert(0, first);
    order
}

/// "x over y" for the first two of a load-ordered list.
fn describe_loads(why: &mut Text, order: &[usize], say: impl Fn(&mut Text, usize)) {
    if let Some(first) = order.first() {
        say(why, *first);
    }
    if let Some(second) = order.get(1) {
        why.s(" over ");
        say(why, *second);
    }
}

/// An explanation being written. Not with `write!`: `core::fmt` costs about a thousand
/// instructions a call, and every weighing decision (every request) wrote several.
struct Text(String);

impl Text {
    fn s(&mut self, text: &str) -> &mut Text {
        self.0.push_str(text);
        self
    }

    fn n(&mut self, v: u64) -> &mut Text {
        self.s(itoa::Buffer::new().format(v))
    }

    /// `v` with `decimals` digits after the point, as `{:.N}` writes a non-negative number.
    fn fixed(&mut self, v: f64, decimals: u32) -> &mut Text {
        let scale = 10u64.pow(decimals);
        let exact = v * scale as f64;
        // Near a tie the product's rounding error could pick the other digit: those (rare)
        // and what does not fit go through `core::fmt`, so the text is always its.
        let near_tie = (exact - exact.floor() - 0.5).abs() < 1e-6;
        if near_tie || !(0.0..1e15).contains(&exact) {
            let _ = write!(self.0, "{v:.*}", decimals as usize);
            return self;
        }
        let scaled = exact.round() as u64;
        self.n(scaled / scale);
        if decimals > 0 {
            let mut buf = itoa::Buffer::new();
            let frac = buf.format(scaled % scale);
            self.0.push('.');
            for _ in frac.len()..decimals as usize {
                self.0.push('0');
            }
            self.0.push_str(frac);
        }
        self
    }

    fn usd(&mut self, atto: Atto) -> &mut Text {
        self.s(&crate::price::usd_decimal(atto))
    }
}

/// The route's `min_quality`, raised (never lowered) by the request's header.
fn min_quality(route: &Route, headers: &http::HeaderMap) -> Result<Option<f64>, ProxyError> {
    let asked = match headers.get(MIN_QUALITY_HEADER) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<f64>().ok()) {
            Some(q) if (0.0..=100.0).contains(&q) => Some(q),
            _ => {
                return Err(ProxyError::new(
                    ErrorCode::InvalidRequest,
                    format!("{MIN_QUALITY_HEADER} must be a number from 0 to 100"),
                ))
            }
        },
    };
    Ok(match (route.min_quality, asked) {
        (Some(r), Some(a)) => Some(r.max(a)),
        (r, a) => r.or(a),
    })
}

#[cfg(test)]
mod tests {
    use super::super::{plan, Observed, RouteInput};
    use super::*;
    use crate::config::expand::ProcessEnv;
    use crate::route::health::Outcome;
    use http::HeaderMap;
    use std::time::Duration;

    const POLICY: &str = r#"
providers:
  p: { format: openai, base_url: "http://127.0.0.1:9001/v1" }
models:
  cheap:  { provider: p, quality: 60, price: { input: 0.1, output: 0.4 } }
  middle: { provider: p, quality: 75, price: { input: 1, output: 4 } }
  dear:   { provider: p, quality: 90, price: { input: 10, output: 40 } }
  spare:  { provider: p }
routes:
  - { name: c, match: { model: cheapest }, strategy: cheapest, targets: [dear, middle, cheap], fallbacks: [spare] }
  - { name: q, match: { model: good }, strategy: cheapest, targets: [dear, middle, cheap], min_quality: 70 }
  - { name: f, match: { model: fast }, strategy: fastest, targets: [cheap, middle] }
  - { name: l, match: { model: idle }, strategy: least-busy, targets: [cheap, middle] }
  - { name: p, match: { model: prio }, strategy: priority, targets: [cheap, middle, dear] }
  - name: x
    match: { model: auto }
    strategy: complexity
    tiers: [ { model: cheap, up_to: 0.3 }, { model: middle, up_to: 0.6 }, dear ]
"#;

    fn policy() -> Policy {
        crate::config::from_str(POLICY, &ProcessEnv, 1).unwrap()
    }

    /// A short chat request for `model`.
    fn input<'a>(model: &'a str, headers: &'a HeaderMap) -> RouteInput<'a> {
        RouteInput {
            model,
            host: None,
            host_provider: None,
            path: "/v1/chat/completions",
            headers,
            body: br#"{"messages":[{"role":"user","content":"hi"}]}"#,
            max_tokens: Some(100),
            input_tokens: None,
            score: None,
        }
    }

    fn order(p: &Policy, seen: &Observed, model: &str, headers: &HeaderMap) -> Vec<String> {
        let plan = plan(p, seen, &input(model, headers)).unwrap();
        plan.attempts
            .iter()
            .map(|a| a.model_label.to_string())
            .collect()
    }

    fn eject(p: &Policy, seen: &Observed, model: &str) {
        let t = p.model(model).unwrap().target(seen);
        for _ in 0..5 {
            t.record(
                Outcome::Failed,
                Duration::from_secs(1),
                Instant::now(),
                &p.outlier,
                false,
            );
        }
    }

    #[test]
    fn cheapest_orders_by_expected_cost_then_fallbacks() {
        let p = policy();
        let seen = Observed::default();
        let h = HeaderMap::new();
        assert_eq!(
            order(&p, &seen, "cheapest", &h),
            ["cheap", "middle", "dear", "spare"]
        );
    }

    #[test]
    fn min_quality_from_the_route_and_raised_by_the_header() {
        let p = policy();
        let seen = Observed::default();
        let mut h = HeaderMap::new();
        assert_eq!(order(&p, &seen, "good", &h), ["middle", "dear"]);
        h.insert(MIN_QUALITY_HEADER, "85".parse().unwrap());
        assert_eq!(order(&p, &seen, "good", &h), ["dear"]);
        // The header raises, never lowers.
        h.insert(MIN_QUALITY_HEADER, "10".parse().unwrap());
        assert_eq!(order(&p, &seen, "good", &h), ["middle", "dear"]);
        h.insert(MIN_QUALITY_HEADER, "95".parse().unwrap());
        let e = plan(&p, &seen, &input("good", &h)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn ejected_targets_are_skipped_but_never_more_than_half() {
        let p = policy();
        let seen = Observed::default();
        let h = HeaderMap::new();
        eject(&p, &seen, "cheap");
        assert_eq!(order(&p, &seen, "prio", &h), ["middle", "dear"]);
        // Two of three out: one (the one that failed longest ago) is tried anyway, last.
        std::thread::sleep(Duration::from_millis(5));
        eject(&p, &seen, "middle");
        assert_eq!(order(&p, &seen, "prio", &h), ["dear", "cheap"]);
        let explain = plan(&p, &seen, &input("prio", &h))
            .unwrap()
            .explain
            .unwrap();
        assert_eq!(&*explain, "priority; chose dear; skipped middle (ejected)");
    }

    #[test]
    fn fastest_prefers_the_measured_faster_and_unmeasured_ones_get_tried() {
        let p = policy();
        let seen = Observed::default();
        let h = HeaderMap::new();
        let now = Instant::now();
        let t = |m: &str| p.model(m).unwrap().target(&seen);
        t("cheap").record(
            Outcome::Success(Duration::from_millis(300)),
            Duration::ZERO,
            now,
            &p.outlier,
            false,
        );
        // `middle` is unmeasured: tried first.
        assert_eq!(order(&p, &seen, "fast", &h)[0], "middle");
        t("middle").record(
            Outcome::Success(Duration::from_millis(50)),
            Duration::ZERO,
            now,
            &p.outlier,
            false,
        );
        for _ in 0..20 {
            assert_eq!(order(&p, &seen, "fast", &h)[0], "middle");
        }
        // A 429 makes it look slow, however fast it came.
        t("middle").record(
            Outcome::Refused { retry_after: None },
            Duration::from_secs(30),
            now,
            &p.outlier,
            false,
        );
        assert_eq!(order(&p, &seen, "fast", &h), ["cheap", "middle"]);
    }

    #[test]
    fn least_busy_prefers_fewer_in_flight() {
        let p = policy();
        let seen = Observed::default();
        let h = HeaderMap::new();
        let busy = p.model("cheap").unwrap().target(&seen);
        let _a = busy.start();
        for _ in 0..20 {
            assert_eq!(order(&p, &seen, "idle", &h), ["middle", "cheap"]);
        }
    }

    #[test]
    fn complexity_tiers_move_up_when_unavailable() {
        let p = policy();
        let seen = Observed::default();
        let h = HeaderMap::new();
        // "hi" is an easy request: the first tier, then harder ones.
        assert_eq!(order(&p, &seen, "auto", &h), ["cheap", "middle", "dear"]);
        eject(&p, &seen, "cheap");
        assert_eq!(order(&p, &seen, "auto", &h), ["middle", "dear"]);
    }

    #[test]
    fn explanations_write_numbers_as_format_would() {
        for v in [
            0.0, 0.0004, 0.0005, 0.016, 0.5, 0.9995, 1.0, 12.34, 1234.5678, 9.99e13,
        ] {
            for d in [0u32, 1, 3] {
                let mut t = Text(String::new());
                t.fixed(v, d);
                assert_eq!(t.0, format!("{v:.*}", d as usize), "{v} to {d}");
            }
        }
        let mut t = Text(String::new());
        t.fixed(f64::NAN, 1)
            .s(" ")
            .fixed(-2.5, 1)
            .s(" ")
            .fixed(1e300, 1);
        assert_eq!(t.0, format!("{:.1} {:.1} {:.1}", f64::NAN, -2.5, 1e300));
        let mut t = Text(String::new());
        t.n(0).s(" ").n(u64::MAX).s(" ").usd(1_500_000_000_000_000);
        assert_eq!(t.0, format!("0 {} 0.0015", u64::MAX));
    }
}
