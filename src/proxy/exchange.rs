//! Steps 4–5 of the walk for LLM calls: per attempt, rewrite the request for the provider,
//! send it over a pooled connection (`upstream::Pool`, new ones from Pingora's connector), and either fall back (connect error, timeout,
//! 429, 5xx — all before any byte reached the client) or hand the answer to `relay`.
//! The proxy owns the exchange because Pingora's own retry can replay at most 64 KiB of
//! body, and each attempt needs its own model and credentials.

use super::{Ctx, Failure, Switchyard};
use crate::error::{ErrorCode, ProxyError};
use crate::policy::{Policy, Provider, Retry, Timeouts};
use crate::provider::{self, ClientRequest};
use crate::rewrite::{Body, BodyProbe, COALESCE_MAX};
use crate::route::health::{Change, Outcome, Target};
use crate::route::{Attempt, Plan};
use crate::telemetry::AttemptOutcome;
use crate::upstream;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::protocols::Stream;
use pingora::proxy::Session;
use pingora::upstreams::peer::Peer;
use pingora::RetryType;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct LlmRequest {
    pub path_and_query: String,
    pub body: Bytes,
    pub probe: Option<BodyProbe>,
}

/// Why one attempt produced no usable response.
enum AttemptError {
    Connect(String),
    Timeout(String),
    /// The connection broke while sending the request or reading the response header.
    Transport {
        msg: String,
        /// A pooled connection that failed the way a connection the provider had closed
        /// fails: the request cannot have been processed, so it may be sent again.
        replayable: bool,
    },
}

/// Informational answers (100 Continue, 103 Early Hints) skipped before the real one.
const MAX_INFORMATIONAL: usize = 8;

/// A plan for a model-less call to a provider's own host: that provider, as sent.
pub fn direct_plan(provider: usize) -> Plan {
    Plan {
        route: Arc::from("direct"),
        strategy: "direct",
        attempts: vec![Attempt {
            provider,
            upstream_model: None,
            model_label: Arc::from("none"),
            max_tokens: None,
            price: None,
            model: None,
        }],
        retry: Retry {
            attempts: 1,
            on_connect: false,
            on_timeout: false,
            on_429: false,
            on_5xx: false,
        },
        timeouts: Timeouts::default(),
        explain: None,
        score: None,
        shadow: None,
        retry_budget: None,
        decision: None,
    }
}

/// `GET /v1/models` in base-URL mode: the catalog, in OpenAI's list shape.
pub fn catalog_listing(policy: &Policy) -> Bytes {
    let data: Vec<_> = policy
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": &*m.alias,
                "object": "model",
                "created": 0,
                "owned_by": &*policy.providers[m.provider].name,
            })
        })
        .collect();
    Bytes::from(serde_json::json!({ "object": "list", "data": data }).to_string())
}

impl Switchyard {
    pub(super) async fn forward(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
        req: &LlmRequest,
        plan: &Plan,
    ) -> Result<(), Failure> {
        let metrics = &self.state.metrics;
        let seen = &self.state.observed;
        ctx.route = plan.route.clone();
        ctx.record.strategy = plan.strategy;
        ctx.record.explain = plan.explain.clone();
        ctx.record.score = plan.score;
        ctx.record.shadow = plan.shadow.clone();
        if let Some(b) = &plan.retry_budget {
            b.request(Instant::now());
        }
        if let Some(c) = &plan.decision {
            c.inc();
        }
        // A refusal counts as this slow in the target's response-time average.
        let penalty = plan.timeouts.first_byte.min(REFUSAL_PENALTY);
        let mut n = 0;
        let mut fresh_retry_used = false;
        let mut fresh = false;
        let final_error = loop {
            let Some(attempt) = plan.attempt(n) else {
                break ProxyError::new(ErrorCode::UpstreamUnavailable, "no attempt left");
            };
            let last = plan.attempt(n + 1).is_none();
            let provider = &policy.providers[attempt.provider];
            ctx.provider = provider.name.clone();
            ctx.model = attempt.model_label.clone();
            ctx.price = attempt.price;
            ctx.record.attempts += 1;
            ctx.record.fallback = n > 0;
            if n > 0 {
                metrics.fallbacks.with_label_values(&[&*plan.route]).inc();
            }

            let client = ClientRequest {
                ingress: provider::Ingress::of_path(&req.path_and_query),
                header: session.req_header(),
                path_and_query: &req.path_and_query,
                body: &req.body,
                probe: req.probe.as_ref(),
            };
            // A request this provider cannot take (e.g. embeddings to Anthropic) is the
            // client's error, whatever the fallbacks.
            let out = provider::outbound(provider, &client, attempt)?;
            let translator = out.translator;
            // Counted in flight on its target until this attempt's answer is relayed.
            let target = attempt.model.map(|m| policy.models[m].target(seen));
            let _busy = target.as_ref().map(|t| t.start());
            // Taken here, where the attempt is surely sent and its outcome recorded.
            let probe = target.as_ref().and_then(|t| t.take_probe(Instant::now()));
            ctx.pause();
            let sent = Instant::now();
            let result = self
                .attempt(provider, out.head, out.body, &plan.timeouts, fresh)
                .await;
            fresh = false;
            ctx.resume();
            if let Some(t) = &target {
                let replay = !fresh_retry_used
                    && matches!(
                        result,
                        Err(AttemptError::Transport {
                            replayable: true,
                            ..
                        })
                    );
                if !replay {
                    let outcome = health_outcome(&result, sent.elapsed());
                    let rules = &policy.outlier;
                    let carried = probe.is_some();
                    self.record_health(t, &attempt.model_label, outcome, penalty, rules, carried);
                }
            }
            let outcome = match &result {
                Ok((up, _)) => AttemptOutcome::from_status(status_of(up)),
                Err(AttemptError::Connect(_)) => AttemptOutcome::ConnectError,
                Err(AttemptError::Timeout(_)) => AttemptOutcome::Timeout,
                Err(AttemptError::Transport { .. }) => AttemptOutcome::Error,
            };
            metrics
                .upstream_attempts
                .with_label_values(&[&*provider.name, outcome.as_str()])
                .inc();

            match result {
                Ok((up, pool_key)) => {
                    let status = status_of(&up);
                    if !last && plan.retry.retries_status(status) && self.may_retry(plan) {
                        tracing::info!(
                            route = &*plan.route,
                            provider = &*provider.name,
                            status,
                            "upstream refused; trying the next target"
                        );
                        n += 1;
                        continue;
                    }
                    let head = session.req_header().method == http::Method::HEAD;
                    return match translator {
                        // A HEAD answer has no body to translate.
                        None => self.relay(session, ctx, up, pool_key, provider, plan).await,
                        Some(_) if head => {
                            self.relay(session, ctx, up, pool_key, provider, plan).await
                        }
                        Some(t) => {
                            self.relay_translated(session, ctx, up, pool_key, provider, plan, t)
                                .await
                        }
                    };
                }
                Err(AttemptError::Transport {
                    msg,
                    replayable: true,
                }) if !fresh_retry_used => {
                    // A pooled connection the provider closed as it was taken: one more try
                    // on a new connection, not counted against the plan.
                    tracing::debug!(
                        provider = &*provider.name,
                        "reused connection failed ({msg}); retrying on a new one"
                    );
                    fresh_retry_used = true;
                    fresh = true;
                    continue;
                }
                Err(AttemptError::Connect(msg)) | Err(AttemptError::Transport { msg, .. }) => {
                    tracing::warn!(
                        route = &*plan.route,
                        provider = &*provider.name,
                        "upstream unavailable: {msg}"
                    );
                    if last || !plan.retry.on_connect || !self.may_retry(plan) {
                        break ProxyError::new(
                            ErrorCode::UpstreamUnavailable,
                            format!("provider {} is unavailable", provider.name),
                        );
                    }
                }
                Err(AttemptError::Timeout(msg)) => {
                    tracing::warn!(
                        route = &*plan.route,
                        provider = &*provider.name,
                        "upstream timed out: {msg}"
                    );
                    if last || !plan.retry.on_timeout || !self.may_retry(plan) {
                        break ProxyError::new(
                            ErrorCode::UpstreamTimeout,
                            format!("provider {} did not answer in time", provider.name),
                        );
                    }
                }
            }
            n += 1;
        };
        Err(final_error.into())
    }

    /// Whether the route's retry budget allows one more attempt; counted when not.
    fn may_retry(&self, plan: &Plan) -> bool {
        let Some(b) = &plan.retry_budget else {
            return true;
        };
        if b.try_retry(Instant::now()) {
            return true;
        }
        self.state
            .metrics
            .routing
            .retry_budget_exhausted
            .with_label_values(&[&*plan.route])
            .inc();
        false
    }

    fn record_health(
        &self,
        target: &Target,
        model: &str,
        outcome: Outcome,
        penalty: Duration,
        rules: &crate::route::health::Settings,
        probe: bool,
    ) {
        match target.record(outcome, penalty, Instant::now(), rules, probe) {
            Change::Ejected(d) => {
                self.state
                    .metrics
                    .routing
                    .ejections
                    .with_label_values(&[model])
                    .inc();
                tracing::warn!(
                    model,
                    seconds = d.as_secs(),
                    "target ejected after failures"
                );
            }
            Change::Readmitted => tracing::info!(model, "target readmitted: its probe succeeded"),
            Change::None => {}
        }
    }

    /// Sends one rewritten request and reads the response header. The session comes back
    /// with the pool key its connection returns under once the response is read. `fresh`
    /// skips the pool (the retry after a pooled connection failed).
    async fn attempt(
        &self,
        provider: &Provider,
        head: Vec<u8>,
        body: Body,
        timeouts: &Timeouts,
        fresh: bool,
    ) -> Result<(Http1Session, u64), AttemptError> {
        let peer = upstream::peer_for(&self.resolver, provider, timeouts)
            .await
            .map_err(AttemptError::Connect)?;
        let key = peer.reuse_hash();
        let pooled = if fresh { None } else { self.pool.take(key) };
        let (stream, reused) = match pooled {
            Some(s) => (s, true),
            None => {
                let s = self
                    .transport
                    .new_stream(&peer)
                    .await
                    .map_err(|e| match e.etype() {
                        ConnectTimedout => AttemptError::Timeout(e.to_string()),
                        _ => AttemptError::Connect(e.to_string()),
                    })?;
                self.state
                    .metrics
                    .upstream_connects
                    .with_label_values(&[&*provider.name])
                    .inc();
                (s, false)
            }
        };
        // Replayed only when the request cannot have been processed: writing it failed, or
        // the connection closed before any answer (Pingora marks those `ReusedOnly`).
        // Anything else may have run the call at the provider: not sent twice.
        let transport = |e: Box<Error>, sending: bool| match e.etype() {
            ReadTimedout | WriteTimedout => AttemptError::Timeout(e.to_string()),
            _ => AttemptError::Transport {
                replayable: reused && (sending || matches!(e.retry, RetryType::ReusedOnly)),
                msg: e.to_string(),
            },
        };
        let mut up = send_h1(stream, &peer, head, &body, timeouts.first_byte)
            .await
            .map_err(|e| transport(e, true))?;
        // Pingora's own per-operation timeout (one timer wheel, no extra tokio timer): a
        // header that does not come within first_byte fails the attempt.
        up.read_timeout = Some(timeouts.first_byte);
        up.read_response().await.map_err(|e| transport(e, false))?;
        let mut informational = 0;
        while matches!(status_of(&up), 100..=199) && status_of(&up) != 101 {
            informational += 1;
            if informational > MAX_INFORMATIONAL {
                return Err(AttemptError::Transport {
                    msg: "too many informational responses".into(),
                    replayable: false,
                });
            }
            up.read_response().await.map_err(|e| transport(e, false))?;
        }
        up.read_timeout = Some(timeouts.idle);
        Ok((up, key))
    }
}

/// The longest a refusal (429, 5xx) or failure counts as in a response-time average.
const REFUSAL_PENALTY: Duration = Duration::from_secs(30);

/// What an attempt's result says of its target's health.
fn health_outcome(
    result: &Result<(Http1Session, u64), AttemptError>,
    elapsed: Duration,
) -> Outcome {
    match result {
        Ok((up, _)) => {
            let status = status_of(up);
            // 401 and 403 too: the proxy injects the credentials, so a provider refusing
            // them is unusable, however fast it says so.
            if matches!(status, 401 | 403 | 429) || status >= 500 {
                let retry_after = up
                    .resp_header()
                    .and_then(|h| h.headers.get(http::header::RETRY_AFTER))
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                Outcome::Refused { retry_after }
            } else {
                Outcome::Success(elapsed)
            }
        }
        Err(_) => Outcome::Failed,
    }
}

fn status_of(up: &Http1Session) -> u16 {
    up.resp_header().map_or(0, |h| h.status.as_u16())
}

/// Writes the request head and body with one flush (Pingora's client flushes the header on
/// its own, which costs a send, and on loopback the peer's receive work, per request), then
/// wraps the stream in a session that reads the response as usual.
async fn send_h1(
    mut stream: Stream,
    peer: &HttpPeer,
    mut head: Vec<u8>,
    body: &Body,
    write_timeout: std::time::Duration,
) -> Result<Http1Session> {
    use bytes::Buf;
    use tokio::io::AsyncWriteExt;
    let write = async {
        if body.len() <= COALESCE_MAX {
            // One buffer, one send (TLS included): the head has room for a small body.
            for piece in body.pieces() {
                head.extend_from_slice(piece);
            }
            stream.write_all(&head).await?;
        } else {
            // A large body goes out from the client's own buffers: a vectored write on
            // plain TCP, no copy either way.
            let [a, b, c] = body.pieces().clone();
            let mut all = Bytes::from(head).chain(a).chain(b).chain(c);
            stream.write_all_buf(&mut all).await?;
        }
        stream.flush().await
    };
    match pingora::prelude::timeout(write_timeout, write).await {
        Ok(Ok(())) => Ok(Http1Session::new_with_options(stream, peer)),
        Ok(Err(e)) => Err(Error::because(WriteError, "writing the request", e)),
        Err(_) => Error::e_explain(WriteTimedout, "writing the request"),
    }
}
