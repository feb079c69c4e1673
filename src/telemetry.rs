//! Prometheus metrics. One registry owned by the process (not the global default one),
//! label sets bounded: route, provider and model come from the policy, never from raw input.

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub proxy_overhead: HistogramVec,
    pub upstream_attempts: IntCounterVec,
    /// New upstream connections (a pooled one reused is not counted): with keep-alive
    /// working this grows with concurrency, not with requests.
    pub upstream_connects: IntCounterVec,
    /// Idle keep-alive connections held, as of the last sweep.
    pub upstream_idle: IntGauge,
    pub fallbacks: IntCounterVec,
    pub errors: IntCounterVec,
    pub passthrough_requests: IntCounterVec,
    pub streams_interrupted: IntCounterVec,
    pub tokens: IntCounterVec,
    pub cost: CounterVec,
    pub partial_usage: IntCounterVec,
    pub in_flight: IntGauge,
    /// Successful LLM calls whose answer carried no usage to meter, by endpoint.
    pub unmetered: IntCounterVec,
    /// Client connections closed by the proxy before or between requests, by reason.
    pub client_closed: IntCounterVec,
    /// Bytes of request bodies being read or held, as of the last scrape.
    pub body_memory: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub events: EventMetrics,
    pub governance: GovernanceMetrics,
    pub routing: RoutingMetrics,
}

/// Routing decisions and target health. Labels are route names and catalog aliases from
/// the policy, so bounded.
#[derive(Clone)]
pub struct RoutingMetrics {
    /// Requests planned, by route, strategy and the model chosen first.
    pub decisions: IntCounterVec,
    /// 0 healthy, 1 on probation (its probe pending), 2 ejected or waiting out a
    /// `Retry-After`; by model, as of the last scrape.
    pub target_health: IntGaugeVec,
    pub ejections: IntCounterVec,
    /// Retries not made because the route's retry budget was spent.
    pub retry_budget_exhausted: IntCounterVec,
}

impl RoutingMetrics {
    fn new(registry: &Registry) -> Self {
        let target_health = IntGaugeVec::new(
            Opts::new(
                "switchyard_target_health",
                "Passive health of each target model: 0 healthy, 1 probation, 2 ejected or in Retry-After",
            ),
            &["model"],
        )
        .unwrap_or_else(|e| panic!("metric switchyard_target_health is malformed: {e}"));
        registry
            .register(Box::new(target_health.clone()))
            .unwrap_or_else(|e| panic!("metric switchyard_target_health registered twice: {e}"));
        RoutingMetrics {
            decisions: counter(
                registry,
                "switchyard_route_decisions_total",
                "Requests planned, by route, strategy and the model chosen first",
                &["route", "strategy", "model"],
            ),
            target_health,
            ejections: counter(
                registry,
                "switchyard_target_ejections_total",
                "Targets ejected by outlier detection (consecutive failures, failure rate, failed probe), by model",
                &["model"],
            ),
            retry_budget_exhausted: counter(
                registry,
                "switchyard_retry_budget_exhausted_total",
                "Retries or fallbacks not attempted because the route's retry budget was spent, by route",
                &["route"],
            ),
        }
    }
}

/// Admission (`governance`): rejections, rate-limit use, budgets. Labels name policy
/// levels (`org`, team names, key ids), so they are bounded by the policy.
#[derive(Clone)]
pub struct GovernanceMetrics {
    /// Requests refused, by reason (unauthorized, model_not_allowed, rate_limited,
    /// budget_exceeded, redis_down).
    pub rejections: IntCounterVec,
    /// Rate-limit refusals by level and limit (rpm, tpm).
    pub rate_limited: IntCounterVec,
    /// Requests or tokens counted in the current window, by level, name and limit.
    pub rate_used: IntGaugeVec,
    pub remaining: GaugeVec,
    pub reserved: GaugeVec,
    pub spent: GaugeVec,
    /// Budget alert marks crossed, by level, name and mark.
    pub alerts: IntCounterVec,
    /// Requests sent to a budget's `downgrade_to`, by level and name.
    pub downgrades: IntCounterVec,
    /// Redis calls that failed, by outcome: admitted / refused (`on_redis_down`), settle.
    pub redis_errors: IntCounterVec,
}

/// The usage-event pipeline (`events`): queue, spool and delivery.
#[derive(Clone)]
pub struct EventMetrics {
    /// Events recorded and not yet acknowledged by the collector (queue and spool).
    pub queued: IntGauge,
    pub spooled_bytes: IntGauge,
    /// Events the collector acknowledged.
    pub sent: IntCounter,
    /// Events in batches that failed and will be sent again.
    pub retried: IntCounter,
    /// Events lost, by reason: spool_full, queue_full, write_error, rejected (malformed,
    /// refused by the collector, or over 1 MiB, too large to spool), corrupt (a damaged spool record); torn_tail counts
    /// segments whose end was cut by a crash.
    pub dropped: IntCounterVec,
}

/// The endpoint of a request as a bounded label: OpenAI's and Anthropic's API paths, and
/// `other` for anything else (a raw client path would make the label set unbounded).
pub fn endpoint_label(path: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/moderations",
        "/v1/messages",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    ];
    KNOWN
        .iter()
        .find(|k| **k == path)
        .copied()
        .unwrap_or("other")
}

/// Outcome label of one upstream attempt.
#[derive(Debug, Clone, Copy)]
pub enum AttemptOutcome {
    Ok,
    ConnectError,
    Timeout,
    Status429,
    Status5xx,
    Status4xx,
    Error,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ok => "ok",
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::Status429 => "status_429",
            AttemptOutcome::Status5xx => "status_5xx",
            AttemptOutcome::Status4xx => "status_4xx",
            AttemptOutcome::Error => "error",
        }
    }

    pub fn from_status(status: u16) -> Self {
        match status {
            429 => AttemptOutcome::Status429,
            500.. => AttemptOutcome::Status5xx,
            400.. => AttemptOutcome::Status4xx,
            _ => AttemptOutcome::Ok,
        }
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["route"])
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    h
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    g
}

impl Metrics {
    // The panics above fire only on a programming error in a metric definition, at start-up.
    pub fn new() -> Self {
        let registry = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request start to the last response byte, by route",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                120.0,
            ]),
            &["route"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(request_duration.clone()))
            .unwrap_or_else(|e| panic!("histogram registered twice: {e}"));
        let time_to_first_token = histogram(
            &registry,
            "switchyard_time_to_first_token_seconds",
            "Streamed responses: request start to the first event relayed to the client",
            vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        );
        let proxy_overhead = histogram(
            &registry,
            "switchyard_proxy_overhead_seconds",
            "Time spent in Switchyard itself per request (routing, rewriting, translation), upstream and client waits excluded",
            vec![0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05],
        );
        Metrics {
            time_to_first_token,
            proxy_overhead,
            requests: counter(
                &registry,
                "switchyard_requests_total",
                "LLM requests answered, by route, provider, model and HTTP status",
                &["route", "provider", "model", "status"],
            ),
            request_duration,
            upstream_attempts: counter(
                &registry,
                "switchyard_upstream_attempts_total",
                "Upstream attempts by provider and outcome",
                &["provider", "outcome"],
            ),
            upstream_connects: counter(
                &registry,
                "switchyard_upstream_connects_total",
                "New connections opened to providers",
                &["provider"],
            ),
            upstream_idle: gauge(
                &registry,
                "switchyard_upstream_idle_connections",
                "Idle keep-alive connections to providers, as of the last pool sweep",
            ),
            fallbacks: counter(
                &registry,
                "switchyard_fallbacks_total",
                "Requests that moved to a later attempt of their plan, by route",
                &["route"],
            ),
            errors: counter(
                &registry,
                "switchyard_errors_total",
                "Errors the proxy answered itself, by code",
                &["code"],
            ),
            passthrough_requests: counter(
                &registry,
                "switchyard_passthrough_requests_total",
                "Requests to passthrough hosts (not metered as LLM calls), by status",
                &["status"],
            ),
            streams_interrupted: counter(
                &registry,
                "switchyard_streams_interrupted_total",
                "Responses cut before their end, by the side that cut them",
                &["side"],
            ),
            tokens: counter(
                &registry,
                "switchyard_tokens_total",
                "Tokens reported by providers, by type (input, output, cached_input, reasoning, cache_write)",
                &["provider", "model", "team", "type"],
            ),
            cost: {
                let c = CounterVec::new(
                    Opts::new(
                        "switchyard_cost_usd_total",
                        "Cost at list price of the tokens used, in USD (computed per request exactly, in integer atto-dollars)",
                    ),
                    &["provider", "model", "team"],
                )
                .unwrap_or_else(|e| panic!("cost metric: {e}"));
                registry
                    .register(Box::new(c.clone()))
                    .unwrap_or_else(|e| panic!("cost metric registered twice: {e}"));
                c
            },
            partial_usage: counter(
                &registry,
                "switchyard_partial_usage_total",
                "Responses cut before their end whose usage was counted from the deltas streamed",
                &["provider", "model"],
            ),
            in_flight: gauge(
                &registry,
                "switchyard_in_flight_requests",
                "Requests being served now",
            ),
            unmetered: counter(
                &registry,
                "switchyard_unmetered_requests_total",
                "Successful POSTs whose answer reported no usage (so no tokens or cost were counted), by endpoint",
                &["path"],
            ),
            client_closed: counter(
                &registry,
                "switchyard_client_connections_closed_total",
                "Client connections the proxy closed, by reason (idle_timeout, header_timeout, body_timeout, client_gone, refused)",
                &["reason"],
            ),
            body_memory: gauge(
                &registry,
                "switchyard_request_body_memory_bytes",
                "Bytes held by request bodies being read or forwarded, against server.max_body_memory_bytes",
            ),
            config_reloads: counter(
                &registry,
                "switchyard_config_reloads_total",
                "Policy reloads by result",
                &["result"],
            ),
            config_generation: gauge(
                &registry,
                "switchyard_config_generation",
                "Generation of the running policy (1 = as started)",
            ),
            events: EventMetrics::new(&registry),
            governance: GovernanceMetrics::new(&registry),
            routing: RoutingMetrics::new(&registry),
            registry,
        }
    }

    /// Tokens and, when the model has a price, the exact cost (returned, atto-dollars).
    pub fn record_usage(
        &self,
        provider: &str,
        model: &str,
        team: &str,
        u: &crate::usage::Usage,
        price: Option<crate::price::Price>,
    ) -> Option<crate::price::Atto> {
        let cost = price.map(|p| p.cost(u));
        if let Some(c) = cost {
            self.cost
                .with_label_values(&[provider, model, team])
                .inc_by(crate::price::usd_f64(c));
        }
        self.record_tokens(provider, model, team, u);
        cost
    }

    fn record_tokens(&self, provider: &str, model: &str, team: &str, u: &crate::usage::Usage) {
        for (kind, n) in [
            ("input", u.input),
            ("output", u.output),
            ("cached_input", u.cached_input),
            ("reasoning", u.reasoning),
            ("cache_write", u.cache_write),
        ] {
            if n > 0 {
                self.tokens
                    .with_label_values(&[provider, model, team, kind])
                    .inc_by(n);
            }
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8192);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!("encoding metrics failed: {e}");
        }
        buf
    }
}

impl GovernanceMetrics {
    fn new(registry: &Registry) -> Self {
        let gauges = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &["level", "name"])
                .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
            g
        };
        let rate_used = IntGaugeVec::new(
            Opts::new(
                "switchyard_rate_limit_used",
                "Requests (rpm) or input tokens (tpm) counted in the current window",
            ),
            &["level", "name", "limit"],
        )
        .unwrap_or_else(|e| panic!("metric switchyard_rate_limit_used is malformed: {e}"));
        registry
            .register(Box::new(rate_used.clone()))
            .unwrap_or_else(|e| panic!("metric switchyard_rate_limit_used registered twice: {e}"));
        let m = GovernanceMetrics {
            rejections: counter(
                registry,
                "switchyard_rejections_total",
                "Requests refused by admission, by reason",
                &["reason"],
            ),
            rate_limited: counter(
                registry,
                "switchyard_rate_limit_rejections_total",
                "Requests refused by a rate limit, by level and limit (rpm, tpm)",
                &["level", "limit"],
            ),
            rate_used,
            remaining: gauges(
                "switchyard_budget_remaining_usd",
                "Budget left in the current period (limit minus settled spend)",
            ),
            reserved: gauges(
                "switchyard_budget_reserved_usd",
                "Worst cases reserved by requests in flight",
            ),
            spent: gauges(
                "switchyard_budget_spent_usd",
                "Settled spend in the current period",
            ),
            alerts: counter(
                registry,
                "switchyard_budget_alerts_total",
                "Budget alert marks (alert_at) crossed",
                &["level", "name", "mark"],
            ),
            downgrades: counter(
                registry,
                "switchyard_budget_downgrades_total",
                "Requests sent to a spent budget's downgrade_to",
                &["level", "name"],
            ),
            redis_errors: counter(
                registry,
                "switchyard_governance_redis_errors_total",
                "Redis calls that failed, by outcome (admitted, refused: on_redis_down; settle)",
                &["outcome"],
            ),
        };
        for outcome in ["admitted", "refused", "settle"] {
            m.redis_errors.with_label_values(&[outcome]);
        }
        for reason in [
            "unauthorized",
            "model_not_allowed",
            "rate_limited",
            "budget_exceeded",
            "redis_down",
        ] {
            m.rejections.with_label_values(&[reason]);
        }
        m
    }
}

impl EventMetrics {
    fn new(registry: &Registry) -> Self {
        let m = EventMetrics {
                queued: gauge(
                    registry,
                    "switchyard_events_queued",
                    "Usage events recorded and not yet acknowledged by the collector",
                ),
                spooled_bytes: gauge(
                    registry,
                    "switchyard_events_spooled_bytes",
                    "Bytes of usage events on disk in the spool, awaiting acknowledgement",
                ),
                sent: plain_counter(
                    registry,
                    "switchyard_events_sent_total",
                    "Usage events the collector acknowledged",
                ),
                retried: plain_counter(
                    registry,
                    "switchyard_events_retried_total",
                    "Usage events in batches that failed to deliver and were sent again",
                ),
                dropped: counter(
                    registry,
                    "switchyard_events_dropped_total",
                    "Usage events lost, by reason (spool_full, queue_full, write_error, rejected, corrupt; torn_tail counts cut segment ends)",
                    &["reason"],
                ),
            };
        // Every reason exists from the start, at 0, so an alert can watch its rate.
        for reason in [
            "spool_full",
            "queue_full",
            "write_error",
            "rejected",
            "corrupt",
            "torn_tail",
        ] {
            m.dropped.with_label_values(&[reason]);
        }
        m
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
