//! `switchyard whatif`: last week's traffic under a new policy. The usage events recorded in
//! the collector are routed again — by their requested model, their complexity score (the
//! route's own or its shadow's) and their token counts — and priced at the new policy's
//! prices: requests moved between models, cost before and after, and the latency to expect
//! from each model's observed latency.
//!
//! It routes as the sidecar would with every target healthy. `fastest` draws its two
//! choices over the observed latencies (a model absent from the events is unmeasured, and
//! tried first), `least-busy` draws at random, and an event without a recorded score
//! scores 0.5.

use crate::config::expand::Env;
use crate::events::UsageEvent;
use crate::policy::Policy;
use crate::price::{usd_decimal, Atto};
use crate::route::health::Outcome;
use crate::route::{self, Observed, RouteInput};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

pub struct Request<'a> {
    pub collector: &'a str,
    pub token: &'a str,
    pub since: &'a str,
    pub config: &'a std::path::Path,
}

/// The new policy's `${VAR}`s resolved from this environment; one that is unset (a
/// provider key the analyst's machine does not hold) reads as a placeholder, since nothing
/// is sent anywhere.
struct Lenient;

impl Env for Lenient {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn unset(&self, _name: &str) -> Option<String> {
        Some("unset-in-whatif".into())
    }
}

/// Runs the analysis and returns the report to print.
pub fn run(r: &Request<'_>) -> Result<String, String> {
    let text = std::fs::read_to_string(r.config)
        .map_err(|e| format!("cannot read {}: {e}", r.config.display()))?;
    let policy = crate::config::from_str_in(&text, &Lenient, 1, r.config.parent())
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let events = rt.block_on(fetch(r))?;
    Ok(report(&analyse(&policy, &events)))
}

/// Every event since `since`, page by page.
async fn fetch(r: &Request<'_>) -> Result<Vec<UsageEvent>, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let url = format!("{}/v1/events", r.collector.trim_end_matches('/'));
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![("from", r.since.to_string()), ("limit", "1000".into())];
        if let Some(a) = &after {
            q.push(("after", a.clone()));
        }
        let resp = client
            .get(&url)
            .query(&q)
            .bearer_auth(r.token)
            .send()
            .await
            .map_err(|e| format!("cannot reach the collector: {e}"))?;
        let status = resp.status();
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("reading the collector's answer: {e}"))?;
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("no message");
            return Err(format!("collector answered {status}: {msg}"));
        }
        for e in body["events"].as_array().into_iter().flatten() {
            // An event this build cannot read (a later schema) is skipped, not fatal.
            if let Ok(ev) = serde_json::from_value::<UsageEvent>(e.clone()) {
                out.push(ev);
            }
        }
        match body["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => return Ok(out),
        }
    }
}

/// Sums for one group (a route or a team).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sums {
    pub requests: u64,
    /// Requests whose model changes.
    pub moved: u64,
    pub cost_before: Atto,
    pub cost_after: Atto,
    /// Latency sums (ms) over the requests with a figure on both sides.
    pub latency_before: f64,
    pub latency_after: f64,
    pub latency_n: u64,
}

#[derive(Debug, Default, PartialEq)]
pub struct Analysis {
    pub events: u64,
    /// Events the new policy cannot route (no requested model, or no route for it).
    pub unroutable: u64,
    pub by_route: BTreeMap<String, Sums>,
    pub by_team: BTreeMap<String, Sums>,
    /// (from, to) → requests.
    pub moves: BTreeMap<(String, String), u64>,
    pub total: Sums,
}

/// Routes every event under `policy`.
pub fn analyse(policy: &Policy, events: &[UsageEvent]) -> Analysis {
    // Observed latency per model, from the successful events.
    let mut seen_latency: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
    for e in events.iter().filter(|e| (200..400).contains(&e.status)) {
        let s = seen_latency.entry(&e.model).or_default();
        s.0 += e.latency_ms as f64;
        s.1 += 1;
    }
    let mean = |m: &str| seen_latency.get(m).map(|(sum, n)| sum / *n as f64);
    // `fastest` sees each model's observed latency.
    let observed = Observed::default();
    let now = Instant::now();
    for m in &policy.models {
        if let Some(ms) = mean(&m.alias) {
            m.target(&observed).record(
                Outcome::Success(Duration::from_secs_f64(ms / 1000.0)),
                Duration::ZERO,
                now,
                &policy.outlier,
                false,
            );
        }
    }
    let headers = http::HeaderMap::new();
    let mut a = Analysis::default();
    for e in events {
        a.events += 1;
        let Some(requested) = e.requested_model.as_deref() else {
            a.unroutable += 1;
            continue;
        };
        let score = e
            .decision
            .score
            .or_else(|| e.decision.shadow.as_ref().and_then(|s| s.score))
            .or(Some(0.5));
        let input = RouteInput {
            model: requested,
            host: None,
            host_provider: None,
            path: "/v1/chat/completions",
            headers: &headers,
            body: b"{}",
            max_tokens: Some(e.output_tokens),
            input_tokens: Some(e.input_tokens),
            score,
        };
        let Ok(plan) = route::plan(policy, &observed, &input) else {
            a.unroutable += 1;
            continue;
        };
        let Some(first) = plan.attempts.first() else {
            a.unroutable += 1;
            continue;
        };
        let usage = crate::usage::Usage {
            input: e.input_tokens,
            output: e.output_tokens,
            cached_input: e.cached_tokens,
            reasoning: e.reasoning_tokens,
            cache_write: e.cache_write_tokens,
        };
        let after = first.price.map_or(0, |p| p.cost(&usage));
        let to = first.model_label.to_string();
        let moved = to != *e.model;
        let latency = mean(&to).map(|after| (e.latency_ms as f64, after));
        for s in [
            a.by_route.entry(plan.route.to_string()).or_default(),
            a.by_team.entry(e.team.to_string()).or_default(),
            &mut a.total,
        ] {
            s.requests += 1;
            s.moved += u64::from(moved);
            s.cost_before += e.cost_usd.0;
            s.cost_after += after;
            if let Some((before, after)) = latency {
                s.latency_before += before;
                s.latency_after += after;
                s.latency_n += 1;
            }
        }
        if moved {
            *a.moves.entry((e.model.to_string(), to)).or_default() += 1;
        }
    }
    a
}

/// The analysis as a terminal table.
pub fn report(a: &Analysis) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} events, {} routed under the new policy, {} not routable (no requested model or no route)",
        a.events,
        a.total.requests,
        a.unroutable
    );
    for (title, rows) in [("route", &a.by_route), ("team", &a.by_team)] {
        let _ = writeln!(out, "\nby {title}:");
        let _ = writeln!(
            out,
            "  {:<20} {:>9} {:>7} {:>16} {:>16} {:>16} {:>11} {:>11}",
            title,
            "requests",
            "moved",
            "cost before",
            "cost after",
            "delta",
            "ms before",
            "ms after"
        );
        for (name, s) in rows
            .iter()
            .chain(std::iter::once((&"TOTAL".to_string(), &a.total)))
        {
            let _ = writeln!(out, "  {:<20} {}", name, line(s));
        }
    }
    let _ = writeln!(out, "\nmoved between models:");
    if a.moves.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for ((from, to), n) in &a.moves {
        let _ = writeln!(out, "  {from} -> {to}: {n}");
    }
    out
}

fn line(s: &Sums) -> String {
    let delta = if s.cost_after >= s.cost_before {
        format!("+{}", usd_decimal(s.cost_after - s.cost_before))
    } else {
        format!("-{}", usd_decimal(s.cost_before - s.cost_after))
    };
    let ms = |sum: f64| {
        if s.latency_n == 0 {
            "-".to_string()
        } else {
            format!("{:.0}", sum / s.latency_n as f64)
        }
    };
    format!(
        "{:>9} {:>7} {:>16} {:>16} {:>16} {:>11} {:>11}",
        s.requests,
        s.moved,
        usd_decimal(s.cost_before),
        usd_decimal(s.cost_after),
        delta,
        ms(s.latency_before),
        ms(s.latency_after)
    )
}
